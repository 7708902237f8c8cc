/**
 * Types shared by every attention function of the registry, and their option checks.
 * @module
 */

import { MagiAttnInputError } from "../core/errors.ts";
import type { HostTensor } from "../core/tensor.ts";

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

/** Validates the options every attention function shares; unknown keys are rejected (never dropped). */
export function checkAttentionOptions(options: AttentionOptions): void {
  if (options === null || typeof options !== "object") {
    throw new MagiAttnInputError("opts", `is ${String(options)}`, "pass an options object (or {})");
  }
  const known = new Set(["dropout", "scaling", "isCausal", "slidingWindow", "softcap"]);
  for (const name of Object.keys(options)) {
    // deno-lint-ignore no-explicit-any
    if (!known.has(name) && (options as any)[name] !== undefined) {
      throw new MagiAttnInputError(
        `opts.${name}`,
        "is not an option attention functions take, so it would be ignored",
        `remove it; the options are ${[...known].join(", ")}`,
      );
    }
  }
  if (options.dropout !== undefined && options.dropout !== 0) {
    throw new MagiAttnInputError(
      "opts.dropout",
      `is ${options.dropout}, but these attention functions have no dropout`,
      "pass dropout 0 (e.g. model.eval()), or apply dropout outside attention",
    );
  }
  if (options.scaling !== undefined && !(Number.isFinite(options.scaling) && options.scaling > 0)) {
    throw new MagiAttnInputError("opts.scaling", `is ${options.scaling}`, "pass a finite positive scale");
  }
  if (options.softcap !== undefined && !(Number.isFinite(options.softcap) && options.softcap >= 0)) {
    throw new MagiAttnInputError("opts.softcap", `is ${options.softcap}`, "pass a finite cap ≥ 0 (0 = off)");
  }
  if (
    options.slidingWindow !== undefined &&
    !(Number.isSafeInteger(options.slidingWindow) && options.slidingWindow > 0)
  ) {
    throw new MagiAttnInputError(
      "opts.slidingWindow",
      `is ${options.slidingWindow}`,
      "pass a positive integer window (tokens visible including the query itself)",
    );
  }
  if (options.isCausal !== undefined && typeof options.isCausal !== "boolean") {
    throw new MagiAttnInputError("opts.isCausal", `is ${String(options.isCausal)}`, "pass true or false");
  }
}

/** Checks that query, key and value are rank-4 `[B, H, S, D]` tensors (the HF attention layout). */
export function checkBhsdTensors(query: HostTensor, key: HostTensor, value: HostTensor): void {
  for (const [field, item] of [["query", query], ["key", key], ["value", value]] as const) {
    if (item?.shape?.length !== 4) {
      throw new MagiAttnInputError(`${field}.shape`, "is not rank 4", "pass [B, H, S, D] tensors");
    }
  }
}
