/**
 * A float64 dense attention oracle for tests: it materializes the full score matrix S = QKᵀ of every
 * head, masks it with a dense visibility, and applies the textbook softmax and gradient formulas. It
 * shares no code with `lib/backends/reference.ts` (which walks slices and intervals), so the two check each other.
 * @module
 */

import { type HostTensor, toFloat64 } from "../../lib/core/tensor.ts";
import { denseFromPredicate } from "./mask_check.ts";

/** A float64 tensor for the oracle (e.g. a perturbed copy for finite differences). */
export interface Float64Tensor {
  /** Row-major float64 values. */
  readonly data: Float64Array;
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
}

/** What the oracle takes as q, k, v or dout: a host tensor (any dtype) or float64 values. */
export type OracleTensor = HostTensor | Float64Tensor;

/**
 * Which (query i, key j) cells are visible: a predicate, or a dense row-major `Uint8Array` of
 * `totalQ × totalK` entries (non-zero = visible).
 */
export type Visibility = ((queryIndex: number, keyIndex: number) => boolean) | Uint8Array;

/** Score options of the oracle, with the same meaning as the library's. */
export interface OracleOptions {
  /** Logit scale; default `1 / sqrt(headDim)`. */
  softmaxScale?: number;
  /** `cap * tanh(s / cap)` applied to the scaled logits when > 0. Default 0 (off). */
  softcap?: number;
}

/** Oracle forward result in float64: out `[totalQ, Hq, D]` and lse `[totalQ, Hq]` (−inf for empty rows). */
export interface OracleForwardResult {
  /** Attention output, row-major `[totalQ, Hq, D]`. */
  out: Float64Array;
  /** Log-sum-exp of each row's visible logits, `[totalQ, Hq]`. */
  lse: Float64Array;
}

/** Oracle backward result in float64, in the layouts of q, k and v. */
export interface OracleBackwardResult {
  /** Gradient of q. */
  dq: Float64Array;
  /** Gradient of k. */
  dk: Float64Array;
  /** Gradient of v. */
  dv: Float64Array;
}

function valuesOf(input: OracleTensor): Float64Array {
  return input.data instanceof Float64Array ? input.data : toFloat64(input as HostTensor);
}

/** Dense `totalQ × totalK` visibility matrix (1 = visible). */
function denseMaskOf(visible: Visibility, totalQ: number, totalK: number): Uint8Array {
  if (visible instanceof Uint8Array) {
    if (visible.length !== totalQ * totalK) {
      throw new Error(`oracle: mask has ${visible.length} entries, expected ${totalQ} × ${totalK}`);
    }
    return visible;
  }
  return denseFromPredicate(visible, totalQ, totalK);
}

interface Dims {
  totalQ: number;
  totalK: number;
  headsQ: number;
  headsKV: number;
  headDim: number;
  scale: number;
  cap: number;
}

function dimsOf(q: OracleTensor, k: OracleTensor, opts: OracleOptions): Dims {
  const [totalQ, headsQ, headDim] = q.shape;
  const [totalK, headsKV] = k.shape;
  return {
    totalQ,
    totalK,
    headsQ,
    headsKV,
    headDim,
    scale: opts.softmaxScale ?? 1 / Math.sqrt(headDim),
    cap: opts.softcap ?? 0,
  };
}

/** Gathers head `head` of a `[tokens, heads, D]` array into a dense `tokens × D` matrix. */
function headMatrix(
  values: Float64Array,
  tokens: number,
  heads: number,
  headDim: number,
  head: number,
): Float64Array {
  const matrix = new Float64Array(tokens * headDim);
  for (let t = 0; t < tokens; t++) {
    for (let d = 0; d < headDim; d++) matrix[t * headDim + d] = values[(t * heads + head) * headDim + d];
  }
  return matrix;
}

/**
 * C `rows × cols` with C[r, col] = Σₓ A(r, x) · B(x, col), x ascending from 0 for every element, where
 * A(r, x) = `a[r·aRow + x·aInner]` and B(x, col) = `b[x·bInner + col·bCol]`: the strides say which operand
 * is read transposed.
 */
function product(
  a: Float64Array,
  aRow: number,
  aInner: number,
  b: Float64Array,
  bInner: number,
  bCol: number,
  rows: number,
  cols: number,
  inner: number,
): Float64Array {
  const c = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let col = 0; col < cols; col++) {
      let total = 0;
      for (let x = 0; x < inner; x++) total += a[r * aRow + x * aInner] * b[x * bInner + col * bCol];
      c[r * cols + col] = total;
    }
  }
  return c;
}

/** C = A Bᵀ for A `rows × inner`, B `cols × inner`. */
function multiplyTransposed(a: Float64Array, b: Float64Array, rows: number, cols: number, inner: number) {
  return product(a, inner, 1, b, 1, inner, rows, cols, inner);
}

