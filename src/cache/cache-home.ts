/**
 * CacheHome: the home of one shard's cache lines, living beside the shard's Raft leader (one per leadership term:
 * a new leader is a new home, `epoch` = its term). Pure: no timers, sockets or clock of its own; time comes from
 * `io.now()`, memory (the replicated keyspace) is reached through `io.readMemory` / `io.writeMemory`, and
 * invalidations leave through `io.send`. docs/cache-coherence.md is the protocol this implements.
 *
 * What it owns:
 *   - the directory: for each key some node may hold, the holders (node -> state E/S, or F while its fill is being
 *     read from memory, each with the gen of its grant), the writes in flight on the key, the invalidations sent and
 *     not yet acknowledged, and the requests waiting on the key;
 *   - the node leases as the home sees them: node -> the time until which that node may serve lines of this shard
 *     (receipt time of its last confirmed request + leaseMs + marginMs);
 *   - the takeover wait: no line is granted, no write is performed and no read answered before `readyAt` = start +
 *     leaseMs + marginMs, so every line a previous home granted has lapsed before this home changes or shows anything.
 *
 * Invariants (tests: test/cache/cache-home.test.ts, test/cache/coherence-sim.test.ts):
 *   - Write-through, a keyed write (commitThenInvalidate): memory takes it at once; it is answered only when no other
 *     node holds a live line of any key it touches from before it: once memory applied it, every holder (the writer
 *     too) was invalidated and acknowledged, or its lease lapsed (its node dropped its lines itself). While memory
 *     may hold it unanswered (its probe says applied), nothing shows memory's value of its keys: fills and uncached
 *     reads wait or start again, readGate holds other reads.
 *   - Write-back, and keyless writes: a write is handed to memory only when no other node holds a live line of any key
 *     it touches (invalidated and acknowledged, or lapsed first). The writer is invalidated too when the directory
 *     still lists a granted line of it other than one the request names as dropped (see revokeOthers).
 *   - A node stays listed while it may hold a line: a fill that ends without a grant puts back the node's earlier
 *     grant, and only the key's current entry is ever forgotten.
 *   - A fill that a write overtook (its holder entry was revoked while memory was being read) is answered without a
 *     grant. Write-back: no fill reads memory while a write of its key is in flight (it waits).
 *   - A grant is made only to a node whose holder entry still carries the gen the grant was prepared with.
 *   - An E grant is made only when no other node is listed for the key.
 *   - Every request is answered exactly once.
 */
import type { NodeId } from '../raft/types.js';
import type {
  CacheKey,
  CoherenceFailure,
  DataAnswer,
  GetSRequest,
  DirtyItem,
  DownAck,
  DownMessage,
  FlushAnswer,
  FlushRequest,
  InvMessage,
  InvAck,
  LeaseAnswer,
  RenewRequest,
  WriteRequest,
  WrittenAnswer,
} from './coherence-types.js';

export interface HomeConfig {
  self: NodeId;
  shard: number;
  /** The Raft term of this leadership. */
  epoch: number;
  /** Line lease length granted to nodes, ms. */
  leaseMs: number;
  /** Added to every lease the home tracks: covers clock-rate drift between nodes, ms. */
  marginMs: number;
  /** Unacknowledged invalidations are sent again this often, ms. */
  invRetryMs: number;
  /** Directory entries beyond this are not created: fills are then answered without a line. */
  directoryEntriesMax: number;
  /**
   * Write-back policy: a node's E line may have become Modified silently, so another node's read waits for the E
   * holder's downgrade (whose answer carries the data), an invalidation's answer may carry data, nodes flush their
   * Modified lines here, and reads also wait out the takeover (memory may lack data still held by nodes).
   */
  writeBack?: boolean;
}

export type MemoryRead<V> = { ok: true; value: V | null; cacheable: boolean } | CoherenceFailure;
/** `value`: the written key's value after the write; undefined when it must not be cached. */
export type MemoryWrite<V, R> = { ok: true; result: R; value?: V | null } | CoherenceFailure;

export interface HomeIO<V, Op, R> {
  now(): number;
  send(to: NodeId, msg: InvMessage | DownMessage): void;
  /** Confirms leadership (a read barrier), then reads the key's value. */
  readMemory(key: CacheKey, cb: (r: MemoryRead<V>) => void): void;
  /** Confirms leadership only. */
  confirm(cb: (r: { ok: true } | CoherenceFailure) => void): void;
  /**
   * Optional: the key's value in memory now, without confirming leadership (null: cannot tell synchronously; use
   * readMemory). Only called for a request that arrived before a confirmation (readMemory or confirm) that was
   * asked for and succeeded since: that one proved this replica led after the request arrived.
   */
  peekMemory?(key: CacheKey): MemoryRead<V> | null;
  /**
   * Replicates and applies the write; with `want`, also returns that key's value after it. Returns, at once, a probe
   * that tells whether memory has applied the write yet: true from the moment a read of memory could see it, which may
   * be before `cb` runs (a Raft entry applies, then its promise settles in a later microtask).
   */
  writeMemory(op: Op, want: CacheKey | undefined, cb: (r: MemoryWrite<V, R>) => void): () => boolean;
  /** Write-back: replicates "key := value" (null: delete it) into memory. Calls are replicated in call order. */
  writeBack(key: CacheKey, value: V | null, cb: (r: { ok: true } | CoherenceFailure) => void): void;
}

