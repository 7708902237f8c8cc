/**
 * Stamping an {@linkcode AttnMaskSpec} on a model's attention modules each step, and the guard that the
 * stamped spec was really consumed (so a model that silently used another attention implementation, or
 * another step's mask, fails loudly instead of training on the wrong mask).
 *
 * The consumption rule: a step's spec counts as consumed by a module only when a magi forward on that
 * module has produced its output with it (a forward that throws, or one still running, does not count).
 * By default every stamped module must consume the spec; `allowSkip` names how many, or which, modules
 * may skip it on purpose. Closing a step (explicitly, or by stamping the next one after every module
 * consumed) disarms the guard and clears the stamps, so no later forward can pick up a finished step's
 * mask; a step that is still open (a forward running, or modules yet to consume) cannot be replaced.
 * @module
 */

import { describeValue, MagiAttnInputError } from "../core/errors.ts";
import { parseWith, z } from "../core/schema.ts";
import { type AttnMaskSpec, checkAttnMaskSpec } from "../masks/spec.ts";

/** Property of an attention module that holds the spec stamped for the current step. */
export const STAMPED_SPEC_PROPERTY = "_magiAttnSpec";

/** An object whose attention modules can be stamped (a model, or any object tree). */
// deno-lint-ignore no-explicit-any
export type ModelLike = Record<string, any>;

/** Options of {@linkcode setAttnSpecOnAttention}. */
export interface StampOptions {
  /**
   * Attention modules that may skip this step's spec on purpose (e.g. layers a model skips): a count (any
   * that many modules) or the modules themselves. Default: none, so every stamped module must consume the
   * spec. At least one module must always consume it. A step that allows skips must be closed with
   * {@linkcode closeAttnSpecStep} before the next one is stamped.
   */
  allowSkip?: number | readonly object[];
}

/** One armed step: its spec, the modules it was stamped on and what happened to it. */
interface StepToken {
  readonly model: object;
  readonly spec: AttnMaskSpec;
  readonly modules: readonly object[];
  /** Each module's path in the model, for messages. */
  readonly names: readonly string[];
  /** Modules whose magi forward produced output with this spec. */
  readonly consumed: Set<object>;
  /** How many modules may skip (the count form of `allowSkip`). */
  readonly skipCount: number;
  /** The modules that may skip (the list form of `allowSkip`), or null. */
  readonly skipModules: ReadonlySet<object> | null;
  /** Magi forwards that read this spec and have not finished. */
  inFlight: number;
  /** Magi forwards that read this spec and threw. */
  failed: number;
  /** Magi forwards that read this spec (finished or not). */
  started: number;
}

const armedSteps = new WeakMap<object, StepToken>();
const moduleTokens = new WeakMap<object, StepToken>();

function moduleLabel(token: StepToken, module: object): string {
  const index = token.modules.indexOf(module);
  const className = module.constructor?.name;
  // deno-lint-ignore no-explicit-any
  const own = (module as any).attnImplementation;
  const implementation = typeof own === "string" ? `, attnImplementation ${JSON.stringify(own)}` : "";
  return `${token.names[index]} (${className ?? "object"}${implementation})`;
}

/** The modules that still have to consume the step's spec for the step to pass (beyond those allowed to skip). */
function missingModules(token: StepToken): object[] {
  const unconsumed = token.modules.filter((module) => !token.consumed.has(module));
  if (token.skipModules !== null) return unconsumed.filter((module) => !token.skipModules!.has(module));
  return unconsumed.length > token.skipCount ? unconsumed : [];
}

/**
 * Raised when a step's stamped spec was not consumed by every attention module that had to consume it
 * (or when a step is replaced or closed while still open). The message names the modules and says what
 * happened and how to get out of it.
 */
export class AttnSpecNotConsumedError extends Error {
  /** The model's `config.attnImplementation`, if it has one. */
  readonly attnImplementation: string | undefined;
  /** Fingerprint of the spec that was stamped and not consumed. */
  readonly specFingerprint: string;
  /** Paths (in the model) of the modules that did not consume the spec. */
  readonly unconsumedModules: readonly string[];

