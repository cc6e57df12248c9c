/**
 * The lock manager's Raft entries and shard reads: the internal commands the edge sends to a shard (as keyspace
 * "write" and "read" requests, so routing, forwarding, batching and replies are the keyspace's), how a shard
 * worker checks them before proposing, and how every replica applies them to its LockTable.
 *
 * Internal commands (never reachable by clients: the edge's command table has only the LOCK.* names):
 *   writes  _lk.acquire name owner X|S ttlMs waitMs waiterId      -> :token | nil (busy) | -ERR limit | parked
 *           _lk.release name owner token|""                       -> :1 | :0
 *           _lk.renew   name owner ttlMs                           -> :1 | :0
 *           _lk.cancel  name waiterId                              -> :1 | :0   (client went away)
 *           _lk.abort   name waiterId cycle                        -> :1 | :0   (deadlock victim)
 *           _lk.expire  (h|w name token|waiterId)...               -> :removed  (leader, from its clock)
 *   reads   _lk.info name | _lk.owned owner | _lk.edges | _lk.deadlocks
 *
 * Invariants:
 * - checkLockCommand() accepts exactly what applyLockWrite() can apply without throwing: a worker proposes only
 *   checked entries, since an entry every replica refuses would stop them all.
 * - applyLockWrite() depends only on the entry (stamp, index, args) and the table: replicas stay identical.
 * - An acquire that parks returns LOCK_PARKED instead of a reply record; the waiter is settled later by a
 *   LockEvent (granted, timeout, deadlock, cancelled) raised while applying some later entry.
 */
import type { ReplySink } from '../server/command.js';
import type { ExpiryItem, LockEvent, LockMode, LockTable } from './lock-table.js';

export const LK_ACQUIRE = '_lk.acquire';
export const LK_RELEASE = '_lk.release';
export const LK_RENEW = '_lk.renew';
export const LK_CANCEL = '_lk.cancel';
export const LK_ABORT = '_lk.abort';
export const LK_EXPIRE = '_lk.expire';
export const LK_INFO = '_lk.info';
export const LK_OWNED = '_lk.owned';
export const LK_EDGES = '_lk.edges';
export const LK_DEADLOCKS = '_lk.deadlocks';

/** Largest TTL and WAIT a request may ask for (24 h): bounds every deadline the table keeps. */
export const LOCK_TIME_MS_MAX = 24 * 3600 * 1000;
/** Longest waiter id the edge makes. */
const WAITER_ID_BYTES_MAX = 64;
/** Longest cycle text an abort entry carries. */
const CYCLE_BYTES_MAX = 4096;

/** What apply returns for an acquire that is now waiting (no reply yet). */
export const LOCK_PARKED: unique symbol = Symbol('lock-parked');

const WRITE_ARITY: Record<string, number> = {
  [LK_ACQUIRE]: 7,
  [LK_RELEASE]: 4,
  [LK_RENEW]: 4,
  [LK_CANCEL]: 3,
  [LK_ABORT]: 4,
};
const READ_ARITY: Record<string, number> = { [LK_INFO]: 2, [LK_OWNED]: 2, [LK_EDGES]: 1, [LK_DEADLOCKS]: 1 };

/** True if args[0] names an internal lock command (of either kind). */
export function isLockCommand(args: readonly Uint8Array[]): boolean {
  const n = args[0];
  return n !== undefined && n.length > 4 && n[0] === 0x5f && n[1] === 0x6c && n[2] === 0x6b && n[3] === 0x2e; // "_lk."
}

function text(b: Uint8Array | undefined): string {
  return b === undefined ? '' : Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');
}

/** A non-negative decimal integer <= max, or -1. */
function parseCount(b: Uint8Array | undefined, max: number): number {
  const s = text(b);
  if (!/^\d{1,16}$/.test(s)) return -1;
  const n = Number(s);
  return n <= max ? n : -1;
}

/**
 * For a blocking acquire, how long it may wait (ms); 0 for everything else. Callers use it for deadlines and to
 * forward blocking requests on their own (they must not hold up a batch).
 */
