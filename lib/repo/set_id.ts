/** Backup set ids: they sort by time, e.g. `20261127T030000Z-cluster-db1`. */

/** `20261127T030000Z` for a date (UTC). */
export function compactTimestamp(d: Date): string {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
}

/** A file-name-safe slug: ASCII letters, digits, `.`, `_`, `-`; at most 40 characters. */
export function slug(text: string): string {
  // NFKD splits "Ä" into "A" + a combining mark; the marks are dropped, not turned into "_".
  const s = text.normalize("NFKD").replace(/\p{M}+/gu, "").replace(/[^A-Za-z0-9._-]+/g, "_")
    .replace(/^[._]+/, "").slice(0, 40);
  return s || "x";
}

export function setId(when: Date, kind: string, label: string): string {
  return `${compactTimestamp(when)}-${kind}-${slug(label)}`;
}

/** Whether a folder name looks like a set id this tool made. */
export function isSetId(name: string): boolean {
  return /^\d{8}T\d{6}Z-(single|cluster)-[A-Za-z0-9._-]+$/.test(name);
}

/** The moment a set was claimed, read from its id; undefined when the id holds none. */
export function setIdTime(id: string): Date | undefined {
  const m = id.match(/^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z-/);
  if (!m) return undefined;
  const d = new Date(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}Z`);
  return Number.isNaN(d.getTime()) ? undefined : d;
}

/** `<kind>-<label>` of a set id: what an incomplete set (no manifest yet) was backing up. */
export function setIdSubject(id: string): string | undefined {
  return id.match(/^\d{8}T\d{6}Z-((?:single|cluster)-[A-Za-z0-9._-]+)$/)?.[1];
}
