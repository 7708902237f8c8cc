/**
 * The pure parts of the benchmark harness: case generation, FLOP counting against brute-force area counts,
 * the semantic masks the peers rebuild against our slices cell by cell, the shared input hash against a
 * BigInt oracle, the timing loops on a simulated GPU, the SVG chart (parsed), the text tables, flags, and
 * one end-to-end `--dry-run`.
 */

import assert from "node:assert/strict";
import {
  allCases,
  bruteForceArea,
  countFlops,
  DEFAULT_MASK_PARAMS,
  describeMask,
  drawDocumentLengths,
  flexKeyOf,
  MASK_LABELS,
  type MaskDescription,
  maskVisibility,
  peerCaseJson,
  sampleRows,
  selectCases,
  specOfMask,
} from "../scripts/bench/cases.ts";
import {
  type BarChart,
  escapeXml,
  formatTable,
  niceAxis,
  renderBarChartSvg,
} from "../scripts/bench/chart.ts";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { bf16BitsToFloat32 } from "../lib/core/tensor.ts";
import { compileFlexKey } from "../lib/masks/flex_key.ts";
import type { FlexKey } from "../lib/core/types.ts";
import { SMALL_MASK_PARAMS } from "./support/fixtures.ts";
import { coverCounts, slicesOfKey } from "./support/mask_check.ts";
import { parseXml } from "./support/xml.ts";
import { parseBenchArgs } from "../scripts/bench/args.ts";
import {
  extractRows,
  hashBf16,
  INPUT_RECIPES,
  makeInputPools,
  randnBf16,
  scanBf16,
} from "../scripts/bench/inputs.ts";
import {
  type BenchReport,
  formatNotes,
  formatResultsTable,
  gpuSlug,
  magiEnvironment,
  resultsChart,
  resultsStem,
} from "../scripts/bench/report.ts";
import { SimulatedGpu } from "../scripts/bench/simulate.ts";
import { measureBatches, measureIssue, median } from "../scripts/bench/timing.ts";

/** The FFA cell rule (docs/semantics.md), cell by cell from a key's slices: independent of lib's dense mask. */
function keyVisibility(key: FlexKey): Uint8Array {
  return coverCounts(slicesOfKey(key), key.totalQ, key.totalK);
}

