import t from 'tap';
import { createRng, type Rng } from '../../src/util/rng.js';
import {
  checkLinearizable,
  counterModel,
  HistoryError,
  kvModel,
  lockModel,
  registerModel,
  type CounterInput,
  type CounterOutput,
  type KvInput,
  type KvOutput,
  type LockInput,
  type LockOutput,
  type Operation,
  type RegisterInput,
  type RegisterOutput,
} from './linearizability.js';

type RegOp = Operation<RegisterInput, RegisterOutput>;
const P = Infinity;

function w(clientId: number, value: number, call: number, ret: number): RegOp {
  return { clientId, input: { kind: 'write', value }, output: {}, call, ret };
}
function r(clientId: number, value: number, call: number, ret: number): RegOp {
  return { clientId, input: { kind: 'read' }, output: { value }, call, ret };
}
function cas(clientId: number, expect: number, value: number, ok: boolean, call: number, ret: number): RegOp {
  return { clientId, input: { kind: 'cas', expect, value }, output: { ok }, call, ret };
}

t.test('register: Porcupine\'s classic histories', async (t) => {
  const reg = registerModel(0);
  // A read of 0 overlapping a write of 100 may linearize before it, while another read already sees 100.
  const good = [w(0, 100, 0, 100), r(1, 100, 25, 75), r(2, 0, 30, 60)];
  const res = checkLinearizable(reg, good);
  t.equal(res.result, 'ok');
  t.same(res.partialOrder?.[0]?.map((o) => o.clientId), [2, 0, 1], 'the witness puts the read of 0 first');
  // The read of 0 starts after a read of 200 finished: the write was already visible, 0 is stale.
  const bad = [w(0, 200, 0, 100), r(1, 200, 10, 30), r(2, 0, 40, 90)];
  const bres = checkLinearizable(reg, bad);
  t.equal(bres.result, 'illegal');
  t.equal(bres.ok, false);
  t.match(bres.explanation ?? '', /not linearizable/);
  t.match(bres.explanation ?? '', /read\(\) -> 0/);
});

t.test('register: a Jepsen-style stale read is caught', async (t) => {
  const reg = registerModel(0);
  const h = [w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 1, 40, 50)];
  t.equal(checkLinearizable(reg, h).result, 'illegal');
});

t.test('register: concurrent overlapping writes allow either order, but not an unwritten value', async (t) => {
  const reg = registerModel(0);
  t.equal(checkLinearizable(reg, [w(0, 1, 0, 100), w(1, 2, 10, 90), r(2, 1, 95, 110)]).result, 'ok');
  t.equal(checkLinearizable(reg, [w(0, 1, 0, 100), w(1, 2, 10, 90), r(2, 2, 95, 110)]).result, 'ok');
  t.equal(checkLinearizable(reg, [w(0, 1, 0, 100), w(1, 2, 10, 90), r(2, 3, 95, 110)]).result, 'illegal');
  // Two reads after both writes finished must agree on the final value.
  t.equal(
    checkLinearizable(reg, [w(0, 1, 0, 100), w(1, 2, 10, 90), r(2, 1, 120, 130), r(3, 2, 140, 150)]).result,
    'illegal',
  );
  // ... unless they overlap one of the writes.
  t.equal(
    checkLinearizable(reg, [w(0, 1, 0, 100), w(1, 2, 10, 90), r(2, 2, 50, 60), r(3, 1, 95, 150)]).result,
    'ok',
  );
});

t.test('register: compare-and-set', async (t) => {
  const reg = registerModel(0);
  t.equal(checkLinearizable(reg, [cas(0, 0, 1, true, 0, 10), cas(1, 0, 2, false, 5, 15), r(2, 1, 20, 30)]).result, 'ok');
  // Two concurrent CAS from the same expected value cannot both succeed.
  t.equal(checkLinearizable(reg, [cas(0, 0, 1, true, 0, 10), cas(1, 0, 2, true, 5, 15)]).result, 'illegal');
  // A failed CAS whose expectation held throughout is illegal.
  t.equal(checkLinearizable(reg, [cas(0, 0, 1, false, 0, 10)]).result, 'illegal');
});