  /**
   * Explains which modules of which model did not consume which spec, why, and how to fix it.
   * @param model the model whose step was not consumed
   * @param spec the unconsumed spec
   * @param modules the modules the spec was stamped on, each with its path in the model
   * @param unconsumed the modules (paths, with class) that did not consume it
   * @param cause what happened, as one clause ("no magi attention forward ran on it …")
   * @param fix how to fix it
   */
  constructor(
    model: ModelLike,
    spec: AttnMaskSpec,
    modules: number,
    unconsumed: readonly string[],
    cause: string,
    fix: string,
  ) {
    const implementation = model?.config?.attnImplementation;
    const modelName = model?.constructor?.name ?? "model";
    super(
      `magi-attn: the attention mask spec stamped on ${modelName} (${modules} attention module(s), spec ` +
        `${spec.fingerprint()}) was not consumed by ${unconsumed.length} of them: ${
          unconsumed.join(", ")
        }. ` +
        `${cause.charAt(0).toUpperCase()}${cause.slice(1)}. Fix: ${fix}.`,
    );
    this.name = "AttnSpecNotConsumedError";
    this.attnImplementation = typeof implementation === "string" ? implementation : undefined;
    this.specFingerprint = spec.fingerprint();
    this.unconsumedModules = Object.freeze([...unconsumed]);
  }
}

const ABANDON =
  "to abandon the step, call resetAttnSpecGuard(model) (it disarms the guard and clears the stamps)";

/** The error for a step that may not pass: why it did not, worded from what the guard recorded. */
function notConsumed(token: StepToken, action: "stamp" | "close"): AttnSpecNotConsumedError {
  const model = token.model as ModelLike;
  const missing = missingModules(token);
  const waiting = missing.length > 0
    ? missing
    : token.modules.filter((module) => !token.consumed.has(module));
  const labels = waiting.map((module) => moduleLabel(token, module));
  const implementation = model?.config?.attnImplementation;
  let cause: string, fix: string;
  if (token.inFlight > 0) {
    cause =
      `${token.inFlight} magi attention forward(s) that read this spec are still running, so the step ` +
      `is open; ${action === "stamp" ? "stamping" : "closing"} it now would ${
        action === "stamp"
          ? "hand the next step's spec to the layers still to run (two steps" +
            " in flight on one model swap their masks)"
          : "leave those forwards unchecked"
      }`;
    fix =
      "await the model's forward, then close the step with closeAttnSpecStep(model) before stamping the " +
      "next; run concurrent steps on separate model instances";
  } else if (missing.length === 0) {
    cause = "the step is still open: the modules allowed to skip it have not consumed it, and a forward " +
      "still to come on them would pick up the next step's spec";
    fix = "close each step that allows skips with closeAttnSpecStep(model) before stamping the next";
  } else if (token.failed > 0) {
    cause = `${token.failed} magi attention forward(s) on this step threw before producing output, so the ` +
      "step did not complete";
    fix = `handle the failed step: ${ABANDON}, then stamp the next step`;
  } else if (typeof implementation === "string" && implementation !== "magi" && token.started === 0) {
    cause = "the model did not route attention through magi (config.attnImplementation is " +
      `${JSON.stringify(implementation)}), so it ran with a different mask than the one you built`;
    fix = 'set config.attnImplementation = "magi" (or call the function from makeMagiAttnFunc with ' +
      `{ module }); ${ABANDON}`;
  } else if (token.started === 0) {
    cause = "no magi attention forward has run with it since it was stamped (did the model's forward throw " +
      "before reaching attention, was the step never run, or is its forward still running while another " +
      "step is stamped on the same model?)";
    fix = "run the model's forward between stamping and closing, one step at a time per model; after a " +
      `forward that failed, ${ABANDON}`;
  } else {
    cause = "those modules have not run magi attention in this step (another attention implementation, " +
      "they were skipped, or the step's forward has not reached them yet), so they would run with a " +
      "different mask than the one you built";
    fix = "route every attention module through magi and finish the step's forward before stamping the " +
      "next, or let modules skip on purpose with setAttnSpecOnAttention(model, spec, { allowSkip: [modules] " +
      `or a count }); ${ABANDON}`;
  }
  return new AttnSpecNotConsumedError(model, token.spec, token.modules.length, labels, cause, fix);
}

