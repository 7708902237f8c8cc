/**
 * Seeded random spec cases for the fuzz tests and `scripts/reliability.ts`: random specs from every builder
 * (degenerate lengths 0 and 1 included) with a dense-mask oracle written here from each builder's
 * definition. The CPU reference's cases are in `fuzz_reference_cases.ts`, the stamping guard's in
 * `fuzz_guard_cases.ts`.
 *
 * Every check throws an AssertionError whose message starts with `seed=<n>`: rerun one case with
 * `checkSpecCase(randomSpecCase(n))`.
 * @module
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";

import { compileFlexKey, denseMask, isFlexKey, toFlexKey } from "../lib/masks/flex_key.ts";

import { AttnMaskSpec } from "../lib/masks/spec.ts";
import { seededRandom } from "../lib/core/tensor.ts";
import type { MaskType } from "../lib/core/types.ts";
import { documentIndexOf } from "./support/fixtures.ts";
import {
  assertCanonicalKey,
  denseFromPredicate,
  firstDifference,
  sliceCoversCell,
} from "./support/mask_check.ts";

import {
  caseSeed,
  collectFailures,
  type Random,
  randomInt,
  randomLength,
  randomLengths,
} from "./support/fuzz.ts";

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

/** The dense mask of a spec case, from its builder's definition (1 = visible). */
export function oracleMask(specCase: SpecCase): Uint8Array {
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
