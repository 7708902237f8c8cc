/**
 * A strict little XML structure parser for tests of the SVG writers: it asserts XML characters only,
 * balanced tags, quoted attributes and escaped text, and returns the elements in document order.
 * @module
 */

import assert from "node:assert/strict";

/** Parses the structure of an XML document: balanced tags, quoted attributes, escaped text. */
export function parseXml(
  text: string,
): { root: string; elements: { name: string; attributes: Record<string, string>; text: string }[] } {
  // XML 1.0's Char production: no C0 controls but tab/LF/CR, no unpaired surrogates, no U+FFFE/U+FFFF.
  for (let index = 0; index < text.length; index++) {
    const code = text.charCodeAt(index);
    const isHigh = code >= 0xd800 && code <= 0xdbff, isLow = code >= 0xdc00 && code <= 0xdfff;
    const next = index + 1 < text.length ? text.charCodeAt(index + 1) : 0;
    if (isHigh && next >= 0xdc00 && next <= 0xdfff) {
      index++; // a surrogate pair: one character outside the BMP
      continue;
    }
    assert.ok(
      !((code < 0x20 && code !== 0x9 && code !== 0xa && code !== 0xd) || isHigh || isLow || code >= 0xfffe),
      `character U+${code.toString(16).padStart(4, "0")} at offset ${index} is not allowed in XML`,
    );
  }
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
