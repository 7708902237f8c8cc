/**
 * GPU parity: the CUDA backend against the float64 dense oracle (tests/support/oracle.ts), with upstream's
 * criteria. For each output tensor X:
 * - relative L2 error ‖ours − ref64‖₂ / ‖ref64‖₂ ≤ rtol (out 0.05, lse 1e-3, dq 0.3, dk 0.15, dv 0.05), and
 * - ‖ours − ref64‖∞ ≤ 2 × ‖ref_lowp − ref64‖∞ + ε, where ref_lowp is the CPU reference
 *   (lib/backends/reference.ts) on the same low-precision inputs. Where the forward oracle only runs on sampled rows
 *   (large cases), ref_lowp is ref64 rounded to the output dtype, which is what the reference computes up
 *   to float32-vs-float64 accumulation. Our ref_lowp is more accurate than upstream's (a bf16 torch
 *   reference that rounds P and dS like the kernel does), so ε absorbs the kernel's own internal rounding:
 *   ε = 2 ulps of the dtype at max|ref64| for out/dq/dk/dv, and 1e-3 · max(1, max|ref64|) for the fp32 lse.
 *
 * Every GPU output is poisoned (all bytes 0xFF = NaN) before the kernel runs and must come back without a
 * NaN: each element was written. Rows no slice makes visible must come back as out 0, lse −inf.
 *
 * Without a usable GPU (see `probeCudaBackend()`), every test is registered as ignored. With
 * `MAGI_PARITY_DRY_RUN=1` the "GPU" results are the CPU reference's instead: that checks the harness and
 * the criteria on a machine without a GPU (and times the CPU side), but says nothing about the kernels.
 */

import assert from "node:assert/strict";
import { AttnMaskSpec } from "../../lib/masks/spec.ts";
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
import { probeCudaBackend } from "../../ffi/library.ts";
import { backendInfo } from "../../lib/backends/ffa.ts";
import { backendNotice } from "../support/backend_notice.ts";
import { emptyDevice, fillDeviceBytes, toDevice, toHost } from "../../ffi/device.ts";
import { cudaBackward, cudaForward } from "../../ffi/cuda_backend.ts";
import {
  denseAttentionBackwardOracle,
  denseAttentionOracle,
  type Float64Tensor,
  maxAbsDiff,
  relativeError,
} from "../support/oracle.ts";

const DRY_RUN = Deno.env.get("MAGI_PARITY_DRY_RUN") === "1";
const probe = DRY_RUN ? { available: true } : probeCudaBackend();
const ignore = !probe.available;
if (ignore) console.log(backendNotice("GPU parity tests skipped: ", backendInfo()));

type LowDType = "bfloat16" | "float16";
type Heads = readonly [headsQ: number, headsKV: number, headDim: number];

/** Upstream's relative-L2 tolerances (bf16; used for fp16 too). */
const RTOL = { out: 0.05, lse: 1e-3, dq: 0.3, dk: 0.15, dv: 0.05 } as const;

// ---------------------------------------------------------------------------------------------------------
// Masks

/** Cumulative lengths of the upstream varlen tests. */
const CU_SEQLENS_A = [0, 366, 391, 471, 835, 984, 1005, 1017, 1020, 1023, 1024];
const CU_SEQLENS_B = [0, 256, 512, 1024, 1280, 1536, 1792, 2048, 4096];

type Slice = readonly [qs: number, qe: number, ks: number, ke: number, type: number];

function fromSlices(slices: readonly Slice[], totalQ: number, totalK: number): AttnMaskSpec {
  return AttnMaskSpec.fromRanges({
    qRanges: slices.map(([qs, qe]) => [qs, qe] as const),
    kRanges: slices.map(([, , ks, ke]) => [ks, ke] as const),
    maskTypes: slices.map((slice) => slice[4]),
    totalSeqlenQ: totalQ,
    totalSeqlenK: totalK,
  });
}

/** Block-causal attention inside each document: block i of a document sees the document up to its end. */
function varlenBlockCausal(seqlens: readonly number[], block: number): AttnMaskSpec {
  const slices: Slice[] = [];
  let offset = 0;
  for (const length of seqlens) {
    for (let start = 0; start < length; start += block) {
      const end = Math.min(start + block, length);
      slices.push([offset + start, offset + end, offset, offset + end, 0]);
    }
    offset += length;
  }
  return fromSlices(slices, offset, offset);
}