function isTraversable(value: unknown): value is object {
  if (value === null || typeof value !== "object") return false;
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return false; // weights: never walk elements
  return !(value instanceof Promise || value instanceof WeakMap || value instanceof WeakSet);
}

function isAttentionModule(value: object): boolean {
  // deno-lint-ignore no-explicit-any
  if ((value as any).isAttentionModule === true) return true;
  const className = value.constructor?.name ?? "";
  return className.includes("Attention");
}

/** The language backbone and its path from the model: `languageModel`, `model.languageModel`, or the model. */
function languageBackbone(model: ModelLike): { backbone: object; path: string } {
  if (isTraversable(model.languageModel)) return { backbone: model.languageModel, path: "languageModel" };
  const inner = model.model;
  if (isTraversable(inner) && isTraversable((inner as ModelLike).languageModel)) {
    return { backbone: (inner as ModelLike).languageModel, path: "model.languageModel" };
  }
  return { backbone: model, path: "" };
}

/** A found attention module and its path from the model root (e.g. `model.layers[3].selfAttn`). */
interface FoundModule {
  readonly module: object;
  readonly path: string;
}

/** How a walked node was reached: its parent's entry and the step from the parent. */
interface WalkEntry {
  readonly node: object;
  readonly parent: number;
  readonly step: string;
}

/**
 * The attention modules under the model's language backbone with their paths. An iterative walk that
 * never spreads a container into an argument list, so a model holding a huge array or Map is fine.
 */
function findModulesWithPaths(model: ModelLike): FoundModule[] {
  const { backbone, path: backbonePath } = languageBackbone(model);
  // A back-reference from the backbone to the model root must not lead the walk into other towers.
  const seen = new Set<object>(backbone === model ? [] : [model]);
  const entries: WalkEntry[] = [];
  const foundEntries: number[] = [];
  const stack: WalkEntry[] = [{ node: backbone, parent: -1, step: backbonePath }];
  const children: WalkEntry[] = [];
  while (stack.length > 0) {
    const entry = stack.pop()!;
    const node = entry.node;
    if (seen.has(node)) continue;
    seen.add(node);
    const index = entries.length;
    entries.push(entry);
    if (isAttentionModule(node)) foundEntries.push(index);
    children.length = 0;
    const visit = (child: unknown, step: string): void => {
      if (isTraversable(child) && !seen.has(child)) children.push({ node: child, parent: index, step });
    };
    if (Array.isArray(node)) {
      for (let item = 0; item < node.length; item++) visit(node[item], `[${item}]`);
    } else if (node instanceof Map) {
      for (const [mapKey, value] of node) visit(value, `.get(${describeValue(mapKey)})`);
    } else if (node instanceof Set) {
      let item = 0;
      for (const value of node) visit(value, `.values()[${item++}]`);
    } else {
      for (const name of Object.keys(node)) visit((node as ModelLike)[name], `.${name}`);
      // deno-lint-ignore no-explicit-any
      const namedModules = (node as any).namedModules;
      if (typeof namedModules === "function") {
        for (const item of namedModules.call(node)) {
          if (Array.isArray(item)) visit(item[1], `.namedModules(${JSON.stringify(String(item[0]))})`);
          else visit(item, ".namedModules()");
        }
      }
    }
    // Pushed in reverse, so the walk visits children in their own order (depth first).
    for (let child = children.length - 1; child >= 0; child--) stack.push(children[child]);
  }
  const pathOf = (index: number): string => {
    const steps: string[] = [];
    for (let at = index; at >= 0; at = entries[at].parent) steps.push(entries[at].step);
    const joined = steps.reverse().join("");
    return joined.startsWith(".") ? joined.slice(1) : joined === "" ? "(the model)" : joined;
  };
  return foundEntries.map((index) => ({ module: entries[index].node, path: pathOf(index) }));
}

/**
 * The attention modules under the model's language backbone: objects whose class name contains
 * "Attention" or that set `isAttentionModule = true`, found through own properties, arrays, Map and Set
 * values and `namedModules()`. Cycle-safe, and iterative (huge containers do not overflow the stack).
 */
export function findAttentionModules(model: ModelLike): object[] {
  checkModel(model);
  return findModulesWithPaths(model).map((found) => found.module);
}

