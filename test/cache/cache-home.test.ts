// CacheHome alone, driven by a scripted IO: every memory call and invalidation is recorded and completed by hand,
// time moves only when the test moves it. Checks the directory's rules: the takeover wait, E/S grants, a write-through
// write committed first and answered only once every other copy is invalidated (write-back: invalidated before it
// reaches memory), reads held while memory holds a write still invalidating, lapsed leases, invalidation retries and
// stuck nodes, fills overtaken by writes, and the regressions found by test/cache/coherence-sim.test.ts.
import t from 'tap';
import { CacheHome, type HomeConfig, type HomeIO, type MemoryRead, type MemoryWrite } from '../../src/cache/cache-home.js';
import type { CacheKey, CoherenceFailure, DataAnswer, DownMessage, FlushAnswer, InvMessage, LeaseAnswer, WrittenAnswer } from '../../src/cache/coherence-types.js';
import type { NodeId } from '../../src/raft/types.js';

type Op = { key: string; value: string };
type Home = CacheHome<string, Op, string>;

const LEASE = 200;
const MARGIN = 20;
const RETRY = 30;
const START = 1_000;
const READY = START + LEASE + MARGIN;
const EPOCH = 5;

class ScriptedIO implements HomeIO<string, Op, string> {
  t = START;
  readonly sent: { to: NodeId; msg: InvMessage | DownMessage }[] = [];
  readonly reads: { key: CacheKey; cb: (r: MemoryRead<string>) => void }[] = [];
  readonly confirms: ((r: { ok: true } | CoherenceFailure) => void)[] = [];
  readonly writes: { op: Op; want: CacheKey | undefined; cb: (r: MemoryWrite<string, string>) => void; applied: boolean }[] = [];

  now(): number {
    return this.t;
  }
  send(to: NodeId, msg: InvMessage | DownMessage): void {
    this.sent.push({ to, msg });
  }
  readMemory(key: CacheKey, cb: (r: MemoryRead<string>) => void): void {
    this.reads.push({ key, cb });
  }
  confirm(cb: (r: { ok: true } | CoherenceFailure) => void): void {
    this.confirms.push(cb);
  }
  /** Memory calls in the order they were made ('write:<value>' / 'wb:<key>=<value>'): Raft replicates in that order. */
  readonly calls: string[] = [];
  writeMemory(op: Op, want: CacheKey | undefined, cb: (r: MemoryWrite<string, string>) => void): () => boolean {
    this.calls.push(`write:${op.value}`);
    const w = { op, want, cb, applied: false };
    this.writes.push(w);
    return () => w.applied;
  }
  /** Memory applies the oldest write not applied yet, without calling back (its callback comes later). */
  applyOnly(): void {
    const w = this.writes.find((x) => !x.applied);
    if (w === undefined) throw new Error('no unapplied write');
    w.applied = true;
  }
  readonly writeBacks: { key: CacheKey; value: string | null; cb: (r: { ok: true } | CoherenceFailure) => void }[] = [];
  writeBack(key: CacheKey, value: string | null, cb: (r: { ok: true } | CoherenceFailure) => void): void {
    this.calls.push(`wb:${key}=${value}`);
    this.writeBacks.push({ key, value, cb });
  }
  /** Completes the oldest pending write-back. */
  wbDone(): void {
    const w = this.writeBacks.shift();
    if (w === undefined) throw new Error('no write-back pending');
    w.cb({ ok: true });
  }

  /** Completes the oldest pending memory read. */
  read(value: string | null, cacheable = true): void {
    const r = this.reads.shift();
    if (r === undefined) throw new Error('no memory read pending');
    r.cb({ ok: true, value, cacheable });
  }
  /** Completes the oldest pending write; `value` is the wanted key's value after it. */
  write(value?: string | null): void {
    const w = this.writes.shift();
    if (w === undefined) throw new Error('no memory write pending');
    w.applied = true;
    w.cb({ ok: true, result: `ok:${w.op.value}`, ...(value !== undefined ? { value } : {}) });
  }
  confirmAll(): void {
    for (const c of this.confirms.splice(0)) c({ ok: true });
  }
  /** Invalidations sent, as "node:key@gen". */
  invs(): string[] {
    return this.sent.flatMap((s) => (s.msg.t === 'inv' ? s.msg.items.map(([k, g]) => `${s.to}:${k}@${g}`) : []));
  }
}

function setup(over: Partial<HomeConfig> = {}): { home: Home; io: ScriptedIO } {
  const io = new ScriptedIO();
  const home = new CacheHome<string, Op, string>(
    { self: 1, shard: 0, epoch: EPOCH, leaseMs: LEASE, marginMs: MARGIN, invRetryMs: RETRY, directoryEntriesMax: 100, ...over },
    io,
  );
  return { home, io };
}

