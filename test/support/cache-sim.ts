/**
 * Deterministic simulator of the MESI cache core (src/cache/cache-node.ts, src/cache/cache-home.ts), write-through or
 * write-back (CacheSimConfig.writeBack): 3 nodes, each with a CacheNode over a small LRU line store, 1-2 shards whose
 * CacheHome lives on the shard's "leader" node, an abstract replicated memory per shard, a lossy network, leader
 * changes, partitions, pauses and crashes, and clients issuing GET / SET / INCR (and, rarely, FLUSHALL of a shard: a
 * keyless write). One seed drives everything: same seed, same run.
 *
 * What it owns:
 *   - time: one global virtual clock (ms) and an event queue (test/sim/event-queue.ts); no real timers. Each node's
 *     clock is `offset + global * (1 + drift)`, |drift| <= driftMax (0.5%), so leases are measured on drifting
 *     clocks (HomeConfig.marginMs must cover the drift). Every node (and the homes on it) ticks every tickMs.
 *   - memory: per shard an atomic map key -> string, changed only by writes (and, under write-back, write-backs of
 *     Modified data) applied in order. readMemory/confirm/writeMemory/writeBack take a random delay (a Raft round);
 *     each has a check point inside that delay where leadership is checked (and a read reads, a write applies). A
 *     home that is not the shard's current leader at its check point fails with TRYAGAIN. A home whose node is paused
 *     or isolated stalls at the check point (Raft cannot progress). Writes apply in the order they were handed to
 *     memory and their callbacks reach the home in that order (Raft's apply loop); reads and confirms complete in any
 *     order. Under write-back the order also holds across a stall (HomeSlot.applyQueue); write-through runs keep the
 *     original scheduling, where two writes stalled together can apply out of order (kept so their seeds replay).
 *     `memHook` lets scenario tests fix a call's delay.
 *   - leadership: at a leader change the old home's writes that were handed to memory and not yet applied are
 *     resolved at once (each applies or is dropped, a coin flip): a new leader's first read barrier sees them
 *     settled, as in Raft. The old home stays reachable and keeps answering for `unawareMs` (a deposed home that does
 *     not know it yet: its memory calls fail), then it is close()d. The new home (epoch = term + 1) is created after
 *     an election delay on a healthy node; its takeover wait must protect coherence.
 *   - the network: node <-> home requests, answers, invalidations, downgrades and their acks (a downgrade's is waited
 *     for under write-back only), with random delay, reordering (5x delays), stalls (100-400 ms, like a TCP
 *     retransmit after a partition heals), loss and partitions of one node (both directions cut, also for messages
 *     already in flight). A request whose answer does not come back within `requestTimeoutMs` fails with TRYAGAIN at
 *     the requester (the request itself may still arrive and act later). A per-message hook (`netHook`) lets
 *     scenario tests delay or drop chosen messages.
 *   - faults on nodes: pause (SIGSTOP: nothing runs, incoming work queues in a backlog, time passes; on resume the
 *     backlog runs with the node's tick at a random place in it), crash + restart (the CacheNode and every home on
 *     the node vanish; the restarted node has a fresh CacheNode and no lines).
 *   - clients: record every operation with call/return times (global time) for the linearizability checker. A failed
 *     read is left out (it had no effect); a write whose outcome the client does not know (failure, timeout, crash)
 *     is left out when memory never applied it (the simulator knows: it is indistinguishable from a write that
 *     never happened), and otherwise recorded pending (ret = Infinity) or at the time memory applied it (see
 *     `history`). Under write-back a write of an E/M line completes synchronously on the node (NodeIO.execLocal runs
 *     SimOp set/incr on the line's value): call = ret, its linearization point.
 *   - write-back provenance: every local write is logged on its grant (node incarnation, shard, epoch, gen, key:
 *     `grants`); Modified data leaving a node (a flush, or an answer to an invalidation or downgrade) is attributed
 *     to its grant and to how many of its local writes it holds, and checked to be the value after the last of
 *     them; a write-back that applies marks that many writes as in memory. A local write none of whose data ever
 *     applied, once its node no longer holds it, is lost (`lossReport`).
 *
 * Invariants checked after every event (a violation throws SimViolation and stops the run):
 *   - no-stale-hit (write-through): for every live node and every line it would serve as a hit now (the line is in
 *     the store, the shard's lease is live on the node's clock, and no write of that key from the node is in flight),
 *     the line's value equals the value memory holds now. This is the protocol's promise: memory changes only after
 *     every other copy is invalidated and acknowledged or its lease lapsed, and the writer never serves during its
 *     write.
 *   - no-stale-hit and exclusive (write-back, `checkCoherenceWb`): the truth of a key is the value of a Modified line
 *     (or buffered Modified data, which a node serves before its store) some live node could serve; else the value a
 *     node handed over in an answer and still serves from its downgraded S line (readers wait until memory has it);
 *     else memory. Every servable line equals the truth; at most one node holds a servable E or M line of a key, and
 *     then nobody else holds a servable line of it.
 *   - write-handoff: when a home hands a write to memory, no node other than the writer holds a line of that key it
 *     would serve, and the writer holds none it would serve either unless its own write of that key is in flight
 *     (for a FLUSHALL: no node holds a servable line of any key of the shard). Under write-back buffered data counts
 *     as a line, and when a home hands a write-back to memory, no node but the one whose data it is holds a servable
 *     line of the key (that one holds it M, or exactly the written value), unless memory already holds that value.
 *   - stale-write-back (write-back): a write-back never carries data of a local write made before the last write of
 *     the key handed to memory (every write through a home takes the line's data home first).
 *   - write-back-data: Modified data leaving a node is the value after its grant's last local write (above).
 *   - answered-once: a home answers each request at most once; at the end of a run every request delivered to a
 *     home that did not crash has been answered.
 *   - acked-write-applied: a write acknowledged ok to a client was applied to memory, with the result it returned
 *     (a local write under write-back: it reaches memory through a write-back or is lost; its result is checked by
 *     the history).
 *   - mesi: CacheNode drives every state change through mesi.ts `transition`, which throws on a forbidden pair.
 * At the end of a random run: faults stop, every node heals, (write-back) no node holds Modified data 2 s later,
 * each node reads each key (it must succeed and see memory), and the whole history must be linearizable (kvModel,
 * partitioned per key). Under write-back the history leaves out the local writes that were lost and the reads of
 * them (hits on the writer's node of that grant's line), and first: every loss must be documented
 * (docs/cache-coherence.md "What write-back can lose": a crash; the node's lease lapsing, or a new home, while it
 * held the data; or data handed over in an answer followed by such a lapse or a leader change), and no read left in
 * the history returned a value only a lost write produced. A run that lost nothing is checked whole.
 */
import { CacheHome, type HomeConfig, type MemoryRead, type MemoryWrite } from '../../src/cache/cache-home.js';
import { CacheNode, type Line, type LineStore, type WriteAllocate } from '../../src/cache/cache-node.js';
import type { CacheKey, CoherenceFailure, DirtyItem, DownAck, DownMessage, FlushRequest, HomeAnswer, InvAck, InvMessage, NodeRequest } from '../../src/cache/coherence-types.js';
import { LineState, LINE_STATE_NAMES } from '../../src/cache/mesi.js';
import type { NodeId } from '../../src/raft/types.js';
import { createRng, type Rng } from '../../src/util/rng.js';
import { EventQueue, type SimEvent } from '../sim/event-queue.js';
import { checkLinearizable, kvModel, type CheckResult, type KvInput, type KvOutput, type Operation } from './linearizability.js';

// ------------------------------------------------------------------------------------------------ types

/** A write as memory applies it. `id` identifies the client operation; `from` is the writing node. */
export type SimOp =
  | { kind: 'set'; key: string; value: string; id: number; from: NodeId }
  | { kind: 'incr'; key: string; id: number; from: NodeId }
  /** FLUSHALL of one shard: a keyless write ('all'). */
  | { kind: 'flush'; key: '*'; shard: number; id: number; from: NodeId };

/** A client's FLUSHALL of shard N is recorded as the input `del` of key `*N` (one `del` per key in the history). */
export const FLUSH_KEY_PREFIX = '*';
/** What a write returns: INCR the new value (or NOTINT on a non-integer), SET an empty value. */
export type SimResult = { value?: string; error?: 'NOTINT' };

export type SimNodeCache = CacheNode<string, SimOp, SimResult>;
export type SimHome = CacheHome<string, SimOp, SimResult>;

/**
 * A write-back handed to memory (write-back mode): `key := value` from the Modified data of grant `gk` (see
 * CacheSim.grants) as it stood after that grant's `index`-th local write.
 */
interface WbOp {
  kind: 'wb';
  key: string;
  value: string | null;
  gk: string;
  index: number;
  id: 0;
  from: NodeId;
}

/** Where a write-back's data came from: a grant's log (CacheSim.grants) and how many of its local writes it holds. */
interface WbSource {
  gk: string;
  index: number;
  node: NodeId;
  inc: number;
}

/** A message kind, as the net hook sees it ('ack' answers an invalidation, 'downack' a downgrade). */
export type MsgKind = 'req-gets' | 'req-write' | 'req-renew' | 'ans-gets' | 'ans-write' | 'ans-renew' | 'notleader' | 'inv' | 'down' | 'ack' | 'downack' | 'req-flush' | 'ans-flush';

export interface NetConfig {
  /** Delay of a message between two nodes, ms (uniform in [min, max]). */
  delayMinMs: number;
  delayMaxMs: number;
  /** Probability a message is lost. */
  loss: number;
  /** Probability a message takes up to 5x longer (reordering). */
  reorder: number;
  /** Probability a message is held 100-400 ms more (a stalled connection). */
  stall: number;
}

export interface CacheSimConfig {
  seed: number;
  /** Nodes (ids 1..nodes). */
  nodes: number;
  shards: number;
  /** The hot keys; key i lives in shard i % shards. */
  keys: string[];
  /** Lines per node store (LRU beyond it). */
  capacity: number;
  leaseMs: number;
  marginMs: number;
  renewMs: number;
  invRetryMs: number;
  directoryEntriesMax: number;
  evictedBatchMax: number;
  /** Every node (and the homes on it) ticks this often, global ms. */
  tickMs: number;
  /** A node's request fails with TRYAGAIN if no answer came back within this, global ms. */
  requestTimeoutMs: number;
  /** |drift| of each node's clock rate. */
  driftMax: number;
  /** Scenario tests: each node's drift (index = node id - 1), instead of random ones within driftMax. */
  drifts?: number[];
  /** Delay of a memory call, split at a random check point, ms. */
  memDelayMinMs: number;
  memDelayMaxMs: number;
  /** Probability memory says a read value must not be cached / a written value must not be returned. */
  uncacheableRate: number;
  wantUndefinedRate: number;
  /** Delay between deposing a leader and electing the next, ms. */
  electionDelayMinMs: number;
  electionDelayMaxMs: number;
  net: NetConfig;
  /** Keep a ring of the last events (for failure reports; off for speed), of `traceMax` lines (default 400). */
  trace: boolean;
  traceMax?: number;
  /**
   * Write-back policy on every node and home (docs/cache-coherence.md "Write-back"): single-key writes of E/M lines
   * complete locally (SimOp set/incr semantics on the line's value), Modified lines are flushed `flushMs` after their
   * first unflushed write, and the homes wait for downgrade answers. The invariants change with it (see the header).
   */
  writeBack: boolean;
  flushMs: number;
  /** Write-through: CacheNode.refillMax (background re-reads after invalidations; 0 = off). */
  refillMax: number;
  /** Write-through: CacheNode.writeAllocate (which writes ask for a line). */
  writeAllocate: WriteAllocate;
}

export const DEFAULT_SIM_CONFIG: Omit<CacheSimConfig, 'seed'> = {
  nodes: 3,
  shards: 1,
  keys: ['a', 'b', 'c'],
  capacity: 3,
  leaseMs: 200,
  marginMs: 20,
  renewMs: 50,
  invRetryMs: 30,
  directoryEntriesMax: 64,
  evictedBatchMax: 16,
  tickMs: 5,
  requestTimeoutMs: 300,
  driftMax: 0.005,
  memDelayMinMs: 2,
  memDelayMaxMs: 20,
  uncacheableRate: 0,
  wantUndefinedRate: 0,
  electionDelayMinMs: 0,
  electionDelayMaxMs: 150,
  net: { delayMinMs: 1, delayMaxMs: 10, loss: 0, reorder: 0, stall: 0 },
  trace: false,
  writeBack: false,
  refillMax: 0,
  writeAllocate: 'always',
  flushMs: 40,
};

/** A broken invariant: a coherence bug (or a simulator bug), never an expected outcome. */
export class SimViolation extends Error {
  constructor(
    readonly invariant: string,
    message: string,
  ) {
    super(`${invariant}: ${message}`);
    this.name = 'SimViolation';
  }
}

/** One client operation as the simulator tracks it. */
export interface OpHandle {
  clientId: number;
  node: NodeId;
  input: KvInput;
  /** Write id (memory's SimOp.id), 0 for reads. */
  id: number;
  call: number;
  ret: number;
  done: boolean;
  output: KvOutput | undefined;
  failure: CoherenceFailure | null;
  hit: boolean;
  /** Write-back: a write completed on the node's line (its linearization point is its execution). */
  local?: boolean;
  /**
   * Write-back: the grant (CacheSim.grants key) a local write wrote or a hit was served from, and how many local
   * writes of that grant it includes (a local write: its own 1-based position).
   */
  grant?: string;
  index?: number;
}

