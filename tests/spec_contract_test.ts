/**
 * AttnMaskSpec contracts beyond the masks: specs are frozen and do not alias their inputs, fingerprints are
 * stable and distinct, and the regressions of earlier reviews (numbered items) stay fixed.
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { compileFlexKey, denseMask } from "../lib/masks/flex_key.ts";
import { AttnMaskSpec, specSliceArrays } from "../lib/masks/spec.ts";
import { prefixTreeLayout } from "../lib/masks/prefix_tree.ts";
import { seededRandom } from "../lib/core/tensor.ts";
import { randomInt, randomLengthsUpTo } from "./support/fuzz.ts";

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
    const lengths = randomLengthsUpTo(random, 64);
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
