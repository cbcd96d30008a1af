/**
 * How the native engine splits tables into chunks: pure, tested with tables of cases.
 *
 * A table larger than the chunk size is split into ranges of heap pages (ctid ranges), so
 * one huge table is dumped by every worker at once. The last range of a table is open-ended:
 * rows on pages added after the sizes were read are still covered.
 */

export interface TableSize {
  /** Heap bytes (pg_relation_size of the main fork). */
  bytes: number;
  /** Heap pages. */
  pages: number;
}

export interface PageRange {
  /** First page, inclusive. */
  from: number;
  /** Last page, exclusive; null means "to the end of the table". */
  to: number | null;
}

/**
 * Page ranges for a table; one range (the whole table, `{from: 0, to: null}`) when the table
 * is not larger than `chunkBytes` or splitting is not possible.
 */
export function planPageRanges(
  size: TableSize,
  chunkBytes: number,
  canSplit: boolean,
): PageRange[] {
  if (!canSplit || size.bytes <= chunkBytes || size.pages < 2) return [{ from: 0, to: null }];
  const count = Math.min(size.pages, Math.ceil(size.bytes / chunkBytes));
  const per = Math.ceil(size.pages / count);
  const ranges: PageRange[] = [];
  for (let from = 0; from < size.pages; from += per) {
    ranges.push({ from, to: from + per });
  }
  ranges[ranges.length - 1].to = null;
  return ranges;
}

/** Orders work so the biggest pieces start first (better packing onto workers). */
export function largestFirst<T extends { bytes: number }>(items: readonly T[]): T[] {
  return [...items].sort((a, b) => b.bytes - a.bytes);
}

/** Parses a size such as `256MB`, `1GiB`, `64k` or a byte count. */
export function parseSize(text: string): number | undefined {
  const m = text.trim().match(/^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i);
  if (!m) return undefined;
  const mult = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[
    m[2].toLowerCase() as "" | "k" | "m" | "g" | "t"
  ];
  return Math.round(Number(m[1]) * mult);
}
