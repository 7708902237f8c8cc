/**
 * Splits one CPU attention call into tasks (`kernels.ts`). Every output element belongs to exactly one task
 * and each task computes it in the reference's order, so the results are the same for every split: the
 * split only balances the work between threads (and keeps in-thread tasks short).
 * @module
 */

import { type BackwardTask, type CpuProblem, type ForwardTask, sliceIntervals } from "./problem.ts";

/** Visible cells per query row and per key (summed over slices), the work estimate of the planner. */
export interface CellCounts {
  /** Cells of each query row. */
  perQuery: Float64Array;
  /** Cells of each key. */
  perKey: Float64Array;
  /** All cells (the mask's area). */
  total: number;
}

/** Counts the visible cells of each query row and each key. */
export function countCells(problem: CpuProblem): CellCounts {
  const perQuery = new Float64Array(problem.totalQ);
  const keyDifferences = new Float64Array(problem.totalK + 1);
  let total = 0;
  for (let slice = 0; slice < problem.attnTypeMap.length; slice++) {
    const qStart = problem.qRanges[2 * slice];
    const rows = problem.qRanges[2 * slice + 1] - qStart;
    const lows = new Int32Array(rows), highs = new Int32Array(rows);
    sliceIntervals(problem, slice, qStart, qStart + rows, lows, highs);
    for (let row = 0; row < rows; row++) {
      if (lows[row] >= highs[row]) continue;
      perQuery[qStart + row] += highs[row] - lows[row];
      keyDifferences[lows[row]] += 1;
      keyDifferences[highs[row]] -= 1;
      total += highs[row] - lows[row];
    }
  }
  const perKey = new Float64Array(problem.totalK);
  let running = 0;
  for (let key = 0; key < problem.totalK; key++) {
    running += keyDifferences[key];
    perKey[key] = running;
  }
  return { perQuery, perKey, total };
}

/**
 * Cuts `[0, weights.length)` into consecutive ranges of about `target` weight each, at multiples of
 * `align` (so blocks stay whole). Always covers everything, with at least one range.
 */
export function cutRanges(weights: Float64Array, target: number, align: number): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  const length = weights.length;
  let start = 0;
  let accumulated = 0;
  for (let index = 0; index < length; index++) {
    accumulated += weights[index];
    const boundary = index + 1;
    if (accumulated >= target && boundary % align === 0 && boundary < length) {
      ranges.push([start, boundary]);
      start = boundary;
      accumulated = 0;
    }
  }
  ranges.push([start, length]);
  return ranges;
}

/** Query rows per block in the kernels (64 rows of query × GQA head). */
function rowAlignment(problem: CpuProblem): number {
  return Math.max(1, Math.floor(64 / (problem.numHeadsQ / problem.numHeadsKV)));
}

function rangeWeight(weights: Float64Array, start: number, end: number): number {
  let sum = 0;
  for (let index = start; index < end; index++) sum += weights[index];
  return sum;
}

/**
 * Forward tasks: each kv head's query rows cut into `chunksPerHead` ranges of similar work, heaviest first
 * (so a shared queue balances well).
 */
export function planForward(problem: CpuProblem, cells: CellCounts, chunksPerHead: number): ForwardTask[] {
  const target = cells.total / Math.max(1, chunksPerHead);
  const ranges = cutRanges(cells.perQuery, target, rowAlignment(problem));
  const tasks: Array<ForwardTask & { weight: number }> = [];
  for (let kvHead = 0; kvHead < problem.numHeadsKV; kvHead++) {
    for (const [queryStart, queryEnd] of ranges) {
      tasks.push({ kvHead, queryStart, queryEnd, weight: rangeWeight(cells.perQuery, queryStart, queryEnd) });
    }
  }
  tasks.sort((a, b) => b.weight - a.weight);
  return tasks.map(({ kvHead, queryStart, queryEnd }) => ({ kvHead, queryStart, queryEnd }));
}

/**
 * Backward tasks. `chunksPerHead` = 1: one task per kv head computes dq, dk and dv together (no work done
 * twice). More: dq tasks over query ranges and dk/dv tasks over key ranges (the scores are computed by
 * both, about 7/5 of the work, but any number of threads gets busy).
 */
export function planBackward(problem: CpuProblem, cells: CellCounts, chunksPerHead: number): BackwardTask[] {
  const { totalQ, totalK, numHeadsKV } = problem;
  if (chunksPerHead <= 1) {
    return Array.from({ length: numHeadsKV }, (_, kvHead) => ({
      kvHead,
      queryStart: 0,
      queryEnd: totalQ,
      keyStart: 0,
      keyEnd: totalK,
      dq: true,
      dkdv: true,
    }));
  }
  const target = cells.total / chunksPerHead;
  const queryRanges = cutRanges(cells.perQuery, target, rowAlignment(problem));
  const keyRanges = cutRanges(cells.perKey, target, 8);
  const tasks: Array<BackwardTask & { weight: number }> = [];
  for (let kvHead = 0; kvHead < numHeadsKV; kvHead++) {
    for (const [queryStart, queryEnd] of queryRanges) {
      const weight = rangeWeight(cells.perQuery, queryStart, queryEnd) * 3;
      tasks.push({
        kvHead,
        queryStart,
        queryEnd,
        keyStart: 0,
        keyEnd: totalK,
        dq: true,
        dkdv: false,
        weight,
      });
    }
    for (const [keyStart, keyEnd] of keyRanges) {
      const weight = rangeWeight(cells.perKey, keyStart, keyEnd) * 4;
      tasks.push({
        kvHead,
        queryStart: 0,
        queryEnd: totalQ,
        keyStart,
        keyEnd,
        dq: false,
        dkdv: true,
        weight,
      });
    }
  }
  tasks.sort((a, b) => b.weight - a.weight);
  return tasks.map(({ weight: _weight, ...task }) => task);
}
