/**
 * Argument validation shared by every FFA backend (CPU reference and CUDA). It reads only `shape` and
 * `dtype`, so host and device tensors are checked the same way, and it never changes its inputs.
 * @module
 */

import { MagiAttnInputError } from "./errors.ts";
import type { DType } from "./tensor.ts";
import { AttnType, type FlexKey } from "./types.ts";

/** Anything with a shape and a dtype: a `HostTensor` or a device tensor. */
export interface ShapedTensor {
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Element type name. */
  readonly dtype: string;
}

/** Score options every backend takes. */
export interface ScoreOptions {
  /** Scale of the logits; default `1 / sqrt(headDim)`. Must be finite and > 0. */
  softmaxScale?: number;
  /** Logit soft-capping `cap * tanh(s / cap)`; 0 (default) disables it. Must be finite and ≥ 0. */
  softcap?: number;
}

/** The sizes and resolved options of one FFA call, as {@linkcode validateForwardArgs} returns them. */
export interface ForwardShape {
  /** Query tokens (q's first dimension). */
  totalQ: number;
  /** Key tokens (k's and v's first dimension). */
  totalK: number;
  /** Query heads. */
  numHeadsQ: number;
  /** Key/value heads (divides `numHeadsQ`). */
  numHeadsKV: number;
  /** Head dimension of q, k and v. */
  headDim: number;
  /** Resolved logit scale (the default filled in). */
  softmaxScale: number;
  /** Resolved softcap (0 = off). */
  softcap: number;
  /** Element type of q, k and v. */
  dtype: DType;
}

/** Kernels index elements with int32, so every tensor must hold fewer than this many elements. */
const MAX_ELEMENTS = 2 ** 31;

const KNOWN_DTYPES: readonly string[] = ["float32", "float16", "bfloat16"];

function describeShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function checkRank3(tensor: ShapedTensor, name: string, layout: string): void {
  const shape = tensor?.shape;
  if (!Array.isArray(shape)) {
    throw new MagiAttnInputError(`${name}.shape`, "is missing", `pass a tensor of shape ${layout}`);
  }
  if (shape.length !== 3) {
    throw new MagiAttnInputError(
      `${name}.shape`,
      `is ${describeShape(shape)} (rank ${shape.length}) but must be rank 3 ${layout}`,
      `reshape ${name} to ${layout} (thd layout, no batch dimension)`,
    );
  }
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0) {
      throw new MagiAttnInputError(
        `${name}.shape`,
        `is ${describeShape(shape)}`,
        "give non-negative integer dimensions",
      );
    }
  }
}

function elementCount(shape: readonly number[]): number {
  let count = 1;
  for (const dim of shape) count *= dim;
  return count;
}

function checkElementCount(tensor: ShapedTensor, name: string): void {
  const count = elementCount(tensor.shape);
  if (count >= MAX_ELEMENTS) {
    throw new MagiAttnInputError(
      `${name}.shape`,
      `${
        describeShape(tensor.shape)
      } holds ${count} elements, at or above 2^31 (the kernels index with int32)`,
      "split the batch into smaller calls (fewer tokens per call)",
    );
  }
}

function checkRangeArray(key: FlexKey, field: "qRanges" | "kRanges", count: number, total: number): void {
  const ranges = key[field];
  if (!(ranges instanceof Int32Array) || ranges.length !== 2 * count) {
    throw new MagiAttnInputError(
      `key.${field}`,
      `must be an Int32Array of length 2 × ${count} (one [start, end) pair per slice)`,
      "build the key with compileFlexKey(...) or toFlexKey(...)",
    );
  }
  for (let slice = 0; slice < count; slice++) {
    const start = ranges[2 * slice];
    const end = ranges[2 * slice + 1];
    if (start < 0 || start > end || end > total) {
      throw new MagiAttnInputError(
        `key.${field}[${slice}]`,
        `is [${start}, ${end}), outside [0, ${total}] or reversed`,
        `keep every range inside [0, ${total}] with start ≤ end`,
      );
    }
  }
}

/** Keys already checked: a key's arrays must not be mutated (documented), so one check per key is enough. */
const checkedKeys = new WeakSet<FlexKey>();

/**
 * Checks the key's arrays are well formed and in bounds, so no backend reads outside its tensors. Done
 * once per key object: a hot loop over one cached key pays nothing after the first call.
 */
function checkKeyStructure(key: FlexKey): void {
  if (checkedKeys.has(key)) return;
  if (!key || typeof key !== "object" || !(key.attnTypeMap instanceof Int32Array)) {
    throw new MagiAttnInputError(
      "key",
      "is not a FlexKey (attnTypeMap must be an Int32Array)",
      "build the key with compileFlexKey(...) or toFlexKey(...)",
    );
  }
  for (const field of ["totalQ", "totalK"] as const) {
    if (!Number.isSafeInteger(key[field]) || key[field] < 0) {
      throw new MagiAttnInputError(
        `key.${field}`,
        `is ${String(key[field])}`,
        "build the key with compileFlexKey(...) or toFlexKey(...)",
      );
    }
  }
  const count = key.attnTypeMap.length;
  checkRangeArray(key, "qRanges", count, key.totalQ);
  checkRangeArray(key, "kRanges", count, key.totalK);
  for (let slice = 0; slice < count; slice++) {
    const type = key.attnTypeMap[slice];
    if (type < AttnType.FULL || type > AttnType.BICAUSAL) {
      throw new MagiAttnInputError(
        `key.attnTypeMap[${slice}]`,
        `is ${type}`,
        "use 0 (FULL), 1 (CAUSAL), 2 (INVCAUSAL) or 3 (BICAUSAL)",
      );
    }
  }
  checkedKeys.add(key);
}

