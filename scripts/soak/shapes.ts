/**
 * The soak's random problems: call shapes (mask builder, tokens, heads, head dim, dtype, softcap) drawn
 * from per-mode size limits, and a pool of random values that every call's tensors view.
 * @module
 */

import { AttnMaskSpec } from "../../lib/masks/spec.ts";
import { type DType, type HostTensor, numel, randomTensor, tensor } from "../../lib/core/tensor.ts";

/** The shape of one soak call. */
export interface CallShape {
  builder: string;
  spec: AttnMaskSpec;
  tokens: number;
  dtype: DType;
  headsQ: number;
  headsKV: number;
  headDim: number;
  softcap: number;
}

/** Size limits of a mode. */
export interface Sizes {
  minTokens: number;
  maxTokens: number;
  headDims: readonly number[];
  dtypes: readonly DType[];
  maxHeadsQ: number;
}

export const GPU_SIZES: Sizes = {
  minTokens: 64,
  maxTokens: 4096,
  headDims: [64, 128],
  dtypes: ["bfloat16", "float16"],
  maxHeadsQ: 8,
};
export const SANITIZER_SIZES: Sizes = { ...GPU_SIZES, minTokens: 16, maxTokens: 256, maxHeadsQ: 4 };
export const DRY_RUN_SIZES: Sizes = {
  minTokens: 8,
  maxTokens: 48,
  headDims: [16, 32],
  dtypes: ["bfloat16", "float16"],
  maxHeadsQ: 4,
};

export type Random = () => number;

export function randomInt(random: Random, low: number, high: number): number {
  return low + Math.floor(random() * (high - low + 1));
}

/** Splits `total` into 1–8 positive parts. */
export function randomParts(random: Random, total: number, maxParts = 8): number[] {
  const count = Math.min(total, randomInt(random, 1, maxParts));
  const cuts = new Set<number>([0, total]);
  while (cuts.size < count + 1) cuts.add(randomInt(random, 1, total - 1));
  const sorted = [...cuts].sort((a, b) => a - b);
  return sorted.slice(1).map((end, index) => end - sorted[index]);
}

/** A random mask over `n` tokens from one of the builders. */
export function randomSpec(random: Random, n: number): { builder: string; spec: AttnMaskSpec } {
  const builders = [
    "causal",
    "full",
    "varlen",
    "slidingWindow",
    "prefixTree",
    "prefixLM",
    "blockCausal",
    "fromRanges",
  ];
  const builder = builders[Math.floor(random() * builders.length)];
  switch (builder) {
    case "causal":
      return { builder, spec: AttnMaskSpec.causal(n) };
    case "full":
      return { builder, spec: AttnMaskSpec.full(n) };
    case "varlen":
      return { builder, spec: AttnMaskSpec.varlen(randomParts(random, n), { causal: random() < 0.8 }) };
    case "slidingWindow": {
      const left = randomInt(random, 0, Math.max(1, n >> 1));
      const right = random() < 0.6 ? 0 : random() < 0.5 ? -1 : randomInt(random, 1, 64);
      const documents = random() < 0.5 ? n : randomParts(random, n, 4);
      return { builder, spec: AttnMaskSpec.slidingWindow(documents, { left, right }) };
    }
    case "prefixTree": {
      // A prompt and up to 6 completions: node 0 is the root of every path.
      const parts = randomParts(random, n, 7);
      const paths = parts.length === 1 ? [[0]] : parts.slice(1).map((_, index) => [0, index + 1]);
      return { builder, spec: AttnMaskSpec.prefixTree(parts, paths) };
    }
    case "prefixLM":
      return { builder, spec: AttnMaskSpec.prefixLM(randomInt(random, 0, n), n) };
    case "blockCausal":
      return {
        builder,
        spec: AttnMaskSpec.blockCausal(Math.min(Math.max(n, 1), randomInt(random, 16, 512)), n),
      };
    default: {
      // Tiles of a random grid, each with a random type: area-disjoint by construction.
      const rows = randomParts(random, n, 4), columns = randomParts(random, n, 4);
      const qRanges: [number, number][] = [], kRanges: [number, number][] = [], maskTypes: number[] = [];
      let qs = 0;
      for (const rowLength of rows) {
        let ks = 0;
        for (const columnLength of columns) {
          if (random() < 0.7) {
            qRanges.push([qs, qs + rowLength]);
            kRanges.push([ks, ks + columnLength]);
            maskTypes.push(randomInt(random, 0, 3));
          }
          ks += columnLength;
        }
        qs += rowLength;
      }
      return {
        builder,
        spec: AttnMaskSpec.fromRanges({ qRanges, kRanges, maskTypes, totalSeqlenQ: n, totalSeqlenK: n }),
      };
    }
  }
}

export function randomCallShape(random: Random, sizes: Sizes): CallShape {
  // Log-uniform token counts: small and large problems equally represented.
  const logMin = Math.log(sizes.minTokens), logMax = Math.log(sizes.maxTokens);
  const tokens = Math.round(Math.exp(logMin + random() * (logMax - logMin)));
  const { builder, spec } = randomSpec(random, tokens);
  const headCounts = [1, 2, 4, 8].filter((heads) => heads <= sizes.maxHeadsQ);
  const headsQ = headCounts[Math.floor(random() * headCounts.length)];
  const divisors = [1, 2, 4, 8].filter((heads) => heads <= headsQ && headsQ % heads === 0);
  return {
    builder,
    spec,
    tokens,
    dtype: sizes.dtypes[Math.floor(random() * sizes.dtypes.length)],
    headsQ,
    headsKV: divisors[Math.floor(random() * divisors.length)],
    headDim: sizes.headDims[Math.floor(random() * sizes.headDims.length)],
    softcap: random() < 0.2 ? 30 : 0,
  };
}

/** Random values reused for every call: a call's tensors are views at random offsets (no per-call RNG). */
export class InputPool {
  readonly #pools = new Map<DType, HostTensor>();
  constructor(readonly elements: number, seed: number, dtypes: readonly DType[]) {
    for (const dtype of dtypes) {
      this.#pools.set(dtype, randomTensor([elements], { seed: seed + dtypes.indexOf(dtype), dtype }));
    }
  }

  /** A host tensor of `shape` viewing the pool at a random offset. */
  view(shape: readonly number[], dtype: DType, random: Random): HostTensor {
    const pool = this.#pools.get(dtype)!;
    const count = numel(shape);
    const offset = Math.floor(random() * Math.max(1, this.elements - count));
    return tensor(pool.data.subarray(offset, offset + count), shape, dtype);
  }
}