interface Ev extends SimEvent {
  run: () => void;
}

interface SimNode {
  id: NodeId;
  drift: number;
  offset: number;
  alive: boolean;
  paused: boolean;
  isolated: boolean;
  /** Bumped at every crash: work addressed to an older incarnation is dropped. */
  inc: number;
  backlog: (() => void)[];
  store: LruLineStore;
  cache: SimNodeCache;
  /** Which node this node believes leads each shard. */
  hints: (NodeId | null)[];
  /** Writes of each key sent by this node's CacheNode and not yet answered. */
  writesInFlight: Map<string, number>;
  /** Set while the node is down or paused by the fault injector (ends at this global time). */
  faultUntil: number;
  /**
   * Write-back: per key, the Modified data this incarnation handed over in an answer to a downgrade or invalidation
   * (on its way home). A downgraded line keeps serving it in S before memory has it: no-stale-hit excuses that line
   * while its value is this one and no write of the key has reached memory since.
   */
  handed: Map<string, string | null>;
  /**
   * Write-back: per shard, the lease as the last check saw it (live, epoch, until on the node's clock), and the
   * global times it lapsed: a live lease whose `until` has passed by the next check, or whose epoch changed (the node
   * learned of a new home), even when an answer renewed it within the same event.
   */
  leaseSeen: { live: boolean; epoch: number; until: number }[];
  lapses: number[][];
  /** Write-back: per shard, the global times the node learned of a new home (also in `lapses`). */
  homeChanges: number[][];
}

/** Write-back: the local writes made on one grant of a line (node incarnation, shard, epoch, gen, key). */
interface GrantLog {
  node: NodeId;
  inc: number;
  shard: number;
  key: string;
  /** The local writes in order, and the line's value after each. */
  writes: OpHandle[];
  values: (string | null)[];
  /** How many of them memory holds (the largest index a write-back from this grant carried when it applied). */
  homed: number;
  /** The last global time the node held the data (M line or buffered; checked after every event). */
  heldAt: number;
  /** The first global time an answer of the node carried the data with its most local writes, and how many. */
  handedAt: number;
  handedIndex: number;
}

interface HomeSlot {
  shard: number;
  term: number;
  node: NodeId;
  nodeInc: number;
  home: SimHome;
  closed: boolean;
  crashed: boolean;
  /** Requests delivered and not yet answered: id -> (delivery time, description). */
  outstanding: Map<number, { since: number; what: string }>;
  /** Writes handed to memory whose check point has not come. */
  proposed: Set<WriteRec>;
  /** Global time of the last write callback scheduled (write callbacks are delivered in apply order). */
  lastWriteReplyAt: number;
  /** Global time of the last write check point scheduled (writes apply in proposal order). */
  lastWriteCheckAt: number;
  /**
   * Writes (and write-backs) handed to memory whose check point has not run, in proposal order: each runs when its
   * time has come (`due`) and every earlier one has run, so a stall (the home's node paused or cut off) cannot
   * reorder them.
   */
  applyQueue: { due: boolean; run: () => void }[];
  /** A retry of the queue's head is scheduled (its node was stalled). */
  applyRetry: boolean;
}

interface WriteRec {
  op: SimOp | WbOp;
  /** The term of the home that handed it to memory. */
  term: number;
  want: CacheKey | undefined;
  state: 'proposed' | 'applied' | 'applied-late' | 'dropped';
  result: SimResult | undefined;
  value: string | null | undefined;
}

interface SimShard {
  id: number;
  mem: Map<string, string>;
  term: number;
  leader: NodeId | null;
  slots: HomeSlot[];
  /** Global times its leader was deposed. */
  deposedAt: number[];
}

export interface SimStats {
  events: number;
  ops: number;
  reads: number;
  hits: number;
  writes: number;
  failedOps: number;
  pendingWrites: number;
  leaderChanges: number;
  partitions: number;
  pauses: number;
  crashes: number;
  invalidations: number;
  installs: number;
  evictions: number;
  lapsedLines: number;
  leaseRefusals: number;
  /** Writes whose writer named the grant it dropped, so the home did not invalidate it (CacheHome.revokeOthers). */
  writerInvSkipped: number;
  grantsE: number;
  grantsS: number;
  messagesLost: number;
  /** Write-back: writes completed locally, write-backs memory applied, local writes lost (never reached memory), and
   *  reads left out of the history because they saw a lost write on its own node (see CacheSim.lossReport). */
  localWrites: number;
  writebacksApplied: number;
  lostWrites: number;
  lostObservers: number;
  /** Writes sent without asking for a line (CacheNode writeAllocate 'adaptive'). */
  writesUnallocated: number;
}

// ------------------------------------------------------------------------------------------------ line store

/** A Map-based LRU line store (insertion order = recency); over capacity it evicts the oldest and reports it. */
export class LruLineStore implements LineStore<string> {
  private readonly map = new Map<CacheKey, Line<string>>();
  onEvict: (key: CacheKey, line: Line<string>) => void = () => {};

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.map.size;
  }

  get(key: CacheKey): Line<string> | undefined {
    const line = this.map.get(key);
    if (line !== undefined) {
      this.map.delete(key);
      this.map.set(key, line);
    }
    return line;
  }

  peek(key: CacheKey): Line<string> | undefined {
    return this.map.get(key);
  }

  put(key: CacheKey, line: Line<string>): void {
    this.map.delete(key);
    this.map.set(key, line);
    while (this.map.size > this.capacity) {
      const [k, l] = this.map.entries().next().value as [CacheKey, Line<string>];
      this.map.delete(k);
      this.onEvict(k, l);
    }
  }

  delete(key: CacheKey): void {
    this.map.delete(key);
  }

  markRead(key: CacheKey, at: number): void {
    const line = this.map.get(key);
    if (line !== undefined) line.readAt = at;
  }

  entries(): IterableIterator<[CacheKey, Line<string>]> {
    return this.map.entries();
  }
}

// ------------------------------------------------------------------------------------------------ the simulator

const INT_RE = /^-?(0|[1-9][0-9]*)$/;
const TRACE_MAX = 400;

const fail = (code: CoherenceFailure['code'], message: string): CoherenceFailure => ({ ok: false, code, message });

export class CacheSim {
  readonly cfg: CacheSimConfig;
  readonly rng: Rng;
  readonly net: NetConfig;
  /** Global time, ms. */
  now = 0;
  readonly nodes: SimNode[] = [];
  readonly shards: SimShard[] = [];
  readonly ops: OpHandle[] = [];
  /** Writes memory applied: op id -> result. */
  readonly applied = new Map<number, SimResult>();
  readonly stats: SimStats = {
    events: 0,
    ops: 0,
    reads: 0,
    hits: 0,
    writes: 0,
    failedOps: 0,
    pendingWrites: 0,
    leaderChanges: 0,
    partitions: 0,
    pauses: 0,
    crashes: 0,
    invalidations: 0,
    installs: 0,
    evictions: 0,
    lapsedLines: 0,
    leaseRefusals: 0,
    writerInvSkipped: 0,
    grantsE: 0,
    grantsS: 0,
    messagesLost: 0,
    localWrites: 0,
    writebacksApplied: 0,
    lostWrites: 0,
    lostObservers: 0,
    writesUnallocated: 0,
  };
  /** Scenario tests: return a delay (ms) to override a message's, 'drop' to lose it, undefined for the usual. */
  netHook: ((m: { kind: MsgKind; from: NodeId; to: NodeId; shard: number; key?: string }) => number | 'drop' | undefined) | null = null;
  /**
   * Scenario tests: the delay (ms) of a memory call, overriding the random one; the call's check point (where it
   * reads, applies or checks leadership) is then at its end.
   */
  memHook: ((m: { kind: 'read' | 'confirm' | 'write' | 'writeback'; shard: number; home: NodeId; key?: string }) => number | undefined) | null = null;
  /** Global time at which memory applied each write (op id). */
  readonly appliedAt = new Map<number, number>();
  /** Homes retired (closed or crashed), for their final statistics. */
  readonly retiredHomes: SimHome[] = [];
  /** Node caches replaced by a crash, for their final statistics. */
  readonly retiredCaches: SimNodeCache[] = [];
  /**
   * Write-back: every grant some node wrote locally, by `node.inc|shard|epoch|gen|key`: its local writes in order
   * and how many of them reached memory. Write-backs are attributed to a grant and an index when their data leaves
   * the node (a flush, or an answer carrying data), and the value is checked against the log then.
   */
  readonly grants = new Map<string, GrantLog>();
  /** Global time each crashed node incarnation (`id.inc`) crashed. */
  readonly crashTimes = new Map<string, number>();

  private readonly q = new EventQueue<Ev>();
  private readonly traceRing: string[] = [];
  private nextOpId = 1;
  private nextReqId = 1;
  private retiredInstalls = 0;
  private nextClientId = 1000;
  /** Write-back: per key, the global time a leading home last handed a write (not a write-back) of it to memory. */
  private readonly lastHandoffAt = new Map<string, number>();
  /**
   * Write-through: keyed writes memory applied that no home has answered yet, per key in apply order, with the value
   * memory held before each. While one is there, other nodes may still serve the value before the first of them
   * (the home commits first, then invalidates). An answer (ok) removes the write; a write whose home ended unanswered
   * stays until a home of a newer term has finished its takeover wait (every line granted before has lapsed by then).
   */
  private readonly unanswered = new Map<string, { id: number; term: number; before: string | null }[]>();
  /** Write-through: when each applied keyed write left `unanswered` (answered, or its home's successor was ready). */
  private readonly settledAt = new Map<number, number>();
  /** Write-back: the sources of the data a home may write back during the current delivery (key -> source). */
  private wbCtx: Map<string, WbSource> | null = null;

  constructor(cfg: Partial<CacheSimConfig> & { seed: number }) {
    this.cfg = { ...DEFAULT_SIM_CONFIG, ...cfg, net: { ...DEFAULT_SIM_CONFIG.net, ...cfg.net } };
    this.net = this.cfg.net;
    this.rng = createRng(this.cfg.seed);
    for (let i = 0; i < this.cfg.shards; i++) this.shards.push({ id: i, mem: new Map(), term: 0, leader: null, slots: [], deposedAt: [] });
    for (let id = 1; id <= this.cfg.nodes; id++) {
      const drawn = (this.rng.next() * 2 - 1) * this.cfg.driftMax;
      const drift = this.cfg.drifts?.[id - 1] ?? drawn;
      const offset = this.rng.int(0, 100_000);
      const node: SimNode = {
        id,
        drift,
        offset,
        alive: true,
        paused: false,
        isolated: false,
        inc: 0,
        backlog: [],
        store: new LruLineStore(this.cfg.capacity),
        cache: undefined as unknown as SimNodeCache,
        hints: this.shards.map(() => null),
        writesInFlight: new Map(),
        faultUntil: 0,
        handed: new Map(),
        leaseSeen: this.shards.map(() => ({ live: false, epoch: -1, until: 0 })),
        lapses: this.shards.map(() => []),
        homeChanges: this.shards.map(() => []),
      };
      this.nodes.push(node);
      this.buildCache(node);
      const phase = this.rng.int(0, this.cfg.tickMs);
      this.schedule(phase, () => this.tickLoop(node));
    }
    // Initial leaders: shard i on node (i % nodes) + 1, known to everyone.
    for (const s of this.shards) {
      this.elect(s, ((s.id % this.cfg.nodes) + 1) as NodeId, true);
    }
  }

  // ---------------------------------------------------------------------------------------------- running

  schedule(delayMs: number, run: () => void): void {
    this.q.push({ time: this.now + Math.max(0, delayMs), seq: 0, run });
  }

  /** Runs one event; false when the queue is empty. */
  step(): boolean {
    const ev = this.q.pop();
    if (ev === undefined) return false;
    this.now = ev.time;
    this.stats.events++;
    ev.run();
    if (this.cfg.writeBack) this.checkCoherenceWb();
    else this.checkNoStaleHit();
    return true;
  }

  runFor(ms: number): void {
    const end = this.now + ms;
    for (;;) {
      const ev = this.q.peek();
      if (ev === undefined || ev.time > end) break;
      this.step();
    }
    this.now = end;
  }

  /** Runs until `pred` holds (checked after every event) or `maxMs` passed; returns whether it holds. */
  runUntil(pred: () => boolean, maxMs = 5_000): boolean {
    const end = this.now + maxMs;
    while (!pred()) {
      const ev = this.q.peek();
      if (ev === undefined || ev.time > end) {
        this.now = Math.max(this.now, end);
        return pred();
      }
      this.step();
    }
    return true;
  }

  /** Runs until the operation completed (throws if it did not within maxMs). */
  settle(h: OpHandle, maxMs = 5_000): OpHandle {
    if (!this.runUntil(() => h.done, maxMs)) throw new Error(`operation ${this.describeOp(h)} did not complete within ${maxMs} ms`);
    return h;
  }

  trace(line: () => string): void {
    if (!this.cfg.trace) return;
    this.traceRing.push(`${this.now.toFixed(0).padStart(6)} ${line()}`);
    if (this.traceRing.length > (this.cfg.traceMax ?? TRACE_MAX)) this.traceRing.shift();
  }

  lastEvents(n: number | undefined = 80): string[] {
    return this.traceRing.slice(-n);
  }

