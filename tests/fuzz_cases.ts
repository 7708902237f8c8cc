/**
 * Seeded random cases for the fuzz tests and `scripts/reliability.ts`: random specs from every builder
 * (degenerate lengths 0 and 1 included) with a dense-mask oracle written here from each builder's
 * definition, and random small attention problems for the CPU reference against the float64 dense oracle.
 *
 * Every check throws an AssertionError whose message starts with `seed=<n>`: rerun one case with
 * `checkSpecCase(randomSpecCase(n))` or `checkReferenceCase(n)`.
 * @module
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { magiAttentionForward } from "../lib/attention/magi.ts";
import { sdpaAttentionForward } from "../lib/attention/registry.ts";
import {
  AttnSpecNotConsumedError,
  closeAttnSpecStep,
  resetAttnSpecGuard,
  setAttnSpecOnAttention,
} from "../lib/attention/stamping.ts";
import { compileFlexKey, denseMask, isFlexKey, toFlexKey } from "../lib/masks/flex_key.ts";
import { referenceBackward, referenceForward } from "../lib/backends/reference.ts";
import { AttnMaskSpec } from "../lib/masks/spec.ts";
import { type DType, type HostTensor, randomTensor, seededRandom, toFloat32 } from "../lib/core/tensor.ts";
import type { FlexKey, MaskType } from "../lib/core/types.ts";
import { documentIndexOf } from "./support/fixtures.ts";
import {
  assertCanonicalKey,
  denseFromPredicate,
  firstDifference,
  sliceCoversCell,
} from "./support/mask_check.ts";
import { denseAttentionBackwardOracle, denseAttentionOracle, relativeError } from "./support/oracle.ts";

/** Seed base used when `MAGI_FUZZ_SEED` is not set (fixed, so CI runs are reproducible). */
export const DEFAULT_FUZZ_SEED = 20250611;

/** The fuzz seed base: `MAGI_FUZZ_SEED` when set (and readable), else {@linkcode DEFAULT_FUZZ_SEED}. */
export function fuzzSeedBase(): { seed: number; fromEnv: boolean } {
  let text: string | undefined;
  try {
    text = Deno.env.get("MAGI_FUZZ_SEED");
  } catch {
    text = undefined; // no --allow-env: the fixed base
  }
  if (text === undefined || text.trim() === "") return { seed: DEFAULT_FUZZ_SEED, fromEnv: false };
  const seed = Number(text);
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`MAGI_FUZZ_SEED is ${JSON.stringify(text)}: give a non-negative integer`);
  }
  return { seed, fromEnv: true };
}

/** Case seed `index` of a run with base `base` (32-bit, distinct for distinct indices). */
export function caseSeed(base: number, index: number): number {
  return (base + index) >>> 0;
}

/** The builders the spec fuzzer draws from. */
export const BUILDERS = [
  "causal",
  "full",
  "varlen",
  "fromCuSeqlens",
  "slidingWindow",
  "prefixTree",
  "prefixLM",
  "blockCausal",
  "fromRanges",
] as const;

/** One of {@linkcode BUILDERS}. */
export type BuilderName = (typeof BUILDERS)[number];

/** A random spec and its oracle. */
export interface SpecCase {
  /** The case seed (rebuilds the case with {@linkcode randomSpecCase}). */
  readonly seed: number;
  /** Which builder made it. */
  readonly builder: BuilderName;
  /** The builder call, for messages. */
  readonly description: string;
  /** Builds the spec (a fresh object each call). */
  readonly build: () => AttnMaskSpec;
  /** Query tokens. */
  readonly totalQ: number;
  /** Key tokens. */
  readonly totalK: number;
  /** The mask from the builder's definition (ignored when `overlap`). */
  readonly visible: (i: number, j: number) => boolean;
  /** fromRanges only: some cell is covered by two slices, so compiling must fail. */
  readonly overlap: boolean;
  /** fromRanges only: the raw slices `[qs, qe, ks, ke, type]` in input order. */
  readonly slices?: readonly (readonly [number, number, number, number, number])[];
}

type Random = () => number;

function randomInt(random: Random, low: number, high: number): number {
  return low + Math.floor(random() * (high - low + 1));
}

/** A length with the degenerate values 0 and 1 drawn often. */
function randomLength(random: Random, max: number): number {
  const roll = random();
  if (roll < 0.15) return 0;
  if (roll < 0.3) return 1;
  return randomInt(random, 2, Math.max(2, max));
}

function randomLengths(random: Random, maxCount: number, maxLength: number): number[] {
  return Array.from({ length: randomInt(random, 0, maxCount) }, () => randomLength(random, maxLength));
}

