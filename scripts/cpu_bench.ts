/**
 * `deno task bench:cpu`: times one causal forward + backward on the CPU path (the public
 * flexFlashAttnForward/Backward with backend "cpu") next to numpy's DENSE forward + backward of the same
 * shape (`scripts/numpy_attention.py`, OpenBLAS matrix products over the whole S × S score matrix), in the
 * same run on the same machine, for float32 and bfloat16; optionally also the plain reference loops
 * (lib/backends/reference.ts, the CPU path before it was tiled). Prints a table and writes
 * `bench/cpu-<machine>-<date>.json` with the machine, the date and every sample.
 *
 * numpy and each dtype of ours are timed in turn, round after round, so a load change on a shared machine
 * hits all of them alike. Figures are medians. Flags: `--seqlen N` (2048), `--heads N` (8), `--head-dim N` (64), `--repeats N` (5),
 * `--dtypes a,b` (float32,bfloat16), `--threads N` (default: all cores), `--reference` (also time the plain
 * reference once per dtype: slow), `--skip-numpy`, `--out-dir DIR` (bench/), `--help`.
 * @module
 */

import { flexFlashAttnBackward, flexFlashAttnForward } from "../lib/backends/ffa.ts";
import { toFlexKey } from "../lib/masks/flex_key.ts";
import { referenceBackward, referenceForward } from "../lib/backends/reference.ts";
import { type DType, type HostTensor, randomTensor } from "../lib/core/tensor.ts";

/** Parsed flags of the CPU benchmark. */
export interface CpuBenchArgs {
  /** Tokens (queries = keys). */
  seqlen: number;
  /** Heads (query = key/value). */
  heads: number;
  /** Head dimension. */
  headDim: number;
  /** Timed repetitions per measurement. */
  repeats: number;
  /** Dtypes of our runs. */
  dtypes: DType[];
  /** Worker threads (undefined: the default, all cores). */
  threads?: number;
  /** Also time the plain reference loops. */
  reference: boolean;
  /** Skip numpy. */
  skipNumpy: boolean;
  /** Where the JSON goes. */
  outDir: string;
  /** Print the usage. */
  help: boolean;
}

/** Usage of `deno task bench:cpu`. */
export const CPU_BENCH_USAGE =
  `usage: deno task bench:cpu [--seqlen N] [--heads N] [--head-dim N] [--repeats N] [--dtypes a,b]
                           [--threads N] [--reference] [--skip-numpy] [--out-dir DIR]
env: PYTHON (default python3) runs scripts/numpy_attention.py`;

/** Parses the flags; throws an Error naming a bad flag. */
export function parseCpuBenchArgs(argv: readonly string[]): CpuBenchArgs {
  const args: CpuBenchArgs = {
    seqlen: 2048,
    heads: 8,
    headDim: 64,
    repeats: 5,
    dtypes: ["float32", "bfloat16"],
    reference: false,
    skipNumpy: false,
    outDir: "bench",
    help: false,
  };
  const integer = (flag: string, value: string | undefined, minimum: number): number => {
    const parsed = Number(value);
    if (!Number.isSafeInteger(parsed) || parsed < minimum) {
      throw new Error(
        `${flag} needs an integer ≥ ${minimum}, got ${JSON.stringify(value)}\n${CPU_BENCH_USAGE}`,
      );
    }
    return parsed;
  };
  for (let index = 0; index < argv.length; index++) {
    const flag = argv[index];
    const value = argv[index + 1];
    switch (flag) {
      case "--seqlen":
        args.seqlen = integer(flag, value, 1), index++;
        break;
      case "--heads":
        args.heads = integer(flag, value, 1), index++;
        break;
      case "--head-dim":
        args.headDim = integer(flag, value, 1), index++;
        break;
      case "--repeats":
        args.repeats = integer(flag, value, 1), index++;
        break;
      case "--threads":
        args.threads = integer(flag, value, 0), index++;
        break;
      case "--dtypes": {
        const names = (value ?? "").split(",");
        if (names.some((name) => !["float32", "float16", "bfloat16"].includes(name))) {
          throw new Error(`--dtypes takes float32, float16, bfloat16; got ${JSON.stringify(value)}`);
        }
        args.dtypes = names as DType[];
        index++;
        break;
      }
      case "--out-dir":
        if (!value) throw new Error(`--out-dir needs a directory\n${CPU_BENCH_USAGE}`);
        args.outDir = value, index++;
        break;
      case "--reference":
        args.reference = true;
        break;
      case "--skip-numpy":
        args.skipNumpy = true;
        break;
      case "--help":
        args.help = true;
        break;
      default:
        throw new Error(`unknown flag ${flag}\n${CPU_BENCH_USAGE}`);
    }
  }
  return args;
}

