/**
 * Shared types of the flex key, the unit every backend consumes, and the mask type names with their
 * numeric codes.
 * @module
 */

import { describeValue, MagiAttnInputError } from "./errors.ts";

/** Numeric attention types of a slice, as the kernels take them. */
export const AttnType: Readonly<{ FULL: 0; CAUSAL: 1; INVCAUSAL: 2; BICAUSAL: 3 }> = Object.freeze(
  { FULL: 0, CAUSAL: 1, INVCAUSAL: 2, BICAUSAL: 3 } as const,
);

/** One of the values of {@linkcode AttnType}. */
export type AttnTypeValue = (typeof AttnType)[keyof typeof AttnType];

/** Mask type names used by {@linkcode AttnMaskSpec}. */
export type MaskType = "full" | "causal" | "inv_causal" | "bi_causal";

/**
 * The one table linking mask type names to their {@linkcode AttnType} codes (TypeScript checks that
 * every name is present).
 */
const ATTN_TYPE_OF_MASK_TYPE: Readonly<Record<MaskType, AttnTypeValue>> = Object.freeze({
  full: AttnType.FULL,
  causal: AttnType.CAUSAL,
  inv_causal: AttnType.INVCAUSAL,
  bi_causal: AttnType.BICAUSAL,
});

/** Internal (not re-exported by mod.ts): mask type names indexed by AttnType code (`[1]` is `"causal"`). */
export const MASK_TYPE_NAMES: readonly MaskType[] = Object.freeze(
  (Object.keys(ATTN_TYPE_OF_MASK_TYPE) as MaskType[]).sort((a, b) =>
    ATTN_TYPE_OF_MASK_TYPE[a] - ATTN_TYPE_OF_MASK_TYPE[b]
  ),
);

/** Internal: whether `value` is an AttnType code (an integer 0 to 3). */
export function isAttnTypeValue(value: unknown): value is AttnTypeValue {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value < MASK_TYPE_NAMES.length;
}

/**
 * A compiled mask: N slices `[qRanges[n], kRanges[n], attnTypeMap[n]]` in canonical order, validated
 * (in bounds, start ≤ end, integer, known types, no cell covered by two slices).
 */
export interface FlexKey {
  /** Flat half-open query ranges `s0, e0, s1, e1, …` (length 2N). */
  readonly qRanges: Int32Array;
  /** Flat half-open key ranges, paired with `qRanges` (length 2N). */
  readonly kRanges: Int32Array;
  /** {@linkcode AttnType} of each slice (length N). */
  readonly attnTypeMap: Int32Array;
  /** Number of query tokens the key covers (q's first dimension). */
  readonly totalQ: number;
  /** Number of key tokens the key covers (k's and v's first dimension). */
  readonly totalK: number;
  /** Longest query range of any slice. */
  readonly maxSeqlenQ: number;
  /** Longest key range of any slice. */
  readonly maxSeqlenK: number;
  /** Number of visible (query, key) cells, the unit of the FLOP count. */
  readonly area: number;
}

/** A flex key written by hand: ranges as `[start, end)` pairs and numeric types. */
export interface PlainFlexKey {
  /** Query ranges, `[start, end)`. */
  qRanges: readonly (readonly [number, number])[];
  /** Key ranges, `[start, end)`, one per query range. */
  kRanges: readonly (readonly [number, number])[];
  /** {@linkcode AttnType} value of each slice. */
  attnTypeMap: readonly number[];
  /** Query tokens; default: the largest query range end. */
  totalSeqlenQ?: number;
  /** Key tokens; default: the largest key range end. */
  totalSeqlenK?: number;
}

/** The numeric {@linkcode AttnType} of a mask type name (`"causal"` → 1). Throws for an unknown name. */
export function maskTypeToAttnType(maskType: MaskType, field = "maskType"): AttnTypeValue {
  const index = MASK_TYPE_NAMES.indexOf(maskType);
  if (index < 0) {
    throw new MagiAttnInputError(
      field,
      `is ${describeValue(maskType)}, not a mask type`,
      `use one of ${MASK_TYPE_NAMES.map((name) => `"${name}"`).join(", ")} (or the AttnType numbers 0-3)`,
    );
  }
  return index as AttnTypeValue;
}

/** The mask type name of a numeric {@linkcode AttnType} (1 → `"causal"`). Throws for an unknown value. */
export function attnTypeToMaskType(attnType: number, field = "attnType"): MaskType {
  if (!isAttnTypeValue(attnType)) {
    throw new MagiAttnInputError(
      field,
      `is ${describeValue(attnType)}, not an attention type`,
      "use 0 (FULL), 1 (CAUSAL), 2 (INVCAUSAL) or 3 (BICAUSAL)",
    );
  }
  return MASK_TYPE_NAMES[attnType];
}
