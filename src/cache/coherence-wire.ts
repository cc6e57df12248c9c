/**
 * How the coherence protocol rides the cluster runtime. Node -> home requests are internal keyspace commands, so
 * routing to the shard's leader, forwarding, parking during elections and timeouts are the runtime's:
 *
 *   _c.gets  <from> <key> <cacheable 0|1>                          (read kind)
 *   _c.renew <from> <epoch> <evicted: msgpack [[key, gen], ...]>   (read kind)
 *   _c.write <from> <want key or ''> <keys: msgpack string[] | '*'> <the write's own args...>   (write kind)
 *   _c.state <key>                                                  (read kind: CACHE.STATE, answered by the home)
 *   _c.flush <from> <epoch> <key> <gen> <value: msgpack CachedValue | nil>   (read kind: a write-back, see below)
 *
 * `_c.flush` is a read-kind request although it writes memory: the home decides whether to write it (a flush of a
 * grant the home no longer lists is refused, so routing it again after a leader change is safe, where the write
 * path's outcome-unknown rules would only get in the way).
 *
 * The home's answer is one bulk string holding the msgpack of the HomeAnswer (a written answer carries the
 * write's own reply record as bytes). Home -> node messages (InvMessage | DownMessage | StateQuery) travel in batches, as
 * peer requests `{ cs: [...] }` whose response is one InvAck, DownAck or StateReport per message, relayed between the
 * node's worker and its edge (worker-protocol.ts 'cinv' / 'cack'). `_c.state` is answered with a RESP array (see cacheStateReply).
 *
 * Values: a cached value is `{ v: bytes, x: expireAt unix ms (0 = none) }`; null = no such key.
 */
import { Packr } from 'msgpackr';
import { ByteReader } from '../util/byte-reader.js';
import type { NodeId } from '../raft/types.js';
import type { CacheKey, DirtyItem, DownAck, HomeAnswer, HomeMessage, InvAck, NodeRequest, StateReport, WriteRequest, WrittenAnswer } from './coherence-types.js';

/** A string value as cached: bytes and absolute expiry (unix ms, 0 = none). */
export interface CachedValue {
  v: Buffer;
  x: number;
}

/** The write's own RESP arguments (a replicated keyspace write). */
export type CacheWriteOp = Buffer[];

export const CACHE_GETS = '_c.gets';
export const CACHE_RENEW = '_c.renew';
export const CACHE_WRITE = '_c.write';
export const CACHE_STATE = '_c.state';
export const CACHE_FLUSH = '_c.flush';

const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const B = (s: string): Buffer => Buffer.from(s, 'latin1');
const EMPTY = Buffer.alloc(0);

/** True for the internal cache commands (checked on the first bytes: '_c.'). */
export function isCacheCommand(args: readonly Uint8Array[]): boolean {
  const a = args[0];
  return a !== undefined && a.length > 3 && a[0] === 0x5f && a[1] === 0x63 && a[2] === 0x2e;
}

export function encodeCacheRequest(req: NodeRequest<CacheWriteOp>): { kind: 'read' | 'write'; args: Buffer[] } {
  switch (req.t) {
    case 'gets':
      return { kind: 'read', args: [B(CACHE_GETS), B(String(req.from)), B(req.key), B(req.cacheable ? '1' : '0')] };
    case 'renew':
      return { kind: 'read', args: [B(CACHE_RENEW), B(String(req.from)), B(String(req.epoch)), packr.pack(req.evicted)] };
    case 'write':
      return {
        kind: 'write',
        args: [
          B(CACHE_WRITE),
          B(String(req.from)),
          B(req.want ?? ''),
          req.keys === 'all' ? B('*') : packr.pack(req.keys),
          req.dropped === undefined ? EMPTY : packr.pack([req.dropped.epoch, req.dropped.items]),
          ...req.op,
        ],
      };
    case 'flush':
      return { kind: 'read', args: [B(CACHE_FLUSH), B(String(req.from)), B(String(req.epoch)), B(req.key), B(String(req.gen)), packr.pack(req.value)] };
  }
}

export class CacheWireError extends Error {
  constructor(message: string) {
    super(`cache wire: ${message}`);
    this.name = 'CacheWireError';
  }
}

function nodeIdOf(b: Buffer | undefined): NodeId {
  const n = b === undefined ? NaN : Number(b.toString('latin1'));
  if (!Number.isSafeInteger(n) || n <= 0) throw new CacheWireError('bad node id');
  return n;
}

