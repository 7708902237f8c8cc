/**
 * `deno task reliability`: runs the spec and reference fuzzers and the bad-input table (the same code as
 * tests/fuzz_test.ts and tests/bad_input_test.ts) and writes `bench/RELIABILITY.md`: date, machine,
 * counts, the table (id, error class, field named, message excerpt, inputs and key cache unchanged), the
 * known defects, and the GPU soak results read from `bench/soak-*.json` (written by scripts/soak.ts on a
 * GPU machine).
 *
 * Flags: `--out FILE` (default `bench/RELIABILITY.md`), `--soak-dir DIR` (default `bench/`),
 * `--spec-cases N` (default 10000), `--reference-cases N` (default 400). `MAGI_FUZZ_SEED` sets the fuzz
 * seed base. Exit status 1 when a fuzz case or a table row failed (known defects and skipped rows aside).
 * @module
 */

import { backendInfo } from "../lib/backends/ffa.ts";
import {
  BAD_INPUT_CASES,
  type BadInputResult,
  disposeBadInputEnv,
  prepareBadInputEnv,
  runBadInputCase,
} from "../tests/bad_input_cases.ts";
import { runSpecFuzz, type SpecFuzzSummary } from "../tests/fuzz_cases.ts";
import { type ReferenceFuzzSummary, runReferenceFuzz } from "../tests/fuzz_reference_cases.ts";
import { fuzzSeedBase } from "../tests/support/fuzz.ts";
import type { SoakReport } from "./soak.ts";

/** Parsed flags. */
interface ReliabilityArgs {
  out: string;
  soakDir: string;
  specCases: number;
  referenceCases: number;
}

function parseArgs(argv: readonly string[]): ReliabilityArgs {
  const bench = new URL("../bench/", import.meta.url).pathname;
  const args: ReliabilityArgs = {
    out: `${bench}RELIABILITY.md`,
    soakDir: bench,
    specCases: 10_000,
    referenceCases: 400,
  };
  for (let index = 0; index < argv.length; index++) {
    const flag = argv[index], value = argv[++index];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    const count = () => {
      const number = Number(value);
      if (!Number.isSafeInteger(number) || number < 0) throw new Error(`${flag} ${value}: not a count`);
      return number;
    };
    if (flag === "--out") args.out = value;
    else if (flag === "--soak-dir") args.soakDir = value.endsWith("/") ? value : `${value}/`;
    else if (flag === "--spec-cases") args.specCases = count();
    else if (flag === "--reference-cases") args.referenceCases = count();
    else throw new Error(`unknown flag ${flag}`);
  }
  return args;
}

/** Text safe inside a Markdown table cell. */
function cell(text: string): string {
  return text.replace(/\s+/g, " ").replace(/\|/g, "\\|").trim();
}

function excerpt(text: string | undefined, length = 110): string {
  if (text === undefined) return "";
  const flat = text.replace(/\s+/g, " ").replace(/^magi-attn: /, "");
  return flat.length > length ? `${flat.slice(0, length - 1)}…` : flat;
}

function machine(): string[] {
  let cpu = "unknown CPU";
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    cpu = /model name\s*:\s*(.+)/.exec(info)?.[1]?.trim() ?? cpu;
  } catch {
    // Not Linux, or not readable: keep "unknown".
  }
  const info = backendInfo();
  return [
    `- OS: ${Deno.build.os} ${Deno.build.arch}; CPU: ${cpu}, ${navigator.hardwareConcurrency} logical cores`,
    `- Deno ${Deno.version.deno}, V8 ${Deno.version.v8}, TypeScript ${Deno.version.typescript}`,
    `- CUDA backend here: ${info.backend === "cuda" ? `yes (${info.device})` : `no (${info.summary})`}`,
  ];
}