/** Past the takeover wait. */
function ready(home: Home, io: ScriptedIO): void {
  io.t = READY;
  home.tick();
}

/** Collects the answers of one request and checks it is answered exactly once. */
function answers<A>(): { cb: (a: A | CoherenceFailure) => void; all: (A | CoherenceFailure)[]; one(): A | CoherenceFailure } {
  const all: (A | CoherenceFailure)[] = [];
  return {
    cb: (a) => {
      all.push(a);
    },
    all,
    one() {
      if (all.length !== 1) throw new Error(`expected exactly one answer, got ${all.length}`);
      return all[0]!;
    },
  };
}

function getS(home: Home, from: NodeId, key: string, cacheable = true) {
  const a = answers<DataAnswer<string>>();
  home.getS({ t: 'gets', from, shard: 0, key, cacheable }, a.cb);
  return a;
}

function write(home: Home, from: NodeId, key: string, value: string, want: string | undefined = key) {
  const a = answers<WrittenAnswer<string, string>>();
  home.write({ t: 'write', from, shard: 0, keys: [key], op: { key, value }, ...(want !== undefined ? { want } : {}) }, a.cb);
  return a;
}

function writeAll(home: Home, from: NodeId) {
  const a = answers<WrittenAnswer<string, string>>();
  home.write({ t: 'write', from, shard: 0, keys: 'all', op: { key: '*', value: 'flush' } }, a.cb);
  return a;
}

function renew(home: Home, from: NodeId, evicted: [string, number][] = [], epoch = EPOCH) {
  const a = answers<LeaseAnswer>();
  home.renew({ t: 'renew', from, shard: 0, epoch, evicted }, a.cb);
  return a;
}

function ack(home: Home, from: NodeId, key: string, gen: number, epoch = EPOCH): void {
  home.onAck({ t: 'invack', from, shard: 0, epoch, items: [[key, gen]] });
}

/** A node holding `key`: its fill granted (returns the gen). */
function hold(home: Home, io: ScriptedIO, from: NodeId, key: string, value = 'v'): number {
  const a = getS(home, from, key);
  io.read(value);
  const d = a.one() as DataAnswer<string>;
  if (!d.ok || d.grant === null) throw new Error(`no grant for node ${from}`);
  return d.gen;
}

t.test('the takeover wait: nothing is granted and no write reaches memory before readyAt', async (t) => {
  const { home, io } = setup();
  t.equal(home.readyAt, READY);
  t.notOk(home.ready());
  // A read waits too: memory may hold a write the previous home committed and never finished invalidating.
  const r = getS(home, 2, 'k');
  const gated: boolean[] = [];
  t.notOk(home.readGate(['k'], (ok) => gated.push(ok)), 'a read outside the cache protocol is held as well');
  t.equal(io.reads.length, 0, 'a read during the wait does not read memory');
  const w = write(home, 3, 'k', 'x');
  t.equal(io.writes.length, 0, 'a write waits');
  io.t = READY - 1;
  home.tick();
  t.same([io.writes.length, io.reads.length, gated], [0, 0, []], 'still waiting 1 ms before readyAt');
  io.t = READY;
  home.tick();
  t.ok(home.ready());
  t.same(gated, [true], 'the held read is let go');
  t.equal(io.writes.length, 1, 'the first tick after readyAt hands the write to memory');
  t.equal(io.reads.length, 1, 'and the fill to memory');
  t.equal(home.stats.readsHeld, 2);
  io.read('v');
  t.equal((r.one() as DataAnswer<string>).grant, 'E', 'the fill read before the write applied: granted');
  io.write('x');
  t.same(io.invs(), ['2:k@' + (r.one() as DataAnswer<string>).gen], 'the write, applied, invalidates the fresh line');
  t.equal(w.all.length, 0, 'and waits for its acknowledgement');
  ack(home, 2, 'k', (r.one() as DataAnswer<string>).gen);
  const wa = w.one() as WrittenAnswer<string, string>;
  t.same([wa.ok, wa.result, wa.grant?.key, wa.grant?.value], [true, 'ok:x', 'k', 'x'], 'answered, with an E line of the written value');
});

