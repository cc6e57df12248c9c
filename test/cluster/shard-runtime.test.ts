import t from 'tap';
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ShardRuntime, topologyExtra, type RuntimeNode, type ShardRuntimeOptions } from '../../src/cluster/shard-runtime.js';
import { keySlot } from '../../src/cluster/slots.js';
import { placeShards, placementDigest, shardOfSlot } from '../../src/cluster/ring.js';
import { ReplyRecorder } from '../../src/cluster/keyspace-reply.js';
import {
  BatchWriter,
  readReplies,
  readRequests,
  RequestKind,
  ShardErrorIndex,
  WorkerProtocolError,
  writeReplyError,
  writeReplyOk,
  writeRequest,
  type ShardReply,
  type ShardStatus,
} from '../../src/cluster/worker-protocol.js';

const S = 8;
const W = 2;
const NODES = [1, 2, 3];
const b = (s: string): Buffer => Buffer.from(s);

function record(fill: (r: ReplyRecorder) => void): Buffer {
  const r = new ReplyRecorder();
  fill(r);
  return Buffer.from(r.take());
}
const OK = record((r) => r.ok());
const shardOf = (key: string): number => shardOfSlot(keySlot(b(key)), S);

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** A base port with W free ports for each of the three nodes (bounded tries). */
async function freeBase(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 400) * 100;
    let ok = true;
    for (const n of NODES) for (let i = 0; i < W && ok; i++) ok = await portFree(base + n * 10 + i);
    if (ok) return base;
  }
  throw new Error('no free ports found');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

t.test('worker protocol batches round-trip and malformed batches are refused', async (t) => {
  const w = new BatchWriter(8); // tiny on purpose: growth is exercised
  writeRequest(w, 7, 3, RequestKind.Write, [b('SET'), b('k'), Buffer.alloc(0)]);
  writeRequest(w, 0xffffffff, 65535, RequestKind.Read, [b('GET'), b('x'.repeat(300))]);
  const count = w.count;
  const buf = w.finish();
  t.equal(w.count, 0);
  const got: { reqId: number; shard: number; kind: RequestKind; args: string[] }[] = [];
  readRequests({ t: 'req', count, buf }, (r) => got.push({ ...r, args: r.args.map((a) => a.toString()) }));
  t.same(got, [
    { reqId: 7, shard: 3, kind: RequestKind.Write, args: ['SET', 'k', ''] },
    { reqId: 0xffffffff, shard: 65535, kind: RequestKind.Read, args: ['GET', 'x'.repeat(300)] },
  ]);
  t.throws(() => readRequests({ t: 'req', count: count + 1, buf }, () => undefined), WorkerProtocolError);
  t.throws(() => readRequests({ t: 'req', count, buf: buf.slice(0, buf.byteLength - 1) }, () => undefined), WorkerProtocolError);
  t.throws(() => readRequests({ t: 'req', count: count - 1, buf }, () => undefined), /trailing/);

  writeReplyOk(w, 1, OK);
  writeReplyError(w, 2, ShardErrorIndex.NotLeader, 3, 'led by node 3 ✓');
  const rc = w.count;
  const rbuf = w.finish();
  const replies: [number, ShardReply][] = [];
  readReplies({ t: 'rep', count: rc, buf: rbuf }, (id, r) => replies.push([id, r.ok ? { ok: true, record: Buffer.from(r.record) } : r]));
  t.same(replies, [
    [1, { ok: true, record: OK }],
    [2, { ok: false, code: 'NOTLEADER', leader: 3, message: 'led by node 3 ✓' }],
  ]);
  const bad = new Uint8Array(rbuf.slice(0));
  bad[4] = 9; // status byte of the first reply
  t.throws(() => readReplies({ t: 'rep', count: rc, buf: bad.buffer }, () => undefined), /unknown reply status/);
});

