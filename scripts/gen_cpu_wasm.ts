/**
 * Generates `lib/backends/cpu/gemm_wasm.ts`: the WebAssembly SIMD matrix-product kernel of the CPU path, as base64
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
  emit(`  (import "env" "exp" (func $mathExp (param f64) (result f64)))`);
  emit(`  (memory (export "memory") 1)`);
  emit(`  (data (i32.const 0) "${expTableBytes()}")`);
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
  for (const line of expWat()) emit(line);
  for (const line of constantDeclarations()) emit(line);
  emit(`)`);
  return lines.join("\n") + "\n";
}

/** Bytes at the start of the kernel's memory that hold the exp table; the CPU path allocates after them. */
export const HEAP_BASE = 64 * 4 * 8;

/** ln 2 as a fixed-point BigInt scaled by 2^SCALE_BITS (Σ 1/(k·2^k), far more bits than needed). */
const SCALE_BITS = 240n;
function ln2Fixed(): bigint {
  const one = 1n << SCALE_BITS;
  let sum = 0n;
  for (let k = 1n; k < 300n; k++) sum += one / (k << k);
  return sum;
}

/** The double nearest to `value / 2^SCALE_BITS` (Number(bigint) rounds to nearest, ties to even). */
function toDouble(value: bigint): number {
  return Number(value) / 2 ** Number(SCALE_BITS);
}

/** The exact fixed-point value of a double (which is a dyadic rational). */
function fromDouble(value: number): bigint {
  return BigInt(value * 2 ** 64) << (SCALE_BITS - 64n);
}

/** `2^(j/64)` for j < 64 as fixed point: Newton's method for the 64th root of 2, then powers. */
function twoToTheJOver64(): bigint[] {
  const one = 1n << SCALE_BITS;
  const two = 2n << SCALE_BITS;
  let root = one + (one >> 6n); // 2^(1/64) ≈ 1.011
  const power = (base: bigint, exponent: number) => {
    let result = one;
    for (let index = 0; index < exponent; index++) result = (result * base) >> SCALE_BITS;
    return result;
  };
  for (let step = 0; step < 12; step++) {
    root = root - ((power(root, 64) - two) << SCALE_BITS) / (64n * power(root, 63));
  }
  return Array.from({ length: 64 }, (_, j) => power(root, j));
}

/** Veltkamp's split of a double into two halves of 26 significant bits whose sum is exact. */
function split(value: number): [number, number] {
  const scaled = 134217729 * value;
  const high = scaled - (scaled - value);
  return [high, value - high];
}

/**
 * The exp table: for j < 64, `2^(j/64)` as a double-double (hi, lo) and hi split in two halves for exact
 * products, as four float64 values per entry, little-endian, escaped for a WebAssembly data segment.
 */
function expTableBytes(): string {
  const values: number[] = [];
  for (const exact of twoToTheJOver64()) {
    const high = toDouble(exact);
    const low = toDouble(exact - fromDouble(high));
    values.push(high, low, ...split(high));
  }
  const bytes = new Uint8Array(new Float64Array(values).buffer);
  return Array.from(bytes, (byte) => `\\${byte.toString(16).padStart(2, "0")}`).join("");
}

/**
 * Constants of the exp as immutable v128 globals (read with one load; a v128.const at each use is rebuilt
 * from immediates every time), each two equal f64 lanes written by its bits.
 */
const constantGlobals = new Map<string, string>();

function f64Splat(value: number): string {
  const bits = new BigUint64Array(new Float64Array([value]).buffer)[0];
  return i64Constant(bits);
}

function i64Constant(bits: bigint): string {
  const literal = `0x${BigInt.asUintN(64, bits).toString(16)}`;
  let name = constantGlobals.get(literal);
  if (!name) {
    name = `$constant${constantGlobals.size}`;
    constantGlobals.set(literal, name);
  }
  return `(global.get ${name})`;
}

/** The declarations of the constants {@linkcode f64Splat} and {@linkcode i64Constant} handed out. */
function constantDeclarations(): string[] {
  return [...constantGlobals].map(([literal, name]) =>
    `  (global ${name} v128 (v128.const i64x2 ${literal} ${literal}))`
  );
}

