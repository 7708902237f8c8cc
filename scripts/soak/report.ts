/**
 * The soak's report: the JSON written at the end (read back by scripts/reliability.ts) and its human
 * summary, whose last line is `N passed, M failed`.
 * @module
 */

/** One memory sample. */
export interface MemorySample {
  /** Calls made when it was taken. */
  call: number;
  /** Bytes in use (device: total − free; dry run: host RSS). */
  usedBytes: number;
  /** When: after the warm-up, during the loop, or at the end (caches cleared, everything disposed). */
  phase: "start" | "loop" | "end";
}

/** Outcome of one family of checks. */
export interface CheckTally {
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
