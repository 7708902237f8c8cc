import assert from "node:assert/strict";
import {
  ALL_ATTENTION_FUNCTIONS,
  AttnMaskSpec,
  AttnSpecNotConsumedError,
  closeAttnSpecStep,
  findAttentionModules,
  type HostTensor,
  magiAttentionForward,
  MagiAttnInputError,
  makeMagiAttnFunc,
  randomTensor,
  resetAttnSpecGuard,
  sdpaAttentionForward,
  setAttnSpecOnAttention,
  toFloat32,
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

/** Runs a magi forward on every attention module of the model (a whole step's attention). */
async function magiStepAll(model: object) {
  for (const module of findAttentionModules(model)) await magiStep(module);
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
    await magiStepAll(model);
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
    await magiStepAll(model);
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
    await magiStepAll(model);
    closeAttnSpecStep(model);
    closeAttnSpecStep(model); // disarmed: a second close is fine
    for (const module of attention) assert.equal(module._magiAttnSpec, null, "closing clears the stamps");
  });
  await t.step("two models are independent", async () => {
    const first = makeModel("magi"), second = makeModel("sdpa");
    setAttnSpecOnAttention(first.model, spec);
    setAttnSpecOnAttention(second.model, spec);
    await magiStepAll(first.model);
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

// ---------------------------------------------------------------------------------------------------------
// Issue 10: the mask can never be silently dropped or swapped. Each test below fails on the code before
// the fix (noted per test).

/** A model of `count` attention layers; its forward runs each layer's registry function on one input. */
class TwoLayerModel {
  config = { attnImplementation: "magi" };
  layers: { selfAttn: LlamaAttention & { attnImplementation?: string } }[];
  constructor(count = 2) {
    this.layers = Array.from({ length: count }, () => ({ selfAttn: new LlamaAttention() }));
  }
  /** Each layer's output for the same 8-token input (layer i uses its own implementation or the config's). */
  async forward(seed = 5): Promise<HostTensor[]> {
    const q = randomTensor([1, 2, 8, 4], { seed });
    const outputs: HostTensor[] = [];
    for (const { selfAttn } of this.layers) {
      const attention = ALL_ATTENTION_FUNCTIONS.get(
        selfAttn.attnImplementation ?? this.config.attnImplementation,
      );
      const [out] = await attention(selfAttn, q, q, q, null, {});
      outputs.push(out);
    }
    return outputs;
  }
}

/** The magi output of one layer run with `spec` set by hand (arms no guard): the expected value. */
async function expectedWith(spec: AttnMaskSpec | null, seed = 5): Promise<number[]> {
  const module = new LlamaAttention();
  module._magiAttnSpec = spec;
  const q = randomTensor([1, 2, 8, 4], { seed });
  const [out] = await magiAttentionForward(module, q, q, q, null, {});
  return Array.from(toFloat32(out));
}

Deno.test("item 1: a magi call that throws in the kernel call consumes nothing (main counted it before)", async (t) => {
  await t.step(
    "registry path: bf16 q with float32 k, then an sdpa fallback, is caught at close",
    async () => {
      const model = new TwoLayerModel(1);
      const module = model.layers[0].selfAttn;
      setAttnSpecOnAttention(model, spec);
      const q = randomTensor([1, 2, 8, 4], { seed: 1, dtype: "bfloat16" });
      const k = randomTensor([1, 2, 8, 4], { seed: 2 });
      await assert.rejects(magiAttentionForward(module, q, k, k, null, {}), MagiAttnInputError);
      await sdpaAttentionForward(module, k, k, k, null, {}); // the caller's fallback
      assert.throws(() => closeAttnSpecStep(model), (error: unknown) => {
        assert.ok(error instanceof AttnSpecNotConsumedError);
        assert.match(
          error.message,
          /1 magi attention forward\(s\) on this step threw before producing output/,
        );
        assert.match(error.message, /resetAttnSpecGuard\(model\)/);
        return true;
      });
      resetAttnSpecGuard(model);
    },
  );
  await t.step("factory path with { module }: same rule", async () => {
    const model = new TwoLayerModel(1);
    setAttnSpecOnAttention(model, spec);
    const q = randomTensor([8, 2, 4], { seed: 1, dtype: "bfloat16" });
    const k = randomTensor([8, 2, 4], { seed: 2 });
    await assert.rejects(
      makeMagiAttnFunc()(q, k, k, { module: model.layers[0].selfAttn }),
      MagiAttnInputError,
    );
    assert.throws(() => closeAttnSpecStep(model), AttnSpecNotConsumedError);
    resetAttnSpecGuard(model);
    // The same call with matching dtypes consumes the stamp.
    setAttnSpecOnAttention(model, spec);
    await makeMagiAttnFunc()(k, k, k, { module: model.layers[0].selfAttn });
    closeAttnSpecStep(model);
  });
});

Deno.test("item 2: every stamped module must consume the spec unless allowed to skip (main: one was enough)", async (t) => {
  await t.step('layer 0 "magi", layer 1 "sdpa": closing names layer 1', async () => {
    const model = new TwoLayerModel();
    model.layers[1].selfAttn.attnImplementation = "sdpa";
    setAttnSpecOnAttention(model, spec);
    await model.forward();
    assert.throws(() => closeAttnSpecStep(model), (error: unknown) => {
      assert.ok(error instanceof AttnSpecNotConsumedError);
      assert.deepEqual(error.unconsumedModules, [
        'layers[1].selfAttn (LlamaAttention, attnImplementation "sdpa")',
      ]);
      assert.match(error.message, /not consumed by 1 of them: layers\[1\]\.selfAttn/);
      assert.match(error.message, /allowSkip/);
      return true;
    });
    assert.equal(model.layers[0].selfAttn._magiAttnSpec, spec, "a failing close changes nothing");
    resetAttnSpecGuard(model);
  });
  await t.step("the opt-out: allowSkip as a count or as the modules", async () => {
    const model = new TwoLayerModel(3);
    model.layers[1].selfAttn.attnImplementation = "sdpa";
    setAttnSpecOnAttention(model, spec, { allowSkip: 1 });
    await model.forward();
    closeAttnSpecStep(model);
    setAttnSpecOnAttention(model, spec, { allowSkip: [model.layers[1].selfAttn] });
    await model.forward();
    closeAttnSpecStep(model);
    // Allowing the wrong module does not excuse the one that skipped.
    setAttnSpecOnAttention(model, spec, { allowSkip: [model.layers[2].selfAttn] });
    await model.forward();
    assert.throws(() => closeAttnSpecStep(model), (error: unknown) => {
      assert.ok(error instanceof AttnSpecNotConsumedError);
      assert.deepEqual(error.unconsumedModules.map((name) => name.split(" ")[0]), ["layers[1].selfAttn"]);
      return true;
    });
    resetAttnSpecGuard(model);
    // Two skipping modules exceed a count of 1.
    model.layers[2].selfAttn.attnImplementation = "sdpa";
    setAttnSpecOnAttention(model, spec, { allowSkip: 1 });
    await model.forward();
    assert.throws(() => closeAttnSpecStep(model), AttnSpecNotConsumedError);
    resetAttnSpecGuard(model);
  });
  await t.step("a step that allows skips must be closed before the next is stamped", async () => {
    const model = new TwoLayerModel();
    model.layers[1].selfAttn.attnImplementation = "sdpa";
    setAttnSpecOnAttention(model, spec, { allowSkip: 1 });
    await model.forward();
    assert.throws(
      () => setAttnSpecOnAttention(model, otherSpec),
      /closeAttnSpecStep\(model\) before stamping/,
    );
    closeAttnSpecStep(model);
    setAttnSpecOnAttention(model, otherSpec, { allowSkip: 1 });
    resetAttnSpecGuard(model);
  });
  await t.step("allowSkip that would disarm the guard, or names a stranger, is refused", () => {
    const model = new TwoLayerModel();
    for (
      const [options, field] of [
        [{ allowSkip: 2 }, "options.allowSkip"],
        [{ allowSkip: [model.layers[0].selfAttn, model.layers[1].selfAttn] }, "options.allowSkip"],
        [{ allowSkip: [new LlamaAttention()] }, "options.allowSkip[0]"],
        [{ allowSkip: -1 }, "options.allowSkip"],
        [{ allowskip: 1 }, "options.allowskip"],
      ] as const
    ) {
      assert.throws(() => setAttnSpecOnAttention(model, spec, options as never), (error: unknown) => {
        assert.ok(error instanceof MagiAttnInputError, JSON.stringify(options));
        assert.equal(error.field, field);
        return true;
      });
    }
    closeAttnSpecStep(model); // nothing was armed
    assert.equal(model.layers[0].selfAttn._magiAttnSpec, null);
  });
});

Deno.test("item 3: two overlapping steps on one model cannot swap masks (main ran layer 1 with step 2's spec)", async () => {
  const model = new TwoLayerModel();
  const step = async (stepSpec: AttnMaskSpec) => {
    setAttnSpecOnAttention(model, stepSpec);
    const outputs = await model.forward();
    closeAttnSpecStep(model);
    return outputs.map((out) => Array.from(toFloat32(out)));
  };
  const [first, second] = await Promise.allSettled([step(spec), step(otherSpec)]);
  assert.equal(first.status, "fulfilled");
  const expected = await expectedWith(spec);
  for (const layer of (first as PromiseFulfilledResult<number[][]>).value) {
    assert.deepEqual(layer, expected, "both layers of step 1 ran step 1's mask");
  }
  assert.equal(second.status, "rejected");
  const reason = (second as PromiseRejectedResult).reason;
  assert.ok(reason instanceof AttnSpecNotConsumedError, String(reason));
  assert.match(reason.message, /still running/);
  assert.equal(model.layers[0].selfAttn._magiAttnSpec, null, "step 1 closed and cleared its stamps");
});

Deno.test("item 4: a module shared by two models cannot take the second model's mask (main: swapped)", async () => {
  const shared = new LlamaAttention();
  const first = { config: { attnImplementation: "magi" }, layers: [shared, new LlamaAttention()] };
  const second = { config: { attnImplementation: "magi" }, layers: [shared] };
  setAttnSpecOnAttention(first, spec);
  assert.throws(() => setAttnSpecOnAttention(second, otherSpec), (error: unknown) => {
    assert.ok(error instanceof MagiAttnInputError);
    assert.equal(error.field, "model");
    assert.match(error.message, /shares its attention module layers\[0\] with another model/);
    assert.match(error.message, /closeAttnSpecStep\(otherModel\)/);
    return true;
  });
  assert.equal(shared._magiAttnSpec, spec, "the first model's stamp is intact");
  await magiStepAll(first);
  closeAttnSpecStep(first);
  setAttnSpecOnAttention(second, otherSpec); // the first model's step is over: allowed now
  assert.equal(shared._magiAttnSpec, otherSpec);
  await magiStepAll(second);
  closeAttnSpecStep(second);
});

Deno.test("item 8: stamping a model that holds 500k-element arrays and Maps walks iteratively (main: stack overflow)", () => {
  const big = new Map<number, number>();
  for (let index = 0; index < 500_000; index++) big.set(index, index);
  const model = {
    config: { attnImplementation: "magi" },
    layers: [{ selfAttn: new LlamaAttention() }],
    tokenTable: new Array(500_000).fill(0),
    cache: big,
    buckets: Array.from({ length: 200_000 }, () => ({ hits: 0 })),
  };
  assert.equal(setAttnSpecOnAttention(model, spec), 1);
  assert.equal(findAttentionModules(model).length, 1);
  resetAttnSpecGuard(model);
});

Deno.test("item 10: a frozen or sealed attention module is refused before anything is stamped (main: TypeError, half-stamped)", () => {
  for (
    const [label, lock] of [
      ["frozen", (module: object) => Object.freeze(module)],
      ["sealed", (module: object) => Object.seal(module)],
      [
        "read-only stamp",
        (module: object) => Object.defineProperty(module, "_magiAttnSpec", { writable: false }),
      ],
    ] as const
  ) {
    const first = new LlamaAttention(), second = new LlamaAttention();
    if (label === "sealed") delete (second as Partial<LlamaAttention>)._magiAttnSpec;
    lock(second);
    const model = { layers: [{ selfAttn: first }, { selfAttn: second }] };
    assert.throws(() => setAttnSpecOnAttention(model, spec), (error: unknown) => {
      assert.ok(error instanceof MagiAttnInputError, label);
      assert.equal(error.field, "model.layers[1].selfAttn", label);
      assert.match(error.message, /no module was stamped/, label);
      return true;
    });
    assert.equal(first._magiAttnSpec, null, `${label}: the first module was not stamped`);
    closeAttnSpecStep(model); // nothing armed
  }
});

Deno.test("item 13: the guard's errors say what happened and point at resetAttnSpecGuard", async (t) => {
  await t.step("the advice works: resetAttnSpecGuard, not setAttnSpecOnAttention(model, null)", () => {
    const { model } = makeModel("sdpa");
    setAttnSpecOnAttention(model, spec);
    assert.throws(() => closeAttnSpecStep(model), (error: unknown) => {
      assert.ok(error instanceof AttnSpecNotConsumedError);
      assert.doesNotMatch(error.message, /setAttnSpecOnAttention\(model, null\)/);
      assert.match(error.message, /resetAttnSpecGuard\(model\)/);
      return true;
    });
    resetAttnSpecGuard(model); // following the advice gets out
    setAttnSpecOnAttention(model, null);
  });
  await t.step(
    'a forward that threw before attention on a "magi" model is not blamed on attnImplementation',
    () => {
      const model = new TwoLayerModel();
      setAttnSpecOnAttention(model, spec);
      // ... the model's forward throws in its embedding, before any attention runs ...
      assert.throws(() => setAttnSpecOnAttention(model, spec), (error: unknown) => {
        assert.ok(error instanceof AttnSpecNotConsumedError);
        assert.doesNotMatch(error.message, /did not route attention through magi/);
        assert.match(error.message, /No magi attention forward has run with it since it was stamped/);
        assert.match(error.message, /throw before reaching attention/);
        return true;
      });
      resetAttnSpecGuard(model);
    },
  );
});

Deno.test("closing a step clears its stamps: a later forward runs the default causal mask (main: the old spec)", async () => {
  const model = new TwoLayerModel();
  setAttnSpecOnAttention(model, spec);
  await model.forward();
  closeAttnSpecStep(model);
  for (const { selfAttn } of model.layers) assert.equal(selfAttn._magiAttnSpec, null);
  const later = await model.forward();
  const causal = await expectedWith(null);
  assert.notDeepEqual(causal, await expectedWith(spec), "the two masks give different outputs here");
  for (const out of later) assert.deepEqual(Array.from(toFloat32(out)), causal);
  // resetAttnSpecGuard abandons a step the same way.
  setAttnSpecOnAttention(model, spec);
  resetAttnSpecGuard(model);
  for (const { selfAttn } of model.layers) assert.equal(selfAttn._magiAttnSpec, null);
});
