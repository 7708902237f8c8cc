/**
 * Rotary position embedding as HF Qwen2 defines it: inverse frequencies `1 / θ^(2i / D)` for
 * `i < D / 2`, angles `position · inv_freq` duplicated over both halves of the head, and
 * `x · cos + rotate_half(x) · sin` with `rotate_half([x1, x2]) = [−x2, x1]`. The angles, cosines and sines
 * are rounded to float32 at the steps where transformers computes them in float32, so positions far from 0
 * rotate exactly as they do there.
 * @module
 */

/** Cosines and sines of every (token, frequency) pair: `[tokens, headDim / 2]` each. */
export interface RopeTables {
  /** `cos(position · inv_freq[i])`, row-major `[tokens, headDim / 2]`. */
  readonly cos: Float32Array;
  /** `sin(position · inv_freq[i])`, row-major `[tokens, headDim / 2]`. */
  readonly sin: Float32Array;
  /** Half the head dim (the number of frequencies). */
  readonly half: number;
}

/** `inv_freq[i] = 1 / θ^(2i / headDim)` in float32, as transformers' default RoPE initialises it. */
export function ropeInverseFrequencies(headDim: number, theta: number): Float32Array {
  const half = headDim / 2;
  const inverse = new Float32Array(half);
  for (let index = 0; index < half; index++) {
    const exponent = Math.fround((2 * index) / headDim);
    inverse[index] = Math.fround(1 / Math.fround(theta ** exponent));
  }
  return inverse;
}

/** The cos/sin tables for `positionIds` (one row per token). */
export function ropeTables(positionIds: Int32Array, headDim: number, theta: number): RopeTables {
  const inverse = ropeInverseFrequencies(headDim, theta);
  const half = headDim / 2;
  const cos = new Float32Array(positionIds.length * half);
  const sin = new Float32Array(positionIds.length * half);
  for (let token = 0; token < positionIds.length; token++) {
    for (let index = 0; index < half; index++) {
      const angle = Math.fround(positionIds[token] * inverse[index]);
      cos[token * half + index] = Math.cos(angle);
      sin[token * half + index] = Math.sin(angle);
    }
  }
  return { cos, sin, half };
}

/**
 * Rotates `x` (`[tokens, heads, headDim]`, row-major) in place: element d < D/2 becomes
 * `x[d] cos − x[d + D/2] sin`, element d + D/2 becomes `x[d + D/2] cos + x[d] sin`.
 */
export function applyRope(x: Float32Array, tokens: number, heads: number, tables: RopeTables): void {
  const { cos, sin, half } = tables;
  const headDim = 2 * half;
  for (let token = 0; token < tokens; token++) {
    const tableBase = token * half;
    for (let head = 0; head < heads; head++) {
      const base = (token * heads + head) * headDim;
      for (let index = 0; index < half; index++) {
        const c = cos[tableBase + index], s = sin[tableBase + index];
        const first = x[base + index], second = x[base + index + half];
        x[base + index] = first * c - second * s;
        x[base + index + half] = second * c + first * s;
      }
    }
  }
}