function checkModel(model: unknown): asserts model is ModelLike {
  if (model === null || typeof model !== "object") {
    throw new MagiAttnInputError(
      "model",
      `is ${describeValue(model)}`,
      "pass the model object",
    );
  }
}

const STAMP_OPTIONS_SCHEMA = z.strictObject({
  allowSkip: z.union([
    z.int().min(0),
    z.array(z.custom<object>((item) => item !== null && typeof item === "object")),
  ], {
    error: "is neither a count of modules nor a list of attention modules",
  }).optional(),
});

const STAMP_WORDING = {
  field: "options",
  owner: "setAttnSpecOnAttention",
  fix: "pass { allowSkip } or nothing",
  fixes: {
    allowSkip: "pass a count (how many modules may skip the spec) or an array of the attention modules " +
      "that may skip it",
  },
};

/** The `allowSkip` option resolved against the modules found: a count and/or a set of modules. */
function resolveAllowSkip(
  options: StampOptions | undefined,
  found: readonly FoundModule[],
): { skipCount: number; skipModules: Set<object> | null } {
  const { allowSkip } = parseWith(STAMP_OPTIONS_SCHEMA, options ?? {}, STAMP_WORDING);
  if (allowSkip === undefined) return { skipCount: 0, skipModules: null };
  const count = found.length;
  if (typeof allowSkip === "number") {
    if (allowSkip >= count) {
      throw new MagiAttnInputError(
        "options.allowSkip",
        `is ${allowSkip}, which lets every one of the model's ${count} attention module(s) skip the spec, so ` +
          "the guard could never fire",
        `allow at most ${count - 1} module(s) to skip; at least one must consume the spec`,
      );
    }
    return { skipCount: allowSkip, skipModules: null };
  }
  const modules = new Set<object>();
  const known = new Set(found.map((item) => item.module));
  for (const [index, module] of (allowSkip as object[]).entries()) {
    if (!known.has(module)) {
      throw new MagiAttnInputError(
        `options.allowSkip[${index}]`,
        `is ${describeValue(module)}, which is not one of the model's attention modules`,
        `list modules findAttentionModules(model) returns (${found.map((item) => item.path).join(", ")})`,
      );
    }
    modules.add(module);
  }
  if (modules.size >= count) {
    throw new MagiAttnInputError(
      "options.allowSkip",
      `lists all ${count} attention module(s) of the model, so the guard could never fire`,
      "leave at least one module that must consume the spec",
    );
  }
  return { skipCount: 0, skipModules: modules };
}

/** Why `module` cannot take a stamp (frozen, sealed or a read-only property), or null when it can. */
function unstampable(module: object): string | null {
  let descriptor: PropertyDescriptor | undefined;
  try {
    descriptor = Object.getOwnPropertyDescriptor(module, STAMPED_SPEC_PROPERTY);
  } catch (error) {
    return `cannot be inspected (${error instanceof Error ? error.message : String(error)})`;
  }
  if (descriptor) {
    if ("value" in descriptor) return descriptor.writable ? null : `has a read-only ${STAMPED_SPEC_PROPERTY}`;
    return descriptor.set ? null : `has a ${STAMPED_SPEC_PROPERTY} getter without a setter`;
  }
  if (Object.isFrozen(module)) return "is frozen";
  if (!Object.isExtensible(module)) return "is sealed or not extensible";
  return null;
}

/** Sets the property on every module, undoing what was set if one of them refuses. */
function writeStamps(modules: readonly object[], value: AttnMaskSpec | null, names: readonly string[]): void {
  const previous: unknown[] = [];
  for (let index = 0; index < modules.length; index++) {
    const module = modules[index] as ModelLike;
    previous.push(module[STAMPED_SPEC_PROPERTY]);
    let ok: boolean;
    try {
      ok = Reflect.set(module, STAMPED_SPEC_PROPERTY, value);
    } catch {
      ok = false;
    }
    if (!ok) {
      for (let undo = index - 1; undo >= 0; undo--) {
        Reflect.set(modules[undo], STAMPED_SPEC_PROPERTY, previous[undo]);
      }
      throw new MagiAttnInputError(
        `model.${names[index]}`,
        `refused the stamp (setting ${STAMPED_SPEC_PROPERTY} failed), so the spec could not be stamped`,
        "stamp before freezing the attention modules, or leave their stamp property writable",
      );
    }
  }
}