/** C = A B for A `rows × inner`, B `inner × cols`. */
function multiply(a: Float64Array, b: Float64Array, rows: number, cols: number, inner: number): Float64Array {
  return product(a, inner, 1, b, cols, 1, rows, cols, inner);
}

/** C = Aᵀ B for A `inner × rows`, B `inner × cols`. */
function transposedMultiply(a: Float64Array, b: Float64Array, rows: number, cols: number, inner: number) {
  return product(a, 1, rows, b, cols, 1, rows, cols, inner);
}

/** Raw scaled logits X = scale·QKᵀ and the final logits S (soft-capped when cap > 0). */
function logits(
  qHead: Float64Array,
  kHead: Float64Array,
  dims: Dims,
): { raw: Float64Array; capped: Float64Array } {
  const raw = multiplyTransposed(qHead, kHead, dims.totalQ, dims.totalK, dims.headDim);
  for (let index = 0; index < raw.length; index++) raw[index] *= dims.scale;
  const capped = dims.cap > 0 ? raw.map((x) => dims.cap * Math.tanh(x / dims.cap)) : raw;
  return { raw, capped };
}

/** Row-wise masked softmax of S: probabilities P (0 where masked) and the lse of each row. */
function maskedSoftmax(scores: Float64Array, mask: Uint8Array, rows: number, cols: number): {
  probabilities: Float64Array;
  lse: Float64Array;
} {
  const probabilities = new Float64Array(rows * cols);
  const lse = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let max = -Infinity;
    for (let c = 0; c < cols; c++) {
      if (mask[r * cols + c] && scores[r * cols + c] > max) max = scores[r * cols + c];
    }
    if (max === -Infinity) {
      lse[r] = -Infinity;
      continue;
    }
    let sum = 0;
    for (let c = 0; c < cols; c++) if (mask[r * cols + c]) sum += Math.exp(scores[r * cols + c] - max);
    lse[r] = max + Math.log(sum);
    for (let c = 0; c < cols; c++) {
      if (mask[r * cols + c]) probabilities[r * cols + c] = Math.exp(scores[r * cols + c] - lse[r]);
    }
  }
  return { probabilities, lse };
}

/** One query head's dense forward: its q, k and v matrices, raw logits and masked softmax. */
interface HeadForward {
  head: number;
  kvHead: number;
  qHead: Float64Array;
  kHead: Float64Array;
  vHead: Float64Array;
  /** Scaled logits before the softcap (the softcap's chain rule needs them). */
  raw: Float64Array;
  probabilities: Float64Array;
  lse: Float64Array;
}

/** Runs the dense forward of every query head (kv head `floor(h / (Hq / Hkv))`) and hands each to `visit`. */
function forEachHead(
  q: OracleTensor,
  k: OracleTensor,
  v: OracleTensor,
  visible: Visibility,
  opts: OracleOptions,
  visit: (forward: HeadForward) => void,
): Dims {
  const dims = dimsOf(q, k, opts);
  const { totalQ, totalK, headsQ, headsKV, headDim } = dims;
  const mask = denseMaskOf(visible, totalQ, totalK);
  const qValues = valuesOf(q);
  const kValues = valuesOf(k);
  const vValues = valuesOf(v);
  const group = headsQ / headsKV;
  for (let head = 0; head < headsQ; head++) {
    const kvHead = Math.floor(head / group);
    const qHead = headMatrix(qValues, totalQ, headsQ, headDim, head);
    const kHead = headMatrix(kValues, totalK, headsKV, headDim, kvHead);
    const vHead = headMatrix(vValues, totalK, headsKV, headDim, kvHead);
    const { raw, capped } = logits(qHead, kHead, dims);
    const { probabilities, lse } = maskedSoftmax(capped, mask, totalQ, totalK);
    visit({ head, kvHead, qHead, kHead, vHead, raw, probabilities, lse });
  }
  return dims;
}

/**
 * Dense float64 attention forward: for each query head h (kv head `floor(h / (Hq / Hkv))`), S = scale·QKᵀ,
 * optional softcap, mask, softmax, out = P V. Rows with no visible key give out 0 and lse −inf.
 */
export function denseAttentionOracle(
  q: OracleTensor,
  k: OracleTensor,
  v: OracleTensor,
  visible: Visibility,
  opts: OracleOptions = {},
): OracleForwardResult {
  const [totalQ, headsQ, headDim] = q.shape;
  const totalK = k.shape[0];
  const out = new Float64Array(totalQ * headsQ * headDim);
  const lse = new Float64Array(totalQ * headsQ);
  forEachHead(q, k, v, visible, opts, ({ head, vHead, probabilities, lse: headLse }) => {
    const outHead = multiply(probabilities, vHead, totalQ, headDim, totalK);
    for (let i = 0; i < totalQ; i++) {
      lse[i * headsQ + head] = headLse[i];
      for (let d = 0; d < headDim; d++) out[(i * headsQ + head) * headDim + d] = outHead[i * headDim + d];
    }
  });
  return { out, lse };
}

