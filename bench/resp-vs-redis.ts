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
 *
 * Each test is its own redis-benchmark run, and the server process's CPU time (user + system, /proc/<pid>/stat) is
 * sampled around it: the table also gives CPU microseconds per request for each server and their ratio. On this
 * shared 2-core machine throughput swings by 2-3x between runs minutes apart (neighbours take CPU away); CPU per
 * request moves far less, and shows which side of a ratio changed. At P1 Redis is usually held back by the client
 * (redis-benchmark needs a core of its own), so its rps understates what it could serve and the cpu ratio says more.
 */
import { argValue, printTable, processCpuSeconds, redisBenchmark, startFloorNode, startFrontEndNode, startRedis, writeResult, type Proc } from './lib/procs.js';

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
/** cpuUs: the server process's CPU time (user + system, every thread) per request in the measured run, microseconds. */
type Row = { rps: number; p50Ms: number; p99Ms: number; cpuUs: number };

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
        // One redis-benchmark run per test, so the server's CPU time can be sampled around each.
        for (const test of tests.split(',')) {
          const cpu0 = processCpuSeconds(proc.child.pid);
          const rows = await redisBenchmark(proc.port, ['-t', test, '-n', String(n), '-c', String(clients), '-P', String(pipeline), '-r', range]);
          const cpu1 = processCpuSeconds(proc.child.pid);
          const cpuUs = cpu0 !== undefined && cpu1 !== undefined ? Number((((cpu1 - cpu0) * 1e6) / n).toFixed(2)) : NaN;
          for (const r of rows) (samples[target][`${r.test} P${pipeline}`] ??= []).push({ rps: r.rps, p50Ms: r.p50Ms, p99Ms: r.p99Ms, cpuUs });
        }
        await proc.stop();
      }
    }
  }
  const results: Record<Target, Record<string, Row>> = { redis: {}, lockstep: {}, floor: {} };
  for (const target of targets) {
    for (const [key, rows] of Object.entries(samples[target])) {
      results[target][key] = {
        rps: median(rows.map((r) => r.rps)),
        p50Ms: median(rows.map((r) => r.p50Ms)),
        p99Ms: median(rows.map((r) => r.p99Ms)),
        cpuUs: median(rows.map((r) => r.cpuUs)),
      };
    }
  }
  const table: (string | number)[][] = [];
  const ratios: Record<string, number> = {};
  const floorRatios: Record<string, number> = {};
  /** Redis' CPU per request / Lockstep's: the throughput ratio the two would have if each had a core to itself. */
  const cpuRatios: Record<string, number> = {};
  for (const key of Object.keys(results.redis)) {
    const l = results.lockstep[key];
    const r = results.redis[key]!;
    const f = results.floor[key];
    if (!l) continue;
    const ratio = l.rps / r.rps;
    ratios[key] = Number(ratio.toFixed(3));
    if (f) floorRatios[key] = Number((f.rps / r.rps).toFixed(3));
    const cpuRatio = r.cpuUs / l.cpuUs;
    if (Number.isFinite(cpuRatio)) cpuRatios[key] = Number(cpuRatio.toFixed(3));
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
      l.cpuUs,
      r.cpuUs,
      f ? f.cpuUs : '-',
      Number.isFinite(cpuRatio) ? cpuRatio.toFixed(2) : '-',
    ]);
  }
  console.log(
    `\nLockstep node vs redis-server (no persistence): ${clients} clients, ${requests} requests per test at P1 and ${requestsP16} at P16, ` +
      `${keyspace} keys filled first, median of ${rounds} round(s)`,
  );
  console.log('floor: bench/lib/floor-node.ts, a Node server that only frames commands and writes constant replies');
  console.log(
    'cpu us: the server process\'s CPU time (user + system) per request in that run; cpu ratio = redis cpu / lockstep cpu, the\n' +
      'throughput ratio if each server had a core to itself (redis-benchmark shares the 2 cores, so at P1 Redis is often\n' +
      'limited by the client, not by its own CPU)\n',
  );
  printTable(
    ['test', 'lockstep rps', 'p50 ms', 'p99 ms', 'redis rps', 'p50 ms', 'p99 ms', 'ratio', 'floor rps', 'floor/redis', 'lockstep/floor', 'lockstep cpu us', 'redis cpu us', 'floor cpu us', 'cpu ratio'],
    table,
  );
  writeResult('resp-vs-redis', { when: new Date().toISOString(), requests, requestsP16, keyspace, clients, rounds, results, samples, ratios, floorRatios, cpuRatios });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
