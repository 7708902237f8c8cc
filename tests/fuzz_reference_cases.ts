/**
 * Seeded random small attention problems for the fuzz tests and `scripts/reliability.ts`: the CPU
 * reference against the float64 dense oracle. Every check throws an AssertionError whose message starts
 * with `seed=<n>`: rerun one case with `checkReferenceCase(n)`.
 * @module
 */

import assert from "node:assert/strict";
import { compileFlexKey } from "../lib/masks/flex_key.ts";
import { referenceBackward, referenceForward } from "../lib/backends/reference.ts";
import { type DType, type HostTensor, randomTensor, seededRandom, toFloat32 } from "../lib/core/tensor.ts";
import type { FlexKey } from "../lib/core/types.ts";
import { denseAttentionBackwardOracle, denseAttentionOracle, relativeError } from "./support/oracle.ts";
import { oracleMask, randomSpecCase, type SpecCase } from "./fuzz_cases.ts";
import { caseSeed, collectFailures } from "./support/fuzz.ts";

/** Relative-L2 tolerances of the CPU reference against the float64 oracle (output rounding only). */
export const REFERENCE_TOLERANCES: Readonly<Record<DType, { out: number; lse: number; grads: number }>> = {
  float32: { out: 1e-5, lse: 1e-6, grads: 1e-5 },
  float16: { out: 2e-3, lse: 1e-6, grads: 2e-3 },
  bfloat16: { out: 1e-2, lse: 1e-6, grads: 1e-2 },
};

/** One random attention problem for the CPU reference. */
export interface ReferenceCase {
  /** The case seed. */
  readonly seed: number;
  /** The mask (a non-overlapping {@linkcode SpecCase}). */
  readonly specCase: SpecCase;
  /** Input dtype. */
  readonly dtype: DType;
  /** Query heads. */
  readonly headsQ: number;
  /** Key/value heads (divides headsQ). */
  readonly headsKV: number;
  /** Head dimension. */
  readonly headDim: number;
  /** Soft cap (0 = off). */
  readonly softcap: number;
  /** Explicit logit scale, or undefined for the default. */
  readonly softmaxScale?: number;
  /** Standard deviation of q and k (larger: sharper softmax). */
  readonly spread: number;
}

/** A random reference case from seed `seed` (a mask from {@linkcode randomSpecCase}, never overlapping). */
export function randomReferenceCase(seed: number): ReferenceCase {
  const random = seededRandom(seed ^ 0x5bd1e995);
  let specCase = randomSpecCase(seed);
  for (let attempt = 1; specCase.overlap || specCase.totalQ > 16 || specCase.totalK > 16; attempt++) {
    specCase = randomSpecCase((seed + attempt * 0x9e3779b1) >>> 0);
  }
  const dtypes: DType[] = ["float32", "float16", "bfloat16"];
  const heads = [[1, 1], [2, 1], [2, 2], [4, 1], [4, 2], [3, 3], [6, 2]][Math.floor(random() * 7)];
  return {
    seed,
    specCase,
    dtype: dtypes[Math.floor(random() * 3)],
    headsQ: heads[0],
    headsKV: heads[1],
    headDim: [1, 3, 4, 8, 16][Math.floor(random() * 5)],
    softcap: random() < 0.35 ? 0.5 + random() * 8 : 0,
    softmaxScale: random() < 0.3 ? 0.05 + random() : undefined,
    spread: random() < 0.3 ? 3 : 1,
  };
}

/**
 * Runs the CPU reference forward and backward on a random case and compares out, lse, dq, dk and dv with
 * the float64 dense oracle (same rounded inputs, so only output rounding differs).
 */
