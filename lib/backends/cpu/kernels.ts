/**
 * The tiled CPU kernels: forward and backward tasks over blocks of query rows against the key range those
 * rows see, with the matrix products in a WebAssembly SIMD kernel (`gemm_wasm.ts`) and the elementwise
 * softmax steps in JavaScript. The same code runs in the worker pool and in the calling thread.
 *
 * Bit-identical to `lib/backends/reference.ts`: every value is computed with the same float64 operations in the same
 * order. Dot products and every sum over keys or rows run sequentially per output element (SIMD only runs
 * across independent outputs, and WebAssembly never fuses a multiply with an add); masked cells inside a
 * tile get probability 0, which adds an exact ±0 (the caller sends inputs with non-finite values to the
 * reference instead, where `0 · ∞` would differ). dk/dv sum over (slice, query row, query head of the GQA
 * group) in the reference's order; dq adds one partial sum per slice like the reference's `dqRow`.
 * @module
 */

import type { TensorData } from "../../core/tensor.ts";
import { GEMM_COLUMN_MULTIPLE } from "./gemm_wasm.ts";
import { type Block, keyWindow, loadKeys, loadRows, planBlocks } from "./blocks.ts";
import type { BackwardBuffers, BackwardTask, CpuProblem, ForwardBuffers, ForwardTask } from "./problem.ts";
import {
  Arena,
  BlockProducts,
  BYTES,
  type ElementReader,
  type ElementWriter,
  type GemmExports,
  readerFor,
  roundUp,
  writerFor,
} from "./wasm_memory.ts";

/** Rows (query row × GQA head) per block: the `n` of the score products, near the micro-kernel's sweet spot. */
const BLOCK_ROWS = 64;

/** Scales (and softcaps) `count` scores in place; returns their max by `>` (NaN ignored), as the reference. */
function scaleRow(heap: Float64Array, start: number, count: number, scale: number, softcap: number): number {
  let max = -Infinity;
  const end = start + count;
  if (softcap > 0) {
    for (let index = start; index < end; index++) {
      const score = softcap * Math.tanh((heap[index] * scale) / softcap);
      heap[index] = score;
      if (score > max) max = score;
    }
    return max;
  }
  for (let index = start; index < end; index++) {
    const score = heap[index] * scale;
    heap[index] = score;
    if (score > max) max = score;
  }
  return max;
}

/**
 * One row of the backward: scores → probabilities `exp(s − lse)` in place at `scores`, dout·v → score
 * gradients `P (dP − D)` (softcap chain rule) `· scale` in place at `grads`, with the reference's operations
 * (without softcap in the kernel's `gradient_row`, whose exp gives Math.exp's bits).
 */
function gradientRow(
  kernel: GemmExports,
  heap: Float64Array,
  scores: number,
  grads: number,
  count: number,
  scale: number,
  softcap: number,
  inverseCap: number,
  lse: number,
  delta: number,
): void {
  if (softcap > 0) {
    for (let index = 0; index < count; index++) {
      const score = softcap * Math.tanh(heap[scores + index] * scale * inverseCap);
      const probability = Math.exp(score - lse);
      const capped = score * inverseCap;
      let scoreGrad = probability * (heap[grads + index] - delta);
      scoreGrad *= 1 - capped * capped;
      heap[scores + index] = probability;
      heap[grads + index] = scoreGrad * scale;
    }
    return;
  }
  kernel.gradient_row(scores * BYTES, grads * BYTES, count, scale, lse, delta);
}

/** A block's rows (query rows × GQA heads), its keys and the padded row length of its `[rows, keys]` tiles. */
function blockSizes(block: Block, group: number): { rows: number; keys: number; stride: number } {
  const keys = block.keyHigh - block.keyLow;
  return { rows: (block.rowEnd - block.rowStart) * group, keys, stride: roundUp(keys, GEMM_COLUMN_MULTIPLE) };
}

/** What forward and backward tasks share: the plan, the padded sizes and the float64 key/value window. */
interface TaskFrame {
  group: number;
  read: ElementReader;
  write: ElementWriter;
  blocks: Block[];
  window: { low: number; high: number };
  windowKeys: number;
  /** Row length of the transposed key/value windows (padded past the last column group). */
  leading: number;
  paddedDim: number;
  blockRows: number;
  keysAt: number;
  keysTAt: number;
  valuesAt: number;
  /** −1 when the values are not needed transposed (the forward). */
  valuesTAt: number;
}

