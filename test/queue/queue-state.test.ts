import { Packr } from 'msgpackr';
import t from 'tap';
import {
  MESSAGE_IDS_PER_ENTRY,
  QUEUE_CONFIG_DEFAULT,
  QUEUE_LIMITS_DEFAULT,
  QUEUE_SNAPSHOT_VERSION,
  queueSnapshotRecords,
  QueueState,
  QueueStateError,
  formatMessageId,
  parseMessageId,
  type Delivery,
  type ExpiryItem,
  type PushItem,
  type PushResult,
  type QueueLimits,
} from '../../src/queue/queue-state.js';
import { createRng, type Rng } from '../../src/util/rng.js';

const T0 = 1_700_000_000_000;
const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const Q = b('jobs');
const unpackr = new Packr({ useRecords: false });

/** Drives a QueueState with increasing indexes and a settable stamp (ms after T0). */
class H {
  s: QueueState;
  index = 0;
  t = T0;
  constructor(limits: Partial<QueueLimits> = {}) {
    this.s = new QueueState(limits);
  }
  at(ms: number): this {
    this.t = T0 + ms;
    return this;
  }
  next(): number {
    return ++this.index;
  }
  push(items: (string | PushItem)[], queue = Q, partition = 0): PushResult[] {
    const payloads = items.map((x) => (typeof x === 'string' ? { payload: b(x) } : x));
    return this.s.push(this.t, this.next(), queue, partition, payloads);
  }
  /** Pushes and returns the ids, failing on any error or duplicate. */
  ids(...payloads: string[]): string[] {
    return this.push(payloads).map((r) => {
      if (!('id' in r) || r.duplicate) throw new Error(`push failed: ${JSON.stringify(r)}`);
      return r.id;
    });
  }
  popRaw(count: number, consumer = 'c', vis: number | null = null, queue = Q, partition = 0): Delivery[] | { error: string } {
    return this.s.pop(this.t, this.next(), queue, partition, consumer, count, vis);
  }
  pop(count: number, consumer = 'c', vis: number | null = null, queue = Q, partition = 0): Delivery[] {
    const r = this.popRaw(count, consumer, vis, queue, partition);
    if (!Array.isArray(r)) throw new Error(`pop failed: ${r.error}`);
    return r;
  }
  /** Payloads of a pop, as strings. */
  popP(count: number, consumer = 'c', vis: number | null = null): string[] {
    return this.pop(count, consumer, vis).map((d) => d.payload.toString('latin1'));
  }
  ack(...ids: string[]): number {
    return this.s.ack(this.t, this.next(), Q, 0, ids);
  }
  nack(id: string, delayMs = 0): number {
    return this.s.nack(this.t, this.next(), Q, 0, id, delayMs);
  }
  extend(id: string, ms: number): number {
    return this.s.extend(this.t, this.next(), Q, 0, id, ms);
  }
  /** Plans every lapsed timer at the current stamp and applies it, as the leader does. */
  expire(): number {
    return this.s.expire(this.t, this.next(), this.s.planExpiry(this.t, 1_000_000));
  }
  configure(config: Partial<typeof QUEUE_CONFIG_DEFAULT>, queue = Q, partition = 0): { error: string } | null {
    return this.s.configure(this.t, this.next(), queue, partition, config);
  }
  /** Ready payloads in delivery order. */
  ready(queue = Q, partition = 0): string[] {
    return this.s.listRange(queue, partition, 0, -1).map((x) => x.toString('latin1'));
  }
  snap(): Buffer {
    return Buffer.from(this.s.snapshot());
  }
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof QueueStateError) return err.code;
    throw err;
  }
  return undefined;
}

