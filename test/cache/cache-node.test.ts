// CacheNode alone, driven by a scripted IO: every request to a home is recorded and answered by hand, time moves
// only when the test moves it, lines live in a small Map-based LRU store. Checks when a node may serve a hit and
// when an answer may install a line, and the regressions found by test/cache/coherence-sim.test.ts.
import t from 'tap';
import { CacheNode, type NodeIO, type ReadResult, type WriteResult } from '../../src/cache/cache-node.js';
import type { CoherenceFailure, DataAnswer, FlushAnswer, FlushRequest, HomeAnswer, LeaseAnswer, NodeRequest, RenewRequest, WrittenAnswer } from '../../src/cache/coherence-types.js';
import { LineState } from '../../src/cache/mesi.js';
import { LruLineStore } from '../support/cache-sim.js';

type Op = { key: string; value: string };
type Node = CacheNode<string, Op, string>;
type Answer = HomeAnswer<string, string> | CoherenceFailure;

const LEASE = 200;
const RENEW = 50;
const EPOCH = 3;
const SHARD = 0;

class ScriptedIO implements NodeIO<string, Op, string> {
  t = 10_000;
  readonly reqs: { req: NodeRequest<Op>; cb: (a: Answer) => void; sentAt: number }[] = [];
  now(): number {
    return this.t;
  }
  request(_shard: number, req: NodeRequest<Op>, cb: (a: Answer) => void): void {
    this.reqs.push({ req, cb, sentAt: this.t });
  }
  /** Takes the oldest request of kind `kind` (and key), to answer it. */
  take(kind: NodeRequest<Op>['t'], key?: string): { req: NodeRequest<Op>; cb: (a: Answer) => void } {
    const i = this.reqs.findIndex((r) => r.req.t === kind && (key === undefined || (r.req.t === 'gets' ? r.req.key : r.req.t === 'write' ? r.req.keys[0] : undefined) === key));
    if (i < 0) throw new Error(`no ${kind} request pending`);
    return this.reqs.splice(i, 1)[0]!;
  }
}

function setup(capacity = 8): { node: Node; io: ScriptedIO; store: LruLineStore } {
  const io = new ScriptedIO();
  const store = new LruLineStore(capacity);
  const node = new CacheNode<string, Op, string>({ self: 2, leaseMs: LEASE, renewMs: RENEW, evictedBatchMax: 4 }, store, io);
  store.onEvict = (k, l) => node.onEvicted(k, l);
  return { node, io, store };
}

const data = (value: string | null, grant: 'E' | 'S' | null, gen: number, o: { epoch?: number; lease?: boolean } = {}): DataAnswer<string> => ({
  t: 'data',
  ok: true,
  epoch: o.epoch ?? EPOCH,
  home: 1,
  lease: o.lease ?? true,
  value,
  grant,
  gen,
});

const written = (result: string, grant: { key: string; value: string | null; gen: number } | null, o: { epoch?: number } = {}): WrittenAnswer<string, string> => ({
  t: 'written',
  ok: true,
  epoch: o.epoch ?? EPOCH,
  home: 1,
  lease: true,
  result,
  grant,
});

const leaseAnswer = (lease = true, epoch = EPOCH): LeaseAnswer => ({ t: 'lease', ok: true, epoch, home: 1, lease });

function read(node: Node, key: string): ReadResult<string>[] {
  const out: ReadResult<string>[] = [];
  node.read(SHARD, key, (r) => out.push(r));
  return out;
}

function write(node: Node, key: string, value: string, want: string | undefined = key): WriteResult<string>[] {
  const out: WriteResult<string>[] = [];
  node.write(SHARD, [key], { key, value }, want, (r) => out.push(r));
  return out;
}

/** Installs `key` through a granted fill. */
function fill(node: Node, io: ScriptedIO, key: string, value: string, gen: number, grant: 'E' | 'S' = 'E'): void {
  const r = read(node, key);
  io.take('gets', key).cb(data(value, grant, gen));
  if (r.length !== 1 || !r[0]!.ok) throw new Error('fill failed');
}

