// Three cluster nodes in this process (each with its own shard workers, WAL and peer links over loopback), driven
// by ioredis: the routed keyspace commands (single-key, split multi-key, keyless fan-out, SCAN across shards), the
// CLUSTER subcommands and the INFO sections a cluster node adds.
import t from 'tap';
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type { Worker } from 'node:worker_threads';
import { loadNodeOptions } from '../../src/config/options.js';
import { startClusterNode, type ClusterNode } from '../../src/node/cluster-node.js';
import { keySlot } from '../../src/cluster/slots.js';
import { shardOfSlot } from '../../src/cluster/ring.js';
import { silentLogger } from '../../src/util/logger.js';

const SHARDS = 6;

function portsFree(ports: number[]): Promise<boolean> {
  return Promise.all(
    ports.map(
      (p) =>
        new Promise<boolean>((resolve) => {
          const s = net.createServer();
          s.once('error', () => resolve(false));
          s.listen(p, '127.0.0.1', () => s.close(() => resolve(true)));
        }),
    ),
  ).then((all) => all.every(Boolean));
}

async function pickBase(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const base = 12000 + Math.floor(Math.random() * 19000); // below the ephemeral range (32768+)
    const ports = [1, 2, 3].flatMap((n) => [base + n, base + 1000 + n * 10, base + 1000 + n * 10 + 1]);
    if (await portsFree(ports)) return base;
  }
  throw new Error('no free ports');
}

