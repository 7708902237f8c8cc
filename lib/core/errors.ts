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

/** "a" or "an" before `word` (by its first letter; good enough for type and class names). */
function article(word: string): string {
  return /^[aeiou]/i.test(word) ? `an ${word}` : `a ${word}`;
}

/**
 * Short, safe rendering of an offending value for error messages: numbers as written (`NaN`, `-0`),
 * strings quoted and called strings, bigints and symbols by kind (never converted), objects by class.
 */
export function describeValue(value: unknown): string {
  if (typeof value === "number") return Object.is(value, -0) ? "-0" : String(value);
  if (typeof value === "string") {
    return `${JSON.stringify(value.length > 40 ? value.slice(0, 40) + "…" : value)} (a string)`;
  }
  if (value === null || value === undefined || typeof value === "boolean") return String(value);
  if (typeof value === "bigint") return `a bigint (${value}n)`;
  if (typeof value === "symbol") return "a symbol";
  if (typeof value === "function") return "a function";
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  let className: string | undefined;
  try {
    className = (value as { constructor?: { name?: unknown } }).constructor?.name as string | undefined;
  } catch {
    className = undefined; // a hostile proxy or getter: describe it generically
  }
  return typeof className === "string" && className !== "" && className !== "Object"
    ? article(className)
    : "an object";
}

/** `word` with its indefinite article: "a number", "an integer", "an AttnMaskSpec". */
export function withArticle(word: string): string {
  return article(word);
}
