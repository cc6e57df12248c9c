/**
 * Durable Raft snapshots, one file per snapshot: `snap-<group>-<index>-<term>.bin` in one directory.
 *
 * Owns: the snapshot files of every group of one worker. Invariants:
 * - A snapshot file is visible under its final name only when complete and durable: written to a temp file
 *   (`*.tmp-<random>`), fdatasynced, renamed, directory fsynced. Temp files left by a crash are deleted by open().
 * - Each file carries CRCs of its header, meta and data; loadLatest() verifies them and falls back to the next
 *   newest valid file when the newest is damaged (logged).
 * - save() keeps the newest `keepPerGroup` (2) snapshots of the group and deletes older ones, after the new one
 *   is durable.
 *
 * File layout (little-endian):
 *    0  u32  magic 0x4C4B534E ("NSKL" as bytes 4E 53 4B 4C)
 *    4  u16  version (1), u16 flags (0)
 *    8  u32  meta length M
 *   12  u32  crc32c(meta)
 *   16  u64  data length D
 *   24  u32  crc32c(data)
 *   28  u32  crc32c(bytes 0..28)
 *   32  meta: msgpack of { group, index, term, conf: { voters, learners } }
 *   32+M data
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Packr } from 'msgpackr';
import type { GroupId, Snapshot, SnapshotMeta } from '../raft/types.js';
import { crc32c } from './crc32c.js';
import { getU32, getU64, putU32, putU64 } from './wal-format.js';
import { fsyncDir, writeAll, type FsyncMode, type StorageLogger } from './wal.js';

const MAGIC = 0x4c4b534e;
const VERSION = 1;
const HEADER_BYTES = 32;
const META_BYTES_MAX = 16 * 1024 * 1024;
/** CRC is computed in slices of this size, yielding to the event loop between them. */
const CRC_SLICE_BYTES = 4 * 1024 * 1024;
const FILE_RE = /^snap-(\d+)-(\d+)-(\d+)\.bin$/;
const TMP_RE = /^snap-.*\.tmp-[0-9a-f]+$/;

const packr = new Packr({ useRecords: false });

export interface SnapshotFileInfo {
  group: GroupId;
  index: number;
  term: number;
  file: string;
}

export interface SnapshotStoreOptions {
  /** 'never' skips fdatasync and directory fsync (tests, benchmarks). Default 'batch' (everything fsynced). */
  fsync?: FsyncMode;
  logger?: StorageLogger;
  /** Snapshots kept per group (>= 1, default 2). */
  keepPerGroup?: number;
}

export class SnapshotError extends Error {
  readonly code: 'SNAPSHOT_INVALID';
  constructor(message: string) {
    super(message);
    this.name = 'SnapshotError';
    this.code = 'SNAPSHOT_INVALID';
  }
}

const SILENT: StorageLogger = { info() {}, warn() {}, error() {} };

function yieldTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

async function crcSliced(b: Uint8Array): Promise<number> {
  let crc = 0;
  for (let o = 0; o < b.length; o += CRC_SLICE_BYTES) {
    if (o > 0) await yieldTurn();
    crc = crc32c(b, crc, o, Math.min(b.length, o + CRC_SLICE_BYTES));
  }
  return crc;
}

export function snapshotFileName(group: GroupId, index: number, term: number): string {
  return `snap-${group}-${index}-${term}.bin`;
}

function isMeta(v: unknown): v is { group: number; index: number; term: number; conf: { voters: number[]; learners: number[] } } {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  const conf = o['conf'] as Record<string, unknown> | undefined;
  const ids = (x: unknown): boolean => Array.isArray(x) && x.every((n) => Number.isInteger(n) && (n as number) >= 0);
  return (
    Number.isInteger(o['group']) &&
    Number.isSafeInteger(o['index']) &&
    Number.isSafeInteger(o['term']) &&
    typeof conf === 'object' &&
    conf !== null &&
    ids(conf['voters']) &&
    ids(conf['learners'])
  );
}

export class SnapshotStore {
  readonly dir: string;
  private readonly sync: boolean;
  private readonly log: StorageLogger;
  private readonly keep: number;

  private constructor(dir: string, opts: SnapshotStoreOptions) {
    this.dir = dir;
    this.sync = (opts.fsync ?? 'batch') !== 'never';
    this.log = opts.logger ?? SILENT;
    this.keep = opts.keepPerGroup ?? 2;
    if (!Number.isInteger(this.keep) || this.keep < 1) throw new SnapshotError(`keepPerGroup must be >= 1, got ${this.keep}`);
  }

  /** Creates `dir` if needed and deletes temp files left by an interrupted save(). */
  static async open(dir: string, opts: SnapshotStoreOptions = {}): Promise<SnapshotStore> {
    const store = new SnapshotStore(dir, opts);
    const created = await fsp.mkdir(dir, { recursive: true });
    if (created !== undefined && store.sync) await fsyncDir(path.dirname(path.resolve(dir)));
    let removed = 0;
    for (const name of await fsp.readdir(dir)) {
      if (!TMP_RE.test(name)) continue;
      await fsp.unlink(path.join(dir, name));
      removed++;
    }
    if (removed > 0) {
      store.log.warn({ dir, removed }, 'snapshot store: deleted temp files left by an interrupted save');
      if (store.sync) await fsyncDir(dir);
    }
    return store;
  }

