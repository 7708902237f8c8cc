/**
 * CPU reference of flex flash attention, forward and backward. Work is proportional to the mask area:
 * each slice's query rows get their visible key interval straight from the slice type, never through a
 * dense totalQ × totalK pass. Inputs are read as float32 and every accumulator is float64.
 * @module
 */

import { MagiAttnInputError } from "../core/errors.ts";
import { fromFloat32, type HostTensor, numel, tensor, toFloat32 } from "../core/tensor.ts";
import { AttnType, type FlexKey } from "../core/types.ts";
import { type ScoreOptions, validateBackwardArgs, validateForwardArgs } from "../core/validate.ts";

/** Options of {@linkcode referenceForward} and {@linkcode referenceBackward}. */
export type ReferenceOptions = ScoreOptions;

/** Result of {@linkcode referenceForward}. */
export interface ReferenceForwardResult {
  /** Attention output `[totalQ, Hq, D]` in q's dtype; rows with no visible key are 0. */
  out: HostTensor;
  /** float32 `[totalQ, Hq]`: natural log of each row's sum of exp(logit); −inf for empty rows. */
  lse: HostTensor;
}

/** Result of {@linkcode referenceBackward}: gradients in the shapes and dtypes of q, k and v. */
export interface ReferenceBackwardResult {
  /** Gradient of q. */
  dq: HostTensor;
  /** Gradient of k (summed over slices and over the query heads of each GQA group). */
  dk: HostTensor;
  /** Gradient of v (summed like `dk`). */
  dv: HostTensor;
}

/** The CPU path reads `data`, so device tensors (or hand-made objects without data) are refused. */
export function requireHostData(value: HostTensor, name: string): void {
  const data = value.data as unknown;
  const isTypedArray = data instanceof Float32Array || data instanceof Float16Array ||
    data instanceof Uint16Array;
  if (!isTypedArray || (data as ArrayLike<number>).length !== numel(value.shape)) {
    throw new MagiAttnInputError(
      name,
      "is not a host tensor with data matching its shape",
      "pass HostTensors to the CPU reference (copy device tensors with toHost(...)), built with tensor(...)",
    );
  }
}

/** {@linkcode requireHostData} for each of `tensors`, named by `names`. */
export function requireHostInputs(tensors: readonly HostTensor[], names: readonly string[]): void {
  for (let index = 0; index < tensors.length; index++) requireHostData(tensors[index], names[index]);
}

/**
 * The visible key interval `[lo, hi)` of query row `queryIndex` in one slice, written into `bounds`.
 * CAUSAL is bottom-right aligned (`j ≤ i + ke − qe`), INVCAUSAL top-left (`j ≥ i + ks − qs`).
 */
export function visibleInterval(
  type: number,
  queryIndex: number,
  qStart: number,
  qEnd: number,
  kStart: number,
  kEnd: number,
  bounds: Int32Array,
): void {
  let lo = kStart;
  let hi = kEnd;
  if (type === AttnType.CAUSAL || type === AttnType.BICAUSAL) hi = Math.min(hi, queryIndex + kEnd - qEnd + 1);
  if (type === AttnType.INVCAUSAL || type === AttnType.BICAUSAL) {
    lo = Math.max(lo, queryIndex + kStart - qStart);
  }
  bounds[0] = lo;
  bounds[1] = hi;
}

/** A flex key's slices: flat query ranges, key ranges and types (a FlexKey, or the CPU path's problem). */
export type SliceTable = Pick<FlexKey, "qRanges" | "kRanges" | "attnTypeMap">;

const intervalScratch = new Int32Array(2);

/**
 * Calls `visit(queryIndex, lo, hi)` for each query row `[rowStart, rowEnd)` of slice `slice`, ascending,
 * with the row's visible key interval `[lo, hi)` (empty when `lo ≥ hi`).
 */
export function forEachRowInterval(
  table: SliceTable,
  slice: number,
  rowStart: number,
  rowEnd: number,
  visit: (queryIndex: number, lo: number, hi: number) => void,
): void {
  const qStart = table.qRanges[2 * slice];
  const qEnd = table.qRanges[2 * slice + 1];
  const kStart = table.kRanges[2 * slice];
  const kEnd = table.kRanges[2 * slice + 1];
  const type = table.attnTypeMap[slice];
  for (let queryIndex = rowStart; queryIndex < rowEnd; queryIndex++) {
    visibleInterval(type, queryIndex, qStart, qEnd, kStart, kEnd, intervalScratch);
    visit(queryIndex, intervalScratch[0], intervalScratch[1]);
  }
}

/**
 * Calls `visit(queryIndex, lo, hi)` for every query row of every slice that sees at least one key, in the
 * reference's order: slices as listed, query rows ascending.
 */
