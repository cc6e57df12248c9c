/**
 * Lock benchmark: Lockstep's LOCK.ACQUIRE / LOCK.RELEASE on a 3-node cluster vs a single redis-server
 * (appendfsync always, unreplicated) and a 3-member etcd 3.4 cluster, same machine, same run.
 *
 * Scenarios, each run for a fixed window (--seconds, default 10) after an unmeasured warm-up (WARMUP_MS):
 *   A "distinct"   --clients (default 50) clients, each looping acquire + release on its own lock name.
 *   B "contended"  the same clients on ONE lock name; adds hand-off fairness (per-client grant counts, min / max /
 *                  Jain's index), hand-offs/s and the hand-off gap (previous holder starts releasing -> next grant).
 * Systems:
 *   lockstep  LOCK.ACQUIRE name owner MODE EXCLUSIVE TTL 30000 WAIT 5000 (A) / 10000 (B), then LOCK.RELEASE name
 *             owner TOKEN t; plain ioredis connections. Fencing tokens are checked to grow per lock name. If the build
 *             answers "unknown command" the Lockstep part is skipped. Routing (--routing, default both, leader first):
 *               leader  each client connects to the node leading its lock's shard (CLUSTER KEYSLOT of the name, then
 *                       CLUSTER SLOTS), as a cluster-aware client does: nothing is forwarded;
 *               any     client i on node i % 3, as a client that ignores the topology: 2/3 of the commands are
 *                       forwarded to the leader's node and back.
 *             The first routing listed is the one the ratios and targets use; the forwarded share is printed.
 *   redis     A: SET lock-i owner NX PX 30000, then DEL. B: a SPIN lock (Redis has no fair queued lock): SET NX PX,
 *             retried every SPIN_RETRY_MS until WAIT, released by a Lua compare-and-delete (EVALSHA). Single
 *             unreplicated server; measured before and after Lockstep (the table uses the mean; both are in the JSON).
 *   etcd      the etcd3 npm client's Lock (`client.lock(name).ttl(30).acquire()` / `release()`), one client per client
 *             thread over the 3 members. NOTE: that Lock is a TRY-lock (lease grant + txn create==0 put, plus a lease
 *             keepalive stream; on failure it revokes the lease and throws), not the Go concurrency.Mutex queue, so B
 *             spins like Redis (each failed try costs three Raft writes), retrying every SPIN_RETRY_MS until WAIT.
 * Client threads: one Node thread driving 50 ioredis connections saturates a core at ~12-14k Redis lock cycles/s on
 * this machine, so the clients are split over --client-threads worker threads (default: the core count, at most 4; this
 * same file is the thread entry; the runner is bench/lib/client-threads.ts). Every system gets the same client set-up.
 * On the contended lock the threads check mutual exclusion through shared memory (the holder is cleared just before the
 * release is sent, so a grant seen while another client holds it is a real violation) and fencing-token order.
 * Reported per run: cycles/s (acquire + release pairs started in and finished within the window), acquire latency
 * p50/p99/max (acquires that completed within the window, including WAIT time and spin retries), not-granted
 * acquires, errors, CPU of this client process (all threads) and of the servers (/proc), ratios, and the issue's
 * targets computed from the figures (never hard-coded): distinct >= 20,000 cycles/s, distinct p99 < 10 ms at 50
 * clients, distinct >= 0.5x single Redis. Writes bench/results/locks-<timestamp>.json (bench/lib/procs.ts writeResult).
 *
 *   npm run bench:locks -- [--seconds 10] [--clients 50] [--only A|B] [--skip-redis] [--skip-etcd]
 *                          [--skip-lockstep] [--client-threads N] [--workers N] [--shards 16] [--fsync batch]
 *                          [--routing leader,any]
 *                          [--max-minutes M]
 *
 * Invariants: every loop is bounded by time (window + WAIT + DRAIN_MARGIN_MS, then connections are closed; a client
 * thread that still does not report is terminated); every process started is stopped in finally blocks, and on exit /
 * SIGINT by bench/lib/cluster.ts (Lockstep, redis-server) and bench/lib/procs.ts (etcd, started by bench/lib/etcd.ts).
 * The nodes run the CLI of the tree this file was compiled into.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { isMainThread, workerData } from 'node:worker_threads';
import { Redis } from 'ioredis';
import { argValue, printTable, repoRoot, writeResult } from './lib/procs.js';
import {
  clientThreadMain,
  type ClientWindow,
  type ThreadLoops,
  connectResp,
  dealClients,
  DRAIN_MARGIN_MS,
  fmtMs,
  latency,
  nowAbs,
  runClientThreads,
  sleep,
  WARMUP_MS,
  type CounterDeltas,
  type Latency,
} from './lib/client-threads.js';
import {
  nodeCounters,
  requireRedisTools,
  startCluster,
  startRedisAof,
  waitClusterOk,
  waitLeadersStable,
  type LockstepCluster,
  type LogSummary,
  type NodeExit,
} from './lib/cluster.js';
import { findEtcd, startEtcdCluster, type EtcdCluster, type EtcdExit } from './lib/etcd.js';

/** The nodes run the CLI of the tree this file was compiled into (dist/ under npm run bench:locks). */
const cliMain = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