t.test('a hit only while the lease is live; leaseMs counts from the send time of the answered request', async (t) => {
  const { node, io } = setup();
  const r1 = read(node, 'k');
  t.equal(io.reqs.length, 1, 'a miss asks the home');
  const sentAt = io.t;
  io.t += 30;
  io.take('gets', 'k').cb(data('v', 'E', 1));
  t.same(r1, [{ ok: true, value: 'v', hit: false }]);
  t.equal(node.stateOf('k', SHARD), LineState.E);
  t.equal(node.leaseOf(SHARD)?.until, sentAt + LEASE, 'lease = send time + leaseMs');
  t.same(read(node, 'k'), [{ ok: true, value: 'v', hit: true }], 'then a hit, answered synchronously');
  t.equal(io.reqs.length, 0, 'with no message');
  io.t = sentAt + LEASE;
  t.equal(node.stateOf('k', SHARD), LineState.I, 'at until, the line is no longer live');
  const r3 = read(node, 'k');
  t.same(r3, [], 'a miss: waits for the home');
  t.equal(io.reqs.length, 1);
  t.same([node.stats.hits, node.stats.misses], [1, 2]);
});

t.test('misses of one key share one request; a reader joining it takes the value only if a line was installed', async (t) => {
  const { node, io } = setup();
  const a = read(node, 'k');
  const b = read(node, 'k');
  t.equal(io.reqs.length, 1, 'one request for both');
  io.take('gets', 'k').cb(data('v', 'S', 4));
  t.same([a, b], [[{ ok: true, value: 'v', hit: false }], [{ ok: true, value: 'v', hit: false }]], 'both answered from the installed line');
  // Without a grant, the joiner cannot know the value is current: it reads again.
  const c = read(node, 'j');
  const d = read(node, 'j');
  io.take('gets', 'j').cb(data('old', null, 0));
  t.same(c, [{ ok: true, value: 'old', hit: false }], 'the reader that sent the request takes the value');
  t.same(d, [], 'the joiner waits for a new request');
  t.equal(io.reqs.length, 1);
  io.take('gets', 'j').cb(data('new', null, 0));
  t.same(d, [{ ok: true, value: 'new', hit: false }]);
  // Failures reach everyone waiting.
  const e = read(node, 'x');
  const f = read(node, 'x');
  io.take('gets', 'x').cb({ ok: false, code: 'TRYAGAIN', message: 'timeout' });
  t.same([e[0]?.ok, f[0]?.ok], [false, false]);
});

t.test('no install when an invalidation of the key arrived while the fill was out', async (t) => {
  const { node, io, store } = setup();
  const r = read(node, 'k');
  const ack = node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['k', 7]] });
  t.same(ack, { t: 'invack', from: 2, shard: SHARD, epoch: EPOCH, items: [['k', 7]] }, 'acknowledged at once');
  io.take('gets', 'k').cb(data('v', 'E', 7));
  t.same(r, [{ ok: true, value: 'v', hit: false }], 'the reader still gets its value');
  t.equal(store.peek('k'), undefined, 'but no line');
  t.equal(node.stats.installs, 0);
  // An invalidation drops a held line.
  fill(node, io, 'j', 'v', 8);
  node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['j', 8]] });
  t.equal(node.stateOf('j', SHARD), LineState.I);
  t.equal(node.stats.invalidationsReceived, 2);
});