t.test('E for a sole reader, S once another node holds the key (the first is downgraded and told so)', async (t) => {
  const { home, io } = setup();
  ready(home, io);
  const a = getS(home, 2, 'k');
  t.same(home.holdersOf('k').holders, [[2, 'F']], 'listed as filling while memory is read');
  io.read('v');
  const da = a.one() as DataAnswer<string>;
  t.equal(da.grant, 'E');
  t.ok(da.gen > 0);
  const b = getS(home, 3, 'k');
  io.read('v');
  const db = b.one() as DataAnswer<string>;
  t.equal(db.grant, 'S');
  t.ok(db.gen > da.gen, 'gens increase');
  t.same(home.holdersOf('k').holders, [
    [2, 'S'],
    [3, 'S'],
  ]);
  t.same([home.stats.grantsE, home.stats.grantsS, home.stats.fills], [1, 1, 2]);
  const downs = io.sent.filter((x) => x.msg.t === 'down');
  t.same(downs, [{ to: 2, msg: { t: 'down', shard: 0, epoch: EPOCH, items: [['k', da.gen]] } }], 'the E holder is told to become S');
  t.same(io.invs(), [], 'nobody is invalidated by a read');
  t.equal(home.stats.downgradesSent, 1);
  const c = getS(home, 4, 'k', false);
  io.read('v');
  t.equal((c.one() as DataAnswer<string>).grant, null, 'a read the node will not cache gets no line');
});

t.test('write-through: memory takes a write at once; once applied it invalidates every other holder, and is answered after all acknowledged', async (t) => {
  const { home, io } = setup();
  ready(home, io);
  const g2 = hold(home, io, 2, 'k');
  const g3 = hold(home, io, 3, 'k');
  const w = write(home, 4, 'k', 'x');
  t.equal(io.writes.length, 1, 'handed to memory at once');
  t.same(io.writes[0]!.want, 'k');
  t.same(io.invs(), [], 'nobody is invalidated before memory applied it: the holders go on serving the old value');
  io.write('x');
  t.same(io.invs().sort(), [`2:k@${g2}`, `3:k@${g3}`], 'each holder is sent the gen of its grant');
  t.same(home.holdersOf('k').invalidating.sort(), [2, 3]);
  t.equal(w.all.length, 0, 'not answered yet');
  ack(home, 2, 'k', g2 + 100);
  ack(home, 3, 'k', g3, EPOCH - 1);
  t.equal(w.all.length, 0, 'acks naming another gen or epoch do not count');
  ack(home, 2, 'k', g2);
  t.equal(w.all.length, 0, 'one holder left');
  ack(home, 3, 'k', g3);
  const wa = w.one() as WrittenAnswer<string, string>;
  t.equal(wa.grant?.value, 'x');
  t.same(home.holdersOf('k').holders, [[4, 'E']], 'the writer is the only holder');
  t.same([home.stats.invalidationsSent, home.stats.invalidationsAcked], [2, 2]);
});

t.test('write-through: a fill reads memory while a write is not applied yet; none reads it while an applied write is unanswered', async (t) => {
  const { home, io } = setup();
  ready(home, io);
  const w = write(home, 3, 'k', 'x', undefined);
  const f = getS(home, 2, 'k');
  t.equal(io.reads.length, 1, 'the fill reads memory at once: the write is not applied');
  io.read('old');
  const d = f.one() as DataAnswer<string>;
  t.same([d.value, d.grant], ['old', 'E'], 'and is granted the value before the write');
  io.write();
  t.same(io.invs(), [`2:k@${d.gen}`], 'the write, applied, invalidates that line');
  const f2 = getS(home, 4, 'k');
  t.equal(io.reads.length, 0, 'a fill now waits: memory holds a write not yet answered');
  const gated: boolean[] = [];
  t.notOk(home.readGate(['k'], (ok) => gated.push(ok)), 'so does a read outside the cache protocol');
  t.ok(home.readGate(['other'], () => t.fail('not held')), 'a read of another key is not held');
  t.notOk(home.readGate('all', (ok) => gated.push(ok)), 'a keyless read is');
  ack(home, 2, 'k', d.gen);
  t.equal(w.all.length, 1, 'acknowledged: the write is answered');
  t.same(gated, [true, true], 'the held reads are let go');
  t.equal(io.reads.length, 1, 'and the fill reads memory');
  io.read('x');
  t.equal((f2.one() as DataAnswer<string>).grant, 'E');
  t.ok(home.readGate('all', () => t.fail('not held')), 'nothing is held any more');
});

