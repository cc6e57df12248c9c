/**
 * ShardWorker: the shard side of the cluster runtime; runs inside one worker thread (entry: workers/shard-worker.ts).
 *
 * What it owns, for its thread: one RaftHost serving every shard this node replicates with `shard % W == i`
 * (Raft group id = shard id), one KeyspaceMachine per shard, one WAL and one SnapshotStore under
 * `<dataDir>/worker-<i>/`, and one PeerTransport to worker i of every other node. Its only other input is the
 * edge's messages (worker-protocol.ts).
 *
 * A request's life:
 *
 *   arrive (batch) --not hosted--> NOSHARD
 *        |  bad command/arity --> ERR (never proposed: an entry every replica refuses would stop them all)
 *        v
 *   route: leader here? --yes--> write: encodeWrite(args, now) -> host.propose -> applied -> record
 *        |                       read:  host.readBarrier -> machine.read(args, now) -> record
 *        |--leader elsewhere--> NOTLEADER(leader)
 *        '--no leader known---> parked; re-routed when a leader appears; after leaderWaitMs: NOQUORUM if
 *                               a majority of the shard's voters is unreachable from here, else TRYAGAIN
 *        (a leader that cannot reach a majority parks requests the same way instead of proposing)
 *   any state --requestTimeoutMs--> TRYAGAIN (outcome of a write unknown)
 *   any state --stop--> STOPPED
 *
 * Locks and queues ride the same path as internal keyspace writes/reads (src/locks/lock-entries.ts,
 * src/queue/queue-entries.ts). Two kinds of request may wait on purpose: a lock acquire with WAIT (parked in
 * `waiting` by waiter id until a LockEvent raised by a later entry settles it, on whichever replica proposed it)
 * and a queue wait or take (`_q.wait`, `_q.take`: a blocking pop's "tell me when a message is ready", or "pop then":
 * parked in its shard's `popWaiters` on the leader until messages are ready there, never logged; docs/queues.md). Both
 * are tracked apart from the ordered `inflight` scan (their deadlines differ) and forwarded alone, never in a batch.
 * The leader also proposes lease expiry (locks) and visibility/delay/dedup expiry (queues) from its clock.
 *
 * Invariants:
 * - Every request is answered exactly once (`Req.done` guards late settlements after a timeout or a stop).
 * - Only writes that every replica will accept are proposed: the command is a replicated write of the keyspace
 *   with a valid arity (KeyspaceMachine.apply throws on anything else, which would stop every replica).
 * - A write that failed with "leadership changed before the entry committed" was overwritten in the log, so it
 *   can never commit: re-routing it (parking, or NOTLEADER) is safe. An unknown outcome is answered TRYAGAIN.
 * - All replies settled during one event-loop turn leave as one postMessage with one transferred ArrayBuffer.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { HostError, RaftHost } from '../node/raft-host.js';
import { Role, type NodeId } from '../raft/types.js';
import { SnapshotStore } from '../storage/snapshot-store.js';
import { Wal } from '../storage/wal.js';
import { PeerRequestError, PeerTransport } from '../transport/peer-transport.js';
import { createLogger } from '../util/logger.js';
import { PEER_LIMITS_DEFAULT, raftFlowLimits, WAL_LIMITS_DEFAULT } from '../config/limits.js';
import { encodeWrite } from './keyspace-codec.js';
import { checkLockCommand, expiryArgs, isLockCommand, LOCK_PARKED, lockWaiterId, lockWaitMs } from '../locks/lock-entries.js';
import type { LockEvent } from '../locks/lock-table.js';
import { checkQueueCommand, isGroupedWait, isQueueCommand, partitionKey, partitionKeyOf, popFindsNothing, queueBlockMs, queueExpiryArgs, queuePartitionShard, queueWaitKind, takePopArgs, unwaitAnswered, waitIdOf, waitPartitions } from '../queue/queue-entries.js';
import { recordValue } from './record-value.js';
import { CacheHomeHost } from '../cache/cache-home-host.js';
import { BackingStore } from '../cache/backing-store.js';
import type { HomeMessage, NodeAck, NodeRequest, WrittenAnswer } from '../cache/coherence-types.js';
import {
  cacheWriteArgs,
  checkCacheCommand,
  decodeCacheRequest,
  encodeAnswer,
  isCacheCommand,
  isCacheBatchPayload,
  CACHE_BATCH_MAX,
  isCacheStateCommand,
  isStateReport,
  writeKeysOf,
  type CachedValue,
} from '../cache/coherence-wire.js';
import { arityOk, KeyspaceMachine, lookupRead, lookupWrite } from './keyspace-machine.js';
import { ReplyRecorder } from './keyspace-reply.js';
import { encodeForwardResults, forwardRequest, parseForwardRequest, parseForwardResults, type ForwardItem, type ForwardResult } from './forward-protocol.js';
import {
  BatchWriter,
  readRequests,
  RequestKind,
  ROLE_NAMES,
  ShardErrorIndex,
  writeReplyError,
  writeReplyOk,
  type DecodedRequest,
  type EdgeToWorker,
  type InitMessage,
  type RequestBatchMessage,
  type ShardStatus,
  type WorkerStats,
  type WorkerToEdge,
} from './worker-protocol.js';

/** How often parked requests look for a leader, in milliseconds. */
const LEADER_POLL_MS = 10;
/** A request is forwarded at most this many times (leader hints can be stale); then it waits like in an election. */
const FORWARD_HOPS_MAX = 3;
/** Forward batches are sent early once this many bytes of arguments are pending for one peer. */
const FORWARD_BATCH_BYTES_MAX = 1024 * 1024;
/** How often a leader looks for lapsed lock leases and waits, in milliseconds. */
const LOCK_TICK_MS = 10;
/** The leader wakes queue waits again when messages stayed ready this long after the last wake (a lost wake). */
const WAIT_REWAKE_MS = 200;
/** How long an unwait that found no wait keeps a tombstone for it (a wait it overtook answers :0 when it lands). */
const WAIT_TOMBSTONE_MS = 30_000;
/** At most this many tombstones (the oldest go first). */
const WAIT_TOMBSTONES_MAX = 100_000;
/** Most leases and waits one expiry entry names. */
const LOCK_EXPIRY_ITEMS_MAX = 256;
/** Reply batches are posted early once this many bytes are pending (bounds one message's size). */
const REPLY_BATCH_BYTES_MAX = 4 * 1024 * 1024;

/** At most this many invalidations wait for the edge's acknowledgement (the edge answers each at once). */
const EDGE_INVALIDATIONS_MAX = 100_000;

/** A replicated string write of the keyspace (not a lock, queue or cache command). */
function isStringWrite(args: Buffer[]): boolean {
  return !isLockCommand(args) && !isQueueCommand(args) && !isCacheCommand(args) && lookupWrite(args[0]) !== undefined;
}

/** The entry a write proposes: its own args, or for `_c.write` the wrapped write's args. */
function entryData(args: Buffer[], now: number): Uint8Array {
  return encodeWrite(isCacheCommand(args) ? cacheWriteArgs(args) : args, now);
}

/** A batch of requests a peer forwarded here; answered in one reply once every request in it is settled. */
interface ForwardedBatch {
  results: ForwardResult[];
  remaining: number;
  resolve: (results: ForwardResult[]) => void;
}

interface Shard {
  id: number;
  /** False for a shard this node holds no replica of: requests for it are always forwarded. */
  hosted: boolean;
  /** Where to forward when the local Raft core knows no leader (or the shard is not hosted here). */
  leaderHint: NodeId;
  preferredLeader: NodeId;
  /** The voters from init (membership is fixed until conf changes are wired in). */
  voters: NodeId[];
  /** Null for a shard not hosted here. */
  machine: KeyspaceMachine | null;
  parked: Req[];
  sweeping: boolean;
  /** An expiry entry for this shard's locks is in flight. */
  expiringLocks: boolean;
  /** An expiry entry for this shard's queues is in flight. */
  expiringQueues: boolean;
  /** Queue waits (`_q.wait`) parked on this leader until messages are ready, FIFO per "partition\0queue". */
  popWaiters: Map<string, PopWaiters>;
  /** performance.now() when this node was first seen leading the shard in term `leaderTerm` (0: not leading). */
  leaderSince: number;
  leaderTerm: number;
}

interface PopWaiters {
  queue: Buffer;
  partition: number;
  /** By wait id, in arrival order (a Map iterates in insertion order): FIFO, and O(1) to withdraw one. */
  reqs: Map<string, Req>;
  /** No parked request's time runs out before this (performance.now ms; may be early after removals). */
  dueAt: number;
  /** performance.now() of the last wake or backstop look on this partition (the backstop looks every WAIT_REWAKE_MS). */
  lookedAt: number;
}

