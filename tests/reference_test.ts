/**
 * The CPU reference FFA against the dense float64 oracle (tests/support/oracle.ts) and finite differences
 * (the shared argument validation: tests/reference_validation_test.ts).
 */

import assert from "node:assert/strict";
import { referenceBackward, referenceForward } from "../lib/backends/reference.ts";
import {
  type DType,
  type HostTensor,
  randomTensor,
  seededRandom,
  tensor,
  toFloat32,
} from "../lib/core/tensor.ts";
import type { FlexKey } from "../lib/core/types.ts";
import {
  denseAttentionBackwardOracle,
  denseAttentionOracle,
  type Float64Tensor,
  maxAbsDiff,
  relativeError,
  type Visibility,
} from "./support/oracle.ts";
import { handMadeKey } from "./support/fixtures.ts";
import { coverCounts, denseFromPredicate } from "./support/mask_check.ts";

const FULL = 0;
const CAUSAL = 1;
const INVCAUSAL = 2;
const BICAUSAL = 3;

/** One slice written by hand: `[qStart, qEnd, kStart, kEnd, type]`. */
type Slice = readonly [number, number, number, number, number];

/** Dense mask straight from the type table of docs/semantics.md, cell by cell (counts cells covered twice). */
function sliceMask(slices: readonly Slice[], totalQ: number, totalK: number): Uint8Array {
  return coverCounts(slices, totalQ, totalK);
}

interface CaseSpec {
  totalQ: number;
  totalK: number;
  headsQ?: number;
  headsKV?: number;
  headDim?: number;
  slices: readonly Slice[];
  /** The mask stated independently of the slices; when given it must equal the slices' mask. */
  visible?: (i: number, j: number) => boolean;
  dtype?: DType;
  softcap?: number;
  softmaxScale?: number;
  seed?: number;
}

interface Tolerances {
  out: number;
  lse: number;
  grads: number;
}

// The oracle sees the same (rounded) inputs, so the error is the rounding of the outputs to the dtype;
// lse is always float32 from float64 accumulators.
const FP32_TOL: Tolerances = { out: 1e-5, lse: 1e-6, grads: 1e-5 };
const BF16_TOL: Tolerances = { out: 1e-2, lse: 1e-6, grads: 1e-2 };
const FP16_TOL: Tolerances = { out: 2e-3, lse: 1e-6, grads: 2e-3 };

function toleranceFor(dtype: DType): Tolerances {
  return dtype === "float32" ? FP32_TOL : dtype === "bfloat16" ? BF16_TOL : FP16_TOL;
}

interface CaseResult {
  key: FlexKey;
  mask: Uint8Array;
  q: HostTensor;
  k: HostTensor;
  v: HostTensor;
  dout: HostTensor;
  out: Float32Array;
  lse: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
}

