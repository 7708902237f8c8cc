/**
 * Flex key compiler: overlap detection against a brute-force cell check, canonical order, areas, the
 * cache, toFlexKey / isFlexKey / denseMask, and bad-input errors.
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import {
  clearFlexKeyCache,
  compileFlexKey,
  denseMask,
  FLEX_KEY_CACHE_CAPACITY,
  flexKeyCacheSize,
  isFlexKey,
  sliceArea,
  toFlexKey,
} from "../lib/masks/flex_key.ts";
import { AttnMaskSpec } from "../lib/masks/spec.ts";
import { seededRandom } from "../lib/core/tensor.ts";
import type { FlexKey, MaskType, PlainFlexKey } from "../lib/core/types.ts";
import { documentLengths } from "./support/fixtures.ts";
import { sliceCoversCell, slicesOfKey } from "./support/mask_check.ts";

type Slice = [qs: number, qe: number, ks: number, ke: number, type: number];

/** The FFA cell rule of docs/semantics.md for one slice, cell by cell. */
function covers(slice: Slice, i: number, j: number): boolean {
  return sliceCoversCell(i, j, ...slice);
}

function cellsOf(slice: Slice): number {
  let count = 0;
  for (let i = slice[0]; i < slice[1]; i++) {
    for (let j = slice[2]; j < slice[3]; j++) count += covers(slice, i, j) ? 1 : 0;
  }
  return count;
}

function bruteShared(a: Slice, b: Slice): [number, number] | null {
  for (let i = Math.max(a[0], b[0]); i < Math.min(a[1], b[1]); i++) {
    for (let j = Math.max(a[2], b[2]); j < Math.min(a[3], b[3]); j++) {
      if (covers(a, i, j) && covers(b, i, j)) return [i, j];
    }
  }
  return null;
}

function plainKey(slices: Slice[], totalQ?: number, totalK?: number): PlainFlexKey {
  return {
    qRanges: slices.map(([qs, qe]) => [qs, qe] as [number, number]),
    kRanges: slices.map(([, , ks, ke]) => [ks, ke] as [number, number]),
    attnTypeMap: slices.map(([, , , , type]) => type),
    totalSeqlenQ: totalQ,
    totalSeqlenK: totalK,
  };
}

function randomInt(random: () => number, low: number, high: number): number {
  return low + Math.floor(random() * (high - low + 1));
}

function randomSlice(random: () => number, size: number, type: number): Slice {
  const qs = randomInt(random, 0, size - 1), ks = randomInt(random, 0, size - 1);
  return [qs, randomInt(random, qs, size), ks, randomInt(random, ks, size), type];
}

/** A slice inside 8 × 8 that is rarely empty, so that pairs often meet. */
function pairSlice(random: () => number, type: number): Slice {
  const qs = randomInt(random, 0, 5), ks = randomInt(random, 0, 5);
  const empty = random() < 0.05;
  return [qs, empty ? qs : randomInt(random, qs + 1, 8), ks, randomInt(random, ks + 1, 8), type];
}

function compileError(action: () => unknown): MagiAttnInputError | null {
  try {
    action();
    return null;
  } catch (error) {
    if (error instanceof MagiAttnInputError) return error;
    throw error;
  }
}

const OVERLAP = /slice (\d+) \((.+?)\) and slice (\d+) \((.+?)\) both cover cell \(q=(\d+), k=(\d+)\)/;

