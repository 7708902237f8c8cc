/**
 * Pictures of attention masks: {@linkcode maskToSvg} draws a spec or flex key as a standalone SVG image,
 * query tokens top to bottom, key tokens left to right, each visible cell coloured by the type of the
 * slice that covers it.
 *
 * Long sequences are downsampled to at most `maxCells` blocks per axis. A block's numbers are computed per
 * slice in closed form (a slice's visible cells in a block are a sum of clipped linear row lengths), so the
 * cost is O(blocks touched per slice), never O(totalQ × totalK): a million-token mask draws in milliseconds.
 * @module
 */

import { describeValue, MagiAttnInputError } from "../core/errors.ts";
import { compileFlexKey, isFlexKey, toFlexKey } from "./flex_key.ts";
import { AttnMaskSpec, checkAttnMaskSpec } from "./spec.ts";
import { strictParser, z } from "../core/schema.ts";
import { type FlexKey, MASK_TYPE_NAMES } from "../core/types.ts";

/** Options of {@linkcode maskToSvg}. */
export interface MaskSvgOptions {
  /** Most blocks drawn per axis; longer axes are downsampled (1–4096, default 256). */
  maxCells?: number;
  /** Heading drawn above the mask (escaped); default none. The SVG `<title>` falls back to a summary. */
  title?: string;
  /** Side of one drawn block in pixels (> 0); default: fits the plot in about 512 px, at most 24. */
  cellSize?: number;
}

/** Fill colour of each {@linkcode AttnType}, in order (colour-blind-safe Tableau hues). */
const TYPE_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#b279a2"] as const;
const DEFAULT_MAX_CELLS = 256;
const MAX_MAX_CELLS = 4096;
/** Beyond any diagonal j − i of int32 token indices: stands for "no bound on this side". */
const UNBOUNDED = 2 ** 33;
/** Slice outlines are drawn only for keys with at most this many slices (more would be clutter). */
const MAX_OUTLINED_SLICES = 256;
/** Cell grid lines are drawn when every block is one token and the grid is at most this large. */
const MAX_GRID_LINES = 64;

/**
 * Characters XML 1.0 does not allow anywhere, not even as character references: C0 controls other than
 * tab, line feed and carriage return, unpaired surrogates, and U+FFFE/U+FFFF.
 */
const NOT_XML_CHARACTERS =
  // deno-lint-ignore no-control-regex
  /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * Escapes text for SVG character data and attribute values; characters XML cannot hold become U+FFFD
 * (the replacement character), so the document stays well-formed whatever the text.
 */
function escapeXml(text: string): string {
  return text.replace(NOT_XML_CHARACTERS, "\uFFFD").replace(/&/g, "&amp;").replace(/</g, "&lt;")
    .replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&apos;");
}

/** A pixel coordinate with at most two decimals. */
function px(value: number): string {
  return String(Math.round(value * 100) / 100);
}

/** Token counts in tick labels: 900, 12.3k, 200k, 1.05M. */
function formatTokens(value: number): string {
  if (value < 10000) return String(value);
  if (value < 1e6) {
    return value % 1000 === 0 ? `${value / 1000}k` : `${Number((value / 1000).toPrecision(3))}k`;
  }
  return value % 1e6 === 0 ? `${value / 1e6}M` : `${Number((value / 1e6).toPrecision(3))}M`;
}

/** Smallest 1, 2 or 5 times a power of ten that is ≥ `rough` (and ≥ 1). */
function niceStep(rough: number): number {
  if (!(rough > 1)) return 1;
  const power = 10 ** Math.floor(Math.log10(rough));
  for (const factor of [1, 2, 5, 10]) if (factor * power >= rough) return factor * power;
  return 10 * power;
}

/**
 * Σ_{t=0}^{count−1} max(0, first + slope·t) for slope in {−1, 0, 1}: the cells of `count` consecutive rows
 * whose visible lengths change linearly, starting at `first` (kept small: a block's width).
 */
function sumPositive(first: number, slope: number, count: number): number {
  if (count <= 0) return 0;
  if (slope === 0) return first > 0 ? first * count : 0;
  if (slope > 0) {
    const skip = Math.max(0, 1 - first); // rows before the length turns positive
    const n = count - skip;
    if (n <= 0) return 0;
    const start = first + skip;
    return n * start + (n * (n - 1)) / 2;
  }
  const n = Math.min(count, first); // rows while the length stays positive
  if (n <= 0) return 0;
  return n * first - (n * (n - 1)) / 2;
}