  // ---------------------------------------------------------------------------------------------- inspection

  clock(id: NodeId): number {
    const n = this.node(id);
    return n.offset + this.now * (1 + n.drift);
  }

  node(id: NodeId): SimNode {
    const n = this.nodes[id - 1];
    if (n === undefined) throw new RangeError(`no node ${id}`);
    return n;
  }

  cacheOf(id: NodeId): SimNodeCache {
    return this.node(id).cache;
  }

  shardOf(key: string): number {
    const i = this.cfg.keys.indexOf(key);
    if (i < 0) throw new RangeError(`unknown key ${key}`);
    return i % this.cfg.shards;
  }

  memory(key: string): string | null {
    return this.shards[this.shardOf(key)]!.mem.get(key) ?? null;
  }

  leaderOf(shard: number): NodeId | null {
    return this.shards[shard]!.leader;
  }

  /** The current leader's home of a shard (undefined during an election). */
  homeOf(shard: number): SimHome | undefined {
    const s = this.shards[shard]!;
    const slot = s.slots.find((x) => x.term === s.term && x.node === s.leader && !x.closed);
    return slot?.home;
  }

  /**
   * The line a node would serve for `key` now (undefined if it would miss). Under write-back, Modified data in the
   * node's write-back buffer is served before the store (CacheNode.read): it shows as M with `buffered`.
   */
  servable(id: NodeId, key: string): { state: 'M' | 'E' | 'S'; value: string | null; buffered?: true } | undefined {
    const sv = this.served(this.node(id), key);
    if (sv === undefined) return undefined;
    return { state: LINE_STATE_NAMES[sv.state] as 'M' | 'E' | 'S', value: sv.value, ...(sv.buffered ? { buffered: true as const } : {}) };
  }

  /** What `n` would serve for `key` now, with the grant it comes from (see `servable`). */
  private served(n: SimNode, key: string): { state: LineState; value: string | null; gen: number; epoch: number; buffered: boolean } | undefined {
    if (!n.alive || (n.writesInFlight.get(key) ?? 0) > 0) return undefined;
    const shard = this.shardOf(key);
    const lease = n.cache.leaseOf(shard);
    if (lease === undefined || lease.until <= this.clock(n.id)) return undefined;
    if (this.cfg.writeBack) {
      const b = n.cache.bufferedOf(key);
      if (b !== undefined && b.shard === shard && b.epoch === lease.epoch) return { state: LineState.M, value: b.value, gen: b.gen, epoch: b.epoch, buffered: true };
    }
    const line = n.store.peek(key);
    if (line === undefined || line.shard !== shard) return undefined;
    return { state: line.state, value: line.value, gen: line.gen, epoch: lease.epoch, buffered: false };
  }

  private held(n: SimNode, shard: number, epoch: number, gen: number, key: string): void {
    const log = this.grants.get(this.grantKey(n, shard, epoch, gen, key));
    if (log !== undefined) log.heldAt = this.now;
  }

  /** The key of a grant's log (CacheSim.grants). */
  private grantKey(n: SimNode, shard: number, epoch: number, gen: number, key: string): string {
    return `${n.id}.${n.inc}|${shard}|${epoch}|${gen}|${key}`;
  }

  /**
   * Write-back: the source of Modified data of (shard, epoch, gen, key) leaving node `n` now with `value`: the
   * grant's log and how many local writes it holds. The data must be the value after the grant's last local write
   * (a node writes a grant's line locally only while it holds it in E/M, and data leaves only from an M line, the
   * buffer, or data already handed over, after which the grant is not written again).
   */
  private wbSource(n: SimNode, shard: number, epoch: number, gen: number, key: string, value: string | null): WbSource {
    const gk = this.grantKey(n, shard, epoch, gen, key);
    const log = this.grants.get(gk);
    const index = log?.writes.length ?? 0;
    if (log === undefined || index === 0 || log.values[index - 1] !== value) {
      throw new SimViolation(
        'write-back-data',
        `node ${n.id} sends Modified data ${key}=${JSON.stringify(value)} of grant ${gk}, but its last local write left ${JSON.stringify(log?.values[index - 1])} (${index} local writes)`,
      );
    }
    return { gk, index, node: n.id, inc: n.inc };
  }

  // ---------------------------------------------------------------------------------------------- clients

  get(id: NodeId, key: string, clientId?: number): OpHandle {
    return this.issue(id, { kind: 'get', key }, clientId);
  }

  set(id: NodeId, key: string, value: string, clientId?: number): OpHandle {
    return this.issue(id, { kind: 'set', key, value }, clientId);
  }

  incr(id: NodeId, key: string, clientId?: number): OpHandle {
    return this.issue(id, { kind: 'incr', key }, clientId);
  }

  /** FLUSHALL of a shard's keys (a keyless write). */
  flush(id: NodeId, shard: number, clientId?: number): OpHandle {
    return this.issue(id, { kind: 'del', key: `${FLUSH_KEY_PREFIX}${shard}` }, clientId);
  }

  private isFlush(input: KvInput): boolean {
    return input.kind === 'del' && input.key.startsWith(FLUSH_KEY_PREFIX);
  }

  /** The keys of a shard. */
  keysOf(shard: number): string[] {
    return this.cfg.keys.filter((k) => this.shardOf(k) === shard);
  }

  /** Issues an operation on node `id` now (the node must be alive; if paused, it starts on resume). */
  issue(id: NodeId, input: KvInput, clientId?: number, onDone?: (h: OpHandle) => void): OpHandle {
    const n = this.node(id);
    const h: OpHandle = {
      clientId: clientId ?? this.nextClientId++,
      node: id,
      input,
      id: 0,
      call: this.now,
      ret: Infinity,
      done: false,
      output: undefined,
      failure: null,
      hit: false,
    };
    this.ops.push(h);
    this.stats.ops++;
    const inc = n.inc;
    this.onNode(id, inc, () => {
      h.call = this.now;
      const flush = this.isFlush(input);
      const shard = flush ? Number(input.key.slice(FLUSH_KEY_PREFIX.length)) : this.shardOf(input.key);
      const finish = (): void => {
        h.done = true;
        h.ret = this.now;
        if (h.failure !== null) this.stats.failedOps++;
        this.trace(() => `node ${id} client ${h.clientId} ${this.describeOp(h)}`);
        onDone?.(h);
      };
      if (input.kind === 'get') {
        this.stats.reads++;
        n.cache.read(shard, input.key, (r) => {
          if (r.ok) {
            h.output = { value: r.value };
            h.hit = r.hit;
            if (r.hit) this.stats.hits++;
            if (r.hit && this.cfg.writeBack) {
              // A hit is answered synchronously (also a late joiner's read again) from what `served` shows: note which
              // grant it read and how many of that grant's local writes it saw (a read that saw a write later lost is
              // its node's alone).
              const sv = this.served(n, input.key);
              if (sv === undefined || sv.value !== r.value) {
                throw new SimViolation('sim', `node ${id} answered a hit of ${input.key}=${JSON.stringify(r.value)} the simulator does not see (${JSON.stringify(sv)})`);
              }
              h.grant = this.grantKey(n, shard, sv.epoch, sv.gen, input.key);
              h.index = this.grants.get(h.grant)?.writes.length ?? 0;
            }
          } else h.failure = r;
          finish();
        });
        return;
      }
      if (input.kind !== 'set' && input.kind !== 'incr' && !flush) throw new Error(`unsupported operation ${input.kind}`);
      this.stats.writes++;
      h.id = this.nextOpId++;
      const op: SimOp =
        input.kind === 'set'
          ? { kind: 'set', key: input.key, value: input.value, id: h.id, from: id }
          : input.kind === 'incr'
            ? { kind: 'incr', key: input.key, id: h.id, from: id }
            : { kind: 'flush', key: '*', shard, id: h.id, from: id };
      // The node never serves a key while its own write of it is out: the no-stale-hit check excuses those lines.
      // A FLUSHALL excuses nothing (the writer dropped the shard's lines and installs none until it is answered).
      if (!flush) n.writesInFlight.set(input.key, (n.writesInFlight.get(input.key) ?? 0) + 1);
      // Under write-back a write of an E/M line completes synchronously, on the node (CacheNode.writeLocal).
      let sync = true;
      const localsBefore = n.cache.stats.localWrites;
      n.cache.write(shard, flush ? 'all' : [input.key], op, flush ? undefined : input.key, (r) => {
        if (!flush) {
          const left = (n.writesInFlight.get(input.key) ?? 1) - 1;
          if (left === 0) n.writesInFlight.delete(input.key);
          else n.writesInFlight.set(input.key, left);
        }
        if (r.ok && sync) {
          // A local write (acked-write-applied: it reaches memory later through a write-back, or is lost; its result
          // is checked by the history). The line is M now, in the store or (if the store would not keep it) buffered.
          if (!this.cfg.writeBack || flush || n.cache.stats.localWrites !== localsBefore + 1) throw new SimViolation('sim', `write ${this.describeOp(h)} completed synchronously but not as a local write`);
          h.output = input.kind !== 'incr' ? {} : r.result.error !== undefined ? { error: r.result.error } : { value: r.result.value! };
          h.local = true;
          this.recordLocalWrite(n, shard, input.key, h);
          finish();
          return;
        }
        if (r.ok) {
          h.output = input.kind !== 'incr' ? {} : r.result.error !== undefined ? { error: r.result.error } : { value: r.result.value! };
          const truth = this.applied.get(h.id);
          if (truth === undefined) throw new SimViolation('acked-write-applied', `write ${this.describeOp(h)} was acknowledged but memory never applied it`);
          if (JSON.stringify(truth) !== JSON.stringify(r.result)) {
            throw new SimViolation('acked-write-applied', `write ${this.describeOp(h)} returned ${JSON.stringify(r.result)} but memory computed ${JSON.stringify(truth)}`);
          }
        } else h.failure = r;
        finish();
      });
      sync = false;
    });
    return h;
  }

  /** Write-back: logs a local write on the grant of the line it wrote. */
  private recordLocalWrite(n: SimNode, shard: number, key: string, h: OpHandle): void {
    const lease = n.cache.leaseOf(shard)!;
    const line = n.store.peek(key);
    const b = n.cache.bufferedOf(key);
    const where = line !== undefined && line.state === LineState.M ? { gen: line.gen, epoch: lease.epoch, value: line.value } : b !== undefined ? { gen: b.gen, epoch: b.epoch, value: b.value } : undefined;
    if (where === undefined) throw new SimViolation('sim', `local write ${this.describeOp(h)} left no Modified line on node ${n.id}`);
    const gk = this.grantKey(n, shard, where.epoch, where.gen, key);
    let log = this.grants.get(gk);
    if (log === undefined) {
      log = { node: n.id, inc: n.inc, shard, key, writes: [], values: [], homed: 0, heldAt: this.now, handedAt: Number.NEGATIVE_INFINITY, handedIndex: 0 };
      this.grants.set(gk, log);
    }
    log.writes.push(h);
    log.values.push(where.value);
    h.grant = gk;
    h.index = log.writes.length;
    this.stats.localWrites++;
  }

  describeOp(h: OpHandle): string {
    const i = h.input;
    if (this.isFlush(i)) return `flushall(shard ${i.key.slice(FLUSH_KEY_PREFIX.length)})#${h.id} [${h.call}, ${h.done ? h.ret : '?'}] -> ${!h.done ? '...' : h.failure !== null ? `-${h.failure.code}` : 'OK'}`;
    const args = i.kind === 'set' ? `${i.key}, ${i.value}` : i.key;
    const out = !h.done ? '...' : h.failure !== null ? `-${h.failure.code} ${h.failure.message}` : JSON.stringify(h.output) + (h.hit ? ' (hit)' : '');
    return `${i.kind}(${args})#${h.id} [${h.call}, ${h.done ? h.ret : '?'}] -> ${out}`;
  }

  /**
   * The client history for the checker. Failed reads are left out (no effect). A write whose outcome its client does
   * not know is left out when memory never applied it; when memory applied it, `unknown` decides:
   *   'pending'  ret = Infinity, output unknown: the client's view (the checker may place it anywhere after its call);
   *   'applied'  output = what memory computed; ret = under write-back the time memory applied it (every copy is
   *              invalidated before a write applies), under write-through the time it left `unanswered` (its home
   *              answered it, or the next home's takeover wait ended: no old copy is left then). Keeps the search
   *              small when many writes are unknown (leader changes, timeouts).
   * Write-back: a local write enters at its execution (call = ret); local writes that never reached memory (lost:
   * see lossReport) are left out, with the reads that saw them (hits on the writer's node of that grant): the
   * documented loss makes them vanish after only their node saw them.
   */
  history(unknown: 'pending' | 'applied' = 'pending'): Operation<KvInput, KvOutput>[] {
    const out: Operation<KvInput, KvOutput>[] = [];
    const skip = this.cfg.writeBack ? this.lossReport().skip : undefined;
    const push = (h: OpHandle, output: KvOutput, ret: number): void => {
      // A FLUSHALL enters each key's history as a `del` (the checker works per key: cross-key atomicity is not checked).
      if (this.isFlush(h.input)) {
        for (const key of this.keysOf(Number(h.input.key.slice(FLUSH_KEY_PREFIX.length)))) out.push({ clientId: h.clientId, input: { kind: 'del', key }, output: {}, call: h.call, ret });
      } else out.push({ clientId: h.clientId, input: h.input, output, call: h.call, ret });
    };
    for (const h of this.ops) {
      if (skip?.has(h)) continue;
      if (h.done && h.failure === null) {
        push(h, h.output!, h.ret);
        continue;
      }
      if (h.input.kind === 'get' || h.id === 0) continue;
      const result = this.applied.get(h.id);
      if (result === undefined) continue;
      if (unknown === 'pending') push(h, {}, Infinity);
      else {
        const output: KvOutput = h.input.kind !== 'incr' ? {} : result.error !== undefined ? { error: result.error } : { value: result.value! };
        // Write-through: other nodes may serve the value before a write until it is answered, or until every line of
        // its ended home has lapsed (commit first, then invalidate), so it completes then, not at its apply.
        push(h, output, this.cfg.writeBack ? this.appliedAt.get(h.id)! : (this.settledAt.get(h.id) ?? Infinity));
      }
    }
    return out;
  }

