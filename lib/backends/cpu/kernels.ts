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

import { visibleInterval } from "../reference.ts";
import { type DType, float32ToBf16Bits, type TensorData } from "../../core/tensor.ts";
import type { ForwardShape } from "../../core/validate.ts";
import { GEMM_COLUMN_MULTIPLE, GEMM_HEAP_BASE, GEMM_WASM_BASE64 } from "./gemm_wasm.ts";

/** One attention problem as plain, structured-cloneable data (sent to each worker once per call). */
export interface CpuProblem extends ForwardShape {
  /** The flex key's query ranges, flat. */
  qRanges: Int32Array;
  /** The flex key's key ranges, flat. */
  kRanges: Int32Array;
  /** The flex key's slice types. */
  attnTypeMap: Int32Array;
}

/** Forward tensors (raw data in `dtype`, usually over SharedArrayBuffers): inputs, then outputs to fill. */
export interface ForwardBuffers {
  /** q `[totalQ, Hq, D]`. */
  q: TensorData;
  /** k `[totalK, Hkv, D]`. */
  k: TensorData;
  /** v `[totalK, Hkv, D]`. */
  v: TensorData;
  /** Output `[totalQ, Hq, D]`, written row by row by the task that owns the row. */
  out: TensorData;
  /** float32 `[totalQ, Hq]`. */
  lse: Float32Array;
}

/** Backward tensors: inputs, a float64 dq accumulator, then outputs to fill. */
export interface BackwardBuffers {
  /** Gradient of out. */
  dout: TensorData;
  /** q. */
  q: TensorData;
  /** k. */
  k: TensorData;
  /** v. */
  v: TensorData;
  /** The forward's out. */
  out: TensorData;
  /** The forward's lse (float32). */
  lse: Float32Array;
  /** float64 `[totalQ, Hq, D]`, zero at the start: dq summed slice by slice before rounding. */
  dqAccumulator: Float64Array;
  /** Output dq. */
  dq: TensorData;
  /** Output dk. */
  dk: TensorData;
  /** Output dv. */
  dv: TensorData;
}

/** Forward work: query rows `[queryStart, queryEnd)` of every query head of kv head `kvHead`. */
export interface ForwardTask {
  /** Key/value head; its GQA group of query heads is processed together. */
  kvHead: number;
  /** First query row. */
  queryStart: number;
  /** One past the last query row. */
  queryEnd: number;
}

/**
 * Backward work for kv head `kvHead`: dq of query rows `[queryStart, queryEnd)` (when `dq`), dk/dv of keys
 * `[keyStart, keyEnd)` (when `dkdv`). A task with `dq` covers every key and one with `dkdv` every query row,
 * so each output element is written by exactly one task.
 */
export interface BackwardTask {
  /** Key/value head. */
  kvHead: number;
  /** First query row. */
  queryStart: number;
  /** One past the last query row. */
  queryEnd: number;
  /** First key. */
  keyStart: number;
  /** One past the last key. */
  keyEnd: number;
  /** Compute dq of the task's query rows. */
  dq: boolean;
  /** Compute dk and dv of the task's keys. */
  dkdv: boolean;
}

/** Rows (query row × GQA head) per block: the `n` of the score products, near the micro-kernel's sweet spot. */
const BLOCK_ROWS = 64;
const BYTES = 8;

interface GemmExports {
  memory: WebAssembly.Memory;
  gemm: (
    m: number,
    n: number,
    k: number,
    a: number,
    aRow: number,
    aK: number,
    b: number,
    ldb: number,
    c: number,
    ldc: number,
    accumulate: number,
  ) => void;
  /** `p[i] = exp(p[i] − shift)` for n float64 at byte address p; returns their sum in index order. */
  exp_sum: (p: number, n: number, shift: number) => number;
  /** The backward row without softcap (see gradientRow), at byte addresses p and g. */
  gradient_row: (p: number, g: number, n: number, scale: number, lse: number, delta: number) => void;
}

let compiledModule: WebAssembly.Module | undefined;

