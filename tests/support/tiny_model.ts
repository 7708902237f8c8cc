/**
 * A tiny decoder-only transformer (RMSNorm, RoPE from position ids, GQA attention, SiLU MLP) written in
 * plain TypeScript for the demo and the integration tests. Its attention dispatches through the registry
 * by `config.attnImplementation`, as HF models do.
 * @module
 */

import { ALL_ATTENTION_FUNCTIONS, fromFloat32, type HostTensor, toFloat32 } from "../../mod.ts";
import { seededRandom } from "../../testing.ts";
import type { DType } from "../../mod.ts";

/** Model hyper-parameters. */
export interface TinyConfig {
  /** Registry name of the attention function ("magi", "sdpa", ...). */
  attnImplementation: string;
  vocabSize: number;
  numLayers: number;
  numHeads: number;
  numKVHeads: number;
  headDim: number;
  ropeTheta: number;
  /** dtype of q, k, v given to attention (activations stay float32 elsewhere). */
  attentionDtype: DType;
}

/** The demo's default configuration: 2 layers, 4 query heads, 2 kv heads, head dim 64. */
export const DEFAULT_TINY_CONFIG: TinyConfig = {
  attnImplementation: "magi",
  vocabSize: 97,
  numLayers: 2,
  numHeads: 4,
  numKVHeads: 2,
  headDim: 64,
  ropeTheta: 10000,
  attentionDtype: "float32",
};

function randomMatrix(rows: number, cols: number, next: () => number): Float32Array {
  const scale = 1 / Math.sqrt(rows);
  const values = new Float32Array(rows * cols);
  for (let index = 0; index < values.length; index++) values[index] = (next() * 2 - 1) * Math.sqrt(3) * scale;
  return values;
}

/** `x [tokens, inDim] · w [inDim, outDim]`. */
function matmul(
  x: Float32Array,
  tokens: number,
  w: Float32Array,
  inDim: number,
  outDim: number,
): Float32Array {
  const out = new Float32Array(tokens * outDim);
  for (let t = 0; t < tokens; t++) {
    for (let i = 0; i < inDim; i++) {
      const xv = x[t * inDim + i];
      if (xv === 0) continue;
      const row = i * outDim;
      const base = t * outDim;
      for (let o = 0; o < outDim; o++) out[base + o] += xv * w[row + o];
    }
  }
  return out;
}

function rmsNorm(x: Float32Array, tokens: number, dim: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let t = 0; t < tokens; t++) {
    let sum = 0;
    for (let d = 0; d < dim; d++) sum += x[t * dim + d] ** 2;
    const inv = 1 / Math.sqrt(sum / dim + 1e-6);
    for (let d = 0; d < dim; d++) out[t * dim + d] = x[t * dim + d] * inv;
  }
  return out;
}

/** Rotates pairs (d, d + D/2) of each head by position-dependent angles (RoPE), in place. */
function applyRope(
  x: Float32Array,
  tokens: number,
  heads: number,
  headDim: number,
  positions: Int32Array,
  theta: number,
) {
  const half = headDim / 2;
  for (let t = 0; t < tokens; t++) {
    for (let d = 0; d < half; d++) {
      const angle = positions[t] / theta ** ((2 * d) / headDim);
      const cos = Math.cos(angle), sin = Math.sin(angle);
      for (let h = 0; h < heads; h++) {
        const base = (t * heads + h) * headDim;
        const a = x[base + d], b = x[base + d + half];
        x[base + d] = a * cos - b * sin;
        x[base + d + half] = a * sin + b * cos;
      }
    }
  }
}

/** `[S, H, D]` float values → a `[1, H, S, D]` tensor of `dtype`. */
function toBhsd(x: Float32Array, tokens: number, heads: number, headDim: number, dtype: DType): HostTensor {
  const out = new Float32Array(x.length);
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < heads; h++) {
      out.set(
        x.subarray((t * heads + h) * headDim, (t * heads + h + 1) * headDim),
        (h * tokens + t) * headDim,
      );
    }
  }
  return fromFloat32(out, [1, heads, tokens, headDim], dtype);
}

/** One self-attention block; the class name contains "Attention", so spec stamping finds it. */
export class TinyAttention {
  readonly qProj: Float32Array;
  readonly kProj: Float32Array;
  readonly vProj: Float32Array;
  readonly oProj: Float32Array;

