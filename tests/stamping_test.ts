import assert from "node:assert/strict";
import {
  AttnMaskSpec,
  AttnSpecNotConsumedError,
  closeAttnSpecStep,
  findAttentionModules,
  magiAttentionForward,
  MagiAttnInputError,
  randomTensor,
  resetAttnSpecGuard,
  sdpaAttentionForward,
  setAttnSpecOnAttention,
} from "../mod.ts";

class LlamaAttention {
  _magiAttnSpec: AttnMaskSpec | null = null;
}
class CustomMixer {
  isAttentionModule = true;
}
class VisionAttention {}

/** A model shaped like a multimodal HF model: a vision tower beside the language backbone. */
function makeModel(attnImplementation: string) {
  const layers = [{ selfAttn: new LlamaAttention() }, {
    selfAttn: new LlamaAttention(),
    mixer: new CustomMixer(),
  }];
  const languageModel = { layers, weights: new Float32Array(1 << 16) };
  // deno-lint-ignore no-explicit-any
  const model: any = {
    config: { attnImplementation },
    languageModel,
    visionTower: { attn: new VisionAttention() },
  };
  languageModel.layers.push({ selfAttn: layers[0].selfAttn } as never); // shared module: cycle-safe, found once
  model.languageModel.parent = model; // a cycle back to the root
  return { model, attention: [layers[0].selfAttn, layers[1].selfAttn], mixer: layers[1].mixer };
}

const spec = AttnMaskSpec.varlen([3, 5]);
const otherSpec = AttnMaskSpec.causal(8);

/** Runs one magi forward on `module` (8 tokens), consuming its stamp. */
async function magiStep(module: object) {
  const q = randomTensor([1, 2, 8, 4], { seed: 1 });
  await magiAttentionForward(module, q, q, q, null, {});
}

Deno.test("findAttentionModules walks the language backbone only, cycle-safe", () => {
  const { model, attention, mixer } = makeModel("magi");
  const found = findAttentionModules(model);
  assert.equal(found.length, 3);
  for (const module of [...attention, mixer]) assert.ok(found.includes(module as object));
  assert.ok(!found.some((module) => module instanceof VisionAttention));
  // Without a languageModel the whole model is walked, including `model.model.languageModel` lookups.
  const nested = { model: { languageModel: { attn: new LlamaAttention() } }, vision: new VisionAttention() };
  assert.equal(findAttentionModules(nested).length, 1);
  const flat = { a: new LlamaAttention(), b: [new VisionAttention()] };
  assert.equal(findAttentionModules(flat).length, 2);
  // namedModules() is followed too.
  const viaNamed = { namedModules: () => [["x", new LlamaAttention()]] };
  assert.equal(findAttentionModules(viaNamed).length, 1);
});

Deno.test("guard truth table", async (t) => {
  await t.step("armed and consumed: next stamping passes", async () => {
    const { model, attention } = makeModel("magi");
    assert.equal(setAttnSpecOnAttention(model, spec), 3);
    for (const module of attention) assert.equal(module._magiAttnSpec, spec);
    await magiStep(attention[0]);
    setAttnSpecOnAttention(model, otherSpec);
    assert.equal(attention[1]._magiAttnSpec, otherSpec);
  });
  await t.step("armed and not consumed: next stamping throws and changes nothing", () => {
    const { model, attention } = makeModel("sdpa");
    setAttnSpecOnAttention(model, spec);
    assert.throws(() => setAttnSpecOnAttention(model, otherSpec), (error: unknown) => {
      assert.ok(error instanceof AttnSpecNotConsumedError);
      assert.match(error.message, /did not route attention through magi/);
      assert.match(error.message, /"sdpa"/);
      assert.match(error.message, /Fix: set config.attnImplementation = "magi"/);
      assert.equal(error.attnImplementation, "sdpa");
      return true;
    });
    assert.equal(attention[0]._magiAttnSpec, spec, "stamps unchanged after the error");
  });
  await t.step("a model that ran another attention is caught", async () => {
    const { model, attention } = makeModel("sdpa");
    setAttnSpecOnAttention(model, spec);
    const q = randomTensor([1, 2, 8, 4], { seed: 3 });
    await sdpaAttentionForward(attention[0], q, q, q, null, {});
    assert.throws(() => setAttnSpecOnAttention(model, spec), AttnSpecNotConsumedError);
  });
  await t.step("null clears without arming", async () => {
    const { model, attention } = makeModel("magi");
    setAttnSpecOnAttention(model, spec);
    await magiStep(attention[1]);
    setAttnSpecOnAttention(model, null);
    for (const module of attention) assert.equal(module._magiAttnSpec, null);
    setAttnSpecOnAttention(model, null); // nothing armed: no error
    closeAttnSpecStep(model);
  });
  await t.step("null after an unconsumed step still reports it", () => {
    const { model } = makeModel("sdpa");
    setAttnSpecOnAttention(model, spec);
    assert.throws(() => setAttnSpecOnAttention(model, null), AttnSpecNotConsumedError);
  });
  await t.step("last step: closeAttnSpecStep checks it", async () => {
    const { model, attention } = makeModel("magi");
    setAttnSpecOnAttention(model, spec);
    assert.throws(() => closeAttnSpecStep(model), AttnSpecNotConsumedError);
    await magiStep(attention[0]);
    closeAttnSpecStep(model);
    closeAttnSpecStep(model); // disarmed: a second close is fine
  });
  await t.step("two models are independent", async () => {
    const first = makeModel("magi"), second = makeModel("sdpa");
    setAttnSpecOnAttention(first.model, spec);
    setAttnSpecOnAttention(second.model, spec);
    await magiStep(first.attention[0]);
    setAttnSpecOnAttention(first.model, spec);
    assert.throws(() => setAttnSpecOnAttention(second.model, spec), AttnSpecNotConsumedError);
  });
  await t.step("a spec set by hand is used but arms nothing", async () => {
    const module = new LlamaAttention();
    module._magiAttnSpec = spec;
    await magiStep(module);
  });
  await t.step("resetAttnSpecGuard disarms after a handled error", () => {
    const { model } = makeModel("sdpa");
    setAttnSpecOnAttention(model, spec);
    resetAttnSpecGuard(model);
    setAttnSpecOnAttention(model, null);
  });
  await t.step("a failing magi call does not count as consumption", async () => {
    const { model, attention } = makeModel("magi");
    setAttnSpecOnAttention(model, spec);
    const q = randomTensor([1, 2, 8, 4], { seed: 1 });
    await assert.rejects(
      magiAttentionForward(attention[0], q, q, q, null, { dropout: 0.1 }),
      MagiAttnInputError,
    );
    assert.throws(() => closeAttnSpecStep(model), AttnSpecNotConsumedError);
  });
});

Deno.test("setAttnSpecOnAttention rejects bad input and changes nothing", () => {
  const { model, attention } = makeModel("magi");
  for (
    const [label, call, field] of [
      ["not a spec", () => setAttnSpecOnAttention(model, { qRanges: [] } as never), "spec"],
      ["no model", () => setAttnSpecOnAttention(null as never, spec), "model"],
      ["no attention modules", () => setAttnSpecOnAttention({ layers: [{ mlp: {} }] }, spec), "model"],
    ] as const
  ) {
    assert.throws(call, (error: unknown) => {
      assert.ok(error instanceof MagiAttnInputError, label);
      assert.equal(error.field, field, label);
      assert.match(error.message, /Fix:/, label);
      return true;
    });
  }
  for (const module of attention) assert.equal(module._magiAttnSpec, null);
  closeAttnSpecStep(model); // nothing was armed
});