t.test('write-through: a read that may have seen an applied write before its callback ran is held and starts again', async (t) => {
  // A Raft entry applies, and its promise settles in a later microtask: a read in between sees the write while the
  // home does not know yet that memory holds it. The write's probe (writeMemory's return) tells.
  const { home, io } = setup();
  ready(home, io);
  const g2 = hold(home, io, 2, 'k');
  const w = write(home, 3, 'k', 'x', undefined);
  const f = getS(home, 4, 'k');
  t.equal(io.reads.length, 1);
  io.applyOnly();
  io.read('x');
  t.equal(f.all.length, 0, 'the fill that read it is not answered');
  t.equal(home.stats.readsHeld, 1);
  const u = getS(home, 5, 'k', false);
  t.equal(io.reads.length, 0, 'an uncached read waits too');
  t.equal(home.stats.readsHeld, 2);
  io.write();
  t.equal(io.invs()[0], `2:k@${g2}`, 'the callback invalidates');
  for (const [to, , gen] of io.sent.filter((x) => x.msg.t === 'inv').flatMap((x) => x.msg.items.map(([k, g]) => [x.to, k, g] as const))) ack(home, to, 'k', gen);
  t.equal(w.all.length, 1, 'the write is answered');
  t.equal(io.reads.length, 2, 'the fill and the uncached read read memory again');
  io.read('x');
  io.read('x');
  t.same([(f.one() as DataAnswer<string>).value, (u.one() as DataAnswer<string>).value], ['x', 'x']);
  t.equal((u.one() as DataAnswer<string>).grant, null, 'the uncached read gets no line');
});

t.test('a fill overtaken by a write is answered without a grant', async (t) => {
  for (const withLease of [false, true]) {
    const { home, io } = setup();
    ready(home, io);
    if (withLease) hold(home, io, 2, 'other'); // node 2 has a live lease: its filling entry gets an invalidation
    const f = getS(home, 2, 'k');
    const w = write(home, 3, 'k', 'x');
    t.equal(io.writes.length, 1);
    io.write('x');
    if (withLease) {
      t.same(
        io.sent.map((s) => [s.to, s.msg.items[0]![0]]),
        [[2, 'k']],
        'the filling node is invalidated',
      );
      t.equal(w.all.length, 0, 'the write waits for its ack');
      ack(home, 2, 'k', io.sent[0]!.msg.items[0]![1]);
    } else t.same(io.invs(), [], 'a node without a live lease is not sent anything');
    t.equal(w.all.length, 1);
    io.read('old'); // read before the write applied
    const d = f.one() as DataAnswer<string>;
    t.same([d.ok, d.value, d.grant, d.gen], [true, 'old', null, 0], `no grant (${withLease ? 'with' : 'without'} a lease)`);
    t.same(home.holdersOf('k').holders, [[3, 'E']], 'the directory lists only the writer');
  }
});

t.test('a lapsed lease releases a waiting write', async (t) => {
  const { home, io } = setup();
  ready(home, io);
  const arrived = io.t;
  hold(home, io, 2, 'k');
  const w = write(home, 3, 'k', 'x');
  io.write('x');
  t.equal(w.all.length, 0);
  io.t = arrived + LEASE + MARGIN;
  home.tick();
  t.equal(w.all.length, 0, 'the lease still runs at its last ms');
  io.t = arrived + LEASE + MARGIN + 1;
  home.tick();
  t.equal(w.all.length, 1, 'lapsed: the node dropped its lines itself, the write is answered');
  t.equal(home.stats.invalidationsLapsed, 1);
  t.same(home.holdersOf('k').holders, [[3, 'E']], "the writer's grant, made during that tick, stays listed");
});

t.test('unacknowledged invalidations are sent again; a node sitting on one gets no lease renewal', async (t) => {
  const { home, io } = setup();
  ready(home, io);
  const t0 = io.t;
  const g2 = hold(home, io, 2, 'k');
  const w = write(home, 3, 'k', 'x');
  io.write('x');
  t.equal(io.invs().length, 1);
  io.t = t0 + RETRY - 1;
  home.tick();
  t.equal(io.invs().length, 1, 'not before invRetryMs');
  io.t = t0 + RETRY;
  home.tick();
  t.same(io.invs(), [`2:k@${g2}`, `2:k@${g2}`], 'sent again');
  t.equal(home.stats.invalidationRetries, 1);
  // Renewals keep node 2's lease while it has not sat on the invalidation for half a lease.
  const r1 = renew(home, 2);
  io.confirmAll();
  t.equal((r1.one() as LeaseAnswer).lease, true);
  io.t = t0 + LEASE / 2 + 1;
  home.tick();
  const r2 = renew(home, 2);
  io.confirmAll();
  t.equal((r2.one() as LeaseAnswer).lease, false, 'stuck for more than leaseMs / 2: refused');
  const f = getS(home, 2, 'other');
  io.read('v');
  const d = f.one() as DataAnswer<string>;
  t.same([d.lease, d.grant], [false, null], 'and no line either');
  t.equal(home.stats.leaseRefusals, 2);
  ack(home, 2, 'k', g2);
  t.equal(w.all.length, 1, 'the late ack releases the write');
});

