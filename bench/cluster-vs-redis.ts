/**
 * Replicated Lockstep cluster vs Redis with an fsync'd AOF, same machine, same run. For each worker count W
 * (default 1, 2, 4) it starts a 3-node cluster (--shards 16, --fsync batch, temp data dirs, free ports), waits
 * for cluster_state:ok on every node and a settled leader map, then runs redis-benchmark SET, GET, INCR with
 * 50 clients at pipeline 1 and 16 in two modes:
 *   one node  all clients on node 1 (writes and reads for shards node 1 does not lead are forwarded);
 *   spread    `redis-benchmark --cluster` against node 1 (each key goes to its shard's leader, from CLUSTER NODES);
 *             if --cluster fails, that is reported and it falls back to three redis-benchmark processes at once,
 *             one per node, each with ceil(clients/3) clients, summing requests/s (p50 = the worst of the three).
 * The redis-server (`--appendonly yes --appendfsync always --save ''`) is measured once before and once after all
 * the Lockstep runs; the table uses the mean of the two (the machine is shared and noisy; both passes are in the
 * JSON). Every run is preceded by a short unmeasured probe (warm-up) whose rate sizes -n so the measured run takes
 * about --seconds. Prints the table and the issue's targets (replicated SET P16 >= 0.5x Redis appendfsync always;
 * leader-served GET, i.e. spread mode, >= 0.8x Redis) plus, per Lockstep run, the share of requests forwarded to
 * another node (INFO counters: proves spread mode is leader-served) and any worker errors, failed calls, node
 * exits or warn+ log lines seen while running; and writes bench/results/cluster-vs-redis-<timestamp>.json.
 *
 *   npm run bench:cluster -- [--workers 1,2,4] [--shards 16] [--clients 50] [--seconds 3] [--requests N]
 *                            [--quick] [--spread cluster|processes] [--fsync batch] [--max-minutes M]
 *
 * --quick: --seconds 1 and smaller probes (about 2 minutes for W 1,2,4). --requests N: fixed -n for every
 * measured run instead of sizing by time. --max-minutes: hard bound on the whole run (default 3x the estimate);
 * past it the partial results are printed and written and the process exits 2. Everything started is killed on
 * exit (bench/lib/cluster.ts). The nodes run the compiled CLI next to this file (dist/src/cli/main.js under npm), the
 * same code bin/lockstep.js runs.
 */
import { cpus, loadavg } from 'node:os';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { argValue, printTable, repoRoot, writeResult } from './lib/procs.js';
import {
  requireRedisTools,
  runRedisBenchmark,
  startCluster,
  startRedisAof,
  waitClusterOk,
  waitLeadersStable,
  nodeCounters,
  type BenchRun,
  type NodeCounters,
  type LockstepCluster,
  type LogSummary,
  type NodeExit,
} from './lib/cluster.js';

const root = repoRoot();
process.chdir(root);
/** The nodes run the CLI of the tree this file was compiled into (dist/ under npm run bench:cluster). */
const cliMain = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

const quick = process.argv.includes('--quick');
const workersList = argValue('workers', '1,2,4').split(',').map(Number);
const shards = Number(argValue('shards', '16'));
const clients = Number(argValue('clients', '50'));
const seconds = Number(argValue('seconds', quick ? '1' : '3'));
const fixedRequests = argValue('requests', '') === '' ? undefined : Number(argValue('requests', ''));
const fsync = argValue('fsync', 'batch') as 'batch' | 'always' | 'never';
let spreadMethod = argValue('spread', 'cluster') as 'cluster' | 'processes';
/** Random keyspace size (-r) for every run. */
const keyspace = Number(argValue('keyspace', '100000'));
const NODES = 3;
const TESTS = ['set', 'get', 'incr'] as const;
const PIPELINES = [1, 16] as const;
/** Probe (warm-up) requests: at least this many, and at least PROBE_ROUNDS pipelines' worth per client. */
const PROBE_MIN = quick ? 1000 : 2000;
const PROBE_ROUNDS = quick ? 2 : 4;
/** A measured run has at least MEASURED_MIN requests and this many pipelines' worth per client, at most REQUESTS_MAX. */
const MEASURED_MIN = 2000;
const MEASURED_MIN_ROUNDS = 10;
const REQUESTS_MAX = 5_000_000;
/** Timeouts: a probe that takes this long is a stall; a measured run gets STALL_FACTOR x its expected time. */
const PROBE_TIMEOUT_MS = 60_000;
const STALL_FACTOR = 10;
const MEASURED_TIMEOUT_MIN_MS = 30_000;
/** Targets from the issue. */
const TARGET_SET_P16 = 0.5;
const TARGET_GET = 0.8;