Deno.test("FLOP counting", async (t) => {
  await t.step("every mask family at small sizes: key area = brute-force count of the semantic mask", () => {
    for (const seqlen of [48, 64, 80]) {
      for (const label of MASK_LABELS) {
        const mask = describeMask(label, seqlen, SMALL_MASK_PARAMS);
        const key = compileFlexKey(specOfMask(mask, seqlen));
        const flops = countFlops(key, 3, 8);
        const expected = bruteForceArea(mask, seqlen);
        assert.equal(flops.area, expected, `${label} S=${seqlen}`);
        assert.equal(flops.fwd, 4 * expected * 3 * 8);
        assert.equal(flops.bwd, 2.5 * flops.fwd);
      }
    }
  });

  await t.step("the semantic masks (what the peers build) equal our slices cell by cell", () => {
    const extra: MaskDescription[] = [
      { kind: "varlen", seqlens: [5, 11, 1, 23], causal: false },
      { kind: "sliding_window", seqlens: [17, 23], left: 2, right: 3 },
      { kind: "sliding_window", seqlens: [40], left: -1, right: 4 },
      { kind: "sliding_window", seqlens: [40], left: 6, right: -1 },
      { kind: "prefix_tree", nodeLengths: [6, 3, 5, 4, 2], paths: [[0, 1, 3], [0, 1, 4], [0, 2]] },
    ];
    const seqlenOf = (mask: MaskDescription): number =>
      mask.kind === "varlen" || mask.kind === "sliding_window"
        ? mask.seqlens.reduce((a, b) => a + b, 0)
        : mask.kind === "prefix_tree"
        ? mask.nodeLengths.reduce((a, b) => a + b, 0)
        : 40;
    const masks = [...MASK_LABELS.map((label) => describeMask(label, 64, SMALL_MASK_PARAMS)), ...extra];
    for (const mask of masks) {
      const seqlen = seqlenOf(mask) || 64;
      const visible = maskVisibility(mask, seqlen);
      const cells = keyVisibility(compileFlexKey(specOfMask(mask, seqlen)));
      for (let i = 0; i < seqlen; i++) {
        for (let j = 0; j < seqlen; j++) {
          assert.equal(cells[i * seqlen + j], visible(i, j) ? 1 : 0, `${mask.kind} cell (${i}, ${j})`);
        }
      }
    }
  });

  await t.step("benchmark cases: closed-form areas for full and causal, consistent FLOPs for all", () => {
    for (const benchCase of allCases()) {
      const flops = countFlops(flexKeyOf(benchCase), benchCase.headsQ, benchCase.headDim);
      const s = benchCase.seqlen;
      if (benchCase.mask.kind === "full") assert.equal(flops.area, s * s);
      if (benchCase.mask.kind === "causal") assert.equal(flops.area, (s * (s + 1)) / 2);
      if (benchCase.maskLabel === "shortdocs") {
        const length = s / 64;
        assert.equal(flops.area, 64 * (length * (length + 1)) / 2);
      }
      assert.equal(flops.fwd, 4 * flops.area * benchCase.headsQ * benchCase.headDim);
      assert.ok(flops.area > 0 && flops.area <= s * s);
    }
  });

  await t.step("a key whose area disagrees with its slices is rejected", () => {
    const good = compileFlexKey(specOfMask({ kind: "causal" }, 10));
    const bad: FlexKey = { ...good, area: good.area + 1 };
    assert.throws(() => countFlops(bad, 1, 8), /differs from the sum of its slice areas/);
  });
});

