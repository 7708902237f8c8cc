/**
 * `deno task bench`: times our flex flash attention (forward and backward, bf16) on the benchmark cases of
 * `scripts/bench/cases.ts`, runs the PyTorch peers (`scripts/bench/peers.py`: cuDNN SDPA, flash SDPA, FlexAttention) on
 * the same cases with the same area-counted FLOPs, and prints one table; writes
 * `results-<gpu>-<date>.json` and `.svg` (grouped bar chart) into the output directory.
 *
 * Flags: `--quick` (only the main masks at 16k), `--cases a,b` (only these), `--skip-peers`,
 * `--peers cudnn,flash,flex` (which peers), `--dry-run` (no GPU: simulated timings, files into a temp dir
 * unless `--out-dir`), `--out-dir DIR` (default `bench/`), `--inputs randn|hashed` (the input values of ours
 * and the peers alike; default `randn`, standard normal), `--help`.
 *
 * How ours is timed: inputs and outputs stay on the GPU (outputs preallocated, so no allocation is timed);
 * after a warm-up, batches of back-to-back calls (about 10 ms each) end with one stream synchronization;
 * per-call time = batch time / calls; the reported time is the median over batches (at least 5 batches and
 * 0.5 s, or 20 batches). The host overhead of one call is measured separately on a tiny problem.
 * @module
 */

import { type BenchArgs, parseBenchArgs, USAGE } from "./args.ts";
import {
  type BenchCase,
  countFlops,
  flexKeyOf,
  type PeerCaseJson,
  peerCaseJson,
  selectCases,
} from "./cases.ts";
import { renderBarChartSvg } from "./chart.ts";
import { makeInputPools } from "./inputs.ts";
import { fromFileUrl, mergePeersOutput, runPeers, writePeerCases } from "./peers.ts";
import { errorText, progress, startedAt } from "./progress.ts";
import {
  type BenchReport,
  formatNotes,
  formatResultsTable,
  magiEnvironment,
  type OursSamples,
  resultsChart,
  resultsStem,
} from "./report.ts";
import type { OursRunner } from "./runner.ts";
import { simulatedRunner } from "./simulate.ts";

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
    // Imported only here, so that dry runs and the tests never load the FFI layer.
    const { cudaRunner } = await import("./cuda_runner.ts");
    const found = cudaRunner(args.inputs);
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
    inputs: args.inputs,
    deno: { deno: Deno.version.deno, v8: Deno.version.v8, typescript: Deno.version.typescript },
    torch: null,
    ceilings: null,
    hostOverhead: null,
    cases: [],
  };
  const stem = resultsStem(args.dryRun ? "dry-run" : runner.gpu, date, args.quick);
  const jsonPath = `${outDir.replace(/\/+$/, "")}/${stem}.json`;
  const svgPath = `${outDir.replace(/\/+$/, "")}/${stem}.svg`;

  progress(`inputs: ${args.inputs} bf16 input pools`);
  const pools = makeInputPools(cases, args.inputs);
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
    await writePeerCases(casesPath, peerCases, args.inputs);
    const { output, error } = await runPeers(casesPath, peersOut, args.peers, args.dryRun);
    if (error) {
      report.peersError = error;
      progress(`peers: ${error}`);
    }
    if (output) mergePeersOutput(report, output);
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