t.test('pending operations may take effect at any time after their call, or never', async (t) => {
  const reg = registerModel(0);
  // A write that never returned is seen by a later read: fine.
  t.equal(checkLinearizable(reg, [w(0, 1, 0, P), r(1, 1, 10, 20)]).result, 'ok');
  // ... or never seen at all: fine.
  t.equal(checkLinearizable(reg, [w(0, 1, 0, P), r(1, 0, 10, 20), r(1, 0, 1000, 1010)]).result, 'ok');
  // But once seen it cannot vanish.
  t.equal(checkLinearizable(reg, [w(0, 1, 0, P), r(1, 1, 10, 20), r(2, 0, 30, 40)]).result, 'illegal');
  // It cannot take effect before it was called.
  t.equal(checkLinearizable(reg, [r(1, 1, 0, 5), w(0, 1, 10, P)]).result, 'illegal');
  // A pending CAS: its output is unknown, its effect depends on the state when it takes effect.
  t.equal(checkLinearizable(reg, [cas(0, 0, 7, false, 0, P), r(1, 7, 10, 20)]).result, 'ok');
  t.equal(checkLinearizable(reg, [w(2, 3, 0, 5), cas(0, 0, 7, false, 6, P), r(1, 7, 10, 20)]).result, 'illegal');
  // A dozen pending writes and many pending reads do not blow up the search.
  const many: RegOp[] = [];
  for (let i = 0; i < 12; i++) many.push(w(i, i + 1, i, P));
  for (let i = 0; i < 200; i++) many.push({ ...r(50 + i, 0, i, P) });
  many.push(r(99, 7, 100, 110), r(99, 11, 120, 130));
  t.equal(checkLinearizable(reg, many, { timeoutMs: 10_000 }).result, 'ok');
  many.push(r(99, 7, 140, 150));
  t.equal(checkLinearizable(reg, many, { timeoutMs: 10_000 }).result, 'illegal');
});

t.test('a malformed history is refused with a coded error', async (t) => {
  t.throws(() => checkLinearizable(registerModel(0), [w(0, 1, 10, 5)]), HistoryError);
  t.throws(() => checkLinearizable(registerModel(0), [w(0, 1, NaN, 5)]), { code: 'BAD_HISTORY' });
});

type KvOp = Operation<KvInput, KvOutput>;
function kv(clientId: number, input: KvInput, output: KvOutput, call: number, ret: number): KvOp {
  return { clientId, input, output, call, ret };
}

t.test('kv: a lost write (two increments acknowledged, one effect) is caught', async (t) => {
  const m = kvModel();
  const lost = [
    kv(0, { kind: 'incr', key: 'a' }, { value: '1' }, 0, 10),
    kv(1, { kind: 'incr', key: 'a' }, { value: '1' }, 5, 15),
  ];
  t.equal(checkLinearizable(m, lost).result, 'illegal');
  const fine = [
    kv(0, { kind: 'incr', key: 'a' }, { value: '2' }, 0, 10),
    kv(1, { kind: 'incr', key: 'a' }, { value: '1' }, 5, 15),
    kv(2, { kind: 'get', key: 'a' }, { value: '2' }, 20, 30),
  ];
  t.equal(checkLinearizable(m, fine).result, 'ok');
  const lostSet = [
    kv(0, { kind: 'set', key: 'b', value: 'x' }, {}, 0, 10),
    kv(1, { kind: 'get', key: 'b' }, { value: null }, 20, 30),
  ];
  t.equal(checkLinearizable(m, lostSet).result, 'illegal');
});

t.test('kv: keys are independent partitions and the failing one is named', async (t) => {
  const m = kvModel();
  const h = [
    kv(0, { kind: 'set', key: 'a', value: '1' }, {}, 0, 10),
    kv(1, { kind: 'set', key: 'b', value: '1' }, {}, 0, 10),
    kv(0, { kind: 'get', key: 'a' }, { value: '1' }, 20, 30),
    kv(1, { kind: 'get', key: 'b' }, { value: null }, 20, 30),
  ];
  const res = checkLinearizable(m, h);
  t.equal(res.result, 'illegal');
  t.equal(res.failingPartition, 1);
  t.match(res.explanation ?? '', /get\(b\) -> null/);
});

t.test('kv: del reports whether a key existed, incr refuses a non-integer', async (t) => {
  const m = kvModel();
  t.equal(
    checkLinearizable(m, [
      kv(0, { kind: 'set', key: 'a', value: 'x' }, {}, 0, 10),
      kv(0, { kind: 'incr', key: 'a' }, { error: 'NOTINT' }, 20, 30),
      kv(0, { kind: 'del', key: 'a' }, { deleted: true }, 40, 50),
      kv(0, { kind: 'del', key: 'a' }, { deleted: false }, 60, 70),
      kv(0, { kind: 'incr', key: 'a', by: 5 }, { value: '5' }, 80, 90),
    ]).result,
    'ok',
  );
  t.equal(
    checkLinearizable(m, [
      kv(0, { kind: 'set', key: 'a', value: 'x' }, {}, 0, 10),
      kv(0, { kind: 'del', key: 'a' }, { deleted: false }, 20, 30),
    ]).result,
    'illegal',
  );
  t.equal(
    checkLinearizable(m, [
      kv(0, { kind: 'set', key: 'a', value: 'x' }, {}, 0, 10),
      kv(0, { kind: 'incr', key: 'a' }, { value: '1' }, 20, 30),
    ]).result,
    'illegal',
  );
});

