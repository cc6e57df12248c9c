/**
 * Errors of the Raft core. A `RaftInvariantError` is a bug (in the core or in its host): the core throws it rather
 * than continue with corrupt state. A `RaftConfigError` names the bad option and the accepted range. Operating
 * conditions (not leader, busy, ...) are never thrown: they are returned as values (see `ProposeResult`).
 */
export class RaftInvariantError extends Error {
  readonly code = 'RAFT_INVARIANT' as const;
  constructor(message: string) {
    super(message);
    this.name = 'RaftInvariantError';
  }
}

export class RaftConfigError extends Error {
  readonly code = 'RAFT_CONFIG' as const;
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`raft config ${option}: ${message}`);
    this.name = 'RaftConfigError';
  }
}

/** Throws a RaftInvariantError when `cond` is false. The message is built lazily so the hot path pays nothing. */
export function invariant(cond: boolean, message: () => string): asserts cond {
  if (!cond) throw new RaftInvariantError(message());
}
