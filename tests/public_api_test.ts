/**
 * The package's public face: `mod.ts` exports what a model or training loop calls, `testing.ts` the test
 * and benchmark helpers, no name is in both, deno.json exports and publishes both, and each main export's
 * JSDoc has an `@example` that runs (CPU) as written.
 */

import assert from "node:assert/strict";
import denoConfig from "../deno.json" with { type: "json" };
import * as main from "../mod.ts";
import * as testing from "../testing.ts";

const ROOT = new URL("../", import.meta.url);

/** Helpers a user does not call to run attention: they live in `@magi/attn/testing`. */
const TESTING_ONLY = [
  "seededRandom",
  "numel",
  "sliceArea",
  "FLEX_KEY_CACHE_CAPACITY",
  "clearFlexKeyCache",
  "flexKeyCacheSize",
  "denseMask",
  "toFloat64",
  "float32ToBf16Bits",
  "bf16BitsToFloat32",
  "probeCudaBackend",
];

/** The calls a user starts from; each must show how in an `@example`. */
const MAIN_WITH_EXAMPLES = [
  "AttnMaskSpec",
  "compileFlexKey",
  "flexFlashAttnForward",
  "flexFlashAttnBackward",
  "backendInfo",
  "makeMagiAttnFunc",
  "ALL_ATTENTION_FUNCTIONS",
  "setAttnSpecOnAttention",
  "prefixTreeLayout",
  "maskToSvg",
  "tensor",
  "randomTensor",
  "float32ToBf16",
  "toFloat32",
  "toHost",
  "toDevice",
];

interface DocSymbol {
  name: string;
  declarations: { jsDoc?: { tags?: { kind: string; doc?: string }[] } }[];
}

/** The entry point's symbols; its module documentation counts as one more symbol named after the file. */
async function docSymbols(entry: string): Promise<DocSymbol[]> {
  const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--json", entry],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(success, new TextDecoder().decode(stderr));
  const json = JSON.parse(new TextDecoder().decode(stdout));
  const node = Object.values(
    json.nodes as Record<string, { symbols: DocSymbol[]; module_doc?: { doc?: string } }>,
  )[0];
  const moduleDoc = node.module_doc?.doc ?? "";
  return [...node.symbols, {
    name: entry,
    declarations: [{ jsDoc: { tags: [{ kind: "example", doc: moduleDoc }] } }],
  }];
}

function examplesOf(symbol: DocSymbol): string[] {
  return symbol.declarations.flatMap((declaration) =>
    (declaration.jsDoc?.tags ?? []).filter((tag) => tag.kind === "example").map((tag) => tag.doc ?? "")
  );
}

Deno.test("mod.ts keeps to what users call; test and bench helpers are in testing.ts only", async () => {
  const mainNames = Object.keys(main);
  const testingNames = Object.keys(testing);
  for (const name of TESTING_ONLY) {
    assert.ok(!mainNames.includes(name), `${name} is not in mod.ts`);
    assert.ok(testingNames.includes(name), `${name} is in testing.ts`);
  }
  assert.deepEqual(testingNames.filter((name) => mainNames.includes(name)), [], "no name in both");
  // Types included (deno doc lists them), the main face is well under the 82 names it had.
  const symbols = (await docSymbols("mod.ts")).filter((symbol) => symbol.name !== "mod.ts");
  assert.ok(symbols.length <= 70, `${symbols.length} names in mod.ts`);
  assert.equal(denoConfig.exports["./testing"], "./testing.ts");
  assert.ok(denoConfig.publish.include.includes("testing.ts"), "testing.ts is published");
});

Deno.test("each main export has an @example, and every example in mod.ts and testing.ts runs", async () => {
  const symbols = [...await docSymbols("mod.ts"), ...await docSymbols("testing.ts")];
  for (const name of MAIN_WITH_EXAMPLES) {
    const symbol = symbols.find((item) => item.name === name);
    assert.ok(symbol, `${name} is exported`);
    assert.ok(examplesOf(symbol).length > 0, `${name} has an @example`);
  }
  const modUrl = new URL("mod.ts", ROOT).href, testingUrl = new URL("testing.ts", ROOT).href;
  const codes = symbols.flatMap(examplesOf).map((doc) => doc.match(/```ts\n([\s\S]*?)```/)?.[1] ?? "")
    .filter((code) => code.includes("@magi/attn"));
  assert.ok(codes.length >= MAIN_WITH_EXAMPLES.length, `${codes.length} examples found`);
  const folder = await Deno.makeTempDir({ prefix: "magi-attn-examples-" });
  try {
    const files = await Promise.all(codes.map(async (code, index) => {
      const file = `${folder}/example_${index}.ts`;
      const rewritten = code.replaceAll('"@magi/attn/testing"', `"${testingUrl}"`)
        .replaceAll('"@magi/attn"', `"${modUrl}"`);
      await Deno.writeTextFile(file, rewritten);
      return file;
    }));
    // One process runs them all in turn (each is a module with top-level await), after one type check.
    const runner = `${folder}/run_all.ts`;
    await Deno.writeTextFile(
      runner,
      files.map((file) => `await import(${JSON.stringify(`file://${file}`)});`).join("\n"),
    );
    const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--check", "--allow-ffi", "--allow-env", "--allow-read", runner],
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(success, new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr));
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
});
