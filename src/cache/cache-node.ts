/**
 * CacheNode: one node's side of the MESI protocol (write-through policy): the node-local lines of every shard,
 * the node's lease from each shard's home, and the requests it has outstanding per key. Pure: time comes from
 * `io.now()`, requests to a shard's home leave through `io.request` (the runtime routes them to the shard's leader),
 * lines live in an injected LineStore (the node's LRU/TTL cache store in the cluster, a Map in tests).
 * docs/cache-coherence.md is the protocol.
 *
 * A read is a hit (answered synchronously, no message) when the key has a line, the shard's lease is live, and no
 * write of that key from this node is in flight. Otherwise it is a miss: one GetS per key goes to the home, later
 * readers of the same key wait for it, and its answer may install the line.
 *
 * Invariants (tests: test/cache/cache-node.test.ts, test/cache/coherence-sim.test.ts):
 *   - A line is served only while now < lease.until, where until = (send time of a request the home answered with
 *     lease: true) + leaseMs. The home counts the same lease from the request's arrival, so the node always stops
 *     first.
 *   - A grant installs only if nothing could have revoked it unseen: the answer's epoch is the lease's epoch, the
 *     shard's incarnation (bumped when its lease lapses) did not change since the request left, no invalidation of
 *     the key arrived meanwhile (`poisoned`), and no write of the key from this node is in flight.
 *   - A node never serves a key while it has a write of that key in flight (it dropped its copy when it sent the
 *     write; the home invalidates the writer only if it still lists a line of it, see cache-home.ts revokeOthers).
 *   - A reader joining a fill already out takes its value only if the fill installed a line; only the last write
 *     of a key sent from this node may install its grant; a lease found lapsed when an answer arrives lapses before
 *     the answer can extend it.
 *   - Every state change goes through mesi.ts `transition` and is counted.
 */
import type { NodeId } from '../raft/types.js';
import { LineAction, LineState, transition, TransitionCounters, type LineEvent } from './mesi.js';
import type { CacheKey, CoherenceFailure, DataAnswer, DirtyItem, DownAck, DownMessage, FlushAnswer, HomeAnswer, InvAck, InvMessage, LeaseAnswer, NodeRequest, WriteRequest, WrittenAnswer } from './coherence-types.js';

export interface Line<V> {
  state: LineState;
  value: V | null;
  gen: number;
  shard: number;
  /**
   * Write-through: when the line last served a hit (io.now()), absent or 0 if it has not since it was installed. Only
   * such lines are refilled after an invalidation (a line nobody read since its last fill is not worth a background
   * read: at most one refill per hit), and only those read within keepLineReadWithinMs are kept by a writer while its
   * write is out (write()). A new line starts without it; a state change of the same line ({ ...line, state }) keeps it.
   */
  readAt?: number;
}

/** Where lines live. `get` touches LRU and hides lines whose TTL passed; evictions are reported to `onEvicted`. */
export interface LineStore<V> {
  get(key: CacheKey): Line<V> | undefined;
  peek(key: CacheKey): Line<V> | undefined;
  put(key: CacheKey, line: Line<V>): void;
  delete(key: CacheKey): void;
  /** Sets the line's readAt (Line.readAt), if the store holds a line of the key. */
  markRead(key: CacheKey, at: number): void;
}

export interface NodeCacheConfig {
  self: NodeId;
  /** Lease length the homes grant, ms (must equal the homes' leaseMs). */
  leaseMs: number;
  /** A shard with lines renews its lease this often, ms (well under leaseMs). */
  renewMs: number;
  /** At most this many evicted keys ride one renewal (the rest are forgotten: the home then invalidates them needlessly). */
  evictedBatchMax: number;
  /**
   * Write-back policy (the homes must run it too): a single-key write of a line held in E or M completes locally
   * (io.execLocal) and leaves it Modified; Modified data goes to the home at most `flushMs` after the line's first
   * unflushed write, when the line is evicted, when the shard's home changes, and with the answer to an invalidation
   * or downgrade.
   */
  writeBack?: boolean;
  flushMs?: number;
  /**
   * Write-through only: after an invalidation drops a line, read the key again in the background so the next read
   * here hits (a read-mostly key written elsewhere stays cached on every node that reads it); at most this many such
   * reads in flight; 0 (the default) = off. Under write-back it would take every writer's E line away (the home
   * downgrades it for the reader), so it is off there.
   */
  refillMax?: number;
  /**
   * Write-through: a writer keeps serving its line while its write is out (and the home invalidates it, one message
   * more) only if the line served a hit within this many ms; otherwise it drops the line when it sends the write and
   * names it, which spares that invalidation. Default 100 (KEEP_LINE_READ_WITHIN_MS). 0: never keep.
   */
  keepLineReadWithinMs?: number;
  /**
   * Write-through: which single-key writes ask the home for a line of the written key (an E grant with the value
   * after the write, `want`). 'always' (the default here): every one, MESI's write-allocate. 'adaptive': a write asks
   * when the key's line served a hit since it was installed here or a read of the key is in flight here; otherwise
   * only while lines on this node are being reused (lineReuse, the share of lines that served a hit before an
   * invalidation or a write of their key ended them, is at least WRITE_ALLOCATE_REUSE_MIN), and else one write in
   * WRITE_ALLOCATE_PROBE_EVERY, which keeps lineReuse measured. A write that does not ask leaves no line behind
   * (no-write-allocate): a key written and not read here costs no grant, no line to install and, at its next write,
   * no line to drop. Under write-back every single-key write asks (the line is what makes the next write local).
   */
  writeAllocate?: WriteAllocate;
}

/** See NodeCacheConfig.writeAllocate. */
export type WriteAllocate = 'always' | 'adaptive';

/**
 * writeAllocate 'adaptive': writes of keys with no sign of being read here allocate lines while at least this share
 * of lines serve a hit before they end. A line costs a grant, an install and a drop (about a quarter of the cluster's
 * CPU per SET at pipeline 16, measured); a miss costs a fill round trip through the home, which is dearer, so the
 * bar is low.
 */
