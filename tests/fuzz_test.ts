/**
 * Fuzzing: 10,000 random specs from every builder (degenerate lengths 0 and 1 included) compile to keys
 * whose dense mask equals an oracle written from each builder's definition (tests/fuzz_cases.ts), and a
 * few hundred random problems run the CPU reference forward and backward against the float64 dense oracle.
 *
 * The seed base is `MAGI_FUZZ_SEED` when set (printed), else a fixed value; every assertion message starts
 * with the failing case's seed.
 */

import assert from "node:assert/strict";
import { BUILDERS, checkSpecCase, randomSpecCase } from "./fuzz_cases.ts";
import { checkReferenceCase, randomReferenceCase } from "./fuzz_reference_cases.ts";
import { checkGuardCase } from "./fuzz_guard_cases.ts";
import { caseSeed, fuzzSeedBase } from "./support/fuzz.ts";

const SPEC_CASES = 10_000;
const REFERENCE_CASES = 400;

const { seed: base, fromEnv } = fuzzSeedBase();
console.log(
  `fuzz seed base ${base} (${fromEnv ? "from MAGI_FUZZ_SEED" : "fixed; set MAGI_FUZZ_SEED to explore"})`,
);

Deno.test(`fuzz: ${SPEC_CASES} random specs compile to keys equal to their definitions (seed base ${base})`, () => {
  const byBuilder = new Map<string, number>(BUILDERS.map((name) => [name, 0]));
  let overlaps = 0, degenerate = 0;
  for (let index = 0; index < SPEC_CASES; index++) {
    const specCase = randomSpecCase(caseSeed(base, index));
    byBuilder.set(specCase.builder, byBuilder.get(specCase.builder)! + 1);
    if (specCase.overlap) overlaps++;
    if (specCase.totalQ <= 1 || specCase.totalK <= 1) degenerate++;
    checkSpecCase(specCase);
  }
  // The generator really covers the space: every builder, rejected overlaps and 0/1-token masks.
  for (const [name, count] of byBuilder) {
    assert.ok(count >= SPEC_CASES / 20, `builder ${name}: ${count} cases`);
  }
  assert.ok(overlaps >= 20, `only ${overlaps} overlapping fromRanges cases`);
  assert.ok(degenerate >= SPEC_CASES / 20, `only ${degenerate} cases with 0 or 1 tokens`);
});

Deno.test(`fuzz: ${REFERENCE_CASES} random problems, CPU reference vs float64 oracle (seed base ${base})`, () => {
  const dtypes = new Set<string>();
  let grouped = 0, softcapped = 0, emptyTotals = 0;
  for (let index = 0; index < REFERENCE_CASES; index++) {
    const seed = caseSeed(base ^ 0x27d4eb2f, index);
    const problem = checkReferenceCase(seed);
    dtypes.add(problem.dtype);
    if (problem.headsKV < problem.headsQ) grouped++;
    if (problem.softcap > 0) softcapped++;
    if (problem.specCase.totalQ === 0 || problem.specCase.totalK === 0) emptyTotals++;
  }
  assert.equal(dtypes.size, 3, "float32, float16 and bfloat16 all drawn");
  assert.ok(
    grouped >= REFERENCE_CASES / 5 && softcapped >= REFERENCE_CASES / 5,
    `${grouped} GQA, ${softcapped} softcap`,
  );
  assert.ok(emptyTotals > 0, "some problems have no query or no key tokens");
});

Deno.test("fuzz: a case is a pure function of its seed (failures replay)", () => {
  for (const seed of [0, 1, 2 ** 31, caseSeed(base, 17)]) {
    const first = randomSpecCase(seed), second = randomSpecCase(seed);
    assert.equal(first.description, second.description, `seed=${seed}`);
    assert.ok(first.build().equals(second.build()), `seed=${seed}`);
    assert.deepEqual(
      { ...randomReferenceCase(seed), specCase: undefined },
      { ...randomReferenceCase(seed), specCase: undefined },
      `seed=${seed}`,
    );
  }
});

Deno.test(`fuzz: 300 random step sequences against an oracle of the guard's consumption rule (seed base ${base})`, async () => {
  const total = { operations: 0, refusedStamps: 0, refusedCloses: 0, skipsAllowed: 0, forwards: 0 };
  for (let index = 0; index < 300; index++) {
    const summary = await checkGuardCase(caseSeed(base ^ 0x5bd1e995, index));
    for (const name of Object.keys(total) as (keyof typeof total)[]) total[name] += summary[name];
  }
  // The sequences really reach every branch of the rule.
  assert.ok(total.refusedStamps >= 30 && total.refusedCloses >= 30, JSON.stringify(total));
  assert.ok(total.skipsAllowed >= 2 && total.forwards >= 500, JSON.stringify(total));
});
