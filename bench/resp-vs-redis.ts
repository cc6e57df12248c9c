/**
 * RESP front end vs Redis, same machine, same run: redis-benchmark at 50 clients, pipeline 1 and 16, for SET,
 * GET, INCR and MSET, against the RESP front end with the node-local keyspace (bench/lib/front-end-node.ts: no
 * Raft; `bench:cluster` measures the replicated path) and a redis-server with persistence off.
 * Each server gets an unmeasured warm-up first: the keyspace filled (3 SETs per key) and one short pass of every
 * test (JIT warm), so the figures are those of a server in its steady state, not of its first second. Prints requests/s, p50/p99 and
 * the Lockstep/Redis ratio; writes bench/results/resp-vs-redis.json.
 *
 *   npm run bench:resp -- [--requests 100000] [--requests-p16 1000000] [--keyspace 100000] [--clients 50] [--rounds 3] [--cpu-prof]
 *
 * A third column runs bench/lib/floor-node.ts, the least a Node server must do (frame commands, write constant
 * replies), so the table separates the platform's share of the gap to Redis from Lockstep's own. With --rounds N
 * every server runs N times, in alternating order, and the table shows medians.
 *
 * --cpu-prof runs the node under `node --cpu-prof` and leaves the .cpuprofile in bench/results/.
 */
import { argValue, printTable, redisBenchmark, startFloorNode, startFrontEndNode, startRedis, writeResult, type Proc } from './lib/procs.js';

const requests = Number(argValue('requests', '100000'));
/** Pipeline 16 runs ~10x faster: more requests, so a run lasts seconds, not a few hundred milliseconds. */
const requestsP16 = Number(argValue('requests-p16', '1000000'));
/** Keys redis-benchmark draws from (-r); the warm-up SETs 3x this many times, so ~95% of the keys exist. */
const keyspace = Number(argValue('keyspace', '100000'));
const clients = Number(argValue('clients', '50'));
const rounds = Math.max(1, Number(argValue('rounds', '1')));
const cpuProf = process.argv.includes('--cpu-prof');
const tests = 'set,get,incr,mset';
const targets = ['redis', 'lockstep', 'floor'] as const;
type Target = (typeof targets)[number];
type Row = { rps: number; p50Ms: number; p99Ms: number };

async function start(target: Target): Promise<Proc> {
  if (target === 'redis') return startRedis();
  if (target === 'lockstep') return startFrontEndNode([], cpuProf ? ['--cpu-prof', '--cpu-prof-dir', 'bench/results'] : []);
  return startFloorNode();
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  // samples[target][test Pn] = one row per round
  const samples: Record<Target, Record<string, Row[]>> = { redis: {}, lockstep: {}, floor: {} };
  for (let round = 0; round < rounds; round++) {
    for (const pipeline of [1, 16]) {
      // Alternate the order between rounds: on a shared machine the load drifts, and a fixed order would give one
      // server the quiet minutes every time.
      const order = round % 2 === 0 ? targets : [...targets].reverse();
      for (const target of order) {
        const proc = await start(target);
        // Warm-up, not measured: fills the keyspace (3 SETs per key: the measured runs then see a server in its
        // steady state, overwriting keys it holds, as a long-running one does) and lets V8 optimize the hot path.
        // Redis needs neither and gets the same treatment, so the comparison stays like for like.
        const range = String(keyspace);
        await redisBenchmark(proc.port, ['-t', 'set', '-n', String(3 * keyspace), '-c', String(clients), '-P', '16', '-r', range]);
        await redisBenchmark(proc.port, ['-t', tests, '-n', '50000', '-c', String(clients), '-P', String(pipeline), '-r', range]);
        const n = pipeline === 1 ? requests : requestsP16;
        const rows = await redisBenchmark(proc.port, ['-t', tests, '-n', String(n), '-c', String(clients), '-P', String(pipeline), '-r', range]);
        for (const r of rows) (samples[target][`${r.test} P${pipeline}`] ??= []).push({ rps: r.rps, p50Ms: r.p50Ms, p99Ms: r.p99Ms });
        await proc.stop();
      }
    }
  }
  const results: Record<Target, Record<string, Row>> = { redis: {}, lockstep: {}, floor: {} };
  for (const target of targets) {
    for (const [key, rows] of Object.entries(samples[target])) {
      results[target][key] = { rps: median(rows.map((r) => r.rps)), p50Ms: median(rows.map((r) => r.p50Ms)), p99Ms: median(rows.map((r) => r.p99Ms)) };
    }
  }
  const table: (string | number)[][] = [];
  const ratios: Record<string, number> = {};
  const floorRatios: Record<string, number> = {};
  for (const key of Object.keys(results.redis)) {
    const l = results.lockstep[key];
    const r = results.redis[key]!;
    const f = results.floor[key];
    if (!l) continue;
    const ratio = l.rps / r.rps;
    ratios[key] = Number(ratio.toFixed(3));
    if (f) floorRatios[key] = Number((f.rps / r.rps).toFixed(3));
    table.push([
      key,
      Math.round(l.rps),
      l.p50Ms,
      l.p99Ms,
      Math.round(r.rps),
      r.p50Ms,
      r.p99Ms,
      ratio.toFixed(2),
      f ? Math.round(f.rps) : '-',
      f ? (f.rps / r.rps).toFixed(2) : '-',
      f ? (l.rps / f.rps).toFixed(2) : '-',
    ]);
  }
  console.log(
    `\nLockstep node vs redis-server (no persistence): ${clients} clients, ${requests} requests per test at P1 and ${requestsP16} at P16, ` +
      `${keyspace} keys filled first, median of ${rounds} round(s)`,
  );
  console.log('floor: bench/lib/floor-node.ts, a Node server that only frames commands and writes constant replies\n');
  printTable(['test', 'lockstep rps', 'p50 ms', 'p99 ms', 'redis rps', 'p50 ms', 'p99 ms', 'ratio', 'floor rps', 'floor/redis', 'lockstep/floor'], table);
  writeResult('resp-vs-redis', { when: new Date().toISOString(), requests, requestsP16, keyspace, clients, rounds, results, samples, ratios, floorRatios });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