/**
 * Dense float64 attention backward for the loss L = Σ out ∘ dout, recomputing the forward itself:
 * dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − rowsum(P ∘ dP)), dX = dS ∘ (1 − tanh²(X / cap)) under softcap,
 * dQ = scale · dX K, dK = scale · dXᵀ Q. dk and dv sum over the query heads of each GQA group.
 */
export function denseAttentionBackwardOracle(
  dout: OracleTensor,
  q: OracleTensor,
  k: OracleTensor,
  v: OracleTensor,
  visible: Visibility,
  opts: OracleOptions = {},
): OracleBackwardResult {
  const [totalQ, headsQ, headDim] = q.shape;
  const [totalK, headsKV] = k.shape;
  const doutValues = valuesOf(dout);
  const dq = new Float64Array(totalQ * headsQ * headDim);
  const dk = new Float64Array(totalK * headsKV * headDim);
  const dv = new Float64Array(totalK * headsKV * headDim);
  const { scale, cap } = dimsOf(q, k, opts);
  forEachHead(q, k, v, visible, opts, ({ head, kvHead, qHead, kHead, vHead, raw, probabilities }) => {
    const doutHead = headMatrix(doutValues, totalQ, headsQ, headDim, head);
    const dvHead = transposedMultiply(probabilities, doutHead, totalK, headDim, totalQ);
    const dProbabilities = multiplyTransposed(doutHead, vHead, totalQ, totalK, headDim);
    const dRaw = new Float64Array(totalQ * totalK);
    for (let i = 0; i < totalQ; i++) {
      let rowDot = 0;
      for (let j = 0; j < totalK; j++) {
        rowDot += probabilities[i * totalK + j] * dProbabilities[i * totalK + j];
      }
      for (let j = 0; j < totalK; j++) {
        const cell = i * totalK + j;
        let gradient = probabilities[cell] * (dProbabilities[cell] - rowDot);
        if (cap > 0) gradient *= 1 - Math.tanh(raw[cell] / cap) ** 2;
        dRaw[cell] = gradient * scale;
      }
    }
    const dqHead = multiply(dRaw, kHead, totalQ, headDim, totalK);
    const dkHead = transposedMultiply(dRaw, qHead, totalK, headDim, totalQ);
    for (let i = 0; i < totalQ; i++) {
      for (let d = 0; d < headDim; d++) dq[(i * headsQ + head) * headDim + d] = dqHead[i * headDim + d];
    }
    for (let j = 0; j < totalK; j++) {
      for (let d = 0; d < headDim; d++) {
        dk[(j * headsKV + kvHead) * headDim + d] += dkHead[j * headDim + d];
        dv[(j * headsKV + kvHead) * headDim + d] += dvHead[j * headDim + d];
      }
    }
  });
  return { dq, dk, dv };
}

/**
 * ‖actual − expected‖₂ / ‖expected‖₂ (the absolute norm when `expected` is all zero). Entries equal in
 * both (including the same infinity, as −inf lse of empty rows) count as no difference; an infinity in
 * only one of them makes the result infinite.
 */
export function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) {
    throw new Error(`relativeError: lengths differ (${actual.length} vs ${expected.length})`);
  }
  let diffSquares = 0;
  let normSquares = 0;
  for (let index = 0; index < actual.length; index++) {
    const a = actual[index];
    const b = expected[index];
    if (a === b) {
      if (Number.isFinite(b)) normSquares += b * b;
      continue;
    }
    const diff = a - b;
    diffSquares += Number.isNaN(diff) ? Infinity : diff * diff;
    if (Number.isFinite(b)) normSquares += b * b;
  }
  const diffNorm = Math.sqrt(diffSquares);
  return normSquares > 0 ? diffNorm / Math.sqrt(normSquares) : diffNorm;
}

/** Largest |actual − expected| (equal entries, including equal infinities, count 0; NaN gives Infinity). */
export function maxAbsDiff(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) {
    throw new Error(`maxAbsDiff: lengths differ (${actual.length} vs ${expected.length})`);
  }
  let largest = 0;
  for (let index = 0; index < actual.length; index++) {
    if (actual[index] === expected[index]) continue;
    const diff = Math.abs(actual[index] - expected[index]);
    largest = Math.max(largest, Number.isNaN(diff) ? Infinity : diff);
  }
  return largest;
}
