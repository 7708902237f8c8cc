/**
 * maskToSvg: the drawn cells parsed back equal denseMask (and the slice types of a brute-force cell
 * rule) for small masks; downsampled blocks carry the brute-force visible counts and majority types;
 * million-token masks draw in well under a second; the output is well-formed standalone SVG.
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { compileFlexKey, denseMask } from "../lib/masks/flex_key.ts";
import { AttnMaskSpec } from "../lib/masks/spec.ts";
import { maskToSvg } from "../lib/masks/svg.ts";
import { seededRandom } from "../lib/core/tensor.ts";
import type { FlexKey } from "../lib/core/types.ts";
import { coveringTypes, slicesOfKey } from "./support/mask_check.ts";
import { parseXml as parseXmlCharacters } from "./support/xml.ts";

const TYPE_NAMES = ["full", "causal", "inv_causal", "bi_causal"];

interface XmlElement {
  name: string;
  attributes: Record<string, string>;
  /** Character data directly inside the element (entities left as written). */
  text: string;
}

const ENTITY = /^&(amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);/;

function checkCharacterData(text: string, where: string): void {
  for (let index = text.indexOf("&"); index >= 0; index = text.indexOf("&", index + 1)) {
    if (!ENTITY.test(text.slice(index))) throw new Error(`unescaped & in ${where}: ${text.slice(index, 20)}`);
  }
  if (text.includes("<") || text.includes(">")) throw new Error(`raw < or > in ${where}`);
}

/**
 * A tiny XML checker for the subset SVG output uses: elements, double-quoted attributes, character data.
 * Throws on unbalanced or crossed tags, duplicate attributes, unescaped `&`/`<`, several roots or text
 * outside the root. Returns the root's name and every element in document order.
 */
function parseXml(source: string): { root: string; elements: XmlElement[] } {
  const tag = /<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"]*")*)\s*(\/?)>/y;
  const attribute = /\s+([\w:.-]+)="([^"]*)"/g;
  const elements: XmlElement[] = [];
  const stack: XmlElement[] = [];
  let root: string | undefined;
  let position = 0;
  while (position < source.length) {
    const next = source.indexOf("<", position);
    const text = source.slice(position, next < 0 ? source.length : next);
    if (text.trim() !== "") {
      if (stack.length === 0) throw new Error(`text outside the root element: ${text.slice(0, 20)}`);
      checkCharacterData(text, `<${stack[stack.length - 1].name}>`);
      stack[stack.length - 1].text += text;
    }
    if (next < 0) break;
    tag.lastIndex = next;
    const match = tag.exec(source);
    if (!match) throw new Error(`malformed tag at ${next}: ${source.slice(next, next + 40)}`);
    const [whole, closing, name, attributeText, selfClosing] = match;
    if (closing) {
      const open = stack.pop();
      if (!open || open.name !== name) throw new Error(`</${name}> closes <${open?.name ?? "nothing"}>`);
    } else {
      if (stack.length === 0 && root !== undefined) throw new Error(`second root element <${name}>`);
      root ??= name;
      const element: XmlElement = { name, attributes: {}, text: "" };
      for (const [, key, value] of attributeText.matchAll(attribute)) {
        if (key in element.attributes) throw new Error(`duplicate attribute ${key} on <${name}>`);
        checkCharacterData(value, `${name}@${key}`);
        element.attributes[key] = value;
      }
      elements.push(element);
      if (!selfClosing) stack.push(element);
    }
    position = next + whole.length;
  }
  if (stack.length > 0) throw new Error(`unclosed <${stack[stack.length - 1].name}>`);
  if (root === undefined) throw new Error("no root element");
  return { root, elements };
}

/** A drawn block (or run of blocks) as parsed from its data attributes. */
interface Cell {
  qStart: number;
  qEnd: number;
  kStart: number;
  kEnd: number;
  type: string;
  visible: number;
  area: number;
  attributes: Record<string, string>;
}

