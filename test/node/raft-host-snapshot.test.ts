/**
 * RaftHost's snapshot trigger: after snapshotEntries applied entries, and (snapshotLogPercent) only once the entry
 * data applied since the last snapshot is that share of its size. A one-voter group on a real WAL and snapshot
 * store; its state machine keeps a large fixed state (16 KiB) plus a running sum, so small entries must not cause a
 * snapshot every snapshotEntries while large ones do. A restart recovers the state from snapshot + WAL either way.
 */
import t from 'tap';
import type { RaftHost, StateMachine } from '../../src/node/raft-host.js';
import type { Entry } from '../../src/raft/types.js';
import type { Wal } from '../../src/storage/wal.js';
import { openOneVoterHost, tempDir } from '../support/one-voter-host.js';

const STATE_BYTES = 16 * 1024;

/** A sum of the entries' sizes, carried in a snapshot of STATE_BYTES (or `stateBytes`). */
class Padded implements StateMachine {
  sum = 0;
  constructor(private readonly stateBytes = STATE_BYTES) {}
  apply(e: Entry): unknown {
    this.sum += e.data.length;
    return this.sum;
  }
  snapshot(): Uint8Array {
    const b = Buffer.alloc(this.stateBytes);
    b.writeUInt32LE(this.sum, 0);
    return b;
  }
  restore(data: Uint8Array): void {
    this.sum = Buffer.from(data).readUInt32LE(0);
  }
}

interface Opened {
  host: RaftHost;
  wal: Wal;
  sm: Padded;
  close(): Promise<void>;
}

async function open(dir: string, percent: number | undefined, o: { groups?: number[]; segmentBytes?: number; otherStateBytes?: number } = {}): Promise<Opened> {
  const sm = new Padded();
  const ids = o.groups ?? [1];
  const { host, wal, close } = await openOneVoterHost(dir, {
    groups: new Map(ids.map((id): [number, StateMachine] => [id, id === ids[0] ? sm : new Padded(o.otherStateBytes)])),
    tickMs: 5,
    heartbeatTicks: 1,
    electionTicksMin: 3,
    seed: 7,
    snapshotEntries: 10,
    ...(percent !== undefined ? { snapshotLogPercent: percent } : {}),
    ...(o.segmentBytes !== undefined ? { segmentBytes: o.segmentBytes } : {}),
  });
  return { host, wal, sm, close };
}

/** Proposes `n` entries of `bytes` bytes to `group`, one after another (each applied before the next). */
async function write(host: RaftHost, n: number, bytes: number, group = 1): Promise<void> {
  for (let i = 0; i < n; i++) await host.propose(group, Buffer.alloc(bytes, 1));
}

/** A snapshot is saved asynchronously after the round that triggered it. */
async function settle(): Promise<void> {
  await new Promise((r) => setTimeout(r, 100));
}

t.test('small entries: snapshots follow the log volume, not the entry count', async (t) => {
  const dir = tempDir(t, 'raft-host-snapshot-');
  const a = await open(dir, 100);
  await write(a.host, 200, 16);
  await settle();
  // 200 entries of 16 B = 3.2 KB of log, against a 16 KiB snapshot: the first snapshot (none before it) only.
  t.equal(a.host.stats.snapshotsTaken, 1, `one snapshot for 200 small entries (snapshotEntries 10, percent 100)`);
  await write(a.host, 20, 1024);
  await settle();
  t.ok(a.host.stats.snapshotsTaken >= 2, `once 16 KiB more were applied, another (${a.host.stats.snapshotsTaken} in all)`);
  const sum = a.sm.sum;
  await a.close();
  const b = await open(dir, 100);
  t.equal(b.sm.sum, sum, 'a restart recovers the state from the snapshot and the WAL after it');
  await b.close();
});

