import { strict as assert } from "node:assert";
import { DbBackupError } from "../errors.ts";
import {
  formatRecipient,
  generateIdentity,
  IDENTITY_PREFIX,
  parseIdentity,
  parseRecipient,
  RECIPIENT_PREFIX,
} from "./identity.ts";

function assertKeyError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof DbBackupError, `not a DbBackupError: ${err}`);
    assert.equal(err.code, "key");
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("a generated identity names its recipient and parses back to the same key pair", () => {
  const { identityText, recipientText } = generateIdentity(new Date("2026-11-27T03:00:00Z"));
  const lines = identityText.trimEnd().split("\n");
  assert.match(lines[0], /^# created 2026-11-27T03:00:00.000Z/);
  assert.equal(lines[1], `# recipient: ${recipientText.trim()}`);
  assert.match(lines[2], /^DBBACKUP-IDENTITY-V1:[A-Za-z0-9_-]{43}$/);
  assert.match(recipientText, /^dbbackup-recipient-v1:[A-Za-z0-9_-]{43}\n$/);

  const identity = parseIdentity(identityText, 'identity file "id.txt"');
  const recipient = parseRecipient(recipientText, 'recipient file "id.pub"');
  assert.deepEqual(identity.publicKey, recipient.publicKey);
  assert.equal(identity.fingerprint, recipient.fingerprint);
  assert.equal(formatRecipient(recipient.publicKey), recipientText.trim());
  assert.notDeepEqual(
    parseIdentity(generateIdentity().identityText, "x").privateKey,
    identity.privateKey,
  );
});

Deno.test("identity and recipient files tolerate comments, blank lines and CRLF", () => {
  const { identityText, recipientText } = generateIdentity();
  const crlf = `\r\n# a comment\r\n\r\n${identityText.replaceAll("\n", "\r\n")}\r\n`;
  assert.equal(
    parseIdentity(crlf, "id").fingerprint,
    parseIdentity(identityText, "id").fingerprint,
  );
  assert.ok(parseRecipient(`# ops team\n\n  ${recipientText}  \n`, "r"));
});

Deno.test("bad recipient text is refused with a message naming its source", () => {
  const { identityText, recipientText } = generateIdentity();
  const src = 'recipient file "r.pub"';
  const good = recipientText.trim();
  const cases: [string, RegExp][] = [
    ["", /recipient file "r.pub" must hold exactly one dbbackup-recipient-v1:\.\.\. line, found 0/],
    [`${good}\n${good}`, /found 2 lines/],
    [
      "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq",
      /is not a dbbackup recipient/,
    ],
    [good.slice(0, -1), /is not a dbbackup recipient/],
    [good + "A", /is not a dbbackup recipient/],
    [good.slice(0, -2) + "!!", /is not a dbbackup recipient/],
    [`${RECIPIENT_PREFIX}${btoa("x".repeat(32))}`, /is not a dbbackup recipient/],
    [identityText, /holds a private identity, not a recipient/],
  ];
  for (const [text, pattern] of cases) {
    assertKeyError(() => parseRecipient(text, src), pattern);
  }
});

Deno.test("bad identity text is refused with a message naming its source", () => {
  const { identityText, recipientText } = generateIdentity();
  const src = 'identity file "id.txt"';
  const line = identityText.trim().split("\n").at(-1)!;
  const cases: [string, RegExp][] = [
    ["", /identity file "id.txt" is not a dbbackup identity file/],
    ["# only comments\n", /is not a dbbackup identity file/],
    [recipientText, /is a recipient \(public key\); restoring needs the identity file/],
    [`${line}\n${line}`, /is not a dbbackup identity file/],
    [line.slice(0, -3), /has a damaged identity line/],
    [`${IDENTITY_PREFIX}not base64!`, /has a damaged identity line/],
  ];
  for (const [text, pattern] of cases) {
    assertKeyError(() => parseIdentity(text, src), pattern);
  }
});