Deno.test("overlap: exact test agrees with a brute-force cell check on 2,400 random pairs", () => {
  const random = seededRandom(2024);
  let rejected = 0, accepted = 0, boxesMeetButDisjoint = 0;
  for (let typeA = 0; typeA < 4; typeA++) {
    for (let typeB = 0; typeB < 4; typeB++) {
      for (let trial = 0; trial < 150; trial++) {
        const a = pairSlice(random, typeA), b = pairSlice(random, typeB);
        const context = `pair ${JSON.stringify([a, b])} (types ${typeA}, ${typeB}, trial ${trial})`;
        const expected = bruteShared(a, b);
        const error = compileError(() => toFlexKey(plainKey([a, b], 8, 8)));
        if (expected === null) {
          assert.equal(error, null, `${context}: rejected although disjoint: ${error?.message}`);
          accepted++;
          const rectanglesMeet = Math.max(a[0], b[0]) < Math.min(a[1], b[1]) &&
            Math.max(a[2], b[2]) < Math.min(a[3], b[3]);
          if (rectanglesMeet) boxesMeetButDisjoint++;
        } else {
          assert.ok(error !== null, `${context}: accepted although cell ${expected} is shared`);
          const match = OVERLAP.exec(error.message);
          assert.ok(match, `${context}: message ${error.message}`);
          assert.deepEqual([match[1], match[3]], ["0", "1"], error.message);
          const cell: [number, number] = [Number(match[5]), Number(match[6])];
          assert.ok(covers(a, ...cell) && covers(b, ...cell), `${context}: named cell ${cell} is not shared`);
          assert.match(error.message, /Fix:/);
          rejected++;
        }
      }
    }
  }
  // The random pairs must exercise both outcomes, including rectangles that meet without a shared cell.
  assert.ok(
    rejected > 300 && accepted > 300 && boxesMeetButDisjoint > 50,
    `${rejected} ${accepted} ${boxesMeetButDisjoint}`,
  );
});

Deno.test("overlap: random multi-slice layouts (the sweep) agree with brute force", () => {
  const random = seededRandom(77);
  let rejected = 0;
  for (let seed = 0; seed < 1500; seed++) {
    const count = randomInt(random, 2, 10);
    const size = randomInt(random, 4, 20);
    // Thin slices sharing rows make the sweep's candidate search do real work.
    const slices = Array.from({ length: count }, () => randomSlice(random, size, randomInt(random, 0, 3)));
    let firstShared: [number, number] | null = null;
    for (let a = 0; a < count && firstShared === null; a++) {
      for (let b = a + 1; b < count && firstShared === null; b++) {
        if (bruteShared(slices[a], slices[b])) firstShared = [a, b];
      }
    }
    const error = compileError(() => toFlexKey(plainKey(slices, size, size)));
    const context = `seed ${seed}: ${JSON.stringify(slices)}`;
    if (firstShared === null) {
      assert.equal(error, null, `${context}: ${error?.message}`);
    } else {
      assert.ok(error !== null, `${context}: accepted, but slices ${firstShared} share a cell`);
      const match = OVERLAP.exec(error.message);
      assert.ok(match, error.message);
      const [a, b] = [Number(match[1]), Number(match[3])];
      const cell: [number, number] = [Number(match[5]), Number(match[6])];
      assert.ok(a < b, error.message);
      assert.ok(covers(slices[a], ...cell) && covers(slices[b], ...cell), `${context}: ${error.message}`);
      rejected++;
    }
  }
  assert.ok(rejected > 300 && rejected < 1400, `${rejected}`);
});

Deno.test("overlap: touching and diagonal-split slices are accepted, true overlaps named", async (t) => {
  await t.step("causal and inverse-causal triangles in one rectangle (more rows than columns)", () => {
    const key = toFlexKey(plainKey([[0, 8, 0, 4, 1], [0, 8, 0, 4, 2]]));
    assert.equal(key.area, cellsOf([0, 8, 0, 4, 1]) + cellsOf([0, 8, 0, 4, 2]));
  });
  await t.step("lower triangle plus strict upper triangle tile a square", () => {
    const key = toFlexKey(plainKey([[0, 4, 0, 4, 1], [0, 3, 1, 4, 2]]));
    assert.equal(key.area, 16);
    assert.ok(denseMask(key).every((cell) => cell === 1));
  });
  await t.step("rectangles that only touch", () => {
    toFlexKey(plainKey([[0, 4, 0, 4, 0], [4, 8, 0, 4, 0], [0, 4, 4, 8, 0], [4, 8, 4, 8, 0]]));
  });
  await t.step("the message names both slices by input index, range and type, and the cell", () => {
    const error = compileError(() =>
      toFlexKey(plainKey([[4, 8, 4, 8, 0], [8, 9, 0, 9, 0], [0, 4, 0, 4, 1], [0, 2, 0, 2, 0]]))
    );
    assert.ok(error);
    assert.equal(error.field, "slices 2 and 3");
    assert.match(
      error.message,
      /slice 2 \(\[0,4\)x\[0,4\) causal\) and slice 3 \(\[0,2\)x\[0,2\) full\) both cover cell \(q=0, k=0\)/,
    );
  });
  await t.step("same rectangle, causal and inverse causal share the diagonal", () => {
    const error = compileError(() => toFlexKey(plainKey([[0, 4, 0, 4, 1], [0, 4, 0, 4, 2]])));
    assert.match(error?.message ?? "", /both cover cell \(q=0, k=0\)/);
  });
  await t.step("a duplicated slice", () => {
    const spec = AttnMaskSpec.fromRanges({
      qRanges: [[0, 3], [0, 3]],
      kRanges: [[0, 3], [0, 3]],
      maskTypes: [3, 3],
    });
    assert.throws(() => compileFlexKey(spec), /slice 0 .* and slice 1 .* both cover cell \(q=0, k=0\)/);
  });
});

