/**
 * LockTable (src/locks/lock-table.ts): one test per product rule of docs/locks.md "Lock table", then a seeded
 * randomized run that checks the invariants after every operation and replays the tail on restored copies.
 */
import t from 'tap';
import { Packr, Unpackr } from 'msgpackr';
import {
  LOCK_LIMITS_DEFAULT,
  LockSnapshotError,
  LockTable,
  TOKEN_STRIDE,
  type AcquireResult,
  type ExpiryItem,
  type LockEvent,
  type LockLimits,
  type LockMode,
} from '../../src/locks/lock-table.js';
import { createRng } from '../../src/util/rng.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const T0 = 1_700_000_000_000;
const S = TOKEN_STRIDE;

function show(e: LockEvent): string {
  switch (e.t) {
    case 'granted':
      return `granted ${e.waiterId} ${e.name.toString('latin1')} ${e.owner.toString('latin1')} ${e.token}`;
    case 'deadlock':
      return `deadlock ${e.waiterId} ${e.cycle}`;
    default:
      return `${e.t} ${e.waiterId}`;
  }
}

/** A table driven like the apply path: every call gets the next log index and the bench's current stamp. */
class Bench {
  readonly table: LockTable;
  readonly log: LockEvent[] = [];
  index = 0;
  now = T0;

  constructor(limits: Partial<LockLimits> = {}) {
    this.table = new LockTable(limits, (e) => this.log.push(e));
  }

  acquire(name: string, owner: string, mode: LockMode, id: string, o: { ttl?: number; wait?: number } = {}): AcquireResult {
    return this.table.acquire(this.now, ++this.index, b(name), b(owner), mode, o.ttl ?? 1000, o.wait ?? 0, id);
  }
  /** The token of an acquire that must be granted. */
  grant(name: string, owner: string, mode: LockMode, id: string, o: { ttl?: number } = {}): number {
    const r = this.acquire(name, owner, mode, id, o);
    if (r.t !== 'granted') throw new Error(`expected a grant, got ${JSON.stringify(r)}`);
    return r.token;
  }
  release(name: string, owner: string, token: number | null = null): 0 | 1 {
    return this.table.release(this.now, ++this.index, b(name), b(owner), token);
  }
  renew(name: string, owner: string, ttl: number): 0 | 1 {
    return this.table.renew(this.now, ++this.index, b(name), b(owner), ttl);
  }
  cancel(name: string, id: string): 0 | 1 {
    return this.table.cancel(this.now, ++this.index, b(name), id);
  }
  abort(name: string, id: string, cycle: string): 0 | 1 {
    return this.table.abort(this.now, ++this.index, b(name), id, cycle);
  }
  expire(items: ExpiryItem[]): number {
    return this.table.expire(this.now, ++this.index, items);
  }
  /** Events since the last call, as text. */
  events(): string[] {
    const out = this.log.map(show);
    this.log.length = 0;
    return out;
  }
  holders(name: string): string[] {
    return (this.table.info(b(name), this.now)?.holders ?? []).map((h) => `${h.owner.toString('latin1')}:${h.mode}`);
  }
  queue(name: string): string[] {
    return (this.table.info(b(name), this.now)?.waiters ?? []).map((w) => `${w.owner.toString('latin1')}:${w.mode}:${w.waiterId}`);
  }
  check(): void {
    this.table.assertConsistent();
  }
}

const plan = (items: ExpiryItem[]): string[] =>
  items.map((i) => (i.kind === 'holder' ? `h ${i.name.toString('latin1')} ${i.token}` : `w ${i.name.toString('latin1')} ${i.waiterId}`));

t.test('an exclusive hold excludes everything and shared holds coexist', async (t) => {
  const k = new Bench();
  t.same(k.acquire('L', 'a', 'S', 'a1'), { t: 'granted', token: 1 * S });
  t.same(k.acquire('L', 'b', 'S', 'b1'), { t: 'granted', token: 2 * S });
  t.same(k.acquire('L', 'c', 'X', 'c1'), { t: 'busy' }, 'X is refused while S holders exist');
  t.same(k.holders('L'), ['a:S', 'b:S']);
  t.equal(k.table.info(b('L'), k.now)?.mode, 'S');
  k.release('L', 'a');
  k.release('L', 'b');
  t.same(k.acquire('M', 'a', 'X', 'a2'), { t: 'granted', token: 6 * S });
  t.same(k.acquire('M', 'b', 'S', 'b2'), { t: 'busy' }, 'S is refused under an X holder');
  t.same(k.acquire('M', 'c', 'X', 'c2'), { t: 'busy' }, 'X is refused under an X holder');
  t.equal(k.table.info(b('M'), k.now)?.mode, 'X');
  k.check();
});

t.test('a lock record exists while it has a holder or a waiter and is deleted when empty', async (t) => {
  const k = new Bench();
  t.equal(k.table.size, 0);
  t.equal(k.table.info(b('L'), k.now), null);
  k.grant('L', 'a', 'X', 'a1');
  t.same(k.acquire('L', 'b', 'X', 'b1', { wait: 100 }), { t: 'queued' });
  t.equal(k.table.size, 1);
  t.equal(k.release('L', 'a'), 1);
  t.same(k.holders('L'), ['b:X'], 'the waiter now holds: the record stays');
  t.equal(k.release('L', 'b'), 1);
  t.equal(k.table.size, 0, 'deleted when the last holder leaves');
  t.equal(k.table.info(b('L'), k.now), null);
  t.equal(k.acquire('L', 'a', 'X', 'a2').t, 'granted');
  t.equal(k.acquire('L', 'b', 'X', 'b2', { wait: 0 }).t, 'busy');
  t.equal(k.table.size, 1, 'a busy try-lock leaves nothing behind');
  k.check();
});

t.test('a new request queues behind any waiter even when the holders would admit it (strict FIFO)', async (t) => {
  const k = new Bench();
  k.grant('L', 'a', 'S', 'a1');
  t.same(k.acquire('L', 'x', 'X', 'x1', { wait: 1000 }), { t: 'queued' });
  t.same(k.acquire('L', 'c', 'S', 'c1', { wait: 1000 }), { t: 'queued' }, 'a shared request waits behind the waiting exclusive one');
  t.same(k.acquire('L', 'd', 'S', 'd1', { wait: 0 }), { t: 'busy' }, 'a try-lock is busy for the same reason');
  t.same(k.queue('L'), ['x:X:x1', 'c:S:c1']);
  t.same(k.holders('L'), ['a:S']);
  k.release('L', 'a');
  t.same(k.events(), [`granted x1 L x ${k.index * S}`], 'the writer is not starved');
  k.release('L', 'x');
  t.same(k.events(), [`granted c1 L c ${k.index * S}`]);
  k.check();
});

