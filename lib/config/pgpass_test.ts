// @std/assert is unavailable offline; node:assert is built into Deno.
import assert from "node:assert/strict";
import {
  defaultPgpassPath,
  findPgpassPassword,
  parsePgpass,
  type PgpassEntry,
  readPgpassFile,
} from "./pgpass.ts";

const isWindows = Deno.build.os === "windows";

function entry(
  host: string,
  port: string,
  database: string,
  user: string,
  password: string,
  line: number,
): PgpassEntry {
  return { host, port, database, user, password, line };
}

Deno.test("parsePgpass reads the five fields of a plain line", () => {
  assert.deepEqual(parsePgpass("db.example.com:5432:shop:alice:s3cret\n"), [
    entry("db.example.com", "5432", "shop", "alice", "s3cret", 1),
  ]);
});

Deno.test("parsePgpass unescapes backslash escapes in every field", async (t) => {
  const cases: { name: string; line: string; want: PgpassEntry }[] = [
    {
      name: "\\: is a colon in the password",
      line: "h:5432:d:u:pa\\:ss",
      want: entry("h", "5432", "d", "u", "pa:ss", 1),
    },
    {
      name: "\\\\ is a backslash in the password",
      line: "h:5432:d:u:pa\\\\ss",
      want: entry("h", "5432", "d", "u", "pa\\ss", 1),
    },
    {
      name: "\\\\ followed by : ends the field after a backslash",
      line: "h:5432:d\\\\:u:pw",
      want: entry("h", "5432", "d\\", "u", "pw", 1),
    },
    {
      name: "\\: is a colon in the host (IPv6 address)",
      line: "\\:\\:1:5432:d:u:pw",
      want: entry("::1", "5432", "d", "u", "pw", 1),
    },
    {
      name: "escapes in database and user",
      line: "h:5432:my\\:db:dom\\\\user:pw",
      want: entry("h", "5432", "my:db", "dom\\user", "pw", 1),
    },
    {
      name: "a backslash before another character drops the backslash, as libpq",
      line: "h:5432:d:u:a\\bc",
      want: entry("h", "5432", "d", "u", "abc", 1),
    },
    {
      name: "a backslash at the end of the password stays literal",
      line: "h:5432:d:u:pw\\",
      want: entry("h", "5432", "d", "u", "pw\\", 1),
    },
    {
      name: "the password ends at an unescaped colon, as libpq",
      line: "h:5432:d:u:first:second",
      want: entry("h", "5432", "d", "u", "first", 1),
    },
    {
      name: "an empty password is kept",
      line: "h:5432:d:u:",
      want: entry("h", "5432", "d", "u", "", 1),
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      assert.deepEqual(parsePgpass(c.line), [c.want]);
    });
  }
});

Deno.test("parsePgpass skips comments, blank lines and lines with fewer than 5 fields", () => {
  const text = [
    "# hostname:port:database:username:password", // 1 comment
    "", // 2 blank
    "h:5432:d:u", // 3 only 4 fields: no 4th colon
    "h:5432:d", // 4
    "just-a-word", // 5
    "h:5432:d:u\\:pw", // 6 the 4th colon is escaped
    "   ", // 7 whitespace only
    "h:5432:d:u:pw", // 8 the only entry
    "#h:5432:d:u:commented", // 9 comment even though it looks like an entry
  ].join("\n");
  assert.deepEqual(parsePgpass(text), [entry("h", "5432", "d", "u", "pw", 8)]);
});

Deno.test("parsePgpass treats only a # in the first column as a comment", () => {
  // libpq checks the first character only; " #h" is a host name (that will never match).
  assert.deepEqual(parsePgpass(" #h:5432:d:u:pw"), [entry(" #h", "5432", "d", "u", "pw", 1)]);
});

Deno.test("parsePgpass strips CRLF line endings and keeps line numbers", () => {
  const text = "# comment\r\nh1:5432:d:u:one\r\n\r\nh2:5433:d:u:two\r\n";
  assert.deepEqual(parsePgpass(text), [
    entry("h1", "5432", "d", "u", "one", 2),
    entry("h2", "5433", "d", "u", "two", 4),
  ]);
});

