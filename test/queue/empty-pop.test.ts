/**
 * popFindsNothing (src/queue/queue-entries.ts): the leader answers a pop that finds nothing after a read barrier,
 * without a log entry. That is only sound if every pop the predicate accepts, applied as an entry, would answer an
 * empty array and leave the state as it was (apart from the clock it advances). This drives a QueueState through
 * random entries (pushes, pops, acks, nacks, expiries, list pops, creates with a low MAXDELIVER, a low in-flight
 * limit) and, before each, asks the predicate about a random pop, applies that pop to a copy and compares.
 */
import { Packr } from 'msgpackr';
import t from 'tap';
import { ReplyRecorder } from '../../src/cluster/keyspace-reply.js';
import { recordValue } from '../../src/cluster/record-value.js';
import {
  applyQueueWrite,
  popFindsNothing,
  Q_ACK,
  Q_CREATE,
  Q_LPOP,
  Q_NACK,
  Q_POP,
  Q_PUSH,
  Q_RPOP,
  type QueueApplyNote,
} from '../../src/queue/queue-entries.js';
import { QueueState, type QueueLimits } from '../../src/queue/queue-state.js';
import { createRng, type Rng } from '../../src/util/rng.js';

const T0 = 1_700_000_000_000;
const B = (s: string | number): Buffer => Buffer.from(String(s), 'latin1');
const LIMITS: Partial<QueueLimits> = { inflightPerConsumerMax: 3 };
const unpackr = new Packr({ useRecords: false });
const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[rng.int(0, xs.length)]!;

/** The snapshot without its clock fields (['LKQS', version, lastStampMs, lastIndex, partitions]). */
function stateOf(s: QueueState): unknown {
  const v = unpackr.unpack(s.snapshot()) as unknown[];
  return [v[0], v[1], v[4]];
}

function copy(s: QueueState): QueueState {
  const c = new QueueState(LIMITS);
  c.restore(s.snapshot());
  return c;
}

function apply(s: QueueState, stamp: number, index: number, args: Buffer[]): unknown {
  const rec = new ReplyRecorder();
  const note: QueueApplyNote = { readyKey: '' };
  applyQueueWrite(s, stamp, index, args, rec, note);
  return recordValue(rec.take());
}

function randomPop(rng: Rng): Buffer[] {
  const q = B(pick(rng, ['a', 'b', 'unknown']));
  const p = B(rng.chance(0.05) ? 99_999_999 : rng.int(0, 2));
  const count = B(rng.chance(0.05) ? -1 : rng.int(0, 4));
  const kind = rng.int(0, 4);
  if (kind === 0) return [B(Q_LPOP), q, p, count, B(0)];
  if (kind === 1) return [B(Q_RPOP), q, p, count, B(0)];
  const vis = rng.chance(0.5) ? B('') : B(rng.chance(0.05) ? 0 : rng.int(1, 5000));
  return [B(Q_POP), q, p, B(`c${rng.int(0, 3)}`), count, vis, B(0)];
}

function randomEntry(rng: Rng, ids: string[]): Buffer[] {
  const q = B(pick(rng, ['a', 'b']));
  const p = B(rng.int(0, 2));
  switch (rng.int(0, 6)) {
    case 0:
    case 1:
      return [B(Q_PUSH), q, p, B(`m${rng.int(0, 1000)}`), B(''), B(rng.chance(0.2) ? rng.int(1, 3000) : 0)];
    case 2:
      return randomPop(rng);
    case 3:
      return [B(Q_ACK), q, p, B(ids.length > 0 ? pick(rng, ids) : '1-0')];
    case 4:
      return [B(Q_NACK), q, p, B(ids.length > 0 ? pick(rng, ids) : '1-0'), B(rng.chance(0.5) ? 0 : rng.int(1, 2000))];
    default:
      return [B(Q_CREATE), q, B(2), B(2), B(rng.int(1, 4)), B(''), B('')];
  }
}

