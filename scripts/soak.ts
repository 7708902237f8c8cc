/**
 * GPU soak test of the CUDA backend: many forward + backward calls with varying masks, sizes, dtypes, head
 * dims and GQA ratios on DeviceTensors, watching device memory, use after free, concurrency and
 * correctness. Writes `soak-<gpu>-<date>.json` and ends with the line `N passed, M failed` (exit status 1
 * when anything failed).
 *
 * Usage:
 *   deno run -A scripts/soak.ts --calls 10000 --out bench/           (an H100: about a minute)
 *   compute-sanitizer --tool memcheck deno run -A scripts/soak.ts --calls 100 --sanitizer-friendly
 *   deno run -A scripts/soak.ts --dry-run                            (no GPU: CPU backend, 50 tiny calls)
 * Flags: `--calls N` (default 10000; 100 at most with --sanitizer-friendly, 50 with --dry-run),
 * `--out DIR` (default `bench/`; a temporary directory for --dry-run), `--sanitizer-friendly` (small
 * sizes), `--dry-run`, `--seed N`, `--library PATH` (libmagi_ffa.so to load), `--help`.
 *
 * What it checks:
 * - every call: forward then backward on device tensors through flexFlashAttnForward/Backward (backend
 *   "cuda"), everything disposed; every 10th call the outputs are downloaded and must be finite (lse may be
 *   −inf on rows that see no key);
 * - device memory (magi_ffa_mem_info, after synchronizing so stream-ordered frees have landed) at the start,
 *   every 1,000 calls and at the end: after the first sample interval it may not grow by more than 64 MiB
 *   (plans of cached keys stay until their keys are collected);
 * - use after free: a disposed tensor passed to forward, backward or toHost must throw, never crash;
 * - concurrency: four problems run on four streams at once (cudaForward/cudaBackward with `stream`), and
 *   four flexFlashAttnForward promises under Promise.all, must equal the serial results bitwise
 *   (deterministic mode);
 * - correctness: small problems against the CPU reference (upstream's relative-L2 tolerances).
 * @module
 */

import { clearFlexKeyCache, compileFlexKey, denseMask } from "../lib/masks/flex_key.ts";
import { type AnyTensor, flexFlashAttnBackward, flexFlashAttnForward } from "../lib/backends/ffa.ts";
import { referenceBackward, referenceForward } from "../lib/backends/reference.ts";
import { AttnMaskSpec } from "../lib/masks/spec.ts";
import {
  type DType,
  type HostTensor,
  numel,
  randomTensor,
  seededRandom,
  tensor,
  toFloat32,
} from "../lib/core/tensor.ts";
import { deviceMemoryInfo, type DeviceTensor, toDevice, toHost } from "../ffi/device.ts";
import { cudaBackward, cudaForward } from "../ffi/cuda_backend.ts";
import { loadCudaLibrary, probeCudaBackend } from "../ffi/library.ts";
import {
  denseAttentionBackwardOracle,
  denseAttentionOracle,
  relativeError,
} from "../tests/support/oracle.ts";

/** Parsed command line. */
export interface SoakArgs {
  /** Forward + backward calls to make. */
  calls: number;
  /** Output directory of the JSON report (undefined: the default of the mode). */
  outDir?: string;
  /** Small sizes, for compute-sanitizer. */
  sanitizerFriendly: boolean;
  /** No GPU: the CPU backend on tiny problems. */
  dryRun: boolean;
  /** Seed of the random problem stream. */
  seed: number;
  /** Path of libmagi_ffa.so. */
  libraryPath?: string;
  /** Print the usage. */
  help: boolean;
}

const USAGE = `usage: deno run -A scripts/soak.ts [--calls N] [--out DIR] [--sanitizer-friendly] [--dry-run]
                                     [--seed N] [--library PATH]`;

