/**
 * `--dry-run`: a simulated GPU (launches queue simulated kernel time; a sync advances the host clock to
 * the end of the queue) and the runner that times our "kernels" on it, so the whole harness (timing,
 * scans, samples, report, chart, peers in `--fake` mode) runs without a GPU.
 * @module
 */

import { sampleRows } from "./cases.ts";
import { extractRows, scanBf16 } from "./inputs.ts";
import type { OursSamples } from "./report.ts";
import { finishTimings, HOST_TARGET_US, kernelEstimate, type OursRunner, TINY_PROBLEM } from "./runner.ts";
import { type Clock, type IssueTiming, measureBatches, measureIssue, median } from "./timing.ts";

/**
 * A simulated GPU for `--dry-run` and tests: launches cost `hostMs` of host time and queue `kernelMs` of
 * GPU work behind what is already queued; `sync` advances the host clock to the end of the queue.
 */
export class SimulatedGpu {
  #now = 0;
  #gpuFreeAt = 0;
  /** @param syncMs host time a synchronization costs on top of waiting */
  constructor(readonly syncMs = 0.02) {}
  /** The simulated host clock, ms. */
  readonly clock: Clock = () => this.#now;
  /** Queues one kernel of `kernelMs` after `hostMs` of host work. */
  launch(kernelMs: number, hostMs: number): void {
    this.#now += hostMs;
    this.#gpuFreeAt = Math.max(this.#now, this.#gpuFreeAt) + kernelMs;
  }
  /** Waits (in simulated time) for every queued kernel. */
  sync(): Promise<void> {
    this.#now = Math.max(this.#now, this.#gpuFreeAt) + this.syncMs;
    return Promise.resolve();
  }
}

/** Deterministic pseudo-efficiency in [0, 1) of a case name, for simulated numbers. */
function simulatedFraction(name: string): number {
  let hash = 2166136261;
  for (const char of name) hash = Math.imul(hash ^ char.charCodeAt(0), 16777619) >>> 0;
  return (hash % 1000) / 1000;
}

/** `--dry-run`: the timing code runs against {@linkcode SimulatedGpu}, outputs are stand-ins. */
export function simulatedRunner(): OursRunner {
  return {
    gpu: "dry-run (simulated GPU)",
    async runCase(benchCase, _key, flops, pools) {
      const gpu = new SimulatedGpu();
      const fraction = simulatedFraction(benchCase.name);
      const fwdMs = flops.fwd / ((300 + 300 * fraction) * 1e12) * 1e3;
      const bwdMs = flops.bwd / ((200 + 250 * fraction) * 1e12) * 1e3;
      const sync = () => gpu.sync();
      const fwd = await measureBatches(() => gpu.launch(fwdMs, 0.008), sync, gpu.clock);
      const bwd = await measureBatches(() => gpu.launch(bwdMs, 0.012), sync, gpu.clock);
      const result = finishTimings(flops, fwd, bwd);
      // Stand-ins for the downloaded outputs: the input pools (exercises the scans and the sampling).
      const qCount = benchCase.seqlen * benchCase.headsQ * benchCase.headDim;
      const kvCount = benchCase.seqlen * benchCase.headsKv * benchCase.headDim;
      result.check = {
        out: scanBf16(pools.q.subarray(0, qCount)),
        dq: scanBf16(pools.dout.subarray(0, qCount)),
        dk: scanBf16(pools.k.subarray(0, kvCount)),
        dv: scanBf16(pools.v.subarray(0, kvCount)),
      };
      const rows = sampleRows(benchCase.seqlen);
      const samples: OursSamples = {
        rows,
        out: extractRows(pools.q, benchCase.headsQ, benchCase.headDim, rows),
        dq: extractRows(pools.dout, benchCase.headsQ, benchCase.headDim, rows),
        dk: extractRows(pools.k, benchCase.headsKv, benchCase.headDim, rows),
        dv: extractRows(pools.v, benchCase.headsKv, benchCase.headDim, rows),
      };
      return { result, samples };
    },
    async hostOverhead() {
      const tinyKernelMs = 0.006;
      const variant = async (hostMs: number): Promise<IssueTiming> => {
        const gpu = new SimulatedGpu();
        return await measureIssue(() => gpu.launch(tinyKernelMs, hostMs), () => gpu.sync(), gpu.clock);
      };
      const publicApi = await variant(0.012);
      const preallocated = await variant(0.007);
      const rawFfi = await variant(0.002);
      const gpu = new SimulatedGpu();
      const synced: number[] = [];
      for (let call = 0; call < 100; call++) {
        const start = gpu.clock();
        gpu.launch(tinyKernelMs, 0.007);
        await gpu.sync();
        synced.push((gpu.clock() - start) * 1000);
      }
      return {
        problem: TINY_PROBLEM,
        publicApi,
        preallocated,
        rawFfi,
        syncedCallUs: median(synced),
        kernelEstimateUs: kernelEstimate(rawFfi),
        hostUsPerCall: publicApi.issueUs,
        targetUs: HOST_TARGET_US,
      };
    },
  };
}
