/**
 * Plain-text renderers of benchmark results: a grouped bar chart as standalone SVG (no dependencies) and
 * a fixed-width text table.
 * @module
 */

/** One series of bars (e.g. "ours", "cuDNN"): a name and a fill colour. */
export interface ChartSeries {
  /** Legend text. */
  readonly name: string;
  /** CSS colour of its bars. */
  readonly color: string;
}

/**
 * One group of bars (a benchmark case): its label and one value per series. A number is a bar; a string
 * is drawn as a short marker instead of a bar (e.g. "err"); null or a non-finite number draws "n/a".
 */
export interface ChartGroup {
  /** Label under the group (the case name). */
  readonly label: string;
  /** Bar heights in the panel's unit, or markers, in series order. */
  readonly values: readonly (number | string | null)[];
}

/** One panel of the chart (e.g. forward), sharing the series of the chart. */
export interface ChartPanel {
  /** Title above the panel. */
  readonly title: string;
  /** Bar groups, left to right. */
  readonly groups: readonly ChartGroup[];
  /** Optional dashed reference line (e.g. the measured matmul peak) and its label. */
  readonly referenceLine?: { readonly value: number; readonly label: string };
}

/** A grouped bar chart of one or more panels stacked vertically. */
export interface BarChart {
  /** Title at the top. */
  readonly title: string;
  /** Smaller line under the title (GPU, date, versions). */
  readonly subtitle?: string;
  /** Y-axis label of every panel (e.g. "TFLOP/s"). */
  readonly yLabel: string;
  /** X-axis label of every panel (e.g. "case"). */
  readonly xLabel: string;
  /** Series, in bar order within each group and legend order. */
  readonly series: readonly ChartSeries[];
  /** Panels, top to bottom. */
  readonly panels: readonly ChartPanel[];
}

/** Escapes text for SVG character data and attribute values. */
export function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")
    .replace(/'/g, "&apos;");
}

/** A "nice" axis maximum ≥ `value` (1, 2, 2.5 or 5 times a power of ten) and its tick step. */
export function niceAxis(value: number, ticks = 5): { max: number; step: number } {
  if (!Number.isFinite(value) || value <= 0) return { max: 1, step: 0.2 };
  const rough = value / ticks;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((factor) => factor * power).find((candidate) => candidate >= rough)!;
  return { max: Math.ceil(value / step - 1e-9) * step, step };
}

function formatTick(value: number): string {
  return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(3)));
}

const round = (value: number): string => String(Math.round(value * 10) / 10);

/**
 * Renders `chart` as a standalone SVG document (UTF-8 text): per panel a y axis with grid lines and tick
 * labels, grouped bars with their values on top ("n/a" where a value is missing), group labels rotated
 * under the axis, axis labels, and one legend at the top.
 */