/**
 * Clears the stamps a step left on its modules (those still holding its spec), and forgets the step.
 * Modules in `restamped` were just stamped again by the same model and are left alone.
 */
function clearStep(token: StepToken, restamped?: ReadonlySet<object>): void {
  for (const module of token.modules) {
    if (moduleTokens.get(module) !== token || restamped?.has(module)) continue;
    moduleTokens.delete(module);
    if ((module as ModelLike)[STAMPED_SPEC_PROPERTY] === token.spec) {
      try {
        Reflect.set(module, STAMPED_SPEC_PROPERTY, null);
      } catch {
        // A module frozen after stamping keeps its stamp; its step is forgotten all the same.
      }
    }
  }
  if (armedSteps.get(token.model) === token) armedSteps.delete(token.model);
}

/** Whether the step is over: every module consumed it and no forward that read it is running. */
function fullyConsumed(token: StepToken): boolean {
  return token.inFlight === 0 && token.consumed.size === token.modules.length;
}

/**
 * Stamps `spec` on every attention module of the model's language backbone for the next step (`null`
 * clears the stamps without arming). First checks the previous step: one that every module consumed is
 * closed; one that is still open (a forward running, modules yet to consume it, or skips allowed and no
 * {@linkcode closeAttnSpecStep}) raises {@linkcode AttnSpecNotConsumedError}. Refuses (with
 * {@linkcode MagiAttnInputError}) a module that another model's armed step stamped, and a module that
 * cannot take the stamp. A failing call changes nothing. Returns the number of modules stamped (or cleared).
 *
 * @example One training step
 * ```ts
 * import { AttnMaskSpec, closeAttnSpecStep, setAttnSpecOnAttention } from "@magi/attn";
 *
 * class SelfAttention {} // a model's attention module (its class name contains "Attention")
 * const model = { config: { attnImplementation: "magi" }, layers: [{ selfAttn: new SelfAttention() }] };
 * setAttnSpecOnAttention(model, AttnMaskSpec.varlen([5, 3])); // stamps both the spec and the guard
 * // ... model.forward(...): each attention module's magi forward consumes the stamped spec ...
 * try {
 *   closeAttnSpecStep(model); // throws here: this toy model never ran its attention
 * } catch (error) {
 *   console.log((error as Error).name); // "AttnSpecNotConsumedError"
 * }
 * ```
 */
export function setAttnSpecOnAttention(
  model: ModelLike,
  spec: AttnMaskSpec | null,
  options?: StampOptions,
): number {
  checkModel(model);
  if (spec !== null) {
    checkAttnMaskSpec(
      spec,
      "spec",
      "build it with AttnMaskSpec.varlen / .prefixTree / .fromRanges ..., or pass null to clear",
    );
  }
  const found = findModulesWithPaths(model);
  const { skipCount, skipModules } = spec === null
    ? { skipCount: 0, skipModules: null }
    : resolveAllowSkip(options, found);
  if (spec === null && options !== undefined) parseWith(STAMP_OPTIONS_SCHEMA, options, STAMP_WORDING);
  const previous = armedSteps.get(model);
  if (previous && !fullyConsumed(previous)) throw notConsumed(previous, "stamp");
  if (spec !== null && found.length === 0) {
    throw new MagiAttnInputError(
      "model",
      "has no attention modules in its language backbone, so the spec would be dropped",
      'name attention classes with "Attention" or set `isAttentionModule = true` on them',
    );
  }
  for (const { module, path } of found) {
    const owner = moduleTokens.get(module);
    if (owner && owner.model !== model && armedSteps.get(owner.model) === owner) {
      throw new MagiAttnInputError(
        "model",
        `shares its attention module ${path} with another model (${
          owner.model.constructor?.name ?? "object"
        }) whose step is still armed with spec ${owner.spec.fingerprint()}; stamping it would make that ` +
          "model run this model's mask",
        "close the other model's step first (closeAttnSpecStep(otherModel)), or give each model its own " +
          "attention modules",
      );
    }
    const reason = unstampable(module);
    if (reason !== null) {
      throw new MagiAttnInputError(
        `model.${path}`,
        `${reason}, so the spec cannot be stamped on it (no module was stamped)`,
        "stamp before freezing the attention modules, or leave them extensible",
      );
    }
  }
  const modules = found.map((item) => item.module);
  const names = found.map((item) => item.path);
  writeStamps(modules, spec, names);
  if (previous) {
    // Stamps of modules no longer found are cleared; the modules just stamped keep the new value.
    const restamped = new Set(modules);
    clearStep(previous, restamped);
    for (const module of modules) if (moduleTokens.get(module) === previous) moduleTokens.delete(module);
  }
  if (spec === null) return modules.length;
  const token: StepToken = {
    model,
    spec,
    modules,
    names,
    consumed: new Set(),
    skipCount,
    skipModules,
    inFlight: 0,
    failed: 0,
    started: 0,
  };
  for (const module of modules) moduleTokens.set(module, token);
  armedSteps.set(model, token);
  return modules.length;
}

