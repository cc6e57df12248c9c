/**
 * Tests of the lock-history checker (test/support/lock-history.ts): hand-written histories that must pass or must
 * fail with a named violation, and randomized histories produced by a tiny sequential lock model driven by a seeded
 * PRNG (valid ones must pass, and every interval the checker confirms must lie inside the model's real lease; the same
 * histories with one injected overlapping grant must fail with a mutual-exclusion violation and nothing else).
 * Pure: no sockets, no timers; the whole file runs in well under a second.
 */
import t from 'tap';
import { createRng, type Rng } from '../../src/util/rng.js';
import {
  checkLockHistory,
  confirmedIntervals,
  LockHistory,
  type AcquireOp,
  type AcquireResult,
  type LockOp,
  type ReleaseOp,
  type RenewOp,
} from '../support/lock-history.js';

const TTL = 1000;

function acq(owner: string, name: string, mode: 'X' | 'S', sentAt: number, doneAt: number, result: AcquireResult | number, waitMs = 0): AcquireOp {
  const r: AcquireResult = typeof result === 'number' ? { t: 'granted', token: result } : result;
  return { kind: 'acquire', client: `c-${owner}`, owner, name, mode, ttlMs: TTL, waitMs, sentAt, doneAt, result: r };
}
function rel(owner: string, name: string, token: number | null, sentAt: number, doneAt: number, result: ReleaseOp['result']): ReleaseOp {
  return { kind: 'release', client: `c-${owner}`, owner, name, token, sentAt, doneAt, result };
}
function ren(owner: string, name: string, sentAt: number, doneAt: number, result: RenewOp['result']): RenewOp {
  return { kind: 'renew', client: `c-${owner}`, owner, name, ttlMs: TTL, sentAt, doneAt, result };
}
const NIL: AcquireResult = { t: 'nil' };
const err = (message: string): AcquireResult => ({ t: 'error', message });

function record(ops: LockOp[]): readonly LockOp[] {
  const h = new LockHistory();
  for (const op of ops) h.record(op);
  return h.ops;
}

t.test('valid: sequential X hand-offs', async (t) => {
  const ops = record([
    acq('a', 'L', 'X', 0, 1, 1),
    acq('b', 'L', 'X', 2, 12, 2, 50), // waits for a
    ren('a', 'L', 5, 6, 1),
    rel('a', 'L', null, 10, 11, 1),
    ren('b', 'L', 14, 15, 1),
    rel('b', 'L', 2, 20, 21, 1),
    acq('c', 'L', 'X', 22, 23, 3),
    rel('c', 'L', 3, 30, 31, 1),
  ]);
  const r = checkLockHistory(ops);
  t.same(r.violations, []);
  t.ok(r.ok);
  t.match(r.stats, { grants: 3, leases: 3, confirmed: 3, releases: 3, lost: 0, nil: 0, unknown: 0, maxConcurrentShared: 0, unreleased: 0 });
  const iv = confirmedIntervals(ops);
  t.same(
    iv.map((i) => [i.owner, i.token, i.mode, i.start, i.end]),
    [
      ['a', 1, 'X', 1, 10],
      ['b', 2, 'X', 12, 20],
      ['c', 3, 'X', 23, 30],
    ],
  );
});

t.test('valid: overlapping S grants, then an X after they all left', async (t) => {
  const ops = [
    acq('a', 'L', 'S', 0, 1, 1),
    acq('b', 'L', 'S', 0.5, 2, 2),
    acq('c', 'L', 'S', 1, 3, 3),
    ren('a', 'L', 5, 5.5, 1),
    ren('b', 'L', 5, 5.5, 1),
    ren('c', 'L', 5, 5.5, 1),
    acq('d', 'L', 'X', 4, 12, 4, 100),
    rel('a', 'L', 1, 8, 9, 1),
    rel('b', 'L', null, 8, 9, 1),
    rel('c', 'L', null, 9, 10, 1),
    ren('d', 'L', 13, 14, 1),
  ];
  const r = checkLockHistory(ops);
  t.same(r.violations, []);
  t.equal(r.stats.maxConcurrentShared, 3);
  t.equal(r.stats.confirmed, 4);
  t.equal(r.stats.unreleased, 0);
});