/** Median of a non-empty list. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** One timed forward + backward, seconds. */
interface Sample {
  forward: number;
  backward: number;
  total: number;
}

function summarize(samples: readonly Sample[]): Sample {
  return {
    forward: median(samples.map((sample) => sample.forward)),
    backward: median(samples.map((sample) => sample.backward)),
    total: median(samples.map((sample) => sample.total)),
  };
}

/** Inputs of one dtype and a function timing one forward + backward on them. */
function oursRunner(args: CpuBenchArgs, dtype: DType, plainReference: boolean): () => Promise<Sample> {
  const { seqlen, heads, headDim } = args;
  const key = toFlexKey({ qRanges: [[0, seqlen]], kRanges: [[0, seqlen]], attnTypeMap: [1] }, {
    totalQ: seqlen,
    totalK: seqlen,
  });
  const make = (seed: number): HostTensor => randomTensor([seqlen, heads, headDim], { seed, dtype });
  const q = make(1), k = make(2), v = make(3), dout = make(4);
  const options = { backend: "cpu" as const };
  return async () => {
    const start = performance.now();
    let middle: number;
    if (plainReference) {
      const forward = referenceForward(q, k, v, key);
      middle = performance.now();
      referenceBackward(dout, q, k, v, forward.out, forward.lse, key);
    } else {
      const forward = await flexFlashAttnForward(q, k, v, key, options);
      middle = performance.now();
      await flexFlashAttnBackward(dout, q, k, v, forward.out, forward.lse, key, options);
    }
    const end = performance.now();
    return { forward: (middle - start) / 1e3, backward: (end - middle) / 1e3, total: (end - start) / 1e3 };
  };
}

/** What numpy_attention.py reports. */
interface NumpyReport {
  samples: Sample[];
  numpy: string;
  blas: string;
}

