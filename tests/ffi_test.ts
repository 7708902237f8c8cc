/**
 * CPU-side tests of the FFI binding: the loader (lookup order, errors listing every path, the ABI check,
 * permissions), the probe, status → exception, device tensors and the CUDA backend's marshalling. No GPU is
 * needed: a fake `libmagi_ffa.so` is compiled with gcc from the C source below. It implements the ABI on
 * host memory (malloc for device memory, memcpy for copies), records the arguments of every kernel call,
 * and its "kernels" write checkable patterns (out = q, lse[i, h] = i + h / 8, dq = dout, dk = k, dv = v),
 * so the tests see exactly what the binding passed. Skipped when gcc is absent.
 */

import assert from "node:assert/strict";
import { BackendUnavailableError, MagiAttnInputError } from "../lib/core/errors.ts";
import { bf16ToFloat32, type DType, type HostTensor, randomTensor } from "../lib/core/tensor.ts";
import {
  checkStatus,
  libraryCandidates,
  loadCudaLibrary,
  MagiFfaError,
  PACKAGE_VERSION,
  probeCudaBackend,
} from "../ffi/library.ts";
import {
  DeviceTensor,
  emptyDevice,
  fillDeviceBytes,
  isDeviceTensor,
  toDevice,
  toHost,
} from "../ffi/device.ts";
import { cudaBackward, cudaForward } from "../ffi/cuda_backend.ts";
import { MAGI_FFA_ABI_VERSION, MAGI_FFA_DTYPE } from "../ffi/ffi.ts";
import { handMadeKey } from "./support/fixtures.ts";

const FAKE_SOURCE = String.raw`
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FAKE_ABI
#define FAKE_ABI 2
#endif
#ifndef FAKE_COUNT_STATUS
#define FAKE_COUNT_STATUS 0
#endif
#ifndef FAKE_CC_MAJOR
#define FAKE_CC_MAJOR 9
#endif
#ifndef FAKE_CC_MINOR
#define FAKE_CC_MINOR 0
#endif

static __thread char last_error[256];
static int64_t live_allocations, live_plans, plans_created, streams_created, syncs;
static int32_t last_ints[8];
static float last_floats[2];
static uint64_t last_stream;

typedef struct { int32_t num_slices, total_q, total_k; } plan_t;

static int32_t fail(int32_t status, const char* text) {
  snprintf(last_error, sizeof last_error, "%s", text);
  return status;
}

int32_t magi_ffa_abi_version(void) { return FAKE_ABI; }
const char* magi_ffa_last_error(void) { return last_error; }
#ifndef FAKE_HEAD_DIMS
#define FAKE_HEAD_DIMS 64, 128
#endif
static const int32_t fake_head_dims[] = {FAKE_HEAD_DIMS};
static const int32_t fake_dtypes[] = {0, 1};
static int32_t copy_list(const int32_t* values, int32_t n, int32_t* out, int32_t capacity, int32_t* count) {
  for (int32_t i = 0; i < n && i < capacity; i++) out[i] = values[i];
  *count = n;
  return 0;
}
int32_t magi_ffa_supported_head_dims(int32_t* out, int32_t capacity, int32_t* count) {
  return copy_list(fake_head_dims, (int32_t)(sizeof fake_head_dims / sizeof fake_head_dims[0]), out, capacity, count);
}
int32_t magi_ffa_supported_dtypes(int32_t* out, int32_t capacity, int32_t* count) {
  return copy_list(fake_dtypes, 2, out, capacity, count);
}
int32_t magi_ffa_device_count(int32_t* count) {
  if (FAKE_COUNT_STATUS) { *count = 0; return fail(FAKE_COUNT_STATUS, "fake: no CUDA-capable device is detected"); }
  *count = 1;
  return 0;
}
int32_t magi_ffa_device_name(int32_t device, char* name, size_t capacity) {
  snprintf(name, capacity, "Fake GPU %d", device);
  return 0;
}
int32_t magi_ffa_device_capability(int32_t device, int32_t* major, int32_t* minor) {
  *major = FAKE_CC_MAJOR; *minor = FAKE_CC_MINOR;
  return 0;
}
int32_t magi_ffa_set_device(int32_t device) { return device == 0 ? 0 : fail(101, "fake: invalid device"); }
int32_t magi_ffa_mem_info(size_t* free_bytes, size_t* total_bytes) { *free_bytes = 1000; *total_bytes = 2000; return 0; }
int32_t magi_ffa_malloc(void** pointer, size_t bytes) {
  *pointer = malloc(bytes ? bytes : 1);
  live_allocations++;
  return 0;
}
int32_t magi_ffa_free(void* pointer) {
  if ((uintptr_t)pointer < 4096) return fail(1, "fake: invalid device pointer");
  free(pointer);
  live_allocations--;
  return 0;
}
int32_t magi_ffa_memset(void* pointer, int32_t value, size_t bytes, void* stream) { memset(pointer, value, bytes); return 0; }
int32_t magi_ffa_memcpy_h2d(void* dst, const void* src, size_t bytes, void* stream) { memcpy(dst, src, bytes); return 0; }
int32_t magi_ffa_memcpy_d2h(void* dst, const void* src, size_t bytes, void* stream) { memcpy(dst, src, bytes); return 0; }
int32_t magi_ffa_memcpy_d2d(void* dst, const void* src, size_t bytes, void* stream) { memcpy(dst, src, bytes); return 0; }
int32_t magi_ffa_stream_create(void** stream) { *stream = malloc(8); streams_created++; return 0; }
int32_t magi_ffa_stream_destroy(void* stream) { free(stream); return 0; }
int32_t magi_ffa_stream_synchronize(void* stream) { syncs++; return 0; }
int32_t magi_ffa_plan_create(void** plan, const int32_t* q_ranges, const int32_t* k_ranges,
                             const int32_t* types, int32_t num_slices, int32_t total_q, int32_t total_k) {
  for (int32_t s = 0; s < num_slices; s++) {
    if (q_ranges[2 * s] < 0 || q_ranges[2 * s + 1] > total_q || k_ranges[2 * s + 1] > total_k || types[s] > 3)
      return fail(10001, "fake: bad slice");
  }
  plan_t* p = malloc(sizeof(plan_t));
  p->num_slices = num_slices; p->total_q = total_q; p->total_k = total_k;
  *plan = p;
  live_plans++; plans_created++;
  return 0;
}
int32_t magi_ffa_plan_destroy(void* plan) { free(plan); live_plans--; return 0; }
static void record(const plan_t* p, int32_t hq, int32_t hkv, int32_t d, int32_t dtype, float scale, float cap,
                   int32_t det, void* stream) {
  int32_t ints[8] = {hq, hkv, d, dtype, det, p->num_slices, p->total_q, p->total_k};
  memcpy(last_ints, ints, sizeof ints);
  last_floats[0] = scale; last_floats[1] = cap;
  last_stream = (uint64_t)(uintptr_t)stream;
}
int32_t magi_ffa_forward(const void* q, const void* k, const void* v, void* out, float* lse, const void* plan,
                         int32_t hq, int32_t hkv, int32_t d, int32_t dtype, float scale, float cap, int32_t det,
                         void* stream) {
  const plan_t* p = plan;
  if (hq == 3) return fail(10002, "fake: three query heads are not supported");
  record(p, hq, hkv, d, dtype, scale, cap, det, stream);
  memcpy(out, q, (size_t)p->total_q * hq * d * 2);
  for (int32_t i = 0; i < p->total_q; i++)
    for (int32_t h = 0; h < hq; h++) lse[i * hq + h] = (float)i + (float)h / 8.0f;
  return 0;
}
int32_t magi_ffa_backward(const void* dout, const void* q, const void* k, const void* v, const void* out,
                          const float* lse, void* dq, void* dk, void* dv, const void* plan, int32_t hq,
                          int32_t hkv, int32_t d, int32_t dtype, float scale, float cap, int32_t det, void* stream) {
  const plan_t* p = plan;
  record(p, hq, hkv, d, dtype, scale, cap, det, stream);
  memcpy(dq, dout, (size_t)p->total_q * hq * d * 2);
  memcpy(dk, k, (size_t)p->total_k * hkv * d * 2);
  memcpy(dv, v, (size_t)p->total_k * hkv * d * 2);
  return 0;
}
void fake_counters(int64_t* out) {
  out[0] = live_allocations; out[1] = live_plans; out[2] = plans_created; out[3] = streams_created; out[4] = syncs;
}
void fake_last_call(int32_t* ints, float* floats, uint64_t* stream) {
  memcpy(ints, last_ints, sizeof last_ints);
  memcpy(floats, last_floats, sizeof last_floats);
  *stream = last_stream;
}
`;

