/**
 * AttnMaskSpec builders: the worked examples of docs/semantics.md, seeded property tests of every builder
 * against oracles written here from each mask's definition, bad-input errors, immutability and
 * fingerprints.
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { compileFlexKey, denseMask } from "../lib/masks/flex_key.ts";
import { AttnMaskSpec, specSliceArrays } from "../lib/masks/spec.ts";
import { prefixTreeLayout } from "../lib/masks/prefix_tree.ts";
import { seededRandom } from "../lib/core/tensor.ts";
import { documentIndexOf } from "./support/fixtures.ts";
import {
  assertCanonicalKey,
  coverCounts,
  denseFromPredicate,
  firstDifference,
  sliceCoversCell,
  slicesOfKey,
} from "./support/mask_check.ts";
import { attnTypeToMaskType, type FlexKey, type MaskType, maskTypeToAttnType } from "../lib/core/types.ts";

const CASES = 1000;

/** Dense mask of a compiled key, cell by cell from the rule table; counts cells covered twice. */
function maskOfKey(key: FlexKey): { mask: Uint8Array; doubles: number } {
  const counts = coverCounts(slicesOfKey(key), key.totalQ, key.totalK);
  let doubles = 0;
  for (const count of counts) doubles += Math.max(0, count - 1);
  return { mask: counts.map((count) => (count > 0 ? 1 : 0)), doubles };
}

/** Compiles `spec` and checks the key against the oracle, its area, order and bookkeeping. */
function checkAgainstOracle(
  spec: AttnMaskSpec,
  visible: (i: number, j: number) => boolean,
  context: string,
): FlexKey {
  const key = compileFlexKey(spec);
  assert.equal(key.totalQ, spec.totalSeqlenQ, context);
  assert.equal(key.totalK, spec.totalSeqlenK, context);
  const expected = denseFromPredicate(visible, key.totalQ, key.totalK);
  const { mask, doubles } = maskOfKey(key);
  assert.equal(doubles, 0, `${context}: a cell is covered twice`);
  assert.ok(
    mask.every((value, index) => value === expected[index]),
    `${context}: first difference at ${firstDifference(mask, expected, key.totalK)}`,
  );
  assert.deepEqual(denseMask(key), expected, `${context}: denseMask`);
  let visibleCount = 0;
  for (const value of expected) visibleCount += value;
  assert.equal(key.area, visibleCount, `${context}: area`);
  assertCanonicalKey(key, context);
  return key;
}

function randomInt(random: () => number, low: number, high: number): number {
  return low + Math.floor(random() * (high - low + 1));
}

function randomLengths(random: () => number, maxTotal: number): number[] {
  const count = randomInt(random, 0, 6);
  const lengths: number[] = [];
  let total = 0;
  for (let d = 0; d < count; d++) {
    const length = random() < 0.2 ? 0 : randomInt(random, 1, Math.max(1, Math.floor(maxTotal / 3)));
    if (total + length > maxTotal) break;
    lengths.push(length);
    total += length;
  }
  return lengths;
}

function sliceList(spec: AttnMaskSpec): [number, number, number, number, MaskType][] {
  return spec.qRanges.map((q, n) => [q[0], q[1], spec.kRanges[n][0], spec.kRanges[n][1], spec.maskTypes[n]]);
}