const TYPE_NAMES: readonly MaskType[] = ["full", "causal", "inv_causal", "bi_causal"];

/** A random spec case from seed `seed`: one of the builders with random, often degenerate, arguments. */
export function randomSpecCase(seed: number): SpecCase {
  const random = seededRandom(seed);
  const builder = BUILDERS[Math.floor(random() * BUILDERS.length)];
  const square = (
    description: string,
    build: () => AttnMaskSpec,
    total: number,
    visible: (i: number, j: number) => boolean,
  ): SpecCase => ({
    seed,
    builder,
    description,
    build,
    totalQ: total,
    totalK: total,
    visible,
    overlap: false,
  });
  switch (builder) {
    case "causal": {
      const n = randomLength(random, 24);
      return square(`causal(${n})`, () => AttnMaskSpec.causal(n), n, (i, j) => j <= i);
    }
    case "full": {
      const n = randomLength(random, 24);
      return square(`full(${n})`, () => AttnMaskSpec.full(n), n, () => true);
    }
    case "varlen":
    case "fromCuSeqlens": {
      const lengths = randomLengths(random, 6, 8);
      const roll = random();
      const causal = roll < 0.33 ? undefined : roll < 0.66;
      const options = causal === undefined ? undefined : { causal };
      const documents = documentIndexOf(lengths);
      const cu = [0];
      for (const length of lengths) cu.push(cu[cu.length - 1] + length);
      const visible = (i: number, j: number) => documents[i] === documents[j] && (causal === false || j <= i);
      const optionText = options ? `, ${JSON.stringify(options)}` : "";
      return builder === "varlen"
        ? square(
          `varlen(${JSON.stringify(lengths)}${optionText})`,
          () => AttnMaskSpec.varlen(lengths, options),
          documents.length,
          visible,
        )
        : square(
          `fromCuSeqlens(${JSON.stringify(cu)}${optionText})`,
          () => AttnMaskSpec.fromCuSeqlens(cu, options),
          documents.length,
          visible,
        );
    }
    case "slidingWindow": {
      const bound = (): number => (random() < 0.25 ? -1 : randomInt(random, 0, 10));
      const window = { left: bound(), right: bound() };
      const single = random() < 0.5;
      const lengths = single ? [randomLength(random, 24)] : randomLengths(random, 5, 10);
      const documents = documentIndexOf(lengths);
      const argument = single ? lengths[0] : lengths;
      return square(
        `slidingWindow(${JSON.stringify(argument)}, ${JSON.stringify(window)})`,
        () => AttnMaskSpec.slidingWindow(argument, window),
        documents.length,
        (i, j) =>
          documents[i] === documents[j] && (window.left < 0 || j >= i - window.left) &&
          (window.right < 0 || j <= i + window.right),
      );
    }
    case "prefixTree": {
      const nodeCount = randomInt(random, 1, 6);
      const lengths = Array.from({ length: nodeCount }, () => randomLength(random, 5));
      // Parents along a random creation order, so node indices need not follow the tree.
      const order = Array.from({ length: nodeCount }, (_, index) => index);
      for (let index = nodeCount - 1; index > 0; index--) {
        const swap = Math.floor(random() * (index + 1));
        [order[index], order[swap]] = [order[swap], order[index]];
      }
      const parent = new Array<number>(nodeCount).fill(-1);
      // Sometimes a chain (each node the child of the one created before it), which prefixTree merges.
      const chainy = random() < 0.25;
      for (let created = 1; created < nodeCount; created++) {
        parent[order[created]] = chainy && random() < 0.8
          ? order[created - 1]
          : random() < 0.2
          ? -1
          : order[Math.floor(random() * created)];
      }
      const pathTo = (node: number): number[] => {
        const path: number[] = [];
        for (let at = node; at >= 0; at = parent[at]) path.unshift(at);
        return path;
      };
      const isLeaf = (node: number) => !parent.includes(node);
      const paths = order.filter(isLeaf).map(pathTo);
      if (random() < 0.3) paths.push(pathTo(order[Math.floor(random() * nodeCount)])); // a prefix or a repeat
      // A node without tokens on no path (an empty prompt folded away) is allowed and changes nothing:
      // insert one at a random index, renumbering the others.
      if (random() < 0.2) {
        const at = Math.floor(random() * (nodeCount + 1));
        const renumber = (node: number): number => (node >= at ? node + 1 : node);
        lengths.splice(at, 0, 0);
        const shifted = parent.map((node) => (node < 0 ? node : renumber(node)));
        shifted.splice(at, 0, -1);
        parent.splice(0, parent.length, ...shifted);
        for (const path of paths) path.forEach((node, index) => (path[index] = renumber(node)));
      }
      const offsets: number[] = [];
      const nodeOfToken: number[] = [];
      lengths.forEach((length, node) => {
        offsets.push(nodeOfToken.length);
        for (let token = 0; token < length; token++) nodeOfToken.push(node);
      });
      const isAncestor = (ancestor: number, node: number): boolean => {
        for (let at = parent[node]; at >= 0; at = parent[at]) if (at === ancestor) return true;
        return false;
      };
      return square(
        `prefixTree(${JSON.stringify(lengths)}, ${JSON.stringify(paths)})`,
        () => AttnMaskSpec.prefixTree(lengths, paths),
        nodeOfToken.length,
        (i, j) => nodeOfToken[i] === nodeOfToken[j] ? j <= i : isAncestor(nodeOfToken[j], nodeOfToken[i]),
      );
    }
    case "prefixLM": {
      const n = randomLength(random, 24);
      const prefix = randomInt(random, 0, n);
      return square(
        `prefixLM(${prefix}, ${n})`,
        () => AttnMaskSpec.prefixLM(prefix, n),
        n,
        (i, j) => (i < prefix && j < prefix) || j <= i,
      );
    }
    case "blockCausal": {
      const n = randomLength(random, 24);
      const block = randomInt(random, 1, Math.max(1, n)); // a block longer than n is refused
      return square(
        `blockCausal(${block}, ${n})`,
        () => AttnMaskSpec.blockCausal(block, n),
        n,
        (i, j) => j < Math.min(n, (Math.floor(i / block) + 1) * block),
      );
    }
    case "fromRanges":
      return randomRangesCase(seed, random);
  }
}

