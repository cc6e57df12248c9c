/**
 * QueueState: the deterministic queue partitions of one shard, run by every Raft replica of that shard. It owns,
 * per (queue name, partition number): the config, the messages that are ready, delayed or in flight, the dead
 * letters, the producer dedup table and the head-insert counter; and, for the whole shard, the replicated clock
 * (`lastStampMs`, `lastIndex`). No timers, no Date.now, no randomness, no I/O: every mutating call carries the
 * entry's replicated `stamp` (Unix ms) and Raft `index`; time passes only through them.
 *
 *   push / listPush ──> READY <───────── nack / visibility lapsed (expire) ──┐
 *         │ (delayMs)    │ ▲                                                 │
 *         ▼              │ └── delay lapsed (expire) ── DELAYED <── nack delayMs
 *      DELAYED ──────────┘                                                   │
 *                        │ pop                                               │
 *                        ▼                                                   │
 *                     IN FLIGHT ──── ack ──> dropped (never comes back)      │
 *                        └───────────────────────────────────────────────────┘
 *   a return (nack or lapsed visibility) after maxDeliver deliveries ──> DEAD ── redrive ──> READY
 *   listPop (LPOP/RPOP) takes READY messages and drops them: delivered-and-acked in one step.
 *
 * Invariants (checked by test/queue/queue-state.test.ts; see docs/queues.md):
 * - Every pushed message is in exactly one of: ready, delayed, in flight, dead, dropped (acked, listPopped,
 *   purged, or the oldest dead letter pushed out past deadKeptMax). Dropped messages leave no trace, so memory
 *   is bounded by the unacked messages (<= queueLengthMax per partition), dead letters (<= deadKeptMax) and dedup
 *   entries (<= dedupEntriesMax).
 * - A message's seq never changes. Ids are `${index}-${n}` (seq = index * 65536 + n) for tail inserts and
 *   `h${k}` (seq = -k, k = 1, 2, ...) for LPUSH head inserts, so every id is unique within its partition and the
 *   seq order is the delivery order.
 * - Ready messages are delivered in seq order: a message that comes back keeps its place ahead of newer ones.
 * - The state is a function of the calls made (their order and arguments) alone. snapshot() writes it in a
 *   canonical order, so equal states give equal bytes and restore(snapshot()) behaves identically.
 * - The timer index (visibility deadlines, delay due times, dedup expiry) is derived state, rebuilt on restore.
 *   planExpiry reads it; only expire() acts on it, and expire() re-checks every item at its own stamp.
 *
 * Errors. A call with malformed arguments (the command layer should have checked them against QueueLimits) throws
 * QueueStateError code 'QUEUE_ARG' before changing anything; its message starts with 'ERR ', so catching it in the
 * apply path and replying with it is safe and deterministic. An index that does not increase throws 'QUEUE_ORDER'
 * (a bug upstream: stop rather than diverge). Operating limits (payload size, queue full, name length, consumer
 * in-flight limit, ...) are answered as `{ error: 'ERR ...' }` values.
 */
import { Packr } from 'msgpackr';
import { runSteps, type Steps } from '../util/steps.js';

// ---------------------------------------------------------------------------------------------------------------
// Config, limits, ids
// ---------------------------------------------------------------------------------------------------------------

export interface QueueConfig {
  /** Deliveries a message may have; a return after that many moves it to the dead letters. 1..maxDeliverMax. */
  maxDeliver: number;
  /** Default visibility timeout of a pop, ms. 1..visibilityMsMax. */
  visibilityMs: number;
  /** How long a producer dedup id is remembered, ms from its first push. 0 (no dedup)..dedupWindowMsMax. */
  dedupWindowMs: number;
  /** How many partitions the queue has (routing is the cluster's job; stored here). 1..partitionsPerQueueMax. */
  partitions: number;
}

export const QUEUE_CONFIG_DEFAULT: Readonly<QueueConfig> = Object.freeze({
  maxDeliver: 20,
  visibilityMs: 30_000,
  dedupWindowMs: 120_000,
  partitions: 1,
});

/** Bounds of a shard's queue state. They decide replies at apply time: the same on every replica, never per node. */
export interface QueueLimits {
  /** Bytes of one message payload. */
  payloadBytesMax: number;
  /** Messages per partition: ready + delayed + in flight (dead letters are bounded by deadKeptMax). */
  queueLengthMax: number;
  /** Messages one consumer may hold in flight in one partition. */
  inflightPerConsumerMax: number;
  /** Bytes of a queue name. */
  queueNameBytesMax: number;
  /** Dead letters kept per partition; past it the oldest is dropped (counted in info().deadDropped). */
  deadKeptMax: number;
  /** Bytes of a producer dedup id. */
  dedupBytesMax: number;
  /** Dedup entries per partition; a push with a new dedup id into a full table answers an error. */
  dedupEntriesMax: number;
  /** Bytes (UTF-8) of a consumer name. */
  consumerBytesMax: number;
  /** Queue partitions held by one shard. */
  partitionsMax: number;
  /** Largest partition count of a queue (config.partitions; partition numbers are 0..this-1). */
  partitionsPerQueueMax: number;
  /** Largest config.maxDeliver. */
  maxDeliverMax: number;
  /** Largest delay of a push or nack, ms. */
  delayMsMax: number;
  /** Largest visibility timeout of a pop, an extend or config.visibilityMs, ms. */
  visibilityMsMax: number;
  /** Largest config.dedupWindowMs, ms. */
  dedupWindowMsMax: number;
}

export const QUEUE_LIMITS_DEFAULT: Readonly<QueueLimits> = Object.freeze({
  payloadBytesMax: 1024 * 1024,
  queueLengthMax: 1_000_000,
  inflightPerConsumerMax: 10_000,
  queueNameBytesMax: 256,
  deadKeptMax: 100_000,
  dedupBytesMax: 128,
  dedupEntriesMax: 1_000_000,
  consumerBytesMax: 256,
  partitionsMax: 100_000,
  partitionsPerQueueMax: 1024,
  maxDeliverMax: 1000,
  delayMsMax: 7 * 24 * 3600 * 1000,
  visibilityMsMax: 12 * 3600 * 1000,
  dedupWindowMsMax: 24 * 3600 * 1000,
});

/** Messages one call (one log entry) may add: n in `${index}-${n}` is below this. */
export const MESSAGE_IDS_PER_ENTRY = 65536;
/** Largest Raft index whose ids still fit a safe integer seq. */
export const QUEUE_INDEX_MAX = Math.floor(Number.MAX_SAFE_INTEGER / MESSAGE_IDS_PER_ENTRY) - 1;

/** Formats a seq as a message id: `${index}-${n}`, or `h${k}` for the k-th head insert (seq -k). */
export function formatMessageId(seq: number): string {
  if (seq < 0) return `h${-seq}`;
  const n = seq % MESSAGE_IDS_PER_ENTRY;
  return `${(seq - n) / MESSAGE_IDS_PER_ENTRY}-${n}`;
}

const ID_RE = /^(?:([1-9][0-9]{0,15})-(0|[1-9][0-9]{0,4})|h([1-9][0-9]{0,15}))$/;

/** The seq of a message id, or null when the string is not a canonical id. Seq order = delivery order. */
export function parseMessageId(id: string): number | null {
  const m = ID_RE.exec(id);
  if (m === null) return null;
  if (m[3] !== undefined) {
    const k = Number(m[3]);
    return Number.isSafeInteger(k) ? -k : null;
  }
  const index = Number(m[1]);
  const n = Number(m[2]);
  if (index > QUEUE_INDEX_MAX || n >= MESSAGE_IDS_PER_ENTRY) return null;
  return index * MESSAGE_IDS_PER_ENTRY + n;
}

export type QueueStateErrorCode = 'QUEUE_ARG' | 'QUEUE_ORDER' | 'QUEUE_CORRUPT' | 'QUEUE_VERSION';

export class QueueStateError extends Error {
  override readonly name = 'QueueStateError';
  constructor(
    readonly code: QueueStateErrorCode,
    message: string,
  ) {
    super(message);
  }
}