Deno.test("overlap: large layouts sharing many rows compile, and a planted overlap is found", () => {
  // A chain of 300 nodes of 3 tokens cut slice by slice (node n: causal onto itself, full onto each
  // earlier node): 45,150 slices, node n's slices share their rows. (prefixTree itself makes one slice.)
  const nodes = 300;
  const qRanges: [number, number][] = [], kRanges: [number, number][] = [], maskTypes: MaskType[] = [];
  for (let node = 0; node < nodes; node++) {
    for (let earlier = 0; earlier <= node; earlier++) {
      qRanges.push([3 * node, 3 * node + 3]);
      kRanges.push([3 * earlier, 3 * earlier + 3]);
      maskTypes.push(earlier === node ? "causal" : "full");
    }
  }
  const spec = AttnMaskSpec.fromRanges({ qRanges, kRanges, maskTypes });
  const started = performance.now();
  const key = compileFlexKey(spec);
  const elapsed = performance.now() - started;
  assert.equal(key.attnTypeMap.length, (nodes * (nodes + 1)) / 2);
  assert.equal(key.area, (3 * nodes * (3 * nodes + 1)) / 2); // it is plain causal attention
  assert.ok(elapsed < 2000, `compile took ${elapsed} ms`);
  const ranges = { qRanges: [...spec.qRanges], kRanges: [...spec.kRanges], maskTypes: [...spec.maskTypes] };
  ranges.qRanges.push([600, 601]);
  ranges.kRanges.push([10, 11]);
  ranges.maskTypes.push("full");
  const error = compileError(() => compileFlexKey(AttnMaskSpec.fromRanges(ranges)));
  assert.ok(error);
  assert.match(
    error.message,
    new RegExp(
      `and slice ${
        ranges.qRanges.length - 1
      } \\(\\[600,601\\)x\\[10,11\\) full\\) both cover cell \\(q=600, k=10\\)`,
    ),
  );
});

Deno.test("compiled keys: canonical order, empty slices dropped, bookkeeping, frozen", () => {
  const key = toFlexKey(plainKey(
    [
      [6, 9, 0, 9, 1],
      [0, 3, 0, 3, 1],
      [3, 3, 0, 5, 0], // empty query range
      [3, 6, 0, 2, 3], // BICAUSAL with more rows than columns: no cell
      [3, 6, 3, 6, 0],
    ],
    9,
    9,
  ));
  assert.deepEqual(slicesOfKey(key), [[0, 3, 0, 3, 1], [3, 6, 3, 6, 0], [6, 9, 0, 9, 1]]);
  assert.equal(key.totalQ, 9);
  assert.equal(key.maxSeqlenQ, 3);
  assert.equal(key.maxSeqlenK, 9);
  assert.equal(key.area, 6 + 9 + cellsOf([6, 9, 0, 9, 1]));
  assert.ok(Object.isFrozen(key));
  assert.ok(isFlexKey(key));
  assert.throws(() => ((key as { area: number }).area = 0), TypeError);
  // Totals default to the largest range ends.
  const small = toFlexKey({ qRanges: [[0, 2]], kRanges: [[1, 5]], attnTypeMap: [0] });
  assert.deepEqual([small.totalQ, small.totalK], [2, 5]);
  // ... or to the totals argument, below an explicit field.
  const withTotals = toFlexKey({ qRanges: [[0, 2]], kRanges: [[1, 5]], attnTypeMap: [0], totalSeqlenK: 7 }, {
    totalQ: 4,
    totalK: 6,
  });
  assert.deepEqual([withTotals.totalQ, withTotals.totalK], [4, 7]);
  const none = compileFlexKey(AttnMaskSpec.varlen([]));
  assert.deepEqual([none.attnTypeMap.length, none.totalQ, none.area], [0, 0, 0]);
});

