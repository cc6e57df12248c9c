/**
 * ClusterCache: the edge thread's coherent cache. It keeps the node's MESI lines in the node-local CacheStore (LRU by
 * items and bytes, TTL), serves GET hits on the edge with no thread hop and no network, and sends misses, writes and
 * lease renewals to the shard's home through the ShardRuntime as internal `_c.*` commands (coherence-wire.ts).
 * Invalidations and CACHE.STATE queries reach it through `ShardRuntime.onCacheMessage`. The protocol itself is CacheNode's
 * (cache-node.ts); this file adapts it to the store and the runtime. docs/cache-coherence.md.
 *
 * Store entries: value = the cached bytes (empty for a cached "no such key"); expireAt = the key's expiry minus
 * `ttlMarginMs` (the memory's expiry is the leader's clock: stopping early covers clock skew between nodes);
 * state = gen * 2^17 + shard * 8 + absent * 4 + MESI state.
 */
import type { NodeId } from '../raft/types.js';
import type { ShardRuntime } from '../cluster/shard-runtime.js';
import type { ShardReply } from '../cluster/worker-protocol.js';
import type { CacheLimits } from '../config/limits.js';
import { recordValue } from '../cluster/record-value.js';
import { CacheNode, type Line, type LineStore, type ReadResult, type WriteAllocate } from './cache-node.js';
import type { CacheKey, CoherenceFailure, HomeAnswer, NodeRequest } from './coherence-types.js';
import { decodeAnswer, encodeCacheRequest, type CachedValue, type CacheWriteOp } from './coherence-wire.js';
import { LineState, LINE_STATE_NAMES } from './mesi.js';
import { CacheStore, type CacheEntry } from './store.js';
import { latin1String } from '../util/latin1.js';
import { KeyspaceMachine, lookupWrite } from '../cluster/keyspace-machine.js';
import { encodeWrite } from '../cluster/keyspace-codec.js';

export interface ClusterCacheOptions {
  nodeId: NodeId;
  runtime: ShardRuntime;
  limits: CacheLimits;
  /** Must equal the homes' lease (ShardWorkerTuning.cacheLeaseMs). */
  leaseMs: number;
  /** How often a shard with lines renews its lease; default leaseMs / 4. */
  renewMs?: number;
  /** A line stops being served this long before its key's TTL ends (clock skew between nodes), ms. */
  ttlMarginMs: number;
  /** How often the cache's timer runs (lease lapses, renewals, expiry sweep), ms. */
  tickMs?: number;
  /** docs/cache-coherence.md; the homes must run the same policy. Default write-through. */
  writePolicy?: 'write-through' | 'write-back';
  /** Write-back: a Modified line is flushed at most this long after its first unflushed write, ms. */
  flushMs?: number;
  /** Write-through: background re-reads after invalidations in flight at most (0 = off; see NodeCacheConfig). */
  refillMax?: number;
  /** Write-through: see NodeCacheConfig.keepLineReadWithinMs. */
  keepLineReadWithinMs?: number;
  /** Write-through: see NodeCacheConfig.writeAllocate. Default 'always'. */
  writeAllocate?: WriteAllocate;
}

const SHARD_BITS = 16384;
const ABSENT = 4;
const EMPTY = Buffer.alloc(0);

function encodeState(line: Line<CachedValue>): number {
  return (line.gen * SHARD_BITS + line.shard) * 8 + (line.value === null ? ABSENT : 0) + line.state;
}

/** A coherence failure as the runtime's reply shape (so callers format errors one way). */
export function failureReply(f: CoherenceFailure): Extract<ShardReply, { ok: false }> {
  return { ok: false, code: f.code, leader: 0, message: f.message };
}

const B = (s: string): Buffer => Buffer.from(s, 'latin1');

/**
 * Write-back: runs a single-key string write on `current` in a scratch keyspace (the same command code the shards
 * run), and returns its reply record and the key's value after it. Null for a command that is not a single-key
 * replicated string write (it goes to the home).
 */
function execLocal(scratch: KeyspaceMachine, key: CacheKey, args: CacheWriteOp, current: CachedValue | null): { result: Uint8Array; value: CachedValue | null } | null {
  const spec = lookupWrite(args[0]);
  if (spec === undefined || spec.firstKey !== 1 || spec.lastKey !== 1) return null;
  const k = B(key);
  const now = Date.now();
  try {
    if (current !== null) scratch.applyData(encodeWrite(current.x > 0 ? [B('set'), k, current.v, B('pxat'), B(String(current.x))] : [B('set'), k, current.v], now));
    const result = scratch.applyData(encodeWrite(args, now));
    const after = scratch.peekString(k, now);
    const value = after === null ? null : { v: Buffer.from(after.value), x: after.expireAt };
    return result instanceof Uint8Array ? { result: Uint8Array.from(result), value } : null;
  } catch {
    return null; // (checked at the edge already; anything odd simply goes to the home)
  } finally {
    scratch.applyData(encodeWrite([B('del'), k], now));
  }
}