// ---- named limits ----
const NODES = 3;
const ETCD_MEMBERS = 3;
/** Lock TTL (Lockstep, Redis PX) and the etcd lease TTL (whole seconds). */
const LOCK_TTL_MS = 30_000;
const ETCD_TTL_S = 30;
/** WAIT per scenario: how long one acquire may wait (queue for Lockstep, spin for Redis and etcd). */
const WAIT_MS = { A: 5_000, B: 10_000 } as const;
/** Sleep between two tries of a spin lock (Redis, etcd). */
const SPIN_RETRY_MS = 1;
/*
 * Warm-up (WARMUP_MS), connection set-up bound and drain margins: bench/lib/client-threads.ts. After the window,
 * loops get WAIT + DRAIN_MARGIN_MS to finish their current cycle before their connections are closed.
 */
/** Per-command timeout on RESP clients and per-call gRPC deadline on etcd: the longest WAIT plus this. */
const COMMAND_MARGIN_MS = 10_000;
const COMMAND_TIMEOUT_MS = Math.max(WAIT_MS.A, WAIT_MS.B) + COMMAND_MARGIN_MS;
/** A loop sleeps this long after an error before trying again (no hot error loops). */
const ERROR_BACKOFF_MS = 10;
/** Error messages kept per run (per client thread, then merged). */
const ERROR_SAMPLES_MAX = 5;
/** Targets from the issue (Lockstep, scenario A). */
const TARGET_DISTINCT_CPS = 20_000;
const TARGET_P99_MS = 10;
const TARGET_CLIENTS = 50;
const TARGET_REDIS_RATIO = 0.5;

type Scenario = 'A' | 'B';
const SCENARIO_NAME: Record<Scenario, string> = { A: 'distinct', B: 'contended' };
type SystemName = 'lockstep' | 'redis' | 'etcd';
/** Lockstep only: clients connect to their lock's shard leader, or to node i % 3 (see the header). */
type Routing = 'leader' | 'any';

/** The lock client `id` uses in `scenario`: its own name (A) or the one contended name (B). */
function lockName(scenario: Scenario, id: number): string {
  return scenario === 'A' ? `bench-lock-${id}` : 'bench-lock-contended';
}

// ---- client side (runs in the client threads) ----

interface Grant {
  granted: boolean;
  /** Fencing token (Lockstep only). */
  token?: number;
  /** Tries made (1 for a queued lock; spin locks count their retries). */
  tries: number;
}

/** One client's connection(s) to a system. */
interface Session {
  acquire(lock: string, waitMs: number): Promise<Grant>;
  /** True when the server says it released a lock this owner held. */
  release(lock: string, token: number | undefined): Promise<boolean>;
  close(): void;
}

function respClient(port: number): Promise<Redis> {
  return connectResp(port, COMMAND_TIMEOUT_MS);
}

async function lockstepSession(port: number, owner: string): Promise<Session> {
  const c = await respClient(port);
  return {
    async acquire(lock, waitMs) {
      const r = await c.call('LOCK.ACQUIRE', lock, owner, 'MODE', 'EXCLUSIVE', 'TTL', String(LOCK_TTL_MS), 'WAIT', String(waitMs));
      return r === null ? { granted: false, tries: 1 } : { granted: true, token: Number(r), tries: 1 };
    },
    async release(lock, token) {
      const args = token === undefined ? [] : ['TOKEN', String(token)];
      return (await c.call('LOCK.RELEASE', lock, owner, ...args)) === 1;
    },
    close: () => c.disconnect(),
  };
}

const COMPARE_AND_DELETE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

async function redisSession(port: number, owner: string, scenario: Scenario): Promise<Session> {
  const c = await respClient(port);
  const sha = String(await c.call('SCRIPT', 'LOAD', COMPARE_AND_DELETE));
  return {
    async acquire(lock, waitMs) {
      const deadline = performance.now() + waitMs;
      let tries = 0;
      for (;;) {
        tries++;
        if ((await c.set(lock, owner, 'PX', LOCK_TTL_MS, 'NX')) === 'OK') return { granted: true, tries };
        if (performance.now() + SPIN_RETRY_MS >= deadline) return { granted: false, tries };
        await sleep(SPIN_RETRY_MS);
      }
    },
    async release(lock) {
      if (scenario === 'A') return (await c.del(lock)) === 1;
      return (await c.evalsha(sha, 1, lock, owner)) === 1;
    },
    close: () => c.disconnect(),
  };
}

type Etcd3Module = typeof import('etcd3');
type Etcd3Client = InstanceType<Etcd3Module['Etcd3']>;
type EtcdLock = ReturnType<Etcd3Client['lock']>;

function etcdSession(etcd: Etcd3Module, client: Etcd3Client): Session {
  const held = new Map<string, EtcdLock>();
  let closed = false;
  return {
    async acquire(name, waitMs) {
      const deadline = performance.now() + waitMs;
      let tries = 0;
      for (;;) {
        if (closed) throw new Error('session closed');
        tries++;
        const l = client.lock(name).ttl(ETCD_TTL_S);
        try {
          await l.acquire();
          held.set(name, l);
          return { granted: true, tries };
        } catch (err) {
          if (!(err instanceof etcd.EtcdLockFailedError)) throw err;
        }
        if (performance.now() + SPIN_RETRY_MS >= deadline) return { granted: false, tries };
        await sleep(SPIN_RETRY_MS);
      }
    },
    async release(name) {
      const l = held.get(name);
      if (l === undefined) return false;
      held.delete(name);
      await l.release();
      return true;
    },
    close() {
      closed = true;
    },
  };
}

/** Where a client thread connects. */
interface Target {
  system: SystemName;
  /** lockstep: every node's port (client i uses node i % n, unless clientPorts says); redis: one port. */
  ports?: number[];
  /** lockstep, leader routing: the port of client i's lock's shard leader, by client id. */
  clientPorts?: number[];
  /** etcd: host:port of every member. */
  endpoints?: string[];
}

