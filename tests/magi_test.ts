import assert from "node:assert/strict";
import {
  ALL_ATTENTION_FUNCTIONS,
  AttentionInterface,
  type AttentionOptions,
  AttnMaskSpec,
  closeAttnSpecStep,
  getActiveAttnSpec,
  type HostTensor,
  magiAttentionForward,
  MagiAttnInputError,
  makeMagiAttnFunc,
  randomTensor,
  sdpaAttentionForward,
  setActiveAttnSpec,
  setAttnSpecOnAttention,
  tensor,
  toFloat32,
} from "../mod.ts";
import { denseAttentionOracle, maxAbsDiff } from "./support/oracle.ts";

class TestAttention {}

/** [B, H, S, D] → [B·S, H, D] values, for comparing with the oracle. */
function thdValues(input: HostTensor): Float64Array {
  const [batch, heads, seqLen, headDim] = input.shape;
  const values = toFloat32(input);
  const out = new Float64Array(values.length);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      for (let s = 0; s < seqLen; s++) {
        for (let d = 0; d < headDim; d++) {
          out[((b * seqLen + s) * heads + h) * headDim + d] =
            values[((b * heads + h) * seqLen + s) * headDim + d];
        }
      }
    }
  }
  return out;
}

function qkv(batch: number, heads: number, headsKV: number, seqLen: number, headDim: number, seed = 1) {
  return {
    q: randomTensor([batch, heads, seqLen, headDim], { seed }),
    k: randomTensor([batch, headsKV, seqLen, headDim], { seed: seed + 1 }),
    v: randomTensor([batch, headsKV, seqLen, headDim], { seed: seed + 2 }),
  };
}

Deno.test("registry: built-ins, errors listing valid keys, local and global registration", () => {
  assert.deepEqual(ALL_ATTENTION_FUNCTIONS.validKeys().filter((key) => key === "sdpa" || key === "magi"), [
    "magi",
    "sdpa",
  ]);
  assert.equal(ALL_ATTENTION_FUNCTIONS.get("magi"), magiAttentionForward);
  assert.equal(ALL_ATTENTION_FUNCTIONS.get("sdpa"), sdpaAttentionForward);
  assert.throws(() => ALL_ATTENTION_FUNCTIONS.get("flash_attention_9"), (error: unknown) => {
    assert.ok(error instanceof MagiAttnInputError);
    assert.match(error.message, /"flash_attention_9"/);
    assert.match(error.message, /"magi", "sdpa"/);
    return true;
  });
  const local = new AttentionInterface();
  const mine = () => Promise.resolve([tensor(new Float32Array(0), [0]), null] as [HostTensor, null]);
  local.set("mine", mine);
  assert.ok(local.has("mine"));
  assert.ok(!ALL_ATTENTION_FUNCTIONS.has("mine"), "instance registration stays local");
  AttentionInterface.register("global_test_fn", mine);
  assert.ok(ALL_ATTENTION_FUNCTIONS.has("global_test_fn") && local.has("global_test_fn"));
  assert.equal(local.getInterface(undefined, sdpaAttentionForward), sdpaAttentionForward);
  assert.equal(local.getInterface("mine", sdpaAttentionForward), mine);
  assert.throws(() => AttentionInterface.register("", mine), MagiAttnInputError);
  assert.throws(() => local.set("x", 3 as never), MagiAttnInputError);
});

