/**
 * KeyspaceMachine: the deterministic state machine every replica of a shard runs for the Redis string commands.
 * It owns the shard's CacheStore (in 'hide' expiry mode, unbounded by items and bytes), the replicated time
 * `lastStampMs`, and the replicated memory limit `keyspaceBytesMax`. RaftHost drives it (StateMachine); the
 * cluster runtime proposes what keyspace-codec.ts encodes and calls read() for reads after a ReadIndex barrier.
 *
 *   leader: client write -> encodeWrite(args, now) -> propose -> commit -> apply -> reply record -> replayReply
 *   every replica:                                              commit -> apply (result dropped on followers)
 *   leader, periodic: planSweep(now, n) -> propose -> commit -> apply on every replica (removes the named keys)
 *   leader, after ReadIndex: read(args, now, sink)
 *
 * Invariants (what keeps replicas identical; see docs/replicated-keyspace.md):
 * - The store's entries (key, value, expireAt, insertion order), lastStampMs and keyspaceBytesMax change only in
 *   apply() and restore(). They are a function of the applied log: apply() runs the very handler of
 *   STRING_COMMANDS with ctx.now = the store's clock = max(entry stamp, lastStampMs), and handlers depend on
 *   nothing else (no Date.now, no Math.random, no node-local limit).
 * - Reads never change them: the store hides expired entries instead of deleting them, and its LRU (which reads do
 *   move) never evicts, since itemsMax and bytesMax are 0. Reads run at max(local now, lastStampMs).
 * - Time never goes back in the log: lastStampMs only grows.
 * - contentBytes <= keyspaceBytesMax after any write that grew it: a write that would end above it is undone on
 *   every replica alike and answers -OOM (a write that does not grow the keyspace is always allowed).
 * - snapshot() captures exactly the replicated state; restore(snapshot()) gives a machine that applies the rest of
 *   the log to byte-identical snapshots.
 *
 * What a sweep removes is named in its entry (the leader finds expired keys with its own, unreplicated, TTL-ring
 * cursor), as Redis masters send DELs for expired keys to replicas: the ring order is not part of a snapshot, so a
 * sweep defined as "examine the next N keys of the ring" would remove different keys on a restored replica.
 */
import { CacheStore, ENTRY_OVERHEAD_BYTES, VALUE_BYTES_MAX_DEFAULT } from '../cache/store.js';
import { STRING_COMMANDS, errWrongArity } from '../cache/string-commands.js';
import type { StateMachine } from '../node/raft-host.js';
import { type Entry, EntryType } from '../raft/types.js';
import type { ClientState, CommandContext, CommandSpec, ReplySink } from '../server/command.js';
import {
  KeyspaceEntryError,
  KeyspaceEntryKind,
  asBuffer,
  checkVersion,
  decodeEntry,
  encodeSweep,
  readVarint,
  varintBytes,
  writeVarint,
} from './keyspace-codec.js';
import { ReplyRecorder } from './keyspace-reply.js';
import { copyRange } from '../../protocol/buffer-view.js';
import { LockTable, type LockLimits } from '../locks/lock-table.js';
import { applyLockWrite, isLockCommand, LOCK_PARKED, readLock } from '../locks/lock-entries.js';
import { QueueState, SNAPSHOT_STEP_RECORDS, type QueueLimits } from '../queue/queue-state.js';
import { runSteps, type Steps } from '../util/steps.js';
import { applyQueueWrite, isQueueCommand, popFindsNothing, readQueue, type QueueApplyNote } from '../queue/queue-entries.js';

/** Redis' noeviction reply. */
export const ERR_OOM = "OOM command not allowed when used memory > 'maxmemory'.";

/** Snapshot format version written by this code. */
export const KEYSPACE_SNAPSHOT_VERSION = 3;
const SNAPSHOT_MAGIC = 0x534b4b4c; // "LKKS" read as u32 LE
/** magic u32, version u8, lastStampMs f64, keyspaceBytesMax f64, count u32 */
const SNAPSHOT_HEADER_BYTES = 25;

/** Default bound on the key bytes one sweep entry names (planSweep). */
export const SWEEP_KEY_BYTES_MAX_DEFAULT = 64 * 1024;

/** True for commands that change the keyspace: they go through the log (encodeWrite) rather than read(). */
export function isReplicatedWrite(spec: CommandSpec): boolean {
  return spec.flags.includes('write');
}

