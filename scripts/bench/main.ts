/**
 * `deno task bench`: times our flex flash attention (forward and backward, bf16) on the benchmark cases of
 * `scripts/bench/cases.ts`, runs the PyTorch peers (`scripts/bench/peers.py`: cuDNN SDPA, flash SDPA, FlexAttention) on
 * the same cases with the same area-counted FLOPs, and prints one table; writes
 * `results-<gpu>-<date>.json` and `.svg` (grouped bar chart) into the output directory.
 *
 * Flags: `--quick` (only the main masks at 16k), `--cases a,b` (only these), `--skip-peers`,
 * `--peers cudnn,flash,flex` (which peers), `--dry-run` (no GPU: simulated timings, files into a temp dir
 * unless `--out-dir`), `--out-dir DIR` (default `bench/`), `--help`.
 *
 * How ours is timed: inputs and outputs stay on the GPU (outputs preallocated, so no allocation is timed);
 * after a warm-up, batches of back-to-back calls (about 10 ms each) end with one stream synchronization;
 * per-call time = batch time / calls; the reported time is the median over batches (at least 5 batches and
 * 0.5 s, or 20 batches). The host overhead of one call is measured separately on a tiny problem.
 * @module
 */

import {
  allCases,
  type BenchCase,
  type CaseFlops,
  countFlops,
  flexKeyOf,
  hashBf16,
  INPUT_RECIPES,
  type InputRole,
  type PeerCaseJson,
  peerCaseJson,
  sampleRows,
  selectCases,
} from "./cases.ts";
import { type BarChart, formatTable, renderBarChartSvg } from "./chart.ts";
import { MagiAttnInputError } from "../../lib/core/errors.ts";
import type { FlexKey } from "../../lib/core/types.ts";

// ----- arguments ------------------------------------------------------------------------------------------

/** Parsed command line of the benchmark. */
export interface BenchArgs {
  /** Only the main masks at 16k. */
  quick: boolean;
  /** Only these case names (empty: all selected by `quick`). */
  cases: string[];
  /** Do not run `scripts/bench/peers.py`. */
  skipPeers: boolean;
  /** Which peers `scripts/bench/peers.py` runs. */
  peers: string[];
  /** No GPU: simulated timings, everything else real. */
  dryRun: boolean;
  /** Where the results go; default `bench/` (a temp dir for `--dry-run`). */
  outDir?: string;
  /** Print the usage and exit. */
  help: boolean;
}

/** The peers `scripts/bench/peers.py` knows. */
export const PEER_NAMES: readonly string[] = Object.freeze(["cudnn", "flash", "flex"]);

/** Usage text of `deno task bench`. */
export const USAGE = `usage: deno task bench [--quick] [--cases a,b] [--skip-peers] [--peers cudnn,flash,flex]
                       [--dry-run] [--out-dir DIR]
  --quick       only the main masks at S = 16k
  --cases a,b   only these cases (names: ${allCases().map((item) => item.name).join(", ")})
  --skip-peers  do not run scripts/bench/peers.py (PyTorch cuDNN / flash SDPA and FlexAttention)
  --peers list  peers to run (default cudnn,flash,flex)
  --dry-run     no GPU: simulated timings; still writes the JSON and SVG (into a temp dir unless --out-dir)
  --out-dir DIR where results-<gpu>-<date>.json/.svg go (default bench/)
env: PYTHON (default python3) runs the peers; MAGI_FFA_LIBRARY picks the CUDA library.`;

/** Parses the benchmark's flags; throws {@linkcode MagiAttnInputError} naming a bad flag. */
export function parseBenchArgs(argv: readonly string[]): BenchArgs {
  const args: BenchArgs = {
    quick: false,
    cases: [],
    skipPeers: false,
    peers: [...PEER_NAMES],
    dryRun: false,
    help: false,
  };
  const valueOf = (index: number, flag: string): string => {
    const value = argv[index + 1];
    if (value === undefined || value.startsWith("--")) {
      throw new MagiAttnInputError(flag, "has no value", `write ${flag} VALUE`);
    }
    return value;
  };
  for (let index = 0; index < argv.length; index++) {
    const raw = argv[index];
    const [flag, inline] = raw.includes("=")
      ? [raw.slice(0, raw.indexOf("=")), raw.slice(raw.indexOf("=") + 1)]
      : [
        raw,
        undefined,
      ];
    const take = (): string => {
      if (inline !== undefined) return inline;
      const value = valueOf(index, flag);
      index++;
      return value;
    };
    switch (flag) {
      case "--quick":
        args.quick = true;
        break;
      case "--skip-peers":
        args.skipPeers = true;
        break;
      case "--dry-run":
        args.dryRun = true;
        break;
      case "--help":
      case "-h":
        args.help = true;
        break;
      case "--cases":
        args.cases = take().split(",").map((name) => name.trim()).filter((name) => name !== "");
        break;
      case "--out-dir":
        args.outDir = take();
        break;
      case "--peers": {
        const peers = take().split(",").map((name) => name.trim()).filter((name) => name !== "");
        const unknown = peers.filter((name) => !PEER_NAMES.includes(name));
        if (unknown.length > 0 || peers.length === 0) {
          throw new MagiAttnInputError(
            "--peers",
            `names ${unknown.length ? `unknown peer(s) ${unknown.join(", ")}` : "no peer"}`,
            `use a comma-separated subset of ${PEER_NAMES.join(",")} (or --skip-peers)`,
          );
        }
        args.peers = peers;
        break;
      }
      default:
        throw new MagiAttnInputError(
          raw,
          "is not a flag of the benchmark",
          "use --quick, --cases, --skip-peers, --peers, --dry-run, --out-dir or --help",
        );
    }
  }
  return args;
}

// ----- timing ---------------------------------------------------------------------------------------------

/** A clock in milliseconds (`performance.now` on the GPU; a simulated one in `--dry-run`). */
export type Clock = () => number;

/** Result of {@linkcode measureBatches}. */
export interface BatchTiming {
  /** Median milliseconds per call over the batches. */
  ms: number;
  /** Calls per batch. */
  batch: number;
  /** Batches timed. */
  batches: number;
  /** Smallest and largest per-call batch time (the spread). */
  minMs: number;
  /** Largest per-call batch time. */
  maxMs: number;
}