/** Why `args` is not a well-formed cache command, or null. Inner write args are checked by the caller. */
export function checkCacheCommand(kind: 'read' | 'write', args: readonly Buffer[]): string | null {
  const name = args[0]?.toString('latin1');
  try {
    if (name === CACHE_GETS && kind === 'read' && args.length === 4) nodeIdOf(args[1]);
    else if (name === CACHE_RENEW && kind === 'read' && args.length === 4) nodeIdOf(args[1]);
    else if (name === CACHE_WRITE && kind === 'write' && args.length >= 6) nodeIdOf(args[1]);
    else if (name === CACHE_STATE && kind === 'read' && args.length === 2) return null;
    else if (name === CACHE_FLUSH && kind === 'read' && args.length === 6) nodeIdOf(args[1]);
    else return `malformed cache command ${name ?? '(none)'}`;
  } catch (err) {
    return (err as Error).message;
  }
  return null;
}

/** The inner write args of `_c.write`. */
export function cacheWriteArgs(args: Buffer[]): Buffer[] {
  return args.slice(5);
}

export function decodeCacheRequest(args: Buffer[]): NodeRequest<CacheWriteOp> & { shard: number } {
  const name = args[0]!.toString('latin1');
  const from = nodeIdOf(args[1]);
  if (name === CACHE_GETS) return { t: 'gets', from, shard: -1, key: args[2]!.toString('latin1'), cacheable: args[3]![0] === 0x31 };
  if (name === CACHE_RENEW) {
    const epoch = Number(args[2]!.toString('latin1'));
    if (!Number.isSafeInteger(epoch)) throw new CacheWireError('bad epoch');
    const evicted = packr.unpack(args[3]!) as unknown;
    if (!Array.isArray(evicted)) throw new CacheWireError('bad evicted list');
    return { t: 'renew', from, shard: -1, epoch, evicted: evicted as [CacheKey, number][] };
  }
  if (name === CACHE_FLUSH) {
    const epoch = Number(args[2]!.toString('latin1'));
    const gen = Number(args[4]!.toString('latin1'));
    if (!Number.isSafeInteger(epoch) || !Number.isSafeInteger(gen)) throw new CacheWireError('bad epoch or gen');
    const value = toCachedValue(packr.unpack(args[5]!));
    if (value === undefined) throw new CacheWireError('bad flushed value');
    return { t: 'flush', from, shard: -1, epoch, key: args[3]!.toString('latin1'), gen, value };
  }
  if (name === CACHE_WRITE) {
    const want = args[2]!.toString('latin1');
    const keysArg = args[3]!;
    const keys = keysArg.length === 1 && keysArg[0] === 0x2a ? 'all' : (packr.unpack(keysArg) as unknown);
    if (keys !== 'all' && !Array.isArray(keys)) throw new CacheWireError('bad key list');
    let dropped: WriteRequest<CacheWriteOp>['dropped'];
    if (args[4]!.length > 0) {
      const d = packr.unpack(args[4]!) as unknown;
      if (!Array.isArray(d) || d.length !== 2 || !Number.isSafeInteger(d[0]) || !isItemList(d[1])) throw new CacheWireError('bad dropped list');
      dropped = { epoch: d[0] as number, items: d[1] };
    }
    return {
      t: 'write',
      from,
      shard: -1,
      keys: keys as CacheKey[] | 'all',
      op: cacheWriteArgs(args),
      ...(want !== '' ? { want } : {}),
      ...(dropped !== undefined ? { dropped } : {}),
    };
  }
  throw new CacheWireError(`unknown cache command ${name}`);
}

/*
 * Home answers travel as a small fixed binary form, not msgpack: every cache request is answered with one, and
 * msgpack's object encoding cost the shard worker about 6% of its CPU on a SET-heavy run (and the edge as much to
 * decode). Layout (little-endian): u8 kind (1 data, 2 written, 3 lease, 4 flushed), u8 flags, f64 epoch, u32 home,
 * then by kind:
 *   data:    f64 gen, [value]                       flags: LEASE, GRANT (grant not null), GRANT_E, VALUE (value not null)
 *   written: u32 result length, result bytes, [grant: u32 key length, latin1 key, f64 gen, [value]]
 *                                                   flags: LEASE, GRANT, VALUE (the grant's value not null)
 *   flushed:                                        flags: LEASE, ACCEPTED, PENDING
 * where [value] = f64 expiry, u32 length, bytes.
 */
const A_DATA = 1;
const A_WRITTEN = 2;
const A_LEASE = 3;
const A_FLUSHED = 4;
const F_LEASE = 1;
const F_GRANT = 2;
const F_GRANT_E = 4;
const F_VALUE = 8;
const F_ACCEPTED = 16;
const F_PENDING = 32;
const ANSWER_HEAD = 14;

let scratch = Buffer.allocUnsafe(4096);

function valueBytes(v: CachedValue | null): number {
  return v === null ? 0 : 12 + v.v.length;
}

/**
 * The answer's wire form. The returned Buffer is a view of a scratch buffer that the next call overwrites: copy it
 * (ReplyRecorder.bulk does) before encoding another.
 */