Deno.test("worked examples of docs/semantics.md", async (t) => {
  await t.step("sliding windows for S = 10", () => {
    assert.deepEqual(sliceList(AttnMaskSpec.slidingWindow(10, { left: 2, right: 0 })), [
      [0, 2, 0, 2, "causal"],
      [2, 10, 0, 10, "bi_causal"],
    ]);
    assert.deepEqual(sliceList(AttnMaskSpec.slidingWindow(10, { left: 2, right: 3 })), [
      [0, 2, 0, 5, "causal"],
      [2, 7, 0, 10, "bi_causal"],
      [7, 10, 5, 10, "inv_causal"],
    ]);
    assert.deepEqual(sliceList(AttnMaskSpec.slidingWindow(10, { left: -1, right: 2 })), [
      [0, 8, 0, 10, "causal"],
      [8, 10, 0, 10, "full"],
    ]);
  });

  await t.step("degenerate windows collapse to causal / full", () => {
    assert.deepEqual(sliceList(AttnMaskSpec.slidingWindow(10, { left: -1, right: 0 })), [[
      0,
      10,
      0,
      10,
      "causal",
    ]]);
    assert.deepEqual(sliceList(AttnMaskSpec.slidingWindow(10, { left: -1, right: -1 })), [[
      0,
      10,
      0,
      10,
      "full",
    ]]);
    assert.deepEqual(sliceList(AttnMaskSpec.slidingWindow(10, { left: 9, right: 50 })), [[
      0,
      10,
      0,
      10,
      "full",
    ]]);
    assert.deepEqual(sliceList(AttnMaskSpec.slidingWindow(10, { left: 0, right: 0 })), [[
      0,
      10,
      0,
      10,
      "bi_causal",
    ]]);
    assert.deepEqual(sliceList(AttnMaskSpec.slidingWindow([3, 0, 2], { left: -1, right: 0 })), [
      [0, 3, 0, 3, "causal"],
      [3, 5, 3, 5, "causal"],
    ]);
  });

  await t.step("prefix tree example, in the documented order", () => {
    const spec = AttnMaskSpec.prefixTree([4, 2, 3], [[0, 1], [0, 2]]);
    // The prompt and the completion laid out after it are one causal chain; the other completion sees
    // the prompt fully and itself causally.
    assert.deepEqual(spec.qRanges, [[0, 6], [6, 9], [6, 9]]);
    assert.deepEqual(spec.kRanges, [[0, 6], [0, 4], [6, 9]]);
    assert.deepEqual(spec.maskTypes, ["causal", "full", "causal"]);
    assert.equal(spec.totalSeqlenQ, 9);
    const key = compileFlexKey(spec);
    // Already canonical: the key keeps the order.
    assert.deepEqual(Array.from(key.qRanges), [0, 6, 6, 9, 6, 9]);
    assert.deepEqual(Array.from(key.kRanges), [0, 6, 0, 4, 6, 9]);
    assert.deepEqual(Array.from(key.attnTypeMap), [1, 0, 1]);
  });

  await t.step("prefix tree layout of the example", () => {
    const layout = prefixTreeLayout([4, 2, 3], [[0, 1], [0, 2]]);
    assert.deepEqual(layout.sampleTokenRanges, [[[0, 4], [4, 6]], [[0, 4], [6, 9]]]);
    assert.deepEqual(Array.from(layout.positionIds), [0, 1, 2, 3, 4, 5, 4, 5, 6]);
  });

  await t.step("block-causal, prefix-LM, varlen, causal, full", () => {
    assert.deepEqual(sliceList(AttnMaskSpec.blockCausal(4, 10)), [
      [0, 4, 0, 4, "full"],
      [4, 8, 0, 8, "full"],
      [8, 10, 0, 10, "full"],
    ]);
    assert.deepEqual(sliceList(AttnMaskSpec.prefixLM(3, 8)), [[0, 3, 0, 3, "full"], [3, 8, 0, 8, "causal"]]);
    assert.deepEqual(sliceList(AttnMaskSpec.prefixLM(0, 4)), [[0, 4, 0, 4, "causal"]]);
    assert.deepEqual(sliceList(AttnMaskSpec.prefixLM(4, 4)), [[0, 4, 0, 4, "full"]]);
    assert.deepEqual(sliceList(AttnMaskSpec.varlen([3, 0, 2])), [[0, 3, 0, 3, "causal"], [
      3,
      5,
      3,
      5,
      "causal",
    ]]);
    assert.deepEqual(sliceList(AttnMaskSpec.varlen([3, 2], { causal: false })), [
      [0, 3, 0, 3, "full"],
      [3, 5, 3, 5, "full"],
    ]);
    assert.deepEqual(
      sliceList(AttnMaskSpec.fromCuSeqlens([0, 3, 3, 5])),
      sliceList(AttnMaskSpec.varlen([3, 0, 2])),
    );
    assert.deepEqual(sliceList(AttnMaskSpec.causal(5)), [[0, 5, 0, 5, "causal"]]);
    assert.deepEqual(sliceList(AttnMaskSpec.full(5)), [[0, 5, 0, 5, "full"]]);
    assert.equal(AttnMaskSpec.causal(0).numSlices, 0);
    assert.equal(AttnMaskSpec.varlen([]).totalSeqlenQ, 0);
  });

  await t.step("fromRanges takes names and numbers", () => {
    const spec = AttnMaskSpec.fromRanges({
      qRanges: [[0, 2], [2, 4]],
      kRanges: [[0, 2], [0, 4]],
      maskTypes: [1, "bi_causal"],
      totalSeqlenQ: 6,
    });
    assert.deepEqual(spec.maskTypes, ["causal", "bi_causal"]);
    assert.equal(spec.totalSeqlenQ, 6);
    assert.equal(spec.totalSeqlenK, 4); // defaults to the largest key range end
  });

  await t.step("type helpers", () => {
    assert.equal(maskTypeToAttnType("inv_causal"), 2);
    assert.equal(attnTypeToMaskType(3), "bi_causal");
    assert.throws(() => maskTypeToAttnType("banded" as MaskType), MagiAttnInputError);
    assert.throws(() => attnTypeToMaskType(4), MagiAttnInputError);
  });
});