Deno.test("sdpa matches the dense float64 oracle (GQA, boolean and additive masks, softcap)", async () => {
  const { q, k, v } = qkv(2, 4, 2, 9, 8);
  const causal = (i: number, j: number) => j <= i;
  const [out] = await sdpaAttentionForward(new TestAttention(), q, k, v, null, { softcap: 3 });
  // The oracle works on one packed sequence: run it per batch row.
  const values = toFloat32(out);
  for (let b = 0; b < 2; b++) {
    const pick = (t: HostTensor) => {
      const [, heads, seqLen, headDim] = t.shape;
      const size = heads * seqLen * headDim;
      return tensor(t.data.slice(b * size, (b + 1) * size) as Float32Array, [1, heads, seqLen, headDim]);
    };
    const oracle = denseAttentionOracle(
      { data: thdValues(pick(q)), shape: [9, 4, 8] },
      { data: thdValues(pick(k)), shape: [9, 2, 8] },
      { data: thdValues(pick(v)), shape: [9, 2, 8] },
      causal,
      { softcap: 3 },
    );
    const mine = values.slice(b * 9 * 32, (b + 1) * 9 * 32);
    assert.ok(maxAbsDiff(mine, oracle.out) < 1e-5);
  }
  // Boolean mask equal to causal, and an additive one: same result as isCausal.
  const bool = new Uint8Array(81).map((_, index) => (index % 9 <= Math.floor(index / 9) ? 1 : 0));
  const additive = tensor(Float32Array.from(bool, (bit) => (bit ? 0 : -Infinity)), [9, 9]);
  const [causalOut] = await sdpaAttentionForward(new TestAttention(), q, k, v, null, { isCausal: true });
  const [boolOut] = await sdpaAttentionForward(new TestAttention(), q, k, v, {
    data: bool,
    shape: [1, 1, 9, 9],
  }, {});
  const [addOut] = await sdpaAttentionForward(new TestAttention(), q, k, v, additive, {});
  assert.deepEqual(toFloat32(boolOut), toFloat32(causalOut));
  assert.deepEqual(toFloat32(addOut), toFloat32(causalOut));
});

Deno.test("magi equals sdpa on causal, full and sliding-window batches", async () => {
  const { q, k, v } = qkv(2, 4, 1, 12, 16, 5);
  const cases: AttentionOptions[] = [{}, { isCausal: false }, { slidingWindow: 4 }, {
    scaling: 0.3,
    softcap: 2,
  }];
  for (const options of cases) {
    const [magiOut] = await magiAttentionForward(new TestAttention(), q, k, v, null, options);
    const [sdpaOut] = await sdpaAttentionForward(new TestAttention(), q, k, v, null, options);
    assert.deepEqual(magiOut.shape, [2, 12, 4, 16]);
    assert.ok(maxAbsDiff(toFloat32(magiOut), toFloat32(sdpaOut)) < 1e-5, JSON.stringify(options));
  }
});

Deno.test("magi with a stamped spec equals the dense oracle of that spec", async () => {
  const spec = AttnMaskSpec.prefixTree([4, 3, 5], [[0, 1], [0, 2]]);
  const { q, k, v } = qkv(1, 2, 2, 12, 8, 9);
  const model = { config: { attnImplementation: "magi" }, layer: new TestAttention() };
  setAttnSpecOnAttention(model, spec);
  const [out] = await magiAttentionForward(model.layer, q, k, v, null, {});
  closeAttnSpecStep(model);
  const nodeOf = (token: number) => (token < 4 ? 0 : token < 7 ? 1 : 2);
  const visible = (i: number, j: number) =>
    nodeOf(i) === nodeOf(j) ? j <= i : nodeOf(j) === 0 && nodeOf(i) !== 0;
  const oracle = denseAttentionOracle(
    { data: thdValues(q), shape: [12, 2, 8] },
    { data: thdValues(k), shape: [12, 2, 8] },
    { data: thdValues(v), shape: [12, 2, 8] },
    visible,
    {},
  );
  assert.ok(maxAbsDiff(toFloat32(out), oracle.out) < 1e-5);
});

