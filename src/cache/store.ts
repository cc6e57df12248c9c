/**
 * CacheStore: the node-local keyspace of binary-safe keys and values with exact LRU eviction, TTLs (lazy and
 * incremental active expiry), a stable SCAN cursor, and counters. Pure: no timers, no I/O; time comes from the
 * injected clock, randomness from an injected seeded rng. Command handling lives elsewhere
 * (string-commands.ts); the MESI coherence layer will keep its cache lines here and owns each entry's `state`,
 * which the store stores and never interprets.
 *
 * What it owns, per entry (one `Entry` object, found through `map`, keyed by the key's latin1 string, which is
 * 1:1 with the key's bytes):
 *   - the LRU list (lruPrev/lruNext; head = most recently used, tail = next victim),
 *   - the TTL ring (ttlPrev/ttlNext; only entries with expireAt != 0; `ttlCursor` = where the next active-expiry
 *     sweep resumes),
 *   - the scan order: `order[slot]` holds the entry, `orderSeq[slot]` its insertion sequence number; slots are
 *     appended in increasing seq; a removed entry leaves a hole (its seq stays in orderSeq) until compaction.
 *
 * Invariants (checked by `checkInvariants()`, used by the tests):
 *   - every live entry is in map, in the LRU list and in `order` at `slot`; it is in the TTL ring iff expireAt != 0;
 *   - size === map.size === LRU length; bytes === sum of entry.bytes; ttlCount === TTL ring length;
 *   - orderSeq is strictly increasing; an entry keeps its seq for its whole life (overwrites keep it), so a SCAN
 *     cursor (a seq) stays meaningful while others come and go;
 *   - after set() returns: size <= itemsMax and bytes <= bytesMax (each when non-zero).
 *   - values handed out are never mutated afterwards (a reply writer may still hold them): overwrites replace the
 *     Buffer; append() only writes past the end of earlier views.
 *
 * Entry life:   set() --> live --(get/set: move to LRU head)--> live
 *                         live --delete()/clear()--> gone
 *                         live --over itemsMax/bytesMax, at LRU tail--> evicted (onEvict; or onExpire if stale)
 *                         live --expireAt passed, noticed by a lookup or sweepExpired()--> expired (onExpire)
 *
 * Expiry rule (as Redis' keyIsExpired): an entry with expireAt != 0 is expired once clock() > expireAt.
 *
 * Expiry modes (`options.expiry`): 'delete' (default) removes an expired entry as soon as a lookup notices it.
 * 'hide' (for replicated keyspaces, where only the log may change state) makes an expired entry invisible to every
 * lookup, scan and random pick but leaves it in place; it is physically removed only by sweepExpired(),
 * removeExpired(), an overwrite or delete of its key (set/append/delete), or clear(). So in 'hide' mode no read
 * changes the entries held, and `contentBytes` is a function of the writes alone.
 *
 * Memory: keys are not kept as Buffers (the map's latin1 string is the key; `entry.key` materializes a Buffer on
 * access). Values are copied on insert, since callers pass views into network buffers: values shorter than
 * SMALL_VALUE_BYTES are bump-allocated from store-owned 4 KiB slabs (a separate ArrayBuffer per tiny value costs
 * more than the value), larger ones get their own allocation (so an old survivor never pins a slab full of dead
 * neighbours). An entry holds its value as (memory, start, length), not as a view object: `entry.value` builds the
 * view when asked. docs/cache-store.md has the measurements behind these choices.
 */
import type { CacheLimits } from '../config/limits.js';
import { createRng, type Rng } from '../util/rng.js';
import { bufferView } from '../../protocol/buffer-view.js';
import { latin1String } from '../util/latin1.js';
import { globMatchLatin1 } from './glob.js';

/**
 * Fixed per-entry overhead counted in `bytes` on top of key and value length: the entry object, its map slot, the
 * key string header, the scan-order slots and the value's Buffer object. Measured on Node 20 x64 (V8 heap +
 * ArrayBuffers per entry, minus key and value bytes): 194 with an empty value, 295 with a slab value (< 128 B),
 * 378 with a value in its own ArrayBuffer. See docs/cache-store.md.
 */
export const ENTRY_OVERHEAD_BYTES = 300;