export interface HomeStats {
  fills: number;
  grantsE: number;
  grantsS: number;
  uncachedReads: number;
  writes: number;
  invalidationsSent: number;
  /** Writers' own grants not invalidated: the writer said it dropped them when it sent the write. */
  writerInvalidationsSkipped: number;
  invalidationsAcked: number;
  invalidationsLapsed: number;
  invalidationRetries: number;
  /** E holders told to become S because another node read the line. */
  downgradesSent: number;
  /** Write-back: downgrades answered, and given up because the holder's lease lapsed. */
  downgradesAcked: number;
  downgradesLapsed: number;
  /** Write-back: Modified data written to memory (from flushes and from answers to invalidations/downgrades). */
  writebacks: number;
  flushesAccepted: number;
  flushesRefused: number;
  leaseRenewals: number;
  leaseRefusals: number;
  /**
   * Write-through: reads that had to wait because memory held a write whose invalidations were still out (fills and
   * uncached reads that read it, and reads outside the cache protocol through readGate), or because of the takeover.
   */
  readsHeld: number;
  /** Write-through: memory reads done by a peek, a confirmation after the request having proved leadership. */
  peekedReads: number;
}

/** Every counter at zero. */
export function emptyHomeStats(): HomeStats {
  return {
    fills: 0,
    grantsE: 0,
    grantsS: 0,
    uncachedReads: 0,
    writes: 0,
    invalidationsSent: 0,
    writerInvalidationsSkipped: 0,
    invalidationsAcked: 0,
    invalidationsLapsed: 0,
    invalidationRetries: 0,
    downgradesSent: 0,
    downgradesAcked: 0,
    downgradesLapsed: 0,
    writebacks: 0,
    flushesAccepted: 0,
    flushesRefused: 0,
    leaseRenewals: 0,
    leaseRefusals: 0,
    readsHeld: 0,
    peekedReads: 0,
  };
}

interface Holder {
  /** 'F': its fill is reading memory; the grant decides E or S. */
  state: 'E' | 'S' | 'F';
  gen: number;
  /**
   * For 'F': the gen of the line this node was granted before this fill started (E or S), which it may hold or
   * still install (a write's grant on its way). A fill that ends without a grant puts that entry back (as S) instead
   * of forgetting the node, which would leave its line out of the next write's invalidations
   * (test/cache/coherence-sim.test.ts, "a fill without a grant does not forget the node's earlier grant").
   */
  shadow?: number;
}

interface PendingInv {
  gen: number;
  /** First sent (a node that leaves it unanswered for half a lease gets no renewal). */
  sentAt: number;
  lastSentAt: number;
}

interface PendingWrite<Op, V, R> {
  req: WriteRequest<Op>;
  /** Write-through, keyed: memory has applied it (set when it is handed to memory). */
  applied?: () => boolean;
  /** Write-through, keyed: memory's answer, kept while the write waits for its invalidations. */
  done?: MemoryWrite<V, R>;
  arrivedAt: number;
  reply: (a: WrittenAnswer<V, R> | CoherenceFailure) => void;
  keys: CacheKey[];
  all: boolean;
  /** Keys (and the 'all' barrier) whose invalidations it still waits for. */
  blockers: number;
  /** Write-through, keyed: the grants the writer said it dropped (key -> gen), used when the write invalidates. */
  dropped?: Map<CacheKey, number> | undefined;
}

interface PendingFill<V> {
  req: GetSRequest;
  /** Answered without a line (uncachedRead), also when it waits and starts again. */
  uncached?: boolean;
  arrivedAt: number;
  reply: (a: DataAnswer<V> | CoherenceFailure) => void;
}

interface DirEntry<Op, V, R> {
  holders: Map<NodeId, Holder>;
  /** Writes accepted on this key and not yet applied (or failed); write-through: not yet answered. */
  writes: number;
  /** Write-through: keyed writes of this key handed to memory and not yet answered (commit-then-invalidate). */
  live: PendingWrite<Op, V, R>[];
  inv: Map<NodeId, PendingInv>;
  /** Write-back: downgrades sent to an E holder and not yet answered (fills of the key wait for them). */
  down: Map<NodeId, PendingInv>;
  blockedWrites: PendingWrite<Op, V, R>[];
  waitingFills: PendingFill<V>[];
}

export class CacheHome<V, Op, R> {
  readonly epoch: number;
  /** No grant and no write before this time (the takeover wait). */
  readonly readyAt: number;
  readonly stats: HomeStats = emptyHomeStats();

  private readonly dir = new Map<CacheKey, DirEntry<Op, V, R>>();
  private readonly leases = new Map<NodeId, number>();
  /** Keys with unacknowledged invalidations. */
  private readonly invKeys = new Set<CacheKey>();
  /** Keys with unanswered downgrades (write-back). */
  private readonly downKeys = new Set<CacheKey>();
  /** Nodes with an invalidation unacknowledged for longer than half a lease: their leases are not renewed. */
  private stuck = new Set<NodeId>();
  /** Keyless writes ('all') in flight: fills of every key wait for them. */
  private allWrites = 0;
  private readonly fillsWaitingAll: PendingFill<V>[] = [];
  /** Writes that arrived during the takeover wait. */
  private readonly takeoverQueue: PendingWrite<Op, V, R>[] = [];
  /**
   * Reads that arrived during the takeover wait: under write-back memory may lack data nodes still hold; under
   * write-through memory may hold a write the previous home committed whose invalidations never finished, while
   * nodes still serve the value before it (they stop when their leases lapse, which the wait outlasts).
   */
  private readonly takeoverFills: PendingFill<V>[] = [];
  /** Write-through: keyed writes handed to memory and not yet answered, over every key. */
  private readonly liveWrites = new Set<PendingWrite<Op, V, R>>();
  /** Reads outside the cache protocol waiting until no applied write is still invalidating (readGate). */
  private gateWaiters: ((ok: boolean) => void)[] = [];
  private readonly writeBackMode: boolean;
  private gen = 0;
  private closed = false;
  /**
   * Write-through: the home's clock when the latest successful leadership confirmation was asked for. A fill that
   * arrived before it may read memory by peekMemory (no new Raft round): fills held while a write invalidates are
   * answered the moment it is answered.
   */
  private confirmedFrom = Number.NEGATIVE_INFINITY;
  /** A confirmation asked for by held fills is out. */
  private confirming = false;
  /** Invalidations to send this turn, per node (flushed at the end of each public call). */
  private readonly outbox = new Map<NodeId, [CacheKey, number][]>();
  /** Downgrades (E -> S) to send this turn, per node. */
  private readonly downbox = new Map<NodeId, [CacheKey, number][]>();