/** fromRanges with random slices: tiled (disjoint by construction) or free (often overlapping). */
function randomRangesCase(seed: number, random: Random): SpecCase {
  const totalQ = randomLength(random, 16), totalK = randomLength(random, 16);
  const slices: [number, number, number, number, number][] = [];
  const range = (total: number): [number, number] => {
    const start = randomInt(random, 0, total);
    return [start, Math.min(total, start + randomLength(random, total))];
  };
  if (random() < 0.5) {
    // Tiles of a random grid: area-disjoint whatever their types.
    const cuts = (total: number): number[] => {
      const set = new Set([0, total]);
      for (let cut = randomInt(random, 0, 3); cut > 0; cut--) set.add(randomInt(random, 0, total));
      return [...set].sort((a, b) => a - b);
    };
    const qCuts = cuts(totalQ), kCuts = cuts(totalK);
    for (let a = 0; a + 1 < qCuts.length; a++) {
      for (let b = 0; b + 1 < kCuts.length; b++) {
        if (random() < 0.4) continue;
        slices.push([qCuts[a], qCuts[a + 1], kCuts[b], kCuts[b + 1], randomInt(random, 0, 3)]);
      }
    }
    if (random() < 0.3) slices.push([...range(totalQ), ...range(totalK), randomInt(random, 0, 3)]); // maybe overlapping
  } else {
    for (let count = randomInt(random, 0, 4); count > 0; count--) {
      slices.push([...range(totalQ), ...range(totalK), randomInt(random, 0, 3)]);
    }
  }
  for (let index = slices.length - 1; index > 0; index--) {
    const swap = Math.floor(random() * (index + 1));
    [slices[index], slices[swap]] = [slices[swap], slices[index]];
  }
  const coverage = new Uint8Array(totalQ * totalK);
  for (const [qs, qe, ks, ke, type] of slices) {
    for (let i = qs; i < qe; i++) {
      for (let j = ks; j < ke; j++) {
        if (sliceCoversCell(i, j, qs, qe, ks, ke, type)) coverage[i * totalK + j]++;
      }
    }
  }
  const overlap = coverage.some((count) => count > 1);
  const namesOrNumbers = random() < 0.5;
  const explicitTotals = random() < 0.7;
  const maxEnd = (part: 0 | 2) => slices.reduce((max, slice) => Math.max(max, slice[part + 1]), 0);
  const effectiveQ = explicitTotals ? totalQ : maxEnd(0), effectiveK = explicitTotals ? totalK : maxEnd(2);
  const input = {
    qRanges: slices.map(([qs, qe]) => [qs, qe] as const),
    kRanges: slices.map(([, , ks, ke]) => [ks, ke] as const),
    maskTypes: slices.map(([, , , , type]) => (namesOrNumbers ? TYPE_NAMES[type] : type)),
    ...(explicitTotals ? { totalSeqlenQ: totalQ, totalSeqlenK: totalK } : {}),
  };
  return {
    seed,
    builder: "fromRanges",
    description: `fromRanges(${JSON.stringify(input)})`,
    build: () => AttnMaskSpec.fromRanges(input),
    totalQ: effectiveQ,
    totalK: effectiveK,
    visible: (i, j) => coverage[i * totalK + j] > 0,
    overlap,
    slices,
  };
}

