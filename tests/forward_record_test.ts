/**
 * The backward checks it got its forward's options: an `lse` returned by `flexFlashAttnForward` carries
 * the forward's scale, softcap and key, and a backward given that lse with other ones is refused (it would
 * return the gradients of another function). Oracle: the float64 dense backward.
 */

import assert from "node:assert/strict";
import {
  AttnMaskSpec,
  compileFlexKey,
  flexFlashAttnBackward,
  flexFlashAttnForward,
  type HostTensor,
  MagiAttnInputError,
  randomTensor,
  tensor,
  toFlexKey,
  toFloat32,
} from "../mod.ts";
import { denseMask } from "../testing.ts";
import { denseAttentionBackwardOracle, relativeError } from "./support/oracle.ts";

const SOFTCAP = 2; // small, so that the capped and uncapped functions differ clearly at these logits
const key = compileFlexKey(AttnMaskSpec.varlen([7, 5]));
const [q, k, v, dout] = [1, 2, 3, 4].map((seed) => randomTensor([12, 2, 16], { seed, scale: 2 }));
const forwardOptions = { softcap: SOFTCAP, softmaxScale: 0.5, backend: "cpu" } as const;
const { out, lse } = await flexFlashAttnForward(q, k, v, key, forwardOptions);

function refusal(field: string, pattern: RegExp): (error: unknown) => boolean {
  return (error: unknown) => {
    assert.ok(error instanceof MagiAttnInputError, String(error));
    assert.equal(error.field, field);
    assert.match(error.message, pattern);
    assert.match(error.message, /Fix: pass the backward/);
    return true;
  };
}

Deno.test("backward with the forward's options: the gradients of the softcapped function", async () => {
  const grads = await flexFlashAttnBackward(dout, q, k, v, out, lse, key, forwardOptions);
  const oracle = denseAttentionBackwardOracle(dout, q, k, v, denseMask(key), {
    softcap: SOFTCAP,
    softmaxScale: 0.5,
  });
  for (const name of ["dq", "dk", "dv"] as const) {
    assert.ok(relativeError(toFloat32(grads[name]), oracle[name]) < 1e-5, name);
  }
  // What the check prevents is real: without the softcap these are another function's gradients.
  const uncapped = denseAttentionBackwardOracle(dout, q, k, v, denseMask(key), { softmaxScale: 0.5 });
  assert.ok(relativeError(uncapped.dq, oracle.dq) > 0.05, "softcap changes dq at these logits");
});

Deno.test("backward refuses another softcap, scale or key than its lse's forward, naming the field", async () => {
  await assert.rejects(
    () => flexFlashAttnBackward(dout, q, k, v, out, lse, key, { softmaxScale: 0.5, backend: "cpu" }),
    refusal("opts.softcap", /is 0 but the forward that returned `lse` ran with softcap 2/),
  );
  await assert.rejects(
    () => flexFlashAttnBackward(dout, q, k, v, out, lse, key, { softcap: SOFTCAP, backend: "cpu" }),
    refusal("opts.softmaxScale", /is 0\.25 but the forward .* ran with softmaxScale 0\.5/),
  );
  // Same totals, other documents: a different mask, so a different function.
  const other = compileFlexKey(AttnMaskSpec.varlen([6, 6]));
  await assert.rejects(
    () => flexFlashAttnBackward(dout, q, k, v, out, lse, other, forwardOptions),
    (error: unknown) => {
      assert.ok(error instanceof MagiAttnInputError && error.field === "key", String(error));
      assert.match(error.message, /is not the key the forward that returned `lse` ran/);
      return true;
    },
  );
});

Deno.test("an equal key built another way passes; an lse the forward did not return cannot be checked", async () => {
  // A FlexKey-shaped object built elsewhere is validated into a new key object with equal contents.
  const plain = toFlexKey({ ...key, qRanges: key.qRanges.slice(), kRanges: key.kRanges.slice() });
  assert.notEqual(plain, key, "a distinct key object");
  const viaPlain = await flexFlashAttnBackward(dout, q, k, v, out, lse, plain, forwardOptions);
  const viaKey = await flexFlashAttnBackward(dout, q, k, v, out, lse, key, forwardOptions);
  assert.deepEqual(viaPlain.dq.data, viaKey.dq.data);
  // A copy of the lse has no record: the backward runs as asked (documented: checked "when it can").
  const copied: HostTensor = tensor(Float32Array.from(lse.data as Float32Array), lse.shape);
  const unchecked = await flexFlashAttnBackward(dout, q, k, v, out, copied, key, { backend: "cpu" });
  assert.equal(unchecked.dq.shape.join(), "12,2,16");
});