Deno.test("parsePgpass reads a last line without a newline", () => {
  assert.deepEqual(parsePgpass("a:1:b:c:d\ne:2:f:g:h"), [
    entry("a", "1", "b", "c", "d", 1),
    entry("e", "2", "f", "g", "h", 2),
  ]);
});

Deno.test("findPgpassPassword: * matches any value, other fields match exactly", async (t) => {
  const entries = parsePgpass(
    [
      "db1:5432:shop:alice:exact",
      "*:5432:shop:bob:any-host",
      "db1:*:shop:carol:any-port",
      "db1:5432:*:dave:any-db",
      "db1:5432:shop:*:any-user",
      "*:*:*:*:catch-all",
    ].join("\n"),
  );
  const cases: {
    name: string;
    host: string;
    port: string;
    db: string;
    user: string;
    want: string;
  }[] = [
    { name: "all exact", host: "db1", port: "5432", db: "shop", user: "alice", want: "exact" },
    { name: "host *", host: "db9", port: "5432", db: "shop", user: "bob", want: "any-host" },
    { name: "port *", host: "db1", port: "6543", db: "shop", user: "carol", want: "any-port" },
    { name: "database *", host: "db1", port: "5432", db: "crm", user: "dave", want: "any-db" },
    { name: "user *", host: "db1", port: "5432", db: "shop", user: "erin", want: "any-user" },
    { name: "nothing else", host: "x", port: "1", db: "y", user: "z", want: "catch-all" },
    {
      name: "case matters",
      host: "DB1",
      port: "5432",
      db: "shop",
      user: "alice",
      want: "catch-all",
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const got = findPgpassPassword(entries, {
        host: c.host,
        port: c.port,
        database: c.db,
        user: c.user,
      });
      assert.equal(got, c.want);
    });
  }
});

Deno.test("findPgpassPassword: * is a wildcard only as a whole field, \\* is a literal star", () => {
  const entries = parsePgpass(
    ["h:5432:shop*:u:prefix-is-not-a-glob", "h:5432:\\*:u:star-db"].join("\n"),
  );
  const target = (database: string) => ({ host: "h", port: 5432, database, user: "u" });
  assert.equal(findPgpassPassword(entries, target("shop1")), undefined);
  assert.equal(findPgpassPassword(entries, target("shop*")), "prefix-is-not-a-glob");
  assert.equal(findPgpassPassword(entries, target("anything")), undefined);
  assert.equal(findPgpassPassword(entries, target("*")), "star-db");
});

Deno.test("findPgpassPassword: the first matching line wins over later, more specific ones", () => {
  const entries = parsePgpass(
    ["*:*:*:alice:general", "db1:5432:shop:alice:specific", "db1:5432:shop:bob:bobs"].join("\n"),
  );
  const target = { host: "db1", port: 5432, database: "shop", user: "alice" };
  assert.equal(findPgpassPassword(entries, target), "general");
  assert.equal(findPgpassPassword(entries, { ...target, user: "bob" }), "bobs");
  assert.equal(findPgpassPassword(entries, { ...target, user: "nobody" }), undefined);
});

Deno.test("findPgpassPassword: a matching entry with an empty password returns ''", () => {
  const entries = parsePgpass("h:5432:d:u:\nh:5432:d:u:later");
  assert.equal(
    findPgpassPassword(entries, { host: "h", port: 5432, database: "d", user: "u" }),
    "",
  );
});

Deno.test("findPgpassPassword: port as a number or a string matches the same entry", async (t) => {
  const entries = parsePgpass("h:5433:d:u:pw\nh:*:other:u:any");
  const cases: { name: string; port: number | string; want: string | undefined }[] = [
    { name: "number", port: 5433, want: "pw" },
    { name: "string", port: "5433", want: "pw" },
    { name: "a different port", port: 5432, want: undefined },
    {
      name: "zero-padded string is a different port (string compare, as libpq)",
      port: "05433",
      want: undefined,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      assert.equal(
        findPgpassPassword(entries, { host: "h", port: c.port, database: "d", user: "u" }),
        c.want,
      );
    });
  }
});