/** One partition of a grouped wait: the shard holding it and its key there (partitionKey form). */
interface GroupSpot {
  shard: Shard;
  key: string;
  partition: number;
}

interface Req {
  /** Edge request id (>= 0), or a negative id for a request a peer forwarded here. */
  reqId: number;
  shard: Shard;
  /** Set when a peer forwarded this request: its answer goes back in that peer's batch, never to the edge. */
  fwd: ForwardedBatch | null;
  /** Index in `fwd.results`. */
  fwdIndex: number;
  /** Times this request was forwarded to another node (bounded by FORWARD_HOPS_MAX). */
  hops: number;
  kind: RequestKind;
  args: Buffer[];
  /** The entry to propose (writes), encoded once at arrival. */
  data: Uint8Array | null;
  /** For a lock acquire that may wait: its waiter id (settled by a LockEvent); '' otherwise. */
  waiterId: string;
  /** How long a lock acquire or a queue wait may stay on the server (0 for everything else); extends `deadline`. */
  blockMs: number;
  /** A queue wait answers :0 at this time (performance.now ms). */
  blockUntil: number;
  /** Give up waiting for a leader at this time (performance.now ms). */
  leaderDeadline: number;
  /** Give up entirely at this time. */
  deadline: number;
  done: boolean;
}

export type PostToEdge = (msg: WorkerToEdge, transfer?: ArrayBuffer[]) => void;

export class ShardWorker {
  readonly stats: WorkerStats = { requests: 0, batches: 0, writes: 0, reads: 0, errors: 0, forwarded: 0, forwardedIn: 0, fsyncs: 0, raftRounds: 0, appendsBeforeSync: 0, appliedBeforeSync: 0, snapshotsTaken: 0, snapshotsToUnpin: 0, tickGapMaxMs: 0, stalls: 0, snapshotEncodeMaxMs: 0, leaderships: 0, stepDowns: 0, walSegments: 0, walSegmentsDeleted: 0, walWriteMaxMs: 0, walSlowWrites: 0, emptyPopBarriers: 0, emptyPopsAnswered: 0, queueWaits: 0, queueWaitsReady: 0, queueWaitsGrouped: 0, queueUnwaits: 0, queueWaitsParked: 0, queueWaitsGroupedParked: 0, peersUp: [] };
  private readonly shards = new Map<number, Shard>();
  /** Requests not yet answered, in arrival order (for the timeout scan). */
  private readonly inflight = new Map<number, Req>();
  /** Requests that may wait long (blocking lock acquires): deadlines differ, so they are scanned apart. */
  private readonly blocking = new Map<number, Req>();
  /**
   * Queue waits withdrawn before they arrived ("shard\0partition\0queue\0waitId" -> performance.now() expiry), so a
   * wait that an unwait overtook answers :0 at once. Insertion order is expiry order (one lifetime for all).
   */
  private readonly unwaited = new Map<string, number>();
  /** Grouped waits parked here: every partition list each one is parked in (its own first). */
  private readonly groupedWaits = new Map<Req, GroupSpot[]>();
  /** Lock acquires proposed from here, by waiter id, until a reply record or a LockEvent settles them. */
  private readonly waiting = new Map<string, Req>();
  /** Peers whose outbound link is up (kept by the transport's up/down events). */
  private readonly upPeers = new Set<NodeId>();
  /** performance.now() of the last Raft message from each peer. */
  private readonly lastHeard = new Map<NodeId, number>();
  private readonly out = new BatchWriter();
  private readonly recorder = new ReplyRecorder();
  /** Requests to forward, per destination node, sent once per turn. */
  private readonly forwardQueue = new Map<NodeId, { reqs: Req[]; bytes: number }>();
  private forwardScheduled = false;
  private nextForwardedId = -1;
  private flushScheduled = false;
  private parkedCount = 0;
  private leaderPoll: NodeJS.Timeout | null = null;
  private timeoutScan: NodeJS.Timeout | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private balanceTimer: NodeJS.Timeout | null = null;
  private lockTimer: NodeJS.Timeout | null = null;
  private cacheHomes!: CacheHomeHost;
  /** --cache-backing: the external Redis below this worker's shards (connected on first use). */
  private backing: BackingStore | null = null;
  /** The shards this worker replicates (fixed at start). */
  private hostedShardIds: number[] = [];
  /** Invalidations relayed to the edge, by id, waiting for its acknowledgement. */
  /** Batches relayed to the edge's cache and not answered yet: id -> message count and settle. */
  private readonly edgeInvs = new Map<number, { n: number; settle: (acks: NodeAck[]) => void }>();
  /** Messages in edgeInvs' batches. */
  private edgeInvsPending = 0;
  private nextInvId = 1;
  /** Home -> node messages gathered in this event-loop turn, per destination node; sent by flushCacheOut. */
  private readonly cacheOut = new Map<NodeId, { msgs: HomeMessage[]; waiters: { resolve: (a: unknown) => void; reject: (e: Error) => void }[] }>();
  private cacheOutHandle: NodeJS.Immediate | null = null;
  private stopping = false;
  private host!: RaftHost;
  private transport!: PeerTransport;
  private wal!: Wal;

  private constructor(
    private readonly init: InitMessage,
    private readonly post: PostToEdge,
    private readonly log: Logger,
  ) {}

  /** Opens storage, recovers every shard, starts the peer transport and the Raft host. */
  static async start(init: InitMessage, post: PostToEdge, logger?: Logger): Promise<ShardWorker> {
    const log = (logger ?? createLogger({ level: init.logLevel, format: 'json', name: `lockstep` })).child({
      node: init.nodeId,
      worker: init.workerIndex,
    });
    const w = new ShardWorker(init, post, log);
    await w.open();
    return w;
  }

  private async open(): Promise<void> {
    const init = this.init;
    mkdirSync(init.dataDir, { recursive: true });
    this.wal = await Wal.open(join(init.dataDir, 'wal'), { limits: WAL_LIMITS_DEFAULT, fsync: init.fsync, logger: this.log });
    const snapshots = await SnapshotStore.open(join(init.dataDir, 'snapshots'), { fsync: init.fsync, logger: this.log });
    const groups = init.shards.map((s) => {
      const machine = new KeyspaceMachine({ keyspaceBytesMax: init.tuning.keyspaceBytesMax });
      machine.locks.onEvent = (e) => this.onLockEvent(e);
      machine.onQueueReady = (key) => this.onQueueReady(s.shard, key);
      this.shards.set(s.shard, { id: s.shard, hosted: true, leaderHint: s.preferredLeader, preferredLeader: s.preferredLeader, voters: [...s.voters], machine, parked: [], sweeping: false, expiringLocks: false, expiringQueues: false, popWaiters: new Map(), leaderSince: 0, leaderTerm: 0 });
      return { id: s.shard, conf: { voters: [...s.voters].sort((a, b) => a - b), learners: [] }, stateMachine: machine };
    });
    for (const s of init.remoteShards) {
      this.shards.set(s.shard, { id: s.shard, hosted: false, leaderHint: s.preferredLeader, preferredLeader: s.preferredLeader, voters: [...s.voters], machine: null, parked: [], sweeping: false, expiringLocks: false, expiringQueues: false, popWaiters: new Map(), leaderSince: 0, leaderTerm: 0 });
    }
    let host: RaftHost | undefined;
    const transport = new PeerTransport({
      nodeId: init.nodeId,
      workerIndex: init.workerIndex,
      clusterId: init.clusterId,
      ...(init.secret !== undefined ? { secret: init.secret } : {}),
      topologyDigest: init.topologyDigest,
      listen: init.listen,
      peers: new Map(init.peers),
      limits: PEER_LIMITS_DEFAULT,
      logger: this.log,
      onRaftMessages: (msgs) => {
        // One batch comes from one peer link: note when that peer was last heard from (liveness for NOQUORUM).
        if (msgs.length > 0) this.lastHeard.set(msgs[0]!.from, performance.now());
        host?.receive(msgs);
      },
      onRequest: (from, payload) => (isCacheBatchPayload(payload) ? this.relayCacheMessages(payload.cs) : this.serveForwarded(from, payload).then(encodeForwardResults)),
    });
    transport.onPeerDown((peer) => {
      this.upPeers.delete(peer);
      host?.peerDown(peer);
    });
    transport.onPeerUp((peer) => this.upPeers.add(peer));
    this.transport = transport;
    const r = init.raft;
    try {
      host = await RaftHost.start({
        nodeId: init.nodeId,
        groups,
        raft: {
          heartbeatTicks: r.heartbeatTicks,
          electionTicksMin: r.electionTicksMin,
          preVote: true,
          checkQuorum: true,
          readMode: init.readMode,
          ...raftFlowLimits(r),
        },
        tickMs: r.tickMs,
        wal: this.wal,
        snapshots,
        transport,
        logger: this.log,
        snapshotEntries: init.tuning.snapshotEntries,
        snapshotLogPercent: init.tuning.snapshotLogPercent,
      });
      this.host = host;
      this.hostedShardIds = init.shards.map((s) => s.shard);
      if (init.tuning.cacheBacking !== '') this.backing = new BackingStore(init.tuning.cacheBacking, this.log.child({ component: 'cache-backing' }));
      this.cacheHomes = new CacheHomeHost({
        nodeId: init.nodeId,
        tuning: init.tuning,
        leaderTerm: (id) => {
          const core = this.host.group(id);
          return core !== undefined && core.role === Role.Leader && core.transferee === 0 ? core.term : null;
        },
        readBarrier: (id) => this.host.readBarrier(id),
        propose: (id, data, onIndex) => this.host.propose(id, data, onIndex),
        appliedIndex: (id) => this.host.appliedIndex(id),
        machine: (id) => this.shards.get(id)?.machine ?? null,
        sendInv: (to, msg) => this.sendCacheMessage(to, msg),
        backing: this.backing,
        log: this.log,
      });
      await transport.start();
    } catch (err) {
      await host?.stop();
      await transport.stop();
      await this.wal.close().catch(() => undefined);
      throw err;
    }
    const t = init.tuning;
    this.timeoutScan = setInterval(() => this.scanTimeouts(), Math.max(10, Math.min(250, t.requestTimeoutMs / 4)));
    if (t.sweepIntervalMs > 0) this.sweepTimer = setInterval(() => this.sweep(), t.sweepIntervalMs);
    this.lockTimer = setInterval(() => this.expireLocks(), LOCK_TICK_MS);
    if (t.leaderBalanceMs > 0) this.balanceTimer = setInterval(() => this.balanceLeaders(), t.leaderBalanceMs);
  }

