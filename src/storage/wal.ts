/**
 * The write-ahead log of one worker thread: every Raft group the thread hosts appends to it, and one write plus one
 * fdatasync per batch makes all of them durable (group commit). Format: see wal-format.ts; design: docs/storage.md.
 *
 * Owns: the segment files `wal-<seq>.log` in one directory, the in-memory buffer of records not yet written, and
 * per group the little state needed to validate appends and decide which segments may be deleted.
 *
 * Invariants
 * - Records reach the file in the order append()/markSnapshot()/removeGroup() were called; one write is in flight
 *   at a time; a sync() promise resolves only after every record appended before the call is written (and, unless
 *   fsync is 'never', fdatasynced; for a new segment, the directory too).
 * - Each batch (one write) starts with a BATCH_BEGIN record that states its length. In 'batch' and 'always' modes a
 *   batch is written only after the previous one is durable, so only the last batch of the last segment can be
 *   torn by a crash; recovery cuts a torn last batch and refuses (WalCorruptionError) damage anywhere else.
 * - Every new segment begins with a checkpoint: the hard state and latest snapshot marker of every group, as of
 *   the end of the previous segment. So deleting a prefix of segments loses no hard state or marker, and a segment
 *   may be deleted once every group's entries in it are at or below that group's durable snapshot marker.
 * - For each group, appended entries are contiguous: the first index of an append is at most last + 1 and above
 *   the snapshot marker. An append whose first index is <= last overwrites the log from there (a follower's
 *   conflict): recovery keeps the last written version of each index and drops everything above it.
 * - After a failed write or fdatasync the WAL is failed: every later call rejects with WAL_FAILED, because after
 *   a failed fsync the kernel's page cache no longer tells what is on disk. The node must restart and recover.
 *
 * Lifecycle:  open() --recover--> ready --append/markSnapshot/removeGroup/sync/compact--> ready
 *                                  ready --I/O error--> failed       ready|failed --close()--> closed
 *
 * Batch lifecycle: open (collecting records) --seal--> sealed (queued, target segment fixed) --write--> done
 */
import { promises as fsp, writevSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { randomInt } from 'node:crypto';
import type { WalLimits } from '../config/limits.js';
import type { Entry, GroupId, HardState, SnapshotMeta } from '../raft/types.js';
import {
  BATCH_BEGIN_RECORD_BYTES,
  ENTRIES_HEAD_BYTES,
  ENTRY_OVERHEAD_BYTES,
  GROUP_REMOVED_PAYLOAD_BYTES,
  HARDSTATE_PAYLOAD_BYTES,
  RECORD_FRAME_BYTES,
  RecordType,
  SEGMENT_FILE_RE,
  SEGMENT_HEADER_BYTES,
  batchBeginAt,
  decodeBatchBegin,
  decodeEntries,
  decodeGroupRemoved,
  decodeHardState,
  decodeMarker,
  decodeSegmentHeader,
  encodeSegmentHeader,
  getU32,
  markerPayloadBytes,
  segmentFileName,
  writeBatchBeginRecord,
  writeEntriesRecord,
  writeGroupRemovedRecord,
  writeHardStateRecord,
  writeMarkerRecord,
} from './wal-format.js';
import { crc32c } from './crc32c.js';

export type FsyncMode = 'always' | 'batch' | 'never';

/** The subset of a pino logger the storage layer uses. */
export interface StorageLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface WalOptions {
  limits: WalLimits;
  /**
   * 'batch': group commit. sync() starts the write at the end of the current event-loop turn (setImmediate), so
   *   the Ready batches of every group handled in that turn share one write and one fdatasync; calls made while a
   *   write is in flight are covered together by the next one.
   * 'always': no coalescing across sync() calls: each call that has new records gets its own write and
   *   fdatasync, in call order, started at once. The slow baseline that shows what group commit buys.
   * 'never': like 'batch' but without fdatasync (nor directory fsync): the promise resolves when the bytes are in
   *   the kernel's page cache. Survives a process crash, not a power loss or kernel crash.
   */
  fsync: FsyncMode;
  logger?: StorageLogger;
}

export interface RecoveredGroup {
  hardState: HardState;
  snapshotMeta: SnapshotMeta | null;
  /** Entries after snapshotMeta.index (or from index 1 when there is none), contiguous, in order. */
  entries: Entry[];
}

export interface WalStats {
  /** fdatasync calls on segment files. */
  syncs: number;
  /** Write batches (writev calls that completed, counting retries of short writes once). */
  writes: number;
  bytesWritten: number;
  recordsWritten: number;
  /** Record bytes buffered by append/markSnapshot/removeGroup since open (cumulative). */
  bytesAppended: number;
  /** Of bytesAppended, the bytes written and (unless fsync is 'never') fdatasynced. Lags bytesAppended. */
  bytesDurable: number;
  /** Live segment files. */
  segments: number;
  segmentsDeleted: number;
  /** Bytes cut off a torn tail during recovery. */
  tornBytesCut: number;
  /**
   * Longest blocking batch write into an open segment, in ms (the writev runs on the caller's thread: if the kernel
   * throttles dirty pages, the thread waits with it), and how many took 50 ms or more.
   */
  writeMaxMs: number;
  slowWrites: number;
}

export type WalErrorCode = 'WAL_INVALID' | 'WAL_RECORD_TOO_BIG' | 'WAL_FAILED' | 'WAL_CLOSED';

/** An operating or usage error of the WAL (not corruption). */
export class WalError extends Error {
  readonly code: WalErrorCode;
  constructor(code: WalErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'WalError';
    this.code = code;
  }
}

/** Damage that recovery must not paper over: the node has to stop with this error. */
export class WalCorruptionError extends Error {
  readonly code = 'WAL_CORRUPT' as const;
  readonly file: string;
  readonly offset: number;
  constructor(file: string, offset: number, reason: string) {
    super(`WAL corrupt: ${file} at offset ${offset}: ${reason}`);
    this.name = 'WalCorruptionError';
    this.file = file;
    this.offset = offset;
  }
}

const CHUNK_BYTES = 256 * 1024;
const CHUNK_POOL_MAX = 16;
const U32_MAX = 0xffffffff;
/** A blocking batch write this long counts in stats.slowWrites. */
const SLOW_WRITE_MS = 50;

interface Chunk {
  buf: Uint8Array;
  /** Bytes used. */
  pos: number;
  /** Sealed batches that still reference bytes of this chunk. */
  refs: number;
}

interface Piece {
  chunk: Chunk;
  start: number;
  end: number;
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: Error) => void;
}