function forEachVisibleRow(key: FlexKey, visit: (queryIndex: number, lo: number, hi: number) => void): void {
  for (let slice = 0; slice < key.attnTypeMap.length; slice++) {
    forEachRowInterval(
      key,
      slice,
      key.qRanges[2 * slice],
      key.qRanges[2 * slice + 1],
      (queryIndex, lo, hi) => {
        if (lo < hi) visit(queryIndex, lo, hi);
      },
    );
  }
}

/** Longest key range of any slice (computed, not trusted from the key, since it sizes a scratch buffer). */
function longestKeyRange(key: FlexKey): number {
  let longest = 0;
  for (let slice = 0; slice < key.attnTypeMap.length; slice++) {
    longest = Math.max(longest, key.kRanges[2 * slice + 1] - key.kRanges[2 * slice]);
  }
  return longest;
}

/**
 * Flex flash attention forward on the CPU. q `[totalQ, Hq, D]`, k and v `[totalK, Hkv, D]` (float32,
 * float16 or bfloat16, all one dtype). Rows covered by several slices get one softmax over the union of
 * their visible keys (online softmax across slices); query head h reads kv head `floor(h / (Hq / Hkv))`.
 * Throws {@linkcode MagiAttnInputError} for bad input (see `validateForwardArgs`).
 */
export function referenceForward(
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  key: FlexKey,
  opts: ReferenceOptions = {},
): ReferenceForwardResult {
  const shape = validateForwardArgs(q, k, v, key, opts);
  requireHostInputs([q, k, v], ["q", "k", "v"]);
  const { totalQ, numHeadsQ, numHeadsKV, headDim, softmaxScale, softcap } = shape;
  const qData = toFloat32(q);
  const kData = toFloat32(k);
  const vData = toFloat32(v);
  const groupSize = numHeadsQ / numHeadsKV;
  const qTokenStride = numHeadsQ * headDim;
  const kTokenStride = numHeadsKV * headDim;

  const rowCount = totalQ * numHeadsQ;
  const rowMax = new Float64Array(rowCount).fill(-Infinity);
  const rowSum = new Float64Array(rowCount);
  const accumulator = new Float64Array(rowCount * headDim);
  const scores = new Float64Array(longestKeyRange(key));
  // The current query row in a small local buffer: the inner loops then read one contiguous scratch row.
  const queryRow = new Float64Array(headDim);

  forEachVisibleRow(key, (queryIndex, lo, hi) => {
    for (let head = 0; head < numHeadsQ; head++) {
      const qOffset = queryIndex * qTokenStride + head * headDim;
      const kvHeadOffset = Math.floor(head / groupSize) * headDim;
      for (let d = 0; d < headDim; d++) queryRow[d] = qData[qOffset + d];
      let sliceMax = -Infinity;
      for (let keyIndex = lo; keyIndex < hi; keyIndex++) {
        const kOffset = keyIndex * kTokenStride + kvHeadOffset;
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += queryRow[d] * kData[kOffset + d];
        let score = dot * softmaxScale;
        if (softcap > 0) score = softcap * Math.tanh(score / softcap);
        scores[keyIndex - lo] = score;
        if (score > sliceMax) sliceMax = score;
      }
      const row = queryIndex * numHeadsQ + head;
      const accOffset = row * headDim;
      const previousMax = rowMax[row];
      const newMax = sliceMax > previousMax ? sliceMax : previousMax;
      // Rescale what earlier slices accumulated so all terms share one running max.
      if (previousMax !== -Infinity && previousMax < newMax) {
        const factor = Math.exp(previousMax - newMax);
        rowSum[row] *= factor;
        for (let d = 0; d < headDim; d++) accumulator[accOffset + d] *= factor;
      }
      rowMax[row] = newMax;
      let sum = 0;
      for (let keyIndex = lo; keyIndex < hi; keyIndex++) {
        const weight = Math.exp(scores[keyIndex - lo] - newMax);
        sum += weight;
        const vOffset = keyIndex * kTokenStride + kvHeadOffset;
        for (let d = 0; d < headDim; d++) accumulator[accOffset + d] += weight * vData[vOffset + d];
      }
      rowSum[row] += sum;
    }
  });

  const lse = new Float32Array(rowCount);
  for (let row = 0; row < rowCount; row++) {
    const sum = rowSum[row];
    const accOffset = row * headDim;
    if (sum > 0) {
      const inverse = 1 / sum;
      for (let d = 0; d < headDim; d++) accumulator[accOffset + d] *= inverse;
      lse[row] = rowMax[row] + Math.log(sum);
    } else {
      // No visible key (or only NaN logits, which keep sum NaN and fall through): out 0, lse −inf.
      if (Number.isNaN(sum)) {
        for (let d = 0; d < headDim; d++) accumulator[accOffset + d] = NaN;
        lse[row] = NaN;
      } else {
        lse[row] = -Infinity;
      }
    }
  }
  return {
    out: fromFloat32(accumulator, q.shape, q.dtype),
    lse: tensor(lse, [totalQ, numHeadsQ], "float32"),
  };
}