Deno.test("factory path and HF path give bitwise-identical outputs for the same spec", async () => {
  const spec = AttnMaskSpec.slidingWindow([7, 9], { left: 3, right: 1 });
  const { q, k, v } = qkv(1, 4, 2, 16, 8, 21);
  const module = new TestAttention();
  const model = { config: { attnImplementation: "magi" }, module };
  setAttnSpecOnAttention(model, spec);
  const [hfOut] = await magiAttentionForward(module, q, k, v, null, { scaling: 0.25 });
  const attn = makeMagiAttnFunc({ softmaxScale: 0.25 });
  const toThdTensor = (t: HostTensor) => tensor(Float32Array.from(thdValues(t)), [16, t.shape[1], 8]);
  const explicit = await attn(toThdTensor(q), toThdTensor(k), toThdTensor(v), { magiAttnSpec: spec });
  const viaModule = await attn(toThdTensor(q), toThdTensor(k), toThdTensor(v), { module });
  setActiveAttnSpec(spec);
  assert.equal(getActiveAttnSpec(), spec);
  const viaActive = await attn(toThdTensor(q), toThdTensor(k), toThdTensor(v));
  setActiveAttnSpec(null);
  for (const other of [explicit, viaModule, viaActive]) {
    assert.deepEqual(other.data, hfOut.data); // [1,S,H,D] and [S,H,D] share the element order
  }
  closeAttnSpecStep(model);
  // bshd input keeps its layout; cuSeqlens and windowSize build the expected specs.
  const bshd = tensor(Float32Array.from(thdValues(q)), [1, 16, 4, 8]);
  const kv = tensor(Float32Array.from(thdValues(k)), [1, 16, 2, 8]);
  const vv = tensor(Float32Array.from(thdValues(v)), [1, 16, 2, 8]);
  const viaCu = await attn(bshd, kv, vv, { cuSeqlens: [0, 7, 16], windowSize: [3, 1] });
  assert.deepEqual(viaCu.shape, [1, 16, 4, 8]);
  assert.deepEqual(viaCu.data, hfOut.data);
});

Deno.test("magi bad-input table: each case names the field and changes nothing", async () => {
  const { q, k, v } = qkv(1, 2, 2, 8, 4, 2);
  const spec = AttnMaskSpec.causal(8);
  const before = [q, k, v].map((t) => t.data.slice());
  const stampedModule = () => Object.assign(new TestAttention(), { _magiAttnSpec: spec });
  const attn = makeMagiAttnFunc();
  const thd = tensor(new Float32Array(8 * 2 * 4), [8, 2, 4]);
  const cases: [string, () => Promise<unknown>, string][] = [
    [
      "dropout",
      () => magiAttentionForward(new TestAttention(), q, k, v, null, { dropout: 0.1 }),
      "opts.dropout",
    ],
    [
      "mask with spec",
      () => magiAttentionForward(stampedModule(), q, k, v, { data: new Uint8Array(64), shape: [8, 8] }, {}),
      "attentionMask",
    ],
    [
      "unknown option",
      () => magiAttentionForward(new TestAttention(), q, k, v, null, { foo: 1 } as never),
      "opts.foo",
    ],
    [
      "bad scaling",
      () => magiAttentionForward(new TestAttention(), q, k, v, null, { scaling: -1 }),
      "opts.scaling",
    ],
    [
      "bad softcap",
      () => magiAttentionForward(new TestAttention(), q, k, v, null, { softcap: NaN }),
      "opts.softcap",
    ],
    [
      "window with spec",
      () => magiAttentionForward(stampedModule(), q, k, v, null, { slidingWindow: 2 }),
      "opts.slidingWindow",
    ],
    [
      "cp group",
      () =>
        magiAttentionForward(Object.assign(new TestAttention(), { cpGroup: { size: 2 } }), q, k, v, null, {}),
      "module.cpGroup",
    ],
    [
      "batch 2 with spec",
      () => {
        const two = qkv(2, 2, 2, 8, 4);
        return magiAttentionForward(stampedModule(), two.q, two.k, two.v, null, {});
      },
      "query.shape[0]",
    ],
    [
      "spec of another length",
      () =>
        magiAttentionForward(
          Object.assign(new TestAttention(), { _magiAttnSpec: AttnMaskSpec.causal(9) }),
          q,
          k,
          v,
          null,
          {},
        ),
      "module._magiAttnSpec",
    ],
    ["rank 3 query", () => magiAttentionForward(new TestAttention(), thd, k, v, null, {}), "query.shape"],
    ["factory: unknown option", () => attn(thd, thd, thd, { causal: true } as never), "options.causal"],
    [
      "factory: window with spec",
      () => attn(thd, thd, thd, { magiAttnSpec: spec, windowSize: [2, 0] }),
      "options.windowSize",
    ],
    [
      "factory: wrong spec length",
      () => attn(thd, thd, thd, { magiAttnSpec: AttnMaskSpec.causal(5) }),
      "spec",
    ],
    ["factory: batch 2", () => attn(qkv(2, 2, 2, 8, 4).q, thd, thd), "q.shape"],
  ];
  for (const [label, call, field] of cases) {
    await assert.rejects(call, (error: unknown) => {
      assert.ok(error instanceof MagiAttnInputError, `${label}: ${error}`);
      assert.equal(error.field, field, label);
      assert.match(error.message, /Fix:/, label);
      return true;
    });
  }
  [q, k, v].forEach((t, index) => assert.deepEqual(t.data, before[index]));
  assert.throws(() => makeMagiAttnFunc({ softmaxScale: 0 }), MagiAttnInputError);
});