  constructor(
    private readonly cfg: HomeConfig,
    private readonly io: HomeIO<V, Op, R>,
  ) {
    this.epoch = cfg.epoch;
    this.writeBackMode = cfg.writeBack === true;
    this.readyAt = io.now() + cfg.leaseMs + cfg.marginMs;
  }

  /** Directory entries (for INFO and tests). */
  get directorySize(): number {
    return this.dir.size;
  }

  /** The directory's view of a key: node -> state (E/S/F) and the pending invalidations (tests, CACHE.STATE). */
  holdersOf(key: CacheKey): { holders: [NodeId, 'E' | 'S' | 'F'][]; invalidating: NodeId[] } {
    const de = this.dir.get(key);
    if (de === undefined) return { holders: [], invalidating: [] };
    return { holders: [...de.holders].map(([n, h]) => [n, h.state]), invalidating: [...de.inv.keys()] };
  }

  /** True once the takeover wait is over. */
  ready(now = this.io.now()): boolean {
    return now >= this.readyAt;
  }

  // ------------------------------------------------------------------ requests

  getS(req: GetSRequest, reply: (a: DataAnswer<V> | CoherenceFailure) => void, arrivedAt = this.io.now()): void {
    const fill: PendingFill<V> = { req, arrivedAt, reply };
    if (!this.ready()) {
      this.stats.readsHeld++;
      this.takeoverFills.push(fill);
      return;
    }
    if (!req.cacheable || (!this.dir.has(req.key) && this.dir.size >= this.cfg.directoryEntriesMax)) {
      if (!this.writeBackMode) {
        fill.uncached = true;
        const held = this.dir.get(req.key);
        if (held !== undefined && this.fillBlocked(held)) this.holdFill(held, fill);
        else this.uncachedRead(fill);
        return;
      }
      // Under write-back even a read that installs nothing must see a Modified copy's data: it takes the fill path
      // (which downgrades the E holder first) and is answered without a grant.
      if (!this.dir.has(req.key) && this.dir.size >= this.cfg.directoryEntriesMax) {
        this.uncachedRead(fill);
        return;
      }
    }
    const de = this.entry(req.key);
    if (this.allWrites > 0) this.fillsWaitingAll.push(fill);
    else if (this.fillBlocked(de)) this.holdFill(de, fill);
    else this.startFill(de, fill);
    this.flush();
  }

  /**
   * Write-through: may a read outside the cache protocol (the shard worker's MGET, EXISTS, STRLEN, TTL, ... of `keys`;
   * KEYS, SCAN, DBSIZE with 'all') read memory now? Call it in the same turn as the read. False while memory may hold
   * a write that is still invalidating cached copies of those keys (reading it would show a value some node still
   * serves the old one of), or during the takeover wait: `retry` is then called once (ok: true, check again; ok:
   * false, this home closed: route the read again). Write-back: false while a node may hold one of those keys
   * Modified (E holders are asked to downgrade, as for a fill: their answers carry the data) or while data is on its
   * way to memory, so a read there never misses a local write that completed; a keyless read snoops every key.
   */
  readGate(keys: CacheKey[] | 'all', retry: (ok: boolean) => void, again = false): boolean {
    if (this.closed) return true;
    let blocked = !this.ready();
    if (this.writeBackMode) {
      if (!blocked) {
        const snoop = (key: CacheKey, de: DirEntry<Op, V, R>): void => {
          if (this.askDowngrades(key, de) || de.writes > 0) blocked = true;
        };
        if (keys === 'all') for (const [key, de] of this.dir) snoop(key, de);
        else {
          for (const key of keys) {
            const de = this.dir.get(key);
            if (de !== undefined) snoop(key, de);
          }
        }
        this.flush();
      }
    } else if (!blocked && keys === 'all') {
      for (const w of this.liveWrites) {
        if (w.applied !== undefined && w.applied()) {
          blocked = true;
          break;
        }
      }
    } else if (!blocked) {
      for (const key of keys as CacheKey[]) {
        const de = this.dir.get(key);
        if (de !== undefined && this.appliedLive(de)) {
          blocked = true;
          break;
        }
      }
    }
    if (!blocked) return true;
    if (!again) this.stats.readsHeld++; // (`again`: the same read checking again after a retry)
    this.gateWaiters.push(retry);
    return false;
  }

  write(req: WriteRequest<Op>, reply: (a: WrittenAnswer<V, R> | CoherenceFailure) => void, arrivedAt = this.io.now()): void {
    const w: PendingWrite<Op, V, R> = { req, arrivedAt, reply, keys: req.keys === 'all' ? [] : req.keys, all: req.keys === 'all', blockers: 0 };
    if (!this.ready()) {
      this.takeoverQueue.push(w);
      return;
    }
    this.acceptWrite(w);
    this.flush();
  }

  renew(req: RenewRequest, reply: (a: LeaseAnswer | CoherenceFailure) => void, arrivedAt = this.io.now()): void {
    for (const [key, gen] of req.epoch === this.epoch ? req.evicted : []) {
      const de = this.dir.get(key);
      if (de === undefined) continue;
      const h = de.holders.get(req.from);
      if (h !== undefined && h.gen === gen && h.state !== 'F') {
        de.holders.delete(req.from);
        this.maybeForget(key, de);
      }
    }
    this.io.confirm((r) => {
      if (!r.ok) return reply(r);
      const lease = this.grantLease(req.from, arrivedAt);
      if (lease) this.stats.leaseRenewals++;
      reply({ t: 'lease', ok: true, epoch: this.epoch, home: this.cfg.self, lease });
    });
  }