t.test('three nodes replicate the keyspace, survive a node stop and catch it up after restart', async (t) => {
  const started = Date.now();
  const base = await freeBase();
  const nodes = new Map<number, RuntimeNode>(NODES.map((n) => [n, { host: '127.0.0.1', peerBasePort: base + n * 10 }]));
  const dirs = NODES.map((n) => mkdtempSync(join(tmpdir(), `lockstep-rt-${n}-`)));
  const optsOf = (n: number): ShardRuntimeOptions => ({
    nodeId: n,
    nodes,
    workers: W,
    shards: S,
    rf: 3,
    dataDir: dirs[n - 1]!,
    fsync: 'batch',
    clusterId: 'rt-test',
    logLevel: 'error',
    tuning: { leaderWaitMs: 3_000, snapshotEntries: 40 },
  });
  const rts: (ShardRuntime | null)[] = await Promise.all(NODES.map((n) => ShardRuntime.start(optsOf(n))));
  t.teardown(async () => {
    await Promise.all(rts.map((r) => r?.stop()));
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const rt = (n: number): ShardRuntime => {
    const r = rts[n - 1];
    if (!r) throw new Error(`node ${n} is down`);
    return r;
  };

  const statuses = async (): Promise<Map<number, ShardStatus[]>> => {
    const out = new Map<number, ShardStatus[]>();
    for (const n of NODES) {
      const r = rts[n - 1];
      if (r) out.set(n, await r.status());
    }
    return out;
  };
  /** shard -> leader, when every shard has a live leader that knows it leads. */
  const leaders = async (): Promise<Map<number, number> | undefined> => {
    const st = await statuses();
    const out = new Map<number, number>();
    for (const [n, list] of st) for (const s of list) if (s.role === 'leader') out.set(s.shard, n);
    return out.size === S ? out : undefined;
  };

  let leaderOf = await waitFor('a leader for every shard', 20_000, leaders);
  t.equal(leaderOf.size, S, 'every shard has a leader');
  const placement = rt(1).placement;
  t.same(rt(2).topologyDigest, rt(1).topologyDigest, 'nodes agree on the topology digest');
  const balanced = async (): Promise<Map<number, number> | undefined> => {
    const l = await leaders();
    return l && placement.every((p) => l.get(p.shard) === p.preferredLeader) ? l : undefined;
  };
  leaderOf = await waitFor('leaders to move to their preferred nodes', 20_000, balanced);
  const leadCounts = NODES.map((n) => [...leaderOf.values()].filter((x) => x === n).length);
  t.ok(Math.max(...leadCounts) - Math.min(...leadCounts) <= 1, `leadership is spread evenly (${leadCounts.join('/')})`);
  const first = await statuses();
  for (const n of NODES) t.equal(first.get(n)!.length, S, `node ${n} hosts all ${S} shards (RF 3 of 3 nodes)`);
  t.same(new Set(first.get(1)!.map((s) => s.worker)), new Set([0, 1]), 'shards are spread over both workers');

  /** Executes on the shard's leader, following NOTLEADER and retrying TRYAGAIN a bounded number of times. */
  const run = async (shard: number, kind: 'write' | 'read', args: Buffer[]): Promise<ShardReply> => {
    let last: ShardReply | undefined;
    for (let attempt = 0; attempt < 40; attempt++) {
      const node = leaderOf.get(shard)!;
      const r = rts[node - 1];
      if (r) {
        last = await r.execute(shard, kind, args);
        if (last.ok) return last;
        if (last.code === 'NOTLEADER' && last.leader !== 0) {
          leaderOf.set(shard, last.leader);
          continue;
        }
      }
      await sleep(100);
      leaderOf = (await leaders()) ?? leaderOf;
    }
    return last ?? { ok: false, code: 'TRYAGAIN', leader: 0, message: 'no live leader' };
  };

  const value = (i: number, gen: number): string => `value-${i}-${gen}`;
  const expectedKeys = new Map<number, number>();
  const writeKeys = async (from: number, to: number, gen: number): Promise<number> => {
    const replies = await Promise.all(
      Array.from({ length: to - from }, (_, j) => {
        const k = `key:${from + j}`;
        return run(shardOf(k), 'write', [b('SET'), b(k), b(value(from + j, gen))]);
      }),
    );
    let ok = 0;
    for (const r of replies) if (r.ok && Buffer.from(r.record).equals(OK)) ok++;
    return ok;
  };
  const readKeys = async (from: number, to: number, gen: number): Promise<number> => {
    let ok = 0;
    const replies = await Promise.all(
      Array.from({ length: to - from }, (_, j) => run(shardOf(`key:${from + j}`), 'read', [b('GET'), b(`key:${from + j}`)])),
    );
    replies.forEach((r, j) => {
      const want = record((rec) => rec.bulk(value(from + j, gen)));
      if (r.ok && Buffer.from(r.record).equals(want)) ok++;
    });
    return ok;
  };
  const countKeys = (to: number): void => {
    expectedKeys.clear();
    for (let i = 0; i < to; i++) expectedKeys.set(shardOf(`key:${i}`), (expectedKeys.get(shardOf(`key:${i}`)) ?? 0) + 1);
  };
  /** Every live node holds exactly the expected number of keys in every shard. */
  const converged = async (): Promise<true | undefined> => {
    const st = await statuses();
    for (const list of st.values()) {
      if (list.length !== S) return undefined;
      for (const s of list) if (s.keys !== (expectedKeys.get(s.shard) ?? 0)) return undefined;
    }
    return true;
  };

  t.equal(await writeKeys(0, 200, 1), 200, '200 SETs through the leaders reply +OK');
  t.equal(await readKeys(0, 200, 1), 200, '200 GETs from the leaders return the values written');
  countKeys(200);
  t.ok(await waitFor('followers to apply every write', 15_000, converged), 'every replica holds every key');

  // A non-leader forwards writes and reads to the leader and relays the answer.
  const shard0 = shardOf('key:0');
  const lead0 = leaderOf.get(shard0)!;
  const other = NODES.find((n) => n !== lead0)!;
  const fwdBefore = (await rt(other).workerStats())[rt(other).workerOf(shard0)]!.forwarded;
  const servedBefore = (await rt(lead0).workerStats())[rt(lead0).workerOf(shard0)]!.forwardedIn;
  const nl = await rt(other).execute(shard0, 'write', [b('SET'), b('key:0'), b('via-follower')]);
  t.ok(nl.ok && Buffer.from(nl.record).equals(OK), 'a write sent to a follower is forwarded to the leader and answers +OK');
  const nlr = await rt(other).execute(shard0, 'read', [b('GET'), b('key:0')]);
  t.ok(nlr.ok && Buffer.from(nlr.record).equals(record((rec) => rec.bulk('via-follower'))), 'a read on a follower is served by the leader (sees the write)');
  const fwdAfter = (await rt(other).workerStats())[rt(other).workerOf(shard0)]!.forwarded;
  const servedAfter = (await rt(lead0).workerStats())[rt(lead0).workerOf(shard0)]!.forwardedIn;
  t.equal(fwdAfter - fwdBefore, 2, 'the follower forwarded both requests');
  t.equal(servedAfter - servedBefore, 2, 'the leader served both forwarded requests');
  t.equal(await writeKeys(0, 1, 1), 1, 'key:0 restored');
  const bad = await rt(lead0).execute(shard0, 'write', [b('GET'), b('key:0')]);
  t.match(bad, { ok: false, code: 'ERR' }, 'a read command sent as a write is refused before it is proposed');

  // Stop node 1: its shards elect new leaders; writes continue and earlier writes stay readable.
  const victim = 1;
  await rts[victim - 1]!.stop();
  rts[victim - 1] = null;
  leaderOf = await waitFor('re-election after node 1 stopped', 20_000, leaders);
  t.notOk([...leaderOf.values()].includes(victim), 'no shard is led by the stopped node');
  t.equal(await writeKeys(200, 250, 1), 50, 'writes continue with one node down');
  t.equal(await readKeys(0, 250, 1), 250, 'every earlier and new write is readable');
  t.equal(await writeKeys(0, 50, 2), 50, 'overwrites with one node down');

  // Restart node 1 from its data dir: it recovers and catches up (by log or snapshot, snapshotEntries is 40).
  rts[victim - 1] = await ShardRuntime.start(optsOf(victim));
  countKeys(250);
  t.ok(await waitFor('the restarted node to catch up', 20_000, converged), 'the restarted node holds every key again');
  leaderOf = await waitFor('leadership to return to the restarted node', 20_000, balanced);
  t.equal(await readKeys(0, 50, 2), 50, 'overwritten values are read back after the restart');
  t.equal(await readKeys(50, 250, 1), 200, 'older values are read back after the restart');
  const st = await rt(victim).status();
  t.ok(st.every((s) => s.leader !== 0 && s.applied > 0), 'the restarted node knows every leader and has applied entries');
  t.comment(`scenario took ${Date.now() - started} ms`);
});

t.test('a lone node of three answers NOQUORUM after the leader wait, and STOPPED once stopped', async (t) => {
  const base = await freeBase();
  const nodes = new Map<number, RuntimeNode>(NODES.map((n) => [n, { host: '127.0.0.1', peerBasePort: base + n * 10 }]));
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-rt-lone-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const rt = await ShardRuntime.start({
    nodeId: 1, nodes, workers: W, shards: S, rf: 3, dataDir: dir, fsync: 'never', logLevel: 'silent',
    tuning: { leaderWaitMs: 300 },
  });
  let stopped = false;
  t.teardown(async () => {
    if (!stopped) await rt.stop();
  });
  const t0 = Date.now();
  const [w, r] = await Promise.all([
    rt.execute(0, 'write', [b('SET'), b('k'), b('v')]),
    rt.execute(1, 'read', [b('GET'), b('k')]),
  ]);
  const waited = Date.now() - t0;
  t.match(w, { ok: false, code: 'NOQUORUM', message: /only 1 of 3 replicas reachable/ }, 'a write without a reachable majority');
  t.match(r, { ok: false, code: 'NOQUORUM' }, 'a read without a reachable majority');
  t.ok(waited >= 250, `the requests waited for a leader first (${waited} ms)`);
  t.ok((await rt.status()).every((s) => s.role !== 'leader' && s.leader === 0), 'no shard has a leader');

  const pending = rt.execute(2, 'write', [b('SET'), b('k'), b('v')]);
  await rt.stop();
  stopped = true;
  t.match(await pending, { ok: false, code: 'STOPPED' }, 'a request parked at stop answers STOPPED');
  t.match(await rt.execute(2, 'write', [b('SET'), b('k'), b('v')]), { ok: false, code: 'STOPPED' }, 'a request after stop answers STOPPED');
});

t.test('with RF 1 a node forwards requests for shards only another node holds, and refuses what it must not run', async (t) => {
  const base = await freeBase();
  const pair = [1, 2];
  const nodes = new Map<number, RuntimeNode>(pair.map((n) => [n, { host: '127.0.0.1', peerBasePort: base + n * 10 }]));
  const dirs = pair.map((n) => mkdtempSync(join(tmpdir(), `lockstep-rt-rf1-${n}-`)));
  const rts = await Promise.all(
    pair.map((n) => ShardRuntime.start({ nodeId: n, nodes, workers: W, shards: S, rf: 1, dataDir: dirs[n - 1]!, fsync: 'never', logLevel: 'silent', tuning: { leaderWaitMs: 500 } })),
  );
  const rt = rts[0]!;
  let peerUp = true;
  t.teardown(async () => {
    await rt.stop();
    if (peerUp) await rts[1]!.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const mine = rt.placement.filter((p) => rt.hosts(p.shard)).map((p) => p.shard);
  const other = rt.placement.find((p) => !rt.hosts(p.shard))!;
  t.ok(mine.length > 0 && other !== undefined, `with RF 1 node 1 hosts some shards (${mine.join(',')}), not all`);
  const shard = mine[0]!;
  await waitFor('every shard to have its leader', 10_000, async () => {
    const all = [...(await rt.status()), ...(await rts[1]!.status())];
    return all.filter((s) => s.role === 'leader').length === S ? true : undefined;
  });
  // Node 1 learns the leader of a shard it does not host from node 2, some time after node 2 elected it: a request
  // sent before that waits leaderWaitMs (500 ms here) and fails, which a loaded CI box once hit. Forwarding is what
  // is tested, so wait for what it needs.
  await waitFor('node 1 to know the remote shard\'s leader', 10_000, async () => {
    const st = (await rt.status()).find((s) => s.shard === other.shard);
    return st !== undefined && st.role === 'remote' && st.leader === 2 ? true : undefined;
  });
  t.match(await rt.execute(shard, 'write', [b('SET'), b('a'), b('1')]), { ok: true }, 'a single-replica shard takes writes');
  const got = await rt.execute(shard, 'read', [b('GET'), b('a')]);
  t.ok(got.ok && Buffer.from(got.record).equals(record((r) => r.bulk('1'))), 'and reads them back');
  const fw = await rt.execute(other.shard, 'write', [b('SET'), b('b'), b('2')]);
  t.ok(fw.ok && Buffer.from(fw.record).equals(OK), 'a write for a shard only node 2 holds is forwarded there');
  const fr = await rt.execute(other.shard, 'read', [b('GET'), b('b')]);
  t.ok(fr.ok && Buffer.from(fr.record).equals(record((r) => r.bulk('2'))), 'and so is the read');
  const onTwo = (await rts[1]!.status()).find((s) => s.shard === other.shard)!;
  t.equal(onTwo.keys, 1, 'the key lives on node 2');
  t.match((await rt.status()).find((s) => s.shard === other.shard), { role: 'remote', leader: 2 }, 'node 1 reports the shard as remote, led by node 2');
  t.match(await rt.execute(S, 'read', [b('GET'), b('a')]), { ok: false, code: 'NOSHARD' }, 'a shard that does not exist');
  t.match(await rt.execute(shard, 'write', [b('PING')]), { ok: false, code: 'ERR' }, 'a non-keyspace write is refused');
  t.match(await rt.execute(shard, 'write', [b('SET'), b('a')]), { ok: false, code: 'ERR' }, 'a write with a bad arity is refused');
  t.match(await rt.execute(shard, 'read', [b('SET'), b('a'), b('2')]), { ok: false, code: 'ERR' }, 'a write sent as a read is refused');
  const after = await rt.execute(shard, 'read', [b('GET'), b('a')]);
  t.ok(after.ok && Buffer.from(after.record).equals(record((r) => r.bulk('1'))), 'refused requests changed nothing');
  const st = await rt.workerStats();
  const sameWorker = rt.workerOf(other.shard) === rt.workerOf(shard) ? 2 : 0;
  t.match(st[rt.workerOf(shard)], { requests: 6 + sameWorker, errors: 3, writes: 1, reads: 2 }, 'the worker saw its requests (NOSHARD is answered on the edge) and refused 3');

  // With node 2 gone, its shard has no reachable replica: NOQUORUM after the leader wait.
  await rts[1]!.stop();
  peerUp = false;
  const t0 = Date.now();
  t.match(await rt.execute(other.shard, 'write', [b('SET'), b('b'), b('3')]), { ok: false, code: 'NOQUORUM' }, 'no reachable replica: NOQUORUM');
  t.ok(Date.now() - t0 >= 400, 'after waiting for one');
});

t.test('nodes that disagree on the cache policy or lease have different topology digests (the handshake refuses them)', async (t) => {
  const p = placeShards([1, 2, 3], 8, 3);
  const d = (policy: 'write-through' | 'write-back', lease: number, workers = 2) => placementDigest(p, topologyExtra(workers, { cacheWritePolicy: policy, cacheLeaseMs: lease }));
  t.equal(d('write-through', 1000), d('write-through', 1000));
  t.not(d('write-through', 1000), d('write-back', 1000), 'write policy');
  t.not(d('write-through', 1000), d('write-through', 600), 'lease');
  t.not(d('write-through', 1000), d('write-through', 1000, 1), 'workers');
});
