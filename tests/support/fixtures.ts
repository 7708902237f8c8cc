/**
 * Small fixtures shared by the tests (and the compile benchmark): hand-written flex keys and packed
 * document layouts, built without lib/'s compiler so that tests of the compiler stay independent.
 * @module
 */

import { seededRandom } from "../../lib/core/tensor.ts";
import type { FlexKey } from "../../lib/core/types.ts";
import type { MaskParams } from "../../scripts/bench/cases.ts";
import { coverCounts, type SliceTuple } from "./mask_check.ts";

/**
 * A flex key written out by hand from `[qs, qe, ks, ke, type]` slices, not validated and not compiled:
 * its area is counted cell by cell by the rule table (cells covered twice count twice).
 */
export function handMadeKey(slices: readonly SliceTuple[], totalQ: number, totalK: number = totalQ): FlexKey {
  const area = coverCounts(slices, totalQ, totalK).reduce((sum, cell) => sum + cell, 0);
  return Object.freeze({
    qRanges: Int32Array.from(slices.flatMap(([qs, qe]) => [qs, qe])),
    kRanges: Int32Array.from(slices.flatMap(([, , ks, ke]) => [ks, ke])),
    attnTypeMap: Int32Array.from(slices.map((slice) => slice[4])),
    totalQ,
    totalK,
    maxSeqlenQ: Math.max(0, ...slices.map(([qs, qe]) => qe - qs)),
    maxSeqlenK: Math.max(0, ...slices.map(([, , ks, ke]) => ke - ks)),
    area,
  });
}

/** Document index of every token of documents of the given lengths, packed in order. */
export function documentIndexOf(lengths: readonly number[]): Int32Array {
  const total = lengths.reduce((sum, length) => sum + length, 0);
  const documents = new Int32Array(total);
  let offset = 0;
  lengths.forEach((length, document) => {
    documents.fill(document, offset, offset + length);
    offset += length;
  });
  return documents;
}

/** `count` positive document lengths summing to `total`, seeded (lengths vary about 0.2x to 1.2x). */
export function documentLengths(count: number, total: number, seed: number): number[] {
  const random = seededRandom(seed);
  const weights = Array.from({ length: count }, () => 0.2 + random());
  const sum = weights.reduce((a, b) => a + b, 0);
  const lengths = weights.map((weight) => Math.max(1, Math.floor((weight / sum) * total)));
  lengths[count - 1] += total - lengths.reduce((a, b) => a + b, 0);
  return lengths;
}

/** Small benchmark mask parameters, so that brute force over S² cells stays fast. */
export const SMALL_MASK_PARAMS: MaskParams = Object.freeze({
  docMin: 3,
  docMax: 17,
  docSeed: 7,
  window: 5,
  promptLength: 16,
  branches: 4,
  shortDocs: 8,
});