/** Knobs of {@linkcode measureBatches}. */
export interface BatchOptions {
  /** Target duration of one batch, ms (default 10). */
  batchMs?: number;
  /** Most calls in one batch (default 64). */
  maxBatch?: number;
  /** Stop after this many batches (default 20)… */
  maxBatches?: number;
  /** …or once this much time has passed, ms (default 500), with at least `minBatches` (default 5). */
  minTotalMs?: number;
  /** Fewest batches (default 5). */
  minBatches?: number;
  /** Warm-up calls (default 3). */
  warmup?: number;
}

/**
 * Times `launch` (which queues GPU work and returns) with `sync` (which waits for the GPU): warm-up, one
 * synchronized call to size the batches (about `batchMs` each), then batches of back-to-back calls each
 * followed by one `sync`; per-call time = batch time / batch size; returns the median.
 */
export async function measureBatches(
  launch: () => unknown,
  sync: () => Promise<void>,
  clock: Clock,
  options: BatchOptions = {},
): Promise<BatchTiming> {
  const {
    batchMs = 10,
    maxBatch = 64,
    maxBatches = 20,
    minTotalMs = 500,
    minBatches = 5,
    warmup = 3,
  } = options;
  for (let call = 0; call < warmup; call++) await launch();
  await sync();
  let start = clock();
  await launch();
  await sync();
  const single = Math.max(clock() - start, 1e-6);
  const batch = Math.max(1, Math.min(maxBatch, Math.ceil(batchMs / single)));
  const samples: number[] = [];
  const began = clock();
  while (true) {
    start = clock();
    for (let call = 0; call < batch; call++) await launch();
    await sync();
    samples.push((clock() - start) / batch);
    const elapsed = clock() - began;
    if (samples.length >= maxBatches || (samples.length >= minBatches && elapsed >= minTotalMs)) break;
  }
  return {
    ms: median(samples),
    batch,
    batches: samples.length,
    minMs: Math.min(...samples),
    maxMs: Math.max(...samples),
  };
}

/** Per-call host and wall time of many back-to-back calls, from {@linkcode measureIssue}. */
export interface IssueTiming {
  /** Host time per call until the last call returned (before the final sync), µs: the caller's cost. */
  issueUs: number;
  /** Wall time per call including the final sync, µs: max(host cost, GPU time) per call, roughly. */
  wallUs: number;
}

/**
 * Host cost of a call: `calls` back-to-back calls, then one sync; medians over `rounds` rounds of the
 * time until the last call returned and until the sync returned, per call. `afterRound` runs after each
 * round's sync, untimed (e.g. to free the round's outputs).
 */
export async function measureIssue(
  launch: () => unknown,
  sync: () => Promise<void>,
  clock: Clock,
  calls = 1000,
  rounds = 5,
  afterRound: () => void = () => {},
): Promise<IssueTiming> {
  for (let call = 0; call < Math.min(calls, 50); call++) await launch();
  await sync();
  afterRound();
  const issue: number[] = [], wall: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const start = clock();
    for (let call = 0; call < calls; call++) await launch();
    const issued = clock();
    await sync();
    const done = clock();
    afterRound();
    issue.push(((issued - start) * 1000) / calls);
    wall.push(((done - start) * 1000) / calls);
  }
  return { issueUs: median(issue), wallUs: median(wall) };
}

/** Median of a non-empty list. */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new Error("median of an empty list");
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/**
 * A simulated GPU for `--dry-run` and tests: launches cost `hostMs` of host time and queue `kernelMs` of
 * GPU work behind what is already queued; `sync` advances the host clock to the end of the queue.
 */
export class SimulatedGpu {
  #now = 0;
  #gpuFreeAt = 0;
  /** @param syncMs host time a synchronization costs on top of waiting */
  constructor(readonly syncMs = 0.02) {}
  /** The simulated host clock, ms. */
  readonly clock: Clock = () => this.#now;
  /** Queues one kernel of `kernelMs` after `hostMs` of host work. */
  launch(kernelMs: number, hostMs: number): void {
    this.#now += hostMs;
    this.#gpuFreeAt = Math.max(this.#now, this.#gpuFreeAt) + kernelMs;
  }
  /** Waits (in simulated time) for every queued kernel. */
  sync(): Promise<void> {
    this.#now = Math.max(this.#now, this.#gpuFreeAt) + this.syncMs;
    return Promise.resolve();
  }
}

// ----- inputs ---------------------------------------------------------------------------------------------

/** bf16 bit patterns of each input role, long enough for the largest selected case (prefix property). */
export type InputPools = Record<InputRole, Uint16Array>;

/** Builds the input pools for `cases` (each role: `hashBf16` over the largest element count needed). */
export function makeInputPools(cases: readonly BenchCase[]): InputPools {
  const count = Math.max(
    0,
    ...cases.map((item) => item.seqlen * Math.max(item.headsQ, item.headsKv) * item.headDim),
  );
  const pool = (role: InputRole): Uint16Array => {
    const recipe = INPUT_RECIPES[role];
    return hashBf16(count, recipe.seed, recipe.expLo, recipe.expHi);
  };
  return { q: pool("q"), k: pool("k"), v: pool("v"), dout: pool("dout") };
}

/** Rows `rows` of a `[tokens, heads, dim]` bf16 tensor, flattened `[rows, heads, dim]`. */
export function extractRows(
  bits: Uint16Array,
  heads: number,
  dim: number,
  rows: readonly number[],
): number[] {
  const rowSize = heads * dim;
  const out: number[] = [];
  for (const row of rows) {
    if ((row + 1) * rowSize > bits.length) {
      throw new Error(`row ${row} is outside a tensor of ${bits.length} elements`);
    }
    for (let index = row * rowSize; index < (row + 1) * rowSize; index++) out.push(bits[index]);
  }
  return out;
}

/** Counts of non-finite and zero elements of a bf16 tensor (bit patterns). */
export function scanBf16(bits: Uint16Array): { nonFinite: number; zeros: number; count: number } {
  let nonFinite = 0, zeros = 0;
  for (let index = 0; index < bits.length; index++) {
    const value = bits[index];
    if ((value & 0x7f80) === 0x7f80) nonFinite++;
    else if ((value & 0x7fff) === 0) zeros++;
  }
  return { nonFinite, zeros, count: bits.length };
}

// ----- results --------------------------------------------------------------------------------------------