/** Values shorter than this are copied into store-owned slabs; longer ones get their own ArrayBuffer. */
export const SMALL_VALUE_BYTES = 128;
/** Size of one slab for small values. */
export const VALUE_SLAB_BYTES = 4096;
/** sds-like growth for append(): double until this size, then grow by this much. */
export const APPEND_GROWTH_BYTES_MAX = 1024 * 1024;
/** Longest string APPEND/SETRANGE may build when CacheLimits.valueBytesMax is absent (Redis' default). */
export const VALUE_BYTES_MAX_DEFAULT = 512 * 1024 * 1024;

/** A cache entry as seen outside the store. Do not keep it across store calls that may remove it. */
export interface CacheEntry {
  /** The key (a fresh Buffer on every access; `keyLatin1` is the same bytes as a string without allocation). */
  readonly key: Buffer;
  readonly keyLatin1: string;
  /**
   * The value: a view built on each access unless the value has a Buffer of its own. A hot reader copies the bytes
   * straight from `valueBytes` [valueStart, valueStart + valueLength) instead (ReplySink.bulkRange), building nothing.
   */
  readonly value: Buffer;
  /** The memory holding the value (a slab shared with other small values, or the value's own Buffer). */
  readonly valueBytes: Buffer;
  readonly valueStart: number;
  readonly valueLength: number;
  /** Unix ms after which the entry is expired; 0 = no TTL. */
  readonly expireAt: number;
  /** Coherence state (MESI), kept but never interpreted by the store. Default 0. */
  state: number;
  /**
   * A second number the caller owns, like `state` (the coherent cache keeps the time of the line's last hit here, so
   * a hit costs no lookup beyond its own). Default 0; set() keeps it on an overwrite unless SetOptions.mark is given.
   */
  mark: number;
  /** Accounted size: key length + value length (or append capacity) + ENTRY_OVERHEAD_BYTES. */
  readonly bytes: number;
}

export interface CacheStats {
  /** get() found a live entry. */
  hits: number;
  /** get() found nothing (or only an expired entry). */
  misses: number;
  /** Entries removed to respect itemsMax/bytesMax. */
  evictions: number;
  /** Entries removed because their TTL passed (lazily, by a sweep, or found stale at the LRU tail). */
  expirations: number;
  /** The part of `expirations` found by sweepExpired(). */
  activeExpirations: number;
}

export interface CacheStoreHooks {
  /** Called after an entry was evicted for capacity (the entry is already gone from the store). */
  onEvict?(e: CacheEntry): void;
  /** Called after an entry was removed because it expired. */
  onExpire?(e: CacheEntry): void;
}

/** What a lookup does with an expired entry: remove it ('delete') or only treat it as absent ('hide'). */
export type ExpiryMode = 'delete' | 'hide';

export interface CacheStoreOptions extends CacheStoreHooks {
  /** Randomness for randomEntry(); default: a generator seeded with a constant (replayable). */
  rng?: Rng;
  /** Default 'delete'. 'hide': lookups never remove an expired entry (see the guide comment). */
  expiry?: ExpiryMode;
}

export interface SetOptions {
  /** Absolute expiry in Unix ms (0 = none). Takes precedence over keepTtl. */
  expireAt?: number;
  /** Keep the existing entry's TTL (SET ... KEEPTTL, INCR, APPEND). */
  keepTtl?: boolean;
  /** Coherence state; default: keep the existing entry's state, 0 for a new entry. */
  state?: number;
  /** The caller's mark (CacheEntry.mark); default: keep the existing entry's mark, 0 for a new entry. */
  mark?: number;
  /** false: take ownership of `value` without copying. Only for a Buffer the caller made and never touches again. */
  copy?: boolean;
}

/** set()/append() refuse an entry that alone exceeds bytesMax. Nothing was changed. */
export class CacheEntryTooLargeError extends Error {
  readonly code = 'TOOLARGE' as const;
  constructor(
    readonly entryBytes: number,
    readonly bytesMax: number,
  ) {
    super(`cache entry of ${entryBytes} bytes exceeds the cache capacity of ${bytesMax} bytes (bytesMax)`);
    this.name = 'CacheEntryTooLargeError';
  }
}

const EMPTY = Buffer.alloc(0);

