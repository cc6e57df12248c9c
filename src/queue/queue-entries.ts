/**
 * The queue's Raft entries and shard reads: the internal commands the edge sends to the shard of a queue
 * partition (as keyspace "write" and "read" requests, so routing, forwarding, batching and replies are the
 * keyspace's), how a worker checks them before proposing, and how every replica applies them to its QueueState.
 *
 * Internal commands (the edge's table has only Q.* and the Redis list names; clients cannot send these):
 *   writes  _q.push q p payload dedup|"" delayMs            -> $id | -ERR
 *           _q.pop q p consumer count visibility|"" blockMs  -> *[[id, payload, :deliveries]...] | -ERR
 *           _q.ack q p id... -> :n    _q.nack q p id delayMs -> :0|1    _q.extend q p id ms -> :0|1
 *           _q.create q p partitions maxDeliver|"" visibility|"" dedupWindow|"" -> +OK | -ERR
 *           _q.redrive q p -> :n      _q.purge q p -> :n
 *           _q.rpush|_q.lpush q p payload... -> :len | -ERR    _q.lpop|_q.rpop q p count blockMs -> *[payload...]
 *           _q.expire (v|d|k q p id|dedup)...               -> :n   (leader, from its clock)
 *   reads   _q.info q p | _q.len q p | _q.llen q p | _q.dead q p count | _q.lrange q p start stop | _q.list
 *   waits   _q.wait q p blockMs waitId [p2 ...] -> :k (messages are ready in the k-th partition named, from 1)
 *                                                  | :0 (time ran out, or withdrawn)
 *           _q.take q p blockMs waitId <pop...> -> the pop's reply once it found messages | *0 (time ran out, withdrawn)
 *           _q.unwait q p waitId [0|1 [p2 ...]] -> :1 (was waiting) | :0   ("1": it answered ready already, hand
 *                                                  that on; p2...: the other partitions of a grouped wait)
 *
 * Waits and takes are sent as writes (so they go to the leader) but the leader's worker serves them without Raft
 * (docs/queues.md, "Blocking pops: wait, then take"); they never reach apply. A grouped wait (p2 ...) names several
 * partitions of one queue whose shards one worker leads; it is routed by its first partition's shard. A take
 * carries a pop of its own partition (`_q.pop`, `_q.lpop` or `_q.rpop` with blockMs 0), which the leader proposes
 * when messages are ready.
 * A pop's `blockMs` is always 0 from the edge now; apply ignored it before too, so older entries that carry another
 * value replay the same.
 *
 * Invariants:
 * - checkQueueCommand() accepts only what applyQueueWrite() can decode without throwing. Range errors found by
 *   QueueState (QUEUE_ARG) are thrown before it changes anything and depend only on the entry and the state, so
 *   apply turns them into the same -ERR reply on every replica.
 * - A queue's partition count is fixed when its partition 0 is created: _q.create with another count is refused.
 */
import type { ReplySink } from '../server/command.js';
import { QueueState, QueueStateError, type ExpiryItem } from './queue-state.js';
import { shardOfSlot } from '../cluster/ring.js';
import { keySlot } from '../cluster/slots.js';

export const Q_PUSH = '_q.push';
export const Q_POP = '_q.pop';
export const Q_ACK = '_q.ack';
export const Q_NACK = '_q.nack';
export const Q_EXTEND = '_q.extend';
export const Q_CREATE = '_q.create';
export const Q_REDRIVE = '_q.redrive';
export const Q_PURGE = '_q.purge';
export const Q_RPUSH = '_q.rpush';
export const Q_LPUSH = '_q.lpush';
export const Q_LPOP = '_q.lpop';
export const Q_RPOP = '_q.rpop';
export const Q_EXPIRE = '_q.expire';
export const Q_INFO = '_q.info';
export const Q_LEN = '_q.len';
export const Q_LLEN = '_q.llen';
export const Q_DEAD = '_q.dead';
export const Q_LRANGE = '_q.lrange';
export const Q_LIST = '_q.list';
export const Q_WAIT = '_q.wait';
export const Q_UNWAIT = '_q.unwait';
export const Q_TAKE = '_q.take';

/** Longest BLOCK a pop may ask for (1 h). */
export const QUEUE_BLOCK_MS_MAX = 3600 * 1000;

/** A Buffer view of `b` (no copy). */
const view = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
const text = (b: Uint8Array | undefined): string => (b === undefined ? '' : view(b).toString('latin1'));