t.test('S S X S S waiting behind an X holder are granted in groups: S S, then X, then S S', async (t) => {
  const k = new Bench();
  k.grant('L', 'a', 'X', 'a1');
  for (const [o, m] of [['b', 'S'], ['c', 'S'], ['d', 'X'], ['e', 'S'], ['f', 'S']] as const) {
    t.same(k.acquire('L', o, m, `${o}1`, { wait: 10_000 }), { t: 'queued' });
  }
  t.equal(k.release('L', 'a'), 1); // index 7
  t.same(k.events(), [`granted b1 L b ${7 * S}`, `granted c1 L c ${7 * S + 1}`], 'consecutive shared heads together, distinct tokens');
  t.same(k.holders('L'), ['b:S', 'c:S']);
  t.same(k.queue('L'), ['d:X:d1', 'e:S:e1', 'f:S:f1'], 'S behind a waiting X waits though it would coexist with the holders');
  k.release('L', 'b');
  t.same(k.events(), []);
  k.release('L', 'c'); // index 9
  t.same(k.events(), [`granted d1 L d ${9 * S}`]);
  k.release('L', 'd'); // index 10
  t.same(k.events(), [`granted e1 L e ${10 * S}`, `granted f1 L f ${10 * S + 1}`]);
  t.same(k.queue('L'), []);
  k.check();
});

t.test('a grant at log index i gets max(lastToken + 1, i * TOKEN_STRIDE); grants in one call get increasing tokens', async (t) => {
  const k = new Bench();
  k.index = 41;
  t.equal(k.grant('L', 'a', 'X', 'a1'), 42 * S);
  for (const o of ['b', 'c', 'd']) k.acquire('L', o, 'S', `${o}1`, { wait: 1000 });
  k.index = 99;
  k.release('L', 'a');
  t.same(k.events(), [`granted b1 L b ${100 * S}`, `granted c1 L c ${100 * S + 1}`, `granted d1 L d ${100 * S + 2}`]);
  t.equal(k.grant('L', 'e', 'S', 'e1'), 101 * S);
  k.check();
});

t.test('fencing tokens keep increasing after the record is deleted and recreated', async (t) => {
  const k = new Bench();
  const first = k.grant('L', 'a', 'X', 'a1');
  k.release('L', 'a');
  t.equal(k.table.size, 0, 'the record and its lastToken are gone');
  const second = k.grant('L', 'b', 'X', 'b1');
  t.ok(second > first, `${second} > ${first}`);
  // The most grants one call can make (1 + waitersPerLockMax) still stay below the next index's first token.
  const big = new Bench({ waitersPerLockMax: 60_000 });
  big.grant('M', 'holder', 'X', 'h');
  for (let i = 0; i < 60_000; i++) big.table.acquire(big.now, ++big.index, b('M'), b(`o${i}`), 'S', 1000, 1000, `w${i}`);
  big.release('M', 'holder');
  const idx = big.index;
  const tokens = big.log.flatMap((e) => (e.t === 'granted' ? [e.token] : []));
  t.equal(tokens.length, 60_000);
  t.equal(tokens[0], idx * S);
  t.equal(tokens.at(-1), idx * S + 59_999, 'the last grant of the call is still below the next index');
  big.now += 1000;
  t.equal(big.expire(big.table.planExpiry(big.now, 70_000)), 60_000, 'every lease ends in one call');
  t.equal(big.table.size, 0);
  t.ok(big.grant('M', 'z', 'X', 'z') > idx * S + 59_999);
  t.throws(() => new LockTable({ waitersPerLockMax: 60_001 }), RangeError, 'more waiters could collide with the next index');
});

t.test('a lease ends at stamp + ttl, and another owner never treats a lapsed holder as gone', async (t) => {
  const k = new Bench();
  const tok = k.grant('L', 'a', 'X', 'a1', { ttl: 100 });
  t.equal(k.table.info(b('L'), k.now)?.holders[0]?.remainingMs, 100);
  t.equal(k.table.nextDeadline(), T0 + 100);
  k.now = T0 + 100; // expireAt <= stamp: lapsed
  t.same(k.acquire('L', 'b', 'X', 'b1'), { t: 'busy' }, 'the lapsed holder still excludes');
  t.same(k.acquire('L', 'b', 'X', 'b2', { wait: 1000 }), { t: 'queued' });
  t.same(k.holders('L'), ['a:X']);
  t.same(plan(k.table.planExpiry(T0 + 99, 10)), [], 'nothing to expire before expireAt');
  t.same(plan(k.table.planExpiry(T0 + 100, 10)), [`h L ${tok}`]);
  t.equal(k.expire(k.table.planExpiry(T0 + 100, 10)), 1, 'only expire() removes it');
  t.same(k.events(), [`granted b2 L b ${k.index * S}`]);
  k.check();
});

t.test('a holder re-acquiring in its mode gets the same token and a fresh lease; X asking S keeps X', async (t) => {
  const k = new Bench();
  const x = k.grant('L', 'a', 'X', 'a1', { ttl: 100 });
  k.now += 60;
  t.same(k.acquire('L', 'a', 'X', 'a2', { ttl: 500 }), { t: 'granted', token: x });
  t.equal(k.table.info(b('L'), k.now)?.holders[0]?.remainingMs, 500);
  t.same(k.acquire('L', 'a', 'S', 'a3', { ttl: 300 }), { t: 'granted', token: x }, 'an X holder asking S gets its X token');
  t.same(k.holders('L'), ['a:X'], 'and stays exclusive');
  t.equal(k.table.info(b('L'), k.now)?.holders[0]?.remainingMs, 300, 'with the S request ttl');
  const s = k.grant('M', 'a', 'S', 'a4');
  k.grant('M', 'b', 'S', 'b1');
  k.acquire('M', 'c', 'X', 'c1', { wait: 1000 });
  t.same(k.acquire('M', 'a', 'S', 'a5'), { t: 'granted', token: s }, 'a re-acquire is not a new request: waiters do not block it');
  k.check();
});

t.test('a lapsed holder re-acquiring drops its grant first (granting waiters), then asks as a new request', async (t) => {
  const k = new Bench();
  const old = k.grant('L', 'a', 'X', 'a1', { ttl: 100 });
  k.acquire('L', 'b', 'S', 'b1', { wait: 1000 });
  k.now = T0 + 100;
  t.same(k.acquire('L', 'a', 'X', 'a2', { wait: 1000 }), { t: 'queued' });
  t.same(k.events(), [`granted b1 L b ${k.index * S}`]);
  t.same(k.holders('L'), ['b:S']);
  t.same(k.queue('L'), ['a:X:a2']);
  const n = new Bench();
  const t1 = n.grant('M', 'a', 'S', 'a1', { ttl: 10 });
  n.now += 10;
  const t2 = n.grant('M', 'a', 'S', 'a2', { ttl: 10 });
  t.ok(t2 > t1 && old > 0, 'a lapsed grant is not renewed: the new grant has a new token');
  k.check();
  n.check();
});

