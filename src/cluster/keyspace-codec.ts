/**
 * The bytes of the replicated keyspace's Raft entries: what a shard leader proposes and every replica decodes in
 * `KeyspaceMachine.apply`. Hand-rolled (measured faster than msgpackr for the common SET: docs/replicated-keyspace.md).
 *
 * Layout (all entries):
 *   0  u8   format version (KEYSPACE_ENTRY_VERSION)
 *   1  u8   kind: 1 write, 2 sweep, 3 config
 *   2  f64  stamp: the leader's clock, Unix ms (little endian; a non-negative integer)
 *  10  ...  body
 * Bodies:
 *   write   varint argc (>= 1), then argc x (varint length, bytes): the command's RESP arguments, name first
 *   sweep   varint n, then n x (varint length, bytes): keys the leader found expired
 *   config  f64 keyspaceBytesMax (a non-negative integer; 0 = unbounded)
 * Varints are LEB128 (7 bits a byte, low first), at most 5 bytes (< 2^32).
 *
 * Decoding checks every length against the end and that nothing trails. A malformed entry is a bug upstream (the
 * WAL and the peer protocol checksum what they carry), never user input: it throws KeyspaceEntryError. An entry
 * of a newer format version throws too, with its own code, so a node that was not upgraded stops loudly instead of
 * applying something it does not understand (which would make replicas diverge).
 */

/** Format version written by this code; decoding accepts versions 1..KEYSPACE_ENTRY_VERSION. */
export const KEYSPACE_ENTRY_VERSION = 1;

export const enum KeyspaceEntryKind {
  Write = 1,
  Sweep = 2,
  Config = 3,
}

/** Bytes before the body: version, kind, stamp. */
const HEADER_BYTES = 10;

export type KeyspaceEntryErrorCode = 'KEYSPACE_CORRUPT' | 'KEYSPACE_VERSION' | 'KEYSPACE_COMMAND';

/**
 * A Raft entry (or snapshot) the keyspace cannot apply. KEYSPACE_CORRUPT: malformed bytes. KEYSPACE_VERSION: a
 * newer format than this node knows (upgrade it). KEYSPACE_COMMAND: a write entry naming a command that is not a
 * replicated write here, or with the wrong number of arguments. All are bugs or version skew, not user errors.
 */
export class KeyspaceEntryError extends Error {
  constructor(
    readonly code: KeyspaceEntryErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'KeyspaceEntryError';
  }
}

export type KeyspaceEntry =
  | { kind: KeyspaceEntryKind.Write; stampMs: number; args: Buffer[] }
  | { kind: KeyspaceEntryKind.Sweep; stampMs: number; keys: Buffer[] }
  | { kind: KeyspaceEntryKind.Config; stampMs: number; keyspaceBytesMax: number };

export function varintBytes(n: number): number {
  return n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5;
}

