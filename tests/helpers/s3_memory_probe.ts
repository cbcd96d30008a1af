/**
 * Measures this process's memory while S3Storage uploads and downloads a large generated stream;
 * run as a child by the S3 memory test, so that no other test shares the process.
 *
 *   AWS_ACCESS_KEY_ID=.. AWS_SECRET_ACCESS_KEY=.. deno run --v8-flags=--expose-gc \
 *     s3_memory_probe.ts ENDPOINT BUCKET BYTES PART_SIZE natural|collect
 *
 * "natural" samples RSS as it is. "collect" runs a full garbage collection before each sample,
 * so that what is measured is the memory kept alive, not the garbage V8 lets pile up (it
 * collects ArrayBuffers only once about 64 MB more of them exist than after the last GC).
 *
 * Prints one JSON line: baseline, uploadPeak and downloadPeak RSS in bytes, and the sha256 of
 * what was written and of what was read back.
 */
import { createHash } from "node:crypto";
import { s3OptionsFromEnv, S3Storage } from "../../lib/storage/s3.ts";

const [endpoint, bucket, bytesArg, partSizeArg, mode] = Deno.args;
const total = Number(bytesArg);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --v8-flags=--expose-gc");
const storage = new S3Storage(`s3://${bucket}/memory-probe-${mode}`, {
  ...s3OptionsFromEnv(Deno.env.toObject()),
  endpoint,
  partSize: Number(partSizeArg),
});

/** `size` bytes of random data in 1 MiB chunks, hashed on the way. */
function generated(size: number, hash: ReturnType<typeof createHash>): ReadableStream<Uint8Array> {
  let left = size;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (left === 0) return controller.close();
      const chunk = new Uint8Array(Math.min(left, 1024 * 1024));
      for (let at = 0; at < chunk.byteLength; at += 65536) {
        crypto.getRandomValues(chunk.subarray(at, at + 65536));
      }
      hash.update(chunk);
      left -= chunk.byteLength;
      controller.enqueue(chunk);
    },
  }, { highWaterMark: 0 });
}

/** The highest RSS seen while `work` runs, sampled every 20 ms. */
async function peakDuring(work: () => Promise<void>): Promise<number> {
  const sample = () => {
    if (mode === "collect") gc!();
    peak = Math.max(peak, Deno.memoryUsage().rss);
  };
  let peak = 0;
  sample();
  const timer = setInterval(sample, 20);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  sample();
  return peak;
}

// Warm up (code paths, connections) so that the baseline is the steady state.
await storage.write("warmup", ReadableStream.from([new Uint8Array(1000)]));
await new Response(await storage.read("warmup")).arrayBuffer();
gc();
const baseline = Deno.memoryUsage().rss;

const written = createHash("sha256");
const uploadPeak = await peakDuring(() => storage.write("big.bin", generated(total, written)));
const read = createHash("sha256");
const downloadPeak = await peakDuring(async () => {
  for await (const chunk of await storage.read("big.bin")) read.update(chunk);
});
await storage.remove("");
console.log(JSON.stringify({
  baseline,
  uploadPeak,
  downloadPeak,
  written: written.digest("hex"),
  read: read.digest("hex"),
}));