  /** Handles one message from the edge (init is handled by the entry point). */
  onMessage(msg: EdgeToWorker): void {
    switch (msg.t) {
      case 'req':
        this.onRequests(msg);
        return;
      case 'status':
        this.post({ t: 'status', id: msg.id, shards: this.shardStatus(), stats: this.currentStats() });
        return;
      case 'stop':
        void this.stop().then(
          () => this.post({ t: 'stopped' }),
          (err: unknown) => {
            this.log.error({ err }, 'shard worker stop failed');
            this.post({ t: 'stopped' });
          },
        );
        return;
      case 'init':
        this.log.warn('second init message ignored');
        return;
      case 'cack': {
        const b = this.edgeInvs.get(msg.id);
        if (b === undefined) return;
        this.edgeInvs.delete(msg.id);
        this.edgeInvsPending -= b.n;
        b.settle(msg.acks);
        return;
      }
    }
  }

  onRequests(msg: RequestBatchMessage): void {
    this.stats.batches++;
    const now = Date.now();
    const t0 = performance.now();
    readRequests(msg, (r) => this.accept(r, now, t0));
  }

  private accept(r: DecodedRequest, now: number, t0: number): void {
    this.stats.requests++;
    const shard = this.shards.get(r.shard);
    if (shard === undefined) {
      this.replyErrorNow(r.reqId, ShardErrorIndex.NoShard, 0, `node ${this.init.nodeId} hosts no replica of shard ${r.shard}`);
      return;
    }
    if (this.stopping) {
      this.replyErrorNow(r.reqId, ShardErrorIndex.Stopped, 0, 'node is stopping');
      return;
    }
    const bad = this.checkCommand(r.kind, r.args);
    if (bad !== null) {
      this.replyErrorNow(r.reqId, ShardErrorIndex.Err, 0, bad);
      return;
    }
    // Writes are stamped and encoded here, once, even when forwarded: the leader proposes these exact bytes. (Queue
    // waits are served without Raft: nothing to encode.)
    const data = r.kind === RequestKind.Write && queueWaitKind(r.args) === '' ? entryData(r.args, now) : null;
    const t = this.init.tuning;
    const blockMs = r.kind === RequestKind.Write ? blockMsOf(r.args) : 0;
    const req: Req = {
      reqId: r.reqId,
      shard,
      fwd: null,
      fwdIndex: 0,
      hops: 0,
      kind: r.kind,
      args: r.args,
      data,
      waiterId: blockMs > 0 ? lockWaiterId(r.args) : '',
      blockMs,
      blockUntil: t0 + blockMs,
      leaderDeadline: t0 + t.leaderWaitMs,
      deadline: t0 + blockMs + t.requestTimeoutMs,
      done: false,
    };
    this.track(req);
    this.route(req);
  }

  private track(req: Req): void {
    (req.blockMs > 0 ? this.blocking : this.inflight).set(req.reqId, req);
  }

  private untrack(req: Req): void {
    (req.blockMs > 0 ? this.blocking : this.inflight).delete(req.reqId);
    if (req.waiterId !== '' && this.waiting.get(req.waiterId) === req) this.waiting.delete(req.waiterId);
  }

  /** Null if the request is a keyspace command of its kind with a valid arity; otherwise why not. */
  private checkCommand(kind: RequestKind, args: Buffer[]): string | null {
    if (isLockCommand(args)) return checkLockCommand(kind === RequestKind.Write ? 'write' : 'read', args);
    if (isQueueCommand(args)) return checkQueueCommand(kind === RequestKind.Write ? 'write' : 'read', args);
    if (isCacheCommand(args)) {
      const bad = checkCacheCommand(kind === RequestKind.Write ? 'write' : 'read', args);
      if (bad !== null || kind !== RequestKind.Write) return bad;
      const inner = cacheWriteArgs(args);
      const spec = lookupWrite(inner[0]);
      if (spec === undefined || !arityOk(spec, inner.length)) return `not a keyspace write with a valid arity: ${inner[0]?.toString('latin1').slice(0, 40) ?? '(none)'}`;
      return null;
    }
    if (kind === RequestKind.Write) {
      const spec = lookupWrite(args[0]);
      if (spec === undefined || !arityOk(spec, args.length)) return `not a keyspace write with a valid arity: ${args[0]?.toString('latin1').slice(0, 40) ?? '(none)'}`;
      return null;
    }
    if (lookupRead(args[0]) === undefined) return `not a keyspace read: ${args[0]?.toString('latin1').slice(0, 40) ?? '(none)'}`;
    return null;
  }

  /** True if a link to some voter of the shard is up (a forward can be tried). */
  private voterUp(shard: Shard): boolean {
    for (const v of shard.voters) if (v !== this.init.nodeId && this.upPeers.has(v)) return true;
    return false;
  }

  /**
   * Sends the request to Raft if this node leads its shard, forwards it to the leader if another node leads it,
   * and parks it while no leader is known. A request a peer forwarded here is never forwarded again: if this node
   * does not lead the shard, the origin gets NOTLEADER with the leader it should try.
   */
  private route(req: Req): void {
    const shard = req.shard;
    const core = shard.hosted ? this.host.group(shard.id) : undefined;
    if (core === undefined) {
      if (shard.hosted) this.fail(req, ShardErrorIndex.NoShard, 0, `shard ${shard.id} is not hosted here`);
      else this.forwardOrPark(req, shard.leaderHint);
      return;
    }
    if (core.role === Role.Leader && !this.quorumReachable(shard)) {
      // Proposing now would only wait for CheckQuorum to depose us: wait (bounded) for the links to come back.
      this.park(req);
      return;
    }
    if (core.role !== Role.Leader || core.transferee !== 0) {
      // (A leader handing over refuses proposals: wait for the new one like for an election.)
      const leader = core.role === Role.Leader ? 0 : core.leader;
      if (leader !== 0 && leader !== this.init.nodeId) this.forwardOrPark(req, leader);
      else this.park(req);
      return;
    }
    if (isCacheStateCommand(req.args)) {
      this.serveCacheState(req);
      return;
    }
    if (isCacheCommand(req.args) || (req.kind === RequestKind.Write && isStringWrite(req.args))) {
      this.serveCache(req);
      return;
    }
    if (req.kind === RequestKind.Write) {
      const wait = queueWaitKind(req.args);
      if (wait !== '') {
        if (wait === 'unwait') this.serveUnwait(shard, req);
        else this.serveWait(shard, req);
        return;
      }
      if (shard.machine !== null && popFindsNothing(shard.machine.queues, req.args)) {
        this.popAfterBarrier(shard, req);
        return;
      }
      this.proposeWrite(shard, req);
    } else {
      this.stats.reads++;
      this.host.readBarrier(shard.id).then(
        () => this.serveRead(req),
        (err: unknown) => this.onError(req, err),
      );
    }
  }

