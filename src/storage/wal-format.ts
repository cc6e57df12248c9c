/**
 * The WAL's on-disk format: segment header and record framing, payload encoders and decoders. Hand-rolled binary
 * (little-endian), chosen over msgpackr after measuring (see docs/storage.md, `bench/wal.ts --codec`).
 *
 * Segment file `wal-<16-digit seq>.log`:
 *
 *   header (24 bytes)
 *     0  u32  magic 0x4C57_4B4C ("LKWL" as bytes 4C 4B 57 4C)
 *     4  u16  format version (1)
 *     6  u16  flags (0)
 *     8  u64  segment sequence number (must match the file name)
 *    16  u32  salt: random, chosen when the WAL directory is initialised, the same in every segment
 *    20  u32  crc32c of bytes 0..20
 *   records, back to back, from offset 24
 *
 * Record:
 *     0  u32  length L = 1 + payload bytes (the bytes covered by the CRC); 1 <= L, 8 + L <= recordBytesMax
 *     4  u32  crc32c(type byte + payload), seeded with the salt
 *     8  u8   type
 *     9  ...  payload (L - 1 bytes)
 *
 * The salt makes a record's CRC depend on the WAL instance, so bytes inside an entry's data (client-controlled)
 * cannot pass for a valid record when recovery scans past a bad record (see wal.ts, "torn tail or corruption").
 *
 * Payloads (u64 = two u32 halves, low first, values < 2^53):
 *   ENTRIES (1)        u32 group, u64 first index, u32 count, then count x (u64 term, u8 entry type, u32 data
 *                      length, data); indices are first, first+1, ...
 *   HARDSTATE (2)      u32 group, u64 term, u32 vote, u64 commit
 *   SNAPSHOT_MARKER (3) u32 group, u64 index, u64 term, u32 voter count, voters (u32 each), u32 learner count,
 *                      learners (u32 each)
 *   GROUP_REMOVED (4)  u32 group
 *   BATCH_BEGIN (5)    u64 batch sequence number (increasing across the WAL's life), u64 batch bytes (from the
 *                      start of this record to the end of the batch's last record). Every write batch (one
 *                      sync) starts with one; a new segment's first batch starts right after the header and
 *                      includes the checkpoint records. Recovery uses it to tell a torn last batch from damage
 *                      to an earlier, durable one.
 */
import type { ConfState, Entry, EntryType, GroupId, HardState, SnapshotMeta } from '../raft/types.js';
import { crc32c } from './crc32c.js';

export const SEGMENT_MAGIC = 0x4c574b4c;
export const SEGMENT_VERSION = 1;
export const SEGMENT_HEADER_BYTES = 24;
/** Length + CRC words in front of the type byte. */
export const RECORD_FRAME_BYTES = 8;

export const enum RecordType {
  Entries = 1,
  HardState = 2,
  SnapshotMarker = 3,
  GroupRemoved = 4,
  BatchBegin = 5,
}

/** ENTRIES payload bytes before the first entry: group, first index, count. */
export const ENTRIES_HEAD_BYTES = 4 + 8 + 4;
/** Per-entry bytes besides the data: term, type, data length. */
export const ENTRY_OVERHEAD_BYTES = 8 + 1 + 4;
export const HARDSTATE_PAYLOAD_BYTES = 4 + 8 + 4 + 8;
export const GROUP_REMOVED_PAYLOAD_BYTES = 4;
export const BATCH_BEGIN_PAYLOAD_BYTES = 8 + 8;
/** Framed size of a BATCH_BEGIN record. */
export const BATCH_BEGIN_RECORD_BYTES = RECORD_FRAME_BYTES + 1 + BATCH_BEGIN_PAYLOAD_BYTES;

const TWO_32 = 4294967296;

export function putU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

export function putU64(b: Uint8Array, o: number, v: number): void {
  const lo = v >>> 0;
  putU32(b, o, lo);
  putU32(b, o + 4, (v - lo) / TWO_32);
}

export function getU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16)) + b[o + 3]! * 16777216;
}

/** Returns -1 when the value does not fit in 53 bits (never written by us: the caller treats it as malformed). */
export function getU64(b: Uint8Array, o: number): number {
  const hi = getU32(b, o + 4);
  if (hi > 0x1fffff) return -1;
  return hi * TWO_32 + getU32(b, o);
}

export function segmentFileName(seq: number): string {
  return `wal-${String(seq).padStart(16, '0')}.log`;
}

export const SEGMENT_FILE_RE = /^wal-(\d{16})\.log$/;

