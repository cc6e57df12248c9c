/**
 * Cache benchmark: string GET / SET / INCR on a 3-node Lockstep cluster (Raft-replicated keyspace, coherent cache on
 * every node) vs a single redis-server with `--appendonly yes --appendfsync always`, same machine, same run.
 *
 * Parts (--only rb,mix; both by default), each against Redis first, then against Lockstep:
 *   rb   redis-benchmark GET, SET, INCR at pipeline 1 and 16 with --clients (default 50) clients over three
 *        redis-benchmark processes run at once, clients split as evenly as possible (17/17/16); against Lockstep one
 *        process per node, against Redis all three on its one port (same client set-up). Throughput = sum of the
 *        three, p50 / p99 = the worst of the three. `-r --keyspace -d --value-size`; the keyspace is prefilled
 *        (every `key:%012d` redis-benchmark can draw) and each pipeline depth runs SET, then GET, then INCR, so GETs
 *        hit. -n is sized by a short unmeasured probe so a measured run takes about --rb-seconds. Before the
 *        first run, --rb-warmup-seconds (default 4) of unmeasured SET/INCR runs warm the write path up (V8's JIT).
 *   mix  a custom load generator: --clients ioredis clients (one command in flight each) on --client-threads worker
 *        threads (bench/lib/client-threads.ts; this file is the thread entry), client i on node i % 3; each picks GET
 *        or SET by the mix's ratio and the key by a Zipf(--zipf, default 0.99) rank over the prefilled keyspace
 *        (0 = uniform). Mixes (--mixes, default 90/10,30/70 as GET/SET percent): a hot-key read-mostly mix and a
 *        write-heavy one. Each runs a fixed window (--seconds, default 10) after an unmeasured warm-up; ops/s
 *        (operations started and finished in the window), p50 / p99 overall and per command.
 * Warm pass: before each GET test and each mix, every key is read once through every port, unmeasured (both
 * systems; --cold-get skips it). Each node has its own cache, so right after a SET pass (which leaves a copy only on
 * the writer) a short GET run measures mostly first-touch misses (measured: a 3 s GET P1 run at a cold start hit
 * 60%, matching the expected share of first touches), which says nothing about serving hits.
 * Cache hit rate: `INFO cache` is read from every node before and after each measured Lockstep run (at the window's
 * edges for the mixes) and hits / (hits + misses) computed from the summed deltas of `cache_hits` and
 * `cache_misses`; when a node lacks those fields (no coherent cache in this build) the rate is `n/a`.
 * Server CPU: around each measured redis-benchmark run the server processes' CPU time (user + system, every thread,
 * /proc/<pid>/stat via INFO's process_id) is summed, so the rb table also gives CPU microseconds per request for the
 * cluster (three nodes) and for Redis, and their ratio: a figure the machine's neighbours disturb far less than
 * throughput.
 * Printed: the two tables with Lockstep/Redis ratios next to the issue's targets (GET >= 0.8x at P1 and >= 0.5x at
 * P16; SET >= 0.5x Redis appendfsync always; hit rate > 90% on the 90/10 mix), computed from the figures, and the
 * issues seen; writes bench/results/cache-<timestamp>.json.
 *
 *   npm run bench:cache -- [--seconds 10] [--rb-seconds 3] [--rb-warmup-seconds 4] [--clients 50] [--keyspace 10000] [--value-size 100]
 *                          [--zipf 0.99] [--mixes 90/10,30/70] [--only rb,mix] [--skip-redis] [--skip-lockstep] [--cold-get]
 *                          [--fsync batch] [--cache-write-policy write-through|write-back] [--node-args "..."]
 *                          [--workers N] [--shards 16] [--client-threads N] [--max-minutes M]
 * Every option can also be given as an environment variable CACHE_BENCH_<NAME> (e.g. CACHE_BENCH_SECONDS=3,
 * CACHE_BENCH_SKIP_REDIS=1); flags win. Extra node options: --node-args or LOCKSTEP_NODE_ARGS, e.g.
 * "--cache-max-items 50000 --election-timeout 300" (split on whitespace; --name value, --name=value, --flag,
 * --no-flag). They reach the nodes as LOCKSTEP_<NAME> environment variables (every node option can be given that
 * way; bench/lib/cluster.ts passes no extra flags), so an option this build does not know yet is ignored by the
 * nodes rather than refused: the run says so. --cache-write-policy is passed the same way.
 *
 * Invariants: every run is bounded (redis-benchmark by a timeout, the mixes by window + drain, the whole run by
 * --max-minutes, after which the partial results are printed and written and the process exits 2); every process
 * started is stopped in finally blocks, and on exit / SIGINT by bench/lib/cluster.ts (Lockstep nodes, redis-server,
 * redis-benchmark) and bench/lib/procs.ts, which also remove their temp dirs; SIGINT prints and writes what was
 * measured so far. The nodes run the CLI of the tree this file was compiled into (dist/ under npm).
 */
import { existsSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { isMainThread, workerData } from 'node:worker_threads';
import type { Redis } from 'ioredis';
import { envName, NODE_OPTIONS } from '../src/config/options.js';
import { argValue, printTable, repoRoot, writeResult } from './lib/procs.js';
import {
  clientThreadMain,
  connectResp,
  counterDeltas,
  dealClients,
  DRAIN_MARGIN_MS,
  fmtMs,
  latency,
  runClientThreads,
  sleep,
  snapshotCounters,
  sumCpu,
  WARMUP_MS,
  type ClientWindow,
  type CounterDeltas,
  type Latency,
  type ThreadLoops,
} from './lib/client-threads.js';
import {
  requireRedisTools,
  runRedisBenchmark,
  startCluster,
  startRedisAof,
  waitClusterOk,
  waitLeadersStable,
  type BenchRun,
  type LockstepCluster,
  type LogSummary,
  type NodeExit,
} from './lib/cluster.js';

/** The nodes run the CLI of the tree this file was compiled into (dist/ under npm run bench:cache). */
const cliMain = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

// ---- named limits ----
const NODES = 3;
/** redis-benchmark processes per run (one per node against Lockstep; all on the one port against Redis). */
const RB_PROCS = 3;
const RB_TESTS = ['set', 'get', 'incr'] as const;
const RB_PIPELINES = [1, 16] as const;
/** Probe (unmeasured, sizes -n): at least RB_PROBE_MIN requests and RB_PROBE_ROUNDS pipelines' worth per client. */
const RB_PROBE_MIN = 2_000;
const RB_PROBE_ROUNDS = 4;
/** A measured run: at least RB_MEASURED_MIN requests and RB_MEASURED_MIN_ROUNDS pipelines per client, at most RB_REQUESTS_MAX. */
const RB_MEASURED_MIN = 2_000;
const RB_MEASURED_MIN_ROUNDS = 10;
const RB_REQUESTS_MAX = 5_000_000;
/** A probe taking this long is a stall; a measured run gets RB_STALL_FACTOR x its expected time (at least the minimum). */
const RB_PROBE_TIMEOUT_MS = 60_000;
const RB_STALL_FACTOR = 10;
const RB_MEASURED_TIMEOUT_MIN_MS = 30_000;
/**
 * redis-benchmark exits on the first error reply: a run that failed with -TRYAGAIN / -NOQUORUM (a shard electing a
 * leader) is retried this many times after RB_RETRY_PAUSE_MS; the retry is reported.
 */
const RB_RETRIES = 2;
const RB_RETRY_PAUSE_MS = 2_000;
/** Per-command timeout of the ioredis clients (mix, prefill, INFO). */
const COMMAND_TIMEOUT_MS = 10_000;
/**
 * Prefill: SETs per pipelined batch per connection, rounds (the first, then retries of the failed keys), the pause
 * before a retry round, and a bound on the whole prefill.
 */
const PREFILL_BATCH = 500;
const PREFILL_ROUNDS = 4;
const PREFILL_RETRY_PAUSE_MS = 1_000;
const PREFILL_TIMEOUT_MS = 180_000;
/** A mix loop sleeps this long after an error before trying again (no hot error loops). */
const ERROR_BACKOFF_MS = 10;
/** Error messages kept per run (per client thread, then merged). */
const ERROR_SAMPLES_MAX = 5;
/** Largest keyspace accepted (each client thread holds a Float64Array CDF of this many ranks). */
const KEYSPACE_MAX = 10_000_000;
/** Node options the benchmark sets as flags itself (flags win over LOCKSTEP_* variables, so these are refused). */
const NODE_ARGS_OWNED = ['id', 'port', 'peers', 'data-dir', 'workers', 'shards', 'fsync', 'log-level', 'log-format'];
/** Targets from the issue (ratios Lockstep / Redis, hit rate on the read-mostly mix). */
const TARGET_GET_P1 = 0.8;
const TARGET_GET_P16 = 0.5;
const TARGET_SET = 0.5;
const TARGET_HIT_RATE = 0.9;
const TARGET_HIT_MIX = '90/10';
const WRITE_POLICIES = ['write-through', 'write-back'] as const;

type SystemName = 'lockstep' | 'redis';
type Part = 'rb' | 'mix';
const ALL_PARTS: Part[] = ['rb', 'mix'];

/** redis-benchmark's key for random int i (`key:__rand_int__` with -r is `key:` and 12 zero-padded digits). */
const keyName = (i: number) => `key:${String(i).padStart(12, '0')}`;

// ---- client side (runs in the client threads) ----

interface MixJob {
  /** Client i connects to ports[i % ports.length]. */
  ports: number[];
  clientIds: number[];
  /** Percent of operations that are GETs (the rest are SETs). */
  getPct: number;
  keyspace: number;
  zipf: number;
  valueSize: number;
  /** Shared by the run's threads. i32: [0] abort flag. */
  i32: SharedArrayBuffer;
}

interface MixReport {
  getLat: number[];
  setLat: number[];
  /** GETs that returned nil (the keyspace is prefilled, so each is a key lost or never written). */
  getNil: number;
  errors: number;
  errorSamples: string[];
  drainTimedOut: boolean;
  aborted?: string;
}

/** Cumulative Zipf(s) weights over ranks 0..n-1 (s = 0: uniform), normalised to end at 1. */
function zipfCdf(n: number, s: number): Float64Array {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let r = 0; r < n; r++) {
    sum += 1 / Math.pow(r + 1, s);
    cdf[r] = sum;
  }
  for (let r = 0; r < n; r++) cdf[r]! /= sum;
  return cdf;
}

/** The first rank whose cumulative weight reaches u (binary search). */
function sampleRank(cdf: Float64Array, u: number): number {
  let lo = 0;
  let hi = cdf.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cdf[mid]! < u) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function mixThreadMain(job: MixJob): Promise<void> {
  const i32 = new Int32Array(job.i32);
  const conns: Redis[] = [];
  const open = async (): Promise<void> => {
    for (const id of job.clientIds) conns.push(await connectResp(job.ports[id % job.ports.length]!, COMMAND_TIMEOUT_MS));
  };
  const start = ({ startAt, endAt }: ClientWindow): ThreadLoops<MixReport> => {
    const r: MixReport = { getLat: [], setLat: [], getNil: 0, errors: 0, errorSamples: [], drainTimedOut: false };
    const cdf = zipfCdf(job.keyspace, job.zipf);
    const keys = Array.from({ length: job.keyspace }, (_, i) => keyName(i));
    const pad = 'v'.repeat(job.valueSize);
    const noteError = (err: unknown) => {
      r.errors++;
      const msg = (err as Error)?.message ?? String(err);
      if (/unknown command/i.test(msg)) {
        r.aborted = `unknown command: ${msg.slice(0, 200)}`;
        Atomics.store(i32, 0, 1);
      }
      if (r.errorSamples.length < ERROR_SAMPLES_MAX) r.errorSamples.push(msg.slice(0, 300));
    };
    const running = () => Atomics.load(i32, 0) === 0 && performance.now() < endAt;
    const loop = async (k: number): Promise<void> => {
      const c = conns[k]!;
      const id = job.clientIds[k]!;
      let n = 0;
      while (running()) {
        const key = keys[sampleRank(cdf, Math.random())]!;
        const isGet = Math.random() * 100 < job.getPct;
        const a0 = performance.now();
        let nil = false;
        try {
          if (isGet) nil = (await c.get(key)) === null;
          else {
            const head = `${id}:${n++}:`;
            await c.set(key, job.valueSize > head.length ? head + pad.slice(head.length) : head);
          }
        } catch (err) {
          noteError(err);
          await sleep(ERROR_BACKOFF_MS);
          continue;
        }
        const a1 = performance.now();
        if (a0 >= startAt && a1 <= endAt) {
          (isGet ? r.getLat : r.setLat).push(a1 - a0);
          if (nil) r.getNil++;
        }
      }
    };
    return {
      loops: Promise.all(conns.map((_, k) => loop(k))),
      report(drainTimedOut) {
        r.drainTimedOut = drainTimedOut;
        return r;
      },
    };
  };
  return clientThreadMain<MixReport>({
    open,
    start,
    drainMs: COMMAND_TIMEOUT_MS + DRAIN_MARGIN_MS,
    close: () => {
      for (const c of conns) c.disconnect();
    },
  });
}

// ---- main thread: options ----

interface MixSpec {
  /** "G/S", e.g. "90/10". */
  name: string;
  getPct: number;
}

interface Options {
  seconds: number;
  rbSeconds: number;
  rbWarmupSeconds: number;
  clients: number;
  keyspace: number;
  valueSize: number;
  zipf: number;
  mixes: MixSpec[];
  parts: Part[];
  skipRedis: boolean;
  skipLockstep: boolean;
  /** Measure GETs and mixes on cold caches (no warm pass first). */
  coldGet: boolean;
  fsync: 'batch' | 'always' | 'never';
  cacheWritePolicy: (typeof WRITE_POLICIES)[number] | '';
  /** Extra node options (raw tokens), --cache-write-policy included. */
  nodeArgs: string[];
  workers: number;
  shards: number;
  clientThreads: number;
}
let opts: Options;

/** --name value, else CACHE_BENCH_<NAME>, else the fallback. */
function opt(name: string, fallback: string): string {
  const flag = argValue(name, '\u0000');
  if (flag !== '\u0000') return flag;
  const env = process.env[`CACHE_BENCH_${name.toUpperCase().replace(/-/g, '_')}`];
  return env !== undefined && env !== '' ? env : fallback;
}

/** A boolean option: the bare flag --name, or CACHE_BENCH_<NAME> set to 1 / true / yes. */
function optBool(name: string): boolean {
  if (process.argv.includes(`--${name}`)) return true;
  const env = process.env[`CACHE_BENCH_${name.toUpperCase().replace(/-/g, '_')}`];
  return env !== undefined && ['1', 'true', 'yes', 'on'].includes(env.toLowerCase());
}

