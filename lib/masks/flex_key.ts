/**
 * The flex key compiler: validates a mask's slices and packs them into the typed arrays the kernels take.
 *
 * A compiled key ({@linkcode FlexKey}) is in canonical order (slices sorted by qStart, kStart, qEnd, kEnd,
 * type), holds no slice that covers no cell (empty ranges, a BICAUSAL band with more query than key rows)
 * and no cell covered by two slices. Compiled keys are frozen objects, cached by spec fingerprint (an LRU
 * of {@linkcode FLEX_KEY_CACHE_CAPACITY}; a hit is confirmed by comparing the specs' contents) and shared
 * between callers. A key owns its typed arrays (it never aliases a spec's storage, so writing into a key
 * cannot change a spec), but **a key's typed arrays must never be mutated** all the same (JavaScript
 * cannot freeze typed arrays, and the cached key is shared): copy them (`key.qRanges.slice()`) to edit.
 *
 * Cost, for N slices: O(N) and one copy of the arrays when the slices are already in canonical order and
 * no two share a query row (packed documents, sliding windows, block-causal, prefix-LM); otherwise
 * O(N log N + P log N), where P is the number of slice pairs whose bounding rectangles intersect: a sweep
 * over query rows with a max-segment tree over key starts reports exactly those pairs, and each gets an
 * exact O(1) integer test.
 * @module
 */

import { describeValue, MagiAttnInputError } from "../core/errors.ts";
import { type FlexKey, isAttnTypeValue, MASK_TYPE_NAMES, type PlainFlexKey } from "../core/types.ts";
import { parseWith, z } from "../core/schema.ts";
import {
  type AttnMaskSpec,
  checkAttnMaskSpec,
  keyArraysOf,
  sharedSpecArrays,
  specFromRangesNamed,
} from "./spec.ts";

const INT32_MAX = 2147483647;

/** How many compiled keys the cache keeps (least recently used evicted first). */
export const FLEX_KEY_CACHE_CAPACITY = 64;

/** Keys made by this module: only these skip validation in {@linkcode toFlexKey}. */
const compiledKeys = new WeakSet<object>();

/** LRU of compiled keys by spec fingerprint; a Map iterates in insertion order, oldest first. */
const cache = new Map<string, { spec: AttnMaskSpec; key: FlexKey }>();

// Top-level keys only: the range lists are checked element by element below (the hot loops).
const PLAIN_KEY_SCHEMA = z.strictObject({
  qRanges: z.unknown(),
  kRanges: z.unknown(),
  attnTypeMap: z.unknown(),
  totalSeqlenQ: z.unknown().optional(),
  totalSeqlenK: z.unknown().optional(),
});

const PLAIN_KEY_WORDING = {
  field: "key",
  owner: "a plain flex key",
  fix: "pass { qRanges, kRanges, attnTypeMap, totalSeqlenQ, totalSeqlenK }",
};

const TYPED_KEY_SCHEMA = z.strictObject({
  qRanges: z.unknown(),
  kRanges: z.unknown(),
  attnTypeMap: z.unknown(),
  totalQ: z.unknown(),
  totalK: z.unknown(),
  maxSeqlenQ: z.unknown().optional(),
  maxSeqlenK: z.unknown().optional(),
  area: z.unknown().optional(),
});

const TYPED_KEY_WORDING = {
  field: "key",
  owner: "a FlexKey",
  fix: "pass { qRanges, kRanges, attnTypeMap, totalQ, totalK } as Int32Arrays and totals",
};

const TOTALS_SCHEMA = z.strictObject({ totalQ: z.unknown(), totalK: z.unknown() });

const TOTALS_WORDING = {
  field: "totals",
  owner: "toFlexKey's totals",
  fix: "pass { totalQ, totalK } or nothing",
};

/** Empties the compiled-key cache. */
export function clearFlexKeyCache(): void {
  cache.clear();
}

/** Number of keys in the compiled-key cache (at most {@linkcode FLEX_KEY_CACHE_CAPACITY}). */
export function flexKeyCacheSize(): number {
  return cache.size;
}

