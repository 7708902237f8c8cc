/**
 * Generates `lib/cpu/gemm_wasm.ts`: the WebAssembly SIMD matrix-product kernel of the CPU path, as base64
 * bytes in a TypeScript module (so it loads from a file path, a remote URL or JSR without a separate fetch).
 *
 * The kernel is written here as WebAssembly text (built by the functions below) and assembled by wabt's
 * `wat2wasm`. The output is reproducible: the same source gives the same bytes, and
 * `tests/cpu_wasm_test.ts` checks that the committed module equals a fresh generation.
 *
 * Usage: `deno run --allow-read --allow-write scripts/gen_cpu_wasm.ts` (writes the module),
 * `... scripts/gen_cpu_wasm.ts --check` (exits 1 when the committed module is stale).
 * @module
 */

import wabtInit from "wabt";

/** Rows of C computed together by the micro-kernel (each row reuses the loaded B vectors). */
export const MICRO_ROWS = 3;
/** f64x2 vectors of C per row in the micro-kernel: `2 * MICRO_VECTORS` columns per step. */
export const MICRO_VECTORS = 3;
/** Columns of C per micro-kernel step; callers pad `n` to a multiple of this. */
export const MICRO_COLUMNS = 2 * MICRO_VECTORS;

/**
 * WebAssembly text of `gemm(m, n, k, a, aRow, aK, b, ldb, c, ldc, accumulate)`:
 * `C[i][j] (+)= Σ_kk A[i*aRow + kk*aK] * B[kk*ldb + j]` over float64, for i < m and j < n (n a multiple of
 * {@linkcode MICRO_COLUMNS}). a, b, c are byte addresses; strides count elements. Every C element sums its
 * products one at a time in increasing kk, starting from C (accumulate = 1) or from +0 (accumulate = 0),
 * with separate multiply and add (WebAssembly never fuses them): the same rounding as a scalar loop, which
 * is what keeps the CPU path bit-identical to the reference. A and B may be read transposed through the
 * strides; SIMD runs across j only.
 */
export function gemmWat(): string {
  const rows = MICRO_ROWS;
  const vectors = MICRO_VECTORS;
  const lines: string[] = [];
  const emit = (text: string) => lines.push(text);
  const acc = (row: number, vector: number) => `$c${row}_${vector}`;
  emit(`(module`);
  emit(`  (memory (export "memory") 1)`);
  emit(`  (func (export "gemm")`);
  emit(`    (param $m i32) (param $n i32) (param $k i32) (param $a i32) (param $aRow i32) (param $aK i32)`);
  emit(`    (param $b i32) (param $ldb i32) (param $c i32) (param $ldc i32) (param $accumulate i32)`);
  emit(`    (local $i i32) (local $j i32) (local $kk i32) (local $pa i32) (local $pb i32) (local $pc i32)`);
  emit(`    (local $aRowBytes i32) (local $aKBytes i32) (local $ldbBytes i32) (local $ldcBytes i32)`);
  emit(`    (local $rowsMain i32) (local $x v128)`);
  for (let row = 0; row < rows; row++) {
    for (let vector = 0; vector < vectors; vector++) emit(`    (local ${acc(row, vector)} v128)`);
  }
  for (let vector = 0; vector < vectors; vector++) emit(`    (local $b${vector} v128)`);
  emit(`    (local.set $aRowBytes (i32.shl (local.get $aRow) (i32.const 3)))`);
  emit(`    (local.set $aKBytes (i32.shl (local.get $aK) (i32.const 3)))`);
  emit(`    (local.set $ldbBytes (i32.shl (local.get $ldb) (i32.const 3)))`);
  emit(`    (local.set $ldcBytes (i32.shl (local.get $ldc) (i32.const 3)))`);
  emit(`    (local.set $rowsMain (i32.sub (local.get $m) (i32.rem_u (local.get $m) (i32.const ${rows}))))`);
  // Main part: `rows` rows at a time; then the remaining rows one at a time with the same arithmetic.
  emitRowLoop(emit, rows, vectors, "$rowsMain", "main");
  emitRowLoop(emit, 1, vectors, "$m", "tail");
  emit(`  )`);
  emit(`)`);
  return lines.join("\n") + "\n";
}