function parseOptions(): Options {
  const num = (name: string, fallback: string) => Number(opt(name, fallback));
  const bad: string[] = [];
  const parts = opt('only', ALL_PARTS.join(','))
    .split(',')
    .map((x) => x.trim().toLowerCase())
    .filter((x) => x !== '') as Part[];
  for (const p of parts) if (!ALL_PARTS.includes(p)) bad.push(`--only takes a comma list of ${ALL_PARTS.join(', ')} (got "${p}")`);
  const mixes: MixSpec[] = [];
  for (const m of opt('mixes', '90/10,30/70').split(',').map((x) => x.trim()).filter((x) => x !== '')) {
    const mm = /^(\d{1,3})\/(\d{1,3})$/.exec(m);
    if (!mm || Number(mm[1]) + Number(mm[2]) !== 100) bad.push(`--mixes takes GET/SET percentages adding up to 100, e.g. 90/10,30/70 (got "${m}")`);
    else mixes.push({ name: m, getPct: Number(mm[1]) });
  }
  const policy = opt('cache-write-policy', '');
  if (policy !== '' && !(WRITE_POLICIES as readonly string[]).includes(policy)) bad.push(`--cache-write-policy takes ${WRITE_POLICIES.join(' or ')} (got "${policy}")`);
  const nodeArgs = argValue('node-args', process.env.LOCKSTEP_NODE_ARGS ?? '').split(/\s+/).filter((x) => x !== '');
  if (policy !== '') nodeArgs.push('--cache-write-policy', policy);
  const o: Options = {
    seconds: num('seconds', '10'),
    rbSeconds: num('rb-seconds', '3'),
    rbWarmupSeconds: num('rb-warmup-seconds', '4'),
    clients: num('clients', '50'),
    keyspace: num('keyspace', '10000'),
    valueSize: num('value-size', '100'),
    zipf: num('zipf', '0.99'),
    mixes,
    parts,
    skipRedis: optBool('skip-redis'),
    skipLockstep: optBool('skip-lockstep'),
    coldGet: optBool('cold-get'),
    fsync: opt('fsync', 'batch') as Options['fsync'],
    cacheWritePolicy: policy as Options['cacheWritePolicy'],
    nodeArgs,
    // Same default as the node's --workers 0: max(1, min(8, cores / 2)).
    workers: num('workers', String(Math.max(1, Math.min(8, Math.floor(availableParallelism() / 2))))),
    shards: num('shards', '16'),
    clientThreads: num('client-threads', String(Math.max(1, Math.min(4, availableParallelism())))),
  };
  if (!(o.seconds > 0)) bad.push('--seconds must be > 0');
  if (!(o.rbSeconds > 0)) bad.push('--rb-seconds must be > 0');
  if (!(o.rbWarmupSeconds >= 0)) bad.push('--rb-warmup-seconds must be >= 0');
  const posInt = (name: string, v: number, max = Number.MAX_SAFE_INTEGER) => {
    if (!Number.isInteger(v) || v < 1 || v > max) bad.push(`--${name} must be an integer in [1, ${max}]`);
  };
  posInt('clients', o.clients);
  posInt('keyspace', o.keyspace, KEYSPACE_MAX);
  posInt('value-size', o.valueSize);
  posInt('workers', o.workers);
  posInt('shards', o.shards);
  posInt('client-threads', o.clientThreads);
  if (!(o.zipf >= 0)) bad.push('--zipf must be >= 0 (0 = uniform)');
  if (!['batch', 'always', 'never'].includes(o.fsync)) bad.push('--fsync takes batch, always or never');
  if (bad.length > 0) {
    console.error(bad.join('\n'));
    process.exit(2);
  }
  return o;
}

interface NodeEnvArgs {
  /** LOCKSTEP_<NAME> -> value, given to the nodes' environment. */
  env: Record<string, string>;
  /** Options this build's nodes do not know (passed anyway; ignored by them). */
  unknown: string[];
  /** Problems that made a token unusable. */
  refused: string[];
}

/** Turns node flags into the LOCKSTEP_<NAME> variables the node reads (src/config/options.ts). */
function nodeArgsToEnv(args: string[]): NodeEnvArgs {
  const out: NodeEnvArgs = { env: {}, unknown: [], refused: [] };
  const known = new Map(NODE_OPTIONS.map((s) => [s.name, s]));
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith('--') || a.length < 3) {
      out.refused.push(`"${a}" is not an option (expected --name value, --name=value, --flag or --no-flag)`);
      continue;
    }
    const eq = a.indexOf('=');
    let name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
    let value: string | undefined = eq >= 0 ? a.slice(eq + 1) : undefined;
    if (value === undefined && !known.has(name) && name.startsWith('no-') && known.get(name.slice(3))?.kind === 'bool') {
      name = name.slice(3);
      value = 'no';
    }
    if (value === undefined) {
      const next = args[i + 1];
      if (next === undefined || next.startsWith('--')) value = 'yes';
      else {
        value = next;
        i++;
      }
    }
    if (NODE_ARGS_OWNED.includes(name)) {
      out.refused.push(`--${name} is set by the benchmark itself${['workers', 'shards', 'fsync'].includes(name) ? ` (use the benchmark's --${name})` : ''}`);
      continue;
    }
    if (!known.has(name)) out.unknown.push(`--${name}`);
    out.env[envName(name)] = value;
  }
  return out;
}

// ---- main thread: measuring ----

interface RbMeasure {
  system: SystemName;
  test: string;
  pipeline: number;
  ok: boolean;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  elapsedMs: number;
  parts?: { port: number; clients: number; requests: number; rps: number; p50Ms: number; p99Ms: number }[];
  error?: string;
  /** Lockstep: hits / (hits + misses) over the measured run from INFO cache; null = n/a (no fields, or no reads). */
  hitRate?: number | null;
  /** Lockstep: hits + misses over the measured run; null = a node lacks cache_hits / cache_misses. */
  cacheReads?: number | null;
  cacheDelta?: Record<string, number>;
  counters?: CounterDeltas;
  /**
   * CPU time (user + system, all threads) the server processes used over the measured run, summed, per request, in
   * microseconds (every node of the cluster; Redis' one process); undefined when /proc cannot be read.
   */
  cpuUsPerReq?: number;
}

interface MixResult {
  system: SystemName;
  mix: string;
  getPct: number;
  clients: number;
  clientThreads: number;
  windowS: number;
  ops: number;
  opsPerSec: number;
  gets: number;
  sets: number;
  latency: Latency;
  get: Latency;
  set: Latency;
  getNil: number;
  errors: number;
  errorSamples: string[];
  clientCpuPct: number;
  serverCpuPct: number | null;
  drainTimedOut: boolean;
  aborted?: string;
  hitRate?: number | null;
  cacheReads?: number | null;
  cacheDelta?: Record<string, number>;
  counters?: CounterDeltas;
}

const rbResults: RbMeasure[] = [];
const mixResults: MixResult[] = [];
const issues: string[] = [];
const notes: Record<SystemName, string> = { lockstep: '', redis: '' };
const infra: Record<string, unknown> = {};
const startedAt = new Date();
const load0 = loadavg();

/** Clients per redis-benchmark process: as even as possible, the larger shares first (50 -> 17/17/16). */
function splitClients(total: number, procs: number): number[] {
  return Array.from({ length: procs }, (_, i) => Math.floor(total / procs) + (i < total % procs ? 1 : 0));
}