/** Runs forward and backward of one case and checks both against the dense float64 oracle. */
function checkCase(spec: CaseSpec, tolerances?: Tolerances): CaseResult {
  const { totalQ, totalK, headsQ = 2, headsKV = headsQ, headDim = 8, dtype = "float32", seed = 1 } = spec;
  const key = handMadeKey(spec.slices, totalQ, totalK);
  const mask = sliceMask(spec.slices, totalQ, totalK);
  assert.ok(mask.every((cell) => cell <= 1), "test slices must be area-disjoint");
  if (spec.visible) {
    assert.deepEqual(
      mask,
      denseFromPredicate(spec.visible, totalQ, totalK),
      "slices and the stated mask disagree",
    );
  }
  const q = randomTensor([totalQ, headsQ, headDim], { seed, dtype });
  const k = randomTensor([totalK, headsKV, headDim], { seed: seed + 1, dtype });
  const v = randomTensor([totalK, headsKV, headDim], { seed: seed + 2, dtype });
  const dout = randomTensor([totalQ, headsQ, headDim], { seed: seed + 3, dtype });
  const opts = { softcap: spec.softcap, softmaxScale: spec.softmaxScale };
  const oracleOpts = {
    softcap: spec.softcap ?? 0,
    softmaxScale: spec.softmaxScale ?? 1 / Math.sqrt(headDim),
  };
  const tol = tolerances ?? toleranceFor(dtype);

  const forward = referenceForward(q, k, v, key, opts);
  assert.equal(forward.out.dtype, dtype);
  assert.deepEqual(forward.out.shape, [totalQ, headsQ, headDim]);
  assert.equal(forward.lse.dtype, "float32");
  assert.deepEqual(forward.lse.shape, [totalQ, headsQ]);
  const expected = denseAttentionOracle(q, k, v, mask, oracleOpts);
  const out = toFloat32(forward.out);
  const lse = forward.lse.data as Float32Array;
  const outError = relativeError(out, expected.out);
  assert.ok(outError <= tol.out, `out relative error ${outError} > ${tol.out}`);
  const lseError = relativeError(lse, expected.lse);
  assert.ok(lseError <= tol.lse, `lse relative error ${lseError} > ${tol.lse}`);

  const grads = referenceBackward(dout, q, k, v, forward.out, forward.lse, key, opts);
  for (const [grad, like] of [[grads.dq, q], [grads.dk, k], [grads.dv, v]] as const) {
    assert.equal(grad.dtype, like.dtype);
    assert.deepEqual(grad.shape, like.shape);
  }
  const expectedGrads = denseAttentionBackwardOracle(dout, q, k, v, mask, oracleOpts);
  const dq = toFloat32(grads.dq);
  const dk = toFloat32(grads.dk);
  const dv = toFloat32(grads.dv);
  for (
    const [name, actual, wanted] of [
      ["dq", dq, expectedGrads.dq],
      ["dk", dk, expectedGrads.dk],
      ["dv", dv, expectedGrads.dv],
    ] as const
  ) {
    const error = relativeError(actual, wanted);
    assert.ok(error <= tol.grads, `${name} relative error ${error} > ${tol.grads}`);
  }
  return { key, mask, q, k, v, dout, out, lse, dq, dk, dv };
}

/** Bottom-right causal: key j visible from query i iff j ≤ i + (Lk − Lq). */
const bottomRightCausal = (lq: number, lk: number) => (i: number, j: number) => j <= i + (lk - lq);
/** Top-left inverse causal: key j visible from query i iff j ≥ i. */
const topLeftInvCausal = () => (i: number, j: number) => j >= i;