  /**
   * A pop that finds nothing here (popFindsNothing) is answered after a read barrier instead of a log entry: once
   * the barrier resolves, this replica has applied every entry committed before the pop arrived, so if the pop
   * still finds nothing, an empty answer is linearizable (the pop took effect at the barrier) and logging it would
   * change nothing. If something became ready meanwhile, the pop is proposed as usual. Nothing was proposed before
   * that, so a barrier that fails (leadership lost) routes the pop again, like a read.
   */
  private popAfterBarrier(shard: Shard, req: Req): void {
    this.stats.emptyPopBarriers++;
    this.host.readBarrier(shard.id).then(
      () => {
        if (req.done) return;
        const record = shard.machine?.emptyPopRecord(req.args) ?? null;
        if (record === null) this.proposeWrite(shard, req);
        else {
          this.stats.emptyPopsAnswered++;
          this.succeed(req, record);
        }
      },
      (err: unknown) => {
        if (req.done) return;
        if (err instanceof HostError && (err.code === 'NOTLEADER' || err.code === 'TRYAGAIN')) {
          this.forwardOrPark(req, err.leader !== 0 ? err.leader : (this.host.group(req.shard.id)?.leader ?? 0));
        } else this.onError(req, err);
      },
    );
  }

  /** Proposes a checked write on a shard this node leads; the reply comes from its apply. */
  private proposeWrite(shard: Shard, req: Req): void {
    this.stats.writes++;
    // A lock acquire that parks is settled by a LockEvent, which may be raised before this promise resolves.
    if (req.waiterId !== '') this.waiting.set(req.waiterId, req);
    this.host.propose(shard.id, req.data!).then(
      (result) => {
        if (result === LOCK_PARKED || req.done) return;
        this.succeed(req, result instanceof Uint8Array ? result : new Uint8Array(0));
      },
      (err: unknown) => this.onError(req, err),
    );
  }

  /** Forwards to `leader` if allowed and its link is up; a forwarded request answers NOTLEADER instead. */
  private forwardOrPark(req: Req, leader: NodeId): void {
    if (req.fwd !== null) {
      if (leader !== 0 && leader !== this.init.nodeId) this.fail(req, ShardErrorIndex.NotLeader, leader, `shard ${req.shard.id} is led by node ${leader}`);
      else this.park(req);
      return;
    }
    if (leader === 0 || leader === this.init.nodeId || req.hops >= FORWARD_HOPS_MAX || !this.upPeers.has(leader)) {
      this.park(req);
      return;
    }
    req.hops++;
    this.stats.forwarded++;
    if (req.blockMs > 0) {
      // A blocking acquire must not hold up the batch it would share: it travels alone, with its own timeout.
      this.sendForwardBatch(leader, [req], req.blockMs + this.init.tuning.requestTimeoutMs);
      return;
    }
    let q = this.forwardQueue.get(leader);
    if (q === undefined) {
      q = { reqs: [], bytes: 0 };
      this.forwardQueue.set(leader, q);
    }
    q.reqs.push(req);
    for (const a of req.args) q.bytes += a.length + 8;
    if (q.bytes >= FORWARD_BATCH_BYTES_MAX) this.sendForwards(leader);
    else if (!this.forwardScheduled) {
      this.forwardScheduled = true;
      setImmediate(() => {
        this.forwardScheduled = false;
        for (const to of [...this.forwardQueue.keys()]) this.sendForwards(to);
      });
    }
  }

  private sendForwards(to: NodeId): void {
    const q = this.forwardQueue.get(to);
    if (q === undefined) return;
    this.forwardQueue.delete(to);
    this.sendForwardBatch(to, q.reqs, this.init.tuning.requestTimeoutMs);
  }

  private sendForwardBatch(to: NodeId, batch: Req[], timeoutMs: number): void {
    const reqs = batch.filter((r) => !r.done);
    if (reqs.length === 0) return;
    if (!this.upPeers.has(to) || this.stopping) {
      // Never sent: safe to route again (or wait).
      for (const r of reqs) this.park(r);
      return;
    }
    const items: ForwardItem[] = reqs.map((r) => [r.shard.id, r.kind, r.args]);
    this.transport.request(to, forwardRequest(items), timeoutMs).then(
      (payload) => {
        let results: ForwardResult[];
        try {
          results = parseForwardResults(payload, reqs.length);
        } catch (err) {
          this.log.error({ err, peer: to }, 'malformed answer to a forwarded batch');
          for (const r of reqs) this.forwardFailed(r, `malformed answer from node ${to}`);
          return;
        }
        for (let i = 0; i < reqs.length; i++) this.onForwardResult(reqs[i]!, to, results[i]!);
      },
      (err: unknown) => {
        const code = err instanceof PeerRequestError ? err.code : 'PEER_REMOTE';
        // These never left this node: routing again cannot apply anything twice.
        const unsent = code === 'PEER_BUSY' || code === 'PEER_ENCODE' || code === 'PEER_UNKNOWN';
        for (const r of reqs) {
          if (unsent) this.park(r);
          else this.forwardFailed(r, `forwarded to node ${to}: ${(err as Error).message}`);
        }
      },
    );
  }

  /** The peer may or may not have run it: a read is routed again, a write's outcome is unknown. */
  private forwardFailed(req: Req, why: string): void {
    if (req.done) return;
    if (req.kind === RequestKind.Read) this.park(req);
    else this.fail(req, ShardErrorIndex.TryAgain, 0, `${why}; outcome unknown`);
  }

  private onForwardResult(req: Req, from: NodeId, r: ForwardResult): void {
    if (req.done) return;
    if (r[0] === 0) {
      req.shard.leaderHint = from;
      this.succeed(req, r[1]);
      return;
    }
    const [, code, leader, message] = r;
    switch (code as ShardErrorIndex) {
      case ShardErrorIndex.NotLeader:
        // Never proposed there: follow the peer's hint (or wait for ours to improve).
        if (leader !== 0) req.shard.leaderHint = leader;
        if (leader === this.init.nodeId) this.park(req);
        else this.forwardOrPark(req, leader);
        return;
      case ShardErrorIndex.Stopped:
        this.forwardFailed(req, `node ${from} is stopping`);
        return;
      default:
        this.fail(req, code as ShardErrorIndex, leader, message);
    }
  }

  /** Serves a batch a peer forwarded: each request is routed here (never forwarded again); one answer for all. */
  private serveForwarded(from: NodeId, payload: unknown): Promise<ForwardResult[]> {
    const items = parseForwardRequest(payload, this.init.shardCount);
    this.stats.forwardedIn += items.length;
    return new Promise((resolve) => {
      const batch: ForwardedBatch = { results: new Array<ForwardResult>(items.length), remaining: items.length, resolve };
      if (items.length === 0) {
        resolve([]);
        return;
      }
      const now = Date.now();
      const t0 = performance.now();
      const t = this.init.tuning;
      for (let i = 0; i < items.length; i++) {
        const it = items[i]!;
        const id = this.nextForwardedId;
        this.nextForwardedId = id <= -0x7fffffff ? -1 : id - 1;
        const shard = this.shards.get(it.shard);
        const err = shard === undefined || !shard.hosted ? `node ${this.init.nodeId} hosts no replica of shard ${it.shard}` : this.stopping ? 'node is stopping' : this.checkCommand(it.kind, it.args);
        if (err !== null) {
          const code = shard === undefined || !shard.hosted ? ShardErrorIndex.NoShard : this.stopping ? ShardErrorIndex.Stopped : ShardErrorIndex.Err;
          this.settleForwarded(batch, i, [1, code, 0, err]);
          continue;
        }
        const req: Req = {
          reqId: id,
          shard: shard!,
          fwd: batch,
          fwdIndex: i,
          hops: 0,
          kind: it.kind,
          args: it.args,
          data: it.kind === RequestKind.Write && queueWaitKind(it.args) === '' ? entryData(it.args, now) : null,
          waiterId: '',
          blockMs: 0,
          blockUntil: 0,
          leaderDeadline: t0 + t.leaderWaitMs,
          deadline: t0 + t.requestTimeoutMs,
          done: false,
        };
        if (it.kind === RequestKind.Write) {
          req.blockMs = blockMsOf(it.args);
          if (req.blockMs > 0) {
            req.waiterId = lockWaiterId(it.args);
            req.deadline += req.blockMs;
            req.blockUntil = t0 + req.blockMs;
          }
        }
        this.track(req);
        this.route(req);
      }
      void from;
    });
  }