export function checkReferenceCase(seed: number): ReferenceCase {
  const problem = randomReferenceCase(seed);
  const { specCase, dtype, headsQ, headsKV, headDim, softcap, softmaxScale, spread } = problem;
  const where = `seed=${seed} ${dtype} Hq=${headsQ} Hkv=${headsKV} D=${headDim} softcap=${softcap} ` +
    `scale=${softmaxScale ?? "default"} spread=${spread} mask=${specCase.description}`;
  const key: FlexKey = compileFlexKey(specCase.build());
  const { totalQ, totalK } = key;
  const q = randomTensor([totalQ, headsQ, headDim], { seed: seed + 1, dtype, scale: spread });
  const k = randomTensor([totalK, headsKV, headDim], { seed: seed + 2, dtype, scale: spread });
  const v = randomTensor([totalK, headsKV, headDim], { seed: seed + 3, dtype });
  const dout = randomTensor([totalQ, headsQ, headDim], { seed: seed + 4, dtype });
  const options = { softcap, softmaxScale };
  const oracleOptions = { softcap, softmaxScale: softmaxScale ?? 1 / Math.sqrt(headDim) };
  const mask = oracleMask(specCase);
  const tolerance = REFERENCE_TOLERANCES[dtype];

  const forward = referenceForward(q, k, v, key, options);
  const expected = denseAttentionOracle(q, k, v, mask, oracleOptions);
  const outError = relativeError(toFloat32(forward.out), expected.out);
  assert.ok(outError <= tolerance.out, `${where}: out relative error ${outError} > ${tolerance.out}`);
  const lseError = relativeError(forward.lse.data as Float32Array, expected.lse);
  assert.ok(lseError <= tolerance.lse, `${where}: lse relative error ${lseError} > ${tolerance.lse}`);

  const grads = referenceBackward(dout, q, k, v, forward.out, forward.lse, key, options);
  const expectedGrads = denseAttentionBackwardOracle(dout, q, k, v, mask, oracleOptions);
  // The backward takes D_i = rowsum(dout ∘ out) from the forward's out, rounded to the dtype (as the kernels
  // do); the oracle uses the exact out. That changes dS by P_ij·δD_i, so dq_i moves by at most
  // scale·|δD_i|·max_j ‖k_j‖ and dk by at most scale·Σ_i |δD_i|·‖q_i‖ in total (each row's P sums to 1;
  // the softcap factor is ≤ 1). Those bounds are added to the relative tolerance, which covers the rounding
  // of the gradients themselves. dv does not depend on D.
  const bounds = roundedOutBounds(q, k, dout, forward.out, expected.out, oracleOptions.softmaxScale);
  for (const name of ["dq", "dk", "dv"] as const) {
    const actual = toFloat32(grads[name]), wanted = expectedGrads[name];
    const difference = l2Distance(actual, wanted), norm = l2Distance(wanted, new Float64Array(wanted.length));
    const allowed = tolerance.grads * norm + (name === "dv" ? 0 : bounds[name]) * 1.001 + 1e-12;
    assert.ok(
      difference <= allowed,
      `${where}: ${name} ‖ours − oracle‖ = ${difference} > ${allowed} (relative ${difference / norm}, ` +
        `tolerance ${tolerance.grads}, rounded-out bound ${name === "dv" ? 0 : bounds[name]})`,
    );
  }
  return problem;
}

function l2Distance(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let sum = 0;
  for (let index = 0; index < a.length; index++) sum += (a[index] - b[index]) ** 2;
  return Math.sqrt(sum);
}

/** L2 bounds on how much using the dtype-rounded `out` (instead of the exact one) moves dq and dk. */
function roundedOutBounds(
  q: HostTensor,
  k: HostTensor,
  dout: HostTensor,
  out: HostTensor,
  exactOut: Float64Array,
  scale: number,
): { dq: number; dk: number } {
  const [totalQ, headsQ, headDim] = q.shape;
  const [totalK, headsKV] = k.shape;
  const qValues = toFloat32(q),
    kValues = toFloat32(k),
    doutValues = toFloat32(dout),
    outValues = toFloat32(out);
  const maxKeyNorm = new Float64Array(headsKV);
  for (let j = 0; j < totalK; j++) {
    for (let head = 0; head < headsKV; head++) {
      let squares = 0;
      for (let d = 0; d < headDim; d++) squares += kValues[(j * headsKV + head) * headDim + d] ** 2;
      maxKeyNorm[head] = Math.max(maxKeyNorm[head], Math.sqrt(squares));
    }
  }
  let dqSquares = 0, dkTotal = 0;
  for (let i = 0; i < totalQ; i++) {
    for (let head = 0; head < headsQ; head++) {
      const offset = (i * headsQ + head) * headDim;
      let deltaError = 0, queryNorm = 0;
      for (let d = 0; d < headDim; d++) {
        deltaError += doutValues[offset + d] * (outValues[offset + d] - exactOut[offset + d]);
        queryNorm += qValues[offset + d] ** 2;
      }
      const kvHead = Math.floor(head / (headsQ / headsKV));
      dqSquares += (scale * Math.abs(deltaError) * maxKeyNorm[kvHead]) ** 2;
      dkTotal += scale * Math.abs(deltaError) * Math.sqrt(queryNorm);
    }
  }
  return { dq: Math.sqrt(dqSquares), dk: dkTotal };
}

/** Counts of one reference fuzz run. */
export interface ReferenceFuzzSummary {
  /** Cases checked (forward and backward each). */
  cases: number;
  /** Cases per dtype. */
  byDtype: Record<string, number>;
  /** Cases with GQA/MQA (Hkv < Hq). */
  grouped: number;
  /** Cases with a softcap. */
  softcapped: number;
  /** Cases that failed. */
  failed: number;
  /** The first failure messages (at most 20). */
  failures: string[];
  /** Wall time in milliseconds. */
  milliseconds: number;
}

/** Checks `count` reference cases from seed base `base`, collecting failures. */
export function runReferenceFuzz(base: number, count: number): ReferenceFuzzSummary {
  const summary: ReferenceFuzzSummary = {
    cases: 0,
    byDtype: { float32: 0, float16: 0, bfloat16: 0 },
    grouped: 0,
    softcapped: 0,
    failed: 0,
    failures: [],
    milliseconds: 0,
  };
  return collectFailures(summary, count, (index) => {
    const seed = caseSeed(base ^ 0x27d4eb2f, index);
    const problem = randomReferenceCase(seed);
    summary.cases++;
    summary.byDtype[problem.dtype]++;
    if (problem.headsKV < problem.headsQ) summary.grouped++;
    if (problem.softcap > 0) summary.softcapped++;
    return () => checkReferenceCase(seed);
  });
}
