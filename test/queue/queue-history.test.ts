/**
 * Tests of the queue-history checker (test/support/queue-history.ts): hand-written histories that must pass or must
 * fail with a named violation kind, and randomized histories produced by a tiny queue model (one FIFO partition,
 * visibility timeouts, nack, maxDeliver, dedup, pushes and pops whose replies are lost, acks of several ids) driven
 * by a seeded PRNG: valid ones must pass with their final state, and the same histories with one injected fault
 * (an acked message delivered again, a message lost, a duplicate copy, a reordered first delivery) must fail.
 * Pure: no sockets, no timers; the whole file runs in well under a second.
 */
import t from 'tap';
import { createRng, type Rng } from '../../src/util/rng.js';
import {
  checkQueueHistory,
  QueueHistory,
  type AckOp,
  type CheckOptions,
  type DeadLetter,
  type Delivered,
  type FinalState,
  type NackOp,
  type PopOp,
  type PushOp,
  type QueueOp,
} from '../support/queue-history.js';

const MAXD = 3;

function push(producer: string, payload: string, sentAt: number, doneAt: number, result: string | { error: string }, key: string | null = null, dedup: string | null = null): PushOp {
  return { kind: 'push', producer, key, dedup, payload, sentAt, doneAt, result: typeof result === 'string' ? { id: result } : result };
}
const dl = (id: string, payload: string, deliveries: number): Delivered => ({ id, payload, deliveries });
function pop(consumer: string, sentAt: number, doneAt: number, result: Delivered[] | { error: string }, visibilityMs: number | null = 100): PopOp {
  return { kind: 'pop', consumer, visibilityMs, sentAt, doneAt, result };
}
function ack(consumer: string, ids: string[], sentAt: number, doneAt: number, result: number | { error: string }): AckOp {
  return { kind: 'ack', consumer, ids, sentAt, doneAt, result };
}
function nack(consumer: string, id: string, sentAt: number, doneAt: number, result: 0 | 1 | { error: string }): NackOp {
  return { kind: 'nack', consumer, id, delayMs: 0, sentAt, doneAt, result };
}
const ERR = { error: 'TRYAGAIN no leader' };
const empty = (dead: DeadLetter[] = []): FinalState => ({ ready: 0, inflight: 0, delayed: 0, dead: dead.length, deadLetters: dead });

function check(ops: QueueOp[], opts: Partial<CheckOptions> = {}) {
  const h = new QueueHistory();
  for (const op of ops) h.record(op);
  return checkQueueHistory(h.ops, { maxDeliver: MAXD, ...opts });
}
/** The distinct violation kinds of a report, sorted. */
function kinds(r: { violations: string[] }): string[] {
  return [...new Set(r.violations.map((x) => /^\[([a-z-]+)\]/.exec(x)?.[1] ?? x))].sort();
}

t.test('valid: push, pop on two consumers, ack; final counts reconcile', async (t) => {
  const r = check(
    [
      push('p', 'a', 0, 1, '10-0', 'k'),
      push('p', 'b', 2, 3, '11-0', 'k'),
      push('p', 'c', 4, 5, '12-0', 'k'),
      pop('c1', 6, 7, [dl('10-0', 'a', 1), dl('11-0', 'b', 1)]),
      pop('c2', 6.5, 8, [dl('12-0', 'c', 1)]), // overlaps c1's pop: no order is implied between them
      ack('c1', ['10-0', '11-0'], 9, 10, 2),
      ack('c2', ['12-0'], 9, 10, 1),
      pop('c2', 11, 12, []),
    ],
    { final: empty(), visibilitySlackMs: 0 },
  );
  t.same(r.violations, []);
  t.ok(r.ok);
  t.match(r.stats, { messages: 3, pushesAcked: 3, deliveries: 3, redeliveries: 0, acked: 3, orderChecked: 2, dead: 0 });
});