/** Our result on one case (or the error that stopped it). */
export interface OursResult {
  /** Forward ms per call (median). */
  msFwd?: number;
  /** Backward ms per call (median). */
  msBwd?: number;
  /** Forward TFLOP/s, area-counted. */
  tflopsFwd?: number;
  /** Backward TFLOP/s, area-counted. */
  tflopsBwd?: number;
  /** Forward timing details. */
  timingFwd?: BatchTiming;
  /** Backward timing details. */
  timingBwd?: BatchTiming;
  /** Output scan: non-finite and zero counts of out, dq, dk, dv (outputs were poisoned with NaN first). */
  check?: Record<string, { nonFinite: number; zeros: number; count: number }>;
  /** What failed, if anything. */
  error?: string;
}

/** Rows of our outputs sent to the peers for comparison (bf16 bit patterns, `[rows, heads, dim]`). */
export interface OursSamples {
  /** Token rows sampled (query rows for out/dq, key rows for dk/dv). */
  rows: number[];
  /** Attention output rows. */
  out: number[];
  /** dq rows. */
  dq: number[];
  /** dk rows. */
  dk: number[];
  /** dv rows. */
  dv: number[];
}

/** One peer's result on one case, as `scripts/bench/peers.py` writes it (snake_case). */
export interface PeerResult {
  /** Forward ms (median). */
  ms_fwd?: number;
  /** Backward ms (median). */
  ms_bwd?: number;
  /** Forward TFLOP/s, counted with our area. */
  tflops_fwd?: number | null;
  /** Backward TFLOP/s, counted with our area. */
  tflops_bwd?: number | null;
  /** Why the peer failed on this case. */
  error?: string;
  /** Other fields (gqa_mode, compile_s, block_mask_ms, …). */
  [field: string]: unknown;
}

/** Host overhead of one forward call (tiny problem, device tensors, cached key). */
export interface HostOverhead {
  /** The tiny problem. */
  problem: string;
  /** `flexFlashAttnForward` (public API: validation, output allocation, launch). */
  publicApi: IssueTiming;
  /** `cudaForward` with preallocated outputs (validation, launch). */
  preallocated: IssueTiming;
  /** `magi_ffa_forward` through the FFI symbol directly (the floor: FFI + kernel launch). */
  rawFfi: IssueTiming;
  /** Median of (one call + one sync), µs: the latency of a lone call. */
  syncedCallUs: number;
  /** GPU time per tiny kernel, µs, when back-to-back raw launches are GPU-bound; null if host-bound. */
  kernelEstimateUs: number | null;
  /** Host time per public call (issueUs of `publicApi`), µs: what the caller pays. */
  hostUsPerCall: number;
  /** Target of the host overhead per call, µs. */
  targetUs: number;
  /** Error, if the measurement failed. */
  error?: string;
}

/** One case in the results file. */
export interface CaseReport {
  /** Case name. */
  name: string;
  /** "main" or "extra". */
  group: string;
  /** Mask kind (semantic). */
  maskKind: string;
  /** Tokens. */
  S: number;
  /** Query heads. */
  Hq: number;
  /** Key/value heads. */
  Hkv: number;
  /** Head dim. */
  D: number;
  /** Slices of our key. */
  slices: number;
  /** Visible cells. */
  area: number;
  /** Forward FLOPs. */
  flopsFwd: number;
  /** Backward FLOPs. */
  flopsBwd: number;
  /** Ours. */
  ours: OursResult;
  /** Peers by name. */
  peers: Record<string, PeerResult>;
  /** Cross-checks (relative errors) reported by the peers script. */
  checks: Record<string, number | null>;
  /** Error of the peers script on this case as a whole (e.g. inputs did not fit). */
  peersError?: string;
}

/** The whole results file. */
export interface BenchReport {
  /** Format tag. */
  schema: "magi-attn-bench/1";
  /** ISO time the run started. */
  date: string;
  /** True when no GPU was used (numbers are simulated). */
  dryRun: boolean;
  /** Command-line flags. */
  args: string[];
  /** GPU name from `backendInfo()` (or the peers' torch when that is all there is). */
  gpu: string;
  /** CUDA library path. */
  libraryPath?: string;
  /**
   * The `MAGI_FFA_*` environment variables set for the run (kernel choices such as `MAGI_FFA_FWD_KERNEL`,
   * tuning and timing knobs): empty for the default kernels; absent in files written before it existed.
   */
  kernelSettings?: Record<string, string>;
  /** Deno, V8 and TypeScript versions. */
  deno: { deno: string; v8: string; typescript: string };
  /** torch, CUDA, cuDNN and Triton versions as the peers saw them (null without peers). */
  torch: Record<string, unknown> | null;
  /** Measured ceilings (bf16 matmul TFLOP/s, copy GB/s) from the peers script. */
  ceilings: Record<string, unknown> | null;
  /** Host overhead per forward call. */
  hostOverhead: HostOverhead | null;
  /** Per case. */
  cases: CaseReport[];
  /** Failure of the peers script as a whole. */
  peersError?: string;
  /** Wall seconds of the whole run. */
  totalSeconds?: number;
}

const PEER_LABELS: Readonly<Record<string, string>> = Object.freeze({
  cudnn: "cuDNN",
  flash: "flash",
  flex: "Flex",
});

function cellTflops(value: number | null | undefined, error?: string): string {
  if (error !== undefined) return "err";
  return value === undefined || value === null || !Number.isFinite(value) ? "-" : value.toFixed(0);
}

function ratio(ours: number | undefined, peer: number | null | undefined): string {
  if (ours === undefined || peer === undefined || peer === null || !(peer > 0) || !Number.isFinite(ours)) {
    return "-";
  }
  return `${(ours / peer).toFixed(2)}x`;
}

/** The measured bf16 matmul ceiling, TFLOP/s, if the peers measured it. */
export function matmulCeiling(report: BenchReport): number | undefined {
  const value = report.ceilings?.["matmul_bf16_8192_tflops"];
  return typeof value === "number" && value > 0 ? value : undefined;
}

/**
 * The results table: per case, TFLOP/s of ours and each peer (fwd/bwd), ours/cuDNN and ours/Flex ratios,
 * and ours' forward as a fraction of the measured matmul ceiling. "-": not run or not applicable; "err":
 * failed (the reason is listed under the table).
 */