  private settleForwarded(batch: ForwardedBatch, index: number, result: ForwardResult): void {
    batch.results[index] = result;
    if (--batch.remaining === 0) batch.resolve(batch.results);
  }

  /**
   * A cache request (`_c.*`), or a plain string write, on a shard this replica leads: served by the shard's cache
   * home, which invalidates every cached copy before a write reaches memory (docs/cache-coherence.md). A plain write
   * comes from no cache (node 0): every holder is invalidated.
   */
  private serveCache(req: Req): void {
    let creq: NodeRequest<Uint8Array>;
    const internal = isCacheCommand(req.args);
    try {
      if (internal) {
        const d = decodeCacheRequest(req.args);
        creq = d.t === 'write' ? { ...d, shard: req.shard.id, op: req.data! } : { ...d, shard: req.shard.id };
      } else {
        const spec = lookupWrite(req.args[0])!;
        creq = { t: 'write', from: 0, shard: req.shard.id, keys: writeKeysOf(spec, req.args), op: req.data! };
      }
    } catch (err) {
      this.fail(req, ShardErrorIndex.Err, 0, (err as Error).message);
      return;
    }
    if (req.kind === RequestKind.Write) this.stats.writes++;
    else this.stats.reads++;
    this.cacheHomes.serve(req.shard.id, creq, (a) => {
      if (req.done) return;
      if (!a.ok) {
        // A home's own NOTLEADER (a read to route again) or TRYAGAIN (a write's outcome unknown) acts like the host's.
        const cause = a.cause ?? (a.code === 'NOTLEADER' || a.code === 'TRYAGAIN' ? new HostError(a.code, a.message) : undefined);
        if (cause !== undefined) this.onError(req, cause);
        else this.fail(req, ShardErrorIndex.Err, 0, a.message);
        return;
      }
      if (internal) {
        this.recorder.bulk(encodeAnswer(a));
        this.succeed(req, this.recorder.take());
      } else {
        this.succeed(req, (a as WrittenAnswer<CachedValue, Uint8Array>).result);
      }
    });
  }

  /**
   * CACHE.STATE key, at the shard's leader: asks every node of the cluster (this one through its edge) for its state
   * of the key, in parallel, and adds this home's directory view. Reply: one [node id, state, directory] array per
   * node in id order; state is M/E/S/I, or 'unreachable' when the node did not answer within a lease; directory is
   * what the home lists for it (E, S, F while a fill reads memory, '+inv' while an invalidation is unacknowledged,
   * '-' when not listed).
   */
  private serveCacheState(req: Req): void {
    const shard = req.shard.id;
    const key = req.args[1]!.toString('latin1');
    const dir = this.cacheHomes.directoryOf(shard, key);
    if (dir === null) {
      this.fail(req, ShardErrorIndex.Err, 0, `shard ${shard} has no cache home here`);
      return;
    }
    this.stats.reads++;
    const nodes = [this.init.nodeId, ...this.init.peers.map(([id]) => id)].sort((a, b) => a - b);
    const ask = (to: NodeId): Promise<string> =>
      this.sendCacheMessage(to, { t: 'state', shard, key }).then(
        (r) => (isStateReport(r) ? r.state : 'unreachable'),
        () => 'unreachable',
      );
    void Promise.all(nodes.map(ask)).then((states) => {
      if (req.done) return;
      this.recorder.arrayHeader(nodes.length);
      nodes.forEach((n, i) => {
        this.recorder.arrayHeader(3);
        this.recorder.integer(n);
        this.recorder.bulk(states[i]!);
        this.recorder.bulk(dir.get(n) ?? '-');
      });
      this.succeed(req, this.recorder.take());
    });
  }

  /**
   * Home messages (invalidations, downgrades, state queries) for this node's cache, from a peer or this node: relayed
   * to the edge in one message; resolves with the edge's answers, one per message, in order.
   */
  private relayCacheMessages(msgs: HomeMessage[]): Promise<NodeAck[]> {
    if (this.stopping || this.edgeInvsPending + msgs.length > EDGE_INVALIDATIONS_MAX) return Promise.reject(new Error('edge cache unavailable'));
    return new Promise((resolve) => {
      const id = this.nextInvId;
      this.nextInvId = (id + 1) >>> 0;
      this.edgeInvs.set(id, { n: msgs.length, settle: resolve });
      this.edgeInvsPending += msgs.length;
      this.post({ t: 'cinv', id, msgs });
    });
  }

  /**
   * Sends a home message to node `to`'s cache; resolves with its answer. Messages for one node are gathered for the
   * rest of this event-loop turn (whatever their shard) and leave as one peer request (or one edge message for this
   * node), which costs one frame, one wake-up and one acknowledgement instead of one per message.
   */
  private sendCacheMessage(to: NodeId, msg: HomeMessage): Promise<unknown> {
    return new Promise((resolve, reject) => {
      let b = this.cacheOut.get(to);
      if (b === undefined) {
        b = { msgs: [], waiters: [] };
        this.cacheOut.set(to, b);
      }
      b.msgs.push(msg);
      b.waiters.push({ resolve, reject });
      if (b.msgs.length >= CACHE_BATCH_MAX) this.sendCacheBatch(to);
      else this.cacheOutHandle ??= setImmediate(() => this.flushCacheOut());
    });
  }

  private flushCacheOut(): void {
    this.cacheOutHandle = null;
    for (const to of [...this.cacheOut.keys()]) this.sendCacheBatch(to);
  }

  private sendCacheBatch(to: NodeId): void {
    const b = this.cacheOut.get(to);
    if (b === undefined) return;
    this.cacheOut.delete(to);
    const sent: Promise<unknown> =
      to === this.init.nodeId
        ? this.relayCacheMessages(b.msgs)
        : !this.upPeers.has(to)
          ? Promise.reject(new Error(`no link to node ${to}`))
          : this.transport.request(to, { cs: b.msgs }, this.init.tuning.cacheLeaseMs);
    sent.then(
      (answers) => {
        if (!Array.isArray(answers) || answers.length !== b.waiters.length) {
          const err = new Error(`node ${to} answered ${b.waiters.length} cache messages with something else`);
          for (const w of b.waiters) w.reject(err);
          return;
        }
        b.waiters.forEach((w, i) => w.resolve(answers[i]));
      },
      (err: unknown) => {
        const e = err instanceof Error ? err : new Error(String(err));
        for (const w of b.waiters) w.reject(e);
      },
    );
  }

  /** `again`: the read checks readGate again after it was held (counted once in INFO). */
  private serveRead(req: Req, again = false): void {
    if (req.done) return;
    // Write-through: memory may hold a write whose invalidations are still out (cache-home.ts commitThenInvalidate);
    // a keyspace read waits until it is answered, or for the takeover wait of a new home.
    const keys = keyspaceReadKeys(req.args);
    if (
      keys !== null &&
      !this.cacheHomes.readGate(
        req.shard.id,
        keys,
        (ok) => {
          if (ok) this.serveRead(req, true);
          else this.onError(req, new HostError('NOTLEADER', `shard ${req.shard.id}: leadership ended`));
        },
        again,
      )
    ) {
      return;
    }
    try {
      req.shard.machine!.read(req.args, Date.now(), this.recorder);
    } catch (err) {
      this.recorder.take();
      this.fail(req, ShardErrorIndex.Err, 0, (err as Error).message);
      return;
    }
    this.succeed(req, this.recorder.take());
  }

  private onError(req: Req, err: unknown): void {
    if (req.done) return;
    // Not applied here (or outcome unknown): no LockEvent may settle it any more; routing again re-registers it.
    if (req.waiterId !== '' && this.waiting.get(req.waiterId) === req) this.waiting.delete(req.waiterId);
    if (!(err instanceof HostError)) {
      this.log.error({ err, shard: req.shard.id }, 'request failed');
      this.fail(req, ShardErrorIndex.Err, 0, err instanceof Error ? err.message : String(err));
      return;
    }
    switch (err.code) {
      case 'NOTLEADER': {
        // Refused by the core, or overwritten before it committed: never applied, so it may be routed again.
        const leader = err.leader !== 0 ? err.leader : (this.host.group(req.shard.id)?.leader ?? 0);
        this.forwardOrPark(req, leader);
        return;
      }
      case 'TRYAGAIN': {
        // A read that lost its leader is simply routed again; a write's outcome is unknown: the caller decides.
        if (req.kind === RequestKind.Read) {
          this.forwardOrPark(req, this.host.group(req.shard.id)?.leader ?? 0);
          return;
        }
        this.fail(req, ShardErrorIndex.TryAgain, err.leader, err.message);
        return;
      }
      case 'BUSY':
        this.fail(req, ShardErrorIndex.Busy, 0, err.message);
        return;
      case 'STOPPED':
        this.fail(req, ShardErrorIndex.Stopped, 0, err.message);
        return;
    }
  }

