/**
 * Host overhead of one forward call on device tensors with a cached key: everything
 * `flexFlashAttnForward` does before and around the kernel (option and argument checks, backend choice,
 * plan lookup, output allocation, the FFI call), measured against a fake `libmagi_ffa.so` built with gcc
 * whose "kernel" copies q to out, so it runs on any machine. With and without options, fresh or reused
 * (frozen) options objects, and the argument validation alone.
 *
 * Run: `deno bench --allow-read --allow-write --allow-env --allow-ffi --allow-run scripts/bench/call_overhead_bench.ts`
 * (needs gcc; on a GPU machine the same calls through the real library add the kernel launch).
 */

import { AttnMaskSpec } from "../../lib/masks/spec.ts";
import { compileFlexKey } from "../../lib/masks/flex_key.ts";
import { flexFlashAttnForward } from "../../lib/backends/ffa.ts";
import { validateForwardArgs } from "../../lib/core/validate.ts";
import { randomTensor } from "../../lib/core/tensor.ts";
import { type DeviceTensor, toDevice } from "../../ffi/device.ts";
import { disposeBadInputEnv, prepareBadInputEnv } from "../../tests/bad_input_cases.ts";

const env = prepareBadInputEnv();
globalThis.addEventListener("unload", () => disposeBadInputEnv(env));
if (env.fakeLibrary === undefined) throw new Error(`this bench needs gcc: ${env.gccMissing}`);
const device = { libraryPath: env.fakeLibrary };
const tokens = 64, heads = 4, headDim = 64;
const q = toDevice(randomTensor([tokens, heads, headDim], { dtype: "bfloat16", seed: 1 }), device);
const k = toDevice(randomTensor([tokens, heads, headDim], { dtype: "bfloat16", seed: 2 }), device);
const v = toDevice(randomTensor([tokens, heads, headDim], { dtype: "bfloat16", seed: 3 }), device);
const key = compileFlexKey(AttnMaskSpec.varlen([16, 16, 32]));
const frozen = Object.freeze({ softcap: 30 });

/** Frees a call's device outputs (device inputs give device outputs). */
function release(result: { out: unknown; lse: unknown }): void {
  (result.out as DeviceTensor).dispose();
  (result.lse as DeviceTensor).dispose();
}

Deno.bench("forward, device tensors, cached key, no options", { group: "call" }, async () => {
  release(await flexFlashAttnForward(q, k, v, key));
});

Deno.bench(
  "forward, device tensors, cached key, a fresh { softcap: 30 } each call",
  { group: "call" },
  async () => {
    release(await flexFlashAttnForward(q, k, v, key, { softcap: 30 }));
  },
);

Deno.bench("forward, device tensors, cached key, one frozen { softcap: 30 }", { group: "call" }, async () => {
  release(await flexFlashAttnForward(q, k, v, key, frozen));
});

Deno.bench("validateForwardArgs alone (device tensors, cached key)", { group: "validation" }, () => {
  validateForwardArgs(q, k, v, key, { softcap: 30 });
});
