/**
 * RaftHost with a state machine that encodes its snapshot in steps (StateMachine.snapshotSteps): the encode is
 * spread over event-loop turns, entries committed meanwhile are applied only after it, in order, and the snapshot
 * holds the state at the index where it began. A one-voter group on a real WAL and snapshot store.
 */
import t from 'tap';
import type { StateMachine } from '../../src/node/raft-host.js';
import type { Entry } from '../../src/raft/types.js';
import { runSteps, type Steps } from '../../src/util/steps.js';
import { openOneVoterHost, tempDir } from '../support/one-voter-host.js';
import { electNode1, startCluster, waitFor } from '../support/raft-host-cluster.js';

const STEPS = 12;
const STEP_BUSY_MS = 3;

/** The entries' first bytes in apply order; a snapshot is that list, encoded in STEPS steps of STEP_BUSY_MS each. */
class Stepped implements StateMachine {
  values: number[] = [];
  encodes = 0;
  /** Set when apply ran while an encode was between two steps (the host must prevent it). */
  appliedDuringEncode = false;
  /** The step at which a setImmediate callback queued at the encode's first step ran (-1: not yet). */
  immediateRanAtStep = -1;
  private encoding = false;
  private step = 0;
  apply(e: Entry): unknown {
    if (this.encoding) this.appliedDuringEncode = true;
    this.values.push(e.data[0]!);
    return this.values.length;
  }
  snapshot(): Uint8Array {
    return runSteps(this.snapshotSteps());
  }
  *snapshotSteps(): Steps<Uint8Array> {
    this.encoding = true;
    const at = [...this.values];
    this.immediateRanAtStep = -1;
    setImmediate(() => (this.immediateRanAtStep = this.step));
    for (let i = 0; i < STEPS; i++) {
      this.step = i;
      const until = performance.now() + STEP_BUSY_MS;
      while (performance.now() < until) {
        // busy: a slice of a large encode
      }
      yield;
    }
    this.encoding = false;
    this.encodes++;
    return Buffer.from(at);
  }
  restore(data: Uint8Array): void {
    this.values = [...data];
  }
}

t.test('an encode in steps spans turns; entries committed meanwhile apply after it, in order; restart recovers', async (t) => {
  const dir = tempDir(t, 'raft-host-steps-');
  const open = async (sm: Stepped) =>
    openOneVoterHost(dir, { groups: new Map([[1, sm]]), tickMs: 5, heartbeatTicks: 1, electionTicksMin: 3, seed: 7, snapshotEntries: 10, snapshotLogPercent: 0 });
  const sm = new Stepped();
  const a = await open(sm);
  for (let i = 1; i <= 10; i++) await a.host.propose(1, Buffer.from([i]));
  // The tenth entry's round started the encode (snapshotEntries 10); it is still running.
  const during = await Promise.all([11, 12, 13, 14, 15].map((v) => a.host.propose(1, Buffer.from([v]))));
  t.same(during, [11, 12, 13, 14, 15], 'the entries proposed during the encode were applied in order, each with its result');
  t.notOk(sm.appliedDuringEncode, 'nothing was applied while the encode was between two steps');
  t.equal(sm.encodes, 1);
  t.ok(a.host.stats.snapshotEncodeTurns >= 2, `the encode took ${a.host.stats.snapshotEncodeTurns} event-loop turns`);
  t.ok(sm.immediateRanAtStep >= 0 && sm.immediateRanAtStep < STEPS - 1, `a callback queued at its first step ran before its last (at step ${sm.immediateRanAtStep} of ${STEPS})`);
  t.ok(a.host.stats.snapshotEncodeMaxMs < STEPS * STEP_BUSY_MS, `the longest hold (${a.host.stats.snapshotEncodeMaxMs.toFixed(1)} ms) was less than the whole encode (${a.host.stats.snapshotEncodeMs.toFixed(1)} ms)`);
  await new Promise((r) => setTimeout(r, 100)); // the snapshot is saved after the encode
  t.equal(a.host.stats.snapshotsTaken, 1);
  t.same(sm.values, Array.from({ length: 15 }, (_, i) => i + 1));
  await a.close();
  const sm2 = new Stepped();
  const b = await open(sm2);
  t.same(sm2.values, Array.from({ length: 15 }, (_, i) => i + 1), 'a restart: the snapshot (entries 1-10) plus the WAL after it');
  await b.close();
});