/**
 * Number of visible cells of a slice with `lq` query and `lk` key rows of the given {@linkcode AttnType}
 * (the FLOP-count area: FULL `lq·lk`; CAUSAL/INVCAUSAL `(2lk − lq + 1)·lq/2` when `lk ≥ lq`, else
 * `lk·(lk + 1)/2`; BICAUSAL `(lk − lq + 1)·lq`, 0 when negative).
 */
export function sliceArea(lq: number, lk: number, type: number): number {
  if (!Number.isSafeInteger(lq) || lq < 0) {
    throw new MagiAttnInputError(
      "lq",
      `is ${describeValue(lq)}`,
      "give the query length as a non-negative integer",
    );
  }
  if (!Number.isSafeInteger(lk) || lk < 0) {
    throw new MagiAttnInputError(
      "lk",
      `is ${describeValue(lk)}`,
      "give the key length as a non-negative integer",
    );
  }
  if (!isAttnTypeValue(type)) {
    throw new MagiAttnInputError("type", `is ${describeValue(type)}`, "use an AttnType: 0, 1, 2 or 3");
  }
  return areaOf(lq, lk, type);
}

function areaOf(lq: number, lk: number, type: number): number {
  if (lq === 0 || lk === 0) return 0;
  if (type === 0) return lq * lk;
  if (type === 3) return lk >= lq ? (lk - lq + 1) * lq : 0;
  return lk >= lq ? ((2 * lk - lq + 1) * lq) / 2 : (lk * (lk + 1)) / 2;
}

/** Whether `x` is a flex key compiled (and so validated) by this module. */
export function isFlexKey(x: unknown): x is FlexKey {
  return typeof x === "object" && x !== null && compiledKeys.has(x);
}

/**
 * Compiles a spec into a validated, canonical, frozen flex key; equal specs share one cached key.
 * Throws {@linkcode MagiAttnInputError} for a bad slice: non-integer or out-of-bounds ranges, `end <
 * start`, unknown types, or two slices covering the same cell (the message names both and the cell).
 *
 * @example
 * ```ts
 * import { AttnMaskSpec, compileFlexKey } from "@magi/attn";
 *
 * const key = compileFlexKey(AttnMaskSpec.varlen([5, 3]));
 * console.log(key.totalQ, key.area); // 8 query tokens, 15 + 6 = 21 visible cells
 * console.assert(compileFlexKey(AttnMaskSpec.varlen([5, 3])) === key); // cached by fingerprint
 * ```
 */
export function compileFlexKey(spec: AttnMaskSpec): FlexKey {
  checkAttnMaskSpec(
    spec,
    "spec",
    "build the mask with AttnMaskSpec.varlen / .slidingWindow / .prefixTree / .fromRanges, or use toFlexKey",
  );
  const fingerprint = spec.fingerprint();
  const hit = cache.get(fingerprint);
  if (hit !== undefined && (hit.spec === spec || hit.spec.equals(spec))) {
    cache.delete(fingerprint); // move to the most recently used end
    cache.set(fingerprint, hit);
    return hit.key;
  }
  const key = compileSpec(spec);
  cache.delete(fingerprint);
  cache.set(fingerprint, { spec, key });
  if (cache.size > FLEX_KEY_CACHE_CAPACITY) cache.delete(cache.keys().next().value as string);
  return key;
}

/**
 * A validated flex key from either a compiled key (returned as is), an object shaped like a
 * {@linkcode FlexKey} built elsewhere (validated in full, returned as a new compiled key) or a plain key
 * `{ qRanges: [s, e][], kRanges, attnTypeMap, totalSeqlenQ?, totalSeqlenK? }`. A plain key's totals
 * default to `totals`, then to the largest range end. Validation is that of {@linkcode compileFlexKey}.
 */
