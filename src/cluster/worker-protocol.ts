/**
 * The one typed contract between the edge thread (main thread, `shard-runtime.ts`) and the shard workers
 * (`shard-worker.ts`). Nothing else crosses the thread boundary.
 *
 * Messages (`postMessage`, structured clone; the request and reply batches transfer their one ArrayBuffer):
 *
 *   edge -> worker                              worker -> edge
 *   InitMessage        (once, first)            ReadyMessage | FatalMessage   (answer to init)
 *   RequestBatchMessage (one per worker per     ReplyBatchMessage (one per worker turn: every reply
 *                        edge turn)                                settled in that turn)
 *   StatusQueryMessage                          StatusReplyMessage
 *   StopMessage                                 StoppedMessage
 *   CacheAckMessage (answers a CacheInvMessage) CacheInvMessage (an invalidation for the edge's cache lines)
 *
 * Request batch layout (little-endian, one ArrayBuffer, `count` requests back to back):
 *   u32 reqId | u16 shard | u8 kind (0 write, 1 read) | u32 argc | argc x (u32 length | bytes)
 * Reply batch layout:
 *   u32 reqId | u8 status
 *     status 0 (ok):    u32 length | reply record bytes (keyspace-reply.ts format; replay with replayReply)
 *     status 1 (error): u8 code (index in SHARD_ERROR_CODES) | u32 leader | u32 length | UTF-8 message
 *
 * Invariants: every request gets exactly one reply (the worker answers each reqId once, including on stop:
 * STOPPED); reqIds are unique among the requests a worker has in flight (u32, wrapping); the decoders check every
 * length against the end of the buffer and throw WorkerProtocolError on a malformed batch (a bug: both sides are
 * this file's code).
 */
import type { HomeMessage, NodeAck } from '../cache/coherence-types.js';
import type { FsyncMode } from '../storage/wal.js';
import type { NodeId } from '../raft/types.js';
import type { RaftLimits } from '../config/limits.js';

/** Request kinds: a write goes through the log; a read is served by the leader after a ReadIndex barrier. */
export const enum RequestKind {
  Write = 0,
  Read = 1,
}

/** Why a request failed. Stable codes; the edge turns them into RESP errors (`-NOTLEADER <id>`, `-TRYAGAIN ...`). */
export const SHARD_ERROR_CODES = [
  /** This node does not lead the shard; `leader` is the leader's node id (never 0 for this code). */
  'NOTLEADER',
  /** No leader could be found within the wait, the outcome of a write is unknown, or a read lost its leader. */
  'TRYAGAIN',
  /** No leader within the wait and a majority of the shard's replicas is unreachable from this node. */
  'NOQUORUM',
  /** The leader refuses proposals for now (too many uncommitted bytes, a leadership transfer or conf change). */
  'BUSY',
  /** The worker is stopping or has stopped (or crashed). */
  'STOPPED',
  /** This node hosts no replica of the shard. */
  'NOSHARD',
  /** A request the worker cannot run (not a keyspace command of that kind, wrong arity): a bug in the caller. */
  'ERR',
] as const;
export type ShardErrorCode = (typeof SHARD_ERROR_CODES)[number];

export const enum ShardErrorIndex {
  NotLeader = 0,
  TryAgain = 1,
  NoQuorum = 2,
  Busy = 3,
  Stopped = 4,
  NoShard = 5,
  Err = 6,
}

export type ShardReply =
  | { ok: true; record: Uint8Array }
  | { ok: false; code: ShardErrorCode; leader: NodeId; message: string };

export interface PeerAddr {
  host: string;
  port: number;
}

export interface WorkerShardInit {
  shard: number;
  /** The shard's replica set (all voters; used only when the shard has no state on disk yet). */
  voters: NodeId[];
  /** The placement's preferred leader: the current leader hands leadership to it once it is caught up. */
  preferredLeader: NodeId;
}

