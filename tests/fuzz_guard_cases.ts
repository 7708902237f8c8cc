/**
 * Seeded random step sequences of the stamping guard, for the fuzz tests and `scripts/reliability.ts`,
 * checked against an oracle of the consumption rule.
 * @module
 */

import { MagiAttnInputError } from "../lib/core/errors.ts";
import { magiAttentionForward } from "../lib/attention/magi.ts";
import { sdpaAttentionForward } from "../lib/attention/registry.ts";
import {
  AttnSpecNotConsumedError,
  closeAttnSpecStep,
  resetAttnSpecGuard,
  setAttnSpecOnAttention,
} from "../lib/attention/stamping.ts";
import { AttnMaskSpec } from "../lib/masks/spec.ts";
import { randomTensor, seededRandom, toFloat32 } from "../lib/core/tensor.ts";
import { randomInt } from "./support/fuzz.ts";

/** Counts of one guard case, for coverage checks. */
export interface GuardCaseSummary {
  /** Operations run. */
  operations: number;
  /** Stampings refused because the previous step was still open. */
  refusedStamps: number;
  /** Closings refused because a module that had to consume the spec did not. */
  refusedCloses: number;
  /** Steps that passed with modules allowed to skip. */
  skipsAllowed: number;
  /** Successful magi forwards, each compared with the output of the mask the oracle says is stamped. */
  forwards: number;
}

class FuzzAttention {
  readonly isAttentionModule = true;
}

const GUARD_SPECS: readonly AttnMaskSpec[] = [
  AttnMaskSpec.causal(8),
  AttnMaskSpec.varlen([3, 5]),
  AttnMaskSpec.varlen([8], { causal: false }),
];

let guardExpectations: Map<AttnMaskSpec | null, number[]> | undefined;

/** The output of one magi forward on the fuzz input under each spec (and with none stamped). */
async function guardExpected(): Promise<Map<AttnMaskSpec | null, number[]>> {
  if (guardExpectations) return guardExpectations;
  const expected = new Map<AttnMaskSpec | null, number[]>();
  const q = randomTensor([1, 2, 8, 4], { seed: 9 });
  for (const spec of [...GUARD_SPECS, null]) {
    const module = Object.assign(new FuzzAttention(), { _magiAttnSpec: spec });
    const [out] = await magiAttentionForward(module, q, q, q, null, {});
    expected.set(spec, Array.from(toFloat32(out)));
  }
  return (guardExpectations = expected);
}

/**
 * Random steps on a model of 1–4 attention modules: stamp (sometimes with allowSkip), magi forwards that
 * succeed or throw, sdpa forwards, close and reset, checked against an independent model of the rule:
 * a step passes only if every module not allowed to skip had a magi forward produce output with it; a
 * step that did not pass cannot be replaced or closed; closing clears the stamps; each magi forward runs
 * exactly the mask stamped on its module. Throws `seed=<n>: …` on the first disagreement.
 */
export async function checkGuardCase(seed: number): Promise<GuardCaseSummary> {
  const random = seededRandom(seed);
  const expected = await guardExpected();
  const count = randomInt(random, 1, 4);
  const modules = Array.from({ length: count }, () => new FuzzAttention());
  const model = { layers: modules };
  const q = randomTensor([1, 2, 8, 4], { seed: 9 });
  const badQ = randomTensor([1, 2, 8, 4], { seed: 9, dtype: "bfloat16" });
  let stamps: (AttnMaskSpec | null)[] = modules.map(() => null);
  let armed: { consumed: Set<number>; skipCount: number; skipSet: Set<number> | null } | null = null;
  const summary: GuardCaseSummary = {
    operations: 0,
    refusedStamps: 0,
    refusedCloses: 0,
    skipsAllowed: 0,
    forwards: 0,
  };
  const log: string[] = [];
  const fail = (message: string): never => {
    throw new Error(`seed=${seed}: ${message} after ${log.join(", ")}`);
  };
  const missing = (): boolean => {
    if (!armed) return false;
    const unconsumed = modules.map((_, index) => index).filter((index) => !armed!.consumed.has(index));
    return armed.skipSet
      ? unconsumed.some((index) => !armed!.skipSet!.has(index))
      : unconsumed.length > armed.skipCount;
  };
  const expectNotConsumed = (call: () => unknown, what: string): void => {
    try {
      call();
    } catch (error) {
      if (!(error instanceof AttnSpecNotConsumedError)) fail(`${what} threw ${error}`);
      return;
    }
    fail(`${what} passed, but the step was not consumed by every module that had to`);
  };
  const steps = randomInt(random, 4, 16);
  for (let step = 0; step < steps; step++) {
    const roll = random();
    const index = randomInt(random, 0, count - 1);
    summary.operations++;
    if (roll < 0.25) {
      const spec = GUARD_SPECS[randomInt(random, 0, GUARD_SPECS.length - 1)];
      let options: { allowSkip?: number | object[] } | undefined;
      let skipCount = 0, skipSet: Set<number> | null = null;
      if (count > 1 && random() < 0.6) {
        if (random() < 0.5) options = { allowSkip: skipCount = randomInt(random, 0, count - 1) };
        else {
          skipSet = new Set(modules.map((_, at) => at).filter(() => random() < 0.4).slice(0, count - 1));
          options = { allowSkip: [...skipSet].map((at) => modules[at]) };
        }
      }
      log.push(`stamp(${spec.numSlices}${options ? ", allowSkip" : ""})`);
      const open = armed !== null && armed.consumed.size < count;
      if (open) {
        expectNotConsumed(() => setAttnSpecOnAttention(model, spec, options), "stamping over an open step");
        summary.refusedStamps++;
      } else {
        setAttnSpecOnAttention(model, spec, options);
        stamps = modules.map(() => spec);
        armed = { consumed: new Set(), skipCount, skipSet };
      }
    } else if (roll < 0.6) {
      log.push(`magi(${index})`);
      const [out] = await magiAttentionForward(modules[index], q, q, q, null, {});
      const want = expected.get(stamps[index])!;
      const got = toFloat32(out);
      if (got.some((value, at) => value !== want[at])) {
        fail(`module ${index} ran another mask than its stamp`);
      }
      summary.forwards++;
      if (armed && stamps[index] !== null) armed.consumed.add(index);
    } else if (roll < 0.7) {
      log.push(`failingMagi(${index})`);
      await magiAttentionForward(modules[index], badQ, q, q, null, {}).then(
        () => fail("a bf16/float32 magi call succeeded"),
        (error) => (error instanceof MagiAttnInputError ? undefined : fail(`failing magi threw ${error}`)),
      );
    } else if (roll < 0.8) {
      log.push(`sdpa(${index})`);
      await sdpaAttentionForward(modules[index], q, q, q, null, {});
    } else if (roll < 0.93) {
      log.push("close");
      if (missing()) {
        expectNotConsumed(() => closeAttnSpecStep(model), "closing");
        summary.refusedCloses++;
      } else {
        if (armed && armed.consumed.size < count) summary.skipsAllowed++;
        closeAttnSpecStep(model);
        if (armed) stamps = modules.map(() => null);
        armed = null;
      }
    } else {
      log.push("reset");
      resetAttnSpecGuard(model);
      if (armed) stamps = modules.map(() => null);
      armed = null;
    }
    modules.forEach((module, at) => {
      const actual = (module as { _magiAttnSpec?: AttnMaskSpec | null })._magiAttnSpec ?? null;
      if (actual !== stamps[at]) fail(`module ${at} holds another stamp than the oracle's`);
    });
  }
  resetAttnSpecGuard(model);
  return summary;
}