Deno.test("case generation", async (t) => {
  await t.step("deterministic: two generations are identical", () => {
    assert.deepEqual(allCases(), allCases());
    assert.deepEqual(drawDocumentLengths(16384, 256, 4096, 99), drawDocumentLengths(16384, 256, 4096, 99));
    assert.notDeepEqual(
      drawDocumentLengths(16384, 256, 4096, 99),
      drawDocumentLengths(16384, 256, 4096, 100),
    );
  });

  await t.step("document lengths: in range, the last one trimmed, summing to the total", () => {
    for (const seed of [1, 2, 3, DEFAULT_MASK_PARAMS.docSeed]) {
      for (const total of [4096, 8192, 16384, 32768, 300]) {
        const lengths = drawDocumentLengths(total, 256, 4096, seed);
        assert.equal(lengths.reduce((a, b) => a + b, 0), total);
        lengths.slice(0, -1).forEach((length) => assert.ok(length >= 256 && length <= 4096, `${length}`));
        assert.ok(lengths.at(-1)! >= 1 && lengths.at(-1)! <= 4096);
      }
    }
    assert.throws(() => drawDocumentLengths(0, 1, 2, 0), MagiAttnInputError);
    assert.throws(() => drawDocumentLengths(10, 5, 2, 0), MagiAttnInputError);
  });

  await t.step("the case list of the benchmark issue", () => {
    const cases = allCases();
    const names = cases.map((item) => item.name);
    assert.equal(new Set(names).size, names.length, "names are unique");
    const main = cases.filter((item) => item.group === "main");
    assert.equal(main.length, 12);
    for (const item of main) {
      assert.deepEqual([item.headsQ, item.headsKv, item.headDim, item.dtype], [16, 16, 128, "bfloat16"]);
      assert.ok(item.seqlen === 8192 || item.seqlen === 16384);
    }
    const prefix = cases.find((item) => item.name === "prefix-16k")!.mask;
    assert.deepEqual(prefix, {
      kind: "prefix_tree",
      nodeLengths: [4096, ...new Array(8).fill(1536)],
      paths: [1, 2, 3, 4, 5, 6, 7, 8].map((branch) => [0, branch]),
    });
    assert.deepEqual(cases.find((item) => item.name === "swa1024-8k")!.mask, {
      kind: "sliding_window",
      seqlens: [8192],
      left: 1024,
      right: 0,
    });
    const shortDocs = cases.find((item) => item.name === "shortdocs-16k")!.mask;
    assert.ok(shortDocs.kind === "varlen" && shortDocs.seqlens.length === 64 && shortDocs.causal);
    const gqa = cases.find((item) => item.name === "causal-16k-gqa4")!;
    assert.deepEqual([gqa.headsQ, gqa.headsKv], [16, 4]);
    assert.equal(cases.find((item) => item.name === "varlen-16k-d64")!.headDim, 64);
    assert.ok(names.includes("causal-32k") && names.includes("varlen-4k"));
  });

  await t.step("selection: --quick, --cases (in the given order), unknown names", () => {
    const quick = selectCases({ quick: true });
    assert.deepEqual(quick.map((item) => item.name), MASK_LABELS.map((label) => `${label}-16k`));
    assert.deepEqual(
      selectCases({ names: ["varlen-4k", "full-8k"] }).map((item) => item.name),
      ["varlen-4k", "full-8k"],
    );
    assert.throws(
      () => selectCases({ names: ["causal-99k"] }),
      (error: unknown) =>
        error instanceof MagiAttnInputError && error.field === "--cases" && /causal-8k/.test(error.message),
    );
    assert.throws(() => selectCases({ quick: true, names: ["causal-8k"] }), MagiAttnInputError);
  });

  await t.step("peer JSON carries shape, area, FLOPs, the semantic mask and our slices", () => {
    const benchCase = allCases().find((item) => item.name === "prefix-8k")!;
    const key = flexKeyOf(benchCase);
    const flops = countFlops(key, benchCase.headsQ, benchCase.headDim);
    const json = JSON.parse(JSON.stringify(peerCaseJson(benchCase, key, flops)));
    assert.deepEqual([json.S, json.Hq, json.Hkv, json.D, json.area], [8192, 16, 16, 128, flops.area]);
    assert.deepEqual(json.mask.node_lengths, [4096, ...new Array(8).fill(512)]);
    assert.equal(json.mask.paths.length, 8);
    assert.equal(json.slices.types.length, key.attnTypeMap.length);
    assert.deepEqual(json.slices.q_ranges, [...key.qRanges]);
  });
});

/** (a·b) mod 2^32 with BigInt: an oracle for Math.imul-based hashing. */
function mul32(a: bigint, b: bigint): bigint {
  return (a * b) & 0xffffffffn;
}

Deno.test("shared input hash matches a BigInt oracle, never zero or non-finite", () => {
  for (const recipe of Object.values(INPUT_RECIPES)) {
    const bits = hashBf16(5000, recipe.seed, recipe.expLo, recipe.expHi);
    for (let index = 0; index < bits.length; index++) {
      let hash = mul32(BigInt(index + 1), 0x9e3779b1n) ^ BigInt(recipe.seed);
      hash ^= hash >> 16n;
      hash = mul32(hash, 0x85ebca6bn);
      hash ^= hash >> 13n;
      hash = mul32(hash, 0xc2b2ae35n);
      hash ^= hash >> 16n;
      const exponent = BigInt(recipe.expLo) +
        ((hash >> 7n) & 0xffffn) % BigInt(recipe.expHi - recipe.expLo + 1);
      const expected = Number(((hash >> 31n) << 15n) | (exponent << 7n) | (hash & 0x7fn));
      assert.equal(bits[index], expected, `element ${index}`);
    }
    const scan = scanBf16(bits);
    assert.deepEqual([scan.nonFinite, scan.zeros, scan.count], [0, 0, 5000]);
    // The prefix property the peers rely on: a shorter stream is a prefix of a longer one.
    assert.deepEqual(hashBf16(100, recipe.seed, recipe.expLo, recipe.expHi), bits.subarray(0, 100));
  }
  assert.notDeepEqual(hashBf16(64, 1, 120, 126), hashBf16(64, 2, 120, 126));
});

