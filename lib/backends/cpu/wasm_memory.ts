/**
 * The CPU kernels' WebAssembly side: the SIMD module of `gemm_wasm.ts`, a bump allocator over its linear
 * memory, element reads and writes in the tensors' dtypes, and the three matrix products the kernels use.
 * @module
 */

import { type DType, float32ToBf16Bits, type TensorData } from "../../core/tensor.ts";
import { GEMM_HEAP_BASE, GEMM_WASM_BASE64 } from "./gemm_wasm.ts";

/** Bytes per float64 value. */
export const BYTES = 8;

export interface GemmExports {
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

export function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

/** Reads element `index` of raw tensor data as the float32 value it encodes. */
export type ElementReader = (data: TensorData, index: number) => number;

const bf16Scratch = new Uint32Array(1);
const bf16ScratchFloat = new Float32Array(bf16Scratch.buffer);

export function readerFor(dtype: DType): ElementReader {
  if (dtype !== "bfloat16") return (data, index) => data[index];
  return (data, index) => {
    bf16Scratch[0] = data[index] << 16;
    return bf16ScratchFloat[0];
  };
}

/** Writes a float64 value into raw tensor data, rounding like `fromFloat32` does. */
export type ElementWriter = (data: TensorData, index: number, value: number) => void;

export function writerFor(dtype: DType): ElementWriter {
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
export class Arena {
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

/**
 * The three products of a task's blocks, each the wasm `gemm` (a sequential sum per output element) with
 * the task's sizes bound. `rows` are a block's rows (query row × GQA head), `keys` its key range, `stride`
 * the padded row length of its `[rows, keys]` tiles; windows hold the task's keys or values as float64,
 * natural `[keys, paddedDim]` or transposed `[D, leading]`.
 */
export class BlockProducts {
  constructor(
    private readonly gemm: GemmExports["gemm"],
    private readonly headDim: number,
    private readonly paddedDim: number,
    private readonly leading: number,
  ) {}

  /** `tile[rows, keys] = block[rows, D] · windowᵀ`: scores (q · kᵀ) and dout · vᵀ. */
  rowsByWindowT(rows: number, stride: number, blockAt: number, windowTAt: number, tileAt: number): void {
    const { headDim, paddedDim, leading } = this;
    this.gemm(rows, stride, headDim, blockAt, paddedDim, 1, windowTAt, leading, tileAt, stride, 0);
  }

  /** `target[rows, D] (+)= tile[rows, keys] · window[keys, D]`: P · v and dS · k. */
  tileByWindow(
    rows: number,
    keys: number,
    stride: number,
    tileAt: number,
    windowAt: number,
    targetAt: number,
    accumulate: number,
  ): void {
    const paddedDim = this.paddedDim;
    this.gemm(rows, paddedDim, keys, tileAt, stride, 1, windowAt, paddedDim, targetAt, paddedDim, accumulate);
  }

  /** `target[keys, D] += tileᵀ[keys, rows] · block[rows, D]`: Pᵀ · dout and dSᵀ · q. */
  tileTByRows(
    rows: number,
    keys: number,
    stride: number,
    tileAt: number,
    blockAt: number,
    targetAt: number,
  ): void {
    const paddedDim = this.paddedDim;
    this.gemm(keys, paddedDim, rows, tileAt, 1, stride, blockAt, paddedDim, targetAt, paddedDim, 1);
  }
}