Deno.test("property: every builder matches its definition (seeded)", async (t) => {
  const runCases = (name: string, body: (random: () => number, seed: number) => void): void => {
    for (let seed = 1; seed <= CASES; seed++) {
      const random = seededRandom(seed * 7919 + name.length);
      try {
        body(random, seed);
      } catch (error) {
        throw new Error(`${name}: seed ${seed} failed: ${(error as Error).message}`, { cause: error });
      }
    }
  };

  await t.step("causal / full", () =>
    runCases("causal", (random) => {
      const n = randomInt(random, 0, 40);
      checkAgainstOracle(AttnMaskSpec.causal(n), (i, j) => j <= i, `causal(${n})`);
      checkAgainstOracle(AttnMaskSpec.full(n), () => true, `full(${n})`);
    }));

  await t.step("varlen, including zero-length documents", () =>
    runCases("varlen", (random) => {
      const lengths = randomLengths(random, 64);
      const causal = random() < 0.5;
      const documents = documentIndexOf(lengths);
      const spec = AttnMaskSpec.varlen(lengths, { causal });
      checkAgainstOracle(
        spec,
        (i, j) => documents[i] === documents[j] && (!causal || j <= i),
        `varlen(${JSON.stringify(lengths)}, causal ${causal})`,
      );
      assert.equal(spec.numSlices, lengths.filter((length) => length > 0).length);
    }));

  await t.step("fromCuSeqlens", () =>
    runCases("cu", (random) => {
      const lengths = randomLengths(random, 64);
      const cu = [0];
      for (const length of lengths) cu.push(cu[cu.length - 1] + length);
      const causal = random() < 0.5;
      // Oracle: token t belongs to document d iff cu[d] ≤ t < cu[d+1].
      const documentOfToken = (token: number): number => cu.findIndex((end, d) => d > 0 && token < end);
      checkAgainstOracle(
        AttnMaskSpec.fromCuSeqlens(Int32Array.from(cu), { causal }),
        (i, j) => documentOfToken(i) === documentOfToken(j) && (!causal || j <= i),
        `fromCuSeqlens(${JSON.stringify(cu)})`,
      );
    }));

  await t.step(
    "slidingWindow with −1, 0 and windows past the document",
    () =>
      runCases("window", (random) => {
        const lengths = randomLengths(random, 64);
        const pick = (): number => {
          const roll = random();
          return roll < 0.2 ? -1 : roll < 0.35 ? 0 : randomInt(random, 1, 24);
        };
        const left = pick(), right = pick();
        const documents = documentIndexOf(lengths);
        const asNumber = lengths.length === 1 && random() < 0.5;
        const spec = AttnMaskSpec.slidingWindow(asNumber ? lengths[0] : lengths, { left, right });
        checkAgainstOracle(
          spec,
          (i, j) =>
            documents[i] === documents[j] && (left === -1 || j >= i - left) &&
            (right === -1 || j <= i + right),
          `slidingWindow(${JSON.stringify(lengths)}, ${left}, ${right})`,
        );
        assert.ok(spec.numSlices <= 3 * lengths.length);
      }),
  );

  await t.step(
    "prefixTree on random trees (forests, zero-length nodes, any node order)",
    () =>
      runCases("tree", (random) => {
        const nodeCount = randomInt(random, 1, 9);
        // Build the tree in topological order, then relabel nodes with a random permutation.
        const topoParent = [-1];
        for (let node = 1; node < nodeCount; node++) {
          topoParent.push(random() < 0.15 ? -1 : randomInt(random, 0, node - 1));
        }
        const label = Array.from({ length: nodeCount }, (_, index) => index);
        for (let index = nodeCount - 1; index > 0; index--) {
          const other = randomInt(random, 0, index);
          [label[index], label[other]] = [label[other], label[index]];
        }
        const parent = new Array<number>(nodeCount);
        topoParent.forEach((p, node) => (parent[label[node]] = p < 0 ? -1 : label[p]));
        const nodeLengths = Array.from(
          { length: nodeCount },
          () => (random() < 0.1 ? 0 : randomInt(random, 1, 7)),
        );
        const isLeaf = new Array<boolean>(nodeCount).fill(true);
        parent.forEach((p) => p >= 0 && (isLeaf[p] = false));
        const pathTo = (node: number): number[] => (node < 0 ? [] : [...pathTo(parent[node]), node]);
        const samplePaths: number[][] = [];
        for (let node = 0; node < nodeCount; node++) if (isLeaf[node]) samplePaths.push(pathTo(node));
        if (random() < 0.3) samplePaths.push(pathTo(randomInt(random, 0, nodeCount - 1))); // a repeated prefix
        samplePaths.reverse();
        const offsets = [0];
        for (const length of nodeLengths) offsets.push(offsets[offsets.length - 1] + length);
        const nodeOfToken = (token: number): number =>
          offsets.findIndex((end, node) => node > 0 && token < end) - 1;
        const isAncestorOrSelf = (ancestor: number, node: number): boolean =>
          node >= 0 && (node === ancestor || isAncestorOrSelf(ancestor, parent[node]));
        const visible = (i: number, j: number): boolean => {
          const nodeI = nodeOfToken(i), nodeJ = nodeOfToken(j);
          return nodeI === nodeJ ? j <= i : isAncestorOrSelf(nodeJ, nodeI);
        };
        const context = `prefixTree(${JSON.stringify(nodeLengths)}, ${JSON.stringify(samplePaths)})`;
        const spec = AttnMaskSpec.prefixTree(nodeLengths, samplePaths);
        const key = checkAgainstOracle(spec, visible, context);
        // Layout: a token's position is the number of earlier tokens it sees (ancestors + own prefix).
        const layout = prefixTreeLayout(nodeLengths, samplePaths);
        const mask = denseMask(key);
        const total = offsets[nodeCount];
        for (let i = 0; i < total; i++) {
          let seen = 0;
          for (let j = 0; j < total; j++) seen += mask[i * total + j];
          assert.equal(layout.positionIds[i], seen - 1, `${context}: position of token ${i}`);
        }
        layout.sampleTokenRanges.forEach((ranges, sample) =>
          assert.deepEqual(
            ranges,
            samplePaths[sample].map((node) => [offsets[node], offsets[node + 1]]),
            context,
          )
        );
      }),
  );

  await t.step("prefixLM", () =>
    runCases("prefixLM", (random) => {
      const n = randomInt(random, 0, 48), prefix = randomInt(random, 0, n);
      checkAgainstOracle(
        AttnMaskSpec.prefixLM(prefix, n),
        (i, j) => (i < prefix ? j < prefix : j <= i),
        `prefixLM(${prefix}, ${n})`,
      );
    }));

  await t.step("blockCausal", () =>
    runCases("blockCausal", (random) => {
      const n = randomInt(random, 0, 48), block = randomInt(random, 1, Math.max(1, Math.min(12, n)));
      checkAgainstOracle(
        AttnMaskSpec.blockCausal(block, n),
        (i, j) => Math.floor(j / block) <= Math.floor(i / block),
        `blockCausal(${block}, ${n})`,
      );
    }));

  await t.step("fromRanges on random area-disjoint layouts", () =>
    runCases("fromRanges", (random) => {
      const totalQ = randomInt(random, 1, 16), totalK = randomInt(random, 1, 16);
      const slices: [number, number, number, number, number][] = [];
      const owner = new Int32Array(totalQ * totalK).fill(-1);
      for (let attempt = 0; attempt < 12; attempt++) {
        const qs = randomInt(random, 0, totalQ), qe = randomInt(random, qs, totalQ);
        const ks = randomInt(random, 0, totalK), ke = randomInt(random, ks, totalK);
        const type = randomInt(random, 0, 3);
        let free = true;
        for (let i = qs; i < qe && free; i++) {
          for (let j = ks; j < ke && free; j++) {
            if (sliceCoversCell(i, j, qs, qe, ks, ke, type) && owner[i * totalK + j] >= 0) free = false;
          }
        }
        if (!free) continue;
        for (let i = qs; i < qe; i++) {
          for (let j = ks; j < ke; j++) {
            if (sliceCoversCell(i, j, qs, qe, ks, ke, type)) owner[i * totalK + j] = slices.length;
          }
        }
        slices.push([qs, qe, ks, ke, type]);
      }
      const spec = AttnMaskSpec.fromRanges({
        qRanges: slices.map(([qs, qe]) => [qs, qe] as [number, number]),
        kRanges: slices.map(([, , ks, ke]) => [ks, ke] as [number, number]),
        maskTypes: slices.map(([, , , , type]) => (random() < 0.5 ? type : attnTypeToMaskType(type))),
        totalSeqlenQ: totalQ,
        totalSeqlenK: totalK,
      });
      checkAgainstOracle(
        spec,
        (i, j) => slices.some(([qs, qe, ks, ke, type]) => sliceCoversCell(i, j, qs, qe, ks, ke, type)),
        `fromRanges(${JSON.stringify(slices)}, ${totalQ}x${totalK})`,
      );
    }));
});