Deno.test("referenceForward/Backward match the dense float64 oracle", async (t) => {
  await t.step("full, Lq ≠ Lk", () => {
    checkCase({ totalQ: 13, totalK: 21, slices: [[0, 13, 0, 21, FULL]], visible: () => true });
  });
  await t.step("causal, Lq = Lk", () => {
    checkCase({ totalQ: 24, totalK: 24, slices: [[0, 24, 0, 24, CAUSAL]], visible: (i, j) => j <= i });
  });
  await t.step("causal, Lq < Lk (bottom-right)", () => {
    checkCase({ totalQ: 9, totalK: 20, slices: [[0, 9, 0, 20, CAUSAL]], visible: bottomRightCausal(9, 20) });
  });
  await t.step("causal, Lq > Lk (bottom-right: the first Lq − Lk rows are empty)", () => {
    const result = checkCase({
      totalQ: 20,
      totalK: 9,
      slices: [[0, 20, 0, 9, CAUSAL]],
      visible: bottomRightCausal(20, 9),
    });
    assertEmptyRows(result, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });
  await t.step("inv_causal, Lq = Lk, Lq < Lk and Lq > Lk (top-left)", () => {
    checkCase({ totalQ: 16, totalK: 16, slices: [[0, 16, 0, 16, INVCAUSAL]], visible: topLeftInvCausal() });
    checkCase({ totalQ: 7, totalK: 15, slices: [[0, 7, 0, 15, INVCAUSAL]], visible: topLeftInvCausal() });
    const result = checkCase({
      totalQ: 15,
      totalK: 7,
      slices: [[0, 15, 0, 7, INVCAUSAL]],
      visible: topLeftInvCausal(),
    });
    assertEmptyRows(result, [7, 8, 9, 10, 11, 12, 13, 14]);
  });
  await t.step("bi_causal band, Lq < Lk and Lq = Lk (diagonal only)", () => {
    checkCase({
      totalQ: 8,
      totalK: 19,
      slices: [[0, 8, 0, 19, BICAUSAL]],
      visible: (i, j) => j >= i && j <= i + 11,
    });
    checkCase({ totalQ: 10, totalK: 10, slices: [[0, 10, 0, 10, BICAUSAL]], visible: (i, j) => i === j });
  });
  await t.step("bi_causal with Lq > Lk is an empty band", () => {
    const result = checkCase({
      totalQ: 12,
      totalK: 5,
      slices: [[0, 12, 0, 5, BICAUSAL]],
      visible: () => false,
    });
    assertEmptyRows(result, Array.from({ length: 12 }, (_, i) => i));
    assert.ok(result.dk.every((x) => x === 0) && result.dv.every((x) => x === 0));
  });
  await t.step("slices offset inside larger totals (packed documents, Lq ≠ Lk per document)", () => {
    // Document A: q [0,5) over k [0,7); document B: q [5,12) over k [7,10); both causal.
    const inA = (i: number, j: number) => i < 5 && j < 7 && j <= i + 2;
    const inB = (i: number, j: number) => i >= 5 && j >= 7 && j - 7 <= (i - 5) - 4;
    checkCase({
      totalQ: 12,
      totalK: 10,
      slices: [[0, 5, 0, 7, CAUSAL], [5, 12, 7, 10, CAUSAL]],
      visible: (i, j) => inA(i, j) || inB(i, j),
    });
  });
  await t.step("sliding window as causal + bi_causal slices", () => {
    // Window (2, 0) over 10 tokens: key j visible from i iff i − 2 ≤ j ≤ i.
    checkCase({
      totalQ: 10,
      totalK: 10,
      slices: [[0, 2, 0, 2, CAUSAL], [2, 10, 0, 10, BICAUSAL]],
      visible: (i, j) => j <= i && j >= i - 2,
    });
    // Window (2, 3): i − 2 ≤ j ≤ i + 3.
    checkCase({
      totalQ: 10,
      totalK: 10,
      slices: [[0, 2, 0, 5, CAUSAL], [2, 7, 0, 10, BICAUSAL], [7, 10, 5, 10, INVCAUSAL]],
      visible: (i, j) => j >= i - 2 && j <= i + 3,
    });
  });
  await t.step("GQA (Hq = 4, Hkv = 2) and MQA (Hq = 4, Hkv = 1)", () => {
    const slices: Slice[] = [[0, 14, 0, 14, CAUSAL]];
    checkCase({ totalQ: 14, totalK: 14, headsQ: 4, headsKV: 2, slices, visible: (i, j) => j <= i, seed: 5 });
    checkCase({ totalQ: 14, totalK: 14, headsQ: 4, headsKV: 1, slices, visible: (i, j) => j <= i, seed: 6 });
  });
  await t.step("softcap (forward and backward) actually changes the result", () => {
    const slices: Slice[] = [[0, 11, 0, 11, CAUSAL]];
    const capped = checkCase({ totalQ: 11, totalK: 11, slices, softcap: 1.5, softmaxScale: 1, seed: 9 });
    const plain = checkCase({ totalQ: 11, totalK: 11, slices, softmaxScale: 1, seed: 9 });
    assert.ok(relativeError(capped.out, plain.out) > 0.05, "softcap 1.5 should change out");
    assert.ok(relativeError(capped.dq, plain.dq) > 0.05, "softcap 1.5 should change dq");
  });
  await t.step("a non-default softmaxScale", () => {
    checkCase({ totalQ: 9, totalK: 9, slices: [[0, 9, 0, 9, FULL]], softmaxScale: 0.9 });
  });
  await t.step("query rows shared by two slices merge by lse (one softmax over the union)", () => {
    // q [0,8) sees k [0,4) FULL from one slice and k [4,8) CAUSAL (j ≤ i) from another.
    const result = checkCase({
      totalQ: 8,
      totalK: 8,
      slices: [[0, 8, 0, 4, FULL], [0, 8, 4, 8, CAUSAL]],
      visible: (i, j) => j < 4 || j <= i,
    });
    // The same answer with the slices in the other order (the merge is order-independent).
    const swapped = referenceForward(
      result.q,
      result.k,
      result.v,
      handMadeKey([[0, 8, 4, 8, CAUSAL], [0, 8, 0, 4, FULL]], 8, 8),
    );
    assert.ok(maxAbsDiff(toFloat32(swapped.out), result.out) < 1e-6);
  });
  await t.step("empty rows and keys nobody sees", () => {
    // Rows 0, 1, 8, 9 are uncovered; keys 8..11 are seen by nobody; rows 10..11 hit an empty band.
    const slices: Slice[] = [[2, 6, 0, 5, FULL], [6, 8, 3, 8, CAUSAL], [10, 12, 6, 7, BICAUSAL]];
    const result = checkCase({ totalQ: 12, totalK: 12, headsQ: 2, headsKV: 1, slices, seed: 11 });
    assertEmptyRows(result, [0, 1, 8, 9, 10, 11]);
    const kvRow = 1 * result.k.shape[2];
    for (let j = 8; j < 12; j++) {
      const start = j * kvRow;
      assert.ok(result.dk.subarray(start, start + kvRow).every((x) => x === 0), `dk of unseen key ${j}`);
      assert.ok(result.dv.subarray(start, start + kvRow).every((x) => x === 0), `dv of unseen key ${j}`);
    }
  });
  await t.step("a key with no slices at all: zero out, −inf lse, zero grads", () => {
    const key = handMadeKey([], 4, 3);
    const q = randomTensor([4, 2, 4], { seed: 1 });
    const k = randomTensor([3, 2, 4], { seed: 2 });
    const { out, lse } = referenceForward(q, k, k, key);
    assert.ok(toFloat32(out).every((x) => x === 0));
    assert.ok((lse.data as Float32Array).every((x) => x === -Infinity));
    const grads = referenceBackward(q, q, k, k, out, lse, key);
    for (const grad of [grads.dq, grads.dk, grads.dv]) assert.ok(toFloat32(grad).every((x) => x === 0));
  });
  await t.step("an lse of −inf means P = 0: that row contributes no gradient", () => {
    const key = handMadeKey([[0, 4, 0, 4, FULL]], 4, 4);
    const q = randomTensor([4, 1, 4], { seed: 31 });
    const k = randomTensor([4, 1, 4], { seed: 32 });
    const { out, lse } = referenceForward(q, k, k, key);
    const lseValues = Float32Array.from(lse.data as Float32Array);
    lseValues[2] = -Infinity; // row 2 declared empty
    const grads = referenceBackward(q, q, k, k, out, tensor(lseValues, [4, 1]), key);
    const dq = toFloat32(grads.dq);
    assert.ok(dq.subarray(8, 12).every((x) => x === 0), "row 2 must get no dq");
    assert.ok(dq.subarray(0, 4).some((x) => x !== 0) && dq.every(Number.isFinite));
  });
  await t.step("bf16 and fp16 inputs (outputs in the input dtype)", () => {
    const slices: Slice[] = [[0, 10, 0, 6, FULL], [0, 10, 6, 16, CAUSAL], [10, 16, 0, 16, INVCAUSAL]];
    for (const dtype of ["bfloat16", "float16"] as const) {
      checkCase({ totalQ: 16, totalK: 16, headsQ: 4, headsKV: 2, headDim: 16, slices, dtype, seed: 21 });
      checkCase({ totalQ: 16, totalK: 16, headsQ: 2, slices, dtype, softcap: 2, seed: 22 });
    }
  });
  await t.step("random area-disjoint multi-slice layouts (seeded)", () => {
    for (let seed = 100; seed < 112; seed++) {
      const random = seededRandom(seed);
      const totalQ = 8 + Math.floor(random() * 25);
      const totalK = 8 + Math.floor(random() * 25);
      const slices = randomLayout(random, totalQ, totalK);
      const headsKV = 1 + Math.floor(random() * 2);
      const headsQ = headsKV * (1 + Math.floor(random() * 2));
      const dtype: DType = seed % 3 === 0 ? "bfloat16" : "float32";
      const softcap = seed % 4 === 0 ? 3 : 0;
      checkCase({ totalQ, totalK, headsQ, headsKV, headDim: 8, slices, dtype, softcap, seed });
    }
  });
});

/** Rows listed must have out 0, lse −inf (all heads) and dq 0. */
function assertEmptyRows(result: CaseResult, rows: readonly number[]): void {
  const [, heads, headDim] = result.q.shape;
  for (const row of rows) {
    const start = row * heads * headDim;
    const end = start + heads * headDim;
    assert.ok(result.out.subarray(start, end).every((x) => x === 0), `out row ${row} must be 0`);
    assert.ok(result.dq.subarray(start, end).every((x) => x === 0), `dq row ${row} must be 0`);
    for (let head = 0; head < heads; head++) {
      assert.equal(result.lse[row * heads + head], -Infinity, `lse row ${row} must be -inf`);
    }
  }
  // And every row with a visible key has a finite lse.
  const totalK = result.key.totalK;
  for (let row = 0; row < result.key.totalQ; row++) {
    const hasKey = result.mask.subarray(row * totalK, (row + 1) * totalK).some((cell) => cell > 0);
    if (hasKey) assert.ok(Number.isFinite(result.lse[row * heads]), `lse row ${row} must be finite`);
  }
}

/** Random grid cells (so slices never overlap), each kept with probability 0.6, random types. */
function randomLayout(random: () => number, totalQ: number, totalK: number): Slice[] {
  const cuts = (total: number): number[] => {
    const points = new Set([0, total]);
    const count = 1 + Math.floor(random() * 4);
    for (let c = 0; c < count; c++) points.add(Math.floor(random() * (total + 1)));
    return [...points].sort((a, b) => a - b);
  };
  const qCuts = cuts(totalQ);
  const kCuts = cuts(totalK);
  const slices: Slice[] = [];
  for (let a = 0; a + 1 < qCuts.length; a++) {
    for (let b = 0; b + 1 < kCuts.length; b++) {
      if (random() < 0.6) {
        slices.push([qCuts[a], qCuts[a + 1], kCuts[b], kCuts[b + 1], Math.floor(random() * 4)]);
      }
    }
  }
  // Shuffle so the merge order is not always the grid order.
  for (let index = slices.length - 1; index > 0; index--) {
    const other = Math.floor(random() * (index + 1));
    [slices[index], slices[other]] = [slices[other], slices[index]];
  }
  return slices;
}

Deno.test("referenceBackward matches central finite differences of L = Σ out·dout", async (t) => {
  // Mixed types over 5 query and 6 key tokens; every query row sees some key.
  const slices: Slice[] = [
    [0, 3, 0, 4, CAUSAL], // j ≤ i + 1
    [1, 3, 4, 6, BICAUSAL], // the diagonal j = i + 3
    [3, 5, 1, 5, INVCAUSAL], // j ≥ i − 2
    [3, 5, 5, 6, FULL],
  ];
  const key = handMadeKey(slices, 5, 6);
  const mask = sliceMask(slices, 5, 6);
  for (const headsKV of [2, 1]) {
    for (const softcap of [0, 1.2]) {
      await t.step(`Hq 2, Hkv ${headsKV}, softcap ${softcap}`, () => {
        const seed = 40 + headsKV * 10 + (softcap > 0 ? 1 : 0);
        const q = randomTensor([5, 2, 4], { seed });
        const k = randomTensor([6, headsKV, 4], { seed: seed + 1 });
        const v = randomTensor([6, headsKV, 4], { seed: seed + 2 });
        const dout = randomTensor([5, 2, 4], { seed: seed + 3 });
        const opts = { softcap, softmaxScale: 0.8 };
        const forward = referenceForward(q, k, v, key, opts);
        const grads = referenceBackward(dout, q, k, v, forward.out, forward.lse, key, opts);
        const oracleGrads = denseAttentionBackwardOracle(dout, q, k, v, mask, opts);
        const numeric = finiteDifferenceGrads(dout, q, k, v, mask, opts);
        for (const name of ["dq", "dk", "dv"] as const) {
          const referenceError = relativeError(toFloat32(grads[name]), numeric[name]);
          assert.ok(referenceError < 1e-4, `reference ${name} vs finite differences: ${referenceError}`);
          const oracleError = relativeError(oracleGrads[name], numeric[name]);
          assert.ok(oracleError < 1e-7, `oracle ${name} vs finite differences: ${oracleError}`);
        }
      });
    }
  }
});

/** Central differences of L = Σ out ∘ dout, the forward evaluated in float64 by the oracle. */
function finiteDifferenceGrads(
  dout: HostTensor,
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  mask: Visibility,
  opts: { softcap: number; softmaxScale: number },
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const doutValues = Float64Array.from(toFloat32(dout));
  const inputs: Float64Tensor[] = [q, k, v].map((t) => ({
    data: Float64Array.from(toFloat32(t)),
    shape: t.shape,
  }));
  const loss = (): number => {
    const { out } = denseAttentionOracle(inputs[0], inputs[1], inputs[2], mask, opts);
    let total = 0;
    for (let index = 0; index < out.length; index++) total += out[index] * doutValues[index];
    return total;
  };
  const step = 1e-5;
  const gradients = inputs.map((input) => {
    const gradient = new Float64Array(input.data.length);
    for (let index = 0; index < input.data.length; index++) {
      const saved = input.data[index];
      input.data[index] = saved + step;
      const up = loss();
      input.data[index] = saved - step;
      const down = loss();
      input.data[index] = saved;
      gradient[index] = (up - down) / (2 * step);
    }
    return gradient;
  });
  return { dq: gradients[0], dk: gradients[1], dv: gradients[2] };
}

Deno.test("reference work is proportional to the mask area, not totalQ × totalK", () => {
  // 100k tokens in 2-token causal documents: ~150k visible cells versus 10^10 dense cells.
  const tokens = 100_000;
  const qRanges = new Int32Array(tokens);
  const attnTypeMap = new Int32Array(tokens / 2).fill(CAUSAL);
  for (let doc = 0; doc < tokens / 2; doc++) {
    qRanges[2 * doc] = 2 * doc;
    qRanges[2 * doc + 1] = 2 * doc + 2;
  }
  const key: FlexKey = {
    qRanges,
    kRanges: qRanges.slice(),
    attnTypeMap,
    totalQ: tokens,
    totalK: tokens,
    maxSeqlenQ: 2,
    maxSeqlenK: 2,
    area: (tokens / 2) * 3,
  };
  const q = randomTensor([tokens, 1, 2], { seed: 1 });
  const k = randomTensor([tokens, 1, 2], { seed: 2 });
  const started = performance.now();
  const { out, lse } = referenceForward(q, k, k, key);
  referenceBackward(q, q, k, k, out, lse, key);
  const elapsed = performance.now() - started;
  assert.ok(elapsed < 3000, `took ${elapsed.toFixed(0)} ms`);
  // Token 0 sees only key 0, so its output is v[0] exactly and its lse is its single logit.
  const vData = toFloat32(k);
  assert.deepEqual(Array.from(toFloat32(out).subarray(0, 2)), Array.from(vData.subarray(0, 2)));
});

Deno.test("the reference is deterministic (bitwise-identical runs)", () => {
  const slices: Slice[] = [[0, 12, 0, 6, FULL], [0, 12, 6, 12, CAUSAL]];
  const key = handMadeKey(slices, 12, 12);
  const q = randomTensor([12, 4, 8], { seed: 3, dtype: "bfloat16" });
  const k = randomTensor([12, 2, 8], { seed: 4, dtype: "bfloat16" });
  const first = referenceForward(q, k, k, key);
  const second = referenceForward(q, k, k, key);
  assert.deepEqual(first.out.data, second.out.data);
  assert.deepEqual(first.lse.data, second.lse.data);
  const gradsA = referenceBackward(q, q, k, k, first.out, first.lse, key);
  const gradsB = referenceBackward(q, q, k, k, first.out, first.lse, key);
  assert.deepEqual(gradsA.dk.data, gradsB.dk.data);
});