/**
 * Visible cells of rows [rowStart, rowEnd) and columns [columnStart, columnEnd) of a slice whose row i sees
 * keys j with `i + lowDiagonal ≤ j ≤ i + highDiagonal`. Row i's visible length is
 * `min(columnEnd, i + highDiagonal + 1) − max(columnStart, i + lowDiagonal)`: linear with slope 1, 0 or −1
 * between two breakpoints, so the sum splits into at most three arithmetic series.
 */
function visibleCells(
  rowStart: number,
  rowEnd: number,
  columnStart: number,
  columnEnd: number,
  lowDiagonal: number,
  highDiagonal: number,
): number {
  if (rowStart >= rowEnd || columnStart >= columnEnd) return 0;
  // The upper end stops growing at row columnEnd − highDiagonal − 1; the lower end starts growing at
  // row columnStart − lowDiagonal.
  const upperFlat = columnEnd - highDiagonal - 1;
  const lowerMoving = columnStart - lowDiagonal;
  const cuts = [rowStart, rowEnd];
  for (const cut of [upperFlat, lowerMoving]) if (cut > rowStart && cut < rowEnd) cuts.push(cut);
  cuts.sort((a, b) => a - b);
  let total = 0;
  for (let piece = 0; piece + 1 < cuts.length; piece++) {
    const start = cuts[piece], end = cuts[piece + 1];
    if (start >= end) continue;
    const upperGrows = start < upperFlat, lowerGrows = start >= lowerMoving;
    const upper = upperGrows ? start + highDiagonal + 1 : columnEnd;
    const lower = lowerGrows ? start + lowDiagonal : columnStart;
    total += sumPositive(upper - lower, (upperGrows ? 1 : 0) - (lowerGrows ? 1 : 0), end - start);
  }
  return total;
}

/** Splits `total` tokens into `blocks` near-equal blocks: edge(b) = floor(b · total / blocks). */
class Axis {
  constructor(readonly total: number, readonly blocks: number) {}

  /** First token of block `block` (`edge(blocks)` = total). */
  edge(block: number): number {
    return Math.floor((block * this.total) / this.blocks);
  }

  /** The block holding `token`: the largest b with edge(b) ≤ token. */
  blockOf(token: number): number {
    return Math.floor(((token + 1) * this.blocks + this.total - 1) / this.total) - 1;
  }
}

/** Per block, the visible cells of each type. */
interface BlockCounts {
  rows: Axis;
  columns: Axis;
  /** `byType[type][row * columns + column]`. */
  byType: Float64Array[];
}

/** Accumulates every slice's visible cells into the blocks it touches. */
function countBlocks(key: FlexKey, rows: Axis, columns: Axis): BlockCounts {
  const blockCount = rows.blocks * columns.blocks;
  const byType = MASK_TYPE_NAMES.map(() => new Float64Array(blockCount));
  if (blockCount === 0) return { rows, columns, byType };
  for (let slice = 0; slice < key.attnTypeMap.length; slice++) {
    const qs = key.qRanges[2 * slice], qe = key.qRanges[2 * slice + 1];
    const ks = key.kRanges[2 * slice], ke = key.kRanges[2 * slice + 1];
    const type = key.attnTypeMap[slice];
    const lowDiagonal = type === 2 || type === 3 ? ks - qs : -UNBOUNDED; // top-left edge
    const highDiagonal = type === 1 || type === 3 ? ke - qe : UNBOUNDED; // bottom-right edge
    // Rows whose visible interval is non-empty.
    const firstRow = Math.max(qs, ks - highDiagonal), endRow = Math.min(qe, ke - lowDiagonal);
    if (firstRow >= endRow || ks >= ke) continue;
    const counts = byType[type];
    for (let rowBlock = rows.blockOf(firstRow); rowBlock <= rows.blockOf(endRow - 1); rowBlock++) {
      const rowStart = Math.max(firstRow, rows.edge(rowBlock));
      const rowEnd = Math.min(endRow, rows.edge(rowBlock + 1));
      if (rowStart >= rowEnd) continue;
      // Columns any of these rows can see.
      const columnLow = Math.max(ks, rowStart + lowDiagonal);
      const columnHigh = Math.min(ke, rowEnd + highDiagonal); // exclusive: (rowEnd − 1) + highDiagonal + 1
      if (columnLow >= columnHigh) continue;
      const base = rowBlock * columns.blocks;
      for (
        let columnBlock = columns.blockOf(columnLow);
        columnBlock <= columns.blockOf(columnHigh - 1);
        columnBlock++
      ) {
        const columnStart = Math.max(ks, columns.edge(columnBlock));
        const columnEnd = Math.min(ke, columns.edge(columnBlock + 1));
        counts[base + columnBlock] += visibleCells(
          rowStart,
          rowEnd,
          columnStart,
          columnEnd,
          lowDiagonal,
          highDiagonal,
        );
      }
    }
  }
  return { rows, columns, byType };
}

