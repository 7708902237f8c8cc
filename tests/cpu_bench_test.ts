/**
 * `deno task bench:cpu` (scripts/cpu_bench.ts): its flags, and a tiny real run that prints ours next to
 * numpy and writes the JSON with the machine, the date and the samples.
 */

import assert from "node:assert/strict";
import { median, parseCpuBenchArgs } from "../scripts/cpu_bench.ts";

Deno.test("bench:cpu flags parse, and bad ones are refused naming the flag", () => {
  const args = parseCpuBenchArgs([
    "--seqlen",
    "512",
    "--threads",
    "0",
    "--dtypes",
    "bfloat16",
    "--reference",
  ]);
  assert.equal(args.seqlen, 512);
  assert.equal(args.threads, 0);
  assert.deepEqual(args.dtypes, ["bfloat16"]);
  assert.equal(args.reference, true);
  assert.equal(parseCpuBenchArgs([]).seqlen, 2048);
  assert.throws(() => parseCpuBenchArgs(["--seqlen", "0"]), /--seqlen/);
  assert.throws(() => parseCpuBenchArgs(["--dtypes", "float64"]), /--dtypes/);
  assert.throws(() => parseCpuBenchArgs(["--fast"]), /unknown flag --fast/);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
});

async function numpyAvailable(): Promise<boolean> {
  try {
    const { code } = await new Deno.Command("python3", { args: ["-c", "import numpy"], stderr: "null" })
      .output();
    return code === 0;
  } catch {
    return false;
  }
}

Deno.test("bench:cpu runs: ours next to numpy, ratio printed, JSON written", async () => {
  const outDir = await Deno.makeTempDir();
  try {
    const withNumpy = await numpyAvailable();
    const script = new URL("../scripts/cpu_bench.ts", import.meta.url).pathname;
    const flags = [
      "--seqlen",
      "96",
      "--heads",
      "2",
      "--head-dim",
      "16",
      "--repeats",
      "1",
      "--out-dir",
      outDir,
    ];
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...flags, ...(withNumpy ? [] : ["--skip-numpy"])],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const output = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    assert.equal(code, 0, output);
    assert.match(output, /ours float32 .*\n.*ours bfloat16/);
    assert.match(output, /bfloat16 \/ float32: \d/);
    const [file] = [...Deno.readDirSync(outDir)].map((entry) => entry.name);
    assert.match(file, /^cpu-.+-\d+c-\d{4}-\d{2}-\d{2}-\d{4}\.json$/);
    const report = JSON.parse(await Deno.readTextFile(`${outDir}/${file}`));
    assert.ok(report.date && report.machine.cores >= 1 && typeof report.machine.cpu === "string");
    assert.equal(report.problem.seqlen, 96);
    assert.equal(report.ours.float32.samples.length, 1);
    if (withNumpy) {
      assert.match(output, /numpy dense float32 .* 1\.00/);
      assert.ok(report.numpy.total > 0 && report.numpy.samples.length === 1, JSON.stringify(report.numpy));
      assert.ok(report.ours.float32.ratioToNumpy > 0);
    }
  } finally {
    await Deno.remove(outDir, { recursive: true });
  }
});