  checkHistory(timeoutMs = 20_000, unknown: 'pending' | 'applied' = 'pending'): CheckResult<KvInput, KvOutput> {
    return checkLinearizable(kvModel(), this.history(unknown), { timeoutMs, witness: false });
  }

  /**
   * Write-back: which local writes were lost, and whether each loss is documented. A local write is lost when no
   * write-back carrying it (or a later local write of the same grant, which was computed on top of it) applied and
   * its node no longer holds the data (runRandom drains the nodes first; mid-run, data still held is not lost yet). A loss is documented
   * (docs/cache-coherence.md "What write-back can lose") when the writer's incarnation crashed; or its lease of the
   * shard lapsed (which includes learning of a new home: the lease restarts at 0) while it still held the data (from
   * the first lost write to one tick after it last held it: the lapse drops it, or the new home refuses it); or an
   * answer of the node carried the data home and afterwards the node's lease lapsed (the home gives up on an answer
   * it never got) or the shard's leader was deposed (the home's write-back of it failed). Anything else is listed
   * in `unexplained`. `observers`: the reads that saw a lost write (hits of that grant on its node after it); `skip`
   * = lost writes + observers (left out of the history).
   */
  lossReport(): { lost: OpHandle[]; observers: OpHandle[]; skip: Set<OpHandle>; unexplained: string[]; causes: LossCauses } {
    const lost: OpHandle[] = [];
    const unexplained: string[] = [];
    const causes: LossCauses = { crash: 0, lapse: 0, homeChange: 0, handedOver: 0 };
    const lostAfter = new Map<string, number>();
    for (const [gk, log] of this.grants) {
      if (log.homed >= log.writes.length || this.stillHeld(gk, log)) continue;
      lostAfter.set(gk, log.homed);
      const first = log.writes[log.homed]!;
      lost.push(...log.writes.slice(log.homed));
      const n = this.node(log.node);
      const crashed = this.crashTimes.has(`${log.node}.${log.inc}`);
      const lapses = n.inc === log.inc || crashed ? n.lapses[log.shard]! : [];
      const lapsedHolding = lapses.some((t) => t >= first.call && t <= log.heldAt + 2 * this.cfg.tickMs);
      const handedHome = log.handedIndex > log.homed && log.handedAt >= first.call && (lapses.some((t) => t >= log.handedAt) || this.shards[log.shard]!.deposedAt.some((t) => t >= log.handedAt));
      const nLost = log.writes.length - log.homed;
      const window = (t: number): boolean => t >= first.call && t <= log.heldAt + 2 * this.cfg.tickMs;
      if (crashed) causes.crash += nLost;
      else if (handedHome) causes.handedOver += nLost;
      else if (lapsedHolding && (n.homeChanges[log.shard] ?? []).some(window)) causes.homeChange += nLost;
      else if (lapsedHolding) causes.lapse += nLost;
      if (!crashed && !lapsedHolding && !handedHome) {
        unexplained.push(
          `grant ${gk}: ${log.writes.length - log.homed} of ${log.writes.length} local writes never reached memory, from ${this.describeOp(first)}; node ${log.node} held the data ` +
            `until ${log.heldAt}${log.handedAt >= first.call ? `, handed it over at ${log.handedAt} (#${log.handedIndex})` : ''}, did not crash, and its lease of shard ${log.shard} lapsed at ` +
            `${JSON.stringify(lapses.filter((t) => t >= first.call - 500).slice(0, 8))}`,
        );
      }
    }
    const observers = this.ops.filter((h) => h.hit && h.grant !== undefined && lostAfter.has(h.grant) && h.index! > lostAfter.get(h.grant)!);
    return { lost, observers, skip: new Set([...lost, ...observers]), unexplained, causes };
  }

  /** Write-back: whether the grant's data (all its local writes) is still on its node: an M line or buffered. */
  private stillHeld(gk: string, log: GrantLog): boolean {
    const n = this.node(log.node);
    if (!n.alive || n.inc !== log.inc) return false;
    const line = n.store.peek(log.key);
    const epoch = n.cache.leaseOf(log.shard)?.epoch;
    if (line !== undefined && line.state === LineState.M && epoch !== undefined && this.grantKey(n, log.shard, epoch, line.gen, log.key) === gk) return true;
    const b = n.cache.bufferedOf(log.key);
    return b !== undefined && this.grantKey(n, b.shard, b.epoch, b.gen, log.key) === gk;
  }

  /**
   * Write-back: a read (left in the history) that returned a value only a lost write produced: the lost write was
   * seen by someone other than its own node's readers of that line. Values any other write (or a write-back of a
   * write that was not lost) produced are ambiguous and not reported; the linearizability check covers the rest.
   */
  lostWriteObserved(): string | null {
    const { lost, skip } = this.lossReport();
    if (lost.length === 0) return null;
    // `key=value` pairs some write that was not lost produced (absent values are never reported).
    const produced = new Set<string>();
    for (const h of this.ops) {
      if (skip.has(h) || h.input.kind === 'get') continue;
      if (h.input.kind === 'set') produced.add(`${h.input.key}=${h.input.value}`);
      else if (h.input.kind === 'incr') {
        const v = h.done && h.failure === null ? h.output?.value : this.applied.get(h.id)?.value;
        if (v !== undefined) produced.add(`${h.input.key}=${v}`);
      }
    }
    for (const log of this.grants.values()) for (let i = 0; i < log.homed; i++) produced.add(`${log.key}=${log.values[i]}`);
    const only = new Map<string, OpHandle>();
    for (const w of lost) {
      const log = this.grants.get(w.grant!)!;
      const v = log.values[w.index! - 1]!;
      if (v !== null && !produced.has(`${log.key}=${v}`)) only.set(`${log.key}=${v}`, w);
    }
    for (const r of this.ops) {
      if (skip.has(r) || r.input.kind !== 'get' || !r.done || r.failure !== null) continue;
      const v = r.output?.value;
      const w = v === null || v === undefined ? undefined : only.get(`${r.input.key}=${v}`);
      if (w !== undefined) return `read ${this.describeOp(r)} on node ${r.node} returned the value of lost write ${this.describeOp(w)} on node ${w.node}`;
    }
    return null;
  }

  // ---------------------------------------------------------------------------------------------- faults

  /** Cuts every message to and from `id` (also those in flight) for `ms` (forever if omitted). */
  partition(id: NodeId, ms?: number): void {
    const n = this.node(id);
    n.isolated = true;
    this.stats.partitions++;
    this.trace(() => `node ${id} partitioned${ms !== undefined ? ` for ${ms} ms` : ''}`);
    if (ms !== undefined) this.schedule(ms, () => this.heal(id));
  }

  heal(id: NodeId): void {
    const n = this.node(id);
    if (!n.isolated) return;
    n.isolated = false;
    this.trace(() => `node ${id} healed`);
  }

  /** SIGSTOP: the node runs nothing (no tick, no messages, no clients) until resume(). */
  pause(id: NodeId, ms?: number): void {
    const n = this.node(id);
    if (!n.alive || n.paused) return;
    n.paused = true;
    this.stats.pauses++;
    this.trace(() => `node ${id} paused${ms !== undefined ? ` for ${ms} ms` : ''}`);
    if (ms !== undefined) this.schedule(ms, () => this.resume(id));
  }

  /** SIGCONT: runs the backlog, with the node's tick at `tickAt` (index into the backlog; random if omitted). */
  resume(id: NodeId, tickAt?: number): void {
    const n = this.node(id);
    if (!n.paused) return;
    n.paused = false;
    const backlog = n.backlog.splice(0);
    const at = tickAt !== undefined ? Math.min(tickAt, backlog.length) : this.rng.int(0, backlog.length + 1);
    this.trace(() => `node ${id} resumed with ${backlog.length} queued, tick at ${at}`);
    const inc = n.inc;
    for (let i = 0; i <= backlog.length; i++) {
      if (!n.alive || n.inc !== inc) return;
      if (i === at) this.tickNode(n);
      const fn = backlog[i];
      if (fn === undefined) continue;
      // Work queued during the pause may pause the node again: keep the rest queued, in order.
      if (n.paused) {
        n.backlog.push(...backlog.slice(i));
        return;
      }
      fn();
    }
  }

  /** kill -9: the node's CacheNode and every home on it vanish; shards it led elect another leader. */
  crash(id: NodeId): void {
    const n = this.node(id);
    if (!n.alive) return;
    n.alive = false;
    n.paused = false;
    n.backlog.length = 0;
    this.crashTimes.set(`${id}.${n.inc}`, this.now);
    n.inc++;
    n.writesInFlight.clear();
    n.handed.clear();
    for (const l of n.leaseSeen) l.live = false;
    this.stats.crashes++;
    this.trace(() => `node ${id} crashed`);
    for (const s of this.shards) {
      for (const slot of s.slots) {
        if (slot.node === id && !slot.crashed) {
          slot.crashed = true;
          slot.closed = true;
          this.retiredHomes.push(slot.home);
        }
      }
      // Its unapplied writes are settled by the leader change (a crashed leader's entry may still commit).
      if (s.leader === id) this.depose(s, { unawareMs: 0 });
    }
  }

  restart(id: NodeId): void {
    const n = this.node(id);
    if (n.alive) return;
    n.alive = true;
    n.inc++;
    n.store = new LruLineStore(this.cfg.capacity);
    this.buildCache(n);
    // A node learns the shard leaders when it joins the cluster again.
    for (const s of this.shards) n.hints[s.id] = s.leader;
    this.trace(() => `node ${id} restarted`);
  }

  /**
   * Moves a shard's leadership: the current home is deposed now (its unapplied writes resolved), keeps answering for
   * `unawareMs` before it is closed, and `to` (or a random healthy node) becomes leader after `electionDelayMs`.
   */
  moveLeader(shard: number, opts: { to?: NodeId; unawareMs?: number; electionDelayMs?: number; hintsAfterMs?: number } = {}): void {
    const s = this.shards[shard]!;
    this.depose(s, { unawareMs: opts.unawareMs ?? 0, to: opts.to, electionDelayMs: opts.electionDelayMs, hintsAfterMs: opts.hintsAfterMs });
  }

  // ---------------------------------------------------------------------------------------------- random workload

  /**
   * Starts `clientsPerNode` sequential clients on every node, together issuing `totalOps` operations (GET `readRate`,
   * else SET or INCR), then stopping. `onAllDone` runs when every client stopped.
   */
  startClients(opts: { clientsPerNode: number; totalOps: number; readRate: number; setRate: number; flushRate?: number; thinkMaxMs: number; onAllDone?: () => void }): void {
    let budget = opts.totalOps;
    let running = 0;
    const loop = (id: NodeId, clientId: number): void => {
      const n = this.node(id);
      if (budget <= 0) {
        running--;
        if (running === 0) opts.onAllDone?.();
        return;
      }
      if (!n.alive || n.paused) {
        // The node is down: this client waits for it (a paused node's clients are paused with it).
        this.schedule(10, () => loop(id, clientId));
        return;
      }
      budget--;
      const key = this.cfg.keys[this.rng.int(0, this.cfg.keys.length)]!;
      const r = this.rng.next();
      let input: KvInput;
      if (opts.flushRate !== undefined && opts.flushRate > 0 && this.rng.chance(opts.flushRate)) input = { kind: 'del', key: `${FLUSH_KEY_PREFIX}${this.shardOf(key)}` };
      else if (r < opts.readRate) input = { kind: 'get', key };
      else if (r < opts.readRate + opts.setRate) {
        const value = this.rng.chance(0.05) ? `x${this.rng.int(0, 10)}` : String(this.rng.int(0, 1000));
        input = { kind: 'set', key, value };
      } else input = { kind: 'incr', key };
      const inc = n.inc;
      const h = this.issue(id, input, clientId, () => this.schedule(this.rng.int(0, opts.thinkMaxMs + 1), () => loop(id, clientId)));
      // A crash ends the node's operations without an answer: the client starts over once the node is back.
      const watch = (): void => {
        if (h.done) return;
        if (n.inc !== inc) {
          this.schedule(10, () => loop(id, clientId));
          return;
        }
        this.schedule(50, watch);
      };
      this.schedule(50, watch);
    };
    for (const n of this.nodes) {
      for (let c = 0; c < opts.clientsPerNode; c++) {
        running++;
        const clientId = n.id * 100 + c;
        this.schedule(this.rng.int(0, 10), () => loop(n.id, clientId));
      }
    }
  }

  /** Injects random faults every `everyMinMs..everyMaxMs` until stop() is called. Returns stop. */
  startFaults(opts: {
    everyMinMs: number;
    everyMaxMs: number;
    leaderChange: number;
    partition: number;
    pause: number;
    crash: number;
    unawareMaxMs: number;
    faultMaxMs: number;
  }): () => void {
    let stopped = false;
    const pickNode = (): SimNode => this.nodes[this.rng.int(0, this.nodes.length)]!;
    const healthy = (n: SimNode): boolean => n.alive && !n.paused && !n.isolated;
    const maybeMoveLeaderOff = (id: NodeId, untilMs: number): void => {
      // Raft elects another leader when the leader is unreachable for an election timeout (usually).
      for (const s of this.shards) {
        if (s.leader !== id || !this.rng.chance(0.7)) continue;
        const after = this.rng.int(50, 200);
        if (after >= untilMs) continue;
        const term = s.term;
        this.schedule(after, () => {
          if (s.term === term && s.leader === id) this.depose(s, { unawareMs: this.rng.int(0, opts.unawareMaxMs + 1) });
        });
      }
    };
    const inject = (): void => {
      if (stopped) return;
      const total = opts.leaderChange + opts.partition + opts.pause + opts.crash;
      let r = this.rng.next() * total;
      const faulty = this.nodes.filter((n) => !healthy(n)).length;
      if ((r -= opts.leaderChange) < 0) {
        const s = this.shards[this.rng.int(0, this.shards.length)]!;
        if (s.leader !== null) this.depose(s, { unawareMs: this.rng.chance(0.5) ? 0 : this.rng.int(0, opts.unawareMaxMs + 1) });
      } else if (faulty < 1) {
        const n = pickNode();
        const ms = this.rng.int(20, opts.faultMaxMs + 1);
        if ((r -= opts.partition) < 0) {
          this.partition(n.id, ms);
          maybeMoveLeaderOff(n.id, ms);
        } else if ((r -= opts.pause) < 0) {
          this.pause(n.id, ms);
          maybeMoveLeaderOff(n.id, ms);
        } else {
          this.crash(n.id);
          this.schedule(ms, () => this.restart(n.id));
        }
      }
      this.schedule(this.rng.int(opts.everyMinMs, opts.everyMaxMs + 1), inject);
    };
    this.schedule(this.rng.int(opts.everyMinMs, opts.everyMaxMs + 1), inject);
    return () => {
      stopped = true;
    };
  }

  /** Ends every fault: heals partitions, resumes paused nodes, restarts crashed ones, makes the network clean. */
  healAll(): void {
    this.net.loss = 0;
    this.net.reorder = 0;
    this.net.stall = 0;
    for (const n of this.nodes) {
      this.heal(n.id);
      this.resume(n.id);
      this.restart(n.id);
    }
  }

  /** Every home still up must have answered, within `withinMs`, everything it was asked. */
  checkAllAnswered(withinMs = 2_000): void {
    for (const s of this.shards) {
      for (const slot of s.slots) {
        if (slot.crashed) continue;
        for (const o of slot.outstanding.values()) {
          if (this.now - o.since > withinMs) {
            throw new SimViolation('answered-once', `home of shard ${s.id} term ${slot.term} on node ${slot.node} never answered a ${o.what} delivered at ${o.since}`);
          }
        }
      }
    }
  }

  /** Write-back: loss and flush counters of the run (every node incarnation and every home). */
  wbInfo(): WbRunInfo {
    const loss = this.lossReport();
    const caches = [...this.retiredCaches, ...this.nodes.map((n) => n.cache)];
    const homes = [...new Set([...this.retiredHomes, ...this.shards.flatMap((s) => s.slots.map((x) => x.home))])];
    const sumN = (k: keyof SimNodeCache['stats']): number => caches.reduce((a, c) => a + c.stats[k], 0);
    const sumH = (k: keyof SimHome['stats']): number => homes.reduce((a, h) => a + h.stats[k], 0);
    return {
      flushMs: this.cfg.flushMs,
      lostBy: loss.causes,
      lostWrites: loss.lost.length,
      lostObservers: loss.observers.length,
      countedLost: sumN('writebacksLost'),
      flushesSent: sumN('flushesSent'),
      flushesAccepted: sumN('flushesAccepted'),
      writebacksInAnswers: sumN('writebacksInAnswers'),
      downgradesAcked: sumH('downgradesAcked'),
      downgradesLapsed: sumH('downgradesLapsed'),
      homeWritebacks: sumH('writebacks'),
    };
  }

  /** Folds the homes' and nodes' counters into `stats`. */
  collectStats(): SimStats {
    const homes = [...this.retiredHomes, ...this.shards.flatMap((s) => s.slots.map((x) => x.home))];
    const seen = new Set<SimHome>();
    let grantsE = 0;
    let grantsS = 0;
    let refusals = 0;
    let skipped = 0;
    for (const h of homes) {
      if (seen.has(h)) continue;
      seen.add(h);
      grantsE += h.stats.grantsE;
      grantsS += h.stats.grantsS;
      refusals += h.stats.leaseRefusals;
      skipped += h.stats.writerInvalidationsSkipped;
    }
    this.stats.writerInvSkipped = skipped;
    this.stats.installs = this.retiredInstalls + this.nodes.reduce((a, n) => a + n.cache.stats.installs, 0);
    this.stats.writesUnallocated = [...this.retiredCaches, ...this.nodes.map((n) => n.cache)].reduce((a, c) => a + c.stats.writesUnallocated, 0);
    this.stats.grantsE = grantsE;
    this.stats.grantsS = grantsS;
    this.stats.leaseRefusals = refusals;
    this.stats.pendingWrites = this.history().filter((o) => o.ret === Infinity).length;
    if (this.cfg.writeBack) {
      const loss = this.lossReport();
      this.stats.lostWrites = loss.lost.length;
      this.stats.lostObservers = loss.observers.length;
    }
    return this.stats;
  }

  // ---------------------------------------------------------------------------------------------- internals

  private buildCache(n: SimNode): void {
    if (n.cache !== undefined) {
      this.retiredInstalls += n.cache.stats.installs;
      this.retiredCaches.push(n.cache);
    }
    const inc = n.inc;
    const io = {
      now: () => this.clock(n.id),
      request: (shard: number, req: NodeRequest<SimOp>, cb: (a: HomeAnswer<string, SimResult> | CoherenceFailure) => void) => this.request(n, inc, shard, req, cb),
      // Write-back: SimOp semantics on the line's value (as memory applies them: CacheSim.apply); FLUSHALL never runs
      // locally.
      execLocal: (_key: CacheKey, op: SimOp, current: string | null): { result: SimResult; value: string | null } | null => {
        if (op.kind === 'set') return { result: {}, value: op.value };
        if (op.kind === 'incr') {
          if (current !== null && !INT_RE.test(current)) return { result: { error: 'NOTINT' }, value: current };
          const nv = String((current === null ? 0 : Number(current)) + 1);
          return { result: { value: nv }, value: nv };
        }
        return null;
      },
    };
    const cache: SimNodeCache = new CacheNode<string, SimOp, SimResult>(
      {
        self: n.id,
        leaseMs: this.cfg.leaseMs,
        renewMs: this.cfg.renewMs,
        evictedBatchMax: this.cfg.evictedBatchMax,
        ...(this.cfg.writeBack ? { writeBack: true, flushMs: this.cfg.flushMs } : {}),
        ...(this.cfg.refillMax > 0 ? { refillMax: this.cfg.refillMax } : {}),
        writeAllocate: this.cfg.writeAllocate,
      },
      n.store,
      io,
    );
    n.store.onEvict = (key, line) => {
      this.stats.evictions++;
      cache.onEvicted(key, line);
    };
    n.cache = cache;
  }

  /** Runs `fn` on node `id` (incarnation `inc` if given): now, queued while paused, dropped if down. */
  private onNode(id: NodeId, inc: number | undefined, fn: () => void): void {
    const n = this.node(id);
    if (!n.alive || (inc !== undefined && n.inc !== inc)) return;
    if (n.paused) n.backlog.push(fn);
    else fn();
  }

  private tickLoop(n: SimNode): void {
    if (n.alive && !n.paused) this.tickNode(n);
    this.schedule(this.cfg.tickMs, () => this.tickLoop(n));
  }

  private tickNode(n: SimNode): void {
    const before = n.cache.stats.lapsedLines;
    n.cache.tick();
    this.stats.lapsedLines += n.cache.stats.lapsedLines - before;
    for (const s of this.shards) {
      for (const slot of s.slots) if (slot.node === n.id && !slot.closed) slot.home.tick();
    }
  }

  private cut(from: NodeId, to: NodeId): boolean {
    return from !== to && (this.node(from).isolated || this.node(to).isolated);
  }

  /** Carries `fn` from node `from` to node `to` over the network (or locally when from === to). */
  private send(kind: MsgKind, from: NodeId, to: NodeId, shard: number, key: string | undefined, toInc: number | undefined, fn: () => void): void {
    const hooked = this.netHook?.({ kind, from, to, shard, ...(key !== undefined ? { key } : {}) });
    if (hooked === 'drop') {
      this.stats.messagesLost++;
      this.trace(() => `${kind} ${from}->${to} ${key ?? ''} dropped by hook`);
      return;
    }
    let delay: number;
    if (hooked !== undefined) delay = hooked;
    else if (from === to) delay = 0;
    else {
      if (this.cut(from, to) || this.rng.chance(this.net.loss)) {
        this.stats.messagesLost++;
        this.trace(() => `${kind} ${from}->${to} ${key ?? ''} lost`);
        return;
      }
      delay = this.rng.int(this.net.delayMinMs, this.net.delayMaxMs + 1);
      if (this.rng.chance(this.net.reorder)) delay *= this.rng.int(2, 6);
      if (this.rng.chance(this.net.stall)) delay += this.rng.int(100, 401);
    }
    this.schedule(delay, () => {
      if (this.cut(from, to)) {
        this.stats.messagesLost++;
        this.trace(() => `${kind} ${from}->${to} ${key ?? ''} cut in flight`);
        return;
      }
      this.onNode(to, toInc, fn);
    });
  }

  private request(n: SimNode, inc: number, shard: number, req: NodeRequest<SimOp>, cb: (a: HomeAnswer<string, SimResult> | CoherenceFailure) => void): void {
    let done = false;
    const finish = (a: HomeAnswer<string, SimResult> | CoherenceFailure): void => {
      if (done) return;
      done = true;
      cb(a);
    };
    this.schedule(this.cfg.requestTimeoutMs, () =>
      this.onNode(n.id, inc, () => {
        if (!done) this.trace(() => `node ${n.id} ${req.t} ${reqKey(req) ?? ''} timed out`);
        finish(fail('TRYAGAIN', 'request timed out'));
      }),
    );
    const target = n.hints[shard] ?? this.nodes[this.rng.int(0, this.nodes.length)]!.id;
    const kind: MsgKind = `req-${req.t}`;
    // A flush carries the line's data as it is now: which of its grant's local writes that is. A takeover flush of
    // buffered data carries the new home's epoch and gen 0, not its grant's (cache-node.ts WbEntry.takeover).
    let src: WbSource | undefined;
    if (req.t === 'flush') {
      const line = n.store.peek(req.key);
      const b = n.cache.bufferedOf(req.key);
      const fromStore = line !== undefined && line.state === LineState.M && line.gen === req.gen && line.value === req.value && n.cache.leaseOf(shard)?.epoch === req.epoch;
      const fromBuffer = !fromStore && b !== undefined && (b.gen === req.gen || (req.gen === 0 && b.epoch < req.epoch));
      src = this.wbSource(n, req.shard, fromBuffer ? b.epoch : req.epoch, fromBuffer ? b.gen : req.gen, req.key, req.value as string | null);
    }
    this.trace(() => `node ${n.id} -> ${target} ${req.t} ${reqKey(req) ?? ''}${req.t === 'renew' ? ` evicted=${JSON.stringify(req.evicted)}` : ''}${req.t === 'flush' ? ` epoch ${req.epoch} gen ${req.gen} value ${JSON.stringify(req.value)} (${src!.index} local writes)` : ''}`);
    this.send(kind, n.id, target, shard, reqKey(req), undefined, () => this.deliverRequest(target, n, inc, shard, req, finish, src));
  }

  /** Runs `fn` (a home's handling of a message) with the write-back sources it may write data of. */
  private withSources(srcs: Map<string, WbSource> | null, fn: () => void): void {
    this.wbCtx = srcs;
    try {
      fn();
    } finally {
      this.wbCtx = null;
    }
  }

  /** Write-back: the sources of the data an answer to an invalidation or downgrade carries (now, as it leaves `n`). */
  private ackSources(n: SimNode, shard: number, epoch: number, data: DirtyItem[] | undefined): Map<string, WbSource> | null {
    if (data === undefined || data.length === 0) return null;
    const m = new Map<string, WbSource>();
    for (const [key, gen, value] of data) {
      const src = this.wbSource(n, shard, epoch, gen, key, value as string | null);
      m.set(key, src);
      n.handed.set(key, value as string | null);
      const log = this.grants.get(src.gk)!;
      if (src.index > log.handedIndex) {
        log.handedAt = this.now;
        log.handedIndex = src.index;
      }
    }
    return m;
  }

  /** A request reached node `at`: its open home of the shard handles it, or the node answers NOTLEADER. */
  private deliverRequest(
    at: NodeId,
    from: SimNode,
    fromInc: number,
    shard: number,
    req: NodeRequest<SimOp>,
    finish: (a: HomeAnswer<string, SimResult> | CoherenceFailure) => void,
    src: WbSource | undefined,
  ): void {
    const s = this.shards[shard]!;
    const slot = s.slots.find((x) => x.node === at && !x.closed);
    const key = reqKey(req);
    if (slot === undefined) {
      this.send('notleader', at, from.id, shard, key, fromInc, () => {
        from.hints[shard] = s.leader;
        finish(fail('NOTLEADER', `node ${at} does not lead shard ${shard}`));
      });
      return;
    }
    const reqId = this.nextReqId++;
    slot.outstanding.set(reqId, { since: this.now, what: `${req.t} ${key ?? ''} of node ${from.id}` });
    let answered = false;
    const reply = (a: HomeAnswer<string, SimResult> | CoherenceFailure): void => {
      if (answered) throw new SimViolation('answered-once', `home of shard ${shard} term ${slot.term} answered a ${req.t} of node ${from.id} twice`);
      answered = true;
      slot.outstanding.delete(reqId);
      if (a.ok && req.t === 'write' && !this.cfg.writeBack) this.answeredWrite(req.op);
      this.trace(() => `home ${shard}@${slot.term} on ${at} answers ${req.t} ${key ?? ''} of node ${from.id}: ${describeAnswer(a)}`);
      this.send(`ans-${req.t}`, at, from.id, shard, key, fromInc, () => finish(a));
    };
    switch (req.t) {
      case 'gets':
        slot.home.getS(req, reply);
        break;
      case 'write':
        slot.home.write(req, reply);
        break;
      case 'renew':
        slot.home.renew(req, reply);
        break;
      case 'flush':
        this.withSources(src === undefined ? null : new Map([[req.key, src]]), () => slot.home.flushLine(req as FlushRequest<string>, reply));
        break;
    }
  }

  private isLeader(slot: HomeSlot): boolean {
    const s = this.shards[slot.shard]!;
    return s.leader === slot.node && s.term === slot.term && !slot.crashed;
  }

  /**
   * A memory call's check point: stalls while the home's node cannot run Raft; `at` runs at the check point and
   * returns the callback to deliver later. Write callbacks (`inOrder`) reach the home in the order memory applied
   * the writes, as Raft's apply loop resolves proposals (CacheHome relies on it: see the report in the test file).
   */
  private memoryCall(slot: HomeSlot, inOrder: boolean, at: () => () => void, hook: { kind: 'read' | 'confirm' | 'write' | 'writeback'; key?: string }): void {
    let d = this.rng.int(this.cfg.memDelayMinMs, this.cfg.memDelayMaxMs + 1);
    let d1 = this.rng.int(0, d + 1);
    const forced = this.memHook?.({ ...hook, shard: slot.shard, home: slot.node });
    if (forced !== undefined) {
      d = forced;
      d1 = forced;
    }
    const check = (): void => {
      if (slot.crashed) return;
      const n = this.node(slot.node);
      if (n.paused || n.isolated) {
        this.schedule(5, check);
        return;
      }
      apply();
    };
    const apply = (): void => {
      const deliver = at();
      let when = this.now + d - d1;
      if (inOrder) {
        when = Math.max(when, slot.lastWriteReplyAt);
        slot.lastWriteReplyAt = when;
      }
      this.schedule(when - this.now, () => this.onNode(slot.node, slot.nodeInc, deliver));
    };
    if (inOrder && this.cfg.writeBack) {
      // Raft applies proposals in the order they were made, also across a stall (HomeSlot.applyQueue): a write-back
      // overtaken by an older one of the same key would put older data back. (Write-through runs keep the original
      // scheduling below, where each stalled check point retries on its own and two stalled writes can apply out of
      // order; kept so that their seeds replay as before.)
      const at1 = Math.max(this.now + d1, slot.lastWriteCheckAt);
      slot.lastWriteCheckAt = at1;
      const entry = { due: false, run: apply };
      slot.applyQueue.push(entry);
      this.schedule(at1 - this.now, () => {
        entry.due = true;
        this.drainApplies(slot);
      });
    } else if (inOrder) {
      const at1 = Math.max(this.now + d1, slot.lastWriteCheckAt);
      slot.lastWriteCheckAt = at1;
      this.schedule(at1 - this.now, check);
    } else this.schedule(d1, check);
  }

  /** Runs the due check points at the head of the home's apply queue, in order, while its node can run Raft. */
  private drainApplies(slot: HomeSlot): void {
    for (;;) {
      const head = slot.applyQueue[0];
      if (head === undefined || !head.due) return;
      if (slot.crashed) {
        slot.applyQueue.length = 0;
        return;
      }
      const n = this.node(slot.node);
      if (n.paused || n.isolated) {
        if (!slot.applyRetry) {
          slot.applyRetry = true;
          this.schedule(5, () => {
            slot.applyRetry = false;
            this.drainApplies(slot);
          });
        }
        return;
      }
      slot.applyQueue.shift();
      head.run();
    }
  }

  private createHome(s: SimShard, at: SimNode): HomeSlot {
    const cfg: HomeConfig = {
      self: at.id,
      shard: s.id,
      epoch: s.term,
      leaseMs: this.cfg.leaseMs,
      marginMs: this.cfg.marginMs,
      invRetryMs: this.cfg.invRetryMs,
      directoryEntriesMax: this.cfg.directoryEntriesMax,
      ...(this.cfg.writeBack ? { writeBack: true } : {}),
    };
    const slot: HomeSlot = {
      shard: s.id,
      term: s.term,
      node: at.id,
      nodeInc: at.inc,
      home: undefined as unknown as SimHome,
      closed: false,
      crashed: false,
      outstanding: new Map(),
      proposed: new Set(),
      lastWriteReplyAt: 0,
      lastWriteCheckAt: 0,
      applyQueue: [],
      applyRetry: false,
    };
    slot.home = new CacheHome<string, SimOp, SimResult>(cfg, {
      now: () => this.clock(at.id),
      send: (to: NodeId, msg: InvMessage | DownMessage) => {
        if (msg.t === 'down') {
          // Write-through: not waited for, delivered like any message, lost or late like any other. Write-back: the
          // home waits for the answer (it carries a Modified line's data), which travels back like an invalidation's.
          this.trace(() => `home ${s.id}@${slot.term} on ${at.id} -> node ${to} down ${JSON.stringify(msg.items)}`);
          this.send('down', at.id, to, s.id, msg.items[0]?.[0], undefined, () => {
            const target = this.node(to);
            const ack: DownAck = target.cache.onDowngrade(msg);
            if (!this.cfg.writeBack) return;
            const srcs = this.ackSources(target, s.id, msg.epoch, ack.data);
            this.trace(() => `node ${to} answers down ${JSON.stringify(msg.items)}${ack.data !== undefined ? ` with data ${JSON.stringify(ack.data)}` : ''}`);
            this.send('downack', to, at.id, s.id, msg.items[0]?.[0], slot.nodeInc, () => {
              if (!slot.crashed) this.withSources(srcs, () => slot.home.onDownAck(ack));
            });
          });
          return;
        }
        this.stats.invalidations += msg.items.length;
        this.trace(() => `home ${s.id}@${slot.term} on ${at.id} -> node ${to} inv ${JSON.stringify(msg.items)}`);
        this.send('inv', at.id, to, s.id, msg.items[0]?.[0], undefined, () => {
          const target = this.node(to);
          const ack: InvAck = target.cache.onInvalidate(msg);
          const srcs = this.cfg.writeBack ? this.ackSources(target, s.id, msg.epoch, ack.data) : null;
          if (ack.data !== undefined) this.trace(() => `node ${to} answers inv ${JSON.stringify(msg.items)} with data ${JSON.stringify(ack.data)}`);
          this.send('ack', to, at.id, s.id, msg.items[0]?.[0], slot.nodeInc, () => {
            if (!slot.crashed) this.withSources(srcs, () => slot.home.onAck(ack));
          });
        });
      },
      readMemory: (key: CacheKey, cb: (r: MemoryRead<string>) => void) => {
        this.memoryCall(slot, false, () => {
          let r: MemoryRead<string>;
          if (!this.isLeader(slot)) r = fail('TRYAGAIN', `home ${s.id}@${slot.term} is not the leader`);
          else r = { ok: true, value: s.mem.get(key) ?? null, cacheable: !this.rng.chance(this.cfg.uncacheableRate) };
          return () => cb(r);
        }, { kind: 'read', key });
      },
      // A deposed home would peek its own (older) state; the simulator's memory may already hold a newer home's
      // writes, which no read of the old home may show: it peeks only while it leads.
      peekMemory: (key: CacheKey): MemoryRead<string> | null =>
        this.isLeader(slot) ? { ok: true, value: s.mem.get(key) ?? null, cacheable: !this.rng.chance(this.cfg.uncacheableRate) } : null,
      confirm: (cb: (r: { ok: true } | CoherenceFailure) => void) => {
        this.memoryCall(slot, false, () => {
          const r: { ok: true } | CoherenceFailure = this.isLeader(slot) ? { ok: true } : fail('TRYAGAIN', `home ${s.id}@${slot.term} is not the leader`);
          return () => cb(r);
        }, { kind: 'confirm' });
      },
      // A Modified line's data, replicated in order with the writes (a leader change settles it like them).
      writeBack: (key: CacheKey, value: string | null, cb: (r: { ok: true } | CoherenceFailure) => void) => {
        const src = this.wbCtx?.get(key);
        if (src === undefined) throw new SimViolation('write-back-data', `home ${s.id}@${slot.term} writes back ${key}=${JSON.stringify(value)} that no flush or answer being handled carries`);
        this.checkWbHandoff(key, value, src, slot);
        const op: WbOp = { kind: 'wb', key, value, gk: src.gk, index: src.index, id: 0, from: src.node };
        const rec: WriteRec = { op, term: slot.term, want: undefined, state: this.isLeader(slot) ? 'proposed' : 'dropped', result: undefined, value: undefined };
        if (rec.state === 'proposed') slot.proposed.add(rec);
        this.trace(() => `home ${s.id}@${slot.term} hands write-back ${key}=${JSON.stringify(value)} (${src.gk} #${src.index}) to memory`);
        this.memoryCall(slot, true, () => {
          slot.proposed.delete(rec);
          let ok = false;
          if (rec.state === 'proposed' && this.isLeader(slot)) {
            this.apply(s, rec);
            rec.state = 'applied';
            ok = true;
          } else if (rec.state === 'proposed') rec.state = 'dropped';
          return () => cb(ok ? { ok: true } : fail('TRYAGAIN', `write-back of ${key} ${rec.state === 'applied-late' ? 'committed by the next leader' : 'lost'} with leadership of ${s.id}@${slot.term}`));
        }, { kind: 'writeback', key });
      },
      writeMemory: (op: SimOp, want: CacheKey | undefined, cb: (r: MemoryWrite<string, SimResult>) => void) => {
        this.checkHandoff(op, slot);
        const rec: WriteRec = { op, term: slot.term, want, state: this.isLeader(slot) ? 'proposed' : 'dropped', result: undefined, value: undefined };
        if (rec.state === 'proposed') slot.proposed.add(rec);
        this.memoryCall(slot, true, () => {
          slot.proposed.delete(rec);
          let r: MemoryWrite<string, SimResult>;
          if (rec.state === 'proposed' && this.isLeader(slot)) {
            this.apply(s, rec);
            rec.state = 'applied';
            r = { ok: true, result: rec.result!, ...(rec.value !== undefined ? { value: rec.value } : {}) };
          } else {
            if (rec.state === 'proposed') rec.state = 'dropped';
            r = fail('TRYAGAIN', `write ${op.id} ${rec.state === 'applied-late' ? 'committed by the next leader' : 'lost'} with leadership of ${s.id}@${slot.term}`);
          }
          return () => cb(r);
        }, { kind: 'write', key: op.key });
        return () => rec.state === 'applied' || rec.state === 'applied-late';
      },
    });
    s.slots.push(slot);
    return slot;
  }

  private apply(s: SimShard, rec: WriteRec): void {
    const op = rec.op;
    if (op.kind === 'wb') {
      if (op.value === null) s.mem.delete(op.key);
      else s.mem.set(op.key, op.value);
      const log = this.grants.get(op.gk)!;
      log.homed = Math.max(log.homed, op.index);
      this.stats.writebacksApplied++;
      this.trace(() => `memory ${s.id} applies write-back ${op.key}=${JSON.stringify(op.value)} (${op.gk} #${op.index})`);
      return;
    }
    // A write through the home: a line excused for serving its handed-over data must have been invalidated first.
    for (const n of this.nodes) {
      if (op.kind === 'flush') for (const k of this.keysOf(op.shard)) n.handed.delete(k);
      else n.handed.delete(op.key);
    }
    if (!this.cfg.writeBack && op.kind !== 'flush') {
      let list = this.unanswered.get(op.key);
      if (list === undefined) this.unanswered.set(op.key, (list = []));
      list.push({ id: op.id, term: rec.term, before: s.mem.get(op.key) ?? null });
    }
    if (op.kind === 'set') {
      s.mem.set(op.key, op.value);
      rec.result = {};
    } else if (op.kind === 'flush') {
      s.mem.clear();
      rec.result = {};
    } else {
      const cur = s.mem.get(op.key) ?? null;
      if (cur === null || INT_RE.test(cur)) {
        const nv = String((cur === null ? 0 : Number(cur)) + 1);
        s.mem.set(op.key, nv);
        rec.result = { value: nv };
      } else rec.result = { error: 'NOTINT' };
    }
    rec.value = rec.want === undefined || this.rng.chance(this.cfg.wantUndefinedRate) ? undefined : (s.mem.get(rec.want) ?? null);
    this.applied.set(op.id, rec.result);
    this.appliedAt.set(op.id, this.now);
    this.trace(() => `memory ${s.id} applies ${op.kind}(${op.key}${op.kind === 'set' ? `, ${op.value}` : ''})#${op.id} from node ${op.from} -> ${JSON.stringify(rec.result)}`);
  }

  /** Leadership of `s` ends now: unapplied writes of its homes are settled, the old home closes after unawareMs. */
  private depose(s: SimShard, opts: { unawareMs: number; to?: NodeId | undefined; electionDelayMs?: number | undefined; hintsAfterMs?: number | undefined }): void {
    if (s.leader === null) return;
    const old = s.slots.find((x) => x.term === s.term && x.node === s.leader);
    this.stats.leaderChanges++;
    s.deposedAt.push(this.now);
    this.trace(() => `shard ${s.id} leader ${s.leader}@${s.term} deposed (unaware ${opts.unawareMs} ms)`);
    for (const slot of s.slots) {
      for (const rec of slot.proposed) {
        if (rec.state !== 'proposed') continue;
        if (this.rng.chance(0.5)) {
          this.apply(s, rec);
          rec.state = 'applied-late';
        } else rec.state = 'dropped';
      }
      slot.proposed.clear();
    }
    s.leader = null;
    if (old !== undefined && !old.crashed) {
      const close = (): void => {
        if (old.closed) return;
        old.closed = true;
        this.retiredHomes.push(old.home);
        this.trace(() => `home ${s.id}@${old.term} on ${old.node} closed`);
        old.home.close(fail('NOTLEADER', `leadership of shard ${s.id} term ${old.term} ended`));
      };
      this.schedule(opts.unawareMs, () => this.onNode(old.node, old.nodeInc, close));
    }
    const delay = opts.electionDelayMs ?? this.rng.int(this.cfg.electionDelayMinMs, this.cfg.electionDelayMaxMs + 1);
    const term = s.term;
    // Scenario tests pass electionDelayMs 0 to have the new leader at once (before any other event).
    if (opts.electionDelayMs === 0) this.elect(s, opts.to, false, opts.hintsAfterMs);
    else {
      this.schedule(delay, () => {
        if (s.term === term && s.leader === null) this.elect(s, opts.to, false, opts.hintsAfterMs);
      });
    }
  }

  /** `to` (or a random healthy node, retried until one exists) becomes the leader of `s` with the next term. */
  private elect(s: SimShard, to: NodeId | undefined, initial: boolean, hintsAfterMs?: number): void {
    const ok = (n: SimNode): boolean => n.alive && !n.paused && !n.isolated;
    let n = to !== undefined ? this.node(to) : undefined;
    if (n === undefined || !ok(n)) {
      const healthy = this.nodes.filter(ok);
      if (healthy.length === 0) {
        this.schedule(20, () => {
          if (s.leader === null) this.elect(s, to, initial, hintsAfterMs);
        });
        return;
      }
      n = healthy[this.rng.int(0, healthy.length)]!;
    }
    s.term++;
    s.leader = n.id;
    // A node elected again closes its own older home of the shard first (it knows its old term ended).
    for (const slot of s.slots) {
      if (slot.node === n.id && !slot.closed) {
        slot.closed = true;
        this.retiredHomes.push(slot.home);
        slot.home.close(fail('NOTLEADER', `leadership of shard ${s.id} term ${slot.term} ended`));
      }
    }
    // Homes that ended and owe no answer are done with (keeps per-tick scans short).
    s.slots = s.slots.filter((x) => !x.closed || (!x.crashed && x.outstanding.size > 0));
    this.createHome(s, n);
    this.trace(() => `shard ${s.id} leader ${n.id}@${s.term} elected`);
    const leader = n.id;
    for (const other of this.nodes) {
      if (initial || hintsAfterMs === 0) other.hints[s.id] = leader;
      else {
        const term = s.term;
        this.schedule(hintsAfterMs ?? this.rng.int(0, 101), () => {
          if (s.term === term) other.hints[s.id] = leader;
        });
      }
    }
  }

  /** write-handoff: checked when a home hands a write to memory. */
  private checkHandoff(op: SimOp, slot: HomeSlot): void {
    if (!this.isLeader(slot)) return; // a deposed home's write never applies
    if (this.cfg.writeBack) {
      // Also Modified data in a write-back buffer; the writer's own line is excused while its write is out (it serves
      // nothing of the key then, and `served` shows nothing).
      for (const key of op.kind === 'flush' ? this.keysOf(op.shard) : [op.key]) {
        this.lastHandoffAt.set(key, this.now);
        for (const n of this.nodes) {
          const sv = this.served(n, key);
          if (sv === undefined) continue;
          throw new SimViolation(
            'write-handoff',
            `home ${slot.shard}@${slot.term} hands ${op.kind}(${op.key})#${op.id} from node ${op.from} to memory while node ${n.id} holds a servable ` +
              `${sv.buffered ? 'buffered ' : ''}${LINE_STATE_NAMES[sv.state]} line ${key}=${JSON.stringify(sv.value)} epoch ${sv.epoch} gen ${sv.gen} (lease until ${n.cache.leaseOf(this.shardOf(key))?.until.toFixed(1)}, node clock ${this.clock(n.id).toFixed(1)})`,
          );
        }
      }
      return;
    }
    // Write-through: a keyed write goes to memory first and invalidates after it applied (checkNoStaleHit allows the
    // old value while it is unanswered); a keyless one (FLUSHALL) still invalidates first.
    if (op.kind !== 'flush') return;
    for (const key of this.keysOf(op.shard)) {
      for (const n of this.nodes) {
        if (!n.alive) continue;
        const line = n.store.peek(key);
        if (line === undefined || n.cache.stateOf(key, line.shard) === LineState.I) continue;
        throw new SimViolation(
          'write-handoff',
          `home ${slot.shard}@${slot.term} hands ${op.kind}(${op.key})#${op.id} from node ${op.from} to memory while node ${n.id} holds a servable ` +
            `${LINE_STATE_NAMES[line.state]} line ${key}=${JSON.stringify(line.value)} gen ${line.gen} (lease until ${n.cache.leaseOf(line.shard)?.until.toFixed(1)}, node clock ${this.clock(n.id).toFixed(1)})`,
        );
      }
    }
  }

  /**
   * write-handoff of a write-back: no node but the one whose data it is holds a servable line of the key, and that
   * one holds it Modified (it may have written again since the data left), or holds exactly this value (S after a
   * downgrade, E after an accepted flush). One exception: a repeat of data memory already holds (an answer to a later
   * invalidation of the same grant carries the handed-over data again: cache-node.ts handedOver) changes nothing, so
   * lines equal to it may be held.
   */
  private checkWbHandoff(key: string, value: string | null, src: WbSource, slot: HomeSlot): void {
    if (!this.isLeader(slot)) return;
    // stale-write-back: every write through a home after a local write takes that line's data home first (an
    // invalidation), so data of a local write made before the last write of the key handed to memory is old.
    const wrote = this.grants.get(src.gk)!.writes[src.index - 1]!.call;
    const last = this.lastHandoffAt.get(key) ?? Number.NEGATIVE_INFINITY;
    if (last >= wrote) {
      throw new SimViolation(
        'stale-write-back',
        `home ${slot.shard}@${slot.term} hands write-back ${key}=${JSON.stringify(value)} (${src.gk} #${src.index}, written at ${wrote}) to memory after a write of ${key} was handed to memory at ${last}`,
      );
    }
    const repeat = this.memory(key) === value;
    for (const n of this.nodes) {
      const sv = this.served(n, key);
      if (sv === undefined) continue;
      if (n.id === src.node && n.inc === src.inc && (sv.state === LineState.M || sv.value === value)) continue;
      if (repeat && sv.state === LineState.S && sv.value === value) continue;
      throw new SimViolation(
        'write-handoff',
        `home ${slot.shard}@${slot.term} hands write-back ${key}=${JSON.stringify(value)} (${src.gk} #${src.index}) to memory while node ${n.id} holds a servable ` +
          `${sv.buffered ? 'buffered ' : ''}${LINE_STATE_NAMES[sv.state]} line ${key}=${JSON.stringify(sv.value)} epoch ${sv.epoch} gen ${sv.gen}`,
      );
    }
  }

  /**
   * Write-back, after every event: no-stale-hit and exclusivity. The truth of a key is the value of a Modified line
   * (or buffered Modified data) some live node could serve; else a value a node handed over in an answer and still
   * serves from its downgraded S line (memory is about to get it: readers wait for it); else memory. Every servable
   * line equals the truth; at most one node holds a servable E or M line of a key, and then nobody else holds a
   * servable line of it (an E line may become M at any moment, silently). Also records lease lapses (the
   * documented cause of lost Modified data: see lossReport).
   */
  private checkCoherenceWb(): void {
    for (const n of this.nodes) {
      if (!n.alive) continue;
      const now = this.clock(n.id);
      for (let shard = 0; shard < this.shards.length; shard++) {
        const l = n.cache.leaseOf(shard);
        const seen = n.leaseSeen[shard]!;
        if (seen.live && (seen.until <= now || l === undefined || l.epoch !== seen.epoch || l.until <= now)) n.lapses[shard]!.push(this.now);
        if (l !== undefined && seen.epoch !== -1 && l.epoch !== seen.epoch) n.homeChanges[shard]!.push(this.now);
        seen.live = l !== undefined && l.until > now;
        seen.epoch = l?.epoch ?? -1;
        seen.until = l?.until ?? 0;
      }
      // Custody of Modified data: the last time the node held each grant's data (an M line, or buffered).
      for (const key of this.cfg.keys) {
        const shard = this.shardOf(key);
        const line = n.store.peek(key);
        const epoch = n.cache.leaseOf(shard)?.epoch;
        if (line !== undefined && line.state === LineState.M && epoch !== undefined) this.held(n, shard, epoch, line.gen, key);
        const b = n.cache.bufferedOf(key);
        if (b !== undefined) this.held(n, b.shard, b.epoch, b.gen, key);
      }
    }
    for (const key of this.cfg.keys) {
      let owner: { n: SimNode; sv: NonNullable<ReturnType<CacheSim['served']>> } | null = null;
      const held: { n: SimNode; sv: NonNullable<ReturnType<CacheSim['served']>> }[] = [];
      for (const n of this.nodes) {
        const sv = this.served(n, key);
        if (sv === undefined) continue;
        const h = { n, sv };
        held.push(h);
        if (sv.state === LineState.E || sv.state === LineState.M) owner = h;
      }
      if (held.length === 0) continue;
      const describe = (h: { n: SimNode; sv: NonNullable<ReturnType<CacheSim['served']>> }): string =>
        `node ${h.n.id} ${h.sv.buffered ? 'buffered ' : ''}${LINE_STATE_NAMES[h.sv.state]} ${key}=${JSON.stringify(h.sv.value)} (epoch ${h.sv.epoch} gen ${h.sv.gen}, lease until ` +
        `${h.n.cache.leaseOf(this.shardOf(key))?.until.toFixed(1)}, node clock ${this.clock(h.n.id).toFixed(1)})`;
      if (owner !== null && held.length > 1) {
        throw new SimViolation('exclusive', `${describe(owner)} is exclusive but ${held.filter((h) => h !== owner).map(describe).join(', ')} also servable`);
      }
      const mem = this.memory(key);
      let truth = mem;
      let why = 'memory';
      if (owner !== null && owner.sv.state === LineState.M) {
        truth = owner.sv.value;
        why = `node ${owner.n.id}'s Modified data`;
      } else {
        for (const h of held) {
          if (h.sv.state === LineState.S && h.sv.value !== mem && h.n.handed.has(key) && h.n.handed.get(key) === h.sv.value) {
            truth = h.sv.value;
            why = `node ${h.n.id}'s data on its way home`;
            break;
          }
        }
      }
      for (const h of held) {
        if (h.sv.value !== truth) throw new SimViolation('no-stale-hit', `${describe(h)} would be served but the truth is ${JSON.stringify(truth)} (${why}; memory ${JSON.stringify(mem)})`);
      }
    }
  }

  /** A home answered a write-through write: from now on no node may serve the value before it. */
  private answeredWrite(op: SimOp): void {
    if (op.kind === 'flush') return;
    const list = this.unanswered.get(op.key);
    if (list === undefined) return;
    const i = list.findIndex((u) => u.id === op.id);
    if (i >= 0) {
      list.splice(i, 1);
      this.settledAt.set(op.id, this.now);
    }
    if (list.length === 0) this.unanswered.delete(op.key);
  }

  /** Drops unanswered writes of ended homes once a home of a newer term finished its takeover wait. */
  private settleUnanswered(): void {
    for (const [key, list] of this.unanswered) {
      const s = this.shards[this.shardOf(key)]!;
      const slot = s.slots.find((x) => x.term === s.term && x.node === s.leader && !x.closed && !x.crashed);
      if (slot === undefined || !slot.home.ready(this.clock(slot.node))) continue;
      const keep = list.filter((u) => u.term >= slot.term);
      for (const u of list) if (u.term < slot.term) this.settledAt.set(u.id, this.now);
      if (keep.length === 0) this.unanswered.delete(key);
      else if (keep.length !== list.length) this.unanswered.set(key, keep);
    }
  }

  /**
   * no-stale-hit: every line a node would serve now equals memory, or, while memory holds writes of its key that no
   * home has answered, the value memory held before the first of them (commit first, then invalidate).
   */
  private checkNoStaleHit(): void {
    if (this.unanswered.size > 0) this.settleUnanswered();
    for (const n of this.nodes) {
      if (!n.alive || n.store.size === 0) continue;
      for (const [key, line] of n.store.entries()) {
        if (n.cache.stateOf(key, line.shard) === LineState.I) continue;
        if ((n.writesInFlight.get(key) ?? 0) > 0) continue;
        const s = this.shards[line.shard]!;
        const mem = s.mem.get(key) ?? null;
        const first = this.unanswered.get(key)?.[0];
        if (line.value !== mem && (first === undefined || line.value !== first.before)) {
          throw new SimViolation(
            'no-stale-hit',
            `node ${n.id} would serve ${key}=${JSON.stringify(line.value)} (${LINE_STATE_NAMES[line.state]}, gen ${line.gen}, lease epoch ` +
              `${n.cache.leaseOf(line.shard)?.epoch} until ${n.cache.leaseOf(line.shard)?.until.toFixed(1)}, node clock ${this.clock(n.id).toFixed(1)}) but memory holds ${JSON.stringify(mem)}` +
              (first === undefined ? '' : ` (before unanswered write #${first.id} of term ${first.term}: ${JSON.stringify(first.before)})`),
          );
        }
      }
    }
  }
}

function reqKey(req: NodeRequest<SimOp>): string | undefined {
  if (req.t === 'gets') return req.key;
  if (req.t === 'write') return req.keys === 'all' ? '*' : req.keys.join(',');
  return undefined;
}

function describeAnswer(a: HomeAnswer<string, SimResult> | CoherenceFailure): string {
  if (!a.ok) return `-${a.code}`;
  const base = `epoch ${a.epoch} lease ${a.lease}`;
  if (a.t === 'data') return `${base} value ${JSON.stringify(a.value)} grant ${a.grant ?? '-'} gen ${a.gen}`;
  if (a.t === 'written') return `${base} result ${JSON.stringify(a.result)} grant ${a.grant === null ? '-' : `${a.grant.key}=${JSON.stringify(a.grant.value)} gen ${a.grant.gen}`}`;
  return base;
}

// ------------------------------------------------------------------------------------------------ random runs

export interface RandomRunOptions {
  seed: number;
  /** Client operations (default 2000). */
  ops?: number;
  /** Inject faults (default true); false: a clean network and no node faults. */
  faults?: boolean;
  /** Share of GETs (default: drawn). */
  readRate?: number;
  trace?: boolean;
  /** Trace ring size when tracing (debugging a long run). */
  traceMax?: number;
  linTimeoutMs?: number;
  /** How writes with an unknown outcome enter the history (CacheSim.history); default 'applied'. */
  unknown?: 'pending' | 'applied';
  /** Run the write-back policy (default false: write-through). */
  writeBack?: boolean;
  /** Write-through: background re-reads after invalidations (CacheNode.refillMax; default 0 = off). */
  refillMax?: number;
  /** Write-through: CacheNode.writeAllocate (default 'always'). */
  writeAllocate?: WriteAllocate;
  /** Inject node crashes among the faults (default true). */
  crashes?: boolean;
  /** Override the fault mix's weights (experiments: e.g. only network faults). */
  faultWeights?: { leaderChange?: number; partition?: number; pause?: number; crash?: number };
}

/**
 * Write-back: lost local writes by documented cause (CacheSim.lossReport): the writer crashed; its data was handed
 * over in an answer and then its lease lapsed or the home was deposed; its lease lapsed while it held the data, with
 * (homeChange) or without (lapse) learning of a new home in that window.
 */
export interface LossCauses {
  crash: number;
  lapse: number;
  homeChange: number;
  handedOver: number;
}

/** Write-back runs: what was lost, and what the node and home counters say. */
export interface WbRunInfo {
  lostBy: LossCauses;
  flushMs: number;
  /** Local writes that never reached memory (all documented, or the run fails), and the reads that saw them. */
  lostWrites: number;
  lostObservers: number;
  /** Sum of the nodes' writebacksLost counters (every incarnation). */
  countedLost: number;
  flushesSent: number;
  flushesAccepted: number;
  writebacksInAnswers: number;
  downgradesAcked: number;
  downgradesLapsed: number;
  homeWritebacks: number;
}

export interface RandomRunResult {
  seed: number;
  ok: boolean;
  failure?: { invariant: string; message: string; lastEvents: string[] };
  stats: SimStats;
  config: { shards: number; keys: number; capacity: number; clientsPerNode: number; readRate: number; profile: string; writeBack?: boolean; flushMs?: number };
  simMs: number;
  wb?: WbRunInfo;
}

/** One seeded run: random config, clients and faults, then heal, final reads, and the linearizability check. */
export function runRandom(opts: RandomRunOptions): RandomRunResult {
  const seed = opts.seed;
  const draw = createRng(seed ^ 0x5eed);
  const shards = draw.chance(0.5) ? 1 : 2;
  const nkeys = draw.int(2, 6);
  const capacity = draw.int(1, 4);
  const clientsPerNode = draw.int(1, 4);
  const readRate = opts.readRate ?? [0.5, 0.7, 0.9][draw.int(0, 3)]!;
  const faults = opts.faults ?? true;
  const keys = Array.from({ length: nkeys }, (_, i) => `k${i}`);
  const net: NetConfig = faults
    ? { delayMinMs: 1, delayMaxMs: draw.int(3, 25), loss: [0, 0.01, 0.05][draw.int(0, 3)]!, reorder: [0, 0.05, 0.2][draw.int(0, 3)]!, stall: [0, 0.005, 0.02][draw.int(0, 3)]! }
    : { delayMinMs: 1, delayMaxMs: 10, loss: 0, reorder: 0, stall: 0 };
  // Half the fault seeds mix every fault; a quarter stall many messages (TCP retransmits); a quarter pause nodes
  // often and briefly (GC, SIGSTOP) while messages stall: the ground for late answers meeting unnoticed lapses.
  const profile = (['mixed', 'mixed', 'stalls', 'pauses'] as const)[draw.int(0, 4)]!;
  if (faults && profile !== 'mixed') {
    net.stall = profile === 'stalls' ? 0.05 : 0.03;
    net.reorder = Math.max(net.reorder, 0.05);
  }
  const memDelayMaxMs = draw.int(3, 40);
  const writeBack = opts.writeBack ?? false;
  // (Drawn last, and only for write-back: the write-through runs of a seed stay what they were.)
  const flushMs = writeBack ? [5, 20, 60, 150][draw.int(0, 4)]! : DEFAULT_SIM_CONFIG.flushMs;
  const sim = new CacheSim({
    seed,
    shards,
    keys,
    capacity,
    net,
    trace: opts.trace ?? false,
    ...(opts.traceMax !== undefined ? { traceMax: opts.traceMax } : {}),
    uncacheableRate: faults ? 0.02 : 0,
    wantUndefinedRate: faults ? 0.05 : 0,
    memDelayMaxMs,
    writeBack,
    flushMs,
    refillMax: writeBack ? 0 : (opts.refillMax ?? 0),
    writeAllocate: opts.writeAllocate ?? 'always',
  });
  const config = { shards, keys: nkeys, capacity, clientsPerNode, readRate, profile: faults ? profile : 'none', ...(writeBack ? { writeBack, flushMs } : {}) };
  const result = (failure?: RandomRunResult['failure']): RandomRunResult => ({
    seed,
    ok: failure === undefined,
    ...(failure !== undefined ? { failure } : {}),
    stats: sim.collectStats(),
    config,
    simMs: sim.now,
    ...(writeBack ? { wb: sim.wbInfo() } : {}),
  });
  try {
    sim.runFor(250); // the first homes' takeover wait
    let clientsDone = false;
    sim.startClients({ clientsPerNode, totalOps: opts.ops ?? 2000, readRate, setRate: (1 - readRate) / 2, flushRate: 0.01, thinkMaxMs: 10, onAllDone: () => (clientsDone = true) });
    const crash = opts.crashes === false ? 0 : 1;
    const w = opts.faultWeights ?? {};
    const stopFaults = faults
      ? profile === 'pauses'
        ? sim.startFaults({ everyMinMs: 30, everyMaxMs: 250, leaderChange: 2, partition: 1, pause: 8, crash, ...w, unawareMaxMs: 300, faultMaxMs: 300 })
        : sim.startFaults({ everyMinMs: 50, everyMaxMs: 400, leaderChange: 3, partition: 2, pause: 2, crash, ...w, unawareMaxMs: 300, faultMaxMs: 600 })
      : () => {};
    const limitMs = 600_000;
    if (!sim.runUntil(() => clientsDone, limitMs)) {
      return result({ invariant: 'liveness', message: `clients did not finish within ${limitMs} simulated ms`, lastEvents: sim.lastEvents(opts.traceMax) });
    }
    stopFaults();
    sim.healAll();
    sim.runFor(2_000);
    sim.checkAllAnswered();
    if (writeBack) {
      // Every Modified line has been flushed by now (flushMs after its last write, faults over): nothing stays dirty.
      for (const n of sim.nodes) {
        const d = n.cache.dirtyCounts;
        if (d.lines + d.buffered > 0) {
          return result({ invariant: 'write-back-drain', message: `node ${n.id} still holds ${d.lines} Modified lines and ${d.buffered} buffered 2 s after the faults ended`, lastEvents: sim.lastEvents(opts.traceMax) });
        }
      }
    }
    // Every node reads every key: it must succeed and see memory.
    for (const n of sim.nodes) {
      for (const key of keys) {
        // A first attempt may fail on a stale leader hint (NOTLEADER): a few tries.
        let h = sim.get(n.id, key);
        for (let attempt = 0; attempt < 5; attempt++) {
          if (attempt > 0) h = sim.get(n.id, key);
          sim.runUntil(() => h.done, 3_000);
          if (h.done && h.failure === null) break;
        }
        if (!h.done || h.failure !== null) return result({ invariant: 'liveness', message: `final read ${sim.describeOp(h)} on node ${n.id} failed`, lastEvents: sim.lastEvents(opts.traceMax) });
        if ((h.output?.value ?? null) !== sim.memory(key)) {
          return result({ invariant: 'final-read', message: `node ${n.id} read ${key}=${JSON.stringify(h.output?.value)} but memory holds ${JSON.stringify(sim.memory(key))}`, lastEvents: sim.lastEvents(opts.traceMax) });
        }
      }
    }
    if (writeBack) {
      const loss = sim.lossReport();
      if (loss.unexplained.length > 0) return result({ invariant: 'lost-write', message: loss.unexplained.slice(0, 3).join('; '), lastEvents: sim.lastEvents(opts.traceMax) });
      const seen = sim.lostWriteObserved();
      if (seen !== null) return result({ invariant: 'lost-write-observed', message: seen, lastEvents: sim.lastEvents(opts.traceMax) });
    }
    const lin = sim.checkHistory(opts.linTimeoutMs ?? 20_000, opts.unknown ?? 'applied');
    if (!lin.ok) return result({ invariant: 'linearizability', message: `${lin.result}: ${lin.explanation ?? ''}`, lastEvents: sim.lastEvents(opts.traceMax) });
    return result();
  } catch (err) {
    if (err instanceof SimViolation) return result({ invariant: err.invariant, message: err.message, lastEvents: sim.lastEvents(opts.traceMax) });
    const e = err as Error;
    return result({ invariant: (e as { code?: string }).code === 'COHERENCE' ? 'mesi' : 'exception', message: e.stack ?? String(e), lastEvents: sim.lastEvents(opts.traceMax) });
  }
}

/** A failure report naming the seed and how to replay it, with the last events (re-run with tracing on). */
/** The run options a replay must repeat beyond seed, ops, faults and write-back, as CACHE_SIM_OPTS (JSON). */
function replayOpts(opts: Omit<RandomRunOptions, 'seed'>): string {
  const { ops: _ops, faults: _faults, writeBack: _wb, trace: _trace, ...rest } = opts;
  return Object.keys(rest).length === 0 ? '' : ` CACHE_SIM_OPTS='${JSON.stringify(rest)}'`;
}

export function formatFailure(r: RandomRunResult, opts: Omit<RandomRunOptions, 'seed'> = {}): string {
  let events = r.failure?.lastEvents ?? [];
  if (events.length === 0) events = runRandom({ ...opts, seed: r.seed, trace: true }).failure?.lastEvents ?? [];
  return [
    `seed ${r.seed} broke ${r.failure?.invariant}: ${r.failure?.message}`,
    `config ${JSON.stringify(r.config)}; replay: CACHE_SIM_SEED=${r.seed}${r.config.writeBack === true ? ' CACHE_SIM_WB=1' : ''}${replayOpts(opts)} npx tap .build/<dir>/test/cache/coherence-sim.test.js`,
    'last events:',
    ...events.slice(-60).map((l) => `  ${l}`),
  ].join('\n');
}
