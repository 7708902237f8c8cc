/**
 * A fake `libmagi_ffa.so` for CPU-only tests of the FFI binding, compiled with gcc from the C source below.
 * It implements the ABI on host memory (malloc for device memory, memcpy for copies), records the arguments
 * of every kernel call, and its "kernels" write checkable patterns (out = q, lse[i, h] = i + h / 8,
 * dq = dout, dk = k, dv = v), so tests see exactly what the binding passed. Every variant is built once
 * per process, at import; without gcc `gccAvailable` is false and the tests that need it skip.
 * @module
 */

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
export const VARIANTS = {
  good: [],
  wrongAbi: ["-DFAKE_ABI=999"],
  noGpu: ["-DFAKE_COUNT_STATUS=100"],
  oldDriver: ["-DFAKE_COUNT_STATUS=35"],
  oldGpu: ["-DFAKE_CC_MAJOR=7", "-DFAKE_CC_MINOR=5"],
  headDim64Only: ["-DFAKE_HEAD_DIMS=64"],
} as const;
export type Variant = keyof typeof VARIANTS;

/** The repository root, with a trailing slash. */
export const REPO_ROOT: string = new URL("../../", import.meta.url).pathname;

function hasGcc(): boolean {
  try {
    return new Deno.Command("gcc", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

/** Whether gcc is here (the fakes exist only then). */
export const gccAvailable: boolean = hasGcc();
/** Scratch folder of the fakes and of scripts run by {@linkcode runDeno}; removed at unload. */
export const workDir: string = gccAvailable ? Deno.makeTempDirSync({ prefix: "magi_ffi_test_" }) : "";

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

/** Path of each variant's library (empty without gcc). */
export const fakes: Record<Variant, string> = gccAvailable ? buildFakes() : ({} as Record<Variant, string>);

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

/** The fake's counters: live allocations and plans, plans ever created, stream synchronizations. */
export function counters(): {
  liveAllocations: number;
  livePlans: number;
  plansCreated: number;
  syncs: number;
} {
  const out = new BigInt64Array(5);
  introspection!.symbols.fake_counters(out);
  return {
    liveAllocations: Number(out[0]),
    livePlans: Number(out[1]),
    plansCreated: Number(out[2]),
    syncs: Number(out[4]),
  };
}

/** The arguments of the fake's last forward or backward call. */
export function lastCall(): {
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
export async function runDeno(
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

globalThis.addEventListener("unload", () => {
  introspection?.close();
  if (workDir) Deno.removeSync(workDir, { recursive: true });
});