t.test('valid: visibility redelivery, nack, dead letter, dedup retry, unknown push that landed, lost pop reply', async (t) => {
  const ops: QueueOp[] = [
    // a: delivered, not acked in time (visibility 100), redelivered with count 2, acked.
    push('p', 'a', 0, 1, '10-0'),
    pop('c1', 2, 3, [dl('10-0', 'a', 1)]),
    pop('c2', 110, 111, [dl('10-0', 'a', 2)]),
    ack('c1', ['10-0'], 112, 113, 1), // the late ack of c1 acks c2's delivery: acks are by id
    // b: TRYAGAIN then the retry with the same DEDUP id answers the first id.
    push('p', 'b', 120, 121, ERR, null, 'd-b'),
    push('p', 'b', 125, 126, '20-0', null, 'd-b'),
    // a pop whose reply was lost delivered b once (count 1 never seen); nacked redelivery; dies after MAXD.
    pop('c3', 127, 140, ERR),
    pop('c1', 240, 241, [dl('20-0', 'b', 2)]),
    nack('c1', '20-0', 242, 243, 1),
    pop('c2', 244, 245, [dl('20-0', 'b', 3)]),
    nack('c2', '20-0', 246, 247, 1), // third return: dead
    // c: push answered an error, but it landed: delivered under an id nobody was told.
    push('q', 'c', 250, 260, ERR, 'k2', 'd-c'),
    pop('c1', 261, 262, [dl('30-0', 'c', 1)]),
    ack('c1', ['30-0'], 263, 264, { error: 'connection closed' }), // unknown outcome: it was acked after all
    // d: never pushed successfully and never seen.
    push('q', 'd', 270, 280, ERR, 'k2', 'd-d'),
  ];
  const r = check(ops, { final: empty([{ id: '20-0', payload: 'b', deliveries: 3, reason: 'maxdeliver' }]), visibilitySlackMs: 0 });
  t.same(r.violations, []);
  t.match(r.stats, { messages: 4, pushesAcked: 2, pushesUnknown: 2, unknownLanded: 1, dedupRetriesAnswered: 1, deliveries: 5, redeliveries: 3, acked: 1, ackUncertain: 1, nacks: 2, dead: 1, popErrors: 1 });
});

t.test('valid: a message observed at maxDeliver and then acked in time is not dead', async (t) => {
  const ops: QueueOp[] = [
    push('p', 'a', 0, 1, '10-0'),
    pop('c', 2, 3, [dl('10-0', 'a', 1)]),
    nack('c', '10-0', 4, 5, 1),
    pop('c', 6, 7, [dl('10-0', 'a', 2)]),
    nack('c', '10-0', 8, 9, 1),
    pop('c', 10, 11, [dl('10-0', 'a', 3)]),
    ack('c', ['10-0'], 12, 13, 1),
  ];
  t.same(check(ops, { final: empty(), visibilitySlackMs: 0 }).violations, []);
});

t.test('valid: not drained yet; the remaining messages explain the counts', async (t) => {
  const ops: QueueOp[] = [push('p', 'a', 0, 1, '10-0'), push('p', 'b', 2, 3, '11-0'), pop('c', 4, 5, [dl('10-0', 'a', 1)])];
  t.same(check(ops.slice(0, 1).concat(ops.slice(2)), { final: { ready: 0, inflight: 1, delayed: 0, dead: 0, deadLetters: [] } }).violations, [], 'a in flight');
  // b was never delivered: at least once fails, counts do not (b is still ready).
  t.same(kinds(check(ops, { final: { ready: 1, inflight: 1, delayed: 0, dead: 0, deadLetters: [] } })), ['lost']);
  // Without b on the server the counts fail too.
  t.same(kinds(check(ops, { final: { ready: 0, inflight: 1, delayed: 0, dead: 0, deadLetters: [] } })), ['lost', 'reconcile']);
});

t.test('invalid: an acknowledged push never delivered', async (t) => {
  const r = check([push('p', 'a', 0, 1, '10-0'), push('p', 'b', 2, 3, '11-0'), pop('c', 4, 5, [dl('10-0', 'a', 1)]), ack('c', ['10-0'], 6, 7, 1)], { final: empty() });
  t.same(kinds(r), ['lost', 'reconcile']);
  t.match(r.violations.join('\n'), /11-0 "b" was pushed .* but never delivered/);
});

t.test('invalid: dedup retries that added a second message', async (t) => {
  const twoIds = check([push('p', 'a', 0, 1, ERR, null, 'x'), push('p', 'a', 2, 3, '10-0', null, 'x'), push('p', 'a', 4, 5, '12-0', null, 'x')]);
  t.ok(twoIds.violations.some((x) => /^\[dedup\] two ids for one message "a" \(DEDUP x\)/.test(x)), 'two ids for one dedup id');
  // The first attempt landed (and was delivered) under an id nobody was told; the retry added a second copy.
  const copy = check([
    push('p', 'a', 0, 1, ERR, null, 'x'),
    push('p', 'a', 2, 3, '12-0', null, 'x'),
    pop('c', 4, 5, [dl('10-0', 'a', 1), dl('12-0', 'a', 1)]),
    ack('c', ['10-0', '12-0'], 6, 7, 2),
  ]);
  t.same(kinds(copy), ['dedup']);
  t.match(copy.violations[0], /delivered again under a second id 10-0/);
});

