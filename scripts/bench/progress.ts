/**
 * Progress lines of a benchmark run (on stderr, with the seconds since the start) and error text.
 * @module
 */

/** When the run started (this module's first load), ms on `performance.now`'s clock. */
export const startedAt: number = performance.now();

/** Prints a progress line on stderr, with the seconds since the start. */
export function progress(message: string): void {
  console.error(`[bench +${((performance.now() - startedAt) / 1000).toFixed(1)}s] ${message}`);
}

/** An error as one line of at most 600 characters. */
export function errorText(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.length > 600 ? `${text.slice(0, 600)}…` : text;
}