/**
 * Write commands whose growth of contentBytes is at most (sum of argument lengths + per key argument
 * ENTRY_OVERHEAD_BYTES + 32): they may skip the undo log when that much room is left. SETRANGE (an offset grows a
 * value without a long argument) and INCRBYFLOAT (a long double prints to up to ~5000 digits) are not among them;
 * neither is any command added later until someone checks it.
 */
const ARG_BOUNDED_WRITES = new Set([
  'set',
  'setnx',
  'setex',
  'psetex',
  'getdel',
  'getex',
  'del',
  'unlink',
  'mset',
  'msetnx',
  'incr',
  'incrby',
  'decr',
  'decrby',
  'append',
  'expire',
  'pexpire',
  'expireat',
  'pexpireat',
  'persist',
  'flushall',
  'flushdb',
]);

export interface KeyspaceMachineOptions {
  /**
   * Memory limit in content bytes (keys + values + ENTRY_OVERHEAD_BYTES per entry; 0 = unbounded) until an
   * encodeConfig entry changes it. It decides replies at apply time, so it must be the same on every replica: a
   * cluster-wide constant, never a per-node setting. Default 0.
   */
  keyspaceBytesMax?: number;
  /** Limits of the shard's lock table (decide replies: a cluster-wide constant, like keyspaceBytesMax). */
  lockLimits?: Partial<LockLimits>;
  /** Limits of the shard's queue partitions (decide replies: a cluster-wide constant). */
  queueLimits?: Partial<QueueLimits>;
}

export interface KeyspaceMachineStats {
  writes: number;
  sweeps: number;
  /** Keys removed by sweep entries. */
  sweptKeys: number;
  /** Writes refused with -OOM. */
  oomRefusals: number;
}

/** What a sweep plan proposes. */
export interface SweepPlan {
  /** The entry to propose. */
  entry: Uint8Array;
  /** How many keys it names (plan again at once when that is a large share of maxKeys, as Redis' 25% rule). */
  keys: number;
}

const CLIENT: ClientState = {
  id: 0,
  name: 'raft-apply',
  proto: 3,
  authenticated: true,
  user: 'default',
  libName: '',
  libVersion: '',
  closeAfterReply: false,
};

const WRITES = new Map<string, CommandSpec>();
const READS = new Map<string, CommandSpec>();
for (const spec of STRING_COMMANDS) (isReplicatedWrite(spec) ? WRITES : READS).set(spec.name, spec);

function lookupSpec(table: Map<string, CommandSpec>, name: Buffer | undefined): CommandSpec | undefined {
  if (name === undefined || name.length > 32) return undefined;
  const s = name.toString('latin1');
  return table.get(s) ?? table.get(s.toLowerCase());
}

/** The replicated string write named `name` (any case), or undefined. */
export function lookupWrite(name: Buffer | undefined): CommandSpec | undefined {
  return lookupSpec(WRITES, name);
}

/** The string read named `name` (any case), or undefined. */
export function lookupRead(name: Buffer | undefined): CommandSpec | undefined {
  return lookupSpec(READS, name);
}

export function arityOk(spec: CommandSpec, argc: number): boolean {
  return spec.arity > 0 ? argc === spec.arity : argc >= -spec.arity;
}

export class KeyspaceMachine implements StateMachine {
  readonly stats: KeyspaceMachineStats = { writes: 0, sweeps: 0, sweptKeys: 0, oomRefusals: 0 };
  private db: CacheStore;
  /** The store's clock: the time of the operation being run. */
  private nowMs = 0;
  private lastStamp = 0;
  private bytesMax: number;
  private readonly recorder = new ReplyRecorder();
  private readonly writeCtx: CommandContext;
  private readonly readCtx: CommandContext;
  private readonly clock = (): number => this.nowMs;
  // Undo log of one write (reused): the key, and its live value (undefined = absent) and expireAt before the write.
  private undoKeys: Buffer[] = [];
  private undoValues: (Buffer | undefined)[] = [];
  private undoExpire: number[] = [];
  private lockTable: LockTable;
  private readonly lockLimits: Partial<LockLimits>;
  private queueState: QueueState;
  private readonly queueLimits: Partial<QueueLimits>;
  private readonly queueNote: QueueApplyNote = { readyKey: '' };
  /**
   * Called after applying a queue entry that may have made messages ready in a partition ("partition\0queue"):
   * the worker wakes pops waiting there. Set by the owner; kept across restore().
   */
  onQueueReady: ((key: string) => void) | null = null;

