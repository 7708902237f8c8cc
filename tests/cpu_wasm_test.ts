/**
 * The CPU path's WebAssembly kernel: the committed module is exactly what scripts/gen_cpu_wasm.ts generates
 * (reproducible), and its matrix product equals a scalar float64 loop bit for bit (sequential sums, no
 * fused multiply-add) for plain and transposed operands, row tails and both accumulate modes.
 */

import assert from "node:assert/strict";
import { GEMM_COLUMN_MULTIPLE, GEMM_WASM_BASE64 } from "../lib/cpu/gemm_wasm.ts";
import { seededRandom } from "../lib/tensor.ts";
import { assembleGemm, moduleText, OUTPUT_URL } from "../scripts/gen_cpu_wasm.ts";

Deno.test("lib/cpu/gemm_wasm.ts is what scripts/gen_cpu_wasm.ts generates", async () => {
  const generated = moduleText(await assembleGemm());
  assert.equal(await Deno.readTextFile(OUTPUT_URL), generated, "run scripts/gen_cpu_wasm.ts and commit");
});

type Gemm = (...args: number[]) => void;

function instantiate(): { gemm: Gemm; heap: () => Float64Array; memory: WebAssembly.Memory } {
  const bytes = Uint8Array.from(atob(GEMM_WASM_BASE64), (char) => char.charCodeAt(0));
  const exports = new WebAssembly.Instance(new WebAssembly.Module(bytes), {}).exports as {
    gemm: Gemm;
    memory: WebAssembly.Memory;
  };
  return { gemm: exports.gemm, memory: exports.memory, heap: () => new Float64Array(exports.memory.buffer) };
}

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
            const a = 0, b = 8 * 20000, c = 8 * 40000; // byte addresses
            const memoryView = heap();
            for (let index = 0; index < 60000; index++) memoryView[index] = (random() - 0.5) * 8;
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