t.test('percent 0 (or unset): a snapshot every snapshotEntries entries, as before', async (t) => {
  const dir = tempDir(t, 'raft-host-snapshot-');
  const a = await open(dir, undefined);
  // One snapshot per 10 entries, but none while the previous one is still being saved (a slow save on a busy machine
  // could swallow a whole burst of writes): so write 10 at a time and let each save finish.
  for (let k = 1; k <= 4; k++) {
    await write(a.host, 10, 16);
    const deadline = performance.now() + 10_000;
    while (a.host.stats.snapshotsTaken < k && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  }
  t.equal(a.host.stats.snapshotsTaken, 4, '4 snapshots for 40 small entries, one per 10 (percent 100 took 1 for 200)');
  const sum = a.sm.sum;
  await a.close();
  const b = await open(dir, 0);
  t.equal(b.sm.sum, sum, 'recovered');
  await b.close();
});

t.test('a quiet group that pins the oldest WAL segment is snapshotted, so the WAL stays bounded', async (t) => {
  const dir = tempDir(t, 'raft-host-snapshot-');
  // Group 2 gets 3 entries and goes quiet: far below snapshotEntries (10). Group 1 then writes ~40 segments.
  const a = await open(dir, 100, { groups: [1, 2], segmentBytes: 16 * 1024 });
  await write(a.host, 3, 64, 2);
  await write(a.host, 320, 2048, 1);
  // The pin check runs every 100 ticks (5 ms here); compaction follows the snapshot's save.
  const deadline = performance.now() + 10_000;
  while (a.wal.stats.segments > 4 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.ok(a.host.stats.snapshotsToUnpin >= 1, `the quiet group was snapshotted to unpin the oldest segment (${a.host.stats.snapshotsToUnpin} times)`);
  t.ok(a.wal.stats.segments <= 4, `the WAL holds ${a.wal.stats.segments} segments after ~40 were written (${a.wal.stats.segmentsDeleted} deleted)`);
  const sums = [a.sm.sum];
  await a.close();
  const b = await open(dir, 100, { groups: [1, 2], segmentBytes: 16 * 1024 });
  t.equal(b.sm.sum, sums[0], 'a restart recovers group 1');
  await b.host.readBarrier(2);
  t.equal(await b.host.propose(2, Buffer.alloc(1)), 3 * 64 + 1, 'and group 2 (its 3 entries came back from its snapshot)');
  await b.close();
});

t.test('a quiet group with a large state is snapshotted to unpin the WAL only once the WAL it holds is that large', async (t) => {
  const dir = tempDir(t, 'raft-host-snapshot-');
  // Group 2's snapshots are 192 KiB (12 segments of 16 KiB): encoding one costs in proportion, and its writes wait
  // for the encode, so it is forced only once the segments held back reach 100% of that (snapshotLogPercent).
  const big = 192 * 1024;
  const a = await open(dir, 100, { groups: [1, 2], segmentBytes: 16 * 1024, otherStateBytes: big });
  await write(a.host, 10, 64, 2); // its first snapshot (snapshotEntries 10)
  const deadline0 = performance.now() + 10_000;
  while (a.host.stats.snapshotsTaken < 1 && performance.now() < deadline0) await new Promise((r) => setTimeout(r, 5));
  t.equal(a.host.stats.snapshotsTaken, 1, 'group 2 took its own first snapshot');
  await write(a.host, 3, 64, 2); // below its thresholds: these pin the segment they are in
  await write(a.host, 40, 2048, 1); // about 5 segments: less than 192 KiB held back
  await new Promise((r) => setTimeout(r, 1500)); // three pin checks (every 100 ticks of 5 ms)
  t.equal(a.host.stats.snapshotsToUnpin, 0, `not forced while the WAL held back (${a.wal.closedSegmentBytes()} B) is below its state (${big} B)`);
  await write(a.host, 240, 2048, 1); // about 30 more segments
  const deadline = performance.now() + 10_000;
  while (a.wal.stats.segments > 16 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 600)); // one more pin check
  const forced = a.host.stats.snapshotsToUnpin;
  t.ok(forced >= 1 && forced <= 4, `forced ${forced} times for ~35 segments written (once per ${big / 1024} KiB held, not per segment)`);
  t.ok(a.wal.stats.segments <= big / (16 * 1024) + 4, `the WAL stays bounded by about that: ${a.wal.stats.segments} segments (${a.wal.stats.segmentsDeleted} deleted)`);
  const sum = a.sm.sum;
  await a.close();
  const b = await open(dir, 100, { groups: [1, 2], segmentBytes: 16 * 1024, otherStateBytes: big });
  t.equal(b.sm.sum, sum, 'a restart recovers group 1');
  await b.host.readBarrier(2);
  t.equal(await b.host.propose(2, Buffer.alloc(1)), 13 * 64 + 1, 'and group 2');
  await b.close();
});