/** Counts its entries; on node 3 its snapshot is slow (STEPS_SLOW steps of SLOW_STEP_MS), elsewhere one step. */
class SlowOnThree implements StateMachine {
  count = 0;
  started = false;
  finished = false;
  restored = false;
  appliedDuringEncode = false;
  private encoding = false;
  constructor(private readonly steps: number) {}
  apply(): unknown {
    if (this.encoding) this.appliedDuringEncode = true;
    return ++this.count;
  }
  snapshot(): Uint8Array {
    return runSteps(this.snapshotSteps());
  }
  *snapshotSteps(): Steps<Uint8Array> {
    this.encoding = true;
    this.started = true;
    const at = this.count;
    for (let i = 0; i < this.steps; i++) {
      const until = performance.now() + SLOW_STEP_MS;
      while (performance.now() < until) {
        // a slice of a large encode
      }
      yield;
    }
    this.encoding = false;
    this.finished = true;
    return Buffer.from(String(at));
  }
  restore(data: Uint8Array): void {
    this.encoding = false; // an encode in progress was dropped for this snapshot
    this.restored = true;
    this.count = Number(Buffer.from(data).toString());
  }
}

const STEPS_SLOW = 1500;
const SLOW_STEP_MS = 2;

t.test("a snapshot from the leader replaces a follower's encode in progress; the follower then catches up", async (t) => {
  const c = await startCluster<SlowOnThree>(t, {
    groups: [0],
    tickMs: 10,
    heartbeatTicks: 2,
    electionTicksMin: 20,
    fsync: 'never',
    seed: 5,
    machine: (node) => new SlowOnThree(node === 3 ? STEPS_SLOW : 0),
    snapshotEntries: 10,
  });
  await electNode1(c, [0]);
  const leader = c.node(1).host;
  const m1 = c.node(1).machines.get(0)!;
  const m3 = c.node(3).machines.get(0)!;
  for (let i = 0; i < 20 && !m3.started; i++) await leader.propose(0, Buffer.from([1]));
  await waitFor(() => m3.started, 'node 3 started its (slow) encode');
  // Node 3 hears nothing from the leader while the others go on and the leader snapshots and compacts its log.
  c.pass = (from, m) => !(from === 1 && m.to === 3);
  const before = leader.stats.snapshotsTaken;
  for (let i = 0; i < 40; i++) await leader.propose(0, Buffer.from([1]));
  await waitFor(() => leader.stats.snapshotsTaken >= before + 2, 'the leader took two more snapshots');
  await new Promise((r) => setTimeout(r, 100)); // and compacted its log (between rounds)
  t.notOk(m3.finished, "node 3's encode is still running");
  c.pass = null;
  await waitFor(() => m3.restored, "node 3 installed the leader's snapshot");
  t.notOk(m3.finished, 'which replaced the encode in progress (it never finished)');
  await leader.propose(0, Buffer.from([1]));
  await waitFor(() => m3.count === m1.count, 'node 3 caught up');
  t.equal(m3.count, m1.count, `node 3 applied the entries after the snapshot (${m3.count} in all)`);
  t.notOk(m3.appliedDuringEncode, 'and nothing while its encode was between two steps');
  await waitFor(() => c.node(3).host.appliedIndex(0) === leader.appliedIndex(0), 'node 3 applied up to the leader');
  t.pass(`applied index ${leader.appliedIndex(0)} on both`);
  t.notOk(m3.finished, 'the dropped encode did not run on (entries applied at once, not after it)');
});