export function lockWaitMs(args: readonly Uint8Array[]): number {
  if (args.length !== 7 || text(args[0]) !== LK_ACQUIRE) return 0;
  return Math.max(0, parseCount(args[5], LOCK_TIME_MS_MAX));
}

/** The waiter id of an acquire (empty for any other command). */
export function lockWaiterId(args: readonly Uint8Array[]): string {
  return args.length === 7 && text(args[0]) === LK_ACQUIRE ? text(args[6]) : '';
}

/** Null if the internal lock command is well formed for its kind; otherwise why not. */
export function checkLockCommand(kind: 'write' | 'read', args: readonly Uint8Array[]): string | null {
  const name = text(args[0]);
  if (kind === 'read') {
    const a = READ_ARITY[name];
    return a !== undefined && a === args.length ? null : `not a lock read with a valid arity: ${name.slice(0, 40)}`;
  }
  if (name === LK_EXPIRE) {
    if ((args.length - 1) % 3 !== 0 || args.length < 4) return `${LK_EXPIRE}: ${args.length} arguments`;
    for (let i = 1; i < args.length; i += 3) {
      const k = text(args[i]);
      if (k === 'h' ? parseCount(args[i + 2], Number.MAX_SAFE_INTEGER) < 0 : k !== 'w') return `${LK_EXPIRE}: bad item ${(i - 1) / 3}`;
    }
    return null;
  }
  const a = WRITE_ARITY[name];
  if (a === undefined || a !== args.length) return `not a lock write with a valid arity: ${name.slice(0, 40)}`;
  switch (name) {
    case LK_ACQUIRE: {
      const mode = text(args[3]);
      if (mode !== 'X' && mode !== 'S') return 'bad mode';
      if (parseCount(args[4], LOCK_TIME_MS_MAX) < 1) return 'bad ttl';
      if (parseCount(args[5], LOCK_TIME_MS_MAX) < 0) return 'bad wait';
      if (args[6]!.length === 0 || args[6]!.length > WAITER_ID_BYTES_MAX) return 'bad waiter id';
      return null;
    }
    case LK_RELEASE:
      return args[3]!.length === 0 || parseCount(args[3], Number.MAX_SAFE_INTEGER) >= 0 ? null : 'bad token';
    case LK_RENEW:
      return parseCount(args[3], LOCK_TIME_MS_MAX) >= 1 ? null : 'bad ttl';
    case LK_CANCEL:
      return args[2]!.length > 0 && args[2]!.length <= WAITER_ID_BYTES_MAX ? null : 'bad waiter id';
    case LK_ABORT:
      return args[2]!.length > 0 && args[2]!.length <= WAITER_ID_BYTES_MAX && args[3]!.length <= CYCLE_BYTES_MAX ? null : 'bad abort';
  }
  return `not a lock write: ${name.slice(0, 40)}`;
}

/**
 * Applies a checked lock write at (stamp, index). Writes the reply into `sink` and returns undefined, or returns
 * LOCK_PARKED (nothing written) for an acquire that now waits.
 */
export function applyLockWrite(table: LockTable, stamp: number, index: number, args: Buffer[], sink: ReplySink): typeof LOCK_PARKED | undefined {
  const name = text(args[0]);
  switch (name) {
    case LK_ACQUIRE: {
      const r = table.acquire(stamp, index, args[1]!, args[2]!, text(args[3]) as LockMode, Number(text(args[4])), Number(text(args[5])), text(args[6]));
      switch (r.t) {
        case 'granted':
          sink.integer(r.token);
          return undefined;
        case 'busy':
          sink.nil();
          return undefined;
        case 'error':
          sink.error(r.message);
          return undefined;
        case 'queued':
          return LOCK_PARKED;
      }
      break;
    }
    case LK_RELEASE: {
      const tok = args[3]!.length === 0 ? null : Number(text(args[3]));
      sink.integer(table.release(stamp, index, args[1]!, args[2]!, tok));
      return undefined;
    }
    case LK_RENEW:
      sink.integer(table.renew(stamp, index, args[1]!, args[2]!, Number(text(args[3]))));
      return undefined;
    case LK_CANCEL:
      sink.integer(table.cancel(stamp, index, args[1]!, text(args[2])));
      return undefined;
    case LK_ABORT:
      sink.integer(table.abort(stamp, index, args[1]!, text(args[2]), args[3]!.toString('latin1')));
      return undefined;
    case LK_EXPIRE: {
      const items: ExpiryItem[] = [];
      for (let i = 1; i + 2 < args.length; i += 3) {
        if (text(args[i]) === 'h') items.push({ kind: 'holder', name: args[i + 1]!, token: Number(text(args[i + 2])) });
        else items.push({ kind: 'waiter', name: args[i + 1]!, waiterId: text(args[i + 2]) });
      }
      sink.integer(table.expire(stamp, index, items));
      return undefined;
    }
  }
  throw new Error(`lock entry: unchecked command ${name.slice(0, 40)}`);
}