t.test('a sole S holder upgrading to X is converted at once with a new, larger token', async (t) => {
  const k = new Bench();
  const s = k.grant('L', 'a', 'S', 'a1');
  k.acquire('L', 'w', 'X', 'w1', { wait: 1000 });
  const x = k.grant('L', 'a', 'X', 'a2', { ttl: 50 });
  t.ok(x > s, 'the exclusive grant is fenced above the shared one');
  t.same(k.holders('L'), ['a:X']);
  t.equal(k.table.info(b('L'), k.now)?.holders[0]?.remainingMs, 50);
  t.same(k.queue('L'), ['w:X:w1']);
  t.equal(k.release('L', 'a', s), 0, 'the S token no longer names the grant');
  t.equal(k.release('L', 'a', x), 1);
  t.same(k.events(), [`granted w1 L w ${k.index * S}`]);
  k.check();
});

t.test('an upgrade that must wait goes to the head of the queue, keeps its S hold, and is granted as sole holder', async (t) => {
  const k = new Bench();
  const sa = k.grant('L', 'a', 'S', 'a1');
  k.grant('L', 'b', 'S', 'b1');
  t.same(k.acquire('L', 'c', 'X', 'c1', { wait: 1000 }), { t: 'queued' });
  t.same(k.acquire('L', 'a', 'X', 'a2', { wait: 0 }), { t: 'busy' }, 'a try-upgrade with another holder is busy');
  t.same(k.acquire('L', 'a', 'X', 'a3', { wait: 1000 }), { t: 'queued' });
  t.same(k.queue('L'), ['a:X:a3', 'c:X:c1'], 'ahead of the waiting X: behind it, a would wait for its own S hold');
  t.same(k.holders('L'), ['a:S', 'b:S'], 'the S hold is kept while waiting');
  t.equal(k.table.info(b('L'), k.now)?.holders[0]?.token, sa);
  t.same(k.acquire('L', 'd', 'S', 'd1', { wait: 0 }), { t: 'busy' });
  t.equal(k.release('L', 'b'), 1);
  const x = k.index * S;
  t.same(k.events(), [`granted a3 L a ${x}`]);
  t.same(k.holders('L'), ['a:X']);
  t.same(k.queue('L'), ['c:X:c1']);
  k.release('L', 'a');
  t.same(k.events(), [`granted c1 L c ${k.index * S}`]);
  // A second upgrader queues behind the first one (both hold), still ahead of plain waiters.
  const m = new Bench();
  for (const o of ['a', 'b', 'c']) m.grant('M', o, 'S', `${o}1`);
  m.acquire('M', 'z', 'X', 'z1', { wait: 1000 });
  m.acquire('M', 'a', 'X', 'a2', { wait: 1000 });
  m.acquire('M', 'b', 'X', 'b2', { wait: 1000 });
  t.same(m.queue('M'), ['a:X:a2', 'b:X:b2', 'z:X:z1']);
  k.check();
  m.check();
});

t.test('an owner asking again while waiting keeps its place under the new waiter id; the old id times out', async (t) => {
  const k = new Bench();
  k.grant('L', 'a', 'X', 'a1', { ttl: 100_000 });
  k.now = T0 + 10;
  k.acquire('L', 'b', 'X', 'b1', { wait: 100 });
  k.acquire('L', 'c', 'X', 'c1', { wait: 1000 });
  k.now = T0 + 50;
  t.same(k.acquire('L', 'b', 'X', 'b2', { wait: 500 }), { t: 'queued' });
  t.same(k.events(), ['timeout b1']);
  t.same(k.queue('L'), ['b:X:b2', 'c:X:c1'], 'same position');
  const w = k.table.info(b('L'), k.now)?.waiters[0];
  t.equal(w?.waitedMs, 40, 'the wait still counts from when it began');
  t.same(plan(k.table.planExpiry(T0 + 549, 10)), [], 'the old deadline (T0+110) is gone');
  t.same(plan(k.table.planExpiry(T0 + 550, 10)), ['w L b2'], 'the new deadline is stamp + waitMs');
  const r = k.acquire('L', 'b', 'S', 'b3', { wait: 500 });
  t.equal(r.t, 'error');
  t.match(r.t === 'error' ? r.message : '', /^ERR this owner already waits for lock 'L' in mode X/);
  t.same(k.events(), []);
  t.same(k.queue('L'), ['b:X:b2', 'c:X:c1'], 'a mode change is refused and changes nothing');
  t.same(k.acquire('L', 'b', 'X', 'b4', { wait: 0 }), { t: 'busy' }, 'a retry with no wait ends the wait');
  t.same(k.events(), ['timeout b2']);
  t.same(k.queue('L'), ['c:X:c1']);
  // Retrying under the same id refreshes the deadline without an event (the id is not superseded).
  t.same(k.acquire('L', 'c', 'X', 'c1', { wait: 2000 }), { t: 'queued' });
  t.same(k.events(), []);
  t.same(plan(k.table.planExpiry(T0 + 2050, 10)), ['w L c1']);
  k.check();
});

t.test('a waiter waits from its stamp until stamp + waitMs', async (t) => {
  const k = new Bench();
  k.grant('L', 'a', 'X', 'a1', { ttl: 10_000 });
  k.now = T0 + 7;
  k.acquire('L', 'b', 'S', 'b1', { wait: 30 });
  t.same(k.table.edges().map((e) => e.since), [T0 + 7]);
  t.equal(k.table.info(b('L'), T0 + 20)?.waiters[0]?.waitedMs, 13);
  t.equal(k.table.nextDeadline(), T0 + 37);
  t.same(plan(k.table.planExpiry(T0 + 36, 10)), []);
  t.same(plan(k.table.planExpiry(T0 + 37, 10)), ['w L b1']);
  k.now = T0 + 36;
  t.equal(k.expire([{ kind: 'waiter', name: b('L'), waiterId: 'b1' }]), 0, 'not before the deadline');
  k.now = T0 + 37;
  t.equal(k.expire([{ kind: 'waiter', name: b('L'), waiterId: 'b1' }]), 1);
  t.same(k.events(), ['timeout b1']);
  k.check();
});