/**
 * A correctly rounded exp, two lanes at a time, so its bits equal `Math.exp`'s wherever that is correctly
 * rounded (as in the V8 of Deno 2.9; tests/cpu_wasm_test.ts checks). x = n ln2/64 + r with |r| ≤ ln2/128
 * (ln2/64 split so n·hi is exact), exp(r) = 1 + m by a degree-7 polynomial in double-double, times the
 * table's 2^(j/64) (n = 64k + j) with an exact product: the result y_hi + y_lo is within 2^-65 of exp(x)
 * relative. If y_hi + (y_lo ± 2^-62 y_hi) round to the same double, that double is the correctly rounded
 * result, times 2^k exactly (x is kept where the result is a normal number); otherwise (about 1 lane in
 * 500, and x outside (−708.39, 709), NaN, ±∞) the lane calls the imported Math.exp.
 */
function expWat(): string[] {
  const ln2 = ln2Fixed() / 64n;
  // ln2/64 ≈ 2^-6.5: keep 36 significant bits (n < 2^17, so n · hi is exact in 53 bits).
  const ln2High = toDouble((ln2 >> (SCALE_BITS - 42n)) << (SCALE_BITS - 42n));
  const ln2Low = toDouble(ln2 - fromDouble(ln2High));
  const inverse = toDouble((64n << (2n * SCALE_BITS)) / ln2Fixed());
  const shift = 6755399441055744; // 1.5 · 2^52: adding it rounds |t| < 2^51 to an integer
  const get = (name: string) => `(local.get $${name})`;
  const add = (a: string, b: string) => `(f64x2.add ${a} ${b})`;
  const sub = (a: string, b: string) => `(f64x2.sub ${a} ${b})`;
  const mul = (a: string, b: string) => `(f64x2.mul ${a} ${b})`;
  const lane = (index: number) => [
    `      (if (i64.eqz (i64x2.extract_lane ${index} ${get("ok")})) (then`,
    `        (local.set $result (f64x2.replace_lane ${index} ${
      get("result")
    } (call $mathExp (f64x2.extract_lane ${index} ${get("x")}))))))`,
  ];
  const tableLoad = (field: number) =>
    `(f64x2.replace_lane 1 (f64x2.splat (f64.load offset=${field * 8} ${get("entry0")})) (f64.load offset=${
      field * 8
    } ${get("entry1")}))`;
  const polynomial = [1 / 5040, 1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2].reduce(
    (inner, coefficient, index) =>
      index === 0 ? f64Splat(coefficient) : add(f64Splat(coefficient), mul(get("rHi"), inner)),
    "",
  );
  return [
    `  (func $exp2 (param $x v128) (result v128)`,
    `    (local $kd v128) (local $n v128) (local $rHi0 v128) (local $t2 v128) (local $rHi v128) (local $rLo v128)`,
    `    (local $bb v128) (local $mLo v128) (local $entry0 i32) (local $entry1 i32) (local $tHi v128)`,
    `    (local $tLo v128) (local $thHigh v128) (local $thLow v128) (local $c v128) (local $mh v128)`,
    `    (local $ml v128) (local $pHi v128) (local $pLo v128) (local $yHi v128) (local $yLo v128)`,
    `    (local $margin v128) (local $result v128) (local $ok v128)`,
    // n = round(x · 64/ln2); j = n mod 64 picks the table entry, k = floor(n / 64) the power of two.
    `    (local.set $kd ${add(mul(get("x"), f64Splat(inverse)), f64Splat(shift))})`,
    `    (local.set $n (i64x2.sub ${get("kd")} ${f64Splat(shift)}))`,
    `    (local.set $kd ${sub(get("kd"), f64Splat(shift))})`,
    // r = x − n·ln2/64 as a double-double (rHi0 is exact; TwoSum keeps what subtracting n·lo rounds off).
    `    (local.set $rHi0 ${sub(get("x"), mul(get("kd"), f64Splat(ln2High)))})`,
    `    (local.set $t2 (f64x2.neg ${mul(get("kd"), f64Splat(ln2Low))}))`,
    `    (local.set $rHi ${add(get("rHi0"), get("t2"))})`,
    `    (local.set $bb ${sub(get("rHi"), get("rHi0"))})`,
    `    (local.set $rLo ${add(sub(get("rHi0"), sub(get("rHi"), get("bb"))), sub(get("t2"), get("bb")))})`,
    // exp(r) − 1 = m = rHi + mLo, mLo = rLo + rHi·rLo + rHi²(1/2 + rHi/6 + … + rHi⁵/5040).
    `    (local.set $mLo ${
      add(get("rLo"), add(mul(get("rHi"), get("rLo")), mul(mul(get("rHi"), get("rHi")), polynomial)))
    })`,
    `    (local.set $entry0 (i32.shl (i32.and (i32x4.extract_lane 0 ${
      get("n")
    }) (i32.const 63)) (i32.const 5)))`,
    `    (local.set $entry1 (i32.shl (i32.and (i32x4.extract_lane 2 ${
      get("n")
    }) (i32.const 63)) (i32.const 5)))`,
    `    (local.set $tHi ${tableLoad(0)})`,
    `    (local.set $tLo ${tableLoad(1)})`,
    `    (local.set $thHigh ${tableLoad(2)})`,
    `    (local.set $thLow ${tableLoad(3)})`,
    // tHi · rHi exactly (Dekker's product; tHi's halves come from the table).
    `    (local.set $c ${mul(f64Splat(134217729), get("rHi"))})`,
    `    (local.set $mh ${sub(get("c"), sub(get("c"), get("rHi")))})`,
    `    (local.set $ml ${sub(get("rHi"), get("mh"))})`,
    `    (local.set $pHi ${mul(get("tHi"), get("rHi"))})`,
    `    (local.set $pLo ${
      add(
        add(
          add(sub(mul(get("thHigh"), get("mh")), get("pHi")), mul(get("thHigh"), get("ml"))),
          mul(get("thLow"), get("mh")),
        ),
        mul(get("thLow"), get("ml")),
      )
    })`,
    // y = T·(1 + m) = tHi + pHi + (pLo + tHi·mLo + tLo + tLo·rHi), the first sum exact (|pHi| < tHi).
    `    (local.set $yHi ${add(get("tHi"), get("pHi"))})`,
    `    (local.set $yLo ${
      add(
        add(sub(get("tHi"), get("yHi")), get("pHi")),
        add(get("pLo"), add(mul(get("tHi"), get("mLo")), add(get("tLo"), mul(get("tLo"), get("rHi"))))),
      )
    })`,
    `    (local.set $margin ${mul(get("yHi"), f64Splat(2 ** -62))})`,
    `    (local.set $result ${add(get("yHi"), sub(get("yLo"), get("margin")))})`,
    `    (local.set $ok (f64x2.eq ${get("result")} ${add(get("yHi"), add(get("yLo"), get("margin")))}))`,
    `    (local.set $ok (v128.and ${get("ok")} (v128.and (f64x2.gt ${get("x")} ${
      f64Splat(-708.39)
    }) (f64x2.lt ${get("x")} ${f64Splat(709)}))))`,
    // Times 2^k, k = floor(n / 64): its exponent bits are (n − j) · 2^46 + 1023 · 2^52 (no 64-bit shift right).
    `    (local.set $result ${
      mul(
        get("result"),
        `(i64x2.add (i64x2.shl (v128.and ${get("n")} ${i64Constant(-64n)}) (i32.const 46)) ${
          i64Constant(1023n << 52n)
        })`,
      )
    })`,
    `    (if (i32.eqz (i64x2.all_true ${get("ok")})) (then`,
    ...lane(0),
    ...lane(1),
    `    ))`,
    `    ${get("result")})`,
    `  (func (export "exp_pair") (param $x i32) (param $y i32)`,
    `    (v128.store (local.get $y) (call $exp2 (v128.load (local.get $x)))))`,
    `  (func (export "exp_sum") (param $p i32) (param $n i32) (param $shift f64) (result f64)`,
    `    (local $end i32) (local $shiftVector v128) (local $weights v128) (local $sum f64)`,
    `    (local.set $shiftVector (f64x2.splat (local.get $shift)))`,
    `    (local.set $end (i32.add (local.get $p) (i32.shl (i32.and (local.get $n) (i32.const -2)) (i32.const 3))))`,
    `    (block $done (loop $next`,
    `      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))`,
    `      (local.set $weights (call $exp2 (f64x2.sub (v128.load (local.get $p)) (local.get $shiftVector))))`,
    `      (v128.store (local.get $p) (local.get $weights))`,
    `      (local.set $sum (f64.add (local.get $sum) (f64x2.extract_lane 0 (local.get $weights))))`,
    `      (local.set $sum (f64.add (local.get $sum) (f64x2.extract_lane 1 (local.get $weights))))`,
    `      (local.set $p (i32.add (local.get $p) (i32.const 16)))`,
    `      (br $next)))`,
    `    (if (i32.and (local.get $n) (i32.const 1)) (then`,
    `      (local.set $weights (call $exp2 (f64x2.splat (f64.sub (f64.load (local.get $p)) (local.get $shift)))))`,
    `      (f64.store (local.get $p) (f64x2.extract_lane 0 (local.get $weights)))`,
    `      (local.set $sum (f64.add (local.get $sum) (f64x2.extract_lane 0 (local.get $weights))))))`,
    `    (local.get $sum))`,
    `  (func (export "gradient_row") (param $p i32) (param $g i32) (param $n i32) (param $scale f64)`,
    `    (param $lse f64) (param $delta f64)`,
    `    (local $end i32) (local $scaleVector v128) (local $lseVector v128) (local $deltaVector v128)`,
    `    (local $probabilities v128) (local $probability f64)`,
    `    (local.set $scaleVector (f64x2.splat (local.get $scale)))`,
    `    (local.set $lseVector (f64x2.splat (local.get $lse)))`,
    `    (local.set $deltaVector (f64x2.splat (local.get $delta)))`,
    `    (local.set $end (i32.add (local.get $p) (i32.shl (i32.and (local.get $n) (i32.const -2)) (i32.const 3))))`,
    `    (block $done (loop $next`,
    `      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))`,
    `      (local.set $probabilities (call $exp2 (f64x2.sub (f64x2.mul (v128.load (local.get $p)) (local.get $scaleVector)) (local.get $lseVector))))`,
    `      (v128.store (local.get $p) (local.get $probabilities))`,
    `      (v128.store (local.get $g) (f64x2.mul (f64x2.mul (local.get $probabilities) (f64x2.sub (v128.load (local.get $g)) (local.get $deltaVector))) (local.get $scaleVector)))`,
    `      (local.set $p (i32.add (local.get $p) (i32.const 16)))`,
    `      (local.set $g (i32.add (local.get $g) (i32.const 16)))`,
    `      (br $next)))`,
    `    (if (i32.and (local.get $n) (i32.const 1)) (then`,
    `      (local.set $probability (f64x2.extract_lane 0 (call $exp2 (f64x2.splat (f64.sub (f64.mul (f64.load (local.get $p)) (local.get $scale)) (local.get $lse))))))`,
    `      (f64.store (local.get $p) (local.get $probability))`,
    `      (f64.store (local.get $g) (f64.mul (f64.mul (local.get $probability) (f64.sub (f64.load (local.get $g)) (local.get $delta))) (local.get $scale))))))`,
  ];
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

/** The text of `lib/backends/cpu/gemm_wasm.ts` for the given bytes (wrapped at 100 characters a line). */
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
    `/** Bytes at the start of the kernel's memory that its exp table uses: allocate after them. */`,
    `export const GEMM_HEAP_BASE = ${HEAP_BASE};`,
    "",
  ].join("\n");
}

/** Where the generated module lives. */
export const OUTPUT_URL: URL = new URL("../lib/backends/cpu/gemm_wasm.ts", import.meta.url);

if (import.meta.main) {
  const text = moduleText(await assembleGemm());
  if (Deno.args.includes("--check")) {
    const current = await Deno.readTextFile(OUTPUT_URL);
    if (current !== text) {
      console.error(
        "lib/backends/cpu/gemm_wasm.ts is stale: run deno run --allow-read --allow-write scripts/gen_cpu_wasm.ts",
      );
      Deno.exit(1);
    }
    console.log("lib/backends/cpu/gemm_wasm.ts is up to date");
  } else {
    await Deno.writeTextFile(OUTPUT_URL, text);
    console.log(`wrote ${OUTPUT_URL.pathname}`);
  }
}