t.test('the writer is invalidated too when the directory still lists a line of it', async (t) => {
  // Regression (coherence-sim seed 4): a write the node gave up on (timed out) may arrive after it filled the key again.
  const { home, io } = setup();
  ready(home, io);
  const g2 = hold(home, io, 2, 'k');
  const w1 = write(home, 2, 'k', 'x');
  io.write('x');
  t.same(io.invs(), [`2:k@${g2}`], 'the writer gets an invalidation of its listed line');
  t.equal(w1.all.length, 0);
  ack(home, 2, 'k', g2);
  t.equal(w1.all.length, 1);
  // A writer whose fill is still out (no earlier grant) needs none: that fill is answered without a grant.
  const f = getS(home, 3, 'j');
  const w = write(home, 3, 'j', 'y');
  io.write('y');
  t.equal(io.invs().length, 1, 'no invalidation for a filling writer');
  t.equal(w.all.length, 1);
  io.read('old');
  t.equal((f.one() as DataAnswer<string>).grant, null);
});

t.test('a writer that names the grant it dropped is not invalidated for it; any other grant of its is', async (t) => {
  const { home, io } = setup();
  ready(home, io);
  const g = hold(home, io, 2, 'k');
  const g3 = hold(home, io, 3, 'k');
  const w = answers<WrittenAnswer<string, string>>();
  home.write({ t: 'write', from: 2, shard: 0, keys: ['k'], op: { key: 'k', value: 'x' }, want: 'k', dropped: { epoch: EPOCH, items: [['k', g]] } }, w.cb);
  io.write('x');
  t.same(io.invs(), [`3:k@${g3}`], 'only the other holder is invalidated');
  t.equal(home.stats.writerInvalidationsSkipped, 1);
  ack(home, 3, 'k', g3);
  const grant = (w.one() as WrittenAnswer<string, string>).grant!;
  t.equal(grant.key, 'k', 'the writer gets its E line');
  // The same write naming a grant from another epoch, or a gen the directory does not list, is not trusted.
  const stale = answers<WrittenAnswer<string, string>>();
  home.write({ t: 'write', from: 2, shard: 0, keys: ['k'], op: { key: 'k', value: 'y' }, want: 'k', dropped: { epoch: EPOCH - 1, items: [['k', grant.gen]] } }, stale.cb);
  io.write('y');
  t.same(io.invs().slice(-1), [`2:k@${grant.gen}`], 'a dropped grant of another epoch: invalidated');
  ack(home, 2, 'k', grant.gen);
  const g2 = (stale.one() as WrittenAnswer<string, string>).grant!.gen;
  home.write({ t: 'write', from: 2, shard: 0, keys: ['k'], op: { key: 'k', value: 'z' }, want: 'k', dropped: { epoch: EPOCH, items: [['k', g2 - 1]] } }, answers<WrittenAnswer<string, string>>().cb);
  io.write('z');
  t.same(io.invs().slice(-1), [`2:k@${g2}`], 'a newer grant than the one dropped (a fill after a lost write): invalidated');
  t.equal(home.stats.writerInvalidationsSkipped, 1);
});

t.test('under write-back a writer is invalidated even when it names the grant (the answer may carry its data)', async (t) => {
  const { home, io } = setup({ writeBack: true });
  ready(home, io);
  const g = hold(home, io, 2, 'k');
  home.write({ t: 'write', from: 2, shard: 0, keys: ['k'], op: { key: 'k', value: 'x' }, want: 'k', dropped: { epoch: EPOCH, items: [['k', g]] } }, answers<WrittenAnswer<string, string>>().cb);
  t.same(io.invs(), [`2:k@${g}`]);
  t.equal(home.stats.writerInvalidationsSkipped, 0);
});

t.test("a fill answered without a grant keeps the node's earlier grant listed", async (t) => {
  // Regression (coherence-sim seed 15): the node's write grant was dropped from the directory by its next fill.
  const { home, io } = setup();
  ready(home, io);
  const w = write(home, 2, 'k', 'x');
  io.write('x');
  const g = (w.one() as WrittenAnswer<string, string>).grant!.gen;
  const f = getS(home, 2, 'k');
  t.same(home.holdersOf('k').holders, [[2, 'F']]);
  io.read('x', false);
  t.equal((f.one() as DataAnswer<string>).grant, null, 'uncacheable: no grant');
  t.same(home.holdersOf('k').holders, [[2, 'S']], 'the earlier grant is still listed');
  write(home, 3, 'k', 'y');
  io.write('y');
  t.same(io.invs(), [`2:k@${g}`], 'so the next write invalidates it');
});

