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
import { type HostTensor, seededRandom, toFloat32 } from "../lib/core/tensor.ts";
import { deviceMemoryInfo, type DeviceTensor, toDevice, toHost } from "../ffi/device.ts";
import { cudaBackward, cudaForward } from "../ffi/cuda_backend.ts";
import { loadCudaLibrary, probeCudaBackend } from "../ffi/library.ts";
import {
  type CallShape,
  DRY_RUN_SIZES,
  GPU_SIZES,
  InputPool,
  randomCallShape,
  SANITIZER_SIZES,
} from "./soak/shapes.ts";
import { type CheckTally, type MemorySample, type SoakReport, summarise } from "./soak/report.ts";
import {
  denseAttentionBackwardOracle,
  denseAttentionOracle,
  relativeError,
} from "../tests/support/oracle.ts";

export type { SoakReport } from "./soak/report.ts";

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