function emitRowLoop(
  emit: (text: string) => void,
  rows: number,
  vectors: number,
  rowLimit: string,
  label: string,
): void {
  const acc = (row: number, vector: number) => `$c${row}_${vector}`;
  const rowAddress = (base: string, stride: string, row: number) =>
    row === 0
      ? `(local.get ${base})`
      : `(i32.add (local.get ${base}) (i32.mul (local.get ${stride}) (i32.const ${row})))`;
  emit(`    (block $${label}_i_end (loop $${label}_i`);
  emit(`      (br_if $${label}_i_end (i32.ge_u (local.get $i) (local.get ${rowLimit})))`);
  emit(`      (local.set $j (i32.const 0))`);
  emit(`      (block $${label}_j_end (loop $${label}_j`);
  emit(`        (br_if $${label}_j_end (i32.ge_u (local.get $j) (local.get $n)))`);
  emit(
    `        (local.set $pc (i32.add (local.get $c) (i32.add (i32.mul (local.get $i) (local.get $ldcBytes)) ` +
      `(i32.shl (local.get $j) (i32.const 3)))))`,
  );
  emit(`        (if (local.get $accumulate) (then`);
  for (let row = 0; row < rows; row++) {
    for (let vector = 0; vector < vectors; vector++) {
      emit(
        `          (local.set ${acc(row, vector)} (v128.load offset=${vector * 16} ${
          rowAddress("$pc", "$ldcBytes", row)
        }))`,
      );
    }
  }
  emit(`        ) (else`);
  for (let row = 0; row < rows; row++) {
    for (let vector = 0; vector < vectors; vector++) {
      emit(`          (local.set ${acc(row, vector)} (f64x2.splat (f64.const 0)))`);
    }
  }
  emit(`        ))`);
  emit(`        (local.set $pa (i32.add (local.get $a) (i32.mul (local.get $i) (local.get $aRowBytes))))`);
  emit(`        (local.set $pb (i32.add (local.get $b) (i32.shl (local.get $j) (i32.const 3))))`);
  emit(`        (local.set $kk (i32.const 0))`);
  emit(`        (block $${label}_k_end (loop $${label}_k`);
  emit(`          (br_if $${label}_k_end (i32.ge_u (local.get $kk) (local.get $k)))`);
  for (let vector = 0; vector < vectors; vector++) {
    emit(`          (local.set $b${vector} (v128.load offset=${vector * 16} (local.get $pb)))`);
  }
  for (let row = 0; row < rows; row++) {
    emit(`          (local.set $x (f64x2.splat (f64.load ${rowAddress("$pa", "$aRowBytes", row)})))`);
    for (let vector = 0; vector < vectors; vector++) {
      emit(
        `          (local.set ${acc(row, vector)} (f64x2.add (local.get ${acc(row, vector)}) ` +
          `(f64x2.mul (local.get $x) (local.get $b${vector}))))`,
      );
    }
  }
  emit(`          (local.set $pa (i32.add (local.get $pa) (local.get $aKBytes)))`);
  emit(`          (local.set $pb (i32.add (local.get $pb) (local.get $ldbBytes)))`);
  emit(`          (local.set $kk (i32.add (local.get $kk) (i32.const 1)))`);
  emit(`          (br $${label}_k)))`);
  for (let row = 0; row < rows; row++) {
    for (let vector = 0; vector < vectors; vector++) {
      emit(
        `        (v128.store offset=${vector * 16} ${rowAddress("$pc", "$ldcBytes", row)} (local.get ${
          acc(row, vector)
        }))`,
      );
    }
  }
  emit(`        (local.set $j (i32.add (local.get $j) (i32.const ${2 * vectors})))`);
  emit(`        (br $${label}_j)))`);
  emit(`      (local.set $i (i32.add (local.get $i) (i32.const ${rows})))`);
  emit(`      (br $${label}_i)))`);
}

/** Assembles {@linkcode gemmWat} into WebAssembly bytes. */
export async function assembleGemm(): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const parsed = wabt.parseWat("gemm.wat", gemmWat(), { simd: true });
  try {
    parsed.resolveNames();
    parsed.validate();
    return new Uint8Array(parsed.toBinary({ log: false, write_debug_names: false }).buffer);
  } finally {
    parsed.destroy();
  }
}

/** The text of `lib/cpu/gemm_wasm.ts` for the given bytes (wrapped at 100 characters a line). */
export function moduleText(bytes: Uint8Array): string {
  const base64 = btoa(Array.from(bytes, (byte) => String.fromCharCode(byte)).join(""));
  const chunks: string[] = [];
  for (let offset = 0; offset < base64.length; offset += 100) chunks.push(base64.slice(offset, offset + 100));
  return [
    "// Generated by scripts/gen_cpu_wasm.ts from the WebAssembly text it builds; do not edit.",
    "// Regenerate: deno run --allow-read --allow-write scripts/gen_cpu_wasm.ts",
    "",
    "/** The CPU path's float64 SIMD matrix-product kernel (WebAssembly bytes, base64). */",
    "export const GEMM_WASM_BASE64: string = [",
    ...chunks.map((chunk) => `  "${chunk}",`),
    '].join("");',
    "",
    `/** Micro-kernel columns: callers pad the \`n\` of every product to a multiple of this. */`,
    `export const GEMM_COLUMN_MULTIPLE = ${MICRO_COLUMNS};`,
    "",
  ].join("\n");
}

/** Where the generated module lives. */
export const OUTPUT_URL: URL = new URL("../lib/cpu/gemm_wasm.ts", import.meta.url);

if (import.meta.main) {
  const text = moduleText(await assembleGemm());
  if (Deno.args.includes("--check")) {
    const current = await Deno.readTextFile(OUTPUT_URL);
    if (current !== text) {
      console.error(
        "lib/cpu/gemm_wasm.ts is stale: run deno run --allow-read --allow-write scripts/gen_cpu_wasm.ts",
      );
      Deno.exit(1);
    }
    console.log("lib/cpu/gemm_wasm.ts is up to date");
  } else {
    await Deno.writeTextFile(OUTPUT_URL, text);
    console.log(`wrote ${OUTPUT_URL.pathname}`);
  }
}