interface BadCase {
  name: string;
  field: string;
  input: unknown[];
  call: (...args: unknown[]) => unknown;
}

// deno-lint-ignore no-explicit-any
const spec = AttnMaskSpec as any;
const BAD_CASES: BadCase[] = [
  { name: "causal NaN", field: "n", input: [NaN], call: (n) => spec.causal(n) },
  { name: "causal negative", field: "n", input: [-1], call: (n) => spec.causal(n) },
  { name: "full fractional", field: "n", input: [2.5], call: (n) => spec.full(n) },
  { name: "full string", field: "n", input: ["8"], call: (n) => spec.full(n) },
  { name: "causal too large", field: "n", input: [2 ** 31], call: (n) => spec.causal(n) },
  { name: "varlen not array", field: "seqlens", input: [5], call: (s) => spec.varlen(s) },
  { name: "varlen negative", field: "seqlens[1]", input: [[3, -2]], call: (s) => spec.varlen(s) },
  { name: "varlen fractional", field: "seqlens[0]", input: [[1.5]], call: (s) => spec.varlen(s) },
  { name: "varlen NaN", field: "seqlens[2]", input: [[1, 2, NaN]], call: (s) => spec.varlen(s) },
  { name: "varlen sum overflow", field: "seqlens", input: [[2 ** 30, 2 ** 30]], call: (s) => spec.varlen(s) },
  {
    name: "varlen causal not bool",
    field: "options.causal",
    input: [[3], { causal: 1 }],
    call: (s, o) => spec.varlen(s, o),
  },
  { name: "varlen options not object", field: "options", input: [[3], 7], call: (s, o) => spec.varlen(s, o) },
  { name: "cu empty", field: "cuSeqlens", input: [[]], call: (c) => spec.fromCuSeqlens(c) },
  { name: "cu not from 0", field: "cuSeqlens[0]", input: [[1, 4]], call: (c) => spec.fromCuSeqlens(c) },
  { name: "cu decreasing", field: "cuSeqlens[2]", input: [[0, 4, 3]], call: (c) => spec.fromCuSeqlens(c) },
  { name: "cu fractional", field: "cuSeqlens[1]", input: [[0, 0.5]], call: (c) => spec.fromCuSeqlens(c) },
  {
    name: "window missing",
    field: "window",
    input: [8, undefined],
    call: (n, w) => spec.slidingWindow(n, w),
  },
  {
    name: "window left < −1",
    field: "window.left",
    input: [8, { left: -2, right: 0 }],
    call: (n, w) => spec.slidingWindow(n, w),
  },
  {
    name: "window right missing",
    field: "window.right",
    input: [8, { left: 2 }],
    call: (n, w) => spec.slidingWindow(n, w),
  },
  {
    name: "window right NaN",
    field: "window.right",
    input: [8, { left: 2, right: NaN }],
    call: (n, w) => spec.slidingWindow(n, w),
  },
  {
    name: "window left fractional",
    field: "window.left",
    input: [8, { left: 1.5, right: 0 }],
    call: (n, w) => spec.slidingWindow(n, w),
  },
  {
    name: "window bad length",
    field: "seqlensOrN[1]",
    input: [[4, -1], { left: 1, right: 0 }],
    call: (n, w) => spec.slidingWindow(n, w),
  },
  {
    name: "window bad n",
    field: "seqlensOrN",
    input: [-3, { left: 1, right: 0 }],
    call: (n, w) => spec.slidingWindow(n, w),
  },
  { name: "tree no paths", field: "samplePaths", input: [[4], []], call: (l, p) => spec.prefixTree(l, p) },
  {
    name: "tree empty path",
    field: "samplePaths[1]",
    input: [[4, 2], [[0, 1], []]],
    call: (l, p) => spec.prefixTree(l, p),
  },
  {
    name: "tree node out of range",
    field: "samplePaths[0][1]",
    input: [[4, 2], [[0, 2]]],
    call: (l, p) => spec.prefixTree(l, p),
  },
  {
    name: "tree node negative",
    field: "samplePaths[0][0]",
    input: [[4, 2], [[-1, 1]]],
    call: (l, p) => spec.prefixTree(l, p),
  },
  {
    name: "tree two parents",
    field: "samplePaths[1][1]",
    input: [[4, 2, 3], [[0, 1, 2], [0, 2]]],
    call: (l, p) => spec.prefixTree(l, p),
  },
  {
    name: "tree root is a child elsewhere",
    field: "samplePaths[1][0]",
    input: [[4, 2], [[0, 1], [1]]],
    call: (l, p) => spec.prefixTree(l, p),
  },
  {
    name: "tree node twice",
    field: "samplePaths[0][2]",
    input: [[4, 2], [[0, 1, 0]]],
    call: (l, p) => spec.prefixTree(l, p),
  },
  {
    name: "tree unused node",
    field: "nodeLengths[2]",
    input: [[4, 2, 3], [[0, 1]]],
    call: (l, p) => spec.prefixTree(l, p),
  },
  {
    name: "tree bad length",
    field: "nodeLengths[0]",
    input: [[-4], [[0]]],
    call: (l, p) => spec.prefixTree(l, p),
  },
  {
    name: "tree path not array",
    field: "samplePaths[0]",
    input: [[4], [0]],
    call: (l, p) => spec.prefixTree(l, p),
  },
  {
    name: "layout validates too",
    field: "samplePaths[1][1]",
    input: [[4, 2, 3], [[0, 1, 2], [0, 2]]],
    call: (l, p) => prefixTreeLayout(l as number[], p as number[][]),
  },
  { name: "prefixLM prefix > n", field: "prefixLen", input: [9, 8], call: (p, n) => spec.prefixLM(p, n) },
  {
    name: "prefixLM negative prefix",
    field: "prefixLen",
    input: [-1, 8],
    call: (p, n) => spec.prefixLM(p, n),
  },
  { name: "prefixLM NaN n", field: "n", input: [1, NaN], call: (p, n) => spec.prefixLM(p, n) },
  {
    name: "blockCausal zero block",
    field: "blockSize",
    input: [0, 8],
    call: (b, n) => spec.blockCausal(b, n),
  },
  {
    name: "blockCausal fractional",
    field: "blockSize",
    input: [1.5, 8],
    call: (b, n) => spec.blockCausal(b, n),
  },
  { name: "blockCausal negative n", field: "n", input: [2, -8], call: (b, n) => spec.blockCausal(b, n) },
  {
    name: "blockCausal block > n (swapped arguments)",
    field: "blockSize",
    input: [12, 4],
    call: (b, n) => spec.blockCausal(b, n),
  },
  ...rangeCases(),
];

