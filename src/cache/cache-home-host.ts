/**
 * CacheHomeHost: runs the CacheHome of every shard a shard worker leads (one per leadership term) and gives them
 * their I/O: memory reads are a Raft read barrier then a peek at the shard's KeyspaceMachine, writes are Raft
 * proposals of the write's own entry, invalidations go to the holder node's worker as peer requests (or straight to
 * this node's edge). Lives in the worker thread; see docs/cache-coherence.md.
 *
 * Invariants:
 *   - A home serves only while this replica leads the shard in the home's term: `homeFor` replaces a home whose term
 *     is not the current one and `tick` closes homes whose shard this replica no longer leads (their waiting requests
 *     fail with NOTLEADER, which the worker may route again: none of them reached memory).
 *   - A home is created after this replica became leader (by the first tick or request that sees it leading), so its
 *     takeover wait starts no earlier than its leadership (a longer wait is only safer).
 */
import type { Logger } from 'pino';
import { HostError } from '../node/raft-host.js';
import type { NodeId } from '../raft/types.js';
import type { KeyspaceMachine } from '../cluster/keyspace-machine.js';
import type { ShardWorkerTuning } from '../cluster/worker-protocol.js';
import { CacheHome, emptyHomeStats, type HomeStats, type MemoryRead, type MemoryWrite } from './cache-home.js';
import type { CoherenceFailure, DownMessage, FlushRequest, HomeAnswer, InvAck, InvMessage, NodeRequest } from './coherence-types.js';
import type { CachedValue } from './coherence-wire.js';
import { decodeEntry, encodeWrite, KeyspaceEntryKind } from '../cluster/keyspace-codec.js';
import { lookupWrite } from '../cluster/keyspace-machine.js';
import type { BackingStore } from './backing-store.js';
import { isDownAck, isInvAck, writeKeysOf } from './coherence-wire.js';

const B = (s: string): Buffer => Buffer.from(s, 'latin1');

type Home = CacheHome<CachedValue, Uint8Array, Uint8Array>;

export interface HomeHostDeps {
  nodeId: NodeId;
  tuning: ShardWorkerTuning;
  /** This replica's role for the shard: its term when it leads, else null. */
  leaderTerm(shard: number): number | null;
  readBarrier(shard: number): Promise<unknown>;
  /**
   * Proposes an encoded keyspace entry; resolves with the apply result (a reply record) after it applied. `onIndex`
   * gets the entry's log index at once.
   */
  propose(shard: number, data: Uint8Array, onIndex?: (index: number) => void): Promise<unknown>;
  /** The last log index applied to the shard's state machine here. */
  appliedIndex(shard: number): number;
  machine(shard: number): KeyspaceMachine | null;
  /** The external Redis below memory (--cache-backing), or null. */
  backing: BackingStore | null;
  /** Delivers an invalidation (or a downgrade) to `to`'s cache; resolves with its acknowledgement. */
  sendInv(to: NodeId, msg: InvMessage | DownMessage): Promise<unknown>;
  log: Logger;
}

const failure = (err: unknown): CoherenceFailure => {
  if (err instanceof HostError) return { ok: false, code: err.code, message: err.message, cause: err };
  return { ok: false, code: 'ERR', message: err instanceof Error ? err.message : String(err), cause: err };
};

export class CacheHomeHost {
  private readonly homes = new Map<number, Home>();
  /** Stats of homes that ended, so INFO counters never go backwards. */
  private readonly retired: HomeStats = emptyHomeStats();

  constructor(private readonly deps: HomeHostDeps) {}

  /** Serves one cache request on a shard this replica leads. `data`: the encoded entry of a write. */
  serve(shard: number, req: NodeRequest<Uint8Array>, reply: (a: HomeAnswer<CachedValue, Uint8Array> | CoherenceFailure) => void): void {
    const home = this.homeFor(shard);
    if (home === null) {
      reply(failure(new HostError('NOTLEADER', `not the leader of shard ${shard}`)));
      return;
    }
    const now = performance.now();
    switch (req.t) {
      case 'gets':
        home.getS(req, reply, now);
        return;
      case 'renew':
        home.renew(req, reply, now);
        return;
      case 'write':
        home.write(req, reply, now);
        return;
      case 'flush':
        home.flushLine(req as FlushRequest<CachedValue>, reply, now);
        return;
    }
  }

  /**
   * CACHE.STATE: the directory's view of `key` in this shard's home, per listed node: 'E', 'S', or 'F' (a fill is
   * reading memory for it); '+inv' is appended while an invalidation of that node's copy awaits its acknowledgement.
   * Null when this replica does not lead the shard (no home).
   */
  directoryOf(shard: number, key: string): Map<NodeId, string> | null {
    const home = this.homeFor(shard);
    if (home === null) return null;
    const { holders, invalidating } = home.holdersOf(key);
    const out = new Map<NodeId, string>();
    for (const [n, st] of holders) out.set(n, st);
    for (const n of invalidating) out.set(n, `${out.get(n) ?? ''}+inv`);
    return out;
  }