t.test('write-through: the writer serves a line it read while its write is out, until the write invalidates it; the write grant installs after', async (t) => {
  const { node, io, store } = setup();
  fill(node, io, 'k', 'v', 1);
  t.same(read(node, 'k'), [{ ok: true, value: 'v', hit: true }]);
  const w = write(node, 'k', 'x');
  const req = io.take('write', 'k');
  t.equal((req.req as { dropped?: unknown }).dropped, undefined, 'the request names no dropped grant');
  t.same(read(node, 'k'), [{ ok: true, value: 'v', hit: true }], 'the line still serves the value before the write');
  // The home commits the write, then invalidates every listed copy, this one too, before it answers.
  node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['k', 1]] });
  t.equal(store.peek('k'), undefined, 'invalidated, the line goes');
  const r = read(node, 'k');
  const gets = io.take('gets', 'k');
  t.equal((gets.req as { cacheable: boolean }).cacheable, false, 'a read meanwhile asks for an uncached value');
  gets.cb(data('v', 'E', 2));
  t.same(r, [{ ok: true, value: 'v', hit: false }]);
  t.equal(store.peek('k'), undefined, 'and installs nothing even if granted');
  req.cb(written('OK', { key: 'k', value: 'x', gen: 3 }));
  t.same(w, [{ ok: true, result: 'OK' }]);
  t.same(node.stateOf('k', SHARD), LineState.E, "the write's grant installs");
  t.same(read(node, 'k'), [{ ok: true, value: 'x', hit: true }]);
  // A line the home did not invalidate (it no longer listed it) goes with the answer, whatever the answer says.
  fill(node, io, 'm', 'v', 4);
  read(node, 'm');
  const wm = write(node, 'm', 'y', undefined);
  io.take('write', 'm').cb({ ok: false, code: 'TRYAGAIN', message: 'outcome unknown' });
  t.same(wm, [{ ok: false, code: 'TRYAGAIN', message: 'outcome unknown' }]);
  t.equal(store.peek('m'), undefined, 'the kept line is gone once the write is answered');
  // A line nobody read since its fill goes when the write is sent, named in the request (the home skips it).
  fill(node, io, 'n', 'v', 5, 'S');
  write(node, 'n', 'z', undefined);
  t.equal(store.peek('n'), undefined, 'dropped at once');
  t.same((io.take('write', 'n').req as { dropped?: unknown }).dropped, { epoch: EPOCH, items: [['n', 5]] }, 'and named as dropped');
  // A fill in flight when the write is sent is poisoned.
  const r2 = read(node, 'j');
  write(node, 'j', 'y', undefined);
  io.take('gets', 'j').cb(data('old', 'E', 4));
  t.same(r2, [{ ok: true, value: 'old', hit: false }]);
  t.equal(store.peek('j'), undefined);
});

t.test('reordered answers of two writes of one key: only the last write sent may install', async (t) => {
  // Regression (coherence-sim clean seed 9).
  const { node, io } = setup();
  write(node, 'k', 'one');
  write(node, 'k', 'two');
  const [w1, w2] = [io.take('write', 'k'), io.take('write', 'k')];
  w2.cb(written('OK', { key: 'k', value: 'two', gen: 6 }));
  t.equal(node.stateOf('k', SHARD), LineState.I, 'one write still out: nothing installs');
  w1.cb(written('OK', { key: 'k', value: 'one', gen: 5 }));
  t.equal(node.stateOf('k', SHARD), LineState.I, "the first write's grant, arriving last, does not install");
  // In order, the last one installs.
  write(node, 'j', 'a');
  write(node, 'j', 'b');
  io.take('write', 'j').cb(written('OK', { key: 'j', value: 'a', gen: 7 }));
  io.take('write', 'j').cb(written('OK', { key: 'j', value: 'b', gen: 8 }));
  t.same(read(node, 'j'), [{ ok: true, value: 'b', hit: true }]);
});

t.test("an invalidation of the writer's old line does not cost its write's grant; one naming the grant does", async (t) => {
  // The home invalidates a writer it still lists (cache-home.ts revokeOthers); the gen says which grant is revoked.
  const { node, io } = setup();
  fill(node, io, 'k', 'v', 4);
  write(node, 'k', 'x');
  node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['k', 4]] });
  io.take('write', 'k').cb(written('OK', { key: 'k', value: 'x', gen: 9 }));
  t.same(read(node, 'k'), [{ ok: true, value: 'x', hit: true }], 'the newer grant installs');
  write(node, 'k', 'y');
  node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['k', 12]] });
  io.take('write', 'k').cb(written('OK', { key: 'k', value: 'y', gen: 12 }));
  t.equal(node.stateOf('k', SHARD), LineState.I, 'a grant the invalidation names does not');
  write(node, 'k', 'z');
  node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH - 1, items: [['k', 1]] });
  io.take('write', 'k').cb(written('OK', { key: 'k', value: 'z', gen: 20 }));
  t.equal(node.stateOf('k', SHARD), LineState.I, 'an invalidation from another epoch poisons the write');
});