  constructor(options: KeyspaceMachineOptions = {}) {
    const max = options.keyspaceBytesMax ?? 0;
    if (!Number.isSafeInteger(max) || max < 0) {
      throw new RangeError(`keyspaceBytesMax must be a non-negative safe integer (bytes, 0 = unbounded), got ${max}`);
    }
    this.bytesMax = max;
    this.lockLimits = options.lockLimits ?? {};
    this.lockTable = new LockTable(this.lockLimits);
    this.queueLimits = options.queueLimits ?? {};
    this.queueState = new QueueState(this.queueLimits);
    this.db = this.newStore();
    this.writeCtx = { reply: this.recorder, client: CLIENT, db: this.db, now: 0 };
    this.readCtx = { reply: this.recorder, client: CLIENT, db: this.db, now: 0 };
  }

  private newStore(): CacheStore {
    // Unbounded by items and bytes: LRU eviction would depend on read order, which differs per replica.
    // valueBytesMax is fixed here, not configurable: APPEND/SETRANGE replies depend on it.
    const limits = {
      itemsMax: 0,
      bytesMax: 0,
      expireSweepKeysMax: 0,
      expireSweepIntervalMs: 0,
      valueBytesMax: VALUE_BYTES_MAX_DEFAULT,
    };
    return new CacheStore(limits, this.clock, { expiry: 'hide' });
  }

  /** The shard's keyspace. Read it only; every change must come through apply(). Replaced by restore(). */
  get store(): CacheStore {
    return this.db;
  }

  /**
   * The live string value of `key` at `nowMs` (never earlier than the last applied stamp), with its expiry; null if
   * the key is absent or expired. Read-only, for the cache home (src/cache/cache-home.ts). Does not touch the LRU
   * order of the replicated store (`peek`).
   */
  peekString(key: Buffer, nowMs: number): { value: Buffer; expireAt: number } | null {
    this.nowMs = nowMs > this.lastStamp ? nowMs : this.lastStamp;
    const e = this.db.peek(key);
    return e === undefined ? null : { value: e.value, expireAt: e.expireAt };
  }

  /**
   * The shard's lock table (src/locks). Read it only; every change comes through apply(). Replaced by restore(),
   * which keeps its onEvent listener.
   */
  get locks(): LockTable {
    return this.lockTable;
  }

  /** The shard's queue partitions (src/queue). Read it only; every change comes through apply(). */
  get queues(): QueueState {
    return this.queueState;
  }

  /** The latest time the log has reached (Unix ms): max of every applied stamp. */
  get lastStampMs(): number {
    return this.lastStamp;
  }

  /** The replicated memory limit in content bytes (0 = unbounded). */
  get keyspaceBytesMax(): number {
    return this.bytesMax;
  }

  /**
   * Applies one committed entry. Returns, for a write, its reply record (replay it with replayReply into the
   * client's ReplyWriter; a view of a shared slab, see keyspace-reply.ts); for a sweep, the number of keys it
   * removed; for a config entry, undefined. Throws KeyspaceEntryError for an entry it cannot apply (a bug upstream
   * or a newer format: stop the node rather than diverge).
   */
  apply(entry: Entry): Uint8Array | number | typeof LOCK_PARKED | undefined {
    if (entry.type !== EntryType.Normal) return undefined;
    return this.applyData(entry.data, entry.index);
  }

  /**
   * apply() of an entry's data at log index `index` (lock grants derive their fencing tokens from it). Returns
   * LOCK_PARKED for a lock acquire that now waits (its reply comes with a LockEvent later).
   */
  applyData(data: Uint8Array, index = 0): Uint8Array | number | typeof LOCK_PARKED | undefined {
    const e = decodeEntry(data);
    const t = e.stampMs > this.lastStamp ? e.stampMs : this.lastStamp;
    if (e.kind === KeyspaceEntryKind.Write) {
      if (isLockCommand(e.args)) return this.applyLock(e.args, t, index);
      if (isQueueCommand(e.args)) return this.applyQueue(e.args, t, index);
      return this.applyWrite(e.args, t);
    }
    this.lastStamp = t;
    this.nowMs = t;
    switch (e.kind) {
      case KeyspaceEntryKind.Sweep: {
        let removed = 0;
        for (const key of e.keys) if (this.db.removeExpired(key)) removed++;
        this.stats.sweeps++;
        this.stats.sweptKeys += removed;
        return removed;
      }
      case KeyspaceEntryKind.Config:
        this.bytesMax = e.keyspaceBytesMax;
        return undefined;
    }
  }

