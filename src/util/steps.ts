/**
 * Work done in steps: a generator that yields between bounded slices of work and returns its result at the end, so
 * a caller can spread a long job (a snapshot encode) over several event-loop turns, or run it at once (runSteps).
 */
export type Steps<T> = Generator<void, T, void>;

/** Runs `steps` to its end and returns its result. */
export function runSteps<T>(steps: Steps<T>): T {
  for (;;) {
    const r = steps.next();
    if (r.done === true) return r.value;
  }
}