t.test('release removes a live hold (1), a lapsed one (0), and leaves others and mere waiters alone (0)', async (t) => {
  const k = new Bench();
  const tok = k.grant('L', 'a', 'X', 'a1', { ttl: 100 });
  k.acquire('L', 'b', 'X', 'b1', { wait: 1000 });
  t.equal(k.release('L', 'b'), 0, 'b only waits');
  t.same(k.queue('L'), ['b:X:b1'], 'and keeps waiting');
  t.equal(k.release('L', 'a', tok + 1), 0, 'a wrong token');
  t.same(k.holders('L'), ['a:X']);
  t.equal(k.release('L', 'zz'), 0, 'not held');
  t.equal(k.release('L', 'a', tok), 1);
  t.same(k.events(), [`granted b1 L b ${k.index * S}`]);
  k.now += 1000; // b's lease (1000 ms from the grant) lapses now
  t.equal(k.release('L', 'b', null), 0, 'a lapsed hold reports 0');
  t.equal(k.table.size, 0, 'but is removed');
  t.equal(k.release('nothing', 'a'), 0);
  k.check();
});

t.test('renew extends a live hold (1); a lapsed hold is removed (0) and its waiters granted; no hold: 0', async (t) => {
  const k = new Bench();
  k.grant('L', 'a', 'X', 'a1', { ttl: 100 });
  k.acquire('L', 'b', 'X', 'b1', { wait: 10_000 });
  k.now = T0 + 50;
  t.equal(k.renew('L', 'a', 100), 1);
  t.equal(k.table.info(b('L'), k.now)?.holders[0]?.remainingMs, 100);
  t.same(plan(k.table.planExpiry(T0 + 149, 10)), [], 'the old lease end is forgotten');
  t.equal(k.renew('L', 'b', 100), 0, 'a waiter cannot renew');
  k.now = T0 + 150;
  t.equal(k.renew('L', 'a', 100), 0, 'lapsed at expireAt');
  t.same(k.events(), [`granted b1 L b ${k.index * S}`]);
  t.same(k.holders('L'), ['b:X']);
  t.equal(k.renew('M', 'a', 100), 0);
  k.check();
});

t.test('cancel removes a queued waiter (and re-grants), or releases the grant that answered it', async (t) => {
  const k = new Bench();
  k.grant('L', 'a', 'S', 'a1');
  k.acquire('L', 'x', 'X', 'x1', { wait: 1000 });
  k.acquire('L', 'c', 'S', 'c1', { wait: 1000 });
  t.equal(k.cancel('L', 'x1'), 1);
  t.same(k.events(), ['cancelled x1', `granted c1 L c ${k.index * S}`], 'removing the head X unblocks the S behind it');
  t.same(k.holders('L'), ['a:S', 'c:S']);
  t.equal(k.cancel('L', 'x1'), 0, 'already gone');
  t.equal(k.cancel('L', 'c1'), 1, 'c1 was granted as its client left: the grant is released');
  t.same(k.holders('L'), ['a:S']);
  t.equal(k.cancel('L', 'a1'), 1, 'also a grant made at once');
  t.equal(k.table.size, 0);
  k.grant('M', 'a', 'X', 'a2');
  k.grant('M', 'a', 'X', 'a3');
  t.equal(k.cancel('M', 'a2'), 0, 'a re-acquire answered a3: a2 no longer names the grant');
  t.equal(k.cancel('M', 'a3'), 1);
  t.equal(k.cancel('nothing', 'q'), 0);
  t.same(k.events(), []);
  k.check();
});

t.test('abort fails a queued waiter as a deadlock victim, which keeps its locks; deadlocks() keeps the latest', async (t) => {
  const k = new Bench({ deadlocksKept: 2 });
  k.grant('L1', 'a', 'X', 'a1');
  k.grant('L2', 'b', 'X', 'b1');
  k.acquire('L2', 'a', 'X', 'a2', { wait: 1000 });
  k.acquire('L1', 'b', 'X', 'b2', { wait: 1000 });
  k.acquire('L1', 'c', 'S', 'c1', { wait: 1000 });
  k.now = T0 + 5;
  t.equal(k.abort('L1', 'b2', 'b -[L1]-> a -[L2]-> b'), 1);
  t.same(k.events(), ['deadlock b2 b -[L1]-> a -[L2]-> b']);
  t.same(k.holders('L2'), ['b:X'], 'the victim keeps what it holds');
  t.same(k.queue('L1'), ['c:S:c1']);
  t.equal(k.abort('L1', 'b2', 'again'), 0, 'no longer queued');
  t.equal(k.abort('L1', 'a1', 'holder'), 0, 'a holder is not a waiter');
  t.same(
    k.table.deadlocks().map((d) => [d.at, d.name.toString(), d.victim.toString(), d.waiterId, d.cycle]),
    [[T0 + 5, 'L1', 'b', 'b2', 'b -[L1]-> a -[L2]-> b']],
  );
  // Aborting a head X re-runs granting.
  k.grant('M', 'h', 'S', 'h1');
  k.acquire('M', 'x', 'X', 'x1', { wait: 1000 });
  k.acquire('M', 's', 'S', 's1', { wait: 1000 });
  t.equal(k.abort('M', 'x1', 'c2'), 1);
  t.same(k.events(), ['deadlock x1 c2', `granted s1 M s ${k.index * S}`]);
  k.acquire('L2', 'c', 'X', 'c9', { wait: 1000 });
  t.equal(k.abort('L2', 'c9', 'c3'), 1);
  t.same(
    k.table.deadlocks().map((d) => d.cycle),
    ['c2', 'c3'],
    'oldest first, only deadlocksKept',
  );
  k.check();
});

t.test('expire removes only what is still due at its stamp, ignores stale items, then grants waiters', async (t) => {
  const k = new Bench();
  const ta = k.grant('L', 'a', 'S', 'a1', { ttl: 100 });
  const tb = k.grant('L', 'b', 'S', 'b1', { ttl: 200 });
  k.acquire('L', 'c', 'X', 'c1', { wait: 150 });
  k.acquire('L', 'd', 'S', 'd1', { wait: 1000 });
  const items = k.table.planExpiry(T0 + 200, 10);
  t.same(plan(items), [`h L ${ta}`, 'w L c1', `h L ${tb}`], 'earliest first');
  k.now = T0 + 150;
  t.equal(k.expire(items), 2, 'a and c1 are due at T0+150, b is not');
  t.same(k.events(), ['timeout c1', `granted d1 L d ${k.index * S}`], 'timeouts first, then grants');
  t.same(k.holders('L'), ['b:S', 'd:S']);
  t.equal(k.expire(items), 0, 'proposing the same items again is harmless');
  t.equal(k.expire([{ kind: 'holder', name: b('L'), token: ta }, { kind: 'waiter', name: b('nope'), waiterId: 'x' }]), 0);
  k.now = T0 + 200;
  t.equal(k.expire(items), 1, 'b is due now');
  t.same(k.holders('L'), ['d:S']);
  k.check();
});