Deno.test("sliceArea matches a cell count for every small shape and type", () => {
  for (let type = 0; type < 4; type++) {
    for (let lq = 0; lq <= 12; lq++) {
      for (let lk = 0; lk <= 12; lk++) {
        assert.equal(
          sliceArea(lq, lk, type),
          cellsOf([3, 3 + lq, 5, 5 + lk, type]),
          `${lq}x${lk} type ${type}`,
        );
      }
    }
  }
  assert.equal(sliceArea(1 << 20, 1 << 20, 1), (2 ** 20 * (2 ** 20 + 1)) / 2);
  assert.throws(() => sliceArea(-1, 2, 0), MagiAttnInputError);
  assert.throws(() => sliceArea(1, 2.5, 0), MagiAttnInputError);
  assert.throws(() => sliceArea(1, 2, 4), MagiAttnInputError);
});

Deno.test("varlen at scale: 10,000 documents, 1,048,576 tokens", () => {
  const lengths = documentLengths(10_000, 1 << 20, 5);
  const key = compileFlexKey(AttnMaskSpec.varlen(lengths));
  assert.equal(key.attnTypeMap.length, 10_000);
  assert.equal(key.totalQ, 1 << 20);
  assert.equal(key.area, lengths.reduce((sum, length) => sum + (length * (length + 1)) / 2, 0));
  assert.equal(key.maxSeqlenQ, Math.max(...lengths));
});

Deno.test("cache: hits share the key, equal specs share it, LRU bounded", () => {
  clearFlexKeyCache();
  assert.equal(flexKeyCacheSize(), 0);
  const spec = AttnMaskSpec.varlen([5, 7, 2]);
  const key = compileFlexKey(spec);
  assert.equal(compileFlexKey(spec), key);
  assert.equal(compileFlexKey(AttnMaskSpec.varlen([5, 7, 2])), key, "an equal spec built again");
  assert.equal(
    compileFlexKey(
      AttnMaskSpec.fromRanges({
        qRanges: [[0, 5], [5, 12], [12, 14]],
        kRanges: [[0, 5], [5, 12], [12, 14]],
        maskTypes: [1, 1, 1],
      }),
    ),
    key,
  );
  assert.notEqual(compileFlexKey(AttnMaskSpec.varlen([5, 7, 2], { causal: false })), key);
  assert.equal(flexKeyCacheSize(), 2);
  // Keep `spec` recently used while filling the cache: it survives, the others are evicted first.
  const firstFiller = compileFlexKey(AttnMaskSpec.causal(1000));
  for (let n = 1; n <= 3 * FLEX_KEY_CACHE_CAPACITY; n++) {
    compileFlexKey(AttnMaskSpec.causal(n));
    compileFlexKey(spec);
    assert.ok(flexKeyCacheSize() <= FLEX_KEY_CACHE_CAPACITY);
  }
  assert.equal(flexKeyCacheSize(), FLEX_KEY_CACHE_CAPACITY);
  assert.equal(compileFlexKey(spec), key);
  const recompiled = compileFlexKey(AttnMaskSpec.causal(1000));
  assert.notEqual(recompiled, firstFiller, "evicted entries are compiled again");
  assert.deepEqual(slicesOfKey(recompiled), slicesOfKey(firstFiller));
  clearFlexKeyCache();
  assert.equal(flexKeyCacheSize(), 0);
  assert.notEqual(compileFlexKey(spec), key);
});

