/**
 * The README's examples run as written, the way a user runs them: from a folder outside this checkout
 * (so the checkout's own deno.json does not apply), with the checkout at `./magi-attn` as the Install
 * section assumes. Once through the import map entry the README gives (every ```ts block that imports
 * "@magi/attn"), once through its path import, under the permissions it states. And the figures it gives
 * name the machine they were measured on.
 */

import assert from "node:assert/strict";

const CHECKOUT = new URL("../", import.meta.url);
const README = await Deno.readTextFile(new URL("README.md", CHECKOUT));

interface CodeBlock {
  /** The info string after the fence, e.g. `ts` or `ts ignore`. */
  readonly info: string;
  /** The code, with the indentation of a list item removed. */
  readonly code: string;
}

/** Every fenced block of the README, list-item indentation removed. */
function codeBlocks(markdown: string): CodeBlock[] {
  const blocks: CodeBlock[] = [];
  for (const match of markdown.matchAll(/^( *)```(\S.*)?\n([\s\S]*?)^\1```$/gm)) {
    const indent = match[1].length;
    const code = match[3].split("\n").map((line) => line.slice(indent)).join("\n");
    blocks.push({ info: (match[2] ?? "").trim(), code });
  }
  return blocks;
}

const blocks = codeBlocks(README);
const importMapBlock = blocks.find((block) => block.info === "json" && block.code.includes('"@magi/attn"'));
const pathImportBlock = blocks.find((block) =>
  block.info === "ts" && block.code.includes('"./magi-attn/mod.ts"')
);
const packageExamples = blocks.filter((block) =>
  block.info === "ts" && block.code.includes('from "@magi/attn"')
);

/** A fresh folder outside the checkout with `magi-attn` linking to it, as the Install section assumes. */
async function userFolder(): Promise<string> {
  const folder = await Deno.makeTempDir({ prefix: "magi-attn-user-" });
  assert.ok(!folder.startsWith(decodeURIComponent(CHECKOUT.pathname)), "the folder is outside the checkout");
  await Deno.symlink(decodeURIComponent(CHECKOUT.pathname), `${folder}/magi-attn`);
  return folder;
}

async function run(
  folder: string,
  file: string,
  flags: readonly string[],
): Promise<{ code: number; output: string }> {
  const env: Record<string, string> = { NO_COLOR: "1" };
  // Keep a deliberate library choice of the caller (a GPU run); otherwise the default lookup is exercised.
  const library = Deno.env.get("MAGI_FFA_LIBRARY");
  if (library) env.MAGI_FFA_LIBRARY = library;
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...flags, file],
    cwd: folder,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, output: new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr) };
}

/** Type-checks `files` in `folder` in one process: "as written" includes the types. */
async function check(folder: string, files: readonly string[]): Promise<void> {
  const { success, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["check", "--quiet", ...files],
    cwd: folder,
    env: { NO_COLOR: "1" },
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(success, new TextDecoder().decode(stderr));
}

Deno.test("README: the Install section has the JSR line, an import map entry and a path import", () => {
  assert.match(README, /^deno add jsr:@magi\/attn$/m);
  assert.ok(importMapBlock, "a json block mapping @magi/attn");
  assert.ok(pathImportBlock, "a ts block importing ./magi-attn/mod.ts");
  assert.ok(packageExamples.length >= 2, "usage examples importing @magi/attn");
  for (const flag of ["--allow-ffi", "--allow-env", "--allow-read"]) assert.ok(README.includes(flag), flag);
  assert.match(README, /deno task build/);
  assert.match(README, /MAGI_FFA_LIBRARY=/);
});

Deno.test("README: every example importing @magi/attn runs as written through the README's import map", async () => {
  const folder = await userFolder();
  try {
    await Deno.writeTextFile(`${folder}/deno.json`, importMapBlock!.code);
    const files = packageExamples.map((_, index) => `example_${index}.ts`);
    for (const [index, example] of packageExamples.entries()) {
      await Deno.writeTextFile(`${folder}/${files[index]}`, example.code);
    }
    // The testing entry point is mapped too.
    await Deno.writeTextFile(
      `${folder}/testing.ts`,
      'import { seededRandom } from "@magi/attn/testing";\nif (seededRandom(1)() !== seededRandom(1)()) Deno.exit(1);\n',
    );
    await check(folder, [...files, "testing.ts"]);
    for (const [index, file] of files.entries()) {
      const { code, output } = await run(folder, file, ["--allow-ffi", "--allow-env"]);
      assert.equal(code, 0, `README example ${index}:\n${packageExamples[index].code}\n${output}`);
    }
    const testing = await run(folder, "testing.ts", []);
    assert.equal(testing.code, 0, testing.output);
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
});

Deno.test("README: the path import runs as written, with the permissions the README states", async () => {
  const folder = await userFolder();
  try {
    await Deno.writeTextFile(`${folder}/main.ts`, pathImportBlock!.code);
    await check(folder, ["main.ts"]);
    const command = blocks.find((block) => block.info === "sh" && block.code.includes("main.ts"));
    assert.ok(command, "the README says how to run main.ts");
    const flags = command.code.trim().split(/\s+/).filter((word) => word.startsWith("--"));
    assert.deepEqual(flags, ["--allow-ffi", "--allow-env"]);
    const gpuFlags = await run(folder, "main.ts", flags);
    assert.equal(gpuFlags.code, 0, gpuFlags.output);
    assert.match(gpuFlags.output, /^\[ 8, 2, 64 \]$/m);
    // "the CPU reference only: none".
    const none = await run(folder, "main.ts", []);
    assert.equal(none.code, 0, none.output);
    assert.match(none.output, /FFI permission not granted: CPU reference/);
    // "with --allow-ffi but not --allow-env, Deno's NotCapable error names the variable".
    if (!Deno.env.get("MAGI_FFA_LIBRARY")) {
      const ffiOnly = await run(folder, "main.ts", ["--allow-ffi"]);
      assert.notEqual(ffiOnly.code, 0);
      assert.match(ffiOnly.output, /NotCapable: Requires env access to "MAGI_FFA_LIBRARY"/);
    }
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
});

Deno.test("README: each paragraph with a time figure names the machine it was measured on", () => {
  const paragraphs = README.split(/\n\s*\n/).filter((paragraph) => !paragraph.trimStart().startsWith("```"));
  const timed = paragraphs.filter((paragraph) => /\d(\.\d+)? ?(µs|ms)\b/.test(paragraph));
  assert.ok(timed.length >= 2, "the README gives timings");
  for (const paragraph of timed) {
    assert.match(paragraph, /H200|measured on/, `no machine named for:\n${paragraph}`);
  }
  assert.match(README, /measured on a 2-core .* without a GPU/);
});