type CtrOp = Operation<CounterInput, CounterOutput>;
t.test('counter: concurrent adds and reads', async (t) => {
  const m = counterModel();
  const add = (c: number, n: number, call: number, ret: number): CtrOp => ({ clientId: c, input: { kind: 'add', n }, output: {}, call, ret });
  const read = (c: number, v: number, call: number, ret: number): CtrOp => ({ clientId: c, input: { kind: 'read' }, output: { value: v }, call, ret });
  t.equal(checkLinearizable(m, [add(0, 1, 0, 50), add(1, 2, 0, 50), read(2, 1, 10, 20), read(2, 3, 30, 60)]).result, 'ok');
  t.equal(checkLinearizable(m, [add(0, 1, 0, 50), add(1, 2, 0, 50), read(2, 2, 10, 20), read(2, 1, 30, 60)]).result, 'illegal');
  t.equal(checkLinearizable(m, [add(0, 1, 0, 10), add(1, 2, 0, 10), read(2, 2, 20, 30)]).result, 'illegal');
  t.equal(checkLinearizable(m, [add(0, 1, 0, P), add(1, 2, 0, 10), read(2, 2, 20, 30), read(2, 3, 40, 50)]).result, 'ok');
});

type LockOp = Operation<LockInput, LockOutput>;
t.test('lock: exclusivity, idempotent re-acquire and increasing fencing tokens', async (t) => {
  const m = lockModel();
  const acq = (c: number, owner: string, ok: boolean, token: number | undefined, call: number, ret: number): LockOp => ({
    clientId: c,
    input: { kind: 'acquire', lock: 'L', owner },
    output: token === undefined ? { ok } : { ok, token },
    call,
    ret,
  });
  const rel = (c: number, owner: string, ok: boolean, call: number, ret: number): LockOp => ({
    clientId: c,
    input: { kind: 'release', lock: 'L', owner },
    output: { ok },
    call,
    ret,
  });
  t.equal(
    checkLinearizable(m, [
      acq(0, 'a', true, 5, 0, 10),
      acq(1, 'b', false, undefined, 5, 15),
      acq(0, 'a', true, 5, 20, 30),
      rel(0, 'a', true, 40, 50),
      rel(0, 'a', false, 60, 70),
      acq(1, 'b', true, 9, 80, 90),
    ]).result,
    'ok',
  );
  // Two holders at once.
  t.equal(checkLinearizable(m, [acq(0, 'a', true, 5, 0, 10), acq(1, 'b', true, 6, 5, 15)]).result, 'illegal');
  // A token going backwards.
  t.equal(
    checkLinearizable(m, [acq(0, 'a', true, 5, 0, 10), rel(0, 'a', true, 20, 30), acq(1, 'b', true, 4, 40, 50)]).result,
    'illegal',
  );
  // A try-lock refused on a lock nobody holds.
  t.equal(checkLinearizable(m, [acq(0, 'a', false, undefined, 0, 10)]).result, 'illegal');
  // A pending acquire that took effect blocks others until released; its holder learns the token later.
  t.equal(
    checkLinearizable(m, [acq(0, 'a', true, 0, 0, P), acq(1, 'b', false, undefined, 10, 20), acq(0, 'a', true, 3, 30, 40)].map(
      (o, i) => (i === 0 ? { ...o, output: { ok: true } } : o),
    )).result,
    'ok',
  );
  // Two locks are independent partitions.
  const other: LockOp = { clientId: 2, input: { kind: 'acquire', lock: 'M', owner: 'b' }, output: { ok: true, token: 1 }, call: 5, ret: 15 };
  t.equal(checkLinearizable(m, [acq(0, 'a', true, 5, 0, 10), other]).result, 'ok');
});

// ---------------------------------------------------------------------------------------------------------------
// Random histories generated from a real sequential execution
// ---------------------------------------------------------------------------------------------------------------

/**
 * Each client runs operations back to back with random gaps; each operation takes effect at a random instant
 * inside its interval, and outputs come from applying the operations to a real map in the order of those
 * instants. The result is linearizable by construction, with heavily overlapping intervals.
 */