  /**
   * Write-through: may a read outside the cache protocol of `keys` ('all': a keyless read) run now on this shard's
   * memory? See CacheHome.readGate. True when this replica has no home for the shard (it does not lead it: the read
   * fails or is routed elsewhere anyway).
   */
  readGate(shard: number, keys: string[] | 'all', retry: (ok: boolean) => void, again = false): boolean {
    const home = this.homeFor(shard);
    return home === null ? true : home.readGate(keys, retry, again);
  }

  onAck(ack: InvAck): void {
    this.homes.get(ack.shard)?.onAck(ack);
  }

  /**
   * Closes homes of shards no longer led in their term, opens one for each shard newly led (so its takeover wait
   * starts at once, not at the first request), and drives their time. Call every few ms with the hosted shards.
   */
  tick(hosted: Iterable<number>): void {
    for (const [shard, home] of this.homes) {
      if (this.deps.leaderTerm(shard) !== home.epoch) this.retire(shard, home);
      else home.tick();
    }
    for (const shard of hosted) if (!this.homes.has(shard) && this.deps.leaderTerm(shard) !== null) this.homeFor(shard);
  }

  /**
   * Directory entries per led shard, and the homes' counters (INFO cache on the worker side), with the backing
   * store's (backingReads, backingReadHits, ...) when there is one.
   */
  stats(): { homes: number; directory: number; counters: HomeStats & Record<string, number> } {
    const c: HomeStats & Record<string, number> = { ...this.retired };
    let directory = 0;
    for (const h of this.homes.values()) {
      directory += h.directorySize;
      for (const k of Object.keys(this.retired) as (keyof HomeStats)[]) c[k] += h.stats[k];
    }
    const b = this.deps.backing;
    if (b !== null) for (const [k, v] of Object.entries(b.stats)) c[`backing${k[0]!.toUpperCase()}${k.slice(1)}`] = v;
    return { homes: this.homes.size, directory, counters: c };
  }

  close(): void {
    for (const [shard, home] of [...this.homes]) this.retire(shard, home);
  }

  private retire(shard: number, home: Home): void {
    this.homes.delete(shard);
    home.close(failure(new HostError('NOTLEADER', `shard ${shard}: leadership of term ${home.epoch} ended`)));
    for (const k of Object.keys(this.retired) as (keyof HomeStats)[]) this.retired[k] += home.stats[k];
  }

  /**
   * A GET missed memory: read the backing store, and load what it has into memory with SET NX (a write that reached
   * memory meanwhile wins), then answer with what memory holds.
   */
  private loadFromBacking(shard: number, key: string, backing: BackingStore, cb: (r: MemoryRead<CachedValue>) => void): void {
    const k = Buffer.from(key, 'latin1');
    backing.read(k).then(
      (v) => {
        if (v === null) return cb({ ok: true, value: null, cacheable: true });
        const args = v.x > 0 ? [B('set'), k, v.v, B('nx'), B('pxat'), B(String(v.x))] : [B('set'), k, v.v, B('nx')];
        this.deps.propose(shard, encodeWrite(args, Date.now())).then(
          () => {
            const m = this.deps.machine(shard);
            const e = m === null ? null : m.peekString(k, Date.now());
            cb({ ok: true, value: e === null ? null : { v: e.value, x: e.expireAt }, cacheable: e === null || e.value.length <= this.deps.tuning.cacheValueBytesMax });
          },
          (err: unknown) => cb(failure(err)),
        );
      },
      (err: unknown) => cb(failure(err)),
    );
  }

  /** After a write applied to memory: the new values of its keys go to the backing store (keyless writes do not). */
  private sendToBacking(shard: number, keys: string[]): void {
    const backing = this.deps.backing;
    const m = this.deps.machine(shard);
    if (backing === null || m === null) return;
    const now = Date.now();
    for (const key of keys) {
      const k = Buffer.from(key, 'latin1');
      const e = m.peekString(k, now);
      backing.write(k, e === null ? null : { v: e.value, x: e.expireAt });
    }
  }