function rbFailure(run: BenchRun, what: string): string {
  if (run.timedOut) return `${what}: STALL, no result within ${run.elapsedMs} ms (redis-benchmark killed)`;
  return `${what}: exit ${run.code ?? run.signal}, ${run.rows.length} rows; ${run.messages.split('\n').slice(-3).join(' | ')}`;
}

/** One redis-benchmark run spread over RB_PROCS processes at once (process i on ports[i % ports.length]). */
async function rbSpread(system: SystemName, ports: number[], test: string, pipeline: number, n: number, timeoutMs: number, what: string): Promise<RbMeasure> {
  const shares = splitClients(opts.clients, RB_PROCS)
    .map((clients, i) => ({ clients, port: ports[i % ports.length]! }))
    .filter((s) => s.clients > 0);
  const common = ['-t', test, '-P', String(pipeline), '-r', String(opts.keyspace), '-d', String(opts.valueSize)];
  const plan = shares.map((s) => ({ ...s, requests: Math.max(s.clients * pipeline, Math.round((n * s.clients) / opts.clients)) }));
  const runs = await Promise.all(plan.map((s) => runRedisBenchmark(s.port, [...common, '-c', String(s.clients), '-n', String(s.requests)], timeoutMs)));
  const requests = plan.reduce((a, s) => a + s.requests, 0);
  const elapsedMs = Math.max(...runs.map((r) => r.elapsedMs));
  const base = { system, test: test.toUpperCase(), pipeline, requests, elapsedMs };
  const bad = runs.findIndex((r) => r.code !== 0 || r.timedOut || r.rows[0] === undefined || !(r.rows[0].rps > 0));
  if (bad >= 0) return { ...base, ok: false, rps: 0, p50Ms: 0, p99Ms: 0, error: rbFailure(runs[bad]!, `${what} on port ${plan[bad]!.port}`) };
  const parts = runs.map((r, i) => ({ port: plan[i]!.port, clients: plan[i]!.clients, requests: plan[i]!.requests, rps: r.rows[0]!.rps, p50Ms: r.rows[0]!.p50Ms, p99Ms: r.rows[0]!.p99Ms }));
  return {
    ...base,
    ok: true,
    rps: parts.reduce((a, p) => a + p.rps, 0),
    p50Ms: Math.max(...parts.map((p) => p.p50Ms)),
    p99Ms: Math.max(...parts.map((p) => p.p99Ms)),
    parts,
  };
}

/** Numeric `cache_*` counters of `INFO cache` per node (an empty record when the section has none). */
type CacheSnapshot = Record<string, number>[];
/** INFO cache fields that are not counters (a delta of them means nothing). */
const CACHE_NON_COUNTERS = ['cache_hit_rate'];

/** The `field:value` lines of one node's `INFO cache`. */
async function infoCache(c: Redis): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const line of String(await c.call('INFO', 'cache')).split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out.set(line.slice(0, i).trim(), line.slice(i + 1).trim());
  }
  return out;
}

async function cacheSnapshot(admins: Redis[]): Promise<CacheSnapshot> {
  return Promise.all(
    admins.map(async (c) => {
      const f: Record<string, number> = {};
      for (const [k, v] of await infoCache(c)) {
        if (k.startsWith('cache_') && !CACHE_NON_COUNTERS.includes(k) && /^-?\d+(?:\.\d+)?$/.test(v)) f[k] = Number(v);
      }
      return f;
    }),
  );
}

/** INFO cache fields that are ratios, not counters. */
const RATIO_FIELDS = new Set(['cache_hit_rate', 'cache_line_reuse']);

/**
 * Summed per-field deltas over the nodes, the reads (hits + misses; null when a node lacks cache_hits /
 * cache_misses) and the hit rate (null when there were no reads or no such fields). Ratio fields get no delta.
 */
function cacheDelta(before: CacheSnapshot, after: CacheSnapshot): { delta: Record<string, number>; reads: number | null; hitRate: number | null } {
  const delta: Record<string, number> = {};
  let complete = true;
  for (let i = 0; i < after.length; i++) {
    const a = after[i]!;
    const b = before[i] ?? {};
    if (a.cache_hits === undefined || a.cache_misses === undefined || b.cache_hits === undefined || b.cache_misses === undefined) complete = false;
    for (const [k, v] of Object.entries(a)) if (b[k] !== undefined && !RATIO_FIELDS.has(k)) delta[k] = (delta[k] ?? 0) + v - b[k]!;
  }
  const looked = (delta.cache_hits ?? 0) + (delta.cache_misses ?? 0);
  return { delta, reads: complete ? looked : null, hitRate: complete && looked > 0 ? delta.cache_hits! / looked : null };
}

/** n/a: no cache_hits / cache_misses; "no reads": the run looked nothing up (SET, INCR). */
function fmtHit(m: { hitRate?: number | null | undefined; cacheReads?: number | null | undefined }): string {
  if (m.cacheReads === null || m.cacheReads === undefined) return 'n/a';
  if (m.hitRate === null || m.hitRate === undefined) return 'no reads';
  return `${(m.hitRate * 100).toFixed(1)}%`;
}
const fwdPct = (c: CounterDeltas | undefined) => (c === undefined || c.commands === 0 ? '-' : `${Math.round((100 * c.forwarded) / c.commands)}%`);

/** Lockstep only: what is read around a measured run (INFO cache and the INFO counters). */
interface Probes {
  admins: Redis[];
  ports: number[];
}

/** rbSpread, retried RB_RETRIES times when it failed with a transient cluster error (reported as an issue). */
async function rbSpreadRetrying(system: SystemName, ports: number[], test: string, pipeline: number, n: number, timeoutMs: number, what: string): Promise<RbMeasure> {
  for (let attempt = 0; ; attempt++) {
    const m = await rbSpread(system, ports, test, pipeline, n, timeoutMs, what);
    if (m.ok || attempt >= RB_RETRIES || !/TRYAGAIN|NOQUORUM/.test(m.error ?? '')) return m;
    issues.push(`${system} redis-benchmark ${m.error}; retried after ${RB_RETRY_PAUSE_MS} ms`);
    console.log(`  (${what}: ${m.error?.split('; ').pop()}; retrying after ${RB_RETRY_PAUSE_MS} ms)`);
    await sleep(RB_RETRY_PAUSE_MS);
  }
}

/** The warm pass (see the header): GET of every key through every port, pipelined; returns the ms it took. */
async function warmCaches(ports: number[]): Promise<number> {
  const t0 = Date.now();
  const conns = await Promise.all(ports.map((p) => connectResp(p, COMMAND_TIMEOUT_MS)));
  try {
    await Promise.all(
      conns.map(async (c) => {
        for (let from = 0; from < opts.keyspace; from += PREFILL_BATCH) {
          const p = c.pipeline();
          for (let i = from; i < Math.min(opts.keyspace, from + PREFILL_BATCH); i++) p.get(keyName(i));
          await p.exec();
        }
      }),
    );
  } finally {
    for (const c of conns) c.disconnect();
  }
  return Date.now() - t0;
}

/**
 * Unmeasured write warm-up (--rb-warmup-seconds): SET and INCR at both pipeline depths in short rounds until the time
 * is up, so the measured write runs (a few seconds each) do not pay for V8 compiling the write path (in a cold
 * 3-node cluster the optimizing compiler threads took as much CPU as the shard workers for the first seconds).
 * Redis gets the same treatment; its results are unaffected by it.
 */
