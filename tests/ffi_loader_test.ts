/**
 * CPU-side tests of the FFI loader: the lookup order, errors listing every path, the ABI check,
 * permissions, the probe and status → exception, on the fake library (tests/support/fake_library.ts).
 * Skipped when gcc is absent.
 */

import assert from "node:assert/strict";
import { BackendUnavailableError } from "../lib/core/errors.ts";
import {
  checkStatus,
  libraryCandidates,
  loadCudaLibrary,
  MagiFfaError,
  PACKAGE_VERSION,
  probeCudaBackend,
} from "../ffi/library.ts";
import { MAGI_FFA_ABI_VERSION, MAGI_FFA_DTYPE } from "../ffi/ffi.ts";
import { fakes, gccAvailable, REPO_ROOT, runDeno, workDir } from "./support/fake_library.ts";

const ignore = !gccAvailable;

Deno.test("loader: a missing library names the path, its source and the fix, with cause", () => {
  const path = "/nonexistent/magi-attn/libmagi_ffa.so";
  assert.throws(
    () => loadCudaLibrary({ libraryPath: path }),
    (error: unknown) => {
      assert.ok(error instanceof BackendUnavailableError);
      assert.match(error.message, /\/nonexistent\/magi-attn\/libmagi_ffa\.so \(option libraryPath\)/);
      assert.match(error.message, /deno task build/);
      assert.ok(error.cause instanceof Error, "cause is the dlopen error");
      assert.match(String((error.cause as Error).message), /libmagi_ffa\.so|No such file/);
      return true;
    },
  );
});

Deno.test("loader: probe of a missing library reports unavailable instead of throwing", () => {
  const probe = probeCudaBackend({ libraryPath: "/nonexistent/probe/libmagi_ffa.so" });
  assert.equal(probe.available, false);
  assert.match(probe.reason ?? "", /\/nonexistent\/probe\/libmagi_ffa\.so/);
  assert.equal(probeCudaBackend({ libraryPath: "/nonexistent/probe/libmagi_ffa.so" }), probe, "cached");
});

Deno.test("loader: default candidates are the local build then the versioned user cache", () => {
  const previous = Deno.env.get("MAGI_FFA_LIBRARY");
  Deno.env.delete("MAGI_FFA_LIBRARY");
  try {
    const candidates = libraryCandidates();
    assert.equal(candidates[0].source, "local build");
    assert.equal(candidates[0].path, `${REPO_ROOT}build/libmagi_ffa.so`);
    assert.equal(candidates[1].source, "user cache");
    assert.ok(candidates[1].path.endsWith(`/magi-attn/${PACKAGE_VERSION}/libmagi_ffa.so`));
    Deno.env.set("MAGI_FFA_LIBRARY", "/elsewhere/libmagi_ffa.so");
    assert.deepEqual(libraryCandidates(), [{
      path: "/elsewhere/libmagi_ffa.so",
      source: "env MAGI_FFA_LIBRARY",
    }]);
    assert.deepEqual(libraryCandidates({ libraryPath: "/explicit.so" }), [
      { path: "/explicit.so", source: "option libraryPath" },
    ]);
  } finally {
    if (previous === undefined) Deno.env.delete("MAGI_FFA_LIBRARY");
    else Deno.env.set("MAGI_FFA_LIBRARY", previous);
  }
});

/** Copies the loader's modules into `root` so that its "local build" is `root/build/libmagi_ffa.so`. */
function copyLoaderTo(root: string): void {
  Deno.mkdirSync(`${root}/ffi`, { recursive: true });
  Deno.mkdirSync(`${root}/lib/core`, { recursive: true });
  for (
    const file of ["ffi/library.ts", "ffi/ffi.ts", "lib/core/errors.ts", "lib/core/names.ts", "deno.json"]
  ) {
    Deno.copyFileSync(`${REPO_ROOT}${file}`, `${root}/${file}`);
  }
}