export function formatResultsTable(report: BenchReport): string {
  const ceiling = matmulCeiling(report);
  const headers = [
    "case",
    "ours fwd",
    "ours bwd",
    "cuDNN fwd",
    "cuDNN bwd",
    "flash fwd",
    "flash bwd",
    "Flex fwd",
    "Flex bwd",
    "/cuDNN fwd",
    "/cuDNN bwd",
    "/Flex fwd",
    "/Flex bwd",
    "fwd %mm",
  ];
  const rows = report.cases.map((item) => {
    const ours = item.ours;
    const peer = (name: string): PeerResult | undefined => item.peers[name];
    const cudnn = peer("cudnn"), flash = peer("flash"), flex = peer("flex");
    return [
      item.name,
      cellTflops(ours.tflopsFwd, ours.error),
      cellTflops(ours.tflopsBwd, ours.error),
      cellTflops(cudnn?.tflops_fwd, cudnn?.error),
      cellTflops(cudnn?.tflops_bwd, cudnn?.error),
      cellTflops(flash?.tflops_fwd, flash?.error),
      cellTflops(flash?.tflops_bwd, flash?.error),
      cellTflops(flex?.tflops_fwd, flex?.error),
      cellTflops(flex?.tflops_bwd, flex?.error),
      ratio(ours.tflopsFwd, cudnn?.tflops_fwd),
      ratio(ours.tflopsBwd, cudnn?.tflops_bwd),
      ratio(ours.tflopsFwd, flex?.tflops_fwd),
      ratio(ours.tflopsBwd, flex?.tflops_bwd),
      ceiling !== undefined && ours.tflopsFwd !== undefined
        ? `${((100 * ours.tflopsFwd) / ceiling).toFixed(0)}%`
        : "-",
    ];
  });
  return formatTable(headers, rows);
}

/** Lines under the table: ceilings, host overhead, failures, cross-check warnings, FlexAttention costs. */
export function formatNotes(report: BenchReport): string[] {
  const lines: string[] = [];
  const ceiling = matmulCeiling(report);
  const copy = report.ceilings?.["copy_gbps"];
  if (report.ceilings === null) lines.push("ceilings: not measured (they come from the peers script)");
  else {
    lines.push(
      `ceilings (measured by torch): bf16 matmul 8192^3 ${
        ceiling !== undefined ? ceiling.toFixed(0) : "?"
      } TFLOP/s` +
        `, device copy ${typeof copy === "number" ? copy.toFixed(0) : "?"} GB/s (read+write)`,
    );
  }
  const host = report.hostOverhead;
  if (host?.error) lines.push(`host overhead: FAILED ${host.error}`);
  else if (host) {
    const us = (value: number): string => `${value.toFixed(1)} µs`;
    lines.push(
      `host overhead per forward call (${host.problem}, 1000 back-to-back calls then one sync): ` +
        `public API ${us(host.publicApi.issueUs)} host / ${us(host.publicApi.wallUs)} wall; ` +
        `preallocated outputs ${us(host.preallocated.issueUs)} / ${us(host.preallocated.wallUs)}; ` +
        `raw FFI ${us(host.rawFfi.issueUs)} / ${us(host.rawFfi.wallUs)}; lone call + sync ${
          us(host.syncedCallUs)
        }; ` +
        `kernel ≈ ${host.kernelEstimateUs === null ? "n/a (host-bound)" : us(host.kernelEstimateUs)}; ` +
        `target < ${host.targetUs} µs host: ${host.hostUsPerCall < host.targetUs ? "met" : "MISSED"}`,
    );
  }
  for (const item of report.cases) {
    if (item.ours.error) lines.push(`${item.name} ours: FAILED ${item.ours.error}`);
    const check = item.ours.check;
    if (check) {
      for (const [name, scan] of Object.entries(check)) {
        if (scan.nonFinite > 0) {
          lines.push(`${item.name} ours: ${name} has ${scan.nonFinite} non-finite values`);
        }
      }
    }
    if (item.peersError) lines.push(`${item.name} peers: FAILED ${item.peersError}`);
    for (const [name, result] of Object.entries(item.peers)) {
      if (result.error) {
        lines.push(`${item.name} ${PEER_LABELS[name] ?? name}: FAILED ${result.error.slice(0, 300)}`);
      }
      if (result.gqa_mode === "repeat_kv") {
        lines.push(`${item.name} ${PEER_LABELS[name] ?? name}: GQA by repeating kv heads`);
      }
    }
    const worst: string[] = [];
    for (const [name, value] of Object.entries(item.checks)) {
      if (!name.startsWith("ours_vs_") || typeof value !== "number") continue;
      const limit = name.endsWith("_out_rel_err") || name.endsWith("_dv_rel_err") ? 0.03 : 0.08;
      if (!(value <= limit)) worst.push(`${name.slice(8, -8)} ${value.toExponential(1)} (> ${limit})`);
    }
    if (worst.length) lines.push(`${item.name} CHECK ours vs peers relative error: ${worst.join(", ")}`);
  }
  const checked = report.cases.flatMap((item) =>
    Object.entries(item.checks).filter(([name, value]) =>
      name.startsWith("ours_vs_") && typeof value === "number"
    )
      .map(([, value]) => value as number)
  );
  if (checked.length > 0) {
    lines.push(
      `ours vs peers on sampled rows (out, dq, dk, dv): ${checked.length} comparisons, largest relative error ` +
        `${Math.max(...checked).toExponential(2)}`,
    );
  }
  const flexCosts = report.cases.map((item) => item.peers["flex"]).filter((flex) => flex && !flex.error);
  if (flexCosts.length > 0) {
    const sum = (field: string): number =>
      flexCosts.reduce(
        (total, flex) => total + (typeof flex[field] === "number" ? flex[field] as number : 0),
        0,
      );
    lines.push(
      `FlexAttention (not in its TFLOP/s): compile ${sum("compile_s").toFixed(1)} s in all, block masks ` +
        `${sum("block_mask_ms").toFixed(0)} ms in all`,
    );
  }
  return lines;
}

