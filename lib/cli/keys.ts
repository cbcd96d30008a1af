/**
 * Key material from where the user keeps it: DBBACKUP_PASSPHRASE, --passphrase-file,
 * --key-file, --identity (to open sets) and --recipient (to encrypt for). Never argv values:
 * the flags name files. Secret files must not be readable by group or others.
 */
import { DbBackupError, UsageError } from "../errors.ts";
import {
  type KeyHolder,
  type KeyOpener,
  parseIdentity,
  parseKeyFile,
  parseRecipient,
} from "../crypto/mod.ts";

export interface KeyFlags {
  passphraseFile?: string;
  keyFile?: string[];
  identity?: string[];
  recipient?: string[];
}

export interface KeySources extends KeyFlags {
  env: Record<string, string | undefined>;
}

/** The passphrase, key files and identities given, read and checked once. */
async function readKeys(src: KeySources) {
  const keyFiles: Uint8Array[] = [];
  for (const path of src.keyFile ?? []) {
    keyFiles.push(parseKeyFile(await readSecret(path), `key file ${path}`));
  }
  const identities = [];
  for (const path of src.identity ?? []) {
    const text = new TextDecoder().decode(await readSecret(path));
    identities.push(parseIdentity(text, `identity file ${path}`));
  }
  return { passphrase: await loadPassphrase(src), keyFiles, identities };
}

/** Everything that may open an encrypted set. */
export async function loadOpeners(src: KeySources): Promise<KeyOpener[]> {
  const { passphrase, keyFiles, identities } = await readKeys(src);
  return [
    ...(passphrase === undefined ? [] : [{ kind: "passphrase" as const, passphrase }]),
    ...keyFiles.map((key) => ({ kind: "keyfile" as const, key })),
    ...identities.map((i) => ({ kind: "identity" as const, privateKey: i.privateKey })),
  ];
}

/**
 * Every key holder a new set's data key is wrapped for (an identity counts as its recipient);
 * refuses when there is none.
 */
export async function loadHolders(src: KeySources): Promise<KeyHolder[]> {
  const { passphrase, keyFiles, identities } = await readKeys(src);
  const holders: KeyHolder[] = [
    ...(passphrase === undefined ? [] : [{ kind: "passphrase" as const, passphrase }]),
    ...keyFiles.map((key) => ({ kind: "keyfile" as const, key })),
    ...identities.map((i) => ({ kind: "recipient" as const, publicKey: i.publicKey })),
  ];
  for (const path of src.recipient ?? []) {
    const text = new TextDecoder().decode(await readFile(path, "recipient file"));
    holders.push({
      kind: "recipient",
      publicKey: parseRecipient(text, `recipient file ${path}`).publicKey,
    });
  }
  if (holders.length === 0) {
    throw new UsageError(
      "--encrypt needs a key holder: DBBACKUP_PASSPHRASE, --passphrase-file FILE, --key-file FILE or --recipient FILE",
    );
  }
  return holders;
}

/** DBBACKUP_PASSPHRASE, else the first line of --passphrase-file. */
export async function loadPassphrase(src: KeySources): Promise<string | undefined> {
  if (src.passphraseFile !== undefined) {
    const text = new TextDecoder().decode(await readSecret(src.passphraseFile));
    const passphrase = text.replace(/\r?\n$/, "");
    if (passphrase === "") {
      throw new DbBackupError("key", `passphrase file ${src.passphraseFile} is empty`);
    }
    return passphrase;
  }
  const env = src.env.DBBACKUP_PASSPHRASE;
  return env === undefined || env === "" ? undefined : env;
}

/** Reads a file holding a secret; refuses one that group or others may read. */
export async function readSecret(path: string): Promise<Uint8Array> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    throw fileError(path, "secret file", err);
  }
  if (info.mode !== null && (info.mode & 0o077) !== 0) {
    throw new DbBackupError(
      "key",
      `refusing to use ${path}: it is readable by others (mode ${
        (info.mode & 0o777).toString(8)
      }); run chmod 600 ${path}`,
    );
  }
  return await readFile(path, "secret file");
}

async function readFile(path: string, what: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (err) {
    throw fileError(path, what, err);
  }
}

function fileError(path: string, what: string, err: unknown): DbBackupError {
  if (err instanceof Deno.errors.NotFound) {
    return new DbBackupError("key", `${what} ${path} does not exist`);
  }
  return new DbBackupError("key", `cannot read ${what} ${path}: ${(err as Error).message}`);
}