function fuzzSection(
  seed: number,
  fromEnv: boolean,
  specs: SpecFuzzSummary,
  reference: ReferenceFuzzSummary,
): string[] {
  const lines = [
    "## Fuzzing",
    "",
    `Seed base ${seed} (${
      fromEnv ? "from MAGI_FUZZ_SEED" : "the fixed default; set MAGI_FUZZ_SEED to explore"
    }).`,
    "",
    "| fuzzer | cases | failed | time | coverage |",
    "| --- | --- | --- | --- | --- |",
    `| specs → keys vs definition oracles | ${specs.cases} | ${specs.failed} | ${
      (specs.milliseconds / 1000).toFixed(2)
    } s | ` +
    `${
      Object.entries(specs.byBuilder).map(([name, count]) => `${name} ${count}`).join(", ")
    }; ${specs.overlapsRejected} overlapping fromRanges rejected; ${specs.emptyMasks} masks with no visible cell |`,
    `| CPU reference vs float64 oracle (forward + backward) | ${reference.cases} | ${reference.failed} | ` +
    `${(reference.milliseconds / 1000).toFixed(2)} s | ${
      Object.entries(reference.byDtype).map(([name, count]) => `${name} ${count}`).join(", ")
    }; ${reference.grouped} GQA/MQA; ${reference.softcapped} softcap |`,
    "",
  ];
  for (const failure of [...specs.failures, ...reference.failures].slice(0, 10)) {
    lines.push(`- FAILED: ${cell(excerpt(failure, 300))}`);
  }
  return lines;
}

function tableSection(results: readonly BadInputResult[]): string[] {
  const ran = results.filter((result) => !result.skipped && !result.bug);
  const passed = ran.filter((result) => result.passed).length;
  const unchanged = ran.filter((result) => result.inputsUnchanged && result.cacheUnchanged).length;
  const skipped = results.filter((result) => result.skipped).length;
  const bugs = results.filter((result) => result.bug);
  const lines = [
    "## Bad input",
    "",
    `${results.length} rows (${
      new Set(results.map((result) => result.area)).size
    } areas): ${passed} of ${ran.length} ` +
    `passed, ${unchanged} of ${ran.length} left their inputs and the compiled-key cache unchanged, ${skipped} skipped, ` +
    `${bugs.length} known defects. Each row must throw the named error (a MagiAttnInputError naming the field, ` +
    "with a fix), and the inputs are deep-compared before and after (typed arrays byte for byte, specs by their " +
    "slices, device tensors by contents), as are the compiled-key cache's size and cached keys. Device-tensor " +
    "and library rows use a gcc-built fake `libmagi_ffa.so` (no GPU needed); permission rows run a fresh " +
    "`deno run` without the permission.",
    "",
    "| id | error class | field named | message excerpt | inputs unchanged | result |",
    "| --- | --- | --- | --- | --- | --- |",
  ];
  for (const result of results) {
    const outcome = result.skipped
      ? `skipped (${result.skipped})`
      : result.bug
      ? result.passed ? "passes (defect fixed?)" : "known defect"
      : result.passed
      ? "pass"
      : `FAIL: ${result.problems.join("; ")}`;
    const unchangedText = result.skipped
      ? ""
      : result.inputsUnchanged && result.cacheUnchanged
      ? "yes"
      : `no (${
        [!result.inputsUnchanged && "inputs", !result.cacheUnchanged && "cache"].filter(Boolean).join(", ")
      })`;
    lines.push(
      `| ${cell(result.id)} | ${cell(result.errorClass ?? result.expectedClass)} | ${
        result.field ? `\`${cell(result.field)}\`` : "—"
      } | ${cell(excerpt(result.message))} | ${unchangedText} | ${cell(outcome)} |`,
    );
  }
  lines.push("");
  if (bugs.length > 0) {
    lines.push("### Known defects (rows that state the correct behaviour and fail until fixed)", "");
    for (const result of bugs) {
      const observed = result.errorClass === "none"
        ? "no error"
        : `${result.errorClass}: ${excerpt(result.message, 160)}`;
      lines.push(
        `- \`${result.id}\`: ${cell(result.bug!.replace(/^BUG: /, ""))}. Observed: ${cell(observed)}.`,
      );
    }
    lines.push(
      "- (an ignored test in tests/bad_input_test.ts) lib/backends/ffa.ts resolveBackend probes the default library for",
      "  DeviceTensor inputs instead of the library that allocated them: tensors made with",
      "  `toDevice(x, { libraryPath })` fail in `flexFlashAttnForward(q, k, v, key)` with BackendUnavailableError unless",
      "  libraryPath is passed again.",
      "",
    );
  }
  lines.push(
    "### Numerical edge cases (tests/bad_input_test.ts)",
    "",
    "- Logits of about 1e4 (with and without softcap): finite out and gradients, lse equal to a log-space float64 computation.",
    "- NaN in a query, NaN in a key, Inf in a value, NaN in bf16: exactly the rows that see the value turn non-finite (a value",
    "  poisons out but not lse); every other row is bitwise the clean result; the backward does not throw.",
    "- Head dims the GPU does not take (96, 32) and float32: `auto` runs the CPU even when a (fake) GPU is available;",
    '  `"cuda"` throws: MagiAttnInputError naming `q.shape` with a GPU, BackendUnavailableError with the reason without one.',
    "- int32: 2^31 − 1 elements pass validation, 2^31 are refused (shape-only tensors, nothing allocated); token totals",
    "  above 2^31 − 1 are refused by every builder and by toFlexKey.",
    "",
  );
  return lines;
}