class Entry implements CacheEntry {
  keyLatin1: string;
  /**
   * The value is valueLength bytes of valueBytes from valueStart. Three fields written in place rather than one view
   * object per value: a view made on every SET outlives the young generation (it stays until the key's next write),
   * so each one was copied by a scavenge and promoted, and scavenges cost what survives them. docs/cache-store.md.
   */
  valueBytes: Buffer;
  valueStart: number;
  valueLength: number;
  expireAt: number;
  state: number;
  mark: number;
  bytes: number;
  /** Insertion sequence: SCAN order and cursor. */
  seq: number;
  /** Index in CacheStore.order; -1 once removed. */
  slot: number;
  /** Length of the owned append buffer behind `value` (0 when value is not append-grown). */
  appendCap: number;
  lruPrev: Entry | null = null;
  lruNext: Entry | null = null;
  ttlPrev: Entry | null = null;
  ttlNext: Entry | null = null;

  constructor(keyLatin1: string, expireAt: number, state: number, bytes: number, seq: number) {
    this.keyLatin1 = keyLatin1;
    this.valueBytes = EMPTY;
    this.valueStart = 0;
    this.valueLength = 0;
    this.expireAt = expireAt;
    this.state = state;
    this.mark = 0;
    this.bytes = bytes;
    this.seq = seq;
    this.slot = -1;
    this.appendCap = 0;
  }

  get value(): Buffer {
    const b = this.valueBytes;
    const at = this.valueStart;
    return at === 0 && this.valueLength === b.length ? b : bufferView(b, at, at + this.valueLength);
  }

  set value(v: Buffer) {
    this.valueBytes = v;
    this.valueStart = 0;
    this.valueLength = v.length;
  }

  get key(): Buffer {
    return Buffer.from(this.keyLatin1, 'latin1');
  }
}

/** Bytes an entry with these key/value lengths is accounted for. */
export function entryBytes(keyLength: number, valueLength: number): number {
  return keyLength + valueLength + ENTRY_OVERHEAD_BYTES;
}

export class CacheStore {
  private readonly map = new Map<string, Entry>();
  private lruHead: Entry | null = null;
  private lruTail: Entry | null = null;
  private ttlHead: Entry | null = null;
  private ttlTail: Entry | null = null;
  private ttlCursor: Entry | null = null;
  private ttlCount = 0;
  private order: (Entry | undefined)[] = [];
  private orderSeq: number[] = [];
  private orderHoles = 0;
  private nextSeq = 1;
  private usedBytes = 0;
  /** Sum of entryBytes(key, value) over all entries: `usedBytes` without APPEND's spare room. */
  private usedContentBytes = 0;
  private slab: Buffer = EMPTY;
  private slabUsed = 0;
  private readonly rng: Rng;
  private readonly hideExpired: boolean;
  private readonly onEvict: ((e: CacheEntry) => void) | undefined;
  private readonly onExpire: ((e: CacheEntry) => void) | undefined;
  private readonly counters: CacheStats = { hits: 0, misses: 0, evictions: 0, expirations: 0, activeExpirations: 0 };

  constructor(
    readonly limits: CacheLimits,
    private readonly clock: () => number,
    options: CacheStoreOptions = {},
  ) {
    this.rng = options.rng ?? createRng(0x5eed);
    this.hideExpired = options.expiry === 'hide';
    this.onEvict = options.onEvict;
    this.onExpire = options.onExpire;
  }

  /** Live counters (read them; resetStats() zeroes them). */
  get stats(): Readonly<CacheStats> {
    return this.counters;
  }

  resetStats(): void {
    this.counters.hits = 0;
    this.counters.misses = 0;
    this.counters.evictions = 0;
    this.counters.expirations = 0;
    this.counters.activeExpirations = 0;
  }

  /** Number of entries, including expired ones not yet noticed (as Redis' DBSIZE). */
  get size(): number {
    return this.map.size;
  }

  /** Longest string APPEND/SETRANGE may build, in bytes. */
  get valueBytesMax(): number {
    return this.limits.valueBytesMax ?? VALUE_BYTES_MAX_DEFAULT;
  }

  /** Accounted bytes of all entries. */
  get bytes(): number {
    return this.usedBytes;
  }

  /**
   * Key bytes + value bytes + ENTRY_OVERHEAD_BYTES per entry, without APPEND's spare room (which `bytes` counts):
   * a function of the entries' contents alone, so it is the same wherever the same entries are held (a replica
   * rebuilt from a snapshot included). Counts expired entries not yet removed.
   */
  get contentBytes(): number {
    return this.usedContentBytes;
  }