Deno.test("factory: an input in HF's [1, H, S, D] layout is named as transposed, not as a token mismatch", async () => {
  const attention = makeMagiAttnFunc();
  const spec = AttnMaskSpec.varlen([5, 3]); // 8 tokens; the inputs have 2 heads
  const hfLayout = randomTensor([1, 2, 8, 16], { seed: 1 });
  await assert.rejects(
    () => attention(hfLayout, hfLayout, hfLayout, { magiAttnSpec: spec }),
    (error: unknown) => {
      assert.ok(error instanceof MagiAttnInputError, String(error));
      assert.equal(error.field, "q.shape");
      assert.match(error.message, /covers 8 tokens, which is dimension 2 \(heads\).*\[1, H, S, D\]/);
      assert.match(error.message, /Fix: swap dimensions 1 and 2/);
      return true;
    },
  );
  const thdTransposed = randomTensor([2, 8, 16], { seed: 2 });
  await assert.rejects(
    () => attention(thdTransposed, thdTransposed, thdTransposed, { magiAttnSpec: spec }),
    /looks like \[H, T, D\] where \[T, H, D\] is expected/,
  );
  // The same values in the factory's layout run, and a genuine token mismatch keeps its own message.
  const bshd = tensor(thdValuesAsF32(hfLayout), [1, 8, 2, 16]);
  assert.deepEqual((await attention(bshd, bshd, bshd, { magiAttnSpec: spec })).shape, [1, 8, 2, 16]);
  const short = randomTensor([1, 6, 2, 16], { seed: 3 });
  await assert.rejects(() => attention(short, short, short, { magiAttnSpec: spec }), /covers 8 query/);
});

function thdValuesAsF32(input: HostTensor): Float32Array {
  return Float32Array.from(thdValues(input));
}

Deno.test("names that differ mean the same: scaling = softmaxScale, and the three window forms", async () => {
  const [batch, heads, seqLen, headDim, window, scale] = [1, 2, 12, 16, 4, 0.3];
  const [query, key, value] = [1, 2, 3].map((seed) =>
    randomTensor([batch, heads, seqLen, headDim], { seed })
  );
  const asThd = (input: HostTensor) => tensor(thdValuesAsF32(input), [seqLen, heads, headDim]);
  // HF: registry option `scaling`, `slidingWindow: W` = the query and the W − 1 keys before it.
  const [registry] = await ALL_ATTENTION_FUNCTIONS.get("magi")({}, query, key, value, null, {
    scaling: scale,
    slidingWindow: window,
  });
  // FlashAttention: factory option `softmaxScale`, `windowSize: [left, right]`.
  const factory = makeMagiAttnFunc({ softmaxScale: scale });
  const viaWindowSize = await factory(asThd(query), asThd(key), asThd(value), {
    windowSize: [window - 1, 0],
  });
  // magi: AttnMaskSpec.slidingWindow(n, { left, right }).
  const viaSpec = await factory(asThd(query), asThd(key), asThd(value), {
    magiAttnSpec: AttnMaskSpec.slidingWindow(seqLen, { left: window - 1, right: 0 }),
  });
  assert.deepEqual(viaWindowSize.data, registry.data, "windowSize [W − 1, 0] = slidingWindow W");
  assert.deepEqual(
    viaSpec.data,
    registry.data,
    "slidingWindow spec { left: W − 1, right: 0 } = slidingWindow W",
  );
  // And the scale really is applied: another scale gives other values.
  const [unscaled] = await ALL_ATTENTION_FUNCTIONS.get("magi")({}, query, key, value, null, {
    slidingWindow: window,
  });
  assert.notDeepEqual(unscaled.data, registry.data);
});