function argError(message: string): never {
  throw new QueueStateError('QUEUE_ARG', `ERR ${message}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Public shapes
// ---------------------------------------------------------------------------------------------------------------

export interface PushItem {
  payload: Buffer;
  /** Producer dedup id (<= dedupBytesMax bytes). */
  dedup?: Buffer;
  /** Deliverable no earlier than stamp + delayMs (0..delayMsMax). */
  delayMs?: number;
}

export type PushResult = { id: string; duplicate: boolean } | { error: string };

export interface Delivery {
  id: string;
  payload: Buffer;
  /** Deliveries of this message, this one included. */
  deliveries: number;
}

export type DeadReason = 'maxdeliver';

export interface DeadInfo {
  id: string;
  payload: Buffer;
  deliveries: number;
  firstDeliveredAt: number;
  lastDeliveredAt: number;
  /** Consumer of the last delivery. */
  lastConsumer: string;
  /** Stamp at which it was dead-lettered. */
  deadAt: number;
  reason: DeadReason;
}

export interface QueueInfo {
  ready: number;
  inflight: number;
  delayed: number;
  dead: number;
  /** Dead letters dropped because deadKeptMax was reached. */
  deadDropped: number;
  /** Dedup entries held. */
  dedup: number;
  config: QueueConfig;
}

/** A timer that lapsed, named by the leader's planExpiry and applied on every replica by expire(). */
export type ExpiryItem =
  | { kind: 'visibility'; queue: Buffer; partition: number; id: string }
  | { kind: 'delay'; queue: Buffer; partition: number; id: string }
  | { kind: 'dedup'; queue: Buffer; partition: number; dedup: Buffer };

// ---------------------------------------------------------------------------------------------------------------
// Ordered containers
// ---------------------------------------------------------------------------------------------------------------

/** Elements per chunk of a SortedList before it splits in two. */
const CHUNK_ITEMS_MAX = 512;

/**
 * A sorted list of unique elements as a list of sorted chunks: insert, delete, first/last removal in
 * O(log n + CHUNK_ITEMS_MAX); positional access walks the chunks. Used for the ready messages (by seq) and the
 * timer index (by due time).
 */
class SortedList<T> {
  private chunks: T[][] = [];
  private count = 0;

  constructor(private readonly cmp: (a: T, b: T) => number) {}

  get size(): number {
    return this.count;
  }

  /** Index of the first chunk whose last element is >= x, or the last chunk. */
  private chunkFor(x: T): number {
    const cs = this.chunks;
    let lo = 0;
    let hi = cs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = cs[mid] as T[];
      if (this.cmp(c[c.length - 1] as T, x) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private lowerBound(c: T[], x: T): number {
    let lo = 0;
    let hi = c.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.cmp(c[mid] as T, x) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  insert(x: T): void {
    if (this.chunks.length === 0) {
      this.chunks.push([x]);
      this.count = 1;
      return;
    }
    const ci = this.chunkFor(x);
    const c = this.chunks[ci] as T[];
    const pos = this.lowerBound(c, x);
    if (pos < c.length && this.cmp(c[pos] as T, x) === 0) throw new Error('queue invariant: duplicate in SortedList');
    if (pos === c.length) c.push(x);
    else c.splice(pos, 0, x);
    this.count++;
    if (c.length > CHUNK_ITEMS_MAX) this.chunks.splice(ci + 1, 0, c.splice(c.length >>> 1));
  }

  delete(x: T): boolean {
    if (this.chunks.length === 0) return false;
    const ci = this.chunkFor(x);
    const c = this.chunks[ci] as T[];
    const pos = this.lowerBound(c, x);
    if (pos >= c.length || this.cmp(c[pos] as T, x) !== 0) return false;
    c.splice(pos, 1);
    this.count--;
    if (c.length === 0) this.chunks.splice(ci, 1);
    return true;
  }

  first(): T | undefined {
    return this.chunks[0]?.[0];
  }

  shift(): T | undefined {
    const c = this.chunks[0];
    if (c === undefined) return undefined;
    const x = c.shift();
    this.count--;
    if (c.length === 0) this.chunks.shift();
    return x;
  }

  pop(): T | undefined {
    const c = this.chunks[this.chunks.length - 1];
    if (c === undefined) return undefined;
    const x = c.pop();
    this.count--;
    if (c.length === 0) this.chunks.pop();
    return x;
  }

  clear(): void {
    this.chunks = [];
    this.count = 0;
  }

  /** Elements at positions [start, stop) in order. */
  slice(start: number, stop: number): T[] {
    const out: T[] = [];
    let base = 0;
    for (const c of this.chunks) {
      if (base >= stop) break;
      const end = base + c.length;
      if (end > start) {
        const from = start > base ? start - base : 0;
        const to = stop < end ? stop - base : c.length;
        for (let i = from; i < to; i++) out.push(c[i] as T);
      }
      base = end;
    }
    return out;
  }

  *values(): IterableIterator<T> {
    for (const c of this.chunks) yield* c;
  }
}

/** A FIFO with O(1) amortized push and shift (the dead letters). */
class Deque<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(x: T): void {
    this.items.push(x);
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const x = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }

  slice(count: number): T[] {
    const end = Math.min(this.items.length, this.head + count);
    return this.items.slice(this.head, end) as T[];
  }

  *values(): IterableIterator<T> {
    for (let i = this.head; i < this.items.length; i++) yield this.items[i] as T;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Internal state
// ---------------------------------------------------------------------------------------------------------------

const READY = 0;
const DELAYED = 1;
const INFLIGHT = 2;
type MsgState = typeof READY | typeof DELAYED | typeof INFLIGHT;

interface Msg {
  readonly seq: number;
  readonly payload: Buffer;
  state: MsgState;
  deliveries: number;
  /** Stamp of the first / last delivery; 0 = never delivered. */
  firstDeliveredAt: number;
  lastDeliveredAt: number;
  /** Consumer of the last delivery ('' = never delivered). */
  consumer: string;
  /** In flight: visibility deadline; delayed: due time; ready: 0. */
  deadline: number;
  timer: Timer | null;
}

interface Dead {
  readonly seq: number;
  readonly payload: Buffer;
  readonly deliveries: number;
  readonly firstDeliveredAt: number;
  readonly lastDeliveredAt: number;
  readonly consumer: string;
  readonly deadAt: number;
  readonly reason: DeadReason;
}

interface DedupEntry {
  /** The dedup id as a latin1 string. */
  readonly key: string;
  /** Seq of the message its first push created. */
  readonly seq: number;
  /** Forgotten at this stamp: absent for any push with stamp >= expiresAt. */
  readonly expiresAt: number;
  timer: Timer | null;
}

const TIMER_MESSAGE = 0;
const TIMER_DEDUP = 1;

interface Timer {
  readonly at: number;
  /** Partition ordinal (creation order) and seq: a total order among equal `at`. */
  readonly ord: number;
  readonly seq: number;
  readonly kind: typeof TIMER_MESSAGE | typeof TIMER_DEDUP;
  readonly part: Partition;
  readonly msg: Msg | null;
  readonly dedup: DedupEntry | null;
}

function compareTimers(a: Timer, b: Timer): number {
  return a.at - b.at || a.ord - b.ord || a.seq - b.seq || a.kind - b.kind;
}

function compareMsgs(a: Msg, b: Msg): number {
  return a.seq - b.seq;
}

interface Partition {
  /** Creation ordinal within this shard (also the snapshot order). */
  readonly ord: number;
  readonly queue: Buffer;
  readonly partition: number;
  config: QueueConfig;
  /** Ready, delayed and in-flight messages by seq. */
  readonly messages: Map<number, Msg>;
  readonly ready: SortedList<Msg>;
  delayed: number;
  inflight: number;
  /** In-flight messages per consumer (derived; entries with 0 removed). */
  readonly consumers: Map<string, number>;
  readonly dead: Deque<Dead>;
  deadDropped: number;
  readonly dedup: Map<string, DedupEntry>;
  /** Seq of the next head insert (LPUSH): -1, -2, ... */
  headNext: number;
}

function partitionKey(queue: Buffer, partition: number): string {
  return `${partition}:${queue.toString('latin1')}`;
}

function isSafeNonNegative(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function isSafeInRange(v: number, min: number, max: number): boolean {
  return Number.isSafeInteger(v) && v >= min && v <= max;
}

// ---------------------------------------------------------------------------------------------------------------
// Snapshot encoding
// ---------------------------------------------------------------------------------------------------------------

/** Snapshot format version written by this code. */
export const QUEUE_SNAPSHOT_VERSION = 2;
const SNAPSHOT_MAGIC = 'LKQS';
const packr = new Packr({ useRecords: false, variableMapSize: true });

// ---------------------------------------------------------------------------------------------------------------
// QueueState
// ---------------------------------------------------------------------------------------------------------------

export class QueueState {
  readonly limits: Readonly<QueueLimits>;
  private parts = new Map<string, Partition>();
  private timers = new SortedList<Timer>(compareTimers);
  private lastStamp = 0;
  private lastIdx = 0;
  /** The stamp of the call being applied. */
  private now = 0;

  constructor(limits: Partial<QueueLimits> = {}) {
    const l: QueueLimits = { ...QUEUE_LIMITS_DEFAULT };
    for (const key of Object.keys(QUEUE_LIMITS_DEFAULT) as (keyof QueueLimits)[]) {
      const v = limits[key];
      if (v === undefined) continue;
      if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`QueueLimits.${key} must be a positive safe integer, got ${v}`);
      l[key] = v;
    }
    if (l.partitionsPerQueueMax > MESSAGE_IDS_PER_ENTRY) {
      throw new RangeError(`QueueLimits.partitionsPerQueueMax must be at most ${MESSAGE_IDS_PER_ENTRY}`);
    }
    this.limits = Object.freeze(l);
  }

  /** The latest stamp applied (Unix ms): time never goes back. */
  get lastStampMs(): number {
    return this.lastStamp;
  }

  /** The index of the last mutating call applied. */
  get lastIndex(): number {
    return this.lastIdx;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Clock and argument checks
  // ------------------------------------------------------------------------------------------------------------

  /** Throws QUEUE_ORDER unless stamp is a time and index is past the last one. Changes nothing. */
  private checkClock(stamp: number, index: number): void {
    if (!isSafeNonNegative(stamp)) throw new QueueStateError('QUEUE_ORDER', `queue state: bad stamp ${stamp}`);
    if (!Number.isSafeInteger(index) || index < 1 || index > QUEUE_INDEX_MAX) {
      throw new QueueStateError('QUEUE_ORDER', `queue state: bad index ${index}`);
    }
    if (index <= this.lastIdx) {
      throw new QueueStateError('QUEUE_ORDER', `queue state: index ${index} is not after the last applied ${this.lastIdx}`);
    }
  }

  /** Commits the clock of an accepted call. A stamp behind lastStampMs runs at lastStampMs. */
  private tick(stamp: number, index: number): void {
    if (stamp > this.lastStamp) this.lastStamp = stamp;
    this.lastIdx = index;
    this.now = this.lastStamp;
  }

  private partitionNumberOk(partition: number): boolean {
    return Number.isSafeInteger(partition) && partition >= 0 && partition < this.limits.partitionsPerQueueMax;
  }

  private checkPartitionNumber(partition: number): void {
    if (!this.partitionNumberOk(partition)) {
      argError(`partition must be an integer in [0, ${this.limits.partitionsPerQueueMax}), got ${partition}`);
    }
  }

  private checkMs(what: string, v: number, min: number, max: number): void {
    if (!isSafeInRange(v, min, max)) argError(`${what} must be an integer in [${min}, ${max}] ms, got ${v}`);
  }

  private checkCount(what: string, v: number): void {
    if (!isSafeNonNegative(v)) argError(`${what} must be a non-negative integer, got ${v}`);
  }

  private checkConfig(config: Partial<QueueConfig>): void {
    const l = this.limits;
    const range = (key: keyof QueueConfig, min: number, max: number): void => {
      const v = config[key];
      if (v === undefined) return;
      if (!Number.isSafeInteger(v) || v < min || v > max) argError(`${key} must be an integer in [${min}, ${max}], got ${v}`);
    };
    range('maxDeliver', 1, l.maxDeliverMax);
    range('visibilityMs', 1, l.visibilityMsMax);
    range('dedupWindowMs', 0, l.dedupWindowMsMax);
    range('partitions', 1, l.partitionsPerQueueMax);
  }

  private nameError(queue: Buffer): string | null {
    const max = this.limits.queueNameBytesMax;
    return queue.length > max ? `ERR queue name is ${queue.length} bytes, more than queueNameBytesMax (${max})` : null;
  }

  private payloadError(payload: Buffer): string | null {
    const max = this.limits.payloadBytesMax;
    return payload.length > max ? `ERR payload is ${payload.length} bytes, more than payloadBytesMax (${max})` : null;
  }

  private queueFullError(): string {
    return `ERR queue full (queueLengthMax ${this.limits.queueLengthMax} messages per partition)`;
  }

  private get(queue: Buffer, partition: number): Partition | undefined {
    return this.parts.get(partitionKey(queue, partition));
  }

  /** The partition, created with the default config if new; an error string when the shard holds too many. */
  private getOrCreate(queue: Buffer, partition: number): Partition | string {
    const key = partitionKey(queue, partition);
    const p = this.parts.get(key);
    if (p !== undefined) return p;
    if (this.parts.size >= this.limits.partitionsMax) {
      return `ERR too many queue partitions on this shard (partitionsMax ${this.limits.partitionsMax})`;
    }
    const created = newPartition(this.parts.size, Buffer.from(queue), partition, { ...QUEUE_CONFIG_DEFAULT });
    this.parts.set(key, created);
    return created;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Message moves (every change of a message's state goes through these)
  // ------------------------------------------------------------------------------------------------------------

  private setTimer(p: Partition, m: Msg, at: number): void {
    if (m.timer !== null) this.timers.delete(m.timer);
    m.deadline = at;
    m.timer = { at, ord: p.ord, seq: m.seq, kind: TIMER_MESSAGE, part: p, msg: m, dedup: null };
    this.timers.insert(m.timer);
  }

  private clearTimer(m: Msg): void {
    if (m.timer !== null) {
      if (!this.timers.delete(m.timer)) throw new Error('queue invariant: message timer missing from the index');
      m.timer = null;
    }
    m.deadline = 0;
  }

  /** Adds a new message in READY, or DELAYED until now + delayMs. */
  private add(p: Partition, seq: number, payload: Buffer, delayMs: number): Msg {
    const m: Msg = {
      seq,
      payload,
      state: READY,
      deliveries: 0,
      firstDeliveredAt: 0,
      lastDeliveredAt: 0,
      consumer: '',
      deadline: 0,
      timer: null,
    };
    p.messages.set(seq, m);
    if (delayMs > 0) {
      m.state = DELAYED;
      p.delayed++;
      this.setTimer(p, m, this.now + delayMs);
    } else {
      p.ready.insert(m);
    }
    return m;
  }

  /** In flight -> gone (ack). */
  private dropInflight(p: Partition, m: Msg): void {
    this.leaveInflight(p, m);
    p.messages.delete(m.seq);
  }

  private leaveInflight(p: Partition, m: Msg): void {
    if (m.state !== INFLIGHT) throw new Error('queue invariant: leaveInflight of a message not in flight');
    this.clearTimer(m);
    p.inflight--;
    const held = (p.consumers.get(m.consumer) ?? 0) - 1;
    if (held < 0) throw new Error('queue invariant: consumer in-flight count below zero');
    if (held === 0) p.consumers.delete(m.consumer);
    else p.consumers.set(m.consumer, held);
  }

  /** In flight -> ready, delayed (delayMs > 0) or, after maxDeliver deliveries, dead. */
  private giveBack(p: Partition, m: Msg, delayMs: number): void {
    this.leaveInflight(p, m);
    if (m.deliveries >= p.config.maxDeliver) {
      p.messages.delete(m.seq);
      this.bury(p, m);
      return;
    }
    if (delayMs > 0) {
      m.state = DELAYED;
      p.delayed++;
      this.setTimer(p, m, this.now + delayMs);
    } else {
      m.state = READY;
      p.ready.insert(m);
    }
  }

  /** Appends a message (already out of `messages`) to the dead letters, dropping the oldest past deadKeptMax. */
  private bury(p: Partition, m: Msg): void {
    p.dead.push({
      seq: m.seq,
      payload: m.payload,
      deliveries: m.deliveries,
      firstDeliveredAt: m.firstDeliveredAt,
      lastDeliveredAt: m.lastDeliveredAt,
      consumer: m.consumer,
      deadAt: this.now,
      reason: 'maxdeliver',
    });
    while (p.dead.length > this.limits.deadKeptMax) {
      p.dead.shift();
      p.deadDropped++;
    }
  }

  private addDedup(p: Partition, key: string, seq: number, expiresAt: number): void {
    const e: DedupEntry = { key, seq, expiresAt, timer: null };
    e.timer = { at: expiresAt, ord: p.ord, seq, kind: TIMER_DEDUP, part: p, msg: null, dedup: e };
    this.timers.insert(e.timer);
    p.dedup.set(key, e);
  }

  private dropDedup(p: Partition, e: DedupEntry): void {
    if (e.timer !== null && !this.timers.delete(e.timer)) throw new Error('queue invariant: dedup timer missing');
    e.timer = null;
    p.dedup.delete(e.key);
  }

  // ------------------------------------------------------------------------------------------------------------
  // Commands
  // ------------------------------------------------------------------------------------------------------------

  /**
   * Q.CREATE on this partition: creates it (with defaults for what `config` leaves out) or changes the given
   * fields of an existing one. A change applies from now on: maxDeliver at the next return or pop, visibilityMs to
   * later pops, dedupWindowMs to dedup ids recorded later. Returns null, or { error } for a refused name or a full
   * shard. Throws QUEUE_ARG for a config value out of range.
   */
  configure(stamp: number, index: number, queue: Buffer, partition: number, config: Partial<QueueConfig>): { error: string } | null {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    this.checkConfig(config);
    this.tick(stamp, index);
    const nameErr = this.nameError(queue);
    if (nameErr !== null) return { error: nameErr };
    const p = this.getOrCreate(queue, partition);
    if (typeof p === 'string') return { error: p };
    const next = { ...p.config };
    for (const key of Object.keys(QUEUE_CONFIG_DEFAULT) as (keyof QueueConfig)[]) {
      const v = config[key];
      if (v !== undefined) next[key] = v;
    }
    p.config = next;
    return null;
  }

  /**
   * Q.PUSH: appends messages at the tail, in order, with ids `${index}-${n}` (n counts the messages this call
   * adds). Each item is answered on its own: { id, duplicate: false } when added; { id of the first push,
   * duplicate: true } for a dedup id seen less than the window ago (nothing added); or { error } (payload or
   * dedup id too long, queue full, dedup table full). Creates the partition with the default config.
   */
  push(stamp: number, index: number, queue: Buffer, partition: number, payloads: readonly PushItem[]): PushResult[] {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    if (payloads.length > MESSAGE_IDS_PER_ENTRY) argError(`at most ${MESSAGE_IDS_PER_ENTRY} messages per push, got ${payloads.length}`);
    for (const item of payloads) {
      if (item.delayMs !== undefined) this.checkMs('delay', item.delayMs, 0, this.limits.delayMsMax);
    }
    this.tick(stamp, index);
    const nameErr = this.nameError(queue);
    if (nameErr !== null) return payloads.map(() => ({ error: nameErr }));
    const p = this.getOrCreate(queue, partition);
    if (typeof p === 'string') return payloads.map(() => ({ error: p }));
    const l = this.limits;
    const now = this.now;
    let n = 0;
    const out: PushResult[] = [];
    for (const item of payloads) {
      const payloadErr = this.payloadError(item.payload);
      if (payloadErr !== null) {
        out.push({ error: payloadErr });
        continue;
      }
      let key: string | null = null;
      if (item.dedup !== undefined) {
        if (item.dedup.length > l.dedupBytesMax) {
          out.push({ error: `ERR dedup id is ${item.dedup.length} bytes, more than dedupBytesMax (${l.dedupBytesMax})` });
          continue;
        }
        key = item.dedup.toString('latin1');
        const seen = p.dedup.get(key);
        if (seen !== undefined) {
          if (seen.expiresAt > now) {
            out.push({ id: formatMessageId(seen.seq), duplicate: true });
            continue;
          }
          this.dropDedup(p, seen); // stale by stamp: absent, whether or not its expiry was applied yet
        }
        if (p.config.dedupWindowMs === 0) key = null;
      }
      if (p.messages.size >= l.queueLengthMax) {
        out.push({ error: this.queueFullError() });
        continue;
      }
      if (key !== null && p.dedup.size >= l.dedupEntriesMax) {
        out.push({ error: `ERR dedup table full (dedupEntriesMax ${l.dedupEntriesMax} per partition)` });
        continue;
      }
      const seq = index * MESSAGE_IDS_PER_ENTRY + n++;
      this.add(p, seq, Buffer.from(item.payload), item.delayMs ?? 0);
      if (key !== null) this.addDedup(p, key, seq, now + p.config.dedupWindowMs);
      out.push({ id: formatMessageId(seq), duplicate: false });
    }
    return out;
  }

  /**
   * Q.POP: delivers up to `count` ready messages in seq order to `consumer`, in flight until stamp + visibilityMs
   * (null = the queue's default). A message whose delivery would exceed maxDeliver (possible only after configure
   * lowered it) moves to the dead letters instead and is not returned. At most inflightPerConsumerMax messages per
   * consumer and partition are in flight: a pop delivers fewer to stay within it, and answers { error } when the
   * consumer is already at the limit. An unknown partition delivers nothing.
   */
  pop(
    stamp: number,
    index: number,
    queue: Buffer,
    partition: number,
    consumer: string,
    count: number,
    visibilityMs: number | null,
  ): Delivery[] | { error: string } {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    this.checkCount('count', count);
    if (Buffer.byteLength(consumer) > this.limits.consumerBytesMax) {
      argError(`consumer name longer than consumerBytesMax (${this.limits.consumerBytesMax} bytes)`);
    }
    if (visibilityMs !== null) this.checkMs('visibility', visibilityMs, 1, this.limits.visibilityMsMax);
    this.tick(stamp, index);
    const p = this.get(queue, partition);
    if (p === undefined || count === 0) return [];
    const held = p.consumers.get(consumer) ?? 0;
    const room = this.limits.inflightPerConsumerMax - held;
    if (room <= 0) {
      return { error: `ERR consumer has ${held} messages in flight (inflightPerConsumerMax ${this.limits.inflightPerConsumerMax})` };
    }
    const want = count < room ? count : room;
    const now = this.now;
    const until = now + (visibilityMs ?? p.config.visibilityMs);
    const out: Delivery[] = [];
    while (out.length < want) {
      const m = p.ready.shift();
      if (m === undefined) break;
      if (m.deliveries + 1 > p.config.maxDeliver) {
        p.messages.delete(m.seq);
        this.bury(p, m);
        continue;
      }
      m.state = INFLIGHT;
      m.deliveries++;
      if (m.firstDeliveredAt === 0) m.firstDeliveredAt = now;
      m.lastDeliveredAt = now;
      m.consumer = consumer;
      p.inflight++;
      this.setTimer(p, m, until);
      out.push({ id: formatMessageId(m.seq), payload: m.payload, deliveries: m.deliveries });
    }
    if (out.length > 0) p.consumers.set(consumer, held + out.length);
    return out;
  }

  /**
   * Q.ACK: drops the named in-flight messages for good; returns how many. An unknown or malformed id, a message
   * not in flight (ready again after its visibility lapsed, delayed, dead) or an id named twice is not counted and
   * changes nothing: a message that went back to ready stays ready and will be delivered again.
   */
  ack(stamp: number, index: number, queue: Buffer, partition: number, ids: readonly string[]): number {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    this.tick(stamp, index);
    const p = this.get(queue, partition);
    if (p === undefined) return 0;
    let acked = 0;
    for (const id of ids) {
      const seq = parseMessageId(id);
      const m = seq === null ? undefined : p.messages.get(seq);
      if (m === undefined || m.state !== INFLIGHT) continue;
      this.dropInflight(p, m);
      acked++;
    }
    return acked;
  }

  /**
   * Q.NACK: an in-flight message goes back to ready at its seq place, or to delayed until stamp + delayMs, or (after
   * maxDeliver deliveries) to the dead letters; 1. Otherwise 0.
   */
  nack(stamp: number, index: number, queue: Buffer, partition: number, id: string, delayMs: number): 0 | 1 {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    this.checkMs('delay', delayMs, 0, this.limits.delayMsMax);
    this.tick(stamp, index);
    const m = this.inflightMsg(queue, partition, id);
    if (m === undefined) return 0;
    this.giveBack(m[0], m[1], delayMs);
    return 1;
  }

  /** Q.EXTEND: an in-flight message's visibility deadline becomes stamp + ms (0 = lapsed now); 1. Otherwise 0. */
  extend(stamp: number, index: number, queue: Buffer, partition: number, id: string, ms: number): 0 | 1 {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    this.checkMs('visibility', ms, 0, this.limits.visibilityMsMax);
    this.tick(stamp, index);
    const m = this.inflightMsg(queue, partition, id);
    if (m === undefined) return 0;
    this.setTimer(m[0], m[1], this.now + ms);
    return 1;
  }

  private inflightMsg(queue: Buffer, partition: number, id: string): [Partition, Msg] | undefined {
    const p = this.get(queue, partition);
    const seq = parseMessageId(id);
    const m = p === undefined || seq === null ? undefined : p.messages.get(seq);
    return p !== undefined && m !== undefined && m.state === INFLIGHT ? [p, m] : undefined;
  }

  /**
   * Applies lapsed timers named by the leader (planExpiry). Each item is checked again at this call's stamp and
   * takes effect only if it still holds: the message is still in flight (delayed) with a deadline <= stamp, the
   * dedup entry still exists with expiresAt <= stamp. A lapsed visibility returns the message like a nack without
   * delay. Returns how many items took effect.
   */
  expire(stamp: number, index: number, items: readonly ExpiryItem[]): number {
    this.checkClock(stamp, index);
    for (const item of items) {
      if (item.kind !== 'visibility' && item.kind !== 'delay' && item.kind !== 'dedup') {
        argError(`unknown expiry kind ${JSON.stringify((item as { kind: unknown }).kind)}`);
      }
      if (!Buffer.isBuffer(item.queue)) argError('expiry item without a queue name');
      if (item.kind === 'dedup' ? !Buffer.isBuffer(item.dedup) : typeof item.id !== 'string') {
        argError(`${item.kind} expiry item without its ${item.kind === 'dedup' ? 'dedup id' : 'message id'}`);
      }
      this.checkPartitionNumber(item.partition);
    }
    this.tick(stamp, index);
    const now = this.now;
    let done = 0;
    for (const item of items) {
      const p = this.get(item.queue, item.partition);
      if (p === undefined) continue;
      if (item.kind === 'dedup') {
        const e = p.dedup.get(item.dedup.toString('latin1'));
        if (e === undefined || e.expiresAt > now) continue;
        this.dropDedup(p, e);
        done++;
        continue;
      }
      const seq = parseMessageId(item.id);
      const m = seq === null ? undefined : p.messages.get(seq);
      if (m === undefined || m.deadline > now) continue;
      if (item.kind === 'visibility' && m.state === INFLIGHT) {
        this.giveBack(p, m, 0);
        done++;
      } else if (item.kind === 'delay' && m.state === DELAYED) {
        this.clearTimer(m);
        m.state = READY;
        p.delayed--;
        p.ready.insert(m);
        done++;
      }
    }
    return done;
  }

  /**
   * Leader side: up to `max` timers lapsed at max(nowMs, lastStampMs), earliest first: in-flight messages whose
   * visibility lapsed, delayed messages now due, dedup entries to forget. Propose them with expire(stamp >= that
   * time). Reads only: O(log n + result) through the timer index.
   */
  planExpiry(nowMs: number, max: number): ExpiryItem[] {
    const t = nowMs > this.lastStamp ? nowMs : this.lastStamp;
    const out: ExpiryItem[] = [];
    if (max <= 0) return out;
    for (const timer of this.timers.values()) {
      if (timer.at > t || out.length >= max) break;
      const p = timer.part;
      if (timer.dedup !== null) {
        out.push({ kind: 'dedup', queue: p.queue, partition: p.partition, dedup: Buffer.from(timer.dedup.key, 'latin1') });
      } else if (timer.msg !== null) {
        const kind = timer.msg.state === INFLIGHT ? 'visibility' : 'delay';
        out.push({ kind, queue: p.queue, partition: p.partition, id: formatMessageId(timer.seq) });
      }
    }
    return out;
  }

  /** The earliest timer (visibility deadline, delay due time, dedup expiry) held, or null: when to plan next. */
  nextExpiryAt(): number | null {
    return this.timers.first()?.at ?? null;
  }

  /**
   * Dead letters, oldest first, up to `count`, with their history. Read only. The payloads are the state's own
   * buffers: do not modify them.
   */
  dead(queue: Buffer, partition: number, count: number): DeadInfo[] {
    const p = this.get(queue, partition);
    if (p === undefined || !(count > 0)) return [];
    return p.dead.slice(count).map((d) => ({
      id: formatMessageId(d.seq),
      payload: d.payload,
      deliveries: d.deliveries,
      firstDeliveredAt: d.firstDeliveredAt,
      lastDeliveredAt: d.lastDeliveredAt,
      lastConsumer: d.consumer,
      deadAt: d.deadAt,
      reason: d.reason,
    }));
  }

  /**
   * Q.REDRIVE: dead letters go back to ready, oldest first, keeping their ids (so their seq place, ahead of newer
   * messages) with a fresh delivery history, as many as the queue length limit allows; the rest stay dead.
   * Returns how many moved.
   */
  redrive(stamp: number, index: number, queue: Buffer, partition: number): number {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    this.tick(stamp, index);
    const p = this.get(queue, partition);
    if (p === undefined) return 0;
    let moved = 0;
    while (p.dead.length > 0 && p.messages.size < this.limits.queueLengthMax) {
      const d = p.dead.shift() as Dead;
      this.add(p, d.seq, d.payload, 0);
      moved++;
    }
    return moved;
  }

  /**
   * Q.PURGE: drops every ready, delayed and in-flight message (in-flight ones can no longer be acked); returns how
   * many. Dead letters (purgeDead) and dedup entries stay: a dedup id pushed again within its window still
   * answers the purged message's id.
   */
  purge(stamp: number, index: number, queue: Buffer, partition: number): number {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    this.tick(stamp, index);
    const p = this.get(queue, partition);
    if (p === undefined) return 0;
    const n = p.messages.size;
    for (const m of p.messages.values()) this.clearTimer(m);
    p.messages.clear();
    p.ready.clear();
    p.consumers.clear();
    p.delayed = 0;
    p.inflight = 0;
    return n;
  }

  /** Drops every dead letter of the partition; returns how many. */
  purgeDead(stamp: number, index: number, queue: Buffer, partition: number): number {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    this.tick(stamp, index);
    const p = this.get(queue, partition);
    if (p === undefined) return 0;
    const n = p.dead.length;
    p.dead.clear();
    return n;
  }

  /** Counts and config of a partition, or null if this shard does not hold it. */
  info(queue: Buffer, partition: number): QueueInfo | null {
    const p = this.get(queue, partition);
    if (p === undefined) return null;
    return {
      ready: p.ready.size,
      inflight: p.inflight,
      delayed: p.delayed,
      dead: p.dead.length,
      deadDropped: p.deadDropped,
      dedup: p.dedup.size,
      config: { ...p.config },
    };
  }

  /** Q.LEN: messages waiting to be delivered, ready + delayed (not in flight, not dead). 0 for an unknown one. */
  len(queue: Buffer, partition: number): number {
    const p = this.get(queue, partition);
    return p === undefined ? 0 : p.ready.size + p.delayed;
  }

  /** The partitions this shard holds, in creation order. */
  queues(): { queue: Buffer; partition: number }[] {
    return [...this.parts.values()].map((p) => ({ queue: p.queue, partition: p.partition }));
  }

  // ------------------------------------------------------------------------------------------------------------
  // Redis list commands on the same ready sequence (pop means delivered-and-acked)
  // ------------------------------------------------------------------------------------------------------------

  /**
   * RPUSH (head = false): appends at the tail with ids `${index}-${n}`, like push. LPUSH (head = true): each
   * payload in turn goes before every message of the partition, with seq -1, -2, ... from a per-partition counter
   * (ids `h1`, `h2`, ...), so `LPUSH q a b c` leaves c first, as in Redis. All or nothing: { error } for a name or
   * payload too long, a queue that would exceed queueLengthMax, or a full shard. Returns LLEN after the push.
   */
  listPush(stamp: number, index: number, queue: Buffer, partition: number, payloads: readonly Buffer[], head: boolean): number | { error: string } {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    if (payloads.length > MESSAGE_IDS_PER_ENTRY) argError(`at most ${MESSAGE_IDS_PER_ENTRY} messages per push, got ${payloads.length}`);
    this.tick(stamp, index);
    const nameErr = this.nameError(queue);
    if (nameErr !== null) return { error: nameErr };
    for (const payload of payloads) {
      const err = this.payloadError(payload);
      if (err !== null) return { error: err };
    }
    const existing = this.get(queue, partition);
    if ((existing?.messages.size ?? 0) + payloads.length > this.limits.queueLengthMax) return { error: this.queueFullError() };
    const p = existing ?? this.getOrCreate(queue, partition);
    if (typeof p === 'string') return { error: p };
    let n = 0;
    for (const payload of payloads) {
      const seq = head ? p.headNext-- : index * MESSAGE_IDS_PER_ENTRY + n++;
      this.add(p, seq, Buffer.from(payload), 0);
    }
    return p.ready.size;
  }

  /**
   * LPOP (head = true) / RPOP (head = false): removes up to `count` ready messages from the head (lowest seq) or
   * the tail (highest seq) for good and returns their payloads. Delayed and in-flight messages are not touched.
   */
  listPop(stamp: number, index: number, queue: Buffer, partition: number, count: number, head: boolean): Buffer[] {
    this.checkClock(stamp, index);
    this.checkPartitionNumber(partition);
    this.checkCount('count', count);
    this.tick(stamp, index);
    const p = this.get(queue, partition);
    const out: Buffer[] = [];
    if (p === undefined) return out;
    while (out.length < count) {
      const m = head ? p.ready.shift() : p.ready.pop();
      if (m === undefined) break;
      p.messages.delete(m.seq);
      out.push(m.payload);
    }
    return out;
  }

  /** LRANGE over the ready messages in seq order: inclusive, negative indexes count from the tail. Read only. */
  listRange(queue: Buffer, partition: number, start: number, stop: number): Buffer[] {
    const p = this.get(queue, partition);
    if (p === undefined) return [];
    const n = p.ready.size;
    let s = start < 0 ? n + start : start;
    let e = stop < 0 ? n + stop : stop;
    if (s < 0) s = 0;
    if (e >= n) e = n - 1;
    if (s > e || s >= n) return [];
    return p.ready.slice(s, e + 1).map((m) => m.payload);
  }

  /**
   * Would pop(…, queue, partition, consumer, count, visibilityMs) deliver nothing and change nothing, whatever its
   * stamp and index? True when the arguments are valid and the partition does not exist, the count is 0, or no
   * message is ready and the consumer is below its in-flight limit (pop's tick only advances the clock; expiries
   * are entries of their own). False whenever pop could answer anything else, an error included. Lets the leader
   * answer an empty pop after a read barrier instead of logging an entry that changes nothing.
   */
  popFindsNothing(queue: Buffer, partition: number, consumer: string, count: number, visibilityMs: number | null): boolean {
    if (!this.partitionNumberOk(partition) || !isSafeNonNegative(count) || Buffer.byteLength(consumer) > this.limits.consumerBytesMax) return false;
    if (visibilityMs !== null && !isSafeInRange(visibilityMs, 1, this.limits.visibilityMsMax)) return false;
    const p = this.get(queue, partition);
    if (p === undefined || count === 0) return true;
    return p.ready.size === 0 && (p.consumers.get(consumer) ?? 0) < this.limits.inflightPerConsumerMax;
  }

  /** Would listPop(…, queue, partition, count, head) take nothing (an LPOP/RPOP of an empty or unknown list)? */
  listPopFindsNothing(queue: Buffer, partition: number, count: number): boolean {
    if (!this.partitionNumberOk(partition) || !isSafeNonNegative(count)) return false;
    const p = this.get(queue, partition);
    return p === undefined || count === 0 || p.ready.size === 0;
  }

  /** LLEN: ready messages (what LRANGE 0 -1 and LPOP see). Q.LEN (len) also counts delayed ones. */
  listLen(queue: Buffer, partition: number): number {
    return this.get(queue, partition)?.ready.size ?? 0;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Snapshots
  // ------------------------------------------------------------------------------------------------------------

  /**
   * The replicated state in a canonical order (partitions by creation, messages by seq, dead letters oldest first,
   * dedup entries by seq), so equal states give equal bytes. The frame is msgpack:
   *   ['LKQS', version, lastStampMs, lastIndex, [partition...]]
   *   partition: [queue, partition, [maxDeliver, visibilityMs, dedupWindowMs, partitions], headNext, deadDropped,
   *               messages, dead, dedup]
   * and, since version 2, messages, dead and dedup are each one binary blob of fixed-layout records (little endian;
   * numbers as f64, which holds every safe integer; lengths u32):
   *   message: flags u8 (bits 0-1 state: 0 ready, 1 delayed, 2 in flight; bit 2 delivered; bit 3 deadline), seq,
   *            payload (len + bytes), then if delivered: deliveries, firstDeliveredAt, lastDeliveredAt, consumer
   *            (len + UTF-8), then if deadline: deadline
   *   dead:    seq, payload, deliveries, firstDeliveredAt, lastDeliveredAt, consumer, deadAt, reason u8 (1 maxdeliver)
   *   dedup:   dedup id (len + latin1), seq, expiresAt
   * Version 1 had one msgpack array per record: a 52 MB state encoded in 1.1-1.25 s and restored in 2.4-2.5 s, on
   * the shard worker's thread, where a leader's stall runs its followers' election timers out; version 2 encodes it
   * about 4x faster and restores it 1.3-1.6x faster (bench/snapshot.ts). restore() still reads version 1; a node
   * with older code refuses a version 2 snapshot (QUEUE_VERSION), so upgrade followers first.
   * The limits are not in it (they are configuration, the same on every replica); the timer index, per-consumer
   * counts and ready order are derived and rebuilt by restore().
   */
  snapshot(): Uint8Array {
    return runSteps(this.snapshotSteps());
  }

  private *snapshotSteps(): Steps<Uint8Array> {
    const prepared = yield* this.prepareSteps();
    const buf = Buffer.allocUnsafeSlow(prepared.size);
    yield* prepared.writeSteps(buf, 0);
    return buf;
  }

  /**
   * snapshot() in two parts, so a caller embedding it (KeyspaceMachine) writes it straight into its own buffer:
   * `size` bytes, written at an offset by writeSteps(). The msgpack frame is written by hand around the blobs (bin 32
   * headers, an array 32 of partitions), so every byte is written once, into the caller's buffer: building the blobs
   * and then handing them to msgpack copied a large state twice more and allocated as much again each time.
   * Both parts run in steps of at most SNAPSHOT_STEP_RECORDS records (listing and sizing a large state takes tens of
   * milliseconds, hundreds when its code is not optimized yet). The state must not change until the writer is done.
   */
  *prepareSteps(): Steps<PreparedSnapshot> {
    const head = [SNAPSHOT_MAGIC, QUEUE_SNAPSHOT_VERSION, this.lastStamp, this.lastIdx].map((v) => packr.pack(v));
    let size = 1 + head.reduce((n, b) => n + b.length, 0) + 5;
    const parts: { fields: Buffer[]; msgs: Msg[]; msgBytes: number; dead: Dead[]; deadBytes: number; dedup: DedupEntry[]; dedupBytes: number }[] = [];
    for (const p of this.parts.values()) {
      // Pushes insert in seq order; only head pushes (LPUSH) and restores can leave the map out of it.
      const msgs: Msg[] = [];
      let msgBytes = 0;
      let ordered = true;
      for (const m of p.messages.values()) {
        if (msgs.length > 0 && msgs.length % SNAPSHOT_STEP_RECORDS === 0) yield;
        if (ordered && msgs.length > 0 && compareMsgs(msgs[msgs.length - 1]!, m) >= 0) ordered = false;
        msgs.push(m);
        msgBytes += messageBytes(m);
      }
      if (!ordered) {
        yield;
        msgs.sort(compareMsgs);
      }
      const dedup = [...p.dedup.values()].sort((a, b) => a.seq - b.seq);
      const dead = [...p.dead.values()];
      const c = p.config;
      const fields = [p.queue, p.partition, [c.maxDeliver, c.visibilityMs, c.dedupWindowMs, c.partitions], p.headNext, p.deadDropped].map((v) => packr.pack(v));
      const part = { fields, msgs, msgBytes, dead, deadBytes: deadBytes(dead), dedup, dedupBytes: dedupBytes(dedup) };
      size += 1 + fields.reduce((n, b) => n + b.length, 0) + 3 * 5 + part.msgBytes + part.deadBytes + part.dedupBytes;
      parts.push(part);
      yield;
    }
    /** Writes the snapshot in steps of at most SNAPSHOT_STEP_RECORDS records; returns the end position. */
    function* writeSteps(buf: Buffer, offset: number): Steps<number> {
      const w = new BlobWriter(buf, offset);
      w.u8(0x95); // fixarray of 5
      for (const b of head) w.raw(b);
      w.u8(0xdd); // array 32
      w.u32be(parts.length);
      for (const part of parts) {
        w.u8(0x98); // fixarray of 8
        for (const b of part.fields) w.raw(b);
        w.bin32(part.msgBytes);
        yield* inSteps(part.msgs, (from, to) => writeMessages(w, part.msgs, from, to));
        w.bin32(part.deadBytes);
        yield* inSteps(part.dead, (from, to) => writeDead(w, part.dead, from, to));
        w.bin32(part.dedupBytes);
        yield* inSteps(part.dedup, (from, to) => writeDedup(w, part.dedup, from, to));
      }
      if (w.pos !== offset + size) throw new Error(`queue snapshot: wrote ${w.pos - offset} of ${size} bytes`);
      return w.pos;
    }
    return { size, writeSteps };
  }

  /**
   * Replaces the whole state with a snapshot's. Validates everything before changing anything: on a
   * QueueStateError (QUEUE_CORRUPT, QUEUE_VERSION) the state is as it was.
   */
  restore(data: Uint8Array): void {
    let top: unknown;
    try {
      top = packr.unpack(data);
    } catch (err) {
      corrupt(`not msgpack (${(err as Error).message})`);
    }
    const root = tuple(top, 5, 'snapshot');
    if (root[0] !== SNAPSHOT_MAGIC) corrupt('bad magic');
    const version = root[1];
    if (version !== 1 && version !== QUEUE_SNAPSHOT_VERSION) {
      if (typeof root[1] === 'number' && root[1] > QUEUE_SNAPSHOT_VERSION) {
        throw new QueueStateError('QUEUE_VERSION', `queue snapshot version ${root[1]} is newer than ${QUEUE_SNAPSHOT_VERSION}: upgrade this node`);
      }
      corrupt(`bad version ${String(root[1])}`);
    }
    const lastStamp = int(root[2], 0, Number.MAX_SAFE_INTEGER, 'lastStampMs');
    const lastIdx = int(root[3], 0, QUEUE_INDEX_MAX, 'lastIndex');
    const seqLimit = (lastIdx + 1) * MESSAGE_IDS_PER_ENTRY;
    const l = this.limits;
    const parts = new Map<string, Partition>();
    const timers = new SortedList<Timer>(compareTimers);
    for (const [pi, raw] of array(root[4], 'partitions').entries()) {
      const what = `partition ${pi}`;
      const pt = tuple(raw, 8, what);
      const queue = bytes(pt[0], `${what} name`);
      const partition = int(pt[1], 0, l.partitionsPerQueueMax - 1, `${what} number`);
      const ct = tuple(pt[2], 4, `${what} config`);
      const config: QueueConfig = {
        maxDeliver: int(ct[0], 1, Number.MAX_SAFE_INTEGER, `${what} maxDeliver`),
        visibilityMs: int(ct[1], 1, Number.MAX_SAFE_INTEGER, `${what} visibilityMs`),
        dedupWindowMs: int(ct[2], 0, Number.MAX_SAFE_INTEGER, `${what} dedupWindowMs`),
        partitions: int(ct[3], 1, Number.MAX_SAFE_INTEGER, `${what} partitions`),
      };
      const headNext = int(pt[3], -Number.MAX_SAFE_INTEGER, -1, `${what} headNext`);
      const p = newPartition(pi, queue, partition, config);
      p.headNext = headNext;
      p.deadDropped = int(pt[4], 0, Number.MAX_SAFE_INTEGER, `${what} deadDropped`);
      const key = partitionKey(queue, partition);
      if (parts.has(key)) corrupt(`${what} is a duplicate`);
      parts.set(key, p);
      // Messages come in strictly increasing seq order (checked below), so they cannot repeat a seq; a dead letter
      // must not repeat a message's or another dead letter's.
      const deadSeen = new Set<number>();
      const checkSeq = (v: unknown, w: string): number => {
        const seq = int(v, headNext + 1, seqLimit - 1, `${w} seq`);
        if (seq < 0 ? false : seq < MESSAGE_IDS_PER_ENTRY) corrupt(`${w} seq ${seq} names index 0`);
        return seq;
      };
      let prev = -Infinity;
      // Per message: the same checks for both versions; labels for errors are built only when one fails (this loop
      // runs once per message of a state that can hold millions).
      const mlist = `${what} message`;
      const addMessage = (mi: number, seqV: unknown, payloadV: unknown, stateV: unknown, delV: unknown, firstV: unknown, lastV: unknown, consumerV: unknown, deadlineV: unknown): void => {
        const seq = intAt(seqV, headNext + 1, seqLimit - 1, mlist, mi, 'seq');
        if (seq < 0 ? false : seq < MESSAGE_IDS_PER_ENTRY) corrupt(`${mlist} ${mi} seq ${seq} names index 0`);
        if (seq <= prev) corrupt(`${mlist} ${mi} out of seq order`);
        prev = seq;
        const state = intAt(stateV, READY, INFLIGHT, mlist, mi, 'state') as MsgState;
        if (!(payloadV instanceof Uint8Array)) corrupt(`${mlist} ${mi} payload is not bytes`);
        if (typeof consumerV !== 'string') corrupt(`${mlist} ${mi} consumer is not a string`);
        const m: Msg = {
          seq,
          payload: Buffer.from(payloadV), // a copy: the view shares the snapshot's memory
          state,
          deliveries: intAt(delV, 0, Number.MAX_SAFE_INTEGER, mlist, mi, 'deliveries'),
          firstDeliveredAt: intAt(firstV, 0, lastStamp, mlist, mi, 'firstDeliveredAt'),
          lastDeliveredAt: intAt(lastV, 0, lastStamp, mlist, mi, 'lastDeliveredAt'),
          consumer: consumerV,
          deadline: intAt(deadlineV, 0, Number.MAX_SAFE_INTEGER, mlist, mi, 'deadline'),
          timer: null,
        };
        if (state === INFLIGHT && m.deliveries < 1) corrupt(`${mlist} ${mi} is in flight with no delivery`);
        if (state === READY && m.deadline !== 0) corrupt(`${mlist} ${mi} is ready with a deadline`);
        p.messages.set(seq, m);
        if (state === READY) {
          p.ready.insert(m);
        } else {
          m.timer = { at: m.deadline, ord: p.ord, seq, kind: TIMER_MESSAGE, part: p, msg: m, dedup: null };
          timers.insert(m.timer);
          if (state === DELAYED) {
            p.delayed++;
          } else {
            p.inflight++;
            p.consumers.set(m.consumer, (p.consumers.get(m.consumer) ?? 0) + 1);
          }
        }
      };
      if (version === 1) {
        for (const [mi, mraw] of array(pt[5], `${what} messages`).entries()) {
          const mt = tuple(mraw, 8, `${mlist} ${mi}`);
          addMessage(mi, mt[0], mt[1], mt[2], mt[3], mt[4], mt[5], mt[6], mt[7]);
        }
      } else {
        forEachMessageRecord(pt[5], `${what} messages`, addMessage);
      }
      for (const [di, draw] of (version === 1 ? array(pt[6], `${what} dead letters`) : decodeDead(pt[6], `${what} dead letters`)).entries()) {
        const w = `${what} dead letter ${di}`;
        const dt = tuple(draw, 8, w);
        if (dt[7] !== 'maxdeliver') corrupt(`${w} has an unknown reason`);
        const seq = checkSeq(dt[0], w);
        if (p.messages.has(seq) || deadSeen.has(seq)) corrupt(`${w} seq ${seq} is a duplicate`);
        deadSeen.add(seq);
        p.dead.push({
          seq,
          payload: bytes(dt[1], `${w} payload`),
          deliveries: int(dt[2], 0, Number.MAX_SAFE_INTEGER, `${w} deliveries`),
          firstDeliveredAt: int(dt[3], 0, lastStamp, `${w} firstDeliveredAt`),
          lastDeliveredAt: int(dt[4], 0, lastStamp, `${w} lastDeliveredAt`),
          consumer: str(dt[5], `${w} consumer`),
          deadAt: int(dt[6], 0, lastStamp, `${w} deadAt`),
          reason: 'maxdeliver',
        });
      }
      const dedupSeqs = new Set<number>();
      for (const [ei, eraw] of (version === 1 ? array(pt[7], `${what} dedup`) : decodeDedup(pt[7], `${what} dedup`)).entries()) {
        const w = `${what} dedup entry ${ei}`;
        const et = tuple(eraw, 3, w);
        const k = bytes(et[0], `${w} id`).toString('latin1');
        const seq = int(et[1], -Number.MAX_SAFE_INTEGER, seqLimit - 1, `${w} seq`);
        if (dedupSeqs.has(seq) || p.dedup.has(k)) corrupt(`${w} is a duplicate`);
        dedupSeqs.add(seq);
        const e: DedupEntry = { key: k, seq, expiresAt: int(et[2], 0, Number.MAX_SAFE_INTEGER, `${w} expiresAt`), timer: null };
        e.timer = { at: e.expiresAt, ord: p.ord, seq, kind: TIMER_DEDUP, part: p, msg: null, dedup: e };
        timers.insert(e.timer);
        p.dedup.set(k, e);
      }
    }
    this.parts = parts;
    this.timers = timers;
    this.lastStamp = lastStamp;
    this.lastIdx = lastIdx;
    this.now = lastStamp;
  }
}

function newPartition(ord: number, queue: Buffer, partition: number, config: QueueConfig): Partition {
  return {
    ord,
    queue,
    partition,
    config,
    messages: new Map(),
    ready: new SortedList<Msg>(compareMsgs),
    delayed: 0,
    inflight: 0,
    consumers: new Map(),
    dead: new Deque<Dead>(),
    deadDropped: 0,
    dedup: new Map(),
    headNext: -1,
  };
}

/**
 * A queue snapshot (either version) as plain records: the msgpack frame, with version 2's blobs turned into version
 * 1's field tuples. For tests and tools that look inside a snapshot; restore() reads both forms.
 */
export function queueSnapshotRecords(data: Uint8Array): unknown[] {
  const root = packr.unpack(data) as unknown[];
  if (root[1] !== 1 && Array.isArray(root[4])) {
    for (const pt of root[4] as unknown[][]) {
      pt[5] = decodeMessages(pt[5], 'messages');
      pt[6] = decodeDead(pt[6], 'dead letters');
      pt[7] = decodeDedup(pt[7], 'dedup');
    }
  }
  return root;
}

// ---------------------------------------------------------------------------------------------------------------
// Snapshot blobs (version 2): fixed-layout records, see QueueState.snapshot()
// ---------------------------------------------------------------------------------------------------------------

const M_STATE = 3;
const M_DELIVERED = 4;
const M_DEADLINE = 8;
const REASON_CODES: Record<DeadReason, number> = { maxdeliver: 1 };

/** Writes a snapshot into a buffer sized up front. */
class BlobWriter {
  constructor(
    readonly buf: Buffer,
    public pos: number,
  ) {}
  u8(v: number): void {
    this.buf[this.pos++] = v;
  }
  u32be(v: number): void {
    this.buf.writeUInt32BE(v, this.pos);
    this.pos += 4;
  }
  /** A msgpack bin 32 header. */
  bin32(n: number): void {
    this.u8(0xc6);
    this.u32be(n);
  }
  raw(b: Uint8Array): void {
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  f64(v: number): void {
    this.buf.writeDoubleLE(v, this.pos);
    this.pos += 8;
  }
  bytes(b: Buffer): void {
    this.buf.writeUInt32LE(b.length, this.pos);
    this.buf.set(b, this.pos + 4); // (Buffer#copy validates its arguments in JS first: 3x slower for small payloads)
    this.pos += 4 + b.length;
  }
  text(s: string, encoding: 'utf8' | 'latin1'): void {
    const n = this.buf.write(s, this.pos + 4, encoding);
    this.buf.writeUInt32LE(n, this.pos);
    this.pos += 4 + n;
  }
}

function delivered(m: Msg): boolean {
  return m.deliveries !== 0 || m.firstDeliveredAt !== 0 || m.lastDeliveredAt !== 0 || m.consumer !== '';
}

/** Bytes of one message record (the layout of writeMessages). */
function messageBytes(m: Msg): number {
  let size = 1 + 8 + 4 + m.payload.length;
  if (delivered(m)) size += 24 + 4 + Buffer.byteLength(m.consumer);
  if (m.deadline !== 0) size += 8;
  return size;
}

/** QueueState.prepareSteps(): `size` bytes, written at an offset by writeSteps(), which returns the end position. */
export interface PreparedSnapshot {
  size: number;
  writeSteps(buf: Buffer, offset: number): Steps<number>;
}

/** Records a snapshot lists or writes between two yields (QueueState.prepareSteps, PreparedSnapshot.writeSteps). */
export const SNAPSHOT_STEP_RECORDS = 4096;

/** Calls write(from, to) over `items` in ranges of SNAPSHOT_STEP_RECORDS, yielding after each but the last. */
function* inSteps(items: readonly unknown[], write: (from: number, to: number) => void): Steps<void> {
  for (let from = 0; from < items.length; from += SNAPSHOT_STEP_RECORDS) {
    if (from > 0) yield;
    write(from, Math.min(items.length, from + SNAPSHOT_STEP_RECORDS));
  }
}

function writeMessages(w: BlobWriter, msgs: readonly Msg[], from: number, to: number): void {
  for (let i = from; i < to; i++) {
    const m = msgs[i]!;
    const d = delivered(m);
    w.u8(m.state | (d ? M_DELIVERED : 0) | (m.deadline !== 0 ? M_DEADLINE : 0));
    w.f64(m.seq);
    w.bytes(m.payload);
    if (d) {
      w.f64(m.deliveries);
      w.f64(m.firstDeliveredAt);
      w.f64(m.lastDeliveredAt);
      w.text(m.consumer, 'utf8');
    }
    if (m.deadline !== 0) w.f64(m.deadline);
  }
}

function deadBytes(dead: readonly Dead[]): number {
  let size = 0;
  for (const d of dead) size += 8 + 4 + d.payload.length + 24 + 4 + Buffer.byteLength(d.consumer) + 8 + 1;
  return size;
}

function writeDead(w: BlobWriter, dead: readonly Dead[], from: number, to: number): void {
  for (let i = from; i < to; i++) {
    const d = dead[i]!;
    w.f64(d.seq);
    w.bytes(d.payload);
    w.f64(d.deliveries);
    w.f64(d.firstDeliveredAt);
    w.f64(d.lastDeliveredAt);
    w.text(d.consumer, 'utf8');
    w.f64(d.deadAt);
    w.u8(REASON_CODES[d.reason]);
  }
}

function dedupBytes(entries: readonly DedupEntry[]): number {
  let size = 0;
  for (const e of entries) size += 4 + e.key.length + 16;
  return size;
}

function writeDedup(w: BlobWriter, entries: readonly DedupEntry[], from: number, to: number): void {
  for (let i = from; i < to; i++) {
    const e = entries[i]!;
    w.text(e.key, 'latin1');
    w.f64(e.seq);
    w.f64(e.expiresAt);
  }
}

/** Reads records of a blob; any read past its end is a corrupt snapshot. */
class BlobReader {
  private pos = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}
  get more(): boolean {
    return this.pos < this.buf.length;
  }
  private need(n: number): void {
    if (this.pos + n > this.buf.length) corrupt(`${this.what} truncated`);
  }
  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  f64(): number {
    this.need(8);
    const v = this.buf.readDoubleLE(this.pos);
    this.pos += 8;
    return v;
  }
  /** A view into the blob (restore copies what it keeps). */
  bytes(): Buffer {
    this.need(4);
    const n = this.buf.readUInt32LE(this.pos);
    this.need(4 + n);
    const v = this.buf.subarray(this.pos + 4, this.pos + 4 + n);
    this.pos += 4 + n;
    return v;
  }
  text(encoding: 'utf8' | 'latin1'): string {
    return this.bytes().toString(encoding);
  }
}

function blob(v: unknown, what: string): BlobReader {
  if (!(v instanceof Uint8Array)) corrupt(`${what} is not bytes`);
  return new BlobReader(Buffer.from(v.buffer, v.byteOffset, v.byteLength), what);
}

type MessageFields = (mi: number, seq: number, payload: Buffer, state: number, deliveries: number, first: number, last: number, consumer: string, deadline: number) => void;

/** Reads version 2 message records in order (the layout is QueueState.snapshot()'s); fields are not range-checked. */
function forEachMessageRecord(v: unknown, what: string, fn: MessageFields): void {
  const r = blob(v, what);
  for (let mi = 0; r.more; mi++) {
    const flags = r.u8();
    if ((flags & ~(M_STATE | M_DELIVERED | M_DEADLINE)) !== 0) corrupt(`${what} ${mi}: bad flags ${flags}`);
    const seq = r.f64();
    const payload = r.bytes();
    const d = (flags & M_DELIVERED) !== 0;
    const deliveries = d ? r.f64() : 0;
    const first = d ? r.f64() : 0;
    const last = d ? r.f64() : 0;
    const consumer = d ? r.text('utf8') : '';
    const deadline = (flags & M_DEADLINE) !== 0 ? r.f64() : 0;
    fn(mi, seq, payload, flags & M_STATE, deliveries, first, last, consumer, deadline);
  }
}

/** Version 2 message records as version 1's field tuples (queueSnapshotRecords). */
function decodeMessages(v: unknown, what: string): unknown[][] {
  const out: unknown[][] = [];
  forEachMessageRecord(v, what, (_mi, ...fields) => out.push(fields));
  return out;
}

/** Reads a version 2 blob record by record (`read` takes one record's fields) into version 1's field tuples. */
function readRecords(v: unknown, what: string, read: (r: BlobReader) => unknown[]): unknown[][] {
  const r = blob(v, what);
  const out: unknown[][] = [];
  while (r.more) out.push(read(r));
  return out;
}

function decodeDead(v: unknown, what: string): unknown[][] {
  return readRecords(v, what, (r) => {
    const fields: unknown[] = [r.f64(), r.bytes(), r.f64(), r.f64(), r.f64(), r.text('utf8'), r.f64()];
    const code = r.u8();
    fields.push((Object.keys(REASON_CODES) as DeadReason[]).find((k) => REASON_CODES[k] === code) ?? `code ${code}`);
    return fields; // [seq, payload, deliveries, firstDeliveredAt, lastDeliveredAt, consumer, deadAt, reason]
  });
}

function decodeDedup(v: unknown, what: string): unknown[][] {
  return readRecords(v, what, (r) => [r.bytes(), r.f64(), r.f64()]); // [dedup id, seq, expiresAt]
}

function corrupt(what: string): never {
  throw new QueueStateError('QUEUE_CORRUPT', `corrupt queue snapshot: ${what}`);
}

function array(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) corrupt(`${what} is not an array`);
  return v as unknown[];
}

function tuple(v: unknown, n: number, what: string): unknown[] {
  const a = array(v, what);
  if (a.length !== n) corrupt(`${what} has ${a.length} fields, not ${n}`);
  return a;
}

/** int() for field `field` of record `i` of `list`, building the label only for the error. */
function intAt(v: unknown, min: number, max: number, list: string, i: number, field: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) corrupt(`bad ${list} ${i} ${field} ${String(v)}`);
  return v;
}

function int(v: unknown, min: number, max: number, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) corrupt(`bad ${what} ${String(v)}`);
  return v;
}

function bytes(v: unknown, what: string): Buffer {
  if (!(v instanceof Uint8Array)) corrupt(`${what} is not bytes`);
  return Buffer.from(v); // a copy: the unpacked view shares the snapshot's memory
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string') corrupt(`${what} is not a string`);
  return v;
}
