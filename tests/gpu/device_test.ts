/**
 * Device tensors on a real GPU: copies in both directions keep every bit, disposal is idempotent and frees
 * the memory, use after dispose names the fix, `using` frees at block end, and device inputs give device
 * outputs. Registered as ignored when `probeCudaBackend()` finds no usable GPU.
 */

import assert from "node:assert/strict";
import { probeCudaBackend } from "../../ffi/library.ts";
import {
  deviceMemoryInfo,
  type DeviceTensor,
  emptyDevice,
  fillDeviceBytes,
  isDeviceTensor,
  synchronize,
  toDevice,
  toHost,
} from "../../ffi/device.ts";
import { cudaBackward, cudaForward } from "../../ffi/cuda_backend.ts";
import { AttnMaskSpec } from "../../lib/masks/spec.ts";
import { compileFlexKey } from "../../lib/masks/flex_key.ts";
import { referenceForward } from "../../lib/backends/reference.ts";
import { type DType, type HostTensor, randomTensor, toFloat64 } from "../../lib/core/tensor.ts";
import { relativeError } from "../support/oracle.ts";
import { backendNotice } from "../support/backend_notice.ts";
import { backendInfo } from "../../lib/backends/ffa.ts";

const probe = probeCudaBackend();
const ignore = !probe.available;
if (ignore) console.log(backendNotice("GPU device tests skipped: ", backendInfo()));

function bytesOf(t: HostTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

Deno.test({
  name: "device: toDevice/toHost round trip keeps every bit, for each dtype and an empty tensor",
  ignore,
  async fn() {
    for (const dtype of ["bfloat16", "float16", "float32"] as const) {
      const host = randomTensor([1000, 3, 7], { seed: 5, dtype });
      using device = toDevice(host);
      assert.deepEqual([device.shape, device.dtype, device.byteLength], [
        [1000, 3, 7],
        dtype,
        host.data.byteLength,
      ]);
      const back = await toHost(device);
      assert.equal(back.dtype, dtype);
      assert.deepEqual(back.shape, host.shape);
      assert.deepEqual(bytesOf(back), bytesOf(host));
    }
    using empty = toDevice(randomTensor([0, 8, 64], { dtype: "bfloat16" }));
    assert.equal((await toHost(empty)).data.length, 0);
  },
});

Deno.test({
  name: "device: fillDeviceBytes writes every byte (0xFF = NaN, 0 = zero)",
  ignore,
  async fn() {
    using device = emptyDevice([513, 3], "float32");
    fillDeviceBytes(device, 0xff);
    assert.ok((await toHost(device)).data.every(Number.isNaN));
    fillDeviceBytes(device, 0);
    assert.ok((await toHost(device)).data.every((value) => value === 0));
  },
});

Deno.test({
  name: "device: dispose twice is safe, returns the memory, and use after dispose names the fix",
  ignore,
  async fn() {
    const bytes = 1024 * 1024 * 1024;
    // Allocations come from a stream-ordered pool that reserves memory in chunks and may already hold a
    // partly used chunk: compare with a 64 MiB slack, far below the 1 GiB allocated.
    const slack = 64 * 1024 * 1024;
    await synchronize();
    const before = deviceMemoryInfo().freeBytes;
    const device = emptyDevice([bytes / 2], "bfloat16");
    const during = deviceMemoryInfo().freeBytes;
    assert.ok(
      before - during >= bytes - slack,
      `allocating ${bytes} bytes lowered free memory by ${before - during}`,
    );
    device.dispose();
    device.dispose();
    assert.equal(device.disposed, true);
    await synchronize(); // a stream-ordered allocator returns freed memory at synchronization
    const after = deviceMemoryInfo().freeBytes;
    assert.ok(after - during >= bytes - slack, `dispose() gave back ${after - during} of ${bytes} bytes`);
    assert.throws(() => device.pointer, /used after dispose\(\)\. Fix: keep the tensor alive/);
    await assert.rejects(() => toHost(device), /used after dispose/);
  },
});

Deno.test({
  name: "device: `using` disposes at the end of the block",
  ignore,
  fn() {
    let escaped: DeviceTensor | undefined;
    {
      using scoped = emptyDevice([4, 4], "float16");
      escaped = scoped;
      assert.equal(scoped.disposed, false);
    }
    assert.equal(escaped.disposed, true);
    assert.throws(() => escaped.pointer, /used after dispose/);
  },
});

Deno.test({
  name: "device: device tensors in → device tensors out (forward and backward), host in → host out",
  ignore,
  async fn() {
    const key = compileFlexKey(AttnMaskSpec.varlen([200, 56]));
    const dtype: DType = "bfloat16";
    const q = randomTensor([256, 4, 64], { seed: 1, dtype });
    const k = randomTensor([256, 2, 64], { seed: 2, dtype });
    const v = randomTensor([256, 2, 64], { seed: 3, dtype });
    const dout = randomTensor([256, 4, 64], { seed: 4, dtype });
    using qd = toDevice(q);
    using kd = toDevice(k);
    using vd = toDevice(v);
    using doutD = toDevice(dout);
    const forward = await cudaForward(qd, kd, vd, key);
    using out = forward.out;
    using lse = forward.lse;
    assert.ok(isDeviceTensor(out) && isDeviceTensor(lse));
    assert.deepEqual([out.shape, out.dtype, lse.shape, lse.dtype], [
      [256, 4, 64],
      dtype,
      [256, 4],
      "float32",
    ]);
    const grads = await cudaBackward(doutD, qd, kd, vd, out, lse, key);
    using dq = grads.dq;
    using dk = grads.dk;
    using dv = grads.dv;
    assert.ok(isDeviceTensor(dq) && isDeviceTensor(dk) && isDeviceTensor(dv));
    assert.deepEqual([dq.shape, dk.shape, dv.shape], [q.shape, k.shape, v.shape]);

    // The same call on host tensors gives host tensors with the same values as the device path.
    const hostForward = await cudaForward(q, k, v, key);
    assert.ok(!isDeviceTensor(hostForward.out));
    assert.deepEqual(bytesOf(hostForward.out), bytesOf(await toHost(out)));
    const reference = referenceForward(q, k, v, key);
    assert.ok(relativeError(toFloat64(hostForward.out), toFloat64(reference.out)) < 0.02);
  },
});
