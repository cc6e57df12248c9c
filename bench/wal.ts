/**
 * WAL benchmark: 16 groups, many concurrent "proposers" each doing append(one 100-byte entry + hard state) then
 * await sync(), for fsync batch / always / never. Prints entries/s, fdatasyncs/s, entries per fdatasync and sync()
 * latency percentiles, then one JSON line per mode. Baselines: a raw 4 KiB append + fdatasync loop measured in the
 * same run, and the figure in /work/shared/PEERS.md (6,956/s on this kind of machine).
 *
 * Also compares the two record encodings considered (hand-rolled binary vs msgpackr) for 100-byte entries.
 *
 *   node dist/bench/wal.js [--seconds 1] [--proposers 64] [--groups 16] [--modes batch,always,never] [--dir /tmp]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Packr } from 'msgpackr';
import { Wal, type FsyncMode } from '../src/storage/wal.js';
import { crc32c } from '../src/storage/crc32c.js';
import { writeEntriesRecord } from '../src/storage/wal-format.js';
import type { Entry, EntryType } from '../src/raft/types.js';

const PEERS_RAW_FSYNC_PER_SEC = 6956;

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : def;
}

const seconds = Number(arg('seconds', '1'));
const proposers = Number(arg('proposers', '64'));
const groups = Number(arg('groups', '16'));
const modes = arg('modes', 'batch,always,never').split(',') as FsyncMode[];
const baseDir = arg('dir', os.tmpdir());

function pct(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function codecBench(): { handMBs: number; msgpackMBs: number; handNsPerEntry: number; msgpackNsPerEntry: number } {
  const data = new Uint8Array(100).map((_, i) => i);
  const batch: Entry[] = [];
  for (let i = 0; i < 16; i++) batch.push({ index: 1000 + i, term: 7, type: 0 as EntryType, data });
  const buf = new Uint8Array(1 << 16);
  const packr = new Packr({ useRecords: false });
  const iters = 20_000;
  let bytesHand = 0;
  let bytesPack = 0;
  const run = (fn: () => number): number => {
    for (let i = 0; i < 2000; i++) fn();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iters; i++) fn();
    return Number(process.hrtime.bigint() - t0);
  };
  const handNs = run(() => {
    const n = writeEntriesRecord(buf, 0, 0x1234, 3, batch, 0, batch.length);
    bytesHand = n;
    return n;
  });
  const packNs = run(() => {
    const b = packr.pack({ g: 3, e: batch });
    bytesPack = b.length;
    return crc32c(b, 0x1234);
  });
  const entriesN = iters * batch.length;
  return {
    handMBs: (bytesHand * iters) / (handNs / 1e3),
    msgpackMBs: (bytesPack * iters) / (packNs / 1e3),
    handNsPerEntry: handNs / entriesN,
    msgpackNsPerEntry: packNs / entriesN,
  };
}

async function rawFsync(dir: string): Promise<number> {
  const fh = await fsp.open(path.join(dir, 'raw.bin'), 'w');
  const block = new Uint8Array(4096).fill(7);
  let n = 0;
  let pos = 0;
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    await fh.write(block, 0, block.length, pos);
    pos += block.length;
    await fh.datasync();
    n++;
  }
  await fh.close();
  return n / seconds;
}

async function runMode(mode: FsyncMode, dir: string): Promise<Record<string, number | string>> {
  const wal = await Wal.open(path.join(dir, mode), {
    limits: { segmentBytes: 64 * 1024 * 1024, recordBytesMax: 64 * 1024 * 1024 },
    fsync: mode,
  });
  const data = new Uint8Array(100).fill(42);
  const next = new Int32Array(groups);
  const lat: number[] = [];
  let entries = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: proposers }, async (_, p) => {
      const g = p % groups;
      while (performance.now() < end) {
        const index = ++next[g]!;
        wal.append(g, [{ index, term: 1, type: 0 as EntryType, data }], { term: 1, vote: 1, commit: index - 1 });
        const s = performance.now();
        await wal.sync();
        lat.push(performance.now() - s);
        entries++;
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const sorted = Float64Array.from(lat).sort();
  const stats = { ...wal.stats };
  await wal.close();
  return {
    bench: 'wal',
    mode,
    seconds: Number(elapsed.toFixed(2)),
    proposers,
    groups,
    entryBytes: 100,
    entriesPerSec: Math.round(entries / elapsed),
    syncsPerSec: Math.round(stats.syncs / elapsed),
    writesPerSec: Math.round(stats.writes / elapsed),
    entriesPerSync: stats.syncs > 0 ? Number((entries / stats.syncs).toFixed(1)) : 0,
    entriesPerWrite: Number((entries / stats.writes).toFixed(1)),
    p50Us: Math.round(pct(sorted, 50) * 1000),
    p99Us: Math.round(pct(sorted, 99) * 1000),
    mbPerSec: Number((stats.bytesWritten / elapsed / 1e6).toFixed(2)),
  };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(baseDir, 'lockstep-wal-bench-'));
  try {
    const c = codecBench();
    console.log(
      `codec, 16 x 100 B entries per record: hand-rolled ${c.handNsPerEntry.toFixed(0)} ns/entry (${c.handMBs.toFixed(0)} MB/s), ` +
        `msgpackr + crc ${c.msgpackNsPerEntry.toFixed(0)} ns/entry (${c.msgpackMBs.toFixed(0)} MB/s)`,
    );
    const raw = await rawFsync(dir);
    console.log(`raw 4 KiB append + fdatasync: ${Math.round(raw)}/s (PEERS.md: ${PEERS_RAW_FSYNC_PER_SEC}/s)`);
    const results: Array<Record<string, number | string>> = [];
    for (const mode of modes) {
      const r = await runMode(mode, dir);
      results.push(r);
      console.log(
        `fsync=${String(r['mode']).padEnd(6)} entries/s ${String(r['entriesPerSec']).padStart(8)}  syncs/s ${String(r['syncsPerSec']).padStart(6)}  ` +
          `entries/sync ${String(r['entriesPerSync']).padStart(6)}  sync() p50 ${r['p50Us']} us  p99 ${r['p99Us']} us`,
      );
    }
    for (const r of results) {
      console.log(JSON.stringify({ ...r, rawFsyncPerSec: Math.round(raw), peersRawFsyncPerSec: PEERS_RAW_FSYNC_PER_SEC, codec: c }));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