t.test("a late fill answer does not delete the key's newer directory entry", async (t) => {
  // Regression (coherence-sim seeds 53, 63): the write count of the newer entry was lost.
  const { home, io } = setup();
  ready(home, io);
  const f = getS(home, 2, 'k'); // reads memory (pending)
  const w1 = write(home, 3, 'k', 'p', undefined); // applied, it revokes the fill; no lease: no invalidation
  io.write();
  t.equal(w1.all.length, 1);
  t.equal(home.directorySize, 0, 'the entry is forgotten');
  const w2 = write(home, 3, 'k', 'q', undefined);
  t.equal(io.writes.length, 1, 'a second write is in flight (a new entry)');
  io.applyOnly();
  io.read('p'); // the first fill's answer, read before the second write applied
  t.equal(f.all.length, 0, 'held: the newer entry has a write memory applied');
  t.equal(home.directorySize, 1, 'the newer entry survives');
  getS(home, 4, 'k');
  t.equal(io.reads.length, 0, 'a new fill waits for that write too');
  io.write();
  t.equal(w2.all.length, 1);
  t.equal(io.reads.length, 2, 'both read memory once it is answered');
});

t.test('a renewal forgets the evicted lines it names (matching gen, not a fill)', async (t) => {
  const { home, io } = setup();
  ready(home, io);
  const g = hold(home, io, 2, 'k');
  renew(home, 2, [['k', g + 1]]);
  t.same(home.holdersOf('k').holders, [[2, 'E']], 'another gen: kept');
  const r = renew(home, 2, [['k', g]]);
  t.same(home.holdersOf('k').holders, [], 'its gen: forgotten');
  t.equal(home.directorySize, 0);
  t.equal(r.all.length, 0, 'answered only after leadership is confirmed');
  io.confirmAll();
  const la = r.one() as LeaseAnswer;
  t.same([la.ok, la.lease, la.epoch, la.home], [true, true, EPOCH, 1]);
  t.equal(home.stats.leaseRenewals, 2);
  getS(home, 3, 'j');
  renew(
    home,
    3,
    Array.from({ length: 20 }, (_, i): [string, number] => ['j', i]),
  );
  t.same(home.holdersOf('j').holders, [[3, 'F']], 'a fill in progress is not forgotten (whatever gen is named)');
});

t.test('a full directory answers fills without a line', async (t) => {
  const { home, io } = setup({ directoryEntriesMax: 1 });
  ready(home, io);
  hold(home, io, 2, 'a');
  const f = getS(home, 2, 'b');
  io.read('v');
  t.equal((f.one() as DataAnswer<string>).grant, null);
  t.equal(home.directorySize, 1);
  t.equal(home.stats.uncachedReads, 1);
});

t.test('a keyless write revokes every key; fills of any key wait for it', async (t) => {
  const { home, io } = setup();
  ready(home, io);
  const ga = hold(home, io, 2, 'a');
  const gb = hold(home, io, 3, 'b');
  const w = writeAll(home, 4);
  t.same(io.invs().sort(), [`2:a@${ga}`, `3:b@${gb}`]);
  const f = getS(home, 2, 'c');
  t.equal(io.reads.length, 0, 'a fill of another key waits too');
  ack(home, 2, 'a', ga);
  t.equal(io.writes.length, 0);
  ack(home, 3, 'b', gb);
  t.equal(io.writes.length, 1);
  io.write();
  t.equal((w.one() as WrittenAnswer<string, string>).grant, null, 'no line for a keyless write');
  t.equal(io.reads.length, 1, 'the waiting fill goes on');
  io.read('v');
  t.equal((f.one() as DataAnswer<string>).grant, 'E');
});

t.test('close() answers everything waiting, and memory answers still come once', async (t) => {
  const { home, io } = setup();
  const queued = write(home, 2, 'k', 'x'); // in the takeover queue
  ready(home, io);
  t.equal(io.writes.length, 1, 'the queued write was handed to memory at readyAt');
  io.write('x');
  t.equal(queued.all.length, 1);
  const g = hold(home, io, 2, 'j');
  const blocked = write(home, 3, 'j', 'y');
  io.write('y'); // applied; waits for node 2's ack
  const waiting = getS(home, 4, 'j'); // waits behind the applied write of j
  const gated: boolean[] = [];
  home.readGate(['j'], (ok) => gated.push(ok));
  const late = write(home, 3, 'z', 'w');
  const unapplied = write(home, 3, 'u', 'v');
  t.equal(io.writes.length, 2);
  home.close({ ok: false, code: 'NOTLEADER', message: 'term ended' });
  const b = blocked.one() as CoherenceFailure;
  t.same([b.ok, b.code], [false, 'TRYAGAIN'], 'a write in memory still invalidating: its outcome is unknown (routing it again would apply it twice)');
  t.same(waiting.one(), { ok: false, code: 'NOTLEADER', message: 'term ended' }, 'a waiting fill fails');
  t.same(gated, [false], 'a held read is told to route again');
  io.write('w');
  const l = late.one() as CoherenceFailure;
  t.same([l.ok, l.code], [false, 'TRYAGAIN'], 'a write memory applies after the close: outcome unknown, no grant');
  io.writes.shift()!.cb({ ok: false, code: 'NOTLEADER', message: 'overwritten' });
  t.same(unapplied.one(), { ok: false, code: 'NOTLEADER', message: 'overwritten' }, "memory's own failure is passed on");
  ack(home, 2, 'j', g);
  home.tick();
  t.equal(blocked.all.length, 1, 'nothing is answered twice');
  t.equal(io.writes.length, 0);
});