  /** True if this node has an up link to enough of the shard's voters to form a majority with itself. */
  private quorumReachable(shard: Shard): boolean {
    return this.reachableVoters(shard) > shard.voters.length / 2;
  }

  private reachableVoters(shard: Shard): number {
    let n = 0;
    for (const v of shard.voters) if (v === this.init.nodeId || this.upPeers.has(v)) n++;
    return n;
  }

  /**
   * Voters this node has both an up link to and a Raft message from within the liveness window (itself counted).
   * A TCP link stays "up" to a peer that is hung (SIGSTOP, a stalled VM); its silence is what gives it away. While
   * a shard has no leader, every live voter campaigns, so a live peer is heard from well within the window.
   */
  private aliveVoters(shard: Shard): number {
    const since = performance.now() - Math.max(this.init.tuning.leaderWaitMs, 4 * this.init.raft.electionTicksMin * this.init.raft.tickMs);
    let n = 0;
    for (const v of shard.voters) if (v === this.init.nodeId || (this.upPeers.has(v) && (this.lastHeard.get(v) ?? -Infinity) >= since)) n++;
    return n;
  }

  /**
   * The answer to a request that waited leaderWaitMs in vain: NOQUORUM if a majority of the shard's voters is
   * unreachable or silent from here (this node is in a minority), else TRYAGAIN (an election is still going on).
   */
  private failNoLeader(req: Req): void {
    const shard = req.shard;
    const alive = this.aliveVoters(shard);
    if (alive <= shard.voters.length / 2) {
      const msg = `shard ${shard.id}: only ${alive} of ${shard.voters.length} replicas reachable from node ${this.init.nodeId}`;
      this.fail(req, ShardErrorIndex.NoQuorum, 0, msg);
      return;
    }
    this.fail(req, ShardErrorIndex.TryAgain, 0, `no leader for shard ${shard.id} within ${this.init.tuning.leaderWaitMs} ms`);
  }

  private park(req: Req): void {
    if (performance.now() >= req.leaderDeadline) {
      this.failNoLeader(req);
      return;
    }
    req.shard.parked.push(req);
    this.parkedCount++;
    if (this.leaderPoll === null) this.leaderPoll = setInterval(() => this.pollLeaders(), LEADER_POLL_MS);
  }

  private pollLeaders(): void {
    const now = performance.now();
    for (const shard of this.shards.values()) {
      if (shard.parked.length === 0) continue;
      const core = shard.hosted ? this.host.group(shard.id) : undefined;
      const leaderKnown = shard.hosted
        ? core !== undefined && (core.role === Role.Leader ? core.transferee === 0 : core.leader !== 0 && core.leader !== this.init.nodeId && this.upPeers.has(core.leader))
        : this.upPeers.has(shard.leaderHint) || this.voterUp(shard);
      const parked = shard.parked;
      shard.parked = [];
      this.parkedCount -= parked.length;
      for (const req of parked) {
        if (req.done) continue;
        if (leaderKnown) this.route(req);
        else if (now >= req.leaderDeadline) this.failNoLeader(req);
        else {
          shard.parked.push(req);
          this.parkedCount++;
        }
      }
    }
    if (this.parkedCount === 0 && this.leaderPoll !== null) {
      clearInterval(this.leaderPoll);
      this.leaderPoll = null;
    }
  }

  private scanTimeouts(): void {
    const now = performance.now();
    for (const req of this.blocking.values()) {
      if (req.deadline <= now) this.fail(req, ShardErrorIndex.TryAgain, 0, `no answer within ${req.blockMs} ms of WAIT + ${this.init.tuning.requestTimeoutMs} ms; outcome unknown`);
    }
    // inflight is in arrival order and every request has the same timeout: stop at the first one still in time.
    for (const req of this.inflight.values()) {
      if (req.deadline > now) break;
      this.fail(req, ShardErrorIndex.TryAgain, 0, `no answer within ${this.init.tuning.requestTimeoutMs} ms; outcome unknown`);
    }
  }

  /** Leader side of active expiry: one sweep entry in flight per shard at most. */
  private sweep(): void {
    if (this.stopping) return;
    const now = Date.now();
    for (const shard of this.shards.values()) {
      if (shard.machine === null || shard.sweeping || this.host.group(shard.id)?.role !== Role.Leader) continue;
      const plan = shard.machine.planSweep(now, this.init.tuning.sweepKeysMax);
      if (plan === null) continue;
      shard.sweeping = true;
      this.host.propose(shard.id, plan.entry).then(
        () => {
          shard.sweeping = false;
        },
        () => {
          shard.sweeping = false;
        },
      );
    }
  }

  /**
   * A queue wait or take on a shard this node leads: a wait is answered :1 (a take proposes its pop) at once if
   * messages are ready in its partition, answered :0 (a take: an empty array) at once if an unwait overtook it, and
   * otherwise parked (FIFO) until onQueueReady wakes it or its time runs out.
   */
  private serveWait(shard: Shard, req: Req): void {
    this.stats.queueWaits++;
    const key = partitionKey(req.args);
    const tomb = `${shard.id}\u0000${key}\u0000${waitIdOf(req.args)}`;
    if (this.unwaited.delete(tomb)) {
      this.answerWait(req, 0);
      return;
    }
    if (isGroupedWait(req.args)) {
      this.serveGroupedWait(shard, key, req);
      return;
    }
    const queue = req.args[1]!;
    const partition = Number(req.args[2]!.toString('latin1'));
    if (shard.machine === null || shard.machine.queues.listLen(queue, partition) > 0) {
      this.answerWait(req, 1);
      return;
    }
    this.parkWait(shard, key, req);
  }

  /**
   * A wait naming several partitions of one queue (the edge groups the partitions whose shards one worker leads):
   * answered :k at once if the k-th has messages ready, else parked in each partition's FIFO until the first wake,
   * which withdraws it from the others. If this worker does not lead every one of those shards (the edge's view of
   * the leaders was stale), it answers TRYAGAIN at once, and the edge waits on each partition alone.
   */
  private serveGroupedWait(shard: Shard, key: string, req: Req): void {
    this.stats.queueWaitsGrouped++;
    const queue = req.args[1]!;
    const parts = waitPartitions(req.args);
    const spots: GroupSpot[] = [];
    for (let k = 0; k < parts.length; k++) {
      const p = parts[k]!;
      const s = k === 0 ? shard : this.partitionShard(queue, p);
      const core = s?.hosted ? this.host.group(s.id) : undefined;
      if (s === undefined || s.machine === null || core === undefined || core.role !== Role.Leader || core.transferee !== 0) {
        this.fail(req, ShardErrorIndex.TryAgain, 0, `partition ${p} of this grouped wait is not led by this worker`);
        return;
      }
      if (s.machine.queues.listLen(queue, p) > 0) {
        this.answerWait(req, 1, k + 1);
        return;
      }
      spots.push({ shard: s, key: k === 0 ? key : partitionKeyOf(queue, p), partition: p });
    }
    this.groupedWaits.set(req, spots);
    for (const spot of spots) this.parkWait(spot.shard, spot.key, req, spot.partition);
  }

  /** This worker's shard holding partition p of `queue` (undefined if it hosts no such shard). */
  private partitionShard(queue: Buffer, p: number): Shard | undefined {
    return this.shards.get(queuePartitionShard(queue, p, this.init.shardCount));
  }

  /** Withdraws a grouped wait from the FIFOs of its partitions other than `except` (its answer is on the way). */
  private dropGrouped(req: Req, except: PopWaiters | null): void {
    const spots = this.groupedWaits.get(req);
    if (spots === undefined) return;
    this.groupedWaits.delete(req);
    const id = waitIdOf(req.args);
    for (const spot of spots) {
      const list = spot.shard.popWaiters.get(spot.key);
      if (list === undefined || list === except) continue;
      list.reqs.delete(id);
      if (list.reqs.size === 0) spot.shard.popWaiters.delete(spot.key);
    }
  }