t.test('planExpiry returns nothing before a lease ends, is bounded by max, and stays cheap for 100k locks', async (t) => {
  const k = new Bench();
  const n = 100_000;
  for (let i = 0; i < n; i++) k.table.acquire(k.now, ++k.index, b(`lock:${i}`), b(`o${i}`), 'X', 1000 + ((i * 7919) % n), 0, `w${i}`);
  t.equal(k.table.size, n);
  t.equal(k.table.nextDeadline(), T0 + 1000);
  t.same(k.table.planExpiry(T0 + 999, 100), []);
  const due = k.table.planExpiry(T0 + 1004, 3);
  t.equal(due.length, 3);
  const all = k.table.planExpiry(T0 + 1004, 100);
  t.equal(all.length, 5, 'exactly the five leases ending by T0+1004');
  const ends = all.map((i) => (i.kind === 'holder' ? (k.table.info(i.name, T0)?.holders[0]?.remainingMs ?? -1) : -1));
  t.same(ends, [1000, 1001, 1002, 1003, 1004], 'earliest first');
  k.now = T0 + 1004;
  t.equal(k.expire(all), 5);
  t.equal(k.table.size, n - 5);
  t.equal(k.table.nextDeadline(), T0 + 1005);
});

t.test('events are raised synchronously inside the mutating call, in grant order, once its state is complete', async (t) => {
  const table = new LockTable();
  let index = 0;
  table.acquire(T0, ++index, b('L'), b('a'), 'X', 1000, 0, 'a1');
  table.acquire(T0, ++index, b('L'), b('b'), 'S', 1000, 1000, 'b1');
  table.acquire(T0, ++index, b('L'), b('c'), 'S', 1000, 1000, 'c1');
  const seen: string[] = [];
  let inside = false;
  table.onEvent = (e) => {
    t.ok(inside, 'raised inside the call');
    const holders = table.info(b('L'), T0)?.holders.map((h) => h.owner.toString()) ?? [];
    seen.push(`${show(e)} holders=${holders.join(',')}`);
  };
  inside = true;
  table.release(T0, ++index, b('L'), b('a'), null);
  inside = false;
  t.same(seen, [`granted b1 L b ${4 * S} holders=b,c`, `granted c1 L c ${4 * S + 1} holders=b,c`]);
  table.onEvent = null;
  table.acquire(T0, ++index, b('L'), b('d'), 'X', 1000, 1000, 'd1');
  t.equal(table.cancel(T0, ++index, b('L'), 'd1'), 1, 'no listener is fine');
});

t.test('limits: waiters per lock, locks per owner (held or waited for, this table only), name and owner bytes', async (t) => {
  const k = new Bench({ waitersPerLockMax: 2, locksPerOwnerMax: 2, nameBytesMax: 4, ownerBytesMax: 3 });
  k.grant('x', 'a', 'X', 'a1');
  k.acquire('x', 'b', 'X', 'b1', { wait: 100 });
  k.acquire('x', 'c', 'X', 'c1', { wait: 100 });
  t.same(k.acquire('x', 'd', 'X', 'd1', { wait: 100 }), { t: 'error', message: "ERR too many waiters on lock 'x' (max 2)" });
  t.same(k.acquire('x', 'd', 'X', 'd2', { wait: 0 }), { t: 'busy' }, 'a try-lock is just busy');
  t.same(k.acquire('x', 'b', 'X', 'b2', { wait: 100 }), { t: 'queued' }, 'a retry adds no waiter');
  t.same(k.events(), ['timeout b1']);
  // Owner limit: a holds x and M, b waits for x and holds N.
  const ma = k.grant('M', 'a', 'S', 'a2');
  t.same(k.acquire('N', 'a', 'S', 'a3'), { t: 'error', message: 'ERR too many locks held or awaited by this owner on this shard (max 2)' });
  t.same(k.acquire('M', 'a', 'S', 'a4'), { t: 'granted', token: ma }, 're-acquire is fine');
  k.grant('N', 'b', 'S', 'b3');
  t.same(k.acquire('O', 'b', 'S', 'b4', { wait: 100 }), { t: 'error', message: 'ERR too many locks held or awaited by this owner on this shard (max 2)' }, 'waits count');
  k.release('M', 'a');
  t.equal(k.acquire('N', 'a', 'S', 'a5').t, 'granted', 'releasing frees a slot');
  const other = new LockTable({ locksPerOwnerMax: 2 });
  t.equal(other.acquire(T0, 1, b('Z'), b('a'), 'X', 10, 0, 'z').t, 'granted', 'another table (shard) counts on its own');
  // Upgrades count as waiters.
  const u = new Bench({ waitersPerLockMax: 1 });
  u.grant('U', 'a', 'S', 'a1');
  u.grant('U', 'b', 'S', 'b1');
  u.acquire('U', 'c', 'X', 'c1', { wait: 100 });
  t.equal(u.acquire('U', 'a', 'X', 'a2', { wait: 100 }).t, 'error');
  // Names and owners.
  t.same(k.acquire('', 'a', 'X', 'e1'), { t: 'error', message: 'ERR empty lock name' });
  t.same(k.acquire('abcde', 'a', 'X', 'e2'), { t: 'error', message: 'ERR lock name longer than 4 bytes' });
  t.same(k.acquire('abcd', '', 'X', 'e3'), { t: 'error', message: 'ERR empty lock owner' });
  t.same(k.acquire('abcd', 'abcd', 'X', 'e4'), { t: 'error', message: 'ERR lock owner longer than 3 bytes' });
  t.equal(k.acquire('abcd', 'abc', 'X', 'e5').t, 'granted', 'exactly at the limits');
  const q = new Bench({ waitersPerLockMax: 1 });
  q.grant('\u0000\'\u00ff', 'a', 'X', 'a');
  q.acquire('\u0000\'\u00ff', 'b', 'X', 'b', { wait: 10 });
  t.same(q.acquire('\u0000\'\u00ff', 'c', 'X', 'c', { wait: 10 }), { t: 'error', message: "ERR too many waiters on lock '\\x00\\x27\\xff' (max 1)" }, 'names are quoted safely');
  k.check();
});