/** A decimal integer in [min, max], or NaN. */
function int(b: Uint8Array | undefined, min: number, max: number): number {
  const s = text(b);
  if (!/^-?\d{1,16}$/.test(s)) return NaN;
  const n = Number(s);
  return n >= min && n <= max ? n : NaN;
}

/** An optional integer: "" = null; else as int() (NaN when bad). */
function optInt(b: Uint8Array | undefined, min: number, max: number): number | null {
  return b !== undefined && b.length === 0 ? null : int(b, min, max);
}

const MAXI = Number.MAX_SAFE_INTEGER;

/** Longest wait id a worker accepts (the edge makes "node.boot.seq", well under this). */
const WAIT_ID_BYTES_MAX = 64;

/** Most partitions one grouped wait (or its unwait) may name; the edge splits larger groups. */
export const WAIT_GROUP_MAX = 64;

/** The shard that holds partition p of queue q: the queue name's shard, then the next ones in turn. */
export function queuePartitionShard(q: Uint8Array, p: number, shards: number): number {
  return (shardOfSlot(keySlot(q), shards) + p) % shards;
}

/** True if args[0] names an internal queue command. */
export function isQueueCommand(args: readonly Uint8Array[]): boolean {
  const n = args[0];
  return n !== undefined && n.length > 3 && n[0] === 0x5f && n[1] === 0x71 && n[2] === 0x2e; // "_q."
}

/** How long a wait or take may stay on the server (0 for everything else). */
export function queueBlockMs(args: readonly Uint8Array[]): number {
  const kind = queueWaitKind(args);
  return kind === 'wait' || kind === 'take' ? Math.max(0, int(args[3], 0, QUEUE_BLOCK_MS_MAX) || 0) : 0;
}

/** 'wait', 'take' or 'unwait' for the commands a leader's worker serves without Raft; '' for the rest. */
export function queueWaitKind(args: readonly Uint8Array[]): 'wait' | 'take' | 'unwait' | '' {
  const n = args[0];
  // "_q.wait" / "_q.take" / "_q.unwait": cheap length and byte checks first, every write passes here.
  if (n === undefined || (n.length !== 7 && n.length !== 9) || n[3] === undefined || (n[3] !== 0x77 && n[3] !== 0x75 && n[3] !== 0x74)) return '';
  const name = text(n);
  return name === Q_WAIT ? 'wait' : name === Q_TAKE ? 'take' : name === Q_UNWAIT ? 'unwait' : '';
}

/** The pop a `_q.take` carries. */
export function takePopArgs(args: Buffer[]): Buffer[] {
  return args.slice(5);
}

/** Partition p of queue q as a map key ("partition\0queue"). */
export function partitionKeyOf(queue: Uint8Array, partition: number): string {
  return `${partition}\u0000${text(queue)}`;
}

/** The partition a queue command concerns, as a map key (partitionKeyOf). */
export function partitionKey(args: readonly Uint8Array[]): string {
  return `${text(args[2])}\u0000${text(args[1])}`;
}

/** True for a wait that names several partitions (a grouped wait; a take's extra arguments are its pop). */
export function isGroupedWait(args: readonly Uint8Array[]): boolean {
  return args.length > 5 && queueWaitKind(args) === 'wait';
}

/** The wait id of a `_q.wait`, `_q.take` or `_q.unwait`. */
export function waitIdOf(args: readonly Uint8Array[]): string {
  return text(args[args[0]!.length === Q_UNWAIT.length ? 3 : 4]);
}

/** True for an unwait of a wait that answered ready already (nothing to withdraw: its wake is handed on). */
export function unwaitAnswered(args: readonly Uint8Array[]): boolean {
  return args.length >= 5 && args[4]!.length === 1 && args[4]![0] === 0x31;
}

/** The partitions a wait or unwait names (checked by checkQueueCommand): its own, then a group's others. */
export function waitPartitions(args: readonly Uint8Array[]): number[] {
  const out = [Number(text(args[2]))];
  for (let i = 5; i < args.length; i++) out.push(Number(text(args[i])));
  return out;
}

/** Null if args[from..] are distinct partition numbers other than args[2], at most WAIT_GROUP_MAX in all. */
function checkGroup(args: readonly Uint8Array[], from: number): string | null {
  if (args.length - from + 1 > WAIT_GROUP_MAX) return `a wait names more than ${WAIT_GROUP_MAX} partitions`;
  const seen = new Set<number>([int(args[2], 0, 1_000_000)]);
  for (let i = from; i < args.length; i++) {
    const p = int(args[i], 0, 1_000_000);
    if (Number.isNaN(p) || seen.has(p)) return 'bad or repeated partition in a grouped wait';
    seen.add(p);
  }
  return null;
}