export function toFlexKey(
  key: FlexKey | PlainFlexKey,
  totals?: { totalQ: number; totalK: number },
): FlexKey {
  if (isFlexKey(key)) return key;
  if (key === null || typeof key !== "object") {
    throw new MagiAttnInputError(
      "key",
      `is ${describeValue(key)}, not a flex key`,
      "pass a compiled FlexKey or { qRanges, kRanges, attnTypeMap }",
    );
  }
  if (totals !== undefined && (totals === null || typeof totals !== "object")) {
    throw new MagiAttnInputError(
      "totals",
      `is ${describeValue(totals)}`,
      "pass { totalQ, totalK } or nothing",
    );
  }
  if (totals !== undefined) parseWith(TOTALS_SCHEMA, totals, TOTALS_WORDING);
  const candidate = key as unknown as Record<string, unknown>;
  if (candidate.qRanges instanceof Int32Array) {
    parseWith(TYPED_KEY_SCHEMA, key, TYPED_KEY_WORDING);
    return validateTypedKey(candidate);
  }
  const plain = key as PlainFlexKey;
  parseWith(PLAIN_KEY_SCHEMA, key, PLAIN_KEY_WORDING);
  const spec = specFromRangesNamed(
    {
      qRanges: plain.qRanges,
      kRanges: plain.kRanges,
      attnTypeMap: plain.attnTypeMap,
      totalSeqlenQ: plain.totalSeqlenQ ?? totals?.totalQ,
      totalSeqlenK: plain.totalSeqlenK ?? totals?.totalK,
    } as unknown as Parameters<typeof specFromRangesNamed>[0],
    "attnTypeMap",
  );
  return compileFlexKey(spec);
}

/**
 * The dense mask of a key: `totalQ × totalK` bytes, row-major, 1 where the cell is visible. For tests and
 * pictures; throws when the mask would exceed 2^26 cells.
 */
export function denseMask(key: FlexKey | PlainFlexKey): Uint8Array {
  const flex = toFlexKey(key);
  const { totalQ, totalK, qRanges, kRanges, attnTypeMap } = flex;
  if (totalQ * totalK > 2 ** 26) {
    throw new MagiAttnInputError(
      "key",
      `covers ${totalQ} × ${totalK} cells, more than denseMask's limit of 2^26`,
      "draw a smaller mask (denseMask is meant for tests and pictures)",
    );
  }
  const mask = new Uint8Array(totalQ * totalK);
  for (let slice = 0; slice < attnTypeMap.length; slice++) {
    const qs = qRanges[2 * slice], qe = qRanges[2 * slice + 1];
    const ks = kRanges[2 * slice], ke = kRanges[2 * slice + 1];
    const type = attnTypeMap[slice];
    const lowDiagonal = type === 2 || type === 3 ? ks - qs : -Infinity;
    const highDiagonal = type === 1 || type === 3 ? ke - qe : Infinity;
    for (let row = qs; row < qe; row++) {
      const from = Math.max(ks, row + lowDiagonal), to = Math.min(ke - 1, row + highDiagonal);
      if (from <= to) mask.fill(1, row * totalK + from, row * totalK + to + 1);
    }
  }
  return mask;
}

function checkTotal(value: unknown, field: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > INT32_MAX) {
    throw new MagiAttnInputError(
      field,
      `is ${describeValue(value)}`,
      "give a non-negative integer below 2^31",
    );
  }
  return value;
}

/** Validates a spec's slices (read from its internal arrays, without copying) and finishes the key. */
function compileSpec(spec: AttnMaskSpec): FlexKey {
  const totalQ = checkTotal(spec.totalSeqlenQ, "spec.totalSeqlenQ");
  const totalK = checkTotal(spec.totalSeqlenK, "spec.totalSeqlenK");
  // Read without copying, but never shared with the key: a caller writing into a key's typed arrays
  // (JavaScript cannot freeze them) must not be able to change the frozen spec.
  const { q, k, types } = sharedSpecArrays(spec);
  return finishKey(q, k, types, totalQ, totalK, "spec.maskTypes", () => keyArraysOf(spec));
}

