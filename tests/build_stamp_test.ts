/**
 * The build's progress lines and its skip-when-unchanged stamps, run end to end (`deno run scripts/build.ts`)
 * on a copy of the checkout with a fake nvcc: a shell script that logs its arguments and writes a dummy
 * output, so the test needs neither CUDA nor a GPU.
 */

import assert from "node:assert/strict";
import { LIBRARY_SOURCES, SELFTEST_HEADERS } from "../scripts/build.ts";

const REPO_ROOT = new URL("../", import.meta.url).pathname;

const FAKE_NVCC = `#!/usr/bin/env bash
echo "$*" >> "$FAKE_NVCC_LOG"
if [ "$1" = "--version" ]; then echo "fake nvcc \${FAKE_NVCC_VERSION:-1}"; exit 0; fi
if [ -n "$FAKE_NVCC_FAIL" ] && [[ "$*" == *"$FAKE_NVCC_FAIL"* ]]; then echo "fake: error in $FAKE_NVCC_FAIL" >&2; exit 1; fi
out=""; previous=""
for arg in "$@"; do if [ "$previous" = "-o" ]; then out="$arg"; fi; previous="$arg"; done
echo "fake output of: $*" > "$out"
`;

/** A copy of what the build reads: the script, deno.json, ffi/cuda/ and tests/cuda/, plus the fake nvcc. */
function makeCheckout(): string {
  const root = Deno.makeTempDirSync({ prefix: "magi_build_stamp_" });
  const copy = (from: string, to: string): void => {
    for (const entry of Deno.readDirSync(from)) {
      if (entry.isDirectory) {
        Deno.mkdirSync(`${to}/${entry.name}`, { recursive: true });
        copy(`${from}/${entry.name}`, `${to}/${entry.name}`);
      } else if (entry.isFile) {
        Deno.copyFileSync(`${from}/${entry.name}`, `${to}/${entry.name}`);
      }
    }
  };
  for (const folder of ["scripts", "ffi/cuda", "tests/cuda"]) {
    Deno.mkdirSync(`${root}/${folder}`, { recursive: true });
  }
  Deno.copyFileSync(`${REPO_ROOT}scripts/build.ts`, `${root}/scripts/build.ts`);
  Deno.copyFileSync(`${REPO_ROOT}deno.json`, `${root}/deno.json`);
  copy(`${REPO_ROOT}ffi/cuda`, `${root}/ffi/cuda`);
  copy(`${REPO_ROOT}tests/cuda`, `${root}/tests/cuda`);
  Deno.writeTextFileSync(`${root}/nvcc`, FAKE_NVCC, { mode: 0o755 });
  return root;
}

interface BuildRun {
  code: number;
  stdout: string;
  stderr: string;
  /** The fake nvcc's invocations during this run, one argument string each. */
  calls: string[];
}

async function build(root: string, args: string[] = [], env: Record<string, string> = {}): Promise<BuildRun> {
  const logPath = `${root}/nvcc.log`;
  Deno.writeTextFileSync(logPath, "");
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-lock",
      "--no-config",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-run",
      `${root}/scripts/build.ts`,
      ...args,
    ],
    cwd: root,
    env: { NVCC: `${root}/nvcc`, FAKE_NVCC_LOG: logPath, MAGI_FFA_NVCC_FLAGS: "", NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
    calls: Deno.readTextFileSync(logPath).split("\n").filter((line) => line.length > 0),
  };
}

const compiles = (run: BuildRun): string[] => run.calls.filter((call) => call.includes(" -c "));
const links = (run: BuildRun): string[] => run.calls.filter((call) => call.startsWith("-shared"));
const selftestBuilds = (run: BuildRun): string[] => run.calls.filter((call) => call.includes("selftest.cu"));