t.test('invalid: phantom deliveries and ids given to two payloads', async (t) => {
  t.same(kinds(check([push('p', 'a', 0, 1, '10-0'), pop('c', 2, 3, [dl('10-0', 'a', 1), dl('11-0', 'zzz', 1)])])), ['phantom']);
  t.same(kinds(check([push('p', 'a', 0, 1, '10-0'), push('p', 'b', 0, 1, '11-0'), pop('c', 2, 3, [dl('10-0', 'b', 1)])])), ['lost', 'phantom']);
  t.same(kinds(check([push('p', 'a', 0, 1, '10-0'), push('p', 'b', 2, 3, '10-0'), pop('c', 4, 5, [dl('10-0', 'a', 1)])])), ['identity']);
  const dead = check([push('p', 'a', 0, 1, '10-0'), pop('c', 4, 5, [dl('10-0', 'a', 1)])], { final: empty([{ id: '99-0', payload: 'nope', deliveries: MAXD, reason: 'maxdeliver' }]) });
  t.ok(dead.violations.some((x) => x.startsWith('[phantom] dead letter 99-0')));
});

t.test('invalid: an acked message comes back', async (t) => {
  const again = check([
    push('p', 'a', 0, 1, '10-0'),
    pop('c1', 2, 3, [dl('10-0', 'a', 1)]),
    ack('c1', ['10-0', '11-0'], 4, 5, 2),
    push('p', 'b', 0.5, 1, '11-0'),
    pop('c1', 2, 3, [dl('11-0', 'b', 1)]),
    pop('c2', 200, 201, [dl('10-0', 'a', 2)]),
  ]);
  t.same(kinds(again), ['acked-returned']);
  const overlap = check([push('p', 'a', 0, 1, '10-0'), pop('c1', 2, 3, [dl('10-0', 'a', 1)]), ack('c1', ['10-0'], 100, 105, 1), pop('c2', 104, 106, [dl('10-0', 'a', 2)])], { visibilitySlackMs: 0 });
  t.same(overlap.violations, [], 'a redelivery racing the ack is not proof (the ack may have acked the redelivery)');
  const deadAfterAck = check([push('p', 'a', 0, 1, '10-0'), pop('c1', 2, 3, [dl('10-0', 'a', 1)]), ack('c1', ['10-0'], 4, 5, 1)], {
    final: empty([{ id: '10-0', payload: 'a', deliveries: MAXD, reason: 'maxdeliver' }]),
  });
  t.ok(deadAfterAck.violations.some((x) => /^\[acked-returned\] .* is a dead letter/.test(x)));
  // A partial multi-id ack is no proof for either id.
  const partial = check([
    push('p', 'a', 0, 1, '10-0'),
    push('p', 'b', 0, 1, '11-0'),
    pop('c1', 2, 3, [dl('10-0', 'a', 1), dl('11-0', 'b', 1)]),
    ack('c1', ['10-0', '11-0'], 200, 201, 1),
    pop('c2', 202, 203, [dl('10-0', 'a', 2)]),
    ack('c2', ['10-0'], 204, 205, 1),
  ], { final: empty() });
  t.same(partial.violations, []);
});

t.test('invalid: delivery counts repeat, go back, or pass maxDeliver', async (t) => {
  const base = [push('p', 'a', 0, 1, '10-0'), pop('c1', 2, 3, [dl('10-0', 'a', 1)])];
  t.same(kinds(check([...base, pop('c2', 200, 201, [dl('10-0', 'a', 1)])])), ['count']);
  t.same(kinds(check([...base, pop('c2', 200, 201, [dl('10-0', 'a', 3)]), pop('c2', 400, 401, [dl('10-0', 'a', 2)])])), ['count']);
  t.same(kinds(check([...base, pop('c2', 200, 201, [dl('10-0', 'a', MAXD + 1)])])), ['count']);
  t.same(kinds(check([...base, pop('c2', 2, 3, [dl('10-0', 'a', 2), dl('10-0', 'a', 3)])])), ['count'], 'one pop with one message twice');
});