  /** A lock entry (checked by the worker before it was proposed: see checkLockCommand). */
  private applyLock(args: Buffer[], now: number, index: number): Uint8Array | typeof LOCK_PARKED {
    this.lastStamp = now;
    this.nowMs = now;
    this.stats.writes++;
    const mark = this.recorder.mark();
    try {
      if (applyLockWrite(this.lockTable, now, index, args, this.recorder) === LOCK_PARKED) {
        this.recorder.truncate(mark);
        return LOCK_PARKED;
      }
    } catch (err) {
      this.recorder.truncate(mark);
      throw err;
    }
    return this.recorder.take();
  }

  /**
   * The reply record of a checked pop entry that would deliver nothing and change nothing if applied now (see
   * popFindsNothing: an empty array), or null when it may deliver, bury or fail. Changes no state. The leader uses
   * it after a read barrier, so a pop of an empty queue costs a heartbeat round instead of a log entry.
   */
  emptyPopRecord(args: readonly Uint8Array[]): Uint8Array | null {
    if (!popFindsNothing(this.queueState, args)) return null;
    this.recorder.arrayHeader(0);
    return this.recorder.take();
  }

  /** A queue entry (checked by the worker before it was proposed: see checkQueueCommand). */
  private applyQueue(args: Buffer[], now: number, index: number): Uint8Array {
    this.lastStamp = now;
    this.nowMs = now;
    this.stats.writes++;
    const mark = this.recorder.mark();
    try {
      applyQueueWrite(this.queueState, now, index, args, this.recorder, this.queueNote);
    } catch (err) {
      this.recorder.truncate(mark);
      throw err;
    }
    const record = this.recorder.take();
    if (this.queueNote.readyKey !== '' && this.onQueueReady !== null) this.onQueueReady(this.queueNote.readyKey);
    return record;
  }

  private applyWrite(args: Buffer[], now: number): Uint8Array {
    const spec = lookupSpec(WRITES, args[0] as Buffer);
    if (spec === undefined) {
      throw new KeyspaceEntryError(
        'KEYSPACE_COMMAND',
        `keyspace entry names ${JSON.stringify((args[0] as Buffer).toString('latin1').slice(0, 40))}, which is not a replicated write command here`,
      );
    }
    if (!arityOk(spec, args.length)) {
      throw new KeyspaceEntryError('KEYSPACE_COMMAND', `keyspace entry: ${spec.name} with ${args.length} arguments`);
    }
    // Valid: from here on the entry is applied.
    this.lastStamp = now;
    this.nowMs = now;
    this.stats.writes++;
    const db = this.db;
    const max = this.bytesMax;
    const before = db.contentBytes;
    const needUndo = max > 0 && !this.fitsWithoutUndo(spec, args, before, max);
    const undo = needUndo ? this.recordUndo(spec, args) : 0;
    const ctx = this.writeCtx;
    ctx.now = now;
    const mark = this.recorder.mark();
    try {
      spec.handler(ctx, args);
    } catch (err) {
      this.recorder.truncate(mark);
      throw err;
    }
    if (max > 0) {
      const after = db.contentBytes;
      if (after > max && after > before) {
        if (!needUndo) throw new Error(`keyspace invariant: ${spec.name} grew beyond its bound (ARG_BOUNDED_WRITES)`);
        this.undo(undo);
        this.recorder.truncate(mark);
        this.recorder.error(ERR_OOM);
        this.stats.oomRefusals++;
      }
    }
    this.clearUndo(undo);
    return this.recorder.take();
  }

