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
  const rows = [...output.matchAll(/^\s+\d+ \|\s+\d+ \|\s+(\S+) \| (\S+)$/gm)];
  assert.equal(rows.length, 3, output);
  for (const [, magi, plainCausal] of rows) {
    assert.ok(Number.isFinite(Number(magi)) && Number(magi) <= 2e-2, output);
    // Completions after the first see other completions under a plain causal mask: the mask matters.
    assert.ok(Number(plainCausal) >= 0, output);
  }
  assert.ok(Number(rows[1][2]) > 1e-2 && Number(rows[2][2]) > 1e-2, output);
});
