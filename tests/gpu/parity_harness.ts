/**
 * The GPU parity harness: inputs for a case, the GPU run with poisoned outputs (or, in a dry run, the CPU
 * reference in its place), and the checks against the float64 oracle with upstream's criteria (see
 * tests/gpu/parity_test.ts).
 * @module
 */

import assert from "node:assert/strict";
import { compileFlexKey, denseMask } from "../../lib/masks/flex_key.ts";
import { referenceBackward, referenceForward } from "../../lib/backends/reference.ts";
import {
  type DType,
  fromFloat32,
  type HostTensor,
  randomTensor,
  seededRandom,
  toFloat64,
} from "../../lib/core/tensor.ts";
import type { FlexKey } from "../../lib/core/types.ts";
import { emptyDevice, fillDeviceBytes, toDevice, toHost } from "../../ffi/device.ts";
import { cudaBackward, cudaForward } from "../../ffi/cuda_backend.ts";
import {
  denseAttentionBackwardOracle,
  denseAttentionOracle,
  type Float64Tensor,
  maxAbsDiff,
  relativeError,
} from "../support/oracle.ts";
import { caseLabel, type Heads, type LowDType, type ParityCase } from "./parity_cases.ts";

/** With `MAGI_PARITY_DRY_RUN=1` the CPU reference stands in for the GPU (checks the harness itself). */
export const DRY_RUN: boolean = Deno.env.get("MAGI_PARITY_DRY_RUN") === "1";

/** Upstream's relative-L2 tolerances (bf16; used for fp16 too). */
const RTOL = { out: 0.05, lse: 1e-3, dq: 0.3, dk: 0.15, dv: 0.05 } as const;

// ---------------------------------------------------------------------------------------------------------
// Running the GPU (or, in a dry run, the CPU reference in its place)

interface Inputs {
  key: FlexKey;
  q: HostTensor;
  k: HostTensor;
  v: HostTensor;
  dout: HostTensor;
}

export function makeInputs(parity: ParityCase): Inputs {
  const key = compileFlexKey(parity.spec());
  const [hq, hkv, d] = parity.heads;
  const dtype = parity.dtype;
  const seed = parity.seed * 10;
  return {
    key,
    q: randomTensor([key.totalQ, hq, d], { seed, dtype }),
    k: randomTensor([key.totalK, hkv, d], { seed: seed + 1, dtype }),
    v: randomTensor([key.totalK, hkv, d], { seed: seed + 2, dtype }),
    dout: randomTensor([key.totalQ, hq, d], { seed: seed + 3, dtype }),
  };
}

/** True when any element is NaN: a poisoned (0xFF) element the kernel did not write. */
function firstNaN(values: Float64Array): number {
  for (let index = 0; index < values.length; index++) if (Number.isNaN(values[index])) return index;
  return -1;
}

function assertAllWritten(name: string, label: string, values: Float64Array): void {
  const index = firstNaN(values);
  assert.equal(index, -1, `${label}: ${name}[${index}] is NaN: the kernel left a poisoned element unwritten`);
}

interface ForwardOutputs {
  out: HostTensor;
  lse: HostTensor;
}

export async function gpuForward(
  inputs: Inputs,
  opts: { softmaxScale?: number; softcap?: number; deterministic?: boolean },
): Promise<ForwardOutputs> {
  const { key, q, k, v } = inputs;
  if (DRY_RUN) return referenceForward(q, k, v, key, opts);
  using qd = toDevice(q);
  using kd = toDevice(k);
  using vd = toDevice(v);
  using out = emptyDevice(q.shape, q.dtype);
  using lse = emptyDevice([key.totalQ, q.shape[1]], "float32");
  fillDeviceBytes(out, 0xff);
  fillDeviceBytes(lse, 0xff);
  await cudaForward(qd, kd, vd, key, { ...opts, outputs: { out, lse } });
  return { out: await toHost(out), lse: await toHost(lse) };
}

interface BackwardOutputs {
  dq: HostTensor;
  dk: HostTensor;
  dv: HostTensor;
}