/** Validates a FlexKey-shaped object not made by this module. */
function validateTypedKey(candidate: Record<string, unknown>): FlexKey {
  const { qRanges, kRanges, attnTypeMap } = candidate;
  if (!(kRanges instanceof Int32Array) || !(attnTypeMap instanceof Int32Array)) {
    throw new MagiAttnInputError(
      kRanges instanceof Int32Array ? "key.attnTypeMap" : "key.kRanges",
      "is not an Int32Array while key.qRanges is",
      "pass Int32Arrays for qRanges, kRanges and attnTypeMap, or plain arrays for all three",
    );
  }
  const qFlat = qRanges as Int32Array;
  const count = attnTypeMap.length;
  if (qFlat.length !== 2 * count || kRanges.length !== 2 * count) {
    throw new MagiAttnInputError(
      qFlat.length !== 2 * count ? "key.qRanges" : "key.kRanges",
      `has length ${
        qFlat.length !== 2 * count ? qFlat.length : kRanges.length
      } but attnTypeMap has ${count} slices`,
      "give flat [start, end] pairs: 2 entries per slice",
    );
  }
  const totalQ = checkTotal(candidate.totalQ, "key.totalQ");
  const totalK = checkTotal(candidate.totalK, "key.totalK");
  return finishKey(qFlat, kRanges, attnTypeMap, totalQ, totalK, "key.attnTypeMap", () => ({
    q: qFlat.slice(),
    k: kRanges.slice(),
    types: attnTypeMap.slice(),
  }));
}

/** Throws the precise error for a slice that failed the combined check. */
function explainBadSlice(
  qs: unknown,
  qe: unknown,
  ks: unknown,
  ke: unknown,
  type: unknown,
  slice: number,
  totalQ: number,
  totalK: number,
  typesField: string,
): never {
  const fields: [string, unknown, unknown, number][] = [
    ["qRanges", qs, qe, totalQ],
    ["kRanges", ks, ke, totalK],
  ];
  for (const [name, start, end, total] of fields) {
    const field = `${name}[${slice}]`;
    for (const [value, part] of [[start, 0], [end, 1]] as const) {
      if (typeof value !== "number" || !Number.isInteger(value)) {
        throw new MagiAttnInputError(
          `${field}[${part}]`,
          `is ${describeValue(value)}, not an integer`,
          "use integer token indices",
        );
      }
    }
    const s = start as number, e = end as number;
    if (s < 0) throw new MagiAttnInputError(field, `starts at ${s}`, "use non-negative token indices");
    if (e < s) throw new MagiAttnInputError(field, `is [${s}, ${e}): end < start`, "give start ≤ end");
    if (e > total) {
      const totalName = name === "qRanges" ? "totalQ" : "totalK";
      throw new MagiAttnInputError(
        field,
        `is [${s}, ${e}), past ${totalName} = ${total}`,
        `keep it inside [0, ${total})`,
      );
    }
  }
  throw new MagiAttnInputError(
    `${typesField}[${slice}]`,
    `is ${describeValue(type)}, not an attention type`,
    `use ${MASK_TYPE_NAMES.map((name) => `"${name}"`).join(", ")} (AttnType 0-3)`,
  );
}

function describeSlice(qs: number, qe: number, ks: number, ke: number, type: number): string {
  return `[${qs},${qe})x[${ks},${ke}) ${MASK_TYPE_NAMES[type]}`;
}

/**
 * Validates flat slices (bounds, start ≤ end, types; integers by construction), drops those without
 * cells, puts the rest in canonical order, rejects shared cells, and packs the frozen key. On the common
 * path (canonical already, nothing to drop, no two slices sharing a query row) this is one read-only pass,
 * and the key keeps the arrays `keyCopy` gives (never the caller's own: a spec's are made once per spec).
 */