Deno.test("toFlexKey: compiled keys pass through, hand-made typed keys are validated copies", () => {
  const compiled = compileFlexKey(AttnMaskSpec.causal(4));
  assert.equal(toFlexKey(compiled), compiled);
  const handMade = {
    qRanges: new Int32Array([4, 8, 0, 4]),
    kRanges: new Int32Array([0, 8, 0, 4]),
    attnTypeMap: new Int32Array([1, 1]),
    totalQ: 8,
    totalK: 8,
    maxSeqlenQ: 4,
    maxSeqlenK: 8,
    area: 0, // wrong on purpose: recomputed
  };
  assert.equal(isFlexKey(handMade), false);
  const validated = toFlexKey(handMade);
  assert.ok(isFlexKey(validated));
  assert.deepEqual(slicesOfKey(validated), [[0, 4, 0, 4, 1], [4, 8, 0, 8, 1]]);
  assert.equal(validated.area, 36);
  assert.notEqual(validated.qRanges, handMade.qRanges);
  assert.deepEqual(Array.from(handMade.qRanges), [4, 8, 0, 4], "the caller's arrays are not reordered");
  const overlapping = { ...handMade, qRanges: new Int32Array([3, 8, 0, 4]) };
  assert.throws(() => toFlexKey(overlapping), /both cover cell/);
  assert.equal(isFlexKey({ ...compiled }), false, "a copy is not a compiled key");
  assert.equal(isFlexKey(null), false);
});

Deno.test("denseMask draws the key and refuses huge masks", () => {
  const mask = denseMask(toFlexKey(plainKey([[0, 2, 0, 3, 1], [2, 3, 0, 3, 3]])));
  // Causal rows see j ≤ i + (3 − 2); the one-row BICAUSAL band sees j − 2 ≤ … ≤ j: the whole row.
  assert.deepEqual(Array.from(mask), [1, 1, 0, 1, 1, 1, 1, 1, 1]);
  const band = denseMask(toFlexKey(plainKey([[0, 2, 0, 4, 3]])));
  assert.deepEqual(Array.from(band), [1, 1, 1, 0, 0, 1, 1, 1]);
  const error = compileError(() => denseMask(compileFlexKey(AttnMaskSpec.causal(1 << 14))));
  assert.ok(error);
  assert.match(error.message, /2\^26.*Fix:/);
});

interface BadCase {
  name: string;
  field: string;
  input: unknown[];
  call: (...args: unknown[]) => unknown;
}

// deno-lint-ignore no-explicit-any
const toKey = toFlexKey as (...args: any[]) => FlexKey;
const typedBase = () => ({
  qRanges: new Int32Array([0, 4]),
  kRanges: new Int32Array([0, 4]),
  attnTypeMap: new Int32Array([1]),
  totalQ: 4,
  totalK: 4,
});
const plainBase = (): Record<string, unknown> => ({
  qRanges: [[0, 4], [4, 8]],
  kRanges: [[0, 4], [0, 8]],
  attnTypeMap: [1, 1],
});