/**
 * Flex flash attention backward on the CPU: dq, dk, dv from `dout`, the forward's `out` and `lse`.
 * Uses D = rowsum(dout ∘ out), P = exp(s − lse) and dS = P ∘ (dP − D), with the softcap chain rule
 * `1 − (s / cap)²`. Rows with lse −inf contribute nothing. dk/dv sum over slices and GQA groups.
 * Throws {@linkcode MagiAttnInputError} for bad input (see `validateBackwardArgs`).
 */
export function referenceBackward(
  dout: HostTensor,
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  out: HostTensor,
  lse: HostTensor,
  key: FlexKey,
  opts: ReferenceOptions = {},
): ReferenceBackwardResult {
  const shape = validateBackwardArgs(dout, q, k, v, out, lse, key, opts);
  requireHostInputs([dout, q, k, v, out, lse], ["dout", "q", "k", "v", "out", "lse"]);
  const { totalQ, totalK, numHeadsQ, numHeadsKV, headDim, softmaxScale, softcap } = shape;
  const doutData = toFloat32(dout);
  const qData = toFloat32(q);
  const kData = toFloat32(k);
  const vData = toFloat32(v);
  const outData = toFloat32(out);
  const lseData = lse.data as Float32Array;
  const groupSize = numHeadsQ / numHeadsKV;
  const kTokenStride = numHeadsKV * headDim;

  // D_i = rowsum(dout ∘ out): the softmax Jacobian's correction term per (row, head).
  const rowCount = totalQ * numHeadsQ;
  const rowDelta = new Float64Array(rowCount);
  for (let row = 0; row < rowCount; row++) {
    const offset = row * headDim;
    let delta = 0;
    for (let d = 0; d < headDim; d++) delta += doutData[offset + d] * outData[offset + d];
    rowDelta[row] = delta;
  }

  const dq = new Float64Array(rowCount * headDim);
  const dk = new Float64Array(totalK * kTokenStride);
  const dv = new Float64Array(totalK * kTokenStride);
  // Per-(row, head) scratch rows, reused: no allocation inside the loops.
  const queryRow = new Float64Array(headDim);
  const doutRow = new Float64Array(headDim);
  const dqRow = new Float64Array(headDim);
  const inverseCap = softcap > 0 ? 1 / softcap : 0;

  forEachVisibleRow(key, (queryIndex, lo, hi) => {
    for (let head = 0; head < numHeadsQ; head++) {
      const row = queryIndex * numHeadsQ + head;
      const rowLse = lseData[row];
      if (rowLse === -Infinity) continue; // an empty row: P = 0, no gradient
      const delta = rowDelta[row];
      const qOffset = row * headDim;
      const kvHeadOffset = Math.floor(head / groupSize) * headDim;
      for (let d = 0; d < headDim; d++) {
        queryRow[d] = qData[qOffset + d];
        doutRow[d] = doutData[qOffset + d];
        dqRow[d] = 0;
      }
      for (let keyIndex = lo; keyIndex < hi; keyIndex++) {
        const kOffset = keyIndex * kTokenStride + kvHeadOffset;
        let dot = 0;
        let doutDotV = 0;
        for (let d = 0; d < headDim; d++) {
          dot += queryRow[d] * kData[kOffset + d];
          doutDotV += doutRow[d] * vData[kOffset + d];
        }
        let score = dot * softmaxScale;
        if (softcap > 0) score = softcap * Math.tanh(score * inverseCap);
        const probability = Math.exp(score - rowLse);
        let scoreGrad = probability * (doutDotV - delta);
        if (softcap > 0) {
          const capped = score * inverseCap;
          scoreGrad *= 1 - capped * capped;
        }
        scoreGrad *= softmaxScale;
        for (let d = 0; d < headDim; d++) {
          dv[kOffset + d] += probability * doutRow[d];
          dqRow[d] += scoreGrad * kData[kOffset + d];
          dk[kOffset + d] += scoreGrad * queryRow[d];
        }
      }
      for (let d = 0; d < headDim; d++) dq[qOffset + d] += dqRow[d];
    }
  });
  return {
    dq: fromFloat32(dq, q.shape, q.dtype),
    dk: fromFloat32(dk, k.shape, k.dtype),
    dv: fromFloat32(dv, v.shape, v.dtype),
  };
}
