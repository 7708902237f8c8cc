/**
 * zod at the API boundary: strict schemas for options objects and plain-object inputs, with zod's issues
 * rewritten as {@linkcode MagiAttnInputError}s in the project's "`field` problem. Fix: fix." voice (the
 * valid keys and a did-you-mean for an unknown key; never a raw zod dump).
 *
 * Hot typed-array loops (slice lists, document lengths, tensor data) stay hand-written where they are:
 * a schema per element would cost more than the work it guards.
 * @module
 */

// Inline on purpose: mod.ts is also imported by file URL from outside this package's deno.json (scripts in
// other folders, the subprocess tests), where the bare "zod" of the import map would not resolve.
// deno-lint-ignore no-import-prefix
import { z } from "npm:zod@^4";
import { describeValue, MagiAttnInputError, withArticle } from "./errors.ts";
import { unknownOptionFix } from "./names.ts";

export { z };

/** How a schema's errors are worded. */
export interface SchemaWording {
  /** Name of the whole value in messages, e.g. `"opts"`; `""` when the keys are top-level arguments. */
  readonly field: string;
  /** Name of the whole value when `field` is `""` and the value itself is wrong (default `"value"`). */
  readonly valueName?: string;
  /** What takes these keys, for unknown-key messages, e.g. `"flexFlashAttnForward"`. */
  readonly owner: string;
  /** The fix when the value is not an object at all (or has the wrong form as a whole). */
  readonly fix: string;
  /** The fix for a bad value of each top-level key. */
  readonly fixes?: Readonly<Record<string, string>>;
}

/** A strict parser: validates a value and returns zod's parsed copy, or throws a {@linkcode MagiAttnInputError}. */
export type StrictParser<T> = (value: unknown) => T;

const EMPTY: Readonly<Record<string, never>> = Object.freeze({});

/** Whether an object (and every object it holds directly) is frozen, so its check can be remembered. */
function isFrozenShallow(value: object): boolean {
  if (!Object.isFrozen(value)) return false;
  for (const key in value) {
    const item = (value as Record<string, unknown>)[key];
    if (item !== null && typeof item === "object" && !Object.isFrozen(item)) return false;
  }
  return true;
}

/**
 * Wraps a strict object schema as a parser. `undefined` stands for "no options" when `optional` (the
 * default) and returns an empty object without running the schema; an object already accepted is
 * accepted again without parsing when it and the objects it holds are frozen (nothing in it can have
 * changed), so a training loop that reuses one frozen options object pays one WeakSet lookup per call.
 */
export function strictParser<S extends z.ZodObject>(
  schema: S,
  wording: SchemaWording,
  { optional = true }: { optional?: boolean } = {},
): StrictParser<z.output<S>> {
  const accepted = new WeakSet<object>();
  const validKeys = Object.keys(schema.shape);
  return (value: unknown): z.output<S> => {
    if (value === undefined && optional) return EMPTY as z.output<S>;
    if (typeof value === "object" && value !== null && accepted.has(value)) return value as z.output<S>;
    const result = schema.safeParse(value, { reportInput: true });
    if (!result.success) throw issueToError(result.error.issues[0], value, wording, validKeys);
    if (typeof value === "object" && value !== null && isFrozenShallow(value)) accepted.add(value);
    return result.data;
  };
}

/** Parses `value` with any schema (not only objects), wording failures like {@linkcode strictParser}. */
export function parseWith<S extends z.ZodType>(
  schema: S,
  value: unknown,
  wording: SchemaWording,
): z.output<S> {
  const result = schema.safeParse(value, { reportInput: true });
  if (result.success) return result.data;
  const keys = schema instanceof z.ZodObject ? Object.keys(schema.shape) : [];
  throw issueToError(result.error.issues[0], value, wording, keys);
}

/** The field name of `path` under `base`: `opts` + `["window", 0]` → `opts.window[0]`. */
export function fieldOf(base: string, path: readonly PropertyKey[]): string {
  let field = base;
  for (const part of path) {
    if (typeof part === "number") field += `[${part}]`;
    else field += field === "" ? String(part) : `.${String(part)}`;
  }
  return field === "" ? "value" : field;
}

const EXPECTED_NAMES: Readonly<Record<string, string>> = {
  int: "an integer",
  number: "a number",
  boolean: "a boolean (true or false)",
  string: "a string",
  object: "an object",
  array: "an array",
  function: "a function",
};

/** The value at `path` inside `root`, read without invoking anything but plain property access. */
function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let value = root;
  for (const part of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<PropertyKey, unknown>)[part];
  }
  return value;
}

/** One zod issue as our error: the field path, what is wrong in words, and the fix. */
function issueToError(
  issue: z.core.$ZodIssue,
  root: unknown,
  wording: SchemaWording,
  validKeys: readonly string[],
): MagiAttnInputError {
  const topKey = typeof issue.path[0] === "string" ? issue.path[0] : undefined;
  const fix = (topKey !== undefined ? wording.fixes?.[topKey] : undefined) ?? wording.fix;
  const input = "input" in issue ? issue.input : valueAt(root, issue.path);
  const field = issue.path.length === 0 && wording.field === ""
    ? (wording.valueName ?? "value")
    : fieldOf(wording.field, issue.path);
  switch (issue.code) {
    case "unrecognized_keys": {
      const [first, ...others] = issue.keys;
      const also = others.length > 0 ? ` (nor are ${others.map((key) => `\`${key}\``).join(", ")})` : "";
      return new MagiAttnInputError(
        fieldOf(wording.field, [...issue.path, first]),
        `is not an option of ${wording.owner}${also}, so it would be ignored`,
        unknownOptionFix(first, validKeys),
      );
    }
    case "invalid_type": {
      const expected = EXPECTED_NAMES[issue.expected] ?? withArticle(issue.expected);
      if (input === undefined && issue.path.length > 0) {
        return new MagiAttnInputError(field, "is missing", fix);
      }
      const received = "received" in issue && typeof issue.received === "string" &&
          ["NaN", "Infinity", "-Infinity"].includes(issue.received)
        ? issue.received
        : describeValue(input);
      return new MagiAttnInputError(field, `is ${received}, not ${expected}`, fix);
    }
    case "too_small":
    case "too_big": {
      const small = issue.code === "too_small";
      const bound = Number(small ? issue.minimum : issue.maximum);
      if (issue.origin === "number" || issue.origin === "int" || issue.origin === "bigint") {
        const relation = small
          ? (issue.inclusive ? `at least ${bound}` : `greater than ${bound}`)
          : (issue.inclusive ? `at most ${bound}` : `less than ${bound}`);
        return new MagiAttnInputError(field, `is ${describeValue(input)}, but must be ${relation}`, fix);
      }
      const size = Array.isArray(input) || typeof input === "string" ? input.length : "?";
      const relation = small ? `at least ${bound}` : `at most ${bound}`;
      return new MagiAttnInputError(field, `has ${size} entries, but needs ${relation}`, fix);
    }
    case "invalid_value":
      return new MagiAttnInputError(
        field,
        `is ${describeValue(input)}, not one of ${
          issue.values.map((value) => JSON.stringify(value)).join(", ")
        }`,
        fix,
      );
    default: {
      // Custom checks and unions carry their own wording ("is …"); zod's generic text is replaced.
      const own = issue.message && !/^Invalid/.test(issue.message) ? issue.message : undefined;
      return new MagiAttnInputError(field, own ?? `is ${describeValue(input)}, which is not accepted`, fix);
    }
  }
}