Deno.test("findPgpassPassword: an empty port is looked up as 5432", () => {
  const entries = parsePgpass("h:5432:d:u:default-port");
  assert.equal(
    findPgpassPassword(entries, { host: "h", port: "", database: "d", user: "u" }),
    "default-port",
  );
});

Deno.test("findPgpassPassword: empty host and socket directories match localhost", async (t) => {
  const localhostOnly = parsePgpass("localhost:5432:d:u:local");
  const dirOnly = parsePgpass("/var/run/postgresql:5432:d:u:by-dir");
  const cases: { name: string; entries: PgpassEntry[]; host: string; want: string | undefined }[] =
    [
      { name: "empty host → localhost entry", entries: localhostOnly, host: "", want: "local" },
      {
        name: "default socket dir → localhost entry",
        entries: localhostOnly,
        host: "/var/run/postgresql",
        want: "local",
      },
      {
        name: "any other socket dir → localhost entry too",
        entries: localhostOnly,
        host: "/tmp/dbbackup-test-socket",
        want: "local",
      },
      {
        name: "socket dir → entry naming that exact dir",
        entries: dirOnly,
        host: "/var/run/postgresql",
        want: "by-dir",
      },
      {
        name: "socket dir with a trailing slash is a different text (no canonicalisation)",
        entries: dirOnly,
        host: "/var/run/postgresql/",
        want: undefined,
      },
      {
        name: "empty host does not match a dir entry",
        entries: dirOnly,
        host: "",
        want: undefined,
      },
      {
        name: "TCP host 127.0.0.1 does not match localhost",
        entries: localhostOnly,
        host: "127.0.0.1",
        want: undefined,
      },
      {
        name: "TCP host localhost matches localhost",
        entries: localhostOnly,
        host: "localhost",
        want: "local",
      },
    ];
  for (const c of cases) {
    await t.step(c.name, () => {
      assert.equal(
        findPgpassPassword(c.entries, { host: c.host, port: 5432, database: "d", user: "u" }),
        c.want,
      );
    });
  }
});

Deno.test("findPgpassPassword: an empty database or user never matches, as libpq", () => {
  const entries = parsePgpass("*:*:*:*:catch-all\n*:*::::empty-fields");
  assert.equal(
    findPgpassPassword(entries, { host: "h", port: 1, database: "", user: "u" }),
    undefined,
  );
  assert.equal(
    findPgpassPassword(entries, { host: "h", port: 1, database: "d", user: "" }),
    undefined,
  );
});

Deno.test("findPgpassPassword works on hand-built entries", () => {
  const entries = [entry("*", "*", "shop", "alice", "hand", 0)];
  assert.equal(
    findPgpassPassword(entries, { host: "x", port: 1, database: "shop", user: "alice" }),
    "hand",
  );
});

