/**
 * dbbackup as a library: the operations and their types. No CLI code here.
 * @module
 */
export { backup, planBackup } from "./lib/ops/backup.ts";
export type { BackupOptions, BackupPlan, BackupResult } from "./lib/ops/backup.ts";
export { planRestore, restore } from "./lib/ops/restore.ts";
export type { RestoreOptions, RestorePlan, RestoreResult } from "./lib/ops/restore.ts";
export { verify } from "./lib/ops/verify.ts";
export type { VerifyOptions, VerifyReport } from "./lib/ops/verify.ts";
export { list } from "./lib/ops/list.ts";
export type { SetSummary } from "./lib/ops/list.ts";
export { groupOf, prune } from "./lib/ops/prune.ts";
export type { PruneOptions, PruneResult } from "./lib/ops/prune.ts";
export { rekey } from "./lib/ops/rekey.ts";
export { applyPolicy } from "./lib/retention/policy.ts";
export type { Decision, RetentionPolicy, RetentionSet } from "./lib/retention/policy.ts";
export { parseDuration } from "./lib/retention/duration.ts";
export { status } from "./lib/ops/status.ts";
export type { StatusReport } from "./lib/ops/status.ts";
export type { ProgressEvent, Reporter } from "./lib/ops/progress.ts";
export { resolveSettings } from "./lib/config/settings.ts";
export type { FlagValues, Settings } from "./lib/config/settings.ts";
export { PgTarget } from "./lib/engine/pg/connect.ts";
export { Repository } from "./lib/repo/repository.ts";
export { LocalStorage } from "./lib/storage/local.ts";
export { s3OptionsFromEnv, S3Storage } from "./lib/storage/s3.ts";
export type { S3Options } from "./lib/storage/s3.ts";
export { acquireLock } from "./lib/repo/lock.ts";
export {
  generateDataKey,
  generateIdentity,
  generateKeyFileBytes,
  type KeyHolder,
  type KeyOpener,
} from "./lib/crypto/mod.ts";
export type { Storage } from "./lib/storage/storage.ts";
export type { Manifest } from "./lib/repo/manifest.ts";
export { DbBackupError, ExitCode } from "./lib/errors.ts";
export { VERSION } from "./lib/version.ts";