/** Rows [100, 300), [500, 700) and the tail stay uncovered; one causal slice has more queries than keys. */
function disjointWithGaps(): AttnMaskSpec {
  return fromSlices(
    [
      [0, 100, 0, 300, 0],
      [300, 500, 200, 700, 1],
      [700, 900, 0, 50, 2],
      [900, 1000, 600, 640, 1], // 100 queries, 40 keys: the first 60 rows see nothing (bottom-right)
    ],
    1024,
    1024,
  );
}

/** A hand-made sparse layout of 14 slices over 2048 tokens: every type, shared rows and keys, edge cases. */
function sparse14(): AttnMaskSpec {
  return fromSlices(
    [
      [0, 256, 0, 256, 1],
      [256, 512, 0, 256, 0],
      [256, 512, 256, 512, 1],
      [512, 640, 512, 1024, 2], // INVCAUSAL, more keys than queries
      [640, 768, 512, 1024, 3], // BICAUSAL band of width 385
      [768, 1024, 1024, 1536, 1], // keys after the queries
      [1024, 1100, 0, 2048, 0],
      [1100, 1400, 100, 300, 1], // 300 queries, 200 keys: 100 empty rows
      [1100, 1400, 1400, 1700, 2],
      [1400, 1401, 0, 2048, 1], // one row
      [1401, 1700, 1700, 1701, 0], // one key
      [1700, 1800, 0, 0, 0], // empty key range
      [1700, 2000, 1800, 2048, 3], // BICAUSAL with Lq > Lk: empty
      [2000, 2048, 2000, 2048, 1],
    ],
    2048,
    2048,
  );
}

/** A grid of `blocks × blocks` squares of `size` tokens; about 30% of them present, each a random type. */
function blockGrid(blocks: number, size: number, seed: number): AttnMaskSpec {
  const random = seededRandom(seed);
  const slices: Slice[] = [];
  for (let row = 0; row < blocks; row++) {
    for (let column = 0; column < blocks; column++) {
      if (random() < 0.3) {
        slices.push([
          row * size,
          (row + 1) * size,
          column * size,
          (column + 1) * size,
          Math.floor(random() * 4),
        ]);
      }
    }
  }
  return fromSlices(slices, blocks * size, blocks * size);
}

/** `count - 1` sorted random cut points in (0, n), plus 0 and n (duplicates give empty ranges). */
function randomCuts(random: () => number, n: number, count: number): number[] {
  const cuts = Array.from({ length: count - 1 }, () => 1 + Math.floor(random() * Math.max(1, n - 1)));
  return [0, ...cuts.sort((a, b) => a - b), n];
}

/**
 * About `targetSlices` area-disjoint slices: the queries are cut into segments, and each segment gets
 * disjoint key intervals of random lengths (so query and key lengths differ). `type` −1 = a random type
 * per slice. The key count is random too (0.5–1.5 × totalQ).
 */
function randomDisjoint(targetSlices: number, totalQ: number, type: number, seed: number): AttnMaskSpec {
  const random = seededRandom(seed);
  const totalK = Math.floor(totalQ * (0.5 + random()));
  const perSegment = Math.max(1, Math.round(Math.sqrt(targetSlices)));
  const segments = Math.max(1, Math.round(targetSlices / perSegment));
  const qCuts = randomCuts(random, totalQ, segments);
  const slices: Slice[] = [];
  for (let segment = 0; segment < segments; segment++) {
    const kCuts = randomCuts(random, totalK, 2 * perSegment);
    for (let interval = 0; interval < perSegment; interval++) {
      // Alternate intervals, so keys in between stay unused and lengths vary.
      const [ks, ke] = [kCuts[2 * interval], kCuts[2 * interval + 1]];
      const sliceType = type >= 0 ? type : Math.floor(random() * 4);
      slices.push([qCuts[segment], qCuts[segment + 1], ks, ke, sliceType]);
    }
  }
  return fromSlices(slices, totalQ, totalK);
}