const BAD_CASES: BadCase[] = [
  {
    name: "compile a non-spec",
    field: "spec",
    input: [{ qRanges: [] }],
    call: (s) => compileFlexKey(s as AttnMaskSpec),
  },
  { name: "toFlexKey null", field: "key", input: [null], call: (k) => toKey(k) },
  { name: "toFlexKey number", field: "key", input: [3], call: (k) => toKey(k) },
  {
    name: "plain NaN start",
    field: "qRanges[1][0]",
    input: [{ ...plainBase(), qRanges: [[0, 4], [NaN, 8]] }],
    call: (k) => toKey(k),
  },
  {
    name: "plain negative",
    field: "kRanges[0][0]",
    input: [{ ...plainBase(), kRanges: [[-2, 4], [0, 8]] }],
    call: (k) => toKey(k),
  },
  {
    name: "plain end < start",
    field: "kRanges[1]",
    input: [{ ...plainBase(), kRanges: [[0, 4], [8, 0]] }],
    call: (k) => toKey(k),
  },
  {
    name: "plain fractional",
    field: "qRanges[0][1]",
    input: [{ ...plainBase(), qRanges: [[0, 3.5], [4, 8]] }],
    call: (k) => toKey(k),
  },
  {
    name: "plain unknown type",
    field: "attnTypeMap[1]",
    input: [{ ...plainBase(), attnTypeMap: [1, 7] }],
    call: (k) => toKey(k),
  },
  {
    name: "plain negative type",
    field: "attnTypeMap[0]",
    input: [{ ...plainBase(), attnTypeMap: [-1, 1] }],
    call: (k) => toKey(k),
  },
  {
    name: "plain mismatched types",
    field: "attnTypeMap",
    input: [{ ...plainBase(), attnTypeMap: [1] }],
    call: (k) => toKey(k),
  },
  {
    name: "plain mismatched kRanges",
    field: "kRanges",
    input: [{ ...plainBase(), kRanges: [[0, 4]] }],
    call: (k) => toKey(k),
  },
  {
    name: "plain past explicit total",
    field: "qRanges[1]",
    input: [{ ...plainBase(), totalSeqlenQ: 6 }],
    call: (k) => toKey(k),
  },
  {
    name: "plain past totals argument",
    field: "kRanges[1]",
    input: [plainBase(), { totalQ: 8, totalK: 5 }],
    call: (k, t) => toKey(k, t),
  },
  {
    name: "plain negative total",
    field: "totalSeqlenK",
    input: [{ ...plainBase(), totalSeqlenK: -1 }],
    call: (k) => toKey(k),
  },
  {
    name: "plain overlap",
    field: "slices 0 and 1",
    input: [{ ...plainBase(), qRanges: [[0, 4], [3, 8]] }],
    call: (k) => toKey(k),
  },
  { name: "bad totals argument", field: "totals", input: [plainBase(), 5], call: (k, t) => toKey(k, t) },
  {
    name: "typed kRanges not typed",
    field: "key.kRanges",
    input: [{ ...typedBase(), kRanges: [0, 4] }],
    call: (k) => toKey(k),
  },
  {
    name: "typed wrong length",
    field: "key.qRanges",
    input: [{ ...typedBase(), qRanges: new Int32Array([0, 4, 4]) }],
    call: (k) => toKey(k),
  },
  {
    name: "typed past total",
    field: "kRanges[0]",
    input: [{ ...typedBase(), totalK: 3 }],
    call: (k) => toKey(k),
  },
  {
    name: "typed end < start",
    field: "qRanges[0]",
    input: [{ ...typedBase(), qRanges: new Int32Array([3, 2]) }],
    call: (k) => toKey(k),
  },
  {
    name: "typed negative",
    field: "qRanges[0]",
    input: [{ ...typedBase(), qRanges: new Int32Array([-1, 2]) }],
    call: (k) => toKey(k),
  },
  {
    name: "typed unknown type",
    field: "key.attnTypeMap[0]",
    input: [{ ...typedBase(), attnTypeMap: new Int32Array([9]) }],
    call: (k) => toKey(k),
  },
  {
    name: "typed NaN total",
    field: "key.totalQ",
    input: [{ ...typedBase(), totalQ: NaN }],
    call: (k) => toKey(k),
  },
  {
    name: "typed total too large",
    field: "key.totalK",
    input: [{ ...typedBase(), totalK: 2 ** 31 }],
    call: (k) => toKey(k),
  },
  {
    name: "sliceArea NaN",
    field: "lq",
    input: [NaN, 2, 0],
    call: (a, b, c) => sliceArea(a as number, b as number, c as number),
  },
];

Deno.test("bad input: MagiAttnInputError naming the field and the fix; inputs untouched", async (t) => {
  for (const bad of BAD_CASES) {
    await t.step(bad.name, () => {
      const before = structuredClone(bad.input);
      const error = compileError(() => bad.call(...bad.input));
      assert.ok(error !== null, `${bad.name}: no error`);
      assert.equal(error.field, bad.field, error.message);
      assert.ok(error.message.includes(`\`${bad.field}\``) && error.message.includes("Fix:"), error.message);
      assert.deepEqual(bad.input, before, `${bad.name}: input changed`);
    });
  }
});