t.test('invalid: redelivered before the visibility timeout without a nack', async (t) => {
  const early = [push('p', 'a', 0, 1, '10-0'), pop('c1', 2, 3, [dl('10-0', 'a', 1)], 1000), pop('c2', 500, 501, [dl('10-0', 'a', 2)])];
  t.same(kinds(check(early, { visibilitySlackMs: 50 })), ['visibility']);
  t.same(check(early).violations, [], 'check 5 is off without visibilitySlackMs');
  t.same(check([...early, nack('c1', '10-0', 400, 499, { error: 'timeout' })], { visibilitySlackMs: 50 }).violations, [], 'a (possible) nack in between explains it');
  t.same(check([push('p', 'a', 0, 1, '10-0'), pop('c1', 2, 3, [dl('10-0', 'a', 1)], 1000), pop('c2', 990, 1001, [dl('10-0', 'a', 2)])], { visibilitySlackMs: 50 }).violations, [], 'within the slack');
});

t.test('invalid: per-key order of first deliveries', async (t) => {
  const pushes = [push('p', 'a', 0, 1, '10-0', 'k'), push('p', 'b', 2, 3, '11-0', 'k')];
  const r = check([...pushes, pop('c2', 4, 5, [dl('11-0', 'b', 1)]), pop('c1', 6, 7, [dl('10-0', 'a', 1)])]);
  t.same(kinds(r), ['order']);
  t.same(kinds(check([...pushes, pop('c1', 4, 5, [dl('11-0', 'b', 1), dl('10-0', 'a', 1)])])), ['order'], 'reversed in one reply');
  t.same(check([...pushes, pop('c2', 4, 6, [dl('11-0', 'b', 1)]), pop('c1', 5, 7, [dl('10-0', 'a', 1)])]).violations, [], 'overlapping pops prove nothing');
  t.same(check([...pushes, pop('c2', 4, 5, [dl('11-0', 'b', 1)]), pop('c1', 6, 7, [dl('10-0', 'a', 2)])]).violations, [], 'a redelivery of a is not its first delivery');
  const otherKey = [push('p', 'a', 0, 1, '10-0', 'k'), push('p', 'b', 2, 3, '11-0', 'j')];
  t.same(check([...otherKey, pop('c2', 4, 5, [dl('11-0', 'b', 1)]), pop('c1', 6, 7, [dl('10-0', 'a', 1)])]).violations, [], 'different keys');
  const otherProducer = [push('p', 'a', 0, 1, '10-0', 'k'), push('q', 'b', 2, 3, '11-0', 'k')];
  t.same(check([...otherProducer, pop('c2', 4, 5, [dl('11-0', 'b', 1)]), pop('c1', 6, 7, [dl('10-0', 'a', 1)])]).violations, [], 'different producers');
  const unacked = [push('p', 'a', 0, 1, ERR, 'k', 'x'), push('p', 'b', 2, 3, '11-0', 'k')];
  t.same(check([...unacked, pop('c2', 4, 5, [dl('11-0', 'b', 1)]), pop('c1', 6, 7, [dl('10-0', 'a', 1)])]).violations, [], 'a push that was not acknowledged is not compared');
  const concurrent = [push('p', 'a', 0, 3, '10-0', 'k'), push('p', 'b', 2, 4, '11-0', 'k')];
  t.same(check([...concurrent, pop('c2', 5, 6, [dl('11-0', 'b', 1)]), pop('c1', 7, 8, [dl('10-0', 'a', 1)])]).violations, [], 'overlapping pushes have no order');
});