function oracleMask(specCase: SpecCase): Uint8Array {
  return denseFromPredicate(specCase.visible, specCase.totalQ, specCase.totalK);
}

/**
 * Compiles the case's spec and checks the key against the oracle: totals, denseMask, the key's own cells
 * by the cell rule (each covered once), area, no empty slice, canonical order, max lengths, frozen and
 * cached; for fromRanges, `toFlexKey` of the same plain slices gives the same key. An overlapping case
 * must throw MagiAttnInputError naming two input slices that really share the named cell.
 */
export function checkSpecCase(specCase: SpecCase): void {
  const where = `seed=${specCase.seed} ${specCase.description}`;
  const spec = specCase.build();
  if (specCase.overlap) {
    assert.throws(() => compileFlexKey(spec), (error: unknown) => {
      assert.ok(error instanceof MagiAttnInputError, `${where}: expected MagiAttnInputError, got ${error}`);
      const fieldMatch = /^slices (\d+) and (\d+)$/.exec(error.field);
      assert.ok(fieldMatch, `${where}: overlap field ${error.field}`);
      const cellMatch = /cell \(q=(\d+), k=(\d+)\)/.exec(error.message);
      assert.ok(cellMatch, `${where}: the message names the shared cell: ${error.message}`);
      const [i, j] = [Number(cellMatch[1]), Number(cellMatch[2])];
      for (const index of [Number(fieldMatch[1]), Number(fieldMatch[2])]) {
        const [qs, qe, ks, ke, type] = specCase.slices![index];
        assert.ok(
          sliceCoversCell(i, j, qs, qe, ks, ke, type),
          `${where}: slice ${index} does not cover (${i}, ${j})`,
        );
      }
      return true;
    }, `${where}: overlapping slices compiled`);
    return;
  }
  const key = compileFlexKey(spec);
  const { totalQ, totalK } = specCase;
  assert.equal(key.totalQ, totalQ, `${where}: totalQ`);
  assert.equal(key.totalK, totalK, `${where}: totalK`);
  const expected = oracleMask(specCase);
  const dense = denseMask(key);
  assert.ok(
    dense.every((value, index) => value === expected[index]),
    `${where}: denseMask differs at ${firstDifference(dense, expected, totalK)}`,
  );
  // The key's slices, cell by cell through the rule: each visible cell covered exactly once.
  const covered = new Uint8Array(totalQ * totalK);
  for (let n = 0; n < key.attnTypeMap.length; n++) {
    const qs = key.qRanges[2 * n],
      qe = key.qRanges[2 * n + 1],
      ks = key.kRanges[2 * n],
      ke = key.kRanges[2 * n + 1];
    const type = key.attnTypeMap[n];
    let cells = 0;
    for (let i = qs; i < qe; i++) {
      for (let j = ks; j < ke; j++) {
        if (!sliceCoversCell(i, j, qs, qe, ks, ke, type)) continue;
        assert.equal(covered[i * totalK + j], 0, `${where}: cell (${i}, ${j}) covered by two key slices`);
        covered[i * totalK + j] = 1;
        cells++;
      }
    }
    assert.ok(cells > 0, `${where}: key slice ${n} covers no cell`);
  }
  assert.ok(
    covered.every((value, index) => value === expected[index]),
    `${where}: key slices differ from the oracle at ${firstDifference(covered, expected, totalK)}`,
  );
  assert.equal(key.area, expected.reduce((sum, value) => sum + value, 0), `${where}: area`);
  assertCanonicalKey(key, where);
  assert.ok(Object.isFrozen(key) && isFlexKey(key), `${where}: key frozen and recognised`);
  assert.equal(compileFlexKey(specCase.build()), key, `${where}: an equal spec hits the cache`);
  if (specCase.slices !== undefined) {
    const plain = toFlexKey({
      qRanges: specCase.slices.map(([qs, qe]) => [qs, qe] as const),
      kRanges: specCase.slices.map(([, , ks, ke]) => [ks, ke] as const),
      attnTypeMap: specCase.slices.map((slice) => slice[4]),
      totalSeqlenQ: totalQ,
      totalSeqlenK: totalK,
    });
    for (const field of ["qRanges", "kRanges", "attnTypeMap"] as const) {
      assert.deepEqual(plain[field], key[field], `${where}: toFlexKey ${field}`);
    }
  }
}

