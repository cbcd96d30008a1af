/**
 * The V8 flags dbbackup runs with. They cannot be set from inside the program (V8 sizes its heap
 * before any code runs), so every way of starting it passes them: the release binaries
 * (`deno compile --v8-flags=...` in .github/workflows/release.yml), `deno task dbbackup`, the
 * tests and the benchmark. tests/v8_flags_test.ts checks that those places agree with this list.
 *
 * --max-semi-space-size=1 (MB; V8 grows it to 16 by default): the data path allocates a new
 * ArrayBuffer for every piece that passes through it (zlib output, COPY messages). The buffers
 * live outside the JS heap, so they do not fill the young generation, and with a 16 MB one
 * V8 collected them only every few hundred of them: tens of MB of consumed buffers waited for
 * a collection. With a 1 MB young generation they go within milliseconds. Measured on a 2.7 GB
 * database, 2 jobs: native restore peak RSS 157-159 MB -> 124-126 MB, native backup
 * 137 MB -> 104 MB; over four alternating restores each, wall time 32.0 -> 32.4 s and
 * dbbackup's CPU time 10.6 -> 10.9 s (within this machine's run-to-run noise).
 */
export const V8_FLAGS: readonly string[] = ["--max-semi-space-size=1"];

/** `--v8-flags=...` as one argument for `deno run` or `deno compile`. */
export const V8_FLAGS_ARG = `--v8-flags=${V8_FLAGS.join(",")}`;