type Mode = 'one node' | 'spread';

interface Measure {
  ok: boolean;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  elapsedMs: number;
  /** How spread mode ran: redis-benchmark --cluster, or 3 processes. */
  method?: 'cluster' | 'processes';
  error?: string;
  parts?: { port: number; rps: number; p50Ms: number }[];
  /** Lockstep only: INFO counter deltas over the measured run, summed over the 3 nodes (commands also per node). */
  counters?: { commands: number; perNode: number[]; forwarded: number; workerErrors: number; failedCalls: number; termBumps: number };
}

interface LockstepRow {
  test: string;
  pipeline: number;
  mode: Mode;
  workers: number;
  m: Measure;
}

interface ClusterRecord {
  workers: number;
  ports: number[];
  startMs: number;
  clusterOkMs?: number;
  leaderSlots?: Record<string, number>;
  leadersSettled?: boolean;
  exits?: NodeExit[];
  logs?: Record<number, LogSummary>;
  error?: string;
}

const lockstepRows: LockstepRow[] = [];
const redisPasses: Record<'before' | 'after', Record<string, Measure>> = { before: {}, after: {} };
const clusterRecords: ClusterRecord[] = [];
const issues: string[] = [];
const startedAt = new Date();
const load0 = loadavg();

function key(test: string, pipeline: number): string {
  return `${test.toUpperCase()} P${pipeline}`;
}

function failure(run: BenchRun, what: string): string {
  if (run.timedOut) return `${what}: STALL, no result within ${run.elapsedMs} ms (redis-benchmark killed)`;
  return `${what}: exit ${run.code ?? run.signal}, ${run.rows.length} rows; ${run.messages.split('\n').slice(-3).join(' | ')}`;
}

/** One redis-benchmark run of one test in one mode; ports[0] is the target (node 1 or redis). */
async function runOnce(ports: number[], mode: Mode, method: 'cluster' | 'processes', test: string, pipeline: number, n: number, timeoutMs: number, phase: 'probe' | 'measured'): Promise<Measure> {
  const common = ['-t', test, '-P', String(pipeline), '-r', String(keyspace)];
  const what = `${key(test, pipeline)} ${mode}${mode === 'spread' ? ` (${method})` : ''} ${phase} run -n ${n}`;
  if (mode === 'one node' || method === 'cluster') {
    const args = [...common, '-c', String(clients), '-n', String(n)];
    if (mode === 'spread') args.push('--cluster');
    const run = await runRedisBenchmark(ports[0]!, args, timeoutMs);
    const row = run.rows[0];
    if (run.code !== 0 || row === undefined || run.timedOut) {
      return { ok: false, rps: 0, p50Ms: 0, p99Ms: 0, requests: n, elapsedMs: run.elapsedMs, error: failure(run, what), ...(mode === 'spread' ? { method } : {}) };
    }
    return { ok: true, rps: row.rps, p50Ms: row.p50Ms, p99Ms: row.p99Ms, requests: n, elapsedMs: run.elapsedMs, ...(mode === 'spread' ? { method } : {}) };
  }
  const per = Math.ceil(clients / ports.length);
  const nPer = Math.ceil(n / ports.length);
  const runs = await Promise.all(ports.map((p) => runRedisBenchmark(p, [...common, '-c', String(per), '-n', String(nPer)], timeoutMs)));
  const bad = runs.findIndex((r) => r.code !== 0 || r.rows[0] === undefined || r.timedOut);
  const elapsedMs = Math.max(...runs.map((r) => r.elapsedMs));
  if (bad >= 0) return { ok: false, rps: 0, p50Ms: 0, p99Ms: 0, requests: n, elapsedMs, method, error: failure(runs[bad]!, `${what} on port ${ports[bad]}`) };
  const parts = runs.map((r, i) => ({ port: ports[i]!, rps: r.rows[0]!.rps, p50Ms: r.rows[0]!.p50Ms, p99Ms: r.rows[0]!.p99Ms }));
  return {
    ok: true,
    rps: parts.reduce((s, p) => s + p.rps, 0),
    p50Ms: Math.max(...parts.map((p) => p.p50Ms)),
    p99Ms: Math.max(...parts.map((p) => p.p99Ms)),
    requests: nPer * ports.length,
    elapsedMs,
    method,
    parts: parts.map(({ port, rps, p50Ms }) => ({ port, rps, p50Ms })),
  };
}