export const WRITE_ALLOCATE_REUSE_MIN = 0.25;
/** writeAllocate 'adaptive': below the bar, one write in this many still allocates, so reuse keeps being sampled. */
export const WRITE_ALLOCATE_PROBE_EVERY = 16;
/** lineReuse is a moving average over about this many ended lines. */
const LINE_REUSE_WINDOW = 64;

/** Default of NodeCacheConfig.keepLineReadWithinMs: a key read this recently is likely read again during a write. */
export const KEEP_LINE_READ_WITHIN_MS = 100;

export interface NodeIO<V, Op, R> {
  now(): number;
  /** Sends a request to the home of `shard` (the shard's leader); the answer or a failure comes back once. */
  request(shard: number, req: NodeRequest<Op, V>, cb: (a: HomeAnswer<V, R> | CoherenceFailure) => void): void;
  /**
   * Write-back: runs the single-key write `op` of `key` on `current` (the line's value) here; its reply and the
   * value after it, or null when it cannot run locally (then it goes to the home as under write-through).
   */
  execLocal?(key: CacheKey, op: Op, current: V | null): { result: R; value: V | null } | null;
}

export type ReadResult<V> = { ok: true; value: V | null; hit: boolean } | CoherenceFailure;
export type WriteResult<R> = { ok: true; result: R } | CoherenceFailure;

export interface NodeCacheStats {
  hits: number;
  misses: number;
  fillsSent: number;
  installs: number;
  writesSent: number;
  invalidationsReceived: number;
  /** E lines turned S because another node read them. */
  downgradesReceived: number;
  /** Lines dropped because their shard's lease lapsed. */
  lapsedLines: number;
  /** Lines dropped because the shard's home changed. */
  homeChangeLines: number;
  evictions: number;
  renewalsSent: number;
  renewalsRefused: number;
  /** Background re-reads after invalidations (refillMax), and those skipped at the limit. */
  refills: number;
  refillsSkipped: number;
  /** writeAllocate 'adaptive': single-key writes sent without asking for a line. */
  writesUnallocated: number;
  /** Write-back: writes completed on a local E/M line, flushes sent / accepted, Modified data handed over in an answer
   *  to an invalidation or downgrade, and Modified data lost (lease lapsed, or the home refused its flush). */
  localWrites: number;
  flushesSent: number;
  flushesAccepted: number;
  writebacksInAnswers: number;
  writebacksLost: number;
}

/** Write-back: a Modified line still in the store: when it became dirty, and its local write count. */
interface Dirty {
  since: number;
  ver: number;
  /** The `ver` a flush in flight carries (0: none). */
  flushing: number;
  /**
   * A flush of this line failed (timed out, or its home failed): it may still reach the home and be taken there, so
   * no further flush of this grant may go (the home cannot order two flushes of one grant: a later one taken first
   * would be overwritten by the older data). The data goes home through a downgrade the node asks for itself
   * (snoopSelf), which also ends the grant, so the old flush is refused whenever it arrives
   * (test/cache/coherence-sim.test.ts, "a flush that timed out is not followed by another flush of its grant").
   */
  snoop: boolean;
}

/** Write-back: Modified data no longer in the store (evicted, expired, or its home changed), until the home has it. */
interface WbEntry<V> {
  shard: number;
  epoch: number;
  gen: number;
  value: V | null;
  flushing: boolean;
  /** A flush of the line this data came from is still out: this one waits for its answer (see `buffer`). */
  afterLine: boolean;
  /** A flush of the line this data came from failed: this data waits for a downgrade (see Dirty.snoop). */
  snoop: boolean;
  /** Given up (counted lost) after this time if no home took it. */
  until: number;
  /**
   * Data of an older home's grant (`epoch` < the shard's lease epoch: the node learned of a new home) is sent as a
   * takeover flush: with the new home's epoch and gen 0 (no grant of that home has gen 0, so it is never taken for
   * a flush of one of its own grants), which that home takes only during its takeover wait. Bound to the first such
   * epoch: a later home may come after that one wrote it and then newer writes (its answer lost), so the data is
   * then given up (lost) rather than sent again.
   */
  takeover: number | null;
}

interface ShardLease {
  epoch: number;
  home: NodeId;
  until: number;
  /** Bumped whenever the node drops the shard's lines on its own (lapse): answers to older requests install nothing. */
  inc: number;
  keys: Set<CacheKey>;
  evicted: [CacheKey, number][];
  lastRenewSent: number;
  renewing: boolean;
  /** Keyless writes ('all') of this shard in flight from this node: fills install nothing meanwhile. */
  allWrites: number;
  lapsed: boolean;
}

interface Fill<V> {
  /** Readers whose call came before the request left: the value memory gave is within their call. */
  waiters: ((r: ReadResult<V>) => void)[];
  /**
   * Readers that joined while the request was out: memory may have been read before their call, after a write they
   * saw complete, so they take the answer only if it installed a line (an installed line is current); otherwise they
   * read again (test/cache/coherence-sim.test.ts, "a read joining a fill sent before a write completed").
   */
  late: ((r: ReadResult<V>) => void)[];
  poisoned: boolean;
}

interface KeyPending<V> {
  fill: Fill<V> | null;
  writes: number;
  writePoisoned: boolean;
  /**
   * While writes of the key are out: the newest grant (epoch, gen) an invalidation of the key named. A write's grant
   * installs only if it is newer (same epoch, higher gen): the home also invalidates a writer it lists as a holder
   * (cache-home.ts revokeOthers), and that revokes the writer's old line, not the grant of the write itself.
   * An invalidation from another epoch sets `writePoisoned` instead.
   */
  writeInv: [epoch: number, gen: number] | null;
  /**
   * Sequence number of the last write of this key sent from this node. Only that write's answer may install its
   * grant: answers can arrive out of order, and an earlier write's grant (granted before the later write reached the
   * home, which then does not invalidate its own writer) holds a value the later write has replaced
   * (test/cache/coherence-sim.test.ts, "reordered answers of two writes from one node").
   */
  lastWrite: number;
  /**
   * Downgrades (E -> S) that arrived before the E grant they name was installed (the grant's answer and the
   * downgrade travel on different paths): that grant installs as S. Each answer takes only the one naming its own
   * grant: a fill and a write of the key can both be out, and the fill's answer used to take (and drop) the mark
   * meant for the write's grant, which then installed as E while the home listed it S beside another reader
   * (test/cache/coherence-sim.test.ts, "a downgrade meant for a write's grant is not taken by a fill's answer").
   */
  down: [epoch: number, gen: number][];
}