t.test('a lapsed lease drops every line of the shard at the next tick', async (t) => {
  const { node, io, store } = setup();
  fill(node, io, 'a', '1', 1);
  fill(node, io, 'b', '2', 2, 'S');
  const until = node.leaseOf(SHARD)!.until;
  io.t = until - 1;
  node.tick();
  t.equal(store.size, 2, 'still live');
  io.reqs.length = 0; // a renewal went out; leave it unanswered
  io.t = until;
  node.tick();
  t.equal(store.size, 0, 'lapsed: dropped');
  t.equal(node.stats.lapsedLines, 2);
  t.same(node.lines, [0, 0, 0, 0]);
  t.equal(node.transitions.get(LineState.E, LineState.I), 1);
  t.equal(node.transitions.get(LineState.S, LineState.I), 1);
});

t.test('an answer arriving after an unnoticed lapse drops the old lines before it extends the lease', async (t) => {
  // Regression: the node did not tick across its lapse (paused); a late renewal answer revived the old lines,
  // which the home had forgotten and a write had changed.
  const { node, io, store } = setup();
  fill(node, io, 'k', 'v', 1);
  io.t += RENEW;
  node.tick();
  const renewal = io.take('renew');
  io.t += LEASE - 10; // past the fill's lease (no tick), before the renewal's
  renewal.cb(leaseAnswer(true));
  t.equal(store.peek('k'), undefined, 'the old line is gone');
  t.equal(node.stats.lapsedLines, 1);
  t.ok(node.leaseOf(SHARD)!.until > io.t, 'the lease itself is extended (for new lines)');
});

t.test('a new epoch drops the old home lines; answers of an older epoch are ignored', async (t) => {
  const { node, io, store } = setup();
  fill(node, io, 'a', '1', 1);
  const r = read(node, 'b');
  io.take('gets', 'b').cb(data('2', null, 0, { epoch: EPOCH + 1 }));
  t.same(r, [{ ok: true, value: '2', hit: false }]);
  t.equal(store.peek('a'), undefined, 'the line of the old home is dropped');
  t.equal(node.stats.homeChangeLines, 1);
  t.equal(node.leaseOf(SHARD)!.epoch, EPOCH + 1);
  const old = read(node, 'c');
  io.take('gets', 'c').cb(data('3', 'E', 9, { epoch: EPOCH }));
  t.same(old, [{ ok: true, value: '3', hit: false }]);
  t.equal(store.peek('c'), undefined, 'a grant of the older epoch installs nothing');
});

t.test('evicted keys ride the next renewal; a refused renewal does not extend the lease', async (t) => {
  const { node, io } = setup(1);
  fill(node, io, 'a', '1', 11);
  fill(node, io, 'b', '2', 12); // evicts a
  t.equal(node.stats.evictions, 1);
  io.t += RENEW;
  node.tick();
  const renewal = io.take('renew');
  t.same((renewal.req as RenewRequest).evicted, [['a', 11]], 'the evicted line and its gen');
  const until = node.leaseOf(SHARD)!.until;
  renewal.cb(leaseAnswer(false));
  t.equal(node.leaseOf(SHARD)!.until, until, 'refused: the lease is not extended');
  t.equal(node.stats.renewalsRefused, 1);
  io.t += RENEW;
  node.tick();
  const again = io.take('renew');
  t.same((again.req as RenewRequest).evicted, [], 'sent once');
  again.cb(leaseAnswer(true));
  t.equal(node.leaseOf(SHARD)!.until, io.t + LEASE, 'accepted: extended to its send time + leaseMs');
});

t.test('at most evictedBatchMax evicted keys ride a renewal', async (t) => {
  const { node, io } = setup(1);
  for (let i = 0; i < 7; i++) fill(node, io, `k${i}`, 'v', i + 1);
  io.t += RENEW;
  node.tick();
  t.equal((io.take('renew').req as RenewRequest).evicted.length, 4);
});

t.test('a keyless write drops every line of the shard and nothing installs until it is answered', async (t) => {
  const { node, io, store } = setup();
  fill(node, io, 'a', '1', 1);
  fill(node, io, 'b', '2', 2);
  const out: WriteResult<string>[] = [];
  node.write(SHARD, 'all', { key: '*', value: 'flush' }, undefined, (r) => out.push(r));
  t.equal(store.size, 0, 'every line of the shard is dropped when the write is sent');
  const r = read(node, 'c');
  const gets = io.take('gets', 'c');
  t.equal((gets.req as { cacheable: boolean }).cacheable, false, 'reads meanwhile ask for uncached values');
  gets.cb(data(null, 'E', 3));
  t.same(r, [{ ok: true, value: null, hit: false }]);
  t.equal(store.size, 0, 'and install nothing');
  io.take('write').cb(written('OK', null));
  t.same(out, [{ ok: true, result: 'OK' }]);
  read(node, 'c');
  t.equal((io.take('gets', 'c').req as { cacheable: boolean }).cacheable, true, 'answered: reads may cache again');
});