function resolveSoftmaxScale(value: unknown, headDim: number): number {
  if (value === undefined) return 1 / Math.sqrt(headDim);
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new MagiAttnInputError(
      "opts.softmaxScale",
      `is ${String(value)}`,
      `pass a finite number > 0, or leave it out for 1/sqrt(headDim) = ${1 / Math.sqrt(headDim)}`,
    );
  }
  return value;
}

function resolveSoftcap(value: unknown): number {
  if (value === undefined) return 0;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new MagiAttnInputError(
      "opts.softcap",
      `is ${String(value)}`,
      "pass a finite number ≥ 0 (0 turns soft-capping off)",
    );
  }
  return value;
}

/**
 * A validated call: the {@linkcode ForwardShape} and the very argument objects it was validated for. Only
 * this module can make one (a private field is its brand), so a backend handed one can trust its shape for
 * exactly those arguments and validate anything else.
 */
export class ValidatedCall {
  /** Sizes and resolved options of the call. */
  readonly shape: ForwardShape;
  readonly #args: readonly unknown[];

  private constructor(shape: ForwardShape, args: readonly unknown[]) {
    this.shape = shape;
    this.#args = args;
  }

  /**
   * Internal: made only by {@linkcode validateForwardCall} and {@linkcode validateBackwardCall}.
   * @param shape the validated sizes
   * @param args the argument objects they were validated for
   */
  static of(shape: ForwardShape, args: readonly unknown[]): ValidatedCall {
    return new ValidatedCall(shape, args);
  }