/** The grouped bar chart of a report: forward and backward panels, ours vs each peer, per case. */
export function resultsChart(report: BenchReport): BarChart {
  const peers = PEER_NAMES.filter((name) => report.cases.some((item) => item.peers[name] !== undefined));
  const series = [
    { name: "ours (magi-attn)", color: "#d1495b" },
    ...peers.map((name) => ({
      name: `${PEER_LABELS[name]}${name === "flex" ? "Attention" : " SDPA"}`,
      color: ({ cudnn: "#30638e", flash: "#00798c", flex: "#edae49" } as Record<string, string>)[name] ??
        "#888",
    })),
  ];
  const ceiling = matmulCeiling(report);
  const referenceLine = ceiling !== undefined
    ? { value: ceiling, label: `bf16 matmul ${ceiling.toFixed(0)}` }
    : undefined;
  const panel = (title: string, pick: "fwd" | "bwd") => ({
    title,
    referenceLine,
    groups: report.cases.map((item) => ({
      label: item.name,
      values: [
        item.ours.error ? "err" : (pick === "fwd" ? item.ours.tflopsFwd : item.ours.tflopsBwd) ?? null,
        ...peers.map((name) => {
          const result = item.peers[name];
          if (!result) return null;
          if (result.error) return "err";
          return (pick === "fwd" ? result.tflops_fwd : result.tflops_bwd) ?? null;
        }),
      ],
    })),
  });
  const torchVersion = report.torch?.["torch_version"];
  return {
    title: `magi-attn flex flash attention vs PyTorch peers${
      report.dryRun ? " (DRY RUN: simulated numbers)" : ""
    }`,
    subtitle: `${report.gpu} · ${report.date.slice(0, 16).replace("T", " ")} UTC · deno ${report.deno.deno}` +
      (typeof torchVersion === "string" ? ` · torch ${torchVersion}` : "") +
      " · bf16, area-counted FLOPs",
    yLabel: "TFLOP/s",
    xLabel: "case",
    series,
    panels: [panel("forward", "fwd"), panel("backward (2.5x forward FLOPs)", "bwd")],
  };
}

/** A file-name-safe short name of a GPU ("NVIDIA H100 80GB HBM3 (sm_90)" → "h100-80gb-hbm3-sm-90"). */
export function gpuSlug(name: string): string {
  const slug = name.toLowerCase().replace(/\bnvidia\b/g, "").replace(/[^a-z0-9]+/g, "-").replace(
    /^-+|-+$/g,
    "",
  );
  return slug === "" ? "unknown-gpu" : slug;
}

/** `results-<gpu>-<YYYY-MM-DD-HHMM>[-quick]` (UTC) for `date`. */
export function resultsStem(gpu: string, date: Date, quick: boolean): string {
  const stamp = date.toISOString().slice(0, 16).replace("T", "-").replace(":", "");
  return `results-${gpuSlug(gpu)}-${stamp}${quick ? "-quick" : ""}`;
}

// ----- runners --------------------------------------------------------------------------------------------

/** Runs our kernels: the CUDA library, or a simulation for `--dry-run`. */
interface OursRunner {
  readonly gpu: string;
  readonly libraryPath?: string;
  runCase(
    benchCase: BenchCase,
    key: FlexKey,
    flops: CaseFlops,
    pools: InputPools,
  ): Promise<{ result: OursResult; samples?: OursSamples }>;
  hostOverhead(): Promise<HostOverhead>;
}

const HOST_TARGET_US = 20;
const TINY = { seqlen: 128, heads: 1, headDim: 64 } as const;
const TINY_PROBLEM = `S=${TINY.seqlen} H=${TINY.heads} D=${TINY.headDim} causal`;

function errorText(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.length > 600 ? `${text.slice(0, 600)}…` : text;
}

function finishTimings(flops: CaseFlops, fwd: BatchTiming, bwd: BatchTiming): OursResult {
  return {
    msFwd: fwd.ms,
    msBwd: bwd.ms,
    tflopsFwd: flops.fwd / (fwd.ms * 1e-3) / 1e12,
    tflopsBwd: flops.bwd / (bwd.ms * 1e-3) / 1e12,
    timingFwd: fwd,
    timingBwd: bwd,
  };
}

function kernelEstimate(raw: IssueTiming): number | null {
  // Back-to-back raw launches are GPU-bound when the wall time per call clearly exceeds the host cost.
  return raw.wallUs > 1.3 * raw.issueUs ? raw.wallUs : null;
}

/** Deterministic pseudo-efficiency in [0, 1) of a case name, for simulated numbers. */
function simulatedFraction(name: string): number {
  let hash = 2166136261;
  for (const char of name) hash = Math.imul(hash ^ char.charCodeAt(0), 16777619) >>> 0;
  return (hash % 1000) / 1000;
}

/** `--dry-run`: the timing code runs against {@linkcode SimulatedGpu}, outputs are stand-ins. */
function simulatedRunner(): OursRunner {
  return {
    gpu: "dry-run (simulated GPU)",
    async runCase(benchCase, _key, flops, pools) {
      const gpu = new SimulatedGpu();
      const fraction = simulatedFraction(benchCase.name);
      const fwdMs = flops.fwd / ((300 + 300 * fraction) * 1e12) * 1e3;
      const bwdMs = flops.bwd / ((200 + 250 * fraction) * 1e12) * 1e3;
      const sync = () => gpu.sync();
      const fwd = await measureBatches(() => gpu.launch(fwdMs, 0.008), sync, gpu.clock);
      const bwd = await measureBatches(() => gpu.launch(bwdMs, 0.012), sync, gpu.clock);
      const result = finishTimings(flops, fwd, bwd);
      // Stand-ins for the downloaded outputs: the input pools (exercises the scans and the sampling).
      const qCount = benchCase.seqlen * benchCase.headsQ * benchCase.headDim;
      const kvCount = benchCase.seqlen * benchCase.headsKv * benchCase.headDim;
      result.check = {
        out: scanBf16(pools.q.subarray(0, qCount)),
        dq: scanBf16(pools.dout.subarray(0, qCount)),
        dk: scanBf16(pools.k.subarray(0, kvCount)),
        dv: scanBf16(pools.v.subarray(0, kvCount)),
      };
      const rows = sampleRows(benchCase.seqlen);
      const samples: OursSamples = {
        rows,
        out: extractRows(pools.q, benchCase.headsQ, benchCase.headDim, rows),
        dq: extractRows(pools.dout, benchCase.headsQ, benchCase.headDim, rows),
        dk: extractRows(pools.k, benchCase.headsKv, benchCase.headDim, rows),
        dv: extractRows(pools.v, benchCase.headsKv, benchCase.headDim, rows),
      };
      return { result, samples };
    },
    async hostOverhead() {
      const tinyKernelMs = 0.006;
      const variant = async (hostMs: number): Promise<IssueTiming> => {
        const gpu = new SimulatedGpu();
        return await measureIssue(() => gpu.launch(tinyKernelMs, hostMs), () => gpu.sync(), gpu.clock);
      };
      const publicApi = await variant(0.012);
      const preallocated = await variant(0.007);
      const rawFfi = await variant(0.002);
      const gpu = new SimulatedGpu();
      const synced: number[] = [];
      for (let call = 0; call < 100; call++) {
        const start = gpu.clock();
        gpu.launch(tinyKernelMs, 0.007);
        await gpu.sync();
        synced.push((gpu.clock() - start) * 1000);
      }
      return {
        problem: TINY_PROBLEM,
        publicApi,
        preallocated,
        rawFfi,
        syncedCallUs: median(synced),
        kernelEstimateUs: kernelEstimate(rawFfi),
        hostUsPerCall: publicApi.issueUs,
        targetUs: HOST_TARGET_US,
      };
    },
  };
}