Deno.test({
  name: "loader: default lookup lists every path tried, with an AggregateError cause",
  ignore,
  async fn() {
    const root = `${workDir}/copy_missing`;
    copyLoaderTo(root);
    const code = `
      import { loadCudaLibrary } from "${root}/ffi/library.ts";
      try { loadCudaLibrary(); console.log("LOADED"); } catch (error) {
        console.log(JSON.stringify({ name: error.name, message: error.message, cause: error.cause?.constructor.name,
          count: error.cause?.errors?.length }));
      }`;
    const result = await runDeno(code, ["--allow-ffi", "--allow-env", "--allow-read"], {
      XDG_CACHE_HOME: `${workDir}/empty_cache`,
    });
    assert.ok(result.success, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.name, "BackendUnavailableError");
    assert.ok(report.message.includes(`${root}/build/libmagi_ffa.so (local build)`), report.message);
    assert.ok(
      report.message.includes(
        `${workDir}/empty_cache/magi-attn/${PACKAGE_VERSION}/libmagi_ffa.so (user cache)`,
      ),
      report.message,
    );
    assert.equal(report.cause, "AggregateError");
    assert.equal(report.count, 2);
  },
});

Deno.test({
  name: "loader: a wrong-ABI local build is skipped for a good user-cache build",
  ignore,
  async fn() {
    const root = `${workDir}/copy_fallback`;
    copyLoaderTo(root);
    Deno.mkdirSync(`${root}/build`, { recursive: true });
    Deno.copyFileSync(fakes.wrongAbi, `${root}/build/libmagi_ffa.so`);
    const cacheDir = `${workDir}/cache/magi-attn/${PACKAGE_VERSION}`;
    Deno.mkdirSync(cacheDir, { recursive: true });
    Deno.copyFileSync(fakes.good, `${cacheDir}/libmagi_ffa.so`);
    const code = `
      import { loadCudaLibrary } from "${root}/ffi/library.ts";
      console.log(loadCudaLibrary().path);`;
    const result = await runDeno(code, ["--allow-ffi", "--allow-env", "--allow-read"], {
      XDG_CACHE_HOME: `${workDir}/cache`,
    });
    assert.ok(result.success, result.stderr);
    assert.equal(result.stdout.trim(), `${cacheDir}/libmagi_ffa.so`);
  },
});

Deno.test({
  name: "loader: a library of another ABI version is rejected naming both versions and the fix",
  ignore,
  fn() {
    assert.throws(
      () => loadCudaLibrary({ libraryPath: fakes.wrongAbi }),
      (error: unknown) => {
        assert.ok(error instanceof BackendUnavailableError);
        assert.match(error.message, /ABI version 999/);
        assert.match(error.message, new RegExp(`needs ABI version ${MAGI_FFA_ABI_VERSION}`));
        assert.match(error.message, /rebuild it with `deno task build`/);
        return true;
      },
    );
  },
});

Deno.test({
  name: "loader: MAGI_FFA_LIBRARY is used, and only it is tried",
  ignore,
  async fn() {
    const code = `
      import { loadCudaLibrary } from "${REPO_ROOT}ffi/library.ts";
      try { console.log("LOADED " + loadCudaLibrary().path); } catch (error) { console.log(error.message); }`;
    const good = await runDeno(code, ["--allow-ffi", "--allow-env", "--allow-read"], {
      MAGI_FFA_LIBRARY: fakes.good,
    });
    assert.equal(good.stdout.trim(), `LOADED ${fakes.good}`, good.stderr);
    const missing = await runDeno(code, ["--allow-ffi", "--allow-env", "--allow-read"], {
      MAGI_FFA_LIBRARY: `${workDir}/missing.so`,
    });
    assert.match(missing.stdout, /missing\.so \(env MAGI_FFA_LIBRARY\)/);
    assert.doesNotMatch(missing.stdout, /local build|user cache/);
  },
});

