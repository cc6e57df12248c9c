/**
 * What one request costs on its way, layer by layer: redis-benchmark with ONE client and no pipelining (so each
 * figure is a full round trip with nothing to amortize it), on setups that each add one layer:
 *
 *   front end PING        RESP parse + dispatch + reply + loopback round trip (bench/lib/front-end-node.ts)
 *   front end GET         + the node-local store
 *   1 node GET            + hop to a shard worker and back, ReadIndex on a one-voter group
 *   1 node SET, no fsync  + Raft append, apply, reply record
 *   1 node SET, fsync     + WAL fdatasync (group commit of one)
 *   3 nodes SET, leader   + a replication round to the followers (their fdatasync included)
 *   3 nodes SET, follower + forwarding from the receiving node's worker to the leader's worker and back
 *   3 nodes GET, leader / follower
 *
 * Prints p50 and mean latency per step and the difference to the step it builds on, plus Redis (no persistence,
 * and appendfsync always) in the same run for scale. Writes bench/results/request-path.json.
 *
 *   node dist/bench/request-path.js [--requests 3000]
 */
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { argValue, freePort, printTable, redisBenchmark, startFrontEndNode, startRedis, waitForPing, writeResult, type Proc } from './lib/procs.js';

const exec = promisify(execFile);
const requests = argValue('requests', '3000');

interface Step {
  name: string;
  base?: string;
  p50Ms: number;
  meanMs: number;
}

async function measure(port: number, test: string): Promise<{ p50Ms: number; meanMs: number }> {
  // Warm-up (JIT, connections), then the measured run. A fixed key: one shard.
  await redisBenchmark(port, ['-t', test, '-n', '500', '-c', '1']);
  const [row] = await redisBenchmark(port, ['-t', test, '-n', requests, '-c', '1']);
  if (row === undefined) throw new Error(`no result for ${test} on port ${port}`);
  return { p50Ms: row.p50Ms, meanMs: 1000 / row.rps };
}

async function startCluster(n: number, fsync: string): Promise<Proc[]> {
  const ports: number[] = [];
  for (let i = 0; i < n; i++) ports.push(await freePort());
  const peerBase = 30000 + Math.floor(Math.random() * 20000);
  const peers = ports.map((p, i) => `${i + 1}@127.0.0.1:${p}:${peerBase + i * 10}`).join(',');
  const procs: Proc[] = [];
  for (let i = 0; i < n; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'bench-path-'));
    const child = spawn(
      process.execPath,
      ['bin/lockstep.js', 'node', '--id', String(i + 1), '--peers', peers, '--data-dir', dir, '--workers', '1', '--shards', '1', '--fsync', fsync, '--log-level', 'warn', '--log-format', 'json'],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    const exited = new Promise<void>((r) => child.on('exit', () => r()));
    process.on('exit', () => child.kill('SIGKILL'));
    procs.push({
      port: ports[i]!,
      child,
      async stop() {
        child.kill('SIGTERM');
        await exited;
      },
    });
  }
  for (const p of procs) await waitForPing(p.port);
  for (const p of procs) {
    for (let i = 0; i < 200; i++) {
      const { stdout } = await exec('redis-cli', ['-p', String(p.port), 'CLUSTER', 'INFO']);
      if (stdout.includes('cluster_state:ok')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return procs;
}

async function leaderIndex(procs: Proc[]): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    for (let i = 0; i < procs.length; i++) {
      const { stdout } = await exec('redis-cli', ['-p', String(procs[i]!.port), 'INFO', 'raft']);
      if (/raft_leading:1\b/.test(stdout)) return i;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('no leader found');
}

async function main(): Promise<void> {
  const steps: Step[] = [];
  const add = (name: string, r: { p50Ms: number; meanMs: number }, base?: string): void => {
    steps.push({ name, p50Ms: r.p50Ms, meanMs: r.meanMs, ...(base !== undefined ? { base } : {}) });
  };

  const redis = await startRedis();
  add('redis PING', await measure(redis.port, 'ping_mbulk'));
  add('redis GET', await measure(redis.port, 'get'));
  await redis.stop();
  const redisAof = await startRedis({ appendfsync: 'always' });
  add('redis SET appendfsync always', await measure(redisAof.port, 'set'));
  await redisAof.stop();

  const fe = await startFrontEndNode();
  add('front end PING', await measure(fe.port, 'ping_mbulk'));
  add('front end GET', await measure(fe.port, 'get'), 'front end PING');
  await fe.stop();

  let one = await startCluster(1, 'never');
  add('1 node GET', await measure(one[0]!.port, 'get'), 'front end GET');
  add('1 node SET, no fsync', await measure(one[0]!.port, 'set'), '1 node GET');
  await one[0]!.stop();
  one = await startCluster(1, 'batch');
  add('1 node SET, fsync', await measure(one[0]!.port, 'set'), '1 node SET, no fsync');
  await one[0]!.stop();

  const three = await startCluster(3, 'batch');
  const li = await leaderIndex(three);
  const leader = three[li]!;
  const follower = three[(li + 1) % 3]!;
  add('3 nodes SET via leader', await measure(leader.port, 'set'), '1 node SET, fsync');
  add('3 nodes SET via follower', await measure(follower.port, 'set'), '3 nodes SET via leader');
  add('3 nodes GET via leader', await measure(leader.port, 'get'), '1 node GET');
  add('3 nodes GET via follower', await measure(follower.port, 'get'), '3 nodes GET via leader');
  for (const p of three) await p.stop();

  const byName = new Map(steps.map((s) => [s.name, s]));
  printTable(
    ['step', 'p50 ms', 'mean ms', 'adds (mean ms)', 'over'],
    steps.map((s) => {
      const b = s.base !== undefined ? byName.get(s.base) : undefined;
      return [s.name, s.p50Ms.toFixed(3), s.meanMs.toFixed(3), b ? (s.meanMs - b.meanMs).toFixed(3) : '', s.base ?? ''];
    }),
  );
  writeResult('request-path', { requests: Number(requests), clients: 1, pipeline: 1, steps });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