function rangeCases(): BadCase[] {
  const base = {
    qRanges: [[0, 4], [4, 8]],
    kRanges: [[0, 4], [0, 8]],
    maskTypes: ["causal", 1],
    totalSeqlenQ: 8,
    totalSeqlenK: 8,
  };
  const variant = (name: string, field: string, patch: Record<string, unknown>): BadCase => ({
    name: `fromRanges ${name}`,
    field,
    input: [{ ...structuredClone(base), ...patch }],
    call: (ranges) => spec.fromRanges(ranges),
  });
  return [
    {
      name: "fromRanges not an object",
      field: "ranges",
      input: ["not ranges"],
      call: (r) => spec.fromRanges(r),
    },
    variant("end < start", "qRanges[1]", { qRanges: [[0, 4], [8, 4]] }),
    variant("negative start", "kRanges[0][0]", { kRanges: [[-1, 4], [0, 8]] }),
    variant("fractional end", "kRanges[1][1]", { kRanges: [[0, 4], [0, 7.5]] }),
    variant("NaN start", "qRanges[0][0]", { qRanges: [[NaN, 4], [4, 8]] }),
    variant("not a pair", "qRanges[0]", { qRanges: [[0, 4, 5], [4, 8]] }),
    variant("past the total", "qRanges[1]", { qRanges: [[0, 4], [4, 9]] }),
    variant("unknown name", "maskTypes[0]", { maskTypes: ["banded", 1] }),
    variant("unknown number", "maskTypes[1]", { maskTypes: ["causal", 4] }),
    variant("fractional type", "maskTypes[1]", { maskTypes: ["causal", 0.5] }),
    variant("mismatched kRanges", "kRanges", { kRanges: [[0, 4]] }),
    variant("mismatched types", "maskTypes", { maskTypes: ["causal"] }),
    variant("qRanges missing", "qRanges", { qRanges: undefined }),
    variant("negative total", "totalSeqlenK", { totalSeqlenK: -1 }),
    variant("fractional total", "totalSeqlenQ", { totalSeqlenQ: 8.5 }),
  ];
}

