/**
 * Inputs of the benchmark: q, k, v and dout as bf16 pools filled by counter-based generators, so that a
 * tensor of n elements is the prefix of any longer one and `scripts/bench/peers.py` rebuilds the same
 * values on the GPU. Two distributions: `randn` (standard normal, the default, what attention sees in
 * practice) and `hashed` (the bounded-magnitude pools of the first benchmark runs, kept for before/after
 * comparisons). Also the scans and row samples of the outputs.
 * @module
 */

import { MagiAttnInputError } from "../../lib/core/errors.ts";
import { float32ToBf16Bits } from "../../lib/core/tensor.ts";
import type { BenchCase } from "./cases.ts";

/** The input distributions of `--inputs`. */
export const INPUT_DISTRIBUTIONS: readonly InputDistribution[] = Object.freeze(["randn", "hashed"]);

/** `randn`: standard normal values; `hashed`: the bounded pools of {@linkcode hashBf16}. */
export type InputDistribution = "randn" | "hashed";

/** Checks a `--inputs` value. */
export function parseInputDistribution(value: string): InputDistribution {
  if (!(INPUT_DISTRIBUTIONS as readonly string[]).includes(value)) {
    throw new MagiAttnInputError(
      "--inputs",
      `is "${value}", not an input distribution`,
      `use ${INPUT_DISTRIBUTIONS.join(" or ")}`,
    );
  }
  return value as InputDistribution;
}

/** Which benchmark tensor an input pool fills; each has its own seed and magnitude range. */
export type InputRole = "q" | "k" | "v" | "dout";

/**
 * Seeds and bf16 exponent ranges of the benchmark inputs. Values are ±m·2^(e−127) with a random 7-bit
 * mantissa m and e in `[expLo, expHi]`: never zero (zeros hide unwritten outputs and can run faster),
 * q and k in ±[1/8, 2) so the softmax is neither flat nor one-hot, v and dout in ±[1/32, 1).
 */
export const INPUT_RECIPES: Readonly<Record<InputRole, { seed: number; expLo: number; expHi: number }>> =
  Object
    .freeze({
      q: { seed: 0x51, expLo: 124, expHi: 127 },
      k: { seed: 0x52, expLo: 124, expHi: 127 },
      v: { seed: 0x53, expLo: 122, expHi: 126 },
      dout: { seed: 0x54, expLo: 122, expHi: 126 },
    });

/**
 * bf16 bit patterns of elements `0 … count−1` of a counter-based pseudo-random stream: element i depends
 * only on (i, seed), so a tensor of n elements is the prefix of any longer one, whatever its shape, and
 * `scripts/bench/peers.py` rebuilds the same values on the GPU (`hash_bf16`) to compare outputs with ours.
 * Element i: `h = fmix32((i + 1)·0x9E3779B1 mod 2^32 XOR seed)` (MurmurHash3's finalizer); sign = bit 31,
 * mantissa = bits 0–6, exponent = expLo + ((h >>> 7) & 0xFFFF) mod (expHi − expLo + 1).
 */
export function hashBf16(count: number, seed: number, expLo: number, expHi: number): Uint16Array {
  const bits = new Uint16Array(count);
  const span = expHi - expLo + 1;
  for (let index = 0; index < count; index++) {
    let hash = (Math.imul(index + 1, 0x9e3779b1) ^ seed) >>> 0;
    hash = (hash ^ (hash >>> 16)) >>> 0;
    hash = Math.imul(hash, 0x85ebca6b) >>> 0;
    hash = (hash ^ (hash >>> 13)) >>> 0;
    hash = Math.imul(hash, 0xc2b2ae35) >>> 0;
    hash = (hash ^ (hash >>> 16)) >>> 0;
    const exponent = expLo + (((hash >>> 7) & 0xffff) % span);
    bits[index] = ((hash >>> 31) << 15) | (exponent << 7) | (hash & 0x7f);
  }
  return bits;
}