t.test('valid: a re-acquire returning the same token confirms the lease', async (t) => {
  const ops = [
    acq('a', 'L', 'X', 0, 1, 1),
    acq('a', 'L', 'X', 5, 6, 1), // re-acquire: held at least until 5
    acq('b', 'L', 'X', 7, 8, 2), // a's lease expired in between
  ];
  const r = checkLockHistory(ops);
  t.same(r.violations, []);
  t.match(r.stats, { grants: 3, leases: 2, confirmed: 1, unreleased: 2 });
  t.same(confirmedIntervals(ops).map((i) => [i.owner, i.start, i.end, i.confirmOp]), [['a', 1, 5, 1]]);
});

t.test('valid: a lock lost through expiry (renew 0), then another owner\'s grant', async (t) => {
  const ops = [
    acq('a', 'L', 'X', 0, 1, 1),
    ren('a', 'L', 2, 3, 1),
    acq('b', 'L', 'X', 10, 15, 2, 100), // a expired at ~12
    ren('a', 'L', 20, 21, 0), // a learns it lost the lock
    rel('a', 'L', null, 22, 23, 0),
    ren('b', 'L', 16, 17, 1),
    rel('b', 'L', null, 25, 26, 1),
  ];
  const r = checkLockHistory(ops);
  t.same(r.violations, []);
  t.match(r.stats, { lost: 1, releases: 1, confirmed: 2 });
  t.same(confirmedIntervals(ops).map((i) => [i.owner, i.start, i.end]), [['a', 1, 2], ['b', 15, 25]]);
});

t.test('valid: errors are unknown outcomes, counted and never used as proof', async (t) => {
  const ops = [
    acq('a', 'L', 'X', 0, 5, err('TRYAGAIN')), // may or may not have produced a grant
    ren('a', 'L', 6, 7, 1), // ... it did: nobody knows the token, so this renew proves nothing
    rel('a', 'L', null, 8, 9, { error: 'NOQUORUM' }),
    acq('b', 'L', 'X', 10, 11, err('NOQUORUM')),
    acq('b', 'L', 'X', 12, 13, 7), // the retry takes the grant over
    ren('b', 'L', 14, 15, 1), // attributed to token 7: the errored acquire was superseded
    ren('b', 'L', 16, 17, { error: 'TRYAGAIN' }),
    acq('c', 'L', 'X', 18, 19, NIL),
    acq('c', 'L', 'S', 18, 19, { t: 'deadlock', message: 'DEADLOCK c -> b -> c' }),
    rel('b', 'L', 7, 20, 21, 1),
  ];
  const r = checkLockHistory(ops);
  t.same(r.violations, []);
  t.match(r.stats, { grants: 1, unknown: 4, nil: 1, deadlocks: 1, releases: 1, confirmed: 1 });
  t.same(confirmedIntervals(ops).map((i) => [i.owner, i.token, i.start, i.end]), [['b', 7, 13, 20]]);
});

t.test('valid: an S holder upgraded to X by a re-acquire is X from then on', async (t) => {
  const ops = [
    acq('a', 'L', 'S', 0, 1, 1),
    acq('b', 'L', 'S', 0, 1, 2),
    rel('b', 'L', null, 3, 4, 1),
    acq('a', 'L', 'X', 5, 6, 1), // sole holder: upgrade
    ren('a', 'L', 8, 9, 1),
  ];
  const r = checkLockHistory(ops);
  t.same(r.violations, []);
  t.same(confirmedIntervals(ops).map((i) => [i.owner, i.mode, i.xStart]), [['a', 'X', 6], ['b', 'S', null]]);
});