Deno.test("bad input: MagiAttnInputError naming the field and the fix; inputs untouched", async (t) => {
  for (const bad of BAD_CASES) {
    await t.step(bad.name, () => {
      const before = structuredClone(bad.input);
      let caught: unknown = undefined;
      try {
        bad.call(...bad.input);
      } catch (error) {
        caught = error;
      }
      assert.ok(caught instanceof MagiAttnInputError, `${bad.name}: threw ${caught}`);
      assert.equal(caught.field, bad.field, caught.message);
      assert.ok(caught.message.includes(`\`${bad.field}\``), caught.message);
      assert.ok(caught.message.includes("Fix:"), caught.message);
      assert.deepEqual(bad.input, before, `${bad.name}: input changed`);
    });
  }
});

Deno.test("specs are frozen and do not alias their inputs", () => {
  const qRanges: [number, number][] = [[0, 2], [2, 4]];
  const built = AttnMaskSpec.fromRanges({ qRanges, kRanges: [[0, 2], [0, 4]], maskTypes: [1, 3] });
  qRanges[0][1] = 3;
  assert.deepEqual(built.qRanges[0], [0, 2]);
  assert.ok(Object.isFrozen(built) && Object.isFrozen(built.qRanges) && Object.isFrozen(built.qRanges[0]));
  assert.ok(Object.isFrozen(built.kRanges[1]) && Object.isFrozen(built.maskTypes));
  assert.throws(() => ((built.qRanges[0] as unknown as number[])[0] = 1), TypeError);
  assert.throws(() => ((built as unknown as { totalSeqlenQ: number }).totalSeqlenQ = 1), TypeError);
  const seqlens = [3, 4];
  const varlen = AttnMaskSpec.varlen(seqlens);
  seqlens[0] = 10;
  assert.equal(varlen.totalSeqlenQ, 7);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => new (AttnMaskSpec as any)(Symbol("x"), [], [], [], 0, 0), MagiAttnInputError);
  // Flat copies belong to the caller: writing to them leaves the spec (and its fingerprint) alone.
  const window = AttnMaskSpec.slidingWindow(10, { left: 2, right: 3 });
  const fingerprint = window.fingerprint();
  const flat = specSliceArrays(window);
  assert.deepEqual(Array.from(flat.qRanges), [0, 2, 2, 7, 7, 10]);
  assert.deepEqual(Array.from(flat.kRanges), [0, 5, 0, 10, 5, 10]);
  assert.deepEqual(Array.from(flat.attnTypes), [1, 3, 2]);
  flat.qRanges[0] = 5;
  flat.attnTypes.fill(0);
  assert.deepEqual(specSliceArrays(window).qRanges[0], 0);
  assert.equal(window.maskTypes[0], "causal");
  assert.equal(AttnMaskSpec.slidingWindow(10, { left: 2, right: 3 }).fingerprint(), fingerprint);
  assert.deepEqual(JSON.parse(JSON.stringify(window)), {
    qRanges: [[0, 2], [2, 7], [7, 10]],
    kRanges: [[0, 5], [0, 10], [5, 10]],
    maskTypes: ["causal", "bi_causal", "inv_causal"],
    totalSeqlenQ: 10,
    totalSeqlenK: 10,
  });
});