/**
 * The CUDA runner, or the reason there is none. The GPU modules are imported here, not at the top, so
 * that the pure parts of this script (and its tests) never load the FFI layer.
 */
async function cudaRunner(): Promise<OursRunner | { unavailable: string }> {
  const ffa = await import("../../lib/backends/ffa.ts");
  const info = ffa.backendInfo();
  if (info.backend !== "cuda") return { unavailable: info.reason ?? "backendInfo() chose the CPU" };
  const device = await import("../../ffi/device.ts");
  const backend = await import("../../ffi/cuda_backend.ts");
  const libraryModule = await import("../../ffi/library.ts");
  const { compileFlexKey } = await import("../../lib/masks/flex_key.ts");
  const { AttnMaskSpec } = await import("../../lib/masks/spec.ts");
  const { tensor } = await import("../../lib/core/tensor.ts");
  const library = libraryModule.loadCudaLibrary();
  const sync = (): Promise<void> => device.synchronize();
  const clock: Clock = () => performance.now();
  type DeviceTensor = InstanceType<typeof device.DeviceTensor>;

  const upload = (bits: Uint16Array, shape: number[]): DeviceTensor =>
    device.toDevice(tensor(bits.subarray(0, shape.reduce((a, b) => a * b, 1)), shape, "bfloat16"));
  const download = async (item: DeviceTensor): Promise<Uint16Array> =>
    (await device.toHost(item)).data as Uint16Array;

  return {
    gpu: info.device ?? "unknown CUDA GPU",
    libraryPath: info.libraryPath,
    async runCase(benchCase, key, flops, pools) {
      const { seqlen, headsQ, headsKv, headDim } = benchCase;
      const qShape = [seqlen, headsQ, headDim], kvShape = [seqlen, headsKv, headDim];
      const owned: DeviceTensor[] = [];
      const own = (item: DeviceTensor): DeviceTensor => {
        owned.push(item);
        return item;
      };
      try {
        const q = own(upload(pools.q, qShape));
        const k = own(upload(pools.k, kvShape));
        const v = own(upload(pools.v, kvShape));
        const dout = own(upload(pools.dout, qShape));
        const out = own(device.emptyDevice(qShape, "bfloat16"));
        const lse = own(device.emptyDevice([seqlen, headsQ], "float32"));
        const dq = own(device.emptyDevice(qShape, "bfloat16"));
        const dk = own(device.emptyDevice(kvShape, "bfloat16"));
        const dv = own(device.emptyDevice(kvShape, "bfloat16"));
        // Poison the outputs (0xFF bytes are NaN) so that any element a kernel fails to write shows up.
        for (const item of [out, lse, dq, dk, dv]) device.fillDeviceBytes(item, 0xff);
        const forward = () => backend.cudaForward(q, k, v, key, { outputs: { out, lse } });
        const fwd = await measureBatches(forward, sync, clock);
        const backward = () =>
          backend.cudaBackward(dout, q, k, v, out, lse, key, { outputs: { dq, dk, dv } });
        const bwd = await measureBatches(backward, sync, clock);
        const result = finishTimings(flops, fwd, bwd);
        const bits = {
          out: await download(out),
          dq: await download(dq),
          dk: await download(dk),
          dv: await download(dv),
        };
        result.check = {
          out: scanBf16(bits.out),
          dq: scanBf16(bits.dq),
          dk: scanBf16(bits.dk),
          dv: scanBf16(bits.dv),
        };
        const rows = sampleRows(seqlen);
        const samples: OursSamples = {
          rows,
          out: extractRows(bits.out, headsQ, headDim, rows),
          dq: extractRows(bits.dq, headsQ, headDim, rows),
          dk: extractRows(bits.dk, headsKv, headDim, rows),
          dv: extractRows(bits.dv, headsKv, headDim, rows),
        };
        return { result, samples };
      } catch (error) {
        return { result: { error: errorText(error) } };
      } finally {
        try {
          await sync();
        } catch (error) {
          progress(`  sync after ${benchCase.name} failed: ${errorText(error)}`);
        }
        for (const item of owned) item.dispose();
      }
    },
    async hostOverhead() {
      const shape = [TINY.seqlen, TINY.heads, TINY.headDim];
      const owned: DeviceTensor[] = [];
      let plan: Deno.PointerValue = null;
      try {
        const key = compileFlexKey(AttnMaskSpec.causal(TINY.seqlen));
        const q = upload(INPUT_POOL_TINY.q, shape), k = upload(INPUT_POOL_TINY.k, shape);
        const v = upload(INPUT_POOL_TINY.v, shape);
        const out = device.emptyDevice(shape, "bfloat16"),
          lse = device.emptyDevice([TINY.seqlen, TINY.heads], "float32");
        owned.push(q, k, v, out, lse);
        // Public API: allocates out and lse per call; they are freed after each round's sync (cudaFree waits
        // for the device, so freeing inside the loop would serialize it).
        let pending: DeviceTensor[] = [];
        const publicApi = await measureIssue(
          async () => {
            const result = await ffa.flexFlashAttnForward(q, k, v, key, { backend: "cuda" });
            pending.push(result.out as DeviceTensor, result.lse as DeviceTensor);
          },
          sync,
          clock,
          1000,
          5,
          () => {
            for (const item of pending) item.dispose();
            pending = [];
          },
        );
        const preallocated = await measureIssue(
          () => backend.cudaForward(q, k, v, key, { outputs: { out, lse } }),
          sync,
          clock,
        );
        const slot = new BigUint64Array(1);
        libraryModule.checkStatus(
          library,
          library.symbols.magi_ffa_plan_create(
            slot,
            key.qRanges,
            key.kRanges,
            key.attnTypeMap,
            key.attnTypeMap.length,
            key.totalQ,
            key.totalK,
          ),
          "magi_ffa_plan_create",
        );
        plan = Deno.UnsafePointer.create(slot[0]);
        const stream = library.stream();
        const scale = 1 / Math.sqrt(TINY.headDim);
        const pointers = [q.pointer, k.pointer, v.pointer, out.pointer, lse.pointer];
        const rawFfi = await measureIssue(
          () => {
            const status = library.symbols.magi_ffa_forward(
              pointers[0],
              pointers[1],
              pointers[2],
              pointers[3],
              pointers[4],
              plan,
              TINY.heads,
              TINY.heads,
              TINY.headDim,
              1, // MAGI_FFA_DTYPE_BFLOAT16
              scale,
              0,
              0,
              stream,
            );
            if (status !== 0) libraryModule.checkStatus(library, status, "magi_ffa_forward");
          },
          sync,
          clock,
        );
        const synced: number[] = [];
        for (let call = 0; call < 200; call++) {
          const start = clock();
          await backend.cudaForward(q, k, v, key, { outputs: { out, lse } });
          await sync();
          synced.push((clock() - start) * 1000);
        }
        return {
          problem: TINY_PROBLEM,
          publicApi,
          preallocated,
          rawFfi,
          syncedCallUs: median(synced.slice(20)),
          kernelEstimateUs: kernelEstimate(rawFfi),
          hostUsPerCall: publicApi.issueUs,
          targetUs: HOST_TARGET_US,
        };
      } finally {
        await sync();
        if (plan !== null) library.symbols.magi_ffa_plan_destroy(plan);
        for (const item of owned) item.dispose();
      }
    },
  };
}