export class ClusterCache {
  readonly store: CacheStore;
  readonly writePolicy: 'write-through' | 'write-back';
  readonly node: CacheNode<CachedValue, CacheWriteOp, Uint8Array>;
  private readonly timer: NodeJS.Timeout;
  private readonly ttlMarginMs: number;
  private readonly sweepKeysMax: number;

  constructor(opts: ClusterCacheOptions) {
    this.ttlMarginMs = opts.ttlMarginMs;
    this.sweepKeysMax = Math.max(1, opts.limits.expireSweepKeysMax);
    const onGone = (e: CacheEntry): void => this.node.onEvicted(e.keyLatin1, this.lineOf(e));
    this.store = new CacheStore(opts.limits, Date.now, { onEvict: onGone, onExpire: onGone });
    const store = this.store;
    const lineOf = (e: CacheEntry | undefined): Line<CachedValue> | undefined => (e === undefined ? undefined : this.lineOf(e));
    const lines: LineStore<CachedValue> = {
      get: (key) => lineOf(store.getLatin1(key)),
      peek: (key) => lineOf(store.peekLatin1(key)),
      put: (key, line) => {
        const v = line.value;
        let expireAt = 0;
        if (v !== null && v.x > 0) {
          expireAt = v.x - this.ttlMarginMs;
          // Too close to its end to be worth holding (and it must not be served past the memory's expiry); an older
          // line of the key must not stay behind it.
          if (expireAt <= Date.now()) {
            store.deleteLatin1(key);
            return;
          }
        }
        try {
          store.set(Buffer.from(key, 'latin1'), v === null ? EMPTY : v.v, { expireAt, state: encodeState(line), mark: line.readAt ?? 0 });
        } catch {
          // Larger than the whole cache: not cached (CacheNode sees it absent and counts nothing). An older line of
          // the key must not stay behind it.
          store.deleteLatin1(key);
        }
      },
      delete: (key) => {
        store.deleteLatin1(key);
      },
      markRead: (key, at) => {
        const e = store.peekLatin1(key);
        if (e !== undefined) e.mark = at;
      },
    };
    const runtime = opts.runtime;
    this.writePolicy = opts.writePolicy ?? 'write-through';
    const scratch = new KeyspaceMachine();
    this.node = new CacheNode<CachedValue, CacheWriteOp, Uint8Array>(
      {
        self: opts.nodeId,
        leaseMs: opts.leaseMs,
        renewMs: opts.renewMs ?? Math.max(1, Math.floor(opts.leaseMs / 4)),
        evictedBatchMax: 1024,
        writeBack: this.writePolicy === 'write-back',
        flushMs: opts.flushMs ?? 100,
        refillMax: opts.refillMax ?? 0,
        ...(opts.keepLineReadWithinMs !== undefined ? { keepLineReadWithinMs: opts.keepLineReadWithinMs } : {}),
        ...(opts.writeAllocate !== undefined ? { writeAllocate: opts.writeAllocate } : {}),
      },
      lines,
      {
        now: () => performance.now(),
        execLocal: (key, args, current) => execLocal(scratch, key, args, current),
        request: (shard, req: NodeRequest<CacheWriteOp, CachedValue>, cb: (a: HomeAnswer<CachedValue, Uint8Array> | CoherenceFailure) => void) => {
          const { kind, args } = encodeCacheRequest(req);
          runtime.submit(shard, kind, args, (r) => {
            if (!r.ok) return cb({ ok: false, code: r.code, message: r.message });
            let a: HomeAnswer<CachedValue, Uint8Array>;
            try {
              const v = recordValue(r.record);
              if (!Buffer.isBuffer(v)) throw new Error('not a bulk string');
              a = decodeAnswer(v);
            } catch (err) {
              return cb({ ok: false, code: 'ERR', message: `malformed cache answer: ${(err as Error).message}` });
            }
            cb(a);
          });
        },
      },
    );
    runtime.onCacheMessage = (msg) => {
      if (msg.t === 'inv') return this.node.onInvalidate(msg);
      if (msg.t === 'down') return this.node.onDowngrade(msg);
      return { t: 'state', from: opts.nodeId, state: LINE_STATE_NAMES[this.node.stateOf(msg.key, msg.shard)] };
    };
    this.timer = setInterval(() => {
      this.node.tick();
      this.store.sweepExpired(this.sweepKeysMax);
    }, opts.tickMs ?? 10);
    this.timer.unref();
  }