t.test('bad arguments are bugs in the caller and throw RangeError without changing anything', async (t) => {
  const table = new LockTable();
  table.acquire(T0, 5, b('L'), b('a'), 'X', 10, 0, 'a1');
  const snap = Buffer.from(table.snapshot());
  t.throws(() => table.acquire(T0, 6, b('L'), b('b'), 'X', 0, 0, 'b1'), RangeError, 'ttlMs 0');
  t.throws(() => table.acquire(T0, 6, b('L'), b('b'), 'X', 1.5, 0, 'b1'), RangeError, 'fractional ttl');
  t.throws(() => table.acquire(T0, 6, b('L'), b('b'), 'X', 10, -1, 'b1'), RangeError, 'negative wait');
  t.throws(() => table.acquire(T0, 6, b('L'), b('b'), 'X', 10, Infinity, 'b1'), RangeError, 'infinite wait');
  t.throws(() => table.acquire(T0, 6, b('L'), b('b'), 'Q' as LockMode, 10, 0, 'b1'), RangeError, 'mode');
  t.throws(() => table.acquire(T0, 6, b('L'), b('b'), 'X', 10, 0, ''), RangeError, 'empty waiter id');
  t.throws(() => table.acquire(T0, 5, b('L'), b('b'), 'X', 10, 0, 'b1'), RangeError, 'index not increasing');
  t.throws(() => table.acquire(T0 - 1, 6, b('L'), b('b'), 'X', 10, 0, 'b1'), RangeError, 'stamp going back');
  t.throws(() => table.release(T0, 6, b('L'), b('a'), 1.5), RangeError, 'token');
  t.throws(() => table.renew(T0, 6, b('L'), b('a'), 0), RangeError, 'renew ttl');
  table.acquire(T0, 6, b('L'), b('b'), 'X', 10, 100, 'b1');
  t.throws(() => table.acquire(T0, 7, b('L'), b('c'), 'X', 10, 100, 'b1'), RangeError, 'a waiter id in use by another owner');
  t.throws(() => new LockTable({ locksPerOwnerMax: 0 }), RangeError);
  t.throws(() => new LockTable({ deadlocksKept: -1 }), RangeError);
  const fresh = new LockTable();
  fresh.restore(snap);
  t.equal(fresh.acquire(T0, 6, b('L'), b('b'), 'X', 10, 0, 'b1').t, 'busy', 'index 6 was never taken by a throwing call');
  t.same(LOCK_LIMITS_DEFAULT, { waitersPerLockMax: 1024, locksPerOwnerMax: 10_000, nameBytesMax: 512, ownerBytesMax: 256, deadlocksKept: 32 });
});

t.test('edges: each waiter waits for conflicting holders and for earlier waiters when either is X', async (t) => {
  const k = new Bench();
  const ta = k.grant('L', 'a', 'S', 'a1');
  const tb = k.grant('L', 'b', 'S', 'b1');
  k.now = T0 + 1;
  k.acquire('L', 'c', 'X', 'c1', { wait: 1000 });
  k.now = T0 + 2;
  k.acquire('L', 'd', 'S', 'd1', { wait: 1000 });
  k.now = T0 + 3;
  k.acquire('L', 'e', 'X', 'e1', { wait: 1000 });
  k.now = T0 + 4;
  k.acquire('L', 'a', 'X', 'a2', { wait: 1000 }); // upgrade: to the head
  const edges = k.table.edges().map((e) => `${e.from.toString()}/${e.waiterId}@${e.since - T0} -[${e.name.toString()}]-> ${e.to.toString()}/${e.toId}`);
  t.same(edges, [
    `a/a2@4 -[L]-> b/h${tb}`, // not to its own S hold
    `c/c1@1 -[L]-> a/h${ta}`,
    `c/c1@1 -[L]-> b/h${tb}`,
    'c/c1@1 -[L]-> a/wa2',
    'd/d1@2 -[L]-> a/wa2', // S waits for no S holder, but for earlier X waiters
    'd/d1@2 -[L]-> c/wc1',
    `e/e1@3 -[L]-> a/h${ta}`,
    `e/e1@3 -[L]-> b/h${tb}`,
    'e/e1@3 -[L]-> a/wa2',
    'e/e1@3 -[L]-> c/wc1',
    'e/e1@3 -[L]-> d/wd1',
  ]);
  const empty = new Bench();
  empty.grant('M', 'a', 'X', 'a1');
  t.same(empty.table.edges(), [], 'no waiter, no edge');
});

t.test('owned lists the holds of an owner by name; info shows holders in grant order and waiters in queue order', async (t) => {
  const k = new Bench();
  const tz = k.grant('z', 'a', 'X', 'a1', { ttl: 100 });
  const tm = k.grant('m', 'a', 'S', 'a2', { ttl: 200 });
  k.grant('q', 'b', 'X', 'b1');
  k.acquire('q', 'a', 'S', 'a3', { wait: 100 });
  k.now = T0 + 10;
  t.same(
    k.table.owned(b('a'), k.now).map((o) => [o.name.toString(), o.mode, o.token, o.remainingMs]),
    [['m', 'S', tm, 190], ['z', 'X', tz, 90]],
    'waits are not holds',
  );
  t.same(k.table.owned(b('nobody'), k.now), []);
  const info = k.table.info(b('q'), k.now);
  t.same(info?.waiters.map((w) => [w.owner.toString(), w.mode, w.waitedMs, w.waiterId]), [['a', 'S', 10, 'a3']]);
});

t.test('snapshot and restore round-trip everything; the restored table behaves identically', async (t) => {
  const limits = { deadlocksKept: 3 };
  const k = new Bench(limits);
  k.grant('L', 'a', 'S', 'a1', { ttl: 300 });
  k.grant('L', 'b', 'S', 'b1', { ttl: 400 });
  k.acquire('L', 'c', 'X', 'c1', { wait: 500 });
  k.acquire('L', 'a', 'X', 'a2', { wait: 600 }); // upgrade waiter
  k.acquire('L', 'd', 'S', 'd1', { wait: 700 });
  k.grant('M', 'c', 'X', 'c2');
  k.acquire('M', 'a', 'X', 'a3', { wait: 800 });
  k.acquire('M', 'b', 'X', 'b9', { wait: 800 });
  k.abort('M', 'b9', 'a cycle');
  k.grant('\u00ff\u0000bin', '\u0001', 'X', 'bin');
  k.events();
  const snap = k.table.snapshot();
  const copy = new Bench(limits);
  copy.grant('junk', 'x', 'X', 'junk'); // restore replaces whatever was there
  copy.table.restore(snap);
  copy.index = k.index;
  copy.now = k.now;
  copy.check();
  t.same(Buffer.from(copy.table.snapshot()), Buffer.from(snap), 'byte-identical');
  t.same(copy.table.deadlocks(), k.table.deadlocks());
  t.same(copy.table.owned(b('a'), k.now), k.table.owned(b('a'), k.now), 'owner index rebuilt');
  t.same(copy.table.edges(), k.table.edges());
  t.same(copy.table.planExpiry(T0 + 10_000, 100), k.table.planExpiry(T0 + 10_000, 100));
  t.equal(copy.table.nextDeadline(), k.table.nextDeadline());
  const script = (x: Bench): unknown[] => {
    const out: unknown[] = [];
    x.now = T0 + 350;
    out.push(x.release('L', 'b'), x.events());
    out.push(x.acquire('L', 'e', 'X', 'e1', { wait: 100 }));
    x.now = T0 + 400;
    out.push(x.expire(x.table.planExpiry(x.now, 10)), x.events());
    out.push(x.cancel('M', 'a3'), x.events(), x.renew('M', 'c', 50), x.release('M', 'c'));
    out.push(x.abort('L', 'e1', 'another'), x.events(), x.table.deadlocks().length);
    return out;
  };
  t.same(script(copy), script(k));
  t.same(Buffer.from(copy.table.snapshot()), Buffer.from(k.table.snapshot()));
  t.same(Buffer.from(new LockTable().snapshot()), Buffer.from(new LockTable().snapshot()), 'empty tables agree');
});

