/**
 * The GPU parity cases: the masks (upstream's varlen layouts, disjoint ranges with gaps, a 14-slice sparse
 * layout, block grids, random disjoint slices, a prefix tree) and the forward, backward and deterministic
 * case tables that tests/gpu/parity_test.ts runs.
 * @module
 */

import { AttnMaskSpec } from "../../lib/masks/spec.ts";
import { seededRandom } from "../../lib/core/tensor.ts";

/** A low-precision input dtype the kernels take. */
export type LowDType = "bfloat16" | "float16";
/** Query heads, kv heads, head dim. */
export type Heads = readonly [headsQ: number, headsKV: number, headDim: number];

// ---------------------------------------------------------------------------------------------------------
// Masks

/** Cumulative lengths of the upstream varlen tests. */
const CU_SEQLENS_A = [0, 366, 391, 471, 835, 984, 1005, 1017, 1020, 1023, 1024];
const CU_SEQLENS_B = [0, 256, 512, 1024, 1280, 1536, 1792, 2048, 4096];

type Slice = readonly [qs: number, qe: number, ks: number, ke: number, type: number];

function fromSlices(slices: readonly Slice[], totalQ: number, totalK: number): AttnMaskSpec {
  return AttnMaskSpec.fromRanges({
    qRanges: slices.map(([qs, qe]) => [qs, qe] as const),
    kRanges: slices.map(([, , ks, ke]) => [ks, ke] as const),
    maskTypes: slices.map((slice) => slice[4]),
    totalSeqlenQ: totalQ,
    totalSeqlenK: totalK,
  });
}

/** Block-causal attention inside each document: block i of a document sees the document up to its end. */
function varlenBlockCausal(seqlens: readonly number[], block: number): AttnMaskSpec {
  const slices: Slice[] = [];
  let offset = 0;
  for (const length of seqlens) {
    for (let start = 0; start < length; start += block) {
      const end = Math.min(start + block, length);
      slices.push([offset + start, offset + end, offset, offset + end, 0]);
    }
    offset += length;
  }
  return fromSlices(slices, offset, offset);
}

/** Rows [100, 300), [500, 700) and the tail stay uncovered; one causal slice has more queries than keys. */
function disjointWithGaps(): AttnMaskSpec {
  return fromSlices(
    [
      [0, 100, 0, 300, 0],
      [300, 500, 200, 700, 1],
      [700, 900, 0, 50, 2],
      [900, 1000, 600, 640, 1], // 100 queries, 40 keys: the first 60 rows see nothing (bottom-right)
    ],
    1024,
    1024,
  );
}

/** A hand-made sparse layout of 14 slices over 2048 tokens: every type, shared rows and keys, edge cases. */
function sparse14(): AttnMaskSpec {
  return fromSlices(
    [
      [0, 256, 0, 256, 1],
      [256, 512, 0, 256, 0],
      [256, 512, 256, 512, 1],
      [512, 640, 512, 1024, 2], // INVCAUSAL, more keys than queries
      [640, 768, 512, 1024, 3], // BICAUSAL band of width 385
      [768, 1024, 1024, 1536, 1], // keys after the queries
      [1024, 1100, 0, 2048, 0],
      [1100, 1400, 100, 300, 1], // 300 queries, 200 keys: 100 empty rows
      [1100, 1400, 1400, 1700, 2],
      [1400, 1401, 0, 2048, 1], // one row
      [1401, 1700, 1700, 1701, 0], // one key
      [1700, 1800, 0, 0, 0], // empty key range
      [1700, 2000, 1800, 2048, 3], // BICAUSAL with Lq > Lk: empty
      [2000, 2048, 2000, 2048, 1],
    ],
    2048,
    2048,
  );
}

/** A grid of `blocks × blocks` squares of `size` tokens; about 30% of them present, each a random type. */
function blockGrid(blocks: number, size: number, seed: number): AttnMaskSpec {
  const random = seededRandom(seed);
  const slices: Slice[] = [];
  for (let row = 0; row < blocks; row++) {
    for (let column = 0; column < blocks; column++) {
      if (random() < 0.3) {
        slices.push([
          row * size,
          (row + 1) * size,
          column * size,
          (column + 1) * size,
          Math.floor(random() * 4),
        ]);
      }
    }
  }
  return fromSlices(slices, blocks * size, blocks * size);
}