async function withTempFile(
  text: string,
  mode: number,
  fn: (path: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dbbackup-pgpass-" });
  try {
    const path = `${dir}/pgpass`;
    await Deno.writeTextFile(path, text);
    if (!isWindows) await Deno.chmod(path, mode);
    await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "readPgpassFile ignores a 0644 file with a libpq-style warning that has no password",
  ignore: isWindows,
  fn: () =>
    withTempFile("h:5432:d:u:TopSecretPw\n", 0o644, async (path) => {
      const result = await readPgpassFile(path);
      assert.deepEqual(result.entries, []);
      assert.equal(
        result.warning,
        `password file "${path}" has group or world access; permissions should be u=rw (0600) or less`,
      );
      assert.ok(!result.warning?.includes("TopSecretPw"));
    }),
});

Deno.test({
  name: "readPgpassFile ignores a file with only a group or world bit set",
  ignore: isWindows,
  fn: async (t) => {
    for (const mode of [0o640, 0o604, 0o620, 0o601, 0o610, 0o660]) {
      await t.step(
        `mode 0${mode.toString(8)}`,
        () =>
          withTempFile("h:5432:d:u:pw\n", mode, async (path) => {
            const result = await readPgpassFile(path);
            assert.deepEqual(result.entries, []);
            assert.match(result.warning ?? "", /has group or world access/);
          }),
      );
    }
  },
});

Deno.test("readPgpassFile reads a 0600 file without a warning", () =>
  withTempFile("# comment\nh:5432:d:u:pw\n*:*:*:*:other\n", 0o600, async (path) => {
    const result = await readPgpassFile(path);
    assert.equal(result.warning, undefined);
    assert.deepEqual(result.entries, [
      entry("h", "5432", "d", "u", "pw", 2),
      entry("*", "*", "*", "*", "other", 3),
    ]);
  }));

Deno.test("readPgpassFile reads a 0400 file without a warning", () =>
  withTempFile("h:5432:d:u:pw\n", 0o400, async (path) => {
    const result = await readPgpassFile(path);
    assert.equal(result.warning, undefined);
    assert.equal(result.entries.length, 1);
  }));

Deno.test("readPgpassFile returns no entries and no warning for a missing file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dbbackup-pgpass-" });
  try {
    assert.deepEqual(await readPgpassFile(`${dir}/does-not-exist`), { entries: [] });
    assert.deepEqual(await readPgpassFile(`${dir}/missing-dir/pgpass`), { entries: [] });
    // A path through a regular file fails with ENOTDIR: also "missing", as libpq's stat().
    await Deno.writeTextFile(`${dir}/file`, "");
    assert.deepEqual(await readPgpassFile(`${dir}/file/pgpass`), { entries: [] });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readPgpassFile ignores a directory with a 'not a plain file' warning", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dbbackup-pgpass-" });
  try {
    if (!isWindows) await Deno.chmod(dir, 0o700);
    const result = await readPgpassFile(dir);
    assert.deepEqual(result.entries, []);
    assert.equal(result.warning, `password file "${dir}" is not a plain file`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("defaultPgpassPath prefers PGPASSFILE, else the home directory file", async (t) => {
  const cases: {
    name: string;
    env: Record<string, string | undefined>;
    os: typeof Deno.build.os;
    want: string | undefined;
  }[] = [
    {
      name: "PGPASSFILE wins on POSIX",
      env: { PGPASSFILE: "/etc/dbbackup/pgpass", HOME: "/home/a" },
      os: "linux",
      want: "/etc/dbbackup/pgpass",
    },
    {
      name: "PGPASSFILE wins on Windows",
      env: { PGPASSFILE: "C:\\pg\\pass.conf", APPDATA: "C:\\Users\\a\\AppData\\Roaming" },
      os: "windows",
      want: "C:\\pg\\pass.conf",
    },
    { name: "$HOME/.pgpass", env: { HOME: "/home/a" }, os: "linux", want: "/home/a/.pgpass" },
    {
      name: "$HOME/.pgpass on macOS",
      env: { HOME: "/Users/a/" },
      os: "darwin",
      want: "/Users/a/.pgpass",
    },
    {
      name: "an empty PGPASSFILE is unset, as libpq",
      env: { PGPASSFILE: "", HOME: "/home/a" },
      os: "linux",
      want: "/home/a/.pgpass",
    },
    {
      name: "%APPDATA%\\postgresql\\pgpass.conf on Windows",
      env: { APPDATA: "C:\\Users\\a\\AppData\\Roaming", HOME: "/ignored" },
      os: "windows",
      want: "C:\\Users\\a\\AppData\\Roaming\\postgresql\\pgpass.conf",
    },
    { name: "no HOME", env: {}, os: "linux", want: undefined },
    { name: "empty HOME", env: { HOME: "" }, os: "linux", want: undefined },
    { name: "no APPDATA on Windows", env: { HOME: "/x" }, os: "windows", want: undefined },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      assert.equal(defaultPgpassPath(c.env, c.os), c.want);
    });
  }
});

Deno.test("defaultPgpassPath defaults to the running OS", () => {
  const env = isWindows ? { APPDATA: "C:\\AppData" } : { HOME: "/home/a" };
  const want = isWindows ? "C:\\AppData\\postgresql\\pgpass.conf" : "/home/a/.pgpass";
  assert.equal(defaultPgpassPath(env), want);
});