function gemmModule(): WebAssembly.Module {
  if (!compiledModule) {
    const binary = atob(GEMM_WASM_BASE64);
    const bytes = new Uint8Array(binary.length);
    for (let index = 0; index < binary.length; index++) bytes[index] = binary.charCodeAt(index);
    compiledModule = new WebAssembly.Module(bytes);
  }
  return compiledModule;
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

/** Reads element `index` of raw tensor data as the float32 value it encodes. */
type ElementReader = (data: TensorData, index: number) => number;

const bf16Scratch = new Uint32Array(1);
const bf16ScratchFloat = new Float32Array(bf16Scratch.buffer);

function readerFor(dtype: DType): ElementReader {
  if (dtype !== "bfloat16") return (data, index) => data[index];
  return (data, index) => {
    bf16Scratch[0] = data[index] << 16;
    return bf16ScratchFloat[0];
  };
}

/** Writes a float64 value into raw tensor data, rounding like `fromFloat32` does. */
type ElementWriter = (data: TensorData, index: number, value: number) => void;

function writerFor(dtype: DType): ElementWriter {
  if (dtype !== "bfloat16") {
    return (data, index, value) => {
      data[index] = value;
    };
  }
  return (data, index, value) => {
    data[index] = float32ToBf16Bits(value);
  };
}

/** Bump allocator over the kernel's linear memory; views are refreshed after the memory grows. */
class Arena {
  readonly exports: GemmExports;
  private used = GEMM_HEAP_BASE;
  heap: Float64Array;

  constructor() {
    // The kernel's exp is correctly rounded, like Math.exp here; the few lanes whose rounding it cannot
    // decide quickly (and out-of-range arguments) call Math.exp itself.
    const instance = new WebAssembly.Instance(gemmModule(), { env: { exp: Math.exp } });
    this.exports = instance.exports as unknown as GemmExports;
    this.heap = new Float64Array(this.exports.memory.buffer);
  }

  /** Starts a new layout: every earlier allocation is released. */
  reset(): void {
    this.used = GEMM_HEAP_BASE;
  }

  /** Reserves `count` float64 values (16-byte aligned) and returns their byte address. */
  allocate(count: number): number {
    const address = this.used;
    this.used += roundUp(count * BYTES, 16);
    return address;
  }

  /** Grows the memory to hold everything allocated so far and refreshes the view. */
  commit(): void {
    const memory = this.exports.memory;
    if (memory.buffer.byteLength < this.used) {
      memory.grow(Math.ceil((this.used - memory.buffer.byteLength) / 65536));
    }
    this.heap = new Float64Array(memory.buffer);
  }
}

/** The visible key interval of each query row `[rowStart, rowEnd)` of one slice (`lo ≥ hi` when empty). */
export function sliceIntervals(
  problem: CpuProblem,
  slice: number,
  rowStart: number,
  rowEnd: number,
  lows: Int32Array,
  highs: Int32Array,
): void {
  const bounds = new Int32Array(2);
  const qStart = problem.qRanges[2 * slice];
  const qEnd = problem.qRanges[2 * slice + 1];
  const kStart = problem.kRanges[2 * slice];
  const kEnd = problem.kRanges[2 * slice + 1];
  const type = problem.attnTypeMap[slice];
  for (let row = rowStart; row < rowEnd; row++) {
    visibleInterval(type, row, qStart, qEnd, kStart, kEnd, bounds);
    lows[row - rowStart] = bounds[0];
    highs[row - rowStart] = bounds[1];
  }
}

/** One block of query rows inside one slice, with the key range its rows see (clipped to a task's keys). */
interface Block {
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
function planBlocks(
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
function keyWindow(blocks: readonly Block[]): { low: number; high: number } {
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
function loadKeys(
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
function loadRows(
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
    loadKeys(
      heap,
      frame.keysAt,
      frame.keysTAt,
      leading,
      k,
      read,
      problem,
      kvHead,
      window.low,
      window.high,
      paddedDim,
    );
    loadKeys(
      heap,
      frame.valuesAt,
      frame.valuesTAt,
      leading,
      v,
      read,
      problem,
      kvHead,
      window.low,
      window.high,
      paddedDim,
    );
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
    const gemm = arena.exports.gemm;

    for (const block of blocks) {
      const { rowStart, rowEnd, keyLow, keyHigh, lows, highs } = block;
      const rows = (rowEnd - rowStart) * group;
      const keys = keyHigh - keyLow;
      const stride = roundUp(keys, GEMM_COLUMN_MULTIPLE);
      loadRows(heap, queriesAt, buffers.q, read, problem, kvHead, rowStart, rowEnd, paddedDim);
      // Scores [rows, keys]: each the sequential dot product over d, as in the reference.
      gemm(
        rows,
        stride,
        headDim,
        queriesAt,
        paddedDim,
        1,
        keysTAt + (keyLow - window.low) * BYTES,
        leading,
        scoresAt,
        stride,
        0,
      );
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
      gemm(
        rows,
        paddedDim,
        keys,
        scoresAt,
        stride,
        1,
        valuesAt + (keyLow - window.low) * paddedDim * BYTES,
        paddedDim,
        accumulatorAt + rowBase * paddedDim * BYTES,
        paddedDim,
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
    const gemm = arena.exports.gemm;

    for (const block of blocks) {
      const { rowStart, rowEnd, keyLow, keyHigh, lows, highs } = block;
      const rows = (rowEnd - rowStart) * group;
      const keys = keyHigh - keyLow;
      const stride = roundUp(keys, GEMM_COLUMN_MULTIPLE);
      const keyShift = (keyLow - window.low) * BYTES;
      loadRows(heap, queriesAt, buffers.q, read, problem, kvHead, rowStart, rowEnd, paddedDim);
      loadRows(heap, doutAt, buffers.dout, read, problem, kvHead, rowStart, rowEnd, paddedDim);
      // Scores and dout·vᵀ, [rows, keys].
      gemm(
        rows,
        stride,
        headDim,
        queriesAt,
        paddedDim,
        1,
        keysTAt + keyShift,
        leading,
        probabilitiesAt,
        stride,
        0,
      );
      gemm(
        rows,
        stride,
        headDim,
        doutAt,
        paddedDim,
        1,
        valuesTAt + keyShift,
        leading,
        scoreGradsAt,
        stride,
        0,
      );
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
        gemm(
          keys,
          paddedDim,
          rows,
          probabilitiesAt,
          1,
          stride,
          doutAt,
          paddedDim,
          dvAt + keyOffset,
          paddedDim,
          1,
        );
        gemm(
          keys,
          paddedDim,
          rows,
          scoreGradsAt,
          1,
          stride,
          queriesAt,
          paddedDim,
          dkAt + keyOffset,
          paddedDim,
          1,
        );
      }
      if (task.dq) {
        // This slice's partial dq (keys ascending from 0, like the reference's dqRow), then one add.
        const keyOffset = (keyLow - window.low) * paddedDim * BYTES;
        gemm(
          rows,
          paddedDim,
          keys,
          scoreGradsAt,
          stride,
          1,
          keysAt + keyOffset,
          paddedDim,
          dqPartialAt,
          paddedDim,
          0,
        );
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