async function rbWarmup(system: SystemName, ports: number[]): Promise<void> {
  if (opts.rbWarmupSeconds <= 0) return;
  const t0 = Date.now();
  let rounds = 0;
  while (Date.now() - t0 < opts.rbWarmupSeconds * 1000) {
    const pipeline = RB_PIPELINES[rounds % RB_PIPELINES.length]!;
    const test = rounds % (2 * RB_PIPELINES.length) < RB_PIPELINES.length ? 'set' : 'incr';
    const n = Math.max(RB_PROBE_MIN, opts.clients * pipeline * RB_PROBE_ROUNDS);
    const r = await rbSpreadRetrying(system, ports, test, pipeline, n, RB_PROBE_TIMEOUT_MS, `warm-up ${test} P${pipeline} -n ${n}`);
    if (!r.ok) {
      console.log(`  (write warm-up stopped: ${r.error})`);
      return;
    }
    rounds++;
  }
  console.log(`  (write warm-up: ${rounds} unmeasured SET/INCR runs in ${Date.now() - t0} ms)`);
}

/** redis-benchmark for every pipeline depth and test: probe (sizes -n), then the measured run. */
async function rbPass(system: SystemName, ports: number[], serverPids: number[], probes?: Probes): Promise<void> {
  console.log(`${system}: redis-benchmark ${opts.clients} clients as ${splitClients(opts.clients, RB_PROCS).join('/')} over ${RB_PROCS} processes, -r ${opts.keyspace} -d ${opts.valueSize}`);
  await rbWarmup(system, ports);
  for (const pipeline of RB_PIPELINES) {
    for (const test of RB_TESTS) {
      const label = `${test.toUpperCase()} P${pipeline}`;
      if (test === 'get' && !opts.coldGet) console.log(`  (warm pass: every key read through every port in ${await warmCaches(ports)} ms)`);
      const probeN = Math.max(RB_PROBE_MIN, opts.clients * pipeline * RB_PROBE_ROUNDS);
      const probe = await rbSpreadRetrying(system, ports, test, pipeline, probeN, RB_PROBE_TIMEOUT_MS, `${label} probe -n ${probeN}`);
      let m: RbMeasure;
      if (!probe.ok) m = probe;
      else {
        const n = Math.min(RB_REQUESTS_MAX, Math.max(RB_MEASURED_MIN, opts.clients * pipeline * RB_MEASURED_MIN_ROUNDS, Math.round(probe.rps * opts.rbSeconds)));
        const expectedMs = (n / probe.rps) * 1000;
        const cacheBefore = probes ? await cacheSnapshot(probes.admins).catch(() => undefined) : undefined;
        const countersBefore = probes ? await snapshotCounters(probes.ports) : undefined;
        const cpuBefore = sumCpu(serverPids);
        m = await rbSpreadRetrying(system, ports, test, pipeline, n, Math.max(RB_MEASURED_TIMEOUT_MIN_MS, expectedMs * RB_STALL_FACTOR), `${label} -n ${n}`);
        const cpuAfter = sumCpu(serverPids);
        // (a retried run counts the CPU of its failed attempts too: rare, and it only makes the figure worse)
        if (m.ok && cpuBefore !== undefined && cpuAfter !== undefined && m.requests > 0) m.cpuUsPerReq = Math.round(((cpuAfter - cpuBefore) * 1e7) / m.requests) / 10;
        if (probes) {
          const cacheAfter = await cacheSnapshot(probes.admins).catch(() => undefined);
          const countersAfter = await snapshotCounters(probes.ports);
          m.hitRate = null;
          m.cacheReads = null;
          if (cacheBefore && cacheAfter) {
            const d = cacheDelta(cacheBefore, cacheAfter);
            m.hitRate = d.hitRate;
            m.cacheReads = d.reads;
            m.cacheDelta = d.delta;
          }
          if (countersBefore && countersAfter) m.counters = counterDeltas(countersBefore, countersAfter);
        }
      }
      rbResults.push(m);
      if (!m.ok) {
        issues.push(`${system} redis-benchmark ${m.error}`);
        console.log(`  ${label.padEnd(8)} FAILED: ${m.error}`);
        continue;
      }
      const extra = probes ? `  hit rate ${fmtHit(m)}  fwd ${fwdPct(m.counters)}` : '';
      console.log(
        `  ${label.padEnd(8)} ${String(Math.round(m.rps)).padStart(7)} req/s  p50 ${fmtMs(m.p50Ms)} p99 ${fmtMs(m.p99Ms)} ms  ` +
          `(-n ${m.requests}; per process ${m.parts!.map((p) => Math.round(p.rps)).join('/')})${extra}${m.cpuUsPerReq !== undefined ? `  cpu ${m.cpuUsPerReq} us/req` : ''}`,
      );
      if (m.counters && (m.counters.workerErrors > 0 || m.counters.failedCalls > 0 || m.counters.termBumps > 0)) {
        issues.push(`lockstep ${label}: ${m.counters.termBumps} Raft term bumps, ${m.counters.workerErrors} worker error replies, ${m.counters.failedCalls} failed calls (INFO)`);
      }
    }
  }
}

/** One mix on one system through the client threads. */
async function runMix(system: SystemName, ports: number[], mix: MixSpec, serverPids: number[], probes?: Probes): Promise<MixResult> {
  if (!opts.coldGet) console.log(`  (warm pass: every key read through every port in ${await warmCaches(ports)} ms)`);
  const nThreads = Math.min(opts.clientThreads, opts.clients);
  const i32 = new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT);
  const run = await runClientThreads<MixJob, MixReport, CacheSnapshot>({
    entry: fileURLToPath(import.meta.url),
    jobs: dealClients(opts.clients, nThreads).map((clientIds) => ({
      ports, clientIds, getPct: mix.getPct, keyspace: opts.keyspace, zipf: opts.zipf, valueSize: opts.valueSize, i32,
    })),
    seconds: opts.seconds,
    drainMs: COMMAND_TIMEOUT_MS + DRAIN_MARGIN_MS,
    serverPids,
    ...(probes ? { counterPorts: probes.ports, snapshot: () => cacheSnapshot(probes.admins) } : {}),
  });
  const got = run.reports;
  const sum = (f: (r: MixReport) => number) => got.reduce((s, r) => s + f(r), 0);
  const gets = sum((r) => r.getLat.length);
  const sets = sum((r) => r.setLat.length);
  const result: MixResult = {
    system,
    mix: mix.name,
    getPct: mix.getPct,
    clients: opts.clients,
    clientThreads: nThreads,
    windowS: Math.round(run.windowS * 1000) / 1000,
    ops: gets + sets,
    opsPerSec: Math.round((gets + sets) / opts.seconds),
    gets,
    sets,
    latency: latency(got.flatMap((r) => [...r.getLat, ...r.setLat])),
    get: latency(got.flatMap((r) => r.getLat)),
    set: latency(got.flatMap((r) => r.setLat)),
    getNil: sum((r) => r.getNil),
    errors: sum((r) => r.errors),
    errorSamples: got.flatMap((r) => r.errorSamples).slice(0, ERROR_SAMPLES_MAX),
    clientCpuPct: run.clientCpuPct,
    serverCpuPct: run.serverCpuPct,
    drainTimedOut: got.some((r) => r.drainTimedOut) || run.missing > 0,
  };
  if (run.missing > 0) result.errorSamples.push(`${run.missing} client thread(s) did not report within ${run.reportBoundMs} ms and were terminated`);
  const aborted = got.find((r) => r.aborted !== undefined)?.aborted;
  if (aborted !== undefined) result.aborted = aborted;
  if (probes) {
    result.hitRate = null;
    result.cacheReads = null;
    if (run.snapshots) {
      const d = cacheDelta(run.snapshots.before, run.snapshots.after);
      result.hitRate = d.hitRate;
      result.cacheReads = d.reads;
      result.cacheDelta = d.delta;
    }
    if (run.counters) result.counters = run.counters;
  }
  return result;
}