t.test('invalid: two confirmed X holdings overlap', async (t) => {
  const ops = [acq('a', 'L', 'X', 0, 1, 1), acq('b', 'L', 'X', 2, 3, 2), ren('b', 'L', 8, 9, 1), ren('a', 'L', 10, 11, 1)];
  const r = checkLockHistory(ops);
  t.notOk(r.ok);
  t.equal(r.violations.length, 1);
  t.match(r.violations[0], /^mutual exclusion \(X\/X\) on "L": confirmed holdings overlap by 5 ms: token 1 held by a over \[1, 10\].*token 2 held by b over \[3, 8\]/);
  t.match(r.violations[0], /#3 RENEW "L"/);
});

t.test('invalid: an X holding overlaps an S holding', async (t) => {
  const ops = [acq('a', 'L', 'S', 0, 1, 1), acq('b', 'L', 'X', 2, 3, 2), rel('b', 'L', 2, 5, 6, 1), ren('a', 'L', 10, 11, 1)];
  const r = checkLockHistory(ops);
  t.equal(r.violations.length, 1);
  t.match(r.violations[0], /^mutual exclusion \(S\/X\) on "L": confirmed holdings overlap by 2 ms/);
  // A lease upgraded to X while another S holding is confirmed also fails.
  const up = [acq('a', 'L', 'S', 0, 1, 1), acq('b', 'L', 'S', 0, 1, 2), acq('a', 'L', 'X', 2, 3, 1), ren('a', 'L', 6, 7, 1), ren('b', 'L', 5, 6, 1)];
  const r2 = checkLockHistory(up);
  t.equal(r2.violations.length, 1);
  t.match(r2.violations[0], /^mutual exclusion \(X\/S\)/);
});

t.test('invalid: a token decreasing in real time', async (t) => {
  const ops = [acq('a', 'L', 'X', 0, 1, 5), rel('a', 'L', 5, 2, 3, 1), acq('b', 'L', 'X', 4, 5, 3)];
  const r = checkLockHistory(ops);
  t.equal(r.violations.length, 1);
  t.match(r.violations[0], /^token order on "L": token 3 was created after #2 ACQUIRE "L" X .* was sent .* although the larger token 5 had already been granted by #0 ACQUIRE/);
  // Concurrent acquires may get tokens in either order; other names are independent.
  const ok = [acq('a', 'L', 'X', 0, 3, 5), acq('b', 'L', 'X', 1, 2, 3), acq('c', 'M', 'X', 4, 5, 1)];
  t.same(checkLockHistory(ok).violations, []);
  // A holder's re-acquire returns its older token after newer S grants: order is between leases, not acquires.
  const reacquire = [acq('a', 'L', 'S', 0, 1, 1), acq('b', 'L', 'S', 2, 3, 2), acq('a', 'L', 'S', 4, 5, 1)];
  t.same(checkLockHistory(reacquire).violations, []);
  // An errored acquire may have created the lease a retry took over: its send time bounds the creation.
  const retried = [acq('b', 'L', 'X', 0, 1, err('TRYAGAIN')), acq('a', 'L', 'X', 1.5, 2, 2), acq('b', 'L', 'X', 3, 4, 1)];
  t.same(checkLockHistory(retried).violations, []);
  t.equal(checkLockHistory(retried.slice(1)).violations.length, 1, 'without the errored acquire it is a violation');
});

t.test('invalid: the same token to two owners, or to one owner after its grant ended', async (t) => {
  const r = checkLockHistory([acq('a', 'L', 'X', 0, 1, 1), rel('a', 'L', null, 2, 3, 1), acq('b', 'L', 'X', 4, 5, 1)]);
  t.equal(r.violations.length, 1);
  t.match(r.violations[0], /^token 1 of "L" was granted to 2 different owners: #0 .*; #2 /);
  const reuse = checkLockHistory([acq('a', 'L', 'X', 0, 1, 1), rel('a', 'L', null, 2, 3, 1), acq('a', 'L', 'X', 4, 5, 1)]);
  t.equal(reuse.violations.length, 1);
  t.match(reuse.violations[0], /^token 1 of "L" came back after its grant ended: #2 .* was sent after #1 RELEASE/);
});

t.test('invalid: a renew or release that returned 1 with nothing to hold', async (t) => {
  const lost = checkLockHistory([acq('a', 'L', 'X', 0, 1, 1), ren('a', 'L', 5, 6, 0), ren('a', 'L', 7, 8, 1)]);
  t.equal(lost.violations.length, 1);
  t.match(lost.violations[0], /^renew returned 1 but the owner could hold nothing: #2 RENEW .*had ended \(#1 RENEW/);
  const never = checkLockHistory([rel('a', 'L', null, 0, 1, 1)]);
  t.match(never.violations, [/^release returned 1 but the owner could hold nothing: .*no acquire/]);
  const foreign = checkLockHistory([acq('a', 'L', 'X', 0, 1, 1), rel('b', 'L', 1, 2, 3, 1)]);
  t.match(foreign.violations, [/^release returned 1 for a token granted to another owner/]);
  // An errored acquire explains it.
  t.same(checkLockHistory([acq('a', 'L', 'X', 0, 1, err('TRYAGAIN')), rel('a', 'L', 9, 2, 3, 1)]).violations, []);
});

t.test('invalid: malformed ops (unsettled waiter, time running backwards)', async (t) => {
  const noResult = { ...acq('a', 'L', 'X', 0, 1, 1), result: undefined } as unknown as LockOp;
  const r = checkLockHistory([noResult, acq('b', 'L', 'X', 5, 4, NIL), ren('c', 'L', 0, 1, 2 as 1)]);
  t.equal(r.violations.length, 3);
  t.match(r.violations[0], /^malformed op: #0 .*no result/);
  t.match(r.violations[1], /^malformed op: #1 .*doneAt is before sentAt/);
  t.match(r.violations[2], /^malformed op: #2 .*unknown renew result 2/);
});

t.test('clock slack forgives overlaps and orders within it', async (t) => {
  const ops = [acq('a', 'L', 'X', 0, 1, 1), ren('a', 'L', 5.5, 6, 1), acq('b', 'L', 'X', 2, 5, 2, 10), ren('b', 'L', 7, 8, 1)];
  t.match(checkLockHistory(ops).violations, [/overlap by 0.5 ms/]);
  t.same(checkLockHistory(ops, { clockSlackMs: 0.5 }).violations, []);
  const order = [acq('a', 'L', 'X', 0, 1, 5), acq('b', 'L', 'X', 1.5, 2, 3)];
  t.equal(checkLockHistory(order).violations.length, 1);
  t.same(checkLockHistory(order, { clockSlackMs: 1 }).violations, []);
  t.throws(() => checkLockHistory(order, { clockSlackMs: -1 }), RangeError);
});

t.test('violations are capped', async (t) => {
  const ops: LockOp[] = [];
  for (let i = 0; i < 150; i++) ops.push(acq(`o${i}`, 'L', 'X', 2 * i, 2 * i + 1, 1000 - i));
  const r = checkLockHistory(ops);
  t.notOk(r.ok);
  t.equal(r.violations.length, 101);
  t.match(r.violations[100], /^\.\.\. and \d+ more violations$/);
});

// ---------------------------------------------------------------------------------------------------------------
// A tiny sequential lock model, and clients driving it in simulated time.

interface Holding {
  token: number;
  mode: 'X' | 'S';
  expiresAt: number;
}
/** Where the model really held a lease: [grantedAt, endedAt), X from xAt. */
interface TrueLease {
  owner: string;
  grantedAt: number;
  endedAt: number;
  xAt: number | null;
}

class LockModel {
  /** A broken server for negative tests: when it returns true, a conflicting acquire is granted anyway. */
  constructor(readonly ignoreConflict: () => boolean = () => false) {}

  readonly #locks = new Map<string, { next: number; holders: Map<string, Holding> }>();
  readonly truth = new Map<string, TrueLease>(); // name#token

  #lock(name: string): { next: number; holders: Map<string, Holding> } {
    let l = this.#locks.get(name);
    if (l === undefined) this.#locks.set(name, (l = { next: 1, holders: new Map() }));
    return l;
  }

  #expire(name: string, now: number): Map<string, Holding> {
    const { holders } = this.#lock(name);
    for (const [owner, h] of holders) {
      if (h.expiresAt <= now) {
        holders.delete(owner);
        this.truth.get(`${name}#${h.token}`)!.endedAt = h.expiresAt;
      }
    }
    return holders;
  }

  /** The token, or null if the request must wait. */
  acquire(name: string, owner: string, mode: 'X' | 'S', ttl: number, now: number): number | null {
    const holders = this.#expire(name, now);
    const mine = holders.get(owner);
    const others = [...holders.entries()].filter(([o]) => o !== owner).map(([, h]) => h);
    if (mine !== undefined) {
      if (mode === 'X' && mine.mode === 'S') {
        if (others.length > 0) return null;
        mine.mode = 'X';
        this.truth.get(`${name}#${mine.token}`)!.xAt = now;
      }
      mine.expiresAt = now + ttl;
      return mine.token;
    }
    if ((mode === 'X' ? others.length > 0 : others.some((h) => h.mode === 'X')) && !this.ignoreConflict()) return null;
    const l = this.#lock(name);
    const token = l.next++;
    holders.set(owner, { token, mode, expiresAt: now + ttl });
    this.truth.set(`${name}#${token}`, { owner, grantedAt: now, endedAt: Infinity, xAt: mode === 'X' ? now : null });
    return token;
  }

  release(name: string, owner: string, token: number | null, now: number): 0 | 1 {
    const holders = this.#expire(name, now);
    const h = holders.get(owner);
    if (h === undefined || (token !== null && token !== h.token)) return 0;
    holders.delete(owner);
    this.truth.get(`${name}#${h.token}`)!.endedAt = now;
    return 1;
  }

  renew(name: string, owner: string, ttl: number, now: number): 0 | 1 {
    const h = this.#expire(name, now).get(owner);
    if (h === undefined) return 0;
    h.expiresAt = now + ttl;
    return 1;
  }
}

interface Generated {
  ops: LockOp[];
  model: LockModel;
}

/** Limits of one generated history. */
const SIM = { clients: 8, names: ['n0', 'n1'], opsMax: 1200, latencyMs: [0.05, 3], thinkMs: [0, 4], ttlMs: [4, 30], waitMs: [0, 25], retryStepMs: 1 } as const;

function generate(seed: number, bugRate = 0): Generated {
  const rng: Rng = createRng(seed);
  const model = new LockModel(() => bugRate > 0 && rng.chance(bugRate));
  const ops: LockOp[] = [];
  const between = (lo: number, hi: number): number => lo + rng.next() * (hi - lo);
  const pick = <T>(xs: readonly T[]): T => xs[rng.int(0, xs.length)]!;

  // A small event queue: [time, seq, action], kept sorted.
  const queue: [number, number, () => void][] = [];
  let seq = 0;
  let clock = 0;
  const at = (time: number, fn: () => void): void => {
    if (time < clock) throw new Error(`event scheduled in the past: ${time} < ${clock}`);
    const e: [number, number, () => void] = [time, seq++, fn];
    let lo = 0;
    let hi = queue.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const q = queue[mid]!;
      if (q[0] < time || (q[0] === time && q[1] < e[1])) lo = mid + 1;
      else hi = mid;
    }
    queue.splice(lo, 0, e);
  };

  interface Client {
    id: string;
    held: Map<string, { token: number; mode: 'X' | 'S' }>;
    dirty: Set<string>; // names with an acquire of unknown outcome
  }
  const clients: Client[] = Array.from({ length: SIM.clients }, (_, k) => ({ id: `c${k}`, held: new Map(), dirty: new Set() }));

  const step = (c: Client, now: number): void => {
    if (ops.length >= SIM.opsMax) return;
    const sentAt = now;
    const fate = rng.chance(0.08) ? (rng.chance(0.5) ? 'lost-request' : 'lost-reply') : 'ok';
    const apply1 = sentAt + between(SIM.latencyMs[0], SIM.latencyMs[1]);
    const finish = (applied: number, make: (doneAt: number) => LockOp, after: (op: LockOp) => void): void => {
      const doneAt = applied + between(SIM.latencyMs[0], SIM.latencyMs[1]);
      at(doneAt, () => {
        const op = make(doneAt);
        ops.push(op);
        after(op);
        const next = doneAt + between(SIM.thinkMs[0], SIM.thinkMs[1]);
        at(next, () => step(c, next));
      });
    };
    const heldNames = [...c.held.keys()];
    const dirty = [...c.dirty];
    const ttl = Math.round(between(SIM.ttlMs[0], SIM.ttlMs[1]));
    const base = { client: c.id, owner: c.id };

    if (dirty.length > 0 && rng.chance(0.5)) {
      // Clean up after an acquire of unknown outcome.
      const name = pick(dirty);
      c.dirty.delete(name);
      at(apply1, () => {
        const r = fate === 'lost-request' ? null : model.release(name, c.id, null, apply1);
        finish(apply1, (doneAt) => ({ kind: 'release', ...base, name, token: null, sentAt, doneAt, result: fate === 'ok' ? r! : { error: 'TRYAGAIN' } }), () => c.held.delete(name));
      });
      return;
    }
    if (heldNames.length > 0 && rng.chance(0.8)) {
      const name = pick(heldNames);
      const h = c.held.get(name)!;
      const roll = rng.next();
      if (roll < 0.4) {
        at(apply1, () => {
          const r = fate === 'lost-request' ? null : model.renew(name, c.id, ttl, apply1);
          finish(apply1, (doneAt) => ({ kind: 'renew', ...base, name, ttlMs: ttl, sentAt, doneAt, result: fate === 'ok' ? r! : { error: 'NOQUORUM' } }), (op) => {
            if (op.result === 0) c.held.delete(name);
          });
        });
        return;
      }
      if (roll < 0.8) {
        const token = rng.chance(0.5) ? h.token : null;
        at(apply1, () => {
          const r = fate === 'lost-request' ? null : model.release(name, c.id, token, apply1);
          finish(apply1, (doneAt) => ({ kind: 'release', ...base, name, token, sentAt, doneAt, result: fate === 'ok' ? r! : { error: 'TRYAGAIN' } }), () => c.held.delete(name));
        });
        return;
      }
      // Re-acquire, sometimes asking to upgrade S to X.
      acquire(c, name, h.mode === 'S' && rng.chance(0.5) ? 'X' : h.mode, ttl, sentAt, apply1, fate, finish);
      return;
    }
    const name = pick(SIM.names);
    acquire(c, name, rng.chance(0.5) ? 'S' : 'X', ttl, sentAt, apply1, fate, finish);
  };

  const acquire = (
    c: Client,
    name: string,
    mode: 'X' | 'S',
    ttl: number,
    sentAt: number,
    apply1: number,
    fate: string,
    finish: (applied: number, make: (doneAt: number) => LockOp, after: (op: LockOp) => void) => void,
  ): void => {
    const waitMs = rng.chance(0.4) ? 0 : Math.round(between(SIM.waitMs[0], SIM.waitMs[1]));
    const base = { kind: 'acquire' as const, client: c.id, owner: c.id, name, mode, ttlMs: ttl, waitMs, sentAt };
    const settle = (applied: number, result: AcquireResult): void => {
      const shown: AcquireResult = fate === 'ok' ? result : { t: 'error', message: 'TRYAGAIN' };
      finish(applied, (doneAt) => ({ ...base, doneAt, result: shown }), (op) => {
        const r = (op as AcquireOp).result;
        if (r.t === 'granted') c.held.set(name, { token: r.token, mode: c.held.get(name)?.mode === 'X' ? 'X' : mode });
        else if (r.t === 'error') {
          c.held.delete(name);
          c.dirty.add(name);
        }
      });
    };
    at(apply1, () => {
      if (fate === 'lost-request') return settle(apply1, { t: 'nil' });
      const deadline = apply1 + waitMs;
      const attempt = (now: number): void => {
        const token = model.acquire(name, c.id, mode, ttl, now);
        if (token !== null) return settle(now, { t: 'granted', token });
        if (now === apply1 && rng.chance(0.05)) return settle(now, { t: 'deadlock', message: `DEADLOCK ${c.id}` });
        if (now >= deadline) return settle(now, { t: 'nil' });
        const next = Math.min(deadline, now + SIM.retryStepMs);
        at(next, () => attempt(next));
      };
      attempt(apply1);
    });
  };

  clients.forEach((c, k) => at(k * 0.1, () => step(c, k * 0.1)));
  for (let e = queue.shift(); e !== undefined; e = queue.shift()) {
    clock = e[0];
    e[2]();
  }
  return { ops, model };
}

/** Multiply every token by `k`, leaving room for tokens between existing ones. */
function scaleTokens(ops: readonly LockOp[], k: number): LockOp[] {
  return ops.map((op) => {
    if (op.kind === 'acquire' && op.result.t === 'granted') return { ...op, result: { t: 'granted', token: op.result.token * k } };
    if (op.kind === 'release' && op.token !== null) return { ...op, token: op.token * k };
    return op;
  });
}

const SEEDS = 24;
const generated = new Map<number, Generated>();
function history(seed: number): Generated {
  let g = generated.get(seed);
  if (g === undefined) generated.set(seed, (g = generate(seed)));
  return g;
}

t.test('randomized: histories of the sequential model pass, and confirmed intervals lie inside real leases', async (t) => {
  let confirmed = 0;
  let grants = 0;
  let lost = 0;
  let unknown = 0;
  let shared = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    const { ops, model } = history(seed);
    const r = checkLockHistory(ops);
    if (!r.ok) {
      t.fail(`seed ${seed}: valid history rejected`, { violations: r.violations.slice(0, 5) });
      continue;
    }
    confirmed += r.stats.confirmed;
    grants += r.stats.grants;
    lost += r.stats.lost;
    unknown += r.stats.unknown;
    shared = Math.max(shared, r.stats.maxConcurrentShared);
    for (const iv of confirmedIntervals(ops)) {
      const real = model.truth.get(`${iv.name}#${iv.token}`);
      const inside =
        real !== undefined &&
        real.owner === iv.owner &&
        real.grantedAt <= iv.start &&
        iv.end <= real.endedAt &&
        (iv.xStart === null || (real.xAt !== null && real.xAt <= iv.xStart));
      if (!inside) t.fail(`seed ${seed}: confirmed interval outside the real lease`, { iv, real });
    }
  }
  t.comment(`${SEEDS} histories: ${grants} grants, ${confirmed} confirmed leases, ${lost} lost, ${unknown} unknown, max shared ${shared}`);
  t.ok(confirmed > SEEDS * 20, 'the histories confirm many leases (the check is not vacuous)');
  t.ok(lost > 0 && unknown > 0 && shared >= 2, 'the histories include lost leases, unknown outcomes and shared holders');
});

t.test('randomized: one injected overlapping grant is rejected', async (t) => {
  for (let seed = 1; seed <= SEEDS; seed++) {
    const rng = createRng(seed * 7919);
    const ops = scaleTokens(history(seed).ops, 1000);
    t.same(checkLockHistory(ops).violations, [], `seed ${seed}: scaled history still passes`);
    // Find a confirmed lease and a token that fits real-time order around an intruder grant inside it.
    const candidates = confirmedIntervals(ops).filter((iv) => iv.end - iv.start > 0.01);
    let injected = false;
    for (let tries = 0; tries < 20 && !injected && candidates.length > 0; tries++) {
      const iv = candidates[rng.int(0, candidates.length)]!;
      const q = (iv.end - iv.start) / 4;
      const sentAt = iv.start - 1;
      const doneAt = iv.start + q;
      // The intruder's token: just above every token granted before it was sent (tokens are multiples of 1000, so
      // every lease created after it, having a larger multiple, keeps real-time order).
      let lo = 0;
      for (const op of ops) {
        if (op.kind === 'acquire' && op.result.t === 'granted' && op.name === iv.name && op.doneAt <= sentAt) lo = Math.max(lo, op.result.token);
      }
      const mode = iv.xStart !== null && iv.xStart <= iv.start && rng.chance(0.5) ? 'S' : 'X'; // S only against X throughout
      const intruder: LockOp[] = [
        { kind: 'acquire', client: 'intruder', owner: 'intruder', name: iv.name, mode, ttlMs: 10, waitMs: 0, sentAt, doneAt, result: { t: 'granted', token: lo + 1 } },
        { kind: 'renew', client: 'intruder', owner: 'intruder', name: iv.name, ttlMs: 10, sentAt: iv.start + 2 * q, doneAt: iv.start + 3 * q, result: 1 },
      ];
      const at = rng.int(0, ops.length + 1);
      const bad = [...ops.slice(0, at), ...intruder, ...ops.slice(at)];
      const r = checkLockHistory(bad);
      t.notOk(r.ok, `seed ${seed}: intruder on ${iv.name} inside token ${iv.token} is caught`);
      t.ok(r.violations.length > 0 && r.violations.every((v) => /^mutual exclusion \((X|S)\/(X|S)\)/.test(v) && v.includes('intruder')), `seed ${seed}: only the overlap is reported`, { violations: r.violations.slice(0, 3) });
      injected = true;
    }
    t.ok(injected, `seed ${seed}: an intruder was injected`);
  }
});

t.test('randomized: a server that sometimes grants conflicting locks is caught', async (t) => {
  const BUGGY_SEEDS = 8;
  let caught = 0;
  for (let seed = 1; seed <= BUGGY_SEEDS; seed++) {
    const r = checkLockHistory(generate(seed, 0.03).ops);
    if (!r.ok) caught++;
    t.ok(r.violations.every((v) => /^(mutual exclusion|\.\.\. and)/.test(v)), `seed ${seed}: only mutual exclusion is broken`, { violations: r.violations.slice(0, 3) });
  }
  t.equal(caught, BUGGY_SEEDS, 'every broken history is rejected');
});