t.test('failures of memory are passed on and leave no directory entry behind', async (t) => {
  const { home, io } = setup();
  ready(home, io);
  const f = getS(home, 2, 'k');
  io.reads.shift()!.cb({ ok: false, code: 'TRYAGAIN', message: 'not leader' });
  t.same(f.one(), { ok: false, code: 'TRYAGAIN', message: 'not leader' });
  t.equal(home.directorySize, 0);
  const w = write(home, 2, 'k', 'x');
  io.writes.shift()!.cb({ ok: false, code: 'TRYAGAIN', message: 'not leader' });
  t.same(w.one(), { ok: false, code: 'TRYAGAIN', message: 'not leader' });
  t.equal(home.directorySize, 0);
  const r = renew(home, 2);
  io.confirms.shift()!({ ok: false, code: 'NOTLEADER', message: 'deposed' });
  t.same(r.one(), { ok: false, code: 'NOTLEADER', message: 'deposed' });
});

// ---------------------------------------------------------------------------------------------------------- write-back

function flushReq(home: Home, from: NodeId, key: string, gen: number, value: string | null, epoch = EPOCH) {
  const a = answers<FlushAnswer>();
  home.flushLine({ t: 'flush', from, shard: 0, epoch, key, gen, value }, a.cb);
  return a;
}

t.test('write-back: a read of a key another node holds in E waits for its downgrade, whose data reaches memory first; both end in S', async (t) => {
  const { home, io } = setup({ writeBack: true });
  ready(home, io);
  const g2 = hold(home, io, 2, 'k', 'old');
  const r = getS(home, 3, 'k');
  t.equal(io.reads.length, 0, 'memory is not read while node 2 may hold the line Modified');
  t.same(io.sent.filter((x) => x.msg.t === 'down'), [{ to: 2, msg: { t: 'down', shard: 0, epoch: EPOCH, items: [['k', g2]] } }]);
  home.onDownAck({ t: 'downack', from: 2, shard: 0, epoch: EPOCH, items: [['k', g2 + 1]], data: [['k', g2 + 1, 'stale-gen']] });
  t.same(io.calls, [], 'data of another grant is not taken, and the downgrade is still outstanding');
  home.onDownAck({ t: 'downack', from: 2, shard: 0, epoch: EPOCH, items: [['k', g2]], data: [['k', g2, 'mod']] });
  t.same(io.calls, ['wb:k=mod'], "node 2's Modified data is written back");
  t.equal(io.reads.length, 0, 'the fill still waits for the write-back');
  io.wbDone();
  t.equal(io.reads.length, 1, 'then memory is read');
  io.read('mod');
  const d = r.one() as DataAnswer<string>;
  t.same([d.value, d.grant], ['mod', 'S']);
  t.same(home.holdersOf('k').holders.sort(), [
    [2, 'S'],
    [3, 'S'],
  ]);
  t.same([home.stats.downgradesSent, home.stats.downgradesAcked, home.stats.writebacks], [1, 1, 1]);
});

t.test('write-back: a holder that never answers the downgrade is given up after its lease; the read goes on', async (t) => {
  const { home, io } = setup({ writeBack: true });
  ready(home, io);
  hold(home, io, 2, 'k');
  const r = getS(home, 3, 'k');
  io.t += RETRY;
  home.tick();
  t.equal(io.sent.filter((x) => x.msg.t === 'down').length, 2, 'the downgrade is sent again');
  io.t += LEASE + MARGIN + 1;
  home.tick();
  t.equal(home.stats.downgradesLapsed, 1);
  io.read('v');
  t.same((r.one() as DataAnswer<string>).grant, 'E', 'node 2 is forgotten: node 3 is alone');
});

