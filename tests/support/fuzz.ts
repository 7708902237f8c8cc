/**
 * What the fuzz cases share: the seed of a run (fixed, or `MAGI_FUZZ_SEED`), each case's seed, small
 * random draws, and the failure tally of a run.
 * @module
 */

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

/** A random source in [0, 1), e.g. `seededRandom(seed)`. */
export type Random = () => number;

/** A whole number in [low, high]. */
export function randomInt(random: Random, low: number, high: number): number {
  return low + Math.floor(random() * (high - low + 1));
}

/** A length with the degenerate values 0 and 1 drawn often. */
export function randomLength(random: Random, max: number): number {
  const roll = random();
  if (roll < 0.15) return 0;
  if (roll < 0.3) return 1;
  return randomInt(random, 2, Math.max(2, max));
}

/** Up to `maxCount` lengths from {@linkcode randomLength}. */
export function randomLengths(random: Random, maxCount: number, maxLength: number): number[] {
  return Array.from({ length: randomInt(random, 0, maxCount) }, () => randomLength(random, maxLength));
}

/** Up to six lengths (0 drawn often) whose sum stays within `maxTotal`. */
export function randomLengthsUpTo(random: Random, maxTotal: number): number[] {
  const count = randomInt(random, 0, 6);
  const lengths: number[] = [];
  let total = 0;
  for (let d = 0; d < count; d++) {
    const length = random() < 0.2 ? 0 : randomInt(random, 1, Math.max(1, Math.floor(maxTotal / 3)));
    if (total + length > maxTotal) break;
    lengths.push(length);
    total += length;
  }
  return lengths;
}

/** What every fuzz summary keeps: failures (the first 20 messages) and the wall time. */
export interface FailureTally {
  failed: number;
  failures: string[];
  milliseconds: number;
}

/**
 * Runs case `index` for each index below `count`: `prepare(index)` counts it in `summary` and returns its
 * check, whose failure is tallied instead of stopping the run. Returns `summary`, timed.
 */
export function collectFailures<T extends FailureTally>(
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