/** A relative error from a soak report (JSON turns Infinity and NaN into null). */
function formatError(value: unknown): string {
  return typeof value === "number" && Number.isFinite(value) ? value.toExponential(2) : "non-finite";
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function soakSection(soakDir: string): string[] {
  const lines = ["## GPU soak", ""];
  const reports: { file: string; report: SoakReport }[] = [];
  try {
    for (const entry of Deno.readDirSync(soakDir)) {
      if (!entry.isFile || !/^soak-.*\.json$/.test(entry.name)) continue;
      try {
        const report = JSON.parse(Deno.readTextFileSync(`${soakDir}${entry.name}`)) as SoakReport;
        if (report.kind === "magi-attn-soak" && !report.mode.dryRun) {
          reports.push({ file: entry.name, report });
        }
      } catch {
        lines.push(`- ${entry.name}: not a readable soak report, skipped`);
      }
    }
  } catch {
    // No directory: no reports.
  }
  if (reports.length === 0) {
    lines.push(
      "Not run yet. On a GPU machine: `deno run -A scripts/soak.ts --calls 10000 --out bench/` (and under",
      "`compute-sanitizer --tool memcheck deno run -A scripts/soak.ts --calls 100 --sanitizer-friendly`), then rerun",
      "`deno task reliability`.",
      "",
    );
    return lines;
  }
  reports.sort((a, b) => a.report.date.localeCompare(b.report.date));
  // compute-sanitizer logs of the soak (`soak-memcheck-*.txt`, the tail of the sanitizer's output).
  try {
    for (const entry of Deno.readDirSync(soakDir)) {
      if (!entry.isFile || !/^soak-memcheck-.*\.txt$/.test(entry.name)) continue;
      const text = Deno.readTextFileSync(`${soakDir}${entry.name}`);
      const summary = text.match(/ERROR SUMMARY: \d+ errors?/)?.[0] ?? "no ERROR SUMMARY line";
      const counts = text.match(/^\d+ passed, \d+ failed$/m)?.[0] ?? "no pass/fail line";
      lines.push(
        `- compute-sanitizer memcheck over the soak's first calls (\`${entry.name}\`): ${counts}; ${summary}.`,
      );
    }
  } catch {
    // No directory: no logs.
  }
  lines.push("");
  for (const { file, report } of reports) {
    const { calls, timing, memory, checks } = report;
    const samples = memory.samples.map((sample) =>
      `${sample.phase === "loop" ? sample.call : sample.phase ?? sample.call} ${mib(sample.usedBytes)}`
    ).join(", ");
    lines.push(
      `### ${report.gpu}, ${report.date.slice(0, 10)}${
        report.mode.sanitizerFriendly ? " (sanitizer-friendly)" : ""
      }`,
      "",
      `From \`${file}\` (seed ${report.mode.seed}).`,
      "",
      `- Calls (forward + backward, DeviceTensors): ${calls.passed} passed, ${calls.failed} failed of ${calls.requested};` +
        ` ${timing.seconds.toFixed(1)} s, ${timing.callsPerSecond.toFixed(0)} calls/s, median ${
          timing.medianCallMs.toFixed(2)
        } ms.`,
      `- Device memory (${memory.source}): ${samples}.`,
      `- Growth after warm-up ${mib(memory.maxGrowthBytes)}, end − start ${
        mib(memory.endGrowthBytes)
      } (allowed ` +
        `${mib(memory.allowanceBytes)}): ${memory.flat ? "flat" : "**growing**"}.`,
    );
    for (const [name, tally] of Object.entries(checks)) {
      const worst = "worst" in tally && Object.keys(tally.worst).length > 0
        ? ` (worst relative L2 errors: ${
          Object.entries(tally.worst).map(([key, value]) => `${key} ${formatError(value)}`).join(", ")
        })`
        : "";
      lines.push(
        `- ${name}: ${
          tally.skipped ? `skipped (${tally.skipped})` : `${tally.passed}/${tally.run} passed${worst}`
        }.`,
      );
    }
    for (const failure of report.failures.slice(0, 5)) {
      lines.push(`- FAILED ${cell(failure.at)}: ${cell(excerpt(failure.message, 200))}`);
    }
    lines.push(`- Total: ${report.totals.passed} passed, ${report.totals.failed} failed.`, "");
  }
  return lines;
}

/** Runs everything and writes the report; returns the exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  const args = parseArgs(argv);
  const { seed, fromEnv } = fuzzSeedBase();
  console.log(
    `fuzzing ${args.specCases} specs and ${args.referenceCases} reference problems (seed base ${seed})…`,
  );
  const specs = runSpecFuzz(seed, args.specCases);
  const reference = runReferenceFuzz(seed, args.referenceCases);
  console.log(`running ${BAD_INPUT_CASES.length} bad-input rows…`);
  const env = prepareBadInputEnv();
  const results: BadInputResult[] = [];
  try {
    for (const row of BAD_INPUT_CASES) results.push(await runBadInputCase(row, env));
  } finally {
    disposeBadInputEnv(env);
  }
  const lines = [
    "# Reliability report",
    "",
    `Generated by \`deno task reliability\` (scripts/reliability.ts) on ${new Date().toISOString()}.`,
    "",
    "## Machine",
    "",
    ...machine(),
    "",
    ...fuzzSection(seed, fromEnv, specs, reference),
    ...tableSection(results),
    ...soakSection(args.soakDir),
  ];
  Deno.writeTextFileSync(args.out, lines.join("\n"));
  // deno fmt owns Markdown layout (table padding); the repository's check runs `deno fmt --check`.
  try {
    const root = new URL("../", import.meta.url).pathname;
    await new Deno.Command(Deno.execPath(), {
      args: ["fmt", "--quiet", "--config", `${root}deno.json`, args.out],
      cwd: root,
      stdout: "null",
      stderr: "piped",
    })
      .output();
  } catch {
    // No --allow-run: the file is still valid Markdown.
  }
  const tableFailures = results.filter((result) => !result.passed && !result.skipped && !result.bug);
  const failed = specs.failed + reference.failed + tableFailures.length;
  console.log(
    `specs ${specs.cases - specs.failed}/${specs.cases}, reference ${
      reference.cases - reference.failed
    }/${reference.cases}, ` +
      `table ${results.filter((result) => result.passed && !result.skipped && !result.bug).length} passed, ` +
      `${tableFailures.length} failed, ${results.filter((result) => result.skipped).length} skipped, ` +
      `${results.filter((result) => result.bug).length} known defects → ${args.out}`,
  );
  return failed === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
