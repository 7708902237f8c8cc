/**
 * Error classes. Every bad-input error names the offending field and says how to fix it.
 * @module
 */

/** Thrown for invalid input: `field` names what was wrong, and the message ends with the fix. */
export class MagiAttnInputError extends Error {
  /** The offending field or argument, e.g. `"qRanges[3]"` or `"opts.softcap"`. */
  readonly field: string;

  /**
   * Builds the message "`field` problem. Fix: fix.".
   * @param field the argument or field that is wrong
   * @param problem what is wrong with it (completes "`field` ...")
   * @param fix how to fix it
   */
  constructor(field: string, problem: string, fix: string) {
    super(`magi-attn: \`${field}\` ${problem}. Fix: ${fix}.`);
    this.name = "MagiAttnInputError";
    this.field = field;
  }
}

/** Thrown when a requested backend (the CUDA library, a device) cannot be used; `cause` holds why. */
export class BackendUnavailableError extends Error {
  /**
   * Wraps the reason a backend cannot be used.
   * @param message what is unavailable and what was tried
   * @param options `cause`: the underlying error(s)
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "BackendUnavailableError";
  }
}

/** Short, safe rendering of an offending value for error messages. */
export function describeValue(value: unknown): string {
  if (typeof value === "number") return Number.isNaN(value) ? "NaN" : String(value);
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? value.slice(0, 40) + "…" : value);
  if (value === null || value === undefined || typeof value === "boolean") return String(value);
  if (typeof value === "bigint") return `${value}n (a bigint)`;
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  return `a ${typeof value === "object" ? (value.constructor?.name ?? "object") : typeof value}`;
}
