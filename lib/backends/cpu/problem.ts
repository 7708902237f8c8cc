/**
 * The CPU path's work as plain, structured-cloneable data: the problem (shape and flex key), the tensors of a
 * forward or backward, and the tasks the pool hands to its workers.
 * @module
 */

import { forEachRowInterval } from "../reference.ts";
import type { TensorData } from "../../core/tensor.ts";
import type { ForwardShape } from "../../core/validate.ts";

/** One attention problem as plain, structured-cloneable data (sent to each worker once per call). */
export interface CpuProblem extends ForwardShape {
  /** The flex key's query ranges, flat. */
  qRanges: Int32Array;
  /** The flex key's key ranges, flat. */
  kRanges: Int32Array;
  /** The flex key's slice types. */
  attnTypeMap: Int32Array;
}

/** Forward tensors (raw data in `dtype`, usually over SharedArrayBuffers): inputs, then outputs to fill. */
export interface ForwardBuffers {
  /** q `[totalQ, Hq, D]`. */
  q: TensorData;
  /** k `[totalK, Hkv, D]`. */
  k: TensorData;
  /** v `[totalK, Hkv, D]`. */
  v: TensorData;
  /** Output `[totalQ, Hq, D]`, written row by row by the task that owns the row. */
  out: TensorData;
  /** float32 `[totalQ, Hq]`. */
  lse: Float32Array;
}

/** Backward tensors: inputs, a float64 dq accumulator, then outputs to fill. */
export interface BackwardBuffers {
  /** Gradient of out. */
  dout: TensorData;
  /** q. */
  q: TensorData;
  /** k. */
  k: TensorData;
  /** v. */
  v: TensorData;
  /** The forward's out. */
  out: TensorData;
  /** The forward's lse (float32). */
  lse: Float32Array;
  /** float64 `[totalQ, Hq, D]`, zero at the start: dq summed slice by slice before rounding. */
  dqAccumulator: Float64Array;
  /** Output dq. */
  dq: TensorData;
  /** Output dk. */
  dk: TensorData;
  /** Output dv. */
  dv: TensorData;
}

/** Forward work: query rows `[queryStart, queryEnd)` of every query head of kv head `kvHead`. */
export interface ForwardTask {
  /** Key/value head; its GQA group of query heads is processed together. */
  kvHead: number;
  /** First query row. */
  queryStart: number;
  /** One past the last query row. */
  queryEnd: number;
}

/**
 * Backward work for kv head `kvHead`: dq of query rows `[queryStart, queryEnd)` (when `dq`), dk/dv of keys
 * `[keyStart, keyEnd)` (when `dkdv`). A task with `dq` covers every key and one with `dkdv` every query row,
 * so each output element is written by exactly one task.
 */
export interface BackwardTask {
  /** Key/value head. */
  kvHead: number;
  /** First query row. */
  queryStart: number;
  /** One past the last query row. */
  queryEnd: number;
  /** First key. */
  keyStart: number;
  /** One past the last key. */
  keyEnd: number;
  /** Compute dq of the task's query rows. */
  dq: boolean;
  /** Compute dk and dv of the task's keys. */
  dkdv: boolean;
}

/** The visible key interval of each query row `[rowStart, rowEnd)` of one slice (`lo ≥ hi` when empty). */
export function sliceIntervals(
  problem: CpuProblem,
  slice: number,
  rowStart: number,
  rowEnd: number,
  lows: Int32Array,
  highs: Int32Array,
): void {
  forEachRowInterval(problem, slice, rowStart, rowEnd, (row, lo, hi) => {
    lows[row - rowStart] = lo;
    highs[row - rowStart] = hi;
  });
}
