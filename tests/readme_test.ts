import assert from "node:assert/strict";

Deno.test("the README's usage example runs as written", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const example = readme.match(/```ts\n([\s\S]*?)```/)?.[1];
  assert.ok(example, "README has a ts example");
  const modUrl = new URL("../mod.ts", import.meta.url).href;
  const script = example.replace('from "@magi/attn"', `from "${modUrl}"`) +
    "\nif (dq.shape.join() !== '8,4,64' || dk.shape.join() !== '8,2,64') throw new Error('shapes');\n";
  const file = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(file, script);
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", "--allow-env", "--allow-ffi", file],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(code, 0, new TextDecoder().decode(stderr));
  } finally {
    await Deno.remove(file);
  }
});