/**
 * Ends a step: throws {@linkcode AttnSpecNotConsumedError} if a module that had to consume the spec did
 * not, or if a forward that read it is still running (changing nothing); otherwise disarms the guard and
 * clears the stamps, so a later forward outside a step runs without a spec (the default causal mask).
 * Call it after every step, the last one included.
 */
export function closeAttnSpecStep(model: ModelLike): void {
  checkModel(model);
  const token = armedSteps.get(model);
  if (!token) return;
  if (token.inFlight > 0 || missingModules(token).length > 0) throw notConsumed(token, "close");
  clearStep(token);
}

/**
 * Abandons the model's step without checking it (e.g. after a failed forward, or after handling an
 * {@linkcode AttnSpecNotConsumedError}): disarms the guard and clears the step's stamps.
 */
export function resetAttnSpecGuard(model: ModelLike): void {
  checkModel(model);
  const token = armedSteps.get(model);
  if (token) clearStep(token);
}

/** A magi forward's use of a module's stamped spec, from {@linkcode beginStampedForward}. */
export interface StampedUse {
  /** The module. */
  readonly module: object;
  /** The spec stamped on it. */
  readonly spec: AttnMaskSpec;
  /** The step that stamped it (null for a spec set by hand, which arms no guard). */
  readonly token: StepToken | null;
}

/**
 * The spec stamped on `module`, or `null` when nothing is stamped; throws if the property holds something
 * else. Does not record a use: magi forwards use {@linkcode beginStampedForward}.
 */
export function stampedSpecOf(module: object): AttnMaskSpec | null {
  const spec = (module as ModelLike)[STAMPED_SPEC_PROPERTY];
  if (spec === undefined || spec === null) return null;
  return checkAttnMaskSpec(
    spec,
    `module.${STAMPED_SPEC_PROPERTY}`,
    "stamp specs with setAttnSpecOnAttention(model, spec)",
  );
}

/**
 * Starts a magi forward on `module`: reads its stamped spec and, when a step stamped it, records a
 * forward in flight. Returns null when nothing is stamped. Every non-null result must be passed to
 * {@linkcode runStampedForward} with the forward, which records whether it produced its output.
 */
export function beginStampedForward(module: object): StampedUse | null {
  const spec = stampedSpecOf(module);
  if (spec === null) return null;
  const owner = moduleTokens.get(module);
  const token = owner !== undefined && owner.spec === spec ? owner : null;
  if (token) {
    token.inFlight++;
    token.started++;
  }
  return { module, spec, token };
}

/**
 * Ends a magi forward begun with {@linkcode beginStampedForward}: the module consumed the spec only if
 * the forward produced its output (`succeeded`); a failure is recorded for the guard's message.
 */
function endStampedForward(use: StampedUse | null, succeeded: boolean): void {
  const token = use?.token;
  if (!token) return;
  token.inFlight--;
  if (succeeded) token.consumed.add(use.module);
  else token.failed++;
}

/**
 * Runs the magi forward `run` that read `use` (from {@linkcode beginStampedForward}) and records its
 * outcome: consumed if it produced its output, failed if it threw.
 */
export async function runStampedForward<T>(use: StampedUse | null, run: () => Promise<T>): Promise<T> {
  let succeeded = false;
  try {
    const result = await run();
    succeeded = true;
    return result;
  } finally {
    endStampedForward(use, succeeded);
  }
}