function randomKvHistory(rng: Rng, opsTotal: number, clients: number, keys: number, pendingP = 0): KvOp[] {
  const raw: { op: KvOp; at: number }[] = [];
  const clock = new Array<number>(clients).fill(0);
  for (let i = 0; i < opsTotal; i++) {
    const c = i % clients;
    const call = clock[c]! + rng.int(0, 20);
    const at = call + rng.int(1, 60) + rng.next() * 0.5; // distinct instants with probability 1
    const ret = Math.ceil(at) + rng.int(0, 60);
    clock[c] = ret + 1;
    const key = `k${rng.int(0, keys)}`;
    const pick = rng.next();
    const input: KvInput =
      pick < 0.45 ? { kind: 'get', key } : pick < 0.7 ? { kind: 'set', key, value: `v${i}` } : pick < 0.95 ? { kind: 'incr', key } : { kind: 'del', key };
    raw.push({ op: { clientId: c, input, output: {}, call, ret: rng.chance(pendingP) ? Infinity : ret }, at });
  }
  const store = new Map<string, string>();
  for (const { op } of [...raw].sort((a, b) => a.at - b.at)) {
    const i = op.input;
    switch (i.kind) {
      case 'get':
        op.output = { value: store.get(i.key) ?? null };
        break;
      case 'set':
        store.set(i.key, i.value);
        op.output = {};
        break;
      case 'del':
        op.output = { deleted: store.delete(i.key) };
        break;
      case 'incr': {
        const cur = store.get(i.key);
        if (cur !== undefined && !/^-?(0|[1-9][0-9]*)$/.test(cur)) {
          op.output = { error: 'NOTINT' };
        } else {
          const nv = String(Number(cur ?? '0') + 1);
          store.set(i.key, nv);
          op.output = { value: nv };
        }
        break;
      }
    }
  }
  return raw.map((x) => x.op);
}

t.test('a 1,000-op random history from a real execution is linearizable, and one corrupted output is not', async (t) => {
  const rng = createRng(42);
  const m = kvModel();
  for (const keys of [1, 8]) {
    const h = randomKvHistory(rng, 1000, 8, keys);
    const res = checkLinearizable(m, h, { timeoutMs: 20_000 });
    t.equal(res.result, 'ok', `${keys} key(s)`);
    t.equal(res.partialOrder?.reduce((n, p) => n + p.length, 0), 1000, 'the witness holds every operation');
    // Corrupt one read: it returns a value nobody wrote.
    const reads = h.filter((o) => o.input.kind === 'get');
    const victim = reads[Math.floor(reads.length / 2)]!;
    const bad = h.map((o) => (o === victim ? { ...o, output: { value: 'never-written' } } : o));
    const bres = checkLinearizable(m, bad, { timeoutMs: 20_000 });
    t.equal(bres.result, 'illegal', `${keys} key(s), corrupted read`);
    t.match(bres.explanation ?? '', /never-written/);
    // Corrupt one increment: it claims a value one too high.
    const incrs = h.filter((o) => o.input.kind === 'incr' && o.output.value !== undefined);
    const v2 = incrs[Math.floor(incrs.length / 3)]!;
    const bad2 = h.map((o) => (o === v2 ? { ...o, output: { value: String(Number(v2.output.value) + 1000) } } : o));
    t.equal(checkLinearizable(m, bad2, { timeoutMs: 20_000 }).result, 'illegal', `${keys} key(s), corrupted incr`);
  }
});

t.test('a random history with pending operations stays linearizable', async (t) => {
  const rng = createRng(7);
  const h = randomKvHistory(rng, 600, 6, 3, 0.05);
  t.ok(h.some((o) => o.ret === Infinity));
  t.equal(checkLinearizable(kvModel(), h, { timeoutMs: 20_000 }).result, 'ok');
});

t.test('a 5,000-op history of 10 clients on a partitioned KV checks in well under a second', async (t) => {
  const rng = createRng(5000);
  const h = randomKvHistory(rng, 5000, 10, 20);
  const t0 = performance.now();
  const res = checkLinearizable(kvModel(), h, { timeoutMs: 10_000 });
  const ms = performance.now() - t0;
  t.equal(res.result, 'ok');
  t.ok(ms < 1000, `took ${ms.toFixed(0)} ms`);
  t.comment(`5,000 ops: ${ms.toFixed(0)} ms, ${res.steps} search steps`);
});

t.test('a search that cannot finish in time answers unknown, never ok', async (t) => {
  // A register with many concurrent writes and reads that pin a final value nobody wrote explores a huge space.
  const h: RegOp[] = [];
  for (let i = 0; i < 24; i++) h.push(w(i, i, 0, 100));
  for (let i = 0; i < 24; i++) h.push(r(100 + i, i, 0, 100));
  h.push(r(200, 999, 200, 210));
  const res = checkLinearizable(registerModel(0), h, { timeoutMs: 50 });
  t.not(res.result, 'ok');
  t.equal(res.ok, false);
});