Deno.test({
  name: "loader: missing --allow-ffi / --allow-env is rethrown as Deno.errors.NotCapable",
  ignore,
  async fn() {
    const withPath = `
      import { loadCudaLibrary, probeCudaBackend } from "${REPO_ROOT}ffi/library.ts";
      for (const attempt of [() => loadCudaLibrary({ libraryPath: "${fakes.good}" }),
                             () => probeCudaBackend({ libraryPath: "${fakes.good}" })]) {
        try { attempt(); console.log("NO ERROR"); }
        catch (error) { console.log(error instanceof Deno.errors.NotCapable ? "NotCapable" : error.name); }
      }`;
    const noFfi = await runDeno(withPath, ["--allow-read", "--allow-env"]);
    assert.equal(noFfi.stdout.trim(), "NotCapable\nNotCapable", noFfi.stderr);
    const noEnv = `
      import { loadCudaLibrary } from "${REPO_ROOT}ffi/library.ts";
      try { loadCudaLibrary(); console.log("NO ERROR"); }
      catch (error) { console.log(error instanceof Deno.errors.NotCapable ? "NotCapable" : error.name); }
      console.log(loadCudaLibrary({ libraryPath: "${fakes.good}" }).path);`;
    const result = await runDeno(noEnv, ["--allow-read", "--allow-ffi"]);
    assert.equal(result.stdout.trim(), `NotCapable\n${fakes.good}`, result.stderr);
  },
});

Deno.test({
  name:
    "probe: no driver/GPU, an old driver and an old GPU are unavailable with reasons; a good GPU is listed",
  ignore,
  fn() {
    for (const variant of ["noGpu", "oldDriver"] as const) {
      const probe = probeCudaBackend({ libraryPath: fakes[variant] });
      assert.equal(probe.available, false);
      assert.match(probe.reason ?? "", /no CUDA driver\/GPU/);
      assert.match(
        probe.reason ?? "",
        /no CUDA-capable device is detected/,
        "the library's text is included",
      );
      assert.equal(probe.libraryPath, fakes[variant]);
    }
    const old = probeCudaBackend({ libraryPath: fakes.oldGpu });
    assert.equal(old.available, false);
    assert.match(old.reason ?? "", /compute capability 7\.5/);
    assert.match(old.reason ?? "", /8\.0 or newer/);
    const good = probeCudaBackend({ libraryPath: fakes.good });
    assert.deepEqual(good, {
      available: true,
      libraryPath: fakes.good,
      devices: [{ index: 0, name: "Fake GPU 0", major: 9, minor: 0 }],
    });
    assert.equal(probeCudaBackend({ libraryPath: fakes.good }), good, "cached");
  },
});

Deno.test({
  name: "checkStatus: a failure carries the status, its name and the library's last-error text",
  ignore,
  fn() {
    const library = loadCudaLibrary({ libraryPath: fakes.good });
    assert.equal(loadCudaLibrary({ libraryPath: fakes.good }), library, "cached per path");
    checkStatus(library, 0, "nothing");
    const status = library.symbols.magi_ffa_free(Deno.UnsafePointer.create(16n));
    assert.throws(() => checkStatus(library, status, "magi_ffa_free"), (error: unknown) => {
      assert.ok(error instanceof MagiFfaError);
      assert.equal(error.status, 1);
      assert.equal(
        error.message,
        "magi-attn: magi_ffa_free failed with status 1 (cudaErrorInvalidValue): fake: invalid device pointer",
      );
      return true;
    });
  },
});

Deno.test({
  name: "real library: when built, it loads with the right ABI and the probe answers without throwing",
  ignore: !(() => {
    try {
      return Deno.statSync(`${REPO_ROOT}build/libmagi_ffa.so`).isFile;
    } catch {
      return false;
    }
  })(),
  fn() {
    const libraryPath = `${REPO_ROOT}build/libmagi_ffa.so`;
    const library = loadCudaLibrary({ libraryPath });
    assert.equal(library.symbols.magi_ffa_abi_version(), MAGI_FFA_ABI_VERSION);
    // The lists the C side declares once (ffi/cuda/common/shapes.cuh); no GPU needed to read them.
    assert.deepEqual(library.supportedHeadDims, [64, 128]);
    assert.deepEqual(library.supportedDtypes, [MAGI_FFA_DTYPE.float16, MAGI_FFA_DTYPE.bfloat16]);
    const probe = probeCudaBackend({ libraryPath });
    if (probe.available) {
      assert.ok((probe.devices?.length ?? 0) > 0);
    } else {
      // On a machine without a GPU (like the CI box) the reason must say so, not crash.
      assert.match(probe.reason ?? "", /no CUDA driver\/GPU|compute capability/);
    }
  },
});
