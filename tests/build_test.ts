import assert from "node:assert/strict";
import { LIBRARY_HEADERS, LIBRARY_SOURCES } from "../scripts/build.ts";

Deno.test("the build's file list (used when the package is loaded over https) names every CUDA source", async () => {
  const folder = new URL("../ffi/cuda/", import.meta.url);
  const onDisk: string[] = [];
  for await (const entry of Deno.readDir(folder)) {
    if (entry.isFile && /\.(cu|cuh|h)$/.test(entry.name) && entry.name !== "selftest.cu") {
      onDisk.push(entry.name);
    }
  }
  // A JSR user's build fetches exactly these files: one missing from the list breaks their build.
  assert.deepEqual([...LIBRARY_SOURCES, ...LIBRARY_HEADERS].sort(), onDisk.sort());
});
