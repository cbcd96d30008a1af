/** Which databases a cluster backup takes: pure, tested with tables of cases. */

/** Glob match: `*` any run of characters, `?` one character; the whole name must match. */
export function globMatch(pattern: string, name: string): boolean {
  const re = new RegExp(
    "^" +
      [...pattern].map((ch) =>
        ch === "*" ? ".*" : ch === "?" ? "." : ch.replace(/[.+^${}()|[\]\\]/g, "\\$&")
      ).join("") + "$",
    "su",
  );
  return re.test(name);
}

export interface SelectableDatabase {
  name: string;
  isTemplate: boolean;
  allowConnections: boolean;
}

export interface Selection {
  selected: string[];
  /** Databases left out, with why. */
  skipped: { name: string; reason: string }[];
}

/**
 * Every connectable database but template0 and template1, narrowed by `includes` (any match keeps it; none
 * given keeps all) and then `excludes` (any match drops it).
 */
export function selectDatabases(
  databases: readonly SelectableDatabase[],
  includes: readonly string[],
  excludes: readonly string[],
): Selection {
  const selected: string[] = [];
  const skipped: { name: string; reason: string }[] = [];
  for (const db of databases) {
    // The server's own templates; a template database of the user's holds data like any other
    // (pg_dumpall dumps it too).
    if (db.name === "template0" || db.name === "template1") {
      skipped.push({ name: db.name, reason: "template database of the server" });
    } else if (!db.allowConnections) {
      skipped.push({ name: db.name, reason: "does not allow connections" });
    } else if (includes.length > 0 && !includes.some((p) => globMatch(p, db.name))) {
      skipped.push({ name: db.name, reason: "not matched by --include" });
    } else if (excludes.some((p) => globMatch(p, db.name))) {
      skipped.push({ name: db.name, reason: "matched by --exclude" });
    } else selected.push(db.name);
  }
  return { selected, skipped };
}