async function snapshot(ports: number[]): Promise<NodeCounters[] | undefined> {
  try {
    return await Promise.all(ports.map((p) => nodeCounters(p)));
  } catch {
    return undefined;
  }
}

/**
 * Probe (unmeasured warm-up that sizes -n), then the measured run. Spread mode falls back to 3 processes.
 * counterPorts (Lockstep): every node, whose INFO counters are read before and after the measured run.
 */
async function measure(ports: number[], mode: Mode, test: string, pipeline: number, counterPorts: number[] = []): Promise<Measure> {
  const probeN = Math.max(PROBE_MIN, clients * pipeline * PROBE_ROUNDS);
  let probe = await runOnce(ports, mode, spreadMethod, test, pipeline, probeN, PROBE_TIMEOUT_MS, 'probe');
  if (!probe.ok && mode === 'spread' && spreadMethod === 'cluster') {
    const msg = `redis-benchmark --cluster failed against Lockstep (${probe.error}); falling back to 3 redis-benchmark processes, one per node`;
    console.log(`  ! ${msg}`);
    issues.push(msg);
    spreadMethod = 'processes';
    probe = await runOnce(ports, mode, spreadMethod, test, pipeline, probeN, PROBE_TIMEOUT_MS, 'probe');
  }
  if (!probe.ok) return probe;
  const n =
    fixedRequests ??
    Math.min(REQUESTS_MAX, Math.max(MEASURED_MIN, clients * pipeline * MEASURED_MIN_ROUNDS, Math.round(probe.rps * seconds)));
  const expectedMs = (n / Math.max(1, probe.rps)) * 1000;
  const before = counterPorts.length > 0 ? await snapshot(counterPorts) : undefined;
  const m = await runOnce(ports, mode, spreadMethod, test, pipeline, n, Math.max(MEASURED_TIMEOUT_MIN_MS, expectedMs * STALL_FACTOR), 'measured');
  const after = counterPorts.length > 0 ? await snapshot(counterPorts) : undefined;
  if (before && after) {
    const d = (f: keyof NodeCounters) => after.reduce((s, a, i) => s + a[f] - before[i]![f], 0);
    m.counters = {
      commands: d('commands'),
      perNode: after.map((a, i) => a.commands - before[i]!.commands),
      forwarded: d('forwarded'),
      workerErrors: d('workerErrors'),
      failedCalls: d('failedCalls'),
      termBumps: Math.max(...after.map((a, i) => a.termSum - before[i]!.termSum)),
    };
  }
  return m;
}

function fwdPct(m: Measure): string {
  const c = m.counters;
  return c === undefined || c.commands === 0 ? '-' : `${Math.round((100 * c.forwarded) / c.commands)}%`;
}

function fmt(m: Measure | undefined): string {
  return m === undefined ? '-' : m.ok ? `${Math.round(m.rps)} rps p50 ${m.p50Ms}` : 'FAILED';
}

