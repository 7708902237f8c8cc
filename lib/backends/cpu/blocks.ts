/**
 * A task's blocks: query rows of one slice against the keys they see, planned in the reference's order, and
 * the loads of their rows and of the task's key/value window into the kernels' float64 heap.
 * @module
 */

import type { TensorData } from "../../core/tensor.ts";
import { type CpuProblem, sliceIntervals } from "./problem.ts";
import { BYTES, type ElementReader } from "./wasm_memory.ts";

/** One block of query rows inside one slice, with the key range its rows see (clipped to a task's keys). */
export interface Block {
  slice: number;
  rowStart: number;
  rowEnd: number;
  keyLow: number;
  keyHigh: number;
  /** Per row of the block: visible `[lo, hi)` clipped to the task's keys (empty when lo ≥ hi). */
  lows: Int32Array;
  highs: Int32Array;
}

/**
 * The blocks a task walks, in the reference's order: slices in key order, then query rows ascending. Blocks
 * whose rows see none of `[keyStart, keyEnd)` are skipped (no invisible tile is ever computed).
 */
export function planBlocks(
  problem: CpuProblem,
  queryStart: number,
  queryEnd: number,
  keyStart: number,
  keyEnd: number,
  rowsPerBlock: number,
): Block[] {
  const blocks: Block[] = [];
  const sliceCount = problem.attnTypeMap.length;
  for (let slice = 0; slice < sliceCount; slice++) {
    const first = Math.max(problem.qRanges[2 * slice], queryStart);
    const last = Math.min(problem.qRanges[2 * slice + 1], queryEnd);
    for (let rowStart = first; rowStart < last; rowStart += rowsPerBlock) {
      const rowEnd = Math.min(rowStart + rowsPerBlock, last);
      const lows = new Int32Array(rowEnd - rowStart);
      const highs = new Int32Array(rowEnd - rowStart);
      sliceIntervals(problem, slice, rowStart, rowEnd, lows, highs);
      let keyLow = Infinity;
      let keyHigh = -Infinity;
      for (let index = 0; index < lows.length; index++) {
        const lo = Math.max(lows[index], keyStart);
        const hi = Math.min(highs[index], keyEnd);
        lows[index] = lo;
        highs[index] = hi;
        if (lo >= hi) continue;
        keyLow = Math.min(keyLow, lo);
        keyHigh = Math.max(keyHigh, hi);
      }
      if (keyLow < keyHigh) blocks.push({ slice, rowStart, rowEnd, keyLow, keyHigh, lows, highs });
    }
  }
  return blocks;
}

/** The union of the blocks' key ranges, `[low, high)` (empty when there are no blocks). */
export function keyWindow(blocks: readonly Block[]): { low: number; high: number } {
  let low = Infinity;
  let high = -Infinity;
  for (const block of blocks) {
    low = Math.min(low, block.keyLow);
    high = Math.max(high, block.keyHigh);
  }
  return blocks.length === 0 ? { low: 0, high: 0 } : { low, high };
}

/**
 * Copies keys `[low, high)` of kv head `kvHead` of a `[tokens, Hkv, D]` tensor as float64: natural
 * `[keys, paddedDim]` at `address`, and transposed `[D, leading]` at `transposedAddress` (when ≥ 0).
 */
export function loadKeys(
  heap: Float64Array,
  address: number,
  transposedAddress: number,
  leading: number,
  data: TensorData,
  read: ElementReader,
  problem: CpuProblem,
  kvHead: number,
  low: number,
  high: number,
  paddedDim: number,
): void {
  const { numHeadsKV, headDim } = problem;
  let target = address / BYTES;
  const transposed = transposedAddress / BYTES;
  for (let key = low; key < high; key++) {
    const source = (key * numHeadsKV + kvHead) * headDim;
    for (let d = 0; d < headDim; d++) heap[target + d] = read(data, source + d);
    for (let d = headDim; d < paddedDim; d++) heap[target + d] = 0;
    if (transposedAddress >= 0) {
      for (let d = 0; d < headDim; d++) heap[transposed + d * leading + key - low] = heap[target + d];
    }
    target += paddedDim;
  }
}

/** Gathers the block's rows (query row × GQA head, in that order) of a `[tokens, Hq, D]` tensor. */
export function loadRows(
  heap: Float64Array,
  address: number,
  data: TensorData,
  read: ElementReader,
  problem: CpuProblem,
  kvHead: number,
  rowStart: number,
  rowEnd: number,
  paddedDim: number,
): void {
  const { numHeadsQ, numHeadsKV, headDim } = problem;
  const group = numHeadsQ / numHeadsKV;
  let target = address / BYTES;
  for (let query = rowStart; query < rowEnd; query++) {
    for (let member = 0; member < group; member++) {
      const source = (query * numHeadsQ + kvHead * group + member) * headDim;
      for (let d = 0; d < headDim; d++) heap[target + d] = read(data, source + d);
      for (let d = headDim; d < paddedDim; d++) heap[target + d] = 0;
      target += paddedDim;
    }
  }
}
