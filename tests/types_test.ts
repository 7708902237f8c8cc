/**
 * Type-level tests: tests/types/typed_results.ts must type-check as written (host inputs → HostTensor
 * results, device inputs → DeviceTensor results, toFloat32/toHost on any tensor), and each line marked
 * `@ts-expect-error` must really be an error: without the markers, `deno check` reports exactly those.
 */

import assert from "node:assert/strict";

const SOURCE = new URL("./types/typed_results.ts", import.meta.url);

async function denoCheck(path: string): Promise<{ ok: boolean; output: string }> {
  const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["check", "--quiet", path],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { ok: success, output: new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr) };
}

Deno.test("result types: the contract file type-checks as written", async () => {
  const result = await denoCheck(SOURCE.pathname);
  assert.ok(result.ok, result.output);
});

Deno.test("result types: every @ts-expect-error marks a real error", async () => {
  const lines = (await Deno.readTextFile(SOURCE)).split("\n");
  const marked: number[] = []; // 1-based lines of the statements the markers cover, after removal
  const kept: string[] = [];
  for (const line of lines) {
    if (line.trim().startsWith("// @ts-expect-error")) marked.push(kept.length + 1);
    else kept.push(line);
  }
  assert.ok(marked.length >= 5, "the contract file has its negative cases");
  // Same folder, so that the relative import of mod.ts still resolves.
  const copy = new URL(`./types/.unmarked_${crypto.randomUUID()}.ts`, import.meta.url).pathname;
  await Deno.writeTextFile(copy, kept.join("\n"));
  try {
    const result = await denoCheck(copy);
    assert.equal(result.ok, false, "without the markers the file must not type-check");
    const errorLines = [...result.output.matchAll(/\.unmarked_[\w-]+\.ts:(\d+):\d+/g)].map((m) =>
      Number(m[1])
    );
    assert.deepEqual([...new Set(errorLines)].sort((a, b) => a - b), marked, result.output);
  } finally {
    await Deno.remove(copy);
  }
});
