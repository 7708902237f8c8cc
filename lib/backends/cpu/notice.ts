/**
 * The once-per-process stderr notice that a large attention call runs on the CPU, and why the GPU path was
 * not taken.
 * @module
 */

/** Calls above this many FLOPs get the notice (about a second or more on a laptop's CPU). */
export const LARGE_CPU_FLOPS = 1e9;

let noticed = false;

/** The first line of a (possibly multi-line) reason, without a leading "magi-attn:" or trailing colon. */
export function firstLineOf(reason: string): string {
  const line = reason.split("\n")[0].trim().replace(/^magi-attn:\s*/, "");
  return line.replace(/\s*Tried:?$/, "").replace(/[\s:.]+$/, "");
}

/**
 * Writes one line to stderr the first time in this process that a call of more than
 * {@linkcode LARGE_CPU_FLOPS} FLOPs runs on the CPU: its size, and `reason()` (why not the GPU). Returns
 * whether it wrote the line. `reason` is only evaluated then (it may probe the CUDA library).
 */
export function noticeLargeCpuCall(
  flops: number,
  pass: "forward" | "backward",
  reason: () => string,
): boolean {
  if (noticed || !(flops > LARGE_CPU_FLOPS)) return false;
  noticed = true;
  console.error(
    `magi-attn: a ${
      flops.toExponential(1)
    }-FLOP attention ${pass} runs on the CPU (much slower than a GPU): ` +
      `${firstLineOf(reason())}. This notice is shown once per process.`,
  );
  return true;
}