export function encodeSegmentHeader(seq: number, salt: number): Uint8Array {
  const b = new Uint8Array(SEGMENT_HEADER_BYTES);
  putU32(b, 0, SEGMENT_MAGIC);
  b[4] = SEGMENT_VERSION;
  b[5] = 0;
  b[6] = 0;
  b[7] = 0;
  putU64(b, 8, seq);
  putU32(b, 16, salt);
  putU32(b, 20, crc32c(b, 0, 0, 20));
  return b;
}

export type HeaderCheck = { ok: true; seq: number; salt: number } | { ok: false; reason: string };

export function decodeSegmentHeader(b: Uint8Array): HeaderCheck {
  if (b.length < SEGMENT_HEADER_BYTES) return { ok: false, reason: 'short header' };
  if (getU32(b, 0) !== SEGMENT_MAGIC) return { ok: false, reason: 'bad magic' };
  if (getU32(b, 20) !== crc32c(b, 0, 0, 20)) return { ok: false, reason: 'header crc mismatch' };
  const version = b[4]! | (b[5]! << 8);
  if (version !== SEGMENT_VERSION) return { ok: false, reason: `unsupported version ${version}` };
  const seq = getU64(b, 8);
  if (seq < 1) return { ok: false, reason: 'bad sequence number' };
  return { ok: true, seq, salt: getU32(b, 16) };
}

/** Bytes of the payload of a SNAPSHOT_MARKER record for `conf`. */
export function markerPayloadBytes(conf: ConfState): number {
  return 4 + 8 + 8 + 4 + 4 * conf.voters.length + 4 + 4 * conf.learners.length;
}

/** Seals a record whose type and payload are already at `b[o + 8, o + 8 + len)`: writes the length and CRC. */
export function sealRecord(b: Uint8Array, o: number, len: number, salt: number): void {
  putU32(b, o, len);
  putU32(b, o + 4, crc32c(b, salt, o + RECORD_FRAME_BYTES, o + RECORD_FRAME_BYTES + len));
}

/** Writes a HARDSTATE record at `o`; returns its framed size. */
export function writeHardStateRecord(b: Uint8Array, o: number, salt: number, group: GroupId, hs: HardState): number {
  const p = o + RECORD_FRAME_BYTES;
  b[p] = RecordType.HardState;
  putU32(b, p + 1, group);
  putU64(b, p + 5, hs.term);
  putU32(b, p + 13, hs.vote);
  putU64(b, p + 17, hs.commit);
  const len = 1 + HARDSTATE_PAYLOAD_BYTES;
  sealRecord(b, o, len, salt);
  return RECORD_FRAME_BYTES + len;
}

export function writeMarkerRecord(b: Uint8Array, o: number, salt: number, group: GroupId, meta: SnapshotMeta): number {
  const p = o + RECORD_FRAME_BYTES;
  b[p] = RecordType.SnapshotMarker;
  putU32(b, p + 1, group);
  putU64(b, p + 5, meta.index);
  putU64(b, p + 13, meta.term);
  let q = p + 21;
  putU32(b, q, meta.conf.voters.length);
  q += 4;
  for (const v of meta.conf.voters) {
    putU32(b, q, v);
    q += 4;
  }
  putU32(b, q, meta.conf.learners.length);
  q += 4;
  for (const v of meta.conf.learners) {
    putU32(b, q, v);
    q += 4;
  }
  const len = q - p;
  sealRecord(b, o, len, salt);
  return RECORD_FRAME_BYTES + len;
}

export function writeBatchBeginRecord(b: Uint8Array, o: number, salt: number, seq: number, bytes: number): number {
  const p = o + RECORD_FRAME_BYTES;
  b[p] = RecordType.BatchBegin;
  putU64(b, p + 1, seq);
  putU64(b, p + 9, bytes);
  const len = 1 + BATCH_BEGIN_PAYLOAD_BYTES;
  sealRecord(b, o, len, salt);
  return RECORD_FRAME_BYTES + len;
}

export function decodeBatchBegin(b: Uint8Array, p: number, end: number): { seq: number; bytes: number } | null {
  if (end - p !== BATCH_BEGIN_PAYLOAD_BYTES) return null;
  const seq = getU64(b, p);
  const bytes = getU64(b, p + 8);
  if (seq < 1 || bytes < BATCH_BEGIN_RECORD_BYTES) return null;
  return { seq, bytes };
}

export function writeGroupRemovedRecord(b: Uint8Array, o: number, salt: number, group: GroupId): number {
  const p = o + RECORD_FRAME_BYTES;
  b[p] = RecordType.GroupRemoved;
  putU32(b, p + 1, group);
  const len = 1 + GROUP_REMOVED_PAYLOAD_BYTES;
  sealRecord(b, o, len, salt);
  return RECORD_FRAME_BYTES + len;
}

/**
 * Writes an ENTRIES record holding `entries[from, to)` at `o`; returns its framed size. The caller has checked
 * that the indices are contiguous and sized the buffer.
 */