/** Whether a downgrade of grant (epoch, gen) arrived before that grant's answer; takes the mark if so. */
function takeDown<V>(p: KeyPending<V>, epoch: number, gen: number): boolean {
  const i = p.down.findIndex(([e, g]) => e === epoch && g === gen);
  if (i < 0) return false;
  p.down.splice(i, 1);
  return true;
}

export class CacheNode<V, Op, R> {
  readonly stats: NodeCacheStats = {
    hits: 0,
    misses: 0,
    fillsSent: 0,
    installs: 0,
    writesSent: 0,
    invalidationsReceived: 0,
    downgradesReceived: 0,
    lapsedLines: 0,
    homeChangeLines: 0,
    evictions: 0,
    renewalsSent: 0,
    renewalsRefused: 0,
    refills: 0,
    refillsSkipped: 0,
    writesUnallocated: 0,
    localWrites: 0,
    flushesSent: 0,
    flushesAccepted: 0,
    writebacksInAnswers: 0,
    writebacksLost: 0,
  };
  readonly transitions = new TransitionCounters();
  /** Lines held per state (index: LineState). */
  readonly lines = [0, 0, 0, 0];

  private readonly shards = new Map<number, ShardLease>();
  private readonly pend = new Map<CacheKey, KeyPending<V>>();
  private writeSeq = 0;
  private readonly writeBack: boolean;
  private readonly flushMs: number;
  private readonly refillMax: number;
  private refillsInFlight = 0;
  private readonly keepLineReadWithinMs: number;
  /** Write-through with writeAllocate 'adaptive' (see there). */
  private readonly adaptiveAllocate: boolean;
  /** Write-through: moving share of lines that served a hit before an invalidation or a write ended them (lineReuse). */
  private reuse = 1;
  private allocateProbe = 0;
  private readonly dirty = new Map<CacheKey, Dirty>();
  private readonly wb = new Map<CacheKey, WbEntry<V>>();
  /**
   * Modified data already handed over in an answer, kept for one lease: if the home asks again (its request or our
   * answer was lost on a broken link), the answer carries it again (the home takes data only for a grant it is
   * still revoking, so a repeat is harmless).
   */
  private readonly handedOver = new Map<CacheKey, { epoch: number; gen: number; value: V | null; until: number }>();
  /** Write-back: keys with a snoopSelf request out. */
  private readonly snooping = new Set<CacheKey>();

  constructor(
    private readonly cfg: NodeCacheConfig,
    private readonly store: LineStore<V>,
    private readonly io: NodeIO<V, Op, R>,
  ) {
    this.writeBack = cfg.writeBack === true;
    this.flushMs = cfg.flushMs ?? 100;
    this.refillMax = this.writeBack ? 0 : Math.max(0, cfg.refillMax ?? 0);
    this.keepLineReadWithinMs = Math.max(0, cfg.keepLineReadWithinMs ?? KEEP_LINE_READ_WITHIN_MS);
    this.adaptiveAllocate = !this.writeBack && cfg.writeAllocate === 'adaptive';
  }

  /** Write-back: Modified lines in the store, and Modified data waiting outside it (INFO). */
  get dirtyCounts(): { lines: number; buffered: number } {
    return { lines: this.dirty.size, buffered: this.wb.size };
  }

  /** Write-back: the Modified data of `key` waiting in the write-back buffer, if any (tests, the simulator). */
  bufferedOf(key: CacheKey): { shard: number; epoch: number; gen: number; value: V | null } | undefined {
    const b = this.wb.get(key);
    return b === undefined ? undefined : { shard: b.shard, epoch: b.epoch, gen: b.gen, value: b.value };
  }

  /** The node's state of a key (CACHE.STATE): I unless a live line holds it. */
  stateOf(key: CacheKey, shard: number): LineState {
    const line = this.store.peek(key);
    const lease = this.shards.get(shard);
    if (line === undefined || lease === undefined || lease.until <= this.io.now()) return LineState.I;
    return line.state;
  }

  /** The shard's lease as this node sees it (tests, INFO). */
  leaseOf(shard: number): { epoch: number; home: NodeId; until: number } | undefined {
    const l = this.shards.get(shard);
    return l === undefined ? undefined : { epoch: l.epoch, home: l.home, until: l.until };
  }

  /**
   * May a line of `key` be served locally now (the shard's lease is live; under write-back, no write of the key from
   * this node is in flight)? The edge's hit path checks this, then looks the line up itself, calls countHit and
   * records the time it returns on the store entry (no Line object).
   */
  mayHit(shard: number, key: CacheKey): boolean {
    const lease = this.shards.get(shard);
    if (lease === undefined || lease.until <= this.io.now()) return false;
    if (!this.writeBack) return true; // (a write of the key from this node may be out: see write())
    const p = this.pend.get(key);
    return p === undefined || p.writes === 0;
  }

  /**
   * Counts a hit the caller served from a line it found after mayHit said yes. Returns what the caller records as the
   * line's readAt (the line is in its hands, so this costs no lookup), or 0: nothing to record (write-back).
   */
  countHit(): number {
    this.stats.hits++;
    // 0 means "no hit": a clock that reads exactly 0 (a simulated one at its start) records the least positive time.
    return this.writeBack ? 0 : this.io.now() || Number.MIN_VALUE;
  }