export async function gpuBackward(
  inputs: Inputs,
  opts: { softmaxScale?: number; softcap?: number; deterministic?: boolean },
): Promise<BackwardOutputs> {
  const { key, q, k, v, dout } = inputs;
  if (DRY_RUN) {
    const forward = referenceForward(q, k, v, key, opts);
    return referenceBackward(dout, q, k, v, forward.out, forward.lse, key, opts);
  }
  using qd = toDevice(q);
  using kd = toDevice(k);
  using vd = toDevice(v);
  using doutD = toDevice(dout);
  const forward = await cudaForward(qd, kd, vd, key, opts);
  using out = forward.out;
  using lse = forward.lse;
  using dq = emptyDevice(q.shape, q.dtype);
  using dk = emptyDevice(k.shape, k.dtype);
  using dv = emptyDevice(v.shape, v.dtype);
  for (const gradient of [dq, dk, dv]) fillDeviceBytes(gradient, 0xff);
  await cudaBackward(doutD, qd, kd, vd, out, lse, key, { ...opts, outputs: { dq, dk, dv } });
  return { dq: await toHost(dq), dk: await toHost(dk), dv: await toHost(dv) };
}

// ---------------------------------------------------------------------------------------------------------
// Checks

const MANTISSA_BITS: Readonly<Record<LowDType, number>> = { bfloat16: 7, float16: 10 };

function ulpAt(magnitude: number, dtype: LowDType): number {
  if (!(magnitude > 0) || !Number.isFinite(magnitude)) return 0;
  return 2 ** (Math.floor(Math.log2(magnitude)) - MANTISSA_BITS[dtype]);
}

function maxFinite(values: ArrayLike<number>): number {
  let largest = 0;
  for (let index = 0; index < values.length; index++) {
    const magnitude = Math.abs(values[index]);
    if (Number.isFinite(magnitude) && magnitude > largest) largest = magnitude;
  }
  return largest;
}

/** ref64 rounded to `dtype` (what an exactly rounded low-precision result would be). */
function roundedTo(values: Float64Array, dtype: DType): Float64Array {
  return toFloat64(fromFloat32(values, [values.length], dtype));
}

function checkTensor(
  label: string,
  name: keyof typeof RTOL,
  ours: Float64Array,
  ref64: Float64Array,
  refLow: Float64Array,
  dtype: LowDType,
): void {
  const relative = relativeError(ours, ref64);
  assert.ok(
    relative <= RTOL[name],
    `${label}: ${name} relative L2 error ${relative.toExponential(3)} > ${RTOL[name]}`,
  );
  const oursError = maxAbsDiff(ours, ref64);
  const lowError = maxAbsDiff(refLow, ref64);
  const magnitude = maxFinite(ref64);
  const epsilon = name === "lse" ? 1e-3 * Math.max(1, magnitude) : 2 * ulpAt(magnitude, dtype);
  const bound = 2 * lowError + epsilon;
  assert.ok(
    oursError <= bound,
    `${label}: ${name} max abs error ${oursError.toExponential(3)} > 2 × ${lowError.toExponential(3)} ` +
      `(reference in ${dtype}) + ${epsilon.toExponential(3)}`,
  );
}

/** Sorted distinct rows: `count` random ones plus up to 32 slice-boundary rows (first/last of q ranges). */
function sampleRows(key: FlexKey, count: number, seed: number): number[] {
  const random = seededRandom(seed);
  const rows = new Set<number>();
  const boundaries: number[] = [];
  for (let slice = 0; slice < key.attnTypeMap.length; slice++) {
    const [qs, qe] = [key.qRanges[2 * slice], key.qRanges[2 * slice + 1]];
    if (qe > qs) boundaries.push(qs, qe - 1);
  }
  for (let pick = 0; pick < 32 && boundaries.length > 0; pick++) {
    rows.add(boundaries[Math.floor(random() * boundaries.length)]);
  }
  rows.add(0).add(key.totalQ - 1);
  while (rows.size < Math.min(key.totalQ, count + 34)) rows.add(Math.floor(random() * key.totalQ));
  return [...rows].sort((a, b) => a - b);
}

/** The rows `rows` of a `[tokens, ...]` array with `width` elements per token. */
function gatherRows(values: Float64Array, rows: readonly number[], width: number): Float64Array {
  const gathered = new Float64Array(rows.length * width);
  rows.forEach((row, index) => gathered.set(values.subarray(row * width, (row + 1) * width), index * width));
  return gathered;
}

