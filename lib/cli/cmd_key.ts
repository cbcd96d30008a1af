import { Command } from "@commander-js/extra-typings";
import { DbBackupError, UsageError } from "../errors.ts";
import { generateIdentity, generateKeyFileBytes, keyFileId, parseIdentity } from "../crypto/mod.ts";
import { rekey } from "../ops/rekey.ts";
import { type CliEnv, collect, type GlobalOptions, makeContext } from "./context.ts";
import { loadHolders } from "./keys.ts";
import { writeOut } from "./reporters.ts";

export function keyCommand(cli: CliEnv) {
  const cmd = new Command("key").description("create keys and give encrypted sets new key holders");

  cmd.command("generate")
    .description("write a new key file: 32 random bytes, mode 0600 (never overwrites)")
    .requiredOption("--out <file>", "where to write it")
    .action(async (opts) => {
      const key = generateKeyFileBytes();
      await writeNew(opts.out, key, 0o600);
      writeOut(`wrote key file ${opts.out} (key id ${keyFileId(key)})\n`);
    });

  cmd.command("identity")
    .description(
      "write a new identity (private key, 0600) and its recipient (public key) to FILE.pub",
    )
    .requiredOption("--out <file>", "where to write the identity")
    .action(async (opts) => {
      const { identityText, recipientText } = generateIdentity();
      await writeNew(opts.out, new TextEncoder().encode(identityText), 0o600);
      await writeNew(`${opts.out}.pub`, new TextEncoder().encode(recipientText), 0o644);
      const fingerprint = parseIdentity(identityText, opts.out).fingerprint;
      writeOut(
        `wrote identity ${opts.out} and recipient ${opts.out}.pub (fingerprint ${fingerprint})\n` +
          `back up with --recipient ${opts.out}.pub; restore with --identity ${opts.out}\n`,
      );
    });

  cmd.command("rekey")
    .description(
      "add a key holder to encrypted sets without rewriting their data (open them with the current key)",
    )
    .argument("<backup...>", 'backup set ids, unique prefixes, or "latest"')
    .option(
      "--new-passphrase-file <file>",
      "file (0600) with the new passphrase (or DBBACKUP_NEW_PASSPHRASE)",
    )
    .option("--new-key-file <file>", "a new key file (repeatable)", collect, [] as string[])
    .option(
      "--new-recipient <file>",
      "a new recipient public key file (repeatable)",
      collect,
      [] as string[],
    )
    .action(async (refs, opts, sub) => {
      const ctx = await makeContext(sub.optsWithGlobals() as GlobalOptions, {}, cli);
      const newPassphrase = opts.newPassphraseFile === undefined
        ? (cli.env.DBBACKUP_NEW_PASSPHRASE || undefined)
        : undefined;
      if (
        !opts.newPassphraseFile && !newPassphrase && !opts.newKeyFile?.length &&
        !opts.newRecipient?.length
      ) {
        throw new UsageError(
          "key rekey needs a new key holder: --new-key-file, --new-recipient, --new-passphrase-file or DBBACKUP_NEW_PASSPHRASE",
        );
      }
      // The new holders are read like backup's, from their own flags and variable.
      const holders = await loadHolders({
        env: { DBBACKUP_PASSPHRASE: newPassphrase },
        passphraseFile: opts.newPassphraseFile,
        keyFile: opts.newKeyFile,
        recipient: opts.newRecipient,
      });
      const results = await rekey({ repo: ctx.repo, refs, holders, dryRun: ctx.dryRun });
      if (ctx.json) {
        writeOut(JSON.stringify({ type: "summary", operation: "key rekey", sets: results }) + "\n");
        return;
      }
      for (const r of results) {
        writeOut(
          `${r.setId}: ${ctx.dryRun ? "would add" : "added"} ${r.added.join(", ")}${
            r.path ? ` (${r.path})` : ""
          }\n`,
        );
      }
    });
  return cmd;
}

/** Creates a file that must not exist yet, with `mode` regardless of the umask. */
async function writeNew(path: string, bytes: Uint8Array, mode: number): Promise<void> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { write: true, createNew: true, mode });
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) {
      throw new DbBackupError("exists", `refusing to overwrite ${path}`);
    }
    throw new DbBackupError("io", `cannot create ${path}: ${(err as Error).message}`);
  }
  try {
    await Deno.chmod(path, mode);
    for (let at = 0; at < bytes.length;) at += await file.write(bytes.subarray(at));
    await file.sync();
  } finally {
    file.close();
  }
}