  private homeFor(shard: number): Home | null {
    const term = this.deps.leaderTerm(shard);
    let home = this.homes.get(shard);
    if (home !== undefined && home.epoch !== term) {
      this.retire(shard, home);
      home = undefined;
    }
    if (term === null) return null;
    if (home === undefined) {
      const t = this.deps.tuning;
      home = new CacheHome<CachedValue, Uint8Array, Uint8Array>(
        {
          self: this.deps.nodeId,
          shard,
          epoch: term,
          leaseMs: t.cacheLeaseMs,
          marginMs: t.cacheLeaseMarginMs,
          invRetryMs: t.cacheInvRetryMs,
          directoryEntriesMax: t.cacheDirectoryEntriesMax,
          writeBack: t.cacheWritePolicy === 'write-back',
        },
        this.io(shard),
      );
      this.homes.set(shard, home);
    }
    return home;
  }

  private io(shard: number): ConstructorParameters<typeof CacheHome<CachedValue, Uint8Array, Uint8Array>>[1] {
    const d = this.deps;
    const valueMax = d.tuning.cacheValueBytesMax;
    const peek = (key: string): { value: CachedValue | null; cacheable: boolean } | null => {
      const m = d.machine(shard);
      if (m === null) return null;
      const e = m.peekString(Buffer.from(key, 'latin1'), Date.now());
      if (e === null) return { value: null, cacheable: true };
      return { value: { v: e.value, x: e.expireAt }, cacheable: e.value.length <= valueMax };
    };
    return {
      now: () => performance.now(),
      send: (to, msg) => {
        d.sendInv(to, msg).then(
          (ack) => {
            if (isInvAck(ack)) this.onAck(ack);
            else if (isDownAck(ack)) this.homes.get(ack.shard)?.onDownAck(ack);
          },
          () => undefined, // lost: the home resends it every invRetryMs until the node acknowledges or its lease lapses
        );
      },
      readMemory: (key, cb: (r: MemoryRead<CachedValue>) => void) => {
        d.readBarrier(shard).then(
          () => {
            const p = peek(key);
            if (p === null) cb(failure(new HostError('NOTLEADER', `shard ${shard} is not hosted here`)));
            else if (p.value === null && d.backing !== null) this.loadFromBacking(shard, key, d.backing, cb);
            else cb({ ok: true, value: p.value, cacheable: p.cacheable });
          },
          (err: unknown) => cb(failure(err)),
        );
      },
      peekMemory: (key) => {
        const p = peek(key);
        // Not hosted, or a miss the backing store may fill (that takes a write): readMemory does those.
        if (p === null || (p.value === null && d.backing !== null)) return null;
        return { ok: true, value: p.value, cacheable: p.cacheable };
      },
      confirm: (cb) => {
        d.readBarrier(shard).then(
          () => cb({ ok: true }),
          (err: unknown) => cb(failure(err)),
        );
      },
      writeBack: (key, value, cb) => {
        // A Modified line's data as a plain keyspace write: SET with its absolute expiry (one already past deletes the
        // key, as Redis does), or DEL.
        const k = Buffer.from(key, 'latin1');
        const args =
          value === null
            ? [Buffer.from('del'), k]
            : value.x > 0
              ? [Buffer.from('set'), k, value.v, Buffer.from('pxat'), Buffer.from(String(value.x))]
              : [Buffer.from('set'), k, value.v];
        d.propose(shard, encodeWrite(args, Date.now())).then(
          () => {
            this.sendToBacking(shard, [key]);
            cb({ ok: true });
          },
          (err: unknown) => cb(failure(err)),
        );
      },
      writeMemory: (data, want, cb: (r: MemoryWrite<CachedValue, Uint8Array>) => void) => {
        // The probe compares the entry's index with what the state machine has applied: a read in the same turn as
        // the apply sees the write before this promise's callback runs (a later microtask).
        let index = Number.POSITIVE_INFINITY;
        d.propose(shard, data, (i) => {
          index = i;
        }).then(
          (result) => {
            if (d.backing !== null) this.sendToBacking(shard, writtenKeys(data));
            const record = result instanceof Uint8Array ? result : new Uint8Array(0);
            if (want === undefined) return cb({ ok: true, result: record });
            const p = peek(want);
            if (p === null || !p.cacheable) cb({ ok: true, result: record });
            else cb({ ok: true, result: record, value: p.value });
          },
          (err: unknown) => cb(failure(err)),
        );
        // (A refused proposal gets no index: never applied, its probe stays false.)
        return () => d.appliedIndex(shard) >= index;
      },
    };
  }
}

/** The keys a proposed keyspace write names ([] for a keyless one, FLUSHALL/FLUSHDB: not sent to the backing store). */
function writtenKeys(data: Uint8Array): string[] {
  const e = decodeEntry(data);
  if (e.kind !== KeyspaceEntryKind.Write) return [];
  const spec = lookupWrite(e.args[0]);
  if (spec === undefined) return [];
  const keys = writeKeysOf(spec, e.args);
  return keys === 'all' ? [] : keys;
}