/** Runs forward and backward tasks. One per thread: it owns a WebAssembly instance and reuses its memory. */
export class CpuKernels {
  private readonly arena = new Arena();

  /**
   * Plans a task's blocks and reserves its key/value window (k, kᵀ, v and, for the backward, vᵀ); the
   * caller reserves its own buffers, then calls {@linkcode CpuKernels.loadWindow}.
   */
  private frame(
    problem: CpuProblem,
    queryStart: number,
    queryEnd: number,
    keyStart: number,
    keyEnd: number,
    transposedValues: boolean,
  ): TaskFrame {
    const group = problem.numHeadsQ / problem.numHeadsKV;
    const rowsPerBlock = Math.max(1, Math.floor(BLOCK_ROWS / group));
    const blocks = planBlocks(problem, queryStart, queryEnd, keyStart, keyEnd, rowsPerBlock);
    const window = keyWindow(blocks);
    const windowKeys = window.high - window.low;
    // Rows of the transposed windows are padded so a product's last, partial column group stays inside.
    const leading = roundUp(windowKeys, GEMM_COLUMN_MULTIPLE) + GEMM_COLUMN_MULTIPLE;
    const paddedDim = roundUp(problem.headDim, GEMM_COLUMN_MULTIPLE);
    const arena = this.arena;
    arena.reset();
    return {
      group,
      read: readerFor(problem.dtype),
      write: writerFor(problem.dtype),
      blocks,
      window,
      windowKeys,
      leading,
      paddedDim,
      blockRows: rowsPerBlock * group,
      keysAt: arena.allocate(windowKeys * paddedDim),
      keysTAt: arena.allocate(problem.headDim * leading),
      valuesAt: arena.allocate(windowKeys * paddedDim),
      valuesTAt: transposedValues ? arena.allocate(problem.headDim * leading) : -1,
    };
  }

  /** Grows the memory for everything reserved and loads the task's key/value window; returns the heap. */
  private loadWindow(
    frame: TaskFrame,
    problem: CpuProblem,
    k: TensorData,
    v: TensorData,
    kvHead: number,
  ): Float64Array {
    this.arena.commit();
    const heap = this.arena.heap;
    const { window, leading, paddedDim, read } = frame;
    const windows = [[k, frame.keysAt, frame.keysTAt], [v, frame.valuesAt, frame.valuesTAt]] as const;
    for (const [data, address, transposedAddress] of windows) {
      loadKeys(
        heap,
        address,
        transposedAddress,
        leading,
        data,
        read,
        problem,
        kvHead,
        window.low,
        window.high,
        paddedDim,
      );
    }
    return heap;
  }