/** Parses the flags; throws with the usage on anything unknown. */
export function parseSoakArgs(args: readonly string[]): SoakArgs {
  const parsed: SoakArgs = { calls: 10_000, sanitizerFriendly: false, dryRun: false, seed: 1, help: false };
  let callsGiven = false;
  for (let index = 0; index < args.length; index++) {
    const flag = args[index];
    const value = (): string => {
      const next = args[++index];
      if (next === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
      return next;
    };
    const integer = (): number => {
      const text = value();
      const number = Number(text);
      if (!Number.isSafeInteger(number) || number < 0) throw new Error(`${flag} ${text}: not an integer ≥ 0`);
      return number;
    };
    if (flag === "--calls") [parsed.calls, callsGiven] = [integer(), true];
    else if (flag === "--out") parsed.outDir = value();
    else if (flag === "--sanitizer-friendly") parsed.sanitizerFriendly = true;
    else if (flag === "--dry-run") parsed.dryRun = true;
    else if (flag === "--seed") parsed.seed = integer();
    else if (flag === "--library") parsed.libraryPath = value();
    else if (flag === "--help" || flag === "-h") parsed.help = true;
    else throw new Error(`unknown flag ${flag}\n${USAGE}`);
  }
  if (parsed.dryRun) parsed.calls = callsGiven ? Math.min(parsed.calls, 50) : 50;
  if (parsed.sanitizerFriendly) parsed.calls = Math.min(parsed.calls, 100);
  return parsed;
}

// ----- random problems ---------------------------------------------------------------------------------------

/** The shape of one soak call. */
interface CallShape {
  builder: string;
  spec: AttnMaskSpec;
  tokens: number;
  dtype: DType;
  headsQ: number;
  headsKV: number;
  headDim: number;
  softcap: number;
}

/** Size limits of a mode. */
interface Sizes {
  minTokens: number;
  maxTokens: number;
  headDims: readonly number[];
  dtypes: readonly DType[];
  maxHeadsQ: number;
}

const GPU_SIZES: Sizes = {
  minTokens: 64,
  maxTokens: 4096,
  headDims: [64, 128],
  dtypes: ["bfloat16", "float16"],
  maxHeadsQ: 8,
};
const SANITIZER_SIZES: Sizes = { ...GPU_SIZES, minTokens: 16, maxTokens: 256, maxHeadsQ: 4 };
const DRY_RUN_SIZES: Sizes = {
  minTokens: 8,
  maxTokens: 48,
  headDims: [16, 32],
  dtypes: ["bfloat16", "float16"],
  maxHeadsQ: 4,
};

type Random = () => number;

function randomInt(random: Random, low: number, high: number): number {
  return low + Math.floor(random() * (high - low + 1));
}

/** Splits `total` into 1–8 positive parts. */
function randomParts(random: Random, total: number, maxParts = 8): number[] {
  const count = Math.min(total, randomInt(random, 1, maxParts));
  const cuts = new Set<number>([0, total]);
  while (cuts.size < count + 1) cuts.add(randomInt(random, 1, total - 1));
  const sorted = [...cuts].sort((a, b) => a - b);
  return sorted.slice(1).map((end, index) => end - sorted[index]);
}

/** A random mask over `n` tokens from one of the builders. */
function randomSpec(random: Random, n: number): { builder: string; spec: AttnMaskSpec } {
  const builders = [
    "causal",
    "full",
    "varlen",
    "slidingWindow",
    "prefixTree",
    "prefixLM",
    "blockCausal",
    "fromRanges",
  ];
  const builder = builders[Math.floor(random() * builders.length)];
  switch (builder) {
    case "causal":
      return { builder, spec: AttnMaskSpec.causal(n) };
    case "full":
      return { builder, spec: AttnMaskSpec.full(n) };
    case "varlen":
      return { builder, spec: AttnMaskSpec.varlen(randomParts(random, n), { causal: random() < 0.8 }) };
    case "slidingWindow": {
      const left = randomInt(random, 0, Math.max(1, n >> 1));
      const right = random() < 0.6 ? 0 : random() < 0.5 ? -1 : randomInt(random, 1, 64);
      const documents = random() < 0.5 ? n : randomParts(random, n, 4);
      return { builder, spec: AttnMaskSpec.slidingWindow(documents, { left, right }) };
    }
    case "prefixTree": {
      // A prompt and up to 6 completions: node 0 is the root of every path.
      const parts = randomParts(random, n, 7);
      const paths = parts.length === 1 ? [[0]] : parts.slice(1).map((_, index) => [0, index + 1]);
      return { builder, spec: AttnMaskSpec.prefixTree(parts, paths) };
    }
    case "prefixLM":
      return { builder, spec: AttnMaskSpec.prefixLM(randomInt(random, 0, n), n) };
    case "blockCausal":
      return {
        builder,
        spec: AttnMaskSpec.blockCausal(Math.min(Math.max(n, 1), randomInt(random, 16, 512)), n),
      };
    default: {
      // Tiles of a random grid, each with a random type: area-disjoint by construction.
      const rows = randomParts(random, n, 4), columns = randomParts(random, n, 4);
      const qRanges: [number, number][] = [], kRanges: [number, number][] = [], maskTypes: number[] = [];
      let qs = 0;
      for (const rowLength of rows) {
        let ks = 0;
        for (const columnLength of columns) {
          if (random() < 0.7) {
            qRanges.push([qs, qs + rowLength]);
            kRanges.push([ks, ks + columnLength]);
            maskTypes.push(randomInt(random, 0, 3));
          }
          ks += columnLength;
        }
        qs += rowLength;
      }
      return {
        builder,
        spec: AttnMaskSpec.fromRanges({ qRanges, kRanges, maskTypes, totalSeqlenQ: n, totalSeqlenK: n }),
      };
    }
  }
}

function randomCallShape(random: Random, sizes: Sizes): CallShape {
  // Log-uniform token counts: small and large problems equally represented.
  const logMin = Math.log(sizes.minTokens), logMax = Math.log(sizes.maxTokens);
  const tokens = Math.round(Math.exp(logMin + random() * (logMax - logMin)));
  const { builder, spec } = randomSpec(random, tokens);
  const headCounts = [1, 2, 4, 8].filter((heads) => heads <= sizes.maxHeadsQ);
  const headsQ = headCounts[Math.floor(random() * headCounts.length)];
  const divisors = [1, 2, 4, 8].filter((heads) => heads <= headsQ && headsQ % heads === 0);
  return {
    builder,
    spec,
    tokens,
    dtype: sizes.dtypes[Math.floor(random() * sizes.dtypes.length)],
    headsQ,
    headsKV: divisors[Math.floor(random() * divisors.length)],
    headDim: sizes.headDims[Math.floor(random() * sizes.headDims.length)],
    softcap: random() < 0.2 ? 30 : 0,
  };
}

/** Random values reused for every call: a call's tensors are views at random offsets (no per-call RNG). */
class InputPool {
  readonly #pools = new Map<DType, HostTensor>();
  constructor(readonly elements: number, seed: number, dtypes: readonly DType[]) {
    for (const dtype of dtypes) {
      this.#pools.set(dtype, randomTensor([elements], { seed: seed + dtypes.indexOf(dtype), dtype }));
    }
  }

  /** A host tensor of `shape` viewing the pool at a random offset. */
  view(shape: readonly number[], dtype: DType, random: Random): HostTensor {
    const pool = this.#pools.get(dtype)!;
    const count = numel(shape);
    const offset = Math.floor(random() * Math.max(1, this.elements - count));
    return tensor(pool.data.subarray(offset, offset + count), shape, dtype);
  }
}

// ----- the report ----------------------------------------------------------------------------------------------

/** One memory sample. */
interface MemorySample {
  /** Calls made when it was taken. */
  call: number;
  /** Bytes in use (device: total − free; dry run: host RSS). */
  usedBytes: number;
  /** When: after the warm-up, during the loop, or at the end (caches cleared, everything disposed). */
  phase: "start" | "loop" | "end";
}

/** Outcome of one family of checks. */
interface CheckTally {
  run: number;
  passed: number;
  skipped?: string;
}

/** The JSON written at the end (read back by scripts/reliability.ts). */
export interface SoakReport {
  /** Marks the file's format. */
  kind: "magi-attn-soak";
  /** ISO date and time of the run's end. */
  date: string;
  /** GPU name, or "cpu (dry run)". */
  gpu: string;
  /** Mode flags. */
  mode: { dryRun: boolean; sanitizerFriendly: boolean; seed: number; backend: "cuda" | "cpu" };
  /** Forward + backward calls. */
  calls: { requested: number; passed: number; failed: number };
  /** Wall time of the call loop and calls per second. */
  timing: { seconds: number; callsPerSecond: number; medianCallMs: number };
  /** Memory samples and the flatness verdict. */
  memory: {
    source: string;
    samples: MemorySample[];
    warmupUsedBytes: number;
    maxGrowthBytes: number;
    endGrowthBytes: number;
    allowanceBytes: number;
    flat: boolean;
  };
  /** The extra checks. */
  checks: {
    finiteOutputs: CheckTally;
    useAfterFree: CheckTally;
    streams: CheckTally;
    promiseAll: CheckTally;
    spotChecks: CheckTally & { worst: Record<string, number> };
  };
  /** What the random calls covered. */
  mix: Record<string, Record<string, number>>;
  /** The first failures. */
  failures: { at: string; message: string }[];
  /** Every check: passed and failed (the summary's final line). */
  totals: { passed: number; failed: number };
}

/** Upstream's relative-L2 tolerances (bf16 against an fp64 reference). */
const GPU_TOLERANCES = { out: 0.05, lse: 1e-3, dq: 0.3, dk: 0.15, dv: 0.05 } as const;
/** The dry run compares the CPU backend with the float64 oracle: only output rounding differs. */
const CPU_TOLERANCES = { out: 1e-2, lse: 1e-6, dq: 5e-2, dk: 5e-2, dv: 1e-2 } as const;
const MEMORY_ALLOWANCE = 64 * 2 ** 20;

function slug(text: string): string {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
}

function median(values: number[]): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function isFiniteOrNegInf(values: ArrayLike<number>): boolean {
  for (let index = 0; index < values.length; index++) {
    const value = values[index];
    if (!Number.isFinite(value) && value !== -Infinity) return false;
  }
  return true;
}

function allFinite(values: ArrayLike<number>): boolean {
  for (let index = 0; index < values.length; index++) if (!Number.isFinite(values[index])) return false;
  return true;
}

function sameBytes(a: HostTensor, b: HostTensor): boolean {
  const left = new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.byteLength);
  const right = new Uint8Array(b.data.buffer, b.data.byteOffset, b.data.byteLength);
  return left.length === right.length && left.every((value, index) => value === right[index]);
}