  read(shard: number, key: CacheKey, cb: (r: ReadResult<V>) => void): void {
    const lease = this.lease(shard);
    const p = this.pend.get(key);
    const now = this.io.now();
    const buffered = this.wb.get(key);
    if (buffered !== undefined && buffered.shard === shard && buffered.epoch === lease.epoch && lease.until > now && (p === undefined || p.writes === 0)) {
      // Our own Modified data, evicted and on its way home: this node still owns the line.
      this.stats.hits++;
      cb({ ok: true, value: buffered.value, hit: true });
      return;
    }
    if (this.mayHit(shard, key)) {
      const line = this.store.get(key);
      if (line !== undefined) {
        transition(line.state, 'read');
        const at = this.countHit();
        if (at !== 0) this.store.markRead(key, at);
        cb({ ok: true, value: line.value, hit: true });
        return;
      }
    }
    this.stats.misses++;
    const pk = p ?? this.pending(key);
    if (pk.fill !== null) {
      pk.fill.late.push(cb);
      return;
    }
    this.sendFill(shard, key, lease, pk, now, cb);
  }

  /**
   * Write-through, after an invalidation dropped a line that served a hit since it was installed: reads the key
   * again in the background (no client waits on it; readers arriving meanwhile join it as late readers), so the next read on this node is a hit again. An
   * ordinary fill: it waits at the home for the write that caused the invalidation, reads memory after it, and
   * installs only under the same conditions as any fill. At most `refillMax` in flight.
   */
  private refill(shard: number, key: CacheKey): void {
    const lease = this.shards.get(shard);
    const p = this.pend.get(key);
    if (lease === undefined || lease.until <= this.io.now() || (p !== undefined && (p.fill !== null || p.writes > 0))) return;
    if (this.refillsInFlight >= this.refillMax) {
      this.stats.refillsSkipped++;
      return;
    }
    this.refillsInFlight++;
    this.stats.refills++;
    this.sendFill(shard, key, lease, p ?? this.pending(key), this.io.now(), null);
  }

  /** Sends a GetS for `key` with `cb` as its first reader (null: a refill, nobody waits). */
  private sendFill(shard: number, key: CacheKey, lease: ShardLease, pk: KeyPending<V>, now: number, cb: ((r: ReadResult<V>) => void) | null): void {
    const cacheable = pk.writes === 0 && lease.allWrites === 0;
    const fill: Fill<V> = { waiters: cb === null ? [] : [cb], late: [], poisoned: !cacheable };
    pk.fill = fill;
    const inc = lease.inc;
    const sentAt = now;
    if (cb !== null) this.stats.fillsSent++;
    this.io.request(shard, { t: 'gets', from: this.cfg.self, shard, key, cacheable }, (a) => {
      if (cb === null) this.refillsInFlight--;
      if (pk.fill === fill) pk.fill = null;
      this.forgetIfIdle(key, pk);
      if (!a.ok) {
        for (const w of fill.waiters) w(a);
        // Readers that joined a refill did not ask for it: they read again on their own.
        if (cb === null) this.readAgain(shard, key, fill.late);
        else for (const w of fill.late) w(a);
        return;
      }
      const d = a as DataAnswer<V>;
      const live = this.onAnswer(shard, a, sentAt);
      let installed = false;
      if (d.grant !== null && live && !fill.poisoned && lease.inc === inc && (this.pend.get(key)?.writes ?? 0) === 0 && lease.allWrites === 0) {
        const downgraded = takeDown(pk, d.epoch, d.gen);
        installed = this.install(shard, key, d.grant === 'E' && !downgraded ? 'fill-e' : 'fill-s', d.value, d.gen);
      }
      if (installed) for (const w of fill.late) w({ ok: true, value: d.value, hit: false });
      else this.readAgain(shard, key, fill.late);
      for (const w of fill.waiters) w({ ok: true, value: d.value, hit: false });
    });
  }

