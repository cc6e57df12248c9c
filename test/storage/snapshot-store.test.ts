import t from 'tap';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { SnapshotStore } from '../../src/storage/snapshot-store.js';
import { Wal } from '../../src/storage/wal.js';
import { BootError, loadBootState } from '../../src/storage/boot.js';
import type { Snapshot } from '../../src/raft/types.js';
import { entries, tempDir, view } from './helpers.js';

const snap = (index: number, term: number, text = `state@${index}`): Snapshot => ({
  meta: { index, term, conf: { voters: [1, 2, 3], learners: [] } },
  data: new TextEncoder().encode(text),
});
const text = (s: Snapshot | null): string | null => (s === null ? null : new TextDecoder().decode(s.data));
const conf = { voters: [1, 2, 3], learners: [] };

t.test('snapshots round trip, and only the newest two per group are kept', async (t) => {
  const dir = tempDir(t);
  const store = await SnapshotStore.open(dir);
  t.equal(await store.loadLatest(1), null);
  for (const i of [10, 20, 30]) await store.save(1, snap(i, 1));
  await store.save(2, snap(5, 1));
  const big = new Uint8Array(5 * 1024 * 1024).map((_, i) => i * 13);
  await store.save(3, { meta: { index: 7, term: 2, conf: { voters: [1], learners: [9] } }, data: big });
  t.same(
    (await store.list()).map((s) => [s.group, s.index, s.term]),
    [
      [1, 20, 1],
      [1, 30, 1],
      [2, 5, 1],
      [3, 7, 2],
    ],
  );
  const l = await store.loadLatest(1);
  t.same(l?.meta, { index: 30, term: 1, conf: { voters: [1, 2, 3], learners: [] } });
  t.equal(text(l), 'state@30');
  const b = await store.loadLatest(3);
  t.same(b?.meta.conf, { voters: [1], learners: [9] });
  t.ok(b !== null && Buffer.compare(Buffer.from(b.data), Buffer.from(big)) === 0, '5 MiB data intact');
  await store.removeGroup(2);
  t.equal(await store.loadLatest(2), null);
});

t.test('a temp file left by an interrupted save is deleted on open and never loaded', async (t) => {
  const dir = tempDir(t);
  let store = await SnapshotStore.open(dir);
  await store.save(1, snap(10, 1));
  writeFileSync(path.join(dir, 'snap-1-99-1.bin.tmp-abcdef'), 'half written');
  t.equal(text(await store.loadLatest(1)), 'state@10', 'temp files are not snapshots');
  store = await SnapshotStore.open(dir);
  t.same(readdirSync(dir).sort(), ['snap-1-10-1.bin']);
  t.equal(text(await store.loadLatest(1)), 'state@10');
});

t.test('a damaged newest snapshot falls back to the previous one; all damaged gives null', async (t) => {
  const dir = tempDir(t);
  const warnings: object[] = [];
  const logger = { info() {}, warn: (o: object) => warnings.push(o), error() {} };
  const store = await SnapshotStore.open(dir, { logger });
  await store.save(1, snap(10, 1));
  await store.save(1, snap(20, 1));
  const newest = path.join(dir, 'snap-1-20-1.bin');
  const b = readFileSync(newest);
  for (const at of [2, 20, 40, b.length - 1]) {
    const c = Buffer.from(b);
    c[at]! ^= 0x10;
    writeFileSync(newest, c);
    t.equal(text(await store.loadLatest(1)), 'state@10', `flip at byte ${at}`);
  }
  writeFileSync(newest, b.subarray(0, b.length - 1));
  t.equal(text(await store.loadLatest(1)), 'state@10', 'truncated');
  t.ok(warnings.length >= 5);
  // A file renamed to claim another index is refused too.
  writeFileSync(path.join(dir, 'snap-1-30-1.bin'), readFileSync(path.join(dir, 'snap-1-10-1.bin')));
  t.equal(text(await store.loadLatest(1)), 'state@10');
  writeFileSync(path.join(dir, 'snap-1-10-1.bin'), 'junk');
  t.equal(await store.loadLatest(1), null);
});

t.test('boot state combines the latest snapshot with the WAL entries after it', async (t) => {
  const dir = tempDir(t);
  const wal = await Wal.open(path.join(dir, 'wal'), { limits: { segmentBytes: 1 << 20, recordBytesMax: 1 << 16 }, fsync: 'never' });
  const store = await SnapshotStore.open(path.join(dir, 'snap'), { fsync: 'never' });
  // Group 1: log 1..10, snapshot at 6 saved and marked.
  wal.append(1, entries(1, 10, 2), { term: 2, vote: 1, commit: 8 });
  await store.save(1, snap(6, 2));
  wal.markSnapshot(1, snap(6, 2).meta);
  // Group 2: snapshot saved at 4, crash before the marker was written.
  wal.append(2, entries(1, 9, 1), { term: 1, vote: 0, commit: 3 });
  await store.save(2, snap(4, 1));
  // Group 3: marker durable but the snapshot file lost.
  wal.append(3, entries(1, 3, 1), null);
  wal.markSnapshot(3, snap(2, 1).meta);
  // Group 4: fresh.
  await wal.close();

  const wal2 = await Wal.open(path.join(dir, 'wal'), { limits: { segmentBytes: 1 << 20, recordBytesMax: 1 << 16 }, fsync: 'never' });
  const b1 = await loadBootState(wal2, store, 1, conf);
  t.equal(b1.snapshot?.meta.index, 6);
  t.same(view(b1.entries), view(entries(7, 10, 2)));
  t.same(b1.hardState, { term: 2, vote: 1, commit: 8 });
  t.equal(b1.applied, 6);
  const b2 = await loadBootState(wal2, store, 2, conf);
  t.same(view(b2.entries), view(entries(5, 9, 1)), 'entries trimmed by a snapshot newer than the marker');
  t.same(b2.hardState.commit, 4, 'commit raised to the snapshot index');
  await t.rejects(loadBootState(wal2, store, 3, conf), { code: 'BOOT_SNAPSHOT_MISSING' });
  const b4 = await loadBootState(wal2, store, 4, conf);
  t.same(b4, { hardState: { term: 0, vote: 0, commit: 0 }, snapshot: null, entries: [], initialConf: conf, applied: 0 });
  t.ok(new BootError('BOOT_INCONSISTENT', 1, 'x').message.includes('group 1'));
  await wal2.close();
});

t.test('boot refuses a hard state that commits beyond the stored log', async (t) => {
  const dir = tempDir(t);
  const wal = await Wal.open(dir, { limits: { segmentBytes: 1 << 20, recordBytesMax: 1 << 16 }, fsync: 'never' });
  const store = await SnapshotStore.open(path.join(dir, 'snap'), { fsync: 'never' });
  wal.append(1, entries(1, 3, 1), { term: 1, vote: 0, commit: 5 });
  const again = await reopen();
  await t.rejects(loadBootState(again, store, 1, conf), { code: 'BOOT_INCONSISTENT' });
  await again.close();
  async function reopen(): Promise<Wal> {
    await wal.close();
    return Wal.open(dir, { limits: { segmentBytes: 1 << 20, recordBytesMax: 1 << 16 }, fsync: 'never' });
  }
});