/** Counts of one spec fuzz run. */
export interface SpecFuzzSummary {
  /** Cases checked. */
  cases: number;
  /** Cases per builder. */
  byBuilder: Record<string, number>;
  /** fromRanges cases that had to be rejected for overlap. */
  overlapsRejected: number;
  /** Cases whose spec has no visible cell at all (degenerate lengths). */
  emptyMasks: number;
  /** Cases that failed. */
  failed: number;
  /** The first failure messages (at most 20). */
  failures: string[];
  /** Wall time in milliseconds. */
  milliseconds: number;
}

/** What every fuzz summary keeps: failures (the first 20 messages) and the wall time. */
interface FailureTally {
  failed: number;
  failures: string[];
  milliseconds: number;
}

/**
 * Runs case `index` for each index below `count`: `prepare(index)` counts it in `summary` and returns its
 * check, whose failure is tallied instead of stopping the run. Returns `summary`, timed.
 */
function collectFailures<T extends FailureTally>(
  summary: T,
  count: number,
  prepare: (index: number) => () => void,
): T {
  const start = performance.now();
  for (let index = 0; index < count; index++) {
    const check = prepare(index);
    try {
      check();
    } catch (error) {
      summary.failed++;
      if (summary.failures.length < 20) {
        summary.failures.push(error instanceof Error ? error.message : String(error));
      }
    }
  }
  summary.milliseconds = performance.now() - start;
  return summary;
}

/** Checks `count` spec cases from seed base `base`, collecting failures instead of stopping at one. */
export function runSpecFuzz(base: number, count: number): SpecFuzzSummary {
  const summary: SpecFuzzSummary = {
    cases: 0,
    byBuilder: Object.fromEntries(BUILDERS.map((name) => [name, 0])),
    overlapsRejected: 0,
    emptyMasks: 0,
    failed: 0,
    failures: [],
    milliseconds: 0,
  };
  return collectFailures(summary, count, (index) => {
    const specCase = randomSpecCase(caseSeed(base, index));
    summary.cases++;
    summary.byBuilder[specCase.builder]++;
    if (specCase.overlap) summary.overlapsRejected++;
    else if (specCase.totalQ * specCase.totalK === 0 || !oracleMask(specCase).some((value) => value)) {
      summary.emptyMasks++;
    }
    return () => checkSpecCase(specCase);
  });
}

/** Relative-L2 tolerances of the CPU reference against the float64 oracle (output rounding only). */
export const REFERENCE_TOLERANCES: Readonly<Record<DType, { out: number; lse: number; grads: number }>> = {
  float32: { out: 1e-5, lse: 1e-6, grads: 1e-5 },
  float16: { out: 2e-3, lse: 1e-6, grads: 2e-3 },
  bfloat16: { out: 1e-2, lse: 1e-6, grads: 1e-2 },
};

/** One random attention problem for the CPU reference. */
export interface ReferenceCase {
  /** The case seed. */
  readonly seed: number;
  /** The mask (a non-overlapping {@linkcode SpecCase}). */
  readonly specCase: SpecCase;
  /** Input dtype. */
  readonly dtype: DType;
  /** Query heads. */
  readonly headsQ: number;
  /** Key/value heads (divides headsQ). */
  readonly headsKV: number;
  /** Head dimension. */
  readonly headDim: number;
  /** Soft cap (0 = off). */
  readonly softcap: number;
  /** Explicit logit scale, or undefined for the default. */
  readonly softmaxScale?: number;
  /** Standard deviation of q and k (larger: sharper softmax). */
  readonly spread: number;
}

/** A random reference case from seed `seed` (a mask from {@linkcode randomSpecCase}, never overlapping). */
export function randomReferenceCase(seed: number): ReferenceCase {
  const random = seededRandom(seed ^ 0x5bd1e995);
  let specCase = randomSpecCase(seed);
  for (let attempt = 1; specCase.overlap || specCase.totalQ > 16 || specCase.totalK > 16; attempt++) {
    specCase = randomSpecCase((seed + attempt * 0x9e3779b1) >>> 0);
  }
  const dtypes: DType[] = ["float32", "float16", "bfloat16"];
  const heads = [[1, 1], [2, 1], [2, 2], [4, 1], [4, 2], [3, 3], [6, 2]][Math.floor(random() * 7)];
  return {
    seed,
    specCase,
    dtype: dtypes[Math.floor(random() * 3)],
    headsQ: heads[0],
    headsKV: heads[1],
    headDim: [1, 3, 4, 8, 16][Math.floor(random() * 5)],
    softcap: random() < 0.35 ? 0.5 + random() * 8 : 0,
    softmaxScale: random() < 0.3 ? 0.05 + random() : undefined,
    spread: random() < 0.3 ? 3 : 1,
  };
}