function recordMix(r: MixResult): void {
  mixResults.push(r);
  const hit = r.system === 'lockstep' ? `  hit rate ${fmtHit(r)}  fwd ${fwdPct(r.counters)}` : '';
  const bad = [
    r.errors ? `${r.errors} errors` : '',
    r.getNil ? `${r.getNil} GETs returned nil` : '',
    r.drainTimedOut ? 'drain timed out' : '',
    r.aborted ?? '',
  ].filter((x) => x !== '');
  console.log(
    `  ${r.mix.padEnd(6)} ${String(r.opsPerSec).padStart(7)} ops/s  p50 ${fmtMs(r.latency.p50Ms)} p99 ${fmtMs(r.latency.p99Ms)} ms ` +
      `(GET p50 ${fmtMs(r.get.p50Ms)} p99 ${fmtMs(r.get.p99Ms)}, SET p50 ${fmtMs(r.set.p50Ms)} p99 ${fmtMs(r.set.p99Ms)})  ` +
      `cpu client ${r.clientCpuPct}% server ${r.serverCpuPct ?? '-'}%${hit}${bad.length ? `  [${bad.join(', ')}]` : ''}`,
  );
  const tag = `${r.system} mix ${r.mix}`;
  if (r.errors > 0) issues.push(`${tag}: ${r.errors} errors, e.g. ${r.errorSamples.slice(0, 2).join(' | ')}`);
  if (r.getNil > 0) issues.push(`${tag}: ${r.getNil} GETs of prefilled keys returned nil`);
  if (r.drainTimedOut) issues.push(`${tag}: loops did not finish within ${COMMAND_TIMEOUT_MS + DRAIN_MARGIN_MS} ms after the window; connections were closed`);
  if (r.counters && (r.counters.workerErrors > 0 || r.counters.failedCalls > 0 || r.counters.termBumps > 0)) {
    issues.push(`${tag}: ${r.counters.termBumps} Raft term bumps, ${r.counters.workerErrors} worker error replies, ${r.counters.failedCalls} failed calls (INFO)`);
  }
}

async function mixPass(system: SystemName, ports: number[], serverPids: number[], probes?: Probes): Promise<void> {
  console.log(
    `${system}: mixes, ${opts.clients} clients on ${Math.min(opts.clientThreads, opts.clients)} client threads` +
      `${ports.length > 1 ? ` (client i on node i % ${ports.length})` : ''}, Zipf ${opts.zipf} over ${opts.keyspace} keys, ${opts.seconds} s window`,
  );
  for (const mix of opts.mixes) {
    try {
      recordMix(await runMix(system, ports, mix, serverPids, probes));
    } catch (err) {
      const msg = `${system} mix ${mix.name}: ${(err as Error).message}`;
      issues.push(msg);
      console.log(`  ! ${msg}`);
    }
  }
}

/**
 * SETs every key redis-benchmark and the mixes can draw, pipelined over one connection per port; keys whose SET
 * failed (e.g. -TRYAGAIN while a shard elects a leader) are retried for up to PREFILL_ROUNDS rounds, so a GET
 * returning nil later means a lost key, not a failed prefill.
 */
async function prefill(system: SystemName, ports: number[]): Promise<void> {
  const t0 = Date.now();
  const conns = await Promise.all(ports.map((p) => connectResp(p, COMMAND_TIMEOUT_MS)));
  const value = 'p'.repeat(opts.valueSize);
  let todo = Array.from({ length: opts.keyspace }, (_, i) => i);
  let errors = 0;
  let rounds = 0;
  let sample = '';
  try {
    while (todo.length > 0 && rounds < PREFILL_ROUNDS) {
      if (rounds > 0) await sleep(PREFILL_RETRY_PAUSE_MS);
      rounds++;
      const failed: number[] = [];
      let next = 0;
      const worker = async (c: Redis) => {
        while (next < todo.length) {
          if (Date.now() - t0 > PREFILL_TIMEOUT_MS) throw new Error(`prefill of ${opts.keyspace} keys not done within ${PREFILL_TIMEOUT_MS} ms`);
          const batch = todo.slice(next, next + PREFILL_BATCH);
          next += batch.length;
          const p = c.pipeline();
          for (const i of batch) p.set(keyName(i), value);
          const replies = (await p.exec()) ?? [];
          batch.forEach((i, k) => {
            const err = replies[k]?.[0];
            if (err || replies[k] === undefined) {
              errors++;
              failed.push(i);
              if (sample === '') sample = err?.message ?? 'no reply';
            }
          });
        }
      };
      await Promise.all(conns.map((c) => worker(c)));
      todo = failed;
    }
  } finally {
    for (const c of conns) c.disconnect();
  }
  const retried = errors > 0 ? `, ${errors} failed SETs retried over ${rounds} rounds (e.g. ${sample})` : '';
  console.log(`${system}: prefilled ${opts.keyspace - todo.length} of ${opts.keyspace} keys of ${opts.valueSize} B in ${Date.now() - t0} ms${retried}`);
  if (todo.length > 0) issues.push(`${system} prefill: ${todo.length} keys still not set after ${rounds} rounds, e.g. ${sample}`);
}

async function infoPid(port: number): Promise<number | undefined> {
  const c = await connectResp(port, COMMAND_TIMEOUT_MS);
  try {
    const m = /process_id:(\d+)/.exec(String(await c.call('INFO', 'server')));
    return m ? Number(m[1]) : undefined;
  } finally {
    c.disconnect();
  }
}

const wants = (p: Part) => opts.parts.includes(p);

async function redisPass(): Promise<void> {
  let redis: Awaited<ReturnType<typeof startRedisAof>> | undefined;
  try {
    redis = await startRedisAof();
    const pid = await infoPid(redis.port);
    infra.redis = { port: redis.port, pid, config: 'appendonly yes, appendfsync always, save ""' };
    console.log(`redis-server (appendonly yes, appendfsync always; single, unreplicated) on ${redis.port}`);
    await prefill('redis', [redis.port]);
    if (wants('rb')) await rbPass('redis', [redis.port], pid === undefined ? [] : [pid]);
    if (wants('mix')) await mixPass('redis', [redis.port], pid === undefined ? [] : [pid]);
  } catch (err) {
    const msg = `redis: ${(err as Error).message}`;
    issues.push(msg);
    notes.redis = msg.slice(0, 120);
    console.log(`  ! ${msg}`);
  } finally {
    if (redis) await redis.stop();
  }
}