/** `count - 1` sorted random cut points in (0, n), plus 0 and n (duplicates give empty ranges). */
function randomCuts(random: () => number, n: number, count: number): number[] {
  const cuts = Array.from({ length: count - 1 }, () => 1 + Math.floor(random() * Math.max(1, n - 1)));
  return [0, ...cuts.sort((a, b) => a - b), n];
}

/**
 * About `targetSlices` area-disjoint slices: the queries are cut into segments, and each segment gets
 * disjoint key intervals of random lengths (so query and key lengths differ). `type` −1 = a random type
 * per slice. The key count is random too (0.5–1.5 × totalQ).
 */
function randomDisjoint(targetSlices: number, totalQ: number, type: number, seed: number): AttnMaskSpec {
  const random = seededRandom(seed);
  const totalK = Math.floor(totalQ * (0.5 + random()));
  const perSegment = Math.max(1, Math.round(Math.sqrt(targetSlices)));
  const segments = Math.max(1, Math.round(targetSlices / perSegment));
  const qCuts = randomCuts(random, totalQ, segments);
  const slices: Slice[] = [];
  for (let segment = 0; segment < segments; segment++) {
    const kCuts = randomCuts(random, totalK, 2 * perSegment);
    for (let interval = 0; interval < perSegment; interval++) {
      // Alternate intervals, so keys in between stay unused and lengths vary.
      const [ks, ke] = [kCuts[2 * interval], kCuts[2 * interval + 1]];
      const sliceType = type >= 0 ? type : Math.floor(random() * 4);
      slices.push([qCuts[segment], qCuts[segment + 1], ks, ke, sliceType]);
    }
  }
  return fromSlices(slices, totalQ, totalK);
}

/** Prompt 0 shared by two branches, each with two completions (one path has four nodes). */
function prefixTree(scale: number): AttnMaskSpec {
  const lengths = [512, 128, 256, 96, 300, 200, 64].map((length) => Math.max(1, Math.round(length * scale)));
  return AttnMaskSpec.prefixTree(lengths, [[0, 1, 3], [0, 1, 4, 6], [0, 2, 5]]);
}

// ---------------------------------------------------------------------------------------------------------
// Cases

/** One parity case: a mask, heads, dtype, options and the seed of its inputs. */
export interface ParityCase {
  name: string;
  spec: () => AttnMaskSpec;
  heads: Heads;
  dtype: LowDType;
  /** Forward only: compare this many random rows (plus slice-boundary rows) instead of all of them. */
  sampleRows?: number;
  softcap?: number;
  softmaxScale?: number;
  seed: number;
}

const H8: Heads = [8, 8, 128];
const H32: Heads = [32, 4, 128];
const H1: Heads = [1, 1, 64];
const H4: Heads = [4, 2, 64];
const TYPE_NAMES = ["full", "causal", "inv_causal", "bi_causal", "mixed"];