  /** 'delete' or 'hide' (see CacheStoreOptions.expiry). */
  get expiryMode(): ExpiryMode {
    return this.hideExpired ? 'hide' : 'delete';
  }

  /** Number of entries with a TTL (INFO keyspace "expires"). */
  get expiresCount(): number {
    return this.ttlCount;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Lookups
  // -------------------------------------------------------------------------------------------------------------

  /** The live entry for key, moved to the LRU head; counts a hit or a miss. Expires a stale entry on the way. */
  get(key: Buffer): CacheEntry | undefined {
    return this.getLatin1(latin1String(key));
  }

  /** get() by the key's latin1 string. */
  getLatin1(keyLatin1: string): CacheEntry | undefined {
    const e = this.lookup(keyLatin1);
    if (e === undefined) {
      this.counters.misses++;
      return undefined;
    }
    this.counters.hits++;
    this.touch(e);
    return e;
  }

  /** The live entry for key without touching the LRU or the counters (still expires a stale entry). */
  peek(key: Buffer): CacheEntry | undefined {
    return this.lookup(latin1String(key));
  }

  /** peek() by the key's latin1 string (as in CacheEntry.keyLatin1). */
  peekLatin1(keyLatin1: string): CacheEntry | undefined {
    return this.lookup(keyLatin1);
  }

  has(key: Buffer): boolean {
    return this.lookup(latin1String(key)) !== undefined;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Mutations
  // -------------------------------------------------------------------------------------------------------------

  /**
   * Inserts or overwrites key, makes it the most recently used, then evicts least recently used entries while over
   * itemsMax or bytesMax; never the entry just written. Throws CacheEntryTooLargeError (changing nothing) if the
   * entry alone exceeds bytesMax. Without expireAt/keepTtl the entry ends with no TTL.
   */
  set(key: Buffer, value: Buffer, opts?: SetOptions): CacheEntry {
    const ks = latin1String(key);
    const bytes = entryBytes(key.length, value.length);
    const bytesMax = this.limits.bytesMax;
    if (bytesMax > 0 && bytes > bytesMax) throw new CacheEntryTooLargeError(bytes, bytesMax);
    let e = this.lookupForWrite(ks);
    if (e === undefined) {
      const expireAt = opts?.expireAt ?? 0;
      e = new Entry(ks, expireAt, opts?.state ?? 0, bytes, this.nextSeq++);
      if (opts?.copy === false) e.value = value;
      else this.copyValue(value, e);
      if (opts?.mark !== undefined) e.mark = opts.mark;
      this.map.set(ks, e);
      this.usedBytes += bytes;
      this.usedContentBytes += bytes;
      this.lruPushHead(e);
      if (expireAt !== 0) this.ttlAdd(e);
      this.orderAppend(e);
    } else {
      const expireAt = opts?.expireAt !== undefined ? opts.expireAt : opts?.keepTtl === true ? e.expireAt : 0;
      this.usedContentBytes += value.length - e.valueLength;
      if (opts?.copy === false) e.value = value;
      else this.copyValue(value, e);
      e.appendCap = 0;
      this.usedBytes += bytes - e.bytes;
      e.bytes = bytes;
      if (opts?.state !== undefined) e.state = opts.state;
      if (opts?.mark !== undefined) e.mark = opts.mark;
      this.changeExpire(e, expireAt);
      this.touch(e);
    }
    this.evictOverLimits(e);
    return e;
  }

  /**
   * Appends to key's value (creating the entry if absent) with amortized O(1) growth: the value lives in an owned
   * buffer with spare room (doubling up to APPEND_GROWTH_BYTES_MAX), counted in `bytes`. Keeps TTL and state.
   * Earlier views of the value are never changed (the new bytes go past their end).
   */
  append(key: Buffer, suffix: Buffer): CacheEntry {
    const ks = latin1String(key);
    const e = this.lookupForWrite(ks);
    if (e === undefined) return this.set(key, suffix);
    const oldLen = e.valueLength;
    const newLen = oldLen + suffix.length;
    const bytesMax = this.limits.bytesMax;
    if (suffix.length === 0) {
      this.touch(e);
      return e;
    }
    if (e.appendCap >= newLen) {
      // Room in the owned buffer past the current end: write there, publish a longer view.
      const full = Buffer.from(e.value.buffer, e.value.byteOffset, e.appendCap);
      suffix.copy(full, oldLen);
      e.value = full.subarray(0, newLen);
      this.usedContentBytes += suffix.length;
      this.touch(e);
      return e;
    }
    let cap = newLen < APPEND_GROWTH_BYTES_MAX ? newLen * 2 : newLen + APPEND_GROWTH_BYTES_MAX;
    let bytes = entryBytes(key.length, cap);
    if (bytesMax > 0 && bytes > bytesMax) {
      cap = newLen; // no room for slack: grow exactly
      bytes = entryBytes(key.length, cap);
      if (bytes > bytesMax) throw new CacheEntryTooLargeError(bytes, bytesMax);
    }
    const full = Buffer.allocUnsafeSlow(cap);
    e.value.copy(full, 0);
    suffix.copy(full, oldLen);
    e.value = full.subarray(0, newLen);
    this.usedContentBytes += suffix.length;
    e.appendCap = cap;
    this.usedBytes += bytes - e.bytes;
    e.bytes = bytes;
    this.touch(e);
    this.evictOverLimits(e);
    return e;
  }

  /** Removes key. False if it was absent (or had already expired: an expired entry is removed all the same). */
  delete(key: Buffer): boolean {
    return this.deleteLatin1(latin1String(key));
  }

  /** delete() by the key's latin1 string. */
  deleteLatin1(keyLatin1: string): boolean {
    const e = this.lookupForWrite(keyLatin1);
    if (e === undefined) return false;
    this.removeEntry(e);
    return true;
  }

  /** Sets (expireAt > 0) or removes (0) key's TTL. False if key is absent. Does not touch the LRU. */
  setExpire(key: Buffer, expireAt: number): boolean {
    const e = this.lookup(latin1String(key));
    if (e === undefined) return false;
    this.changeExpire(e, expireAt);
    return true;
  }

  /** Removes every entry (no hooks fire). Counters are kept; the scan sequence keeps increasing. */
  clear(): void {
    for (let e = this.lruHead; e !== null; ) {
      const next = e.lruNext;
      e.lruPrev = e.lruNext = e.ttlPrev = e.ttlNext = null;
      e.slot = -1;
      e = next;
    }
    this.map.clear();
    this.lruHead = this.lruTail = null;
    this.ttlHead = this.ttlTail = this.ttlCursor = null;
    this.ttlCount = 0;
    this.order = [];
    this.orderSeq = [];
    this.orderHoles = 0;
    this.usedBytes = 0;
    this.usedContentBytes = 0;
    this.slab = EMPTY;
    this.slabUsed = 0;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Expiry
  // -------------------------------------------------------------------------------------------------------------

  /**
   * One step of active expiry: examines up to maxKeys entries that have a TTL, resuming where the previous step
   * stopped (round robin over the TTL ring, so every volatile key is examined once per ttlCount/maxKeys steps) and
   * removes the expired ones. Returns how many expired. Like Redis, a host may run another step right away when a
   * large share of the examined keys had expired.
   */
  sweepExpired(maxKeys: number): number {
    const now = this.clock();
    const budget = Math.min(maxKeys, this.ttlCount);
    let expired = 0;
    for (let examined = 0; examined < budget && this.ttlCount > 0; examined++) {
      const e = this.ttlCursor ?? this.ttlHead;
      if (e === null) break;
      // Advance first: removals (ours or a hook's) keep ttlCursor valid.
      this.ttlCursor = e.ttlNext;
      if (e.expireAt < now) {
        this.removeEntry(e);
        expired++;
        this.counters.expirations++;
        this.counters.activeExpirations++;
        this.onExpire?.(e);
      }
    }
    return expired;
  }

  /**
   * The planning half of a replicated sweep: examines up to maxKeys entries of the TTL ring from the sweep cursor
   * (advancing it, as sweepExpired() does) and returns the keys of those expired at clock(), removing nothing. It
   * stops early once the keys found total keyBytesMax bytes or more (so one huge key still fits).
   * A replicated keyspace's leader names these keys in a log entry; every replica then calls removeExpired() on
   * each, so what a sweep removes never depends on the (unreplicated) ring order or cursor.
   */
  findExpired(maxKeys: number, keyBytesMax = Number.POSITIVE_INFINITY): Buffer[] {
    const now = this.clock();
    const budget = Math.min(maxKeys, this.ttlCount);
    const keys: Buffer[] = [];
    let keyBytes = 0;
    for (let examined = 0; examined < budget && keyBytes < keyBytesMax; examined++) {
      const e = this.ttlCursor ?? this.ttlHead;
      if (e === null) break;
      this.ttlCursor = e.ttlNext;
      if (now > e.expireAt) {
        keys.push(Buffer.from(e.keyLatin1, 'latin1'));
        keyBytes += e.keyLatin1.length;
      }
    }
    return keys;
  }

  /**
   * Removes key if it is held and expired at clock() (counted as an active expiration; onExpire fires). False if it
   * is absent or still live.
   */
  removeExpired(key: Buffer): boolean {
    const e = this.map.get(latin1String(key));
    if (e === undefined || e.expireAt === 0 || !(this.clock() > e.expireAt)) return false;
    this.counters.activeExpirations++;
    this.expireEntry(e);
    return true;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Iteration
  // -------------------------------------------------------------------------------------------------------------

  /**
   * SCAN over the keyspace. `cursor` 0 starts; a returned cursor of 0 means done. Each call examines up to `count`
   * entries (and skips at most 10*count holes), in insertion-sequence order, returning the keys of the live ones
   * that match `match` (a glob; undefined = all). Guarantee: a key present for the whole scan is returned exactly
   * once; a key added or removed meanwhile may or may not be. Expired entries met are removed (after the pass).
   */
  scan(cursor: number, count: number, match?: Buffer): [nextCursor: number, keys: Buffer[]] {
    const keys: Buffer[] = [];
    const order = this.order;
    const n = order.length;
    let i = cursor <= 0 ? 0 : this.firstSlotAtOrAfter(cursor);
    const now = this.clock();
    const pattern = match === undefined ? undefined : match.toString('latin1');
    let stale: Entry[] | undefined;
    let examined = 0;
    let holeBudget = count * 10;
    for (; i < n && examined < count; i++) {
      const e = order[i];
      if (e === undefined) {
        if (--holeBudget < 0) break;
        continue;
      }
      examined++;
      if (e.expireAt !== 0 && now > e.expireAt) {
        (stale ??= []).push(e);
        continue;
      }
      if (pattern !== undefined && !globMatchLatin1(pattern, e.keyLatin1)) continue;
      keys.push(Buffer.from(e.keyLatin1, 'latin1'));
    }
    const next = i < n ? (this.orderSeq[i] ?? 0) : 0;
    if (stale !== undefined && !this.hideExpired) for (const e of stale) this.expireEntry(e);
    return [next, keys];
  }

  /**
   * Every entry held, expired ones not yet removed included, in insertion order (the order of SCAN and of the
   * map). No side effects. Do not change the store while iterating.
   */
  entries(): IterableIterator<CacheEntry> {
    return this.map.values();
  }

  /** Keys of live entries (no touch, no expiry, no stats), in no particular order. */
  *keys(): IterableIterator<Buffer> {
    const now = this.clock();
    for (const e of this.map.values()) {
      if (e.expireAt !== 0 && now > e.expireAt) continue;
      yield Buffer.from(e.keyLatin1, 'latin1');
    }
  }

  /**
   * A uniformly random live entry, or undefined if none: random slots of the scan order (at most half of it is
   * holes), a bounded number of tries, then the first live entry after the last try. Expired entries met are removed.
   */
  randomEntry(): CacheEntry | undefined {
    for (let tries = 0; tries < 100 && this.map.size > 0; tries++) {
      const n = this.order.length;
      let e = this.order[Math.floor(this.rng.next() * n)];
      // 'hide' mode: an expired entry counts as a hole.
      if (e !== undefined && this.hideExpired && e.expireAt !== 0 && this.clock() > e.expireAt) e = undefined;
      if (e === undefined && tries >= 16) {
        // Unlucky with holes: take the next live slot (in 'hide' mode, the next one not expired).
        const start = Math.floor(this.rng.next() * n);
        const now = this.clock();
        for (let k = 0; k < n && e === undefined; k++) {
          e = this.order[(start + k) % n];
          if (e !== undefined && this.hideExpired && e.expireAt !== 0 && now > e.expireAt) e = undefined;
        }
      }
      if (e === undefined) continue;
      if (e.expireAt !== 0 && this.clock() > e.expireAt) {
        if (!this.hideExpired) this.expireEntry(e);
        continue;
      }
      return e;
    }
    return undefined;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Internals
  // -------------------------------------------------------------------------------------------------------------

  /** The live entry for ks; an expired one is removed ('delete' mode) or only hidden ('hide' mode). */
  private lookup(ks: string): Entry | undefined {
    const e = this.map.get(ks);
    if (e === undefined) return undefined;
    if (e.expireAt !== 0 && this.clock() > e.expireAt) {
      if (!this.hideExpired) this.expireEntry(e);
      return undefined;
    }
    return e;
  }

  /** lookup() for a write that replaces or deletes the entry: an expired entry is removed in both modes. */
  private lookupForWrite(ks: string): Entry | undefined {
    const e = this.map.get(ks);
    if (e === undefined) return undefined;
    if (e.expireAt !== 0 && this.clock() > e.expireAt) {
      this.expireEntry(e);
      return undefined;
    }
    return e;
  }

  private expireEntry(e: Entry): void {
    this.removeEntry(e);
    this.counters.expirations++;
    this.onExpire?.(e);
  }

  private evictOverLimits(keep: Entry): void {
    const itemsMax = this.limits.itemsMax;
    const bytesMax = this.limits.bytesMax;
    while ((itemsMax > 0 && this.map.size > itemsMax) || (bytesMax > 0 && this.usedBytes > bytesMax)) {
      const victim = this.lruTail;
      if (victim === null || victim === keep) break;
      this.removeEntry(victim);
      if (victim.expireAt !== 0 && this.clock() > victim.expireAt) {
        this.counters.expirations++;
        this.onExpire?.(victim);
      } else {
        this.counters.evictions++;
        this.onEvict?.(victim);
      }
    }
  }

  /** Copies src into store memory and makes it e's value. */
  private copyValue(src: Buffer, e: Entry): void {
    const n = src.length;
    if (n === 0) {
      e.valueBytes = EMPTY;
      e.valueStart = 0;
      e.valueLength = 0;
      return;
    }
    if (n >= SMALL_VALUE_BYTES) {
      const b = Buffer.allocUnsafeSlow(n);
      src.copy(b, 0);
      e.valueBytes = b;
      e.valueStart = 0;
      e.valueLength = n;
      return;
    }
    const aligned = (n + 7) & ~7;
    if (this.slabUsed + aligned > this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(VALUE_SLAB_BYTES);
      this.slabUsed = 0;
    }
    src.copy(this.slab, this.slabUsed);
    e.valueBytes = this.slab;
    e.valueStart = this.slabUsed;
    e.valueLength = n;
    this.slabUsed += aligned;
  }

  private removeEntry(e: Entry): void {
    this.map.delete(e.keyLatin1);
    this.usedBytes -= e.bytes;
    this.usedContentBytes -= entryBytes(e.keyLatin1.length, e.valueLength);
    this.lruUnlink(e);
    if (e.expireAt !== 0) this.ttlRemove(e);
    this.orderRemove(e);
  }

  private changeExpire(e: Entry, expireAt: number): void {
    if (e.expireAt === 0 && expireAt !== 0) {
      e.expireAt = expireAt;
      this.ttlAdd(e);
    } else if (e.expireAt !== 0 && expireAt === 0) {
      this.ttlRemove(e);
      e.expireAt = 0;
    } else {
      e.expireAt = expireAt;
    }
  }

  private touch(e: Entry): void {
    if (this.lruHead === e) return;
    this.lruUnlink(e);
    this.lruPushHead(e);
  }

  private lruPushHead(e: Entry): void {
    e.lruPrev = null;
    e.lruNext = this.lruHead;
    if (this.lruHead !== null) this.lruHead.lruPrev = e;
    this.lruHead = e;
    if (this.lruTail === null) this.lruTail = e;
  }

  private lruUnlink(e: Entry): void {
    if (e.lruPrev !== null) e.lruPrev.lruNext = e.lruNext;
    else this.lruHead = e.lruNext;
    if (e.lruNext !== null) e.lruNext.lruPrev = e.lruPrev;
    else this.lruTail = e.lruPrev;
    e.lruPrev = e.lruNext = null;
  }

  private ttlAdd(e: Entry): void {
    e.ttlNext = null;
    e.ttlPrev = this.ttlTail;
    if (this.ttlTail !== null) this.ttlTail.ttlNext = e;
    else this.ttlHead = e;
    this.ttlTail = e;
    this.ttlCount++;
  }

  private ttlRemove(e: Entry): void {
    if (this.ttlCursor === e) this.ttlCursor = e.ttlNext;
    if (e.ttlPrev !== null) e.ttlPrev.ttlNext = e.ttlNext;
    else this.ttlHead = e.ttlNext;
    if (e.ttlNext !== null) e.ttlNext.ttlPrev = e.ttlPrev;
    else this.ttlTail = e.ttlPrev;
    e.ttlPrev = e.ttlNext = null;
    this.ttlCount--;
  }

  private orderAppend(e: Entry): void {
    e.slot = this.order.length;
    this.order.push(e);
    this.orderSeq.push(e.seq);
  }

  private orderRemove(e: Entry): void {
    if (e.slot < 0) return;
    this.order[e.slot] = undefined;
    e.slot = -1;
    this.orderHoles++;
    if (this.orderHoles > 64 && this.orderHoles * 2 > this.order.length) this.compactOrder();
  }

  /** Drops the holes of the scan order (amortized O(1) per removal: runs once holes outnumber live slots). */
  private compactOrder(): void {
    const order: (Entry | undefined)[] = [];
    const seqs: number[] = [];
    for (const e of this.order) {
      if (e === undefined) continue;
      e.slot = order.length;
      order.push(e);
      seqs.push(e.seq);
    }
    this.order = order;
    this.orderSeq = seqs;
    this.orderHoles = 0;
  }

  /** Index of the first slot whose seq >= seq (order.length if none). */
  private firstSlotAtOrAfter(seq: number): number {
    const seqs = this.orderSeq;
    let lo = 0;
    let hi = seqs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((seqs[mid] ?? 0) < seq) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Verifies every structural invariant; throws on the first violation. O(n): for tests and debugging. */
  checkInvariants(): void {
    const fail = (msg: string): never => {
      throw new Error(`CacheStore invariant: ${msg}`);
    };
    let n = 0;
    let bytes = 0;
    let contentBytes = 0;
    for (let e = this.lruHead, prev: Entry | null = null; e !== null; prev = e, e = e.lruNext) {
      if (e.lruPrev !== prev) fail('LRU back link');
      if (this.map.get(e.keyLatin1) !== e) fail('LRU entry not in map');
      if (this.order[e.slot] !== e) fail('entry not at its slot');
      if (e.valueStart < 0 || e.valueStart + e.valueLength > e.valueBytes.length) fail('value range outside its memory');
      if (e.bytes < entryBytes(e.keyLatin1.length, e.valueLength)) fail('entry bytes too small');
      n++;
      bytes += e.bytes;
      contentBytes += entryBytes(e.keyLatin1.length, e.valueLength);
      if (e.lruNext === null && this.lruTail !== e) fail('LRU tail');
    }
    if (n !== this.map.size) fail(`LRU length ${n} != map size ${this.map.size}`);
    if (bytes !== this.usedBytes) fail(`bytes ${bytes} != accounted ${this.usedBytes}`);
    if (contentBytes !== this.usedContentBytes) fail(`content bytes ${contentBytes} != ${this.usedContentBytes}`);
    let t = 0;
    let cursorSeen = this.ttlCursor === null;
    for (let e = this.ttlHead, prev: Entry | null = null; e !== null; prev = e, e = e.ttlNext) {
      if (e.ttlPrev !== prev) fail('TTL back link');
      if (e.expireAt === 0) fail('entry without TTL in the TTL ring');
      if (this.map.get(e.keyLatin1) !== e) fail('TTL entry not in map');
      if (e === this.ttlCursor) cursorSeen = true;
      t++;
    }
    if (t !== this.ttlCount) fail('TTL count');
    if (!cursorSeen) fail('TTL cursor not in ring');
    let live = 0;
    let holes = 0;
    for (let i = 0; i < this.order.length; i++) {
      if (this.order[i] === undefined) holes++;
      else live++;
      if (i > 0 && (this.orderSeq[i] ?? 0) <= (this.orderSeq[i - 1] ?? 0)) fail('scan order not increasing');
    }
    if (live !== this.map.size || holes !== this.orderHoles) fail('scan order counts');
    const { itemsMax, bytesMax } = this.limits;
    if (itemsMax > 0 && this.map.size > itemsMax) fail('over itemsMax');
    if (bytesMax > 0 && this.usedBytes > bytesMax) fail('over bytesMax');
  }
}
