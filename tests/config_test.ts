/**
 * Settings as the CLI resolves them, seen through `status --json`: precedence (flag > env >
 * config file > default) with the source of every value, config file validation, the password
 * file, and what status reports about a real server.
 *
 * Every run gets its own HOME, so no real ~/.config/dbbackup or ~/.pgpass is read. Runs that
 * must not reach a server point at a unix socket folder that does not exist, so nothing, in
 * particular no server on port 5432, is ever contacted by accident.
 */
import { strict as assert } from "node:assert";
import { type CliResult, dbbackup, pgEnv } from "./helpers/cli.ts";
import { type PgServer, withPg } from "./helpers/pg_server.ts";

const SECRET = "alice-secret-pw";

/** Deno's cache folder: it lives under HOME by default, and these runs get their own HOME. */
const DENO_DIR: string = JSON.parse(
  new TextDecoder().decode(
    (await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stderr: "null" })
      .output()).stdout,
  ),
).denoDir;

/** dbbackup with `env` (its own HOME) and the real Deno cache. */
function cli(args: string[], env: Record<string, string>): Promise<CliResult> {
  return dbbackup(args, { env: { DENO_DIR, ...env } });
}

interface StatusJson {
  settings: Record<string, { value: unknown; source: string }>;
  connection: {
    ok: boolean;
    endpoint: string;
    transport: string;
    tls?: boolean;
    auth?: string;
    user: string;
    error?: string;
  };
  server?: { version: string; versionNum: number; superuser: boolean };
  databases?: { name: string; sizeBytes: number; encoding: string; owner: string }[];
  tools: {
    name: string;
    path?: string;
    version?: string;
    matchesServer?: boolean;
    error?: string;
  }[];
  repository: { location: string; exists: boolean; sets: number };
  warnings: string[];
}