  onAck(ack: InvAck): void {
    if (ack.epoch !== this.epoch) return;
    // Data first: its write-back is replicated before the write these invalidations were holding back.
    this.takeData(ack.from, ack.data, (key) => this.dir.get(key)?.inv.get(ack.from));
    for (const [key, gen] of ack.items) {
      const de = this.dir.get(key);
      const p = de?.inv.get(ack.from);
      if (de === undefined || p === undefined || p.gen !== gen) continue;
      this.stats.invalidationsAcked++;
      de.inv.delete(ack.from);
      if (de.inv.size === 0) this.invCleared(key, de);
    }
    this.flush();
  }

  /** Write-back: an E holder answered a downgrade: it holds S now, and its data (if it was Modified) goes to memory. */
  onDownAck(ack: DownAck): void {
    if (ack.epoch !== this.epoch || !this.writeBackMode) return;
    this.takeData(ack.from, ack.data, (key) => this.dir.get(key)?.down.get(ack.from));
    for (const [key, gen] of ack.items) {
      const de = this.dir.get(key);
      const p = de?.down.get(ack.from);
      if (de === undefined || p === undefined || p.gen !== gen) continue;
      this.stats.downgradesAcked++;
      de.down.delete(ack.from);
      const h = de.holders.get(ack.from);
      if (h !== undefined && h.gen === gen && h.state === 'E') h.state = 'S';
      if (de.down.size === 0) this.downKeys.delete(key);
      this.drainFills(de);
      this.maybeForget(key, de);
    }
    this.releaseGate();
    this.flush();
  }

  /**
   * Write-back: a node's Modified line. Written to memory when the directory still lists the node's E grant of
   * that gen with nothing in flight to it (an invalidation or downgrade being answered carries the data instead, and
   * this flush may be older than that data), or when it is a takeover flush (a previous home's grant's data, sent
   * with this home's epoch by a node that learned of this home while still holding it) during this home's takeover
   * wait (nothing has been granted or written here yet, and the previous home had granted the key to one node at
   * most). Otherwise refused: `pending` tells the node an answer of its own will carry the data.
   */
  flushLine(req: FlushRequest<V>, reply: (a: FlushAnswer | CoherenceFailure) => void, arrivedAt = this.io.now()): void {
    const answer = (accepted: boolean, pending: boolean, lease: boolean): void =>
      reply({ t: 'flushed', ok: true, epoch: this.epoch, home: this.cfg.self, lease, accepted, ...(pending ? { pending } : {}) });
    const de = this.dir.get(req.key);
    let ok = false;
    let pending = false;
    if (!this.writeBackMode || this.closed) ok = false;
    else if (req.epoch === this.epoch && req.gen === 0) {
      // A takeover flush (cache-node.ts WbEntry.takeover: this home's epoch, gen 0, which no grant has), taken only
      // during the takeover wait, when nothing of this epoch has been granted or written yet. A flush of an older
      // epoch is refused: it may have been sent to the previous home before that home took the same data through an
      // invalidation and then wrote newer values (delayed, or parked through the election), and this home cannot tell
      // (test/cache/coherence-sim.test.ts, "a flush delayed across a leader change does not overwrite newer writes").
      // Gen 0 keeps a late takeover flush from passing for a flush of this home's own gen-1 grant of the key
      // ("a late takeover flush is not taken for a flush of the new home's own grant").
      ok = !this.ready();
    } else if (req.epoch === this.epoch) {
      const h = de?.holders.get(req.from);
      pending = de !== undefined && (de.inv.get(req.from)?.gen === req.gen || de.down.get(req.from)?.gen === req.gen);
      // Only while the node's lease is live here: once it ran out, readers and writers no longer wait for that
      // node (askDowngrades, revokeOthers skip it; its data is lost, docs/cache-coherence.md) even before tick()
      // forgets its grants, so a reader may already have read memory without it (test/cache/coherence-sim.test.ts,
      // "a flush arriving after its node's lease ran out at the home is refused").
      ok = h !== undefined && h.state === 'E' && h.gen === req.gen && !pending && this.leaseLive(req.from, this.io.now());
    }
    if (!ok) {
      this.stats.flushesRefused++;
      answer(false, pending, false);
      return;
    }
    this.stats.flushesAccepted++;
    this.writeBackItem(req.key, req.value, (r) => {
      if (!r.ok) return reply(r);
      answer(true, false, req.epoch === this.epoch && this.grantLease(req.from, arrivedAt));
    });
  }

