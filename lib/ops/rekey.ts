/**
 * `key rekey`: gives encrypted sets more key holders. The set's data key is opened with the
 * repository's openers and wrapped again for each new holder, in a new file under the set's
 * `keys/` folder; the data and the manifest are not rewritten. (Removing a holder cannot undo
 * what it could read: a leaked data key needs a new backup, not a rekey.)
 */
import { DbBackupError } from "../errors.ts";
import { describeSlot, type KeyHolder, type KeySlot, wrapKey } from "../crypto/keys.ts";
import { acquireLock } from "../repo/lock.ts";
import type { Repository } from "../repo/repository.ts";

export interface RekeyOptions {
  repo: Repository;
  refs: string[];
  holders: KeyHolder[];
  dryRun: boolean;
}

export interface RekeyResult {
  setId: string;
  /** The new holders, described ("key file 1a2b…", "recipient …", "passphrase"). */
  added: string[];
  /** Where the new slots were written. */
  path?: string;
}

export async function rekey(opts: RekeyOptions): Promise<RekeyResult[]> {
  const ids: string[] = [];
  for (const ref of opts.refs) ids.push(await opts.repo.resolveId(ref));
  // Every set must open before any is changed.
  const keys = new Map<string, Uint8Array>();
  for (const id of ids) {
    const stored = await opts.repo.readStoredManifest(id);
    if (!stored.sealed) {
      throw new DbBackupError("refused", `backup ${id} is not encrypted: there is no key to add`);
    }
    keys.set(id, await opts.repo.dataKey(id, stored.manifest.encryption.slots));
  }
  const results: RekeyResult[] = [];
  for (const id of ids) {
    const slots: KeySlot[] = [];
    for (const h of opts.holders) slots.push(await wrapKey(keys.get(id)!, id, h));
    const added = slots.map(describeSlot);
    if (opts.dryRun) {
      results.push({ setId: id, added });
      continue;
    }
    const lock = await acquireLock(opts.repo.storage, `set:${id}`, "exclusive", "key rekey");
    try {
      results.push({ setId: id, added, path: await opts.repo.addSlots(id, slots) });
    } finally {
      await lock.release().catch(() => {});
    }
  }
  return results;
}
