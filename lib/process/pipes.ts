/**
 * Larger pipes between this process and its children (Linux only, best effort).
 *
 * A pipe holds 64 KiB. A child streaming a GB of COPY data into one fills it 16 times per MiB,
 * and each time it blocks and has to be woken again; on the 2-core VM this was measured on, the
 * wake-ups cost more than moving the bytes. With 1 MiB pipes a native backup of the bench data
 * (2.2 GB of COPY text through psql) took 5.4-5.9 s instead of 6.4-7.0 s, and the machine's idle
 * time during it halved.
 *
 * Deno does not expose the descriptors of a child's pipes, so the pipe is found through /proc
 * (the child's stdin or stdout and one of ours name the same `pipe:[inode]`) and resized with
 * fcntl(F_SETPIPE_SZ) from libc. Anything unusual (another OS, no libc.so.6, FFI not permitted,
 * /proc not mounted, the user's pipe quota used up) leaves the pipe as it was: only the speed
 * depends on this.
 */

/** The size asked for: Linux's default limit for unprivileged processes (pipe-max-size). */
const PIPE_BYTES = 1024 * 1024;

const F_SETPIPE_SZ = 1031;

type Libc = Deno.DynamicLibrary<{
  fcntl: { parameters: ["i32", "i32", "i32"]; result: "i32" };
}>;

/** libc, opened on first use; null when it cannot be (then nothing is ever resized). */
let libc: Libc | null | undefined;

function openLibc(): Libc | null {
  if (libc !== undefined) return libc;
  libc = null;
  if (Deno.build.os !== "linux") return libc;
  try {
    // Without the permission granted up front, asking for it could prompt on a terminal.
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return libc;
    libc = Deno.dlopen("libc.so.6", {
      fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
    });
  } catch {
    // musl, no FFI permission: pipes stay as they are
  }
  return libc;
}

/** Resizes the pipe that is descriptor `childFd` (0 or 1) of child `pid` to PIPE_BYTES. */
export function enlargeChildPipe(pid: number, childFd: 0 | 1): void {
  const lib = openLibc();
  if (!lib) return;
  try {
    const pipe = Deno.readLinkSync(`/proc/${pid}/fd/${childFd}`);
    if (!pipe.startsWith("pipe:")) return;
    for (const entry of Deno.readDirSync("/proc/self/fd")) {
      let target: string;
      try {
        target = Deno.readLinkSync(`/proc/self/fd/${entry.name}`);
      } catch {
        continue; // closed meanwhile (the listing's own descriptor, too)
      }
      if (target !== pipe) continue;
      // A descriptor closed and reused between the readlink and here is at worst another
      // pipe (resized too, harmlessly) or not a pipe (fcntl fails with EBADF or EINVAL).
      lib.symbols.fcntl(Number(entry.name), F_SETPIPE_SZ, PIPE_BYTES);
      return;
    }
  } catch {
    // no /proc, or the child is gone already
  }
}
