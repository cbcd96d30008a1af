/** The storage interface every repository driver implements. Paths are relative, "/"-separated. */

export interface StorageFeatures {
  /** Whether a written file appears under its final name all at once (temp file + rename). */
  atomicPublish: boolean;
  /** Whether directories are real objects (local disk) rather than key prefixes (S3). */
  directories: boolean;
}

export interface FileInfo {
  path: string;
  /** Bytes of a file; 0 for a directory on drivers without real directories. */
  size: number;
  mtime?: Date;
  /** A folder (local disk) or a key prefix with objects under it (S3). */
  isDirectory?: boolean;
}

export interface DirEntry {
  name: string;
  isDirectory: boolean;
}

export interface ReadOptions {
  /** First byte to read; default 0. At or after the end the stream is empty. */
  offset?: number;
  /** Read at most this many bytes; default up to the end. */
  length?: number;
}

export interface WriteOptions {
  /** Awaited after the data is durable and before it is published; a rejection discards it. */
  ready?: Promise<unknown>;
  signal?: AbortSignal;
  /** The expected size in bytes, when known: drivers size upload parts by it. Not a limit. */
  sizeHint?: number;
}

export interface Storage {
  /** Where this storage points, for messages (never contains credentials). */
  readonly location: string;
  readonly features: StorageFeatures;
  stat(path: string): Promise<FileInfo | undefined>;
  /** Entries directly inside `dir` ("" is the root); empty when it does not exist. */
  list(dir: string): Promise<DirEntry[]>;
  /** Streams a file, or a byte range of it; fails with "not_found" when it does not exist. */
  read(path: string, options?: ReadOptions): Promise<ReadableStream<Uint8Array>>;
  /** Writes atomically; fails with an "exists" error when `path` already exists. */
  write(path: string, data: ReadableStream<Uint8Array>, options?: WriteOptions): Promise<void>;
  /** Creates a directory; fails with an "exists" error when it already exists. */
  createDirectory(path: string): Promise<void>;
  /** Removes a file, or a directory with everything in it; nothing there is fine. */
  remove(path: string): Promise<void>;
  /** Free bytes where new files would go, when the driver can tell. */
  freeSpace(): Promise<number | undefined>;
  /**
   * Removes what interrupted writes left under `dir` (temporary files of a killed process);
   * returns how many. Drivers that publish without temporaries do not have it.
   */
  removeTemporaries?(dir: string): Promise<number>;
}
