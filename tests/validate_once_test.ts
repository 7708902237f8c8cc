/**
 * Validate once: `flexFlashAttnForward` validates a call and hands the CUDA backend a `ValidatedCall`,
 * which the backend trusts only for the exact argument objects it covers; anything else (a forged object,
 * a call validated for other tensors) is validated in full, so direct ffi callers stay safe.
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { randomTensor } from "../lib/core/tensor.ts";
import { ValidatedCall, validateForwardCall } from "../lib/core/validate.ts";
import { compileFlexKey } from "../lib/masks/flex_key.ts";
import { AttnMaskSpec } from "../lib/masks/spec.ts";
import { cudaForwardValidated } from "../ffi/cuda_backend.ts";

const key = compileFlexKey(AttnMaskSpec.causal(8));
const good = randomTensor([8, 2, 64], { dtype: "bfloat16" });

Deno.test("a ValidatedCall covers exactly its own arguments and cannot be forged", () => {
  const call = validateForwardCall([good, good, good], key);
  assert.equal(call.shape.totalQ, 8);
  assert.ok(ValidatedCall.covers(call, [good, good, good, key]));
  const other = randomTensor([8, 2, 64], { dtype: "bfloat16" });
  assert.ok(!ValidatedCall.covers(call, [other, good, good, key]), "other tensors");
  assert.ok(!ValidatedCall.covers(call, [good, good, good]), "fewer arguments");
  const forged = Object.assign(Object.create(ValidatedCall.prototype), { shape: call.shape });
  assert.ok(!ValidatedCall.covers(forged, [good, good, good, key]), "a forged object");
  assert.ok(!ValidatedCall.covers({ shape: call.shape }, [good, good, good, key]), "a plain object");
});

Deno.test("the trusted CUDA entry validates in full when the call does not cover its arguments", async () => {
  const call = validateForwardCall([good, good, good], key);
  const wrongDtype = { data: new Float32Array(8 * 2 * 64), shape: [8, 2, 64], dtype: "bfloat16" } as never;
  // The call covers `good`, not these tensors: the backend checks them itself (before loading any library).
  await assert.rejects(
    () => cudaForwardValidated([wrongDtype, good, good], key, call, {}),
    (error: unknown) => error instanceof MagiAttnInputError && error.field === "q.data",
  );
  const forged = { shape: { ...call.shape, headDim: 64 } } as ValidatedCall;
  const bad = randomTensor([8, 3, 64], { dtype: "bfloat16" });
  await assert.rejects(
    () => cudaForwardValidated([good, bad, bad], key, forged, {}),
    (error: unknown) => error instanceof MagiAttnInputError && error.field === "k.shape",
  );
});
