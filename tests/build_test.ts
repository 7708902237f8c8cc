import assert from "node:assert/strict";
import { LIBRARY_HEADERS, LIBRARY_SOURCES, SELFTEST_HEADERS, SELFTEST_SOURCE } from "../scripts/build.ts";

const root = new URL("../", import.meta.url);

/** Every file under `folder` (recursively) with a C / CUDA extension, relative to it. */
async function cudaFilesUnder(folder: URL, prefix = ""): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of Deno.readDir(new URL(prefix, folder))) {
    const relative = `${prefix}${entry.name}`;
    if (entry.isDirectory) found.push(...await cudaFilesUnder(folder, `${relative}/`));
    else if (entry.isFile && /\.(cu|cuh|h)$/.test(entry.name)) found.push(relative);
  }
  return found;
}

Deno.test("the build's file list (used when the package is loaded over https) names every CUDA source", async () => {
  const onDisk = await cudaFilesUnder(new URL("ffi/cuda/", root));
  // A JSR user's build fetches exactly these files: one missing from the list breaks their build.
  assert.deepEqual([...LIBRARY_SOURCES, ...LIBRARY_HEADERS].sort(), onDisk.sort());
  assert.ok(
    onDisk.some((path) => path.includes("/")),
    "the sources live in role folders (common/, sm80/, sm90/)",
  );
});

Deno.test("the self-test lives under tests/cuda/ and none of its files is in the library's lists", async () => {
  const selftestFiles = [SELFTEST_SOURCE, ...SELFTEST_HEADERS];
  const onDisk = (await cudaFilesUnder(new URL("tests/cuda/", root))).map((path) => `tests/cuda/${path}`);
  assert.deepEqual(selftestFiles.sort(), onDisk.sort());
  const library = new Set([...LIBRARY_SOURCES, ...LIBRARY_HEADERS]);
  for (const path of selftestFiles) {
    const name = path.slice(path.lastIndexOf("/") + 1);
    assert.ok(![...library].some((entry) => entry.endsWith(name)), `${name} must not ship in the library`);
  }
});
