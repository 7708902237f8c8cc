/**
 * "Did you mean" for misspelled option names: the valid name a given name most likely misspells. No
 * dependencies, so the library loader (ffi/library.ts) can use it without the schema module.
 * @module
 */

/** Edit distance with adjacent transpositions (optimal string alignment), case-insensitive. */
function editDistance(a: string, b: string): number {
  const x = a.toLowerCase(), y = b.toLowerCase();
  const rows = x.length + 1, columns = y.length + 1;
  const table = new Array<number>(rows * columns);
  for (let i = 0; i < rows; i++) table[i * columns] = i;
  for (let j = 0; j < columns; j++) table[j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < columns; j++) {
      const cost = x[i - 1] === y[j - 1] ? 0 : 1;
      let best = Math.min(
        table[(i - 1) * columns + j] + 1,
        table[i * columns + j - 1] + 1,
        table[(i - 1) * columns + j - 1] + cost,
      );
      if (i > 1 && j > 1 && x[i - 1] === y[j - 2] && x[i - 2] === y[j - 1]) {
        best = Math.min(best, table[(i - 2) * columns + j - 2] + 1);
      }
      table[i * columns + j] = best;
    }
  }
  return table[rows * columns - 1];
}

/**
 * The valid name `name` most likely misspells: the closest by edit distance (at most a third of its
 * length, at least 1), else one that contains it or is contained in it (`scale` → `softmaxScale`), else
 * one sharing a stem of four letters or more (`scale` → `scaling`).
 */
export function closestName(name: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined, bestDistance = Infinity;
  const lower = name.toLowerCase();
  for (const candidate of candidates) {
    const distance = editDistance(name, candidate);
    const limit = Math.max(1, Math.floor(Math.max(name.length, candidate.length) / 3));
    const other = candidate.toLowerCase();
    const contains = lower.length >= 3 && (other.includes(lower) || lower.includes(other));
    let prefix = 0;
    while (prefix < lower.length && prefix < other.length && lower[prefix] === other[prefix]) prefix++;
    const sharesStem = prefix >= 4 && prefix >= 0.6 * Math.min(lower.length, other.length);
    const score = distance <= limit
      ? distance
      : contains
      ? limit + 0.5
      : sharesStem
      ? limit + 0.75
      : Infinity;
    if (score < bestDistance) {
      best = candidate;
      bestDistance = score;
    }
  }
  return best;
}

/**
 * The fix of an unknown option key `name`: "did you mean `x`? Otherwise remove it; the valid keys are …"
 * (without the suggestion when none is close). One wording for the schema errors and the loader's check.
 */
export function unknownOptionFix(name: string, validKeys: readonly string[]): string {
  const suggestion = closestName(name, validKeys);
  return `${
    suggestion ? `did you mean \`${suggestion}\`? Otherwise remove it;` : "remove it;"
  } the valid keys are ${validKeys.join(", ")}`;
}