  /** Parks a wait or take at the back of its partition's FIFO (`key`: partitionKey of its args). */
  private parkWait(shard: Shard, key: string, req: Req, partition = Number(req.args[2]!.toString('latin1'))): void {
    let list = shard.popWaiters.get(key);
    if (list === undefined) {
      list = { queue: Buffer.from(req.args[1]!), partition, reqs: new Map(), dueAt: Infinity, lookedAt: performance.now() };
      shard.popWaiters.set(key, list);
    }
    const id = waitIdOf(req.args);
    list.reqs.delete(id); // a take parked again goes to the back
    list.reqs.set(id, req);
    if (req.blockUntil < list.dueAt) list.dueAt = req.blockUntil;
  }

  /**
   * Withdraws a queue wait: a parked one answers :0; one not found here either fired already (its wake went
   * unused, so the next waiters are woken if messages are still ready) or has not arrived yet (a tombstone makes it
   * answer :0 when it does). Answers :1 if the wait was parked here.
   */
  private serveUnwait(shard: Shard, req: Req): void {
    this.stats.queueUnwaits++;
    const key = partitionKey(req.args);
    const id = waitIdOf(req.args);
    const list = shard.popWaiters.get(key);
    let found = false;
    const parked = list?.reqs.get(id);
    if (list !== undefined && parked !== undefined) {
      list.reqs.delete(id);
      if (list.reqs.size === 0) shard.popWaiters.delete(key);
      this.dropGrouped(parked, list);
      if (!parked.done) {
        found = true;
        this.answerWait(parked, 0);
      }
    }
    if (!found) {
      // A wait the edge saw answer ready needs no tombstone (it will not arrive again): only its wake is handed on.
      if (!unwaitAnswered(req.args)) {
        if (this.unwaited.size >= WAIT_TOMBSTONES_MAX) this.unwaited.delete(this.unwaited.keys().next().value!);
        this.unwaited.set(`${shard.id}\u0000${key}\u0000${id}`, performance.now() + WAIT_TOMBSTONE_MS);
      }
      this.wakeWaiters(shard, key);
      // A grouped wait's unwait names its other partitions: which one woke it is not known here, so each is handed on.
      if (req.args.length > 5) this.wakeGroup(req.args);
    }
    this.recorder.integer(found ? 1 : 0);
    this.succeed(req, this.recorder.take());
  }

  /**
   * Answers a wait: 1 (messages are ready) or 0 (time ran out, withdrawn). For a take, 1 proposes its pop (the pop's
   * reply answers it; if faster consumers left nothing, it waits again while its time lasts) and 0 answers an empty
   * array, as a pop that found nothing.
   */
  private answerWait(req: Req, n: 0 | 1, k = n as number): void {
    if (n === 1) this.stats.queueWaitsReady++;
    if (queueWaitKind(req.args) !== 'take') {
      this.recorder.integer(k);
      this.succeed(req, this.recorder.take());
      return;
    }
    if (n === 0) {
      this.recorder.arrayHeader(0);
      this.succeed(req, this.recorder.take());
      return;
    }
    const shard = req.shard;
    this.stats.writes++;
    this.host.propose(shard.id, encodeWrite(takePopArgs(req.args), Date.now())).then(
      (result) => {
        if (req.done) return;
        const record = result instanceof Uint8Array ? result : new Uint8Array(0);
        if (isEmptyArray(record) && performance.now() < req.blockUntil) {
          this.parkWait(shard, partitionKey(req.args), req);
        } else this.succeed(req, record);
      },
      (err: unknown) => this.onError(req, err),
    );
  }

  /** Wakes the first parked waits of a partition (FIFO), as many as there are ready messages. */
  private wakeWaiters(shard: Shard, key: string): void {
    const list = shard.popWaiters.get(key);
    if (list === undefined) return;
    let n = shard.machine === null ? 0 : shard.machine.queues.listLen(list.queue, list.partition);
    list.lookedAt = performance.now();
    for (const [id, req] of list.reqs) {
      if (n <= 0) break;
      list.reqs.delete(id);
      this.dropGrouped(req, list);
      if (req.done) continue;
      n--;
      this.answerWait(req, 1, isGroupedWait(req.args) ? waitPartitions(req.args).indexOf(list.partition) + 1 : 1);
    }
    if (list.reqs.size === 0) shard.popWaiters.delete(key);
  }

  /** Hands on the wakes of the partitions an unwait of a grouped wait names beyond its first (see serveUnwait). */
  private wakeGroup(args: readonly Buffer[]): void {
    const queue = args[1]!;
    const parts = waitPartitions(args);
    for (let k = 1; k < parts.length; k++) {
      const s = this.partitionShard(queue, parts[k]!);
      if (s !== undefined) this.wakeWaiters(s, partitionKeyOf(queue, parts[k]!));
    }
  }

  /** A queue entry made messages ready in a partition: wake its first waits, after this apply. */
  private onQueueReady(shardId: number, key: string): void {
    const shard = this.shards.get(shardId);
    if (shard === undefined || !shard.popWaiters.has(key)) return;
    setImmediate(() => this.wakeWaiters(shard, key));
  }

  /**
   * Parked waits and takes: answered (:0, an empty array) once their time ran out; routed again when this node
   * stopped leading; woken again when messages stayed ready WAIT_REWAKE_MS after the last wake (one lost with its edge).
   */
  private tickPopWaiters(shard: Shard, leading: boolean, t0: number): void {
    for (const [key, list] of shard.popWaiters) {
      if (!leading || t0 >= list.dueAt) {
        // Scan this partition's requests (only when one may be due, or all must move): the 10 ms tick would
        // otherwise walk every parked request.
        let due = Infinity;
        for (const [id, req] of list.reqs) {
          if (req.done) {
            list.reqs.delete(id);
            this.dropGrouped(req, list);
          } else if (t0 >= req.blockUntil) {
            list.reqs.delete(id);
            this.dropGrouped(req, list);
            this.answerWait(req, 0);
          } else if (!leading) {
            list.reqs.delete(id);
            if (this.groupedWaits.has(req)) {
              // Its partitions are no longer all led here: the edge waits on each alone.
              this.dropGrouped(req, list);
              this.fail(req, ShardErrorIndex.TryAgain, 0, `partition ${list.partition} of this grouped wait lost its leader here`);
            } else this.route(req);
          } else if (req.blockUntil < due) due = req.blockUntil;
        }
        list.dueAt = due;
      }
      if (list.reqs.size === 0) shard.popWaiters.delete(key);
      else if (leading && t0 - list.lookedAt >= WAIT_REWAKE_MS) this.wakeWaiters(shard, key);
    }
  }

  private pruneUnwaited(t0: number): void {
    for (const [k, until] of this.unwaited) {
      if (until > t0) break;
      this.unwaited.delete(k);
    }
  }

  /** Settles the acquire (proposed from here) that a lock grant, timeout, deadlock or cancel concerns. */
  private onLockEvent(e: LockEvent): void {
    const req = this.waiting.get(e.waiterId);
    if (req === undefined) return;
    this.waiting.delete(e.waiterId);
    const r = this.recorder;
    switch (e.t) {
      case 'granted':
        r.integer(e.token);
        break;
      case 'deadlock':
        r.error(`DEADLOCK ${e.cycle}`);
        break;
      case 'timeout':
      case 'cancelled':
        r.nil();
        break;
    }
    this.succeed(req, r.take());
  }

  /**
   * Leader side of lock leases: proposes the expiry of lapsed leases and waits, from this node's clock. A new
   * leader first waits out one maximum election timeout (2 x the minimum), so a lease the previous leader's clock
   * still honoured is never cut short by a failover. One expiry entry in flight per shard at most.
   */
  private expireLocks(): void {
    if (this.stopping) return;
    this.cacheHomes.tick(this.hostedShardIds);
    const graceMs = 2 * this.init.raft.electionTicksMin * this.init.raft.tickMs;
    const t0 = performance.now();
    if (this.unwaited.size > 0) this.pruneUnwaited(t0);
    let now = 0;
    for (const shard of this.shards.values()) {
      if (shard.machine === null) continue;
      const core = this.host.group(shard.id);
      const leading = core !== undefined && core.role === Role.Leader;
      if (shard.popWaiters.size > 0) this.tickPopWaiters(shard, leading, t0);
      if (core === undefined || core.role !== Role.Leader) {
        shard.leaderSince = 0;
        continue;
      }
      if (shard.leaderSince === 0 || shard.leaderTerm !== core.term) {
        shard.leaderSince = t0;
        shard.leaderTerm = core.term;
      }
      if (t0 - shard.leaderSince < graceMs) continue;
      if (now === 0) now = Date.now();
      const queues = shard.machine.queues;
      const qNext = queues.nextExpiryAt();
      if (!shard.expiringQueues && qNext !== null && qNext <= now) {
        const items = queues.planExpiry(now, LOCK_EXPIRY_ITEMS_MAX);
        if (items.length > 0) {
          shard.expiringQueues = true;
          const done = (): void => {
            shard.expiringQueues = false;
          };
          this.host.propose(shard.id, encodeWrite(queueExpiryArgs(items), now)).then(done, done);
        }
      }
      if (shard.expiringLocks) continue;
      const locks = shard.machine.locks;
      if (locks.nextDeadline() > now) continue;
      const items = locks.planExpiry(now, LOCK_EXPIRY_ITEMS_MAX);
      if (items.length === 0) continue;
      shard.expiringLocks = true;
      const done = (): void => {
        shard.expiringLocks = false;
      };
      this.host.propose(shard.id, encodeWrite(expiryArgs(items), now)).then(done, done);
    }
  }