export function writeVarint(buf: Buffer, pos: number, n: number): number {
  while (n >= 0x80) {
    buf[pos++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[pos++] = n;
  return pos;
}

function checkStamp(stampMs: number): void {
  if (!Number.isSafeInteger(stampMs) || stampMs < 0) {
    throw new RangeError(`keyspace entry stamp must be a non-negative safe integer (Unix ms), got ${stampMs}`);
  }
}

function encodeList(kind: KeyspaceEntryKind, stampMs: number, items: readonly Buffer[]): Uint8Array {
  checkStamp(stampMs);
  const n = items.length;
  let size = HEADER_BYTES + varintBytes(n);
  for (let i = 0; i < n; i++) {
    const len = (items[i] as Buffer).length;
    size += varintBytes(len) + len;
  }
  if (n > 0xffffffff) throw new RangeError('keyspace entry: too many items');
  const buf = Buffer.allocUnsafe(size);
  buf[0] = KEYSPACE_ENTRY_VERSION;
  buf[1] = kind;
  buf.writeDoubleLE(stampMs, 2);
  let p = writeVarint(buf, HEADER_BYTES, n);
  for (let i = 0; i < n; i++) {
    const a = items[i] as Buffer;
    const len = a.length;
    p = writeVarint(buf, p, len);
    if (len < 32) {
      for (let j = 0; j < len; j++) buf[p++] = a[j] as number;
    } else {
      buf.set(a, p);
      p += len;
    }
  }
  return buf;
}

/** A write command (its RESP arguments, name first, exactly as the client sent them) stamped with the leader's clock. */
export function encodeWrite(args: readonly Buffer[], stampMs: number): Uint8Array {
  if (args.length === 0) throw new RangeError('encodeWrite: no arguments (the command name comes first)');
  return encodeList(KeyspaceEntryKind.Write, stampMs, args);
}

/** Active expiry: every replica removes those of `keys` that are expired at the stamp (KeyspaceMachine.planSweep). */
export function encodeSweep(stampMs: number, keys: readonly Buffer[]): Uint8Array {
  return encodeList(KeyspaceEntryKind.Sweep, stampMs, keys);
}

/** Changes the replicated memory limit (content bytes; 0 = unbounded). */
export function encodeConfig(stampMs: number, keyspaceBytesMax: number): Uint8Array {
  checkStamp(stampMs);
  if (!Number.isSafeInteger(keyspaceBytesMax) || keyspaceBytesMax < 0) {
    throw new RangeError(`keyspaceBytesMax must be a non-negative safe integer, got ${keyspaceBytesMax}`);
  }
  const buf = Buffer.allocUnsafe(HEADER_BYTES + 8);
  buf[0] = KEYSPACE_ENTRY_VERSION;
  buf[1] = KeyspaceEntryKind.Config;
  buf.writeDoubleLE(stampMs, 2);
  buf.writeDoubleLE(keyspaceBytesMax, HEADER_BYTES);
  return buf;
}

/** A Buffer over the same bytes as `data` (no copy). */
export function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function corrupt(what: string): never {
  throw new KeyspaceEntryError('KEYSPACE_CORRUPT', `corrupt keyspace entry: ${what}`);
}

/** Checks the format version byte (shared with snapshots). */
export function checkVersion(version: number | undefined, current: number, what: string): void {
  if (version === undefined) throw new KeyspaceEntryError('KEYSPACE_CORRUPT', `corrupt ${what}: empty`);
  if (version > current) {
    throw new KeyspaceEntryError(
      'KEYSPACE_VERSION',
      `${what} has format version ${version}, this node knows up to ${current}: upgrade this node`,
    );
  }
  if (version < 1) throw new KeyspaceEntryError('KEYSPACE_CORRUPT', `corrupt ${what}: format version ${version}`);
}

/** A LEB128 varint < 2^32 at pos; returns it and moves `cur.pos`, or -1 if malformed/truncated. */
export function readVarint(buf: Buffer, cur: { pos: number }, end: number): number {
  let v = 0;
  let mul = 1;
  let p = cur.pos;
  for (let i = 0; i < 5; i++) {
    if (p >= end) return -1;
    const b = buf[p++] as number;
    v += (b & 0x7f) * mul;
    if (b < 0x80) {
      if (i > 0 && b === 0) return -1; // not minimal: a canonical encoder never writes it
      cur.pos = p;
      return v > 0xffffffff ? -1 : v;
    }
    mul *= 128;
  }
  return -1;
}

function readList(buf: Buffer, what: string): Buffer[] {
  const end = buf.length;
  const cur = { pos: HEADER_BYTES };
  const n = readVarint(buf, cur, end);
  if (n < 0) corrupt(`bad ${what} count`);
  // Every item takes at least one byte: a count beyond that is garbage (and must not size an allocation).
  if (n > end - cur.pos) corrupt(`${what} count ${n} exceeds the entry's ${end} bytes`);
  const items: Buffer[] = new Array<Buffer>(n);
  for (let i = 0; i < n; i++) {
    const len = readVarint(buf, cur, end);
    if (len < 0) corrupt(`bad length of ${what} ${i}`);
    const start = cur.pos;
    if (len > end - start) corrupt(`${what} ${i} (${len} bytes) runs past the end`);
    items[i] = buf.subarray(start, start + len);
    cur.pos = start + len;
  }
  if (cur.pos !== end) corrupt(`${end - cur.pos} trailing bytes`);
  return items;
}

/**
 * Decodes an entry. Arguments and keys are views into `data` (no copy): the store copies what it keeps. Throws
 * KeyspaceEntryError on malformed bytes or a newer format version.
 */
export function decodeEntry(data: Uint8Array): KeyspaceEntry {
  const buf = asBuffer(data);
  checkVersion(buf[0], KEYSPACE_ENTRY_VERSION, 'keyspace entry');
  if (buf.length < HEADER_BYTES) corrupt(`${buf.length} bytes is shorter than the header`);
  const kind = buf[1];
  const stampMs = buf.readDoubleLE(2);
  if (!Number.isSafeInteger(stampMs) || stampMs < 0) corrupt(`bad stamp ${stampMs}`);
  switch (kind) {
    case KeyspaceEntryKind.Write: {
      const args = readList(buf, 'argument');
      if (args.length === 0) corrupt('write without a command name');
      return { kind, stampMs, args };
    }
    case KeyspaceEntryKind.Sweep:
      return { kind, stampMs, keys: readList(buf, 'key') };
    case KeyspaceEntryKind.Config: {
      if (buf.length !== HEADER_BYTES + 8) corrupt(`config entry of ${buf.length} bytes`);
      const keyspaceBytesMax = buf.readDoubleLE(HEADER_BYTES);
      if (!Number.isSafeInteger(keyspaceBytesMax) || keyspaceBytesMax < 0) corrupt(`bad keyspaceBytesMax`);
      return { kind, stampMs, keyspaceBytesMax };
    }
    default:
      return corrupt(`unknown kind ${kind}`);
  }
}
