/**
 * Shared types of the flex key, the unit every backend consumes.
 * @module
 */

/** Numeric attention types of a slice, as the kernels take them. */
export const AttnType: Readonly<{ FULL: 0; CAUSAL: 1; INVCAUSAL: 2; BICAUSAL: 3 }> = Object.freeze(
  { FULL: 0, CAUSAL: 1, INVCAUSAL: 2, BICAUSAL: 3 } as const,
);

/** One of the values of {@linkcode AttnType}. */
export type AttnTypeValue = (typeof AttnType)[keyof typeof AttnType];

/** Mask type names used by {@linkcode AttnMaskSpec}. */
export type MaskType = "full" | "causal" | "inv_causal" | "bi_causal";

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