export const forwardCases: ParityCase[] = [
  {
    name: "full 4k",
    spec: () => AttnMaskSpec.full(4096),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 1,
  },
  {
    name: "full 4k",
    spec: () => AttnMaskSpec.full(4096),
    heads: H8,
    dtype: "float16",
    sampleRows: 48,
    seed: 2,
  },
  {
    name: "full 4k",
    spec: () => AttnMaskSpec.full(4096),
    heads: H1,
    dtype: "bfloat16",
    sampleRows: 128,
    seed: 3,
  },
  {
    name: "causal 4k",
    spec: () => AttnMaskSpec.causal(4096),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 4,
  },
  {
    name: "causal 4k",
    spec: () => AttnMaskSpec.causal(4096),
    heads: H32,
    dtype: "bfloat16",
    sampleRows: 24,
    seed: 5,
  },
  {
    name: "causal 4k",
    spec: () => AttnMaskSpec.causal(4096),
    heads: H4,
    dtype: "float16",
    sampleRows: 96,
    seed: 6,
  },
  {
    name: "varlen full cu_seqlens A (1k)",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_A, { causal: false }),
    heads: H4,
    dtype: "bfloat16",
    seed: 7,
  },
  {
    name: "varlen full cu_seqlens A (1k)",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_A, { causal: false }),
    heads: H8,
    dtype: "float16",
    sampleRows: 128,
    seed: 8,
  },
  {
    name: "varlen full cu_seqlens B (4k)",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_B, { causal: false }),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 9,
  },
  {
    name: "varlen causal cu_seqlens B (4k)",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_B),
    heads: H4,
    dtype: "bfloat16",
    sampleRows: 128,
    seed: 10,
  },
  {
    name: "block-causal 2k (block 256)",
    spec: () => AttnMaskSpec.blockCausal(256, 2048),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 11,
  },
  {
    name: "varlen block-causal 2k (block 128)",
    spec: () => varlenBlockCausal([700, 500, 848], 128),
    heads: H4,
    dtype: "bfloat16",
    sampleRows: 128,
    seed: 12,
  },
  { name: "disjoint ranges, uncovered rows", spec: disjointWithGaps, heads: H4, dtype: "bfloat16", seed: 13 },
  { name: "sparse 14-slice layout", spec: sparse14, heads: H8, dtype: "bfloat16", sampleRows: 96, seed: 14 },
  { name: "sparse 14-slice layout", spec: sparse14, heads: H1, dtype: "float16", seed: 15 },
  {
    name: "50×50 grid of 50-token blocks, mixed types",
    spec: () => blockGrid(50, 50, 16),
    heads: H4,
    dtype: "bfloat16",
    sampleRows: 128,
    seed: 16,
  },
  {
    name: "50×50 grid of 50-token blocks, mixed types",
    spec: () => blockGrid(50, 50, 17),
    heads: H8,
    dtype: "float16",
    sampleRows: 48,
    seed: 17,
  },
  ...[10, 100, 1000].flatMap((count) =>
    [0, 1, 2, 3, -1].map((type, index): ParityCase => ({
      name: `random disjoint ${count} slices, ${TYPE_NAMES[type < 0 ? 4 : type]}`,
      spec: () => randomDisjoint(count, 2048, type, 100 + count + index),
      heads: H4,
      dtype: index % 2 === 0 ? "bfloat16" : "float16",
      sampleRows: 96,
      seed: 100 + count + index,
    }))
  ),
  {
    name: "random disjoint 1000 slices, mixed",
    spec: () => randomDisjoint(1000, 2048, -1, 7),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 18,
  },
  {
    name: "sliding window 4k (left 256, right 0)",
    spec: () => AttnMaskSpec.slidingWindow(4096, { left: 256, right: 0 }),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 19,
  },
  {
    name: "sliding window varlen [700, 1000, 348] (left 64, right 32)",
    spec: () => AttnMaskSpec.slidingWindow([700, 1000, 348], { left: 64, right: 32 }),
    heads: H4,
    dtype: "float16",
    sampleRows: 128,
    seed: 20,
  },
  {
    name: "sliding window 2k (left −1, right 128)",
    spec: () => AttnMaskSpec.slidingWindow(2048, { left: -1, right: 128 }),
    heads: H4,
    dtype: "bfloat16",
    sampleRows: 96,
    seed: 21,
  },
  { name: "prefix tree", spec: () => prefixTree(1), heads: H8, dtype: "bfloat16", sampleRows: 96, seed: 22 },
  { name: "prefix tree", spec: () => prefixTree(1), heads: H4, dtype: "float16", seed: 23 },
  {
    name: "softcap 5, causal 2k",
    spec: () => AttnMaskSpec.causal(2048),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    softcap: 5,
    seed: 24,
  },
  {
    name: "softcap 20, varlen causal A",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_A),
    heads: H4,
    dtype: "float16",
    softcap: 20,
    seed: 25,
  },
  {
    name: "softmaxScale 0.3, full 2k",
    spec: () => AttnMaskSpec.full(2048),
    heads: H4,
    dtype: "bfloat16",
    sampleRows: 96,
    softmaxScale: 0.3,
    seed: 26,
  },
];

