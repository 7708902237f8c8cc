/**
 * Mask spec builders and the flex key compiler at 1,048,576 tokens.
 *
 * Run: `deno bench scripts/bench/compile_bench.ts` (or `deno task bench:compile`).
 */

import { clearFlexKeyCache, compileFlexKey } from "../../lib/masks/flex_key.ts";
import { AttnMaskSpec } from "../../lib/masks/spec.ts";
import { seededRandom } from "../../lib/core/tensor.ts";

const TOTAL_TOKENS = 1 << 20;

/** 10,000 positive document lengths summing to 2^20, seeded (lengths vary about 0.2x to 1.2x). */
function documentLengths(count: number, total: number, seed: number): number[] {
  const random = seededRandom(seed);
  const weights = Array.from({ length: count }, () => 0.2 + random());
  const sum = weights.reduce((a, b) => a + b, 0);
  const lengths = weights.map((weight) => Math.max(1, Math.floor((weight / sum) * total)));
  lengths[count - 1] += total - lengths.reduce((a, b) => a + b, 0);
  return lengths;
}

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