  /** True when the write cannot take contentBytes above max (so it needs no undo log). */
  private fitsWithoutUndo(spec: CommandSpec, args: Buffer[], bytes: number, max: number): boolean {
    if (!ARG_BOUNDED_WRITES.has(spec.name)) return false;
    let bound = 0;
    for (let i = 0; i < args.length; i++) bound += (args[i] as Buffer).length;
    bound += this.keyCount(spec, args.length) * (ENTRY_OVERHEAD_BYTES + 32);
    return bytes + bound <= max;
  }

  private keyCount(spec: CommandSpec, argc: number): number {
    if (spec.firstKey <= 0) return 0;
    const last = spec.lastKey < 0 ? argc + spec.lastKey : spec.lastKey;
    return last < spec.firstKey ? 0 : Math.floor((last - spec.firstKey) / spec.keyStep) + 1;
  }

  /** Records the live state of every key argument; returns how many. */
  private recordUndo(spec: CommandSpec, args: Buffer[]): number {
    const n = this.keyCount(spec, args.length);
    for (let k = 0; k < n; k++) {
      const key = args[spec.firstKey + k * spec.keyStep] as Buffer;
      const e = this.db.peek(key);
      this.undoKeys[k] = key;
      this.undoValues[k] = e?.value;
      this.undoExpire[k] = e === undefined ? 0 : e.expireAt;
    }
    return n;
  }

  /** Puts the first n recorded keys back as they were (last first, so a key named twice ends as it began). */
  private undo(n: number): void {
    for (let k = n - 1; k >= 0; k--) {
      const key = this.undoKeys[k] as Buffer;
      const value = this.undoValues[k];
      // The old value is a store-owned Buffer nobody mutates: adopt it back without copying.
      if (value === undefined) this.db.delete(key);
      else this.db.set(key, value, { expireAt: this.undoExpire[k] as number, copy: false });
    }
  }

  private clearUndo(n: number): void {
    for (let k = 0; k < n; k++) {
      this.undoKeys[k] = undefined as unknown as Buffer;
      this.undoValues[k] = undefined;
    }
  }

  /**
   * Runs a readonly command locally at max(nowMs, lastStampMs), replying into `sink` (the client's ReplyWriter).
   * Call it on the leader after a ReadIndex barrier (once applied >= the read index). Changes no replicated state.
   * Throws TypeError for a command that is not a readonly keyspace command (writes go through the log).
   */
  read(args: Buffer[], nowMs: number, sink: ReplySink): void {
    if (isLockCommand(args)) {
      readLock(this.lockTable, nowMs > this.lastStamp ? nowMs : this.lastStamp, args, sink);
      return;
    }
    if (isQueueCommand(args)) {
      readQueue(this.queueState, args, sink);
      return;
    }
    const name = args[0];
    const spec = name === undefined ? undefined : lookupSpec(READS, name);
    if (spec === undefined) {
      throw new TypeError(`KeyspaceMachine.read: ${String(name?.toString('latin1'))} is not a readonly keyspace command`);
    }
    if (!arityOk(spec, args.length)) {
      sink.error(errWrongArity(spec.name));
      return;
    }
    const t = nowMs > this.lastStamp ? nowMs : this.lastStamp;
    this.nowMs = t;
    const ctx = this.readCtx;
    ctx.reply = sink;
    ctx.now = t;
    try {
      spec.handler(ctx, args);
    } finally {
      ctx.reply = this.recorder;
    }
  }

  /**
   * Leader side of active expiry: examines up to maxKeys keys with a TTL (resuming where the last plan stopped) and
   * returns a sweep entry naming those expired at max(nowMs, lastStampMs), or null when none is. Changes no
   * replicated state (only this node's sweep cursor). keyBytesMax bounds the entry's size.
   */
  planSweep(nowMs: number, maxKeys: number, keyBytesMax = SWEEP_KEY_BYTES_MAX_DEFAULT): SweepPlan | null {
    const t = nowMs > this.lastStamp ? nowMs : this.lastStamp;
    this.nowMs = t;
    const keys = this.db.findExpired(maxKeys, keyBytesMax);
    if (keys.length === 0) return null;
    return { entry: encodeSweep(t, keys), keys: keys.length };
  }

  // -----------------------------------------------------------------------------------------------------------------
  // Snapshots
  // -----------------------------------------------------------------------------------------------------------------

