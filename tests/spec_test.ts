/**
 * AttnMaskSpec builders: the worked examples of docs/semantics.md, seeded property tests of every builder
 * against oracles written here from each mask's definition, bad-input errors, immutability and
 * fingerprints.
 */
import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { compileFlexKey, denseMask } from "../lib/masks/flex_key.ts";
import { AttnMaskSpec } from "../lib/masks/spec.ts";
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
import { randomInt, randomLengthsUpTo } from "./support/fuzz.ts";

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
      const lengths = randomLengthsUpTo(random, 64);
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
      const lengths = randomLengthsUpTo(random, 64);
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
        const lengths = randomLengthsUpTo(random, 64);
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