function finishKey(
  qFlat: Int32Array,
  kFlat: Int32Array,
  types: Int32Array,
  totalQ: number,
  totalK: number,
  typesField: string,
  keyCopy: () => { q: Int32Array; k: Int32Array; types: Int32Array },
): FlexKey {
  const inputCount = types.length;
  let kept = 0, sorted = true, disjointRows = true, maxQEnd = 0;
  let area = 0, maxSeqlenQ = 0, maxSeqlenK = 0;
  let pqs = -1, pqe = -1, pks = -1, pke = -1, previousType = -1;
  for (let slice = 0; slice < inputCount; slice++) {
    const qs = qFlat[2 * slice], qe = qFlat[2 * slice + 1], ks = kFlat[2 * slice], ke = kFlat[2 * slice + 1];
    const type = types[slice];
    if (
      !(0 <= qs && qs <= qe && qe <= totalQ && 0 <= ks && ks <= ke && ke <= totalK && type >= 0 && type <= 3)
    ) {
      explainBadSlice(qs, qe, ks, ke, type, slice, totalQ, totalK, typesField);
    }
    const lq = qe - qs, lk = ke - ks;
    // The area formula, inline (this loop is the compiler's hot path).
    const cells = lq === 0 || lk === 0
      ? 0
      : type === 0
      ? lq * lk
      : type === 3
      ? (lk >= lq ? (lk - lq + 1) * lq : 0)
      : lk >= lq
      ? (2 * lk - lq + 1) * lq * 0.5
      : lk * (lk + 1) * 0.5;
    if (cells === 0) continue;
    area += cells;
    if (lq > maxSeqlenQ) maxSeqlenQ = lq;
    if (lk > maxSeqlenK) maxSeqlenK = lk;
    if (sorted && kept > 0) {
      sorted = pqs !== qs
        ? pqs < qs
        : pks !== ks
        ? pks < ks
        : pqe !== qe
        ? pqe < qe
        : pke !== ke
        ? pke < ke
        : previousType <= type;
    }
    if (qs < maxQEnd) disjointRows = false;
    if (qe > maxQEnd) maxQEnd = qe;
    pqs = qs;
    pqe = qe;
    pks = ks;
    pke = ke;
    previousType = type;
    kept++;
  }
  let slices: PackedSlices;
  if (kept === inputCount && sorted) {
    const copy = keyCopy();
    slices = { q: copy.q, k: copy.k, types: copy.types, origin: null };
  } else {
    slices = keepSlicesWithCells(qFlat, kFlat, types, kept);
    if (!sorted) slices = sortCanonical(slices, kept);
  }
  // Canonical slices whose query rows never meet cannot share a cell.
  if (!(sorted && disjointRows)) {
    const clash = findSharedCell(slices.q, slices.k, slices.types, kept);
    if (clash !== null) throwOverlap(slices, clash[0], clash[1]);
  }
  const key: FlexKey = Object.freeze({
    qRanges: slices.q,
    kRanges: slices.k,
    attnTypeMap: slices.types,
    totalQ,
    totalK,
    maxSeqlenQ,
    maxSeqlenK,
    area,
  });
  compiledKeys.add(key);
  return key;
}

/** The `kept` slices that cover at least one cell, in new arrays, with their input indices. */
function keepSlicesWithCells(
  qFlat: Int32Array,
  kFlat: Int32Array,
  types: Int32Array,
  kept: number,
): PackedSlices {
  const result: PackedSlices = {
    q: new Int32Array(2 * kept),
    k: new Int32Array(2 * kept),
    types: new Int32Array(kept),
    origin: new Int32Array(kept),
  };
  let count = 0;
  for (let slice = 0; slice < types.length; slice++) {
    const qs = qFlat[2 * slice], qe = qFlat[2 * slice + 1], ks = kFlat[2 * slice], ke = kFlat[2 * slice + 1];
    if (areaOf(qe - qs, ke - ks, types[slice]) === 0) continue;
    result.q[2 * count] = qs;
    result.q[2 * count + 1] = qe;
    result.k[2 * count] = ks;
    result.k[2 * count + 1] = ke;
    result.types[count] = types[slice];
    result.origin![count] = slice;
    count++;
  }
  return result;
}

