/**
 * RESP front end vs Redis, same machine, same run: redis-benchmark at 50 clients, pipeline 1 and 16, for SET,
 * GET, INCR and MSET, against the RESP front end with the node-local keyspace (bench/lib/front-end-node.ts: no
 * Raft; `bench:cluster` measures the replicated path) and a redis-server with persistence off.
 * Each server gets an unmeasured warm-up pass first (keyspace filled, JIT warm). Prints requests/s, p50/p99 and
 * the Lockstep/Redis ratio; writes bench/results/resp-vs-redis.json.
 *
 *   npm run bench:resp -- [--requests 200000] [--clients 50] [--cpu-prof]
 *
 * --cpu-prof runs the node under `node --cpu-prof` and leaves the .cpuprofile in bench/results/.
 */
import { argValue, printTable, redisBenchmark, startFrontEndNode, startRedis, writeResult } from './lib/procs.js';

const requests = Number(argValue('requests', '100000'));
const clients = Number(argValue('clients', '50'));
const cpuProf = process.argv.includes('--cpu-prof');
const tests = 'set,get,incr,mset';

async function main(): Promise<void> {
  const results: Record<string, Record<string, { rps: number; p50Ms: number; p99Ms: number }>> = { lockstep: {}, redis: {} };
  for (const pipeline of [1, 16]) {
    for (const target of ['redis', 'lockstep'] as const) {
      const proc =
        target === 'redis'
          ? await startRedis()
          : await startFrontEndNode([], cpuProf ? ['--cpu-prof', '--cpu-prof-dir', 'bench/results'] : []);
      // Warm-up, not measured: fills the keyspace and lets V8 optimize the hot path (Redis needs neither, and
      // gets the same treatment so the comparison stays like for like).
      await redisBenchmark(proc.port, ['-t', tests, '-n', String(Math.min(requests, 50_000)), '-c', String(clients), '-P', String(pipeline), '-r', '100000']);
      const rows = await redisBenchmark(proc.port, ['-t', tests, '-n', String(requests), '-c', String(clients), '-P', String(pipeline), '-r', '100000']);
      for (const r of rows) results[target]![`${r.test} P${pipeline}`] = { rps: r.rps, p50Ms: r.p50Ms, p99Ms: r.p99Ms };
      await proc.stop();
    }
  }
  const table: (string | number)[][] = [];
  const ratios: Record<string, number> = {};
  for (const key of Object.keys(results.redis!)) {
    const l = results.lockstep![key];
    const r = results.redis![key]!;
    if (!l) continue;
    const ratio = l.rps / r.rps;
    ratios[key] = Number(ratio.toFixed(3));
    table.push([key, Math.round(l.rps), l.p50Ms, l.p99Ms, Math.round(r.rps), r.p50Ms, r.p99Ms, ratio.toFixed(2)]);
  }
  console.log(`\nLockstep node vs redis-server (no persistence): ${clients} clients, ${requests} requests per test\n`);
  printTable(['test', 'lockstep rps', 'p50 ms', 'p99 ms', 'redis rps', 'p50 ms', 'p99 ms', 'ratio'], table);
  writeResult('resp-vs-redis', { when: new Date().toISOString(), requests, clients, results, ratios });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