/** The args of an expiry entry for what planExpiry found. */
export function expiryArgs(items: readonly ExpiryItem[]): Buffer[] {
  const args: Buffer[] = [Buffer.from(LK_EXPIRE)];
  for (const it of items) {
    if (it.kind === 'holder') args.push(Buffer.from('h'), it.name, Buffer.from(String(it.token)));
    else args.push(Buffer.from('w'), it.name, Buffer.from(it.waiterId));
  }
  return args;
}

const modeName = (m: LockMode | 'none'): string => (m === 'X' ? 'exclusive' : m === 'S' ? 'shared' : 'none');

/** Serves a checked lock read at time `now` (max of the local clock and the replicated time). */
export function readLock(table: LockTable, now: number, args: Buffer[], sink: ReplySink): void {
  switch (text(args[0])) {
    case LK_INFO: {
      const info = table.info(args[1]!, now);
      if (info === null) {
        sink.nilArray();
        return;
      }
      sink.mapHeader(4);
      sink.bulk('name');
      sink.bulk(info.name);
      sink.bulk('mode');
      sink.bulk(modeName(info.mode));
      sink.bulk('holders');
      sink.arrayHeader(info.holders.length);
      for (const h of info.holders) {
        sink.mapHeader(4);
        sink.bulk('owner');
        sink.bulk(h.owner);
        sink.bulk('mode');
        sink.bulk(modeName(h.mode));
        sink.bulk('token');
        sink.integer(h.token);
        sink.bulk('remaining_ms');
        sink.integer(Math.max(0, h.remainingMs));
      }
      sink.bulk('waiters');
      sink.arrayHeader(info.waiters.length);
      for (const w of info.waiters) {
        sink.mapHeader(3);
        sink.bulk('owner');
        sink.bulk(w.owner);
        sink.bulk('mode');
        sink.bulk(modeName(w.mode));
        sink.bulk('waited_ms');
        sink.integer(Math.max(0, w.waitedMs));
      }
      return;
    }
    case LK_OWNED: {
      const owned = table.owned(args[1]!, now);
      sink.arrayHeader(owned.length);
      for (const o of owned) {
        sink.arrayHeader(4);
        sink.bulk(o.name);
        sink.bulk(modeName(o.mode));
        sink.integer(o.token);
        sink.integer(Math.max(0, o.remainingMs));
      }
      return;
    }
    case LK_EDGES: {
      // Flat: 6 fields per edge (from, waiterId, since, name, to, toId).
      const edges = table.edges();
      sink.arrayHeader(edges.length * 6);
      for (const e of edges) {
        sink.bulk(e.from);
        sink.bulk(e.waiterId);
        sink.integer(e.since);
        sink.bulk(e.name);
        sink.bulk(e.to);
        sink.bulk(e.toId);
      }
      return;
    }
    case LK_DEADLOCKS: {
      const ds = table.deadlocks();
      sink.arrayHeader(ds.length);
      for (const d of ds) {
        sink.arrayHeader(4);
        sink.integer(d.at);
        sink.bulk(d.name);
        sink.bulk(d.victim);
        sink.bulk(d.cycle);
      }
      return;
    }
  }
  throw new TypeError(`readLock: ${text(args[0]).slice(0, 40)} is not a lock read`);
}

export type { LockEvent };