t.test('write-back: a read outside the cache protocol snoops the E holders of its keys first (a keyless one: of every key)', async (t) => {
  const { home, io } = setup({ writeBack: true });
  ready(home, io);
  const g = hold(home, io, 2, 'k');
  const gated: boolean[] = [];
  t.notOk(home.readGate(['k'], (ok) => gated.push(ok)), 'held: node 2 may hold k Modified');
  t.same(io.sent.filter((x) => x.msg.t === 'down').map((x) => [x.to, x.msg.items]), [[2, [['k', g]]]], 'node 2 is asked to downgrade');
  t.ok(home.readGate(['other'], () => t.fail('not held')), 'a read of a key nobody holds goes on');
  home.onDownAck({ t: 'downack', from: 2, shard: 0, epoch: EPOCH, items: [['k', g]], data: [['k', g, 'dirty']] });
  t.same(gated, [true], 'the answer lets it check again');
  const held = home.stats.readsHeld;
  t.notOk(home.readGate(['k'], (ok) => gated.push(ok), true), "held again while node 2's data is on its way to memory");
  t.equal(home.stats.readsHeld, held, 'a read checking again is counted once');
  t.same(io.writeBacks.map((w) => [w.key, w.value]), [['k', 'dirty']]);
  io.wbDone();
  t.same(gated, [true, true]);
  t.ok(home.readGate(['k'], () => t.fail('not held')), 'memory has the data: the read goes on');
  const g3 = hold(home, io, 3, 'j');
  t.notOk(home.readGate('all', (ok) => gated.push(ok)), 'a keyless read snoops every E holder');
  t.same(io.sent.filter((x) => x.msg.t === 'down').map((x) => x.to).slice(-1), [3]);
  home.onDownAck({ t: 'downack', from: 3, shard: 0, epoch: EPOCH, items: [['j', g3]] });
  t.same(gated, [true, true, true]);
  t.ok(home.readGate('all', () => t.fail('not held')), 'clean: the keyless read goes on');
});

t.test('write-back: the data in an invalidation answer is written back before the write that waited for it', async (t) => {
  const { home, io } = setup({ writeBack: true });
  ready(home, io);
  const g2 = hold(home, io, 2, 'k');
  const w = write(home, 3, 'k', 'new');
  t.same(io.calls, []);
  home.onAck({ t: 'invack', from: 2, shard: 0, epoch: EPOCH, items: [['k', g2]], data: [['k', g2, 'mod']] });
  t.same(io.calls, ['wb:k=mod', 'write:new'], 'replicated in this order');
  io.wbDone();
  io.write('new');
  t.equal((w.one() as WrittenAnswer<string, string>).result, 'ok:new');
});

t.test('write-back: flushes are taken only for a listed E grant with nothing in flight to its holder', async (t) => {
  const { home, io } = setup({ writeBack: true });
  ready(home, io);
  const g2 = hold(home, io, 2, 'k');
  const ok = flushReq(home, 2, 'k', g2, 'm1');
  t.same(io.calls, ['wb:k=m1']);
  io.wbDone();
  t.same([(ok.one() as FlushAnswer).accepted, (ok.one() as FlushAnswer).lease], [true, true]);
  t.equal((flushReq(home, 2, 'k', g2 + 7, 'x').one() as FlushAnswer).accepted, false, 'another gen is refused');
  t.equal((flushReq(home, 4, 'k', g2, 'x').one() as FlushAnswer).accepted, false, 'a node not listed is refused');
  getS(home, 3, 'k'); // downgrade of node 2 now in flight
  const pend = flushReq(home, 2, 'k', g2, 'm2').one() as FlushAnswer;
  t.same([pend.accepted, pend.pending], [false, true], 'refused while a downgrade is out: its answer will carry the data');
  t.same(io.calls, ['wb:k=m1']);
});

t.test('write-back: a new home takes takeover flushes (its epoch, gen 0) only during its takeover wait, never an older epoch; reads wait it out too', async (t) => {
  const { home, io } = setup({ writeBack: true, epoch: EPOCH + 1 });
  const r = getS(home, 3, 'k');
  t.equal((flushReq(home, 2, 'k', 9, 'old-epoch', EPOCH).one() as FlushAnswer).accepted, false, "a flush made for the previous home is refused: it may be older than that home's later writes");
  const early = flushReq(home, 2, 'k', 0, 'dirty', EPOCH + 1);
  t.same(io.calls, ['wb:k=dirty'], 'a takeover flush is taken during the takeover wait');
  io.wbDone();
  t.equal((early.one() as FlushAnswer).accepted, true);
  t.equal(io.reads.length, 0, 'a read waits for the end of the takeover');
  ready(home, io);
  t.equal(io.reads.length, 1);
  io.read('dirty');
  t.equal((r.one() as DataAnswer<string>).value, 'dirty');
  t.equal((flushReq(home, 2, 'k', 0, 'late', EPOCH + 1).one() as FlushAnswer).accepted, false, 'refused after the wait');
});

t.test('write-through homes take no flush', async (t) => {
  const { home, io } = setup();
  ready(home, io);
  const g2 = hold(home, io, 2, 'k');
  t.equal((flushReq(home, 2, 'k', g2, 'm').one() as FlushAnswer).accepted, false);
  t.same(io.calls, []);
});