export function encodeAnswer(a: HomeAnswer<CachedValue, Uint8Array>): Buffer {
  let size = ANSWER_HEAD;
  let flags = a.lease ? F_LEASE : 0;
  let kind: number;
  switch (a.t) {
    case 'data':
      kind = A_DATA;
      size += 8 + valueBytes(a.value);
      if (a.grant !== null) flags |= F_GRANT | (a.grant === 'E' ? F_GRANT_E : 0);
      if (a.value !== null) flags |= F_VALUE;
      break;
    case 'written':
      kind = A_WRITTEN;
      size += 4 + a.result.length;
      if (a.grant !== null) {
        flags |= F_GRANT;
        size += 4 + a.grant.key.length + 8 + valueBytes(a.grant.value);
        if (a.grant.value !== null) flags |= F_VALUE;
      }
      break;
    case 'lease':
      kind = A_LEASE;
      break;
    case 'flushed':
      kind = A_FLUSHED;
      flags |= (a.accepted ? F_ACCEPTED : 0) | (a.pending === true ? F_PENDING : 0);
      break;
  }
  if (scratch.length < size) scratch = Buffer.allocUnsafe(Math.max(size, scratch.length * 2));
  const b = scratch;
  b[0] = kind;
  b[1] = flags;
  b.writeDoubleLE(a.epoch, 2);
  b.writeUInt32LE(a.home, 10);
  let o = ANSWER_HEAD;
  const putValue = (v: CachedValue | null): void => {
    if (v === null) return;
    b.writeDoubleLE(v.x, o);
    b.writeUInt32LE(v.v.length, o + 8);
    o += 12;
    b.set(v.v, o);
    o += v.v.length;
  };
  if (a.t === 'data') {
    b.writeDoubleLE(a.gen, o);
    o += 8;
    putValue(a.value);
  } else if (a.t === 'written') {
    b.writeUInt32LE(a.result.length, o);
    b.set(a.result, o + 4);
    o += 4 + a.result.length;
    if (a.grant !== null) {
      b.writeUInt32LE(a.grant.key.length, o);
      o += 4;
      o += b.write(a.grant.key, o, 'latin1');
      b.writeDoubleLE(a.grant.gen, o);
      o += 8;
      putValue(a.grant.value);
    }
  }
  return b.subarray(0, o);
}

/** Decodes encodeAnswer's form; values and results are copies (the input may be reused). Throws CacheWireError on a malformed answer. */
export function decodeAnswer(u: Uint8Array): HomeAnswer<CachedValue, Uint8Array> {
  const bad = (): never => {
    throw new CacheWireError('bad answer');
  };
  const r = new ByteReader(u, () => new CacheWireError('bad answer'));
  const kind = r.u8('kind');
  const flags = r.u8('flags');
  const epoch = r.f64('epoch');
  const home = r.u32('home');
  if (!Number.isSafeInteger(epoch)) bad();
  const lease = (flags & F_LEASE) !== 0;
  const bytes = (): Buffer => Buffer.from(r.lenView('bytes'));
  const value = (): CachedValue | null => {
    if ((flags & F_VALUE) === 0) return null;
    const x = r.f64('expiry');
    if (!Number.isFinite(x)) bad();
    return { x, v: bytes() };
  };
  let a: HomeAnswer<CachedValue, Uint8Array>;
  switch (kind) {
    case A_DATA: {
      const gen = r.f64('gen');
      if (!Number.isSafeInteger(gen)) bad();
      const grant = (flags & F_GRANT) === 0 ? null : (flags & F_GRANT_E) !== 0 ? 'E' : 'S';
      a = { t: 'data', ok: true, epoch, home, lease, value: value(), grant, gen };
      break;
    }
    case A_WRITTEN: {
      const result = bytes();
      let grant: WrittenAnswer<CachedValue, Uint8Array>['grant'] = null;
      if ((flags & F_GRANT) !== 0) {
        const key = r.lenView('key').toString('latin1');
        const gen = r.f64('gen');
        if (!Number.isSafeInteger(gen)) bad();
        grant = { key, gen, value: value() };
      }
      a = { t: 'written', ok: true, epoch, home, lease, result, grant };
      break;
    }
    case A_LEASE:
      a = { t: 'lease', ok: true, epoch, home, lease };
      break;
    case A_FLUSHED:
      a = { t: 'flushed', ok: true, epoch, home, lease, accepted: (flags & F_ACCEPTED) !== 0, ...((flags & F_PENDING) !== 0 ? { pending: true } : {}) };
      break;
    default:
      return bad();
  }
  if (r.remaining !== 0) bad();
  return a;
}