  /**
   * A write-through write of `keys` ('all' = every key of the shard). `want`: a key whose value after the write the
   * node would like to hold in E (the home decides).
   */
  write(shard: number, keys: CacheKey[] | 'all', op: Op, wanted: CacheKey | undefined, cb: (r: WriteResult<R>) => void): void {
    if (this.writeBack && keys !== 'all' && keys.length === 1 && wanted === keys[0] && this.writeLocal(shard, keys[0]!, op, cb)) return;
    /** The key whose line the request asks for: `wanted`, unless writeAllocate 'adaptive' decides against it below. */
    let want = wanted;
    const lease = this.lease(shard);
    const seq = ++this.writeSeq;
    /** Write-through: the lines of the written keys, kept (and served) while the write is out. */
    let kept: Map<CacheKey, { shard: number; gen: number }> | undefined;
    let dropped: [CacheKey, number][] | undefined;
    if (keys === 'all') {
      for (const key of [...lease.keys]) this.drop(key, 'write-wt');
      // Fills of this shard in flight captured the old incarnation: none of them will install.
      lease.inc++;
      lease.allWrites++;
    } else {
      for (const key of keys) {
        // Write-through, a line that served a hit lately (keepLineReadWithinMs): it stays and is served while the write is
        // out (reading the value before a write that has not completed is linearizable). The home commits the write
        // first, then invalidates every listed copy, this one too, and answers after the acknowledgements
        // (cache-home.ts commitThenInvalidate). Only an acknowledged invalidation may end it before the write
        // completes, since the answer may be lost or late while other nodes already read the new value
        // (test/cache/coherence-sim.test.ts, "a writer keeps serving its line until its own write invalidates it").
        // A line not read lately goes now and is named in the request (`dropped`), which spares the home that
        // invalidation (write-heavy keys). Write-back: the line goes now (a Modified one is flushed first).
        const line = this.writeBack ? undefined : this.store.peek(key);
        const lastHit = line?.readAt ?? 0;
        if (line !== undefined && lastHit !== 0 && this.io.now() - lastHit < this.keepLineReadWithinMs) (kept ??= new Map()).set(key, { shard: line.shard, gen: line.gen });
        else {
          if (line !== undefined && line.shard === shard && (line.state === LineState.S || line.state === LineState.E)) (dropped ??= []).push([key, line.gen]);
          this.drop(key, 'write-wt');
        }
        if (key === want && this.adaptiveAllocate && lastHit === 0 && (this.pend.get(key)?.fill ?? null) === null && !this.allocateAnyway()) {
          want = undefined;
          this.stats.writesUnallocated++;
        }
        const p = this.pending(key);
        p.writes++;
        p.lastWrite = seq;
        if (p.fill !== null) p.fill.poisoned = true;
      }
    }
    const inc = lease.inc;
    const sentAt = this.io.now();
    this.stats.writesSent++;
    const req: WriteRequest<Op> = { t: 'write', from: this.cfg.self, shard, keys, op };
    if (want !== undefined) req.want = want;
    if (dropped !== undefined) req.dropped = { epoch: lease.epoch, items: dropped };
    this.io.request(shard, req, (a) => {
      let installable = false;
      let revoked: [epoch: number, gen: number] | null = null;
      let down: KeyPending<V> | null = null;
      if (keys === 'all') lease.allWrites--;
      else {
        for (const key of keys) {
          const p = this.pend.get(key);
          if (p === undefined) continue;
          p.writes--;
          if (p.writes === 0) {
            if (key === want) {
              installable = !p.writePoisoned && p.lastWrite === seq;
              revoked = p.writeInv;
              down = p;
            }
            p.writePoisoned = false;
            p.writeInv = null;
          }
          this.forgetIfIdle(key, p);
        }
      }
      // A kept line goes with the answer (whatever it says: a write that failed or timed out may still reach memory);
      // a line that replaced it since stays, and the grant below may replace it.
      if (kept !== undefined) {
        for (const [key, line] of kept) {
          // (By grant, not object: a downgrade E -> S replaces the line object.)
          const cur = this.store.peek(key);
          if (cur !== undefined && cur.shard === line.shard && cur.gen === line.gen) this.drop(key, 'write-wt');
        }
      }
      if (!a.ok) return cb(a);
      const w = a as WrittenAnswer<V, R>;
      const live = this.onAnswer(shard, a, sentAt);
      if (
        w.grant !== null &&
        installable &&
        (revoked === null || (revoked[0] === w.epoch && w.grant.gen > revoked[1])) &&
        live &&
        lease.inc === inc &&
        lease.allWrites === 0 &&
        w.grant.key === want
      ) {
        const downgraded = down !== null && takeDown(down, w.epoch, w.grant.gen);
        this.install(shard, want, downgraded ? 'fill-s' : 'fill-e', w.grant.value, w.grant.gen);
      }
      cb({ ok: true, result: w.result });
    });
  }

  /**
   * Write-back: a write of a line this node holds in E or M, done here (E -> M). False when it cannot be (no such
   * line, lease not live, something of the key in flight, or execLocal declines): the caller sends it to the home.
   */
  private writeLocal(shard: number, key: CacheKey, op: Op, cb: (r: WriteResult<R>) => void): boolean {
    const now = this.io.now();
    const lease = this.shards.get(shard);
    if (lease === undefined || lease.until <= now || this.pend.has(key) || this.io.execLocal === undefined) return false;
    const line = this.store.peek(key);
    if (line === undefined || line.shard !== shard || (line.state !== LineState.E && line.state !== LineState.M)) return false;
    const r = this.io.execLocal(key, op, line.value);
    if (r === null) return false;
    const t = transition(line.state, 'write-wb');
    this.transitions.count(line.state, t.next);
    this.lines[line.state]!--;
    this.lines[t.next]!++;
    this.store.put(key, { state: t.next, value: r.value, gen: line.gen, shard });
    let d = this.dirty.get(key);
    if (d === undefined) {
      d = { since: now, ver: 0, flushing: 0, snoop: false };
      this.dirty.set(key, d);
    }
    d.ver++;
    this.stats.localWrites++;
    if (this.store.peek(key) === undefined) {
      // The store would not keep it (too large, or expiring within the TTL margin): the data goes home at once.
      this.lines[t.next]!--;
      this.transitions.count(t.next, LineState.I);
      lease.keys.delete(key);
      this.buffer(key, shard, lease.epoch, line.gen, r.value, this.undirty(key));
    }
    cb({ ok: true, result: r.result });
    return true;
  }

  /**
   * Write-back: Modified data leaves the store; it is served from here (same home) and flushed at the next tick, or
   * once the answer to a flush of the line still out comes back (`lineFlushOut`): two flushes of one grant out at
   * once can arrive in either order, and the home, which takes both, would write the older data last
   * (test/cache/coherence-sim.test.ts, "an evicted line's flush waits for the flush of the line still out").
   */
  private buffer(key: CacheKey, shard: number, epoch: number, gen: number, value: V | null, line: { flushOut: boolean; snoop: boolean }): void {
    this.wb.set(key, { shard, epoch, gen, value, flushing: line.flushOut, afterLine: line.flushOut, snoop: line.snoop, until: this.io.now() + 2 * this.cfg.leaseMs, takeover: null });
  }

  /** Write-back: forgets the Modified line's flush state: whether a flush of it is still out, or one failed. */
  private undirty(key: CacheKey): { flushOut: boolean; snoop: boolean } {
    const d = this.dirty.get(key);
    this.dirty.delete(key);
    return { flushOut: d !== undefined && d.flushing !== 0, snoop: d?.snoop === true };
  }

  /**
   * Write-back: asks the home to downgrade this node's own E grant of `key` (a read miss that will not be cached:
   * the home asks every E holder of the key, the reader too, for a downgrade, whose answer carries the Modified
   * data). One at a time per key; sent again at a tick while the data is still here.
   */
  private snoopSelf(shard: number, key: CacheKey): void {
    if (this.snooping.has(key)) return;
    this.snooping.add(key);
    const sentAt = this.io.now();
    this.io.request(shard, { t: 'gets', from: this.cfg.self, shard, key, cacheable: false }, (a) => {
      this.snooping.delete(key);
      if (a.ok) this.onAnswer(shard, a, sentAt);
    });
  }