/** Tunables of the worker's request handling (milliseconds unless named otherwise). */
export interface ShardWorkerTuning {
  /** How long a request waits for a shard with no known leader before it fails with TRYAGAIN. */
  leaderWaitMs: number;
  /** A request not answered within this time fails with TRYAGAIN (a write's outcome is then unknown). */
  requestTimeoutMs: number;
  /** The leader plans an expiry sweep of each shard it leads this often (0 = never). */
  sweepIntervalMs: number;
  /** Most keys named by one sweep entry. */
  sweepKeysMax: number;
  /** Snapshot a shard after this many applied entries (0 = never). */
  snapshotEntries: number;
  /** ... and once the entry bytes applied since the last snapshot reach this % of its size (0 = count only). */
  snapshotLogPercent: number;
  /** How often a leader checks whether to hand its shard to the preferred leader (0 = never rebalance). */
  leaderBalanceMs: number;
  /** The replicated memory limit of each shard's keyspace (0 = unbounded); must be the same on every node. */
  keyspaceBytesMax: number;
  /** Cache line lease a home grants to nodes, ms (docs/cache-coherence.md); the same on every node. */
  cacheLeaseMs: number;
  /** Safety margin a home adds to every lease it tracks (clock-rate drift between nodes), ms. */
  cacheLeaseMarginMs: number;
  /** Unacknowledged invalidations are resent this often, ms. */
  cacheInvRetryMs: number;
  /** Most directory entries per shard home; fills beyond it are answered uncached. */
  cacheDirectoryEntriesMax: number;
  /** Values longer than this are never cached (always read from the home). */
  cacheValueBytesMax: number;
  /** docs/cache-coherence.md; the same on every node. */
  cacheWritePolicy: 'write-through' | 'write-back';
  /** --cache-backing: a redis:// URL, or '' for none. */
  cacheBacking: string;
}

export interface InitMessage {
  t: 'init';
  nodeId: NodeId;
  workerIndex: number;
  /** Worker count W: shard s lives on worker s % W. */
  workers: number;
  clusterId: string;
  secret?: string;
  /** placementDigest(placement, `workers=W`): peers with another digest are refused at handshake. */
  topologyDigest: string;
  /** The worker's own directory (`<dataDir>/worker-<i>`): `wal/` and `snapshots/` below it. */
  dataDir: string;
  fsync: FsyncMode;
  shards: WorkerShardInit[];
  /** Shards of this worker index that this node holds no replica of: their requests are forwarded. */
  remoteShards: WorkerShardInit[];
  /** The cluster's shard count S. */
  shardCount: number;
  /** Where this worker's peer transport listens. */
  listen: PeerAddr;
  /** Worker `workerIndex` on every other node. */
  peers: [NodeId, PeerAddr][];
  raft: RaftLimits;
  readMode: 'safe' | 'lease';
  tuning: ShardWorkerTuning;
  logLevel: string;
}

export interface RequestBatchMessage {
  t: 'req';
  count: number;
  buf: ArrayBuffer;
}

export interface StatusQueryMessage {
  t: 'status';
  id: number;
}

export interface StopMessage {
  t: 'stop';
}

/** The edge's cache answers the homes' messages the worker relayed (answer to CacheInvMessage `id`): one per message, in order. */
export interface CacheAckMessage {
  t: 'cack';
  id: number;
  acks: NodeAck[];
}

export type EdgeToWorker = InitMessage | RequestBatchMessage | StatusQueryMessage | StopMessage | CacheAckMessage;

export interface ShardStatus {
  shard: number;
  worker: number;
  /** 'remote': this node holds no replica; `leader` is then the last leader a forward reached (a hint). */
  role: 'follower' | 'precandidate' | 'candidate' | 'leader' | 'remote';
  leader: NodeId;
  term: number;
  commit: number;
  applied: number;
  lastIndex: number;
  /** Keys in the shard's keyspace on this replica (expired keys not yet swept included). */
  keys: number;
  /** On a leader: the most entries any follower is behind (lastIndex - match); 0 elsewhere. */
  lag: number;
}