const enum BatchState {
  Open = 0,
  Sealed = 1,
  Done = 2,
}

interface Batch {
  state: BatchState;
  pieces: Piece[];
  bytes: number;
  records: number;
  /** Highest entry index per group in this batch (for segment compaction tracking). */
  maxByGroup: Map<GroupId, number>;
  /** Target segment, fixed when sealed. */
  seq: number;
  /** When the batch opens a new segment: its header and checkpoint records. */
  rotate: { header: Uint8Array; checkpoint: Uint8Array; records: number } | null;
  waiter: Deferred | null;
}

interface GroupTrack {
  group: GroupId;
  /** Last appended entry index, or the marker index if higher (0 for none). */
  lastIndex: number;
  markerIndex: number;
  hard: HardState | null;
  marker: SnapshotMeta | null;
  /** hard and marker as of the last sealed batch (what the next segment's checkpoint must carry). */
  sealedHard: HardState | null;
  sealedMarker: SnapshotMeta | null;
  dirty: boolean;
  removed: boolean;
}

interface SegmentInfo {
  seq: number;
  name: string;
  /** Highest live entry index per group among this segment's records. */
  maxByGroup: Map<GroupId, number>;
}

interface RecoveringGroup {
  hardState: HardState | null;
  marker: SnapshotMeta | null;
  entries: Entry[];
  /**
   * First seen in the oldest kept segment after older ones were deleted: its log may start anywhere above its
   * marker, because the entries before it were deleted once a later marker covered them (that marker comes
   * later in the log; the check at the end of recovery insists it did).
   */
  loose: boolean;
}