  /** Drives time: the end of the takeover wait, lapsed leases, invalidation retries. Call every few ms. */
  tick(): void {
    if (this.closed) return;
    const now = this.io.now();
    if (this.takeoverQueue.length > 0 && this.ready(now)) {
      for (const w of this.takeoverQueue.splice(0)) this.acceptWrite(w);
    }
    if (this.takeoverFills.length > 0 && this.ready(now)) {
      for (const f of this.takeoverFills.splice(0)) this.getS(f.req, f.reply, f.arrivedAt);
    }
    // Reads held by readGate check again on every tick once the takeover wait is over (those held by a write or a
    // snoop are also let go when it is answered; a downgrade given up on below lets them through on the next tick).
    if (this.gateWaiters.length > 0 && this.ready(now)) this.releaseGate();
    for (const key of [...this.downKeys]) {
      const de = this.dir.get(key);
      if (de === undefined) {
        this.downKeys.delete(key);
        continue;
      }
      for (const [node, p] of [...de.down]) {
        if (!this.leaseLive(node, now)) {
          // Its lease ran out: the node dropped the line (a Modified one is lost: docs/cache-coherence.md).
          this.stats.downgradesLapsed++;
          de.down.delete(node);
          const h = de.holders.get(node);
          if (h !== undefined && h.gen === p.gen) de.holders.delete(node);
        } else if (now - p.lastSentAt >= this.cfg.invRetryMs) {
          p.lastSentAt = now;
          this.queue(this.downbox, node, key, p.gen);
        }
      }
      if (de.down.size === 0) {
        this.downKeys.delete(key);
        this.drainFills(de);
        this.maybeForget(key, de);
      }
    }
    const lapsed: NodeId[] = [];
    for (const [node, until] of this.leases) if (until < now) lapsed.push(node);
    for (const node of lapsed) this.leases.delete(node);
    // Before the invalidations below: one that lapses can let a write finish here and now, granting its writer (maybe
    // a lapsed node, whose lease the grant renews) a line that must stay listed.
    if (lapsed.length > 0) {
      for (const [key, de] of this.dir) {
        for (const node of lapsed) {
          const h = de.holders.get(node);
          if (h !== undefined && h.state !== 'F') de.holders.delete(node);
        }
        this.maybeForget(key, de);
      }
    }
    const stuckAfter = now - this.cfg.leaseMs / 2;
    const stuck = new Set<NodeId>();
    for (const key of [...this.invKeys]) {
      const de = this.dir.get(key);
      if (de === undefined) {
        this.invKeys.delete(key);
        continue;
      }
      for (const [node, p] of [...de.inv]) {
        if (!this.leaseLive(node, now)) {
          // Its lease ran out: that node has dropped every line of this shard by now.
          this.stats.invalidationsLapsed++;
          de.inv.delete(node);
        } else {
          if (p.sentAt < stuckAfter) stuck.add(node);
          if (now - p.lastSentAt >= this.cfg.invRetryMs) {
            this.stats.invalidationRetries++;
            p.lastSentAt = now;
            this.queueInv(node, key, p.gen);
          }
        }
      }
      if (de.inv.size === 0) this.invCleared(key, de);
    }
    this.stuck = stuck;
    this.flush();
  }