/** bf16 bits of a float64 value by an independent route: float32 bits through a DataView, nearest even. */
function bf16BitsOracle(value: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, value);
  const bits = BigInt(view.getUint32(0));
  return Number(((bits + 0x7fffn + ((bits >> 16n) & 1n)) >> 16n) & 0xffffn);
}

Deno.test("randn inputs: Box-Muller over the BigInt hash, standard normal, prefix property", () => {
  const fmix = (counter: number, seed: number): number => {
    let hash = mul32(BigInt(counter), 0x9e3779b1n) ^ BigInt(seed);
    hash ^= hash >> 16n;
    hash = mul32(hash, 0x85ebca6bn);
    hash ^= hash >> 13n;
    hash = mul32(hash, 0xc2b2ae35n);
    return Number(hash ^ (hash >> 16n));
  };
  for (const recipe of Object.values(INPUT_RECIPES)) {
    const bits = randnBf16(2001, recipe.seed);
    for (let index = 0; index < bits.length; index++) {
      const pair = index >> 1;
      const u1 = (fmix(2 * pair + 1, recipe.seed) + 1) / 2 ** 32,
        u2 = fmix(2 * pair + 2, recipe.seed) / 2 ** 32;
      const radius = Math.sqrt(-2 * Math.log(u1));
      const value = radius * (index % 2 === 0 ? Math.cos(2 * Math.PI * u2) : Math.sin(2 * Math.PI * u2));
      assert.equal(bits[index], bf16BitsOracle(value), `element ${index}`);
    }
    assert.deepEqual(randnBf16(100, recipe.seed), bits.subarray(0, 100));
  }
  const sample = Array.from(randnBf16(200_000, 7), (bits) => bf16BitsToFloat32(bits));
  const mean = sample.reduce((sum, value) => sum + value, 0) / sample.length;
  const variance = sample.reduce((sum, value) => sum + (value - mean) ** 2, 0) / sample.length;
  assert.ok(Math.abs(mean) < 0.01, `mean ${mean}`);
  assert.ok(Math.abs(variance - 1) < 0.02, `variance ${variance}`);
  const within1 = sample.filter((value) => Math.abs(value) <= 1).length / sample.length;
  assert.ok(Math.abs(within1 - 0.6827) < 0.01, `P(|x| ≤ 1) = ${within1}`);
  const scan = scanBf16(randnBf16(200_000, 7));
  assert.deepEqual([scan.nonFinite, scan.zeros], [0, 0]);
  const small = [{ seqlen: 16, headsQ: 2, headsKv: 1, headDim: 8 }];
  assert.deepEqual(makeInputPools(small).q, randnBf16(256, INPUT_RECIPES.q.seed));
  assert.deepEqual(
    makeInputPools(small, "hashed").v,
    hashBf16(256, INPUT_RECIPES.v.seed, INPUT_RECIPES.v.expLo, INPUT_RECIPES.v.expHi),
  );
});

Deno.test("sampled rows and row extraction", () => {
  assert.deepEqual(sampleRows(8192), [0, 1170, 2340, 3510, 4681, 5851, 7021, 8191]);
  assert.deepEqual(sampleRows(5), [0, 1, 2, 3, 4]);
  const bits = Uint16Array.from({ length: 4 * 2 * 3 }, (_, index) => index);
  assert.deepEqual(extractRows(bits, 2, 3, [1, 3]), [6, 7, 8, 9, 10, 11, 18, 19, 20, 21, 22, 23]);
  assert.throws(() => extractRows(bits, 2, 3, [4]), /outside/);
  const scan = scanBf16(Uint16Array.from([0x0000, 0x8000, 0x7f80, 0xffc0, 0x3f80, 0x0001]));
  assert.deepEqual(scan, { nonFinite: 2, zeros: 2, count: 6 });
});

