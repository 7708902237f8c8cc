/**
 * The fingerprint of a mask spec: a stable 64-bit hash of its totals and flat slices, the key of the
 * compiled-key cache.
 * @module
 */

/** FNV-style 32-bit mixing of one word into a running hash lane. */
function mixWord(hash: number, word: number, multiplier: number): number {
  let mixed = Math.imul(word | 0, multiplier);
  mixed = (mixed << 15) | (mixed >>> 17);
  mixed = Math.imul(mixed, 0x1b873593);
  hash ^= mixed;
  hash = (hash << 13) | (hash >>> 19);
  return (Math.imul(hash, 5) + 0xe6546b64) | 0;
}

/** Final avalanche of one lane (MurmurHash3's finalizer over the lane and the slice count). */
function finishLane(hash: number, length: number): number {
  hash ^= length;
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

function hex8(value: number): string {
  return value.toString(16).padStart(8, "0");
}

/**
 * A stable 64-bit hash (16 hex digits, then `-` and the slice count) of the totals and the flat slices
 * `q` (2N), `k` (2N), `types` (N). Equal inputs give equal fingerprints; the slice order matters.
 */
export function sliceFingerprint(
  totalSeqlenQ: number,
  totalSeqlenK: number,
  q: Int32Array,
  k: Int32Array,
  types: Int32Array,
): string {
  const count = types.length;
  // Two independent 32-bit lanes over: totals, count, then (qs, qe, ks, ke, type) per slice.
  let laneA = 0x9747b28c, laneB = 0x2545f491;
  const header = [totalSeqlenQ, totalSeqlenK, count];
  for (const word of header) {
    laneA = mixWord(laneA, word, 0xcc9e2d51);
    laneB = mixWord(laneB, word ^ 0x5bd1e995, 0x27d4eb2f);
  }
  for (let index = 0; index < count; index++) {
    const w0 = q[2 * index], w1 = q[2 * index + 1], w2 = k[2 * index], w3 = k[2 * index + 1];
    const w4 = types[index];
    laneA = mixWord(
      mixWord(
        mixWord(mixWord(mixWord(laneA, w0, 0xcc9e2d51), w1, 0xcc9e2d51), w2, 0xcc9e2d51),
        w3,
        0xcc9e2d51,
      ),
      w4,
      0xcc9e2d51,
    );
    laneB = mixWord(
      mixWord(
        mixWord(
          mixWord(mixWord(laneB, w0 ^ 0x5bd1e995, 0x27d4eb2f), w1 ^ 0x5bd1e995, 0x27d4eb2f),
          w2 ^ 0x5bd1e995,
          0x27d4eb2f,
        ),
        w3 ^ 0x5bd1e995,
        0x27d4eb2f,
      ),
      w4 ^ 0x5bd1e995,
      0x27d4eb2f,
    );
  }
  return `${hex8(finishLane(laneA, count))}${hex8(finishLane(laneB, count))}-${count}`;
}
