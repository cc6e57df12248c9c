/**
 * ShardRuntime: the edge-thread side of the cluster runtime. It spawns the node's W shard workers
 * (worker_threads, workers/shard-worker.js), tells each which shards it hosts, and carries requests to them and
 * replies back. Any shard may be asked: a worker forwards a request for a shard led (or only hosted) elsewhere to
 * that node's worker over its peer links and relays the answer.
 *
 * Placement: `placeShards(node ids, S, rf)`; shard s lives on worker `s % W` of each of its replica nodes. Worker
 * i of every node listens for peers on `peerBasePort + i` of its node and links to worker i of every other node.
 * The topology digest (placement + W + the cache's policy and lease) is checked by the peer handshake: nodes that
 * disagree refuse to link.
 *
 * Worker states:
 *
 *   spawned --init--> starting --ready--> up --stop--> stopping --stopped--> (terminated)
 *                        |'--fatal/exit--> start() rejects      |
 *                        up --exit/error--> down: pending requests and later ones answer STOPPED, and
 *                                           options.onWorkerLost runs once (the node process exits on it: see
 *                                           docs/architecture.md, "A shard worker that dies")
 *
 * Batching: `submit` appends the request to its worker's batch (one reusable BatchWriter per worker) and
 * schedules one setImmediate for the runtime; the flush posts each non-empty batch as ONE message whose single
 * ArrayBuffer is transferred. A batch past BATCH_BYTES_MAX is posted at once (bounds a message's size).
 *
 * Invariants: every submitted request's callback runs exactly once, never synchronously inside submit (so a
 * caller may submit in a loop without re-entrancy); callbacks of one worker run in the order its replies arrive.
 */
import type { HomeMessage, NodeAck } from '../cache/coherence-types.js';
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { RAFT_LIMITS_DEFAULT, type RaftLimits } from '../config/limits.js';
import type { NodeId } from '../raft/types.js';
import type { FsyncMode } from '../storage/wal.js';
import { silentLogger } from '../util/logger.js';
import { placeShards, placementDigest, type ShardPlacement } from './ring.js';
import {
  BatchWriter,
  readReplies,
  RequestKind,
  writeRequest,
  type EdgeToWorker,
  type InitMessage,
  type ShardReply,
  type ShardStatus,
  type ShardWorkerTuning,
  type WorkerStats,
  type WorkerToEdge,
} from './worker-protocol.js';

/** A request batch is posted at once when it reaches this many bytes. */
const BATCH_BYTES_MAX = 1024 * 1024;

export const SHARD_WORKER_TUNING_DEFAULT: ShardWorkerTuning = {
  leaderWaitMs: 2_000,
  requestTimeoutMs: 10_000,
  sweepIntervalMs: 100,
  sweepKeysMax: 200,
  snapshotEntries: 10_000,
  snapshotLogPercent: 100,
  leaderBalanceMs: 1_000,
  keyspaceBytesMax: 0,
  cacheLeaseMs: 1_000,
  cacheLeaseMarginMs: 100,
  cacheInvRetryMs: 100,
  cacheDirectoryEntriesMax: 1_000_000,
  cacheValueBytesMax: 64 * 1024,
  cacheWritePolicy: 'write-through',
  cacheBacking: '',
};

/**
 * What besides the shard placement every node must agree on, folded into the topology digest the peer handshake
 * checks (nodes that disagree refuse to link, loudly): the worker count (it maps shards to peer ports), and the
 * cache's write policy and lease (a write-through home does not wait for a write-back node's Modified data, and a
 * node holding a longer lease than its home counts would serve lines the home believes lapsed).
 */
export function topologyExtra(workers: number, tuning: Pick<ShardWorkerTuning, 'cacheWritePolicy' | 'cacheLeaseMs'>): string {
  return `workers=${workers};cache=${tuning.cacheWritePolicy},${tuning.cacheLeaseMs};`;
}

export interface RuntimeNode {
  host: string;
  /** Worker i of this node listens for peers on peerBasePort + i. */
  peerBasePort: number;
}