function parseCells(svg: string): { cells: Cell[]; rows: number; cols: number; cellsGroup: XmlElement } {
  const { root, elements } = parseXml(svg);
  assert.equal(root, "svg");
  const cellsGroup = elements.find((element) => element.name === "g" && element.attributes.class === "cells");
  assert.ok(cellsGroup, 'a <g class="cells"> group');
  const cells = elements.filter((element) => element.name === "rect" && "data-type" in element.attributes)
    .map((element): Cell => {
      const a = element.attributes;
      return {
        qStart: Number(a["data-q"]),
        qEnd: Number(a["data-q-end"]),
        kStart: Number(a["data-k"]),
        kEnd: Number(a["data-k-end"]),
        type: a["data-type"],
        visible: Number(a["data-visible"]),
        area: Number(a["data-area"]),
        attributes: a,
      };
    });
  return {
    cells,
    rows: Number(cellsGroup.attributes["data-rows"]),
    cols: Number(cellsGroup.attributes["data-cols"]),
    cellsGroup,
  };
}

/** Type of the slice covering each cell (−1: none), from the FFA cell rule, cell by cell. */
function typeMapOf(key: FlexKey): Int8Array {
  return coveringTypes(slicesOfKey(key), key.totalQ, key.totalK);
}

/** Seeded random area-disjoint slices: rectangles on a coarse grid, each given a random type. */
function randomDisjointSpec(
  seed: number,
  totalQ: number,
  totalK: number,
  gridQ = 4,
  gridK = 4,
): AttnMaskSpec {
  const random = seededRandom(seed);
  const edges = (total: number, parts: number): number[] => {
    const cuts = new Set([0, total]);
    while (cuts.size < Math.min(parts + 1, total + 1)) cuts.add(Math.floor(random() * (total + 1)));
    return [...cuts].sort((a, b) => a - b);
  };
  const qEdges = edges(totalQ, gridQ), kEdges = edges(totalK, gridK);
  const qRanges: [number, number][] = [], kRanges: [number, number][] = [], maskTypes: number[] = [];
  for (let a = 0; a + 1 < qEdges.length; a++) {
    for (let b = 0; b + 1 < kEdges.length; b++) {
      if (random() < 0.35) continue;
      qRanges.push([qEdges[a], qEdges[a + 1]]);
      kRanges.push([kEdges[b], kEdges[b + 1]]);
      maskTypes.push(Math.floor(random() * 4));
    }
  }
  return AttnMaskSpec.fromRanges({ qRanges, kRanges, maskTypes, totalSeqlenQ: totalQ, totalSeqlenK: totalK });
}

const SMALL_SPECS: [string, AttnMaskSpec][] = [
  ["causal 9", AttnMaskSpec.causal(9)],
  ["full 5", AttnMaskSpec.full(5)],
  ["varlen [5, 0, 3, 1]", AttnMaskSpec.varlen([5, 0, 3, 1])],
  ["varlen full [4, 4]", AttnMaskSpec.varlen([4, 4], { causal: false })],
  ["sliding window (2, 3) over 10", AttnMaskSpec.slidingWindow(10, { left: 2, right: 3 })],
  ["sliding window (1, 0) over [6, 7]", AttnMaskSpec.slidingWindow([6, 7], { left: 1, right: 0 })],
  ["prefix tree", AttnMaskSpec.prefixTree([4, 2, 3], [[0, 1], [0, 2]])],
  ["prefix-LM 4 of 11", AttnMaskSpec.prefixLM(4, 11)],
  ["block-causal 3 of 10", AttnMaskSpec.blockCausal(3, 10)],
  [
    "fromRanges, Lq ≠ Lk per slice, all four types",
    AttnMaskSpec.fromRanges({
      qRanges: [[0, 4], [4, 9], [4, 9], [9, 12]],
      kRanges: [[0, 7], [0, 3], [3, 14], [7, 10]],
      maskTypes: ["causal", "full", "bi_causal", "inv_causal"],
      totalSeqlenQ: 12,
      totalSeqlenK: 14,
    }),
  ],
  ["one token", AttnMaskSpec.causal(1)],
];