export const backwardCases: ParityCase[] = [
  { name: "full 512", spec: () => AttnMaskSpec.full(512), heads: H8, dtype: "bfloat16", seed: 41 },
  { name: "causal 1k", spec: () => AttnMaskSpec.causal(1024), heads: H4, dtype: "bfloat16", seed: 42 },
  { name: "causal 1k", spec: () => AttnMaskSpec.causal(1024), heads: H1, dtype: "float16", seed: 43 },
  { name: "causal 256", spec: () => AttnMaskSpec.causal(256), heads: H32, dtype: "bfloat16", seed: 44 },
  {
    name: "varlen causal cu_seqlens A",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_A),
    heads: H4,
    dtype: "bfloat16",
    seed: 45,
  },
  {
    name: "varlen full cu_seqlens A",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_A, { causal: false }),
    heads: H1,
    dtype: "float16",
    seed: 46,
  },
  {
    name: "varlen block-causal 1k (block 64)",
    spec: () => varlenBlockCausal([300, 500, 224], 64),
    heads: H4,
    dtype: "bfloat16",
    seed: 47,
  },
  { name: "disjoint ranges, uncovered rows", spec: disjointWithGaps, heads: H4, dtype: "bfloat16", seed: 48 },
  { name: "sparse 14-slice layout", spec: sparse14, heads: H1, dtype: "bfloat16", seed: 49 },
  {
    name: "20×20 grid of 50-token blocks, mixed types",
    spec: () => blockGrid(20, 50, 50),
    heads: H4,
    dtype: "bfloat16",
    seed: 50,
  },
  ...[0, 1, 2, 3, -1].map((type, index): ParityCase => ({
    name: `random disjoint 100 slices, ${TYPE_NAMES[type < 0 ? 4 : type]}`,
    spec: () => randomDisjoint(100, 1024, type, 200 + index),
    heads: index % 2 === 0 ? H4 : H1,
    dtype: index % 2 === 0 ? "bfloat16" : "float16",
    seed: 200 + index,
  })),
  {
    name: "random disjoint 10 slices, bi_causal",
    spec: () => randomDisjoint(10, 1024, 3, 210),
    heads: H4,
    dtype: "float16",
    seed: 210,
  },
  {
    name: "sliding window 1k (left 64, right 16): BICAUSAL band",
    spec: () => AttnMaskSpec.slidingWindow(1024, { left: 64, right: 16 }),
    heads: H4,
    dtype: "bfloat16",
    seed: 51,
  },
  { name: "prefix tree", spec: () => prefixTree(0.5), heads: H4, dtype: "bfloat16", seed: 52 },
  {
    name: "softcap 5, causal 512",
    spec: () => AttnMaskSpec.causal(512),
    heads: H8,
    dtype: "bfloat16",
    softcap: 5,
    seed: 53,
  },
];

export function caseLabel(parity: ParityCase): string {
  const [hq, hkv, d] = parity.heads;
  const extras = [
    parity.softcap ? `softcap ${parity.softcap}` : "",
    parity.sampleRows ? `${parity.sampleRows} sampled rows` : "all rows",
  ].filter(Boolean).join(", ");
  return `${parity.name} (Hq ${hq}, Hkv ${hkv}, D ${d}, ${parity.dtype}; ${extras})`;
}

export const deterministicCases: ParityCase[] = [
  {
    name: "varlen full cu_seqlens B (4k)",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_B, { causal: false }),
    heads: H8,
    dtype: "bfloat16",
    seed: 61,
  },
  { name: "prefix tree", spec: () => prefixTree(1), heads: H8, dtype: "bfloat16", seed: 62 },
  {
    name: "50×50 grid of 50-token blocks, mixed types",
    spec: () => blockGrid(50, 50, 63),
    heads: H4,
    dtype: "float16",
    seed: 63,
  },
];