export interface ShardRuntimeOptions {
  nodeId: NodeId;
  /** Every member of the cluster, this node included. */
  nodes: ReadonlyMap<NodeId, RuntimeNode>;
  /** Worker threads W (>= 1). */
  workers: number;
  /** Shards S (1..16384); must be the same on every node. */
  shards: number;
  /** Replication factor (>= 1). */
  rf: number;
  /** Virtual nodes per node on the placement ring (default 128). */
  vnodes?: number;
  /** This node's data directory; worker i keeps its WAL and snapshots in `<dataDir>/worker-<i>/`. */
  dataDir: string;
  fsync: FsyncMode;
  clusterId?: string;
  secret?: string;
  /** Address peer listeners bind to (default: this node's `host`). */
  listenHost?: string;
  raft?: Partial<RaftLimits>;
  readMode?: 'safe' | 'lease';
  tuning?: Partial<ShardWorkerTuning>;
  /** pino level inside workers (default 'warn'). */
  logLevel?: string;
  logger?: Logger;
  /** Compiled worker entry (default: workers/shard-worker.js next to this module's tree). */
  workerUrl?: URL;
  /** start() fails if the workers are not ready within this time, in milliseconds (default 30 s). */
  startTimeoutMs?: number;
  /**
   * Called once per worker that exits or fails after it was up, unless the runtime is stopping. Its shards answer
   * STOPPED from then on; a worker is never restarted in place (its Raft groups would have to rejoin beside an edge
   * that kept state about them), so the node's owner decides: `lockstep node` exits, and a supervisor restarts it.
   */
  onWorkerLost?: (worker: number, why: string) => void;
}

export type RequestKindName = 'write' | 'read';
export type ReplyCallback = (reply: ShardReply) => void;

export class ShardRuntimeError extends Error {
  constructor(
    readonly code: 'RUNTIME_OPTIONS' | 'RUNTIME_START' | 'RUNTIME_STOPPED',
    message: string,
  ) {
    super(message);
    this.name = 'ShardRuntimeError';
  }
}

interface WorkerHandle {
  index: number;
  worker: Worker;
  writer: BatchWriter;
  pending: Map<number, ReplyCallback>;
  statusWaiters: Map<number, (r: { shards: ShardStatus[]; stats: WorkerStats } | null) => void>;
  up: boolean;
  exited: Promise<void>;
  onStopped: (() => void) | null;
}

const STOPPED_REPLY = (message: string): ShardReply => ({ ok: false, code: 'STOPPED', leader: 0, message });

/** Edge-side counters: requests submitted and the batches (postMessages) that carried them, per worker. */
export interface EdgeStats {
  requests: number[];
  batches: number[];
}

export class ShardRuntime {
  readonly placement: ShardPlacement[];
  readonly edgeStats: EdgeStats;
  readonly topologyDigest: string;
  private readonly handles: WorkerHandle[] = [];
  private readonly hosted: boolean[];
  private nextReqId = 0;
  private nextStatusId = 0;
  private flushScheduled = false;
  private stopped = false;
  private readonly log: Logger;

  private constructor(private readonly opts: ShardRuntimeOptions) {
    this.log = (opts.logger ?? silentLogger()).child({ module: 'shard-runtime' });
    const ids = [...opts.nodes.keys()];
    this.placement = placeShards(ids, opts.shards, opts.rf, opts.vnodes ?? 128);
    this.topologyDigest = placementDigest(this.placement, topologyExtra(opts.workers, { ...SHARD_WORKER_TUNING_DEFAULT, ...opts.tuning }));
    this.hosted = this.placement.map((p) => p.replicas.includes(opts.nodeId));
    this.edgeStats = { requests: new Array<number>(opts.workers).fill(0), batches: new Array<number>(opts.workers).fill(0) };
  }

  /** Spawns the workers, waits until every one has recovered its shards and listens for peers. */
  static async start(opts: ShardRuntimeOptions): Promise<ShardRuntime> {
    if (!Number.isInteger(opts.workers) || opts.workers < 1 || opts.workers > 256) {
      throw new ShardRuntimeError('RUNTIME_OPTIONS', `workers must be an integer in [1, 256], got ${opts.workers}`);
    }
    if (!Number.isInteger(opts.shards) || opts.shards < 1 || opts.shards > 16384) {
      throw new ShardRuntimeError('RUNTIME_OPTIONS', `shards must be an integer in [1, 16384], got ${opts.shards}`);
    }
    if (!Number.isInteger(opts.rf) || opts.rf < 1) throw new ShardRuntimeError('RUNTIME_OPTIONS', `rf must be an integer >= 1, got ${opts.rf}`);
    const self = opts.nodes.get(opts.nodeId);
    if (self === undefined) throw new ShardRuntimeError('RUNTIME_OPTIONS', `nodes does not contain this node (${opts.nodeId})`);
    const rt = new ShardRuntime(opts);
    try {
      await rt.spawnAll(self);
    } catch (err) {
      await rt.stop();
      throw err;
    }
    return rt;
  }