/** MurmurHash3's 32-bit finalizer of `(counter · 0x9E3779B1 mod 2^32) XOR seed`. */
function mixCounter(counter: number, seed: number): number {
  let hash = (Math.imul(counter, 0x9e3779b1) ^ seed) >>> 0;
  hash = (hash ^ (hash >>> 16)) >>> 0;
  hash = Math.imul(hash, 0x85ebca6b) >>> 0;
  hash = (hash ^ (hash >>> 13)) >>> 0;
  hash = Math.imul(hash, 0xc2b2ae35) >>> 0;
  return (hash ^ (hash >>> 16)) >>> 0;
}

/**
 * bf16 bit patterns of standard normal values, elements `0 … count−1` of a counter-based stream (element
 * i depends only on (i, seed), so shorter tensors are prefixes of longer ones). Pair m = ⌊i/2⌋ draws
 * `u1 = (h(2m+1) + 1) / 2^32` in (0, 1] and `u2 = h(2m+2) / 2^32` in [0, 1), h = {@linkcode mixCounter}
 * with `seed`; Box–Muller gives `r = sqrt(−2 ln u1)`, `θ = 2π u2`; even i takes `r cos θ`, odd i
 * `r sin θ`; the float64 value is rounded to float32, then to bf16 (nearest even). `peers.py`'s
 * `randn_bf16` computes the same in torch float64.
 */
export function randnBf16(count: number, seed: number): Uint16Array {
  const bits = new Uint16Array(count);
  for (let pair = 0; 2 * pair < count; pair++) {
    const u1 = (mixCounter(2 * pair + 1, seed) + 1) / 4294967296;
    const u2 = mixCounter(2 * pair + 2, seed) / 4294967296;
    const radius = Math.sqrt(-2 * Math.log(u1)), angle = 2 * Math.PI * u2;
    bits[2 * pair] = float32ToBf16Bits(Math.fround(radius * Math.cos(angle)));
    if (2 * pair + 1 < count) bits[2 * pair + 1] = float32ToBf16Bits(Math.fround(radius * Math.sin(angle)));
  }
  return bits;
}

/** bf16 bit patterns of `count` elements of `role`'s input stream in the given distribution. */
export function inputBits(role: InputRole, count: number, distribution: InputDistribution): Uint16Array {
  const recipe = INPUT_RECIPES[role];
  return distribution === "randn"
    ? randnBf16(count, recipe.seed)
    : hashBf16(count, recipe.seed, recipe.expLo, recipe.expHi);
}

/** bf16 bit patterns of each input role, long enough for the largest selected case (prefix property). */
export type InputPools = Record<InputRole, Uint16Array>;

/** Builds the input pools for `cases`: each role's stream over the largest element count needed. */
export function makeInputPools(
  cases: readonly Pick<BenchCase, "seqlen" | "headsQ" | "headsKv" | "headDim">[],
  distribution: InputDistribution = "randn",
): InputPools {
  const count = Math.max(
    0,
    ...cases.map((item) => item.seqlen * Math.max(item.headsQ, item.headsKv) * item.headDim),
  );
  const pool = (role: InputRole): Uint16Array => inputBits(role, count, distribution);
  return { q: pool("q"), k: pool("k"), v: pool("v"), dout: pool("dout") };
}

/** Rows `rows` of a `[tokens, heads, dim]` bf16 tensor, flattened `[rows, heads, dim]`. */
export function extractRows(
  bits: Uint16Array,
  heads: number,
  dim: number,
  rows: readonly number[],
): number[] {
  const rowSize = heads * dim;
  const out: number[] = [];
  for (const row of rows) {
    if ((row + 1) * rowSize > bits.length) {
      throw new Error(`row ${row} is outside a tensor of ${bits.length} elements`);
    }
    for (let index = row * rowSize; index < (row + 1) * rowSize; index++) out.push(bits[index]);
  }
  return out;
}

/** Counts of non-finite and zero elements of a bf16 tensor (bit patterns). */
export function scanBf16(bits: Uint16Array): { nonFinite: number; zeros: number; count: number } {
  let nonFinite = 0, zeros = 0;
  for (let index = 0; index < bits.length; index++) {
    const value = bits[index];
    if ((value & 0x7f80) === 0x7f80) nonFinite++;
    else if ((value & 0x7fff) === 0) zeros++;
  }
  return { nonFinite, zeros, count: bits.length };
}
