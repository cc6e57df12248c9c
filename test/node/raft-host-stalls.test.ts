/**
 * RaftHost reports what makes a leader fall silent: a gap between ticks (the thread was busy elsewhere) and a slow
 * snapshot encode are counted, measured and logged as warnings; leadership changes are counted and logged. A
 * one-voter group on a real WAL and snapshot store; the "busy elsewhere" is a busy loop on this thread, and the slow
 * encode is a state machine whose snapshot() takes a set time.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { StateMachine } from '../../src/node/raft-host.js';
import type { Entry } from '../../src/raft/types.js';
import { openOneVoterHost, tempDir } from '../support/one-voter-host.js';

const TICK_MS = 5;
const ELECTION_TICKS = 8; // election timeout 40 ms: stalls of 20 ms or more are reported
const ENCODE_MS = 60;

function busy(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // the thread is held, as by a long apply or a snapshot encode
  }
}

class SlowSnapshot implements StateMachine {
  n = 0;
  apply(_e: Entry): unknown {
    return ++this.n;
  }
  snapshot(): Uint8Array {
    busy(ENCODE_MS);
    const b = Buffer.alloc(8);
    b.writeUInt32LE(this.n, 0);
    return b;
  }
  restore(data: Uint8Array): void {
    this.n = Buffer.from(data).readUInt32LE(0);
  }
}

t.test('tick gaps, slow snapshot encodes and leadership changes are counted and logged', async (t) => {
  const dir = tempDir(t, 'lockstep-stalls-');
  const lines: { level: number; msg: string; [k: string]: unknown }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim() !== '') lines.push(JSON.parse(l));
      cb();
    },
  });
  const logger = pino({ level: 'info' }, sink);
  const { host, close } = await openOneVoterHost(dir, {
    groups: new Map([[1, new SlowSnapshot()]]),
    tickMs: TICK_MS,
    heartbeatTicks: 2,
    electionTicksMin: ELECTION_TICKS,
    seed: 3,
    logger,
    snapshotEntries: 20,
  });
  t.teardown(close);
  const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
  // Stall warnings are rate-limited to one a second: start from a quiet second (start-up may have had a short one).
  await wait(1_100);
  t.equal(host.stats.leaderships, 1, 'one leadership counted');
  t.ok(lines.some((l) => l.msg === 'leading group' && l.group === 1), 'and logged at info');
  t.equal(host.stats.stepDowns, 0, 'no step-down');
  const stallsBefore = host.stats.stalls;

  busy(120);
  await wait(3 * TICK_MS);
  t.ok(host.stats.tickGapMaxMs >= 120, `the 120 ms the thread was held shows as a tick gap (${host.stats.tickGapMaxMs.toFixed(1)} ms)`);
  t.ok(host.stats.stalls > stallsBefore, 'counted as a stall');
  const stallLog = lines.find((l) => l.msg.startsWith('raft ticks stalled') && (l.gapMs as number) >= 120);
  t.ok(stallLog !== undefined && stallLog.level === 40, 'logged as a warning with its length');

  // Enough entries for a snapshot, whose encode takes ENCODE_MS.
  for (let i = 0; i < 25; i++) await host.propose(1, Buffer.from(`e${i}`));
  const until = performance.now() + 5_000;
  while (host.stats.snapshotsTaken === 0 && performance.now() < until) await wait(5);
  t.ok(host.stats.snapshotsTaken >= 1, 'a snapshot was taken');
  t.ok(host.stats.snapshotEncodeMaxMs >= ENCODE_MS, `its encode time was measured (${host.stats.snapshotEncodeMaxMs.toFixed(1)} ms)`);
  const snapLog = lines.find((l) => l.msg.startsWith('snapshot encode held the thread'));
  t.ok(snapLog !== undefined && snapLog.group === 1 && (snapLog.ms as number) >= ENCODE_MS, 'and logged as a warning naming the group');
});
