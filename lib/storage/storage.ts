/** The storage interface every repository driver implements. Paths are relative, "/"-separated. */

export interface StorageFeatures {
  /** Whether a written file appears under its final name all at once (temp file + rename). */
  atomicPublish: boolean;
  /** Whether directories are real objects (local disk) rather than key prefixes (S3). */
  directories: boolean;
}

export interface FileInfo {
  path: string;
  size: number;
  mtime?: Date;
}

export interface DirEntry {
  name: string;
  isDirectory: boolean;
}

export interface WriteOptions {
  /** Awaited after the data is durable and before it is published; a rejection discards it. */
  ready?: Promise<unknown>;
  signal?: AbortSignal;
}

export interface Storage {
  /** Where this storage points, for messages (never contains credentials). */
  readonly location: string;
  readonly features: StorageFeatures;
  stat(path: string): Promise<FileInfo | undefined>;
  /** Entries directly inside `dir` ("" is the root); empty when it does not exist. */
  list(dir: string): Promise<DirEntry[]>;
  read(path: string): Promise<ReadableStream<Uint8Array>>;
  /** Writes atomically; fails with an "exists" error when `path` already exists. */
  write(path: string, data: ReadableStream<Uint8Array>, options?: WriteOptions): Promise<void>;
  /** Creates a directory; fails with an "exists" error when it already exists. */
  createDirectory(path: string): Promise<void>;
  remove(path: string): Promise<void>;
  /** Free bytes where new files would go, when the driver can tell. */
  freeSpace(): Promise<number | undefined>;
}
