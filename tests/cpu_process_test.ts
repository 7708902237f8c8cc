/**
 * The CPU path seen from a whole process (tests/cpu_child.ts runs in a fresh `deno run`): the stderr notice
 * appears once per process on large calls and names why the GPU was not used; the worker pool works when
 * the module is imported from a file path and from an HTTP URL, a process that used it exits by itself, and
 * without read permission for the worker module the path runs in the calling thread with the same results.
 */

import assert from "node:assert/strict";

const CHILD = new URL("./cpu_child.ts", import.meta.url).pathname;

interface ChildResult {
  code: number;
  stdout: string;
  stderr: string;
  endedAt: number;
}

async function runChild(permissions: string[], args: string[]): Promise<ChildResult> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    // --no-lock: the remote child would otherwise record its random-port URLs in the project lockfile.
    args: ["run", "--no-prompt", "--no-lock", ...permissions, CHILD, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
    signal: AbortSignal.timeout(120_000), // a process kept alive by a worker fails here
  }).output();
  return {
    code,
    stdout: new TextDecoder().decode(stdout),
    stderr: new TextDecoder().decode(stderr),
    endedAt: Date.now(),
  };
}

/** What tests/cpu_child.ts prints for `run` and `remote` (the notice modes print `{ done: true }`). */
interface ChildReport {
  forwardRun: { mode: string; tasks: number; reason?: string };
  backwardRun: { mode: string };
  identical: boolean;
  finishedAt: number;
}

function lastJson(child: ChildResult): ChildReport {
  assert.equal(child.code, 0, `child failed:\n${child.stdout}\n${child.stderr}`);
  const line = child.stdout.trim().split("\n").at(-1) ?? "";
  return JSON.parse(line);
}

const NOTICE = /^magi-attn: a (\S+)-FLOP attention (forward|backward) runs on the CPU .*: (.*)\. This notice/;

Deno.test("a large CPU call says so once per process on stderr, with why the GPU was not used", async (t) => {
  await t.step("float32 inputs: the first large call, not the small one, not again", async () => {
    const child = await runChild(["--allow-read", "--allow-env", "--allow-ffi"], ["notice"]);
    lastJson(child);
    const lines = child.stderr.split("\n");
    const notices = lines.filter((line) => NOTICE.test(line));
    assert.equal(notices.length, 1, child.stderr);
    // Written during the first large call: after the small call's marker, before the next marker.
    assert.ok(lines.indexOf(notices[0]) > lines.indexOf("after the small call"), child.stderr);
    assert.ok(lines.indexOf(notices[0]) < lines.indexOf("after the first large call"), child.stderr);
    const [, flops, pass, reason] = notices[0].match(NOTICE)!;
    assert.ok(Number(flops) > 1e9 && Number(flops) < 1.2e9, notices[0]);
    assert.equal(pass, "forward");
    assert.match(reason, /float32/);
  });
  await t.step('bf16 with backend "cpu": the reason is the explicit request', async () => {
    const child = await runChild(["--allow-read", "--allow-env", "--allow-ffi"], ["notice-cpu"]);
    lastJson(child);
    const notices = child.stderr.split("\n").filter((line) => NOTICE.test(line));
    assert.equal(notices.length, 1, child.stderr);
    assert.match(notices[0], /backend "cpu" was requested/);
  });
  await t.step("bf16 on auto without a usable GPU: the probe's reason, in one line", async () => {
    const child = await runChild(["--allow-read", "--allow-env", "--allow-ffi"], ["notice-auto"]);
    lastJson(child);
    const notices = child.stderr.split("\n").filter((line) => NOTICE.test(line));
    assert.equal(notices.length, 1, child.stderr);
    const reason = notices[0].match(NOTICE)![3];
    assert.ok(reason.length > 10 && !/float32|was requested/.test(reason), notices[0]);
  });
  await t.step("without --allow-ffi: the reason says so", async () => {
    const child = await runChild(["--allow-read", "--allow-env"], ["notice-auto"]);
    lastJson(child);
    const notices = child.stderr.split("\n").filter((line) => NOTICE.test(line));
    assert.equal(notices.length, 1, child.stderr);
    assert.match(notices[0], /FFI permission/);
  });
});

Deno.test("workers from a file path: bit-identical results, and the process exits by itself", async () => {
  const child = await runChild(["--allow-read", "--allow-env"], ["run"]);
  const result = lastJson(child);
  assert.equal(result.forwardRun.mode, "workers", JSON.stringify(result));
  assert.equal(result.backwardRun.mode, "workers", JSON.stringify(result));
  assert.equal(result.identical, true);
  // Idle workers quit after a moment: the process ends soon after its work, not at the test's timeout.
  assert.ok(
    child.endedAt - result.finishedAt < 20_000,
    `exited ${child.endedAt - result.finishedAt} ms late`,
  );
});

Deno.test("workers from an HTTP URL (as a remote or JSR import): bit-identical results, process exits", async () => {
  const child = await runChild(
    ["--allow-read", "--allow-env", "--allow-net=127.0.0.1", "--allow-import=127.0.0.1"],
    ["remote"],
  );
  const result = lastJson(child);
  assert.equal(result.forwardRun.mode, "workers", JSON.stringify(result));
  assert.equal(result.backwardRun.mode, "workers", JSON.stringify(result));
  assert.equal(result.identical, true);
});

Deno.test("without read permission for the worker module: in the calling thread, same results", async () => {
  const child = await runChild([], ["run"]);
  const result = lastJson(child);
  assert.equal(result.forwardRun.mode, "in-thread", JSON.stringify(result));
  assert.match(result.forwardRun.reason ?? "", /read permission/);
  assert.ok(result.forwardRun.tasks > 1, "cut into several tasks, so the event loop gets turns");
  assert.equal(result.identical, true);
});
