/**
 * Mask spec builders and the flex key compiler at 1,048,576 tokens.
 *
 * Run: `deno bench scripts/bench/compile_bench.ts` (or `deno task bench:compile`).
 */

import { clearFlexKeyCache, compileFlexKey } from "../../lib/masks/flex_key.ts";
import { AttnMaskSpec } from "../../lib/masks/spec.ts";
import { documentLengths } from "../../tests/support/fixtures.ts";

const TOTAL_TOKENS = 1 << 20;

const lengths = documentLengths(10_000, TOTAL_TOKENS, 1);
const varlenSpec = AttnMaskSpec.varlen(lengths);
const varlenTwin = AttnMaskSpec.varlen(lengths); // equal, but a different object

// Prefix tree: a 16,512-token prompt, 64 completions of 4,096, each branching into 3 of 4,010 (2^20 tokens).
const treeLengths = [16_512];
const treePaths: number[][] = [];
for (let child = 0; child < 64; child++) {
  const childNode = treeLengths.length;
  treeLengths.push(4_096);
  for (let grandchild = 0; grandchild < 3; grandchild++) {
    treePaths.push([0, childNode, treeLengths.length]);
    treeLengths.push(4_010);
  }
}
const treeSpec = AttnMaskSpec.prefixTree(treeLengths, treePaths);

// Prefix trees of 10,000 nodes: a chain of one-token nodes (one causal slice), and a 1,000-token prompt
// with 3,333 completions of three nodes each (a completion's chain is one causal slice plus the prompt).
const chainLengths = new Array<number>(10_000).fill(1);
const chainPaths = [Array.from({ length: 10_000 }, (_, node) => node)];
const bushLengths = [1_000];
const bushPaths: number[][] = [];
for (let completion = 0; completion < 3_333; completion++) {
  const first = bushLengths.length;
  bushLengths.push(40, 30, 20);
  bushPaths.push([0, first, first + 1, first + 2]);
}
const windowSpec = AttnMaskSpec.slidingWindow(lengths, { left: 4_095, right: 0 });

Deno.bench(
  "compileFlexKey varlen 10k docs / 1M tokens (cache cleared)",
  { group: "varlen", baseline: true },
  () => {
    clearFlexKeyCache();
    compileFlexKey(varlenSpec);
  },
);

Deno.bench("compileFlexKey varlen, cache hit (same spec)", { group: "varlen" }, () => {
  compileFlexKey(varlenSpec);
});

Deno.bench("compileFlexKey varlen, cache hit (equal spec, compared)", { group: "varlen" }, () => {
  compileFlexKey(varlenSpec);
  compileFlexKey(varlenTwin);
});

Deno.bench("AttnMaskSpec.varlen build + fingerprint, 10k docs", { group: "build" }, () => {
  AttnMaskSpec.varlen(lengths).fingerprint();
});

Deno.bench("AttnMaskSpec.prefixTree build, 257 nodes / 1M tokens", { group: "build" }, () => {
  AttnMaskSpec.prefixTree(treeLengths, treePaths);
});

Deno.bench("AttnMaskSpec.prefixTree build, 10k-node chain", { group: "build" }, () => {
  AttnMaskSpec.prefixTree(chainLengths, chainPaths);
});

Deno.bench("AttnMaskSpec.prefixTree build + compile, 10k nodes (prompt + 3,333 completions)", {
  group: "build",
}, () => {
  clearFlexKeyCache();
  compileFlexKey(AttnMaskSpec.prefixTree(bushLengths, bushPaths));
});

Deno.bench("AttnMaskSpec.slidingWindow build, 10k docs / 1M tokens", { group: "build" }, () => {
  AttnMaskSpec.slidingWindow(lengths, { left: 4_095, right: 0 });
});

Deno.bench("AttnMaskSpec.slidingWindow build, one 1M-token doc", { group: "build" }, () => {
  AttnMaskSpec.slidingWindow(TOTAL_TOKENS, { left: 4_095, right: 2_047 });
});

Deno.bench("compileFlexKey prefixTree 1M tokens (cache cleared)", { group: "compile" }, () => {
  clearFlexKeyCache();
  compileFlexKey(treeSpec);
});

Deno.bench("compileFlexKey slidingWindow 10k docs / 1M tokens (cache cleared)", { group: "compile" }, () => {
  clearFlexKeyCache();
  compileFlexKey(windowSpec);
});