  /**
   * The replicated state as bytes:
   *   0  u32  magic "LKKS"        4  u8  version        5  f64  lastStampMs      13  f64  keyspaceBytesMax
   *  21  u32  entry count, then per entry in insertion order:
   *        varint (keyLength * 2 + hasExpire), key, varint valueLength, value, [f64 expireAt if hasExpire]
   *      then (version 2) u32 length and the lock table's snapshot (LockTable.snapshot),
   *      then (version 3) u32 length and the queue state's snapshot (QueueState.snapshot).
   * Expired entries not yet removed are included (they are state: they count toward the memory limit).
   * Checksums are the snapshot store's job.
   */
  snapshot(): Uint8Array {
    return runSteps(this.snapshotSteps());
  }

  /**
   * snapshot() in steps of at most SNAPSHOT_STEP_RECORDS keys or queue records (see RaftHost: a large shard's encode
   * is spread over event-loop turns). The state must not change until it returns: the caller applies nothing to
   * this machine meanwhile. The keyspace's entries are listed in the first step, so the bytes are those of the
   * state at that step even if a read touched the store in between.
   */
  *snapshotSteps(): Steps<Uint8Array> {
    const db = this.db;
    const entries = [...db.entries()];
    const count = entries.length;
    if (count > 0xffffffff) throw new RangeError('snapshot: too many entries');
    const locks = this.lockTable.snapshot();
    // Written straight into this buffer (a large queue state is not built twice).
    const queues = yield* this.queueState.prepareSteps();
    let size = SNAPSHOT_HEADER_BYTES + 4 + locks.length + 4 + queues.size;
    for (let i = 0; i < count; i++) {
      if (i > 0 && i % SNAPSHOT_STEP_RECORDS === 0) yield;
      const e = entries[i]!;
      const kl = e.keyLatin1.length;
      const vl = e.valueLength;
      size += varintBytes(kl * 2 + 1) + kl + varintBytes(vl) + vl + (e.expireAt !== 0 ? 8 : 0);
    }
    const buf = Buffer.allocUnsafeSlow(size);
    buf.writeUInt32LE(SNAPSHOT_MAGIC, 0);
    buf[4] = KEYSPACE_SNAPSHOT_VERSION;
    buf.writeDoubleLE(this.lastStamp, 5);
    buf.writeDoubleLE(this.bytesMax, 13);
    buf.writeUInt32LE(count, 21);
    let p = SNAPSHOT_HEADER_BYTES;
    let n = 0;
    for (const e of entries) {
      if (n > 0 && n % SNAPSHOT_STEP_RECORDS === 0) yield;
      const ks = e.keyLatin1;
      const kl = ks.length;
      const hasExpire = e.expireAt !== 0;
      p = writeVarint(buf, p, kl * 2 + (hasExpire ? 1 : 0));
      if (kl < 48) {
        for (let i = 0; i < kl; i++) buf[p++] = ks.charCodeAt(i);
      } else {
        p += buf.write(ks, p, kl, 'latin1');
      }
      // The value straight from the store's memory (entry.value would build a view per entry).
      const v = e.valueBytes;
      const at = e.valueStart;
      const vl = e.valueLength;
      p = writeVarint(buf, p, vl);
      p = copyRange(buf, p, v, at, at + vl);
      if (hasExpire) {
        buf.writeDoubleLE(e.expireAt, p);
        p += 8;
      }
      n++;
    }
    buf.writeUInt32LE(locks.length, p);
    buf.set(locks, p + 4);
    p += 4 + locks.length;
    buf.writeUInt32LE(queues.size, p);
    yield;
    p = yield* queues.writeSteps(buf, p + 4);
    if (p !== size || n !== count) throw new Error(`keyspace invariant: snapshot wrote ${p} of ${size} bytes`);
    return buf;
  }