async function redisPass(port: number, which: 'before' | 'after'): Promise<void> {
  console.log(`redis-server (appendfsync always), ${which} the Lockstep runs`);
  for (const pipeline of PIPELINES) {
    for (const test of TESTS) {
      const m = await measure([port], 'one node', test, pipeline);
      redisPasses[which][key(test, pipeline)] = m;
      if (!m.ok) issues.push(`redis ${which}: ${m.error}`);
      console.log(`  ${key(test, pipeline).padEnd(8)} ${fmt(m)}`);
    }
  }
}

async function lockstepPass(workers: number): Promise<void> {
  const t0 = Date.now();
  const rec: ClusterRecord = { workers, ports: [], startMs: 0 };
  clusterRecords.push(rec);
  let cluster: LockstepCluster | undefined;
  try {
    cluster = await startCluster({ cliMain, nodes: NODES, workers, shards, fsync });
    rec.ports = cluster.nodes.map((n) => n.port);
    rec.clusterOkMs = await waitClusterOk(cluster);
    rec.startMs = Date.now() - t0;
    const leaders = await waitLeadersStable(cluster);
    rec.leaderSlots = leaders.slots;
    rec.leadersSettled = leaders.settled;
    if (!leaders.settled) issues.push(`W=${workers}: leader map not settled after ${leaders.ms} ms: ${JSON.stringify(leaders.slots)}`);
    console.log(
      `Lockstep W=${workers}: 3 nodes on ${rec.ports.join(',')}, cluster_state:ok after ${rec.startMs} ms, ` +
        `slots led ${JSON.stringify(leaders.slots)}${leaders.settled ? '' : ' (NOT settled)'}`,
    );
    const ports = cluster.nodes.map((n) => n.port);
    for (const mode of ['one node', 'spread'] as const) {
      for (const pipeline of PIPELINES) {
        for (const test of TESTS) {
          const m = await measure(mode === 'one node' ? [ports[0]!] : ports, mode, test, pipeline, ports);
          lockstepRows.push({ test: test.toUpperCase(), pipeline, mode, workers, m });
          if (!m.ok) issues.push(`lockstep W=${workers}: ${m.error}`);
          if (m.counters && (m.counters.workerErrors > 0 || m.counters.failedCalls > 0 || m.counters.termBumps > 0)) {
            issues.push(
              `lockstep W=${workers} ${key(test, pipeline)} ${mode}, measured run: ${m.counters.termBumps} Raft term bumps (elections), ` +
                `${m.counters.workerErrors} worker error replies (internal, may be retried), ${m.counters.failedCalls} failed client calls`,
            );
          }
          const crashed = cluster.exits.filter((e) => e.unexpected);
          const per = m.counters ? ` (commands per node ${m.counters.perNode.join('/')}, forwarded ${fwdPct(m)}, term bumps ${m.counters.termBumps}, worker errors ${m.counters.workerErrors})` : '';
          console.log(`  ${key(test, pipeline).padEnd(8)} ${mode.padEnd(8)} ${fmt(m)}${per}${crashed.length ? ` NODE EXITED ${JSON.stringify(crashed)}` : ''}`);
          if (crashed.length > 0) throw new Error(`node(s) exited during the run: ${JSON.stringify(crashed)}`);
        }
      }
    }
  } catch (err) {
    rec.error = (err as Error).message;
    issues.push(`lockstep W=${workers}: ${rec.error}`);
    console.log(`  ! ${rec.error}`);
  } finally {
    if (cluster) {
      const { exits, logs } = await cluster.stop();
      rec.exits = exits;
      rec.logs = logs;
      const atStop = Object.values(logs).reduce((n, s) => n + s.atStop, 0);
      if (atStop > 0) console.log(`  (${atStop} warn+ log lines while stopping, e.g. ${Object.values(logs).flatMap((s) => s.atStopSamples)[0]?.slice(0, 200)})`);
      for (const [id, s] of Object.entries(logs)) {
        if (s.warn + s.error + s.fatal + s.other > 0) {
          issues.push(`W=${workers} node ${id} log: ${s.warn} warn, ${s.error} error, ${s.fatal} fatal, ${s.other} non-JSON lines; e.g. ${s.samples.slice(0, 2).join(' || ')}`);
        }
      }
      const badExits = exits.filter((e) => e.unexpected || (e.code !== 0 && e.signal !== 'SIGTERM'));
      if (badExits.length > 0) issues.push(`W=${workers}: node exits ${JSON.stringify(badExits)}`);
    }
  }
}