/** Rows of the dense mask with no visible key. */
function emptyRows(mask: Uint8Array, totalQ: number, totalK: number): number[] {
  const rows: number[] = [];
  for (let row = 0; row < totalQ; row++) {
    if (mask.subarray(row * totalK, (row + 1) * totalK).indexOf(1) < 0) rows.push(row);
  }
  return rows;
}

function assertEmptyRows(
  label: string,
  rows: readonly number[],
  out: Float64Array,
  lse: Float64Array,
  heads: Heads,
) {
  const [hq, , d] = heads;
  for (const row of rows) {
    for (let h = 0; h < hq; h++) {
      assert.equal(lse[row * hq + h], -Infinity, `${label}: lse[${row}, ${h}] of an empty row must be -inf`);
      for (let x = 0; x < d; x++) {
        assert.equal(
          out[(row * hq + h) * d + x],
          0,
          `${label}: out[${row}, ${h}, ${x}] of an empty row must be 0`,
        );
      }
    }
  }
}

export async function checkForward(parity: ParityCase): Promise<void> {
  const label = caseLabel(parity);
  const inputs = makeInputs(parity);
  const { key, q, k, v } = inputs;
  const [hq, , d] = parity.heads;
  const opts = { softmaxScale: parity.softmaxScale, softcap: parity.softcap };
  const gpu = await gpuForward(inputs, opts);
  const out = toFloat64(gpu.out);
  const lse = toFloat64(gpu.lse);
  assertAllWritten("out", label, out);
  assertAllWritten("lse", label, lse);
  const mask = denseMask(key);
  assertEmptyRows(label, emptyRows(mask, key.totalQ, key.totalK), out, lse, parity.heads);

  if (parity.sampleRows === undefined) {
    const ref64 = denseAttentionOracle(q, k, v, mask, opts);
    const refLow = referenceForward(q, k, v, key, opts);
    checkTensor(label, "out", out, ref64.out, toFloat64(refLow.out), parity.dtype);
    checkTensor(label, "lse", lse, ref64.lse, toFloat64(refLow.lse), parity.dtype);
    return;
  }
  const rows = sampleRows(key, parity.sampleRows, parity.seed);
  const qRows: Float64Tensor = { data: gatherRows(toFloat64(q), rows, hq * d), shape: [rows.length, hq, d] };
  const maskRows = new Uint8Array(rows.length * key.totalK);
  rows.forEach((row, index) =>
    maskRows.set(mask.subarray(row * key.totalK, (row + 1) * key.totalK), index * key.totalK)
  );
  const ref64 = denseAttentionOracle(qRows, k, v, maskRows, {
    ...opts,
    softmaxScale: opts.softmaxScale ?? 1 / Math.sqrt(d),
  });
  checkTensor(
    label,
    "out",
    gatherRows(out, rows, hq * d),
    ref64.out,
    roundedTo(ref64.out, parity.dtype),
    parity.dtype,
  );
  checkTensor(
    label,
    "lse",
    gatherRows(lse, rows, hq),
    ref64.lse,
    roundedTo(ref64.lse, "float32"),
    parity.dtype,
  );
}

export async function checkBackward(parity: ParityCase): Promise<void> {
  const label = caseLabel(parity);
  const inputs = makeInputs(parity);
  const { key, q, k, v, dout } = inputs;
  const opts = { softmaxScale: parity.softmaxScale, softcap: parity.softcap };
  const gpu = await gpuBackward(inputs, opts);
  const ours = { dq: toFloat64(gpu.dq), dk: toFloat64(gpu.dk), dv: toFloat64(gpu.dv) };
  for (const name of ["dq", "dk", "dv"] as const) assertAllWritten(name, label, ours[name]);
  const mask = denseMask(key);
  const ref64 = denseAttentionBackwardOracle(dout, q, k, v, mask, opts);
  const forwardLow = referenceForward(q, k, v, key, opts);
  const refLow = referenceBackward(dout, q, k, v, forwardLow.out, forwardLow.lse, key, opts);
  for (const name of ["dq", "dk", "dv"] as const) {
    checkTensor(label, name, ours[name], ref64[name], toFloat64(refLow[name]), parity.dtype);
  }
}

export function sameBits(a: HostTensor, b: HostTensor): boolean {
  const left = new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.byteLength);
  const right = new Uint8Array(b.data.buffer, b.data.byteOffset, b.data.byteLength);
  return left.length === right.length && left.every((byte, index) => byte === right[index]);
}
