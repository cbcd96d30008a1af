/** Stopping work that runs beside a task when that task fails. */

/**
 * `task`, watched: the returned signal aborts when `outer` does, or when `task` fails (with its
 * error as the reason), so whatever runs beside the task and takes the signal stops then too.
 * The returned task settles as `task` does; it counts as handled until someone awaits it.
 */
export function stopOnFailure<T>(
  task: Promise<T>,
  outer?: AbortSignal,
): { task: Promise<T>; signal: AbortSignal } {
  const stop = new AbortController();
  const watched = task.catch((err) => {
    stop.abort(err);
    throw err;
  });
  watched.catch(() => {});
  return { task: watched, signal: outer ? AbortSignal.any([outer, stop.signal]) : stop.signal };
}
