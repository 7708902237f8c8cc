/**
 * The FFA cell rule of docs/semantics.md, evaluated cell by cell, for tests: written here from the rule
 * table, independent of lib/ (which works on intervals and areas), so the two check each other.
 * @module
 */

import assert from "node:assert/strict";
import type { FlexKey } from "../../lib/core/types.ts";

/** One slice written by hand: `[qStart, qEnd, kStart, kEnd, attnType]`, ranges half-open. */
export type SliceTuple = readonly [qs: number, qe: number, ks: number, ke: number, type: number];

/**
 * Whether cell (query i, key j) is visible through slice `[qs, qe) × [ks, ke)` of AttnType `type`: FULL
 * (0) every cell; CAUSAL (1) `j − i ≤ ke − qe` (bottom-right aligned); INVCAUSAL (2) `j − i ≥ ks − qs`
 * (top-left aligned); BICAUSAL (3) both.
 */
export function sliceCoversCell(
  i: number,
  j: number,
  qs: number,
  qe: number,
  ks: number,
  ke: number,
  type: number,
): boolean {
  if (i < qs || i >= qe || j < ks || j >= ke) return false;
  const causalOk = j - i <= ke - qe, invOk = j - i >= ks - qs;
  return type === 0 || (type === 1 && causalOk) || (type === 2 && invOk) || (type === 3 && causalOk && invOk);
}

/** The slices of a flex key as tuples, in the key's order. */
export function slicesOfKey(key: FlexKey): SliceTuple[] {
  return Array.from(key.attnTypeMap, (type, n) => [
    key.qRanges[2 * n],
    key.qRanges[2 * n + 1],
    key.kRanges[2 * n],
    key.kRanges[2 * n + 1],
    type,
  ]);
}

/** Visits every visible cell of every slice, slice by slice in order. */
function forEachCoveredCell(
  slices: Iterable<SliceTuple>,
  visit: (i: number, j: number, type: number) => void,
): void {
  for (const [qs, qe, ks, ke, type] of slices) {
    for (let i = qs; i < qe; i++) {
      for (let j = ks; j < ke; j++) if (sliceCoversCell(i, j, qs, qe, ks, ke, type)) visit(i, j, type);
    }
  }
}

/** Per cell (row-major `totalQ × totalK`), how many slices make it visible: 0 hidden, 2+ covered twice. */
export function coverCounts(slices: Iterable<SliceTuple>, totalQ: number, totalK: number): Uint8Array {
  const counts = new Uint8Array(totalQ * totalK);
  forEachCoveredCell(slices, (i, j) => counts[i * totalK + j]++);
  return counts;
}

/** Per cell, the AttnType of the last slice that makes it visible; −1 where none does. */
export function coveringTypes(slices: Iterable<SliceTuple>, totalQ: number, totalK: number): Int8Array {
  const types = new Int8Array(totalQ * totalK).fill(-1);
  forEachCoveredCell(slices, (i, j, type) => types[i * totalK + j] = type);
  return types;
}

/** Dense row-major 0/1 mask of a visibility predicate. */
export function denseFromPredicate(
  visible: (i: number, j: number) => boolean,
  totalQ: number,
  totalK: number,
): Uint8Array {
  const mask = new Uint8Array(totalQ * totalK);
  for (let i = 0; i < totalQ; i++) {
    for (let j = 0; j < totalK; j++) mask[i * totalK + j] = visible(i, j) ? 1 : 0;
  }
  return mask;
}

/** The first cell where two row-major masks differ, as text (`"none"` when they agree). */
export function firstDifference(a: ArrayLike<number>, b: ArrayLike<number>, totalK: number): string {
  for (let index = 0; index < a.length; index++) {
    if (a[index] !== b[index]) {
      return `cell (q=${Math.floor(index / totalK)}, k=${index % totalK}): ${a[index]} vs ${b[index]}`;
    }
  }
  return "none";
}

/**
 * Asserts a compiled key's order and bookkeeping: its slices in canonical order (by query start, key start,
 * query end, key end, then type) and `maxSeqlenQ` / `maxSeqlenK` equal to its longest query and key range.
 * `where` starts every message.
 */
export function assertCanonicalKey(key: FlexKey, where: string): void {
  let maxQ = 0, maxK = 0;
  for (let n = 0; n < key.attnTypeMap.length; n++) {
    maxQ = Math.max(maxQ, key.qRanges[2 * n + 1] - key.qRanges[2 * n]);
    maxK = Math.max(maxK, key.kRanges[2 * n + 1] - key.kRanges[2 * n]);
    if (n === 0) continue;
    const bounds = (slice: number) => [
      key.qRanges[2 * slice],
      key.kRanges[2 * slice],
      key.qRanges[2 * slice + 1],
      key.kRanges[2 * slice + 1],
    ];
    const previous = bounds(n - 1);
    const current = bounds(n);
    const differs = previous.findIndex((value, index) => value !== current[index]);
    assert.ok(
      differs < 0 ? key.attnTypeMap[n - 1] <= key.attnTypeMap[n] : previous[differs] < current[differs],
      `${where}: key slices ${n - 1} and ${n} are not in canonical order`,
    );
  }
  assert.equal(key.maxSeqlenQ, maxQ, `${where}: maxSeqlenQ`);
  assert.equal(key.maxSeqlenK, maxK, `${where}: maxSeqlenK`);
}