t.test('a grant installs only while the lease of its own request lasts', async (t) => {
  // Regression (coherence-sim seed 117): a write that waited at the home was granted under a lease that had run out,
  // and installed because a later request had renewed the node's lease.
  const { node, io } = setup();
  write(node, 'k', 'x');
  const w = io.take('write', 'k');
  io.t += LEASE + 10;
  const r = read(node, 'j');
  io.take('gets', 'j').cb(data('v', null, 0));
  t.same(r, [{ ok: true, value: 'v', hit: false }]);
  t.ok(node.leaseOf(SHARD)!.until > io.t, 'the lease is live (renewed by the read)');
  w.cb(written('OK', { key: 'k', value: 'x', gen: 5 }));
  t.equal(node.stateOf('k', SHARD), LineState.I, "the write's grant, older than a lease, does not install");
});

t.test('a downgrade turns the named E line into S; one arriving before its grant makes the grant install as S', async (t) => {
  const { node, io } = setup();
  fill(node, io, 'a', 'va', 7, 'E');
  t.equal(node.stateOf('a', SHARD), LineState.E);
  node.onDowngrade({ t: 'down', shard: SHARD, epoch: EPOCH, items: [['a', 6]] });
  t.equal(node.stateOf('a', SHARD), LineState.E, 'a downgrade of another grant changes nothing');
  t.same(node.onDowngrade({ t: 'down', shard: SHARD, epoch: EPOCH, items: [['a', 7]] }), { t: 'downack', from: 2, shard: SHARD, epoch: EPOCH, items: [['a', 7]] });
  t.equal(node.stateOf('a', SHARD), LineState.S, 'E -> S');
  t.equal(node.transitions.get(LineState.E, LineState.S), 1, 'counted as E->S');
  t.same(read(node, 'a'), [{ ok: true, value: 'va', hit: true }], 'still a hit');

  // The downgrade overtakes the answer that grants E.
  const r = read(node, 'b');
  node.onDowngrade({ t: 'down', shard: SHARD, epoch: EPOCH, items: [['b', 9]] });
  io.take('gets', 'b').cb(data('vb', 'E', 9));
  t.same(r, [{ ok: true, value: 'vb', hit: false }]);
  t.equal(node.stateOf('b', SHARD), LineState.S, 'installed as S');
  t.same([node.lines[LineState.E], node.lines[LineState.S]], [0, 2]);
});

// ---------------------------------------------------------------------------------------------------------- write-back

const FLUSH = 50;

/** A write-back node whose local writes are SETs (`op.value` replaces the line's value). */
function setupWb(capacity = 8): { node: Node; io: ScriptedIO & { execLocal(key: string, op: Op, current: string | null): { result: string; value: string | null } }; store: LruLineStore } {
  const io = Object.assign(new ScriptedIO(), {
    execLocal: (_key: string, op: Op, _current: string | null) => ({ result: `ok:${op.value}`, value: op.value }),
  });
  const store = new LruLineStore(capacity);
  const node = new CacheNode<string, Op, string>({ self: 2, leaseMs: LEASE, renewMs: RENEW, evictedBatchMax: 4, writeBack: true, flushMs: FLUSH }, store, io);
  store.onEvict = (k, l) => node.onEvicted(k, l);
  return { node, io, store };
}

const flushed = (accepted: boolean, pending = false): FlushAnswer => ({ t: 'flushed', ok: true, epoch: EPOCH, home: 1, lease: accepted, accepted, ...(pending ? { pending } : {}) });