function redisMean(k: string): { rps: number; p50Ms: number } | undefined {
  const ms = [redisPasses.before[k], redisPasses.after[k]].filter((m): m is Measure => m !== undefined && m.ok);
  if (ms.length === 0) return undefined;
  return { rps: ms.reduce((s, m) => s + m.rps, 0) / ms.length, p50Ms: ms.reduce((s, m) => s + m.p50Ms, 0) / ms.length };
}

function targetOf(r: LockstepRow): number | undefined {
  if (r.test === 'SET' && r.pipeline === 16) return TARGET_SET_P16;
  if (r.test === 'GET' && r.mode === 'spread') return TARGET_GET;
  return undefined;
}

let finished = false;
function finish(partial: boolean): void {
  if (finished) return;
  finished = true;
  const table: (string | number)[][] = [];
  const rows = [...lockstepRows].sort(
    (a, b) =>
      TESTS.indexOf(a.test.toLowerCase() as (typeof TESTS)[number]) - TESTS.indexOf(b.test.toLowerCase() as (typeof TESTS)[number]) ||
      a.pipeline - b.pipeline ||
      a.mode.localeCompare(b.mode) ||
      a.workers - b.workers,
  );
  const results = rows.map((r) => {
    const red = redisMean(key(r.test, r.pipeline));
    const ratio = r.m.ok && red ? r.m.rps / red.rps : undefined;
    const target = targetOf(r);
    const verdict = target === undefined || ratio === undefined ? '' : `>=${target} ${ratio >= target ? 'met' : 'not met'}`;
    const mode = r.mode === 'spread' ? `spread${r.m.method === 'processes' ? ' (3 procs)' : ''}` : r.mode;
    table.push([
      r.test, `P${r.pipeline}`, mode, r.workers,
      r.m.ok ? Math.round(r.m.rps) : 'FAILED', r.m.ok ? r.m.p50Ms : '-', fwdPct(r.m), r.m.counters?.termBumps ?? '-',
      red ? Math.round(red.rps) : '-', red ? red.p50Ms.toFixed(3) : '-',
      ratio === undefined ? '-' : ratio.toFixed(2), verdict,
    ]);
    return { test: r.test, pipeline: r.pipeline, mode: r.mode, workers: r.workers, lockstep: r.m, redisRps: red?.rps ?? null, ratio: ratio === undefined ? null : Number(ratio.toFixed(3)), target: target ?? null, met: target === undefined || ratio === undefined ? null : ratio >= target };
  });
  console.log(
    `\nLockstep 3-node cluster (--fsync ${fsync}, --shards ${shards}) vs redis-server (appendfsync always): ${clients} clients, ` +
      `~${seconds} s per run${fixedRequests ? ` (-n ${fixedRequests})` : ''}; redis = mean of a pass before and after${partial ? '  [PARTIAL: deadline hit]' : ''}\n`,
  );
  printTable(['test', 'pipeline', 'mode', 'W', 'lockstep rps', 'p50 ms', 'fwd', 'terms+', 'redis rps', 'redis p50', 'ratio', 'target'], table);

  console.log('fwd = share of the measured requests that the receiving node forwarded to the leader on another node (INFO);');
  console.log('terms+ = Raft term increments (elections) summed over shards during the measured run (INFO shardN term)');
  console.log('\nredis passes (requests/s): before / after');
  for (const pipeline of PIPELINES) {
    for (const test of TESTS) {
      const k = key(test, pipeline);
      console.log(`  ${k.padEnd(8)} ${fmt(redisPasses.before[k])} / ${fmt(redisPasses.after[k])}`);
    }
  }

  console.log('\ntargets (from the issue):');
  if (rows.some((r) => r.m.method === 'processes')) {
    console.log('  note: spread via 3 processes sends each key to a node regardless of its leader (see fwd), so it is not leader-served');
  }
  const targets = [
    { name: `replicated SET P16 >= ${TARGET_SET_P16} x redis appendfsync always`, pick: (r: (typeof results)[number]) => r.test === 'SET' && r.pipeline === 16 },
    { name: `leader-served GET (spread) >= ${TARGET_GET} x redis`, pick: (r: (typeof results)[number]) => r.test === 'GET' && r.mode === 'spread' },
  ].map((t) => {
    const rs = results.filter(t.pick);
    const anyMet = rs.some((r) => r.met === true);
    const allMet = rs.length > 0 && rs.every((r) => r.met === true);
    console.log(`  ${t.name}: ${allMet ? 'MET in every configuration' : anyMet ? 'met in some configurations only' : 'NOT MET'}`);
    for (const r of rs) console.log(`    P${r.pipeline} ${r.mode.padEnd(8)} W=${r.workers}: ratio ${r.ratio ?? '-'} ${r.met === null ? '(no result)' : r.met ? 'met' : 'not met'}`);
    return { name: t.name, met: allMet, metSomewhere: anyMet, rows: rs.map((r) => ({ pipeline: r.pipeline, mode: r.mode, workers: r.workers, ratio: r.ratio, met: r.met })) };
  });

  if (issues.length > 0) {
    console.log('\nissues seen:');
    for (const i of issues) console.log(`  - ${i}`);
  }
  const stamp = startedAt.toISOString().replace(/[:.]/g, '-');
  writeResult(`cluster-vs-redis-${stamp}`, {
    when: startedAt.toISOString(),
    partial,
    durationS: Math.round((Date.now() - startedAt.getTime()) / 1000),
    machine: { cpus: cpus().length, loadavgStart: load0, loadavgEnd: loadavg() },
    options: { workers: workersList, shards, clients, seconds, requests: fixedRequests ?? null, quick, fsync, keyspace, spreadMethod },
    results,
    redis: redisPasses,
    clusters: clusterRecords,
    targets,
    issues,
  });
}