t.test('restore rejects corrupt or foreign input with a clear error and changes nothing', async (t) => {
  const k = new Bench();
  k.grant('L', 'a', 'S', 'a1');
  k.grant('L', 'b', 'S', 'b1');
  k.acquire('L', 'c', 'X', 'c1', { wait: 100 });
  k.grant('M', 'a', 'X', 'a2');
  const good = k.table.snapshot();
  const packr = new Packr({ useRecords: false });
  const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: false });
  const edit = (f: (s: any[]) => void): Uint8Array => {
    const s = unpackr.unpack(good) as any[];
    f(s);
    return new Uint8Array(packr.pack(s));
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ['garbage', Buffer.from('not msgpack at all'), /corrupt lock table snapshot/],
    ['truncated', good.subarray(0, good.length - 3), /not msgpack/],
    ['trailing bytes', Buffer.concat([good, Buffer.from([0])]), /not msgpack/],
    ['version', edit((s) => (s[0] = 99)), /version 99/],
    ['root shape', edit((s) => s.pop()), /root has 4 fields/],
    ['names out of order', edit((s) => s[3].reverse()), /not strictly ascending/],
    ['duplicate name', edit((s) => (s[3][1] = s[3][0])), /not strictly ascending/],
    ['token above lastToken', edit((s) => (s[3][0][2][0][2] = s[3][0][1] + 1)), /holder 0 token/],
    ['lastToken beyond lastIndex', edit((s) => (s[3][0][1] = (s[2] + 1) * S)), /lastToken/],
    ['X holder not alone', edit((s) => (s[3][0][2][0][1] = 'X')), /X holder not alone/],
    ['bad mode', edit((s) => (s[3][0][3][0][1] = 'Z')), /mode Z/],
    ['grantable head', edit((s) => (s[3][0][3][0][1] = 'S')), /head waiter is grantable/],
    ['empty record', edit((s) => s[3].push([Buffer.from('zz'), S, [], []])), /no holder and no waiter/],
    ['owner holds twice', edit((s) => s[3][0][2].push([Buffer.from('a'), 'S', s[3][0][1], 0, 'q'])), /owner holds twice/],
    ['owner waits S while holding S', edit((s) => s[3][0][3][0].splice(0, 2, Buffer.from('a'), 'S')), /waits S while holding S/],
    ['name not bytes', edit((s) => (s[3][0][0] = 'L')), /name is not a non-empty byte string/],
    ['negative stamp', edit((s) => (s[1] = -1)), /lastStamp/],
    ['fractional deadline', edit((s) => (s[3][0][3][0][4] = 1.5)), /deadline/],
    ['deadlock shape', edit((s) => s[4].push([1, 2])), /deadlock 0 has 2 fields/],
  ];
  const restored = new LockTable();
  restored.restore(good);
  for (const [what, data, re] of cases) {
    const err = (() => {
      try {
        restored.restore(data);
      } catch (e) {
        return e;
      }
      return null;
    })();
    t.ok(err instanceof LockSnapshotError, `${what}: LockSnapshotError`);
    t.match((err as Error | null)?.message ?? '', re, what);
    t.equal((err as LockSnapshotError | null)?.code, 'LOCKS_CORRUPT');
    t.same(Buffer.from(restored.snapshot()), Buffer.from(good), `${what}: state unchanged`);
  }
  restored.assertConsistent();
});