export function writeEntriesRecord(
  b: Uint8Array,
  o: number,
  salt: number,
  group: GroupId,
  entries: readonly Entry[],
  from: number,
  to: number,
): number {
  const p = o + RECORD_FRAME_BYTES;
  b[p] = RecordType.Entries;
  putU32(b, p + 1, group);
  putU64(b, p + 5, entries[from]!.index);
  putU32(b, p + 13, to - from);
  let q = p + 1 + ENTRIES_HEAD_BYTES;
  for (let i = from; i < to; i++) {
    const e = entries[i]!;
    putU64(b, q, e.term);
    b[q + 8] = e.type;
    const n = e.data.length;
    putU32(b, q + 9, n);
    q += ENTRY_OVERHEAD_BYTES;
    b.set(e.data, q);
    q += n;
  }
  const len = q - p;
  sealRecord(b, o, len, salt);
  return RECORD_FRAME_BYTES + len;
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding. Each decoder gets the payload (after the type byte) and returns null when it is malformed; a record
// whose CRC matched but whose payload is malformed is corruption, never a torn write.
// ---------------------------------------------------------------------------------------------------------------

export interface EntriesRecord {
  group: GroupId;
  first: number;
  entries: Entry[];
}

export function decodeEntries(b: Uint8Array, p: number, end: number): EntriesRecord | null {
  if (end - p < ENTRIES_HEAD_BYTES) return null;
  const group = getU32(b, p);
  const first = getU64(b, p + 4);
  const count = getU32(b, p + 12);
  if (first < 1 || count < 1) return null;
  let q = p + ENTRIES_HEAD_BYTES;
  const entries: Entry[] = new Array<Entry>(count);
  for (let i = 0; i < count; i++) {
    if (end - q < ENTRY_OVERHEAD_BYTES) return null;
    const term = getU64(b, q);
    const type = b[q + 8]! as EntryType;
    const n = getU32(b, q + 9);
    q += ENTRY_OVERHEAD_BYTES;
    if (term < 0 || end - q < n) return null;
    // Copied, so recovered entries do not pin whole segment buffers in memory.
    entries[i] = { term, index: first + i, type, data: b.slice(q, q + n) };
    q += n;
  }
  if (q !== end) return null;
  return { group, first, entries };
}

export function decodeHardState(b: Uint8Array, p: number, end: number): { group: GroupId; hs: HardState } | null {
  if (end - p !== HARDSTATE_PAYLOAD_BYTES) return null;
  const term = getU64(b, p + 4);
  const commit = getU64(b, p + 16);
  if (term < 0 || commit < 0) return null;
  return { group: getU32(b, p), hs: { term, vote: getU32(b, p + 12), commit } };
}

export function decodeMarker(b: Uint8Array, p: number, end: number): { group: GroupId; meta: SnapshotMeta } | null {
  if (end - p < 4 + 8 + 8 + 4) return null;
  const group = getU32(b, p);
  const index = getU64(b, p + 4);
  const term = getU64(b, p + 12);
  if (index < 0 || term < 0) return null;
  let q = p + 20;
  const nv = getU32(b, q);
  q += 4;
  if (end - q < 4 * nv + 4) return null;
  const voters: number[] = [];
  for (let i = 0; i < nv; i++, q += 4) voters.push(getU32(b, q));
  const nl = getU32(b, q);
  q += 4;
  if (end - q !== 4 * nl) return null;
  const learners: number[] = [];
  for (let i = 0; i < nl; i++, q += 4) learners.push(getU32(b, q));
  return { group, meta: { index, term, conf: { voters, learners } } };
}

export function decodeGroupRemoved(b: Uint8Array, p: number, end: number): GroupId | null {
  if (end - p !== GROUP_REMOVED_PAYLOAD_BYTES) return null;
  return getU32(b, p);
}

export function isKnownRecordType(t: number): boolean {
  return t >= RecordType.Entries && t <= RecordType.BatchBegin;
}

/**
 * Whether a valid BATCH_BEGIN record starts at `o`. It has a fixed size, so the check is cheap: the scan after a
 * bad record calls this at every byte offset.
 */
export function batchBeginAt(b: Uint8Array, o: number, end: number, salt: number): boolean {
  if (end - o < BATCH_BEGIN_RECORD_BYTES) return false;
  if (b[o + RECORD_FRAME_BYTES] !== RecordType.BatchBegin) return false;
  if (getU32(b, o) !== 1 + BATCH_BEGIN_PAYLOAD_BYTES) return false;
  return getU32(b, o + 4) === crc32c(b, salt, o + RECORD_FRAME_BYTES, o + BATCH_BEGIN_RECORD_BYTES);
}