t.test('invalid: dead letters', async (t) => {
  const toDeath: QueueOp[] = [
    push('p', 'a', 0, 1, '10-0'),
    pop('c', 2, 3, [dl('10-0', 'a', 1)]),
    nack('c', '10-0', 4, 5, 1),
    pop('c', 6, 7, [dl('10-0', 'a', 2)]),
    nack('c', '10-0', 8, 9, 1),
    pop('c', 10, 11, [dl('10-0', 'a', 3)]),
    ack('c', ['10-0'], 500, 501, 0), // too late: the visibility lapsed and it died
  ];
  t.same(check(toDeath, { final: empty([{ id: '10-0', payload: 'a', deliveries: 3, reason: 'maxdeliver' }]) }).violations, []);
  const missing = check(toDeath, { final: empty() });
  t.same(kinds(missing), ['dead', 'lost', 'reconcile']);
  t.match(missing.violations.join('\n'), /maxDeliver-th time .* not a dead letter/);
  t.same(kinds(check(toDeath, { final: { ready: 0, inflight: 1, delayed: 0, dead: 0, deadLetters: [] } })), [], 'still in flight: not yet dead');
  const wrongCount = check(toDeath, { final: empty([{ id: '10-0', payload: 'a', deliveries: 2, reason: 'maxdeliver' }]) });
  t.same(kinds(wrongCount), ['dead']);
  const wrongInfo = check(toDeath, { final: { ready: 0, inflight: 0, delayed: 0, dead: 2, deadLetters: [{ id: '10-0', payload: 'a', deliveries: 3, reason: 'maxdeliver' }] } });
  t.same(kinds(wrongInfo), ['reconcile']);
});

t.test('invalid: counts that do not reconcile', async (t) => {
  const ops: QueueOp[] = [push('p', 'a', 0, 1, '10-0'), pop('c', 2, 3, [dl('10-0', 'a', 1)]), ack('c', ['10-0'], 4, 5, 1)];
  t.same(check(ops, { final: empty() }).violations, []);
  t.same(kinds(check(ops, { final: { ...empty(), ready: 1 } })), ['reconcile'], 'a message too many on the server');
  t.same(kinds(check([...ops, push('p', 'b', 6, 7, ERR)], { final: { ...empty(), ready: 1 } })), [], 'explained by a push of unknown outcome');
  t.same(kinds(check([...ops, push('p', 'b', 6, 7, ERR)], { final: { ...empty(), ready: 2 } })), ['reconcile'], 'but only one');
});

t.test('malformed histories are reported', async (t) => {
  t.same(kinds(check([push('p', 'a', 5, 1, '10-0')])), ['malformed'], 'a malformed op is reported and skipped');
  t.same(kinds(check([push('p', 'a', 0, 1, '10-0'), push('q', 'a', 2, 3, '10-0')])), ['lost', 'malformed']);
  t.same(kinds(check([ack('c', ['1-0'], 0, 1, 3)])), ['malformed']);
  t.throws(() => checkQueueHistory([], { maxDeliver: 0 }), RangeError);
});

// ---------------------------------------------------------------------------------------------------------------
// A tiny queue model: one FIFO partition, applied one operation at a time at a point inside [sentAt, doneAt].
// ---------------------------------------------------------------------------------------------------------------

interface ModelMsg {
  seq: number;
  id: string;
  payload: string;
  state: 'ready' | 'inflight' | 'dead' | 'gone';
  deliveries: number;
  deadline: number;
}

interface ModelRun {
  ops: QueueOp[];
  final: FinalState;
  maxDeliver: number;
}