export interface WorkerStats {
  requests: number;
  batches: number;
  writes: number;
  reads: number;
  errors: number;
  /** Requests this worker forwarded to the leader on another node (each hop counts). */
  forwarded: number;
  /** Requests other nodes forwarded to this worker. */
  forwardedIn: number;
  fsyncs: number;
  raftRounds: number;
  /** RaftHost: a leader's appends sent before their round's fdatasync; entries applied before it (src/raft/ready-order.ts). */
  appendsBeforeSync: number;
  appliedBeforeSync: number;
  /** RaftHost: snapshots taken, and of them those taken because the group kept the WAL's oldest segment alive. */
  snapshotsTaken: number;
  snapshotsToUnpin: number;
  /** RaftHost: longest gap between ticks and gaps of half an election timeout or more; longest snapshot encode (ms). */
  tickGapMaxMs: number;
  stalls: number;
  snapshotEncodeMaxMs: number;
  /** RaftHost: groups this worker came to lead / stopped leading. */
  leaderships: number;
  stepDowns: number;
  /** WAL segments on disk, and deleted by compaction so far. */
  walSegments: number;
  /** Longest blocking WAL batch write (ms), and the writes of 50 ms or more (Wal.stats). */
  walWriteMaxMs: number;
  walSlowWrites: number;
  walSegmentsDeleted: number;
  /** Pops that found nothing ready and went to a read barrier instead of the log (see ShardWorker.popAfterBarrier). */
  emptyPopBarriers: number;
  /** Of those, the ones still empty after the barrier: answered without a log entry. */
  emptyPopsAnswered: number;
  /** Queue waits (blocking pops, docs/queues.md): received here as leader, answered ready (at once or woken), withdrawn. */
  queueWaits: number;
  queueWaitsReady: number;
  /** Of queueWaits, the ones that named several partitions (a grouped wait). */
  queueWaitsGrouped: number;
  /** Grouped waits parked now (each is also counted in queueWaitsParked once per partition it waits on). */
  queueWaitsGroupedParked: number;
  queueUnwaits: number;
  /** Queue waits parked on this worker now. */
  queueWaitsParked: number;
  /** Peers this worker has an up outbound link to. */
  peersUp: NodeId[];
  /** The cache homes of the shards this worker leads (src/cache/cache-home-host.ts). */
  cache?: { homes: number; directory: number; counters: import('../cache/cache-home.js').HomeStats };
}

export interface ReadyMessage {
  t: 'ready';
  workerIndex: number;
}

export interface FatalMessage {
  t: 'fatal';
  message: string;
}

export interface ReplyBatchMessage {
  t: 'rep';
  count: number;
  buf: ArrayBuffer;
}

export interface StatusReplyMessage {
  t: 'status';
  id: number;
  shards: ShardStatus[];
  stats: WorkerStats;
}

export interface StoppedMessage {
  t: 'stopped';
}

/**
 * Messages from shards' homes (this node's or a peer's) for the edge's cache: invalidations, downgrades, CACHE.STATE
 * queries, all that reached the worker in one event-loop turn; answered by one CacheAckMessage.
 */
export interface CacheInvMessage {
  t: 'cinv';
  id: number;
  msgs: HomeMessage[];
}

export type WorkerToEdge = ReadyMessage | FatalMessage | ReplyBatchMessage | StatusReplyMessage | StoppedMessage | CacheInvMessage;

export const ROLE_NAMES: readonly ShardStatus['role'][] = ['follower', 'precandidate', 'candidate', 'leader'];

/** A malformed batch: a bug on one side of the boundary, never user input. */
export class WorkerProtocolError extends Error {
  readonly code = 'WORKER_PROTOCOL' as const;
  constructor(message: string) {
    super(`worker protocol: ${message}`);
    this.name = 'WorkerProtocolError';
  }
}

const EMPTY = Buffer.alloc(0);

/**
 * A growable little-endian byte builder reused across batches. `finish()` copies the bytes into a fresh
 * ArrayBuffer of exactly the batch's size (to be transferred) and resets the builder.
 */
export class BatchWriter {
  private buf: Buffer;
  private pos = 0;
  count = 0;

  constructor(initialBytes = 16 * 1024) {
    this.buf = Buffer.allocUnsafeSlow(initialBytes);
  }