Deno.test("small masks: the drawn cells are exactly denseMask, each in its slice's type", async (t) => {
  const cases: [string, AttnMaskSpec][] = [...SMALL_SPECS];
  for (let seed = 1; seed <= 30; seed++) {
    const random = seededRandom(seed * 977);
    const totalQ = 1 + Math.floor(random() * 20), totalK = 1 + Math.floor(random() * 20);
    cases.push([
      `random disjoint layout seed ${seed} (${totalQ}×${totalK})`,
      randomDisjointSpec(seed, totalQ, totalK),
    ]);
  }
  for (const [name, spec] of cases) {
    await t.step(name, () => {
      const key = compileFlexKey(spec);
      const svg = maskToSvg(spec, { cellSize: 10 });
      const { cells, rows, cols } = parseCells(svg);
      assert.deepEqual([rows, cols], [key.totalQ, key.totalK], "one block per token below maxCells");
      const expected = denseMask(key);
      const types = typeMapOf(key);
      const drawn = new Uint8Array(expected.length);
      for (const cell of cells) {
        assert.equal(cell.visible, cell.area, `${name}: one-token cells are all or nothing`);
        assert.equal(cell.area, (cell.qEnd - cell.qStart) * (cell.kEnd - cell.kStart));
        assert.equal(cell.qEnd - cell.qStart, 1, "one query token per row of cells");
        assert.equal(Number(cell.attributes.x), cell.kStart * 10, "x follows the key index");
        assert.equal(Number(cell.attributes.y), cell.qStart * 10, "y follows the query index");
        assert.equal(Number(cell.attributes.width), (cell.kEnd - cell.kStart) * 10);
        assert.equal(cell.attributes["fill-opacity"], undefined, "fully visible cells are opaque");
        for (let j = cell.kStart; j < cell.kEnd; j++) {
          const index = cell.qStart * key.totalK + j;
          assert.equal(drawn[index], 0, `${name}: cell (${cell.qStart}, ${j}) drawn twice`);
          drawn[index] = 1;
          assert.equal(cell.type, TYPE_NAMES[types[index]], `${name}: type of cell (${cell.qStart}, ${j})`);
        }
      }
      assert.deepEqual(drawn, expected, `${name}: drawn cells differ from denseMask`);
      assert.equal(maskToSvg(key, { cellSize: 10 }), svg, "the spec and its compiled key draw the same");
    });
  }
});

/** 2-D prefix sums of a dense mask (one per type), for brute-force rectangle counts. */
function typeCounter(key: FlexKey): (qs: number, qe: number, ks: number, ke: number) => number[] {
  const types = typeMapOf(key);
  const width = key.totalK + 1;
  const sums = [0, 1, 2, 3].map(() => new Float64Array((key.totalQ + 1) * width));
  for (let i = 0; i < key.totalQ; i++) {
    for (let j = 0; j < key.totalK; j++) {
      const type = types[i * key.totalK + j];
      for (let t = 0; t < 4; t++) {
        sums[t][(i + 1) * width + j + 1] = (type === t ? 1 : 0) + sums[t][i * width + j + 1] +
          sums[t][(i + 1) * width + j] - sums[t][i * width + j];
      }
    }
  }
  return (qs, qe, ks, ke) =>
    sums.map((sum) =>
      sum[qe * width + ke] - sum[qs * width + ke] - sum[qe * width + ks] + sum[qs * width + ks]
    );
}