/** Inputs of the tiny host-overhead problem (128 × 1 × 64 elements per role). */
const INPUT_POOL_TINY: Record<"q" | "k" | "v", Uint16Array> = {
  q: hashBf16(
    TINY.seqlen * TINY.heads * TINY.headDim,
    INPUT_RECIPES.q.seed,
    INPUT_RECIPES.q.expLo,
    INPUT_RECIPES.q.expHi,
  ),
  k: hashBf16(
    TINY.seqlen * TINY.heads * TINY.headDim,
    INPUT_RECIPES.k.seed,
    INPUT_RECIPES.k.expLo,
    INPUT_RECIPES.k.expHi,
  ),
  v: hashBf16(
    TINY.seqlen * TINY.heads * TINY.headDim,
    INPUT_RECIPES.v.seed,
    INPUT_RECIPES.v.expLo,
    INPUT_RECIPES.v.expHi,
  ),
};

// ----- peers ----------------------------------------------------------------------------------------------

/** What `scripts/bench/peers.py` writes (the parts this script reads). */
interface PeersOutput {
  torch_version?: string | null;
  cuda_version?: string | null;
  cudnn_version?: number | null;
  triton_version?: string | null;
  gpu_name?: string;
  ceilings?: Record<string, unknown>;
  error?: string;
  fake?: boolean;
  cases?: Record<
    string,
    { peers?: Record<string, PeerResult>; checks?: Record<string, number | null>; error?: string }
  >;
}

/**
 * Runs `python3 scripts/bench/peers.py cases.json out.json` (unbuffered, its progress on our stderr) and reads
 * out.json, also after a failure (the script rewrites it after every case). `--fake` makes the script
 * simulate numbers without torch (for `--dry-run`).
 */