  /** Write-back: the data this node holds for (key, grant gen of `epoch`): its M line, buffered, or handed over. */
  private takeDirty(key: CacheKey, epoch: number, gen: number, out: DirtyItem[]): void {
    if (!this.writeBack) return;
    const line = this.store.peek(key);
    const lease = line === undefined ? undefined : this.shards.get(line.shard);
    let value: { v: V | null } | undefined;
    if (line !== undefined && line.state === LineState.M && line.gen === gen && lease?.epoch === epoch) {
      value = { v: line.value };
      this.dirty.delete(key);
    } else {
      const b = this.wb.get(key);
      if (b !== undefined && b.epoch === epoch && b.gen === gen) {
        value = { v: b.value };
        this.wb.delete(key);
      } else {
        const h = this.handedOver.get(key);
        if (h !== undefined && h.epoch === epoch && h.gen === gen) out.push([key, gen, h.value]);
        return;
      }
    }
    out.push([key, gen, value.v]);
    this.stats.writebacksInAnswers++;
    this.handedOver.set(key, { epoch, gen, value: value.v, until: this.io.now() + this.cfg.leaseMs });
  }

  /** An invalidation from a home: drop the lines, poison what is in flight for those keys, acknowledge. */
  onInvalidate(msg: InvMessage): InvAck {
    this.stats.invalidationsReceived += msg.items.length;
    const data: DirtyItem[] = [];
    let refill: CacheKey[] | null = null;
    for (const [key, gen] of msg.items) {
      this.takeDirty(key, msg.epoch, gen, data);
      const line = this.writeBack ? this.store.peek(key) : undefined;
      const lineEpoch = line === undefined ? undefined : this.shards.get(line.shard)?.epoch;
      const newer = line !== undefined && lineEpoch !== undefined && (lineEpoch > msg.epoch || (lineEpoch === msg.epoch && line.gen > gen));
      // Write-back: a line of a newer grant stays (this is a late repeat of an invalidation the home has seen
      // answered, or it would not have granted again), and it may hold Modified data nobody else has. So does a line
      // of a newer home: an invalidation from a deposed home that does not know it yet revokes none of the new home's
      // grants, and dropping a Modified line here (its data goes only with an answer to its own home) lost it
      // (test/cache/coherence-sim.test.ts, "an invalidation from a deposed home leaves the new home's lines alone").
      const dropped = !newer && this.refillMax > 0 && (this.store.peek(key)?.readAt ?? 0) !== 0;
      if (!newer) this.drop(key, 'inv');
      const p = this.pend.get(key);
      if (dropped) (refill ??= []).push(key);
      if (p !== undefined) {
        if (p.fill !== null) p.fill.poisoned = true;
        if (p.writes > 0) {
          if (p.writeInv === null) p.writeInv = [msg.epoch, gen];
          else if (p.writeInv[0] === msg.epoch) p.writeInv[1] = Math.max(p.writeInv[1], gen);
          else p.writePoisoned = true;
        }
      }
    }
    if (refill !== null) for (const key of refill) this.refill(msg.shard, key);
    return { t: 'invack', from: this.cfg.self, shard: msg.shard, epoch: msg.epoch, items: msg.items, ...(data.length > 0 ? { data } : {}) };
  }

  /**
   * A downgrade from a home: another node now shares these lines, so an E line of the named grant becomes S. A
   * grant not installed yet (its answer still on its way) is remembered and installs as S.
   */
  onDowngrade(msg: DownMessage): DownAck {
    const data: DirtyItem[] = [];
    for (const [key, gen] of msg.items) {
      this.takeDirty(key, msg.epoch, gen, data);
      const line = this.store.peek(key);
      const lease = this.shards.get(msg.shard);
      if (line !== undefined && line.shard === msg.shard && line.gen === gen && lease !== undefined && lease.epoch === msg.epoch) {
        if (line.state !== LineState.E && line.state !== LineState.M) continue;
        const t = transition(line.state, 'fwd-gets');
        this.transitions.count(line.state, t.next);
        this.lines[line.state]!--;
        this.lines[t.next]!++;
        this.store.put(key, { ...line, state: t.next });
        this.stats.downgradesReceived++;
      } else {
        const p = this.pend.get(key);
        if (p !== undefined) p.down.push([msg.epoch, gen]);
      }
    }
    return { t: 'downack', from: this.cfg.self, shard: msg.shard, epoch: msg.epoch, items: msg.items, ...(data.length > 0 ? { data } : {}) };
  }

  /** The store evicted a line (LRU or TTL). */
  onEvicted(key: CacheKey, line: Line<V>): void {
    const t = transition(line.state, 'evict');
    this.transitions.count(line.state, t.next);
    this.lines[line.state]!--;
    this.stats.evictions++;
    const lease = this.shards.get(line.shard);
    if (lease === undefined) return;
    lease.keys.delete(key);
    if (line.state === LineState.M) {
      // Its data goes home (the home keeps listing this node until then: not reported as evicted).
      this.buffer(key, line.shard, lease.epoch, line.gen, line.value, this.undirty(key));
      return;
    }
    if (lease.evicted.length < this.cfg.evictedBatchMax) lease.evicted.push([key, line.gen]);
  }

  /** Drives time: drops the lines of lapsed leases, renews the leases of shards that hold lines. Call every few ms. */
  tick(): void {
    const now = this.io.now();
    for (const [shard, lease] of this.shards) {
      if (lease.until <= now && !lease.lapsed) this.lapse(lease, shard);
      // (Buffered Modified data of this home's grants keeps the lease renewed too: a lapse drops it.)
      const held = lease.keys.size > 0 || lease.evicted.length > 0 || (this.wb.size > 0 && [...this.wb.values()].some((b) => b.shard === shard && b.epoch === lease.epoch));
      if (held && !lease.renewing && now - lease.lastRenewSent >= this.cfg.renewMs) this.renew(shard, lease, now);
    }
    if (!this.writeBack) return;
    for (const [key, d] of this.dirty) {
      if (d.snoop) {
        const line = this.store.peek(key);
        if (line !== undefined) this.snoopSelf(line.shard, key);
      } else if (d.flushing === 0 && now - d.since >= this.flushMs) this.flushLine(key, d, now);
    }
    for (const [key, b] of [...this.wb]) {
      if (b.flushing) continue;
      if (now > b.until) {
        this.wb.delete(key);
        this.stats.writebacksLost++;
      } else if (b.snoop && this.shards.get(b.shard)?.epoch === b.epoch) this.snoopSelf(b.shard, key);
      else this.flushBuffered(key, b, now); // (of an older home's grant: a takeover flush, see WbEntry.takeover)
    }
    for (const [key, h] of [...this.handedOver]) if (h.until < now) this.handedOver.delete(key);
  }