/** Flat slices with, where not the identity, the input index of each. */
interface PackedSlices {
  q: Int32Array;
  k: Int32Array;
  types: Int32Array;
  origin: Int32Array | null;
}

/** The slices sorted by (qStart, kStart, qEnd, kEnd, type), in new arrays. */
function sortCanonical(slices: PackedSlices, count: number): PackedSlices {
  const { q, k, types, origin } = slices;
  const order = new Uint32Array(count);
  for (let slice = 0; slice < count; slice++) order[slice] = slice;
  order.sort((a, b) =>
    q[2 * a] - q[2 * b] || k[2 * a] - k[2 * b] || q[2 * a + 1] - q[2 * b + 1] ||
    k[2 * a + 1] - k[2 * b + 1] ||
    types[a] - types[b] || a - b
  );
  const sorted: PackedSlices = {
    q: new Int32Array(2 * count),
    k: new Int32Array(2 * count),
    types: new Int32Array(count),
    origin: new Int32Array(count),
  };
  for (let slice = 0; slice < count; slice++) {
    const from = order[slice];
    sorted.q[2 * slice] = q[2 * from];
    sorted.q[2 * slice + 1] = q[2 * from + 1];
    sorted.k[2 * slice] = k[2 * from];
    sorted.k[2 * slice + 1] = k[2 * from + 1];
    sorted.types[slice] = types[from];
    sorted.origin![slice] = origin === null ? from : origin[from];
  }
  return sorted;
}

/** Throws the overlap error naming both slices by input index, range and type, and a shared cell. */
function throwOverlap(slices: PackedSlices, a: number, b: number): never {
  const { q, k, types, origin } = slices;
  const inputIndex = (slice: number): number => (origin === null ? slice : origin[slice]);
  const [first, second] = inputIndex(a) < inputIndex(b) ? [a, b] : [b, a];
  const name = (slice: number): string =>
    `slice ${inputIndex(slice)} (${
      describeSlice(q[2 * slice], q[2 * slice + 1], k[2 * slice], k[2 * slice + 1], types[slice])
    })`;
  throw new MagiAttnInputError(
    `slices ${inputIndex(first)} and ${inputIndex(second)}`,
    `overlap: ${name(first)} and ${name(second)} both cover cell (q=${sharedRow}, k=${sharedColumn})`,
    "make the slices area-disjoint (trim or split one of them); a cell counted twice would be summed twice",
  );
}

// The cell found by the last successful sharesCell call (kept out of the return value to avoid allocation).
let sharedRow = 0, sharedColumn = 0;
const UNBOUNDED = 2 ** 34; // beyond any diagonal j − i of int32 indices

/**
 * Exact test: do slices a and b cover a common cell? Inside a slice, visible cells are rows [I0, I1],
 * columns [J0, J1] and diagonals d = j − i in [D0, D1]; the intersection of two such boxes holds a cell
 * iff J0 ≤ J1, D0 ≤ D1 and some row i in [max(I0, J0 − D1), min(I1, J1 − D0)] (then j = max(J0, i + D0)).
 */
function sharesCell(q: Int32Array, k: Int32Array, types: Int32Array, a: number, b: number): boolean {
  const rowLow = Math.max(q[2 * a], q[2 * b]), rowHigh = Math.min(q[2 * a + 1], q[2 * b + 1]) - 1;
  const columnLow = Math.max(k[2 * a], k[2 * b]), columnHigh = Math.min(k[2 * a + 1], k[2 * b + 1]) - 1;
  if (rowLow > rowHigh || columnLow > columnHigh) return false;
  const typeA = types[a], typeB = types[b];
  let diagonalLow = -UNBOUNDED, diagonalHigh = UNBOUNDED;
  if (typeA >= 2) diagonalLow = k[2 * a] - q[2 * a]; // INVCAUSAL / BICAUSAL: top-left edge
  if (typeB >= 2) diagonalLow = Math.max(diagonalLow, k[2 * b] - q[2 * b]);
  if (typeA === 1 || typeA === 3) diagonalHigh = k[2 * a + 1] - q[2 * a + 1]; // CAUSAL / BICAUSAL
  if (typeB === 1 || typeB === 3) diagonalHigh = Math.min(diagonalHigh, k[2 * b + 1] - q[2 * b + 1]);
  if (diagonalLow > diagonalHigh) return false;
  const row = Math.max(rowLow, columnLow - diagonalHigh);
  if (row > Math.min(rowHigh, columnHigh - diagonalLow)) return false;
  sharedRow = row;
  sharedColumn = Math.max(columnLow, row + diagonalLow);
  return true;
}

