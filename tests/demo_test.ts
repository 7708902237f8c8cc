import assert from "node:assert/strict";

Deno.test("the demo runs: packed prefix-tree logits equal separate runs, and the guard fires", async () => {
  const demo = new URL("../scripts/demo.ts", import.meta.url);
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-env", "--allow-ffi", "--allow-write", demo.pathname],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const output = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  assert.equal(code, 0, output);
  assert.match(output, /^backend: (cpu|cuda)/m);
  assert.match(output, /OK: every completion's logits match its separate run/);
  assert.match(output, /raised AttnSpecNotConsumedError at the next step/);
  // Three completions, each with a finite difference under the bound.
  const diffs = [...output.matchAll(/^\s+\d+ \|\s+\d+ \| (\S+)$/gm)].map((match) => Number(match[1]));
  assert.equal(diffs.length, 3, output);
  for (const diff of diffs) assert.ok(Number.isFinite(diff) && diff <= 2e-2, output);
});