t.test('randomized: invariants hold after every one of 20k operations, and restored copies stay identical', async (t) => {
  const seed = 20_240_601;
  const rng = createRng(seed);
  const limits: Partial<LockLimits> = { waitersPerLockMax: 4, locksPerOwnerMax: 4, deadlocksKept: 3 };
  const NAMES = ['a', 'b', 'c', 'd', 'e', 'f'];
  const OWNERS = ['o1', 'o2', 'o3', 'o4', 'o5', 'o6', 'o7'];
  const OPS = 20_000;
  const events: LockEvent[] = [];
  const table = new LockTable(limits, (e) => events.push(e));
  let twin: LockTable | null = null;
  const twinEvents: string[] = [];
  let now = T0;
  let index = 0;
  let nextId = 0;
  /** Queued waiter id -> lock name: each must be settled by exactly one event. */
  const pending = new Map<string, string>();
  const granted: { id: string; name: string }[] = [];
  const maxToken = new Map<string, number>();
  const count = new Map<string, number>();
  const bump = (k: string): void => void count.set(k, (count.get(k) ?? 0) + 1);
  const pick = <T>(xs: readonly T[]): T => xs[rng.int(0, xs.length)] as T;

  type Op =
    | { k: 'acquire'; name: string; owner: string; mode: LockMode; ttl: number; wait: number; id: string }
    | { k: 'release'; name: string; owner: string; token: number | null }
    | { k: 'renew'; name: string; owner: string; ttl: number }
    | { k: 'cancel'; name: string; id: string }
    | { k: 'abort'; name: string; id: string }
    | { k: 'expire'; items: ExpiryItem[] };

  const run = (tb: LockTable, op: Op, stamp: number, ix: number): unknown => {
    switch (op.k) {
      case 'acquire':
        return tb.acquire(stamp, ix, b(op.name), b(op.owner), op.mode, op.ttl, op.wait, op.id);
      case 'release':
        return tb.release(stamp, ix, b(op.name), b(op.owner), op.token);
      case 'renew':
        return tb.renew(stamp, ix, b(op.name), b(op.owner), op.ttl);
      case 'cancel':
        return tb.cancel(stamp, ix, b(op.name), op.id);
      case 'abort':
        return tb.abort(stamp, ix, b(op.name), op.id, `cycle@${ix}`);
      case 'expire':
        return tb.expire(stamp, ix, op.items);
    }
  };

  const fail = (step: number, what: string): never => {
    throw new Error(`seed ${seed}, step ${step}: ${what}`);
  };

  const settle = (step: number): void => {
    for (const e of events) {
      bump(`event:${e.t}`);
      const name = pending.get(e.waiterId);
      if (name === undefined) fail(step, `event ${show(e)} for a waiter that is not queued`);
      pending.delete(e.waiterId);
      if (e.t === 'granted') {
        const key = e.name.toString('latin1');
        if (key !== name) fail(step, `granted ${e.waiterId} on ${key}, it waited on ${name}`);
        if (e.token <= (maxToken.get(key) ?? 0)) fail(step, `token ${e.token} on ${key} not above ${maxToken.get(key)}`);
        maxToken.set(key, e.token);
        granted.push({ id: e.waiterId, name: key });
      }
    }
    events.length = 0;
  };

  const checkState = (step: number): void => {
    table.assertConsistent();
    const queued = new Map<string, string>();
    const holds = new Map<string, string[]>();
    for (const name of NAMES) {
      const info = table.info(b(name), now);
      if (info === null) continue;
      const x = info.holders.filter((h) => h.mode === 'X').length;
      if (x > 0 && info.holders.length !== 1) fail(step, `X holder with others on ${name}`);
      for (const h of info.holders) {
        if (h.token > (maxToken.get(name) ?? 0)) fail(step, `holder token ${h.token} on ${name} never granted`);
        const o = h.owner.toString('latin1');
        holds.set(o, [...(holds.get(o) ?? []), `${name}:${h.mode}:${h.token}`]);
      }
      for (const w of info.waiters) queued.set(w.waiterId, name);
    }
    if (queued.size !== pending.size) fail(step, `${queued.size} waiters queued, ${pending.size} pending`);
    for (const [id, name] of pending) if (queued.get(id) !== name) fail(step, `pending ${id} not queued on ${name}`);
    for (const o of OWNERS) {
      const got = table.owned(b(o), now).map((h) => `${h.name.toString('latin1')}:${h.mode}:${h.token}`);
      if (JSON.stringify(got) !== JSON.stringify(holds.get(o) ?? [])) fail(step, `owned(${o}) ${got} vs ${holds.get(o)}`);
    }
  };

  const nextOp = (): Op => {
    const r = rng.int(0, 100);
    const name = pick(NAMES);
    const owner = pick(OWNERS);
    if (r < 45) {
      return { k: 'acquire', name, owner, mode: rng.chance(0.5) ? 'S' : 'X', ttl: rng.int(1, 60), wait: rng.chance(0.3) ? 0 : rng.int(1, 80), id: `w${nextId++}` };
    }
    if (r < 70) {
      // Mostly an owner that holds the lock (random pairs would almost never hold).
      const hs = table.info(b(name), now)?.holders ?? [];
      const o = hs.length > 0 && rng.chance(0.7) ? pick(hs).owner.toString('latin1') : owner;
      if (r >= 60) return { k: 'renew', name, owner: o, ttl: rng.int(1, 60) };
      let token: number | null = null;
      const h = hs.find((x) => x.owner.toString('latin1') === o);
      const c = rng.int(0, 10);
      if (c < 3 && h !== undefined) token = h.token;
      else if (c < 4) token = rng.int(1, 1000) * S;
      return { k: 'release', name, owner: o, token };
    }
    if (r < 83) {
      const queued = [...pending];
      const c = rng.int(0, 10);
      let target: { id: string; name: string } = { id: `w${rng.int(0, nextId + 1)}`, name };
      if (c < 5 && queued.length > 0) {
        const [id, n] = pick(queued);
        target = { id, name: n };
      } else if (c < 8 && granted.length > 0) target = pick(granted.slice(-20));
      return r < 78 ? { k: 'cancel', ...target } : { k: 'abort', ...target };
    }
    const items = table.planExpiry(now + (rng.chance(0.2) ? rng.int(1, 30) : 0), rng.int(1, 6));
    if (rng.chance(0.3)) items.push({ kind: 'holder', name: b(name), token: rng.int(1, index + 2) * S });
    if (rng.chance(0.3)) items.push({ kind: 'waiter', name: b(name), waiterId: `w${rng.int(0, nextId + 1)}` });
    return { k: 'expire', items };
  };

  for (let step = 0; step < OPS; step++) {
    now += rng.int(0, 8);
    index += 1;
    const op = nextOp();
    const result = run(table, op, now, index);
    bump(`${op.k}:${typeof result === 'object' ? (result as AcquireResult).t : String(result)}`);
    const stepEvents = events.map(show);
    settle(step);
    if (op.k === 'acquire') {
      const r = result as AcquireResult;
      if (r.t === 'queued') {
        if (pending.has(op.id)) fail(step, `${op.id} queued twice`);
        pending.set(op.id, op.name);
      } else if (r.t === 'granted') {
        const top = maxToken.get(op.name) ?? 0;
        if (r.token > top) maxToken.set(op.name, r.token);
        else {
          const h = table.info(b(op.name), now)?.holders.find((x) => x.owner.toString('latin1') === op.owner);
          if (h?.token !== r.token) fail(step, `token ${r.token} is neither new nor the owner's current one`);
        }
        granted.push({ id: op.id, name: op.name });
      }
    }
    checkState(step);
    if (twin !== null) {
      const tr = run(twin, op, now, index);
      if (JSON.stringify(tr) !== JSON.stringify(result)) fail(step, `twin answered ${JSON.stringify(tr)}, table ${JSON.stringify(result)}`);
      if (JSON.stringify(twinEvents) !== JSON.stringify(stepEvents)) fail(step, `twin raised ${twinEvents}, table ${stepEvents}`);
      twinEvents.length = 0;
      if (step % 4 === 0) {
        if (Buffer.compare(Buffer.from(twin.snapshot()), Buffer.from(table.snapshot())) !== 0) fail(step, 'twin snapshot differs');
        if (JSON.stringify(twin.planExpiry(now + 50, 20)) !== JSON.stringify(table.planExpiry(now + 50, 20))) fail(step, 'twin plans differ');
        if (JSON.stringify(twin.edges()) !== JSON.stringify(table.edges())) fail(step, 'twin edges differ');
      }
    }
    if (rng.chance(0.01)) {
      twin = new LockTable(limits, (e) => twinEvents.push(show(e)));
      twin.restore(table.snapshot());
      bump('restores');
    }
  }
  t.pass(`${OPS} operations: ${JSON.stringify(Object.fromEntries([...count].sort()))}`);
  const kinds = ['acquire:granted', 'acquire:queued', 'acquire:busy', 'acquire:error', 'event:granted', 'event:timeout'];
  kinds.push('event:cancelled', 'event:deadlock', 'release:1', 'release:0', 'renew:1', 'cancel:1', 'abort:1', 'restores');
  for (const k of kinds) {
    t.ok((count.get(k) ?? 0) > 0, `the run exercised ${k}`);
  }
  // Drain: let time run until every lease and wait ran out; every waiter must have been settled exactly once.
  for (let i = 0; i < 1000 && table.size > 0; i++) {
    now += 100;
    index += 1;
    table.expire(now, index, table.planExpiry(now, 1000));
    settle(OPS + i);
    checkState(OPS + i);
  }
  t.equal(table.size, 0, 'everything expired');
  t.equal(pending.size, 0, 'every queued waiter got exactly one settling event');
});