Deno.test("fingerprints: stable literals, equal for equal specs, distinct for distinct specs", () => {
  // Fixed expectations: a change in the hash must be deliberate.
  assert.equal(AttnMaskSpec.prefixTree([4, 2, 3], [[0, 1], [0, 2]]).fingerprint(), "a4a622c6836e5d4c-3");
  const varlen = AttnMaskSpec.varlen([3, 5]);
  assert.equal(varlen.fingerprint(), FINGERPRINT_VARLEN_3_5);
  assert.equal(varlen.fingerprint(), varlen.fingerprint());
  assert.equal(
    AttnMaskSpec.fromRanges({
      qRanges: [[0, 3], [3, 8]],
      kRanges: [[0, 3], [3, 8]],
      maskTypes: [1, "causal"],
    })
      .fingerprint(),
    varlen.fingerprint(),
  );
  assert.notEqual(AttnMaskSpec.varlen([3, 5], { causal: false }).fingerprint(), varlen.fingerprint());
  assert.notEqual(AttnMaskSpec.varlen([5, 3]).fingerprint(), varlen.fingerprint());
  // Totals are part of the spec: the same slices over a longer sequence differ.
  assert.notEqual(
    AttnMaskSpec.fromRanges({
      qRanges: [[0, 3], [3, 8]],
      kRanges: [[0, 3], [3, 8]],
      maskTypes: [1, 1],
      totalSeqlenQ: 9,
      totalSeqlenK: 8,
    }).fingerprint(),
    varlen.fingerprint(),
  );
  const seen = new Map<string, AttnMaskSpec>();
  const random = seededRandom(42);
  for (let index = 0; index < 3000; index++) {
    const lengths = randomLengths(random, 64);
    const built = random() < 0.5
      ? AttnMaskSpec.varlen(lengths, { causal: random() < 0.5 })
      : AttnMaskSpec.slidingWindow(lengths, {
        left: randomInt(random, -1, 8),
        right: randomInt(random, -1, 8),
      });
    const other = seen.get(built.fingerprint());
    if (other !== undefined) assert.ok(other.equals(built), `collision: ${other} vs ${built}`);
    seen.set(built.fingerprint(), built);
  }
  assert.ok(seen.size > 500);
});

const FINGERPRINT_VARLEN_3_5 = "30cf7dfe5b80956a-2";

Deno.test("item 9: prefix trees grow with nodes, not tokens: a 5,000-node one-token chain is causal(5000) (main: 12.5M slices)", () => {
  const nodes = 5_000;
  const started = performance.now();
  const chain = AttnMaskSpec.prefixTree(new Array(nodes).fill(1), [
    Array.from({ length: nodes }, (_, n) => n),
  ]);
  const elapsed = performance.now() - started;
  assert.ok(chain.equals(AttnMaskSpec.causal(nodes)), `${chain.numSlices} slices`);
  assert.ok(elapsed < 500, `built in ${elapsed} ms`);
  // Slices grow linearly in the worst case too: 2,000 branches of 3-node chains under one prompt, and a
  // comb whose spine nodes are interleaved with leaves (no contiguous ancestors to merge).
  const lengths = [7];
  const paths: number[][] = [];
  for (let branch = 0; branch < 2_000; branch++) {
    const first = lengths.length;
    lengths.push(2, 1, 3);
    paths.push([0, first, first + 1, first + 2]);
  }
  const branches = AttnMaskSpec.prefixTree(lengths, paths);
  assert.ok(branches.numSlices <= 1 + 2 * 2_000, `${branches.numSlices} slices`);
  assert.equal(compileFlexKey(branches).area, 28 + 2_000 * (6 * 7 + 21));
  const spine = 200;
  const combLengths: number[] = [], combPaths: number[][] = [], spineNodes: number[] = [];
  for (let level = 0; level < spine; level++) {
    spineNodes.push(combLengths.length);
    combLengths.push(1, 1); // a spine node, then its leaf
    combPaths.push([...spineNodes, combLengths.length - 1]);
  }
  const comb = AttnMaskSpec.prefixTree(combLengths, combPaths);
  const key = compileFlexKey(comb);
  const dense = denseMask(key);
  const total = 2 * spine;
  for (let i = 0; i < total; i += 37) {
    for (let j = 0; j < total; j++) {
      const level = (node: number) => Math.floor(node / 2), isLeaf = (node: number) => node % 2 === 1;
      const visible = i === j ||
        (!isLeaf(j) && level(j) < level(i)) || (!isLeaf(j) && level(j) === level(i) && isLeaf(i));
      assert.equal(dense[i * total + j] === 1, visible, `comb cell (${i}, ${j})`);
    }
  }
});