/** What a client thread is given (workerData). */
interface ThreadJob {
  target: Target;
  scenario: Scenario;
  clientIds: number[];
  /**
   * Shared between the client threads of one run. i32: [0] current holder of the contended lock (client + 1, 0 =
   * none), [1] previous grantee (client + 1), [2] abort flag. b64: [0] last fencing token of the contended lock,
   * [1] when the last holder started releasing (wall-clock microseconds).
   */
  i32: SharedArrayBuffer;
  b64: SharedArrayBuffer;
}

interface ThreadReport {
  acquireLat: number[];
  gapLat: number[];
  grants: [number, number][];
  cycles: number;
  notGranted: number;
  errors: number;
  errorSamples: string[];
  releaseMisses: number;
  violations: number;
  tokenRegressions: number;
  handoffs: number;
  tries: number;
  grantCount: number;
  drainTimedOut: boolean;
  aborted?: string;
}

function threadMain(job: ThreadJob): Promise<void> {
  const { scenario, target } = job;
  const waitMs = WAIT_MS[scenario];
  const i32 = new Int32Array(job.i32);
  const b64 = new BigInt64Array(job.b64);
  const sessions: Session[] = [];
  let closeShared = () => {};
  const open = async (): Promise<void> => {
    if (target.system === 'etcd') {
      const etcd = await import('etcd3');
      const client = new etcd.Etcd3({
        hosts: target.endpoints!,
        // Bound every unary call; streams (lease keepalive, watch) keep no deadline.
        defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + COMMAND_TIMEOUT_MS }),
      });
      closeShared = () => client.close();
      for (const _ of job.clientIds) sessions.push(etcdSession(etcd, client));
    } else {
      const ports = target.ports!;
      for (const id of job.clientIds) {
        sessions.push(
          target.system === 'lockstep'
            ? await lockstepSession(target.clientPorts?.[id] ?? ports[id % ports.length]!, `owner-${id}`)
            : await redisSession(ports[0]!, `owner-${id}`, scenario),
        );
      }
    }
  };

  const start = ({ startAt, endAt }: ClientWindow): ThreadLoops<ThreadReport> => {
    const r: ThreadReport = {
      acquireLat: [], gapLat: [], grants: [], cycles: 0, notGranted: 0, errors: 0, errorSamples: [], releaseMisses: 0,
      violations: 0, tokenRegressions: 0, handoffs: 0, tries: 0, grantCount: 0, drainTimedOut: false,
    };
    const grants = new Map<number, number>(job.clientIds.map((id) => [id, 0]));
    const lastToken = new Map<string, number>();
    const noteError = (err: unknown) => {
      r.errors++;
      const msg = (err as Error)?.message ?? String(err);
      if (/unknown command/i.test(msg)) {
        r.aborted = `unknown command: ${msg.slice(0, 200)}`;
        Atomics.store(i32, 2, 1);
      }
      if (r.errorSamples.length < ERROR_SAMPLES_MAX) r.errorSamples.push(msg.slice(0, 300));
    };
    const running = () => Atomics.load(i32, 2) === 0 && performance.now() < endAt;

    const loop = async (k: number): Promise<void> => {
      const s = sessions[k]!;
      const id = job.clientIds[k]!;
      const lock = lockName(scenario, id);
      while (running()) {
        const a0 = performance.now();
        let g: Grant;
        try {
          g = await s.acquire(lock, waitMs);
        } catch (err) {
          noteError(err);
          await sleep(ERROR_BACKOFF_MS);
          continue;
        }
        const a1 = performance.now();
        const measured = a0 >= startAt && a1 <= endAt;
        if (!g.granted) {
          if (measured) r.notGranted++;
          continue;
        }
        if (scenario === 'B') {
          if (Atomics.exchange(i32, 0, id + 1) !== 0) r.violations++;
          const prev = Atomics.exchange(i32, 1, id + 1);
          if (measured && prev !== 0 && prev !== id + 1) {
            r.handoffs++;
            r.gapLat.push(a1 + performance.timeOrigin - Number(Atomics.load(b64, 1)) / 1000);
          }
          if (g.token !== undefined) {
            const before = Atomics.exchange(b64, 0, BigInt(g.token));
            if (before !== 0n && BigInt(g.token) <= before) r.tokenRegressions++;
          }
        } else if (g.token !== undefined) {
          const before = lastToken.get(lock);
          if (before !== undefined && g.token <= before) r.tokenRegressions++;
          lastToken.set(lock, g.token);
        }
        if (measured) {
          r.acquireLat.push(a1 - a0);
          grants.set(id, grants.get(id)! + 1);
          r.grantCount++;
          r.tries += g.tries;
        }
        if (scenario === 'B') {
          // Give the lock up (client side) before asking the server, so a grant seen after this is legitimate.
          Atomics.store(b64, 1, BigInt(Math.round(nowAbs() * 1000)));
          Atomics.store(i32, 0, 0);
        }
        try {
          if (!(await s.release(lock, g.token))) r.releaseMisses++;
        } catch (err) {
          noteError(err);
          await sleep(ERROR_BACKOFF_MS);
          continue;
        }
        if (a0 >= startAt && performance.now() <= endAt) r.cycles++;
      }
    };

    return {
      loops: Promise.all(sessions.map((_, k) => loop(k))),
      report(drainTimedOut) {
        r.drainTimedOut = drainTimedOut;
        r.grants = [...grants];
        return r;
      },
    };
  };

  return clientThreadMain<ThreadReport>({
    open,
    start,
    drainMs: waitMs + DRAIN_MARGIN_MS,
    close: () => {
      for (const s of sessions) s.close();
    },
    afterClose: () => closeShared(),
  });
}

