/**
 * Stamping an {@linkcode AttnMaskSpec} on a model's attention modules each step, and the guard that a
 * stamped spec was really consumed by a magi forward (so a model that silently used another attention
 * implementation fails loudly instead of training on the wrong mask).
 * @module
 */

import { MagiAttnInputError } from "../core/errors.ts";
import { AttnMaskSpec } from "../masks/spec.ts";

/** Property of an attention module that holds the spec stamped for the current step. */
export const STAMPED_SPEC_PROPERTY = "_magiAttnSpec";

/** An object whose attention modules can be stamped (a model, or any object tree). */
// deno-lint-ignore no-explicit-any
export type ModelLike = Record<string, any>;

/** One armed step: the spec and how many magi forwards consumed it. */
interface StepToken {
  readonly spec: AttnMaskSpec;
  readonly moduleCount: number;
  consumedCount: number;
}

const armedSteps = new WeakMap<object, StepToken>();
const moduleTokens = new WeakMap<object, StepToken>();

/** Raised when a step's stamped spec was not consumed by any magi attention forward. */
export class AttnSpecNotConsumedError extends Error {
  /** The model's `config.attnImplementation`, if it has one. */
  readonly attnImplementation: string | undefined;
  /** Fingerprint of the spec that was stamped and not consumed. */
  readonly specFingerprint: string;