function resolveKey(specOrKey: AttnMaskSpec | FlexKey): FlexKey {
  if (specOrKey instanceof AttnMaskSpec) {
    return compileFlexKey(checkAttnMaskSpec(specOrKey, "specOrKey", "build it with an AttnMaskSpec builder"));
  }
  if (isFlexKey(specOrKey)) return specOrKey;
  if (specOrKey === null || typeof specOrKey !== "object") {
    throw new MagiAttnInputError(
      "specOrKey",
      `is ${describeValue(specOrKey)}, not a mask`,
      "pass an AttnMaskSpec or a FlexKey (from compileFlexKey or toFlexKey)",
    );
  }
  return toFlexKey(specOrKey);
}

const parseSvgOptions = strictParser(
  z.strictObject({
    maxCells: z.int().min(1).max(MAX_MAX_CELLS).optional(),
    title: z.string().optional(),
    cellSize: z.number().positive().max(1000).optional(),
  }),
  {
    field: "options",
    owner: "maskToSvg",
    fix: "pass { maxCells, title, cellSize } or nothing",
    fixes: {
      maxCells: `give an integer from 1 to ${MAX_MAX_CELLS} (blocks drawn per axis)`,
      title: "pass a string",
      cellSize: "give a pixel size > 0 and ≤ 1000, or leave it out",
    },
  },
);

function checkOptions(options: MaskSvgOptions): { maxCells: number; title?: string; cellSize?: number } {
  const { maxCells = DEFAULT_MAX_CELLS, title, cellSize } = parseSvgOptions(options);
  return { maxCells, title, cellSize };
}

/** Tick positions (tokens) and whether labels sit at cell centres (one-token cells) or at boundaries. */
function ticksFor(axis: Axis): { tokens: number[]; centred: boolean } {
  const { total, blocks } = axis;
  if (total === 0) return { tokens: [], centred: false };
  if (blocks === total && total <= 32) {
    const every = total <= 16 ? 1 : 2;
    return {
      tokens: Array.from({ length: Math.ceil(total / every) }, (_, index) => index * every),
      centred: true,
    };
  }
  const step = niceStep(total / 6);
  const tokens: number[] = [];
  for (let token = 0; token < total; token += step) tokens.push(token);
  // The end of the axis, unless the last tick is too close to it for both labels to fit.
  if (total - tokens[tokens.length - 1] >= step / 2) tokens.push(total);
  return { tokens, centred: false };
}

/**
 * Draws a mask as a standalone SVG document (UTF-8 text, `xmlns` set, text escaped): queries on the
 * vertical axis (top to bottom), keys on the horizontal axis, each visible cell coloured by its slice type
 * (full, causal, inv_causal, bi_causal; legend below), slice outlines (up to 256 slices) and token tick
 * labels. A spec is compiled first (validated, so overlapping slices throw).
 *
 * An axis longer than `maxCells` is cut into `maxCells` near-equal blocks; a drawn block is coloured by
 * the type covering most of its visible cells, with opacity growing with its visible fraction. Blocks
 * are `<rect>` elements carrying `data-q`/`data-q-end` and `data-k`/`data-k-end` (token ranges),
 * `data-type`, `data-visible` (visible cells) and `data-area` (cells); neighbouring fully visible blocks
 * of one type in a row are merged into one rect. Cost: O(blocks touched per slice), never a dense mask.
 *
 * @example
 * ```ts
 * import { AttnMaskSpec, maskToSvg } from "@magi/attn";
 *
 * const svg = maskToSvg(AttnMaskSpec.slidingWindow(12, { left: 2, right: 3 }), { title: "window (2, 3)" });
 * // await Deno.writeTextFile("window.svg", svg);
 * ```
 */