// ---- main thread ----

interface Fairness {
  grantsPerClient: number[];
  min: number;
  max: number;
  /** Jain's fairness index over per-client grants: 1 = perfectly even, 1/n = one client got everything. */
  jain: number;
  handoffs: number;
  handoffsPerSec: number;
  /** Previous holder starts its release -> next holder's grant arrives. */
  handoffGap: Latency;
}

interface RunResult {
  system: SystemName;
  /** Lockstep: how clients picked their node. */
  routing?: Routing;
  scenario: Scenario;
  pass?: 'before' | 'after';
  clients: number;
  clientThreads: number;
  windowS: number;
  cycles: number;
  cyclesPerSec: number;
  acquire: Latency;
  notGranted: number;
  errors: number;
  errorSamples: string[];
  releaseMisses: number;
  exclusionViolations: number;
  tokenRegressions: number;
  triesPerGrant: number | null;
  fairness?: Fairness;
  /** % of one core used by this process (all client threads) over the window. */
  clientCpuPct: number;
  /** % of one core used by the server processes (sum) over the window; null when unknown. */
  serverCpuPct: number | null;
  drainTimedOut: boolean;
  aborted?: string;
  /** Lockstep: INFO counter deltas over the window, summed over the nodes. */
  counters?: CounterDeltas;
}

interface RunSpec {
  target: Target;
  routing?: Routing;
  scenario: Scenario;
  pass?: 'before' | 'after';
  serverPids: number[];
  /** Lockstep: node ports whose INFO counters are read around the window. */
  counterPorts?: number[];
}

/** Options, parsed on the main thread only (client threads get what they need in ThreadJob). */
interface Options {
  seconds: number;
  clients: number;
  clientThreads: number;
  scenarios: Scenario[];
  skipRedis: boolean;
  skipEtcd: boolean;
  skipLockstep: boolean;
  workers: number;
  shards: number;
  fsync: 'batch' | 'always' | 'never';
  /** Lockstep client routings to run, the first one used for ratios and targets. */
  routings: Routing[];
}
let opts: Options;

/**
 * One scenario on one system: the clients are split over the client threads, which open their connections, then
 * all start together; warm-up, fixed window, bounded drain. Throws only when the connections cannot be opened.
 */
async function runScenario(spec: RunSpec): Promise<RunResult> {
  const { scenario } = spec;
  const { clients, seconds } = opts;
  const waitMs = WAIT_MS[scenario];
  const nThreads = Math.min(opts.clientThreads, clients);
  const i32 = new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT);
  const b64 = new SharedArrayBuffer(2 * BigInt64Array.BYTES_PER_ELEMENT);
  const run = await runClientThreads<ThreadJob, ThreadReport>({
    entry: fileURLToPath(import.meta.url),
    jobs: dealClients(clients, nThreads).map((clientIds) => ({ target: spec.target, scenario, clientIds, i32, b64 })),
    seconds,
    drainMs: waitMs + DRAIN_MARGIN_MS,
    serverPids: spec.serverPids,
    ...(spec.counterPorts ? { counterPorts: spec.counterPorts } : {}),
  });
  const got = run.reports;
  const { missing, reportBoundMs: reportBound } = run;

  const sum = (f: (r: ThreadReport) => number) => got.reduce((s, r) => s + f(r), 0);
  const grantsPer = new Array<number>(clients).fill(0);
  for (const r of got) for (const [id, n] of r.grants) grantsPer[id] = n;
  const grantCount = sum((r) => r.grantCount);
  const aborted = got.find((r) => r.aborted !== undefined)?.aborted;
  const result: RunResult = {
    system: spec.target.system,
    ...(spec.routing ? { routing: spec.routing } : {}),
    scenario,
    ...(spec.pass ? { pass: spec.pass } : {}),
    clients,
    clientThreads: nThreads,
    windowS: Math.round(run.windowS * 1000) / 1000,
    cycles: sum((r) => r.cycles),
    cyclesPerSec: Math.round(sum((r) => r.cycles) / seconds),
    acquire: latency(got.flatMap((r) => r.acquireLat)),
    notGranted: sum((r) => r.notGranted),
    errors: sum((r) => r.errors),
    errorSamples: got.flatMap((r) => r.errorSamples).slice(0, ERROR_SAMPLES_MAX),
    releaseMisses: sum((r) => r.releaseMisses),
    exclusionViolations: sum((r) => r.violations),
    tokenRegressions: sum((r) => r.tokenRegressions),
    triesPerGrant: grantCount > 0 ? Math.round((sum((r) => r.tries) / grantCount) * 100) / 100 : null,
    clientCpuPct: run.clientCpuPct,
    serverCpuPct: run.serverCpuPct,
    drainTimedOut: got.some((r) => r.drainTimedOut) || missing > 0,
  };
  if (missing > 0) result.errorSamples.push(`${missing} client thread(s) did not report within ${reportBound} ms and were terminated`);
  if (aborted !== undefined) result.aborted = aborted;
  if (scenario === 'B') {
    const s = grantsPer.reduce((a, b) => a + b, 0);
    const sq = grantsPer.reduce((a, b) => a + b * b, 0);
    result.fairness = {
      grantsPerClient: grantsPer,
      min: Math.min(...grantsPer),
      max: Math.max(...grantsPer),
      jain: sq > 0 ? Math.round(((s * s) / (clients * sq)) * 1000) / 1000 : 0,
      handoffs: sum((r) => r.handoffs),
      handoffsPerSec: Math.round(sum((r) => r.handoffs) / seconds),
      handoffGap: latency(got.flatMap((r) => r.gapLat)),
    };
  }
  if (run.counters) result.counters = run.counters;
  return result;
}