/** A private temp folder used as HOME (and for config and password files). */
async function withHome(fn: (home: string) => Promise<void>): Promise<void> {
  const home = await Deno.makeTempDir({ prefix: "dbbackup-config-test-" });
  try {
    await fn(home);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
}

/** `dbbackup ... status --json` with only `env` (plus PATH, LANG, HOME) in the environment. */
async function status(
  args: string[],
  env: Record<string, string>,
): Promise<{ run: CliResult; json: StatusJson }> {
  const run = await cli([...args, "--json", "status"], env);
  let json: StatusJson;
  try {
    json = JSON.parse(run.stdout);
  } catch {
    throw new Error(`status printed no JSON (exit ${run.code}):\n${run.stdout}\n${run.stderr}`);
  }
  return { run, json };
}

async function writeConfig(path: string, data: unknown): Promise<void> {
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  await Deno.writeTextFile(path, typeof data === "string" ? data : JSON.stringify(data, null, 2));
}

/** The five settings under test with their sources, from a status report. */
function picked(json: StatusJson) {
  const s = json.settings;
  const out: Record<string, [unknown, string]> = {};
  for (const key of ["host", "port", "user", "repo", "jobs"]) {
    assert.ok(s[key], `settings.${key} is reported`);
    out[key] = [s[key].value, s[key].source];
  }
  return out;
}

Deno.test("settings precedence: flag > env > config file > default, each with its source", async (t) => {
  await withHome(async (home) => {
    const cfg = `${home}/etc/dbbackup.json`;
    await writeConfig(cfg, {
      host: "/nonexistent/config-socket",
      port: 6001,
      user: "config_user",
      repo: `${home}/config-repo`,
      jobs: 3,
    });
    const env = {
      HOME: home,
      PGHOST: "/nonexistent/env-socket",
      PGPORT: "6002",
      PGUSER: "env_user",
      DBBACKUP_REPO: `${home}/env-repo`,
      DBBACKUP_JOBS: "4",
    };
    const flags = [
      "--host",
      "/nonexistent/flag-socket",
      "--port",
      "6003",
      "--user",
      "flag_user",
      "--repo",
      `${home}/flag-repo`,
      "--jobs",
      "5",
    ];
    const configSource = `config ${cfg}`;

    await t.step("flags win over env and config", async () => {
      const { run, json } = await status(["--config", cfg, ...flags], env);
      assert.equal(run.code, 1, "no server there: status reports the failed connection");
      assert.deepEqual(picked(json), {
        host: ["/nonexistent/flag-socket", "flag --host"],
        port: [6003, "flag --port"],
        user: ["flag_user", "flag --user"],
        repo: [`${home}/flag-repo`, "flag --repo"],
        jobs: [5, "flag --jobs"],
      });
      assert.equal(json.connection.ok, false);
      assert.equal(json.connection.endpoint, "/nonexistent/flag-socket:6003");
      assert.equal(json.connection.transport, "unix socket");
      assert.match(json.connection.error ?? "", /no server socket at \/nonexistent\/flag-socket/);
    });

    await t.step("short flags -H -p -U -j work the same", async () => {
      const { json } = await status(
        ["--config", cfg, "-H", "/nonexistent/h", "-p", "6004", "-U", "u", "-j", "6"],
        env,
      );
      const p = picked(json);
      assert.deepEqual(p.host, ["/nonexistent/h", "flag --host"]);
      assert.deepEqual(p.port, [6004, "flag --port"]);
      assert.deepEqual(p.user, ["u", "flag --user"]);
      assert.deepEqual(p.jobs, [6, "flag --jobs"]);
    });

    await t.step("env wins over config", async () => {
      const { json } = await status(["--config", cfg], env);
      assert.deepEqual(picked(json), {
        host: ["/nonexistent/env-socket", "env PGHOST"],
        port: [6002, "env PGPORT"],
        user: ["env_user", "env PGUSER"],
        repo: [`${home}/env-repo`, "env DBBACKUP_REPO"],
        jobs: [4, "env DBBACKUP_JOBS"],
      });
    });

    await t.step("an empty env variable counts as unset", async () => {
      const { json } = await status(["--config", cfg], { ...env, PGPORT: "", PGUSER: "" });
      const p = picked(json);
      assert.deepEqual(p.port, [6001, configSource]);
      assert.deepEqual(p.user, ["config_user", configSource]);
      assert.deepEqual(p.host, ["/nonexistent/env-socket", "env PGHOST"]);
    });

    await t.step("config wins over defaults", async () => {
      const { json } = await status(["--config", cfg], { HOME: home });
      assert.deepEqual(picked(json), {
        host: ["/nonexistent/config-socket", configSource],
        port: [6001, configSource],
        user: ["config_user", configSource],
        repo: [`${home}/config-repo`, configSource],
        jobs: [3, configSource],
      });
    });

    await t.step("mixed: each setting from its own highest level", async () => {
      const { json } = await status(
        ["--config", cfg, "--port", "6009"],
        { HOME: home, PGUSER: "env_user" },
      );
      assert.deepEqual(picked(json), {
        host: ["/nonexistent/config-socket", configSource],
        port: [6009, "flag --port"],
        user: ["env_user", "env PGUSER"],
        repo: [`${home}/config-repo`, configSource],
        jobs: [3, configSource],
      });
    });

    await t.step("defaults: port 5432, OS user, repo under HOME, 2 jobs", async () => {
      // Only the host is given (a socket folder that does not exist): port 5432 is never dialled.
      const { json } = await status(["--host", "/nonexistent/only-host"], { HOME: home });
      const user = Deno.env.get("USER") ?? (Deno.uid() === 0 ? "root" : undefined);
      const p = picked(json);
      assert.deepEqual(p.port, [5432, "default"]);
      assert.equal(p.user[1], "default");
      if (user) assert.equal(p.user[0], user);
      assert.deepEqual(p.repo, [`${home}/.local/share/dbbackup`, "default"]);
      assert.deepEqual(p.jobs, [2, "default"]);
      assert.deepEqual(json.settings.compression, {
        value: { algorithm: "zstd", level: 3 },
        source: "default",
      });
      assert.deepEqual(json.settings.sslmode, { value: "prefer", source: "default" });
      assert.equal(json.connection.ok, false);
      assert.equal(json.repository.exists, false);
      assert.equal(
        await Deno.stat(`${home}/.local`).then(() => true, () => false),
        false,
        "status creates no repository",
      );
    });

    await t.step("default host: localhost when no socket exists for the port", async () => {
      const port = freePort();
      const { json } = await status(["--port", String(port)], { HOME: home });
      assert.deepEqual(picked(json).host, ["localhost", "default"]);
      assert.equal(json.connection.transport, "tcp");
      assert.equal(json.connection.ok, false);
    });

    await t.step("the default config file is $HOME/.config/dbbackup/config.json", async () => {
      const path = `${home}/.config/dbbackup/config.json`;
      await writeConfig(path, { host: "/nonexistent/xdg", jobs: 7, compression: "gzip:9" });
      try {
        const { json } = await status([], { HOME: home });
        const p = picked(json);
        assert.deepEqual(p.host, ["/nonexistent/xdg", `config ${path}`]);
        assert.deepEqual(p.jobs, [7, `config ${path}`]);
        assert.deepEqual(json.settings.compression, {
          value: { algorithm: "gzip", level: 9 },
          source: `config ${path}`,
        });
        // XDG_CONFIG_HOME takes the place of ~/.config.
        const xdg = `${home}/xdg`;
        await writeConfig(`${xdg}/dbbackup/config.json`, { host: "/nonexistent/xdg2" });
        const other = await status([], { HOME: home, XDG_CONFIG_HOME: xdg });
        assert.deepEqual(picked(other.json).host, [
          "/nonexistent/xdg2",
          `config ${xdg}/dbbackup/config.json`,
        ]);
        // --config replaces the default file entirely.
        const explicit = await status(["--config", cfg], { HOME: home });
        assert.deepEqual(picked(explicit.json).jobs, [3, configSource]);
      } finally {
        await Deno.remove(`${home}/.config`, { recursive: true });
      }
    });
  });
});

Deno.test("config file validation", async (t) => {
  await withHome(async (home) => {
    const env = { HOME: home };
    const cfg = `${home}/config.json`;
    const rejected = async (content: unknown, message: RegExp) => {
      await writeConfig(cfg, content);
      const run = await cli(["--config", cfg, "--host", "/nonexistent/s", "status"], env);
      assert.equal(run.code, 2, `exit 2: ${JSON.stringify(run)}`);
      assert.equal(run.stdout, "");
      assert.ok(run.stderr.includes(cfg), `names the file: ${run.stderr}`);
      assert.match(run.stderr, message);
      return run;
    };

    await t.step('"password" is not allowed, and its value is not echoed', async () => {
      const run = await rejected(
        { host: "/nonexistent/s", password: "hunter2-in-config" },
        /"password" is not allowed here; use PGPASSWORD or a 0600 password file/,
      );
      assert.ok(!run.stderr.includes("hunter2-in-config"));
    });

    await t.step('"passphrase" is not allowed either', async () => {
      await rejected({ passphrase: "x" }, /"passphrase" is not allowed/);
    });

    await t.step("an unknown key is named", async () => {
      await rejected({ host: "/nonexistent/s", hots: "typo" }, /unknown key "hots"/);
    });

    await t.step("a value of the wrong type is named", async () => {
      await rejected({ port: "5433" }, /"port" must be a number/);
      await rejected({ host: 1 }, /"host" must be a string/);
    });

    await t.step("invalid JSON", async () => {
      await rejected('{ "host": "/nonexistent/s", }', /is not valid JSON/);
      await rejected("", /is not valid JSON/);
    });

    await t.step("JSON that is not an object", async () => {
      await rejected('["host"]', /must hold a JSON object/);
      await rejected("null", /must hold a JSON object/);
    });

    await t.step("an invalid value in the file is reported with its source", async () => {
      await rejected({ port: 70000 }, /invalid port "70000" \(config .*\): expected 1-65535/);
    });

    await t.step("--config naming a missing file", async () => {
      const run = await cli(["--config", `${home}/missing.json`, "status"], env);
      assert.equal(run.code, 2);
      assert.match(run.stderr, /config file .*missing\.json does not exist/);
    });

    await t.step("invalid flag and env values name their source", async () => {
      const flag = await cli(["--host", "/nonexistent/s", "--port", "x", "status"], env);
      assert.equal(flag.code, 2);
      assert.match(flag.stderr, /invalid port "x" \(flag --port\)/);
      const fromEnv = await cli(["--host", "/nonexistent/s", "status"], {
        ...env,
        DBBACKUP_JOBS: "0",
      });
      assert.equal(fromEnv.code, 2);
      assert.match(fromEnv.stderr, /invalid jobs "0" \(env DBBACKUP_JOBS\)/);
    });
  });
});

/** A TCP port nothing listens on (never 5432). */
function freePort(): number {
  for (;;) {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    if (port !== 5432) return port;
  }
}

async function loadRoles(pg: PgServer): Promise<void> {
  await pg.psql(await Deno.readTextFile(new URL("./fixtures/roles.sql", import.meta.url)));
}

Deno.test("password file: used when 0600, ignored with a warning when group/world readable", async (t) => {
  await withPg(async (pg) => {
    await loadRoles(pg);
    await withHome(async (home) => {
      const passfile = `${home}/pgpass`;
      await Deno.writeTextFile(passfile, `127.0.0.1:${pg.port}:*:alice:${SECRET}\n`);
      const args = ["--host", "127.0.0.1", "--port", String(pg.port), "--user", "alice"];
      const env = { HOME: home, PGPASSFILE: passfile };
      const outputs: string[] = [];

      await t.step("0600: status connects over TCP as alice with the file's password", async () => {
        await Deno.chmod(passfile, 0o600);
        const { run, json } = await status(args, env);
        outputs.push(run.stdout, run.stderr);
        assert.equal(run.code, 0, run.stderr);
        assert.equal(json.connection.ok, true, json.connection.error);
        assert.equal(json.connection.transport, "tcp");
        assert.equal(json.connection.user, "alice");
        assert.equal(json.connection.endpoint, `127.0.0.1:${pg.port}`);
        assert.match(json.connection.auth ?? "", /password \(from passfile /);
        assert.ok(json.connection.auth?.includes(passfile), json.connection.auth);
        assert.deepEqual(json.settings.passfile, { value: passfile, source: "env PGPASSFILE" });
        assert.deepEqual(json.warnings, []);
        assert.equal(json.server?.superuser, false);
      });

      await t.step("0600 via the config file's passfile key works the same", async () => {
        const cfg = `${home}/config.json`;
        await writeConfig(cfg, { passfile });
        const { run, json } = await status([...args, "--config", cfg], { HOME: home });
        outputs.push(run.stdout, run.stderr);
        assert.equal(run.code, 0, run.stderr);
        assert.deepEqual(json.settings.passfile, { value: passfile, source: `config ${cfg}` });
        assert.ok(json.connection.auth?.includes(passfile));
      });

      await t.step(
        "the text output says how the password was found, never the password",
        async () => {
          const run = await cli([...args, "status"], env);
          outputs.push(run.stdout, run.stderr);
          assert.equal(run.code, 0, run.stderr);
          assert.match(
            run.stdout,
            new RegExp(`Connection: ok, tcp 127\\.0\\.0\\.1:${pg.port} as alice`),
          );
          assert.ok(run.stdout.includes(`password (from passfile ${passfile})`), run.stdout);
        },
      );

      await t.step("0644: ignored with a warning, the connection fails with exit 1", async () => {
        await Deno.chmod(passfile, 0o644);
        const { run, json } = await status(args, env);
        outputs.push(run.stdout, run.stderr);
        assert.equal(run.code, 1, `exit 1: ${run.stderr}`);
        assert.equal(json.connection.ok, false);
        assert.equal(json.warnings.length, 1, JSON.stringify(json.warnings));
        assert.match(json.warnings[0], /has group or world access/);
        assert.ok(json.warnings[0].includes(passfile));
        assert.match(
          json.connection.error ?? "",
          /asks for a password for user "alice" and none was given/,
        );
        assert.equal(json.server, undefined);
        // The same in the text output.
        const text = await cli([...args, "status"], env);
        outputs.push(text.stdout, text.stderr);
        assert.equal(text.code, 1);
        assert.match(text.stdout, /Connection: FAILED: .*none was given/);
        assert.match(text.stdout, /warning: password file .* has group or world access/);
      });

      await t.step("0644: backup fails with a clear error, not a crash", async () => {
        const run = await cli([...args, "--repo", `${home}/repo`, "backup", "single", "postgres"], {
          ...env,
        });
        outputs.push(run.stdout, run.stderr);
        assert.equal(run.code, 1, run.stderr);
        assert.match(
          run.stderr,
          /^warning: password file .* has group or world access[^\n]*\ndbbackup: error: cannot back up database "postgres": the server at 127\.0\.0\.1:\d+ asks for a password for user "alice" and none was given/,
        );
        assert.ok(!/uncaught/i.test(run.stderr), run.stderr);
        assert.deepEqual(await Array.fromAsync(Deno.readDir(`${home}/repo`)), []);
      });

      await t.step("0640 (group read only) is ignored too", async () => {
        await Deno.chmod(passfile, 0o640);
        const { run, json } = await status(args, env);
        outputs.push(run.stdout, run.stderr);
        assert.equal(run.code, 1);
        assert.match(json.warnings[0] ?? "", /group or world access/);
      });

      await t.step("a wrong password in the file is an authentication failure", async () => {
        await Deno.writeTextFile(passfile, `127.0.0.1:${pg.port}:*:alice:not-the-password\n`);
        await Deno.chmod(passfile, 0o600);
        const { run, json } = await status(args, env);
        outputs.push(run.stdout, run.stderr);
        assert.equal(run.code, 1);
        assert.match(json.connection.error ?? "", /authentication failed for user "alice"/);
        assert.ok(!JSON.stringify(json).includes("not-the-password"));
      });

      await t.step("PGPASSWORD wins over the file", async () => {
        const { run, json } = await status(args, { ...env, PGPASSWORD: SECRET });
        outputs.push(run.stdout, run.stderr);
        assert.equal(run.code, 0, run.stderr);
        assert.equal(json.connection.auth, "password (from env PGPASSWORD)");
      });

      await t.step("the password appears in no output", () => {
        assert.ok(outputs.length >= 10);
        for (const text of outputs) assert.ok(!text.includes(SECRET), `leaked in:\n${text}`);
      });
    });
  });
});

Deno.test("status against a server: databases with sizes, tools matching the server", async () => {
  await withPg(async (pg) => {
    await pg.createDatabase("shop");
    await pg.psql("CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 50000) g", {
      db: "shop",
    });
    await withHome(async (home) => {
      const repo = `${home}/repo`;
      const { run, json } = await status(["--repo", repo], pgEnv(pg, { HOME: home }));
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stderr, "");

      assert.equal(json.connection.ok, true);
      assert.equal(json.connection.transport, "unix socket");
      assert.equal(json.connection.endpoint, `${pg.socketDir}:${pg.port}`);
      assert.equal(json.connection.user, "postgres");
      assert.equal(json.connection.tls, false);
      assert.match(json.connection.auth ?? "", /no password requested/);
      assert.equal(json.server?.version, pg.version);
      assert.equal(Math.floor(json.server!.versionNum / 10000), pg.major);
      assert.equal(json.server?.superuser, true);

      const dbs = Object.fromEntries((json.databases ?? []).map((d) => [d.name, d]));
      for (const name of ["postgres", "template1", "shop"]) {
        assert.ok(dbs[name], `${name} listed: ${Object.keys(dbs).join(", ")}`);
        assert.ok(dbs[name].sizeBytes > 1_000_000, `${name} has a size: ${dbs[name].sizeBytes}`);
        assert.equal(dbs[name].encoding, "UTF8");
        assert.equal(dbs[name].owner, "postgres");
      }
      assert.ok(dbs.shop.sizeBytes > dbs.postgres.sizeBytes, "shop holds a table");

      const tools = Object.fromEntries(json.tools.map((x) => [x.name, x]));
      for (const name of ["pg_dump", "pg_restore"]) {
        const tool = tools[name];
        assert.ok(tool?.path, `${name} found: ${JSON.stringify(tool)}`);
        assert.equal(tool.matchesServer, true, `${name} matches the server`);
        assert.equal(Number(tool.version!.split(".")[0]), pg.major);
        const info = await Deno.stat(tool.path);
        assert.ok(info.isFile && ((info.mode ?? 0) & 0o111) !== 0, `${tool.path} is executable`);
      }
      assert.deepEqual(json.repository, { location: repo, exists: false, sets: 0 });
      assert.deepEqual(json.warnings, []);

      // The text form shows the same.
      const text = await cli(["--repo", repo, "status"], pgEnv(pg, { HOME: home }));
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /Connection: ok, unix socket .* as postgres, TLS off/);
      assert.match(text.stdout, /^ {2}shop\s+\d+(\.\d)? MiB\s+UTF8\s+owner postgres/m);
      assert.match(text.stdout, /^ {2}pg_dump\s+\S+\/pg_dump \(\d+\.\d+.*\)\s+matches server$/m);
      assert.match(text.stdout, /Repository: .* \(does not exist yet\)/);
    });
  });
});
