// The cache's backing store on a real cluster: a real redis-server on loopback under a 3-node Lockstep cluster
// started with --cache-backing redis://127.0.0.1:<port> (write-back policy, so both write paths are used):
// GET of a key only Redis has loads it (value and TTL) and every node then serves it; writes through the home and
// flushed Modified lines reach Redis; DEL removes the key there; a load never overwrites a write that reached
// memory first; Redis going away makes a miss fail with a clear error and writes still succeed.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { Redis } from 'ioredis';
import { withCluster } from '../support/cluster-procs.js';
import { cacheInfo, nodeClients, retrying } from '../support/cache-cluster.js';

t.setTimeout(150_000);

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function startRedis(): Promise<{ port: number; child: ChildProcess; stop(): Promise<void> }> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-backing-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => 100 });
  probe.on('error', () => undefined); // refused until the server is up
  await retrying(10_000, async () => {
    if (probe.status !== 'ready') await probe.connect().catch(() => undefined);
    return probe.ping();
  });
  probe.disconnect();
  let stopped = false;
  return {
    port,
    child,
    async stop() {
      if (stopped) return;
      stopped = true;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await gone;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls `f` until it returns `want` (or the window ends); returns the last value. */
async function until<T>(windowMs: number, want: T, f: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + windowMs;
  let v = await f();
  while (v !== want && Date.now() < deadline) {
    await sleep(50);
    v = await f();
  }
  return v;
}

t.test('a Redis below the cluster: misses load from it, writes reach it', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const direct = new Redis({ port: redis.port, host: '127.0.0.1' });
  direct.on('error', () => undefined); // the test stops the server at the end
  t.teardown(() => direct.disconnect());
  await direct.set('pre:plain', 'from-redis');
  await direct.set('pre:ttl', 'expiring', 'PX', 100_000);
  const ttlSetAt = Date.now();
  await direct.set('pre:num', '41');
  await direct.set('pre:del', 'doomed');

  const flags = ['--cache-backing', `redis://127.0.0.1:${redis.port}`, '--cache-write-policy', 'write-back', '--cache-flush-ms', '100', '--cache-lease', '1000'];
  await withCluster(t, { shards: 8, electionTimeoutMs: 300, leaderWaitMs: 3000, requestTimeoutMs: 6000, extraFlags: flags }, async (c) => {
    const { cl: n } = nodeClients(t, c);
    await retrying(10_000, () => n(1).set('warm', '1'));

    // -- misses load from Redis (value and TTL), then every node serves them
    t.equal(await retrying(5_000, () => n(2).get('pre:plain')), 'from-redis', 'a key only Redis had');
    for (const id of c.ids) t.equal(await n(id).get('pre:plain'), 'from-redis', `node ${id} serves it`);
    t.equal(await n(3).get('pre:ttl'), 'expiring');
    const ttl = await n(1).pttl('pre:ttl');
    const left = 100_000 - (Date.now() - ttlSetAt);
    t.ok(ttl > left - 2_000 && ttl <= 100_000, `its TTL came along (${ttl} ms; ${left} ms were left)`);
    t.equal(await n(1).get('nowhere'), null, 'a key neither has');
    t.ok((await direct.exists('nowhere')) === 0, 'and nothing was written to Redis for it');

    // -- writes reach Redis: through the home, then locally (Modified, flushed)
    t.equal(await n(1).get('pre:num'), '41');
    t.equal(await n(1).incr('pre:num'), 42, 'INCR on the loaded value');
    t.equal(await until(5_000, '42', async () => direct.get('pre:num')), '42', 'the write through the home reached Redis');
    t.equal(await n(1).incr('pre:num'), 43); // local: M
    t.equal(await until(5_000, '43', async () => direct.get('pre:num')), '43', 'the flushed Modified value reached Redis');
    await n(2).set('new:key', 'made-here', 'PX', 50_000);
    const newSetAt = Date.now();
    t.equal(await until(5_000, 'made-here', async () => direct.get('new:key')), 'made-here', 'a new key reached Redis');
    const rttl = await direct.pttl('new:key');
    const newLeft = 50_000 - (Date.now() - newSetAt);
    t.ok(rttl > newLeft - 2_000 && rttl <= 50_000, `with its TTL (${rttl} ms; ${newLeft} ms were left)`);
    t.equal(await n(3).get('pre:del'), 'doomed');
    t.equal(await n(3).del('pre:del'), 1);
    t.equal(await until(5_000, 0, async () => direct.exists('pre:del')), 0, 'DEL removed it from Redis');
    t.equal(await n(1).get('pre:del'), null, 'and it is not loaded back');

    // -- a load never overwrites a write that reached memory first
    await n(1).set('race', 'lockstep');
    await direct.set('race', 'redis-later'); // someone writes Redis behind Lockstep's back
    t.equal(await n(2).get('race'), 'lockstep', 'memory has the key: Redis is not consulted');

    await sleep(700); // the home counters reach INFO with the node's periodic view refresh
    const info = await cacheInfo(c, 1);
    const all = await Promise.all(c.ids.map((id) => cacheInfo(c, id)));
    const sum = (f: string) => all.reduce((s, x) => s + (x[f] ?? 0), 0);
    t.ok(sum('cache_home_backing_reads') >= 4 && sum('cache_home_backing_read_hits') >= 3, `backing reads ${sum('cache_home_backing_reads')}, hits ${sum('cache_home_backing_read_hits')}`);
    t.ok(sum('cache_home_backing_writes') >= 5, `backing writes ${sum('cache_home_backing_writes')}`);
    t.ok(info['cache_home_backing_write_errors'] !== undefined, 'INFO cache shows the backing counters');

    // -- Redis goes away: a miss that needs it fails clearly, writes still succeed (memory is the truth)
    direct.disconnect();
    await redis.stop();
    const err = await n(2)
      .get('never-seen')
      .then(() => null, (e: Error) => e.message);
    t.match(err, /backing store unavailable/, `a miss fails: ${err}`);
    t.equal(await n(1).set('still', 'works'), 'OK', 'writes still succeed');
    t.equal(await n(3).get('still'), 'works');
  });
});