  /** Runs one forward task: writes `out` and `lse` of its rows (all of them, empty rows included). */
  forward(problem: CpuProblem, buffers: ForwardBuffers, task: ForwardTask): void {
    const { numHeadsQ, headDim, softmaxScale, softcap } = problem;
    const { kvHead, queryStart, queryEnd } = task;
    const frame = this.frame(problem, queryStart, queryEnd, 0, problem.totalK, false);
    const { group, read, write, blocks, window, leading, paddedDim, blockRows, keysTAt, valuesAt } = frame;
    const taskRows = (queryEnd - queryStart) * group;
    const arena = this.arena;
    const queriesAt = arena.allocate(blockRows * paddedDim);
    const scoresAt = arena.allocate(blockRows * leading);
    const accumulatorAt = arena.allocate(taskRows * paddedDim);
    const heap = this.loadWindow(frame, problem, buffers.k, buffers.v, kvHead);
    heap.fill(0, accumulatorAt / BYTES, accumulatorAt / BYTES + taskRows * paddedDim);

    const rowMax = new Float64Array(taskRows).fill(-Infinity);
    const rowSum = new Float64Array(taskRows);
    const products = new BlockProducts(arena.exports.gemm, headDim, paddedDim, leading);

    for (const block of blocks) {
      const { rowStart, rowEnd, keyLow, lows, highs } = block;
      const { rows, keys, stride } = blockSizes(block, group);
      loadRows(heap, queriesAt, buffers.q, read, problem, kvHead, rowStart, rowEnd, paddedDim);
      // Scores [rows, keys]: each the sequential dot product over d, as in the reference.
      products.rowsByWindowT(rows, stride, queriesAt, keysTAt + (keyLow - window.low) * BYTES, scoresAt);
      const rowBase = (rowStart - queryStart) * group;
      for (let row = 0; row < rows; row++) {
        const local = (row / group) | 0;
        const line = scoresAt / BYTES + row * stride;
        const lo = lows[local] - keyLow;
        const hi = highs[local] - keyLow;
        if (lo >= hi) {
          heap.fill(0, line, line + keys); // an empty row of this slice: adds nothing
          continue;
        }
        heap.fill(0, line, line + lo);
        heap.fill(0, line + hi, line + keys);
        // Scale, softcap and the slice's max, keys ascending (the reference's order and `>` test).
        const sliceMax = scaleRow(heap, line + lo, hi - lo, softmaxScale, softcap);
        // Merge with what earlier slices accumulated: one running max per row, like the reference.
        const taskRow = rowBase + row;
        const previousMax = rowMax[taskRow];
        const merged = sliceMax > previousMax ? sliceMax : previousMax;
        if (previousMax !== -Infinity && previousMax < merged) {
          const factor = Math.exp(previousMax - merged);
          rowSum[taskRow] *= factor;
          const accumulator = accumulatorAt / BYTES + taskRow * paddedDim;
          for (let d = 0; d < headDim; d++) heap[accumulator + d] *= factor;
        }
        rowMax[taskRow] = merged;
        const sum = arena.exports.exp_sum((line + lo) * BYTES, hi - lo, merged); // exp(s − max), Σ in order
        rowSum[taskRow] += sum;
      }
      // accumulator[rows, D] += P[rows, keys] · V[keys, D], keys ascending per element; masked cells are
      // 0 and add an exact ±0.
      products.tileByWindow(
        rows,
        keys,
        stride,
        scoresAt,
        valuesAt + (keyLow - window.low) * paddedDim * BYTES,
        accumulatorAt + rowBase * paddedDim * BYTES,
        1,
      );
    }

    // Normalize and write the task's rows, exactly as the reference's last loop.
    for (let query = queryStart; query < queryEnd; query++) {
      for (let member = 0; member < group; member++) {
        const taskRow = (query - queryStart) * group + member;
        const outRow = query * numHeadsQ + kvHead * group + member;
        const accumulator = accumulatorAt / BYTES + taskRow * paddedDim;
        const sum = rowSum[taskRow];
        if (sum > 0) {
          const inverse = 1 / sum;
          for (let d = 0; d < headDim; d++) heap[accumulator + d] *= inverse;
          buffers.lse[outRow] = rowMax[taskRow] + Math.log(sum);
        } else if (Number.isNaN(sum)) {
          for (let d = 0; d < headDim; d++) heap[accumulator + d] = NaN;
          buffers.lse[outRow] = NaN;
        } else {
          buffers.lse[outRow] = -Infinity;
        }
        const target = outRow * headDim;
        for (let d = 0; d < headDim; d++) write(buffers.out, target + d, heap[accumulator + d]);
      }
    }
  }