// ---- passes ----

const results: RunResult[] = [];
const issues: string[] = [];
const notes: Record<SystemName, string> = { lockstep: '', redis: '', etcd: '' };
const infra: Record<string, unknown> = {};
const startedAt = new Date();
const load0 = loadavg();


/** "lockstep/leader" etc.: the system, and for Lockstep how clients were routed. */
function sysLabel(r: { system: SystemName; routing?: Routing }): string {
  return r.routing ? `${r.system}/${r.routing}` : r.system;
}

function oneLine(r: RunResult): string {
  const f = r.fairness
    ? `  grants min/max ${r.fairness.min}/${r.fairness.max} Jain ${r.fairness.jain} hand-offs/s ${r.fairness.handoffsPerSec}`
    : '';
  const bad = [
    r.notGranted ? `${r.notGranted} not granted` : '',
    r.errors ? `${r.errors} errors` : '',
    r.exclusionViolations ? `${r.exclusionViolations} EXCLUSION VIOLATIONS` : '',
    r.tokenRegressions ? `${r.tokenRegressions} TOKEN REGRESSIONS` : '',
    r.releaseMisses ? `${r.releaseMisses} release misses` : '',
    r.drainTimedOut ? 'drain timed out' : '',
    r.aborted ?? '',
  ].filter((x) => x !== '');
  return (
    `  ${r.routing ? `${r.routing.padEnd(6)} ` : ''}${r.scenario} ${SCENARIO_NAME[r.scenario].padEnd(9)} ${String(r.cyclesPerSec).padStart(7)} cycles/s  acquire p50 ${fmtMs(r.acquire.p50Ms)} ` +
    `p99 ${fmtMs(r.acquire.p99Ms)} max ${fmtMs(r.acquire.maxMs)} ms  cpu client ${r.clientCpuPct}% server ${r.serverCpuPct ?? '-'}%${f}` +
    (r.counters && r.counters.commands > 0 ? `  forwarded ${Math.round((100 * r.counters.forwarded) / r.counters.commands)}%` : '') +
    (bad.length ? `  [${bad.join(', ')}]` : '')
  );
}

function record(r: RunResult): void {
  results.push(r);
  console.log(oneLine(r));
  const tag = `${sysLabel(r)}${r.pass ? ` (${r.pass})` : ''} ${r.scenario}`;
  if (r.errors > 0) issues.push(`${tag}: ${r.errors} errors, e.g. ${r.errorSamples.slice(0, 2).join(' | ')}`);
  if (r.exclusionViolations > 0) issues.push(`${tag}: ${r.exclusionViolations} mutual-exclusion violations seen by the client`);
  if (r.tokenRegressions > 0) issues.push(`${tag}: ${r.tokenRegressions} fencing tokens that did not grow`);
  if (r.drainTimedOut) issues.push(`${tag}: loops did not finish within WAIT + ${DRAIN_MARGIN_MS} ms after the window; connections were closed`);
  if (r.counters && (r.counters.workerErrors > 0 || r.counters.failedCalls > 0 || r.counters.termBumps > 0)) {
    issues.push(`${tag}: ${r.counters.termBumps} Raft term bumps, ${r.counters.workerErrors} worker error replies, ${r.counters.failedCalls} failed calls (INFO)`);
  }
}

async function redisPass(port: number, pid: number | undefined, pass: 'before' | 'after'): Promise<void> {
  console.log(`redis-server (appendfsync always, single unreplicated instance), ${pass} Lockstep`);
  for (const scenario of opts.scenarios) {
    try {
      record(
        await runScenario({ target: { system: 'redis', ports: [port] }, scenario, pass, serverPids: pid === undefined ? [] : [pid] }),
      );
    } catch (err) {
      issues.push(`redis ${pass} ${scenario}: ${(err as Error).message}`);
      console.log(`  ! redis ${scenario}: ${(err as Error).message}`);
    }
  }
}

async function infoPid(port: number): Promise<number | undefined> {
  const c = await respClient(port);
  try {
    const m = /process_id:(\d+)/.exec(String(await c.call('INFO', 'server')));
    return m ? Number(m[1]) : undefined;
  } finally {
    c.disconnect();
  }
}

/**
 * For leader routing: by client id, the RESP port of the node leading the shard of the lock that client uses, from
 * CLUSTER KEYSLOT and CLUSTER SLOTS (what a cluster-aware client does; the leader map settled before this).
 */
async function leaderPorts(port: number, scenario: Scenario): Promise<number[]> {
  const c = await respClient(port);
  try {
    const slots = (await c.call('CLUSTER', 'SLOTS')) as [number, number, [string, number, ...unknown[]], ...unknown[]][];
    const out: number[] = [];
    for (let id = 0; id < opts.clients; id++) {
      const slot = Number(await c.call('CLUSTER', 'KEYSLOT', lockName(scenario, id)));
      const range = slots.find(([lo, hi]) => slot >= lo && slot <= hi);
      if (range === undefined) throw new Error(`CLUSTER SLOTS has no node for slot ${slot}`);
      out.push(Number(range[2][1]));
    }
    return out;
  } finally {
    c.disconnect();
  }
}

