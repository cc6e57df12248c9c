/**
 * LockTable: the deterministic lock table every Raft replica of a shard runs (see docs/locks.md, "Lock table").
 * It owns the shard's named locks: per lock its holders (owner, mode, fencing token, lease end), its FIFO queue of
 * waiters (owner, mode, wait deadline), the last token it granted; plus an owner -> locks index (for the per-owner
 * limit and owned()) and the most recent deadlock victims. Pure: no timers, no Date.now, no randomness, no I/O.
 * Time comes in as `stamp` (replicated Unix ms) and the Raft log `index` of the entry being applied.
 *
 *   leader:        client request -> propose -> commit -> apply: acquire/release/renew/cancel/abort -> reply
 *   every replica:                              commit -> apply (same calls; replies dropped on followers)
 *   leader, timer: planExpiry(now, max) -> propose -> commit -> apply: expire(items) on every replica
 *   queued waiter: settled later by exactly one LockEvent (granted | timeout | deadlock | cancelled) raised
 *                  synchronously from inside some later mutating call, in the order things happened
 *
 *   a lock:  (absent) --acquire--> held [+ queue] --last holder and waiter gone--> (absent, record deleted)
 *   a waiter: queued --head and compatible--> granted (becomes a holder)
 *                    --expire(deadline passed) | retry--> timeout, --cancel--> cancelled, --abort--> deadlock
 *
 * Invariants (checked by assertConsistent(); a violation is a bug, never an operating error):
 * - An X holder is the only holder. An owner has at most one hold and at most one wait per lock; it has both only
 *   while it holds S and waits to upgrade to X.
 * - Strict FIFO: after every call the head of a queue is not grantable (grantable: an X waiter whose owner is the
 *   only holder or there is none; an S waiter when no X holder). A new request is granted at once only if the
 *   queue is empty and it is compatible with every holder (lapsed holders included).
 * - Fencing tokens strictly increase per lock name, forever: a grant made while applying the entry at `index`
 *   gets max(lastToken + 1, index * TOKEN_STRIDE). At most 1 + waitersPerLockMax (<= 60001 < TOKEN_STRIDE) grants
 *   of one lock happen in one call, so every token of `index` is below (index + 1) * TOKEN_STRIDE, which the first
 *   token of any later entry exceeds: tokens keep increasing even after the record is deleted and recreated.
 * - Only release(), renew(), a re-acquire by the holder itself (all three after its lease lapsed), cancel() of the
 *   grant's waiter id, and expire() remove a holder. Another owner's request never treats a lapsed holder as gone:
 *   after a failover the leader waits out a grace period before proposing expiry, and the table must not bypass it.
 * - Only expire(), a retry, cancel() and abort() remove a waiter that was not granted.
 * - The state (records, tokens, deadlines, deadlock list, lastStamp, lastIndex) is a function of the calls made:
 *   snapshot() is canonical (records sorted by name) and restore(snapshot()) behaves identically from then on.
 *   The expiry heap and the owner index are derived and rebuilt by restore().
 */
import { Packr, Unpackr } from 'msgpackr';

export type LockMode = 'X' | 'S';

export interface LockLimits {
  /** Most waiters queued on one lock (<= WAITERS_PER_LOCK_HARD_MAX, which keeps tokens of one entry apart). */
  waitersPerLockMax: number;
  /** Most locks one owner holds or waits for in this table (one shard; the cluster limit is per shard). */
  locksPerOwnerMax: number;
  /** Longest lock name, in bytes. */
  nameBytesMax: number;
  /** Longest owner, in bytes. */
  ownerBytesMax: number;
  /** How many recent deadlock victims deadlocks() remembers (0 = none). */
  deadlocksKept: number;
}

export const LOCK_LIMITS_DEFAULT: LockLimits = {
  waitersPerLockMax: 1024,
  locksPerOwnerMax: 10_000,
  nameBytesMax: 512,
  ownerBytesMax: 256,
  deadlocksKept: 32,
};

/** Token space of one log index: a grant at `index` gets a token >= index * TOKEN_STRIDE. */
export const TOKEN_STRIDE = 65536;

/** Upper bound of waitersPerLockMax: 1 + waiters grants in one call must stay below TOKEN_STRIDE. */
export const WAITERS_PER_LOCK_HARD_MAX = 60_000;

/** Largest log index whose tokens are still safe integers. */
export const LOCK_INDEX_MAX = Math.floor(Number.MAX_SAFE_INTEGER / TOKEN_STRIDE) - 1;

/** Snapshot format version written by this code. */
export const LOCK_SNAPSHOT_VERSION = 1;

/** Longest prefix of a lock name quoted in an error message, in bytes. */
const NAME_IN_MESSAGE_BYTES_MAX = 64;

export type LockEvent =
  | { t: 'granted'; waiterId: string; name: Buffer; owner: Buffer; token: number }
  | { t: 'timeout'; waiterId: string } // the wait ran out, or a retry superseded this waiter id
  | { t: 'deadlock'; waiterId: string; cycle: string }
  | { t: 'cancelled'; waiterId: string };

export type AcquireResult =
  | { t: 'granted'; token: number }
  | { t: 'queued' }
  | { t: 'busy' }
  | { t: 'error'; message: string };

export interface HolderInfo {
  owner: Buffer;
  token: number;
  mode: LockMode;
  /** expireAt - now; 0 or less once the lease lapsed (the holder stays until expire() removes it). */
  remainingMs: number;
}
export interface WaiterInfo {
  owner: Buffer;
  mode: LockMode;
  waitedMs: number;
  waiterId: string;
}
export interface LockInfo {
  name: Buffer;
  /** 'none' when it has no holder (never seen between calls: a queue without holders is granted at once). */
  mode: LockMode | 'none';
  holders: HolderInfo[];
  waiters: WaiterInfo[];
}
export interface WaitEdge {
  /** The waiting owner. */
  from: Buffer;
  waiterId: string;
  /** Stamp at which the wait began. */
  since: number;
  name: Buffer;
  /** The blocking owner. */
  to: Buffer;
  /** 'h<token>' for a holder, 'w<waiterId>' for an earlier waiter. */
  toId: string;
}
export interface DeadlockRecord {
  at: number;
  name: Buffer;
  victim: Buffer;
  waiterId: string;
  cycle: string;
}
export type ExpiryItem = { kind: 'holder'; name: Buffer; token: number } | { kind: 'waiter'; name: Buffer; waiterId: string };

