/**
 * What a user without a GPU sees: one line about the backend in the demo and in the skipped GPU tests
 * (details with MAGI_ATTN_DEBUG=1 or backendInfo().reason), error texts that say each thing once, and
 * `deno task test:gpu` failing when nothing ran. A library path that does not exist stands for "no build".
 */

import assert from "node:assert/strict";
import denoConfig from "../deno.json" with { type: "json" };
import {
  AttnMaskSpec,
  backendInfo,
  BackendUnavailableError,
  compileFlexKey,
  flexFlashAttnForward,
  randomTensor,
} from "../mod.ts";
import { probeCudaBackend } from "../testing.ts";

const ROOT = new URL("../", import.meta.url);
const MISSING = "/nonexistent/magi-attn-notice/libmagi_ffa.so";
const ONE_LINE = "CUDA library not found: CPU reference; `deno task build` to build it";

async function deno(
  args: readonly string[],
  env: Record<string, string>,
): Promise<{ code: number; output: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", MAGI_FFA_LIBRARY: MISSING, ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, output: new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr) };
}

function countOf(text: string, part: string): number {
  return text.split(part).length - 1;
}

Deno.test("probe and backendInfo: a one-line summary, the full reason apart, no text said twice", () => {
  const probe = probeCudaBackend({ libraryPath: MISSING });
  assert.equal(probe.summary, "CUDA library not found");
  assert.match(probe.reason!, /nonexistent\/magi-attn-notice\/libmagi_ffa\.so \(option libraryPath\)/);
  assert.equal(countOf(probe.reason!, "Could not open library:"), 1, probe.reason);
  assert.doesNotMatch(probe.reason!, /Fix:/, "the reason describes; the fix is added once by who throws");
  const info = backendInfo({ libraryPath: MISSING });
  assert.equal(info.summary, ONE_LINE);
  assert.equal(info.reason, probe.reason);
  // A file that is there but is no library is "failed to load", not "not found".
  const broken = probeCudaBackend({ libraryPath: new URL("README.md", ROOT).pathname });
  assert.equal(broken.summary, "CUDA library failed to load");
});

Deno.test('backend "cuda" without the library: one message, one "Fix:"', async () => {
  const q = randomTensor([4, 2, 64], { seed: 1, dtype: "bfloat16" });
  const key = compileFlexKey(AttnMaskSpec.causal(4));
  await assert.rejects(
    () => flexFlashAttnForward(q, q, q, key, { backend: "cuda", libraryPath: MISSING }),
    (error: unknown) => {
      assert.ok(error instanceof BackendUnavailableError, String(error));
      assert.equal(countOf(error.message, "Fix:"), 1, error.message);
      assert.equal(countOf(error.message, "magi-attn:"), 1, error.message);
      assert.equal(countOf(error.message, "Could not open library:"), 1, error.message);
      assert.match(error.message, /backend "cuda" was requested/);
      assert.match(error.message, /Fix: build the library with `deno task build`.*use backend "cpu"\.$/);
      return true;
    },
  );
});

Deno.test("the demo says in one line that it runs on the CPU, with details behind MAGI_ATTN_DEBUG=1", async () => {
  const demo = [
    "run",
    "--no-check",
    "--allow-read",
    "--allow-env",
    "--allow-ffi",
    "--allow-write",
    "scripts/demo.ts",
  ];
  const quiet = await deno(demo, {});
  assert.equal(quiet.code, 0, quiet.output);
  const firstLine = quiet.output.split("\n")[0];
  assert.equal(firstLine, `backend: cpu — ${ONE_LINE} (MAGI_ATTN_DEBUG=1 for details)`);
  assert.doesNotMatch(quiet.output, /Tried:|Could not open library/);
  const debug = await deno(demo, { MAGI_ATTN_DEBUG: "1" });
  assert.equal(debug.code, 0, debug.output);
  assert.match(
    debug.output,
    /Tried:\n {2}- \/nonexistent\/magi-attn-notice\/libmagi_ffa\.so \(env MAGI_FFA_LIBRARY\)/,
  );
  assert.equal(countOf(debug.output, "Could not open library: Could not open library"), 0);
});

Deno.test("skipped GPU tests print one line each; `deno task test:gpu` fails when nothing ran", async () => {
  const skipped = await deno(["test", "--no-check", "--allow-all", "tests/gpu/device_test.ts"], {});
  assert.equal(skipped.code, 0, skipped.output);
  const notices = skipped.output.split("\n").filter((line) => line.includes("CUDA library"));
  assert.deepEqual(notices, [`GPU device tests skipped: ${ONE_LINE} (MAGI_ATTN_DEBUG=1 for details)`]);
  assert.doesNotMatch(skipped.output, /Tried:/);

  assert.match(denoConfig.tasks["test:gpu"], /^MAGI_REQUIRE_GPU=1 deno test .* tests\/gpu\/$/);
  assert.doesNotMatch(denoConfig.tasks.test, /MAGI_REQUIRE_GPU/, "`deno task test` (CI) stays green");
  const required = await deno(["test", "--no-check", "--allow-all", "tests/gpu/require_gpu_test.ts"], {
    MAGI_REQUIRE_GPU: "1",
  });
  assert.notEqual(required.code, 0, required.output);
  assert.match(required.output, /NOTHING RAN: every GPU test was skipped \(CUDA library not found/);
  const optional = await deno(["test", "--no-check", "--allow-all", "tests/gpu/require_gpu_test.ts"], {});
  assert.equal(optional.code, 0, optional.output);
  assert.match(optional.output, /0 passed \| 0 failed \| 1 ignored/);
});