t.test('write-back: a write of an E line completes locally (E->M) and is flushed within flushMs; then E again', async (t) => {
  const { node, io } = setupWb();
  fill(node, io, 'a', 'v0', 7, 'E');
  t.same(write(node, 'a', 'v1'), [{ ok: true, result: 'ok:v1' }], 'answered at once');
  t.equal(io.reqs.length, 0, 'no request left the node');
  t.equal(node.stateOf('a', SHARD), LineState.M);
  t.same(read(node, 'a'), [{ ok: true, value: 'v1', hit: true }], 'the node serves its own write');
  io.t += FLUSH - 1;
  node.tick();
  t.equal(io.reqs.filter((r) => r.req.t === 'flush').length, 0, 'not due yet');
  io.t += 1;
  node.tick();
  const f = io.take('flush');
  t.same(f.req, { t: 'flush', from: 2, shard: SHARD, epoch: EPOCH, key: 'a', gen: 7, value: 'v1' });
  write(node, 'a', 'v2'); // written again while the flush is out
  f.cb(flushed(true));
  t.equal(node.stateOf('a', SHARD), LineState.M, 'still Modified: v2 is not home yet');
  io.t += FLUSH;
  node.tick();
  const f2 = io.take('flush');
  t.equal((f2.req as FlushRequest<string>).value, 'v2');
  f2.cb(flushed(true));
  t.equal(node.stateOf('a', SHARD), LineState.E, 'clean again');
  t.same([node.transitions.get(LineState.E, LineState.M), node.transitions.get(LineState.M, LineState.E)], [1, 1]);
  t.same([node.stats.localWrites, node.stats.flushesSent, node.stats.flushesAccepted], [2, 2, 2]);
});

t.test('write-back: an S or I line, or a multi-key write, goes to the home', async (t) => {
  const { node, io } = setupWb();
  fill(node, io, 's', 'v', 3, 'S');
  write(node, 's', 'x');
  t.equal(io.take('write').req.t, 'write', 'S: through the home');
  write(node, 'nothing', 'x');
  t.equal(io.take('write').req.t, 'write', 'I: through the home');
  t.equal(node.stats.localWrites, 0);
});

t.test('write-back: invalidations and downgrades carry the Modified data (again if asked again)', async (t) => {
  const { node, io } = setupWb();
  fill(node, io, 'b', 'v', 3, 'E');
  write(node, 'b', 'mb');
  const ack = node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['b', 3]] });
  t.same(ack.data, [['b', 3, 'mb']]);
  t.equal(node.stateOf('b', SHARD), LineState.I);
  t.same(node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['b', 3]] }).data, [['b', 3, 'mb']], 'a repeated invalidation gets the data again');
  t.same(node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['b', 2]] }).data, undefined, 'not for another grant');

  fill(node, io, 'c', 'v', 4, 'E');
  write(node, 'c', 'mc');
  const d = node.onDowngrade({ t: 'down', shard: SHARD, epoch: EPOCH, items: [['c', 4]] });
  t.same(d.data, [['c', 4, 'mc']]);
  t.equal(node.stateOf('c', SHARD), LineState.S, 'M -> S');
  t.same(read(node, 'c'), [{ ok: true, value: 'mc', hit: true }]);
  io.t += FLUSH;
  node.tick();
  t.equal(io.reqs.filter((r) => r.req.t === 'flush').length, 0, 'nothing left to flush');
  t.equal(node.stats.writebacksInAnswers, 2);
});

t.test('write-back: a late invalidation of an older grant leaves a Modified line of a newer grant alone', async (t) => {
  const { node, io } = setupWb();
  fill(node, io, 'k', 'v', 9, 'E');
  write(node, 'k', 'm');
  const ack = node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['k', 5]] });
  t.same(ack.data, undefined);
  t.equal(node.stateOf('k', SHARD), LineState.M, 'kept');
});

t.test('write-back: an evicted Modified line is served from the buffer until its flush is taken', async (t) => {
  const { node, io } = setupWb(1);
  fill(node, io, 'd', 'v', 5, 'E');
  write(node, 'd', 'md');
  fill(node, io, 'e', 'v', 6, 'S'); // evicts d (capacity 1)
  t.equal(node.stateOf('d', SHARD), LineState.I);
  t.same(read(node, 'd'), [{ ok: true, value: 'md', hit: true }], 'served from the write-back buffer');
  node.tick();
  const f = io.take('flush');
  t.same((f.req as FlushRequest<string>).value, 'md');
  f.cb(flushed(true));
  t.same(node.dirtyCounts, { lines: 0, buffered: 0 });
  read(node, 'd');
  t.equal(io.take('gets', 'd').req.t, 'gets', 'now a miss');
  const renewal = node.leaseOf(SHARD);
  t.ok(renewal !== undefined);
});

