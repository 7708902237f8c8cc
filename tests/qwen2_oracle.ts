/**
 * A float64 Qwen2 forward for tests, written straight from the architecture's definition and sharing no
 * code with `examples/qwen2/model.ts`: one token row at a time as plain arrays, `rotate_half` built by
 * concatenation, keys repeated per query head (HF's `repeat_kv`), an explicit causal softmax. It reads
 * the weights by their HF names, so it checks the loader's wiring too.
 * @module
 */

/** The hyper-parameters the oracle needs (HF meanings). */
export interface OracleQwen2Config {
  /** Query heads. */
  numAttentionHeads: number;
  /** Key/value heads. */
  numKeyValueHeads: number;
  /** Per-head width. */
  headDim: number;
  /** Decoder layers. */
  numHiddenLayers: number;
  /** RMSNorm epsilon. */
  rmsNormEps: number;
  /** RoPE base. */
  ropeTheta: number;
  /** Whether the LM head is the embedding. */
  tieWordEmbeddings: boolean;
}

type Row = number[];

function weight(weights: ReadonlyMap<string, ArrayLike<number>>, name: string): ArrayLike<number> {
  const value = weights.get(name);
  if (!value) throw new Error(`oracle: no weight ${name}`);
  return value;
}

/** `W x + b` for W `[out, in]` stored row-major. */
function project(matrix: ArrayLike<number>, bias: ArrayLike<number> | null, x: Row): Row {
  const out = new Array<number>(matrix.length / x.length);
  for (let o = 0; o < out.length; o++) {
    let sum = bias ? bias[o] : 0;
    for (let i = 0; i < x.length; i++) sum += matrix[o * x.length + i] * x[i];
    out[o] = sum;
  }
  return out;
}

function rmsNorm(x: Row, scale: ArrayLike<number>, eps: number): Row {
  const meanSquare = x.reduce((sum, value) => sum + value * value, 0) / x.length;
  return x.map((value, index) => scale[index] * value / Math.sqrt(meanSquare + eps));
}

/** `x · cat(cos, cos) + rotate_half(x) · cat(sin, sin)` for one head vector at `position`. */
function rotate(x: Row, position: number, theta: number): Row {
  const half = x.length / 2;
  const angles = Array.from({ length: half }, (_, i) => position / theta ** ((2 * i) / x.length));
  const cos = [...angles, ...angles].map(Math.cos);
  const sin = [...angles, ...angles].map(Math.sin);
  const rotatedHalf = [...x.slice(half).map((value) => -value), ...x.slice(0, half)];
  return x.map((value, index) => value * cos[index] + rotatedHalf[index] * sin[index]);
}

/** Logits `[tokens][vocab]` of one causal sequence at `positions`, in float64. */
export function oracleQwen2Logits(
  config: OracleQwen2Config,
  weights: ReadonlyMap<string, ArrayLike<number>>,
  tokenIds: readonly number[],
  positions: readonly number[],
): number[][] {
  const { numAttentionHeads: heads, numKeyValueHeads: kvHeads, headDim, rmsNormEps: eps } = config;
  const embedding = weight(weights, "model.embed_tokens.weight");
  const hidden = weight(weights, "model.norm.weight").length;
  let stream: Row[] = tokenIds.map((id) =>
    Array.from({ length: hidden }, (_, i) => embedding[id * hidden + i])
  );
  const headOf = (row: Row, head: number): Row => row.slice(head * headDim, (head + 1) * headDim);
  for (let layer = 0; layer < config.numHiddenLayers; layer++) {
    const p = (name: string) => weight(weights, `model.layers.${layer}.${name}`);
    const normed = stream.map((x) => rmsNorm(x, p("input_layernorm.weight"), eps));
    const queries = normed.map((x) => project(p("self_attn.q_proj.weight"), p("self_attn.q_proj.bias"), x));
    const keys = normed.map((x) => project(p("self_attn.k_proj.weight"), p("self_attn.k_proj.bias"), x));
    const values = normed.map((x) => project(p("self_attn.v_proj.weight"), p("self_attn.v_proj.bias"), x));
    const attended: Row[] = stream.map(() => []);
    for (let head = 0; head < heads; head++) {
      const kvHead = Math.floor(head / (heads / kvHeads)); // repeat_kv: query heads share kv heads in groups
      const q = queries.map((row, t) => rotate(headOf(row, head), positions[t], config.ropeTheta));
      const k = keys.map((row, t) => rotate(headOf(row, kvHead), positions[t], config.ropeTheta));
      const v = values.map((row) => headOf(row, kvHead));
      for (let i = 0; i < tokenIds.length; i++) {
        const scores = k.slice(0, i + 1).map((key) =>
          key.reduce((sum, value, d) => sum + value * q[i][d], 0) / Math.sqrt(headDim)
        );
        const top = Math.max(...scores);
        const exps = scores.map((score) => Math.exp(score - top));
        const total = exps.reduce((sum, value) => sum + value, 0);
        const out = new Array<number>(headDim).fill(0);
        exps.forEach((weightOfKey, j) =>
          v[j].forEach((value, d) => (out[d] += (weightOfKey / total) * value))
        );
        attended[i].push(...out);
      }
    }
    stream = stream.map((x, t) => {
      const afterAttention = project(p("self_attn.o_proj.weight"), null, attended[t]).map((o, i) => x[i] + o);
      const h = rmsNorm(afterAttention, p("post_attention_layernorm.weight"), eps);
      const gate = project(p("mlp.gate_proj.weight"), null, h);
      const up = project(p("mlp.up_proj.weight"), null, h);
      const swiglu = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]);
      return project(p("mlp.down_proj.weight"), null, swiglu).map((d, i) => afterAttention[i] + d);
    });
  }
  const head = config.tieWordEmbeddings ? embedding : weight(weights, "lm_head.weight");
  return stream.map((x) => project(head, null, rmsNorm(x, weight(weights, "model.norm.weight"), eps)));
}
