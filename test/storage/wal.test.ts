import t from 'tap';
import { readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { Wal, WalError, type WalOptions } from '../../src/storage/wal.js';
import type { SnapshotMeta } from '../../src/raft/types.js';
import { entries, entry, tempDir, view } from './helpers.js';

const limits = { segmentBytes: 64 * 1024, recordBytesMax: 64 * 1024 };
const opts = (o: Partial<WalOptions> = {}): WalOptions => ({ limits, fsync: 'batch', ...o });
const meta = (index: number, term: number): SnapshotMeta => ({ index, term, conf: { voters: [1, 2, 3], learners: [4] } });
const segs = (dir: string): string[] => readdirSync(dir).filter((n) => n.endsWith('.log')).sort();

t.test('a fresh WAL recovers nothing and creates one segment', async (t) => {
  const dir = tempDir(t);
  const wal = await Wal.open(dir, opts());
  t.equal(wal.recovered().size, 0);
  t.same(segs(dir), ['wal-0000000000000001.log']);
  t.equal(wal.stats.segments, 1);
  await wal.close();
});

t.test('entries and hard states of many groups survive a reopen', async (t) => {
  const dir = tempDir(t);
  let wal = await Wal.open(dir, opts());
  for (let round = 0; round < 5; round++) {
    for (let g = 0; g < 20; g++) {
      wal.append(g, entries(round * 3 + 1, round * 3 + 3, round + 1), { term: round + 1, vote: g % 3, commit: round * 3 });
    }
    await wal.sync();
  }
  wal.append(7, [], { term: 9, vote: 2, commit: 15 });
  await wal.close();
  wal = await Wal.open(dir, opts());
  const rec = wal.recovered();
  t.equal(rec.size, 20);
  for (let g = 0; g < 20; g++) {
    const r = rec.get(g)!;
    t.equal(r.entries.length, 15, `group ${g} entries`);
    t.same(view(r.entries), view(entries(1, 15, 0).map((e) => ({ ...e, term: Math.floor((e.index - 1) / 3) + 1 }))));
    t.same(r.hardState, g === 7 ? { term: 9, vote: 2, commit: 15 } : { term: 5, vote: g % 3, commit: 12 });
    t.equal(r.snapshotMeta, null);
  }
  // Appending continues after the recovered state.
  wal.append(3, [entry(16, 5)], null);
  await wal.close();
  wal = await Wal.open(dir, opts());
  t.equal(wal.recovered().get(3)!.entries.length, 16);
  await wal.close();
});

t.test('an append starting at or below the last index overwrites the log from there (last write wins)', async (t) => {
  const dir = tempDir(t);
  let wal = await Wal.open(dir, opts());
  wal.append(1, entries(1, 10, 1), { term: 1, vote: 1, commit: 3 });
  wal.append(2, entries(1, 4, 1), null);
  await wal.sync();
  wal.append(1, entries(6, 7, 2, (i) => `new${i}`), { term: 2, vote: 0, commit: 3 });
  await wal.sync();
  await wal.close();
  wal = await Wal.open(dir, opts());
  t.same(view(wal.recovered().get(1)!.entries), [
    ...view(entries(1, 5, 1)),
    [6, 2, 'new6'],
    [7, 2, 'new7'],
  ]);
  t.same(view(wal.recovered().get(2)!.entries), view(entries(1, 4, 1)), 'other groups untouched');
  // Appending after the overwrite continues from 8; a gap is refused.
  wal.append(1, [entry(8, 2)], null);
  t.throws(() => wal.append(1, [entry(10, 2)], null), { code: 'WAL_INVALID' });
  // An overwrite of the very first entry.
  wal.append(1, [entry(1, 3, 'x')], null);
  await wal.close();
  wal = await Wal.open(dir, opts());
  t.same(view(wal.recovered().get(1)!.entries), [[1, 3, 'x']]);
  await wal.close();
});

t.test('invalid appends are refused without buffering anything', async (t) => {
  const dir = tempDir(t);
  const wal = await Wal.open(dir, opts());
  t.throws(() => wal.append(1, [entry(2, 1)], null), { code: 'WAL_INVALID' }, 'must start at 1');
  t.throws(() => wal.append(1, [entry(1, 1), entry(3, 1)], null), { code: 'WAL_INVALID' }, 'not contiguous');
  t.throws(() => wal.append(-1, [entry(1, 1)], null), { code: 'WAL_INVALID' }, 'bad group');
  t.throws(() => wal.append(1, [], { term: -1, vote: 0, commit: 0 }), { code: 'WAL_INVALID' }, 'bad hard state');
  t.throws(
    () => wal.append(1, [{ index: 1, term: 1, type: 0, data: new Uint8Array(limits.recordBytesMax) }], null),
    { code: 'WAL_RECORD_TOO_BIG' },
  );
  t.equal(wal.stats.bytesAppended, 0);
  await wal.close();
  t.throws(() => wal.append(1, [entry(1, 1)], null), { code: 'WAL_CLOSED' });
  await t.rejects(wal.sync(), { code: 'WAL_CLOSED' });
  t.ok(new WalError('WAL_FAILED', 'x') instanceof Error);
});

t.test('a batch larger than recordBytesMax is split into several records', async (t) => {
  const dir = tempDir(t);
  let wal = await Wal.open(dir, opts({ limits: { segmentBytes: 1 << 20, recordBytesMax: 1024 } }));
  const big = entries(1, 50, 1, (i) => 'x'.repeat(100) + i);
  wal.append(1, big, null);
  await wal.close();
  t.ok(wal.stats.recordsWritten > 5, `records: ${wal.stats.recordsWritten}`);
  wal = await Wal.open(dir, opts({ limits: { segmentBytes: 1 << 20, recordBytesMax: 1024 } }));
  t.same(view(wal.recovered().get(1)!.entries), view(big));
  await wal.close();
});

t.test('a snapshot marker drops the entries it covers and keeps the suffix', async (t) => {
  const dir = tempDir(t);
  let wal = await Wal.open(dir, opts());
  wal.append(1, entries(1, 10, 1), { term: 1, vote: 1, commit: 8 });
  wal.markSnapshot(1, meta(6, 1));
  wal.markSnapshot(1, meta(6, 1)); // idempotent
  t.throws(() => wal.markSnapshot(1, meta(5, 1)), { code: 'WAL_INVALID' });
  t.throws(() => wal.append(1, [entry(6, 2)], null), { code: 'WAL_INVALID' }, 'cannot append at or below the marker');
  await wal.close();
  wal = await Wal.open(dir, opts());
  const r = wal.recovered().get(1)!;
  t.same(r.snapshotMeta, meta(6, 1));
  t.same(view(r.entries), view(entries(7, 10, 1)));
  await wal.close();
});

t.test('a snapshot installed over a conflicting or shorter log drops the whole log', async (t) => {
  const dir = tempDir(t);
  let wal = await Wal.open(dir, opts());
  wal.append(1, entries(1, 10, 1), null);
  wal.append(2, entries(1, 3, 1), null);
  wal.markSnapshot(1, meta(8, 2)); // term differs at index 8
  wal.markSnapshot(2, meta(20, 3)); // beyond the log
  wal.append(2, [entry(21, 3)], { term: 3, vote: 0, commit: 20 });
  await wal.close();
  wal = await Wal.open(dir, opts());
  t.same(wal.recovered().get(1)!.entries, []);
  t.same(wal.recovered().get(1)!.snapshotMeta, meta(8, 2));
  t.same(view(wal.recovered().get(2)!.entries), [[21, 3, 'e21']]);
  // The log continues right after the marker.
  wal.append(1, [entry(9, 2)], null);
  await wal.close();
  wal = await Wal.open(dir, opts());
  t.same(view(wal.recovered().get(1)!.entries), [[9, 2, 'e9']]);
  await wal.close();
});

t.test('a removed group is forgotten and may start afresh', async (t) => {
  const dir = tempDir(t);
  let wal = await Wal.open(dir, opts());
  wal.append(1, entries(1, 3, 1), { term: 1, vote: 1, commit: 1 });
  wal.append(2, entries(1, 3, 1), null);
  await wal.sync();
  wal.removeGroup(1);
  await wal.close();
  wal = await Wal.open(dir, opts());
  t.same([...wal.recovered().keys()], [2]);
  wal.append(1, [entry(1, 7, 'again')], null);
  await wal.close();
  wal = await Wal.open(dir, opts());
  t.same(view(wal.recovered().get(1)!.entries), [[1, 7, 'again']]);
  t.same(wal.recovered().get(1)!.hardState, { term: 0, vote: 0, commit: 0 });
  await wal.close();
});

t.test('segments rotate at segmentBytes and are deleted only once every group is covered by a marker', async (t) => {
  const dir = tempDir(t);
  const small = opts({ limits: { segmentBytes: 4096, recordBytesMax: 4096 } });
  let wal = await Wal.open(dir, small);
  // Group 2 writes a little early on (entries and its only hard state), then stays idle.
  wal.append(2, entries(1, 3, 1), { term: 1, vote: 3, commit: 2 });
  wal.markSnapshot(3, meta(5, 1)); // a group with a marker and nothing else
  await wal.sync();
  let idx = 0;
  for (let b = 0; b < 40; b++) {
    wal.append(1, entries(idx + 1, idx + 5, 1, (i) => `payload-${i}-${'y'.repeat(40)}`), { term: 1, vote: 1, commit: idx });
    idx += 5;
    await wal.sync();
  }
  const before = segs(dir).length;
  t.ok(before >= 4, `rotated into ${before} segments`);
  t.equal(wal.stats.segments, before);
  t.equal(await wal.compact(), 0, 'nothing covered yet');
  wal.markSnapshot(1, meta(idx, 1));
  t.equal(await wal.compact(), 0, 'group 2 still holds the first segment');
  wal.markSnapshot(2, meta(3, 1));
  const deleted = await wal.compact();
  t.equal(deleted, before - 1, 'every segment but the one being written');
  t.equal(segs(dir).length, 1);
  t.equal(wal.stats.segments, 1);
  wal.append(1, [entry(idx + 1, 1)], null);
  await wal.close();

  wal = await Wal.open(dir, small);
  const rec = wal.recovered();
  t.same(rec.get(1)!.snapshotMeta, meta(idx, 1));
  t.same(view(rec.get(1)!.entries), [[idx + 1, 1, `e${idx + 1}`]]);
  t.same(rec.get(1)!.hardState, { term: 1, vote: 1, commit: idx - 5 });
  t.same(rec.get(2)!.hardState, { term: 1, vote: 3, commit: 2 }, 'hard state kept by the checkpoint');
  t.same(rec.get(2)!.snapshotMeta, meta(3, 1));
  t.same(rec.get(2)!.entries, []);
  t.same(rec.get(3)!.snapshotMeta, meta(5, 1));
  await wal.close();
});

t.test('overwritten entries no longer hold a segment back', async (t) => {
  const dir = tempDir(t);
  const small = opts({ limits: { segmentBytes: 2048, recordBytesMax: 2048 } });
  const wal = await Wal.open(dir, small);
  wal.append(1, entries(1, 30, 1, (i) => `${i}${'z'.repeat(60)}`), null);
  await wal.sync();
  // Rewrite from 11 with a new term, in a later segment.
  for (let i = 11; i <= 40; i += 5) {
    wal.append(1, entries(i, i + 4, 2, (k) => `${k}${'q'.repeat(60)}`), null);
    await wal.sync();
  }
  t.ok(segs(dir).length >= 2);
  wal.markSnapshot(1, meta(10, 1));
  t.equal(await wal.compact(), 1, 'the first segment held only 1..10 live plus 11..30 overwritten');
  await wal.close();
  const again = await Wal.open(dir, small);
  const r = again.recovered().get(1)!;
  t.equal(r.entries[0]!.index, 11);
  t.equal(r.entries.length, 30);
  t.ok(r.entries.every((e) => e.term === 2));
  await again.close();
});

t.test('group commit: many concurrent callers share few fdatasyncs and each resolves once its bytes are durable', async (t) => {
  const dir = tempDir(t);
  const wal = await Wal.open(dir, opts({ fsync: 'batch' }));
  const proposers = 64;
  const rounds = 8;
  let violations = 0;
  let calls = 0;
  const next = new Map<number, number>();
  await Promise.all(
    Array.from({ length: proposers }, async (_, p) => {
      for (let r = 0; r < rounds; r++) {
        const g = p % 16;
        const i = (next.get(g) ?? 0) + 1;
        next.set(g, i);
        wal.append(g, [entry(i, 1, `p${p}r${r}`)], { term: 1, vote: 0, commit: i - 1 });
        const mark = wal.stats.bytesAppended;
        calls++;
        await wal.sync();
        if (wal.stats.bytesDurable < mark) violations++;
      }
    }),
  );
  t.equal(violations, 0, 'no caller resolved before its records were durable');
  t.ok(wal.stats.syncs * 4 <= calls, `fdatasyncs ${wal.stats.syncs} for ${calls} sync() calls`);
  await wal.close();
  const again = await Wal.open(dir, opts());
  let n = 0;
  for (const r of again.recovered().values()) n += r.entries.length;
  t.equal(n, proposers * rounds);
  await again.close();
});

t.test("fsync 'always' gives each sync() call with new records its own fdatasync", async (t) => {
  const dir = tempDir(t);
  const wal = await Wal.open(dir, opts({ fsync: 'always' }));
  const ps: Promise<void>[] = [];
  for (let i = 1; i <= 20; i++) {
    wal.append(1, [entry(i, 1)], null);
    ps.push(wal.sync());
  }
  ps.push(wal.sync()); // nothing new: waits for the last batch, no fdatasync of its own
  await Promise.all(ps);
  t.equal(wal.stats.syncs, 20);
  await wal.close();
});

t.test("fsync 'batch' coalesces every sync() call of one event-loop turn; 'never' does no fdatasync", async (t) => {
  const dir = tempDir(t);
  const wal = await Wal.open(dir, opts({ fsync: 'batch' }));
  const ps: Promise<void>[] = [];
  for (let i = 1; i <= 20; i++) {
    wal.append(1, [entry(i, 1)], null);
    ps.push(wal.sync());
  }
  await Promise.all(ps);
  t.equal(wal.stats.syncs, 1);
  t.equal(wal.stats.writes, 1);
  await wal.close();
  const dir2 = tempDir(t);
  const never = await Wal.open(dir2, opts({ fsync: 'never' }));
  never.append(1, [entry(1, 1)], null);
  await never.sync();
  t.equal(never.stats.syncs, 0);
  t.equal(never.stats.writes, 1);
  await never.close();
  const back = await Wal.open(dir2, opts());
  t.equal(back.recovered().get(1)!.entries.length, 1);
  await back.close();
});

t.test('option errors name the option', async (t) => {
  const dir = tempDir(t);
  await t.rejects(Wal.open(dir, opts({ limits: { segmentBytes: 10, recordBytesMax: 1024 } })), /segmentBytes/);
  await t.rejects(Wal.open(dir, opts({ limits: { segmentBytes: 4096, recordBytesMax: 10 } })), /recordBytesMax/);
  await t.rejects(Wal.open(dir, { limits, fsync: 'sometimes' as 'batch' }), /fsync/);
});

t.test('a failed write into the open segment (the blocking writev) rejects its callers and leaves the WAL failed', async (t) => {
  const dir = tempDir(t);
  const wal = await Wal.open(dir, opts());
  wal.append(1, [entry(1, 1, 'x')], null);
  await wal.sync();
  // Pull the open segment's descriptor out from under the WAL: its next writev fails (EBADF).
  const fh = (wal as unknown as { fh: { close(): Promise<void> } }).fh;
  await fh.close();
  wal.append(1, [entry(2, 1, 'y')], null);
  await t.rejects(wal.sync(), { code: 'WAL_FAILED' });
  t.throws(() => wal.append(1, [entry(3, 1)], null), { code: 'WAL_FAILED' });
  await wal.close().catch(() => undefined);
});

t.test('a failed write rejects the waiting callers and leaves the WAL failed', async (t) => {
  const dir = tempDir(t);
  const wal = await Wal.open(dir, opts({ limits: { segmentBytes: 1024, recordBytesMax: 1024 } }));
  wal.append(1, [entry(1, 1, 'x'.repeat(600))], null);
  await wal.sync();
  // The next batch must rotate; a file already holding the next segment's name makes the create fail.
  writeFileSync(path.join(dir, 'wal-0000000000000002.log'), 'in the way');
  wal.append(1, [entry(2, 1, 'y'.repeat(600))], null);
  const a = wal.sync();
  await t.rejects(a, { code: 'WAL_FAILED' });
  t.throws(() => wal.append(1, [entry(3, 1)], null), { code: 'WAL_FAILED' });
  await t.rejects(wal.sync(), { code: 'WAL_FAILED' });
  await wal.close();
});
