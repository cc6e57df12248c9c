/**
 * The cache's optional backing store: an external Redis (`--cache-backing redis://host:port/db`) below the
 * replicated keyspace, so Lockstep can sit as a coherent near-cache tier in front of an existing Redis. One ioredis
 * connection per shard worker, opened when the worker first needs it. docs/cache-coherence.md ("Backing store").
 *
 *   - read(key): a GET miss in memory (the key is absent from the shard's replicated keyspace) reads the key here;
 *     the home then loads it into memory with `SET key value NX [PXAT expiry]` (NX: a write that reached memory
 *     meanwhile wins) and serves what memory holds.
 *   - write(key, value): after a write (or a write-back) of a key applied to memory, the shard's leader sends the
 *     key's new value here (SET with its absolute expiry, or DEL). Calls are sent in call order on one connection,
 *     so Redis sees each key's values in the order memory applied them.
 *
 * Memory stays the source of truth: a failed write here is logged and counted, never failed back to the client.
 * Limits and what can diverge (a leader that dies between applying a write and sending it here) are documented in
 * docs/cache-coherence.md.
 */
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { CachedValue } from './coherence-wire.js';

export interface BackingStats {
  reads: number;
  readHits: number;
  readErrors: number;
  writes: number;
  writeErrors: number;
}

/** A Redis command may wait this long for a reply (connect included) before it fails. */
export const BACKING_COMMAND_TIMEOUT_MS = 2_000;

export class BackingStore {
  readonly stats: BackingStats = { reads: 0, readHits: 0, readErrors: 0, writes: 0, writeErrors: 0 };
  private redis: Redis | null = null;
  private closed = false;
  private lastErrorLog = 0;

  constructor(
    readonly url: string,
    private readonly log: Logger,
  ) {
    // Parsed now so a bad URL fails at start-up, not at the first miss.
    const u = new URL(url);
    if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new Error(`--cache-backing: expected a redis:// or rediss:// URL, got ${url}`);
  }

  private client(): Redis {
    if (this.redis === null) {
      this.redis = new Redis(this.url, {
        commandTimeout: BACKING_COMMAND_TIMEOUT_MS,
        maxRetriesPerRequest: 1,
        enableOfflineQueue: true,
        lazyConnect: false,
      });
      this.redis.on('error', (err: Error) => this.warn('backing store connection error', err));
    }
    return this.redis;
  }

  private warn(msg: string, err: unknown): void {
    const now = Date.now();
    if (now - this.lastErrorLog < 5_000) return; // at most one line per 5 s while Redis is down
    this.lastErrorLog = now;
    this.log.warn({ err, url: this.url }, msg);
  }

  /** The key's value and absolute expiry (unix ms, 0 = none), or null when Redis does not have it. */
  async read(key: Buffer): Promise<CachedValue | null> {
    this.stats.reads++;
    try {
      const res = await this.client().multi().getBuffer(key).pexpiretime(key).exec();
      if (res === null) throw new Error('transaction aborted');
      const [[e1, v], [e2, x]] = res as [[Error | null, Buffer | null], [Error | null, number]];
      if (e1 !== null) throw e1;
      if (e2 !== null) throw e2;
      if (v === null) return null;
      this.stats.readHits++;
      return { v, x: x > 0 ? x : 0 };
    } catch (err) {
      this.stats.readErrors++;
      this.warn('backing store read failed', err);
      throw new Error(`cache backing store unavailable: ${(err as Error).message}`);
    }
  }

  /** Sends the key's value after a write applied to memory (null: the key is gone). Never fails the caller. */
  write(key: Buffer, value: CachedValue | null): void {
    if (this.closed) return;
    this.stats.writes++;
    const r = this.client();
    const p = value === null ? r.del(key) : value.x > 0 ? r.set(key, value.v, 'PXAT', value.x) : r.set(key, value.v);
    p.catch((err: unknown) => {
      this.stats.writeErrors++;
      this.warn('backing store write failed', err);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const r = this.redis;
    this.redis = null;
    if (r === null) return;
    await r.quit().catch(() => r.disconnect());
  }
}
