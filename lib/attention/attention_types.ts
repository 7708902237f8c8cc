/**
 * Types shared by every attention function of the registry, and their option checks.
 * @module
 */

import { describeValue, MagiAttnInputError } from "../core/errors.ts";
import { strictParser, z } from "../core/schema.ts";
import { checkHostTensor, checkShape, type HostTensor, toFloat32 } from "../core/tensor.ts";

/** A boolean mask: 1 = may attend, 0 = masked. Shape `[Sq, Sk]` or `[B | 1, H | 1, Sq, Sk]`. */
export interface BoolAttentionMask {
  /** One byte per cell. */
  readonly data: Uint8Array;
  /** Mask shape. */
  readonly shape: readonly number[];
}

/** A boolean mask, or an additive float mask (a HostTensor; −Infinity = masked) of the same shapes. */
export type AttentionMask = BoolAttentionMask | HostTensor;

/** Options every attention function takes (HF names, camelCase). */
export interface AttentionOptions {
  /** Dropout probability; only 0 is supported (inference and FFA have no dropout). */
  dropout?: number;
  /** Logit scale; default `1 / sqrt(headDim)`. */
  scaling?: number;
  /** Causal masking (bottom-right aligned when Sq ≠ Sk). */
  isCausal?: boolean;
  /** HF sliding window W: key j is visible from query i iff i − W < j (and j ≤ i when causal). */
  slidingWindow?: number;
  /** Logit soft-capping `cap * tanh(s / cap)`; 0 or absent disables it. */
  softcap?: number;
}

/**
 * An attention function: `(module, query [B,H,S,D], key [B,Hkv,Sk,D], value, attentionMask, opts)` →
 * `[out [B,S,H,D], attentionWeights (always null here)]`.
 */
export type AttentionFunction = (
  module: object,
  query: HostTensor,
  key: HostTensor,
  value: HostTensor,
  attentionMask: AttentionMask | null,
  options: AttentionOptions,
) => Promise<[HostTensor, null]>;

const ATTENTION_OPTIONS = z.strictObject({
  dropout: z.number().refine((value) => value === 0, {
    error: (issue) => `is ${describeValue(issue.input)}, but these attention functions have no dropout`,
  }).optional(),
  scaling: z.number().positive().optional(),
  isCausal: z.boolean().optional(),
  slidingWindow: z.int().positive().optional(),
  softcap: z.number().min(0).optional(),
});

const parseAttentionOptions = strictParser(ATTENTION_OPTIONS, {
  field: "opts",
  owner: "attention functions",
  fix: "pass an options object (or {})",
  fixes: {
    dropout: "pass dropout 0 (e.g. model.eval()), or apply dropout outside attention",
    scaling: "pass a finite positive scale",
    isCausal: "pass true or false",
    slidingWindow: "pass a positive integer window (tokens visible including the query itself)",
    softcap: "pass a finite cap ≥ 0 (0 = off)",
  },
}, { optional: false });

/**
 * Validates the options every attention function shares and returns them: unknown keys are rejected
 * (never dropped), with the valid keys and a did-you-mean.
 */
export function checkAttentionOptions(options: AttentionOptions): AttentionOptions {
  return parseAttentionOptions(options);
}

/** Checks the attention module argument: an object (the module whose stamped spec a magi forward reads). */
export function checkAttentionModule(module: unknown): asserts module is object {
  if (module === null || typeof module !== "object") {
    throw new MagiAttnInputError(
      "module",
      `is ${describeValue(module)}, not an attention module`,
      "pass the calling attention module (this) as the first argument",
    );
  }
}

/**
 * Checks that query, key and value are host tensors whose data matches their dtype and shape, in the
 * rank-4 `[B, H, S, D]` HF attention layout.
 */
export function checkBhsdTensors(query: HostTensor, key: HostTensor, value: HostTensor): void {
  for (const [field, item] of [["query", query], ["key", key], ["value", value]] as const) {
    checkHostTensor(item, field);
    if (item.shape.length !== 4) {
      throw new MagiAttnInputError(
        `${field}.shape`,
        `is [${item.shape.join(", ")}] (rank ${item.shape.length}), not rank 4`,
        "pass [B, H, S, D] tensors",
      );
    }
  }
}

/** A checked attention mask: its data as a boolean (`Uint8Array`) or additive (float32) row-major array. */
export interface CheckedAttentionMask {
  /** `true` for a boolean mask (nonzero = visible), `false` for an additive float mask. */
  readonly isBool: boolean;
  /** Boolean mask bytes, or the additive values as float32. */
  readonly values: Uint8Array | Float32Array;
  /** The mask's shape. */
  readonly shape: readonly number[];
}

/**
 * Checks an `attentionMask`: a boolean mask (`data` a `Uint8Array`, no dtype) or an additive float
 * HostTensor, with exactly as many elements as its shape holds. Any other data type (a
 * `Uint8ClampedArray`, a plain array, an `Int8Array`) is refused instead of being misread.
 */
export function checkAttentionMask(mask: AttentionMask): CheckedAttentionMask {
  if (mask === null || typeof mask !== "object") {
    throw new MagiAttnInputError(
      "attentionMask",
      `is ${describeValue(mask)}, not a mask`,
      "pass { data: Uint8Array, shape } (boolean) or an additive float HostTensor, or null",
    );
  }
  const { data, shape } = mask as { data?: unknown; shape?: unknown; dtype?: unknown };
  const dtype = (mask as { dtype?: unknown }).dtype;
  if (data instanceof Uint8Array && dtype === undefined) {
    const count = checkShape(shape, "attentionMask.shape");
    if (data.length !== count) {
      throw new MagiAttnInputError(
        "attentionMask.data",
        `has ${data.length} elements but attentionMask.shape [${
          (shape as number[]).join(", ")
        }] holds ${count}`,
        "give the boolean mask one byte per cell of its shape",
      );
    }
    return { isBool: true, values: data, shape: shape as number[] };
  }
  if (dtype === undefined) {
    const what = ArrayBuffer.isView(data) ? `a ${data.constructor.name}` : describeValue(data);
    throw new MagiAttnInputError(
      "attentionMask.data",
      `is ${what}, which is neither a boolean mask (a Uint8Array) nor a tensor with a dtype`,
      "pass a boolean mask as { data: Uint8Array (1 = visible), shape } (Uint8Array.from(...) converts " +
        "other arrays), or an additive mask as a float HostTensor",
    );
  }
  checkHostTensor(mask, "attentionMask");
  return { isBool: false, values: toFloat32(mask), shape: mask.shape };
}
