/**
 * AttnMaskSpec builders on bad input: each throws MagiAttnInputError naming the field and the fix, and
 * leaves its inputs untouched.
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { AttnMaskSpec } from "../lib/masks/spec.ts";
import { prefixTreeLayout } from "../lib/masks/prefix_tree.ts";

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