/**
 * Runs the CPU reference forward and backward on a random case and compares out, lse, dq, dk and dv with
 * the float64 dense oracle (same rounded inputs, so only output rounding differs).
 */
export function checkReferenceCase(seed: number): ReferenceCase {
  const problem = randomReferenceCase(seed);
  const { specCase, dtype, headsQ, headsKV, headDim, softcap, softmaxScale, spread } = problem;
  const where = `seed=${seed} ${dtype} Hq=${headsQ} Hkv=${headsKV} D=${headDim} softcap=${softcap} ` +
    `scale=${softmaxScale ?? "default"} spread=${spread} mask=${specCase.description}`;
  const key: FlexKey = compileFlexKey(specCase.build());
  const { totalQ, totalK } = key;
  const q = randomTensor([totalQ, headsQ, headDim], { seed: seed + 1, dtype, scale: spread });
  const k = randomTensor([totalK, headsKV, headDim], { seed: seed + 2, dtype, scale: spread });
  const v = randomTensor([totalK, headsKV, headDim], { seed: seed + 3, dtype });
  const dout = randomTensor([totalQ, headsQ, headDim], { seed: seed + 4, dtype });
  const options = { softcap, softmaxScale };
  const oracleOptions = { softcap, softmaxScale: softmaxScale ?? 1 / Math.sqrt(headDim) };
  const mask = oracleMask(specCase);
  const tolerance = REFERENCE_TOLERANCES[dtype];

  const forward = referenceForward(q, k, v, key, options);
  const expected = denseAttentionOracle(q, k, v, mask, oracleOptions);
  const outError = relativeError(toFloat32(forward.out), expected.out);
  assert.ok(outError <= tolerance.out, `${where}: out relative error ${outError} > ${tolerance.out}`);
  const lseError = relativeError(forward.lse.data as Float32Array, expected.lse);
  assert.ok(lseError <= tolerance.lse, `${where}: lse relative error ${lseError} > ${tolerance.lse}`);

  const grads = referenceBackward(dout, q, k, v, forward.out, forward.lse, key, options);
  const expectedGrads = denseAttentionBackwardOracle(dout, q, k, v, mask, oracleOptions);
  // The backward takes D_i = rowsum(dout ∘ out) from the forward's out, rounded to the dtype (as the kernels
  // do); the oracle uses the exact out. That changes dS by P_ij·δD_i, so dq_i moves by at most
  // scale·|δD_i|·max_j ‖k_j‖ and dk by at most scale·Σ_i |δD_i|·‖q_i‖ in total (each row's P sums to 1;
  // the softcap factor is ≤ 1). Those bounds are added to the relative tolerance, which covers the rounding
  // of the gradients themselves. dv does not depend on D.
  const bounds = roundedOutBounds(q, k, dout, forward.out, expected.out, oracleOptions.softmaxScale);
  for (const name of ["dq", "dk", "dv"] as const) {
    const actual = toFloat32(grads[name]), wanted = expectedGrads[name];
    const difference = l2Distance(actual, wanted), norm = l2Distance(wanted, new Float64Array(wanted.length));
    const allowed = tolerance.grads * norm + (name === "dv" ? 0 : bounds[name]) * 1.001 + 1e-12;
    assert.ok(
      difference <= allowed,
      `${where}: ${name} ‖ours − oracle‖ = ${difference} > ${allowed} (relative ${difference / norm}, ` +
        `tolerance ${tolerance.grads}, rounded-out bound ${name === "dv" ? 0 : bounds[name]})`,
    );
  }
  return problem;
}

function l2Distance(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let sum = 0;
  for (let index = 0; index < a.length; index++) sum += (a[index] - b[index]) ** 2;
  return Math.sqrt(sum);
}