  /**
   * Explains which model did not consume which spec, and how to fix it.
   * @param model the model whose step was not consumed
   * @param spec the unconsumed spec
   * @param moduleCount how many attention modules the spec was stamped on
   */
  constructor(model: ModelLike, spec: AttnMaskSpec, moduleCount: number) {
    const implementation = model?.config?.attnImplementation;
    const modelName = model?.constructor?.name ?? "model";
    super(
      `magi-attn: the attention mask spec stamped on ${modelName} (${moduleCount} attention module(s), ` +
        `spec ${spec.fingerprint()}) was not consumed by any magi attention forward: the model did not ` +
        `route attention through magi (config.attnImplementation is ${JSON.stringify(implementation)}), ` +
        `so it ran with a different mask than the one you built. Fix: set config.attnImplementation = "magi" ` +
        `(or call the function from makeMagiAttnFunc with { module }), or stop stamping specs on this model ` +
        `(setAttnSpecOnAttention(model, null)).`,
    );
    this.name = "AttnSpecNotConsumedError";
    this.attnImplementation = implementation;
    this.specFingerprint = spec.fingerprint();
  }
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

/** The language backbone: `languageModel` or `model.languageModel` when present, else the model. */
function languageBackbone(model: ModelLike): object {
  if (isTraversable(model.languageModel)) return model.languageModel;
  const inner = model.model;
  if (isTraversable(inner) && isTraversable((inner as ModelLike).languageModel)) {
    return (inner as ModelLike).languageModel;
  }
  return model;
}

/**
 * The attention modules under the model's language backbone: objects whose class name contains
 * "Attention" or that set `isAttentionModule = true`, found through own properties, arrays, Map values
 * and `namedModules()`. Cycle-safe.
 */
export function findAttentionModules(model: ModelLike): object[] {
  const found: object[] = [];
  const backbone = languageBackbone(model);
  // A back-reference from the backbone to the model root must not lead the walk into other towers.
  const seen = new Set<object>(backbone === model ? [] : [model]);
  const stack: object[] = [backbone];
  while (stack.length > 0) {
    const node = stack.pop()!;
    if (seen.has(node)) continue;
    seen.add(node);
    if (isAttentionModule(node)) found.push(node);
    const children: unknown[] = [];
    if (Array.isArray(node)) children.push(...node);
    else if (node instanceof Map || node instanceof Set) children.push(...node.values());
    else {
      for (const name of Object.keys(node)) children.push((node as ModelLike)[name]);
      // deno-lint-ignore no-explicit-any
      const namedModules = (node as any).namedModules;
      if (typeof namedModules === "function") {
        for (const entry of namedModules.call(node)) children.push(Array.isArray(entry) ? entry[1] : entry);
      }
    }
    for (let index = children.length - 1; index >= 0; index--) {
      const child = children[index];
      if (isTraversable(child) && !seen.has(child)) stack.push(child);
    }
  }
  return found;
}

function describe(value: unknown): string {
  if (value === null || typeof value !== "object") return String(value);
  return `a ${value.constructor?.name ?? "plain object"}`;
}

function checkModel(model: unknown): asserts model is ModelLike {
  if (model === null || typeof model !== "object") {
    throw new MagiAttnInputError(
      "model",
      `is ${model === null ? "null" : typeof model}`,
      "pass the model object",
    );
  }
}

function throwIfUnconsumed(model: ModelLike): void {
  const token = armedSteps.get(model);
  if (token && token.consumedCount === 0) {
    throw new AttnSpecNotConsumedError(model, token.spec, token.moduleCount);
  }
}

/**
 * Stamps `spec` on every attention module of the model's language backbone for the next step (`null`
 * clears the stamps without arming). First checks the previous step: if it armed a spec that no magi
 * forward consumed, throws {@linkcode AttnSpecNotConsumedError} and changes nothing.
 * Returns the number of modules stamped (or cleared).
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
export function setAttnSpecOnAttention(model: ModelLike, spec: AttnMaskSpec | null): number {
  checkModel(model);
  if (spec !== null && !(spec instanceof AttnMaskSpec)) {
    throw new MagiAttnInputError(
      "spec",
      `is ${describe(spec)}, not an AttnMaskSpec`,
      "build it with AttnMaskSpec.varlen / .prefixTree / .fromRanges ..., or pass null to clear",
    );
  }
  throwIfUnconsumed(model);
  const modules = findAttentionModules(model);
  if (spec !== null && modules.length === 0) {
    throw new MagiAttnInputError(
      "model",
      "has no attention modules in its language backbone, so the spec would be dropped",
      'name attention classes with "Attention" or set `isAttentionModule = true` on them',
    );
  }
  const token: StepToken | null = spec === null
    ? null
    : { spec, moduleCount: modules.length, consumedCount: 0 };
  for (const module of modules) {
    (module as ModelLike)[STAMPED_SPEC_PROPERTY] = spec;
    if (token) moduleTokens.set(module, token);
    else moduleTokens.delete(module);
  }
  if (token) armedSteps.set(model, token);
  else armedSteps.delete(model);
  return modules.length;
}

/**
 * Ends a step: throws {@linkcode AttnSpecNotConsumedError} if the armed spec was not consumed (changing
 * nothing), otherwise disarms the guard. Call it after the last step so that step is checked too.
 */
export function closeAttnSpecStep(model: ModelLike): void {
  checkModel(model);
  throwIfUnconsumed(model);
  armedSteps.delete(model);
}

/** Disarms the model's guard without checking (e.g. after handling an {@linkcode AttnSpecNotConsumedError}). */
export function resetAttnSpecGuard(model: ModelLike): void {
  checkModel(model);
  armedSteps.delete(model);
}

/**
 * The spec stamped on `module`, or `null` when nothing is stamped. Does not mark it consumed: call
 * {@linkcode markStampedSpecConsumed} once the attention that uses it is about to run.
 */
export function stampedSpecOf(module: object): AttnMaskSpec | null {
  const spec = (module as ModelLike)[STAMPED_SPEC_PROPERTY];
  if (spec === undefined || spec === null) return null;
  if (!(spec instanceof AttnMaskSpec)) {
    throw new MagiAttnInputError(
      `module.${STAMPED_SPEC_PROPERTY}`,
      "is not an AttnMaskSpec",
      "stamp specs with setAttnSpecOnAttention(model, spec)",
    );
  }
  return spec;
}

/**
 * Marks the spec stamped on `module` consumed for the step that armed it (a spec set by hand, without
 * {@linkcode setAttnSpecOnAttention}, arms no guard and needs no mark).
 */
export function markStampedSpecConsumed(module: object): void {
  const token = moduleTokens.get(module);
  if (token && token.spec === (module as ModelLike)[STAMPED_SPEC_PROPERTY]) token.consumedCount++;
}