t.test('write-back: a flush the home refuses (not pending) loses the data and drops the line', async (t) => {
  const { node, io } = setupWb();
  fill(node, io, 'f', 'v', 5, 'E');
  write(node, 'f', 'mf');
  io.t += FLUSH;
  node.tick();
  io.take('flush').cb(flushed(false, true));
  t.equal(node.stateOf('f', SHARD), LineState.M, 'pending: an invalidation or downgrade will take the data');
  io.t += FLUSH;
  node.tick();
  io.take('flush').cb(flushed(false));
  t.equal(node.stateOf('f', SHARD), LineState.I);
  t.equal(node.stats.writebacksLost, 1);
});

t.test('write-back: a lapsed lease loses the Modified lines (counted)', async (t) => {
  const { node, io } = setupWb();
  fill(node, io, 'g', 'v', 5, 'E');
  write(node, 'g', 'mg');
  io.t += LEASE + 1;
  node.tick();
  t.equal(node.stateOf('g', SHARD), LineState.I);
  t.equal(node.stats.writebacksLost, 1);
  t.same(node.dirtyCounts, { lines: 0, buffered: 0 });
});

t.test('a hit when the clock reads 0 is still recorded, so the line is refilled after an invalidation', async (t) => {
  const io = new ScriptedIO();
  io.t = 0;
  const store = new LruLineStore(8);
  const node = new CacheNode<string, Op, string>({ self: 2, leaseMs: LEASE, renewMs: RENEW, evictedBatchMax: 4, refillMax: 1 }, store, io);
  store.onEvict = (k, l) => node.onEvicted(k, l);
  fill(node, io, 'hot', 'v1', 3, 'S');
  t.equal(store.peek('hot')?.readAt ?? 0, 0, 'a new line has no hit');
  t.same(read(node, 'hot'), [{ ok: true, value: 'v1', hit: true }]);
  t.ok((store.peek('hot')?.readAt ?? 0) > 0, 'the hit is recorded as a positive time');
  node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['hot', 3]] });
  t.equal(io.reqs.filter((r) => r.req.t === 'gets').length, 1, 'read again in the background');
});

t.test('write-through refills: a line read since its fill is read again in the background after an invalidation', async (t) => {
  const io = new ScriptedIO();
  const store = new LruLineStore(8);
  const node = new CacheNode<string, Op, string>({ self: 2, leaseMs: LEASE, renewMs: RENEW, evictedBatchMax: 4, refillMax: 1 }, store, io);
  store.onEvict = (k, l) => node.onEvicted(k, l);
  fill(node, io, 'hot', 'v1', 3, 'S');
  fill(node, io, 'cold', 'c1', 4, 'S');
  fill(node, io, 'hot2', 'w1', 5, 'S');
  read(node, 'hot');
  read(node, 'hot2');
  const misses = node.stats.misses;
  node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['cold', 4]] });
  t.equal(io.reqs.filter((r) => r.req.t === 'gets').length, 0, 'a line nobody read since its fill is not refilled');
  node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['hot', 3], ['hot2', 5]] });
  const g = io.take('gets', 'hot');
  t.same(g.req, { t: 'gets', from: 2, shard: SHARD, key: 'hot', cacheable: true }, 'the read line is read again');
  t.equal(io.reqs.filter((r) => r.req.t === 'gets').length, 0, 'hot2 skipped: refillMax 1 in flight');
  t.same([node.stats.refills, node.stats.refillsSkipped, node.stats.misses], [1, 1, misses], 'no miss counted');
  const joined = read(node, 'hot'); // a reader arriving meanwhile joins it
  g.cb(data('v2', 'S', 9));
  t.same(joined, [{ ok: true, value: 'v2', hit: false }]);
  t.same(read(node, 'hot'), [{ ok: true, value: 'v2', hit: true }], 'the next read hits');
  node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['hot', 9]] });
  t.equal(io.reqs.filter((r) => r.req.t === 'gets').length, 1, 'read again since: refilled again');
});