/** Runs the Lockstep scenarios; returns whether any ran (so Redis gets its second pass). */
async function lockstepPass(): Promise<boolean> {
  if (!existsSync(cliMain)) {
    const msg = `lockstep: ${cliMain} is missing (run \`npx tsc -p tsconfig.json\` first); skipped`;
    console.log(msg);
    issues.push(msg);
    notes.lockstep = 'not built';
    return false;
  }
  const t0 = Date.now();
  const rec: { ports?: number[]; startMs?: number; leaderSlots?: Record<string, number>; leadersSettled?: boolean; exits?: NodeExit[]; logs?: Record<number, LogSummary>; error?: string } = {};
  infra.lockstep = rec;
  let cluster: LockstepCluster | undefined;
  let ran = false;
  try {
    cluster = await startCluster({ cliMain, nodes: NODES, workers: opts.workers, shards: opts.shards, fsync: opts.fsync });
    const ports = cluster.nodes.map((n) => n.port);
    rec.ports = ports;
    await waitClusterOk(cluster);
    rec.startMs = Date.now() - t0;
    const leaders = await waitLeadersStable(cluster);
    rec.leaderSlots = leaders.slots;
    rec.leadersSettled = leaders.settled;
    if (!leaders.settled) issues.push(`lockstep: leader map not settled after ${leaders.ms} ms`);
    console.log(`Lockstep: ${NODES} nodes on ${ports.join(',')} (--workers ${opts.workers} --shards ${opts.shards} --fsync ${opts.fsync}), ready after ${rec.startMs} ms`);

    // Probe: does this build have LOCK.*?
    const probe = await respClient(ports[0]!);
    try {
      const tok = await probe.call('LOCK.ACQUIRE', 'bench-probe', 'bench-probe-owner', 'TTL', '1000', 'WAIT', '0');
      if (tok !== null) await probe.call('LOCK.RELEASE', 'bench-probe', 'bench-probe-owner', 'TOKEN', String(tok));
    } catch (err) {
      const msg = (err as Error).message;
      if (/unknown command/i.test(msg)) {
        console.log('lockstep: LOCK.* not available in this build');
        notes.lockstep = 'LOCK.* not available in this build';
      } else {
        console.log(`lockstep: LOCK.ACQUIRE probe failed: ${msg}`);
        notes.lockstep = `probe failed: ${msg}`;
        issues.push(`lockstep probe: ${msg}`);
      }
      return false;
    } finally {
      probe.disconnect();
    }

    const pids = (await Promise.all(ports.map((p) => infoPid(p)))).filter((p): p is number => p !== undefined);
    runs: for (const scenario of opts.scenarios) {
      for (const routing of opts.routings) {
        const clientPorts = routing === 'leader' ? await leaderPorts(ports[0]!, scenario) : undefined;
        const r = await runScenario({
          target: { system: 'lockstep', ports, ...(clientPorts ? { clientPorts } : {}) },
          routing,
          scenario,
          serverPids: pids.length === ports.length ? pids : [],
          counterPorts: ports,
        });
        ran = true;
        record(r);
        const crashed = cluster.exits.filter((e) => e.unexpected);
        if (crashed.length > 0) throw new Error(`node(s) exited during the run: ${JSON.stringify(crashed)}`);
        if (r.aborted) break runs;
      }
    }
  } catch (err) {
    rec.error = (err as Error).message;
    issues.push(`lockstep: ${rec.error}`);
    console.log(`  ! lockstep: ${rec.error}`);
  } finally {
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
  return ran;
}

async function etcdPass(): Promise<void> {
  const bin = findEtcd();
  if (bin === undefined) {
    console.log('etcd: not installed (apt-get install etcd-server)');
    notes.etcd = 'not installed';
    return;
  }
  try {
    await import('etcd3');
  } catch (err) {
    console.log(`etcd: the etcd3 npm package cannot be loaded (${(err as Error).message}); skipped`);
    notes.etcd = 'etcd3 package missing';
    return;
  }
  let version = '';
  try {
    version = execFileSync(bin, ['--version'], { encoding: 'utf8' }).split('\n')[0]?.trim() ?? '';
  } catch {
    // reported as unknown
  }
  const rec: { version: string; endpoints?: string[]; startMs?: number; exits?: EtcdExit[]; error?: string } = { version };
  infra.etcd = rec;
  let cluster: EtcdCluster | undefined;
  try {
    cluster = await startEtcdCluster({ bin, members: ETCD_MEMBERS });
    rec.endpoints = cluster.endpoints;
    rec.startMs = cluster.startMs;
    console.log(`etcd (${version}): ${ETCD_MEMBERS} members, clients on ${cluster.endpoints.join(',')}, healthy after ${cluster.startMs} ms`);
    const pids = cluster.members.map((m) => m.pid);
    for (const scenario of opts.scenarios) {
      record(await runScenario({ target: { system: 'etcd', endpoints: cluster.endpoints }, scenario, serverPids: pids }));
      const crashed = cluster.exits.filter((e) => e.unexpected);
      if (crashed.length > 0) throw new Error(`etcd member(s) exited during the run: ${JSON.stringify(crashed)}`);
    }
  } catch (err) {
    rec.error = (err as Error).message;
    issues.push(`etcd: ${rec.error.split('\n')[0]}`);
    console.log(`  ! etcd: ${rec.error}`);
  } finally {
    if (cluster) rec.exits = await cluster.stop();
  }
}

// ---- report ----

function pick(system: SystemName, scenario: Scenario, routing?: Routing): RunResult | undefined {
  const rs = results.filter(
    (r) => r.system === system && r.scenario === scenario && r.routing === routing && r.aborted === undefined && r.cycles > 0,
  );
  if (rs.length === 0) return undefined;
  if (rs.length === 1) return rs[0];
  // Redis before and after: mean throughput, and the worse latencies.
  const mean = (f: (r: RunResult) => number) => Math.round(rs.reduce((s, r) => s + f(r), 0) / rs.length);
  const worst = (f: (r: RunResult) => number | null) => Math.max(...rs.map((r) => f(r) ?? 0));
  return {
    ...rs[0]!,
    pass: undefined,
    cyclesPerSec: mean((r) => r.cyclesPerSec),
    acquire: { ...rs[0]!.acquire, p50Ms: worst((r) => r.acquire.p50Ms), p99Ms: worst((r) => r.acquire.p99Ms), maxMs: worst((r) => r.acquire.maxMs) },
    clientCpuPct: mean((r) => r.clientCpuPct),
    serverCpuPct: mean((r) => r.serverCpuPct ?? 0),
  };
}

function ratio(a: RunResult | undefined, b: RunResult | undefined): number | null {
  return a && b && b.cyclesPerSec > 0 ? Math.round((a.cyclesPerSec / b.cyclesPerSec) * 100) / 100 : null;
}

let finished = false;
function finish(partial: boolean): void {
  if (finished) return;
  finished = true;
  console.log(
    `\nLocks: ${opts.clients} clients on ${opts.clientThreads} client threads, ${opts.seconds} s window per run after ${WARMUP_MS} ms warm-up${partial ? '  [PARTIAL: deadline hit]' : ''}. ` +
      `Lockstep ${NODES} nodes --fsync ${opts.fsync} (replicated); redis appendfsync always (single, unreplicated; ` +
      `B is a spin lock); etcd ${ETCD_MEMBERS} members (etcd3 npm Lock: a try-lock, B spins).` +
      (results.some((r) => r.system === 'redis' && r.pass === 'after') ? ' Redis rows: mean of before/after cycles/s, worse latencies.' : '') +
      '\n',
  );
  const rows: (string | number)[][] = [];
  const systems: SystemName[] = ['lockstep', 'redis', 'etcd'];
  for (const scenario of opts.scenarios) {
    for (const [sys, routing] of systems.flatMap((x): [SystemName, Routing | undefined][] =>
      x === 'lockstep' ? opts.routings.map((rt): [SystemName, Routing] => [x, rt]) : [[x, undefined]],
    )) {
      const label = sysLabel({ system: sys, ...(routing ? { routing } : {}) });
      const r = pick(sys, scenario, routing);
      if (r === undefined) {
        const why = results.find((x) => x.system === sys && x.scenario === scenario && x.routing === routing)?.aborted ?? (notes[sys] || 'not run');
        rows.push([label, `${scenario} ${SCENARIO_NAME[scenario]}`, '-', '-', '-', '-', '-', '-', '-', why.slice(0, 60)]);
        continue;
      }
      const fair = r.fairness ? `min/max ${r.fairness.min}/${r.fairness.max} Jain ${r.fairness.jain} hand-offs/s ${r.fairness.handoffsPerSec}` : '';
      rows.push([
        label, `${scenario} ${SCENARIO_NAME[scenario]}`, r.cyclesPerSec, fmtMs(r.acquire.p50Ms), fmtMs(r.acquire.p99Ms), fmtMs(r.acquire.maxMs),
        r.notGranted + r.errors, `${r.clientCpuPct}%`, r.serverCpuPct === null ? '-' : `${r.serverCpuPct}%`, fair,
      ]);
    }
  }
  printTable(['system', 'scenario', 'cycles/s', 'acq p50 ms', 'p99 ms', 'max ms', 'fail', 'client cpu', 'server cpu', 'fairness (B)'], rows);
  console.log('fail = acquires not granted within WAIT + errors; cpu = % of one core over the window (client = this process).');

  const ratios: Record<string, number | null> = {};
  const primary = opts.routings[0]!;
  console.log(`\nratios (Lockstep cycles/s, ${primary} routing, over the peer, same run):`);
  for (const scenario of opts.scenarios) {
    const l = pick('lockstep', scenario, primary);
    for (const peer of ['redis', 'etcd'] as const) {
      const v = ratio(l, pick(peer, scenario));
      ratios[`${scenario}:lockstep/${peer}`] = v;
      console.log(`  ${scenario} ${SCENARIO_NAME[scenario].padEnd(9)} vs ${peer.padEnd(5)}: ${v === null ? '- (missing result)' : `${v}x`}`);
    }
  }

  const la = pick('lockstep', 'A', primary);
  const ra = pick('redis', 'A');
  const redisRatio = ratio(la, ra);
  const verdict = (ok: boolean | null) => (ok === null ? 'not measured' : ok ? 'met' : 'NOT met');
  const targets = [
    { name: `distinct >= ${TARGET_DISTINCT_CPS} cycles/s`, value: la?.cyclesPerSec ?? null, met: la ? la.cyclesPerSec >= TARGET_DISTINCT_CPS : null },
    { name: `distinct acquire p99 < ${TARGET_P99_MS} ms at ${TARGET_CLIENTS} clients`, value: la?.acquire.p99Ms ?? null, met: la && la.acquire.p99Ms !== null ? la.acquire.p99Ms < TARGET_P99_MS : null },
    { name: `distinct >= ${TARGET_REDIS_RATIO} x single Redis`, value: redisRatio, met: redisRatio === null ? null : redisRatio >= TARGET_REDIS_RATIO },
  ];
  console.log(`\ntargets (from the issue, Lockstep scenario A, ${primary} routing):`);
  for (const t of targets) console.log(`  ${t.name}: ${t.value ?? '-'} -> ${verdict(t.met)}`);
  if (opts.clients !== TARGET_CLIENTS) console.log(`  note: run with ${opts.clients} clients, the targets are stated for ${TARGET_CLIENTS}`);

  if (issues.length > 0) {
    console.log('\nissues seen:');
    for (const i of issues) console.log(`  - ${i}`);
  }
  const stamp = startedAt.toISOString().replace(/[:.]/g, '-');
  writeResult(`locks-${stamp}`, {
    when: startedAt.toISOString(),
    partial,
    durationS: Math.round((Date.now() - startedAt.getTime()) / 1000),
    machine: { cpus: cpus().length, loadavgStart: load0, loadavgEnd: loadavg() },
    options: { ...opts, warmupMs: WARMUP_MS, waitMs: WAIT_MS, lockTtlMs: LOCK_TTL_MS, spinRetryMs: SPIN_RETRY_MS },
    notes,
    results,
    ratios,
    targets,
    infra,
    issues,
  });
}

function parseOptions(): Options {
  const seconds = Number(argValue('seconds', '10'));
  const clients = Number(argValue('clients', '50'));
  const only = argValue('only', '').toUpperCase();
  const o: Options = {
    seconds,
    clients,
    clientThreads: Number(argValue('client-threads', String(Math.max(1, Math.min(4, availableParallelism()))))),
    scenarios: only === '' ? ['A', 'B'] : [only as Scenario],
    skipRedis: process.argv.includes('--skip-redis'),
    skipEtcd: process.argv.includes('--skip-etcd'),
    skipLockstep: process.argv.includes('--skip-lockstep'),
    // Same default as the node's --workers 0: max(1, min(8, cores / 2)).
    workers: Number(argValue('workers', String(Math.max(1, Math.min(8, Math.floor(availableParallelism() / 2)))))),
    shards: Number(argValue('shards', '16')),
    fsync: argValue('fsync', 'batch') as Options['fsync'],
    routings: argValue('routing', 'leader,any').split(',').filter((x) => x !== '') as Routing[],
  };
  const bad: string[] = [];
  if (!(seconds > 0)) bad.push('--seconds must be > 0');
  if (!Number.isInteger(clients) || clients < 1) bad.push('--clients must be a positive integer');
  if (!Number.isInteger(o.clientThreads) || o.clientThreads < 1) bad.push('--client-threads must be a positive integer');
  if (only !== '' && only !== 'A' && only !== 'B') bad.push('--only takes A or B');
  if (!['batch', 'always', 'never'].includes(o.fsync)) bad.push('--fsync takes batch, always or never');
  if (o.routings.length === 0 || o.routings.some((x) => x !== 'leader' && x !== 'any') || new Set(o.routings).size !== o.routings.length) {
    bad.push('--routing takes leader, any or both (comma-separated, the first one used for ratios and targets)');
  }
  if (bad.length > 0) {
    console.error(bad.join('\n'));
    process.exit(2);
  }
  return o;
}

async function main(): Promise<void> {
  opts = parseOptions();
  process.chdir(repoRoot());
  const { scenarios, seconds, clients, skipRedis, skipLockstep, skipEtcd } = opts;
  if (!skipRedis || !skipLockstep) await requireRedisTools();
  const runsPerSystem = scenarios.length;
  const lockstepRuns = scenarios.length * opts.routings.length;
  const perRunS = WARMUP_MS / 1000 + seconds + 1;
  const estimateS = Math.round(runsPerSystem * perRunS * ((skipRedis ? 0 : 2) + (skipEtcd ? 0 : 1)) + (skipLockstep ? 0 : lockstepRuns * perRunS + 30) + (skipEtcd ? 0 : 10));
  const maxMinutes = Number(argValue('max-minutes', String(Math.ceil((estimateS * 3) / 60) + 2)));
  console.log(
    `locks: scenarios ${scenarios.join(',')}, ${clients} clients on ${Math.min(clients, opts.clientThreads)} client threads, ${seconds} s each; ` +
      `estimated ~${Math.ceil(estimateS / 6) / 10} min, hard limit ${maxMinutes} min. Load average ${load0.map((x) => x.toFixed(2)).join(' ')} on ${cpus().length} cpus.\n`,
  );
  setTimeout(() => {
    console.error(`\nhard limit of ${maxMinutes} min reached: printing partial results and stopping everything`);
    finish(true);
    process.exit(2);
  }, maxMinutes * 60_000).unref();

  let redis: Awaited<ReturnType<typeof startRedisAof>> | undefined;
  try {
    let redisPid: number | undefined;
    if (!skipRedis) {
      redis = await startRedisAof();
      redisPid = await infoPid(redis.port);
      infra.redis = { port: redis.port, pid: redisPid };
      await redisPass(redis.port, redisPid, 'before');
    }
    const lockstepRan = skipLockstep ? false : await lockstepPass();
    if (redis && lockstepRan) await redisPass(redis.port, redisPid, 'after');
  } finally {
    if (redis) await redis.stop();
  }
  if (!skipEtcd) await etcdPass();
  finish(false);
}

if (isMainThread) {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
} else {
  void threadMain(workerData as ThreadJob);
}