/** A corrupt or foreign snapshot handed to restore(). */
export class LockSnapshotError extends Error {
  readonly code = 'LOCKS_CORRUPT';
  constructor(what: string) {
    super(`corrupt lock table snapshot: ${what}`);
    this.name = 'LockSnapshotError';
  }
}

interface LockRecord {
  key: string;
  name: Buffer;
  lastToken: number;
  /** By owner key, in grant order (an upgrade keeps its place). */
  holders: Map<string, Holder>;
  byToken: Map<number, Holder>;
  /** The X holder, if any (then it is the only holder). */
  exclusive: Holder | null;
  queue: Waiter[];
  waitersById: Map<string, Waiter>;
  waitersByOwner: Map<string, Waiter>;
}

interface Holder {
  kind: 'holder';
  rec: LockRecord;
  owner: Buffer;
  ownerKey: string;
  mode: LockMode;
  token: number;
  /** Lease end (expireAt), Unix ms. */
  due: number;
  /** Waiter id of the request this grant answered (cancel() of it releases the grant). */
  grantedBy: string;
  /** Position in the expiry heap. */
  pos: number;
}

interface Waiter {
  kind: 'waiter';
  rec: LockRecord;
  owner: Buffer;
  ownerKey: string;
  mode: LockMode;
  waiterId: string;
  since: number;
  /** Wait deadline, Unix ms. */
  due: number;
  /** Lease length to grant with. */
  ttlMs: number;
  pos: number;
}

type Timed = Holder | Waiter;

/** Total order of the expiry heap: due time, then holders before waiters, then name, then token / waiter id. */
function before(a: Timed, b: Timed): boolean {
  if (a.due !== b.due) return a.due < b.due;
  if (a.kind !== b.kind) return a.kind === 'holder';
  if (a.rec.key !== b.rec.key) return a.rec.key < b.rec.key;
  if (a.kind === 'holder') return a.token < (b as Holder).token;
  return a.waiterId < (b as Waiter).waiterId;
}

/** Indexed binary min-heap of every holder and waiter by due time: O(log n) insert, update and removal. */
class DueHeap {
  readonly a: Timed[] = [];

  get length(): number {
    return this.a.length;
  }

  peek(): Timed | undefined {
    return this.a[0];
  }

  push(x: Timed): void {
    x.pos = this.a.length;
    this.a.push(x);
    this.up(x.pos);
  }

  remove(x: Timed): void {
    const i = x.pos;
    if (this.a[i] !== x) throw new Error('lock table invariant: expiry heap lost an entry');
    const last = this.a.pop() as Timed;
    x.pos = -1;
    if (i < this.a.length) {
      this.a[i] = last;
      last.pos = i;
      this.fix(i);
    }
  }

  /** After x.due changed. */
  fix(i: number): void {
    if (!this.up(i)) this.down(i);
  }

  private up(i: number): boolean {
    const a = this.a;
    const x = a[i] as Timed;
    let moved = false;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const y = a[p] as Timed;
      if (!before(x, y)) break;
      a[i] = y;
      y.pos = i;
      i = p;
      moved = true;
    }
    a[i] = x;
    x.pos = i;
    return moved;
  }

  private down(i: number): void {
    const a = this.a;
    const n = a.length;
    const x = a[i] as Timed;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      let c = l;
      if (r < n && before(a[r] as Timed, a[l] as Timed)) c = r;
      const y = a[c] as Timed;
      if (!before(y, x)) break;
      a[i] = y;
      y.pos = i;
      i = c;
    }
    a[i] = x;
    x.pos = i;
  }

  /**
   * Up to `max` entries with due <= now, earliest first, without changing the heap: a best-first walk that
   * visits only due entries and their children (O(max log max)).
   */
  dueBy(now: number, max: number): Timed[] {
    const a = this.a;
    const out: Timed[] = [];
    if (max <= 0 || a.length === 0 || (a[0] as Timed).due > now) return out;
    const frontier: number[] = [0]; // min-heap of positions in `a`
    const less = (i: number, j: number): boolean => before(a[i] as Timed, a[j] as Timed);
    while (frontier.length > 0 && out.length < max) {
      const top = frontier[0] as number;
      const last = frontier.pop() as number;
      if (frontier.length > 0) {
        let i = 0;
        const n = frontier.length;
        for (;;) {
          const l = 2 * i + 1;
          if (l >= n) break;
          let c = l;
          if (l + 1 < n && less(frontier[l + 1] as number, frontier[l] as number)) c = l + 1;
          if (!less(frontier[c] as number, last)) break;
          frontier[i] = frontier[c] as number;
          i = c;
        }
        frontier[i] = last;
      }
      out.push(a[top] as Timed);
      for (const child of [2 * top + 1, 2 * top + 2]) {
        const e = a[child];
        if (e === undefined || e.due > now) continue;
        let i = frontier.length;
        frontier.push(child);
        while (i > 0) {
          const p = (i - 1) >> 1;
          if (!less(child, frontier[p] as number)) break;
          frontier[i] = frontier[p] as number;
          i = p;
        }
        frontier[i] = child;
      }
    }
    return out;
  }
}

const keyOf = (b: Buffer): string => b.toString('latin1');