/** Variants of the fake library, by the C macros they are built with. */
const VARIANTS = {
  good: [],
  wrongAbi: ["-DFAKE_ABI=999"],
  noGpu: ["-DFAKE_COUNT_STATUS=100"],
  oldDriver: ["-DFAKE_COUNT_STATUS=35"],
  oldGpu: ["-DFAKE_CC_MAJOR=7", "-DFAKE_CC_MINOR=5"],
  headDim64Only: ["-DFAKE_HEAD_DIMS=64"],
} as const;
type Variant = keyof typeof VARIANTS;

const REPO_ROOT = new URL("../", import.meta.url).pathname;

function hasGcc(): boolean {
  try {
    return new Deno.Command("gcc", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

const gccAvailable = hasGcc();
const workDir = gccAvailable ? Deno.makeTempDirSync({ prefix: "magi_ffi_test_" }) : "";

/** Builds every variant once; returns their paths. */
function buildFakes(): Record<Variant, string> {
  const source = `${workDir}/fake_magi_ffa.c`;
  Deno.writeTextFileSync(source, FAKE_SOURCE);
  const paths = {} as Record<Variant, string>;
  for (const [variant, flags] of Object.entries(VARIANTS) as [Variant, readonly string[]][]) {
    const output = `${workDir}/${variant}/libmagi_ffa.so`;
    Deno.mkdirSync(`${workDir}/${variant}`, { recursive: true });
    const result = new Deno.Command("gcc", {
      args: ["-shared", "-fPIC", "-O1", ...flags, "-o", output, source],
    }).outputSync();
    if (!result.success) throw new Error(`gcc failed: ${new TextDecoder().decode(result.stderr)}`);
    paths[variant] = output;
  }
  return paths;
}

const fakes = gccAvailable ? buildFakes() : ({} as Record<Variant, string>);
const ignore = !gccAvailable;

/** The fake's introspection functions (same file, so the same globals as the binding's handle). */
function openIntrospection(path: string) {
  return Deno.dlopen(
    path,
    {
      fake_counters: { parameters: ["buffer"], result: "void" },
      fake_last_call: { parameters: ["buffer", "buffer", "buffer"], result: "void" },
    } as const,
  );
}

const introspection = gccAvailable ? openIntrospection(fakes.good) : undefined;

function counters(): { liveAllocations: number; livePlans: number; plansCreated: number; syncs: number } {
  const out = new BigInt64Array(5);
  introspection!.symbols.fake_counters(out);
  return {
    liveAllocations: Number(out[0]),
    livePlans: Number(out[1]),
    plansCreated: Number(out[2]),
    syncs: Number(out[4]),
  };
}

function lastCall(): {
  hq: number;
  hkv: number;
  headDim: number;
  dtype: number;
  deterministic: number;
  numSlices: number;
  totalQ: number;
  totalK: number;
  softmaxScale: number;
  softcap: number;
  stream: bigint;
} {
  const ints = new Int32Array(8);
  const floats = new Float32Array(2);
  const stream = new BigUint64Array(1);
  introspection!.symbols.fake_last_call(ints, floats, stream);
  const [hq, hkv, headDim, dtype, deterministic, numSlices, totalQ, totalK] = ints;
  return {
    hq,
    hkv,
    headDim,
    dtype,
    deterministic,
    numSlices,
    totalQ,
    totalK,
    softmaxScale: floats[0],
    softcap: floats[1],
    stream: stream[0],
  };
}

let scriptCount = 0;

/**
 * Runs `code` as a script in a fresh `deno run` with only the given permission flags (`deno eval` would
 * grant every permission) and a cleared environment plus `env`.
 */
async function runDeno(
  code: string,
  flags: readonly string[],
  env: Record<string, string> = {},
): Promise<{ stdout: string; stderr: string; success: boolean }> {
  const script = `${workDir}/script_${scriptCount++}.ts`;
  Deno.writeTextFileSync(script, code);
  const result = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-lock", "--no-config", "--no-prompt", ...flags, script],
    cwd: workDir,
    clearEnv: true,
    env: { HOME: Deno.env.get("HOME") ?? "/tmp", PATH: Deno.env.get("PATH") ?? "", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    stdout: decoder.decode(result.stdout),
    stderr: decoder.decode(result.stderr),
    success: result.success,
  };
}

Deno.test("loader: a missing library names the path, its source and the fix, with cause", () => {
  const path = "/nonexistent/magi-attn/libmagi_ffa.so";
  assert.throws(
    () => loadCudaLibrary({ libraryPath: path }),
    (error: unknown) => {
      assert.ok(error instanceof BackendUnavailableError);
      assert.match(error.message, /\/nonexistent\/magi-attn\/libmagi_ffa\.so \(option libraryPath\)/);
      assert.match(error.message, /deno task build/);
      assert.ok(error.cause instanceof Error, "cause is the dlopen error");
      assert.match(String((error.cause as Error).message), /libmagi_ffa\.so|No such file/);
      return true;
    },
  );
});

Deno.test("loader: probe of a missing library reports unavailable instead of throwing", () => {
  const probe = probeCudaBackend({ libraryPath: "/nonexistent/probe/libmagi_ffa.so" });
  assert.equal(probe.available, false);
  assert.match(probe.reason ?? "", /\/nonexistent\/probe\/libmagi_ffa\.so/);
  assert.equal(probeCudaBackend({ libraryPath: "/nonexistent/probe/libmagi_ffa.so" }), probe, "cached");
});

Deno.test("loader: default candidates are the local build then the versioned user cache", () => {
  const previous = Deno.env.get("MAGI_FFA_LIBRARY");
  Deno.env.delete("MAGI_FFA_LIBRARY");
  try {
    const candidates = libraryCandidates();
    assert.equal(candidates[0].source, "local build");
    assert.equal(candidates[0].path, `${REPO_ROOT}build/libmagi_ffa.so`);
    assert.equal(candidates[1].source, "user cache");
    assert.ok(candidates[1].path.endsWith(`/magi-attn/${PACKAGE_VERSION}/libmagi_ffa.so`));
    Deno.env.set("MAGI_FFA_LIBRARY", "/elsewhere/libmagi_ffa.so");
    assert.deepEqual(libraryCandidates(), [{
      path: "/elsewhere/libmagi_ffa.so",
      source: "env MAGI_FFA_LIBRARY",
    }]);
    assert.deepEqual(libraryCandidates({ libraryPath: "/explicit.so" }), [
      { path: "/explicit.so", source: "option libraryPath" },
    ]);
  } finally {
    if (previous === undefined) Deno.env.delete("MAGI_FFA_LIBRARY");
    else Deno.env.set("MAGI_FFA_LIBRARY", previous);
  }
});

/** Copies the loader's modules into `root` so that its "local build" is `root/build/libmagi_ffa.so`. */
function copyLoaderTo(root: string): void {
  Deno.mkdirSync(`${root}/ffi`, { recursive: true });
  Deno.mkdirSync(`${root}/lib/core`, { recursive: true });
  for (const file of ["ffi/library.ts", "ffi/ffi.ts", "lib/core/errors.ts", "deno.json"]) {
    Deno.copyFileSync(`${REPO_ROOT}${file}`, `${root}/${file}`);
  }
}

Deno.test({
  name: "loader: default lookup lists every path tried, with an AggregateError cause",
  ignore,
  async fn() {
    const root = `${workDir}/copy_missing`;
    copyLoaderTo(root);
    const code = `
      import { loadCudaLibrary } from "${root}/ffi/library.ts";
      try { loadCudaLibrary(); console.log("LOADED"); } catch (error) {
        console.log(JSON.stringify({ name: error.name, message: error.message, cause: error.cause?.constructor.name,
          count: error.cause?.errors?.length }));
      }`;
    const result = await runDeno(code, ["--allow-ffi", "--allow-env", "--allow-read"], {
      XDG_CACHE_HOME: `${workDir}/empty_cache`,
    });
    assert.ok(result.success, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.name, "BackendUnavailableError");
    assert.ok(report.message.includes(`${root}/build/libmagi_ffa.so (local build)`), report.message);
    assert.ok(
      report.message.includes(
        `${workDir}/empty_cache/magi-attn/${PACKAGE_VERSION}/libmagi_ffa.so (user cache)`,
      ),
      report.message,
    );
    assert.equal(report.cause, "AggregateError");
    assert.equal(report.count, 2);
  },
});

Deno.test({
  name: "loader: a wrong-ABI local build is skipped for a good user-cache build",
  ignore,
  async fn() {
    const root = `${workDir}/copy_fallback`;
    copyLoaderTo(root);
    Deno.mkdirSync(`${root}/build`, { recursive: true });
    Deno.copyFileSync(fakes.wrongAbi, `${root}/build/libmagi_ffa.so`);
    const cacheDir = `${workDir}/cache/magi-attn/${PACKAGE_VERSION}`;
    Deno.mkdirSync(cacheDir, { recursive: true });
    Deno.copyFileSync(fakes.good, `${cacheDir}/libmagi_ffa.so`);
    const code = `
      import { loadCudaLibrary } from "${root}/ffi/library.ts";
      console.log(loadCudaLibrary().path);`;
    const result = await runDeno(code, ["--allow-ffi", "--allow-env", "--allow-read"], {
      XDG_CACHE_HOME: `${workDir}/cache`,
    });
    assert.ok(result.success, result.stderr);
    assert.equal(result.stdout.trim(), `${cacheDir}/libmagi_ffa.so`);
  },
});

Deno.test({
  name: "loader: a library of another ABI version is rejected naming both versions and the fix",
  ignore,
  fn() {
    assert.throws(
      () => loadCudaLibrary({ libraryPath: fakes.wrongAbi }),
      (error: unknown) => {
        assert.ok(error instanceof BackendUnavailableError);
        assert.match(error.message, /ABI version 999/);
        assert.match(error.message, new RegExp(`needs ABI version ${MAGI_FFA_ABI_VERSION}`));
        assert.match(error.message, /rebuild it with `deno task build`/);
        return true;
      },
    );
  },
});

Deno.test({
  name: "loader: MAGI_FFA_LIBRARY is used, and only it is tried",
  ignore,
  async fn() {
    const code = `
      import { loadCudaLibrary } from "${REPO_ROOT}ffi/library.ts";
      try { console.log("LOADED " + loadCudaLibrary().path); } catch (error) { console.log(error.message); }`;
    const good = await runDeno(code, ["--allow-ffi", "--allow-env", "--allow-read"], {
      MAGI_FFA_LIBRARY: fakes.good,
    });
    assert.equal(good.stdout.trim(), `LOADED ${fakes.good}`, good.stderr);
    const missing = await runDeno(code, ["--allow-ffi", "--allow-env", "--allow-read"], {
      MAGI_FFA_LIBRARY: `${workDir}/missing.so`,
    });
    assert.match(missing.stdout, /missing\.so \(env MAGI_FFA_LIBRARY\)/);
    assert.doesNotMatch(missing.stdout, /local build|user cache/);
  },
});

Deno.test({
  name: "loader: missing --allow-ffi / --allow-env is rethrown as Deno.errors.NotCapable",
  ignore,
  async fn() {
    const withPath = `
      import { loadCudaLibrary, probeCudaBackend } from "${REPO_ROOT}ffi/library.ts";
      for (const attempt of [() => loadCudaLibrary({ libraryPath: "${fakes.good}" }),
                             () => probeCudaBackend({ libraryPath: "${fakes.good}" })]) {
        try { attempt(); console.log("NO ERROR"); }
        catch (error) { console.log(error instanceof Deno.errors.NotCapable ? "NotCapable" : error.name); }
      }`;
    const noFfi = await runDeno(withPath, ["--allow-read", "--allow-env"]);
    assert.equal(noFfi.stdout.trim(), "NotCapable\nNotCapable", noFfi.stderr);
    const noEnv = `
      import { loadCudaLibrary } from "${REPO_ROOT}ffi/library.ts";
      try { loadCudaLibrary(); console.log("NO ERROR"); }
      catch (error) { console.log(error instanceof Deno.errors.NotCapable ? "NotCapable" : error.name); }
      console.log(loadCudaLibrary({ libraryPath: "${fakes.good}" }).path);`;
    const result = await runDeno(noEnv, ["--allow-read", "--allow-ffi"]);
    assert.equal(result.stdout.trim(), `NotCapable\n${fakes.good}`, result.stderr);
  },
});

Deno.test({
  name:
    "probe: no driver/GPU, an old driver and an old GPU are unavailable with reasons; a good GPU is listed",
  ignore,
  fn() {
    for (const variant of ["noGpu", "oldDriver"] as const) {
      const probe = probeCudaBackend({ libraryPath: fakes[variant] });
      assert.equal(probe.available, false);
      assert.match(probe.reason ?? "", /no CUDA driver\/GPU/);
      assert.match(
        probe.reason ?? "",
        /no CUDA-capable device is detected/,
        "the library's text is included",
      );
      assert.equal(probe.libraryPath, fakes[variant]);
    }
    const old = probeCudaBackend({ libraryPath: fakes.oldGpu });
    assert.equal(old.available, false);
    assert.match(old.reason ?? "", /compute capability 7\.5/);
    assert.match(old.reason ?? "", /8\.0 or newer/);
    const good = probeCudaBackend({ libraryPath: fakes.good });
    assert.deepEqual(good, {
      available: true,
      libraryPath: fakes.good,
      devices: [{ index: 0, name: "Fake GPU 0", major: 9, minor: 0 }],
    });
    assert.equal(probeCudaBackend({ libraryPath: fakes.good }), good, "cached");
  },
});

Deno.test({
  name: "checkStatus: a failure carries the status, its name and the library's last-error text",
  ignore,
  fn() {
    const library = loadCudaLibrary({ libraryPath: fakes.good });
    assert.equal(loadCudaLibrary({ libraryPath: fakes.good }), library, "cached per path");
    checkStatus(library, 0, "nothing");
    const status = library.symbols.magi_ffa_free(Deno.UnsafePointer.create(16n));
    assert.throws(() => checkStatus(library, status, "magi_ffa_free"), (error: unknown) => {
      assert.ok(error instanceof MagiFfaError);
      assert.equal(error.status, 1);
      assert.equal(
        error.message,
        "magi-attn: magi_ffa_free failed with status 1 (cudaErrorInvalidValue): fake: invalid device pointer",
      );
      return true;
    });
  },
});

const DTYPES: readonly DType[] = ["float32", "float16", "bfloat16"];

Deno.test({
  name: "device tensors (fake library): round trip, dispose, use after dispose, using",
  ignore,
  async fn(t) {
    const opts = { libraryPath: fakes.good };
    const before = counters().liveAllocations;
    await t.step("toDevice/toHost round trip keeps shape, dtype and every bit", async () => {
      for (const dtype of DTYPES) {
        const host = randomTensor([5, 3, 4], { seed: 7, dtype });
        const device = toDevice(host, opts);
        assert.ok(isDeviceTensor(device));
        assert.deepEqual([device.shape, device.dtype, device.byteLength], [
          [5, 3, 4],
          dtype,
          60 * (dtype === "float32" ? 4 : 2),
        ]);
        const back = await toHost(device);
        assert.equal(back.dtype, dtype);
        assert.deepEqual(back.shape, [5, 3, 4]);
        assert.deepEqual(new Uint8Array(back.data.buffer), new Uint8Array(host.data.buffer));
        device.dispose();
      }
    });
    await t.step("dispose twice is safe and frees once; use after dispose names the fix", async () => {
      const device = toDevice(randomTensor([2, 2], { dtype: "bfloat16" }), opts);
      assert.equal(counters().liveAllocations, before + 1);
      device.dispose();
      device.dispose();
      assert.equal(device.disposed, true);
      assert.equal(counters().liveAllocations, before);
      assert.throws(
        () => device.pointer,
        /DeviceTensor \[2, 2\] bfloat16 used after dispose\(\)\. Fix: keep/,
      );
      await assert.rejects(() => toHost(device), /used after dispose/);
    });
    await t.step("using frees at the end of the block", () => {
      {
        using scoped = emptyDevice([4, 4], "float16", opts);
        assert.equal(counters().liveAllocations, before + 1);
        assert.equal(scoped.disposed, false);
      }
      assert.equal(counters().liveAllocations, before);
    });
    await t.step("fillDeviceBytes 0xFF makes every element NaN; empty tensors need no memory", async () => {
      using device = emptyDevice([3, 2], "bfloat16", opts);
      fillDeviceBytes(device, 0xff);
      const back = await toHost(device);
      assert.ok(bf16ToFloat32(back.data as Uint16Array).every(Number.isNaN));
      using empty = emptyDevice([0, 4], "float32", opts);
      assert.equal(empty.pointer, null);
      assert.equal((await toHost(empty)).data.length, 0);
    });
    await t.step("bad input is rejected before anything is allocated", () => {
      assert.throws(() => emptyDevice([2, -1], "float16", opts), MagiAttnInputError);
      assert.throws(() => emptyDevice([2], "int8" as DType, opts), /`dtype` is "int8"/);
      const mismatched = { data: new Float32Array(3), shape: [4], dtype: "float32" } as HostTensor;
      assert.throws(
        () => toDevice(mismatched, opts),
        /`host.data` has 3 elements but host.shape \[4\] holds 4/,
      );
      assert.throws(
        () => new DeviceTensor(Symbol() as never, null as never, null, [1], "float16"),
        TypeError,
      );
      assert.equal(counters().liveAllocations, before);
    });
  },
});

/** Two causal documents of 5 and 3 tokens, one key object shared by every call (as compiled keys are). */
const packedKey = handMadeKey([[0, 5, 0, 5, 1], [5, 8, 5, 8, 1]], 8);

/** Small q/k/v for the backend marshalling tests. */
function smallInputs(dtype: DType, headsQ = 4, headsKV = 2, headDim = 64) {
  const key = packedKey;
  return {
    key,
    q: randomTensor([8, headsQ, headDim], { seed: 1, dtype }),
    k: randomTensor([8, headsKV, headDim], { seed: 2, dtype }),
    v: randomTensor([8, headsKV, headDim], { seed: 3, dtype }),
  };
}

function expectedLse(totalQ: number, headsQ: number): Float32Array {
  const lse = new Float32Array(totalQ * headsQ);
  for (let i = 0; i < totalQ; i++) for (let h = 0; h < headsQ; h++) lse[i * headsQ + h] = i + h / 8;
  return lse;
}

Deno.test({
  name: "cuda backend (fake library): marshalling, output placement, plan cache, temporaries freed",
  ignore,
  async fn(t) {
    const libraryPath = fakes.good;
    const library = loadCudaLibrary({ libraryPath });
    const baseline = counters();

    await t.step("host inputs → host outputs, arguments passed through, temporaries freed", async () => {
      const { key, q, k, v } = smallInputs("bfloat16");
      const result = await cudaForward(q, k, v, key, { libraryPath, softcap: 30, deterministic: true });
      assert.ok(!isDeviceTensor(result.out) && !isDeviceTensor(result.lse));
      assert.deepEqual(new Uint16Array(result.out.data.buffer), q.data, "out = q from the fake kernel");
      assert.equal(result.lse.dtype, "float32");
      assert.deepEqual(result.lse.shape, [8, 4]);
      assert.deepEqual(result.lse.data, expectedLse(8, 4));
      const call = lastCall();
      assert.deepEqual(
        [
          call.hq,
          call.hkv,
          call.headDim,
          call.dtype,
          call.deterministic,
          call.numSlices,
          call.totalQ,
          call.totalK,
        ],
        [4, 2, 64, 1, 1, 2, 8, 8],
      );
      assert.equal(call.softmaxScale, Math.fround(1 / 8));
      assert.equal(call.softcap, 30);
      assert.equal(call.stream, Deno.UnsafePointer.value(library.stream()), "the library-owned stream");
      assert.equal(counters().liveAllocations, baseline.liveAllocations, "uploads and outputs freed");
    });

    await t.step("the plan is created once per key and reused across calls", async () => {
      const { key, q, k, v } = smallInputs("float16");
      const created = counters().plansCreated;
      await cudaForward(q, k, v, key, { libraryPath });
      await cudaForward(q, k, v, key, { libraryPath, softmaxScale: 0.5 });
      assert.equal(counters().plansCreated, created, "same key as the previous step: no new plan");
      assert.equal(lastCall().dtype, 0, "float16 code");
      assert.equal(lastCall().softmaxScale, 0.5);
      const other = handMadeKey([[0, 8, 0, 8, 1]], 8);
      await cudaForward(q, k, v, other, { libraryPath });
      assert.equal(counters().plansCreated, created + 1);
      assert.equal(lastCall().numSlices, 1);
    });

    await t.step("device inputs → device outputs without copies; outputs option is written", async () => {
      const { key, q, k, v } = smallInputs("bfloat16");
      using qd = toDevice(q, { libraryPath });
      using kd = toDevice(k, { libraryPath });
      using vd = toDevice(v, { libraryPath });
      const syncsBefore = counters().syncs;
      const result = await cudaForward(qd, kd, vd, key);
      assert.ok(result.out instanceof DeviceTensor && result.lse instanceof DeviceTensor);
      assert.equal(counters().syncs, syncsBefore, "no synchronization on the all-device path");
      using out = result.out;
      using lse = result.lse;
      assert.deepEqual((await toHost(out)).data, q.data);
      using givenOut = emptyDevice([8, 4, 64], "bfloat16", { libraryPath });
      using givenLse = emptyDevice([8, 4], "float32", { libraryPath });
      const written = await cudaForward(qd, kd, vd, key, { outputs: { out: givenOut, lse: givenLse } });
      assert.equal(written.out, givenOut);
      assert.equal(written.lse, givenLse);
      assert.deepEqual((await toHost(givenLse)).data, expectedLse(8, 4));
      await assert.rejects(
        () => cudaForward(q, kd, vd, key, { outputs: { out: givenOut } }),
        /`opts.outputs` was given but some inputs are host tensors/,
      );
      await assert.rejects(
        () => cudaForward(qd, kd, vd, key, { outputs: { lse: givenOut } }),
        /`opts.outputs.lse` is \[8, 4, 64\] bfloat16 but must be \[8, 4\] float32/,
      );
      assert.equal(lse.disposed, false);
    });

    await t.step("fresh forward outputs share one allocation, freed with the last of them", async () => {
      const { key, q, k, v } = smallInputs("bfloat16");
      using qd = toDevice(q, { libraryPath });
      using kd = toDevice(k, { libraryPath });
      using vd = toDevice(v, { libraryPath });
      const before = counters().liveAllocations;
      const { out, lse } = await cudaForward(qd, kd, vd, key);
      assert.equal(counters().liveAllocations, before + 1, "out and lse: one magi_ffa_malloc");
      const outAddress = Deno.UnsafePointer.value(out.pointer);
      const lseAddress = Deno.UnsafePointer.value(lse.pointer);
      assert.equal(
        BigInt(lseAddress) - BigInt(outAddress),
        8n * 4n * 64n * 2n,
        "lse right after out (256-aligned)",
      );
      // Both views really are separate storage: out = q, lse = the fake's pattern.
      assert.deepEqual((await toHost(out)).data, q.data);
      assert.deepEqual((await toHost(lse)).data, expectedLse(8, 4));
      out.dispose();
      assert.equal(counters().liveAllocations, before + 1, "lse still uses the allocation");
      assert.throws(() => out.pointer, /used after dispose/);
      assert.deepEqual((await toHost(lse)).data, expectedLse(8, 4), "lse readable after out is disposed");
      lse.dispose();
      lse.dispose();
      assert.equal(counters().liveAllocations, before, "freed once, with the last user");
    });

    await t.step("mixed host and device inputs give host outputs", async () => {
      const { key, q, k, v } = smallInputs("bfloat16");
      using kd = toDevice(k, { libraryPath });
      const result = await cudaForward(q, kd, v, key, { libraryPath });
      assert.ok(!isDeviceTensor(result.out));
      assert.deepEqual(result.out.data, q.data);
      assert.equal(kd.disposed, false, "a caller's device tensor is not freed");
    });

    await t.step("backward: gradients land in the right outputs, host and device", async () => {
      const { key, q, k, v } = smallInputs("bfloat16");
      const { out, lse } = await cudaForward(q, k, v, key, { libraryPath });
      const dout = randomTensor([8, 4, 64], { seed: 9, dtype: "bfloat16" });
      const host = await cudaBackward(dout, q, k, v, out, lse, key, { libraryPath, softcap: 5 });
      assert.deepEqual(host.dq.data, dout.data);
      assert.deepEqual(host.dk.data, k.data);
      assert.deepEqual(host.dv.data, v.data);
      assert.equal(lastCall().softcap, 5);
      const devices = [dout, q, k, v, out, lse].map((item) => toDevice(item, { libraryPath }));
      const [doutD, qD, kD, vD, outD, lseD] = devices;
      const grads = await cudaBackward(doutD, qD, kD, vD, outD, lseD, key, { deterministic: true });
      assert.ok(isDeviceTensor(grads.dq) && isDeviceTensor(grads.dk) && isDeviceTensor(grads.dv));
      assert.equal(lastCall().deterministic, 1);
      assert.deepEqual((await toHost(grads.dk)).data, k.data);
      for (const item of [...devices, grads.dq, grads.dk, grads.dv]) item.dispose();
    });

    await t.step("GPU-only limits: float32 and head dim 96 are rejected naming the fix", async () => {
      const f32 = smallInputs("float32");
      await assert.rejects(
        () => cudaForward(f32.q, f32.k, f32.v, f32.key, { libraryPath }),
        (error: unknown) => {
          assert.ok(error instanceof MagiAttnInputError);
          assert.match(error.message, /`q.dtype` is float32/);
          assert.match(error.message, /cast q, k and v to bfloat16 or float16, or use backend "cpu"/);
          return true;
        },
      );
      const wide = smallInputs("bfloat16", 4, 2, 96);
      await assert.rejects(
        () => cudaForward(wide.q, wide.k, wide.v, wide.key, { libraryPath }),
        /has head dim 96.*use backend "cpu"/,
      );
    });

    await t.step("the head dims and dtypes come from the library (read once at load)", async () => {
      assert.deepEqual(loadCudaLibrary({ libraryPath }).supportedHeadDims, [64, 128]);
      assert.deepEqual(loadCudaLibrary({ libraryPath }).supportedDtypes, [0, 1]);
      // A library compiled for head dim 64 only: 128 is refused, naming what that library takes.
      const narrow = fakes.headDim64Only;
      assert.deepEqual(loadCudaLibrary({ libraryPath: narrow }).supportedHeadDims, [64]);
      const d128 = smallInputs("bfloat16", 4, 2, 128);
      await assert.rejects(
        () => cudaForward(d128.q, d128.k, d128.v, d128.key, { libraryPath: narrow }),
        (error: unknown) => {
          assert.ok(error instanceof MagiAttnInputError, String(error));
          assert.match(
            error.message,
            /has head dim 128, which the CUDA backend does not run \(it takes 64\)/,
          );
          assert.match(error.message, /use head dim 64, or use backend "cpu"/);
          return true;
        },
      );
      const d64 = smallInputs("bfloat16", 4, 2, 64);
      const { out } = await cudaForward(d64.q, d64.k, d64.v, d64.key, { libraryPath: narrow });
      assert.deepEqual((out as HostTensor).data, d64.q.data, "head dim 64 runs on the fake kernel (out = q)");
    });

    await t.step("a kernel failure throws the library's text and frees what the call allocated", async () => {
      const { key, q, k, v } = smallInputs("bfloat16", 3, 1);
      const before = counters().liveAllocations;
      await assert.rejects(
        () => cudaForward(q, k, v, key, { libraryPath }),
        /magi_ffa_forward failed with status 10002 \(MAGI_FFA_E_UNSUPPORTED\): fake: three query heads/,
      );
      assert.equal(counters().liveAllocations, before);
      using qd = toDevice(q, { libraryPath });
      using kd = toDevice(k, { libraryPath });
      using vd = toDevice(v, { libraryPath });
      await assert.rejects(() => cudaForward(qd, kd, vd, key), /fake: three query heads/);
      assert.equal(counters().liveAllocations, before + 3, "only the inputs remain");
    });

    await t.step("a disposed input is refused before any work", async () => {
      const { key, q, k, v } = smallInputs("bfloat16");
      const qd = toDevice(q, { libraryPath });
      using kd = toDevice(k, { libraryPath });
      using vd = toDevice(v, { libraryPath });
      qd.dispose();
      const before = counters().liveAllocations;
      await assert.rejects(() => cudaForward(qd, kd, vd, key), /used after dispose/);
      assert.equal(counters().liveAllocations, before);
    });
    assert.equal(counters().liveAllocations, baseline.liveAllocations, "nothing leaked over the whole test");
  },
});

Deno.test({
  name: "cuda backend (fake library): a collected key's plan is destroyed after synchronization",
  ignore,
  async fn() {
    const code = `
      import { cudaForward, retiredPlanCount } from "${REPO_ROOT}ffi/cuda_backend.ts";
      import { loadCudaLibrary } from "${REPO_ROOT}ffi/library.ts";
      import { randomTensor } from "${REPO_ROOT}lib/core/tensor.ts";
      const libraryPath = "${fakes.good}";
      const library = loadCudaLibrary({ libraryPath });
      const introspection = Deno.dlopen(libraryPath, { fake_counters: { parameters: ["buffer"], result: "void" } });
      const livePlans = () => { const c = new BigInt64Array(5); introspection.symbols.fake_counters(c); return Number(c[1]); };
      const q = randomTensor([4, 1, 64], { dtype: "bfloat16" });
      const makeKey = (n) => Object.freeze({ qRanges: Int32Array.of(0, n), kRanges: Int32Array.of(0, n),
        attnTypeMap: Int32Array.of(1), totalQ: 4, totalK: 4, maxSeqlenQ: n, maxSeqlenK: n, area: 0 });
      await (async () => { await cudaForward(q, q, q, makeKey(4), { libraryPath }); })();
      const afterFirst = livePlans();
      for (let round = 0; round < 20 && retiredPlanCount(library) === 0; round++) {
        globalThis.gc();
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      const retired = retiredPlanCount(library);
      await cudaForward(q, q, q, makeKey(3), { libraryPath });
      console.log(JSON.stringify({ afterFirst, retired, afterSecond: livePlans(), left: retiredPlanCount(library) }));`;
    const result = await runDeno(code, [
      "--allow-ffi",
      "--allow-read",
      "--allow-env",
      "--v8-flags=--expose-gc",
    ]);
    assert.ok(result.success, result.stderr);
    // One live plan after the first call; its key collected → retired; the next host call synchronizes,
    // destroys it, and creates its own plan (still referenced by its key): one live plan, none retired.
    assert.deepEqual(JSON.parse(result.stdout), { afterFirst: 1, retired: 1, afterSecond: 1, left: 0 });
  },
});

Deno.test({
  name: "real library: when built, it loads with the right ABI and the probe answers without throwing",
  ignore: !(() => {
    try {
      return Deno.statSync(`${REPO_ROOT}build/libmagi_ffa.so`).isFile;
    } catch {
      return false;
    }
  })(),
  fn() {
    const libraryPath = `${REPO_ROOT}build/libmagi_ffa.so`;
    const library = loadCudaLibrary({ libraryPath });
    assert.equal(library.symbols.magi_ffa_abi_version(), MAGI_FFA_ABI_VERSION);
    // The lists the C side declares once (ffi/cuda/common/shapes.cuh); no GPU needed to read them.
    assert.deepEqual(library.supportedHeadDims, [64, 128]);
    assert.deepEqual(library.supportedDtypes, [MAGI_FFA_DTYPE.float16, MAGI_FFA_DTYPE.bfloat16]);
    const probe = probeCudaBackend({ libraryPath });
    if (probe.available) {
      assert.ok((probe.devices?.length ?? 0) > 0);
    } else {
      // On a machine without a GPU (like the CI box) the reason must say so, not crash.
      assert.match(probe.reason ?? "", /no CUDA driver\/GPU|compute capability/);
    }
  },
});

globalThis.addEventListener("unload", () => {
  introspection?.close();
  if (workDir) Deno.removeSync(workDir, { recursive: true });
});