  /** Write-back: sends a Modified line home; accepted, it is clean (E) unless written again meanwhile. */
  private flushLine(key: CacheKey, d: Dirty, now: number): void {
    const line = this.store.peek(key);
    const lease = line === undefined ? undefined : this.shards.get(line.shard);
    if (line === undefined || line.state !== LineState.M || lease === undefined) {
      this.dirty.delete(key);
      return;
    }
    const ver = d.ver;
    const { shard, gen } = line;
    const epoch = lease.epoch;
    d.flushing = ver;
    this.stats.flushesSent++;
    this.io.request(shard, { t: 'flush', from: this.cfg.self, shard, epoch, key, gen, value: line.value }, (a) => {
      const mine = this.dirty.get(key) === d;
      if (mine) d.flushing = 0;
      const b = this.wb.get(key);
      if (!mine && b !== undefined && b.afterLine && b.shard === shard && b.epoch === epoch && b.gen === gen) {
        // The line moved to the buffer while this flush was out: the buffer's own flush may go now (or, this one
        // failed, the buffer waits for a downgrade).
        b.afterLine = false;
        b.flushing = false;
        if (!a.ok) b.snoop = true;
      }
      if (!a.ok) {
        // It may still arrive and be taken: no other flush of this grant (Dirty.snoop).
        if (mine) d.snoop = true;
        return;
      }
      const f = a as FlushAnswer;
      this.onAnswer(shard, a, now);
      const cur = this.store.peek(key);
      const same = mine && cur !== undefined && cur.state === LineState.M && cur.gen === gen && cur.shard === shard;
      if (f.accepted) {
        this.stats.flushesAccepted++;
        if (same && d.ver === ver) {
          const t = transition(LineState.M, 'flushed');
          this.transitions.count(LineState.M, t.next);
          this.lines[LineState.M]!--;
          this.lines[t.next]!++;
          this.store.put(key, { ...cur, state: t.next });
          this.dirty.delete(key);
        } else if (same) d.since = now; // written again after this flush left: due flushMs after that at the latest
      } else if (!f.pending && same) {
        // The home no longer lists this grant (our lease lapsed there): the line may be stale and its data is lost.
        this.drop(key, 'lapse'); // (counts the loss)
      }
    });
  }

  private flushBuffered(key: CacheKey, b: WbEntry<V>, now: number): void {
    // A flush carries its grant's epoch, except the takeover flush of an older home's data (WbEntry.takeover): a
    // flush of an older epoch reaching a new home may be one sent to its predecessor before the data was taken home
    // there by an invalidation and overwritten by later writes (a request parked through the election, or delayed),
    // so the new home takes only takeover flushes, which the node sends once it knows that home, for data it still
    // held then (cache-home.ts flushLine; test/cache/coherence-sim.test.ts, "a flush delayed across a leader change
    // does not overwrite newer writes").
    const lease = this.shards.get(b.shard);
    let epoch = b.epoch;
    let gen = b.gen;
    if (lease !== undefined && lease.epoch > b.epoch) {
      if (b.takeover === null) b.takeover = lease.epoch;
      else if (b.takeover !== lease.epoch) {
        this.wb.delete(key);
        this.stats.writebacksLost++;
        return;
      }
      epoch = b.takeover;
      gen = 0;
    }
    b.flushing = true;
    this.stats.flushesSent++;
    this.io.request(b.shard, { t: 'flush', from: this.cfg.self, shard: b.shard, epoch, key, gen, value: b.value }, (a) => {
      b.flushing = false;
      if (!a.ok) return;
      const f = a as FlushAnswer;
      this.onAnswer(b.shard, a, now);
      if (this.wb.get(key) !== b) return; // handed over in an answer meanwhile
      if (f.accepted) this.stats.flushesAccepted++;
      else if (f.pending) return; // an invalidation or downgrade on its way here will take it
      else if (epoch === b.epoch && a.epoch > b.epoch) return; // a new home refused it: sent again as a takeover flush
      else this.stats.writebacksLost++;
      this.wb.delete(key);
    });
  }

  // ------------------------------------------------------------------ internals

  /** The shard's lease ran out: its lines go, and answers to requests sent before now install nothing. */
  private lapse(lease: ShardLease, shard: number): void {
    lease.lapsed = true;
    lease.inc++;
    for (const key of [...lease.keys]) {
      this.drop(key, 'lapse');
      this.stats.lapsedLines++;
    }
    // Write-back: buffered Modified data of this lease's grants goes too (lost, like the Modified lines). The home
    // forgets the node's grants once its own view of the lease ran out, so another node may write the key without
    // invalidating this one; kept, the buffer was served again once a later answer renewed the lease (read() serves
    // it before the store) and its flush was refused anyway (test/cache/coherence-sim.test.ts, "buffered Modified
    // data does not outlive a lapsed lease"). Data of an older home's grants (a takeover flush) is not served and is
    // left to the new home's takeover wait.
    for (const [key, b] of [...this.wb]) {
      if (b.shard !== shard || b.epoch !== lease.epoch) continue;
      this.wb.delete(key);
      this.stats.writebacksLost++;
    }
  }

  private lease(shard: number): ShardLease {
    let l = this.shards.get(shard);
    if (l === undefined) {
      l = { epoch: -1, home: 0, until: 0, inc: 0, keys: new Set(), evicted: [], lastRenewSent: Number.NEGATIVE_INFINITY, renewing: false, allWrites: 0, lapsed: true };
      this.shards.set(shard, l);
    }
    return l;
  }

