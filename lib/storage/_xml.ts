/**
 * Just enough XML for S3's answers (flat elements, no attributes needed, no CDATA) and for the
 * few request bodies it takes.
 */

/** The raw inner text of every `<tag>…</tag>` in `xml`, in order. */
export function xmlBlocks(xml: string, tag: string): string[] {
  const re = new RegExp(`<${tag}(?:\\s[^>]*)?>([\\s\\S]*?)</${tag}>`, "g");
  return [...xml.matchAll(re)].map((m) => m[1]);
}

/** The decoded text of the first `<tag>…</tag>` in `xml`. */
export function xmlValue(xml: string, tag: string): string | undefined {
  const [first] = xmlBlocks(xml, tag);
  return first === undefined ? undefined : xmlDecode(first);
}

const ENTITIES: Record<string, string> = {
  amp: "&",
  lt: "<",
  gt: ">",
  quot: '"',
  apos: "'",
};

export function xmlDecode(text: string): string {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (whole, ref: string) => {
    if (ref.startsWith("#x")) return String.fromCodePoint(parseInt(ref.slice(2), 16));
    if (ref.startsWith("#")) return String.fromCodePoint(parseInt(ref.slice(1), 10));
    return ENTITIES[ref] ?? whole;
  });
}

export function xmlEscape(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) => `&${{ "&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos" }[c]};`,
  );
}
