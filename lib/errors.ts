/**
 * Every error dbbackup raises on purpose, each with a stable code and an exit code.
 *
 * Messages name the action and the value ("cannot back up database "shop": ..."). Only
 * main.ts turns them into an exit; library code throws them.
 */

/** Exit codes, documented in README.md and `dbbackup --help`. */
export const ExitCode = {
  ok: 0,
  failure: 1,
  usage: 2,
  partial: 3,
  verification: 4,
  key: 5,
  interrupted: 130,
} as const;
export type ExitCode = typeof ExitCode[keyof typeof ExitCode];

/** Stable error codes, one per kind of expected failure. */
export type ErrorCode =
  | "usage"
  | "config"
  | "connection"
  | "auth"
  | "not_found"
  | "exists"
  | "refused"
  | "backup_failed"
  | "restore_failed"
  | "partial"
  | "verification"
  | "key"
  | "incomplete"
  | "process"
  | "interrupted"
  | "locked"
  | "io";

const exitCodes: Record<ErrorCode, ExitCode> = {
  usage: ExitCode.usage,
  config: ExitCode.usage,
  connection: ExitCode.failure,
  auth: ExitCode.failure,
  not_found: ExitCode.failure,
  exists: ExitCode.failure,
  refused: ExitCode.failure,
  backup_failed: ExitCode.failure,
  restore_failed: ExitCode.failure,
  partial: ExitCode.partial,
  verification: ExitCode.verification,
  key: ExitCode.key,
  incomplete: ExitCode.failure,
  process: ExitCode.failure,
  interrupted: ExitCode.interrupted,
  locked: ExitCode.failure,
  io: ExitCode.failure,
};

/** An expected failure: printed as one line, no stack trace. */
export class DbBackupError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DbBackupError";
    this.code = code;
  }
  get exitCode(): ExitCode {
    return exitCodes[this.code];
  }
}

/** Bad user input: the CLI prints usage advice with it. */
export class UsageError extends DbBackupError {
  constructor(message: string) {
    super("usage", message);
    this.name = "UsageError";
  }
}

/** The run was interrupted by SIGINT or SIGTERM. */
export class InterruptedError extends DbBackupError {
  constructor(message = "interrupted") {
    super("interrupted", message);
    this.name = "InterruptedError";
  }
}

/** The message of any thrown value, without a stack. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Throws InterruptedError when the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new InterruptedError(`interrupted while ${what}`);
}
