/**
 * The CUDA runner of the benchmark: our kernels through the same backend module users' calls go through
 * (`ffi/cuda_backend.ts`), on device tensors with preallocated outputs. `main.ts` imports this module
 * only for a GPU run, so the pure parts of the benchmark (and its tests) never load the FFI layer.
 * @module
 */

import { backendInfo, flexFlashAttnForward } from "../../lib/backends/ffa.ts";
import { tensor } from "../../lib/core/tensor.ts";
import { compileFlexKey } from "../../lib/masks/flex_key.ts";
import { AttnMaskSpec } from "../../lib/masks/spec.ts";
import { bindForwardLaunch, cudaBackward, cudaForward } from "../../ffi/cuda_backend.ts";
import {
  type DeviceTensor,
  emptyDevice,
  fillDeviceBytes,
  synchronize,
  toDevice,
  toHost,
} from "../../ffi/device.ts";
import { sampleRows } from "./cases.ts";
import { extractRows, type InputDistribution, makeInputPools, scanBf16 } from "./inputs.ts";
import { errorText, progress } from "./progress.ts";
import type { OursSamples } from "./report.ts";
import {
  finishTimings,
  HOST_TARGET_US,
  kernelEstimate,
  type OursRunner,
  TINY,
  TINY_PROBLEM,
} from "./runner.ts";
import { type Clock, measureBatches, measureIssue, median } from "./timing.ts";

/** The CUDA runner, or the reason there is none; `distribution` fills the tiny problem's inputs. */
export function cudaRunner(distribution: InputDistribution): OursRunner | { unavailable: string } {
  const info = backendInfo();
  if (info.backend !== "cuda") return { unavailable: info.reason ?? "backendInfo() chose the CPU" };
  const sync = (): Promise<void> => synchronize();
  const clock: Clock = () => performance.now();

  const upload = (bits: Uint16Array, shape: number[]): DeviceTensor =>
    toDevice(tensor(bits.subarray(0, shape.reduce((a, b) => a * b, 1)), shape, "bfloat16"));
  const download = async (item: DeviceTensor): Promise<Uint16Array> =>
    (await toHost(item)).data as Uint16Array;

  return {
    gpu: info.device ?? "unknown CUDA GPU",
    libraryPath: info.libraryPath,
    async runCase(benchCase, key, flops, pools) {
      const { seqlen, headsQ, headsKv, headDim } = benchCase;
      const qShape = [seqlen, headsQ, headDim], kvShape = [seqlen, headsKv, headDim];
      const owned: DeviceTensor[] = [];
      const own = (item: DeviceTensor): DeviceTensor => {
        owned.push(item);
        return item;
      };
      try {
        const q = own(upload(pools.q, qShape));
        const k = own(upload(pools.k, kvShape));
        const v = own(upload(pools.v, kvShape));
        const dout = own(upload(pools.dout, qShape));
        const out = own(emptyDevice(qShape, "bfloat16"));
        const lse = own(emptyDevice([seqlen, headsQ], "float32"));
        const dq = own(emptyDevice(qShape, "bfloat16"));
        const dk = own(emptyDevice(kvShape, "bfloat16"));
        const dv = own(emptyDevice(kvShape, "bfloat16"));
        // Poison the outputs (0xFF bytes are NaN) so that any element a kernel fails to write shows up.
        for (const item of [out, lse, dq, dk, dv]) fillDeviceBytes(item, 0xff);
        const forward = () => cudaForward(q, k, v, key, { outputs: { out, lse } });
        const fwd = await measureBatches(forward, sync, clock);
        const backward = () => cudaBackward(dout, q, k, v, out, lse, key, { outputs: { dq, dk, dv } });
        const bwd = await measureBatches(backward, sync, clock);
        const result = finishTimings(flops, fwd, bwd);
        const bits = {
          out: await download(out),
          dq: await download(dq),
          dk: await download(dk),
          dv: await download(dv),
        };
        result.check = {
          out: scanBf16(bits.out),
          dq: scanBf16(bits.dq),
          dk: scanBf16(bits.dk),
          dv: scanBf16(bits.dv),
        };
        const rows = sampleRows(seqlen);
        const samples: OursSamples = {
          rows,
          out: extractRows(bits.out, headsQ, headDim, rows),
          dq: extractRows(bits.dq, headsQ, headDim, rows),
          dk: extractRows(bits.dk, headsKv, headDim, rows),
          dv: extractRows(bits.dv, headsKv, headDim, rows),
        };
        return { result, samples };
      } catch (error) {
        return { result: { error: errorText(error) } };
      } finally {
        try {
          await sync();
        } catch (error) {
          progress(`  sync after ${benchCase.name} failed: ${errorText(error)}`);
        }
        for (const item of owned) item.dispose();
      }
    },
    async hostOverhead() {
      const shape = [TINY.seqlen, TINY.heads, TINY.headDim];
      const owned: DeviceTensor[] = [];
      try {
        const key = compileFlexKey(AttnMaskSpec.causal(TINY.seqlen));
        const pools = makeInputPools(
          [{ seqlen: TINY.seqlen, headsQ: TINY.heads, headsKv: TINY.heads, headDim: TINY.headDim }],
          distribution,
        );
        const q = upload(pools.q, shape), k = upload(pools.k, shape), v = upload(pools.v, shape);
        const out = emptyDevice(shape, "bfloat16"), lse = emptyDevice([TINY.seqlen, TINY.heads], "float32");
        owned.push(q, k, v, out, lse);
        // Public API: allocates out and lse per call; they are freed after each round's sync (cudaFree waits
        // for the device, so freeing inside the loop would serialize it).
        let pending: DeviceTensor[] = [];
        const publicApi = await measureIssue(
          async () => {
            const result = await flexFlashAttnForward(q, k, v, key, { backend: "cuda" });
            pending.push(result.out as DeviceTensor, result.lse as DeviceTensor);
          },
          sync,
          clock,
          1000,
          5,
          () => {
            for (const item of pending) item.dispose();
            pending = [];
          },
        );
        const preallocated = await measureIssue(
          () => cudaForward(q, k, v, key, { outputs: { out, lse } }),
          sync,
          clock,
        );
        // The floor: validation and the plan lookup done once, each call only queues magi_ffa_forward.
        const rawFfi = await measureIssue(bindForwardLaunch(q, k, v, key, { out, lse }), sync, clock);
        const synced: number[] = [];
        for (let call = 0; call < 200; call++) {
          const start = clock();
          await cudaForward(q, k, v, key, { outputs: { out, lse } });
          await sync();
          synced.push((clock() - start) * 1000);
        }
        return {
          problem: TINY_PROBLEM,
          publicApi,
          preallocated,
          rawFfi,
          syncedCallUs: median(synced.slice(20)),
          kernelEstimateUs: kernelEstimate(rawFfi),
          hostUsPerCall: publicApi.issueUs,
          targetUs: HOST_TARGET_US,
        };
      } finally {
        await sync();
        for (const item of owned) item.dispose();
      }
    },
  };
}