Deno.test("timing loops on a simulated GPU", async (t) => {
  await t.step("GPU-bound: the median per-call time is the kernel time", async () => {
    const gpu = new SimulatedGpu(0.05);
    const timing = await measureBatches(() => gpu.launch(2, 0.01), () => gpu.sync(), gpu.clock);
    // Each batch of n calls costs n·2 ms plus one sync (0.05 ms) plus the first launch's host time.
    assert.ok(Math.abs(timing.ms - 2) < 0.05, `${timing.ms}`);
    assert.equal(timing.batch, 5); // ceil(10 ms / (2 + 0.01 + 0.05) ms)
    assert.ok(timing.batches >= 5 && timing.batches <= 20);
  });

  await t.step("host-bound: the per-call time is the host cost", async () => {
    const gpu = new SimulatedGpu(0.05);
    const timing = await measureBatches(() => gpu.launch(0.001, 0.02), () => gpu.sync(), gpu.clock);
    assert.equal(timing.batch, 64);
    assert.ok(Math.abs(timing.ms - 0.02) < 0.002, `${timing.ms}`);
  });

  await t.step("stops at 20 batches, or at 0.5 s once 5 batches are done", async () => {
    const fast = new SimulatedGpu(0);
    assert.equal(
      (await measureBatches(() => fast.launch(0.1, 0), () => fast.sync(), fast.clock)).batches,
      20,
    );
    const slow = new SimulatedGpu(0);
    assert.equal((await measureBatches(() => slow.launch(300, 0), () => slow.sync(), slow.clock)).batches, 5);
  });

  await t.step("issue vs wall time per call", async () => {
    let rounds = 0;
    const gpu = new SimulatedGpu(0.03);
    const timing = await measureIssue(
      () => gpu.launch(0.005, 0.008),
      () => gpu.sync(),
      gpu.clock,
      1000,
      5,
      () => {
        rounds++;
      },
    );
    assert.ok(Math.abs(timing.issueUs - 8) < 1e-6, `${timing.issueUs}`);
    assert.ok(timing.wallUs > 8 && timing.wallUs < 8.1, `${timing.wallUs}`);
    assert.equal(rounds, 6, "afterRound runs after the warm-up and after every round");
    const gpuBound = new SimulatedGpu(0.03);
    const bound = await measureIssue(
      () => gpuBound.launch(0.02, 0.002),
      () => gpuBound.sync(),
      gpuBound.clock,
    );
    assert.ok(Math.abs(bound.wallUs - 20) < 0.1 && Math.abs(bound.issueUs - 2) < 1e-6);
  });

  await t.step("median", () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.throws(() => median([]));
  });
});

function sampleReport(): BenchReport {
  const peerNumbers = (fwd: number, bwd: number) => ({
    ms_fwd: 1,
    ms_bwd: 2,
    tflops_fwd: fwd,
    tflops_bwd: bwd,
  });
  return {
    schema: "magi-attn-bench/1",
    date: "2026-01-02T03:04:05.000Z",
    dryRun: false,
    args: [],
    gpu: "NVIDIA H100 80GB HBM3 (sm_90)",
    deno: { deno: "2.9.6", v8: "x", typescript: "y" },
    torch: { torch_version: "2.11.0" },
    ceilings: { matmul_bf16_8192_tflops: 800, copy_gbps: 3000 },
    hostOverhead: null,
    cases: [
      {
        name: "causal-16k",
        group: "main",
        maskKind: "causal",
        S: 16384,
        Hq: 16,
        Hkv: 16,
        D: 128,
        slices: 1,
        area: 1,
        flopsFwd: 1,
        flopsBwd: 2.5,
        ours: { msFwd: 1, msBwd: 2, tflopsFwd: 512, tflopsBwd: 300 },
        peers: {
          cudnn: peerNumbers(400, 250),
          flash: { error: "RuntimeError: No available kernel <&>" },
          flex: peerNumbers(256, 150),
        },
        checks: { ours_vs_flex_out_rel_err: 0.2, ours_vs_flex_dq_rel_err: 0.01 },
      },
      {
        name: "varlen-<16k>",
        group: "main",
        maskKind: "varlen",
        S: 16384,
        Hq: 16,
        Hkv: 16,
        D: 128,
        slices: 9,
        area: 1,
        flopsFwd: 1,
        flopsBwd: 2.5,
        ours: { error: "MagiFfaError: boom" },
        peers: { flex: peerNumbers(100, 60) },
        checks: {},
      },
    ],
  };
}