/** Prompt 0 shared by two branches, each with two completions (one path has four nodes). */
function prefixTree(scale: number): AttnMaskSpec {
  const lengths = [512, 128, 256, 96, 300, 200, 64].map((length) => Math.max(1, Math.round(length * scale)));
  return AttnMaskSpec.prefixTree(lengths, [[0, 1, 3], [0, 1, 4, 6], [0, 2, 5]]);
}

// ---------------------------------------------------------------------------------------------------------
// Cases

interface ParityCase {
  name: string;
  spec: () => AttnMaskSpec;
  heads: Heads;
  dtype: LowDType;
  /** Forward only: compare this many random rows (plus slice-boundary rows) instead of all of them. */
  sampleRows?: number;
  softcap?: number;
  softmaxScale?: number;
  seed: number;
}

const H8: Heads = [8, 8, 128];
const H32: Heads = [32, 4, 128];
const H1: Heads = [1, 1, 64];
const H4: Heads = [4, 2, 64];
const TYPE_NAMES = ["full", "causal", "inv_causal", "bi_causal", "mixed"];

const forwardCases: ParityCase[] = [
  {
    name: "full 4k",
    spec: () => AttnMaskSpec.full(4096),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 1,
  },
  {
    name: "full 4k",
    spec: () => AttnMaskSpec.full(4096),
    heads: H8,
    dtype: "float16",
    sampleRows: 48,
    seed: 2,
  },
  {
    name: "full 4k",
    spec: () => AttnMaskSpec.full(4096),
    heads: H1,
    dtype: "bfloat16",
    sampleRows: 128,
    seed: 3,
  },
  {
    name: "causal 4k",
    spec: () => AttnMaskSpec.causal(4096),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 4,
  },
  {
    name: "causal 4k",
    spec: () => AttnMaskSpec.causal(4096),
    heads: H32,
    dtype: "bfloat16",
    sampleRows: 24,
    seed: 5,
  },
  {
    name: "causal 4k",
    spec: () => AttnMaskSpec.causal(4096),
    heads: H4,
    dtype: "float16",
    sampleRows: 96,
    seed: 6,
  },
  {
    name: "varlen full cu_seqlens A (1k)",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_A, { causal: false }),
    heads: H4,
    dtype: "bfloat16",
    seed: 7,
  },
  {
    name: "varlen full cu_seqlens A (1k)",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_A, { causal: false }),
    heads: H8,
    dtype: "float16",
    sampleRows: 128,
    seed: 8,
  },
  {
    name: "varlen full cu_seqlens B (4k)",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_B, { causal: false }),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 9,
  },
  {
    name: "varlen causal cu_seqlens B (4k)",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_B),
    heads: H4,
    dtype: "bfloat16",
    sampleRows: 128,
    seed: 10,
  },
  {
    name: "block-causal 2k (block 256)",
    spec: () => AttnMaskSpec.blockCausal(256, 2048),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 11,
  },
  {
    name: "varlen block-causal 2k (block 128)",
    spec: () => varlenBlockCausal([700, 500, 848], 128),
    heads: H4,
    dtype: "bfloat16",
    sampleRows: 128,
    seed: 12,
  },
  { name: "disjoint ranges, uncovered rows", spec: disjointWithGaps, heads: H4, dtype: "bfloat16", seed: 13 },
  { name: "sparse 14-slice layout", spec: sparse14, heads: H8, dtype: "bfloat16", sampleRows: 96, seed: 14 },
  { name: "sparse 14-slice layout", spec: sparse14, heads: H1, dtype: "float16", seed: 15 },
  {
    name: "50×50 grid of 50-token blocks, mixed types",
    spec: () => blockGrid(50, 50, 16),
    heads: H4,
    dtype: "bfloat16",
    sampleRows: 128,
    seed: 16,
  },
  {
    name: "50×50 grid of 50-token blocks, mixed types",
    spec: () => blockGrid(50, 50, 17),
    heads: H8,
    dtype: "float16",
    sampleRows: 48,
    seed: 17,
  },
  ...[10, 100, 1000].flatMap((count) =>
    [0, 1, 2, 3, -1].map((type, index): ParityCase => ({
      name: `random disjoint ${count} slices, ${TYPE_NAMES[type < 0 ? 4 : type]}`,
      spec: () => randomDisjoint(count, 2048, type, 100 + count + index),
      heads: H4,
      dtype: index % 2 === 0 ? "bfloat16" : "float16",
      sampleRows: 96,
      seed: 100 + count + index,
    }))
  ),
  {
    name: "random disjoint 1000 slices, mixed",
    spec: () => randomDisjoint(1000, 2048, -1, 7),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 18,
  },
  {
    name: "sliding window 4k (left 256, right 0)",
    spec: () => AttnMaskSpec.slidingWindow(4096, { left: 256, right: 0 }),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    seed: 19,
  },
  {
    name: "sliding window varlen [700, 1000, 348] (left 64, right 32)",
    spec: () => AttnMaskSpec.slidingWindow([700, 1000, 348], { left: 64, right: 32 }),
    heads: H4,
    dtype: "float16",
    sampleRows: 128,
    seed: 20,
  },
  {
    name: "sliding window 2k (left −1, right 128)",
    spec: () => AttnMaskSpec.slidingWindow(2048, { left: -1, right: 128 }),
    heads: H4,
    dtype: "bfloat16",
    sampleRows: 96,
    seed: 21,
  },
  { name: "prefix tree", spec: () => prefixTree(1), heads: H8, dtype: "bfloat16", sampleRows: 96, seed: 22 },
  { name: "prefix tree", spec: () => prefixTree(1), heads: H4, dtype: "float16", seed: 23 },
  {
    name: "softcap 5, causal 2k",
    spec: () => AttnMaskSpec.causal(2048),
    heads: H8,
    dtype: "bfloat16",
    sampleRows: 64,
    softcap: 5,
    seed: 24,
  },
  {
    name: "softcap 20, varlen causal A",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_A),
    heads: H4,
    dtype: "float16",
    softcap: 20,
    seed: 25,
  },
  {
    name: "softmaxScale 0.3, full 2k",
    spec: () => AttnMaskSpec.full(2048),
    heads: H4,
    dtype: "bfloat16",
    sampleRows: 96,
    softmaxScale: 0.3,
    seed: 26,
  },
];