/** A CachedValue (or null) from msgpack, with its bytes as a Buffer; undefined when it is not one. */
function toCachedValue(u: unknown): CachedValue | null | undefined {
  if (u === null) return null;
  if (u === undefined || typeof u !== 'object') return undefined;
  const o = u as { v?: unknown; x?: unknown };
  if (!(o.v instanceof Uint8Array) || typeof o.x !== 'number' || !Number.isFinite(o.x)) return undefined;
  return { v: Buffer.from(o.v.buffer, o.v.byteOffset, o.v.byteLength), x: o.x };
}

/** The dirty data of an acknowledgement from a peer: checked item by item, values turned into CachedValues. */
function checkDirty(data: unknown): DirtyItem<CachedValue>[] | undefined | false {
  if (data === undefined) return undefined;
  if (!Array.isArray(data)) return false;
  const out: DirtyItem<CachedValue>[] = [];
  for (const it of data) {
    if (!Array.isArray(it) || it.length !== 3 || typeof it[0] !== 'string' || !Number.isInteger(it[1])) return false;
    const v = toCachedValue(it[2]);
    if (v === undefined) return false;
    out.push([it[0], it[1] as number, v]);
  }
  return out;
}

/** True for `_c.state` (CACHE.STATE), which is not a NodeRequest: the worker answers it itself. */
export function isCacheStateCommand(args: readonly Uint8Array[]): boolean {
  const a = args[0];
  return a !== undefined && a.length === CACHE_STATE.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('latin1') === CACHE_STATE;
}

/** Most home -> node messages one peer payload (CacheBatchPayload) may carry; a larger batch is refused. */
export const CACHE_BATCH_MAX = 65_536;

/**
 * Peer payload of the home -> node messages (invalidations, downgrades, state queries) one worker sends one peer in
 * one event-loop turn, for any of its shards; answered by one NodeAck per message, in order.
 */
export interface CacheBatchPayload {
  cs: HomeMessage[];
}

export function isCacheBatchPayload(p: unknown): p is CacheBatchPayload {
  if (p === null || typeof p !== 'object' || !('cs' in p)) return false;
  const ms = (p as { cs: unknown }).cs;
  return Array.isArray(ms) && ms.length > 0 && ms.length <= CACHE_BATCH_MAX && ms.every(isHomeMessage);
}

function isHomeMessage(u: unknown): u is HomeMessage {
  const m = u as HomeMessage | null;
  if (m === null || typeof m !== 'object' || !Number.isInteger(m.shard)) return false;
  if (m.t === 'state') return typeof m.key === 'string';
  return (m.t === 'inv' || m.t === 'down') && Number.isInteger(m.epoch) && isItemList(m.items);
}

/** [[key string, gen integer], ...]: anything else from a peer is refused before it reaches the edge. */
function isItemList(items: unknown): items is [CacheKey, number][] {
  return Array.isArray(items) && items.every((it) => Array.isArray(it) && it.length === 2 && typeof it[0] === 'string' && Number.isInteger(it[1]));
}

export function isStateReport(p: unknown): p is StateReport {
  if (p === null || typeof p !== 'object') return false;
  const r = p as StateReport;
  return r.t === 'state' && Number.isInteger(r.from) && (r.state === 'M' || r.state === 'E' || r.state === 'S' || r.state === 'I');
}

export function isInvAck(p: unknown): p is InvAck {
  if (p === null || typeof p !== 'object') return false;
  const a = p as InvAck;
  return a.t === 'invack' && Number.isInteger(a.from) && Number.isInteger(a.shard) && Number.isInteger(a.epoch) && isItemList(a.items) && normalizeData(a);
}

export function isDownAck(p: unknown): p is DownAck {
  if (p === null || typeof p !== 'object') return false;
  const a = p as DownAck;
  return a.t === 'downack' && Number.isInteger(a.from) && Number.isInteger(a.shard) && Number.isInteger(a.epoch) && isItemList(a.items) && normalizeData(a);
}

/** Checks an acknowledgement's dirty data and replaces it with the checked copy (values as Buffers). */
function normalizeData(a: { data?: DirtyItem[] }): boolean {
  const d = checkDirty(a.data);
  if (d === false) return false;
  if (d === undefined) delete a.data;
  else a.data = d;
  return true;
}

/**
 * The keys a replicated keyspace write touches, from its command spec: 'all' for a keyless write (FLUSHALL,
 * FLUSHDB), which the home treats as a write of every key of the shard.
 */
export function writeKeysOf(spec: { firstKey: number; lastKey: number; keyStep: number }, args: readonly Uint8Array[]): CacheKey[] | 'all' {
  if (spec.firstKey === 0) return 'all';
  const last = spec.lastKey < 0 ? args.length + spec.lastKey : spec.lastKey;
  const step = spec.keyStep > 0 ? spec.keyStep : 1;
  const keys: CacheKey[] = [];
  for (let i = spec.firstKey; i <= last && i < args.length; i += step) {
    const a = args[i]!;
    keys.push(Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('latin1'));
  }
  return keys;
}