  /** Runs one backward task: dq of its query rows and/or dk, dv of its keys (see {@linkcode BackwardTask}). */
  backward(problem: CpuProblem, buffers: BackwardBuffers, task: BackwardTask): void {
    const { numHeadsQ, numHeadsKV, headDim, softmaxScale, softcap } = problem;
    const { kvHead, queryStart, queryEnd, keyStart, keyEnd } = task;
    const frame = this.frame(problem, queryStart, queryEnd, keyStart, keyEnd, true);
    const { group, read, write, blocks, window, windowKeys, leading, paddedDim, blockRows } = frame;
    const { keysAt, keysTAt, valuesTAt } = frame;
    const arena = this.arena;
    const queriesAt = arena.allocate(blockRows * paddedDim);
    const doutAt = arena.allocate(blockRows * paddedDim);
    const probabilitiesAt = arena.allocate(blockRows * leading);
    const scoreGradsAt = arena.allocate(blockRows * leading);
    const dqPartialAt = arena.allocate(task.dq ? blockRows * paddedDim : 0);
    const dkAt = arena.allocate(task.dkdv ? windowKeys * paddedDim : 0);
    const dvAt = arena.allocate(task.dkdv ? windowKeys * paddedDim : 0);
    const heap = this.loadWindow(frame, problem, buffers.k, buffers.v, kvHead);
    if (task.dkdv) {
      heap.fill(0, dkAt / BYTES, dkAt / BYTES + windowKeys * paddedDim);
      heap.fill(0, dvAt / BYTES, dvAt / BYTES + windowKeys * paddedDim);
    }

    const inverseCap = softcap > 0 ? 1 / softcap : 0;
    const products = new BlockProducts(arena.exports.gemm, headDim, paddedDim, leading);

    for (const block of blocks) {
      const { rowStart, rowEnd, keyLow, lows, highs } = block;
      const { rows, keys, stride } = blockSizes(block, group);
      const keyShift = (keyLow - window.low) * BYTES;
      loadRows(heap, queriesAt, buffers.q, read, problem, kvHead, rowStart, rowEnd, paddedDim);
      loadRows(heap, doutAt, buffers.dout, read, problem, kvHead, rowStart, rowEnd, paddedDim);
      // Scores and dout·vᵀ, [rows, keys].
      products.rowsByWindowT(rows, stride, queriesAt, keysTAt + keyShift, probabilitiesAt);
      products.rowsByWindowT(rows, stride, doutAt, valuesTAt + keyShift, scoreGradsAt);
      for (let row = 0; row < rows; row++) {
        const local = (row / group) | 0;
        const query = rowStart + local;
        const outRow = query * numHeadsQ + kvHead * group + (row - local * group);
        const lse = buffers.lse[outRow];
        const probabilityLine = probabilitiesAt / BYTES + row * stride;
        const gradLine = scoreGradsAt / BYTES + row * stride;
        const lo = lows[local] - keyLow;
        const hi = lse === -Infinity ? lo : highs[local] - keyLow; // an empty row: no gradient
        if (lo >= hi) {
          heap.fill(0, probabilityLine, probabilityLine + keys);
          heap.fill(0, gradLine, gradLine + keys);
          continue;
        }
        heap.fill(0, probabilityLine, probabilityLine + lo);
        heap.fill(0, probabilityLine + hi, probabilityLine + keys);
        heap.fill(0, gradLine, gradLine + lo);
        heap.fill(0, gradLine + hi, gradLine + keys);
        // D = rowsum(dout ∘ out), the reference's sequential sum over d.
        const offset = outRow * headDim;
        let delta = 0;
        for (let d = 0; d < headDim; d++) {
          delta += read(buffers.dout, offset + d) * read(buffers.out, offset + d);
        }
        gradientRow(
          arena.exports,
          heap,
          probabilityLine + lo,
          gradLine + lo,
          hi - lo,
          softmaxScale,
          softcap,
          inverseCap,
          lse,
          delta,
        );
      }
      if (task.dkdv) {
        // dv[keys] += Pᵀ · dout and dk[keys] += dSᵀ · q, rows (query, head) ascending per element.
        const keyOffset = (keyLow - window.low) * paddedDim * BYTES;
        products.tileTByRows(rows, keys, stride, probabilitiesAt, doutAt, dvAt + keyOffset);
        products.tileTByRows(rows, keys, stride, scoreGradsAt, queriesAt, dkAt + keyOffset);
      }
      if (task.dq) {
        // This slice's partial dq (keys ascending from 0, like the reference's dqRow), then one add.
        const keyOffset = (keyLow - window.low) * paddedDim * BYTES;
        products.tileByWindow(rows, keys, stride, scoreGradsAt, keysAt + keyOffset, dqPartialAt, 0);
        const partial = dqPartialAt / BYTES;
        let blockRow = 0;
        for (let query = rowStart; query < rowEnd; query++) {
          for (let member = 0; member < group; member++) {
            const target = (query * numHeadsQ + kvHead * group + member) * headDim;
            const source = partial + blockRow * paddedDim;
            for (let d = 0; d < headDim; d++) buffers.dqAccumulator[target + d] += heap[source + d];
            blockRow++;
          }
        }
      }
    }

    if (task.dq) {
      for (let query = queryStart; query < queryEnd; query++) {
        for (let member = 0; member < group; member++) {
          const offset = (query * numHeadsQ + kvHead * group + member) * headDim;
          for (let d = 0; d < headDim; d++) write(buffers.dq, offset + d, buffers.dqAccumulator[offset + d]);
        }
      }
    }
    if (task.dkdv) {
      for (let key = window.low; key < window.high; key++) {
        const offset = (key * numHeadsKV + kvHead) * headDim;
        const source = (key - window.low) * paddedDim;
        for (let d = 0; d < headDim; d++) {
          write(buffers.dk, offset + d, heap[dkAt / BYTES + source + d]);
          write(buffers.dv, offset + d, heap[dvAt / BYTES + source + d]);
        }
      }
    }
  }
}
