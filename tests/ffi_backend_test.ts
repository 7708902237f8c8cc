/**
 * CPU-side tests of the FFI binding's device tensors and the CUDA backend's marshalling, on the fake
 * library (tests/support/fake_library.ts), whose "kernels" write checkable patterns. Skipped when gcc is
 * absent.
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { bf16ToFloat32, type DType, type HostTensor, randomTensor } from "../lib/core/tensor.ts";
import { loadCudaLibrary } from "../ffi/library.ts";
import {
  DeviceTensor,
  emptyDevice,
  fillDeviceBytes,
  isDeviceTensor,
  toDevice,
  toHost,
} from "../ffi/device.ts";
import { cudaBackward, cudaForward } from "../ffi/cuda_backend.ts";
import { flexFlashAttnForward } from "../lib/backends/ffa.ts";
import { handMadeKey } from "./support/fixtures.ts";
import { counters, fakes, gccAvailable, lastCall, REPO_ROOT, runDeno } from "./support/fake_library.ts";

const ignore = !gccAvailable;

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
  name: 'backend "auto" (fake library): CUDA runs exactly the head dims and dtypes the loaded library lists',
  ignore,
  async fn(t) {
    const cases: { library: "good" | "headDim64Only"; dtype: DType; headDim: number; gpu: boolean }[] = [
      { library: "good", dtype: "bfloat16", headDim: 128, gpu: true },
      { library: "good", dtype: "float16", headDim: 64, gpu: true },
      { library: "good", dtype: "bfloat16", headDim: 96, gpu: false },
      { library: "good", dtype: "float32", headDim: 64, gpu: false },
      { library: "headDim64Only", dtype: "bfloat16", headDim: 64, gpu: true },
      { library: "headDim64Only", dtype: "bfloat16", headDim: 128, gpu: false },
    ];
    for (const { library, dtype, headDim, gpu } of cases) {
      await t.step(`${library} library, ${dtype}, head dim ${headDim}: ${gpu ? "CUDA" : "CPU"}`, async () => {
        const { key, q, k, v } = smallInputs(dtype, 4, 2, headDim);
        const libraryPath = fakes[library];
        const auto = await flexFlashAttnForward(q, k, v, key, { libraryPath });
        const cpu = await flexFlashAttnForward(q, k, v, key, { backend: "cpu" });
        // The fake kernel's pattern (out = q, lse = i + h / 8) versus the CPU reference's bits.
        const fakeRan = auto.out.data.every((value, index) => value === q.data[index]) &&
          auto.lse.data.every((value, index) => value === expectedLse(8, 4)[index]);
        assert.equal(fakeRan, gpu);
        if (!gpu) {
          assert.deepEqual(auto.out.data, cpu.out.data);
          assert.deepEqual(auto.lse.data, cpu.lse.data);
        }
      });
    }
  },
});