  private async spawnAll(self: RuntimeNode): Promise<void> {
    const o = this.opts;
    const url = o.workerUrl ?? new URL('../../workers/shard-worker.js', import.meta.url);
    const raft: RaftLimits = { ...RAFT_LIMITS_DEFAULT, ...o.raft };
    const tuning: ShardWorkerTuning = { ...SHARD_WORKER_TUNING_DEFAULT, ...o.tuning };
    const ready: Promise<void>[] = [];
    for (let i = 0; i < o.workers; i++) {
      const init: InitMessage = {
        t: 'init',
        nodeId: o.nodeId,
        workerIndex: i,
        workers: o.workers,
        clusterId: o.clusterId ?? 'lockstep',
        ...(o.secret !== undefined ? { secret: o.secret } : {}),
        topologyDigest: this.topologyDigest,
        dataDir: join(o.dataDir, `worker-${i}`),
        fsync: o.fsync,
        shards: this.placement.filter((p) => p.shard % o.workers === i && this.hosted[p.shard]).map((p) => ({ shard: p.shard, voters: [...p.replicas], preferredLeader: p.preferredLeader })),
        remoteShards: this.placement.filter((p) => p.shard % o.workers === i && !this.hosted[p.shard]).map((p) => ({ shard: p.shard, voters: [...p.replicas], preferredLeader: p.preferredLeader })),
        shardCount: o.shards,
        listen: { host: o.listenHost ?? self.host, port: self.peerBasePort + i },
        peers: [...o.nodes].filter(([id]) => id !== o.nodeId).map(([id, n]) => [id, { host: n.host, port: n.peerBasePort + i }]),
        raft,
        readMode: o.readMode ?? 'safe',
        tuning,
        logLevel: o.logLevel ?? 'warn',
      };
      ready.push(this.spawn(url, init));
    }
    const timeoutMs = o.startTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new ShardRuntimeError('RUNTIME_START', `shard workers not ready within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      await Promise.race([Promise.all(ready), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private spawn(url: URL, init: InitMessage): Promise<void> {
    const worker = new Worker(fileURLToPath(url), { name: `shard-worker-${init.workerIndex}` });
    let onReady!: () => void;
    let onFail!: (err: Error) => void;
    const ready = new Promise<void>((resolve, reject) => {
      onReady = resolve;
      onFail = reject;
    });
    const h: WorkerHandle = {
      index: init.workerIndex,
      worker,
      writer: new BatchWriter(),
      pending: new Map(),
      statusWaiters: new Map(),
      up: false,
      exited: new Promise((resolve) => worker.once('exit', () => resolve())),
      onStopped: null,
    };
    this.handles.push(h);
    worker.on('message', (msg: WorkerToEdge) => {
      switch (msg.t) {
        case 'rep':
          readReplies(msg, (reqId, reply) => {
            const cb = h.pending.get(reqId);
            if (cb === undefined) return; // answered already (worker went down and came back is impossible: no restart)
            h.pending.delete(reqId);
            cb(reply);
          });
          return;
        case 'ready':
          h.up = true;
          onReady();
          return;
        case 'fatal':
          onFail(new ShardRuntimeError('RUNTIME_START', `shard worker ${init.workerIndex} failed to start: ${msg.message}`));
          return;
        case 'status': {
          const w = h.statusWaiters.get(msg.id);
          h.statusWaiters.delete(msg.id);
          w?.({ shards: msg.shards, stats: msg.stats });
          return;
        }
        case 'stopped':
          h.onStopped?.();
          return;
        case 'cinv': {
          // No cache on this edge (or it is not wired yet): nothing is held, so an invalidation is simply
          // acknowledged and every key is in I.
          const acks = msg.msgs.map(
            (m): NodeAck =>
              this.onCacheMessage?.(m) ??
              (m.t === 'inv'
                ? { t: 'invack', from: this.opts.nodeId, shard: m.shard, epoch: m.epoch, items: m.items }
                : m.t === 'down'
                  ? { t: 'downack', from: this.opts.nodeId, shard: m.shard, epoch: m.epoch, items: m.items }
                  : { t: 'state', from: this.opts.nodeId, state: 'I' }),
          );
          worker.postMessage({ t: 'cack', id: msg.id, acks } satisfies EdgeToWorker);
          return;
        }
      }
    });
    let lost = false;
    const lose = (why: string): void => {
      if (lost || !h.up || this.stopped) return;
      lost = true;
      this.opts.onWorkerLost?.(h.index, why);
    };
    worker.on('error', (err) => {
      this.log.error({ err, worker: h.index }, 'shard worker failed');
      onFail(err);
      lose(`shard worker ${h.index} failed: ${err.message}`);
    });
    worker.on('exit', (code) => {
      if (!this.stopped) this.log.error({ worker: h.index, code }, 'shard worker exited');
      onFail(new ShardRuntimeError('RUNTIME_START', `shard worker ${h.index} exited with code ${code}`));
      lose(`shard worker ${h.index} exited with code ${code}`);
      this.markDown(h, `shard worker ${h.index} exited`);
    });
    worker.postMessage(init);
    return ready;
  }

  private markDown(h: WorkerHandle, why: string): void {
    h.up = false;
    const pending = [...h.pending.values()];
    h.pending.clear();
    for (const cb of pending) cb(STOPPED_REPLY(why));
    for (const w of h.statusWaiters.values()) w(null);
    h.statusWaiters.clear();
    h.onStopped?.();
  }

  /** The worker index hosting a shard on every node. */
  workerOf(shard: number): number {
    return shard % this.opts.workers;
  }

  /** True if this node holds a replica of the shard. */
  hosts(shard: number): boolean {
    return this.hosted[shard] === true;
  }

  /**
   * Queues one request for its shard's worker; `cb` runs exactly once with the reply (never synchronously). `args`
   * are RESP arguments, command name first; they are copied into the batch before submit returns.
   */
  submit(shard: number, kind: RequestKindName, args: readonly Uint8Array[], cb: ReplyCallback): void {
    if (!Number.isInteger(shard) || shard < 0 || shard >= this.opts.shards) {
      queueMicrotask(() => cb({ ok: false, code: 'NOSHARD', leader: 0, message: `no shard ${shard}` }));
      return;
    }
    const h = this.handles[shard % this.opts.workers];
    if (h === undefined || !h.up || this.stopped) {
      queueMicrotask(() => cb(STOPPED_REPLY(this.stopped ? 'runtime is stopped' : `shard worker ${shard % this.opts.workers} is down`)));
      return;
    }
    let id = this.nextReqId;
    this.nextReqId = (id + 1) >>> 0;
    while (h.pending.has(id)) {
      id = this.nextReqId;
      this.nextReqId = (id + 1) >>> 0;
    }
    h.pending.set(id, cb);
    this.edgeStats.requests[h.index]!++;
    writeRequest(h.writer, id, shard, kind === 'write' ? RequestKind.Write : RequestKind.Read, args);
    if (h.writer.bytes >= BATCH_BYTES_MAX) this.flushOne(h);
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  /** The edge's cache: answers invalidations and state queries from shard homes (src/cache/cluster-cache.ts sets it). */
  onCacheMessage: ((msg: HomeMessage) => NodeAck) | null = null;

  /** submit() as a promise. */
  execute(shard: number, kind: RequestKindName, args: readonly Uint8Array[]): Promise<ShardReply> {
    return new Promise((resolve) => this.submit(shard, kind, args, resolve));
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    for (const h of this.handles) this.flushOne(h);
  };

  private flushOne(h: WorkerHandle): void {
    if (h.writer.count === 0) return;
    const count = h.writer.count;
    const buf = h.writer.finish();
    if (!h.up) return; // markDown answered them
    this.edgeStats.batches[h.index]!++;
    h.worker.postMessage({ t: 'req', count, buf }, [buf]);
  }

  /** Raft status of every shard this node hosts, sorted by shard. */
  async status(): Promise<ShardStatus[]> {
    return (await this.workerReports()).flatMap((r) => r.shards).sort((a, b) => a.shard - b.shard);
  }

  /** Counters of every live worker, by worker index. */
  async workerStats(): Promise<(WorkerStats | null)[]> {
    const out: (WorkerStats | null)[] = this.handles.map(() => null);
    const reports = await Promise.all(this.handles.map((h) => this.query(h)));
    reports.forEach((r, i) => (out[i] = r?.stats ?? null));
    return out;
  }

  private async workerReports(): Promise<{ shards: ShardStatus[]; stats: WorkerStats }[]> {
    const reports = await Promise.all(this.handles.map((h) => this.query(h)));
    return reports.filter((r): r is { shards: ShardStatus[]; stats: WorkerStats } => r !== null);
  }

  private query(h: WorkerHandle): Promise<{ shards: ShardStatus[]; stats: WorkerStats } | null> {
    if (!h.up) return Promise.resolve(null);
    const id = ++this.nextStatusId;
    return new Promise((resolve) => {
      h.statusWaiters.set(id, resolve);
      h.worker.postMessage({ t: 'status', id });
    });
  }

  /**
   * Stops every worker: each answers its pending requests (STOPPED), stops Raft, closes its peer links and WAL, and
   * exits. Requests submitted after stop() answer STOPPED. A worker that does not stop within 10 s is terminated.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.flush();
    this.stopped = true;
    await Promise.all(
      this.handles.map(async (h) => {
        if (h.up) {
          const stoppedMsg = new Promise<void>((resolve) => (h.onStopped = resolve));
          h.worker.postMessage({ t: 'stop' });
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([stoppedMsg, new Promise<void>((r) => (timer = setTimeout(r, 10_000)))]);
          clearTimeout(timer);
        }
        await h.worker.terminate();
        await h.exited;
        this.markDown(h, 'runtime stopped');
      }),
    );
  }
}
