/**
 * Runs s3rver (an S3 look-alike) for tests; started as a child process by s3_server.ts.
 *
 *   deno run ... s3rver_main.ts <storage dir> <port, 0 for any> <bucket>
 *
 * The only access key is taken from S3RVER_ACCESS_KEY_ID / S3RVER_SECRET_ACCESS_KEY (the
 * built-in S3RVER/S3RVER pair is revoked). Prints one JSON line `{"port": N}` once it accepts
 * connections. Two gaps of s3rver 3.7.1 under Deno are filled in here, and nothing else:
 * - AbortMultipartUpload (DELETE ?uploadId) answers 405: it now removes the upload's parts.
 * - ListObjectsV2 continuation tokens are DES-encrypted and Deno's node:crypto has no DES: the
 *   token is encrypted with AES instead (only this server ever reads it).
 */
import crypto from "node:crypto";
import S3rver from "s3rver";
import AWSAccount from "s3rver/lib/models/account.js";

const [directory, portArg, bucket] = Deno.args;
const accessKeyId = Deno.env.get("S3RVER_ACCESS_KEY_ID");
const secretAccessKey = Deno.env.get("S3RVER_SECRET_ACCESS_KEY");
if (!directory || !portArg || !bucket || !accessKeyId || !secretAccessKey) {
  console.error(
    "usage: S3RVER_ACCESS_KEY_ID=.. S3RVER_SECRET_ACCESS_KEY=.. s3rver_main.ts DIR PORT BUCKET",
  );
  Deno.exit(2);
}

AWSAccount.DUMMY_ACCOUNT.revokeAccessKey("S3RVER");
AWSAccount.DUMMY_ACCOUNT.createKeyPair(accessKeyId, secretAccessKey);

type CipherFactory = (alg: string, key: Uint8Array, iv: Uint8Array) => unknown;
const widen = (bytes: Uint8Array) => {
  const out = new Uint8Array(16);
  out.set(bytes.subarray(0, 16));
  return out;
};
const desToAes = (original: CipherFactory): CipherFactory => (alg, key, iv) =>
  alg === "des" ? original("aes-128-cbc", widen(key), widen(iv)) : original(alg, key, iv);
const mutableCrypto = crypto as unknown as Record<string, CipherFactory>;
mutableCrypto.createCipheriv = desToAes(crypto.createCipheriv as unknown as CipherFactory);
mutableCrypto.createDecipheriv = desToAes(crypto.createDecipheriv as unknown as CipherFactory);

// deno-lint-ignore no-explicit-any
type KoaContext = any;

/** DELETE /<bucket>/<key>?uploadId=<id>: drops the upload's folder, as S3 drops the parts. */
async function abortMultipartUpload(ctx: KoaContext, next: () => Promise<void>) {
  const uploadId = ctx.query?.uploadId;
  if (ctx.method !== "DELETE" || typeof uploadId !== "string") return await next();
  const credential = /Credential=([^/,\s]+)\//.exec(ctx.get("authorization") ?? "")?.[1];
  const fail = (status: number, code: string, message: string) => {
    ctx.status = status;
    ctx.type = "application/xml";
    ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code>` +
      `<Message>${message}</Message></Error>`;
  };
  if (credential !== accessKeyId) {
    return fail(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist.");
  }
  const pathBucket = decodeURIComponent(String(ctx.path).split("/")[1] ?? "");
  if (!/^[0-9a-f]+$/.test(uploadId) || pathBucket !== bucket) {
    return fail(404, "NoSuchUpload", "The specified upload does not exist.");
  }
  try {
    await Deno.remove(`${directory}/${bucket}/._S3rver_uploads/${uploadId}`, { recursive: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      return fail(404, "NoSuchUpload", "The specified upload does not exist.");
    }
    throw err;
  }
  ctx.status = 204;
}

const server = new S3rver({
  address: "127.0.0.1",
  port: Number(portArg),
  directory,
  silent: true,
  vhostBuckets: false,
  configureBuckets: [{ name: bucket, configs: [] }],
});
// Koa composes its middleware when the server starts listening: insert ours before the router.
server.middleware.splice(server.middleware.length - 1, 0, abortMultipartUpload);
const address = await server.run();
console.log(JSON.stringify({ port: address.port }));