function runModel(rng: Rng, steps: number): ModelRun {
  const maxDeliver = 2 + rng.int(0, 3);
  const ops: QueueOp[] = [];
  const msgs: ModelMsg[] = [];
  const dedup = new Map<string, ModelMsg>();
  let index = 100;
  let now = 0;
  const producers = ['p0', 'p1'].map((name) => ({ name, n: 0, pending: null as null | { payload: string; key: string; dedup: string } }));
  const consumers = ['c0', 'c1', 'c2'].map((name) => ({ name, held: [] as ModelMsg[] }));

  const expire = () => {
    for (const m of msgs) {
      if (m.state === 'inflight' && m.deadline <= now) m.state = m.deliveries >= maxDeliver ? 'dead' : 'ready';
    }
  };
  /** Times of an op applied now: sent a little before, done a little after (so ops of different clients overlap). */
  const times = () => ({ sentAt: now - rng.next() * 2, doneAt: now + rng.next() * 2 });
  const ready = () => msgs.filter((m) => m.state === 'ready').sort((a, b) => a.seq - b.seq);

  for (let step = 0; step < steps; step++) {
    now += 1 + rng.int(0, 3);
    expire();
    const roll = rng.next();
    if (roll < 0.35) {
      const p = producers[rng.int(0, producers.length)]!;
      if (p.pending === null) {
        p.n++;
        p.pending = { payload: `${p.name}:${p.n}`, key: `k${rng.int(0, 2)}`, dedup: `${p.name}/${p.n}` };
      }
      const pend = p.pending;
      const fate = rng.next();
      const applied = fate < 0.9;
      let id = '';
      if (applied) {
        const seen = dedup.get(pend.dedup);
        if (seen !== undefined) id = seen.id;
        else {
          const m: ModelMsg = { seq: index, id: `${index}-0`, payload: pend.payload, state: 'ready', deliveries: 0, deadline: 0 };
          index += 1 + rng.int(0, 3);
          msgs.push(m);
          dedup.set(pend.dedup, m);
          id = m.id;
        }
      }
      const answered = fate < 0.8;
      ops.push({ kind: 'push', producer: p.name, key: pend.key, dedup: pend.dedup, payload: pend.payload, ...times(), result: answered ? { id } : { error: 'TRYAGAIN' } });
      if (answered || rng.chance(0.1)) p.pending = null; // gives up on an unanswered message now and then
    } else if (roll < 0.65) {
      const c = consumers[rng.int(0, consumers.length)]!;
      const count = 1 + rng.int(0, 3);
      const vis = 5 + rng.int(0, 20);
      const got: Delivered[] = [];
      for (const m of ready().slice(0, count)) {
        m.state = 'inflight';
        m.deliveries++;
        m.deadline = now + vis;
        got.push({ id: m.id, payload: m.payload, deliveries: m.deliveries });
      }
      const lost = rng.chance(0.1);
      const tm = times();
      if (!lost) c.held.push(...msgs.filter((m) => got.some((g) => g.id === m.id)));
      // The pop was sent no later than now; a lost reply may also have been timed out much later.
      ops.push({ kind: 'pop', consumer: c.name, visibilityMs: vis, sentAt: tm.sentAt, doneAt: lost ? tm.doneAt + rng.int(0, 30) : tm.doneAt, result: lost ? { error: 'timeout' } : got });
    } else if (roll < 0.9) {
      const c = consumers[rng.int(0, consumers.length)]!;
      if (c.held.length === 0) continue;
      const take = c.held.splice(0, 1 + rng.int(0, c.held.length));
      let n = 0;
      for (const m of take) {
        if (m.state === 'inflight') {
          m.state = 'gone';
          n++;
        }
      }
      ops.push({ kind: 'ack', consumer: c.name, ids: take.map((m) => m.id), ...times(), result: rng.chance(0.05) ? { error: 'connection closed' } : n });
    } else {
      const c = consumers[rng.int(0, consumers.length)]!;
      const m = c.held.shift();
      if (m === undefined) continue;
      let r: 0 | 1 = 0;
      if (m.state === 'inflight') {
        m.state = m.deliveries >= maxDeliver ? 'dead' : 'ready';
        r = 1;
      }
      ops.push({ kind: 'nack', consumer: c.name, id: m.id, delayMs: 0, ...times(), result: r });
    }
  }
  // Drain: a fresh consumer pops and acks everything, letting visibility lapse.
  for (let guard = 0; guard < 10_000; guard++) {
    now += 5;
    expire();
    const r = ready();
    if (r.length === 0) {
      if (msgs.some((m) => m.state === 'inflight')) continue;
      break;
    }
    const m = r[0]!;
    m.state = 'inflight';
    m.deliveries++;
    m.deadline = now + 50;
    ops.push({ kind: 'pop', consumer: 'drain', visibilityMs: 50, ...times(), result: [{ id: m.id, payload: m.payload, deliveries: m.deliveries }] });
    now += 1;
    m.state = 'gone';
    ops.push({ kind: 'ack', consumer: 'drain', ids: [m.id], ...times(), result: 1 });
  }
  const dead = msgs.filter((m) => m.state === 'dead');
  return {
    ops,
    maxDeliver,
    final: {
      ready: 0,
      inflight: 0,
      delayed: 0,
      dead: dead.length,
      deadLetters: dead.map((m) => ({ id: m.id, payload: m.payload, deliveries: m.deliveries, reason: 'maxdeliver' })),
    },
  };
}