Deno.test("downsampled: at most maxCells² blocks whose counts and majority types match brute force", async (t) => {
  const random = seededRandom(4242);
  const documents = Array.from({ length: 9 }, () => 20 + Math.floor(random() * 300));
  const cases: [string, AttnMaskSpec, number][] = [
    [
      "sliding window (37, 5) over 9 documents",
      AttnMaskSpec.slidingWindow(documents, { left: 37, right: 5 }),
      37,
    ],
    ["varlen of the same documents", AttnMaskSpec.varlen(documents), 64],
    [
      "prefix tree, 7 nodes",
      AttnMaskSpec.prefixTree([300, 120, 200, 90, 150, 60, 80], [[0, 1, 3], [0, 1, 4], [0, 2, 5], [0, 2, 6]]),
      50,
    ],
    ["prefix-LM 333 of 1500", AttnMaskSpec.prefixLM(333, 1500), 41],
    ["block-causal 97 of 1400", AttnMaskSpec.blockCausal(97, 1400), 64],
    ["random disjoint, non-square 900 × 1300, all types", randomDisjointSpec(7, 900, 1300, 6, 7), 33],
    ["causal 2000, maxCells 1", AttnMaskSpec.causal(2000), 1],
  ];
  for (const [name, spec, maxCells] of cases) {
    await t.step(`${name} (maxCells ${maxCells})`, () => {
      const key = compileFlexKey(spec);
      const { cells, rows, cols } = parseCells(maskToSvg(spec, { maxCells }));
      assert.equal(rows, Math.min(maxCells, key.totalQ));
      assert.equal(cols, Math.min(maxCells, key.totalK));
      assert.ok(cells.length <= maxCells * maxCells, `${cells.length} rects for maxCells ${maxCells}`);
      const rowEdges = new Set(
        Array.from({ length: rows + 1 }, (_, r) => Math.floor((r * key.totalQ) / rows)),
      );
      const colEdges = new Set(
        Array.from({ length: cols + 1 }, (_, c) => Math.floor((c * key.totalK) / cols)),
      );
      const count = typeCounter(key);
      let visibleSum = 0;
      for (const cell of cells) {
        const where = `${name}: block [${cell.qStart},${cell.qEnd})×[${cell.kStart},${cell.kEnd})`;
        for (const edge of [cell.qStart, cell.qEnd]) {
          assert.ok(rowEdges.has(edge), `${where}: row edge ${edge}`);
        }
        for (const edge of [cell.kStart, cell.kEnd]) {
          assert.ok(colEdges.has(edge), `${where}: column edge ${edge}`);
        }
        const byType = count(cell.qStart, cell.qEnd, cell.kStart, cell.kEnd);
        const visible = byType.reduce((sum, value) => sum + value, 0);
        assert.equal(cell.visible, visible, `${where}: visible cells`);
        assert.equal(cell.area, (cell.qEnd - cell.qStart) * (cell.kEnd - cell.kStart), `${where}: area`);
        const drawnType = TYPE_NAMES.indexOf(cell.type);
        assert.ok(
          byType.every((value) => value <= byType[drawnType]),
          `${where}: ${cell.type} is not the majority`,
        );
        const opacity = cell.attributes["fill-opacity"];
        if (visible === cell.area) assert.equal(opacity, undefined, where);
        else assert.ok(Math.abs(Number(opacity) - (0.15 + 0.85 * (visible / cell.area))) < 1e-3, where);
        visibleSum += visible;
      }
      // Drawn counts add up to the key's area, so every undrawn block is really empty.
      assert.equal(visibleSum, key.area, `${name}: drawn visible cells`);
    });
  }
});

Deno.test("million-token masks draw in well under a second, with exact totals", async (t) => {
  const total = 1 << 20;
  const random = seededRandom(99);
  const documents: number[] = [];
  for (let sum = 0; sum < total;) {
    const length = Math.min(total - sum, 1 + Math.floor(random() * 8000));
    documents.push(length);
    sum += length;
  }
  const cases: [string, AttnMaskSpec][] = [
    [`varlen, ${documents.length} documents`, AttnMaskSpec.varlen(documents)],
    ["causal", AttnMaskSpec.causal(total)],
    [
      "sliding window (4096, 0) per document",
      AttnMaskSpec.slidingWindow(documents, { left: 4096, right: 0 }),
    ],
  ];
  for (const [name, spec] of cases) {
    await t.step(name, () => {
      const key = compileFlexKey(spec); // compiled outside the timing: the cost measured is the drawing
      const start = performance.now();
      const svg = maskToSvg(key);
      const elapsed = performance.now() - start;
      assert.ok(elapsed < 1000, `${name}: ${elapsed.toFixed(0)} ms`);
      const { cells, rows, cols } = parseCells(svg);
      assert.deepEqual([rows, cols], [256, 256]);
      assert.ok(cells.length <= 256 * 256);
      assert.equal(cells.reduce((sum, cell) => sum + cell.visible, 0), key.area, `${name}: visible total`);
      assert.equal(cells.reduce((sum, cell) => sum + cell.area, 0) <= total * total, true);
    });
  }
});

Deno.test("item 15: control characters and lone surrogates in a title leave the SVG well-formed (main wrote them raw)", () => {
  const title = "bell\u0007 nul\u0000 esc\u001b tab\t lone\ud800 pair\ud83d\ude00 end\uffff";
  const svg = maskToSvg(AttnMaskSpec.causal(4), { title });
  const { elements } = parseXmlCharacters(svg); // asserts every character is one XML 1.0 allows
  const shown = elements.find((element) => element.name === "title")?.text;
  assert.equal(shown, "bell\ufffd nul\ufffd esc\ufffd tab\t lone\ufffd pair\ud83d\ude00 end\ufffd");
  // The checker itself catches what main wrote.
  assert.throws(() => parseXmlCharacters(`<svg xmlns="x"><title>a\u0007</title></svg>`), /U\+0007/);
});

