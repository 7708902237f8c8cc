/**
 * What runs our kernels for the benchmark (the CUDA library, or the simulated GPU of `--dry-run`) and the
 * pieces both runners share: the tiny host-overhead problem and the per-case result.
 * @module
 */

import type { BenchCase, CaseFlops } from "./cases.ts";
import type { InputPools } from "./inputs.ts";
import type { HostOverhead, OursResult, OursSamples } from "./report.ts";
import type { BatchTiming, IssueTiming } from "./timing.ts";
import type { FlexKey } from "../../lib/core/types.ts";

/** Runs our kernels: the CUDA library, or a simulation for `--dry-run`. */
export interface OursRunner {
  /** GPU name. */
  readonly gpu: string;
  /** CUDA library path (none for the simulation). */
  readonly libraryPath?: string;
  /** Times forward and backward of one case; scans and samples the outputs. */
  runCase(
    benchCase: BenchCase,
    key: FlexKey,
    flops: CaseFlops,
    pools: InputPools,
  ): Promise<{ result: OursResult; samples?: OursSamples }>;
  /** Host overhead of one forward call on the tiny problem. */
  hostOverhead(): Promise<HostOverhead>;
}

/** Target of the host overhead of one forward call, µs. */
export const HOST_TARGET_US = 15;
/** The tiny problem of the host-overhead measurement (causal). */
export const TINY: { readonly seqlen: 128; readonly heads: 1; readonly headDim: 64 } = Object.freeze({
  seqlen: 128,
  heads: 1,
  headDim: 64,
});
/** The tiny problem as text, for the report. */
export const TINY_PROBLEM = `S=${TINY.seqlen} H=${TINY.heads} D=${TINY.headDim} causal`;

/** A case's result from its forward and backward timings (TFLOP/s from the area-counted FLOPs). */
export function finishTimings(flops: CaseFlops, fwd: BatchTiming, bwd: BatchTiming): OursResult {
  return {
    msFwd: fwd.ms,
    msBwd: bwd.ms,
    tflopsFwd: flops.fwd / (fwd.ms * 1e-3) / 1e12,
    tflopsBwd: flops.bwd / (bwd.ms * 1e-3) / 1e12,
    timingFwd: fwd,
    timingBwd: bwd,
  };
}

/** GPU time per tiny kernel from back-to-back raw launches, or null when they are host-bound. */
export function kernelEstimate(raw: IssueTiming): number | null {
  // Back-to-back raw launches are GPU-bound when the wall time per call clearly exceeds the host cost.
  return raw.wallUs > 1.3 * raw.issueUs ? raw.wallUs : null;
}