  private pending(key: CacheKey): KeyPending<V> {
    let p = this.pend.get(key);
    if (p === undefined) {
      p = { fill: null, writes: 0, writePoisoned: false, writeInv: null, lastWrite: 0, down: [] };
      this.pend.set(key, p);
    }
    return p;
  }

  private forgetIfIdle(key: CacheKey, p: KeyPending<V>): void {
    if (p.fill === null && p.writes === 0 && this.pend.get(key) === p) this.pend.delete(key);
  }

  private renew(shard: number, lease: ShardLease, now: number): void {
    lease.renewing = true;
    lease.lastRenewSent = now;
    const evicted = lease.evicted.splice(0);
    this.stats.renewalsSent++;
    this.io.request(shard, { t: 'renew', from: this.cfg.self, shard, epoch: lease.epoch, evicted }, (a) => {
      lease.renewing = false;
      if (!a.ok) return;
      if (!(a as LeaseAnswer).lease) this.stats.renewalsRefused++;
      this.onAnswer(shard, a, now);
    });
  }

  /**
   * Applies what every answer says about the home: a newer epoch drops the old home's lines; `lease: true` extends
   * the lease to the request's send time + leaseMs. Returns whether a grant in this answer may be installed.
   */
  private onAnswer(shard: number, a: HomeAnswer<V, R>, sentAt: number): boolean {
    const lease = this.lease(shard);
    if (a.epoch < lease.epoch) return false;
    // A lease that ran out while the node did not tick (paused, stalled) lapses here, before this answer extends it:
    // the home has forgotten the node's lines once its own view of the lease ran out, so a write may have changed
    // them without invalidating them (test/cache/coherence-sim.test.ts, "a renewal answered after an unnoticed lapse").
    if (lease.until <= this.io.now() && !lease.lapsed) this.lapse(lease, shard);
    if (a.epoch > lease.epoch) {
      for (const key of [...lease.keys]) {
        this.drop(key, 'new-home');
        this.stats.homeChangeLines++;
      }
      lease.epoch = a.epoch;
      lease.home = a.home;
      lease.until = 0;
      lease.evicted.length = 0;
    }
    if (!a.lease) return false;
    const until = sentAt + this.cfg.leaseMs;
    if (until > lease.until) lease.until = until;
    const now = this.io.now();
    if (lease.until > now) lease.lapsed = false;
    // A grant rides on the lease of its own request, not on one a later request renewed: a request that waited at
    // the home (takeover wait, invalidations) is granted under a lease that may have run out there before the answer
    // arrived, and the home then dropped the grant without invalidating it (test/cache/coherence-sim.test.ts,
    // "a grant whose own lease ran out does not install").
    return until > now;
  }

  /** Reads of late joiners whose fill installed nothing: one new fill for all of them (or hits). */
  private readAgain(shard: number, key: CacheKey, cbs: ((r: ReadResult<V>) => void)[]): void {
    let fill: Fill<V> | null = null;
    for (const cb of cbs) {
      // Their calls all came before the new request leaves, so they wait on it as ordinary waiters.
      if (fill !== null && this.pend.get(key)?.fill === fill) fill.waiters.push(cb);
      else {
        const before = this.pend.get(key)?.fill ?? null;
        this.read(shard, key, cb);
        const now = this.pend.get(key)?.fill ?? null;
        fill = now !== before ? now : null;
      }
    }
  }

  /** Returns whether the store holds the line now. */
  private install(shard: number, key: CacheKey, event: LineEvent, value: V | null, gen: number): boolean {
    const lease = this.lease(shard);
    // A line left from a lapsed lease (the tick has not dropped it yet) goes first.
    if (this.store.peek(key) !== undefined) this.drop(key, 'lapse');
    const t = transition(LineState.I, event);
    this.store.put(key, { state: t.next, value, gen, shard });
    // The store may refuse a line (too large for its limits): count only what it holds.
    if (this.store.peek(key) === undefined) return false;
    this.transitions.count(LineState.I, t.next);
    this.lines[t.next]!++;
    lease.keys.add(key);
    this.stats.installs++;
    return true;
  }

  /** writeAllocate 'adaptive', a write of a key with no sign of being read here: whether it should allocate anyway. */
  private allocateAnyway(): boolean {
    if (this.reuse >= WRITE_ALLOCATE_REUSE_MIN) return true;
    this.allocateProbe = (this.allocateProbe + 1) % WRITE_ALLOCATE_PROBE_EVERY;
    return this.allocateProbe === 0;
  }

  /**
   * Write-through: the share of lines that served a hit before an invalidation or a write of their key ended them, as
   * a moving average (writeAllocate 'adaptive' goes by it; INFO cache_line_reuse). 1 until a line ends.
   */
  get lineReuse(): number {
    return this.reuse;
  }

  private drop(key: CacheKey, event: LineEvent): void {
    const line = this.store.peek(key);
    if (line === undefined) return;
    if (!this.writeBack && (event === 'inv' || event === 'write-wt')) this.reuse += (((line.readAt ?? 0) !== 0 ? 1 : 0) - this.reuse) / LINE_REUSE_WINDOW;
    const t = transition(line.state, event);
    if (line.state === LineState.M) {
      const state = this.undirty(key);
      const lease = this.shards.get(line.shard);
      if (t.action === LineAction.SendData && event !== 'inv' && event !== 'fwd-gets' && lease !== undefined) {
        // (inv / fwd-gets: the caller put the data in its answer.) A write sent home, or a new home: flush it there.
        this.buffer(key, line.shard, lease.epoch, line.gen, line.value, state);
      } else if (t.action === LineAction.LoseData) this.stats.writebacksLost++;
    }
    this.store.delete(key);
    this.transitions.count(line.state, t.next);
    this.lines[line.state]!--;
    this.shards.get(line.shard)?.keys.delete(key);
  }
}
