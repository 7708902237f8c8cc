/**
 * The import rules of docs/architecture.md, checked on the source: every relative import of every module
 * under lib/ and ffi/ (and of the entry points mod.ts and testing.ts) is parsed and resolved, and must point into a folder its own folder may
 * import from. Adding an import that crosses a layer the wrong way fails here, naming the file and import.
 */

import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);

/** Folder (repository-relative, no trailing slash) → the folders its modules may import. */
const ALLOWED: ReadonlyArray<readonly [string, readonly string[]]> = [
  ["lib/core", ["lib/core"]],
  ["lib/masks", ["lib/core", "lib/masks"]],
  ["lib/backends", ["lib/core", "lib/masks", "lib/backends", "ffi"]],
  ["lib/attention", ["lib/core", "lib/masks", "lib/backends", "lib/attention"]],
  // deno.json: the loader reads the package version from it.
  ["ffi", ["lib/core", "ffi", "deno.json"]],
  [".", ["lib/core", "lib/masks", "lib/backends", "lib/attention", "ffi"]], // mod.ts, testing.ts
];

/** The package's entry points at the repository root (deno.json `exports`, apart from the build script). */
const ENTRY_POINTS: readonly string[] = ["mod.ts", "testing.ts"];

/** Relative specifiers of static imports, re-exports and dynamic imports in `source`. */
function importSpecifiers(source: string): string[] {
  const found: string[] = [];
  const pattern = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)(["'])(\.{1,2}\/[^"']+)\1/gm;
  for (const match of source.matchAll(pattern)) found.push(match[2]);
  return found;
}

/** Repository-relative path of `specifier` imported from the repository-relative file `from`. */
function resolve(from: string, specifier: string): string {
  const url = new URL(specifier, new URL(from, ROOT));
  return decodeURIComponent(url.pathname.slice(ROOT.pathname.length));
}

/** The rule folder of a repository-relative file: the longest listed folder containing it. */
function folderOf(path: string): string | undefined {
  if (!path.includes("/")) return ENTRY_POINTS.includes(path) ? "." : undefined;
  let best: string | undefined;
  for (const [folder] of ALLOWED) {
    if (
      folder !== "." && path.startsWith(`${folder}/`) && (best === undefined || folder.length > best.length)
    ) {
      best = folder;
    }
  }
  return best;
}

/** The violations of the rules by `imports` (repository-relative importer → specifiers). */
function violations(imports: ReadonlyMap<string, readonly string[]>): string[] {
  const rules = new Map(ALLOWED);
  const found: string[] = [];
  for (const [file, specifiers] of imports) {
    const folder = folderOf(file);
    if (folder === undefined) continue;
    for (const specifier of specifiers) {
      const target = resolve(file, specifier);
      const allowed = rules.get(folder)!;
      const ok = allowed.some((entry) => target === entry || target.startsWith(`${entry}/`));
      if (!ok) {
        found.push(
          `${file} imports ${specifier} (${target}); ${folder}/ may import only ${allowed.join(", ")}`,
        );
      }
    }
  }
  return found;
}

/** Every TypeScript module under lib/ and ffi/ (not ffi/cuda/), and the entry points, repository-relative. */
function sourceFiles(): string[] {
  const files = [...ENTRY_POINTS];
  const walk = (dir: string): void => {
    for (const entry of Deno.readDirSync(new URL(dir, ROOT))) {
      const path = `${dir}${entry.name}`;
      if (entry.isDirectory && path !== "ffi/cuda") walk(`${path}/`);
      else if (entry.isFile && entry.name.endsWith(".ts")) files.push(path);
    }
  };
  walk("lib/");
  walk("ffi/");
  return files.sort();
}

Deno.test("import rules: lib/core imports only itself, ffi/ only lib/core, layers point one way", () => {
  const files = sourceFiles();
  const imports = new Map(
    files.map((file) => [file, importSpecifiers(Deno.readTextFileSync(new URL(file, ROOT)))]),
  );
  // The walk must have found the layers and their imports, or the check below would pass vacuously.
  for (const folder of ["lib/core/", "lib/masks/", "lib/attention/", "lib/backends/", "ffi/"]) {
    assert.ok(files.some((file) => file.startsWith(folder)), `no module found under ${folder}`);
  }
  assert.ok(
    imports.get("lib/backends/ffa.ts")!.length >= 5,
    "the parser found the imports of lib/backends/ffa.ts",
  );
  for (const file of files) assert.ok(folderOf(file) !== undefined, `${file} is in no folder of the rules`);
  assert.deepEqual(violations(imports), []);
});

Deno.test("import rules: the checker catches each kind of wrong-way import", () => {
  const wrong = new Map<string, string[]>([
    ["ffi/device.ts", ["../lib/masks/spec.ts"]],
    ["lib/core/tensor.ts", ["../backends/ffa.ts"]],
    ["lib/core/types.ts", ["../attention/magi.ts"]],
    ["lib/masks/svg.ts", ["../../ffi/device.ts"]],
    ["lib/backends/ffa.ts", ["../../tests/support/oracle.ts"]],
  ]);
  const found = violations(wrong);
  assert.equal(found.length, 5, found.join("\n"));
  assert.match(
    found[0],
    /ffi\/device\.ts imports \.\.\/lib\/masks\/spec\.ts .*may import only lib\/core, ffi/,
  );
  assert.deepEqual(
    importSpecifiers(
      'import { a } from "./a.ts";\nexport { b } from "../b.ts";\nimport type { C } from "./c.ts";\n' +
        'const d = await import("./d.ts");\nimport "./e.ts";\nimport x from "node:fs";',
    ),
    ["./a.ts", "../b.ts", "./c.ts", "./d.ts", "./e.ts"],
  );
  assert.deepEqual(
    violations(new Map([["lib/attention/magi.ts", ["../masks/spec.ts", "../core/types.ts"]]])),
    [],
  );
});
