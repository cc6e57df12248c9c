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
import { LineState, transition, TransitionCounters, type LineEvent } from './mesi.js';
import type { CacheKey, CoherenceFailure, DataAnswer, DownAck, DownMessage, HomeAnswer, InvAck, InvMessage, LeaseAnswer, NodeRequest, WrittenAnswer } from './coherence-types.js';

export interface Line<V> {
  state: LineState;
  value: V | null;
  gen: number;
  shard: number;
}

/** Where lines live. `get` touches LRU and hides lines whose TTL passed; evictions are reported to `onEvicted`. */
export interface LineStore<V> {
  get(key: CacheKey): Line<V> | undefined;
  peek(key: CacheKey): Line<V> | undefined;
  put(key: CacheKey, line: Line<V>): void;
  delete(key: CacheKey): void;
}

export interface NodeCacheConfig {
  self: NodeId;
  /** Lease length the homes grant, ms (must equal the homes' leaseMs). */
  leaseMs: number;
  /** A shard with lines renews its lease this often, ms (well under leaseMs). */
  renewMs: number;
  /** At most this many evicted keys ride one renewal (the rest are forgotten: the home then invalidates them needlessly). */
  evictedBatchMax: number;
}

export interface NodeIO<V, Op, R> {
  now(): number;
  /** Sends a request to the home of `shard` (the shard's leader); the answer or a failure comes back once. */
  request(shard: number, req: NodeRequest<Op>, cb: (a: HomeAnswer<V, R> | CoherenceFailure) => void): void;
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
   * A downgrade (E -> S) that arrived before the E grant it names was installed (the grant's answer and the
   * downgrade travel on different paths): that grant installs as S.
   */
  down: [epoch: number, gen: number] | null;
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
  };
  readonly transitions = new TransitionCounters();
  /** Lines held per state (index: LineState). */
  readonly lines = [0, 0, 0, 0];

  private readonly shards = new Map<number, ShardLease>();
  private readonly pend = new Map<CacheKey, KeyPending<V>>();
  private writeSeq = 0;

  constructor(
    private readonly cfg: NodeCacheConfig,
    private readonly store: LineStore<V>,
    private readonly io: NodeIO<V, Op, R>,
  ) {}

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

  /** A hit (counted) when the key can be served locally now; undefined otherwise, with nothing counted (call read()). */
  tryHit(shard: number, key: CacheKey): Line<V> | undefined {
    const lease = this.shards.get(shard);
    if (lease === undefined || lease.until <= this.io.now()) return undefined;
    const p = this.pend.get(key);
    if (p !== undefined && p.writes > 0) return undefined;
    const line = this.store.get(key);
    if (line === undefined) return undefined;
    transition(line.state, 'read');
    this.stats.hits++;
    return line;
  }

  read(shard: number, key: CacheKey, cb: (r: ReadResult<V>) => void): void {
    const lease = this.lease(shard);
    const p = this.pend.get(key);
    const now = this.io.now();
    if ((p === undefined || p.writes === 0) && lease.until > now) {
      const line = this.store.get(key);
      if (line !== undefined) {
        transition(line.state, 'read');
        this.stats.hits++;
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
    const cacheable = pk.writes === 0 && lease.allWrites === 0;
    const fill: Fill<V> = { waiters: [cb], late: [], poisoned: !cacheable };
    pk.fill = fill;
    const inc = lease.inc;
    const sentAt = now;
    this.stats.fillsSent++;
    this.io.request(shard, { t: 'gets', from: this.cfg.self, shard, key, cacheable }, (a) => {
      if (pk.fill === fill) pk.fill = null;
      const down = pk.down;
      pk.down = null;
      this.forgetIfIdle(key, pk);
      if (!a.ok) {
        for (const w of fill.waiters) w(a);
        for (const w of fill.late) w(a);
        return;
      }
      const d = a as DataAnswer<V>;
      const live = this.onAnswer(shard, a, sentAt);
      let installed = false;
      if (d.grant !== null && live && !fill.poisoned && lease.inc === inc && (this.pend.get(key)?.writes ?? 0) === 0 && lease.allWrites === 0) {
        const downgraded = down !== null && down[0] === d.epoch && down[1] === d.gen;
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
  write(shard: number, keys: CacheKey[] | 'all', op: Op, want: CacheKey | undefined, cb: (r: WriteResult<R>) => void): void {
    const lease = this.lease(shard);
    const seq = ++this.writeSeq;
    if (keys === 'all') {
      for (const key of [...lease.keys]) this.drop(key, 'write-wt');
      // Fills of this shard in flight captured the old incarnation: none of them will install.
      lease.inc++;
      lease.allWrites++;
    } else {
      for (const key of keys) {
        this.drop(key, 'write-wt');
        const p = this.pending(key);
        p.writes++;
        p.lastWrite = seq;
        if (p.fill !== null) p.fill.poisoned = true;
      }
    }
    const inc = lease.inc;
    const sentAt = this.io.now();
    this.stats.writesSent++;
    this.io.request(shard, { t: 'write', from: this.cfg.self, shard, keys, op, ...(want !== undefined ? { want } : {}) }, (a) => {
      let installable = false;
      let revoked: [epoch: number, gen: number] | null = null;
      let down: [epoch: number, gen: number] | null = null;
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
              down = p.down;
              p.down = null;
            }
            p.writePoisoned = false;
            p.writeInv = null;
          }
          this.forgetIfIdle(key, p);
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
        const downgraded = down !== null && down[0] === w.epoch && down[1] === w.grant.gen;
        this.install(shard, want, downgraded ? 'fill-s' : 'fill-e', w.grant.value, w.grant.gen);
      }
      cb({ ok: true, result: w.result });
    });
  }

  /** An invalidation from a home: drop the lines, poison what is in flight for those keys, acknowledge. */
  onInvalidate(msg: InvMessage): InvAck {
    this.stats.invalidationsReceived += msg.items.length;
    for (const [key, gen] of msg.items) {
      this.drop(key, 'inv');
      const p = this.pend.get(key);
      if (p !== undefined) {
        if (p.fill !== null) p.fill.poisoned = true;
        if (p.writes > 0) {
          if (p.writeInv === null) p.writeInv = [msg.epoch, gen];
          else if (p.writeInv[0] === msg.epoch) p.writeInv[1] = Math.max(p.writeInv[1], gen);
          else p.writePoisoned = true;
        }
      }
    }
    return { t: 'invack', from: this.cfg.self, shard: msg.shard, epoch: msg.epoch, items: msg.items };
  }

  /**
   * A downgrade from a home: another node now shares these lines, so an E line of the named grant becomes S. A
   * grant not installed yet (its answer still on its way) is remembered and installs as S.
   */
  onDowngrade(msg: DownMessage): DownAck {
    for (const [key, gen] of msg.items) {
      const line = this.store.peek(key);
      const lease = this.shards.get(msg.shard);
      if (line !== undefined && line.shard === msg.shard && line.gen === gen && lease !== undefined && lease.epoch === msg.epoch) {
        if (line.state !== LineState.E) continue;
        const t = transition(line.state, 'fwd-gets');
        this.transitions.count(line.state, t.next);
        this.lines[line.state]!--;
        this.lines[t.next]!++;
        this.store.put(key, { ...line, state: t.next });
        this.stats.downgradesReceived++;
      } else {
        const p = this.pend.get(key);
        if (p !== undefined) p.down = [msg.epoch, gen];
      }
    }
    return { t: 'downack', from: this.cfg.self, shard: msg.shard, epoch: msg.epoch };
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
    if (lease.evicted.length < this.cfg.evictedBatchMax) lease.evicted.push([key, line.gen]);
  }

  /** Drives time: drops the lines of lapsed leases, renews the leases of shards that hold lines. Call every few ms. */
  tick(): void {
    const now = this.io.now();
    for (const [shard, lease] of this.shards) {
      if (lease.until <= now && !lease.lapsed) this.lapse(lease);
      if ((lease.keys.size > 0 || lease.evicted.length > 0) && !lease.renewing && now - lease.lastRenewSent >= this.cfg.renewMs) this.renew(shard, lease, now);
    }
  }

  // ------------------------------------------------------------------ internals

  /** The shard's lease ran out: its lines go, and answers to requests sent before now install nothing. */
  private lapse(lease: ShardLease): void {
    lease.lapsed = true;
    lease.inc++;
    for (const key of [...lease.keys]) {
      this.drop(key, 'lapse');
      this.stats.lapsedLines++;
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
      p = { fill: null, writes: 0, writePoisoned: false, writeInv: null, lastWrite: 0, down: null };
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
    if (lease.until <= this.io.now() && !lease.lapsed) this.lapse(lease);
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

  private drop(key: CacheKey, event: LineEvent): void {
    const line = this.store.peek(key);
    if (line === undefined) return;
    const t = transition(line.state, event);
    this.store.delete(key);
    this.transitions.count(line.state, t.next);
    this.lines[line.state]!--;
    this.shards.get(line.shard)?.keys.delete(key);
  }
}