/** Runs the soak; returns the report (also written to disk and summarised on stdout). */
export async function runSoak(args: SoakArgs): Promise<SoakReport> {
  const dryRun = args.dryRun;
  const backend = dryRun ? "cpu" : "cuda";
  const sizes = dryRun ? DRY_RUN_SIZES : args.sanitizerFriendly ? SANITIZER_SIZES : GPU_SIZES;
  const libraryOptions = args.libraryPath ? { libraryPath: args.libraryPath } : {};
  const callOptions = { backend, ...libraryOptions } as const;
  let gpu = "cpu (dry run)";
  if (!dryRun) {
    const probe = probeCudaBackend(libraryOptions);
    if (!probe.available) {
      throw new Error(`no usable GPU: ${probe.reason} (use --dry-run on a machine without one)`);
    }
    gpu = probe.devices?.[0]?.name ?? "unknown GPU";
  }
  const random = seededRandom(args.seed);
  const pool = new InputPool(
    sizes.maxTokens * sizes.maxHeadsQ * Math.max(...sizes.headDims) + (1 << 20),
    args.seed,
    sizes.dtypes,
  );
  const sampleEvery = Math.min(1000, Math.max(10, Math.floor(args.calls / 10)));
  const failures: { at: string; message: string }[] = [];
  let failedChecks = 0, passedChecks = 0;
  const fail = (at: string, error: unknown) => {
    failedChecks++;
    if (failures.length < 25) {
      failures.push({ at, message: error instanceof Error ? error.message : String(error) });
    }
  };
  const tally = (): CheckTally => ({ run: 0, passed: 0 });
  const checks: SoakReport["checks"] = {
    finiteOutputs: tally(),
    useAfterFree: tally(),
    streams: tally(),
    promiseAll: tally(),
    spotChecks: { ...tally(), worst: {} },
  };
  const check = async (which: CheckTally, at: string, body: () => Promise<void> | void) => {
    which.run++;
    try {
      await body();
      which.passed++;
      passedChecks++;
    } catch (error) {
      fail(at, error);
    }
  };
  const mix: Record<string, Record<string, number>> = {
    builder: {},
    dtype: {},
    headDim: {},
    gqa: {},
    tokens: {},
  };
  const count = (group: string, key: string) => (mix[group][key] = (mix[group][key] ?? 0) + 1);

  /** One forward + backward on device tensors (host tensors in the dry run); disposes everything. */
  const soakCall = async (shape: CallShape, at: string, checkFinite: boolean): Promise<void> => {
    const key = compileFlexKey(shape.spec);
    const owned: DeviceTensor[] = [];
    const place = (host: HostTensor): AnyTensor => {
      if (dryRun) return host;
      const device = toDevice(host, libraryOptions);
      owned.push(device);
      return device;
    };
    try {
      const qShape = [shape.tokens, shape.headsQ, shape.headDim],
        kShape = [shape.tokens, shape.headsKV, shape.headDim];
      const q = place(pool.view(qShape, shape.dtype, random));
      const k = place(pool.view(kShape, shape.dtype, random));
      const v = place(pool.view(kShape, shape.dtype, random));
      const dout = place(pool.view(qShape, shape.dtype, random));
      const options = { ...callOptions, softcap: shape.softcap };
      const { out, lse } = await flexFlashAttnForward(q, k, v, key, options);
      if (!dryRun) owned.push(out as DeviceTensor, lse as DeviceTensor);
      const grads = await flexFlashAttnBackward(dout, q, k, v, out, lse, key, options);
      if (!dryRun) owned.push(grads.dq as DeviceTensor, grads.dk as DeviceTensor, grads.dv as DeviceTensor);
      if (checkFinite) {
        await check(checks.finiteOutputs, `${at} finite`, async () => {
          const host = async (item: AnyTensor) =>
            toFloat32(dryRun ? item as HostTensor : await toHost(item as DeviceTensor));
          if (!allFinite(await host(out))) throw new Error("out has non-finite values");
          if (!isFiniteOrNegInf(await host(lse))) throw new Error("lse has NaN or +inf");
          for (const name of ["dq", "dk", "dv"] as const) {
            if (!allFinite(await host(grads[name]))) throw new Error(`${name} has non-finite values`);
          }
        });
      }
    } finally {
      for (const device of owned) device.dispose();
    }
  };

  const memorySamples: MemorySample[] = [];
  const memorySource = dryRun ? "host RSS (dry run: no device)" : "magi_ffa_mem_info (total − free)";
  const sampleMemory = async (call: number, phase: MemorySample["phase"]) => {
    if (dryRun) {
      memorySamples.push({ call, usedBytes: Deno.memoryUsage().rss, phase });
      return;
    }
    // Frees are stream-ordered (cudaFreeAsync into a pool that is trimmed when the host synchronizes):
    // wait for the legacy default stream and the library's stream first, so the sample sees the memory
    // really held, not the previous call's buffers still in flight.
    const library = loadCudaLibrary(libraryOptions);
    for (const stream of [null, library.stream()]) {
      const status = await library.symbols.magi_ffa_stream_synchronize(stream);
      if (status !== 0) throw new Error(`magi_ffa_stream_synchronize failed with status ${status}`);
    }
    const { freeBytes, totalBytes } = deviceMemoryInfo(libraryOptions);
    memorySamples.push({ call, usedBytes: totalBytes - freeBytes, phase });
  };

  /** A disposed tensor must make forward, backward and toHost throw, and a second dispose be harmless. */
  const useAfterFree = async (at: string) => {
    if (dryRun) {
      checks.useAfterFree.skipped = "needs device tensors (GPU)";
      return;
    }
    await check(checks.useAfterFree, at, async () => {
      const shape = randomCallShape(random, SANITIZER_SIZES);
      const key = compileFlexKey(shape.spec);
      const qShape = [shape.tokens, shape.headsQ, shape.headDim],
        kShape = [shape.tokens, shape.headsKV, shape.headDim];
      using q = toDevice(pool.view(qShape, shape.dtype, random), libraryOptions);
      using k = toDevice(pool.view(kShape, shape.dtype, random), libraryOptions);
      using v = toDevice(pool.view(kShape, shape.dtype, random), libraryOptions);
      const disposed = toDevice(pool.view(qShape, shape.dtype, random), libraryOptions);
      disposed.dispose();
      disposed.dispose(); // twice: harmless
      const expectThrow = async (what: string, call: () => Promise<unknown>) => {
        try {
          await call();
        } catch (error) {
          if (!/used after dispose\(\)/.test(String(error))) {
            throw new Error(`${what}: unexpected error ${error}`);
          }
          return;
        }
        throw new Error(`${what}: a disposed tensor was accepted`);
      };
      await expectThrow("forward", () => flexFlashAttnForward(disposed, k, v, key, callOptions));
      await expectThrow("toHost", () => toHost(disposed));
      const { out, lse } = await flexFlashAttnForward(q, k, v, key, callOptions);
      using outDevice = out as DeviceTensor;
      using lseDevice = lse as DeviceTensor;
      await expectThrow(
        "backward",
        () => flexFlashAttnBackward(disposed, q, k, v, outDevice, lseDevice, key, callOptions),
      );
      lseDevice.dispose();
      await expectThrow(
        "backward (lse)",
        () => flexFlashAttnBackward(q, q, k, v, outDevice, lseDevice, key, callOptions),
      );
    });
  };

  /** Four problems: serial results, then the same concurrently; all must agree bitwise. */
  const problems = (count: number) =>
    Array.from({ length: count }, () => {
      const shape = randomCallShape(random, dryRun ? DRY_RUN_SIZES : SANITIZER_SIZES);
      const qShape = [shape.tokens, shape.headsQ, shape.headDim],
        kShape = [shape.tokens, shape.headsKV, shape.headDim];
      return {
        key: compileFlexKey(shape.spec),
        q: pool.view(qShape, shape.dtype, random),
        k: pool.view(kShape, shape.dtype, random),
        v: pool.view(kShape, shape.dtype, random),
        dout: pool.view(qShape, shape.dtype, random),
      };
    });
  const deterministic = { ...callOptions, deterministic: true };
  const serialResults = async (batch: ReturnType<typeof problems>) => {
    const results = [];
    for (const item of batch) {
      const forward = await flexFlashAttnForward(item.q, item.k, item.v, item.key, deterministic);
      const grads = await flexFlashAttnBackward(
        item.dout,
        item.q,
        item.k,
        item.v,
        forward.out,
        forward.lse,
        item.key,
        deterministic,
      );
      results.push([forward.out, forward.lse, grads.dq, grads.dk, grads.dv] as HostTensor[]);
    }
    return results;
  };
  let streams: Deno.PointerValue[] = [];
  const concurrency = async (at: string) => {
    const batch = problems(4);
    const serial = await serialResults(batch);
    await check(checks.promiseAll, `${at} Promise.all`, async () => {
      const concurrent = await Promise.all(
        batch.map((item) => flexFlashAttnForward(item.q, item.k, item.v, item.key, deterministic)),
      );
      concurrent.forEach((result, index) => {
        if (
          !sameBytes(result.out as HostTensor, serial[index][0]) ||
          !sameBytes(result.lse as HostTensor, serial[index][1])
        ) {
          throw new Error(`problem ${index} differs between Promise.all and serial forward`);
        }
      });
    });
    if (dryRun) {
      checks.streams.skipped = "needs CUDA streams (GPU)";
      return;
    }
    await check(checks.streams, `${at} streams`, async () => {
      const library = loadCudaLibrary(libraryOptions);
      if (streams.length === 0) {
        streams = batch.map(() => {
          const slot = new BigUint64Array(1);
          const status = library.symbols.magi_ffa_stream_create(slot);
          if (status !== 0) throw new Error(`magi_ffa_stream_create failed with status ${status}`);
          return Deno.UnsafePointer.create(slot[0]);
        });
      }
      const owned: DeviceTensor[] = [];
      try {
        // Everything of problem i on stream i: uploads, kernels, downloads. All queued before any wait.
        const launched = batch.map((item, index) => {
          const stream = streams[index];
          const device = [item.q, item.k, item.v, item.dout].map((host) =>
            toDevice(host, { ...libraryOptions, stream })
          );
          owned.push(...device);
          return { device, stream };
        });
        const forwards = await Promise.all(
          launched.map(({ device: [q, k, v], stream }, index) =>
            cudaForward(q, k, v, batch[index].key, { deterministic: true, stream })
          ),
        );
        for (const result of forwards) owned.push(result.out, result.lse);
        const backwards = await Promise.all(
          launched.map(({ device: [q, k, v, dout], stream }, index) =>
            cudaBackward(dout, q, k, v, forwards[index].out, forwards[index].lse, batch[index].key, {
              deterministic: true,
              stream,
            })
          ),
        );
        for (const result of backwards) owned.push(result.dq, result.dk, result.dv);
        const downloaded = await Promise.all(
          launched.map(({ stream }, index) =>
            Promise.all(
              [
                forwards[index].out,
                forwards[index].lse,
                backwards[index].dq,
                backwards[index].dk,
                backwards[index].dv,
              ]
                .map((item) => toHost(item, { stream })),
            )
          ),
        );
        downloaded.forEach((tensors, index) => {
          const names = ["out", "lse", "dq", "dk", "dv"];
          tensors.forEach((item, which) => {
            if (!sameBytes(item, serial[index][which])) {
              throw new Error(`problem ${index} ${names[which]} differs between 4 streams and serial`);
            }
          });
        });
      } finally {
        for (const device of owned) device.dispose();
      }
    });
  };

  /** A small problem against the CPU reference (GPU) or the float64 dense oracle (dry run). */
  const spotCheck = async (at: string) => {
    await check(checks.spotChecks, `${at} spot check`, async () => {
      const shape = randomCallShape(random, dryRun ? DRY_RUN_SIZES : { ...SANITIZER_SIZES, maxTokens: 192 });
      const key = compileFlexKey(shape.spec);
      const qShape = [shape.tokens, shape.headsQ, shape.headDim],
        kShape = [shape.tokens, shape.headsKV, shape.headDim];
      const q = pool.view(qShape, shape.dtype, random), k = pool.view(kShape, shape.dtype, random);
      const v = pool.view(kShape, shape.dtype, random), dout = pool.view(qShape, shape.dtype, random);
      const options = { ...callOptions, softcap: shape.softcap };
      const forward = await flexFlashAttnForward(q, k, v, key, options);
      const grads = await flexFlashAttnBackward(dout, q, k, v, forward.out, forward.lse, key, options);
      const actual: Record<string, ArrayLike<number>> = {
        out: toFloat32(forward.out as HostTensor),
        lse: (forward.lse as HostTensor).data as Float32Array,
        dq: toFloat32(grads.dq as HostTensor),
        dk: toFloat32(grads.dk as HostTensor),
        dv: toFloat32(grads.dv as HostTensor),
      };
      let expected: Record<string, ArrayLike<number>>;
      if (dryRun) {
        const mask = denseMask(key);
        const oracleOptions = { softcap: shape.softcap };
        const oracle = denseAttentionOracle(q, k, v, mask, oracleOptions);
        const oracleGrads = denseAttentionBackwardOracle(dout, q, k, v, mask, oracleOptions);
        expected = { out: oracle.out, lse: oracle.lse, ...oracleGrads };
      } else {
        const reference = referenceForward(q, k, v, key, { softcap: shape.softcap });
        const referenceGrads = referenceBackward(dout, q, k, v, reference.out, reference.lse, key, {
          softcap: shape.softcap,
        });
        expected = {
          out: toFloat32(reference.out),
          lse: reference.lse.data as Float32Array,
          dq: toFloat32(referenceGrads.dq),
          dk: toFloat32(referenceGrads.dk),
          dv: toFloat32(referenceGrads.dv),
        };
      }
      const tolerances = dryRun ? CPU_TOLERANCES : GPU_TOLERANCES;
      const problemsFound: string[] = [];
      for (const name of ["out", "lse", "dq", "dk", "dv"] as const) {
        const error = relativeError(actual[name], expected[name]);
        checks.spotChecks.worst[name] = Math.max(checks.spotChecks.worst[name] ?? 0, error);
        if (!(error <= tolerances[name])) {
          problemsFound.push(`${name} ${error.toExponential(2)} > ${tolerances[name]}`);
        }
      }
      if (problemsFound.length > 0) {
        throw new Error(
          `${shape.builder} ${shape.tokens} tokens ${shape.dtype} Hq ${shape.headsQ} Hkv ${shape.headsKV} ` +
            `D ${shape.headDim} softcap ${shape.softcap}: ${problemsFound.join(", ")}`,
        );
      }
    });
  };

  // Warm up (context, kernels, the library stream) before the first memory sample.
  await soakCall(randomCallShape(random, sizes), "warm-up", false);
  await sampleMemory(0, "start");
  await concurrency("start");
  await spotCheck("start");

  let passedCalls = 0, failedCalls = 0;
  const durations: number[] = [];
  const loopStart = performance.now();
  for (let call = 0; call < args.calls; call++) {
    const shape = randomCallShape(random, sizes);
    count("builder", shape.builder);
    count("dtype", shape.dtype);
    count("headDim", String(shape.headDim));
    count("gqa", `${shape.headsQ}/${shape.headsKV}`);
    count("tokens", shape.tokens < 256 ? "<256" : shape.tokens < 1024 ? "256-1023" : "≥1024");
    const started = performance.now();
    try {
      await soakCall(
        shape,
        `call ${call} (${shape.builder} ${shape.tokens} ${shape.dtype} D${shape.headDim})`,
        call % 10 === 0,
      );
      passedCalls++;
    } catch (error) {
      failedCalls++;
      fail(`call ${call} (${shape.builder} ${shape.tokens} tokens ${shape.dtype} D ${shape.headDim})`, error);
    }
    durations.push(performance.now() - started);
    if ((call + 1) % sampleEvery === 0) {
      await sampleMemory(call + 1, "loop");
      await spotCheck(`after ${call + 1} calls`);
    }
    if ((call + 1) % sampleEvery === Math.floor(sampleEvery / 2)) {
      await useAfterFree(`after ${call + 1} calls`);
    }
    if (call + 1 === Math.floor(args.calls / 2)) await concurrency("middle");
  }
  const seconds = (performance.now() - loopStart) / 1000;
  await concurrency("end");
  await useAfterFree("end");

  // End: drop the key cache (and with it, once collected, the plans) and sample once more.
  clearFlexKeyCache();
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((resolve) => setTimeout(resolve, 50));
  await sampleMemory(args.calls, "end");
  if (!dryRun && streams.length > 0) {
    const library = loadCudaLibrary(libraryOptions);
    for (const stream of streams) {
      await library.symbols.magi_ffa_stream_synchronize(stream);
      library.symbols.magi_ffa_stream_destroy(stream);
    }
  }

  const warmup = memorySamples.find((sample) => sample.call >= sampleEvery) ?? memorySamples[0];
  const later = memorySamples.filter((sample) => sample.call > warmup.call);
  const maxGrowthBytes = Math.max(0, ...later.map((sample) => sample.usedBytes - warmup.usedBytes));
  const endGrowthBytes = memorySamples[memorySamples.length - 1].usedBytes - memorySamples[0].usedBytes;
  // The dry run watches host RSS, which the JS heap moves around: reported, not judged.
  const flat = dryRun || (maxGrowthBytes <= MEMORY_ALLOWANCE && endGrowthBytes <= MEMORY_ALLOWANCE);
  if (flat) passedChecks++;
  else {fail(
      "memory",
      new Error(
        `device memory grew by ${maxGrowthBytes} bytes after warm-up (${endGrowthBytes} end − start)`,
      ),
    );}

  const report: SoakReport = {
    kind: "magi-attn-soak",
    date: new Date().toISOString(),
    gpu,
    mode: { dryRun, sanitizerFriendly: args.sanitizerFriendly, seed: args.seed, backend },
    calls: { requested: args.calls, passed: passedCalls, failed: failedCalls },
    timing: {
      seconds,
      callsPerSecond: args.calls / Math.max(seconds, 1e-9),
      medianCallMs: median(durations),
    },
    memory: {
      source: memorySource,
      samples: memorySamples,
      warmupUsedBytes: warmup.usedBytes,
      maxGrowthBytes,
      endGrowthBytes,
      allowanceBytes: MEMORY_ALLOWANCE,
      flat,
    },
    checks,
    mix,
    failures,
    // fail() counts failed calls and failed checks alike.
    totals: { passed: passedCalls + passedChecks, failed: failedChecks },
  };
  return report;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** Human summary; the last line is `N passed, M failed`. */
export function summarise(report: SoakReport, path: string): string {
  const lines = [
    `soak: ${report.calls.requested} forward+backward calls on ${report.gpu} (backend ${report.mode.backend}` +
    `${report.mode.sanitizerFriendly ? ", sanitizer-friendly" : ""}, seed ${report.mode.seed})`,
    `  calls: ${report.calls.passed} passed, ${report.calls.failed} failed; ${
      report.timing.seconds.toFixed(1)
    } s, ` +
    `${report.timing.callsPerSecond.toFixed(0)} calls/s, median ${report.timing.medianCallMs.toFixed(2)} ms`,
    `  memory (${report.memory.source}): ` +
    report.memory.samples.map((sample) =>
      `${sample.phase === "loop" ? sample.call : sample.phase}: ${mib(sample.usedBytes)}`
    ).join(", "),
    `  memory growth after warm-up ${mib(report.memory.maxGrowthBytes)}, end − start ${
      mib(report.memory.endGrowthBytes)
    }` +
    ` (allowed ${mib(report.memory.allowanceBytes)}): ${report.memory.flat ? "flat" : "GROWING"}`,
  ];
  for (const [name, tally] of Object.entries(report.checks)) {
    const worst = "worst" in tally && Object.keys(tally.worst).length > 0
      ? ` (worst rel. errors ${
        Object.entries(tally.worst).map(([key, value]) => `${key} ${Number(value).toExponential(2)}`).join(
          ", ",
        )
      })`
      : "";
    lines.push(
      `  ${name}: ${
        tally.skipped ? `skipped (${tally.skipped})` : `${tally.passed}/${tally.run} passed${worst}`
      }`,
    );
  }
  for (const failure of report.failures.slice(0, 10)) {
    lines.push(`  FAILED ${failure.at}: ${failure.message}`);
  }
  lines.push(`  report: ${path}`);
  lines.push(`${report.totals.passed} passed, ${report.totals.failed} failed`);
  return lines.join("\n");
}

/** Entry point: parses flags, runs, writes the JSON, prints the summary; returns the exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  let args: SoakArgs;
  try {
    args = parseSoakArgs(argv);
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    return 2;
  }
  if (args.help) {
    console.log(USAGE);
    return 0;
  }
  const report = await runSoak(args);
  const outDir = args.outDir ??
    (args.dryRun
      ? Deno.makeTempDirSync({ prefix: "magi_soak_" })
      : new URL("../bench/", import.meta.url).pathname);
  Deno.mkdirSync(outDir, { recursive: true });
  const name = `soak-${args.dryRun ? "dryrun-cpu" : slug(report.gpu)}-${report.date.slice(0, 10)}.json`;
  const path = `${outDir.replace(/\/$/, "")}/${name}`;
  Deno.writeTextFileSync(path, JSON.stringify(report, null, 2) + "\n");
  console.log(summarise(report, path));
  return report.totals.failed === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