  get bytes(): number {
    return this.pos;
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafeSlow(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  u8(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }

  u16(v: number): void {
    this.ensure(2);
    this.buf.writeUInt16LE(v, this.pos);
    this.pos += 2;
  }

  u32(v: number): void {
    this.ensure(4);
    this.buf.writeUInt32LE(v >>> 0, this.pos);
    this.pos += 4;
  }

  /** u32 length, then the bytes. */
  bytesField(b: Uint8Array): void {
    this.ensure(4 + b.length);
    this.buf.writeUInt32LE(b.length, this.pos);
    this.pos += 4;
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  /** u32 length, then the string's UTF-8 bytes. */
  stringField(s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.ensure(4 + n);
    this.buf.writeUInt32LE(n, this.pos);
    this.pos += 4;
    this.pos += this.buf.write(s, this.pos, 'utf8');
  }

  /** The batch as its own ArrayBuffer (transferable); the writer is empty again. */
  finish(): ArrayBuffer {
    const out = new ArrayBuffer(this.pos);
    new Uint8Array(out).set(this.buf.subarray(0, this.pos));
    this.pos = 0;
    this.count = 0;
    // Do not keep a huge buffer after a burst.
    if (this.buf.length > 4 * 1024 * 1024) this.buf = Buffer.allocUnsafeSlow(16 * 1024);
    return out;
  }
}

/** Appends one request to an edge-side batch. */
export function writeRequest(w: BatchWriter, reqId: number, shard: number, kind: RequestKind, args: readonly Uint8Array[]): void {
  w.u32(reqId);
  w.u16(shard);
  w.u8(kind);
  w.u32(args.length);
  for (const a of args) w.bytesField(a);
  w.count++;
}

export function writeReplyOk(w: BatchWriter, reqId: number, record: Uint8Array): void {
  w.u32(reqId);
  w.u8(0);
  w.bytesField(record);
  w.count++;
}

export function writeReplyError(w: BatchWriter, reqId: number, code: ShardErrorIndex, leader: NodeId, message: string): void {
  w.u32(reqId);
  w.u8(1);
  w.u8(code);
  w.u32(leader);
  w.stringField(message);
  w.count++;
}

/** One decoded request; `args` are views into the batch's buffer (valid as long as it is referenced). */
export interface DecodedRequest {
  reqId: number;
  shard: number;
  kind: RequestKind;
  args: Buffer[];
}

function need(pos: number, n: number, end: number, what: string): void {
  if (pos + n > end) throw new WorkerProtocolError(`${what} runs past the end of the batch (${pos + n} > ${end})`);
}

/** Decodes a request batch, calling `each` per request in order. */
export function readRequests(msg: RequestBatchMessage, each: (r: DecodedRequest) => void): void {
  const buf = Buffer.from(msg.buf);
  const end = buf.length;
  let p = 0;
  for (let i = 0; i < msg.count; i++) {
    need(p, 11, end, 'request header');
    const reqId = buf.readUInt32LE(p);
    const shard = buf.readUInt16LE(p + 4);
    const kind = buf[p + 6]!;
    const argc = buf.readUInt32LE(p + 7);
    p += 11;
    if (kind !== RequestKind.Write && kind !== RequestKind.Read) throw new WorkerProtocolError(`unknown request kind ${kind}`);
    if (argc > end - p) throw new WorkerProtocolError(`argument count ${argc} exceeds the batch`);
    const args: Buffer[] = new Array<Buffer>(argc);
    for (let a = 0; a < argc; a++) {
      need(p, 4, end, 'argument length');
      const n = buf.readUInt32LE(p);
      p += 4;
      need(p, n, end, 'argument');
      args[a] = n === 0 ? EMPTY : buf.subarray(p, p + n);
      p += n;
    }
    each({ reqId, shard, kind: kind as RequestKind, args });
  }
  if (p !== end) throw new WorkerProtocolError(`${end - p} trailing bytes after ${msg.count} requests`);
}

/** Decodes a reply batch; `record` is a view into the batch's buffer. */
export function readReplies(msg: ReplyBatchMessage, each: (reqId: number, reply: ShardReply) => void): void {
  const buf = Buffer.from(msg.buf);
  const end = buf.length;
  let p = 0;
  for (let i = 0; i < msg.count; i++) {
    need(p, 5, end, 'reply header');
    const reqId = buf.readUInt32LE(p);
    const status = buf[p + 4]!;
    p += 5;
    if (status === 0) {
      need(p, 4, end, 'record length');
      const n = buf.readUInt32LE(p);
      p += 4;
      need(p, n, end, 'record');
      each(reqId, { ok: true, record: buf.subarray(p, p + n) });
      p += n;
    } else if (status === 1) {
      need(p, 9, end, 'error header');
      const codeIndex = buf[p]!;
      const leader = buf.readUInt32LE(p + 1);
      const n = buf.readUInt32LE(p + 5);
      p += 9;
      need(p, n, end, 'error message');
      const code = SHARD_ERROR_CODES[codeIndex];
      if (code === undefined) throw new WorkerProtocolError(`unknown error code ${codeIndex}`);
      each(reqId, { ok: false, code, leader, message: buf.toString('utf8', p, p + n) });
      p += n;
    } else {
      throw new WorkerProtocolError(`unknown reply status ${status}`);
    }
  }
  if (p !== end) throw new WorkerProtocolError(`${end - p} trailing bytes after ${msg.count} replies`);
}