/** L2 bounds on how much using the dtype-rounded `out` (instead of the exact one) moves dq and dk. */
function roundedOutBounds(
  q: HostTensor,
  k: HostTensor,
  dout: HostTensor,
  out: HostTensor,
  exactOut: Float64Array,
  scale: number,
): { dq: number; dk: number } {
  const [totalQ, headsQ, headDim] = q.shape;
  const [totalK, headsKV] = k.shape;
  const qValues = toFloat32(q),
    kValues = toFloat32(k),
    doutValues = toFloat32(dout),
    outValues = toFloat32(out);
  const maxKeyNorm = new Float64Array(headsKV);
  for (let j = 0; j < totalK; j++) {
    for (let head = 0; head < headsKV; head++) {
      let squares = 0;
      for (let d = 0; d < headDim; d++) squares += kValues[(j * headsKV + head) * headDim + d] ** 2;
      maxKeyNorm[head] = Math.max(maxKeyNorm[head], Math.sqrt(squares));
    }
  }
  let dqSquares = 0, dkTotal = 0;
  for (let i = 0; i < totalQ; i++) {
    for (let head = 0; head < headsQ; head++) {
      const offset = (i * headsQ + head) * headDim;
      let deltaError = 0, queryNorm = 0;
      for (let d = 0; d < headDim; d++) {
        deltaError += doutValues[offset + d] * (outValues[offset + d] - exactOut[offset + d]);
        queryNorm += qValues[offset + d] ** 2;
      }
      const kvHead = Math.floor(head / (headsQ / headsKV));
      dqSquares += (scale * Math.abs(deltaError) * maxKeyNorm[kvHead]) ** 2;
      dkTotal += scale * Math.abs(deltaError) * Math.sqrt(queryNorm);
    }
  }
  return { dq: Math.sqrt(dqSquares), dk: dkTotal };
}

/** Counts of one reference fuzz run. */
export interface ReferenceFuzzSummary {
  /** Cases checked (forward and backward each). */
  cases: number;
  /** Cases per dtype. */
  byDtype: Record<string, number>;
  /** Cases with GQA/MQA (Hkv < Hq). */
  grouped: number;
  /** Cases with a softcap. */
  softcapped: number;
  /** Cases that failed. */
  failed: number;
  /** The first failure messages (at most 20). */
  failures: string[];
  /** Wall time in milliseconds. */
  milliseconds: number;
}

/** Checks `count` reference cases from seed base `base`, collecting failures. */
export function runReferenceFuzz(base: number, count: number): ReferenceFuzzSummary {
  const summary: ReferenceFuzzSummary = {
    cases: 0,
    byDtype: { float32: 0, float16: 0, bfloat16: 0 },
    grouped: 0,
    softcapped: 0,
    failed: 0,
    failures: [],
    milliseconds: 0,
  };
  return collectFailures(summary, count, (index) => {
    const seed = caseSeed(base ^ 0x27d4eb2f, index);
    const problem = randomReferenceCase(seed);
    summary.cases++;
    summary.byDtype[problem.dtype]++;
    if (problem.headsKV < problem.headsQ) summary.grouped++;
    if (problem.softcap > 0) summary.softcapped++;
    return () => checkReferenceCase(seed);
  });
}

// ---------------------------------------------------------------------------------------------------------
// The stamping guard: random step sequences against an oracle of the consumption rule.

/** Counts of one guard case, for coverage checks. */
export interface GuardCaseSummary {
  /** Operations run. */
  operations: number;
  /** Stampings refused because the previous step was still open. */
  refusedStamps: number;
  /** Closings refused because a module that had to consume the spec did not. */
  refusedCloses: number;
  /** Steps that passed with modules allowed to skip. */
  skipsAllowed: number;
  /** Successful magi forwards, each compared with the output of the mask the oracle says is stamped. */
  forwards: number;
}

class FuzzAttention {
  readonly isAttentionModule = true;
}

const GUARD_SPECS: readonly AttnMaskSpec[] = [
  AttnMaskSpec.causal(8),
  AttnMaskSpec.varlen([3, 5]),
  AttnMaskSpec.varlen([8], { causal: false }),
];

let guardExpectations: Map<AttnMaskSpec | null, number[]> | undefined;

/** The output of one magi forward on the fuzz input under each spec (and with none stamped). */
async function guardExpected(): Promise<Map<AttnMaskSpec | null, number[]>> {
  if (guardExpectations) return guardExpectations;
  const expected = new Map<AttnMaskSpec | null, number[]>();
  const q = randomTensor([1, 2, 8, 4], { seed: 9 });
  for (const spec of [...GUARD_SPECS, null]) {
    const module = Object.assign(new FuzzAttention(), { _magiAttnSpec: spec });
    const [out] = await magiAttentionForward(module, q, q, q, null, {});
    expected.set(spec, Array.from(toFloat32(out)));
  }
  return (guardExpectations = expected);
}

/**
 * Random steps on a model of 1–4 attention modules: stamp (sometimes with allowSkip), magi forwards that
 * succeed or throw, sdpa forwards, close and reset, checked against an independent model of the rule:
 * a step passes only if every module not allowed to skip had a magi forward produce output with it; a
 * step that did not pass cannot be replaced or closed; closing clears the stamps; each magi forward runs
 * exactly the mask stamped on its module. Throws `seed=<n>: …` on the first disagreement.
 */
