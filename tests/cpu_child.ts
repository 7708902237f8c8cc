/**
 * Child process of tests/cpu_process_test.ts (not a test itself): runs the CPU path in a fresh process so
 * the tests can check what only a process shows (the once-per-process stderr notice, that the process
 * exits, permissions, importing the module from a URL). Prints one JSON line on stdout.
 *
 * Modes (first argument):
 * - `notice`: a small float32 call, two large ones (forward) and a large backward through
 *   flexFlashAttnForward/Backward (the notice must appear once, on the first large call);
 * - `notice-cpu`, `notice-auto`: the same in bf16 with `backend: "cpu"` and `"auto"`;
 * - `run [base]`: a large cpuForward + cpuBackward (module imported from `base`, default this checkout),
 *   compared bit for bit with the reference; prints how it ran and when it finished;
 * - `remote`: serves this checkout over HTTP on 127.0.0.1 and runs `run` with the module imported from
 *   that URL (what a remote or JSR import looks like to Deno).
 */

const mode = Deno.args[0];
const here = new URL("..", import.meta.url);

function sameBits(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let index = 0; index < a.length; index++) if (!Object.is(a[index], b[index])) return false;
  return true;
}

async function runFrom(base: string): Promise<Record<string, unknown>> {
  const attention = await import(new URL("lib/backends/cpu/attention.ts", base).href);
  const reference = await import(new URL("lib/backends/reference.ts", base).href);
  const tensors = await import(new URL("lib/core/tensor.ts", base).href);
  const flexKeys = await import(new URL("lib/masks/flex_key.ts", base).href);
  const tokens = 640, heads = 4, headDim = 64;
  const key = flexKeys.toFlexKey({ qRanges: [[0, tokens]], kRanges: [[0, tokens]], attnTypeMap: [1] }, {
    totalQ: tokens,
    totalK: tokens,
  });
  const q = tensors.randomTensor([tokens, heads, headDim], { seed: 1 });
  const k = tensors.randomTensor([tokens, 2, headDim], { seed: 2 });
  const v = tensors.randomTensor([tokens, 2, headDim], { seed: 3 });
  const dout = tensors.randomTensor([tokens, heads, headDim], { seed: 4 });
  const forward = await attention.cpuForward(q, k, v, key, { threads: 2 });
  const forwardRun = attention.lastCpuRun();
  const grads = await attention.cpuBackward(dout, q, k, v, forward.out, forward.lse, key, { threads: 2 });
  const backwardRun = attention.lastCpuRun();
  const expected = reference.referenceForward(q, k, v, key);
  const expectedGrads = reference.referenceBackward(dout, q, k, v, expected.out, expected.lse, key);
  const identical = sameBits(forward.out.data, expected.out.data) &&
    sameBits(forward.lse.data, expected.lse.data) &&
    sameBits(grads.dq.data, expectedGrads.dq.data) && sameBits(grads.dk.data, expectedGrads.dk.data) &&
    sameBits(grads.dv.data, expectedGrads.dv.data);
  return { forwardRun, backwardRun, identical, finishedAt: Date.now() };
}

async function notice(dtype: string, backend: string): Promise<Record<string, unknown>> {
  const { flexFlashAttnBackward, flexFlashAttnForward } = await import("../lib/backends/ffa.ts");
  const { randomTensor } = await import("../lib/core/tensor.ts");
  const { toFlexKey } = await import("../lib/masks/flex_key.ts");
  const call = async (tokens: number, heads: number) => {
    const key = toFlexKey({ qRanges: [[0, tokens]], kRanges: [[0, tokens]], attnTypeMap: [1] }, {
      totalQ: tokens,
      totalK: tokens,
    });
    const options = { backend: backend as "cpu" | "auto" };
    const make = (seed: number) => randomTensor([tokens, heads, 64], { seed, dtype: dtype as "float32" });
    const q = make(1), k = make(2), v = make(3);
    const forward = await flexFlashAttnForward(q, k, v, key, options);
    return { q, k, v, key, options, forward };
  };
  // 4 · (1024 · 1025 / 2) · 8 · 64 ≈ 1.07e9 FLOPs forward: just over the notice's threshold.
  await call(64, 2);
  console.error("after the small call");
  const large = await call(1024, 8);
  console.error("after the first large call");
  await call(1024, 8);
  const { q, k, v, key, options, forward } = large;
  await flexFlashAttnBackward(q, q, k, v, forward.out as never, forward.lse as never, key, options);
  return { done: true };
}

let result: Record<string, unknown>;
if (mode === "notice") {
  result = await notice("float32", "auto");
} else if (mode === "notice-cpu") {
  result = await notice("bfloat16", "cpu");
} else if (mode === "notice-auto") {
  result = await notice("bfloat16", "auto");
} else if (mode === "run") {
  result = await runFrom(Deno.args[1] ?? here.href);
} else if (mode === "remote") {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    const path = new URL(request.url).pathname;
    try {
      const body = await Deno.readFile(new URL(`.${path}`, here));
      return new Response(body, { headers: { "content-type": "application/typescript" } });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  result = await runFrom(`http://127.0.0.1:${server.addr.port}/`);
  await server.shutdown();
} else {
  throw new Error(`unknown mode ${mode}`);
}
console.log(JSON.stringify(result));