t.test("write-allocate 'adaptive': a write asks for a line when the key was read here, or while lines are being reused", async (t) => {
  const io = new ScriptedIO();
  const store = new LruLineStore(64);
  const node = new CacheNode<string, Op, string>({ self: 2, leaseMs: LEASE, renewMs: RENEW, evictedBatchMax: 4, writeAllocate: 'adaptive' }, store, io);
  store.onEvict = (k, l) => node.onEvicted(k, l);
  const wants = (key: string): string | undefined => (io.take('write', key).req as { want?: string }).want;
  const writeAnswered = (key: string, gen: number): string | undefined => {
    write(node, key, 'x');
    const r = io.take('write', key);
    const want = (r.req as { want?: string }).want;
    r.cb(written('OK', want === undefined ? null : { key, value: 'x', gen }));
    return want;
  };
  t.equal(node.lineReuse, 1, 'lines count as reused until one ends unread');
  t.equal(writeAnswered('a', 1), 'a', 'no sign of a read, but reuse is high: asks');
  t.equal(node.stateOf('a', SHARD), LineState.E, 'and the grant installs');
  // Lines that end unread (the node's own writes drop them, invalidations take them) bring reuse down.
  let gen = 2;
  for (let i = 0; i < 100; i++) writeAnswered('a', gen++);
  t.ok(node.lineReuse < 0.25, `after 100 unread lines, reuse ${node.lineReuse.toFixed(3)} < 0.25`);
  const before = node.stats.writesUnallocated;
  const asked = Array.from({ length: 32 }, () => writeAnswered('b', gen++));
  t.equal(asked.filter((w) => w !== undefined).length, 2, 'below the bar, one write in 16 still asks (it keeps reuse measured)');
  t.equal(node.stats.writesUnallocated - before, 30, 'the others are counted as unallocated');
  write(node, 'c', 'x');
  t.equal(wants('c'), undefined, 'a key never read here: no line asked for');
  t.equal(node.stateOf('c', SHARD), LineState.I);
  fill(node, io, 'u', 'v', gen++);
  write(node, 'u', 'x');
  t.equal(wants('u'), undefined, 'a line installed and never hit: no sign of a read');
  // Signs of a read of the key on this node: a line that served a hit since it was installed, or a read in flight.
  fill(node, io, 'r', 'v', gen++);
  t.same(read(node, 'r'), [{ ok: true, value: 'v', hit: true }]);
  io.t += 1_000; // long after the hit (the writer does not keep the line while the write is out), but a hit since install
  write(node, 'r', 'x');
  t.equal(wants('r'), 'r', 'a line that served a hit since install: asks');
  const pendingRead = read(node, 'f');
  write(node, 'f', 'x');
  t.equal(wants('f'), 'f', 'a read of the key in flight: asks');
  t.same(pendingRead, [], '(the read is still waiting)');
  // Reuse recovers as lines are hit before they end.
  for (let i = 0; i < 200; i++) {
    fill(node, io, `h${i}`, 'v', gen++);
    read(node, `h${i}`);
    node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [[`h${i}`, gen - 1]] });
  }
  t.ok(node.lineReuse >= 0.25, `after 200 lines hit before their invalidation, reuse ${node.lineReuse.toFixed(3)} >= 0.25`);
  write(node, 'c', 'y');
  t.equal(wants('c'), 'c', 'and writes of unread keys ask again');
});

t.test("write-allocate 'always' (the class default) and write-back: every single-key write asks", async (t) => {
  for (const cfg of [{}, { writeAllocate: 'always' as const }, { writeAllocate: 'adaptive' as const, writeBack: true }]) {
    const io = new ScriptedIO();
    const store = new LruLineStore(64);
    const node = new CacheNode<string, Op, string>({ self: 2, leaseMs: LEASE, renewMs: RENEW, evictedBatchMax: 4, ...cfg }, store, io);
    let gen = 1;
    for (let i = 0; i < 120; i++) {
      write(node, 'a', 'x');
      const r = io.take('write', 'a');
      t.equal((r.req as { want?: string }).want, 'a', `${JSON.stringify(cfg)}: write ${i} asks`);
      if ((r.req as { want?: string }).want !== 'a') break;
      r.cb(written('OK', { key: 'a', value: 'x', gen: gen++ }));
      node.onInvalidate({ t: 'inv', shard: SHARD, epoch: EPOCH, items: [['a', gen - 1]] });
    }
    t.equal(node.stats.writesUnallocated, 0);
  }
});