function errorOf(r: unknown): string | undefined {
  return typeof r === 'object' && r !== null && 'error' in r ? String((r as { error: unknown }).error) : undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------------------------------

t.test('ids are `${index}-${n}` per pushed message, increasing, and parse back to their seq', async (t) => {
  const h = new H();
  h.index = 41;
  t.same(h.ids('a', 'b', 'c'), ['42-0', '42-1', '42-2']);
  t.same(h.ids('d'), ['43-0']);
  t.equal(parseMessageId('42-1'), 42 * MESSAGE_IDS_PER_ENTRY + 1);
  t.equal(formatMessageId(42 * MESSAGE_IDS_PER_ENTRY + 1), '42-1');
  t.equal(formatMessageId(-3), 'h3');
  t.equal(parseMessageId('h3'), -3);
  t.ok((parseMessageId('42-2') as number) < (parseMessageId('43-0') as number));
  for (const bad of ['', '042-1', '42-01', '0-1', '42-65536', '42', 'h0', 'h-1', '42-1 ', '+42-1', 'x']) {
    t.equal(parseMessageId(bad), null, `not an id: ${JSON.stringify(bad)}`);
  }
  t.equal(parseMessageId('42-65535'), 42 * MESSAGE_IDS_PER_ENTRY + 65535);
});

// ---------------------------------------------------------------------------------------------------------------
// FIFO and returns
// ---------------------------------------------------------------------------------------------------------------

t.test('ready messages are delivered in push order, across pops and pushes', async (t) => {
  const h = new H();
  h.ids('a', 'b', 'c');
  t.same(h.popP(2), ['a', 'b']);
  h.ids('d');
  t.same(h.popP(5), ['c', 'd']);
  t.same(h.popP(5), [], 'nothing left');
  t.same(h.pop(1, 'c', null, b('nope')), [], 'an unknown queue delivers nothing');
});

t.test('a nacked message keeps its place ahead of newer ones', async (t) => {
  const h = new H();
  const [a, b2] = h.ids('a', 'b', 'c', 'd');
  t.same(h.popP(2), ['a', 'b']);
  h.ids('e');
  t.equal(h.nack(b2 as string), 1);
  t.same(h.ready(), ['b', 'c', 'd', 'e'], 'b goes back before c');
  t.equal(h.nack(a as string), 1);
  t.same(h.ready(), ['a', 'b', 'c', 'd', 'e'], 'a goes back before b though it returned later');
  const again = h.pop(1);
  t.same(
    again.map((d) => [d.id, d.payload.toString(), d.deliveries]),
    [[a, 'a', 2]],
  );
});

t.test('a message whose visibility lapsed comes back at its seq place, through an expire item', async (t) => {
  const h = new H();
  const [a] = h.ids('a', 'b');
  h.pop(1, 'c', 100);
  h.ids('c');
  h.at(99);
  t.same(h.s.planExpiry(h.t, 10), [], 'not lapsed at 99');
  t.equal(h.expire(), 0);
  h.at(100);
  const plan = h.s.planExpiry(h.t, 10);
  t.same(
    plan.map((x) => [x.kind, 'id' in x ? x.id : '']),
    [['visibility', a]],
  );
  t.equal(h.ack(), 0);
  t.equal(h.s.expire(h.t, h.next(), plan), 1);
  t.same(h.ready(), ['a', 'b', 'c']);
  t.equal(h.s.info(Q, 0)?.inflight, 0);
});

t.test('a delayed push becomes ready only through an expire item at its due time, then takes its seq place', async (t) => {
  const h = new H();
  h.push(['a', { payload: b('late'), delayMs: 50 }, 'b']);
  t.same(h.ready(), ['a', 'b']);
  t.equal(h.s.len(Q, 0), 3, 'Q.LEN counts the delayed message');
  t.equal(h.s.listLen(Q, 0), 2, 'LLEN does not');
  t.same(h.popP(1), ['a']);
  h.at(49);
  t.equal(h.expire(), 0);
  t.same(h.popP(1), ['b'], 'still delayed at 49');
  h.ids('c');
  h.at(60);
  t.same(h.popP(5), ['c'], 'due but not yet expired: not deliverable (the expire entry is the moment)');
  h.ids('d');
  t.equal(h.expire(), 1);
  t.same(h.ready(), ['late', 'd'], 'ahead of d: pushed before it');
  t.same(h.s.info(Q, 0)?.delayed, 0);
});

t.test('nack with a delay holds the message until due, then it returns at its seq place', async (t) => {
  const h = new H();
  const [a] = h.ids('a', 'b');
  h.pop(1);
  t.equal(h.nack(a as string, 30), 1);
  t.same(h.s.info(Q, 0), { ...h.s.info(Q, 0), ready: 1, delayed: 1, inflight: 0 });
  t.same(h.popP(1), ['b']);
  h.ids('c');
  h.at(30);
  t.equal(h.expire(), 1);
  t.same(h.ready(), ['a', 'c']);
  t.same(
    h.pop(1).map((d) => d.deliveries),
    [2],
  );
});

// ---------------------------------------------------------------------------------------------------------------
// pop
// ---------------------------------------------------------------------------------------------------------------

t.test('pop marks in flight for the queue default or the given visibility, counts deliveries, records consumer', async (t) => {
  const h = new H();
  h.configure({ visibilityMs: 500 });
  const [a, b2] = h.ids('a', 'b');
  h.at(10);
  const d1 = h.pop(1, 'alice');
  t.same(
    d1.map((d) => [d.id, d.deliveries]),
    [[a, 1]],
  );
  const d2 = h.pop(1, 'bob', 40);
  t.same(
    d2.map((d) => d.id),
    [b2],
  );
  t.same(h.s.info(Q, 0), {
    ready: 0,
    inflight: 2,
    delayed: 0,
    dead: 0,
    deadDropped: 0,
    dedup: 0,
    config: { ...QUEUE_CONFIG_DEFAULT, visibilityMs: 500 },
  });
  t.equal(h.s.len(Q, 0), 0, 'Q.LEN does not count in-flight messages');
  t.equal(h.s.nextExpiryAt(), T0 + 50, 'bob: 10 + 40');
  h.at(50);
  t.same(
    h.s.planExpiry(h.t, 10).map((x) => ('id' in x ? x.id : '')),
    [b2],
  );
  h.at(510);
  t.same(
    h.s.planExpiry(h.t, 10).map((x) => ('id' in x ? x.id : '')),
    [b2, a],
    'earliest first',
  );
  t.equal(h.expire(), 2);
  h.at(600);
  h.pop(2, 'carol');
  h.s.nack(h.t, h.next(), Q, 0, a as string, 0);
  const dead = h.s.dead(Q, 0, 10);
  t.same(dead, [], 'no dead letters');
});

t.test('a message is dead-lettered when it returns (nack or visibility) after maxDeliver deliveries', async (t) => {
  const h = new H();
  h.configure({ maxDeliver: 2, visibilityMs: 100 });
  const [a, b2] = h.ids('a', 'b');
  h.at(1);
  h.pop(1, 'x');
  t.equal(h.nack(a as string), 1);
  h.at(2);
  t.same(
    h.pop(1, 'y').map((d) => [d.id, d.deliveries]),
    [[a, 2]],
    'the second delivery is allowed',
  );
  h.at(3);
  t.equal(h.nack(a as string), 1, 'the nack is counted');
  t.same(h.ready(), ['b'], 'a is gone from ready');
  t.same(h.s.dead(Q, 0, 10), [
    {
      id: a,
      payload: b('a'),
      deliveries: 2,
      firstDeliveredAt: T0 + 1,
      lastDeliveredAt: T0 + 2,
      lastConsumer: 'y',
      deadAt: T0 + 3,
      reason: 'maxdeliver',
    },
  ]);
  // b: two visibility timeouts.
  h.pop(1, 'x');
  h.at(103);
  t.equal(h.expire(), 1);
  t.same(h.ready(), ['b'], 'back after one lapse');
  h.pop(1, 'x');
  h.at(203);
  t.equal(h.expire(), 1);
  t.same(h.ready(), [], 'dead after the second lapse');
  t.same(
    h.s.dead(Q, 0, 10).map((d) => [d.id, d.deliveries, d.deadAt]),
    [
      [a, 2, T0 + 3],
      [b2, 2, T0 + 203],
    ],
  );
  t.equal(h.ack(a as string, b2 as string), 0, 'dead letters cannot be acked');
  t.equal(h.s.info(Q, 0)?.dead, 2);
  t.equal(h.s.len(Q, 0), 0);
});

t.test('after configure lowers maxDeliver, pop dead-letters a ready message that would exceed it and moves on', async (t) => {
  const h = new H();
  const [a] = h.ids('a', 'b');
  h.pop(1);
  h.nack(a as string);
  h.pop(1);
  h.nack(a as string); // a: 2 deliveries, ready
  h.configure({ maxDeliver: 2 });
  t.same(h.popP(1), ['b'], 'a is not returned; b is');
  t.same(
    h.s.dead(Q, 0, 10).map((d) => [d.id, d.deliveries, d.reason]),
    [[a, 2, 'maxdeliver']],
  );
});

t.test('configure on an existing partition changes config for later deliveries only', async (t) => {
  const h = new H();
  const [a] = h.ids('a', 'b');
  t.same(h.s.info(Q, 0)?.config, QUEUE_CONFIG_DEFAULT, 'created with defaults by the first push');
  h.pop(1);
  t.equal(h.s.nextExpiryAt(), T0 + 30_000);
  t.equal(h.configure({ visibilityMs: 1000, partitions: 4 }), null);
  t.same(h.s.info(Q, 0)?.config, { ...QUEUE_CONFIG_DEFAULT, visibilityMs: 1000, partitions: 4 });
  t.equal(h.s.nextExpiryAt(), T0 + 30_000, 'the message in flight keeps its deadline');
  h.at(5);
  h.pop(1);
  t.equal(h.s.nextExpiryAt(), T0 + 1005, 'the next pop uses the new default');
  t.equal(h.ack(a as string), 1);
  t.same(h.configure({}, b('fresh'), 3), null, 'configure creates a partition');
  t.same(h.s.info(b('fresh'), 3)?.config, QUEUE_CONFIG_DEFAULT);
});

// ---------------------------------------------------------------------------------------------------------------
// ack, nack, extend
// ---------------------------------------------------------------------------------------------------------------

t.test('ack drops in-flight messages for good; unknown, malformed, repeated or not-in-flight ids are not counted', async (t) => {
  const h = new H();
  const [a, b2, c] = h.ids('a', 'b', 'c');
  h.pop(2, 'c', 100);
  t.equal(h.ack(a as string, a as string, 'garbage', '999-0', c as string), 1, 'only a, once; c is ready');
  t.same(h.ready(), ['c']);
  t.equal(h.ack(a as string), 0, 'already acked');
  h.at(100);
  t.equal(h.expire(), 1, 'b lapses');
  t.equal(h.ack(b2 as string), 0, 'b went back to ready: a late ack is not counted');
  t.same(h.ready(), ['b', 'c'], 'and b stays ready');
  h.at(10_000_000);
  t.equal(h.expire(), 0);
  const all = h.pop(10);
  t.same(
    all.map((d) => d.id),
    [b2, c],
    'a never comes back',
  );
  t.equal(h.ack(...all.map((d) => d.id)), 2);
  t.same(h.s.info(Q, 0), { ...h.s.info(Q, 0), ready: 0, inflight: 0, delayed: 0, dead: 0 });
  const parts = queueSnapshotRecords(h.snap())[4] as unknown[][];
  t.same((parts[0] as unknown[])[5], [], 'acked messages leave the state: memory is bounded by the unacked');
  t.equal(h.s.planExpiry(h.t + 10 ** 9, 10).length, 0, 'no timers left');
});

t.test('nack and extend answer 0 for a message not in flight and change nothing', async (t) => {
  const h = new H();
  const [a] = h.ids('a');
  const before = h.snap();
  t.equal(h.nack(a as string), 0, 'ready');
  t.equal(h.extend(a as string, 10), 0, 'ready');
  t.equal(h.nack('1-9'), 0, 'unknown');
  t.equal(h.nack('zzz'), 0, 'malformed');
  t.equal(h.s.nack(h.t, h.next(), b('other'), 0, a as string, 0), 0, 'unknown queue');
  const after = queueSnapshotRecords(h.snap());
  const expect = queueSnapshotRecords(before);
  t.same(after[4], expect[4], 'partitions unchanged (only the clock moved)');
  h.pop(1);
  t.equal(h.ack(a as string), 1);
  t.equal(h.nack(a as string), 0, 'acked');
});

t.test('extend moves the visibility deadline to stamp + ms; a stale expire item planned before it does nothing', async (t) => {
  const h = new H();
  const [a] = h.ids('a');
  h.pop(1, 'c', 100);
  h.at(100);
  const stale = h.s.planExpiry(h.t, 10);
  t.equal(stale.length, 1);
  t.equal(h.extend(a as string, 500), 1);
  t.equal(h.s.nextExpiryAt(), T0 + 600);
  t.equal(h.s.expire(h.t, h.next(), stale), 0, 'the item no longer holds at its stamp');
  t.equal(h.s.info(Q, 0)?.inflight, 1);
  h.at(599);
  t.equal(h.expire(), 0);
  h.at(600);
  t.equal(h.expire(), 1);
  t.same(h.ready(), ['a']);
  h.pop(1);
  t.equal(h.extend(a as string, 0), 1, 'extend 0 makes it lapse now');
  t.equal(h.expire(), 1);
  t.same(h.ready(), ['a']);
});

t.test('an expire item for a message that was nacked and delivered again between plan and apply does nothing', async (t) => {
  const h = new H();
  const [a] = h.ids('a');
  h.pop(1, 'c', 100);
  h.at(100);
  const plan = h.s.planExpiry(h.t, 10);
  h.nack(a as string);
  h.pop(1, 'c', 100);
  t.equal(h.s.expire(h.t, h.next(), plan), 0);
  t.equal(h.s.info(Q, 0)?.inflight, 1);
  const forged: ExpiryItem[] = [
    { kind: 'delay', queue: Q, partition: 0, id: a as string },
    { kind: 'visibility', queue: b('nope'), partition: 0, id: a as string },
    { kind: 'dedup', queue: Q, partition: 0, dedup: b('never') },
  ];
  h.at(10_000);
  t.equal(h.s.expire(h.t, h.next(), forged), 0, 'wrong kind, unknown queue, unknown dedup id');
});

// ---------------------------------------------------------------------------------------------------------------
// Dedup
// ---------------------------------------------------------------------------------------------------------------

t.test('a dedup id seen within the window answers the first id as a duplicate and adds nothing', async (t) => {
  const h = new H();
  h.configure({ dedupWindowMs: 1000 });
  const first = h.push([{ payload: b('x'), dedup: b('k1') }, { payload: b('y'), dedup: b('k1') }, 'z']);
  t.same(first, [
    { id: '2-0', duplicate: false },
    { id: '2-0', duplicate: true },
    { id: '2-1', duplicate: false },
  ]);
  h.at(999);
  h.pop(10);
  h.ack('2-0', '2-1');
  t.same(h.push([{ payload: b('x2'), dedup: b('k1') }]), [{ id: '2-0', duplicate: true }], 'even after the first was acked');
  t.equal(h.s.len(Q, 0), 0, 'nothing added');
  h.at(1000);
  t.same(h.push([{ payload: b('x3'), dedup: b('k1') }]), [{ id: '6-0', duplicate: false }], 'window over at 1000: stale entry is absent, expire or not');
  t.equal(h.s.info(Q, 0)?.dedup, 1, 'the stale entry was replaced');
});

t.test('dedup entries are forgotten through expire items, so memory stays bounded; window 0 disables dedup', async (t) => {
  const h = new H();
  h.configure({ dedupWindowMs: 100 });
  h.push([{ payload: b('a'), dedup: b('k1') }, { payload: b('b'), dedup: b('k2') }]);
  h.at(50);
  h.push([{ payload: b('c'), dedup: b('k3') }]);
  t.equal(h.s.info(Q, 0)?.dedup, 3);
  h.at(100);
  const plan = h.s.planExpiry(h.t, 10);
  t.same(
    plan.map((x) => (x.kind === 'dedup' ? x.dedup.toString() : '?')),
    ['k1', 'k2'],
  );
  t.equal(h.s.expire(h.t, h.next(), plan), 2);
  t.equal(h.s.info(Q, 0)?.dedup, 1);
  t.equal(h.s.nextExpiryAt(), T0 + 150);
  h.configure({ dedupWindowMs: 0 });
  t.same(h.push([{ payload: b('d'), dedup: b('k3') }]), [{ id: '3-0', duplicate: true }], 'an entry from before still counts');
  const r = h.push([
    { payload: b('e'), dedup: b('k9') },
    { payload: b('f'), dedup: b('k9') },
  ]);
  t.same(
    r.map((x) => 'id' in x && x.duplicate),
    [false, false],
    'window 0: not remembered',
  );
  t.equal(h.s.info(Q, 0)?.dedup, 1);
});

// ---------------------------------------------------------------------------------------------------------------
// Limits and errors
// ---------------------------------------------------------------------------------------------------------------

t.test('a payload over payloadBytesMax is refused on its own; the others of the push are added', async (t) => {
  const h = new H({ payloadBytesMax: 4 });
  const r = h.push(['abcd', 'abcde', 'x']);
  t.match(errorOf(r[1]), /^ERR payload is 5 bytes, more than payloadBytesMax \(4\)/);
  t.same([r[0], r[2]], [
    { id: '1-0', duplicate: false },
    { id: '1-1', duplicate: false },
  ]);
  t.match(errorOf(h.s.listPush(h.t, h.next(), Q, 0, [b('ok'), b('too long')], false)), /^ERR payload/);
  t.same(h.ready(), ['abcd', 'x'], 'a refused RPUSH adds nothing');
});

t.test('a full partition answers ERR queue full and never drops anything; in-flight and delayed count', async (t) => {
  const h = new H({ queueLengthMax: 3 });
  h.push(['a', { payload: b('d'), delayMs: 10 }]);
  h.pop(1);
  const r = h.push(['b', 'c']);
  t.same(r[0], { id: '3-0', duplicate: false });
  t.match(errorOf(r[1]), /^ERR queue full/);
  t.same(h.ready(), ['b']);
  t.equal(h.s.info(Q, 0)?.inflight, 1);
  t.equal(h.s.info(Q, 0)?.delayed, 1);
  t.match(errorOf(h.s.listPush(h.t, h.next(), Q, 0, [b('x')], true)), /^ERR queue full/);
  t.same(h.push([{ payload: b('p'), dedup: b('k') }]).map(errorOf), ['ERR queue full (queueLengthMax 3 messages per partition)']);
  t.same(h.push(['q'], Q, 1), [{ id: '6-0', duplicate: false }], 'the limit is per partition');
  h.ack('1-0');
  t.same(h.push(['c']), [{ id: '8-0', duplicate: false }], 'room again after an ack');
});

t.test('a consumer holds at most inflightPerConsumerMax messages per partition: pop delivers fewer, then errors', async (t) => {
  const h = new H({ inflightPerConsumerMax: 3 });
  const ids = h.ids('a', 'b', 'c', 'd', 'e', 'f');
  t.same(h.popP(2, 'x'), ['a', 'b']);
  t.same(h.popP(5, 'x'), ['c'], 'capped at the room left');
  t.match(errorOf(h.popRaw(1, 'x')), /^ERR consumer has 3 messages in flight \(inflightPerConsumerMax 3\)/);
  t.same(h.popRaw(0, 'x'), [], 'count 0 asks for nothing');
  t.same(h.popP(5, 'y'), ['d', 'e', 'f'], 'another consumer is not limited by x');
  h.ack(ids[0] as string);
  h.ids('g', 'h');
  t.same(h.popP(5, 'x'), ['g'], 'an ack frees one slot');
  h.nack(ids[1] as string);
  t.same(h.popP(5, 'x'), ['b'], 'a nack frees one slot');
});

t.test('names, dedup ids and shard partition counts over their limits are refused with ERR values', async (t) => {
  const h = new H({ queueNameBytesMax: 4, dedupBytesMax: 2, partitionsMax: 2, dedupEntriesMax: 1 });
  const long = b('abcde');
  t.match(errorOf(h.push(['a', 'b'], long)[1]), /^ERR queue name is 5 bytes, more than queueNameBytesMax \(4\)/);
  t.match(errorOf(h.s.listPush(h.t, h.next(), long, 0, [b('a')], false)), /^ERR queue name/);
  t.match(errorOf(h.configure({}, long)), /^ERR queue name/);
  t.same(h.s.queues(), [], 'nothing created');
  t.match(errorOf(h.push([{ payload: b('a'), dedup: b('abc') }])[0]), /^ERR dedup id is 3 bytes, more than dedupBytesMax \(2\)/);
  t.same(h.push([{ payload: b('a'), dedup: b('k1') }]), [{ id: '5-0', duplicate: false }]);
  t.match(errorOf(h.push([{ payload: b('b'), dedup: b('k2') }])[0]), /^ERR dedup table full \(dedupEntriesMax 1/);
  t.same(h.push(['c'], b('two')), [{ id: '7-0', duplicate: false }]);
  t.match(errorOf(h.push(['c'], b('tri'))[0]), /^ERR too many queue partitions on this shard \(partitionsMax 2\)/);
  t.match(errorOf(h.configure({}, b('tri'))), /^ERR too many queue partitions/);
  t.match(errorOf(h.s.listPush(h.t, h.next(), b('tri'), 0, [b('a')], false)), /^ERR too many queue partitions/);
  t.same(
    h.s.queues().map((x) => [x.queue.toString(), x.partition]),
    [
      ['jobs', 0],
      ['two', 0],
    ],
  );
});

t.test('malformed arguments throw QUEUE_ARG with an ERR message before changing anything', async (t) => {
  const h = new H();
  h.ids('a');
  h.pop(1);
  const before = h.snap();
  const s = h.s;
  const i = h.index + 1;
  const cases: [string, () => unknown][] = [
    ['pop count -1', () => s.pop(h.t, i, Q, 0, 'c', -1, null)],
    ['pop count 1.5', () => s.pop(h.t, i, Q, 0, 'c', 1.5, null)],
    ['pop visibility 0', () => s.pop(h.t, i, Q, 0, 'c', 1, 0)],
    ['pop visibility too long', () => s.pop(h.t, i, Q, 0, 'c', 1, QUEUE_LIMITS_DEFAULT.visibilityMsMax + 1)],
    ['pop consumer too long', () => s.pop(h.t, i, Q, 0, 'x'.repeat(257), 1, null)],
    ['partition -1', () => s.ack(h.t, i, Q, -1, ['1-0'])],
    ['partition 1024', () => s.push(h.t, i, Q, 1024, [{ payload: b('a') }])],
    ['push delay -1', () => s.push(h.t, i, Q, 0, [{ payload: b('a') }, { payload: b('b'), delayMs: -1 }])],
    ['push delay NaN', () => s.push(h.t, i, Q, 0, [{ payload: b('a'), delayMs: Number.NaN }])],
    ['too many in one push', () => s.push(h.t, i, Q, 0, new Array(MESSAGE_IDS_PER_ENTRY + 1).fill({ payload: b('') }))],
    ['too many in one RPUSH', () => s.listPush(h.t, i, Q, 0, new Array(MESSAGE_IDS_PER_ENTRY + 1).fill(b('')), false)],
    ['nack delay too long', () => s.nack(h.t, i, Q, 0, '1-0', QUEUE_LIMITS_DEFAULT.delayMsMax + 1)],
    ['extend -1', () => s.extend(h.t, i, Q, 0, '1-0', -1)],
    ['maxDeliver 0', () => s.configure(h.t, i, Q, 0, { maxDeliver: 0 })],
    ['visibilityMs 0', () => s.configure(h.t, i, Q, 0, { visibilityMs: 0 })],
    ['dedupWindowMs too long', () => s.configure(h.t, i, Q, 0, { dedupWindowMs: QUEUE_LIMITS_DEFAULT.dedupWindowMsMax + 1 })],
    ['partitions 0', () => s.configure(h.t, i, Q, 0, { partitions: 0 })],
    ['listPop count -1', () => s.listPop(h.t, i, Q, 0, -1, true)],
    ['expire kind', () => s.expire(h.t, i, [{ kind: 'bogus', queue: Q, partition: 0, id: '1-0' } as unknown as ExpiryItem])],
    ['expire dedup without id', () => s.expire(h.t, i, [{ kind: 'dedup', queue: Q, partition: 0 } as unknown as ExpiryItem])],
  ];
  for (const [what, fn] of cases) {
    let err: unknown;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof QueueStateError && err.code === 'QUEUE_ARG', `${what}: QUEUE_ARG`);
    t.match((err as Error).message, /^ERR /, `${what}: ERR message`);
  }
  t.equal(Buffer.compare(h.snap(), before), 0, 'state, clock and index unchanged');
  t.equal(s.lastIndex, h.index);
  t.throws(() => new QueueState({ queueLengthMax: 0 }), RangeError);
});

t.test('an index that does not increase, or a bad stamp, throws QUEUE_ORDER and changes nothing', async (t) => {
  const h = new H();
  h.index = 10;
  h.ids('a');
  const before = h.snap();
  t.equal(codeOf(() => h.s.push(h.t, 11, Q, 0, [{ payload: b('b') }])), 'QUEUE_ORDER', 'same index');
  t.equal(codeOf(() => h.s.ack(h.t, 5, Q, 0, [])), 'QUEUE_ORDER', 'older index');
  t.equal(codeOf(() => h.s.ack(h.t, 0, Q, 0, [])), 'QUEUE_ORDER', 'index 0');
  t.equal(codeOf(() => h.s.ack(-1, 12, Q, 0, [])), 'QUEUE_ORDER', 'negative stamp');
  t.equal(codeOf(() => h.s.ack(1.5, 12, Q, 0, [])), 'QUEUE_ORDER', 'fractional stamp');
  t.equal(Buffer.compare(h.snap(), before), 0);
});

t.test('a stamp behind lastStampMs runs at lastStampMs: time never goes back', async (t) => {
  const h = new H();
  h.at(1000);
  h.ids('a');
  t.equal(h.s.lastStampMs, T0 + 1000);
  h.at(0);
  h.pop(1, 'c', 100);
  t.equal(h.s.nextExpiryAt(), T0 + 1100, 'deadline from 1000, not 0');
  t.equal(h.s.lastStampMs, T0 + 1000);
});

t.test('errors are strings starting with ERR: every limit message', async (t) => {
  const h = new H({ payloadBytesMax: 1, queueLengthMax: 1, inflightPerConsumerMax: 1, queueNameBytesMax: 4 });
  const errors = [
    errorOf(h.push(['toolong'])[0]),
    errorOf(h.push(['a', 'b'])[1]),
    errorOf(h.push(['a'], b('qqqqq'))[0]),
    (h.pop(1), errorOf(h.popRaw(1))),
  ];
  for (const e of errors) t.match(e, /^ERR /);
  t.equal(errors.length, 4);
});

// ---------------------------------------------------------------------------------------------------------------
// Dead letters, redrive, purge
// ---------------------------------------------------------------------------------------------------------------

t.test('past deadKeptMax the oldest dead letter is dropped and counted', async (t) => {
  const h = new H({ deadKeptMax: 2 });
  h.configure({ maxDeliver: 1 });
  const ids = h.ids('a', 'b', 'c');
  for (const id of ids) {
    h.pop(1);
    h.nack(id);
  }
  t.same(
    h.s.dead(Q, 0, 10).map((d) => d.id),
    ids.slice(1),
  );
  t.same(
    h.s.dead(Q, 0, 1).map((d) => d.id),
    ids.slice(1, 2),
    'peek count',
  );
  t.equal(h.s.info(Q, 0)?.deadDropped, 1);
  t.equal(h.s.info(Q, 0)?.dead, 2);
});

t.test('redrive moves dead letters back to ready at their seq place with a fresh history, within queueLengthMax', async (t) => {
  const h = new H({ queueLengthMax: 3 });
  h.configure({ maxDeliver: 1 });
  const [a, b2] = h.ids('a', 'b');
  h.pop(2);
  h.nack(b2 as string);
  h.nack(a as string);
  t.same(
    h.s.dead(Q, 0, 10).map((d) => d.id),
    [b2, a],
    'dead in order of death',
  );
  h.ids('c', 'd');
  t.equal(h.s.redrive(h.t, h.next(), Q, 0), 1, 'room for one');
  t.same(h.ready(), ['b', 'c', 'd'], 'b back ahead of newer c and d');
  t.same(
    h.s.dead(Q, 0, 10).map((d) => d.id),
    [a],
  );
  const d = h.pop(1);
  t.same(
    d.map((x) => [x.id, x.deliveries]),
    [[b2, 1]],
    'same id, deliveries start again',
  );
  h.ack(b2 as string);
  t.equal(h.s.redrive(h.t, h.next(), Q, 0), 1);
  t.same(h.ready(), ['a', 'c', 'd']);
  t.equal(h.s.redrive(h.t, h.next(), b('none'), 0), 0);
});

t.test('purge drops ready, delayed and in-flight messages and their timers; dead letters and dedup stay', async (t) => {
  const h = new H();
  h.configure({ maxDeliver: 1 });
  const [a] = h.ids('a');
  h.pop(1);
  h.nack(a as string);
  h.push(['r', { payload: b('d'), delayMs: 100 }, { payload: b('f'), dedup: b('k') }]);
  h.pop(1, 'c', 50);
  t.equal(h.s.purge(h.t, h.next(), Q, 0), 3);
  t.same(h.s.info(Q, 0), { ...h.s.info(Q, 0), ready: 0, delayed: 0, inflight: 0, dead: 1, dedup: 1 });
  t.equal(h.ack('5-0'), 0, 'the purged in-flight message cannot be acked');
  t.same(
    h.s.planExpiry(T0 + 200, 10).map((x) => x.kind),
    [],
    'no message timers left (dedup expires at 120000)',
  );
  t.same(h.push([{ payload: b('f2'), dedup: b('k') }]), [{ id: '5-2', duplicate: true }]);
  t.equal(h.s.purgeDead(h.t, h.next(), Q, 0), 1);
  t.equal(h.s.info(Q, 0)?.dead, 0);
  t.same(h.popP(5), [], 'nothing to deliver');
  t.same(h.ids('n'), ['12-0'], 'the queue works after a purge');
});

t.test('queues() lists the partitions held in creation order; info and len answer null and 0 for unknown ones', async (t) => {
  const h = new H();
  h.push(['a'], b('q1'), 2);
  h.push(['a'], b('q0'), 0);
  h.push(['a'], b('q1'), 0);
  h.push(['a'], b('q1'), 2);
  t.same(
    h.s.queues().map((x) => `${x.queue.toString()}/${x.partition}`),
    ['q1/2', 'q0/0', 'q1/0'],
  );
  t.equal(h.s.info(b('zz'), 0), null);
  t.equal(h.s.len(b('zz'), 0), 0);
  t.equal(h.s.listLen(b('zz'), 0), 0);
  t.same(h.s.dead(b('zz'), 0, 5), []);
  t.same(h.s.listRange(b('zz'), 0, 0, -1), []);
});

t.test('binary queue names with separators do not collide', async (t) => {
  const h = new H();
  h.push(['x'], Buffer.from([0, 58, 255]), 1);
  h.push(['y'], Buffer.from([49, 58, 0, 58, 255]), 0);
  t.equal(h.s.len(Buffer.from([0, 58, 255]), 1), 1);
  t.equal(h.s.len(Buffer.from([49, 58, 0, 58, 255]), 0), 1);
  t.equal(h.s.queues().length, 2);
});

// ---------------------------------------------------------------------------------------------------------------
// planExpiry
// ---------------------------------------------------------------------------------------------------------------

t.test('planExpiry returns lapsed timers earliest first, at most max, across partitions, and changes nothing', async (t) => {
  const h = new H();
  for (let i = 0; i < 50; i++) h.push([`m${i}`], Q, i % 3);
  for (let i = 0; i < 50; i++) {
    h.at(i);
    h.pop(1, 'c', 1000 - i * 10, Q, i % 3); // deadlines 1000 - 9i: later pops lapse first
  }
  h.push([{ payload: b('later'), delayMs: 5000 }]);
  const before = h.snap();
  const plan = h.s.planExpiry(T0 + 1000, 7);
  t.equal(plan.length, 7);
  t.same(
    plan.map((x) => (x.kind === 'visibility' ? x.partition : -1)),
    [49, 48, 47, 46, 45, 44, 43].map((i) => i % 3),
  );
  t.equal(h.s.planExpiry(T0 + 558, 100).length, 0, 'nothing lapsed before the earliest deadline 559');
  t.equal(h.s.planExpiry(T0 + 1000, 100).length, 50, 'delayed message not yet due');
  t.equal(h.s.planExpiry(T0 + 10_000, 100).length, 51);
  t.same(h.s.planExpiry(T0 + 10_000, 0), []);
  t.equal(Buffer.compare(h.snap(), before), 0, 'planning is read-only');
  h.at(1000);
  let total = 0;
  for (;;) {
    const p = h.s.planExpiry(h.t, 16);
    if (p.length === 0) break;
    total += h.s.expire(h.t, h.next(), p);
  }
  t.equal(total, 50, 'plan/apply rounds drain every lapsed timer');
  t.equal(h.s.nextExpiryAt(), T0 + 5049);
});

t.test('planExpiry stays cheap with many messages in flight (ordered index, not a scan)', async (t) => {
  const h = new H({ inflightPerConsumerMax: 1_000_000 });
  const n = 100_000;
  const items: PushItem[] = [];
  for (let i = 0; i < n / 2; i++) items.push({ payload: Buffer.alloc(0) });
  h.s.push(h.t, h.next(), Q, 0, items);
  h.s.push(h.t, h.next(), Q, 0, items);
  h.pop(n, 'c', 60_000);
  h.at(1);
  h.pop(0);
  // 10k plans over 100k in-flight messages: a scan would take ~10^9 steps; the index takes ~10^4.
  for (let i = 0; i < 10_000; i++) {
    if (h.s.planExpiry(T0 + 59_999, 64).length !== 0) throw new Error('nothing should be due');
  }
  t.equal(h.s.planExpiry(T0 + 60_000, 64).length, 64);
});

// ---------------------------------------------------------------------------------------------------------------
// Redis list commands
// ---------------------------------------------------------------------------------------------------------------

t.test('RPUSH then LPOP is FIFO, like Q.PUSH + Q.POP + ack; RPOP takes the newest', async (t) => {
  const h = new H();
  t.equal(h.s.listPush(h.t, h.next(), Q, 0, [b('a'), b('b'), b('c')], false), 3);
  t.equal(h.s.listPush(h.t, h.next(), Q, 0, [b('d')], false), 4);
  t.same(
    h.s.listPop(h.t, h.next(), Q, 0, 2, true).map(String),
    ['a', 'b'],
  );
  t.same(
    h.s.listPop(h.t, h.next(), Q, 0, 1, false).map(String),
    ['d'],
  );
  t.same(h.ready(), ['c']);
  t.same(h.s.listPop(h.t, h.next(), Q, 0, 0, true), []);
  t.same(h.s.listPop(h.t, h.next(), b('none'), 0, 3, true), []);
  t.same(h.popP(5), ['c'], 'Q.POP sees RPUSHed messages');
  t.same(h.ids('e'), ['8-0'], 'Q.PUSH ids continue after RPUSH ids');
});

t.test('LPUSH a b c leaves c first (ids h1, h2, h3), ahead of every other message', async (t) => {
  const h = new H();
  h.ids('x', 'y');
  h.pop(1); // x in flight
  t.equal(h.s.listPush(h.t, h.next(), Q, 0, [b('a'), b('b'), b('c')], true), 4, 'LLEN: y + a, b, c');
  t.same(h.ready(), ['c', 'b', 'a', 'y']);
  t.equal(h.nack('1-0'), 1);
  t.same(h.ready(), ['c', 'b', 'a', 'x', 'y'], 'x returns at its seq, after the head inserts that came meanwhile');
  h.s.listPush(h.t, h.next(), Q, 0, [b('d')], true);
  const d = h.pop(2);
  t.same(
    d.map((x) => [x.id, x.payload.toString()]),
    [
      ['h4', 'd'],
      ['h3', 'c'],
    ],
  );
  t.equal(h.ack('h4', 'h3'), 2, 'head ids ack like any other');
});

t.test('LRANGE follows Redis: inclusive, negative indexes from the tail, clamped, empty when inverted', async (t) => {
  const h = new H();
  const items = Array.from({ length: 1200 }, (_, i) => b(`v${i}`));
  h.s.listPush(h.t, h.next(), Q, 0, items, false); // several chunks
  const r = (s: number, e: number): string[] => h.s.listRange(Q, 0, s, e).map(String);
  t.same(r(0, 2), ['v0', 'v1', 'v2']);
  t.same(r(-2, -1), ['v1198', 'v1199']);
  t.same(r(510, 513), ['v510', 'v511', 'v512', 'v513'], 'across a chunk boundary');
  t.same(r(-5000, 1), ['v0', 'v1']);
  t.same(r(1198, 5000), ['v1198', 'v1199']);
  t.same(r(5, 4), []);
  t.same(r(1200, 1300), []);
  t.same(r(-1, -2), []);
  t.equal(r(0, -1).length, 1200);
  const expected = items.map(String);
  t.same(r(0, -1), expected);
});

t.test('list commands see only ready messages: delayed and in-flight ones are untouched by LPOP/RPOP', async (t) => {
  const h = new H();
  h.push(['a', { payload: b('late'), delayMs: 10 }, 'b', 'c']);
  h.pop(1);
  t.equal(h.s.listLen(Q, 0), 2);
  t.same(
    h.s.listPop(h.t, h.next(), Q, 0, 10, false).map(String),
    ['c', 'b'],
  );
  t.same(h.s.info(Q, 0), { ...h.s.info(Q, 0), ready: 0, inflight: 1, delayed: 1 });
  t.equal(h.ack('1-0'), 1, 'the in-flight one is still ackable');
});

t.test('a RPUSH/LPUSH that would exceed queueLengthMax adds nothing', async (t) => {
  const h = new H({ queueLengthMax: 3 });
  h.s.listPush(h.t, h.next(), Q, 0, [b('a'), b('b')], false);
  t.match(errorOf(h.s.listPush(h.t, h.next(), Q, 0, [b('c'), b('d')], true)), /^ERR queue full/);
  t.same(h.ready(), ['a', 'b']);
  t.equal(h.s.listPush(h.t, h.next(), Q, 0, [b('c')], true), 3);
});

// ---------------------------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------------------------

function scripted(h: H): void {
  h.configure({ maxDeliver: 2, dedupWindowMs: 500 }, b('q2'), 1);
  h.push(['a', { payload: b('b'), dedup: b('d1') }, { payload: b('c'), delayMs: 40 }]);
  h.push([{ payload: Buffer.from([0, 1, 2, 255]) }], b('q2'), 1);
  h.s.listPush(h.t, h.next(), Q, 0, [b('h1'), b('h2')], true);
  h.at(5);
  h.pop(3, 'w1', 100);
  h.pop(1, 'w2', null, b('q2'), 1);
  h.nack('h2');
  h.s.nack(h.t, h.next(), b('q2'), 1, '3-0', 0);
  h.pop(1, 'w2', null, b('q2'), 1);
  h.s.nack(h.t, h.next(), b('q2'), 1, '3-0', 0); // dead in q2/1
  h.at(50);
  h.expire();
}

t.test('the same calls give byte-identical snapshots; restore(snapshot()) round-trips byte-identical and behaves the same', async (t) => {
  const x = new H();
  const y = new H();
  scripted(x);
  scripted(y);
  const s = x.snap();
  t.equal(Buffer.compare(s, y.snap()), 0);
  const z = new H();
  z.s.restore(s);
  z.index = x.index;
  z.t = x.t;
  t.equal(Buffer.compare(z.snap(), s), 0, 'restore then snapshot is byte-identical');
  t.equal(z.s.lastIndex, x.s.lastIndex);
  t.equal(z.s.lastStampMs, x.s.lastStampMs);
  t.same(z.s.queues(), x.s.queues());
  t.same(z.s.dead(b('q2'), 1, 5), x.s.dead(b('q2'), 1, 5));
  t.same(z.s.planExpiry(T0 + 10_000, 100), x.s.planExpiry(T0 + 10_000, 100));
  t.same(z.s.nextExpiryAt(), x.s.nextExpiryAt());
  for (const h of [x, z]) {
    h.at(60);
    h.push([{ payload: b('b2'), dedup: b('d1') }, 'e']);
    h.pop(10, 'w1', 30);
    h.ack('3-0');
    h.at(200);
    h.expire();
    h.s.listPush(h.t, h.next(), Q, 0, [b('h3')], true);
  }
  t.same(z.ready(), x.ready());
  t.equal(Buffer.compare(z.snap(), x.snap()), 0, 'equal after more calls on both');
  t.same(z.s.info(Q, 0), x.s.info(Q, 0));
});

t.test('restore refuses corrupt or newer snapshots and leaves the state as it was', async (t) => {
  const h = new H();
  scripted(h);
  const good = h.snap();
  const other = new H();
  other.ids('keep');
  const before = other.snap();
  const root = queueSnapshotRecords(good);
  // Record-level damage is written as a version 1 snapshot (one msgpack array per record); restore() puts both
  // versions' records through the same checks.
  const mutate = (f: (r: unknown[]) => void): Buffer => {
    const r = queueSnapshotRecords(good);
    r[1] = 1;
    f(r);
    return Buffer.from(unpackr.pack(r));
  };
  // Damage inside a version 2 blob (the frame as written, blobs as bytes).
  const mutateBlob = (field: 5 | 6 | 7, f: (b: Buffer) => Buffer): Buffer => {
    const r = unpackr.unpack(good) as unknown[];
    const pt = (r[4] as unknown[][]).find((p) => Buffer.from(p[field] as Uint8Array).length > 0)!;
    pt[field] = f(Buffer.from(pt[field] as Uint8Array));
    return Buffer.from(unpackr.pack(r));
  };
  const part0 = (r: unknown[]): unknown[] => (r[4] as unknown[][])[1] as unknown[]; // jobs/0 (q2/1 was created first)
  const cases: [string, Uint8Array, string][] = [
    ['empty', Buffer.alloc(0), 'QUEUE_CORRUPT'],
    ['truncated', good.subarray(0, good.length - 3), 'QUEUE_CORRUPT'],
    ['not an array', Buffer.from(unpackr.pack({ a: 1 })), 'QUEUE_CORRUPT'],
    ['bad magic', mutate((r) => (r[0] = 'XXXX')), 'QUEUE_CORRUPT'],
    ['newer version', mutate((r) => (r[1] = QUEUE_SNAPSHOT_VERSION + 1)), 'QUEUE_VERSION'],
    ['negative index', mutate((r) => (r[3] = -1)), 'QUEUE_CORRUPT'],
    ['duplicate partition', mutate((r) => (r[4] as unknown[]).push(part0(r))), 'QUEUE_CORRUPT'],
    ['bad config', mutate((r) => ((part0(r)[2] as unknown[])[0] = 0)), 'QUEUE_CORRUPT'],
    ['message seq beyond lastIndex', mutate((r) => (((part0(r)[5] as unknown[][])[2] as unknown[])[0] = 10 ** 12)), 'QUEUE_CORRUPT'],
    ['messages out of order', mutate((r) => (part0(r)[5] as unknown[]).reverse()), 'QUEUE_CORRUPT'],
    ['bad state', mutate((r) => (((part0(r)[5] as unknown[][])[0] as unknown[])[2] = 7)), 'QUEUE_CORRUPT'],
    ['payload not bytes', mutate((r) => (((part0(r)[5] as unknown[][])[0] as unknown[])[1] = 'x')), 'QUEUE_CORRUPT'],
    ['head seq not below headNext', mutate((r) => (part0(r)[3] = -2)), 'QUEUE_CORRUPT'],
    ['dead reason', mutate((r) => ((((r[4] as unknown[][])[0] as unknown[][])[6] as unknown[][])[0]![7] = 'x')), 'QUEUE_CORRUPT'],
    ['v2 message blob truncated', mutateBlob(5, (b) => b.subarray(0, b.length - 1)), 'QUEUE_CORRUPT'],
    ['v2 message flags unknown', mutateBlob(5, (b) => Buffer.concat([Buffer.from([0xf0]), b.subarray(1)])), 'QUEUE_CORRUPT'],
    ['v2 dead reason code unknown', mutateBlob(6, (b) => Buffer.concat([b.subarray(0, b.length - 1), Buffer.from([9])])), 'QUEUE_CORRUPT'],
    ['v2 dedup blob truncated', mutateBlob(7, (b) => b.subarray(0, b.length - 2)), 'QUEUE_CORRUPT'],
  ];
  t.ok(Array.isArray(root[4]) && (root[4] as unknown[]).length === 2, 'two partitions in the scripted state');
  for (const [what, data, code] of cases) {
    t.equal(codeOf(() => other.s.restore(data)), code, what);
  }
  t.equal(Buffer.compare(other.snap(), before), 0, 'the state is as it was');
  other.s.restore(good);
  t.equal(Buffer.compare(other.snap(), good), 0, 'a good snapshot still restores');
  t.equal((unpackr.unpack(good) as unknown[])[1], QUEUE_SNAPSHOT_VERSION, 'written as the current version');
  const v1 = Buffer.from(unpackr.pack([...root.slice(0, 1), 1, ...root.slice(2)]));
  const fromV1 = new H();
  fromV1.s.restore(v1);
  t.equal(Buffer.compare(fromV1.snap(), good), 0, 'a version 1 snapshot (older nodes) restores to the same state');
});

// ---------------------------------------------------------------------------------------------------------------
// Randomized model test
// ---------------------------------------------------------------------------------------------------------------

type MState = 'ready' | 'delayed' | 'inflight' | 'dead' | 'acked' | 'listpopped' | 'purged' | 'deaddropped';

interface MMsg {
  id: string;
  seq: number;
  part: number;
  payload: string;
  state: MState;
  deliveries: number;
  deadline: number;
  consumer: string;
  /** Tail-pushed without delay: its first delivery must follow push order. */
  plain: boolean;
  firstDelivered: boolean;
}

const MAX_DELIVER = 3;
const VIS = 200;
const WINDOW = 500;
const MODEL_LIMITS: Partial<QueueLimits> = { queueLengthMax: 60, inflightPerConsumerMax: 6, deadKeptMax: 25 };
const PARTS: [Buffer, number][] = [
  [b('alpha'), 0],
  [b('alpha'), 1],
  [b('beta'), 0],
];

/** Runs `ops` random operations against QueueState and an independent model; returns the final snapshot. */
function runModel(seed: number, ops: number): { snapshot: Buffer; stats: Record<string, number> } {
  const rng: Rng = createRng(seed);
  let st = new QueueState(MODEL_LIMITS);
  let index = 0;
  let now = T0;
  let nextPayload = 0;
  const msgs = new Map<string, MMsg>(); // by payload
  const byId = PARTS.map(() => new Map<string, MMsg>());
  const dedup = PARTS.map(() => new Map<string, { id: string; expiresAt: number }>());
  const dead = PARTS.map((): MMsg[] => []);
  const headNext = PARTS.map(() => -1);
  const lastFirstPlainSeq = PARTS.map(() => -Infinity);
  const stats: Record<string, number> = { push: 0, dup: 0, full: 0, delivered: 0, acked: 0, dead: 0, expired: 0, restores: 0, busy: 0 };
  const fail = (msg: string): never => {
    throw new Error(`seed ${seed}, op ${index}: ${msg}`);
  };
  const check = (cond: boolean, msg: () => string): void => {
    if (!cond) fail(msg());
  };
  const liveMaps = PARTS.map(() => new Map<string, MMsg>()); // ready, delayed, in flight
  const idList = PARTS.map((): string[] => []); // every id, in push order
  const setState = (m: MMsg, s: MState): void => {
    m.state = s;
    if (s === 'ready' || s === 'delayed' || s === 'inflight') liveMaps[m.part]!.set(m.id, m);
    else liveMaps[m.part]!.delete(m.id);
  };
  const track = (m: MMsg): void => {
    msgs.set(m.payload, m);
    byId[m.part]!.set(m.id, m);
    idList[m.part]!.push(m.id);
    setState(m, m.state);
  };
  const live = (p: number): MMsg[] => [...liveMaps[p]!.values()];
  const readyOf = (p: number): MMsg[] => live(p).filter((m) => m.state === 'ready').sort((x, y) => x.seq - y.seq);
  const bury = (p: number, m: MMsg): void => {
    setState(m, 'dead');
    dead[p]!.push(m);
    stats.dead!++;
    if (dead[p]!.length > (MODEL_LIMITS.deadKeptMax as number)) setState(dead[p]!.shift() as MMsg, 'deaddropped');
  };
  const giveBack = (p: number, m: MMsg, delay: number): void => {
    if (m.deliveries >= MAX_DELIVER) bury(p, m);
    else if (delay > 0) {
      setState(m, 'delayed');
      m.deadline = now + delay;
    } else setState(m, 'ready');
  };
  /** Mostly an id in flight; else a recent id in any state, an unknown or a malformed one. */
  const anyId = (p: number): string => {
    const inflight = live(p).filter((m) => m.state === 'inflight');
    if (inflight.length > 0 && rng.chance(0.7)) return inflight[rng.int(0, inflight.length)]!.id;
    const all = idList[p]!;
    if (all.length === 0 || rng.chance(0.1)) return rng.chance(0.5) ? 'nonsense' : `${index + 1000}-0`;
    return all[rng.int(Math.max(0, all.length - 40), all.length)] as string;
  };
  const add = (p: number, seq: number, delay: number, plain: boolean): MMsg => {
    const m: MMsg = {
      id: formatMessageId(seq),
      seq,
      part: p,
      payload: `m${nextPayload++}`,
      state: delay > 0 ? 'delayed' : 'ready',
      deliveries: 0,
      deadline: delay > 0 ? now + delay : 0,
      consumer: '',
      plain,
      firstDelivered: false,
    };
    track(m);
    return m;
  };

  for (let i = 0; i < PARTS.length; i++) {
    const [q, pn] = PARTS[i]!;
    st.configure(now, ++index, q, pn, { maxDeliver: MAX_DELIVER, visibilityMs: VIS, dedupWindowMs: WINDOW });
  }

  for (let op = 0; op < ops; op++) {
    now += rng.int(0, 25);
    const p = rng.int(0, PARTS.length);
    const [q, pn] = PARTS[p]!;
    const r = rng.next();
    if (r < 0.25) {
      // Q.PUSH
      const n = rng.int(1, 4);
      const items: PushItem[] = [];
      const plan: { delay: number; dedup: string | null }[] = [];
      for (let k = 0; k < n; k++) {
        const delay = rng.chance(0.15) ? rng.int(1, 300) : 0;
        const dd = rng.chance(0.3) ? `d${rng.int(0, 40)}` : null;
        plan.push({ delay, dedup: dd });
      }
      const idx = ++index;
      const pending: MMsg[] = [];
      let nn = 0;
      const expected: PushResult[] = [];
      for (const it of plan) {
        const payload = `m${nextPayload + pending.length}`;
        items.push({ payload: b(payload), ...(it.dedup !== null ? { dedup: b(it.dedup) } : {}), ...(it.delay > 0 ? { delayMs: it.delay } : {}) });
        if (it.dedup !== null) {
          const e = dedup[p]!.get(it.dedup);
          if (e !== undefined && e.expiresAt > now) {
            expected.push({ id: e.id, duplicate: true });
            pending.push(undefined as unknown as MMsg);
            continue;
          }
          if (e !== undefined) dedup[p]!.delete(it.dedup);
        }
        if (live(p).length + pending.filter((x) => x !== undefined).length >= (MODEL_LIMITS.queueLengthMax as number)) {
          expected.push({ error: 'ERR queue full (queueLengthMax 60 messages per partition)' });
          pending.push(undefined as unknown as MMsg);
          continue;
        }
        const seq = idx * MESSAGE_IDS_PER_ENTRY + nn++;
        const m: MMsg = {
          id: formatMessageId(seq),
          seq,
          part: p,
          payload,
          state: it.delay > 0 ? 'delayed' : 'ready',
          deliveries: 0,
          deadline: it.delay > 0 ? now + it.delay : 0,
          consumer: '',
          plain: it.delay === 0,
          firstDelivered: false,
        };
        pending.push(m);
        if (it.dedup !== null) dedup[p]!.set(it.dedup, { id: m.id, expiresAt: now + WINDOW });
        expected.push({ id: m.id, duplicate: false });
      }
      // Payload names must be assigned in item order whether or not they are added.
      const got = st.push(now, idx, q, pn, items);
      nextPayload += plan.length;
      for (const m of pending) if (m !== undefined) track(m);
      check(JSON.stringify(got) === JSON.stringify(expected), () => `push ${JSON.stringify(got)} != ${JSON.stringify(expected)}`);
      for (const x of expected) {
        if ('error' in x) stats.full!++;
        else if (x.duplicate) stats.dup!++;
        else stats.push!++;
      }
    } else if (r < 0.5) {
      // Q.POP
      const consumer = `c${rng.int(0, 3)}`;
      const count = rng.int(0, 5);
      const vis = rng.chance(0.5) ? null : rng.int(1, 400);
      const got = st.pop(now, ++index, q, pn, consumer, count, vis);
      const held = live(p).filter((m) => m.state === 'inflight' && m.consumer === consumer).length;
      const room = (MODEL_LIMITS.inflightPerConsumerMax as number) - held;
      if (count > 0 && room <= 0) {
        check(!Array.isArray(got) && got.error.startsWith('ERR consumer has'), () => `pop should be refused: ${JSON.stringify(got)}`);
        stats.busy!++;
        continue;
      }
      const want = Math.min(count, room);
      const expected = readyOf(p).slice(0, want);
      if (!Array.isArray(got)) return fail(`pop refused: ${got.error}`);
      check(
        got.length === expected.length && got.every((d, k) => d.id === expected[k]!.id && d.payload.toString() === expected[k]!.payload),
        () => `pop got ${got.map((d) => d.id)} expected ${expected.map((m) => m.id)}`,
      );
      for (const d of got) {
        const m = msgs.get(d.payload.toString()) as MMsg;
        check(m.state === 'ready', () => `delivered a message in state ${m.state}`);
        setState(m, 'inflight');
        m.deliveries++;
        check(d.deliveries === m.deliveries && m.deliveries <= MAX_DELIVER, () => `deliveries ${d.deliveries} vs ${m.deliveries}`);
        m.deadline = now + (vis ?? VIS);
        m.consumer = consumer;
        if (!m.firstDelivered) {
          m.firstDelivered = true;
          if (m.plain) {
            check(m.seq > lastFirstPlainSeq[p]!, () => `first delivery of ${m.id} out of push order`);
            lastFirstPlainSeq[p] = m.seq;
          }
        }
        stats.delivered!++;
      }
    } else if (r < 0.65) {
      // Q.ACK
      const ids: string[] = [];
      for (let k = rng.int(1, 4); k > 0; k--) ids.push(anyId(p));
      let expected = 0;
      for (const id of ids) {
        const m = byId[p]!.get(id);
        if (m !== undefined && m.state === 'inflight') {
          setState(m, 'acked');
          expected++;
        }
      }
      const got = st.ack(now, ++index, q, pn, ids);
      check(got === expected, () => `ack ${got} != ${expected}`);
      stats.acked! += got;
    } else if (r < 0.75) {
      // Q.NACK or Q.EXTEND
      const id = anyId(p);
      const m = byId[p]!.get(id);
      const ok = m !== undefined && m.state === 'inflight';
      if (rng.chance(0.7)) {
        const delay = rng.chance(0.3) ? rng.int(1, 200) : 0;
        const got = st.nack(now, ++index, q, pn, id, delay);
        check(got === (ok ? 1 : 0), () => `nack ${id} ${got}`);
        if (ok) giveBack(p, m, delay);
      } else {
        const ms = rng.int(0, 300);
        const got = st.extend(now, ++index, q, pn, id, ms);
        check(got === (ok ? 1 : 0), () => `extend ${id} ${got}`);
        if (ok) m.deadline = now + ms;
      }
    } else if (r < 0.9) {
      // Leader expiry round (sometimes with stale items planned earlier)
      const max = rng.int(1, 20);
      const planAt = rng.chance(0.9) ? now : now - rng.int(0, 50);
      const items = st.planExpiry(planAt, max);
      const lapsedMsgs = PARTS.flatMap((_, pi) => live(pi).filter((m) => m.state !== 'ready' && m.deadline <= Math.max(planAt, st.lastStampMs)));
      const lapsedDedup = PARTS.flatMap((_, pi) =>
        [...dedup[pi]!.entries()].filter(([, e]) => e.expiresAt <= Math.max(planAt, st.lastStampMs)),
      );
      check(items.length <= max, () => 'plan longer than max');
      if (items.length < max) {
        check(items.length === lapsedMsgs.length + lapsedDedup.length, () => `plan ${items.length} != lapsed ${lapsedMsgs.length + lapsedDedup.length}`);
      }
      if (rng.chance(0.1)) now += rng.int(0, 30); // applied at a later stamp than planned: still valid
      let expected = 0;
      for (const it of items) {
        const pi = PARTS.findIndex(([qq, pp]) => qq.equals(it.queue) && pp === it.partition);
        check(pi >= 0, () => 'plan names an unknown partition');
        if (it.kind === 'dedup') {
          const e = dedup[pi]!.get(it.dedup.toString());
          check(e !== undefined, () => 'plan names an unknown dedup id');
          if (e !== undefined && e.expiresAt <= now) {
            dedup[pi]!.delete(it.dedup.toString());
            expected++;
          }
          continue;
        }
        const m = byId[pi]!.get(it.id);
        check(m !== undefined && (it.kind === 'visibility' ? m.state === 'inflight' : m.state === 'delayed'), () => `plan item ${it.kind} ${it.id} in state ${m?.state}`);
        if (m === undefined || m.deadline > now) continue;
        expected++;
        if (it.kind === 'visibility') giveBack(pi, m, 0);
        else setState(m, 'ready');
      }
      const got = st.expire(now, ++index, items);
      check(got === expected, () => `expire ${got} != ${expected}`);
      stats.expired! += got;
    } else if (r < 0.95) {
      // RPUSH / LPUSH
      const head = rng.chance(0.5);
      const n = rng.int(1, 3);
      const idx = ++index;
      const payloads: Buffer[] = [];
      for (let k = 0; k < n; k++) payloads.push(b(`m${nextPayload + k}`));
      const got = st.listPush(now, idx, q, pn, payloads, head);
      if (live(p).length + n > (MODEL_LIMITS.queueLengthMax as number)) {
        check(errorOf(got)?.startsWith('ERR queue full') === true, () => `listPush should be full: ${JSON.stringify(got)}`);
        nextPayload += n;
      } else {
        for (let k = 0; k < n; k++) add(p, head ? headNext[p]!-- : idx * MESSAGE_IDS_PER_ENTRY + k, 0, !head);
        check(got === readyOf(p).length, () => `listPush returned ${JSON.stringify(got)}`);
      }
    } else if (r < 0.985) {
      // LPOP / RPOP
      const head = rng.chance(0.7);
      const count = rng.int(0, 3);
      const got = st.listPop(now, ++index, q, pn, count, head).map(String);
      const rd = readyOf(p);
      const expected = (head ? rd : rd.reverse()).slice(0, count);
      check(JSON.stringify(got) === JSON.stringify(expected.map((m) => m.payload)), () => `listPop ${got} vs ${expected.map((m) => m.payload)}`);
      for (const m of expected) setState(m, 'listpopped');
    } else if (r < 0.995) {
      // Redrive
      const room = (MODEL_LIMITS.queueLengthMax as number) - live(p).length;
      const moved = dead[p]!.splice(0, Math.max(0, room));
      for (const m of moved) {
        setState(m, 'ready');
        m.deliveries = 0;
        m.deadline = 0;
      }
      const got = st.redrive(now, ++index, q, pn);
      check(got === moved.length, () => `redrive ${got} != ${moved.length}`);
    } else {
      // Purge (rare)
      let n = 0;
      for (const m of live(p)) {
        setState(m, 'purged');
        n++;
      }
      check(st.purge(now, ++index, q, pn) === n, () => 'purge count');
    }

    // Cheap checks after every operation.
    const info = st.info(q, pn);
    const lv = live(p);
    const cnt = (s: MState): number => lv.filter((m) => m.state === s).length;
    check(
      info !== null && info.ready === cnt('ready') && info.delayed === cnt('delayed') && info.inflight === cnt('inflight') && info.dead === dead[p]!.length,
      () => `info ${JSON.stringify(info)} vs model ready ${cnt('ready')} delayed ${cnt('delayed')} inflight ${cnt('inflight')} dead ${dead[p]!.length}`,
    );
    check(info?.dedup === dedup[p]!.size, () => `dedup ${info?.dedup} vs ${dedup[p]!.size}`);

    // Full checks now and then: the exact state of every message.
    if (op % 500 === 499 || op === ops - 1) {
      const snap = Buffer.from(st.snapshot());
      const root = queueSnapshotRecords(snap);
      const parts = root[4] as unknown[][];
      for (let pi = 0; pi < PARTS.length; pi++) {
        const pt = parts[pi] as unknown[];
        const inState = new Map<string, [number, number, number]>(); // payload -> [state, deliveries, deadline]
        for (const mt of pt[5] as unknown[][]) inState.set(String(mt[1]), [mt[2] as number, mt[3] as number, mt[7] as number]);
        const deadPayloads = (pt[6] as unknown[][]).map((d) => String(d[1]));
        for (const m of byId[pi]!.values()) {
          const s = inState.get(m.payload);
          const code = m.state === 'ready' ? 0 : m.state === 'delayed' ? 1 : m.state === 'inflight' ? 2 : -1;
          if (code >= 0) {
            check(s !== undefined && s[0] === code && s[1] === m.deliveries && (code === 0 || s[2] === m.deadline), () => `${m.id} is ${JSON.stringify(s)}, model ${m.state}/${m.deliveries}/${m.deadline}`);
          } else {
            check(s === undefined, () => `${m.id} (${m.state}) is still held as ${JSON.stringify(s)}`);
          }
        }
        check(inState.size === live(pi).length, () => 'the state holds messages the model does not');
        check(JSON.stringify(deadPayloads) === JSON.stringify(dead[pi]!.map((m) => m.payload)), () => 'dead letters differ');
        for (const m of dead[pi]!) check(m.deliveries === MAX_DELIVER, () => `${m.id} dead with ${m.deliveries} deliveries`);
        const rd = readyOf(pi).map((m) => m.payload);
        const [qq, pp] = PARTS[pi]!;
        check(JSON.stringify(st.listRange(qq, pp, 0, -1).map(String)) === JSON.stringify(rd), () => 'ready order differs');
      }
      // Every message pushed is in exactly one state (the model's), and the implementation agrees (above).
      let total = 0;
      for (const pm of byId) total += pm.size;
      check(total === msgs.size, () => 'a message is in two partitions');
    }
    // Snapshot/restore at random points: continue on the restored copy.
    if (rng.chance(0.002)) {
      const s = Buffer.from(st.snapshot());
      const copy = new QueueState(MODEL_LIMITS);
      copy.restore(s);
      check(Buffer.compare(Buffer.from(copy.snapshot()), s) === 0, () => 'restore(snapshot()) is not byte-identical');
      st = copy;
      stats.restores!++;
    }
  }
  return { snapshot: Buffer.from(st.snapshot()), stats };
}

t.test('randomized model: 20k mixed operations agree with an independent model at every step', async (t) => {
  const a = runModel(1, 20_000);
  t.ok(a.stats.delivered! > 1000 && a.stats.acked! > 500 && a.stats.dead! > 20 && a.stats.expired! > 500, `exercised: ${JSON.stringify(a.stats)}`);
  t.ok(a.stats.dup! > 50 && a.stats.full! > 0 && a.stats.busy! > 0 && a.stats.restores! > 5, 'dedup, full, busy consumers and restores happened');
  const x = runModel(2, 4_000);
  const y = runModel(2, 4_000);
  t.equal(Buffer.compare(x.snapshot, y.snapshot), 0, 'the same seed gives a byte-identical snapshot');
  t.not(Buffer.compare(x.snapshot, runModel(3, 4_000).snapshot), 0, 'another seed agrees with the model too, and differs');
});