t.test('randomized model histories pass; each injected fault is caught', async (t) => {
  const SEEDS = 60;
  const STEPS = 400;
  let injected = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    const run = runModel(createRng(seed), STEPS);
    const opts = { maxDeliver: run.maxDeliver, final: run.final, visibilitySlackMs: 0 };
    const r = checkQueueHistory(run.ops, opts);
    if (!r.ok) {
      t.fail(`seed ${seed}: a valid history was rejected:\n${r.violations.slice(0, 5).join('\n')}`);
      continue;
    }
    const ops = run.ops;
    // Fault 1: an acked message is delivered again long after.
    const ackIdx = ops.findIndex((o) => o.kind === 'ack' && o.result === o.ids.length);
    if (ackIdx >= 0) {
      const a = ops[ackIdx] as AckOp;
      const delivered = ops.flatMap((o) => (o.kind === 'pop' && Array.isArray(o.result) ? o.result : [])).find((x) => x.id === a.ids[0])!;
      const bad = [...ops, pop('late', a.doneAt + 1e6, a.doneAt + 1e6 + 1, [{ ...delivered, deliveries: run.maxDeliver }], 1)];
      t.ok(kinds(checkQueueHistory(bad, opts)).includes('acked-returned'), `seed ${seed}: an acked message delivered again is caught`);
      injected++;
    }
    // Fault 2: one acknowledged message is lost (its deliveries and acks vanish).
    const victim = ops.find((o): o is PushOp => o.kind === 'push' && 'id' in o.result);
    if (victim !== undefined) {
      const id = (victim.result as { id: string }).id;
      const bad = ops
        .map((o) => (o.kind === 'pop' && Array.isArray(o.result) ? { ...o, result: o.result.filter((x) => x.id !== id) } : o))
        .filter((o) => !(o.kind === 'ack' && o.ids.includes(id)) && !(o.kind === 'nack' && o.id === id));
      const dead = run.final.deadLetters.filter((x) => x.id !== id);
      const rr = checkQueueHistory(bad, { ...opts, final: { ...run.final, dead: dead.length, deadLetters: dead } });
      t.ok(kinds(rr).includes('lost'), `seed ${seed}: a lost message is caught`);
      injected++;
    }
    // Fault 3: a push retry that added a second copy (delivered under a fresh id).
    const twice = ops.find((o): o is PopOp => o.kind === 'pop' && Array.isArray(o.result) && o.result.length > 0);
    if (twice !== undefined) {
      const x = (twice.result as Delivered[])[0]!;
      const bad = [...ops, pop('dup', 1e7, 1e7 + 1, [{ id: '999999-0', payload: x.payload, deliveries: 1 }], 1)];
      t.ok(kinds(checkQueueHistory(bad, opts)).includes('dedup'), `seed ${seed}: a duplicate copy is caught`);
      injected++;
    }
    // Fault 4: two first deliveries of one producer and key, swapped in time.
    const firsts = ops
      .map((o, i) => ({ o, i }))
      .filter((x): x is { o: PopOp; i: number } => x.o.kind === 'pop' && Array.isArray(x.o.result) && x.o.result.length === 1 && x.o.result[0]!.deliveries === 1);
    const pushOf = new Map<string, PushOp>();
    for (const o of ops) if (o.kind === 'push' && 'id' in o.result) pushOf.set(o.result.id, o);
    let swapped = false;
    for (let a = 0; a < firsts.length && !swapped; a++) {
      for (let b = a + 1; b < firsts.length && !swapped; b++) {
        const da = (firsts[a]!.o.result as Delivered[])[0]!;
        const db = (firsts[b]!.o.result as Delivered[])[0]!;
        const pa = pushOf.get(da.id);
        const pb = pushOf.get(db.id);
        if (pa === undefined || pb === undefined || pa.producer !== pb.producer || pa.key !== pb.key) continue;
        const pbFirst = Math.min(...ops.filter((o): o is PushOp => o.kind === 'push' && o.payload === pb.payload).map((o) => o.sentAt));
        const paAcked = Math.min(...ops.filter((o): o is PushOp => o.kind === 'push' && o.payload === pa.payload && 'id' in o.result).map((o) => o.doneAt));
        if (!(paAcked < pbFirst) || !(firsts[a]!.o.doneAt < firsts[b]!.o.sentAt)) continue;
        const bad = [...ops];
        bad[firsts[a]!.i] = { ...firsts[a]!.o, result: [db] };
        bad[firsts[b]!.i] = { ...firsts[b]!.o, result: [da] };
        t.ok(kinds(checkQueueHistory(bad, opts)).includes('order'), `seed ${seed}: swapped first deliveries are caught`);
        swapped = true;
        injected++;
      }
    }
  }
  t.ok(injected > SEEDS * 3, `faults were injected (${injected})`);
});