  /**
   * Whether `call` was made by this module for exactly these argument objects, in this order. O(arguments).
   * @param call a value claiming to be a validated call
   * @param args the arguments it must cover
   */
  static covers(call: unknown, args: readonly unknown[]): boolean {
    if (typeof call !== "object" || call === null || !(#args in call)) return false;
    const recorded = (call as ValidatedCall).#args;
    if (recorded.length !== args.length) return false;
    for (let index = 0; index < args.length; index++) if (recorded[index] !== args[index]) return false;
    return true;
  }
}

/**
 * Validates a forward call: q `[totalQ, Hq, D]`, k and v `[totalK, Hkv, D]` of one dtype, `Hq % Hkv == 0`,
 * token counts equal to the key's totals, a well-formed in-bounds key, `softmaxScale` finite > 0,
 * `softcap` finite ≥ 0 and every tensor under 2^31 elements. Returns the sizes and the resolved options.
 * Throws {@linkcode MagiAttnInputError} naming the field and the fix; never changes its inputs.
 */
export function validateForwardArgs(
  q: ShapedTensor,
  k: ShapedTensor,
  v: ShapedTensor,
  key: FlexKey,
  opts: ScoreOptions = {},
): ForwardShape {
  checkRank3(q, "q", "[totalQ, numHeadsQ, headDim]");
  checkRank3(k, "k", "[totalK, numHeadsKV, headDim]");
  checkRank3(v, "v", "[totalK, numHeadsKV, headDim]");
  if (!KNOWN_DTYPES.includes(q.dtype)) {
    throw new MagiAttnInputError(
      "q.dtype",
      `is ${JSON.stringify(q.dtype)}`,
      `use one of ${KNOWN_DTYPES.join(", ")}`,
    );
  }
  for (const [tensor, name] of [[k, "k"], [v, "v"]] as const) {
    if (tensor.dtype !== q.dtype) {
      throw new MagiAttnInputError(
        `${name}.dtype`,
        `is ${tensor.dtype} but q.dtype is ${q.dtype}`,
        `convert q, k and v to one dtype`,
      );
    }
  }
  const [totalQ, numHeadsQ, headDim] = q.shape;
  const [totalK, numHeadsKV, headDimK] = k.shape;
  if (numHeadsQ < 1 || headDim < 1) {
    throw new MagiAttnInputError(
      "q.shape",
      `is ${describeShape(q.shape)}: numHeadsQ and headDim must be ≥ 1`,
      "give q at least one head and a positive head dimension",
    );
  }
  if (numHeadsKV < 1) {
    throw new MagiAttnInputError(
      "k.shape",
      `is ${describeShape(k.shape)}: numHeadsKV must be ≥ 1`,
      "give k and v at least one head",
    );
  }
  if (numHeadsQ % numHeadsKV !== 0) {
    throw new MagiAttnInputError(
      "k.shape",
      `has ${numHeadsKV} heads, which does not divide q's ${numHeadsQ} heads (the GQA ratio Hq/Hkv must be ` +
        `an integer)`,
      "use a KV head count that divides the query head count (Hkv = Hq for MHA, 1 for MQA)",
    );
  }
  if (headDimK !== headDim) {
    throw new MagiAttnInputError(
      "k.shape",
      `has head dim ${headDimK} but q has ${headDim}`,
      "give q, k and v the same head dimension",
    );
  }
  if (v.shape[0] !== totalK || v.shape[1] !== numHeadsKV || v.shape[2] !== headDim) {
    throw new MagiAttnInputError(
      "v.shape",
      `is ${describeShape(v.shape)} but k is ${describeShape(k.shape)}`,
      "give v the shape of k (same tokens, heads and head dim)",
    );
  }
  checkKeyStructure(key);
  if (totalQ !== key.totalQ) {
    throw new MagiAttnInputError(
      "q.shape",
      `has ${totalQ} tokens but the flex key expects totalQ = ${key.totalQ}`,
      `pass q with ${key.totalQ} tokens, or build the key for ${totalQ} query tokens`,
    );
  }
  if (totalK !== key.totalK) {
    throw new MagiAttnInputError(
      "k.shape",
      `has ${totalK} tokens but the flex key expects totalK = ${key.totalK}`,
      `pass k and v with ${key.totalK} tokens, or build the key for ${totalK} key tokens`,
    );
  }
  const softmaxScale = resolveSoftmaxScale(opts?.softmaxScale, headDim);
  const softcap = resolveSoftcap(opts?.softcap);
  checkElementCount(q, "q");
  checkElementCount(k, "k");
  checkElementCount(v, "v");
  const shape: ForwardShape = {
    totalQ,
    totalK,
    numHeadsQ,
    numHeadsKV,
    headDim,
    softmaxScale,
    softcap,
    dtype: q.dtype as DType,
  };
  return shape;
}

/**
 * Validates a backward call: everything {@linkcode validateForwardArgs} checks, plus `dout` and `out` of
 * q's shape and dtype and `lse` float32 `[totalQ, Hq]`. Returns the same {@linkcode ForwardShape}.
 */
export function validateBackwardArgs(
  dout: ShapedTensor,
  q: ShapedTensor,
  k: ShapedTensor,
  v: ShapedTensor,
  out: ShapedTensor,
  lse: ShapedTensor,
  key: FlexKey,
  opts: ScoreOptions = {},
): ForwardShape {
  const shape = validateForwardArgs(q, k, v, key, opts);
  for (const [tensor, name] of [[dout, "dout"], [out, "out"]] as const) {
    checkRank3(tensor, name, "[totalQ, numHeadsQ, headDim] (the shape of q)");
    if (tensor.shape.some((dim, axis) => dim !== q.shape[axis])) {
      throw new MagiAttnInputError(
        `${name}.shape`,
        `is ${describeShape(tensor.shape)} but q is ${describeShape(q.shape)}`,
        `give ${name} the shape of q`,
      );
    }
    if (tensor.dtype !== q.dtype) {
      throw new MagiAttnInputError(
        `${name}.dtype`,
        `is ${tensor.dtype} but q.dtype is ${q.dtype}`,
        `give ${name} q's dtype (out is the forward's output in q's dtype)`,
      );
    }
  }
  const lseShape = lse?.shape;
  if (
    !lseShape || lseShape.length !== 2 || lseShape[0] !== shape.totalQ || lseShape[1] !== shape.numHeadsQ
  ) {
    throw new MagiAttnInputError(
      "lse.shape",
      `is ${lseShape ? describeShape(lseShape) : "missing"} but must be [totalQ, numHeadsQ] = ` +
        `[${shape.totalQ}, ${shape.numHeadsQ}]`,
      "pass the lse the forward returned for these inputs",
    );
  }
  if (lse.dtype !== "float32") {
    throw new MagiAttnInputError(
      "lse.dtype",
      `is ${lse.dtype} but must be float32`,
      "pass the lse the forward returned (always float32)",
    );
  }
  return shape;
}

/** {@linkcode validateForwardArgs} of `inputs` = q, k, v, remembering them: for a backend that trusts the call. */
export function validateForwardCall(
  inputs: readonly [ShapedTensor, ShapedTensor, ShapedTensor],
  key: FlexKey,
  opts: ScoreOptions = {},
): ValidatedCall {
  return ValidatedCall.of(validateForwardArgs(...inputs, key, opts), [...inputs, key]);
}

/**
 * {@linkcode validateBackwardArgs} of `inputs` = dout, q, k, v, out, lse, remembering them: for a backend
 * that trusts the call.
 */
export function validateBackwardCall(
  inputs: readonly [ShapedTensor, ShapedTensor, ShapedTensor, ShapedTensor, ShapedTensor, ShapedTensor],
  key: FlexKey,
  opts: ScoreOptions = {},
): ValidatedCall {
  return ValidatedCall.of(validateBackwardArgs(...inputs, key, opts), [...inputs, key]);
}