export function renderBarChartSvg(chart: BarChart): string {
  const seriesCount = Math.max(chart.series.length, 1);
  const groupCount = Math.max(...chart.panels.map((panel) => panel.groups.length), 1);
  const barWidth = 14, groupGap = 18;
  const groupWidth = seriesCount * barWidth + groupGap;
  const marginLeft = 70, marginRight = 20, plotHeight = 260, labelSpace = 110, panelTitle = 28;
  const headerHeight = 50 + (chart.subtitle ? 18 : 0) + 24; // title, subtitle, legend row
  const plotWidth = Math.max(groupCount * groupWidth, 360);
  const width = marginLeft + plotWidth + marginRight;
  const panelHeight = panelTitle + plotHeight + labelSpace;
  const height = headerHeight + chart.panels.length * panelHeight + 10;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">`,
  );
  parts.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="white"/>`);
  parts.push(
    `<text x="${width / 2}" y="26" text-anchor="middle" font-size="18" font-weight="bold">${
      escapeXml(chart.title)
    }</text>`,
  );
  let cursorY = 26;
  if (chart.subtitle) {
    cursorY += 20;
    parts.push(
      `<text x="${width / 2}" y="${cursorY}" text-anchor="middle" font-size="12" fill="#444">${
        escapeXml(chart.subtitle)
      }</text>`,
    );
  }
  // Legend: one swatch and name per series, in one row.
  cursorY += 24;
  let legendX = marginLeft;
  parts.push(`<g class="legend">`);
  for (const series of chart.series) {
    parts.push(
      `<rect x="${legendX}" y="${cursorY - 11}" width="12" height="12" fill="${escapeXml(series.color)}"/>`,
      `<text x="${legendX + 16}" y="${cursorY}" font-size="12">${escapeXml(series.name)}</text>`,
    );
    legendX += 16 + 8 * series.name.length + 24;
  }
  parts.push(`</g>`);

  chart.panels.forEach((panel, panelIndex) => {
    const top = headerHeight + panelIndex * panelHeight;
    const plotTop = top + panelTitle, plotBottom = plotTop + plotHeight;
    const finite = panel.groups.flatMap((group) => group.values).filter((value): value is number =>
      typeof value === "number" && Number.isFinite(value)
    );
    const axis = niceAxis(Math.max(0, ...finite, panel.referenceLine?.value ?? 0));
    const yOf = (value: number): number => plotBottom - (Math.max(0, value) / axis.max) * plotHeight;
    parts.push(`<g class="panel">`);
    parts.push(
      `<text x="${marginLeft}" y="${top + 18}" font-size="14" font-weight="bold">${
        escapeXml(panel.title)
      }</text>`,
    );
    for (let tick = 0; tick <= axis.max + axis.step / 2; tick += axis.step) {
      const y = round(yOf(tick));
      parts.push(
        `<line x1="${marginLeft}" y1="${y}" x2="${marginLeft + plotWidth}" y2="${y}" stroke="#ddd"/>`,
        `<text x="${marginLeft - 6}" y="${y}" text-anchor="end" dominant-baseline="middle" font-size="11">${
          formatTick(tick)
        }</text>`,
      );
    }
    parts.push(
      `<line x1="${marginLeft}" y1="${plotTop}" x2="${marginLeft}" y2="${plotBottom}" stroke="black"/>`,
      `<line x1="${marginLeft}" y1="${plotBottom}" x2="${
        marginLeft + plotWidth
      }" y2="${plotBottom}" stroke="black"/>`,
    );
    const yLabelY = (plotTop + plotBottom) / 2;
    parts.push(
      `<text x="18" y="${yLabelY}" text-anchor="middle" font-size="12" transform="rotate(-90 18 ${yLabelY})">${
        escapeXml(chart.yLabel)
      }</text>`,
    );
    panel.groups.forEach((group, groupIndex) => {
      const groupX = marginLeft + groupGap / 2 + groupIndex * groupWidth;
      group.values.forEach((value, seriesIndex) => {
        const x = groupX + seriesIndex * barWidth;
        const color = chart.series[seriesIndex]?.color ?? "#888";
        if (typeof value !== "number" || !Number.isFinite(value)) {
          // A marker instead of a bar: the given text (e.g. "err") in red, or "n/a" in grey.
          const marker = typeof value === "string" ? value : "n/a";
          const fill = typeof value === "string" ? "#c00" : "#999";
          parts.push(
            `<text x="${x + barWidth / 2}" y="${
              plotBottom - 4
            }" text-anchor="middle" font-size="7" fill="${fill}">${escapeXml(marker)}</text>`,
          );
          return;
        }
        const y = yOf(value);
        parts.push(
          `<rect x="${x}" y="${round(y)}" width="${barWidth - 2}" height="${round(plotBottom - y)}" fill="${
            escapeXml(color)
          }"><title>${
            escapeXml(`${group.label} ${chart.series[seriesIndex]?.name ?? ""}: ${value.toFixed(1)}`)
          }</title></rect>`,
          `<text x="${x + barWidth / 2 - 1}" y="${round(y - 3)}" text-anchor="middle" font-size="7">${
            Math.round(value)
          }</text>`,
        );
      });
      const labelX = groupX + (seriesCount * barWidth) / 2, labelY = plotBottom + 12;
      parts.push(
        `<text x="${labelX}" y="${labelY}" text-anchor="end" font-size="11" transform="rotate(-35 ${labelX} ${labelY})">${
          escapeXml(group.label)
        }</text>`,
      );
    });
    if (panel.referenceLine && Number.isFinite(panel.referenceLine.value) && panel.referenceLine.value > 0) {
      const y = round(yOf(panel.referenceLine.value));
      parts.push(
        `<line x1="${marginLeft}" y1="${y}" x2="${
          marginLeft + plotWidth
        }" y2="${y}" stroke="#c00" stroke-dasharray="6 4"/>`,
        `<text x="${marginLeft + plotWidth - 4}" y="${
          Number(y) - 4
        }" text-anchor="end" font-size="11" fill="#c00">${escapeXml(panel.referenceLine.label)}</text>`,
      );
    }
    parts.push(
      `<text x="${marginLeft + plotWidth / 2}" y="${
        top + panelHeight - 6
      }" text-anchor="middle" font-size="12">${escapeXml(chart.xLabel)}</text>`,
    );
    parts.push(`</g>`);
  });
  parts.push(`</svg>`);
  return parts.join("\n") + "\n";
}

/** Column alignment of {@linkcode formatTable}. */
export type Align = "left" | "right";

/**
 * A fixed-width text table: a header row, a dashed rule, then the rows; cells padded to each column's
 * widest entry (counted in code points), columns separated by two spaces. `align` defaults to left for
 * the first column and right for the others.
 */
export function formatTable(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
  align?: readonly Align[],
): string {
  const columns = headers.length;
  for (const [index, row] of rows.entries()) {
    if (row.length !== columns) {
      throw new Error(`table row ${index} has ${row.length} cells, headers have ${columns}`);
    }
  }
  const length = (text: string): number => [...text].length;
  const widths = headers.map((header, column) =>
    Math.max(length(header), ...rows.map((row) => length(row[column])))
  );
  const alignment = headers.map((_, column) => align?.[column] ?? (column === 0 ? "left" : "right"));
  const line = (cells: readonly string[]): string =>
    cells.map((cell, column) => {
      const padding = " ".repeat(widths[column] - length(cell));
      return alignment[column] === "left" ? cell + padding : padding + cell;
    }).join("  ").trimEnd();
  return [line(headers), widths.map((width) => "-".repeat(width)).join("  "), ...rows.map(line)].join("\n");
}