function newBatch(): Batch {
  return {
    state: BatchState.Open,
    pieces: [],
    bytes: 0,
    records: 0,
    maxByGroup: new Map(),
    seq: 0,
    rotate: null,
    waiter: null,
  };
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function isUint(v: unknown, max: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max;
}

const SILENT: StorageLogger = { info() {}, warn() {}, error() {} };

export async function fsyncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/** Writes `bufs` at `position`, retrying short writes; returns the byte count. */
export async function writeAll(fh: FileHandle, bufs: Uint8Array[], position: number): Promise<number> {
  let total = 0;
  for (const b of bufs) total += b.length;
  let done = 0;
  let list = bufs;
  while (done < total) {
    const { bytesWritten } = await fh.writev(list, position + done);
    done = afterWrite(bytesWritten, done);
    if (done < total) list = dropWritten(list, bytesWritten);
  }
  return total;
}

/**
 * writeAll with a blocking writev: used for the steady-state batch writes, which land in the page cache in
 * microseconds. Going through the libuv pool instead costs two thread wake-ups per Raft round, and measured 12-13%
 * more cluster CPU per replicated SET (docs/storage.md). fdatasync stays asynchronous: it is the slow part.
 */
export function writeAllSync(fd: number, bufs: Uint8Array[], position: number): number {
  let total = 0;
  for (const b of bufs) total += b.length;
  let done = 0;
  let list = bufs;
  while (done < total) {
    const n = writevSync(fd, list, position + done);
    done = afterWrite(n, done);
    if (done < total) list = dropWritten(list, n);
  }
  return total;
}

function afterWrite(n: number, done: number): number {
  if (n <= 0) throw new Error(`writev wrote ${n} bytes`);
  return done + n;
}

/** Short write: the buffers still to write after the first `written` bytes of `list`. */
function dropWritten(list: Uint8Array[], written: number): Uint8Array[] {
  let skip = written;
  const rest: Uint8Array[] = [];
  for (const b of list) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    rest.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return rest;
}

export class Wal {
  readonly dir: string;
  readonly stats: WalStats = {
    syncs: 0,
    writes: 0,
    bytesWritten: 0,
    recordsWritten: 0,
    bytesAppended: 0,
    bytesDurable: 0,
    segments: 0,
    segmentsDeleted: 0,
    tornBytesCut: 0,
    writeMaxMs: 0,
    slowWrites: 0,
  };

  private readonly limits: WalLimits;
  private readonly mode: FsyncMode;
  private readonly log: StorageLogger;
  private salt = 0;

  private recoveredGroups: Map<GroupId, RecoveredGroup> = new Map();
  private readonly tracks = new Map<GroupId, GroupTrack>();
  private dirtyTracks: GroupTrack[] = [];
  /** Live segments, oldest first; the last one is the projected target of the next sealed batch. */
  private segments: SegmentInfo[] = [];

  // Buffering.
  private cur: Chunk = { buf: new Uint8Array(CHUNK_BYTES), pos: 0, refs: 0 };
  private pieceStart = 0;
  private readonly pool: Chunk[] = [];
  private open: Batch = newBatch();
  private readonly queue: Batch[] = [];
  private lastSealed: Batch | null = null;

  // Projection of the file state once every sealed batch is written.
  private projSeq = 0;
  private projBytes = 0;

  // The file being appended to.
  private fh: FileHandle | null = null;
  private fileSeq = 0;
  private fileBytes = 0;
  private batchSeq = 0;
  private readonly batchBeginBuf = new Uint8Array(BATCH_BEGIN_RECORD_BYTES);

  private writing = false;
  private kickScheduled = false;
  private failure: WalError | null = null;
  private closed = false;
  private compacting: Promise<number> | null = null;

  private constructor(dir: string, opts: WalOptions) {
    this.dir = dir;
    this.limits = opts.limits;
    this.mode = opts.fsync;
    this.log = opts.logger ?? SILENT;
    if (!isUint(opts.limits.recordBytesMax, 2 ** 31) || opts.limits.recordBytesMax < 256) {
      throw new WalError('WAL_INVALID', `recordBytesMax must be an integer in [256, 2^31], got ${opts.limits.recordBytesMax}`);
    }
    if (!isUint(opts.limits.segmentBytes, 2 ** 40) || opts.limits.segmentBytes < 1024) {
      throw new WalError('WAL_INVALID', `segmentBytes must be an integer >= 1024, got ${opts.limits.segmentBytes}`);
    }
    if (opts.fsync !== 'always' && opts.fsync !== 'batch' && opts.fsync !== 'never') {
      throw new WalError('WAL_INVALID', `fsync must be 'always', 'batch' or 'never', got ${String(opts.fsync)}`);
    }
  }

  /** Opens (creating if needed) the WAL in `dir` and recovers its state; see recovered(). */
  static async open(dir: string, opts: WalOptions): Promise<Wal> {
    const wal = new Wal(dir, opts);
    const created = await fsp.mkdir(dir, { recursive: true });
    if (created !== undefined && opts.fsync !== 'never') await fsyncDir(path.dirname(path.resolve(dir)));
    await wal.recover();
    return wal;
  }

  /**
   * The state rebuilt by recovery at open(), per group: latest hard state (zeros if none), latest snapshot marker
   * and the entries after it. Not updated by later appends. releaseRecovered() frees it once the host has booted.
   */
  recovered(): Map<GroupId, RecoveredGroup> {
    return this.recoveredGroups;
  }

  releaseRecovered(): void {
    this.recoveredGroups = new Map();
  }

  /**
   * Buffers `entries` (contiguous indices) and then `hardState` (if not null) of `group`. No I/O: call sync().
   * The first index must be above the group's snapshot marker and at most its last index + 1; when it is <= the
   * last index, the stored log is overwritten from there on. Throws WalError (WAL_INVALID, WAL_RECORD_TOO_BIG)
   * without buffering anything if the input is invalid.
   */
  append(group: GroupId, entries: readonly Entry[], hardState: HardState | null): void {
    this.checkUsable();
    if (!isUint(group, U32_MAX)) throw new WalError('WAL_INVALID', `group must be a u32, got ${group}`);
    const t = this.track(group);
    const n = entries.length;
    const frameMax = this.limits.recordBytesMax;
    if (n > 0) {
      const first = entries[0]!.index;
      if (!Number.isSafeInteger(first) || first <= t.markerIndex || first > t.lastIndex + 1) {
        throw new WalError(
          'WAL_INVALID',
          `group ${group}: entries start at ${first}; expected an index in (${t.markerIndex}, ${t.lastIndex + 1}]`,
        );
      }
      for (let i = 0; i < n; i++) {
        const e = entries[i]!;
        if (e.index !== first + i) throw new WalError('WAL_INVALID', `group ${group}: entry indices not contiguous at ${first + i}`);
        if (!Number.isSafeInteger(e.term) || e.term < 0) throw new WalError('WAL_INVALID', `group ${group}: bad term ${e.term}`);
        if (!isUint(e.type, 255)) throw new WalError('WAL_INVALID', `group ${group}: bad entry type ${String(e.type)}`);
        if (!(e.data instanceof Uint8Array)) throw new WalError('WAL_INVALID', `group ${group}: entry data must be a Uint8Array`);
        if (RECORD_FRAME_BYTES + 1 + ENTRIES_HEAD_BYTES + ENTRY_OVERHEAD_BYTES + e.data.length > frameMax) {
          throw new WalError('WAL_RECORD_TOO_BIG', `group ${group}: entry ${e.index} of ${e.data.length} bytes exceeds recordBytesMax ${frameMax}`);
        }
      }
    }
    if (hardState !== null) this.checkHardState(group, hardState);

    if (n > 0) {
      const first = entries[0]!.index;
      const last = first + n - 1;
      if (first <= t.lastIndex) this.clampGroup(group, first - 1);
      let i = 0;
      while (i < n) {
        let size = RECORD_FRAME_BYTES + 1 + ENTRIES_HEAD_BYTES;
        let j = i;
        while (j < n) {
          const es = ENTRY_OVERHEAD_BYTES + entries[j]!.data.length;
          if (j > i && size + es > frameMax) break;
          size += es;
          j++;
        }
        const o = this.reserve(size);
        writeEntriesRecord(this.cur.buf, o, this.salt, group, entries, i, j);
        this.commitRecord(size);
        i = j;
      }
      t.lastIndex = last;
      const m = this.open.maxByGroup.get(group);
      if (m === undefined || m < last) this.open.maxByGroup.set(group, last);
    }
    if (hardState !== null) {
      const size = RECORD_FRAME_BYTES + 1 + HARDSTATE_PAYLOAD_BYTES;
      const o = this.reserve(size);
      writeHardStateRecord(this.cur.buf, o, this.salt, group, hardState);
      this.commitRecord(size);
      t.hard = { term: hardState.term, vote: hardState.vote, commit: hardState.commit };
    }
    if (n > 0 || hardState !== null) this.markDirty(t);
  }

  /**
   * Records that a snapshot of `group` up to meta.index is durable (call after SnapshotStore.save resolved, and
   * before appending the entries that follow it). On recovery, entries <= meta.index are dropped; if the log does
   * not hold meta.index with meta.term (a snapshot installed from the leader over a conflicting or shorter log),
   * the whole log is dropped, as in Raft's InstallSnapshot. A marker at the current marker index is a no-op.
   */
  markSnapshot(group: GroupId, meta: SnapshotMeta): void {
    this.checkUsable();
    if (!isUint(group, U32_MAX)) throw new WalError('WAL_INVALID', `group must be a u32, got ${group}`);
    if (!Number.isSafeInteger(meta.index) || meta.index < 1 || !Number.isSafeInteger(meta.term) || meta.term < 0) {
      throw new WalError('WAL_INVALID', `group ${group}: bad snapshot meta index ${meta.index} term ${meta.term}`);
    }
    for (const id of [...meta.conf.voters, ...meta.conf.learners]) {
      if (!isUint(id, U32_MAX)) throw new WalError('WAL_INVALID', `group ${group}: bad node id ${id} in snapshot conf`);
    }
    const t = this.track(group);
    if (meta.index < t.markerIndex) {
      throw new WalError('WAL_INVALID', `group ${group}: snapshot marker ${meta.index} is behind ${t.markerIndex}`);
    }
    if (meta.index === t.markerIndex) return;
    const size = RECORD_FRAME_BYTES + 1 + markerPayloadBytes(meta.conf);
    if (size > this.limits.recordBytesMax) throw new WalError('WAL_RECORD_TOO_BIG', `group ${group}: snapshot marker too big`);
    const o = this.reserve(size);
    writeMarkerRecord(this.cur.buf, o, this.salt, group, meta);
    this.commitRecord(size);
    t.marker = { index: meta.index, term: meta.term, conf: { voters: [...meta.conf.voters], learners: [...meta.conf.learners] } };
    t.markerIndex = meta.index;
    if (t.lastIndex < meta.index) t.lastIndex = meta.index;
    this.markDirty(t);
  }

  /**
   * Forgets `group` (its shard moved away): recovery drops everything written for it before this record, and its
   * records no longer hold back compaction once this is durable. Appending to it later starts a fresh group.
   */
  removeGroup(group: GroupId): void {
    this.checkUsable();
    if (!isUint(group, U32_MAX)) throw new WalError('WAL_INVALID', `group must be a u32, got ${group}`);
    const t = this.tracks.get(group);
    if (t === undefined || t.removed) return;
    const size = RECORD_FRAME_BYTES + 1 + GROUP_REMOVED_PAYLOAD_BYTES;
    const o = this.reserve(size);
    writeGroupRemovedRecord(this.cur.buf, o, this.salt, group);
    this.commitRecord(size);
    t.removed = true;
    t.hard = null;
    t.marker = null;
    t.lastIndex = 0;
    t.markerIndex = 0;
    for (const s of this.segments) s.maxByGroup.delete(group);
    this.open.maxByGroup.delete(group);
    this.markDirty(t);
  }

  /**
   * Resolves when every record buffered before this call is written and (unless fsync is 'never') fdatasynced.
   * Rejects with WAL_FAILED if the write or fdatasync fails (and the WAL stays failed).
   */
  sync(): Promise<void> {
    if (this.failure !== null) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new WalError('WAL_CLOSED', 'WAL is closed'));
    if (this.open.records > 0) {
      if (this.mode === 'always') {
        const b = this.seal();
        const p = this.waitFor(b);
        this.kick();
        return p;
      }
      const p = this.waitFor(this.open);
      if (!this.writing && !this.kickScheduled) {
        this.kickScheduled = true;
        setImmediate(() => {
          this.kickScheduled = false;
          this.kick();
        });
      }
      return p;
    }
    if (this.lastSealed !== null && this.lastSealed.state !== BatchState.Done) return this.waitFor(this.lastSealed);
    return Promise.resolve();
  }

  /** Bytes of the segments before the one being written, counted at segmentBytes each (what compaction could free). */
  closedSegmentBytes(): number {
    return Math.max(0, this.segments.length - 1) * this.limits.segmentBytes;
  }

  /**
   * The groups that keep the oldest segment from being compacted: those with a live entry there above their snapshot
   * marker, with the highest such index (a snapshot at or past it frees the segment of them). Empty while only the
   * segment being written exists. A group that goes quiet below its snapshot thresholds would otherwise hold the
   * oldest segment, and with it every later one, forever.
   */
  pinningGroups(): { group: GroupId; index: number }[] {
    const oldest = this.segments[0];
    if (oldest === undefined || this.segments.length < 2 || oldest.seq >= this.fileSeq) return [];
    const out: { group: GroupId; index: number }[] = [];
    for (const [group, index] of oldest.maxByGroup) {
      const t = this.tracks.get(group);
      if (t !== undefined && !t.removed && index > t.markerIndex) out.push({ group, index });
    }
    return out;
  }

  /**
   * Deletes the oldest segments whose entries are all covered by their group's durable snapshot marker (every
   * group with entries in them), stopping at the first one that is not; never the segment being written.
   * Returns the number of segments deleted.
   */
  compact(): Promise<number> {
    const prev = this.compacting ?? Promise.resolve(0);
    const run = prev.then(
      () => this.compactNow(),
      () => this.compactNow(),
    );
    this.compacting = run;
    return run;
  }

  /** Makes everything buffered durable, then closes the segment file. Later calls reject with WAL_CLOSED. */
  async close(): Promise<void> {
    if (this.closed) return;
    let err: unknown = null;
    if (this.failure === null) {
      try {
        await this.sync();
        if (this.compacting !== null) await this.compacting.catch(() => 0);
      } catch (e) {
        err = e;
      }
    }
    this.closed = true;
    const fh = this.fh;
    this.fh = null;
    if (fh !== null) await fh.close();
    if (err !== null) throw err;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Buffering and batches.
  // -------------------------------------------------------------------------------------------------------------

  private checkUsable(): void {
    if (this.failure !== null) throw this.failure;
    if (this.closed) throw new WalError('WAL_CLOSED', 'WAL is closed');
  }

  private checkHardState(group: GroupId, hs: HardState): void {
    if (!Number.isSafeInteger(hs.term) || hs.term < 0 || !isUint(hs.vote, U32_MAX) || !Number.isSafeInteger(hs.commit) || hs.commit < 0) {
      throw new WalError('WAL_INVALID', `group ${group}: bad hard state ${JSON.stringify(hs)}`);
    }
  }

  private track(group: GroupId): GroupTrack {
    let t = this.tracks.get(group);
    if (t === undefined) {
      t = { group, lastIndex: 0, markerIndex: 0, hard: null, marker: null, sealedHard: null, sealedMarker: null, dirty: false, removed: false };
      this.tracks.set(group, t);
    } else if (t.removed) {
      t.removed = false; // A fresh group under the same id; hard/marker/indices were reset by removeGroup.
    }
    return t;
  }

  private markDirty(t: GroupTrack): void {
    if (!t.dirty) {
      t.dirty = true;
      this.dirtyTracks.push(t);
    }
  }

  /** Entries of `group` above `index` are dead (overwritten): they no longer hold any segment back. */
  private clampGroup(group: GroupId, index: number): void {
    for (const s of this.segments) {
      const m = s.maxByGroup.get(group);
      if (m !== undefined && m > index) s.maxByGroup.set(group, index);
    }
    const m = this.open.maxByGroup.get(group);
    if (m !== undefined && m > index) this.open.maxByGroup.set(group, index);
  }

  /** Room for `n` contiguous bytes in the current chunk; returns the offset. */
  private reserve(n: number): number {
    const c = this.cur;
    if (c.buf.length - c.pos >= n) return c.pos;
    this.closePiece();
    if (c.refs === 0) this.release(c);
    let next: Chunk | undefined;
    if (n <= CHUNK_BYTES) next = this.pool.pop();
    this.cur = next ?? { buf: new Uint8Array(Math.max(CHUNK_BYTES, n)), pos: 0, refs: 0 };
    this.pieceStart = 0;
    return 0;
  }

  private commitRecord(size: number): void {
    this.cur.pos += size;
    this.open.bytes += size;
    this.stats.bytesAppended += size;
    this.open.records++;
  }

  private closePiece(): void {
    const c = this.cur;
    if (c.pos > this.pieceStart) {
      this.open.pieces.push({ chunk: c, start: this.pieceStart, end: c.pos });
      c.refs++;
      this.pieceStart = c.pos;
    }
  }

  private release(c: Chunk): void {
    c.pos = 0;
    if (c.buf.length === CHUNK_BYTES && this.pool.length < CHUNK_POOL_MAX) this.pool.push(c);
  }

  private releasePieces(b: Batch): void {
    for (const p of b.pieces) {
      const c = p.chunk;
      c.refs--;
      if (c.refs > 0) continue;
      if (c === this.cur) {
        if (this.pieceStart === c.pos) {
          c.pos = 0;
          this.pieceStart = 0;
        }
      } else {
        this.release(c);
      }
    }
    b.pieces = [];
  }

  private waitFor(b: Batch): Promise<void> {
    if (b.state === BatchState.Done) return Promise.resolve();
    if (b.waiter === null) b.waiter = deferred();
    return b.waiter.promise;
  }

  /** Closes the open batch: fixes its target segment (rotating if it would overflow) and queues it. */
  private seal(): Batch {
    this.closePiece();
    const b = this.open;
    this.open = newBatch();
    b.state = BatchState.Sealed;
    if (this.projBytes > SEGMENT_HEADER_BYTES && this.projBytes + BATCH_BEGIN_RECORD_BYTES + b.bytes > this.limits.segmentBytes) {
      const seq = this.projSeq + 1;
      const checkpoint = this.encodeCheckpoint();
      b.rotate = { header: encodeSegmentHeader(seq, this.salt), checkpoint: checkpoint.bytes, records: checkpoint.records };
      this.projSeq = seq;
      this.projBytes = SEGMENT_HEADER_BYTES + checkpoint.bytes.length;
      this.segments.push({ seq, name: segmentFileName(seq), maxByGroup: new Map() });
    }
    b.seq = this.projSeq;
    this.projBytes += BATCH_BEGIN_RECORD_BYTES + b.bytes;
    const seg = this.segments[this.segments.length - 1]!;
    for (const [g, m] of b.maxByGroup) {
      const cur = seg.maxByGroup.get(g);
      if (cur === undefined || cur < m) seg.maxByGroup.set(g, m);
    }
    for (const t of this.dirtyTracks) {
      t.sealedHard = t.hard;
      t.sealedMarker = t.marker;
      t.dirty = false;
      if (t.removed) this.tracks.delete(t.group);
    }
    this.dirtyTracks = [];
    this.queue.push(b);
    this.lastSealed = b;
    return b;
  }

  /** Hard state and marker of every group as of the last sealed batch. */
  private encodeCheckpoint(): { bytes: Uint8Array; records: number } {
    let size = 0;
    for (const t of this.tracks.values()) {
      if (t.sealedHard !== null) size += RECORD_FRAME_BYTES + 1 + HARDSTATE_PAYLOAD_BYTES;
      if (t.sealedMarker !== null) size += RECORD_FRAME_BYTES + 1 + markerPayloadBytes(t.sealedMarker.conf);
    }
    const b = new Uint8Array(size);
    let o = 0;
    let records = 0;
    for (const [g, t] of this.tracks) {
      if (t.sealedMarker !== null) {
        o += writeMarkerRecord(b, o, this.salt, g, t.sealedMarker);
        records++;
      }
      if (t.sealedHard !== null) {
        o += writeHardStateRecord(b, o, this.salt, g, t.sealedHard);
        records++;
      }
    }
    return { bytes: b, records };
  }

  private kick(): void {
    if (!this.writing && this.failure === null) void this.pump();
  }

  private async pump(): Promise<void> {
    this.writing = true;
    try {
      for (;;) {
        let b = this.queue.shift();
        if (b === undefined) {
          if (this.mode === 'always' || this.open.records === 0 || this.open.waiter === null) break;
          b = this.seal();
          this.queue.shift();
        }
        try {
          await this.writeBatch(b);
        } catch (e) {
          this.fail(e, b);
          return;
        }
        b.state = BatchState.Done;
        this.stats.bytesDurable += b.bytes;
        this.releasePieces(b);
        b.waiter?.resolve();
      }
    } finally {
      this.writing = false;
    }
  }

  private async writeBatch(b: Batch): Promise<void> {
    const sync = this.mode !== 'never';
    const bodyBytes = BATCH_BEGIN_RECORD_BYTES + (b.rotate?.checkpoint.length ?? 0) + b.bytes;
    this.batchSeq++;
    writeBatchBeginRecord(this.batchBeginBuf, 0, this.salt, this.batchSeq, bodyBytes);
    const bufs: Uint8Array[] = [];
    if (b.rotate !== null) bufs.push(b.rotate.header);
    bufs.push(this.batchBeginBuf);
    if (b.rotate !== null && b.rotate.checkpoint.length > 0) bufs.push(b.rotate.checkpoint);
    for (const p of b.pieces) bufs.push(p.chunk.buf.subarray(p.start, p.end));
    let written: number;
    if (b.rotate !== null) {
      const name = segmentFileName(b.seq);
      const fh = await fsp.open(path.join(this.dir, name), 'wx');
      try {
        written = await writeAll(fh, bufs, 0);
        if (sync) {
          await fh.datasync();
          this.stats.syncs++;
          await fsyncDir(this.dir);
        }
      } catch (e) {
        await fh.close().catch(() => undefined);
        throw e;
      }
      const old = this.fh;
      this.fh = fh;
      this.fileSeq = b.seq;
      this.fileBytes = written;
      this.stats.segments++;
      this.stats.recordsWritten += b.rotate.records;
      if (old !== null) await old.close();
    } else {
      const fh = this.fh;
      if (fh === null) throw new Error('no open segment');
      const t0 = performance.now();
      written = writeAllSync(fh.fd, bufs, this.fileBytes);
      const ms = performance.now() - t0;
      if (ms > this.stats.writeMaxMs) this.stats.writeMaxMs = ms;
      if (ms >= SLOW_WRITE_MS) this.stats.slowWrites++;
      this.fileBytes += written;
      if (sync) {
        await fh.datasync();
        this.stats.syncs++;
      }
    }
    this.stats.writes++;
    this.stats.bytesWritten += written;
    this.stats.recordsWritten += b.records + 1;
  }

  private fail(e: unknown, b: Batch): void {
    const err = new WalError('WAL_FAILED', `WAL write failed: ${(e as Error).message ?? String(e)}`, { cause: e });
    this.failure = err;
    this.log.error({ err: e, dir: this.dir }, 'WAL write failed; the WAL is now unusable until restart');
    const all = [b, ...this.queue.splice(0), this.open];
    for (const x of all) {
      x.state = BatchState.Done;
      x.waiter?.reject(err);
    }
  }

  private async compactNow(): Promise<number> {
    this.checkUsable();
    // The markers buffered now are durable once this sync resolves.
    const markers = new Map<GroupId, number>();
    for (const [g, t] of this.tracks) if (!t.removed) markers.set(g, t.markerIndex);
    await this.sync();
    let n = 0;
    for (let i = 0; i + 1 < this.segments.length; i++) {
      const s = this.segments[i]!;
      if (s.seq >= this.fileSeq) break;
      let covered = true;
      for (const [g, m] of s.maxByGroup) {
        if (m > (markers.get(g) ?? 0)) {
          covered = false;
          break;
        }
      }
      if (!covered) break;
      n++;
    }
    let deleted = 0;
    try {
      for (let i = 0; i < n; i++) {
        await fsp.unlink(path.join(this.dir, this.segments[i]!.name));
        deleted++;
      }
    } finally {
      if (deleted > 0) {
        this.segments.splice(0, deleted);
        this.stats.segments -= deleted;
        this.stats.segmentsDeleted += deleted;
        if (this.mode !== 'never') await fsyncDir(this.dir);
        this.log.info({ dir: this.dir, deleted }, 'WAL segments deleted');
      }
    }
    return deleted;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Recovery.
  // -------------------------------------------------------------------------------------------------------------

  private async recover(): Promise<void> {
    const names = (await fsp.readdir(this.dir))
      .map((name) => ({ name, m: SEGMENT_FILE_RE.exec(name) }))
      .filter((x): x is { name: string; m: RegExpExecArray } => x.m !== null)
      .map((x) => ({ name: x.name, seq: Number(x.m[1]) }))
      .sort((a, b) => a.seq - b.seq);
    const groups = new Map<GroupId, RecoveringGroup>();
    let saltSeen: number | null = null;
    let lastValidBytes = 0;
    let firstSeqIfEmpty = 1;

    for (let k = 0; k < names.length; k++) {
      const { name, seq } = names[k]!;
      const isLast = k === names.length - 1;
      const file = path.join(this.dir, name);
      const data = new Uint8Array(await fsp.readFile(file));
      const h = decodeSegmentHeader(data);
      if (!h.ok) {
        if (isLast && data.length <= SEGMENT_HEADER_BYTES) {
          // Crash while creating the segment: it never held a record.
          this.log.warn({ file, bytes: data.length, reason: h.reason }, 'WAL: removing a segment torn while being created');
          await fsp.unlink(file);
          if (this.mode !== 'never') await fsyncDir(this.dir);
          if (this.segments.length === 0) firstSeqIfEmpty = seq;
          break;
        }
        throw new WalCorruptionError(file, 0, h.reason);
      }
      if (h.seq !== seq) throw new WalCorruptionError(file, 8, `header sequence ${h.seq} does not match the file name`);
      const prev = this.segments[this.segments.length - 1];
      if (prev !== undefined && seq !== prev.seq + 1) {
        throw new WalCorruptionError(file, 0, `segment ${prev.seq + 1} is missing`);
      }
      if (saltSeen !== null && h.salt !== saltSeen) throw new WalCorruptionError(file, 16, 'salt differs from the previous segment');
      saltSeen = h.salt;
      const info: SegmentInfo = { seq, name, maxByGroup: new Map() };
      this.segments.push(info);
      const valid = this.recoverSegment(file, data, isLast, h.salt, info, groups, k === 0 && seq > 1);
      if (valid < data.length) {
        const cut = data.length - valid;
        this.log.warn({ file, offset: valid, bytesCut: cut }, 'WAL: cut off a torn tail');
        this.stats.tornBytesCut += cut;
        const fh = await fsp.open(file, 'r+');
        try {
          await fh.truncate(valid);
          if (this.mode !== 'never') await fh.datasync();
        } finally {
          await fh.close();
        }
      }
      lastValidBytes = valid;
    }

    if (this.segments.length === 0) {
      this.salt = randomInt(0, 2 ** 32 - 1);
      const seq = firstSeqIfEmpty;
      const name = segmentFileName(seq);
      const fh = await fsp.open(path.join(this.dir, name), 'wx');
      await writeAll(fh, [encodeSegmentHeader(seq, this.salt)], 0);
      if (this.mode !== 'never') {
        await fh.datasync();
        await fsyncDir(this.dir);
      }
      this.fh = fh;
      this.fileSeq = seq;
      this.fileBytes = SEGMENT_HEADER_BYTES;
      this.segments.push({ seq, name, maxByGroup: new Map() });
    } else {
      this.salt = saltSeen!;
      const last = this.segments[this.segments.length - 1]!;
      this.fh = await fsp.open(path.join(this.dir, last.name), 'r+');
      this.fileSeq = last.seq;
      this.fileBytes = lastValidBytes;
    }
    this.projSeq = this.fileSeq;
    this.projBytes = this.fileBytes;
    this.stats.segments = this.segments.length;

    for (const [g, r] of groups) {
      const first = r.entries[0]?.index;
      const base = r.marker?.index ?? 0;
      if (first !== undefined && first !== base + 1) {
        throw new WalCorruptionError(
          path.join(this.dir, this.segments[0]!.name),
          0,
          `group ${g}: recovered log starts at ${first} but its snapshot marker is at ${base} (entries missing)`,
        );
      }
      const last = r.entries.length > 0 ? r.entries[r.entries.length - 1]!.index : 0;
      const markerIndex = r.marker?.index ?? 0;
      this.tracks.set(g, {
        group: g,
        lastIndex: Math.max(last, markerIndex),
        markerIndex,
        hard: r.hardState,
        marker: r.marker,
        sealedHard: r.hardState,
        sealedMarker: r.marker,
        dirty: false,
        removed: false,
      });
      this.recoveredGroups.set(g, {
        hardState: r.hardState ?? { term: 0, vote: 0, commit: 0 },
        snapshotMeta: r.marker,
        entries: r.entries,
      });
    }
    this.log.info(
      { dir: this.dir, segments: this.segments.length, groups: groups.size, tornBytesCut: this.stats.tornBytesCut },
      'WAL recovered',
    );
  }

  /**
   * Applies the records of one segment to `groups`; returns the offset where valid data ends (the file length
   * unless a torn tail is to be cut).
   *
   * Torn tail or corruption. Let X be the offset of the first bad record (short frame, length out of range,
   * CRC mismatch, unknown type) and E the end of the batch it belongs to, as declared by that batch's
   * BATCH_BEGIN (E = X when the bad record is where the next BATCH_BEGIN should be). In 'batch'/'always' modes a
   * batch is written only after the previous one is durable, so a crash can tear only the last batch, and may
   * tear it anywhere (its pages reach the disk in any order). Hence: if a valid BATCH_BEGIN with a higher batch
   * number exists at or after E, the damage is in a durable batch -> WalCorruptionError. Otherwise the last batch
   * was torn: keep its valid records before X, cut the file at X. In a segment that is not the last one, any bad
   * record is corruption. A batch may end before its declared length when an earlier recovery cut it there.
   */
  private recoverSegment(
    file: string,
    data: Uint8Array,
    isLast: boolean,
    salt: number,
    info: SegmentInfo,
    groups: Map<GroupId, RecoveringGroup>,
    loose: boolean,
  ): number {
    const end = data.length;
    const frameMax = this.limits.recordBytesMax;
    let pos = SEGMENT_HEADER_BYTES;
    let batchEnd = SEGMENT_HEADER_BYTES;
    let batchSeqHere = this.batchSeq;
    while (pos < end) {
      let bad: string | null = null;
      let len = 0;
      if (end - pos < RECORD_FRAME_BYTES + 1) bad = 'incomplete record frame';
      else {
        len = getU32(data, pos);
        if (len < 1 || RECORD_FRAME_BYTES + len > frameMax) bad = `record length ${len} out of range`;
        else if (pos + RECORD_FRAME_BYTES + len > end) bad = `record of ${len} bytes runs past the end of the file`;
        else if (getU32(data, pos + 4) !== crc32c(data, salt, pos + RECORD_FRAME_BYTES, pos + RECORD_FRAME_BYTES + len)) {
          bad = 'crc mismatch';
        }
      }
      const type = bad === null ? data[pos + RECORD_FRAME_BYTES]! : 0;
      if (bad === null && type !== RecordType.BatchBegin) {
        // A BATCH_BEGIN may come before the declared end of the previous batch: that batch was torn and cut by an
        // earlier recovery, which kept its valid prefix.
        if (pos === batchEnd) throw new WalCorruptionError(file, pos, `expected a batch header, found record type ${type}`);
        if (pos + RECORD_FRAME_BYTES + len > batchEnd) throw new WalCorruptionError(file, pos, 'record crosses the end of its batch');
      }
      if (bad !== null) {
        if (!isLast) throw new WalCorruptionError(file, pos, `${bad} in a segment that is not the last`);
        const scanFrom = Math.max(pos + 1, batchEnd);
        for (let q = scanFrom; q + BATCH_BEGIN_RECORD_BYTES <= end; q++) {
          if (!batchBeginAt(data, q, end, salt)) continue;
          const bb = decodeBatchBegin(data, q + RECORD_FRAME_BYTES + 1, q + BATCH_BEGIN_RECORD_BYTES);
          if (bb !== null && bb.seq > batchSeqHere) {
            throw new WalCorruptionError(file, pos, `${bad}, followed by a valid batch at offset ${q}`);
          }
        }
        this.batchSeq = batchSeqHere;
        return pos;
      }
      const p = pos + RECORD_FRAME_BYTES + 1;
      const recEnd = pos + RECORD_FRAME_BYTES + len;
      this.applyRecord(file, pos, type, data, p, recEnd, info, groups, loose, (bb) => {
        if (bb.seq <= batchSeqHere) throw new WalCorruptionError(file, pos, `batch number ${bb.seq} does not increase`);
        batchSeqHere = bb.seq;
        batchEnd = pos + bb.bytes;
      });
      pos = recEnd;
    }
    this.batchSeq = batchSeqHere;
    return pos;
  }

  private applyRecord(
    file: string,
    pos: number,
    type: number,
    data: Uint8Array,
    p: number,
    end: number,
    info: SegmentInfo,
    groups: Map<GroupId, RecoveringGroup>,
    loose: boolean,
    onBatch: (bb: { seq: number; bytes: number }) => void,
  ): void {
    const malformed = (what: string): never => {
      throw new WalCorruptionError(file, pos, `malformed ${what} record with a valid crc`);
    };
    const groupOf = (g: GroupId): RecoveringGroup => {
      let r = groups.get(g);
      if (r === undefined) {
        r = { hardState: null, marker: null, entries: [], loose };
        groups.set(g, r);
      }
      return r;
    };
    switch (type) {
      case RecordType.BatchBegin: {
        const bb = decodeBatchBegin(data, p, end);
        if (bb === null) malformed('batch header');
        onBatch(bb!);
        return;
      }
      case RecordType.Entries: {
        const rec = decodeEntries(data, p, end);
        if (rec === null) return malformed('entries');
        const r = groupOf(rec.group);
        const log = r.entries;
        const markerIndex = r.marker?.index ?? 0;
        const last = log.length > 0 ? log[log.length - 1]!.index : markerIndex;
        const looseStart = r.loose && log.length === 0;
        if (rec.first <= markerIndex || (rec.first > last + 1 && !looseStart)) {
          throw new WalCorruptionError(
            file,
            pos,
            `group ${rec.group}: entries start at ${rec.first}, expected an index in (${markerIndex}, ${last + 1}]`,
          );
        }
        if (log.length > 0 && rec.first <= last) {
          // Overwrite (log conflict): drop stored entries from rec.first on.
          log.length = Math.max(0, rec.first - log[0]!.index);
          this.clampRecovering(rec.group, rec.first - 1);
        }
        for (const e of rec.entries) log.push(e);
        const recLast = rec.first + rec.entries.length - 1;
        const m = info.maxByGroup.get(rec.group);
        if (m === undefined || m < recLast) info.maxByGroup.set(rec.group, recLast);
        return;
      }
      case RecordType.HardState: {
        const rec = decodeHardState(data, p, end);
        if (rec === null) return malformed('hard state');
        groupOf(rec.group).hardState = rec.hs;
        return;
      }
      case RecordType.SnapshotMarker: {
        const rec = decodeMarker(data, p, end);
        if (rec === null) return malformed('snapshot marker');
        const r = groupOf(rec.group);
        const prevIndex = r.marker?.index ?? 0;
        if (rec.meta.index <= prevIndex) return; // A checkpoint repeating the current marker.
        const log = r.entries;
        const at = log.length > 0 ? rec.meta.index - log[0]!.index : -1;
        if (at >= 0 && at < log.length && log[at]!.term === rec.meta.term) {
          r.entries = log.slice(at + 1);
        } else if (r.loose && log.length > 0 && at < 0) {
          // The log starts after this marker (older entries were deleted): keep it.
        } else {
          // The log does not hold the snapshot's last entry: it conflicts or is shorter; drop it all.
          r.entries = [];
          this.clampRecovering(rec.group, 0);
        }
        r.marker = rec.meta;
        return;
      }
      case RecordType.GroupRemoved: {
        const g = decodeGroupRemoved(data, p, end);
        if (g === null) return malformed('group removed');
        groups.delete(g);
        for (const s of this.segments) s.maxByGroup.delete(g);
        return;
      }
      default:
        throw new WalCorruptionError(file, pos, `unknown record type ${type}`);
    }
  }

  private clampRecovering(group: GroupId, index: number): void {
    for (const s of this.segments) {
      const m = s.maxByGroup.get(group);
      if (m !== undefined && m > index) s.maxByGroup.set(group, index);
    }
  }
}