  /** Leadership ended: answer everything still waiting here (their writes never reached memory). */
  close(failure: CoherenceFailure): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.takeoverQueue.splice(0)) w.reply(failure);
    for (const f of this.takeoverFills.splice(0)) f.reply(failure);
    for (const f of this.fillsWaitingAll.splice(0)) f.reply(failure);
    for (const de of this.dir.values()) {
      for (const w of de.blockedWrites.splice(0)) if (w.blockers > 0) {
        w.blockers = 0;
        // A write-through write waiting for its invalidations is in memory already: routing it again would apply it
        // twice, so its caller learns that its outcome is unknown.
        if (w.done !== undefined) {
          this.liveWrites.delete(w);
          w.reply(w.done.ok ? unknownOutcome(this.cfg.shard, this.epoch) : w.done);
        } else w.reply(failure);
      }
      for (const f of de.waitingFills.splice(0)) f.reply(failure);
    }
    for (const retry of this.gateWaiters.splice(0)) retry(false);
    this.dir.clear();
    this.invKeys.clear();
    this.downKeys.clear();
  }

  // ------------------------------------------------------------------ internals

  private entry(key: CacheKey): DirEntry<Op, V, R> {
    let de = this.dir.get(key);
    if (de === undefined) {
      de = { holders: new Map(), writes: 0, live: [], inv: new Map(), down: new Map(), blockedWrites: [], waitingFills: [] };
      this.dir.set(key, de);
    }
    return de;
  }

  private maybeForget(key: CacheKey, de: DirEntry<Op, V, R>): void {
    // `de` may be an entry already forgotten (a fill's callback holds the entry it started on, and a write may have
    // revoked that fill and been forgotten since): never delete the key's newer entry through it, or its write count
    // is lost and a grant is made while a write is in flight (test/cache/coherence-sim.test.ts, "a late fill answer
    // does not forget the key's newer entry").
    if (this.dir.get(key) !== de) return;
    if (de.holders.size === 0 && de.writes === 0 && de.inv.size === 0 && de.down.size === 0 && de.waitingFills.length === 0 && de.blockedWrites.length === 0) {
      this.dir.delete(key);
    }
  }

  private leaseLive(node: NodeId, now: number): boolean {
    return (this.leases.get(node) ?? Number.NEGATIVE_INFINITY) >= now;
  }

  /** Records a confirmed contact from `node`; false (lease not extended) while it sits on an old invalidation. */
  private grantLease(node: NodeId, arrivedAt: number): boolean {
    if (this.stuck.has(node)) {
      this.stats.leaseRefusals++;
      return false;
    }
    const until = arrivedAt + this.cfg.leaseMs + this.cfg.marginMs;
    if (until > (this.leases.get(node) ?? Number.NEGATIVE_INFINITY)) this.leases.set(node, until);
    return true;
  }

  /** Reads memory for a request that arrived at `arrivedAt`: a peek when a confirmation since allows it, else readMemory. */
  private read(key: CacheKey, arrivedAt: number, cb: (r: MemoryRead<V>) => void): void {
    if (!this.writeBackMode && arrivedAt < this.confirmedFrom && this.io.peekMemory !== undefined && !this.closed) {
      const r = this.io.peekMemory(key);
      if (r !== null) {
        this.stats.peekedReads++;
        cb(r);
        return;
      }
    }
    const askedAt = this.io.now();
    this.io.readMemory(key, (r) => {
      if (r.ok && askedAt > this.confirmedFrom) this.confirmedFrom = askedAt;
      cb(r);
    });
  }

  /**
   * Write-through: a fill held while a write invalidates asks for a leadership confirmation now, so that once the write
   * is answered it can read memory at once (read: a peek) instead of waiting for a Raft round then.
   */
  private confirmAhead(): void {
    if (this.writeBackMode || this.confirming || this.io.peekMemory === undefined) return;
    this.confirming = true;
    const askedAt = this.io.now();
    this.io.confirm((r) => {
      this.confirming = false;
      if (r.ok && askedAt > this.confirmedFrom) this.confirmedFrom = askedAt;
    });
  }

  /**
   * A read that may not read memory yet waits on `de` (drainFills starts it again). Write-through: it is counted
   * (readsHeld), and a leadership confirmation is asked for ahead (confirmAhead).
   */
  private holdFill(de: DirEntry<Op, V, R>, fill: PendingFill<V>): void {
    de.waitingFills.push(fill);
    if (this.writeBackMode) return;
    this.stats.readsHeld++;
    this.confirmAhead();
  }

  private uncachedRead(fill: PendingFill<V>, count = true): void {
    if (count) this.stats.uncachedReads++;
    this.read(fill.req.key, fill.arrivedAt, (r) => {
      if (!r.ok) return fill.reply(r);
      if (!this.writeBackMode) {
        // Write-through: what memory holds may be a write still invalidating (see commitThenInvalidate).
        if (this.closed) return fill.reply(readAgain(this.cfg.shard, this.epoch));
        const de = this.dir.get(fill.req.key);
        if (de !== undefined && this.appliedLive(de)) {
          this.holdFill(de, fill);
          return;
        }
      }
      const lease = this.grantLease(fill.req.from, fill.arrivedAt);
      fill.reply({ t: 'data', ok: true, epoch: this.epoch, home: this.cfg.self, lease, value: r.value, grant: null, gen: 0 });
    });
  }

  private startFill(de: DirEntry<Op, V, R>, fill: PendingFill<V>): void {
    const { from, key } = fill.req;
    if (this.writeBackMode && this.askDowngrades(key, de)) {
      this.holdFill(de, fill);
      return;
    }
    const gen = ++this.gen;
    const prev = de.holders.get(from);
    const shadow = prev === undefined ? undefined : prev.state === 'F' ? prev.shadow : prev.gen;
    de.holders.set(from, shadow === undefined ? { state: 'F', gen } : { state: 'F', gen, shadow });
    this.stats.fills++;
    const ungranted = (): void => {
      if (shadow === undefined) de.holders.delete(from);
      else de.holders.set(from, { state: 'S', gen: shadow });
    };
    this.read(key, fill.arrivedAt, (r) => {
      const h = de.holders.get(from);
      const current = h !== undefined && h.gen === gen && this.dir.get(key) === de && !this.closed;
      if (!r.ok) {
        if (current) ungranted();
        this.maybeForget(key, de);
        fill.reply(r);
        return;
      }
      if (!this.writeBackMode) {
        // Write-through: the value read may be a write still invalidating (commitThenInvalidate): it may not be shown
        // yet, so the fill starts again once that write is answered. A home that closed cannot tell: read elsewhere.
        if (this.closed) {
          fill.reply(readAgain(this.cfg.shard, this.epoch));
          return;
        }
        const cur = this.dir.get(key);
        if (cur !== undefined && this.appliedLive(cur)) {
          if (current) ungranted();
          this.holdFill(cur, fill);
          this.maybeForget(key, de);
          this.flush();
          return;
        }
      }
      const lease = this.grantLease(from, fill.arrivedAt);
      let grant: 'E' | 'S' | null = null;
      // (Under write-back an E holder appearing while this fill read memory would mean a grant that did not revoke
      // this filler: never expected, and then nothing is granted rather than sharing a line that may be Modified.)
      const unsafe = this.writeBackMode && [...de.holders].some(([n, o]) => n !== from && o.state === 'E');
      if (current && lease && r.cacheable && fill.req.cacheable && !unsafe) {
        let others = false;
        for (const [n, o] of de.holders) {
          if (n === from) continue;
          others = true;
          // Write-through: an E line is clean and never written locally, so the directory downgrades it at once;
          // the node is told (MESI Fwd-GetS) so that its own state is exact, and nothing waits for its answer.
          if (o.state === 'E') {
            o.state = 'S';
            this.stats.downgradesSent++;
            this.queue(this.downbox, n, key, o.gen);
          }
        }
        grant = others ? 'S' : 'E';
        h!.state = grant;
        if (grant === 'E') this.stats.grantsE++;
        else this.stats.grantsS++;
      } else if (current) {
        ungranted();
      }
      this.maybeForget(key, de);
      fill.reply({ t: 'data', ok: true, epoch: this.epoch, home: this.cfg.self, lease, value: r.value, grant, gen: grant === null ? 0 : gen });
      this.flush();
    });
  }

  private acceptWrite(w: PendingWrite<Op, V, R>): void {
    if (this.closed) return;
    const from = w.req.from;
    const now = this.io.now();
    this.stats.writes++;
    if (w.all) {
      this.allWrites++;
      for (const [key, de] of this.dir) {
        this.revokeOthers(key, de, from, now);
        if (de.inv.size > 0) {
          w.blockers++;
          de.blockedWrites.push(w);
        }
      }
    } else {
      const d = w.req.dropped;
      const dropped = d !== undefined && d.epoch === this.epoch && !this.writeBackMode ? new Map(d.items) : undefined;
      if (!this.writeBackMode) {
        // Write-through: commit first, then invalidate (see commitThenInvalidate).
        w.dropped = dropped;
        for (const key of w.keys) {
          const de = this.entry(key);
          de.writes++;
          de.live.push(w);
        }
        this.liveWrites.add(w);
        this.commitThenInvalidate(w);
        return;
      }
      for (const key of w.keys) {
        const de = this.entry(key);
        de.writes++;
        this.revokeOthers(key, de, from, now, dropped?.get(key));
        if (de.inv.size > 0) {
          w.blockers++;
          de.blockedWrites.push(w);
        }
      }
    }
    if (w.blockers === 0) this.perform(w);
  }

  /**
   * Write-through, a keyed write: memory takes it at once, while the other nodes go on serving the value before it
   * (the write has not completed, so a read may still return that value). When memory has applied it, every holder
   * of its keys is invalidated, and the write is answered once every invalidation of those keys is acknowledged (or
   * its node's lease lapsed): nobody serves the old value when the write completes. Meanwhile no read may show what
   * memory holds (fills and uncached reads that read it start again, readGate holds the rest), since a node may still
   * serve the old value. The window in which other nodes miss shrinks from the Raft commit to one invalidation round
   * trip (docs/cache-coherence.md, "Hit rate under hot-key writes").
   */
  private commitThenInvalidate(w: PendingWrite<Op, V, R>): void {
    w.applied = this.io.writeMemory(w.req.op, w.req.want, (r) => {
      w.done = r;
      if (!r.ok || this.closed) {
        this.finishWrite(w);
        return;
      }
      const now = this.io.now();
      for (const key of w.keys) {
        const de = this.dir.get(key);
        if (de === undefined) continue; // (kept while the write is live: never expected)
        this.revokeOthers(key, de, w.req.from, now, w.dropped?.get(key));
        if (de.inv.size > 0) {
          w.blockers++;
          de.blockedWrites.push(w);
        }
      }
      if (w.blockers === 0) this.finishWrite(w);
      this.flush();
    });
  }

  /** Write-through: answers a keyed write that memory has applied (or refused) and no invalidation holds back. */
  private finishWrite(w: PendingWrite<Op, V, R>): void {
    const r = w.done!;
    this.liveWrites.delete(w);
    let lease = false;
    if (r.ok && !this.closed) lease = this.grantLease(w.req.from, w.arrivedAt);
    const grant = this.settleKeys(w, r, lease);
    this.releaseGate();
    if (!r.ok) w.reply(r);
    else if (this.closed) w.reply(unknownOutcome(this.cfg.shard, this.epoch));
    else w.reply({ t: 'written', ok: true, epoch: this.epoch, home: this.cfg.self, lease, result: r.result, grant });
    this.flush();
  }

  /**
   * Memory answered write `w` (applied, or failed): each of its keys has one write fewer in flight (and, write-through,
   * one live write fewer), its waiting fills go on, and the writer gets an E line of `want` with the value after the
   * write when nothing else of the key is in flight or listed. Returns that grant, or null.
   */
  private settleKeys(w: PendingWrite<Op, V, R>, r: MemoryWrite<V, R>, lease: boolean): WrittenAnswer<V, R>['grant'] {
    let grant: WrittenAnswer<V, R>['grant'] = null;
    const want = w.req.want;
    for (const key of w.keys) {
      const de = this.dir.get(key);
      if (de === undefined) continue;
      de.writes--;
      const i = de.live.indexOf(w);
      if (i >= 0) de.live.splice(i, 1);
      // Write-through: `r.value` was read when the write's callback ran; a later write of the key applied before that
      // is still live (de.writes > 0), so no grant is made from a value that may be newer than this write.
      if (
        r.ok &&
        lease &&
        key === want &&
        r.value !== undefined &&
        de.writes === 0 &&
        this.allWrites === (w.all ? 1 : 0) &&
        de.holders.size === 0 &&
        de.inv.size === 0 &&
        !this.closed
      ) {
        const gen = ++this.gen;
        de.holders.set(w.req.from, { state: 'E', gen });
        this.stats.grantsE++;
        grant = { key, value: r.value, gen };
      }
      if (this.allWrites === 0) this.drainFills(de);
      this.maybeForget(key, de);
    }
    return grant;
  }

  /** Lets the reads held by readGate check again. */
  private releaseGate(): void {
    if (this.gateWaiters.length === 0) return;
    const waiters = this.gateWaiters;
    this.gateWaiters = [];
    for (const retry of waiters) retry(true);
  }

  /** Write-through: memory holds a write of this key that is still invalidating (or about to). */
  private appliedLive(de: DirEntry<Op, V, R>): boolean {
    for (const w of de.live) if (w.applied !== undefined && w.applied()) return true;
    return false;
  }

  /** A fill of this key must wait before it reads memory. */
  private fillBlocked(de: DirEntry<Op, V, R>): boolean {
    if (this.writeBackMode) return de.writes > 0 || de.down.size > 0;
    return this.appliedLive(de);
  }

  /**
   * Moves every holder of `key` to the invalidation set, the writer included when it is listed with a granted line it
   * did not say it dropped. A writer drops its copy when it sends a write and names that grant in the request
   * (`droppedGen`, write-through only: under write-back the invalidation's answer may carry Modified data): that grant
   * needs no invalidation round. Any other grant of the writer's is invalidated: the request may be one it gave up on
   * (timed out, still in the network) after which it filled the key again, and skipping that newer line would leave
   * it stale (test/cache/coherence-sim.test.ts, "a timed-out write arriving after its writer filled the key again");
   * the node keeps its write's grant (cache-node.ts writeInv). A writer whose fill is still out ('F') needs nothing:
   * that fill is answered without a grant.
   */
  private revokeOthers(key: CacheKey, de: DirEntry<Op, V, R>, writer: NodeId, now: number, droppedGen?: number): void {
    for (const [node, h] of de.holders) {
      if (node === writer && h.state !== 'F' && h.gen === droppedGen) {
        this.stats.writerInvalidationsSkipped++;
        continue;
      }
      if ((node !== writer || h.state !== 'F' || h.shadow !== undefined) && this.leaseLive(node, now)) {
        const prev = de.inv.get(node);
        if (prev === undefined || prev.gen < h.gen) {
          de.inv.set(node, { gen: h.gen, sentAt: prev?.sentAt ?? now, lastSentAt: now });
          this.invKeys.add(key);
          this.stats.invalidationsSent++;
          this.queueInv(node, key, h.gen);
        }
      }
    }
    de.holders.clear();
    // Write-back: downgrades still out for this key are void. The invalidation's answer carries the data a
    // downgrade's answer would have (cache-node.ts handedOver), and is written back before this write; a downgrade's
    // answer arriving after the write is performed would write that older data over it. (A holder whose lease lapsed
    // is not invalidated: its data is lost, and its late answer must not land either.) (test/cache/coherence-sim.test.ts,
    // "a downgrade answer arriving after a write does not write its data over it")
    if (de.down.size > 0) {
      de.down.clear();
      this.downKeys.delete(key);
    }
  }

  private invCleared(key: CacheKey, de: DirEntry<Op, V, R>): void {
    this.invKeys.delete(key);
    const blocked = de.blockedWrites.splice(0);
    for (const w of blocked) {
      w.blockers--;
      if (w.blockers === 0) {
        if (w.done !== undefined) this.finishWrite(w);
        else this.perform(w);
      }
    }
    this.maybeForget(key, de);
  }

  private perform(w: PendingWrite<Op, V, R>): void {
    const want = w.req.want;
    this.io.writeMemory(w.req.op, want, (r) => {
      let lease = false;
      if (r.ok) lease = this.grantLease(w.req.from, w.arrivedAt);
      const grant = this.settleKeys(w, r, lease);
      if (w.all) {
        this.allWrites--;
        if (this.allWrites === 0) {
          for (const f of this.fillsWaitingAll.splice(0)) this.getS(f.req, f.reply, f.arrivedAt);
          for (const [, de] of this.dir) this.drainFills(de);
        }
      }
      this.releaseGate();
      if (!r.ok) w.reply(r);
      else w.reply({ t: 'written', ok: true, epoch: this.epoch, home: this.cfg.self, lease, result: r.result, grant });
      this.flush();
    });
  }

  /** Starts the fills waiting on `de` once no write, write-back or downgrade of the key is in flight. */
  private drainFills(de: DirEntry<Op, V, R>): void {
    if (de.waitingFills.length === 0 || this.allWrites > 0 || this.fillBlocked(de)) return;
    for (const f of de.waitingFills.splice(0)) {
      if (f.uncached) {
        this.uncachedRead(f, false);
        continue;
      }
      // A fill may start downgrades again (a holder granted E meanwhile): the rest wait with it.
      if (de.down.size > 0) de.waitingFills.push(f);
      else this.startFill(de, f);
    }
  }

  /**
   * Write-back: asks every E holder of `key` to downgrade (its answer carries the data if the line became
   * Modified). True when a downgrade is outstanding: the caller's fill waits for it.
   *
   * The reader itself too: a node listed E that sends a read miss sent it before its E grant arrived (a fill that
   * waited here behind the node's own write, which was then granted E), or it lost its line (evicted, not yet
   * reported). The fill's grant replaces the node's entry, and a node that does not install it (the fill was poisoned
   * by the write) keeps the older E line, which it may write locally: that line would no longer be listed as E, so
   * other readers would be granted S beside it and its Modified data never asked for (test/cache/coherence-sim.test.ts,
   * "a read sent before the reader's own write does not hide its E line").
   */
  private askDowngrades(key: CacheKey, de: DirEntry<Op, V, R>): boolean {
    const now = this.io.now();
    for (const [n, o] of de.holders) {
      if (o.state !== 'E' || de.down.has(n) || !this.leaseLive(n, now)) continue;
      de.down.set(n, { gen: o.gen, sentAt: now, lastSentAt: now });
      this.downKeys.add(key);
      this.stats.downgradesSent++;
      this.queue(this.downbox, n, key, o.gen);
    }
    return de.down.size > 0;
  }

  /** Write-back: `value` (a Modified line's data) goes to memory; fills of the key wait until it is there. */
  private writeBackItem(key: CacheKey, value: V | null, done?: (r: { ok: true } | CoherenceFailure) => void): void {
    const de = this.entry(key);
    de.writes++;
    this.stats.writebacks++;
    this.io.writeBack(key, value, (r) => {
      de.writes--;
      this.drainFills(de);
      this.maybeForget(key, de);
      this.releaseGate();
      done?.(r);
      this.flush();
    });
  }

  /** The data of an acknowledgement, for the grants still pending in `pending` (per key) from `from`. */
  private takeData(from: NodeId, data: DirtyItem[] | undefined, pending: (key: CacheKey) => PendingInv | undefined): void {
    if (data === undefined || !this.writeBackMode) return;
    for (const [key, gen, value] of data) {
      const p = pending(key);
      // Only data of a grant still being revoked: later data of that grant cannot exist (the node's line is clean
      // or gone once it answered), and data of an older grant would overwrite newer writes.
      if (p !== undefined && p.gen === gen) this.writeBackItem(key, value as V | null);
    }
  }

  private queueInv(node: NodeId, key: CacheKey, gen: number): void {
    this.queue(this.outbox, node, key, gen);
  }

  private queue(box: Map<NodeId, [CacheKey, number][]>, node: NodeId, key: CacheKey, gen: number): void {
    let items = box.get(node);
    if (items === undefined) {
      items = [];
      box.set(node, items);
    }
    items.push([key, gen]);
  }

  private flush(): void {
    if (this.downbox.size > 0) {
      for (const [node, items] of this.downbox) this.io.send(node, { t: 'down', shard: this.cfg.shard, epoch: this.epoch, items });
      this.downbox.clear();
    }
    if (this.outbox.size === 0) return;
    for (const [node, items] of this.outbox) this.io.send(node, { t: 'inv', shard: this.cfg.shard, epoch: this.epoch, items });
    this.outbox.clear();
  }
}

/** Write-through: a write memory applied whose home closed before its invalidations were acknowledged. */
function unknownOutcome(shard: number, epoch: number): CoherenceFailure {
  return { ok: false, code: 'TRYAGAIN', message: `shard ${shard}: leadership of term ${epoch} ended while the write invalidated cached copies; its outcome is unknown` };
}

/** Write-through: a read whose home closed after it read memory (what it read may not be shown yet): route it again. */
function readAgain(shard: number, epoch: number): CoherenceFailure {
  return { ok: false, code: 'NOTLEADER', message: `shard ${shard}: leadership of term ${epoch} ended during the read` };
}