export async function checkGuardCase(seed: number): Promise<GuardCaseSummary> {
  const random = seededRandom(seed);
  const expected = await guardExpected();
  const count = randomInt(random, 1, 4);
  const modules = Array.from({ length: count }, () => new FuzzAttention());
  const model = { layers: modules };
  const q = randomTensor([1, 2, 8, 4], { seed: 9 });
  const badQ = randomTensor([1, 2, 8, 4], { seed: 9, dtype: "bfloat16" });
  let stamps: (AttnMaskSpec | null)[] = modules.map(() => null);
  let armed: { consumed: Set<number>; skipCount: number; skipSet: Set<number> | null } | null = null;
  const summary: GuardCaseSummary = {
    operations: 0,
    refusedStamps: 0,
    refusedCloses: 0,
    skipsAllowed: 0,
    forwards: 0,
  };
  const log: string[] = [];
  const fail = (message: string): never => {
    throw new Error(`seed=${seed}: ${message} after ${log.join(", ")}`);
  };
  const missing = (): boolean => {
    if (!armed) return false;
    const unconsumed = modules.map((_, index) => index).filter((index) => !armed!.consumed.has(index));
    return armed.skipSet
      ? unconsumed.some((index) => !armed!.skipSet!.has(index))
      : unconsumed.length > armed.skipCount;
  };
  const expectNotConsumed = (call: () => unknown, what: string): void => {
    try {
      call();
    } catch (error) {
      if (!(error instanceof AttnSpecNotConsumedError)) fail(`${what} threw ${error}`);
      return;
    }
    fail(`${what} passed, but the step was not consumed by every module that had to`);
  };
  const steps = randomInt(random, 4, 16);
  for (let step = 0; step < steps; step++) {
    const roll = random();
    const index = randomInt(random, 0, count - 1);
    summary.operations++;
    if (roll < 0.25) {
      const spec = GUARD_SPECS[randomInt(random, 0, GUARD_SPECS.length - 1)];
      let options: { allowSkip?: number | object[] } | undefined;
      let skipCount = 0, skipSet: Set<number> | null = null;
      if (count > 1 && random() < 0.6) {
        if (random() < 0.5) options = { allowSkip: skipCount = randomInt(random, 0, count - 1) };
        else {
          skipSet = new Set(modules.map((_, at) => at).filter(() => random() < 0.4).slice(0, count - 1));
          options = { allowSkip: [...skipSet].map((at) => modules[at]) };
        }
      }
      log.push(`stamp(${spec.numSlices}${options ? ", allowSkip" : ""})`);
      const open = armed !== null && armed.consumed.size < count;
      if (open) {
        expectNotConsumed(() => setAttnSpecOnAttention(model, spec, options), "stamping over an open step");
        summary.refusedStamps++;
      } else {
        setAttnSpecOnAttention(model, spec, options);
        stamps = modules.map(() => spec);
        armed = { consumed: new Set(), skipCount, skipSet };
      }
    } else if (roll < 0.6) {
      log.push(`magi(${index})`);
      const [out] = await magiAttentionForward(modules[index], q, q, q, null, {});
      const want = expected.get(stamps[index])!;
      const got = toFloat32(out);
      if (got.some((value, at) => value !== want[at])) {
        fail(`module ${index} ran another mask than its stamp`);
      }
      summary.forwards++;
      if (armed && stamps[index] !== null) armed.consumed.add(index);
    } else if (roll < 0.7) {
      log.push(`failingMagi(${index})`);
      await magiAttentionForward(modules[index], badQ, q, q, null, {}).then(
        () => fail("a bf16/float32 magi call succeeded"),
        (error) => (error instanceof MagiAttnInputError ? undefined : fail(`failing magi threw ${error}`)),
      );
    } else if (roll < 0.8) {
      log.push(`sdpa(${index})`);
      await sdpaAttentionForward(modules[index], q, q, q, null, {});
    } else if (roll < 0.93) {
      log.push("close");
      if (missing()) {
        expectNotConsumed(() => closeAttnSpecStep(model), "closing");
        summary.refusedCloses++;
      } else {
        if (armed && armed.consumed.size < count) summary.skipsAllowed++;
        closeAttnSpecStep(model);
        if (armed) stamps = modules.map(() => null);
        armed = null;
      }
    } else {
      log.push("reset");
      resetAttnSpecGuard(model);
      if (armed) stamps = modules.map(() => null);
      armed = null;
    }
    modules.forEach((module, at) => {
      const actual = (module as { _magiAttnSpec?: AttnMaskSpec | null })._magiAttnSpec ?? null;
      if (actual !== stamps[at]) fail(`module ${at} holds another stamp than the oracle's`);
    });
  }
  resetAttnSpecGuard(model);
  return summary;
}
