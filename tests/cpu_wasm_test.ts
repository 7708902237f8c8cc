/**
 * The CPU path's WebAssembly kernel: the committed module is exactly what scripts/gen_cpu_wasm.ts generates
 * (reproducible); its matrix product equals a scalar float64 loop bit for bit (sequential sums, no fused
 * multiply-add) for plain and transposed operands, row tails and both accumulate modes; its exp equals
 * Math.exp bit for bit.
 */

import assert from "node:assert/strict";
import { GEMM_COLUMN_MULTIPLE, GEMM_HEAP_BASE, GEMM_WASM_BASE64 } from "../lib/backends/cpu/gemm_wasm.ts";
import { seededRandom } from "../lib/core/tensor.ts";
import { assembleGemm, moduleText, OUTPUT_URL } from "../scripts/gen_cpu_wasm.ts";

Deno.test("lib/backends/cpu/gemm_wasm.ts is what scripts/gen_cpu_wasm.ts generates", async () => {
  const generated = moduleText(await assembleGemm());
  assert.equal(await Deno.readTextFile(OUTPUT_URL), generated, "run scripts/gen_cpu_wasm.ts and commit");
});

type Gemm = (...args: number[]) => void;

interface Kernel {
  gemm: Gemm;
  exp_pair: (x: number, y: number) => void;
  memory: WebAssembly.Memory;
}

/** The kernel, with Math.exp as its fallback import (counting the calls into `fallbacks.count`). */
function instantiate(fallbacks = { count: 0 }): Kernel & { heap: () => Float64Array } {
  const bytes = Uint8Array.from(atob(GEMM_WASM_BASE64), (char) => char.charCodeAt(0));
  const exp = (x: number) => {
    fallbacks.count++;
    return Math.exp(x);
  };
  const exports = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { exp } })
    .exports as unknown as Kernel;
  return { ...exports, heap: () => new Float64Array(exports.memory.buffer) };
}

Deno.test("the kernel's exp gives Math.exp's bits (correctly rounded), mostly without calling it", () => {
  const fallbacks = { count: 0 };
  const { exp_pair, heap } = instantiate(fallbacks);
  const slot = GEMM_HEAP_BASE / 8; // two inputs, then two outputs
  let checked = 0;
  const check = (first: number, second: number) => {
    const view = heap();
    view[slot] = first;
    view[slot + 1] = second;
    exp_pair(GEMM_HEAP_BASE, GEMM_HEAP_BASE + 16);
    for (const [x, y] of [[first, view[slot + 2]], [second, view[slot + 3]]]) {
      if (!Object.is(y, Math.exp(x))) assert.fail(`exp(${x}): kernel ${y}, Math.exp ${Math.exp(x)}`);
      checked++;
    }
  };
  const specials = [
    0,
    -0,
    1,
    -1,
    0.5,
    Math.LN2,
    -Math.LN2,
    1e-300,
    -1e-300,
    5e-324,
    2 ** -28,
    0.00542,
    -0.00543,
  ];
  const edges = [708, 709, 709.78, 710, -708.39, -708.4, -745.13, -746, Infinity, -Infinity, NaN];
  for (const first of [...specials, ...edges]) {
    for (const second of [...specials, ...edges]) check(first, second);
  }
  const random = seededRandom(2026);
  fallbacks.count = 0;
  // The range the softmax uses (x = s − max ≤ 0): the fast path decides nearly every lane.
  for (let index = 0; index < 200_000; index++) check(-random() * 50, -random() * 3);
  assert.ok(fallbacks.count < 0.01 * 400_000, `${fallbacks.count} of 400000 lanes fell back to Math.exp`);
  const bits = new BigUint64Array(1), value = new Float64Array(bits.buffer);
  for (let index = 0; index < 100_000; index++) {
    check((random() - 0.5) * 1500, (random() - 0.5) * 1e-4);
    bits[0] = BigInt(Math.floor(random() * 2 ** 32)) << 32n | BigInt(Math.floor(random() * 2 ** 32));
    check(value[0], -value[0]); // any bit pattern: NaNs, infinities, subnormals, huge values
  }
  assert.equal(checked, 2 * (24 * 24 + 200_000 + 200_000));
});

Deno.test("gemm equals the scalar float64 loop bit for bit", () => {
  const { gemm, heap, memory } = instantiate();
  memory.grow(64);
  const random = seededRandom(99);
  let cases = 0;
  for (const m of [1, 2, 3, 7, 64]) {
    for (const n of [GEMM_COLUMN_MULTIPLE, 3 * GEMM_COLUMN_MULTIPLE]) {
      for (const k of [0, 1, 5, 64]) {
        for (const transposedA of [false, true]) {
          for (const accumulate of [0, 1]) {
            const lda = transposedA ? m + 3 : k + 2; // padded leading dimensions
            const ldb = n + 5, ldc = n + 1;
            const aRow = transposedA ? 1 : lda, aK = transposedA ? lda : 1;
            const a = GEMM_HEAP_BASE, b = a + 8 * 20000, c = a + 8 * 40000; // byte addresses
            const memoryView = heap();
            for (let index = a / 8; index < a / 8 + 60000; index++) memoryView[index] = (random() - 0.5) * 8;
            const before = memoryView.slice(c / 8, c / 8 + m * ldc);
            gemm(m, n, k, a, aRow, aK, b, ldb, c, ldc, accumulate);
            const view = heap();
            for (let i = 0; i < m; i++) {
              for (let j = 0; j < n; j++) {
                let sum = accumulate ? before[i * ldc + j] : 0;
                for (let kk = 0; kk < k; kk++) {
                  sum += view[a / 8 + i * aRow + kk * aK] * view[b / 8 + kk * ldb + j];
                }
                const got = view[c / 8 + i * ldc + j];
                if (!Object.is(got, sum)) {
                  assert.fail(
                    `m=${m} n=${n} k=${k} T=${transposedA} acc=${accumulate}: C[${i}][${j}] ${got} ≠ ${sum}`,
                  );
                }
              }
              // Columns past n in the padded row are untouched.
              assert.equal(view[c / 8 + i * ldc + n], before[i * ldc + n]);
            }
            cases++;
          }
        }
      }
    }
  }
  assert.equal(cases, 5 * 2 * 4 * 2 * 2);
});