const WRITE_ARITY: Record<string, number> = {
  [Q_PUSH]: 6,
  [Q_POP]: 7,
  [Q_NACK]: 5,
  [Q_EXTEND]: 5,
  [Q_CREATE]: 7,
  [Q_REDRIVE]: 3,
  [Q_PURGE]: 3,
  [Q_LPOP]: 5,
  [Q_RPOP]: 5,
};
const READ_ARITY: Record<string, number> = { [Q_INFO]: 3, [Q_LEN]: 3, [Q_LLEN]: 3, [Q_DEAD]: 4, [Q_LRANGE]: 5, [Q_LIST]: 1 };

/** Null if the internal queue command is well formed for its kind; otherwise why not. */
export function checkQueueCommand(kind: 'write' | 'read', args: readonly Uint8Array[]): string | null {
  const name = text(args[0]);
  if (name !== Q_LIST && name !== Q_EXPIRE && (args.length < 3 || args[1]!.length === 0 || Number.isNaN(int(args[2], 0, 1_000_000)))) return `${name}: bad queue or partition`;
  if (kind === 'read') {
    const a = READ_ARITY[name];
    if (a === undefined || a !== args.length) return `not a queue read with a valid arity: ${name.slice(0, 40)}`;
    if (name === Q_DEAD && Number.isNaN(int(args[3], 1, MAXI))) return 'bad count';
    if (name === Q_LRANGE && (Number.isNaN(int(args[3], -MAXI, MAXI)) || Number.isNaN(int(args[4], -MAXI, MAXI)))) return 'bad range';
    return null;
  }
  switch (name) {
    case Q_ACK:
      return args.length >= 4 ? null : 'ack without ids';
    case Q_RPUSH:
    case Q_LPUSH:
      return args.length >= 4 ? null : 'push without payloads';
    case Q_UNWAIT:
      if (args.length < 4 || (args.length >= 5 && text(args[4]) !== '0' && text(args[4]) !== '1')) return `${Q_UNWAIT}: bad arguments`;
      if (args[3]!.length === 0 || args[3]!.length > WAIT_ID_BYTES_MAX) return 'bad wait id';
      return checkGroup(args, 5);
    case Q_WAIT:
      if (args.length < 5) return `${Q_WAIT}: bad arguments`;
      if (Number.isNaN(int(args[3], 1, QUEUE_BLOCK_MS_MAX))) return 'bad block';
      if (args[4]!.length === 0 || args[4]!.length > WAIT_ID_BYTES_MAX) return 'bad wait id';
      return checkGroup(args, 5);
    case Q_EXPIRE:
      if ((args.length - 1) % 4 !== 0 || args.length < 5) return `${Q_EXPIRE}: ${args.length} arguments`;
      for (let i = 1; i < args.length; i += 4) {
        const k = text(args[i]);
        if ((k !== 'v' && k !== 'd' && k !== 'k') || Number.isNaN(int(args[i + 2], 0, 1_000_000))) return `${Q_EXPIRE}: bad item`;
      }
      return null;
  }
  if (name === Q_TAKE) {
    if (args.length < 6) return `${Q_TAKE}: no pop`;
    if (Number.isNaN(int(args[3], 1, QUEUE_BLOCK_MS_MAX))) return 'bad block';
    if (args[4]!.length === 0 || args[4]!.length > WAIT_ID_BYTES_MAX) return 'bad wait id';
    const pop = args.slice(5);
    const popName = text(pop[0]);
    if (pop.length < 3 || (popName !== Q_POP && popName !== Q_LPOP && popName !== Q_RPOP)) return `${Q_TAKE}: carries no pop`;
    if (!view(pop[1]!).equals(view(args[1]!)) || text(pop[2]) !== text(args[2])) return `${Q_TAKE}: its pop is for another partition`;
    return checkQueueCommand('write', pop);
  }
  const a = WRITE_ARITY[name];
  if (a === undefined || a !== args.length) return `not a queue write with a valid arity: ${name.slice(0, 40)}`;
  switch (name) {
    case Q_PUSH:
      return Number.isNaN(int(args[5], 0, MAXI)) ? 'bad delay' : null;
    case Q_POP:
      if (Number.isNaN(int(args[4], 1, MAXI))) return 'bad count';
      if (Number.isNaN(optInt(args[5], 1, MAXI) ?? 0)) return 'bad visibility';
      return Number.isNaN(int(args[6], 0, QUEUE_BLOCK_MS_MAX)) ? 'bad block' : null;
    case Q_NACK:
    case Q_EXTEND:
      return Number.isNaN(int(args[4], 0, MAXI)) ? 'bad time' : null;
    case Q_CREATE:
      if (Number.isNaN(int(args[3], 1, MAXI))) return 'bad partitions';
      for (let i = 4; i < 7; i++) if (Number.isNaN(optInt(args[i], 0, MAXI) ?? 0)) return 'bad config';
      return null;
    case Q_LPOP:
    case Q_RPOP:
      return Number.isNaN(int(args[3], 1, MAXI)) || Number.isNaN(int(args[4], 0, QUEUE_BLOCK_MS_MAX)) ? 'bad count' : null;
  }
  return null;
}

