/**
 * The one line the demo and the skipped GPU tests print about the backend, with the full library-lookup
 * report only when `MAGI_ATTN_DEBUG=1` asks for it.
 * @module
 */

import type { BackendInfo } from "../../lib/backends/ffa.ts";

/** Environment variable that turns on the full report (every library path tried and why it failed). */
export const DEBUG_ENV = "MAGI_ATTN_DEBUG";

/**
 * `prefix` + the backend's one-line summary; when CUDA is not used, a pointer to the details, or (with
 * `MAGI_ATTN_DEBUG=1`) the details themselves on the following lines.
 */
export function backendNotice(prefix: string, info: BackendInfo): string {
  const line = `${prefix}${info.summary}`;
  if (info.reason === undefined) return line;
  if (Deno.env.get(DEBUG_ENV) === "1") return `${line}\n${info.reason}`;
  return `${line} (${DEBUG_ENV}=1 for details)`;
}
