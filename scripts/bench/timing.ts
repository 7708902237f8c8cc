/**
 * How the benchmark times a call: batches of back-to-back launches between two synchronizations
 * ({@linkcode measureBatches}) and the host cost of many calls ({@linkcode measureIssue}), against any
 * clock, so the same code runs on the GPU and on the simulated GPU of `--dry-run`.
 * @module
 */

/** A clock in milliseconds (`performance.now` on the GPU; a simulated one in `--dry-run`). */
export type Clock = () => number;

/** Result of {@linkcode measureBatches}. */
export interface BatchTiming {
  /** Median milliseconds per call over the batches. */
  ms: number;
  /** Calls per batch. */
  batch: number;
  /** Batches timed. */
  batches: number;
  /** Smallest and largest per-call batch time (the spread). */
  minMs: number;
  /** Largest per-call batch time. */
  maxMs: number;
}

/** Knobs of {@linkcode measureBatches}. */
export interface BatchOptions {
  /** Target duration of one batch, ms (default 10). */
  batchMs?: number;
  /** Most calls in one batch (default 64). */
  maxBatch?: number;
  /** Stop after this many batches (default 20)… */
  maxBatches?: number;
  /** …or once this much time has passed, ms (default 500), with at least `minBatches` (default 5). */
  minTotalMs?: number;
  /** Fewest batches (default 5). */
  minBatches?: number;
  /** Warm-up calls (default 3). */
  warmup?: number;
}

/**
 * Times `launch` (which queues GPU work and returns) with `sync` (which waits for the GPU): warm-up, one
 * synchronized call to size the batches (about `batchMs` each), then batches of back-to-back calls each
 * followed by one `sync`; per-call time = batch time / batch size; returns the median.
 */
export async function measureBatches(
  launch: () => unknown,
  sync: () => Promise<void>,
  clock: Clock,
  options: BatchOptions = {},
): Promise<BatchTiming> {
  const {
    batchMs = 10,
    maxBatch = 64,
    maxBatches = 20,
    minTotalMs = 500,
    minBatches = 5,
    warmup = 3,
  } = options;
  for (let call = 0; call < warmup; call++) await launch();
  await sync();
  let start = clock();
  await launch();
  await sync();
  const single = Math.max(clock() - start, 1e-6);
  const batch = Math.max(1, Math.min(maxBatch, Math.ceil(batchMs / single)));
  const samples: number[] = [];
  const began = clock();
  while (true) {
    start = clock();
    for (let call = 0; call < batch; call++) await launch();
    await sync();
    samples.push((clock() - start) / batch);
    const elapsed = clock() - began;
    if (samples.length >= maxBatches || (samples.length >= minBatches && elapsed >= minTotalMs)) break;
  }
  return {
    ms: median(samples),
    batch,
    batches: samples.length,
    minMs: Math.min(...samples),
    maxMs: Math.max(...samples),
  };
}

/** Per-call host and wall time of many back-to-back calls, from {@linkcode measureIssue}. */
export interface IssueTiming {
  /** Host time per call until the last call returned (before the final sync), µs: the caller's cost. */
  issueUs: number;
  /** Wall time per call including the final sync, µs: max(host cost, GPU time) per call, roughly. */
  wallUs: number;
}

/**
 * Host cost of a call: `calls` back-to-back calls, then one sync; medians over `rounds` rounds of the
 * time until the last call returned and until the sync returned, per call. `afterRound` runs after each
 * round's sync, untimed (e.g. to free the round's outputs).
 */
export async function measureIssue(
  launch: () => unknown,
  sync: () => Promise<void>,
  clock: Clock,
  calls = 1000,
  rounds = 5,
  afterRound: () => void = () => {},
): Promise<IssueTiming> {
  for (let call = 0; call < Math.min(calls, 50); call++) await launch();
  await sync();
  afterRound();
  const issue: number[] = [], wall: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const start = clock();
    for (let call = 0; call < calls; call++) await launch();
    const issued = clock();
    await sync();
    const done = clock();
    afterRound();
    issue.push(((issued - start) * 1000) / calls);
    wall.push(((done - start) * 1000) / calls);
  }
  return { issueUs: median(issue), wallUs: median(wall) };
}

/** Median of a non-empty list. */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new Error("median of an empty list");
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}
