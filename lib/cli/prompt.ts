/** Questions on the terminal: a password without echo, and yes/no confirmations. */

const encoder = new TextEncoder();

/** Reads a line without echo from a terminal; undefined when stdin is not a terminal. */
export async function promptPassword(question: string): Promise<string | undefined> {
  if (!Deno.stdin.isTerminal() || !Deno.stderr.isTerminal()) return undefined;
  Deno.stderr.writeSync(encoder.encode(question));
  Deno.stdin.setRaw(true);
  const bytes: number[] = [];
  const buf = new Uint8Array(1);
  try {
    while (true) {
      const n = await Deno.stdin.read(buf);
      if (n === null) break;
      const c = buf[0];
      if (c === 3) throw new Deno.errors.Interrupted("password prompt cancelled");
      if (c === 13 || c === 10) break;
      if (c === 127 || c === 8) bytes.pop();
      else bytes.push(c);
    }
  } finally {
    Deno.stdin.setRaw(false);
    Deno.stderr.writeSync(encoder.encode("\n"));
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

/** Asks a yes/no question on the terminal; false when there is no terminal. */
export function confirm(question: string): boolean {
  if (!Deno.stdin.isTerminal()) return false;
  const answer = prompt(`${question} [y/N]`);
  return answer !== null && /^y(es)?$/i.test(answer.trim());
}