const base = await pickBase();
const peers = [1, 2, 3].map((n) => `${n}@127.0.0.1:${base + n}:${base + 1000 + n * 10}`).join(',');
/** What each node reported through ClusterNodeHooks.onFatal. */
const fatal: string[][] = [[], [], []];
const dirs = [1, 2, 3].map((n) => mkdtempSync(join(tmpdir(), `lockstep-cn-${n}-`)));
const nodes: ClusterNode[] = await Promise.all(
  [1, 2, 3].map((n) => {
    const { options } = loadNodeOptions(
      ['--id', String(n), '--peers', peers, '--data-dir', dirs[n - 1]!, '--workers', '2', '--shards', String(SHARDS), '--fsync', 'never', '--election-timeout', '300', '--leader-wait', '8000', '--log-level', 'silent'],
      {},
      '/nonexistent/.env',
    );
    return startClusterNode(options, silentLogger(), { onFatal: (why) => fatal[n - 1]!.push(why) });
  }),
);
const clients = nodes.map((n) => new Redis({ port: n.port, maxRetriesPerRequest: 3, lazyConnect: false }));
t.teardown(async () => {
  for (const c of clients) c.disconnect();
  await Promise.all(nodes.map((n) => n.close()));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
await Promise.all(nodes.map((n) => n.waitForLeaders(20_000)));
const [c1, c2, c3] = clients as [Redis, Redis, Redis];

/**
 * Retries `check` until it returns true (up to 15 s). Leadership moves to the preferred leaders after start and
 * each node's view of the shards is refreshed every 200 ms, so a topology snapshot can be briefly inconsistent.
 */
async function settled(check: () => Promise<boolean>): Promise<boolean> {
  const until = Date.now() + 15_000;
  while (Date.now() < until) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}
const shardOf = (k: string): number => shardOfSlot(keySlot(Buffer.from(k)), SHARDS);

/** Keys spread over every shard. */
const keys: string[] = [];
for (let i = 0; keys.length < 60; i++) keys.push(`key:${i}`);
t.ok(new Set(keys.map(shardOf)).size === SHARDS, 'the test keys cover every shard');

t.test('single-key commands go through any node and are read on every node', async (t) => {
  t.equal(await c1.set('greeting', 'hello'), 'OK');
  t.equal(await c2.get('greeting'), 'hello');
  t.equal(await c3.get('greeting'), 'hello');
  t.equal(await c3.incr('counter'), 1);
  t.equal(await c1.incrby('counter', 41), 42);
  t.equal(await c2.append('greeting', ' world'), 11);
  t.equal(await c1.strlen('greeting'), 11);
  await t.rejects(c1.incr('greeting'), /ERR value is not an integer or out of range/, 'a replicated command error is relayed');
  await t.rejects(c2.set('x', 'y', 'EX' as never, 'abc' as never), /ERR value is not an integer or out of range/);
  await t.rejects(c1.call('get'), /ERR wrong number of arguments for 'get' command/, 'arity is checked on the edge');
  t.equal(await c1.set('ttl-key', 'v', 'PX', 60_000), 'OK');
  const pttl = await c3.pttl('ttl-key');
  t.ok(pttl > 55_000 && pttl <= 60_000, `PTTL read on another node (${pttl})`);
});

t.test('multi-key commands are split per shard and recombined in key order', async (t) => {
  const pairs = keys.flatMap((k, i) => [k, `v${i}`]);
  t.equal(await c1.mset(...pairs), 'OK', 'MSET across every shard');
  const got = await c2.mget(...keys, 'missing-key');
  t.same(got, [...keys.map((_, i) => `v${i}`), null], 'MGET across shards keeps the order of the keys');
  t.equal(await c3.exists(...keys.slice(0, 10), 'missing-key', keys[0]!), 11, 'EXISTS sums per shard (a repeated key counts twice)');
  t.equal(await c1.dbsize(), keys.length + 3, 'DBSIZE adds up every shard');
  const all = (await c2.keys('key:*')).sort();
  t.same(all, [...keys].sort(), 'KEYS gathers every shard');
  await t.rejects(c1.msetnx('{a}x', '1', 'zzz', '2'), /CROSSSLOT/, 'MSETNX across shards is refused');
  t.equal(await c1.msetnx('{tag}a', '1', '{tag}b', '2'), 1, 'MSETNX within one shard (hashtag) works');
  t.equal(await c3.del(...keys.slice(0, 20), 'missing-key'), 20, 'DEL across shards sums the deletions');
  t.same(await c1.mget(keys[0]!, keys[25]!), [null, 'v25']);
});

t.test('SCAN walks every shard once with a cursor that encodes the shard', async (t) => {
  await c1.flushall();
  t.equal(await c2.dbsize(), 0, 'FLUSHALL empties every shard');
  t.equal(await c1.randomkey(), null, 'RANDOMKEY on an empty keyspace');
  const want = Array.from({ length: 150 }, (_, i) => `scan:${i}`);
  await c1.mset(...want.flatMap((k) => [k, 'x']));
  const seen: string[] = [];
  let cursor = '0';
  let pages = 0;
  do {
    const [next, page] = await c3.scan(cursor, 'COUNT', 10);
    seen.push(...page);
    cursor = next;
    pages++;
  } while (cursor !== '0' && pages < 1000);
  t.equal(cursor, '0', 'the scan ends');
  t.same(seen.sort(), [...want].sort(), 'every key is returned exactly once');
  t.ok(pages > SHARDS, `many pages (${pages})`);
  const [, matched] = await c1.scan('0', 'MATCH', 'nothing*', 'COUNT', 1000);
  t.same(matched, []);
  await t.rejects(c1.scan('abc'), /ERR invalid cursor/);
  t.match(await c2.randomkey(), /^scan:\d+$/, 'RANDOMKEY finds a key in some shard');
});

t.test('CLUSTER reports the real topology', async (t) => {
  let covered = 0;
  let misled: string[] = [];
  const consistent = await settled(async () => {
    const slots = (await c1.cluster('SLOTS')) as unknown as [number, number, ...[string, number, string][]][];
    covered = 0;
    misled = [];
    for (const [start, end, master] of slots) {
      covered += end - start + 1;
      if (master === undefined) throw new Error('a slot range without a master');
      const leaderNode = nodes.findIndex((n) => n.port === master[1]) + 1;
      // Every shard inside the range is led by the listed master (ranges merge adjacent shards).
      for (let shard = shardOfSlot(start, SHARDS); shard <= shardOfSlot(end, SHARDS); shard++) {
        if (nodes[leaderNode - 1]?.view.status()[shard]?.role !== 'leader') misled.push(`slots ${start}-${end} shard ${shard} listed on node ${leaderNode}`);
      }
    }
    return misled.length === 0;
  });
  t.ok(consistent, `CLUSTER SLOTS lists each range's shard leader as its master ${misled.join('; ')}`);
  t.equal(covered, 16384, 'CLUSTER SLOTS covers every slot');
  t.equal(await c1.cluster('KEYSLOT', 'foo'), 12182, 'KEYSLOT foo = 12182 as in Redis');
  t.equal(await c1.cluster('KEYSLOT', '{user1000}.following'), await c1.cluster('KEYSLOT', '{user1000}.followers'), 'hashtags');
  const ids: unknown[] = await Promise.all(clients.map((c) => c.cluster('MYID')));
  t.equal(new Set(ids).size, 3, 'three distinct node ids');
  t.ok(ids.every((id) => /^[0-9a-f]{40}$/.test(String(id))), '40 hex characters each');
  const info = String(await c2.cluster('INFO'));
  t.match(info, /cluster_state:ok/);
  t.match(info, /cluster_known_nodes:3/);
  const lines = String(await c3.cluster('NODES')).trim().split('\n');
  t.equal(lines.length, 3, 'CLUSTER NODES has one line per node');
  t.equal(lines.filter((l: string) => l.includes('myself')).length, 1, 'exactly one line is myself');
  const nodeSlots = lines.flatMap((l: string) => l.split(' ').slice(8));
  t.equal(nodeSlots.reduce((n, r) => { const [a, b] = r.split('-').map(Number); return n + ((b ?? a!) - a! + 1); }, 0), 16384, 'the nodes own every slot between them');
  const shards = (await c1.cluster('SHARDS')) as unknown[];
  t.equal(shards.length, SHARDS, 'CLUSTER SHARDS lists every shard');
  await t.rejects(c1.call('cluster', 'FROB'), /ERR unknown subcommand 'FROB'/);
  await t.rejects(c1.call('cluster', 'KEYSLOT'), /wrong number of arguments/);
});

t.test('INFO has raft, cluster and replication sections', async (t) => {
  const raft = await c1.info('raft');
  t.match(raft, new RegExp(`raft_shards:${SHARDS}`));
  const shardLines = raft.split('\r\n').filter((l) => /^shard\d+:/.test(l));
  t.equal(shardLines.length, SHARDS, 'one line per shard (RF 3 of 3: every node holds every shard)');
  t.ok(shardLines.every((l) => /role=(leader|follower),leader=[123],term=\d+,commit=\d+,applied=\d+/.test(l)), 'with role, leader, term and indexes');
  let leading: number[] = [];
  const one = await settled(async () => {
    leading = await Promise.all(clients.map(async (c) => Number(/raft_leading:(\d+)/.exec(await c.info('raft'))![1])));
    return leading.reduce((a, b) => a + b, 0) === SHARDS;
  });
  t.ok(one, `each shard has exactly one leader across the nodes (${leading.join('/')})`);
  // Per worker: the Raft host's counters (appends sent before their fdatasync, snapshots, WAL segments, empty pops).
  const workerLines = (await Promise.all(clients.map((c) => c.info('raft')))).flatMap((r) => r.split('\r\n').filter((l) => /^worker\d+:state=up/.test(l)));
  t.ok(workerLines.length >= 3, `worker lines: ${workerLines.length}`);
  const fields = ['appends_before_sync', 'applied_before_sync', 'snapshots', 'snapshots_unpin', 'snapshot_encode_max_ms', 'tick_gap_max_ms', 'stalls', 'leaderships', 'step_downs', 'wal_segments', 'wal_segments_deleted', 'empty_pops', 'empty_pop_barriers'];
  t.ok(workerLines.every((l) => fields.every((f) => new RegExp(`[:,]${f}=\\d+`).test(l))), `every worker line has ${fields.join(', ')}`);
  t.ok(workerLines.every((l) => Number(/wal_segments=(\d+)/.exec(l)![1]) >= 1), 'each worker has a WAL segment');
  const sum = (f: string) => workerLines.reduce((n, l) => n + Number(new RegExp(`[:,]${f}=(\\d+)`).exec(l)![1]), 0);
  // The leaders replicated the writes of the earlier tests (and every shard's first no-op entry) while syncing them.
  t.ok(sum('appends_before_sync') > 0, `appends sent before their fdatasync: ${sum('appends_before_sync')}`);
  t.ok(sum('leaderships') >= SHARDS, `every shard was led by some worker (leaderships ${sum('leaderships')}, shards ${SHARDS})`);
  t.ok(workerLines.every((l) => Number(/tick_gap_max_ms=(\d+)/.exec(l)![1]) >= 5), 'the gap between ticks is measured (they are 10 ms apart)');
  t.match(await c2.info('cluster'), /cluster_enabled:1/);
  t.match(await c3.info('replication'), /role:master/);
  t.match(await c3.info('replication'), /slave0:ip=127\.0\.0\.1,port=\d+,state=online,node=\d/);
});

// Last: it leaves node 3 with a dead worker.
t.test('a shard worker that dies is reported once to the node owner; its shards answer an error, the cluster serves on', async (t) => {
  t.same(fatal, [[], [], []], 'nothing fatal before');
  const handles = (nodes[2]!.runtime as unknown as { handles: { index: number; worker: Worker }[] }).handles;
  const victim = handles.find((h) => h.index === 0)!;
  await victim.worker.terminate(); // the thread is gone, as after an uncaught exception in it
  t.ok(await settled(async () => fatal[2]!.length > 0), 'node 3 reported it');
  t.same(fatal[2], ['shard worker 0 exited with code 1'], 'once, naming the worker');
  t.same([fatal[0], fatal[1]], [[], []], 'the other nodes report nothing');
  // Worker 0 hosts the even shards (shard % W). A write to one of them through node 3 fails at once, and clearly.
  let k = '';
  for (let i = 0; k === '' || shardOf(k) % 2 !== 0; i++) k = `after-crash:${i}`;
  await t.rejects(c3.set(k, 'v'), /STOPPED|worker 0/, 'node 3 answers an error for a shard it cannot serve');
  let odd = '';
  for (let i = 0; odd === '' || shardOf(odd) % 2 !== 1; i++) odd = `after-crash-odd:${i}`;
  t.equal(await c3.set(odd, 'v'), 'OK', "node 3's other worker still serves its shards");
  // The two other nodes are a majority of every shard: the same key is written and read through them.
  t.ok(await settled(async () => (await c1.set(k, 'v1').catch(() => null)) === 'OK'), 'node 1 writes the key');
  t.equal(await c2.get(k), 'v1', 'node 2 reads it');
});