/** What apply tells the worker besides the reply: whether messages may have become ready in a partition. */
export interface QueueApplyNote {
  /** Set to "partition\0queue" when the entry may have made messages ready there (wake blocked pops). */
  readyKey: string;
}

/**
 * Applies a checked queue write at (stamp, index), writing its reply into `sink`. Messages may have become ready
 * in the partition named by note.readyKey (pushes, nacks, redrives, expiry; '' when none can have).
 */
export function applyQueueWrite(state: QueueState, stamp: number, index: number, args: Buffer[], sink: ReplySink, note: QueueApplyNote): void {
  const name = text(args[0]);
  note.readyKey = '';
  try {
    applyChecked(state, name, stamp, index, args, sink, note);
  } catch (err) {
    // Range errors (QUEUE_ARG) come before any change and are the same on every replica: a reply, not a crash.
    if (err instanceof QueueStateError && err.code === 'QUEUE_ARG') {
      note.readyKey = '';
      sink.error(err.message.startsWith('ERR ') ? err.message : `ERR ${err.message}`);
      return;
    }
    throw err;
  }
}

function applyChecked(state: QueueState, name: string, stamp: number, index: number, args: Buffer[], sink: ReplySink, note: QueueApplyNote): void {
  if (name === Q_EXPIRE) {
    const items: ExpiryItem[] = [];
    for (let i = 1; i + 3 < args.length; i += 4) {
      const queue = args[i + 1]!;
      const partition = Number(text(args[i + 2]));
      const k = text(args[i]);
      if (k === 'k') items.push({ kind: 'dedup', queue, partition, dedup: args[i + 3]! });
      else items.push({ kind: k === 'v' ? 'visibility' : 'delay', queue, partition, id: text(args[i + 3]) });
      if (k !== 'k') note.readyKey = partitionKeyOf(queue, partition);
    }
    sink.integer(state.expire(stamp, index, items));
    return;
  }
  const q = args[1]!;
  const p = Number(text(args[2]));
  const key = `${p}\u0000${text(q)}`;
  switch (name) {
    case Q_PUSH: {
      const dedup = args[4]!.length > 0 ? args[4]! : undefined;
      const delayMs = Number(text(args[5]));
      const [r] = state.push(stamp, index, q, p, [{ payload: args[3]!, ...(dedup !== undefined ? { dedup } : {}), ...(delayMs > 0 ? { delayMs } : {}) }]);
      if (r === undefined || 'error' in r) sink.error(r?.error ?? 'ERR push failed');
      else {
        sink.bulk(r.id);
        if (!r.duplicate) note.readyKey = key;
      }
      return;
    }
    case Q_POP: {
      const vis = optInt(args[5], 1, MAXI);
      const r = state.pop(stamp, index, q, p, text(args[3]), Number(text(args[4])), vis);
      if (!Array.isArray(r)) {
        sink.error(r.error);
        return;
      }
      sink.arrayHeader(r.length);
      for (const d of r) {
        sink.arrayHeader(3);
        sink.bulk(d.id);
        sink.bulk(d.payload);
        sink.integer(d.deliveries);
      }
      return;
    }
    case Q_ACK:
      sink.integer(state.ack(stamp, index, q, p, args.slice(3).map(text)));
      return;
    case Q_NACK: {
      const r = state.nack(stamp, index, q, p, text(args[3]), Number(text(args[4])));
      if (r === 1) note.readyKey = key;
      sink.integer(r);
      return;
    }
    case Q_EXTEND:
      sink.integer(state.extend(stamp, index, q, p, text(args[3]), Number(text(args[4]))));
      return;
    case Q_CREATE: {
      const partitions = Number(text(args[3]));
      const existing = state.info(q, p);
      if (existing !== null && existing.config.partitions !== partitions) {
        sink.error(`ERR queue '${text(q).slice(0, 64)}' has ${existing.config.partitions} partitions; the count cannot change`);
        return;
      }
      const cfg: { partitions: number; maxDeliver?: number; visibilityMs?: number; dedupWindowMs?: number } = { partitions };
      const md = optInt(args[4], 0, MAXI);
      const vis = optInt(args[5], 0, MAXI);
      const dw = optInt(args[6], 0, MAXI);
      if (md !== null) cfg.maxDeliver = md;
      if (vis !== null) cfg.visibilityMs = vis;
      if (dw !== null) cfg.dedupWindowMs = dw;
      const r = state.configure(stamp, index, q, p, cfg);
      if (r !== null) sink.error(r.error);
      else sink.ok();
      return;
    }
    case Q_REDRIVE:
      note.readyKey = key;
      sink.integer(state.redrive(stamp, index, q, p));
      return;
    case Q_PURGE:
      sink.integer(state.purge(stamp, index, q, p));
      return;
    case Q_RPUSH:
    case Q_LPUSH: {
      const r = state.listPush(stamp, index, q, p, args.slice(3), name === Q_LPUSH);
      if (typeof r === 'number') {
        note.readyKey = key;
        sink.integer(r);
      } else sink.error(r.error);
      return;
    }
    case Q_LPOP:
    case Q_RPOP: {
      const r = state.listPop(stamp, index, q, p, Number(text(args[3])), name === Q_LPOP);
      sink.arrayHeader(r.length);
      for (const b of r) sink.bulk(b);
      return;
    }
  }
  throw new Error(`queue entry: unchecked command ${name.slice(0, 40)}`);
}