  /**
   * Replaces the whole state with a snapshot's. Validates everything before changing anything: on a
   * KeyspaceEntryError the machine is as it was.
   */
  restore(data: Uint8Array): void {
    const buf = asBuffer(data);
    if (buf.length >= 4 && buf.readUInt32LE(0) !== SNAPSHOT_MAGIC) snapshotCorrupt('bad magic');
    checkVersion(buf.length >= 5 ? buf[4] : undefined, KEYSPACE_SNAPSHOT_VERSION, 'keyspace snapshot');
    if (buf.length < SNAPSHOT_HEADER_BYTES) snapshotCorrupt(`${buf.length} bytes is shorter than the header`);
    const lastStamp = buf.readDoubleLE(5);
    const bytesMax = buf.readDoubleLE(13);
    const version = buf[4] as number;
    const count = buf.readUInt32LE(21);
    if (!Number.isSafeInteger(lastStamp) || lastStamp < 0) snapshotCorrupt(`bad lastStampMs ${lastStamp}`);
    if (!Number.isSafeInteger(bytesMax) || bytesMax < 0) snapshotCorrupt(`bad keyspaceBytesMax ${bytesMax}`);
    const end = buf.length;
    // Every entry takes at least 2 bytes.
    if (count > (end - SNAPSHOT_HEADER_BYTES) / 2) snapshotCorrupt(`count ${count} exceeds the data`);
    const saved = this.nowMs;
    this.nowMs = lastStamp;
    const db = this.newStore();
    let locks = new LockTable(this.lockLimits, this.lockTable.onEvent ?? undefined);
    const queues = new QueueState(this.queueLimits);
    try {
      const cur = { pos: SNAPSHOT_HEADER_BYTES };
      for (let i = 0; i < count; i++) {
        const kx = readVarint(buf, cur, end);
        if (kx < 0) snapshotCorrupt(`bad key length of entry ${i}`);
        const kl = Math.floor(kx / 2);
        const ks = cur.pos;
        if (kl > end - ks) snapshotCorrupt(`key of entry ${i} runs past the end`);
        cur.pos = ks + kl;
        const vl = readVarint(buf, cur, end);
        if (vl < 0) snapshotCorrupt(`bad value length of entry ${i}`);
        const vs = cur.pos;
        if (vl > end - vs) snapshotCorrupt(`value of entry ${i} runs past the end`);
        let p = vs + vl;
        let expireAt = 0;
        if (kx % 2 === 1) {
          if (p + 8 > end) snapshotCorrupt(`expire time of entry ${i} runs past the end`);
          expireAt = buf.readDoubleLE(p);
          if (!(expireAt > 0) || !Number.isFinite(expireAt)) snapshotCorrupt(`bad expire time of entry ${i}`);
          p += 8;
        }
        cur.pos = p;
        const key = buf.subarray(ks, ks + kl);
        db.set(key, buf.subarray(vs, vs + vl), expireAt === 0 ? undefined : { expireAt });
        if (db.size !== i + 1) snapshotCorrupt(`duplicate key in entry ${i}`);
      }
      if (version >= 2) {
        if (cur.pos + 4 > end) snapshotCorrupt('lock section missing');
        const len = buf.readUInt32LE(cur.pos);
        const lockEnd = version >= 3 ? cur.pos + 4 + len : end;
        if (len > end - cur.pos - 4 || (version < 3 && len !== end - cur.pos - 4)) snapshotCorrupt(`lock section of ${len} bytes, ${end - cur.pos - 4} left`);
        locks = new LockTable(this.lockLimits, this.lockTable.onEvent ?? undefined);
        try {
          locks.restore(buf.subarray(cur.pos + 4, lockEnd));
        } catch (err) {
          snapshotCorrupt(`lock section: ${(err as Error).message}`);
        }
        cur.pos = lockEnd;
      }
      if (version >= 3) {
        if (cur.pos + 4 > end) snapshotCorrupt('queue section missing');
        const len = buf.readUInt32LE(cur.pos);
        if (len !== end - cur.pos - 4) snapshotCorrupt(`queue section of ${len} bytes, ${end - cur.pos - 4} left`);
        try {
          queues.restore(buf.subarray(cur.pos + 4, end));
        } catch (err) {
          snapshotCorrupt(`queue section: ${(err as Error).message}`);
        }
        cur.pos = end;
      }
      if (cur.pos !== end) snapshotCorrupt(`${end - cur.pos} trailing bytes`);
    } catch (err) {
      this.nowMs = saved;
      throw err;
    }
    this.db = db;
    this.lockTable = locks;
    this.queueState = queues;
    this.writeCtx.db = db;
    this.readCtx.db = db;
    this.lastStamp = lastStamp;
    this.bytesMax = bytesMax;
  }
}

function snapshotCorrupt(what: string): never {
  throw new KeyspaceEntryError('KEYSPACE_CORRUPT', `corrupt keyspace snapshot: ${what}`);
}