async function runPeers(
  casesPath: string,
  outPath: string,
  peers: readonly string[],
  fake: boolean,
): Promise<{ output?: PeersOutput; error?: string }> {
  const python = Deno.env.get("PYTHON") ?? "python3";
  const script = fromFileUrl(new URL("./peers.py", import.meta.url));
  const args = [script, casesPath, outPath, "--peers", peers.join(",")];
  if (fake) args.push("--fake");
  progress(`peers: ${python} ${args.join(" ")}`);
  let failure: string | undefined;
  try {
    const child = new Deno.Command(python, {
      args,
      env: { PYTHONUNBUFFERED: "1" },
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    const status = await child.status;
    if (!status.success) {
      failure = `scripts/bench/peers.py exited with code ${status.code}${
        status.signal ? ` (${status.signal})` : ""
      }`;
    }
  } catch (error) {
    failure = error instanceof Deno.errors.NotFound
      ? `${python} not found (set PYTHON to the interpreter that has torch)`
      : `could not start ${python}: ${errorText(error)}`;
  }
  let output: PeersOutput | undefined;
  try {
    output = JSON.parse(await Deno.readTextFile(outPath)) as PeersOutput;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      failure = `${failure ?? ""} unreadable ${outPath}: ${errorText(error)}`;
    }
  }
  if (output?.error) failure = failure ? `${failure}: ${output.error}` : output.error;
  return { output, error: failure };
}

function fromFileUrl(url: URL): string {
  return decodeURIComponent(url.pathname);
}

/** The `MAGI_FFA_*` environment variables (sorted), which change what the library runs. */
export function magiEnvironment(env: Record<string, string> = Deno.env.toObject()): Record<string, string> {
  const settings: Record<string, string> = {};
  for (const name of Object.keys(env).filter((key) => key.startsWith("MAGI_FFA_")).sort()) {
    settings[name] = env[name];
  }
  return settings;
}

// ----- main -----------------------------------------------------------------------------------------------

const startedAt = performance.now();

/** Prints a progress line on stderr, with the seconds since the start. */
function progress(message: string): void {
  console.error(`[bench +${((performance.now() - startedAt) / 1000).toFixed(1)}s] ${message}`);
}

/** Writes `text` to `path` through a temporary file and a rename. */
async function writeAtomically(path: string, text: string): Promise<void> {
  const temporary = `${path}.tmp`;
  await Deno.writeTextFile(temporary, text);
  await Deno.rename(temporary, path);
}

/** Runs the benchmark; returns the process exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  let args: BenchArgs;
  let cases: BenchCase[];
  try {
    args = parseBenchArgs(argv);
    if (args.help) {
      console.log(USAGE);
      return 0;
    }
    cases = selectCases({ quick: args.quick, names: args.cases });
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    console.error(USAGE);
    return 2;
  }
  const date = new Date();

  let runner: OursRunner;
  if (args.dryRun) {
    runner = simulatedRunner();
    progress("dry run: no GPU; ours is simulated, the peers script runs in --fake mode");
  } else {
    const found = await cudaRunner();
    if ("unavailable" in found) {
      console.error(
        `bench: the CUDA backend is unavailable, so there is nothing to time: ${found.unavailable}\n` +
          "Fix: run on a machine with an NVIDIA GPU (sm_90) after `deno task build` (or set MAGI_FFA_LIBRARY), " +
          "or pass --dry-run to exercise the harness without a GPU.",
      );
      return 1;
    }
    runner = found;
  }
  const outDir = args.outDir ??
    (args.dryRun
      ? await Deno.makeTempDir({ prefix: "magi-bench-dry-" })
      : fromFileUrl(new URL("../../bench/", import.meta.url)));
  await Deno.mkdir(outDir, { recursive: true });
  const workDir = await Deno.makeTempDir({ prefix: "magi-bench-work-" });
  progress(`GPU: ${runner.gpu}${runner.libraryPath ? ` (library ${runner.libraryPath})` : ""}`);
  const kernelSettings = magiEnvironment();
  const settingsText = Object.entries(kernelSettings).map(([name, value]) => `${name}=${value}`).join(" ");
  progress(`kernel settings: ${settingsText || "defaults (no MAGI_FFA_* variable set)"}`);
  progress(`${cases.length} case(s): ${cases.map((item) => item.name).join(", ")}`);

  const report: BenchReport = {
    schema: "magi-attn-bench/1",
    date: date.toISOString(),
    dryRun: args.dryRun,
    args: [...argv],
    gpu: runner.gpu,
    libraryPath: runner.libraryPath,
    kernelSettings,
    deno: { deno: Deno.version.deno, v8: Deno.version.v8, typescript: Deno.version.typescript },
    torch: null,
    ceilings: null,
    hostOverhead: null,
    cases: [],
  };
  const stem = resultsStem(args.dryRun ? "dry-run" : runner.gpu, date, args.quick);
  const jsonPath = `${outDir.replace(/\/+$/, "")}/${stem}.json`;
  const svgPath = `${outDir.replace(/\/+$/, "")}/${stem}.svg`;

  progress("inputs: hashing bf16 input pools");
  const pools = makeInputPools(cases);
  const peerCases: PeerCaseJson[] = [];
  for (const [index, benchCase] of cases.entries()) {
    const key = flexKeyOf(benchCase);
    const flops = countFlops(key, benchCase.headsQ, benchCase.headDim);
    progress(
      `ours ${index + 1}/${cases.length} ${benchCase.name}: S=${benchCase.seqlen} Hq=${benchCase.headsQ} ` +
        `Hkv=${benchCase.headsKv} D=${benchCase.headDim}, ${key.attnTypeMap.length} slices, ` +
        `${(flops.fwd / 1e12).toFixed(3)} TFLOP fwd`,
    );
    const { result, samples } = await runner.runCase(benchCase, key, flops, pools);
    if (result.error) progress(`  FAILED ${result.error}`);
    else {
      progress(
        `  fwd ${result.msFwd!.toFixed(3)} ms ${result.tflopsFwd!.toFixed(1)} TFLOP/s, ` +
          `bwd ${result.msBwd!.toFixed(3)} ms ${result.tflopsBwd!.toFixed(1)} TFLOP/s`,
      );
    }
    report.cases.push({
      name: benchCase.name,
      group: benchCase.group,
      maskKind: benchCase.mask.kind,
      S: benchCase.seqlen,
      Hq: benchCase.headsQ,
      Hkv: benchCase.headsKv,
      D: benchCase.headDim,
      slices: key.attnTypeMap.length,
      area: flops.area,
      flopsFwd: flops.fwd,
      flopsBwd: flops.bwd,
      ours: result,
      peers: {},
      checks: {},
    });
    const peerCase: PeerCaseJson & { ours_samples?: OursSamples } = peerCaseJson(benchCase, key, flops);
    if (samples) peerCase.ours_samples = samples;
    peerCases.push(peerCase);
  }
  progress("host overhead: tiny forward calls");
  try {
    report.hostOverhead = await runner.hostOverhead();
  } catch (error) {
    progress(`  FAILED ${errorText(error)}`);
  }
  // Ours is done: keep it on disk even if the peers never come back.
  await writeAtomically(jsonPath, JSON.stringify(report, null, 1) + "\n");

  if (!args.skipPeers) {
    const casesPath = `${workDir}/cases.json`, peersOut = `${workDir}/peers-out.json`;
    const inputs = Object.fromEntries(
      Object.entries(INPUT_RECIPES).map(([role, recipe]) => [
        role,
        { seed: recipe.seed, exp_lo: recipe.expLo, exp_hi: recipe.expHi },
      ]),
    );
    await Deno.writeTextFile(
      casesPath,
      JSON.stringify({ schema: 1, layout: "thd", inputs, cases: peerCases }),
    );
    const { output, error } = await runPeers(casesPath, peersOut, args.peers, args.dryRun);
    if (error) {
      report.peersError = error;
      progress(`peers: ${error}`);
    }
    if (output) {
      report.torch = {
        torch_version: output.torch_version ?? null,
        cuda_version: output.cuda_version ?? null,
        cudnn_version: output.cudnn_version ?? null,
        triton_version: output.triton_version ?? null,
        gpu_name: output.gpu_name ?? null,
        fake: output.fake ?? false,
      };
      report.ceilings = output.ceilings ?? null;
      for (const item of report.cases) {
        const entry = output.cases?.[item.name];
        if (!entry) continue;
        item.peers = entry.peers ?? {};
        item.checks = entry.checks ?? {};
        if (entry.error) item.peersError = entry.error;
      }
    }
  }
  report.totalSeconds = (performance.now() - startedAt) / 1000;
  await writeAtomically(jsonPath, JSON.stringify(report, null, 1) + "\n");
  await writeAtomically(svgPath, renderBarChartSvg(resultsChart(report)));
  await Deno.remove(workDir, { recursive: true }).catch(() => {});

  console.log(
    `\nTFLOP/s, bf16, area-counted (fwd 4·area·Hq·D, bwd 2.5x fwd) on ${report.gpu}` +
      (args.dryRun ? "  [DRY RUN: simulated numbers]" : ""),
  );
  console.log(formatResultsTable(report));
  console.log("");
  for (const line of formatNotes(report)) console.log(line);
  console.log(`\nwrote ${jsonPath}\nwrote ${svgPath}\ntotal ${report.totalSeconds.toFixed(1)} s`);
  const oursFailed = report.cases.some((item) => item.ours.error);
  return oursFailed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