async function timeNumpy(args: CpuBenchArgs): Promise<NumpyReport> {
  const python = Deno.env.get("PYTHON") ?? "python3";
  const script = new URL("./numpy_attention.py", import.meta.url).pathname;
  // One timed run per call (after numpy's own warm-up run): the caller interleaves the calls with ours.
  const params = { seqlen: args.seqlen, heads: args.heads, head_dim: args.headDim, causal: true, repeats: 1 };
  const { code, stdout, stderr } = await new Deno.Command(python, {
    args: [script, JSON.stringify(params)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) throw new Error(`numpy_attention.py failed: ${new TextDecoder().decode(stderr)}`);
  const report = JSON.parse(new TextDecoder().decode(stdout).trim().split("\n").at(-1)!);
  return {
    samples: report.samples.map((sample: { forward_s: number; backward_s: number; total_s: number }) => ({
      forward: sample.forward_s,
      backward: sample.backward_s,
      total: sample.total_s,
    })),
    numpy: report.numpy,
    blas: report.blas,
  };
}

/** The machine, as the JSON and the README name it. */
async function describeMachine(): Promise<Record<string, unknown>> {
  // Deno reads /proc only with --allow-all, so ask `cat` (Linux) or `sysctl` (macOS).
  const commandOutput = async (command: string, commandArgs: string[]) => {
    try {
      const { code, stdout } = await new Deno.Command(command, {
        args: commandArgs,
        stdout: "piped",
        stderr: "null",
      })
        .output();
      return code === 0 ? new TextDecoder().decode(stdout) : "";
    } catch {
      return "";
    }
  };
  const cpuinfo = await commandOutput("cat", ["/proc/cpuinfo"]);
  const cpu = cpuinfo.match(/^model name\s*:\s*(.+)$/m)?.[1] ??
    ((await commandOutput("sysctl", ["-n", "machdep.cpu.brand_string"])).trim() || "unknown CPU");
  let load: number[] | undefined;
  try {
    load = Deno.loadavg();
  } catch {
    load = undefined;
  }
  return {
    cpu,
    cores: navigator.hardwareConcurrency,
    os: `${Deno.build.os} ${Deno.osRelease()}`,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    hostname: Deno.hostname(),
    loadAverage: load,
  };
}

function formatSeconds(value: number): string {
  return value >= 10 ? value.toFixed(1) : value.toFixed(3);
}

if (import.meta.main) {
  const args = parseCpuBenchArgs(Deno.args);
  if (args.help) {
    console.log(CPU_BENCH_USAGE);
    Deno.exit(0);
  }
  // The CPU path reads its thread count from MAGI_CPU_THREADS (the public options do not carry it).
  if (args.threads !== undefined) Deno.env.set("MAGI_CPU_THREADS", String(args.threads));
  const machine = await describeMachine();
  const shape = `S=${args.seqlen} H=${args.heads} D=${args.headDim} causal`;
  console.log(`CPU benchmark, ${shape}: ${machine.cpu}, ${machine.cores} cores, load ${machine.loadAverage}`);
  // Interleaved: each round times numpy once and each dtype once, so a load change on a shared machine
  // hits every column alike. One untimed round first (compiles, starts the workers, warms numpy).
  const numpySamples: Sample[] = [];
  let numpyInfo: { numpy: string; blas: string } | undefined;
  const ours: Record<string, Sample[]> = {};
  const runners = args.dtypes.map((dtype) => [dtype, oursRunner(args, dtype, false)] as const);
  for (let round = 0; round <= args.repeats; round++) {
    if (!args.skipNumpy) {
      const report = await timeNumpy(args);
      numpyInfo = { numpy: report.numpy, blas: report.blas };
      if (round > 0) numpySamples.push(...report.samples);
    }
    for (const [dtype, runner] of runners) {
      const sample = await runner();
      if (round > 0) (ours[dtype] ??= []).push(sample);
    }
  }
  const reference: Record<string, Sample[]> = {};
  if (args.reference) {
    for (const dtype of args.dtypes) reference[dtype] = [await oursRunner(args, dtype, true)()];
  }

  const numpy = numpySamples.length ? summarize(numpySamples) : undefined;
  const rows: string[][] = [["run", "forward s", "backward s", "total s", "× numpy dense"]];
  const ratio = (total: number) => numpy ? (total / numpy.total).toFixed(2) : "–";
  if (numpy) {
    rows.push([
      "numpy dense float32",
      formatSeconds(numpy.forward),
      formatSeconds(numpy.backward),
      formatSeconds(numpy.total),
      "1.00",
    ]);
  }
  const results: Record<string, unknown> = {};
  for (const dtype of args.dtypes) {
    const summary = summarize(ours[dtype]);
    results[dtype] = {
      ...summary,
      ratioToNumpy: numpy ? summary.total / numpy.total : undefined,
      samples: ours[dtype],
    };
    rows.push([
      `ours ${dtype}`,
      formatSeconds(summary.forward),
      formatSeconds(summary.backward),
      formatSeconds(summary.total),
      ratio(summary.total),
    ]);
    if (reference[dtype]) {
      const plain = summarize(reference[dtype]);
      results[`reference-${dtype}`] = {
        ...plain,
        ratioToNumpy: numpy ? plain.total / numpy.total : undefined,
      };
      rows.push([
        `plain reference ${dtype}`,
        formatSeconds(plain.forward),
        formatSeconds(plain.backward),
        formatSeconds(plain.total),
        ratio(plain.total),
      ]);
    }
  }
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  for (const row of rows) console.log(row.map((cell, column) => cell.padStart(widths[column])).join("  "));
  const float32 = results.float32 as Sample | undefined, bfloat16 = results.bfloat16 as Sample | undefined;
  if (float32 && bfloat16) console.log(`bfloat16 / float32: ${(bfloat16.total / float32.total).toFixed(2)}`);

  const now = new Date();
  const stamp = now.toISOString().slice(0, 16).replace(
    /[-:T]/g,
    (char) => (char === "T" ? "-" : char === ":" ? "" : "-"),
  );
  const slug = String(machine.cpu).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
  await Deno.mkdir(args.outDir, { recursive: true });
  const path = `${args.outDir}/cpu-${slug}-${machine.cores}c-${stamp}.json`;
  const report = {
    date: now.toISOString(),
    machine: { ...machine, loadAverageAtEnd: Deno.loadavg?.() },
    problem: {
      seqlen: args.seqlen,
      heads: args.heads,
      headDim: args.headDim,
      mask: "causal",
      threads: args.threads ?? "default",
    },
    numpy: numpy
      ? { ...numpyInfo, ...numpy, samples: numpySamples, note: "dense: every S × S cell computed" }
      : undefined,
    ours: results,
  };
  await Deno.writeTextFile(path, JSON.stringify(report, null, 2) + "\n");
  console.log(`wrote ${path}`);
}