  /**
   * The store entry holding the cached bytes if the key can be served locally now (a hit, counted; null for a cached
   * "no such key"); undefined if not (nothing counted). The hot path of GET: CacheNode.read's hit check, reading the
   * store entry directly instead of building a Line. Use the entry before any other call into the cache.
   */
  peekHit(shard: number, key: Buffer): CacheEntry | null | undefined {
    const k = latin1String(key);
    if (!this.node.mayHit(shard, k)) return undefined;
    const e = this.store.getLatin1(k);
    if (e === undefined) return undefined;
    const at = this.node.countHit();
    if (at !== 0) e.mark = at;
    return (e.state & ABSENT) !== 0 ? null : e;
  }

  /** GET: a hit answers synchronously (before this returns); a miss asks the home. */
  get(shard: number, key: Buffer, cb: (r: ReadResult<CachedValue>) => void): void {
    this.node.read(shard, latin1String(key), cb);
  }

  /**
   * A replicated write through the home (write-through): `keys` it touches ('all' for FLUSHALL/FLUSHDB), `want`: a
   * key whose value after the write the node would hold in E. The reply is the write's own reply record.
   */
  write(shard: number, keys: CacheKey[] | 'all', args: Buffer[], want: CacheKey | undefined, cb: (r: ShardReply) => void): void {
    this.node.write(shard, keys, args, want, (r) => {
      if (!r.ok) cb(failureReply(r));
      else cb({ ok: true, record: r.result });
    });
  }

  /** INFO cache lines of this node. */
  infoLines(): string[] {
    const s = this.node.stats;
    const reads = s.hits + s.misses;
    const d = this.node.dirtyCounts;
    const out = [
      `cache_policy:${this.writePolicy}`,
      `cache_lines:${this.store.size}`,
      `cache_bytes:${this.store.bytes}`,
      `cache_lines_m:${this.node.lines[LineState.M]}`,
      `cache_lines_e:${this.node.lines[LineState.E]}`,
      `cache_lines_s:${this.node.lines[LineState.S]}`,
      `cache_hits:${s.hits}`,
      `cache_misses:${s.misses}`,
      `cache_hit_rate:${reads === 0 ? '0.0000' : (s.hits / reads).toFixed(4)}`,
      `cache_fills:${s.fillsSent}`,
      `cache_installs:${s.installs}`,
      `cache_writes:${s.writesSent}`,
      `cache_evictions:${s.evictions}`,
      `cache_invalidations_received:${s.invalidationsReceived}`,
      `cache_downgrades_received:${s.downgradesReceived}`,
      `cache_lease_lapsed_lines:${s.lapsedLines}`,
      `cache_home_change_lines:${s.homeChangeLines}`,
      `cache_lease_renewals_sent:${s.renewalsSent}`,
      `cache_lease_renewals_refused:${s.renewalsRefused}`,
      `cache_refills:${s.refills}`,
      `cache_refills_skipped:${s.refillsSkipped}`,
      `cache_writes_unallocated:${s.writesUnallocated}`,
      `cache_line_reuse:${this.node.lineReuse.toFixed(4)}`,
      `cache_dirty_lines:${d.lines}`,
      `cache_writeback_buffered:${d.buffered}`,
      `cache_local_writes:${s.localWrites}`,
      `cache_flushes_sent:${s.flushesSent}`,
      `cache_flushes_accepted:${s.flushesAccepted}`,
      `cache_writebacks_in_answers:${s.writebacksInAnswers}`,
      `cache_writebacks_lost:${s.writebacksLost}`,
    ];
    for (const [name, n] of this.node.transitions.entries()) out.push(`cache_transition_${name.replace('->', '_to_')}:${n}`);
    return out;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private lineOf(e: CacheEntry): Line<CachedValue> {
    const st = e.state;
    const mesi = (st % 4) as LineState;
    const absent = Math.floor(st / 4) % 2 === 1;
    const rest = Math.floor(st / 8);
    const shard = rest % SHARD_BITS;
    const gen = Math.floor(rest / SHARD_BITS);
    return { state: mesi, value: absent ? null : { v: e.value, x: e.expireAt === 0 ? 0 : e.expireAt + this.ttlMarginMs }, gen, shard, readAt: e.mark };
  }
}
