/**
 * The results of a benchmark run: the JSON schema (`magi-attn-bench/1`), the text table and notes printed
 * at the end, the grouped bar chart, and the file names.
 * @module
 */

import { type BarChart, formatTable } from "./chart.ts";
import type { InputDistribution } from "./inputs.ts";
import { PEER_NAMES } from "./args.ts";
import type { BatchTiming, IssueTiming } from "./timing.ts";

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
  /** Input values of ours and the peers (`--inputs`); absent in files written before it existed (hashed). */
  inputs?: InputDistribution;
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

/** The `MAGI_FFA_*` environment variables (sorted), which change what the library runs. */
export function magiEnvironment(env: Record<string, string> = Deno.env.toObject()): Record<string, string> {
  const settings: Record<string, string> = {};
  for (const name of Object.keys(env).filter((key) => key.startsWith("MAGI_FFA_")).sort()) {
    settings[name] = env[name];
  }
  return settings;
}
