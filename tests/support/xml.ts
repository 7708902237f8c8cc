/**
 * A strict little XML structure parser for tests of the SVG writers: it asserts balanced tags, quoted
 * attributes and escaped text, and returns the elements in document order.
 * @module
 */

import assert from "node:assert/strict";

/** Parses the structure of an XML document: balanced tags, quoted attributes, escaped text. */
export function parseXml(
  text: string,
): { root: string; elements: { name: string; attributes: Record<string, string>; text: string }[] } {
  const elements: { name: string; attributes: Record<string, string>; text: string }[] = [];
  const stack: { name: string; index: number }[] = [];
  let root = "";
  let position = 0;
  const tagPattern = /<[^<>]*>/g;
  for (const match of text.matchAll(tagPattern)) {
    const between = text.slice(position, match.index);
    assert.ok(!/[<>]/.test(between), `stray angle bracket before offset ${match.index}`);
    assert.ok(!/&(?!(amp|lt|gt|quot|apos);)/.test(between), `unescaped & before offset ${match.index}`);
    if (stack.length > 0) elements[stack.at(-1)!.index].text += between;
    else assert.equal(between.trim(), "", "text outside the root element");
    position = match.index! + match[0].length;
    const tag = match[0];
    if (tag.startsWith("</")) {
      const name = tag.slice(2, -1).trim();
      const open = stack.pop();
      assert.equal(open?.name, name, `closing </${name}> does not match <${open?.name}>`);
      continue;
    }
    const parsed = /^<([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>$/.exec(tag);
    assert.ok(parsed, `malformed tag ${tag.slice(0, 80)}`);
    const attributes: Record<string, string> = {};
    for (const attribute of parsed[2].matchAll(/([\w:-]+)="([^"]*)"/g)) {
      assert.ok(!(attribute[1] in attributes), `duplicate attribute ${attribute[1]}`);
      attributes[attribute[1]] = attribute[2];
    }
    if (stack.length === 0) {
      assert.equal(root, "", "more than one root element");
      root = parsed[1];
    }
    elements.push({ name: parsed[1], attributes, text: "" });
    if (parsed[3] !== "/") stack.push({ name: parsed[1], index: elements.length - 1 });
  }
  assert.equal(stack.length, 0, `unclosed <${stack.at(-1)?.name}>`);
  assert.equal(text.slice(position).trim(), "");
  return { root, elements };
}