  constructor(readonly config: TinyConfig, next: () => number) {
    const hidden = config.numHeads * config.headDim;
    this.qProj = randomMatrix(hidden, hidden, next);
    this.kProj = randomMatrix(hidden, config.numKVHeads * config.headDim, next);
    this.vProj = randomMatrix(hidden, config.numKVHeads * config.headDim, next);
    this.oProj = randomMatrix(hidden, hidden, next);
  }

  async forward(x: Float32Array, tokens: number, positions: Int32Array): Promise<Float32Array> {
    const { numHeads, numKVHeads, headDim, ropeTheta, attentionDtype } = this.config;
    const hidden = numHeads * headDim, kvDim = numKVHeads * headDim;
    const q = matmul(x, tokens, this.qProj, hidden, hidden);
    const k = matmul(x, tokens, this.kProj, hidden, kvDim);
    const v = matmul(x, tokens, this.vProj, hidden, kvDim);
    applyRope(q, tokens, numHeads, headDim, positions, ropeTheta);
    applyRope(k, tokens, numKVHeads, headDim, positions, ropeTheta);
    const attention = ALL_ATTENTION_FUNCTIONS.get(this.config.attnImplementation);
    const [out] = await attention(
      this,
      toBhsd(q, tokens, numHeads, headDim, attentionDtype),
      toBhsd(k, tokens, numKVHeads, headDim, attentionDtype),
      toBhsd(v, tokens, numKVHeads, headDim, attentionDtype),
      null,
      { scaling: 1 / Math.sqrt(headDim) },
    );
    return matmul(toFloat32(out), tokens, this.oProj, hidden, hidden); // out is [1, S, H, D] = [S, hidden]
  }
}

/** Attention plus a SiLU MLP, each behind an RMSNorm and a residual connection. */
export class TinyDecoderLayer {
  readonly selfAttn: TinyAttention;
  readonly upProj: Float32Array;
  readonly downProj: Float32Array;

  constructor(readonly config: TinyConfig, next: () => number) {
    const hidden = config.numHeads * config.headDim;
    this.selfAttn = new TinyAttention(config, next);
    this.upProj = randomMatrix(hidden, 2 * hidden, next);
    this.downProj = randomMatrix(2 * hidden, hidden, next);
  }

  async forward(x: Float32Array, tokens: number, positions: Int32Array): Promise<Float32Array> {
    const hidden = this.config.numHeads * this.config.headDim;
    const attended = await this.selfAttn.forward(rmsNorm(x, tokens, hidden), tokens, positions);
    const afterAttention = x.map((value, index) => value + attended[index]);
    const up = matmul(rmsNorm(afterAttention, tokens, hidden), tokens, this.upProj, hidden, 2 * hidden);
    for (let index = 0; index < up.length; index++) up[index] = up[index] / (1 + Math.exp(-up[index]));
    const down = matmul(up, tokens, this.downProj, 2 * hidden, hidden);
    return afterAttention.map((value, index) => value + down[index]);
  }
}

/** The model: token embedding, decoder layers, final norm and a language-model head. */
export class TinyForCausalLM {
  readonly embedding: Float32Array;
  readonly layers: TinyDecoderLayer[];
  readonly lmHead: Float32Array;

  constructor(readonly config: TinyConfig, seed = 1234) {
    const next = seededRandom(seed);
    const hidden = config.numHeads * config.headDim;
    this.embedding = randomMatrix(config.vocabSize, hidden, next).map((value) => value * Math.sqrt(hidden));
    this.layers = Array.from({ length: config.numLayers }, () => new TinyDecoderLayer(config, next));
    this.lmHead = randomMatrix(hidden, config.vocabSize, next);
  }

  /** Logits `[tokens, vocabSize]` for `tokenIds` at `positionIds` (default 0, 1, 2, …). */
  async forward(tokenIds: ArrayLike<number>, positionIds?: Int32Array): Promise<Float32Array> {
    const tokens = tokenIds.length;
    const hidden = this.config.numHeads * this.config.headDim;
    const positions = positionIds ?? Int32Array.from({ length: tokens }, (_, index) => index);
    let x: Float32Array = new Float32Array(tokens * hidden);
    for (let t = 0; t < tokens; t++) {
      x.set(this.embedding.subarray(tokenIds[t] * hidden, (tokenIds[t] + 1) * hidden), t * hidden);
    }
    for (const layer of this.layers) x = await layer.forward(x, tokens, positions);
    return matmul(rmsNorm(x, tokens, hidden), tokens, this.lmHead, hidden, this.config.vocabSize);
  }
}