Deno.test("well-formed standalone SVG: xmlns, size, escaped title, legend, ticks", () => {
  const title = `mask <script>alert("x")</script> & 'quotes'`;
  const svg = maskToSvg(AttnMaskSpec.slidingWindow(12, { left: 3, right: 1 }), { title });
  const { root, elements } = parseXml(svg);
  assert.equal(root, "svg");
  const svgElement = elements[0];
  assert.equal(svgElement.attributes.xmlns, "http://www.w3.org/2000/svg");
  assert.ok(Number(svgElement.attributes.width) > 0 && Number(svgElement.attributes.height) > 0);
  assert.equal(
    svgElement.attributes.viewBox,
    `0 0 ${svgElement.attributes.width} ${svgElement.attributes.height}`,
  );
  assert.ok(!svg.includes("<script"), "markup in the title is escaped");
  const escaped = "mask &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &apos;quotes&apos;";
  assert.equal(elements.find((element) => element.name === "title")?.text, escaped);
  const texts = elements.filter((element) => element.name === "text").map((element) => element.text);
  assert.ok(texts.includes(escaped), "the heading shows the escaped title");
  for (const name of TYPE_NAMES) {
    assert.ok(texts.some((text) => text.startsWith(`${name} (`)), `legend: ${name}`);
  }
  assert.ok(elements.some((element) => element.attributes["data-legend"] === "bi_causal"));
  for (let token = 0; token < 12; token++) assert.ok(texts.includes(String(token)), `tick label ${token}`);
  assert.equal(elements.filter((element) => element.attributes["data-slice"] !== undefined).length, 3);

  // The checker itself rejects what it should.
  for (const bad of ["<svg><g></svg>", "<svg>a & b</svg>", "<svg/><svg/>", `<svg a="1" a="2"/>`, "<svg>"]) {
    assert.throws(() => parseXml(bad), Error, bad);
  }
});

Deno.test("edge cases: empty masks, huge tick labels, large masks skip outlines", () => {
  for (const spec of [AttnMaskSpec.causal(0), AttnMaskSpec.varlen([0, 0]), AttnMaskSpec.full(3)]) {
    const { cells, rows } = parseCells(maskToSvg(spec));
    assert.equal(rows, spec.totalSeqlenQ);
    assert.equal(cells.length, spec.totalSeqlenQ, "one merged run per row of a full mask; none when empty");
  }
  const { elements } = parseXml(maskToSvg(AttnMaskSpec.causal(3_000_000)));
  const texts = elements.filter((element) => element.name === "text").map((element) => element.text);
  assert.ok(texts.includes("2M") && texts.includes("3M"), `tick labels ${texts.join(" ")}`);
  const many = AttnMaskSpec.varlen(new Array(300).fill(4));
  const drawn = maskToSvg(many);
  assert.ok(!drawn.includes("data-slice="), "300 slices: outlines omitted");
  assert.ok(drawn.includes("slice outlines omitted"));
});

Deno.test("bad input: MagiAttnInputError naming the field; overlapping specs are refused", () => {
  const spec = AttnMaskSpec.causal(4);
  const cases: [string, () => unknown][] = [
    ["options.maxCells", () => maskToSvg(spec, { maxCells: 0 })],
    ["options.maxCells", () => maskToSvg(spec, { maxCells: 2.5 })],
    ["options.maxCells", () => maskToSvg(spec, { maxCells: 5000 })],
    ["options.cellSize", () => maskToSvg(spec, { cellSize: -1 })],
    ["options.cellSize", () => maskToSvg(spec, { cellSize: NaN })],
    ["options.title", () => maskToSvg(spec, { title: 5 as unknown as string })],
    ["options", () => maskToSvg(spec, null as unknown as object)],
    ["specOrKey", () => maskToSvg(null as unknown as AttnMaskSpec)],
    [
      "slices 0 and 1",
      () =>
        maskToSvg(
          AttnMaskSpec.fromRanges({
            qRanges: [[0, 4], [2, 4]],
            kRanges: [[0, 4], [0, 2]],
            maskTypes: [0, 0],
          }),
        ),
    ],
  ];
  for (const [field, call] of cases) {
    assert.throws(call, (error: unknown) => {
      assert.ok(error instanceof MagiAttnInputError, String(error));
      assert.equal(error.field, field);
      assert.match(error.message, /Fix: /);
      return true;
    });
  }
});