t.test('every pop the predicate accepts answers an empty array and changes nothing', async (t) => {
  const rng = createRng(20261122);
  let accepted = 0;
  let refusedButEmpty = 0;
  let refused = 0;
  for (let run = 0; run < 40; run++) {
    const s = new QueueState(LIMITS);
    let index = 0;
    let now = T0;
    const ids: string[] = [];
    for (let step = 0; step < 150; step++) {
      now += rng.int(0, 400);
      // Expiries the leader would propose by now.
      const due = s.planExpiry(now, 1000);
      if (due.length > 0) s.expire(now, ++index, due);
      const pop = randomPop(rng);
      const before = stateOf(s);
      const c = copy(s);
      const reply = apply(c, now, index + 1, pop);
      const unchanged = JSON.stringify(stateOf(c)) === JSON.stringify(before);
      if (popFindsNothing(s, pop)) {
        accepted++;
        if (!(Array.isArray(reply) && reply.length === 0) || !unchanged) {
          t.fail(`run ${run} step ${step}: accepted ${pop.map(String).join(' ')} but apply answered ${JSON.stringify(reply)}, state ${unchanged ? 'unchanged' : 'changed'}`);
          return;
        }
      } else {
        refused++;
        if (Array.isArray(reply) && reply.length === 0 && unchanged) refusedButEmpty++;
      }
      const e = randomEntry(rng, ids);
      const r = apply(s, now, ++index, e);
      if (e[0]!.toString() === Q_PUSH && Buffer.isBuffer(r)) ids.push(r.toString());
      if (e[0]!.toString() === Q_POP && Array.isArray(r)) for (const d of r) if (Array.isArray(d) && Buffer.isBuffer(d[0])) ids.push(d[0].toString());
    }
  }
  t.ok(accepted > 500, `the predicate accepted ${accepted} pops, each checked against apply`);
  t.ok(refused > 500, `and refused ${refused} (of which ${refusedButEmpty} would have been empty too: it is conservative)`);
});

t.test('the cases, one by one', async (t) => {
  const s = new QueueState(LIMITS);
  const pop = (consumer: string, count: number, q = 'a', p = 0, vis = ''): Buffer[] => [B(Q_POP), B(q), B(p), B(consumer), B(count), B(vis), B(0)];
  t.ok(popFindsNothing(s, pop('c', 1)), 'unknown queue');
  apply(s, T0, 1, [B(Q_PUSH), B('a'), B(0), B('x'), B(''), B(0)]);
  t.notOk(popFindsNothing(s, pop('c', 1)), 'a ready message');
  t.ok(popFindsNothing(s, pop('c', 0)), 'count 0');
  t.ok(popFindsNothing(s, pop('c', 1, 'a', 1)), 'another partition, not created');
  t.notOk(popFindsNothing(s, pop('c', 1, 'a', 99_999_999)), 'a partition number out of range: apply answers the error');
  t.notOk(popFindsNothing(s, pop('c', 1, 'a', 0, '0')), 'visibility 0: apply answers the error');
  t.notOk(popFindsNothing(s, [B(Q_LPOP), B('a'), B(0), B(1), B(0)]), 'LPOP of a list with a value');
  t.ok(popFindsNothing(s, [B(Q_RPOP), B('b'), B(0), B(1), B(0)]), 'RPOP of a missing list');
  for (let i = 0; i < 3; i++) apply(s, T0, 2 + i, [B(Q_PUSH), B('a'), B(0), B(`y${i}`), B(''), B(0)]);
  apply(s, T0, 10, pop('c', 3));
  t.notOk(popFindsNothing(s, pop('c', 1)), 'one still ready');
  apply(s, T0, 11, pop('d', 3));
  t.ok(popFindsNothing(s, pop('d', 1)), 'nothing ready, consumer below its in-flight limit');
  t.notOk(popFindsNothing(s, pop('c', 1)), 'consumer at its in-flight limit (3): apply answers an error');
  t.notOk(popFindsNothing(s, [B(Q_ACK), B('a'), B(0), B('1-0')]), 'not a pop');
});