Deno.test("item 11: a node without tokens may be on no path, as Automodel's fold of an empty prompt gives (main: rejected)", () => {
  const spec = AttnMaskSpec.prefixTree([0, 2, 1], [[1], [2]]);
  assert.ok(spec.equals(AttnMaskSpec.varlen([2, 1])), "two causal blocks");
  const layout = prefixTreeLayout([0, 2, 1], [[1], [2]]);
  assert.deepEqual(layout.sampleTokenRanges, [[[0, 2]], [[2, 3]]]);
  assert.deepEqual(Array.from(layout.positionIds), [0, 1, 0]);
  // A node with tokens still needs a path.
  assert.throws(() => AttnMaskSpec.prefixTree([1, 2, 1], [[1], [2]]), (error: unknown) => {
    assert.ok(error instanceof MagiAttnInputError);
    assert.equal(error.field, "nodeLengths[0]");
    return true;
  });
});

Deno.test("item 14: writing into a compiled key's arrays cannot change the frozen spec (main: it did)", () => {
  const spec = AttnMaskSpec.causal(8);
  const key = compileFlexKey(spec);
  key.qRanges[1] = 3;
  key.attnTypeMap[0] = 0;
  assert.deepEqual(spec.qRanges[0], [0, 8]);
  assert.deepEqual(spec.maskTypes, ["causal"]);
  assert.ok(spec.equals(AttnMaskSpec.causal(8)));
  const window = AttnMaskSpec.slidingWindow(10, { left: 2, right: 3 });
  compileFlexKey(window).kRanges.fill(0);
  assert.deepEqual(Array.from(specSliceArrays(window).kRanges), [0, 5, 0, 10, 5, 10]);
});

Deno.test("item 5: builder options reject unknown keys with the valid ones and a did-you-mean (main: causal anyway)", () => {
  for (
    const [call, field, suggestion] of [
      [() => AttnMaskSpec.varlen([4], { casual: false } as never), "options.casual", "causal"],
      [() => AttnMaskSpec.fromCuSeqlens([0, 4], { Causal: true } as never), "options.Causal", "causal"],
      [
        () => AttnMaskSpec.slidingWindow(8, { left: 2, right: 0, rigth: 1 } as never),
        "window.rigth",
        "right",
      ],
      [
        () => AttnMaskSpec.fromRanges({ qRanges: [], kRanges: [], maskTypes: [], totalSeqlen: 4 } as never),
        "totalSeqlen",
        "totalSeqlenQ",
      ],
    ] as const
  ) {
    assert.throws(call, (error: unknown) => {
      assert.ok(error instanceof MagiAttnInputError, String(error));
      assert.equal(error.field, field);
      assert.match(error.message, new RegExp(`did you mean \`${suggestion}\``));
      assert.match(error.message, /the valid keys are/);
      return true;
    });
  }
});

Deno.test("twin builders catch swapped arguments alike: prefixLM(12, 4) and blockCausal(12, 4)", () => {
  for (
    const [call, field] of [
      [() => AttnMaskSpec.prefixLM(12, 4), "prefixLen"],
      [() => AttnMaskSpec.blockCausal(12, 4), "blockSize"],
    ] as const
  ) {
    assert.throws(call, (error: unknown) => {
      assert.ok(error instanceof MagiAttnInputError, String(error));
      assert.equal(error.field, field);
      assert.match(error.message, /n = 4/);
      return true;
    });
  }
  assert.throws(() => AttnMaskSpec.blockCausal(12, 4), /swapped.*blockCausal\(4, 12\)/s);
  // The unswapped calls, a block as long as the sequence, and the empty sequence stay valid.
  assert.equal(AttnMaskSpec.blockCausal(4, 12).numSlices, 3);
  assert.equal(AttnMaskSpec.blockCausal(4, 4).numSlices, 1);
  assert.equal(AttnMaskSpec.blockCausal(4, 0).numSlices, 0);
});