  /**
   * Writes `snapshot` of `group` atomically and durably, then deletes the group's snapshots beyond the newest
   * keepPerGroup. Resolves once the new file is durable under its final name.
   */
  async save(group: GroupId, snapshot: Snapshot): Promise<void> {
    const { meta, data } = snapshot;
    if (!Number.isInteger(group) || group < 0 || group > 0xffffffff) throw new SnapshotError(`bad group ${group}`);
    if (!Number.isSafeInteger(meta.index) || meta.index < 1 || !Number.isSafeInteger(meta.term) || meta.term < 0) {
      throw new SnapshotError(`group ${group}: bad snapshot meta index ${meta.index} term ${meta.term}`);
    }
    const metaBytes = packr.pack({
      group,
      index: meta.index,
      term: meta.term,
      conf: { voters: [...meta.conf.voters], learners: [...meta.conf.learners] },
    });
    const header = new Uint8Array(HEADER_BYTES);
    putU32(header, 0, MAGIC);
    header[4] = VERSION;
    putU32(header, 8, metaBytes.length);
    putU32(header, 12, crc32c(metaBytes));
    putU64(header, 16, data.length);
    putU32(header, 24, await crcSliced(data));
    putU32(header, 28, crc32c(header, 0, 0, 28));

    const name = snapshotFileName(group, meta.index, meta.term);
    const tmp = path.join(this.dir, `${name}.tmp-${randomBytes(6).toString('hex')}`);
    const fh = await fsp.open(tmp, 'wx');
    try {
      await writeAll(fh, [header, metaBytes, data], 0);
      if (this.sync) await fh.datasync();
    } catch (e) {
      await fh.close().catch(() => undefined);
      await fsp.unlink(tmp).catch(() => undefined);
      throw e;
    }
    await fh.close();
    await fsp.rename(tmp, path.join(this.dir, name));
    if (this.sync) await fsyncDir(this.dir);

    const mine = (await this.list()).filter((s) => s.group === group);
    const old = mine.slice(0, Math.max(0, mine.length - this.keep));
    for (const s of old) await fsp.unlink(path.join(this.dir, s.file));
    if (old.length > 0 && this.sync) await fsyncDir(this.dir);
  }

  /**
   * The newest snapshot of `group` whose checksums verify, or null if none. A damaged newer file is skipped
   * (logged at warn) in favour of the next one.
   */
  async loadLatest(group: GroupId): Promise<Snapshot | null> {
    const mine = (await this.list()).filter((s) => s.group === group);
    for (let i = mine.length - 1; i >= 0; i--) {
      const s = mine[i]!;
      const file = path.join(this.dir, s.file);
      const res = await this.readVerified(file, s);
      if (typeof res !== 'string') return res;
      this.log.warn({ file, reason: res }, 'snapshot store: damaged snapshot skipped, falling back to an older one');
    }
    return null;
  }

  /** Every snapshot file, ordered by group, then index, then term. */
  async list(): Promise<SnapshotFileInfo[]> {
    const out: SnapshotFileInfo[] = [];
    for (const name of await fsp.readdir(this.dir)) {
      const m = FILE_RE.exec(name);
      if (m === null) continue;
      out.push({ group: Number(m[1]), index: Number(m[2]), term: Number(m[3]), file: name });
    }
    out.sort((a, b) => a.group - b.group || a.index - b.index || a.term - b.term);
    return out;
  }

  /** Deletes every snapshot of `group` (its shard moved away). */
  async removeGroup(group: GroupId): Promise<void> {
    const mine = (await this.list()).filter((s) => s.group === group);
    for (const s of mine) await fsp.unlink(path.join(this.dir, s.file));
    if (mine.length > 0 && this.sync) await fsyncDir(this.dir);
  }

  /** The snapshot in `file`, or the reason it is not valid. */
  private async readVerified(file: string, expect: SnapshotFileInfo): Promise<Snapshot | string> {
    let buf: Uint8Array;
    try {
      buf = new Uint8Array(await fsp.readFile(file));
    } catch (e) {
      return `unreadable: ${(e as Error).message}`;
    }
    if (buf.length < HEADER_BYTES) return 'short header';
    if (getU32(buf, 0) !== MAGIC) return 'bad magic';
    if (getU32(buf, 28) !== crc32c(buf, 0, 0, 28)) return 'header crc mismatch';
    if ((buf[4]! | (buf[5]! << 8)) !== VERSION) return 'unsupported version';
    const metaLen = getU32(buf, 8);
    const dataLen = getU64(buf, 16);
    if (metaLen > META_BYTES_MAX || dataLen < 0 || HEADER_BYTES + metaLen + dataLen !== buf.length) return 'length mismatch';
    const metaBytes = buf.subarray(HEADER_BYTES, HEADER_BYTES + metaLen);
    if (crc32c(metaBytes) !== getU32(buf, 12)) return 'meta crc mismatch';
    const data = buf.subarray(HEADER_BYTES + metaLen);
    if ((await crcSliced(data)) !== getU32(buf, 24)) return 'data crc mismatch';
    let m: unknown;
    try {
      m = packr.unpack(metaBytes);
    } catch (e) {
      return `meta undecodable: ${(e as Error).message}`;
    }
    if (!isMeta(m)) return 'meta malformed';
    if (m.group !== expect.group || m.index !== expect.index || m.term !== expect.term) return 'meta does not match the file name';
    const meta: SnapshotMeta = { index: m.index, term: m.term, conf: { voters: m.conf.voters, learners: m.conf.learners } };
    return { meta, data };
  }
}
