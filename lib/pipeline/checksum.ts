/** A pass-through stream that hashes and counts what flows through it. */
import { createHash } from "node:crypto";

export interface Digest {
  /** Lower-case hex sha256 of every byte that passed. */
  sha256: string;
  bytes: number;
}

/**
 * A TransformStream that passes bytes through unchanged and resolves `digest` when the
 * stream is flushed. `digest` rejects if the stream is aborted or cancelled.
 */
export class ChecksumStream extends TransformStream<Uint8Array, Uint8Array> {
  readonly digest: Promise<Digest>;
  constructor() {
    const hash = createHash("sha256");
    let bytes = 0;
    let resolve!: (d: Digest) => void;
    let reject!: (e: unknown) => void;
    const digest = new Promise<Digest>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    digest.catch(() => {});
    super({
      transform(chunk, controller) {
        hash.update(chunk);
        bytes += chunk.byteLength;
        controller.enqueue(chunk);
      },
      flush() {
        resolve({ sha256: hash.digest("hex"), bytes });
      },
      cancel(reason) {
        reject(reason);
      },
    });
    this.digest = digest;
  }
}