Deno.test("SVG chart is well-formed and shows every bar, marker, axis label and legend entry", () => {
  const report = sampleReport();
  const svg = renderBarChartSvg(resultsChart(report));
  const { root, elements } = parseXml(svg);
  assert.equal(root, "svg");
  const svgElement = elements[0];
  assert.equal(svgElement.attributes.xmlns, "http://www.w3.org/2000/svg");
  assert.ok(Number(svgElement.attributes.width) > 0 && Number(svgElement.attributes.height) > 0);
  // Bars are the rects with a <title> child ("<case> <series>: <value>"); legend swatches have none.
  const bars = elements.flatMap((element, index) =>
    element.name === "rect" && elements[index + 1]?.name === "title"
      ? [{ attributes: element.attributes, text: elements[index + 1].text }]
      : []
  );
  // Panels × numeric values: causal-16k has ours, cuDNN, Flex (flash failed); varlen has Flex only.
  assert.equal(bars.length, 2 * 4);
  for (const bar of bars) {
    assert.ok(Number(bar.attributes.height) >= 0 && Number.isFinite(Number(bar.attributes.y)));
  }
  const texts = elements.filter((element) => element.name === "text").map((element) => element.text);
  for (
    const expected of ["ours (magi-attn)", "cuDNN SDPA", "flash SDPA", "FlexAttention", "TFLOP/s", "case"]
  ) {
    assert.ok(texts.includes(expected), `missing text ${expected}`);
  }
  assert.ok(texts.includes(escapeXml("varlen-<16k>")), "labels are escaped");
  assert.equal(texts.filter((text) => text === "err").length, 2 * 2, "ours on varlen and flash on causal");
  assert.ok(texts.some((text) => text.startsWith("bf16 matmul 800")), "ceiling line label");
  // Bar heights are proportional to the values: 512 vs 256 on the same axis.
  const heightOf = (prefix: string): number =>
    Number(bars.find((bar) => bar.text.startsWith(prefix))!.attributes.height);
  assert.ok(
    Math.abs(heightOf("causal-16k ours (magi-attn): 512") / heightOf("causal-16k FlexAttention: 256") - 2) <
      0.01,
  );
});

Deno.test("chart helpers", () => {
  for (const value of [0.3, 1, 7, 99, 512, 989, 1234]) {
    const { max, step } = niceAxis(value);
    assert.ok(max >= value && max < value * 2.6, `${value} → ${max}`);
    const mantissa = step / 10 ** Math.floor(Math.log10(step));
    assert.ok([1, 2, 2.5, 5].some((candidate) => Math.abs(candidate - mantissa) < 1e-9), `step ${step}`);
  }
  assert.deepEqual(niceAxis(0), { max: 1, step: 0.2 });
  const chart: BarChart = {
    title: "t",
    yLabel: "y",
    xLabel: "x",
    series: [{ name: "a", color: "red" }],
    panels: [{ title: "p", groups: [] }],
  };
  parseXml(renderBarChartSvg(chart)); // an empty panel still makes a valid document
});