/**
 * Finds two canonical-order slices that share a cell, or null. O(N) when no two slices share a query
 * row; otherwise a sweep over query rows with a max-segment tree over the active slices ordered by key
 * start, reporting exactly the pairs whose bounding rectangles intersect: O((N + P) log N).
 */
function findSharedCell(
  q: Int32Array,
  k: Int32Array,
  types: Int32Array,
  count: number,
): [number, number] | null {
  let disjointRows = true, maxQEnd = count > 0 ? q[1] : 0;
  for (let slice = 1; slice < count; slice++) {
    if (q[2 * slice] < maxQEnd) {
      disjointRows = false;
      break;
    }
    if (q[2 * slice + 1] > maxQEnd) maxQEnd = q[2 * slice + 1];
  }
  if (disjointRows) return null;

  const byKeyStart = new Uint32Array(count), byQueryEnd = new Uint32Array(count);
  for (let slice = 0; slice < count; slice++) byKeyStart[slice] = byQueryEnd[slice] = slice;
  byKeyStart.sort((a, b) => k[2 * a] - k[2 * b] || a - b);
  byQueryEnd.sort((a, b) => q[2 * a + 1] - q[2 * b + 1] || a - b);
  const rank = new Int32Array(count), sortedKeyStarts = new Int32Array(count);
  for (let position = 0; position < count; position++) {
    rank[byKeyStart[position]] = position;
    sortedKeyStarts[position] = k[2 * byKeyStart[position]];
  }
  let size = 1;
  while (size < count) size *= 2;
  // tree[node] = largest key end among active slices under node; −1 where none is active.
  const tree = new Int32Array(2 * size).fill(-1);
  const update = (position: number, value: number): void => {
    let node = position + size;
    tree[node] = value;
    for (node >>= 1; node >= 1; node >>= 1) tree[node] = Math.max(tree[2 * node], tree[2 * node + 1]);
  };
  let found = -1;
  // Visits active slices with rank < limit and key end > keyStart; stops at the first shared cell.
  const search = (
    node: number,
    low: number,
    high: number,
    limit: number,
    keyStart: number,
    current: number,
  ) => {
    if (found >= 0 || low >= limit || tree[node] <= keyStart) return;
    if (node >= size) {
      if (sharesCell(q, k, types, byKeyStart[low], current)) found = byKeyStart[low];
      return;
    }
    const middle = (low + high) >> 1;
    search(2 * node, low, middle, limit, keyStart, current);
    search(2 * node + 1, middle, high, limit, keyStart, current);
  };
  let expired = 0;
  for (let current = 0; current < count; current++) {
    const qs = q[2 * current];
    // Slices that ended at or before this row cannot share a row with this or any later slice.
    while (expired < count && q[2 * byQueryEnd[expired] + 1] <= qs) update(rank[byQueryEnd[expired++]], -1);
    const keyEnd = k[2 * current + 1];
    let low = 0, high = count; // number of slices with key start < keyEnd
    while (low < high) {
      const middle = (low + high) >> 1;
      if (sortedKeyStarts[middle] < keyEnd) low = middle + 1;
      else high = middle;
    }
    search(1, 0, size, low, k[2 * current], current);
    if (found >= 0) return [found, current];
    update(rank[current], keyEnd);
  }
  return null;
}