/** A lock name for an error message: at most NAME_IN_MESSAGE_BYTES_MAX bytes, non-printables as \xNN. */
function showName(b: Buffer): string {
  let s = '';
  for (const c of b.subarray(0, NAME_IN_MESSAGE_BYTES_MAX)) {
    s += c >= 0x20 && c < 0x7f && c !== 0x27 && c !== 0x5c ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, '0')}`;
  }
  return b.length > NAME_IN_MESSAGE_BYTES_MAX ? `${s}...` : s;
}

function checkLimit(limits: LockLimits, field: keyof LockLimits, min: number, max: number): void {
  const v = limits[field];
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new RangeError(`lock limit ${field} must be an integer in [${min}, ${max}], got ${v}`);
  }
}

function checkDuration(what: string, v: number, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) throw new RangeError(`${what} must be a safe integer >= ${min}, got ${v}`);
}

function checkWaiterId(waiterId: string): void {
  if (typeof waiterId !== 'string' || waiterId.length === 0) throw new RangeError('waiterId must be a non-empty string');
}

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: false });

export class LockTable {
  /** Receives every event, synchronously, from inside the mutating call that raised it. Settable at any time. */
  onEvent: ((e: LockEvent) => void) | null;
  readonly limits: LockLimits;

  private records = new Map<string, LockRecord>();
  /** Records with a non-empty queue (edges() visits only these). */
  private contended = new Set<LockRecord>();
  /** owner key -> (lock key -> how many of hold/wait the owner has on it: 1 or 2). */
  private owners = new Map<string, Map<string, number>>();
  private heap = new DueHeap();
  private deadlockList: DeadlockRecord[] = [];
  private lastStamp = 0;
  private lastIndex = 0;
  /** Events of the current call, raised when its state changes are complete. */
  private pending: LockEvent[] = [];

  constructor(limits: Partial<LockLimits> = {}, onEvent?: (e: LockEvent) => void) {
    const l: LockLimits = { ...LOCK_LIMITS_DEFAULT, ...limits };
    checkLimit(l, 'waitersPerLockMax', 1, WAITERS_PER_LOCK_HARD_MAX);
    checkLimit(l, 'locksPerOwnerMax', 1, Number.MAX_SAFE_INTEGER);
    checkLimit(l, 'nameBytesMax', 1, Number.MAX_SAFE_INTEGER);
    checkLimit(l, 'ownerBytesMax', 1, Number.MAX_SAFE_INTEGER);
    checkLimit(l, 'deadlocksKept', 0, Number.MAX_SAFE_INTEGER);
    this.limits = l;
    this.onEvent = onEvent ?? null;
  }

  /** Locks with a holder or a waiter. */
  get size(): number {
    return this.records.size;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Mutations (the Raft apply path)
  // -------------------------------------------------------------------------------------------------------------

  /**
   * Asks for `name` in `mode` for `owner` with a lease of ttlMs, waiting up to waitMs (0 = try-lock).
   * - A holder asking again in its mode (or S while holding X) gets its token back and its lease refreshed.
   * - An S holder asking X: converted at once with a new token if it is the only holder; else it waits at the
   *   head of the queue (keeping its S hold) or is busy (waitMs 0).
   * - An owner already waiting (a retry): keeps its place under the new waiterId and deadline; the old id gets a
   *   timeout event. With waitMs 0 the wait ends: timeout for the old id, busy.
   * - A holder whose lease lapsed: the lapsed grant is dropped first, then the request is a new one.
   */
  acquire(stamp: number, index: number, name: Buffer, owner: Buffer, mode: LockMode, ttlMs: number, waitMs: number, waiterId: string): AcquireResult {
    this.checkCall(stamp, index);
    if (mode !== 'X' && mode !== 'S') throw new RangeError(`mode must be 'X' or 'S', got ${String(mode)}`);
    checkDuration('ttlMs', ttlMs, 1);
    checkDuration('waitMs', waitMs, 0);
    checkWaiterId(waiterId);
    if (!Number.isSafeInteger(stamp + ttlMs) || !Number.isSafeInteger(stamp + waitMs)) {
      throw new RangeError(`stamp + ttlMs / waitMs is not a safe integer (stamp ${stamp})`);
    }
    const key = keyOf(name);
    const ownerKey = keyOf(owner);
    const existing = this.records.get(key);
    const clash = existing?.waitersById.get(waiterId);
    if (clash !== undefined && clash.ownerKey !== ownerKey) {
      throw new RangeError(`waiterId ${waiterId} already waits on this lock for another owner`);
    }
    this.commitTime(stamp, index);
    const invalid = this.checkNames(name, owner);
    if (invalid !== null) return this.finish(invalid);
    const result = this.acquireIn(existing, key, name, owner, ownerKey, mode, ttlMs, waitMs, waiterId, stamp, index);
    const rec = this.records.get(key);
    if (rec !== undefined) this.tidy(rec);
    return this.finish(result);
  }

  /**
   * Removes owner's hold on `name` (only if it has that token, when one is given) and grants waiters. 1 if the
   * hold was live; 0 if it had lapsed (still removed), or there was no such hold (a mere waiter is left alone).
   */
  release(stamp: number, index: number, name: Buffer, owner: Buffer, token: number | null): 0 | 1 {
    this.checkCall(stamp, index);
    if (token !== null && !Number.isSafeInteger(token)) throw new RangeError(`token must be a safe integer or null, got ${token}`);
    this.commitTime(stamp, index);
    const rec = this.records.get(keyOf(name));
    const h = rec?.holders.get(keyOf(owner));
    if (rec === undefined || h === undefined || (token !== null && h.token !== token)) return this.finish(0);
    const live = h.due > stamp;
    this.dropHolder(rec, h);
    this.grantQueue(rec, stamp, index);
    this.tidy(rec);
    return this.finish(live ? 1 : 0);
  }

  /** Extends owner's live hold to stamp + ttlMs (1). A lapsed hold is removed instead (0); no hold: 0. */
  renew(stamp: number, index: number, name: Buffer, owner: Buffer, ttlMs: number): 0 | 1 {
    this.checkCall(stamp, index);
    checkDuration('ttlMs', ttlMs, 1);
    if (!Number.isSafeInteger(stamp + ttlMs)) throw new RangeError(`stamp + ttlMs is not a safe integer (stamp ${stamp})`);
    this.commitTime(stamp, index);
    const rec = this.records.get(keyOf(name));
    const h = rec?.holders.get(keyOf(owner));
    if (rec === undefined || h === undefined) return this.finish(0);
    if (h.due <= stamp) {
      this.dropHolder(rec, h);
      this.grantQueue(rec, stamp, index);
      this.tidy(rec);
      return this.finish(0);
    }
    h.due = stamp + ttlMs;
    this.heap.fix(h.pos);
    return this.finish(1);
  }

  /**
   * The client behind waiterId went away. A queued waiter is removed (event 'cancelled'); a grant that answered
   * waiterId (it was granted as the client left) is released. 1 if either happened, else 0.
   */
  cancel(stamp: number, index: number, name: Buffer, waiterId: string): 0 | 1 {
    this.checkCall(stamp, index);
    checkWaiterId(waiterId);
    this.commitTime(stamp, index);
    const rec = this.records.get(keyOf(name));
    if (rec === undefined) return this.finish(0);
    const w = rec.waitersById.get(waiterId);
    if (w !== undefined) {
      this.dropWaiter(rec, w);
      this.pending.push({ t: 'cancelled', waiterId });
    } else {
      let grant: Holder | undefined;
      for (const h of rec.holders.values()) {
        if (h.grantedBy === waiterId) {
          grant = h;
          break;
        }
      }
      if (grant === undefined) return this.finish(0);
      this.dropHolder(rec, grant);
    }
    this.grantQueue(rec, stamp, index);
    this.tidy(rec);
    return this.finish(1);
  }

  /**
   * Fails queued waiter waiterId as a deadlock victim (event 'deadlock', remembered in deadlocks()). The victim
   * keeps every lock it holds. 1 if it was queued, else 0.
   */
  abort(stamp: number, index: number, name: Buffer, waiterId: string, cycle: string): 0 | 1 {
    this.checkCall(stamp, index);
    checkWaiterId(waiterId);
    this.commitTime(stamp, index);
    const rec = this.records.get(keyOf(name));
    const w = rec?.waitersById.get(waiterId);
    if (rec === undefined || w === undefined) return this.finish(0);
    this.dropWaiter(rec, w);
    this.pending.push({ t: 'deadlock', waiterId, cycle });
    if (this.limits.deadlocksKept > 0) {
      this.deadlockList.push({ at: stamp, name: rec.name, victim: w.owner, waiterId, cycle });
      if (this.deadlockList.length > this.limits.deadlocksKept) this.deadlockList.shift();
    }
    this.grantQueue(rec, stamp, index);
    this.tidy(rec);
    return this.finish(1);
  }

  /**
   * Removes what the leader found expired (planExpiry) if it still is at `stamp`: a holder with that token whose
   * lease ended (expireAt <= stamp), a waiter with that id whose deadline passed (event 'timeout'). Items that no
   * longer match are ignored, so proposing the same items twice is harmless. Then grants waiters. Returns how
   * many were removed.
   */
  expire(stamp: number, index: number, items: ExpiryItem[]): number {
    this.checkCall(stamp, index);
    this.commitTime(stamp, index);
    const touched = new Set<LockRecord>();
    let removed = 0;
    for (const it of items) {
      const rec = this.records.get(keyOf(it.name));
      if (rec === undefined) continue;
      if (it.kind === 'holder') {
        const h = rec.byToken.get(it.token);
        if (h === undefined || h.due > stamp) continue;
        this.dropHolder(rec, h);
      } else {
        const w = rec.waitersById.get(it.waiterId);
        if (w === undefined || w.due > stamp) continue;
        this.dropWaiter(rec, w);
        this.pending.push({ t: 'timeout', waiterId: w.waiterId });
      }
      removed++;
      touched.add(rec);
    }
    for (const rec of touched) {
      this.grantQueue(rec, stamp, index);
      this.tidy(rec);
    }
    return this.finish(removed);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Reads (never change state)
  // -------------------------------------------------------------------------------------------------------------

  /**
   * Up to `max` holders whose lease ended and waiters whose deadline passed by `now`, earliest first: what the
   * leader should propose for expire(). Cost O(max log max), independent of the number of locks. The returned
   * names are the table's own buffers: do not modify them.
   */
  planExpiry(now: number, max: number): ExpiryItem[] {
    return this.heap.dueBy(now, max).map((x): ExpiryItem =>
      x.kind === 'holder' ? { kind: 'holder', name: x.rec.name, token: x.token } : { kind: 'waiter', name: x.rec.name, waiterId: x.waiterId },
    );
  }

  /** The earliest lease end or wait deadline, Infinity if there is none. O(1). */
  nextDeadline(): number {
    return this.heap.peek()?.due ?? Infinity;
  }

  /** Holders (grant order) and waiters (queue order) of `name`, or null if nobody holds or waits for it. */
  info(name: Buffer, now: number): LockInfo | null {
    const rec = this.records.get(keyOf(name));
    if (rec === undefined) return null;
    const holders: HolderInfo[] = [];
    for (const h of rec.holders.values()) holders.push({ owner: h.owner, token: h.token, mode: h.mode, remainingMs: h.due - now });
    const waiters = rec.queue.map((w): WaiterInfo => ({ owner: w.owner, mode: w.mode, waitedMs: Math.max(0, now - w.since), waiterId: w.waiterId }));
    const mode: LockMode | 'none' = rec.exclusive !== null ? 'X' : rec.holders.size > 0 ? 'S' : 'none';
    return { name: rec.name, mode, holders, waiters };
  }

  /** The locks `owner` holds (not those it only waits for), by name; remainingMs <= 0 once a lease lapsed. */
  owned(owner: Buffer, now: number): { name: Buffer; mode: LockMode; token: number; remainingMs: number }[] {
    const ownerKey = keyOf(owner);
    const locks = this.owners.get(ownerKey);
    if (locks === undefined) return [];
    const out: { name: Buffer; mode: LockMode; token: number; remainingMs: number }[] = [];
    for (const key of [...locks.keys()].sort()) {
      const h = this.records.get(key)?.holders.get(ownerKey);
      if (h !== undefined) out.push({ name: h.rec.name, mode: h.mode, token: h.token, remainingMs: h.due - now });
    }
    return out;
  }

  /**
   * The wait-for edges, locks by name, waiters in queue order: each waiter waits for every holder of another
   * owner its mode conflicts with (X conflicts with all, S with X), and for every earlier waiter of another owner
   * when either of the two is X.
   */
  edges(): WaitEdge[] {
    const out: WaitEdge[] = [];
    const recs = [...this.contended].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    for (const rec of recs) {
      rec.queue.forEach((w, i) => {
        for (const h of rec.holders.values()) {
          if (h.ownerKey === w.ownerKey || (w.mode === 'S' && h.mode === 'S')) continue;
          out.push({ from: w.owner, waiterId: w.waiterId, since: w.since, name: rec.name, to: h.owner, toId: `h${h.token}` });
        }
        for (let j = 0; j < i; j++) {
          const e = rec.queue[j] as Waiter;
          if (e.ownerKey === w.ownerKey || (w.mode === 'S' && e.mode === 'S')) continue;
          out.push({ from: w.owner, waiterId: w.waiterId, since: w.since, name: rec.name, to: e.owner, toId: `w${e.waiterId}` });
        }
      });
    }
    return out;
  }

  /** Recent deadlock victims, oldest first (at most limits.deadlocksKept). */
  deadlocks(): DeadlockRecord[] {
    return this.deadlockList.map((d) => ({ ...d }));
  }

  /**
   * Checks every invariant of the header against the whole state (O(state)); throws on the first violation.
   * For tests and simulators.
   */
  assertConsistent(): void {
    const fail = (what: string): never => {
      throw new Error(`lock table invariant: ${what}`);
    };
    const owners = new Map<string, Map<string, number>>();
    const ref = (ownerKey: string, key: string): void => {
      let m = owners.get(ownerKey);
      if (m === undefined) owners.set(ownerKey, (m = new Map()));
      m.set(key, (m.get(key) ?? 0) + 1);
    };
    let timed = 0;
    const onHeap = (x: Timed): void => {
      timed++;
      if (this.heap.a[x.pos] !== x) fail(`${x.kind} of ${x.rec.key} not at its heap position`);
    };
    for (const [key, rec] of this.records) {
      if (rec.key !== key || keyOf(rec.name) !== key) fail(`record key ${key}`);
      if (rec.holders.size === 0 && rec.queue.length === 0) fail(`empty record ${key}`);
      if (rec.byToken.size !== rec.holders.size) fail(`token index of ${key}`);
      let x = 0;
      for (const [ok, h] of rec.holders) {
        if (h.ownerKey !== ok || keyOf(h.owner) !== ok || h.rec !== rec) fail(`holder key in ${key}`);
        if (rec.byToken.get(h.token) !== h) fail(`token ${h.token} of ${key}`);
        if (h.token > rec.lastToken || h.token < TOKEN_STRIDE) fail(`token ${h.token} vs lastToken ${rec.lastToken}`);
        if (h.mode === 'X') x++;
        ref(ok, key);
        onHeap(h);
      }
      if (x > 0 && (rec.holders.size !== 1 || rec.exclusive === null || rec.exclusive.mode !== 'X')) fail(`X holder not alone on ${key}`);
      if (x === 0 && rec.exclusive !== null) fail(`stale exclusive on ${key}`);
      if (rec.waitersById.size !== rec.queue.length || rec.waitersByOwner.size !== rec.queue.length) fail(`waiter indexes of ${key}`);
      for (const w of rec.queue) {
        if (rec.waitersById.get(w.waiterId) !== w || rec.waitersByOwner.get(w.ownerKey) !== w || w.rec !== rec) fail(`waiter ${w.waiterId}`);
        const own = rec.holders.get(w.ownerKey);
        if (own !== undefined && (own.mode !== 'S' || w.mode !== 'X')) fail(`owner both holds ${own.mode} and waits ${w.mode} on ${key}`);
        if (w.since > w.due) fail(`waiter ${w.waiterId} since after deadline`);
        ref(w.ownerKey, key);
        onHeap(w);
      }
      const head = rec.queue[0];
      if (head !== undefined && this.grantable(rec, head)) fail(`grantable head ${head.waiterId} on ${key}`);
      if (this.contended.has(rec) !== rec.queue.length > 0) fail(`contended set on ${key}`);
    }
    if (this.contended.size > this.records.size) fail('contended set has deleted records');
    if (timed !== this.heap.length) fail(`heap holds ${this.heap.length} entries, state has ${timed}`);
    for (let i = 1; i < this.heap.length; i++) {
      if (before(this.heap.a[i] as Timed, this.heap.a[(i - 1) >> 1] as Timed)) fail(`heap order at ${i}`);
    }
    if (owners.size !== this.owners.size) fail(`owner index has ${this.owners.size} owners, state ${owners.size}`);
    for (const [ok, m] of owners) {
      const got = this.owners.get(ok);
      if (got === undefined || got.size !== m.size) return fail(`owner index of ${ok}`);
      for (const [k, n] of m) if (got.get(k) !== n) fail(`owner index of ${ok} on ${k}`);
    }
    if (this.deadlockList.length > this.limits.deadlocksKept) fail('too many deadlocks kept');
  }

  // -------------------------------------------------------------------------------------------------------------
  // Snapshot
  // -------------------------------------------------------------------------------------------------------------

  /**
   * The whole replicated state as msgpack of plain arrays, records sorted by name (canonical: equal states give
   * equal bytes):
   *   [version, lastStamp, lastIndex, records, deadlocks]
   *   record   [name, lastToken, holders, waiters]       holders in grant order, waiters in queue order
   *   holder   [owner, mode, token, expireAt, grantedBy]
   *   waiter   [owner, mode, waiterId, since, deadline, ttlMs]
   *   deadlock [at, name, victim, waiterId, cycle]
   */
  snapshot(): Uint8Array {
    const recs: unknown[] = [];
    for (const key of [...this.records.keys()].sort()) {
      const rec = this.records.get(key) as LockRecord;
      const holders = [...rec.holders.values()].map((h) => [h.owner, h.mode, h.token, h.due, h.grantedBy]);
      const waiters = rec.queue.map((w) => [w.owner, w.mode, w.waiterId, w.since, w.due, w.ttlMs]);
      recs.push([rec.name, rec.lastToken, holders, waiters]);
    }
    const dls = this.deadlockList.map((d) => [d.at, d.name, d.victim, d.waiterId, d.cycle]);
    const packed = packr.pack([LOCK_SNAPSHOT_VERSION, this.lastStamp, this.lastIndex, recs, dls]);
    return new Uint8Array(packed); // a copy: the packer reuses its buffer
  }

  /**
   * Replaces the whole state with a snapshot's. Validates everything first (LockSnapshotError on anything
   * malformed or breaking an invariant) and changes nothing if it throws. Deadlocks beyond limits.deadlocksKept
   * are dropped, oldest first.
   */
  restore(data: Uint8Array): void {
    let root: unknown;
    try {
      root = unpackr.unpack(data);
    } catch (err) {
      throw new LockSnapshotError(`not msgpack (${(err as Error).message})`);
    }
    const top = arr(root, 'root', 5);
    if (top[0] !== LOCK_SNAPSHOT_VERSION) throw new LockSnapshotError(`version ${String(top[0])}, expected ${LOCK_SNAPSHOT_VERSION}`);
    const lastStamp = int(top[1], 'lastStamp', 0, Number.MAX_SAFE_INTEGER);
    const lastIndex = int(top[2], 'lastIndex', 0, LOCK_INDEX_MAX);
    const records = new Map<string, LockRecord>();
    const contended = new Set<LockRecord>();
    const owners = new Map<string, Map<string, number>>();
    const heap = new DueHeap();
    const ref = (ownerKey: string, key: string): void => {
      let m = owners.get(ownerKey);
      if (m === undefined) owners.set(ownerKey, (m = new Map()));
      m.set(key, (m.get(key) ?? 0) + 1);
    };
    let prevKey: string | null = null;
    const recList = arr(top[3], 'records');
    for (let r = 0; r < recList.length; r++) {
      const where = `record ${r}`;
      const rr = arr(recList[r], where, 4);
      const name = bytes(rr[0], `${where} name`);
      const key = keyOf(name);
      if (prevKey !== null && !(prevKey < key)) throw new LockSnapshotError(`${where}: names not strictly ascending`);
      prevKey = key;
      const lastToken = int(rr[1], `${where} lastToken`, TOKEN_STRIDE, (lastIndex + 1) * TOKEN_STRIDE - 1);
      const rec = newRecord(key, name, lastToken);
      const hl = arr(rr[2], `${where} holders`);
      for (let i = 0; i < hl.length; i++) {
        const hw = `${where} holder ${i}`;
        const ha = arr(hl[i], hw, 5);
        const owner = bytes(ha[0], `${hw} owner`);
        const h: Holder = {
          kind: 'holder',
          rec,
          owner,
          ownerKey: keyOf(owner),
          mode: modeOf(ha[1], `${hw} mode`),
          token: int(ha[2], `${hw} token`, TOKEN_STRIDE, lastToken),
          due: int(ha[3], `${hw} expireAt`, 0, Number.MAX_SAFE_INTEGER),
          grantedBy: str(ha[4], `${hw} grantedBy`),
          pos: -1,
        };
        if (rec.holders.has(h.ownerKey)) throw new LockSnapshotError(`${hw}: owner holds twice`);
        if (rec.byToken.has(h.token)) throw new LockSnapshotError(`${hw}: duplicate token ${h.token}`);
        rec.holders.set(h.ownerKey, h);
        rec.byToken.set(h.token, h);
        if (h.mode === 'X') rec.exclusive = h;
      }
      if (rec.exclusive !== null && rec.holders.size !== 1) throw new LockSnapshotError(`${where}: X holder not alone`);
      const wl = arr(rr[3], `${where} waiters`);
      for (let i = 0; i < wl.length; i++) {
        const ww = `${where} waiter ${i}`;
        const wa = arr(wl[i], ww, 6);
        const owner = bytes(wa[0], `${ww} owner`);
        const w: Waiter = {
          kind: 'waiter',
          rec,
          owner,
          ownerKey: keyOf(owner),
          mode: modeOf(wa[1], `${ww} mode`),
          waiterId: str(wa[2], `${ww} waiterId`),
          since: int(wa[3], `${ww} since`, 0, lastStamp),
          due: int(wa[4], `${ww} deadline`, 0, Number.MAX_SAFE_INTEGER),
          ttlMs: int(wa[5], `${ww} ttlMs`, 1, Number.MAX_SAFE_INTEGER),
          pos: -1,
        };
        if (w.due < w.since) throw new LockSnapshotError(`${ww}: deadline before since`);
        if (rec.waitersById.has(w.waiterId)) throw new LockSnapshotError(`${ww}: duplicate waiterId`);
        if (rec.waitersByOwner.has(w.ownerKey)) throw new LockSnapshotError(`${ww}: owner waits twice`);
        const own = rec.holders.get(w.ownerKey);
        if (own !== undefined && (own.mode !== 'S' || w.mode !== 'X')) throw new LockSnapshotError(`${ww}: waits ${w.mode} while holding ${own.mode}`);
        rec.queue.push(w);
        rec.waitersById.set(w.waiterId, w);
        rec.waitersByOwner.set(w.ownerKey, w);
      }
      if (rec.holders.size === 0 && rec.queue.length === 0) throw new LockSnapshotError(`${where}: no holder and no waiter`);
      const head = rec.queue[0];
      if (head !== undefined && grantableIn(rec, head)) throw new LockSnapshotError(`${where}: head waiter is grantable`);
      records.set(key, rec);
      if (rec.queue.length > 0) contended.add(rec);
      for (const h of rec.holders.values()) {
        ref(h.ownerKey, key);
        heap.push(h);
      }
      for (const w of rec.queue) {
        ref(w.ownerKey, key);
        heap.push(w);
      }
    }
    const dl = arr(top[4], 'deadlocks');
    const deadlocks: DeadlockRecord[] = [];
    for (let i = 0; i < dl.length; i++) {
      const dw = `deadlock ${i}`;
      const d = arr(dl[i], dw, 5);
      deadlocks.push({
        at: int(d[0], `${dw} at`, 0, lastStamp),
        name: bytes(d[1], `${dw} name`),
        victim: bytes(d[2], `${dw} victim`),
        waiterId: str(d[3], `${dw} waiterId`),
        cycle: typeof d[4] === 'string' ? d[4] : bad(`${dw} cycle is not a string`),
      });
    }
    this.records = records;
    this.contended = contended;
    this.owners = owners;
    this.heap = heap;
    this.deadlockList = deadlocks.slice(Math.max(0, deadlocks.length - this.limits.deadlocksKept));
    this.lastStamp = lastStamp;
    this.lastIndex = lastIndex;
    this.pending = [];
  }

  // -------------------------------------------------------------------------------------------------------------
  // Internals
  // -------------------------------------------------------------------------------------------------------------

  private acquireIn(
    existing: LockRecord | undefined,
    key: string,
    name: Buffer,
    owner: Buffer,
    ownerKey: string,
    mode: LockMode,
    ttlMs: number,
    waitMs: number,
    waiterId: string,
    stamp: number,
    index: number,
  ): AcquireResult {
    let rec = existing;
    if (rec !== undefined) {
      const lapsed = rec.holders.get(ownerKey);
      if (lapsed !== undefined && lapsed.due <= stamp) {
        // Drop the lapsed grant first (this may grant the owner's own pending upgrade), then decide afresh.
        this.dropHolder(rec, lapsed);
        this.grantQueue(rec, stamp, index);
      }
      const w = rec.waitersByOwner.get(ownerKey);
      if (w !== undefined) return this.retry(rec, w, mode, ttlMs, waitMs, waiterId, stamp, index);
      const h = rec.holders.get(ownerKey);
      if (h !== undefined) {
        if (h.mode === 'X' || mode === 'S') {
          // Re-acquire (an X holder asking S keeps X: it already excludes everyone).
          h.due = stamp + ttlMs;
          h.grantedBy = waiterId;
          this.heap.fix(h.pos);
          return { t: 'granted', token: h.token };
        }
        // Upgrade S -> X.
        if (rec.holders.size === 1) {
          this.convertToX(rec, h, stamp + ttlMs, waiterId, index);
          return { t: 'granted', token: h.token };
        }
        if (waitMs === 0) return { t: 'busy' };
        if (rec.queue.length >= this.limits.waitersPerLockMax) return this.tooManyWaiters(rec);
        // Ahead of every waiter that does not itself hold the lock: behind a waiting X it would wait for itself.
        let at = 0;
        while (at < rec.queue.length && rec.holders.has((rec.queue[at] as Waiter).ownerKey)) at++;
        this.enqueue(rec, at, owner, ownerKey, mode, waiterId, stamp, waitMs, ttlMs);
        return { t: 'queued' };
      }
    }
    // A new request.
    const grantNow = rec === undefined || (rec.queue.length === 0 && compatible(rec, mode));
    if (!grantNow && waitMs === 0) return { t: 'busy' };
    if ((this.owners.get(ownerKey)?.size ?? 0) >= this.limits.locksPerOwnerMax) {
      return { t: 'error', message: `ERR too many locks held or awaited by this owner on this shard (max ${this.limits.locksPerOwnerMax})` };
    }
    if (rec === undefined) {
      rec = newRecord(key, Buffer.from(name), 0);
      this.records.set(key, rec);
    }
    if (grantNow) {
      const h = this.addHolder(rec, Buffer.from(owner), ownerKey, mode, stamp + ttlMs, waiterId, index);
      return { t: 'granted', token: h.token };
    }
    if (rec.queue.length >= this.limits.waitersPerLockMax) return this.tooManyWaiters(rec);
    this.enqueue(rec, rec.queue.length, owner, ownerKey, mode, waiterId, stamp, waitMs, ttlMs);
    return { t: 'queued' };
  }

  /** An owner that already waits asks again. */
  private retry(rec: LockRecord, w: Waiter, mode: LockMode, ttlMs: number, waitMs: number, waiterId: string, stamp: number, index: number): AcquireResult {
    if (w.mode !== mode) {
      return { t: 'error', message: `ERR this owner already waits for lock '${showName(rec.name)}' in mode ${w.mode}` };
    }
    const old = w.waiterId;
    if (waitMs === 0) {
      this.dropWaiter(rec, w);
      if (old !== waiterId) this.pending.push({ t: 'timeout', waiterId: old });
      this.grantQueue(rec, stamp, index);
      return { t: 'busy' };
    }
    if (old !== waiterId) {
      rec.waitersById.delete(old);
      w.waiterId = waiterId;
      rec.waitersById.set(waiterId, w);
      this.pending.push({ t: 'timeout', waiterId: old });
    }
    w.due = stamp + waitMs;
    w.ttlMs = ttlMs;
    this.heap.fix(w.pos);
    return { t: 'queued' };
  }

  private tooManyWaiters(rec: LockRecord): AcquireResult {
    return { t: 'error', message: `ERR too many waiters on lock '${showName(rec.name)}' (max ${this.limits.waitersPerLockMax})` };
  }

  /** Grants consecutive grantable waiters from the head of the queue. */
  private grantQueue(rec: LockRecord, stamp: number, index: number): void {
    let n = 0;
    for (const w of rec.queue) {
      if (!this.grantable(rec, w)) break;
      n++;
      rec.waitersById.delete(w.waiterId);
      rec.waitersByOwner.delete(w.ownerKey);
      this.heap.remove(w);
      this.unref(w.ownerKey, rec.key);
      const own = rec.holders.get(w.ownerKey);
      const due = stamp + w.ttlMs;
      const h =
        own !== undefined
          ? this.convertToX(rec, own, due, w.waiterId, index) // an upgrade: the owner's S hold becomes X
          : this.addHolder(rec, w.owner, w.ownerKey, w.mode, due, w.waiterId, index);
      this.pending.push({ t: 'granted', waiterId: w.waiterId, name: rec.name, owner: h.owner, token: h.token });
    }
    if (n > 0) rec.queue.splice(0, n);
  }

  private grantable(rec: LockRecord, w: Waiter): boolean {
    return grantableIn(rec, w);
  }

  private nextToken(rec: LockRecord, index: number): number {
    const t = Math.max(rec.lastToken + 1, index * TOKEN_STRIDE);
    if (t >= (index + 1) * TOKEN_STRIDE) throw new Error(`lock table invariant: token ${t} outside index ${index}'s range`);
    rec.lastToken = t;
    return t;
  }

  private addHolder(rec: LockRecord, owner: Buffer, ownerKey: string, mode: LockMode, due: number, grantedBy: string, index: number): Holder {
    const h: Holder = { kind: 'holder', rec, owner, ownerKey, mode, token: this.nextToken(rec, index), due, grantedBy, pos: -1 };
    rec.holders.set(ownerKey, h);
    rec.byToken.set(h.token, h);
    if (mode === 'X') rec.exclusive = h;
    this.heap.push(h);
    this.ref(ownerKey, rec.key);
    return h;
  }

  /** The sole S holder becomes the X holder, with a new token. */
  private convertToX(rec: LockRecord, h: Holder, due: number, grantedBy: string, index: number): Holder {
    rec.byToken.delete(h.token);
    h.token = this.nextToken(rec, index);
    rec.byToken.set(h.token, h);
    h.mode = 'X';
    rec.exclusive = h;
    h.due = due;
    h.grantedBy = grantedBy;
    this.heap.fix(h.pos);
    return h;
  }

  private dropHolder(rec: LockRecord, h: Holder): void {
    rec.holders.delete(h.ownerKey);
    rec.byToken.delete(h.token);
    if (rec.exclusive === h) rec.exclusive = null;
    this.heap.remove(h);
    this.unref(h.ownerKey, rec.key);
  }

  private enqueue(
    rec: LockRecord,
    at: number,
    owner: Buffer,
    ownerKey: string,
    mode: LockMode,
    waiterId: string,
    stamp: number,
    waitMs: number,
    ttlMs: number,
  ): void {
    const w: Waiter = { kind: 'waiter', rec, owner: Buffer.from(owner), ownerKey, mode, waiterId, since: stamp, due: stamp + waitMs, ttlMs, pos: -1 };
    if (at === rec.queue.length) rec.queue.push(w);
    else rec.queue.splice(at, 0, w);
    rec.waitersById.set(waiterId, w);
    rec.waitersByOwner.set(ownerKey, w);
    this.contended.add(rec);
    this.heap.push(w);
    this.ref(ownerKey, rec.key);
  }

  private dropWaiter(rec: LockRecord, w: Waiter): void {
    const i = rec.queue.indexOf(w);
    if (i < 0) throw new Error('lock table invariant: waiter not in its queue');
    rec.queue.splice(i, 1);
    rec.waitersById.delete(w.waiterId);
    rec.waitersByOwner.delete(w.ownerKey);
    this.heap.remove(w);
    this.unref(w.ownerKey, rec.key);
  }

  /** Keeps the contended set and the record map in step with a record that may have emptied. */
  private tidy(rec: LockRecord): void {
    if (rec.queue.length === 0) this.contended.delete(rec);
    if (rec.holders.size === 0 && rec.queue.length === 0) this.records.delete(rec.key);
  }

  private ref(ownerKey: string, key: string): void {
    let m = this.owners.get(ownerKey);
    if (m === undefined) this.owners.set(ownerKey, (m = new Map()));
    m.set(key, (m.get(key) ?? 0) + 1);
  }

  private unref(ownerKey: string, key: string): void {
    const m = this.owners.get(ownerKey);
    const n = m?.get(key);
    if (m === undefined || n === undefined) throw new Error('lock table invariant: owner index lost a lock');
    if (n > 1) m.set(key, n - 1);
    else {
      m.delete(key);
      if (m.size === 0) this.owners.delete(ownerKey);
    }
  }

  private checkCall(stamp: number, index: number): void {
    if (!Number.isSafeInteger(stamp) || stamp < this.lastStamp) {
      throw new RangeError(`stamp must be a safe integer >= the last one (${this.lastStamp}), got ${stamp}`);
    }
    if (!Number.isSafeInteger(index) || index <= this.lastIndex || index > LOCK_INDEX_MAX) {
      throw new RangeError(`index must be an integer in (${this.lastIndex}, ${LOCK_INDEX_MAX}], got ${index}`);
    }
  }

  private commitTime(stamp: number, index: number): void {
    this.lastStamp = stamp;
    this.lastIndex = index;
    this.pending = [];
  }

  private checkNames(name: Buffer, owner: Buffer): AcquireResult | null {
    if (name.length === 0) return { t: 'error', message: 'ERR empty lock name' };
    if (name.length > this.limits.nameBytesMax) return { t: 'error', message: `ERR lock name longer than ${this.limits.nameBytesMax} bytes` };
    if (owner.length === 0) return { t: 'error', message: 'ERR empty lock owner' };
    if (owner.length > this.limits.ownerBytesMax) return { t: 'error', message: `ERR lock owner longer than ${this.limits.ownerBytesMax} bytes` };
    return null;
  }

  /** Raises the call's events (its state changes are complete) and returns its result. */
  private finish<T>(result: T): T {
    const events = this.pending;
    this.pending = [];
    const sink = this.onEvent;
    if (sink !== null) for (const e of events) sink(e);
    return result;
  }
}