export function maskToSvg(specOrKey: AttnMaskSpec | FlexKey, options: MaskSvgOptions = {}): string {
  const { maxCells, title, cellSize: givenCellSize } = checkOptions(options);
  const key = resolveKey(specOrKey);
  const rows = new Axis(key.totalQ, Math.min(key.totalQ, maxCells));
  const columns = new Axis(key.totalK, Math.min(key.totalK, maxCells));
  const counts = countBlocks(key, rows, columns);
  const exact = rows.blocks === key.totalQ && columns.blocks === key.totalK;
  const cellSize = givenCellSize ?? Math.min(24, Math.max(1, 512 / Math.max(rows.blocks, columns.blocks, 1)));

  const plotWidth = columns.blocks * cellSize, plotHeight = rows.blocks * cellSize;
  const left = 64, titleHeight = title ? 28 : 0;
  const top = titleHeight + 44;
  // Text widths are estimated (about 0.6 em per character) so long headings are not cut off.
  const titleWidth = title ? title.length * 9 : 0;
  const width = Math.max(left + plotWidth + 24, 460, left + titleWidth + 16);
  const legendTop = top + plotHeight + 20;
  const height = legendTop + 56;
  const sliceCount = key.attnTypeMap.length;
  const summary = `${key.totalQ} query × ${key.totalK} key tokens, ${sliceCount} slice${
    sliceCount === 1 ? "" : "s"
  }, ${key.area} visible cells`;

  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${px(width)}" height="${px(height)}" ` +
      `viewBox="0 0 ${px(width)} ${px(height)}" font-family="Helvetica, Arial, sans-serif" font-size="11">`,
  );
  parts.push(`<title>${escapeXml(title ?? `Attention mask: ${summary}`)}</title>`);
  parts.push(`<desc>${escapeXml(summary)}</desc>`);
  parts.push(`<rect class="background" width="${px(width)}" height="${px(height)}" fill="#ffffff"/>`);
  if (title) {
    parts.push(
      `<text x="${left}" y="20" font-size="15" font-weight="bold" fill="#222222">${escapeXml(title)}</text>`,
    );
  }

  // Cells.
  parts.push(
    `<g class="cells" transform="translate(${left},${top})" data-rows="${rows.blocks}" ` +
      `data-cols="${columns.blocks}" data-total-q="${key.totalQ}" data-total-k="${key.totalK}">`,
  );
  parts.push(
    `<rect class="plot-background" x="0" y="0" width="${px(plotWidth)}" height="${px(plotHeight)}" ` +
      `fill="#f2f2f2"/>`,
  );
  const { byType } = counts;
  for (let row = 0; row < rows.blocks; row++) {
    const qStart = rows.edge(row), qEnd = rows.edge(row + 1);
    const blockHeight = qEnd - qStart;
    let column = 0;
    while (column < columns.blocks) {
      const index = row * columns.blocks + column;
      let visible = 0, majority = 0;
      for (let type = 0; type < 4; type++) {
        visible += byType[type][index];
        if (byType[type][index] > byType[majority][index]) majority = type;
      }
      if (visible === 0) {
        column++;
        continue;
      }
      const kStart = columns.edge(column);
      let area = blockHeight * (columns.edge(column + 1) - kStart);
      let end = column + 1;
      if (visible === area) {
        // Merge the run of fully visible blocks of the same type (only that type present).
        while (end < columns.blocks) {
          const next = row * columns.blocks + end;
          const nextArea = blockHeight * (columns.edge(end + 1) - columns.edge(end));
          if (byType[majority][next] !== nextArea) break;
          visible += nextArea;
          area += nextArea;
          end++;
        }
      }
      const kEnd = columns.edge(end);
      const coverage = visible / area;
      const opacity = coverage === 1
        ? ""
        : ` fill-opacity="${Math.round((0.15 + 0.85 * coverage) * 1000) / 1000}"`;
      parts.push(
        `<rect x="${px(column * cellSize)}" y="${px(row * cellSize)}" width="${
          px((end - column) * cellSize)
        }" ` +
          `height="${px(cellSize)}" fill="${TYPE_COLORS[majority]}"${opacity} data-q="${qStart}" ` +
          `data-q-end="${qEnd}" data-k="${kStart}" data-k-end="${kEnd}" data-type="${
            MASK_TYPE_NAMES[majority]
          }" ` +
          `data-visible="${visible}" data-area="${area}"/>`,
      );
      column = end;
    }
  }
  parts.push(`</g>`);

  // Grid lines between one-token cells of small masks, so single cells can be counted.
  if (exact && rows.blocks <= MAX_GRID_LINES && columns.blocks <= MAX_GRID_LINES && cellSize >= 6) {
    const lines: string[] = [];
    for (let row = 1; row < rows.blocks; row++) {
      lines.push(`M0 ${px(row * cellSize)}H${px(plotWidth)}`);
    }
    for (let column = 1; column < columns.blocks; column++) {
      lines.push(`M${px(column * cellSize)} 0V${px(plotHeight)}`);
    }
    if (lines.length > 0) {
      parts.push(
        `<path class="grid" transform="translate(${left},${top})" d="${lines.join("")}" stroke="#ffffff" ` +
          `stroke-width="1" fill="none"/>`,
      );
    }
  }

  // Slice outlines: each slice's query range × key range.
  const tokenX = (
    token: number,
  ): number => (key.totalK === 0 ? 0 : (token * columns.blocks * cellSize) / key.totalK);
  const tokenY = (
    token: number,
  ): number => (key.totalQ === 0 ? 0 : (token * rows.blocks * cellSize) / key.totalQ);
  if (sliceCount <= MAX_OUTLINED_SLICES) {
    parts.push(
      `<g class="slices" transform="translate(${left},${top})" fill="none" stroke="#222222" ` +
        `stroke-width="1" stroke-opacity="0.7" stroke-dasharray="3 2">`,
    );
    for (let slice = 0; slice < sliceCount; slice++) {
      const x0 = tokenX(key.kRanges[2 * slice]), x1 = tokenX(key.kRanges[2 * slice + 1]);
      const y0 = tokenY(key.qRanges[2 * slice]), y1 = tokenY(key.qRanges[2 * slice + 1]);
      parts.push(
        `<rect x="${px(x0)}" y="${px(y0)}" width="${px(x1 - x0)}" height="${px(y1 - y0)}" ` +
          `data-slice="${slice}"/>`,
      );
    }
    parts.push(`</g>`);
  }
  parts.push(
    `<rect class="frame" x="${left}" y="${top}" width="${px(plotWidth)}" height="${px(plotHeight)}" ` +
      `fill="none" stroke="#888888" stroke-width="1"/>`,
  );

  // Axes: key tokens along the top, query tokens down the left.
  parts.push(`<g class="axes" fill="#333333">`);
  parts.push(`<text x="${left}" y="${top - 28}">key token →</text>`);
  parts.push(
    `<text x="${left - 44}" y="${top}" transform="rotate(90 ${left - 44} ${top})">query token →</text>`,
  );
  const keyTicks = ticksFor(columns);
  for (const token of keyTicks.tokens) {
    const x = left + (keyTicks.centred ? (token + 0.5) * cellSize : tokenX(token));
    parts.push(`<path d="M${px(x)} ${top - 4}V${top}" stroke="#888888"/>`);
    parts.push(
      `<text x="${px(x)}" y="${top - 7}" text-anchor="middle">${escapeXml(formatTokens(token))}</text>`,
    );
  }
  const queryTicks = ticksFor(rows);
  for (const token of queryTicks.tokens) {
    const y = top + (queryTicks.centred ? (token + 0.5) * cellSize : tokenY(token));
    parts.push(`<path d="M${left - 4} ${px(y)}H${left}" stroke="#888888"/>`);
    parts.push(
      `<text x="${left - 7}" y="${px(y + 3.5)}" text-anchor="end">${escapeXml(formatTokens(token))}</text>`,
    );
  }
  parts.push(`</g>`);

  // Legend, then a line saying what a drawn cell is.
  parts.push(`<g class="legend" fill="#333333">`);
  const typeSlices = [0, 0, 0, 0];
  for (let slice = 0; slice < sliceCount; slice++) typeSlices[key.attnTypeMap[slice]]++;
  MASK_TYPE_NAMES.forEach((name, type) => {
    const x = left + type * 98;
    parts.push(
      `<rect x="${x}" y="${legendTop}" width="12" height="12" fill="${TYPE_COLORS[type]}" ` +
        `data-legend="${name}"/>`,
    );
    parts.push(`<text x="${x + 16}" y="${legendTop + 10}">${name} (${typeSlices[type]})</text>`);
  });
  const outlines = sliceCount > MAX_OUTLINED_SLICES ? "; slice outlines omitted" : "";
  const note = exact
    ? "one cell per (query, key) token pair"
    : `each cell ≈ ${formatTokens(Math.round(key.totalQ / rows.blocks))} × ${
      formatTokens(Math.round(key.totalK / columns.blocks))
    } tokens: colour = majority type, opacity = visible fraction`;
  parts.push(`<text x="${left}" y="${legendTop + 30}" font-size="10">${escapeXml(note)}</text>`);
  parts.push(
    `<text x="${left}" y="${legendTop + 44}" font-size="10">${escapeXml(summary + outlines)}</text>`,
  );
  parts.push(`</g>`);
  parts.push(`</svg>`);
  return parts.join("\n") + "\n";
}