async function main(): Promise<void> {
  await requireRedisTools();
  if (!existsSync(cliMain)) {
    console.error(`${cliMain} is missing: run \`npx tsc -p tsconfig.json\` (or \`npm run build\`) first`);
    process.exit(1);
  }
  const runs = workersList.length * 2 * PIPELINES.length * TESTS.length + 2 * PIPELINES.length * TESTS.length;
  // Measured on the shared 2-core VM: probe + INFO snapshots + process start add ~0.8 s (quick) / 1.5 s per run,
  // a cluster's start, settle and stop ~15 s.
  const perRunS = (fixedRequests === undefined ? seconds : 3) + (quick ? 0.8 : 1.5);
  const estimateS = Math.round(runs * perRunS + workersList.length * 15);
  const maxMinutes = Number(argValue('max-minutes', String(Math.ceil((estimateS * 3) / 60))));
  console.log(
    `cluster-vs-redis: ${runs} runs (W ${workersList.join(',')} x 2 modes x P1/P16 x ${TESTS.join('/')}, redis twice), ` +
      `~${seconds} s each + probe; estimated ${Math.round(estimateS / 6) / 10} min${fixedRequests ? ' (with --requests it depends on the rate)' : ''}, ` +
      `hard limit ${maxMinutes} min. Load average ${load0.map((x) => x.toFixed(2)).join(' ')} on ${cpus().length} cpus.\n`,
  );
  setTimeout(() => {
    console.error(`\nhard limit of ${maxMinutes} min reached: printing partial results and stopping everything`);
    finish(true);
    process.exit(2);
  }, maxMinutes * 60_000).unref();

  const redis = await startRedisAof();
  try {
    await redisPass(redis.port, 'before');
    for (const w of workersList) await lockstepPass(w);
    await redisPass(redis.port, 'after');
  } finally {
    await redis.stop();
  }
  finish(false);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