const backwardCases: ParityCase[] = [
  { name: "full 512", spec: () => AttnMaskSpec.full(512), heads: H8, dtype: "bfloat16", seed: 41 },
  { name: "causal 1k", spec: () => AttnMaskSpec.causal(1024), heads: H4, dtype: "bfloat16", seed: 42 },
  { name: "causal 1k", spec: () => AttnMaskSpec.causal(1024), heads: H1, dtype: "float16", seed: 43 },
  { name: "causal 256", spec: () => AttnMaskSpec.causal(256), heads: H32, dtype: "bfloat16", seed: 44 },
  {
    name: "varlen causal cu_seqlens A",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_A),
    heads: H4,
    dtype: "bfloat16",
    seed: 45,
  },
  {
    name: "varlen full cu_seqlens A",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_A, { causal: false }),
    heads: H1,
    dtype: "float16",
    seed: 46,
  },
  {
    name: "varlen block-causal 1k (block 64)",
    spec: () => varlenBlockCausal([300, 500, 224], 64),
    heads: H4,
    dtype: "bfloat16",
    seed: 47,
  },
  { name: "disjoint ranges, uncovered rows", spec: disjointWithGaps, heads: H4, dtype: "bfloat16", seed: 48 },
  { name: "sparse 14-slice layout", spec: sparse14, heads: H1, dtype: "bfloat16", seed: 49 },
  {
    name: "20×20 grid of 50-token blocks, mixed types",
    spec: () => blockGrid(20, 50, 50),
    heads: H4,
    dtype: "bfloat16",
    seed: 50,
  },
  ...[0, 1, 2, 3, -1].map((type, index): ParityCase => ({
    name: `random disjoint 100 slices, ${TYPE_NAMES[type < 0 ? 4 : type]}`,
    spec: () => randomDisjoint(100, 1024, type, 200 + index),
    heads: index % 2 === 0 ? H4 : H1,
    dtype: index % 2 === 0 ? "bfloat16" : "float16",
    seed: 200 + index,
  })),
  {
    name: "random disjoint 10 slices, bi_causal",
    spec: () => randomDisjoint(10, 1024, 3, 210),
    heads: H4,
    dtype: "float16",
    seed: 210,
  },
  {
    name: "sliding window 1k (left 64, right 16): BICAUSAL band",
    spec: () => AttnMaskSpec.slidingWindow(1024, { left: 64, right: 16 }),
    heads: H4,
    dtype: "bfloat16",
    seed: 51,
  },
  { name: "prefix tree", spec: () => prefixTree(0.5), heads: H4, dtype: "bfloat16", seed: 52 },
  {
    name: "softcap 5, causal 512",
    spec: () => AttnMaskSpec.causal(512),
    heads: H8,
    dtype: "bfloat16",
    softcap: 5,
    seed: 53,
  },
];