Deno.test("build: one progress line per source, skipped when nothing changed, rebuilt on any change", async (t) => {
  const root = makeCheckout();
  const library = `${root}/build/libmagi_ffa.so`;
  const fullBuild = (run: BuildRun, why: string): void => {
    assert.equal(run.code, 0, run.stderr);
    assert.equal(compiles(run).length, LIBRARY_SOURCES.length, `${why}: every source compiled once`);
    assert.equal(links(run).length, 1, `${why}: linked once`);
    assert.doesNotMatch(run.stderr, /up to date/, why);
  };
  const skipped = (run: BuildRun, why: string): void => {
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(
      run.calls.filter((call) => call !== "--version"),
      [],
      `${why}: nvcc only asked its version`,
    );
    assert.match(run.stderr, /libmagi_ffa\.so is up to date/, why);
    assert.equal(run.stdout.trim(), library, `${why}: the library's path is still printed`);
  };
  try {
    await t.step(
      "the first build compiles every source in its own nvcc and prints each as it finishes",
      async () => {
        const run = await build(root);
        fullBuild(run, "first build");
        for (const source of LIBRARY_SOURCES) {
          const line = run.stderr.split("\n").filter((text) => text.includes(`] ${source} (`));
          assert.equal(line.length, 1, `one progress line for ${source}:\n${run.stderr}`);
          assert.match(
            line[0],
            new RegExp(`\\[\\s*\\d+/${LIBRARY_SOURCES.length}\\] .* \\(\\d+\\.\\d s\\)$`),
          );
          assert.equal(
            compiles(run).filter((call) => call.includes(`ffi/cuda/${source} `)).length,
            1,
            source,
          );
        }
        assert.equal(run.stdout.trim(), library);
        assert.ok(Deno.statSync(library).isFile && Deno.statSync(`${library}.sha256`).isFile);
      },
    );

    await t.step("unchanged sources, headers, flags and nvcc: skipped", async () => {
      skipped(await build(root), "second build");
    });

    await t.step(
      "a changed source, header, flag or nvcc version rebuilds; then it is skipped again",
      async () => {
        Deno.writeTextFileSync(`${root}/ffi/cuda/sm80/forward.cu`, "\n// changed\n", { append: true });
        fullBuild(await build(root), "source changed");
        skipped(await build(root), "after the source change");
        Deno.writeTextFileSync(`${root}/ffi/cuda/common/mask.cuh`, "\n// changed\n", { append: true });
        fullBuild(await build(root), "header changed");
        const flags = { MAGI_FFA_NVCC_FLAGS: "-DMAGI_FFA_DKV_SUB_M_D128=16" };
        const tuned = await build(root, [], flags);
        fullBuild(tuned, "flags changed");
        assert.ok(compiles(tuned).every((call) => call.includes("-DMAGI_FFA_DKV_SUB_M_D128=16")));
        skipped(await build(root, [], flags), "same flags again");
        fullBuild(await build(root, [], { ...flags, FAKE_NVCC_VERSION: "2" }), "nvcc version changed");
        fullBuild(await build(root, ["--force"], { ...flags, FAKE_NVCC_VERSION: "2" }), "--force");
      },
    );

    await t.step("a library deleted behind the stamp's back is rebuilt", async () => {
      Deno.removeSync(library);
      fullBuild(await build(root), "library deleted");
    });

    await t.step(
      "a failed compile exits 1 naming the source, and leaves nothing that looks up to date",
      async () => {
        Deno.writeTextFileSync(`${root}/ffi/cuda/sm90/forward.cu`, "\n// changed\n", { append: true });
        const failed = await build(root, [], { FAKE_NVCC_FAIL: "sm90/forward.cu" });
        assert.equal(failed.code, 1);
        assert.match(
          failed.stderr,
          /nvcc failed: .*sm90\/forward\.cu[\s\S]*fake: error in sm90\/forward\.cu/,
        );
        fullBuild(await build(root), "after the failure");
      },
    );

    await t.step("--selftest builds the self-test once, and again after a change to its files", async () => {
      const first = await build(root, ["--selftest"]);
      assert.equal(first.code, 0, first.stderr);
      assert.equal(selftestBuilds(first).length, 1);
      assert.match(selftestBuilds(first)[0], /-L.*build -lmagi_ffa/);
      assert.ok(Deno.statSync(`${root}/build/magi_ffa_selftest`).isFile);
      const again = await build(root, ["--selftest"]);
      assert.equal(selftestBuilds(again).length, 0);
      assert.match(again.stderr, /magi_ffa_selftest is up to date/);
      Deno.writeTextFileSync(`${root}/${SELFTEST_HEADERS[0]}`, "\n// changed\n", { append: true });
      const changed = await build(root, ["--selftest"]);
      assert.equal(selftestBuilds(changed).length, 1, "self-test header changed");
      assert.equal(compiles(changed).length, 0, "the library itself is still up to date");
    });

    await t.step("--experiments and --out-dir keep their own outputs and stamps", async () => {
      const experiments = await build(root, ["--experiments"]);
      fullBuild(experiments, "experiments");
      assert.ok(compiles(experiments).every((call) => call.includes("-DMAGI_FFA_EXPERIMENTS=1")));
      assert.equal(experiments.stdout.trim(), `${root}/build/experiments/libmagi_ffa.so`);
      skipped(await build(root), "the default library is untouched by the experiment build");
      const elsewhere = await build(root, ["--out-dir", `${root}/other`]);
      fullBuild(elsewhere, "another --out-dir");
      assert.equal(elsewhere.stdout.trim(), `${root}/other/libmagi_ffa.so`);
    });
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});