/**
 * For a checked pop entry (`_q.pop`, `_q.lpop`, `_q.rpop`): would applying it now deliver nothing and change nothing,
 * so that its reply is an empty array whatever its stamp and index? Reads the arguments exactly as apply does.
 * False for every other command. The worker answers such a pop after a read barrier instead of proposing it.
 */
export function popFindsNothing(state: QueueState, args: readonly Uint8Array[]): boolean {
  const name = text(args[0]);
  if (name !== Q_POP && name !== Q_LPOP && name !== Q_RPOP) return false;
  const q = view(args[1]!);
  const p = Number(text(args[2]));
  if (name === Q_POP) return state.popFindsNothing(q, p, text(args[3]), Number(text(args[4])), optInt(args[5], 1, MAXI));
  return state.listPopFindsNothing(q, p, Number(text(args[3])));
}

/** The args of an expiry entry for what planExpiry found. */
export function queueExpiryArgs(items: readonly ExpiryItem[]): Buffer[] {
  const args: Buffer[] = [Buffer.from(Q_EXPIRE)];
  for (const it of items) {
    const k = it.kind === 'dedup' ? 'k' : it.kind === 'visibility' ? 'v' : 'd';
    args.push(Buffer.from(k), it.queue, Buffer.from(String(it.partition)), it.kind === 'dedup' ? it.dedup : Buffer.from(it.id));
  }
  return args;
}

/** Serves a checked queue read. */
export function readQueue(state: QueueState, args: Buffer[], sink: ReplySink): void {
  const name = text(args[0]);
  if (name === Q_LIST) {
    const all = state.queues();
    sink.arrayHeader(all.length);
    for (const x of all) {
      sink.arrayHeader(2);
      sink.bulk(x.queue);
      sink.integer(x.partition);
    }
    return;
  }
  const q = args[1]!;
  const p = Number(text(args[2]));
  switch (name) {
    case Q_INFO: {
      const i = state.info(q, p);
      if (i === null) {
        sink.nilArray();
        return;
      }
      sink.arrayHeader(8);
      for (const n of [i.ready, i.inflight, i.delayed, i.dead, i.config.partitions, i.config.maxDeliver, i.config.visibilityMs, i.config.dedupWindowMs]) sink.integer(n);
      return;
    }
    case Q_LEN:
      sink.integer(state.len(q, p));
      return;
    case Q_LLEN:
      sink.integer(state.listLen(q, p));
      return;
    case Q_DEAD: {
      const d = state.dead(q, p, Number(text(args[3])));
      sink.arrayHeader(d.length);
      for (const x of d) {
        sink.arrayHeader(4);
        sink.bulk(x.id);
        sink.bulk(x.payload);
        sink.integer(x.deliveries);
        sink.bulk(x.reason);
      }
      return;
    }
    case Q_LRANGE: {
      const r = state.listRange(q, p, Number(text(args[3])), Number(text(args[4])));
      sink.arrayHeader(r.length);
      for (const b of r) sink.bulk(b);
      return;
    }
  }
  throw new TypeError(`readQueue: ${name.slice(0, 40)} is not a queue read`);
}