function caseLabel(parity: ParityCase): string {
  const [hq, hkv, d] = parity.heads;
  const extras = [
    parity.softcap ? `softcap ${parity.softcap}` : "",
    parity.sampleRows ? `${parity.sampleRows} sampled rows` : "all rows",
  ].filter(Boolean).join(", ");
  return `${parity.name} (Hq ${hq}, Hkv ${hkv}, D ${d}, ${parity.dtype}; ${extras})`;
}

// ---------------------------------------------------------------------------------------------------------
// Running the GPU (or, in a dry run, the CPU reference in its place)

interface Inputs {
  key: FlexKey;
  q: HostTensor;
  k: HostTensor;
  v: HostTensor;
  dout: HostTensor;
}

function makeInputs(parity: ParityCase): Inputs {
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

async function gpuForward(
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

async function gpuBackward(
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

async function checkForward(parity: ParityCase): Promise<void> {
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

async function checkBackward(parity: ParityCase): Promise<void> {
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

// ---------------------------------------------------------------------------------------------------------
// Tests

/** In a dry run the CPU reference stands in for the GPU; skip the cases where it would take minutes. */
function tooSlowForDryRun(parity: ParityCase): boolean {
  if (!DRY_RUN) return false;
  const [hq, , d] = parity.heads;
  return compileFlexKey(parity.spec()).area * hq * d > 3e8;
}

for (const parity of forwardCases) {
  Deno.test({
    name: `forward parity: ${caseLabel(parity)}`,
    ignore: ignore || tooSlowForDryRun(parity),
    fn: () => checkForward(parity),
  });
}

for (const parity of backwardCases) {
  Deno.test({ name: `backward parity: ${caseLabel(parity)}`, ignore, fn: () => checkBackward(parity) });
}

function sameBits(a: HostTensor, b: HostTensor): boolean {
  const left = new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.byteLength);
  const right = new Uint8Array(b.data.buffer, b.data.byteOffset, b.data.byteLength);
  return left.length === right.length && left.every((byte, index) => byte === right[index]);
}

const deterministicCases: ParityCase[] = [
  {
    name: "varlen full cu_seqlens B (4k)",
    spec: () => AttnMaskSpec.fromCuSeqlens(CU_SEQLENS_B, { causal: false }),
    heads: H8,
    dtype: "bfloat16",
    seed: 61,
  },
  { name: "prefix tree", spec: () => prefixTree(1), heads: H8, dtype: "bfloat16", seed: 62 },
  {
    name: "50×50 grid of 50-token blocks, mixed types",
    spec: () => blockGrid(50, 50, 63),
    heads: H4,
    dtype: "float16",
    seed: 63,
  },
];

for (const parity of deterministicCases) {
  Deno.test({
    name: `deterministic mode is bitwise reproducible: ${caseLabel(parity)}`,
    ignore: ignore || DRY_RUN, // the CPU reference is deterministic by construction: nothing to learn
    async fn() {
      const inputs = makeInputs(parity);
      const opts = { deterministic: true };
      const first = await gpuForward(inputs, opts);
      const second = await gpuForward(inputs, opts);
      assert.ok(sameBits(first.out, second.out), "forward out differs between two deterministic runs");
      assert.ok(sameBits(first.lse, second.lse), "forward lse differs between two deterministic runs");
      const gradientsA = await gpuBackward(inputs, opts);
      const gradientsB = await gpuBackward(inputs, opts);
      for (const name of ["dq", "dk", "dv"] as const) {
        assert.ok(
          sameBits(gradientsA[name], gradientsB[name]),
          `backward ${name} differs between two deterministic runs`,
        );
      }
    },
  });
}