function newRecord(key: string, name: Buffer, lastToken: number): LockRecord {
  return {
    key,
    name,
    lastToken,
    holders: new Map(),
    byToken: new Map(),
    exclusive: null,
    queue: [],
    waitersById: new Map(),
    waitersByOwner: new Map(),
  };
}

/** Whether a request in `mode` by an owner without a hold coexists with the holders. */
function compatible(rec: LockRecord, mode: LockMode): boolean {
  return mode === 'X' ? rec.holders.size === 0 : rec.exclusive === null;
}

/** Whether waiter w could be granted now (ignoring the queue before it). */
function grantableIn(rec: LockRecord, w: Waiter): boolean {
  if (w.mode === 'S') return rec.exclusive === null;
  return rec.holders.size === 0 || (rec.holders.size === 1 && rec.holders.has(w.ownerKey));
}

// Snapshot field readers: each returns the checked value or throws LockSnapshotError naming the field.

function bad(what: string): never {
  throw new LockSnapshotError(what);
}

function arr(v: unknown, what: string, len?: number): unknown[] {
  if (!Array.isArray(v)) bad(`${what} is not an array`);
  if (len !== undefined && v.length !== len) bad(`${what} has ${v.length} fields, expected ${len}`);
  return v;
}

function int(v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) bad(`${what} ${String(v)} is not an integer in [${min}, ${max}]`);
  return v;
}

function bytes(v: unknown, what: string): Buffer {
  if (!(v instanceof Uint8Array) || v.length === 0) bad(`${what} is not a non-empty byte string`);
  return Buffer.from(v); // a copy: never alias the snapshot's memory
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string' || v.length === 0) bad(`${what} is not a non-empty string`);
  return v;
}

function modeOf(v: unknown, what: string): LockMode {
  if (v !== 'X' && v !== 'S') bad(`${what} ${String(v)} is not X or S`);
  return v;
}