async function lockstepPass(): Promise<void> {
  if (!existsSync(cliMain)) {
    const msg = `lockstep: ${cliMain} is missing (run \`npx tsc -p tsconfig.json\` first); skipped`;
    console.log(msg);
    issues.push(msg);
    notes.lockstep = 'not built';
    return;
  }
  const t0 = Date.now();
  const rec: {
    ports?: number[]; startMs?: number; leaderSlots?: Record<string, number>; leadersSettled?: boolean; nodeArgs: string[];
    nodeEnv: Record<string, string>; unknownNodeOptions: string[]; infoCache?: Record<string, string>[]; exits?: NodeExit[];
    logs?: Record<number, LogSummary>; error?: string;
  } = { nodeArgs: opts.nodeArgs, nodeEnv: {}, unknownNodeOptions: [] };
  infra.lockstep = rec;
  const nodeEnv = nodeArgsToEnv(opts.nodeArgs);
  rec.nodeEnv = nodeEnv.env;
  rec.unknownNodeOptions = nodeEnv.unknown;
  for (const r of nodeEnv.refused) issues.push(`node args: ${r}; not passed`);
  if (nodeEnv.unknown.length > 0) {
    const msg = `node options not known to this build (passed as LOCKSTEP_* variables, ignored by its nodes): ${nodeEnv.unknown.join(' ')}`;
    console.log(`lockstep: ${msg}`);
    issues.push(msg);
  }
  let cluster: LockstepCluster | undefined;
  const admins: Redis[] = [];
  // The nodes inherit this process's environment when spawned; the variables are set only around the spawn.
  const saved = new Map(Object.keys(nodeEnv.env).map((k) => [k, process.env[k]]));
  try {
    Object.assign(process.env, nodeEnv.env);
    try {
      cluster = await startCluster({ cliMain, nodes: NODES, workers: opts.workers, shards: opts.shards, fsync: opts.fsync });
    } finally {
      for (const [k, v] of saved) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    const ports = cluster.nodes.map((n) => n.port);
    rec.ports = ports;
    await waitClusterOk(cluster);
    rec.startMs = Date.now() - t0;
    const leaders = await waitLeadersStable(cluster);
    rec.leaderSlots = leaders.slots;
    rec.leadersSettled = leaders.settled;
    if (!leaders.settled) issues.push(`lockstep: leader map not settled after ${leaders.ms} ms`);
    const envShown = Object.entries(nodeEnv.env).map(([k, v]) => `${k}=${v}`).join(' ');
    console.log(
      `Lockstep: ${NODES} nodes on ${ports.join(',')} (--workers ${opts.workers} --shards ${opts.shards} --fsync ${opts.fsync}` +
        `${envShown ? `, env ${envShown}` : ''}), ready after ${rec.startMs} ms`,
    );
    for (const p of ports) admins.push(await connectResp(p, COMMAND_TIMEOUT_MS));
    const info = await Promise.all(admins.map((c) => infoCache(c))).catch(() => undefined);
    if (info) rec.infoCache = info.map((m) => Object.fromEntries(m));
    const hasRate = info !== undefined && info.every((m) => m.has('cache_hits') && m.has('cache_misses'));
    const policies = [...new Set((info ?? []).map((m) => m.get('cache_policy') ?? '(not reported)'))];
    console.log(
      `lockstep: INFO cache ${hasRate ? 'reports cache_hits / cache_misses on every node' : 'lacks cache_hits / cache_misses (hit rate n/a)'}; ` +
        `cache_policy ${policies.join(' / ') || '(not reported)'}`,
    );
    if (opts.cacheWritePolicy !== '' && info !== undefined && info.some((m) => m.get('cache_policy') !== undefined && m.get('cache_policy') !== opts.cacheWritePolicy)) {
      issues.push(`lockstep: asked for --cache-write-policy ${opts.cacheWritePolicy} but INFO cache reports cache_policy ${policies.join(' / ')}`);
    }
    const pids = (await Promise.all(ports.map((p) => infoPid(p)))).filter((p): p is number => p !== undefined);
    const probes: Probes = { admins, ports };
    const crashed = () => {
      const c = cluster!.exits.filter((e) => e.unexpected);
      if (c.length > 0) throw new Error(`node(s) exited during the run: ${JSON.stringify(c)}`);
    };
    await prefill('lockstep', ports);
    crashed();
    if (wants('rb')) {
      await rbPass('lockstep', ports, pids.length === ports.length ? pids : [], probes);
      crashed();
    }
    if (wants('mix')) {
      await mixPass('lockstep', ports, pids.length === ports.length ? pids : [], probes);
      crashed();
    }
  } catch (err) {
    rec.error = (err as Error).message;
    issues.push(`lockstep: ${rec.error}`);
    notes.lockstep = rec.error.slice(0, 120);
    console.log(`  ! lockstep: ${rec.error}`);
  } finally {
    for (const c of admins) c.disconnect();
    if (cluster) {
      const { exits, logs } = await cluster.stop();
      rec.exits = exits;
      rec.logs = logs;
      for (const [id, s] of Object.entries(logs)) {
        if (s.warn + s.error + s.fatal + s.other > 0) {
          issues.push(`lockstep node ${id} log: ${s.warn} warn, ${s.error} error, ${s.fatal} fatal, ${s.other} non-JSON; e.g. ${s.samples.slice(0, 2).join(' || ')}`);
        }
      }
      const bad = exits.filter((e) => e.unexpected || (e.code !== 0 && e.signal !== 'SIGTERM'));
      if (bad.length > 0) issues.push(`lockstep: node exits ${JSON.stringify(bad)}`);
    }
  }
}

// ---- report ----

function rb(system: SystemName, test: string, pipeline: number): RbMeasure | undefined {
  return rbResults.find((r) => r.system === system && r.test === test && r.pipeline === pipeline && r.ok);
}

function mixOf(system: SystemName, mix: string): MixResult | undefined {
  return mixResults.find((r) => r.system === system && r.mix === mix && r.ops > 0 && r.aborted === undefined);
}

function ratioOf(a: number | undefined, b: number | undefined): number | null {
  return a !== undefined && b !== undefined && b > 0 ? Math.round((a / b) * 100) / 100 : null;
}

function rbTarget(test: string, pipeline: number): number | undefined {
  if (test === 'GET') return pipeline === 1 ? TARGET_GET_P1 : TARGET_GET_P16;
  if (test === 'SET') return TARGET_SET;
  return undefined;
}

const verdict = (ok: boolean | null) => (ok === null ? 'not measured' : ok ? 'met' : 'NOT met');

let finished = false;
function finish(partial: boolean): void {
  if (finished) return;
  finished = true;
  const policy = opts.cacheWritePolicy || '(node default)';
  console.log(
    `\nCache: Lockstep ${NODES} nodes --fsync ${opts.fsync}, cache write policy ${policy}${opts.nodeArgs.length ? `, node args ${opts.nodeArgs.join(' ')}` : ''} ` +
      `vs redis-server appendfsync always (single, unreplicated). ${opts.clients} clients, keyspace ${opts.keyspace} (prefilled), ` +
      `values ${opts.valueSize} B${partial ? '  [PARTIAL: stopped early]' : ''}.\n`,
  );
  const targets: { name: string; value: number | null; met: boolean | null }[] = [];
  if (wants('rb')) {
    console.log(`redis-benchmark, ${splitClients(opts.clients, RB_PROCS).join('/')} clients over ${RB_PROCS} processes at once (Lockstep: one per node), ~${opts.rbSeconds} s per run:`);
    const rows: (string | number)[][] = [];
    for (const pipeline of RB_PIPELINES) {
      for (const t of RB_TESTS) {
        const test = t.toUpperCase();
        const l = rb('lockstep', test, pipeline);
        const r = rb('redis', test, pipeline);
        const ratio = ratioOf(l?.rps, r?.rps);
        const target = rbTarget(test, pipeline);
        const met = target === undefined || ratio === null ? null : ratio >= target;
        if (target !== undefined) targets.push({ name: `${test} P${pipeline} >= ${target}x redis (appendfsync always)`, value: ratio, met });
        const cpuRatio = ratioOf(r?.cpuUsPerReq, l?.cpuUsPerReq);
        rows.push([
          `${test} P${pipeline}`, l ? Math.round(l.rps) : '-', fmtMs(l?.p50Ms), fmtMs(l?.p99Ms), l ? fmtHit(l) : '-', l ? fwdPct(l.counters) : '-',
          r ? Math.round(r.rps) : '-', fmtMs(r?.p50Ms), fmtMs(r?.p99Ms), ratio?.toFixed(2) ?? '-', target === undefined ? '' : `>= ${target} ${met === null ? '-' : met ? 'met' : 'NOT met'}`,
          l?.cpuUsPerReq ?? '-', r?.cpuUsPerReq ?? '-', cpuRatio?.toFixed(2) ?? '-',
        ]);
      }
    }
    printTable(['test', 'lockstep req/s', 'p50 ms', 'p99 ms', 'hit rate', 'fwd', 'redis req/s', 'p50 ms', 'p99 ms', 'ratio', 'target', 'lockstep cpu us', 'redis cpu us', 'cpu ratio'], rows);
    console.log(
      'cpu us = CPU time (user + system) of the server processes per request over the measured run (Lockstep: the three nodes summed);\n' +
        'cpu ratio = redis / lockstep, the throughput ratio if CPU were the only limit.',
    );
  }
  if (wants('mix')) {
    console.log(
      `\nmixes (GET/SET %), ${opts.clients} clients on ${Math.min(opts.clientThreads, opts.clients)} client threads, Zipf ${opts.zipf} over ${opts.keyspace} keys, ` +
        `${opts.seconds} s window after ${WARMUP_MS} ms warm-up:`,
    );
    const rows: (string | number)[][] = [];
    for (const mix of opts.mixes) {
      const l = mixOf('lockstep', mix.name);
      const r = mixOf('redis', mix.name);
      const ratio = ratioOf(l?.opsPerSec, r?.opsPerSec);
      let target = '';
      if (mix.name === TARGET_HIT_MIX) {
        const hr = l?.hitRate ?? null;
        const met = hr === null ? null : hr > TARGET_HIT_RATE;
        targets.push({ name: `hit rate > ${TARGET_HIT_RATE * 100}% on the ${TARGET_HIT_MIX} mix`, value: hr === null ? null : Math.round(hr * 1000) / 1000, met });
        target = `hit > ${TARGET_HIT_RATE * 100}% ${met === null ? 'n/a' : met ? 'met' : 'NOT met'}`;
      }
      rows.push([
        mix.name, l ? l.opsPerSec : '-', fmtMs(l?.latency.p50Ms), fmtMs(l?.latency.p99Ms), l ? fmtHit(l) : '-', l ? fwdPct(l.counters) : '-',
        r ? r.opsPerSec : '-', fmtMs(r?.latency.p50Ms), fmtMs(r?.latency.p99Ms), ratio?.toFixed(2) ?? '-', target,
      ]);
    }
    printTable(['mix', 'lockstep ops/s', 'p50 ms', 'p99 ms', 'hit rate', 'fwd', 'redis ops/s', 'p50 ms', 'p99 ms', 'ratio', 'target'], rows);
  }
  console.log(
    'ratio = Lockstep / Redis throughput, same run. hit rate = cache_hits / (cache_hits + cache_misses) from INFO cache, summed over the ' +
      'nodes over the measured run (n/a: no such fields). fwd = share of the commands the receiving node forwarded to another node (INFO).',
  );
  for (const sys of ['lockstep', 'redis'] as const) if (notes[sys] !== '') console.log(`  ${sys}: ${notes[sys]}`);

  console.log('\ntargets (from the issue):');
  for (const t of targets) console.log(`  ${t.name}: ${t.value ?? '-'} -> ${verdict(t.met)}`);
  if (targets.some((t) => t.name.startsWith('hit rate') && t.met === null) && mixOf('lockstep', TARGET_HIT_MIX)) {
    console.log('  note: the hit rate is n/a: the nodes report no cache_hits / cache_misses in INFO cache');
  }
  if (opts.clients !== 50) console.log(`  note: run with ${opts.clients} clients, the targets are stated for 50`);
  if (issues.length > 0) {
    console.log('\nissues seen:');
    for (const i of issues) console.log(`  - ${i}`);
  }
  const stamp = startedAt.toISOString().replace(/[:.]/g, '-');
  writeResult(`cache-${stamp}`, {
    when: startedAt.toISOString(),
    partial,
    durationS: Math.round((Date.now() - startedAt.getTime()) / 1000),
    machine: { cpus: cpus().length, loadavgStart: load0, loadavgEnd: loadavg() },
    options: { ...opts, warmupMs: WARMUP_MS, rbProcesses: RB_PROCS, clientSplit: splitClients(opts.clients, RB_PROCS) },
    notes,
    redisBenchmark: rbResults,
    mixes: mixResults.map((m) => ({ ...m })),
    targets,
    infra,
    issues,
  });
}

async function main(): Promise<void> {
  opts = parseOptions();
  process.chdir(repoRoot());
  const { skipRedis, skipLockstep } = opts;
  if (!skipRedis || !skipLockstep) await requireRedisTools();
  // Estimate: redis-benchmark ~ (probe ~1 s + rb-seconds) per test; a mix warm-up + window + ~2 s set-up; the
  // cluster ~20 s to start, settle and stop; prefill a few seconds.
  const rbS = wants('rb') ? RB_PIPELINES.length * RB_TESTS.length * (opts.rbSeconds + 1.5) + opts.rbWarmupSeconds : 0;
  const mixS = wants('mix') ? opts.mixes.length * (WARMUP_MS / 1000 + opts.seconds + 2) : 0;
  const estimateS = Math.round((skipRedis ? 0 : rbS + mixS + 3) + (skipLockstep ? 0 : rbS * 1.5 + mixS + 30));
  const maxMinutes = Number(opt('max-minutes', String(Math.ceil((estimateS * 3) / 60) + 2)));
  console.log(
    `cache: parts ${opts.parts.join(',')}, mixes ${opts.mixes.map((m) => m.name).join(',')}, ${opts.clients} clients; ` +
      `estimated ~${Math.ceil(estimateS / 6) / 10} min, hard limit ${maxMinutes} min. Load average ${load0.map((x) => x.toFixed(2)).join(' ')} on ${cpus().length} cpus.\n`,
  );
  setTimeout(() => {
    console.error(`\nhard limit of ${maxMinutes} min reached: printing partial results and stopping everything`);
    finish(true);
    process.exit(2);
  }, maxMinutes * 60_000).unref();

  if (!skipRedis) await redisPass();
  if (!skipLockstep) await lockstepPass();
  finish(false);
}

if (isMainThread) {
  // SIGINT / SIGTERM (bench/lib/procs.ts and bench/lib/cluster.ts exit with 130 after killing their processes) or an
  // uncaught error: print and write what was measured so far.
  process.on('exit', () => {
    if (!finished && opts !== undefined && (rbResults.length > 0 || mixResults.length > 0)) finish(true);
  });
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
} else {
  void mixThreadMain(workerData as MixJob);
}