  /**
   * Moves leadership back to each shard's preferred leader (so every node leads about S/N shards) once that node
   * is reachable and has every entry: a leader not preferred starts a transfer (Raft thesis 3.10, TimeoutNow).
   */
  private balanceLeaders(): void {
    if (this.stopping) return;
    for (const shard of this.shards.values()) {
      const to = shard.preferredLeader;
      const core = shard.hosted ? this.host.group(shard.id) : undefined;
      if (core === undefined || core.role !== Role.Leader || to === this.init.nodeId || to === 0 || core.transferee !== 0) continue;
      if (!this.transport.isUp(to)) continue;
      const st = core.status();
      if (st.progress[to]?.match !== st.lastIndex) continue;
      this.host.transferLeader(shard.id, to);
    }
  }

  private succeed(req: Req, record: Uint8Array): void {
    if (req.done) return;
    req.done = true;
    this.untrack(req);
    if (req.fwd !== null) {
      this.settleForwarded(req.fwd, req.fwdIndex, [0, Buffer.from(record)]);
      return;
    }
    writeReplyOk(this.out, req.reqId, record);
    this.scheduleFlush();
  }

  private fail(req: Req, code: ShardErrorIndex, leader: NodeId, message: string): void {
    if (req.done) return;
    req.done = true;
    this.untrack(req);
    if (req.fwd !== null) {
      this.stats.errors++;
      this.settleForwarded(req.fwd, req.fwdIndex, [1, code, leader, message]);
      return;
    }
    this.replyErrorNow(req.reqId, code, leader, message);
  }

  private replyErrorNow(reqId: number, code: ShardErrorIndex, leader: NodeId, message: string): void {
    this.stats.errors++;
    writeReplyError(this.out, reqId, code, leader, message);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.out.bytes >= REPLY_BATCH_BYTES_MAX) {
      this.flush();
      return;
    }
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.out.count === 0) return;
    const count = this.out.count;
    const buf = this.out.finish();
    this.post({ t: 'rep', count, buf }, [buf]);
  }

  shardStatus(): ShardStatus[] {
    const out: ShardStatus[] = [];
    for (const shard of this.shards.values()) {
      const core = shard.hosted ? this.host.group(shard.id) : undefined;
      if (core === undefined || shard.machine === null) {
        out.push({ shard: shard.id, worker: this.init.workerIndex, role: 'remote', leader: shard.leaderHint, term: 0, commit: 0, applied: 0, lastIndex: 0, keys: 0, lag: 0 });
        continue;
      }
      out.push({
        shard: shard.id,
        worker: this.init.workerIndex,
        role: ROLE_NAMES[core.role] ?? 'follower',
        leader: core.leader,
        term: core.term,
        commit: core.commit,
        applied: core.applied,
        lastIndex: core.lastIndex,
        keys: shard.machine.store.size,
        lag: core.role === Role.Leader ? this.followerLag(core.status()) : 0,
      });
    }
    return out;
  }

  private followerLag(st: { lastIndex: number; progress: Record<number, { match: number } | undefined> }): number {
    let lag = 0;
    for (const [id, p] of Object.entries(st.progress)) {
      if (Number(id) === this.init.nodeId || p === undefined) continue;
      lag = Math.max(lag, st.lastIndex - p.match);
    }
    return lag;
  }

  private currentStats(): WorkerStats {
    const h = this.host.stats;
    let parked = 0;
    for (const shard of this.shards.values()) for (const list of shard.popWaiters.values()) parked += list.reqs.size;
    return {
      ...this.stats,
      queueWaitsParked: parked,
      queueWaitsGroupedParked: this.groupedWaits.size,
      fsyncs: this.wal.stats.syncs,
      raftRounds: h.rounds,
      appendsBeforeSync: h.appendsBeforeSync,
      appliedBeforeSync: h.appliedBeforeSync,
      snapshotsTaken: h.snapshotsTaken,
      snapshotsToUnpin: h.snapshotsToUnpin,
      tickGapMaxMs: Math.round(h.tickGapMaxMs),
      stalls: h.stalls,
      snapshotEncodeMaxMs: Math.round(h.snapshotEncodeMaxMs),
      leaderships: h.leaderships,
      stepDowns: h.stepDowns,
      walSegments: this.wal.stats.segments,
      walWriteMaxMs: Math.round(this.wal.stats.writeMaxMs * 10) / 10,
      walSlowWrites: this.wal.stats.slowWrites,
      walSegmentsDeleted: this.wal.stats.segmentsDeleted,
      peersUp: [...this.upPeers],
      cache: this.cacheHomes.stats(),
    };
  }

  /** Answers every request (STOPPED), stops Raft, the transport and the WAL. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const t of [this.leaderPoll, this.timeoutScan, this.sweepTimer, this.balanceTimer, this.lockTimer]) if (t !== null) clearInterval(t);
    this.leaderPoll = this.timeoutScan = this.sweepTimer = this.balanceTimer = this.lockTimer = null;
    this.cacheHomes?.close();
    await this.backing?.close();
    if (this.cacheOutHandle !== null) clearImmediate(this.cacheOutHandle);
    this.cacheOutHandle = null;
    for (const b of this.cacheOut.values()) for (const w of b.waiters) w.reject(new Error('node is stopping'));
    this.cacheOut.clear();
    for (const b of this.edgeInvs.values()) b.settle(Array.from({ length: b.n }, () => ({ t: 'invack', from: this.init.nodeId, shard: -1, epoch: -1, items: [] })));
    this.edgeInvs.clear();
    this.edgeInvsPending = 0;
    await this.host.stop();
    // The host rejected its proposals and reads; those rejections run as microtasks before this continues.
    await Promise.resolve();
    for (const req of [...this.inflight.values(), ...this.blocking.values()]) this.fail(req, ShardErrorIndex.Stopped, 0, 'node is stopping');
    for (const shard of this.shards.values()) shard.parked = [];
    this.parkedCount = 0;
    this.flush();
    await this.transport.stop();
    await this.wal.close();
  }
}

/** How long a request may wait on the server by design (a lock acquire's WAIT, a pop's BLOCK); 0 for the rest. */
function blockMsOf(args: Buffer[]): number {
  return lockWaitMs(args) || queueBlockMs(args);
}

/** True if a reply record is an empty array (a pop that found nothing). */
function isEmptyArray(record: Uint8Array): boolean {
  if (record.length > 16) return false;
  const v = recordValue(record);
  return Array.isArray(v) && v.length === 0;
}

/** The worker thread's main loop: the first message must be `init`; answers `ready` or `fatal`. */
export function runShardWorker(port: { on(ev: 'message', cb: (m: EdgeToWorker) => void): void; postMessage(m: WorkerToEdge, transfer?: ArrayBuffer[]): void }): void {
  let worker: ShardWorker | null = null;
  const early: EdgeToWorker[] = [];
  const post: PostToEdge = (m, transfer) => port.postMessage(m, transfer);
  port.on('message', (msg) => {
    if (worker !== null) {
      worker.onMessage(msg);
      return;
    }
    if (msg.t !== 'init') {
      early.push(msg);
      return;
    }
    ShardWorker.start(msg, post).then(
      (w) => {
        worker = w;
        post({ t: 'ready', workerIndex: msg.workerIndex });
        for (const m of early.splice(0)) w.onMessage(m);
      },
      (err: unknown) => post({ t: 'fatal', message: err instanceof Error ? `${err.name}: ${err.message}` : String(err) }),
    );
  });
}

/** The keys a keyspace read names ('all' for a keyless one: KEYS, SCAN, DBSIZE, ...); null for other reads. */
function keyspaceReadKeys(args: Buffer[]): string[] | 'all' | null {
  if (isLockCommand(args) || isQueueCommand(args)) return null;
  const spec = lookupRead(args[0]);
  return spec === undefined ? null : writeKeysOf(spec, args);
}