Deno.test("text tables", async (t) => {
  await t.step("formatTable aligns columns: left first column, right-aligned numbers", () => {
    const text = formatTable(["case", "value"], [["a", "1"], ["longer-name", "12345"]]);
    const lines = text.split("\n");
    assert.deepEqual(lines, [
      "case         value",
      "-----------  -----",
      "a                1",
      "longer-name  12345",
    ]);
    assert.throws(() => formatTable(["a", "b"], [["only one"]]), /row 0 has 1 cells/);
  });

  await t.step("results table: TFLOP/s, ratios, errors and not-run cells", () => {
    const report = sampleReport();
    const lines = formatResultsTable(report).split("\n");
    const header = lines[0].split(/\s{2,}/);
    assert.deepEqual(header.slice(0, 3), ["case", "ours fwd", "ours bwd"]);
    const causal = lines[2].split(/\s+/);
    assert.deepEqual(causal, [
      "causal-16k",
      "512",
      "300",
      "400",
      "250",
      "err",
      "err",
      "256",
      "150",
      "1.28x",
      "1.20x",
      "2.00x",
      "2.00x",
      "64%",
    ]);
    const varlen = lines[3].split(/\s+/);
    assert.deepEqual(varlen, [
      "varlen-<16k>",
      "err",
      "err",
      "-",
      "-",
      "-",
      "-",
      "100",
      "60",
      "-",
      "-",
      "-",
      "-",
      "-",
    ]);
    const notes = formatNotes(report).join("\n");
    assert.match(notes, /bf16 matmul 8192\^3 800 TFLOP\/s/);
    assert.match(notes, /varlen-<16k> ours: FAILED MagiFfaError: boom/);
    assert.match(notes, /causal-16k flash: FAILED RuntimeError/);
    assert.match(notes, /CHECK ours vs peers relative error: flex_out 2\.0e-1 \(> 0\.03\)/);
    assert.doesNotMatch(notes, /flex_dq/);
  });
});

Deno.test("flags and file names", () => {
  assert.deepEqual(parseBenchArgs([]), {
    quick: false,
    cases: [],
    skipPeers: false,
    peers: ["cudnn", "flash", "flex"],
    dryRun: false,
    inputs: "randn",
    help: false,
  });
  const parsed = parseBenchArgs([
    "--quick",
    "--cases=a,b",
    "--skip-peers",
    "--dry-run",
    "--out-dir",
    "/x",
    "--peers",
    "flex",
  ]);
  assert.deepEqual(
    [parsed.quick, parsed.cases, parsed.skipPeers, parsed.dryRun, parsed.outDir, parsed.peers],
    [true, ["a", "b"], true, true, "/x", ["flex"]],
  );
  assert.throws(
    () => parseBenchArgs(["--fast"]),
    (error: unknown) => error instanceof MagiAttnInputError && error.field === "--fast",
  );
  assert.throws(() => parseBenchArgs(["--peers", "xformers"]), /unknown peer/);
  assert.throws(() => parseBenchArgs(["--out-dir"]), /has no value/);
  assert.equal(parseBenchArgs(["--inputs", "hashed"]).inputs, "hashed");
  assert.equal(parseBenchArgs(["--inputs=randn"]).inputs, "randn");
  assert.throws(
    () => parseBenchArgs(["--inputs", "uniform"]),
    (error: unknown) => error instanceof MagiAttnInputError && error.field === "--inputs",
  );
  assert.equal(gpuSlug("NVIDIA H100 80GB HBM3 (sm_90)"), "h100-80gb-hbm3-sm-90");
  assert.equal(gpuSlug("NVIDIA H200"), "h200");
  assert.equal(gpuSlug("!!"), "unknown-gpu");
  assert.equal(
    resultsStem("NVIDIA H200", new Date("2026-03-04T05:06:07Z"), true),
    "results-h200-2026-03-04-0506-quick",
  );
});

Deno.test("magiEnvironment keeps only MAGI_FFA_* variables, sorted", () => {
  assert.deepEqual(
    Object.entries(
      magiEnvironment({ PATH: "/bin", MAGI_FFA_FWD_KERNEL: "sm80", MAGI_FFA_BWD_KERNEL: "sm90" }),
    ),
    [["MAGI_FFA_BWD_KERNEL", "sm90"], ["MAGI_FFA_FWD_KERNEL", "sm80"]],
  );
  assert.deepEqual(magiEnvironment({ HOME: "/root" }), {});
});
