/**
 * Cluster benchmark plumbing (used by bench/cluster-vs-redis.ts): checking the Redis tools are installed,
 * starting a redis-server with an append-only file, starting and stopping a 3-node Lockstep cluster on free
 * loopback ports, waiting for `cluster_state:ok` and a settled leader map, and running redis-benchmark with a
 * timeout while keeping its exit code and stderr (so errors and stalls are reported, not silently dropped).
 *
 * Invariants: every process started here is registered until it has exited and is SIGKILLed when this process
 * exits (normally, by a signal, or on an uncaught error); every temp dir made here is removed on stop and again on
 * exit. Node stdout/stderr go to a log file in the node's temp dir; stop() summarises the warn+ lines before the
 * dir is removed. Limits are named constants below.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, waitForPing, type BenchRow } from './procs.js';

const exec = promisify(execFile);

/** How long a cluster may take to answer PING on every node. */
export const NODE_START_TIMEOUT_MS = 30_000;
/** How long a cluster may take to report cluster_state:ok on every node. */
export const CLUSTER_OK_TIMEOUT_MS = 60_000;
/** Leader map polling: it must be unchanged for this many consecutive polls, this far apart, within the bound. */
export const LEADERS_STABLE_POLLS = 3;
export const LEADERS_POLL_MS = 500;
export const LEADERS_STABLE_TIMEOUT_MS = 20_000;
/** Grace between SIGTERM and SIGKILL when stopping a process. */
export const STOP_GRACE_MS = 10_000;
/** Gap between two nodes' first peer ports (worker w listens on peerPort + w). */
export const PEER_PORT_STRIDE = 100;
/** Peer-port blocks are picked in [PEER_PORT_MIN, PEER_PORT_MAX); attempts before giving up. */
const PEER_PORT_MIN = 20_000;
const PEER_PORT_MAX = 60_000;
const PEER_PORT_ATTEMPTS = 50;
/**
 * What `node -e` runs: process.argv = [node, cliMain, ...args], as bin/lockstep.js sees it. CommonJS on purpose:
 * `--input-type=module` would be inherited by the shard worker threads (execArgv) and break their ESM import.
 */
const CLI_ENTRY =
  "import(require('node:url').pathToFileURL(process.argv[1]).href).then(async (m) => {" +
  ' const code = await m.main(process.argv.slice(2)); if (code >= 0) process.exitCode = code; });';
/** Warn+ log lines kept as samples per node. */
const LOG_SAMPLES_MAX = 5;

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();

function cleanupSync(): void {
  for (const c of children) c.kill('SIGKILL');
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true, maxRetries: 3 });
}
process.on('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    console.error(`\n${sig}: stopping every process started by the benchmark`);
    process.exit(130);
  });
}

function makeTempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(d);
  return d;
}

function removeTempDir(d: string): void {
  rmSync(d, { recursive: true, force: true, maxRetries: 3 });
  tempDirs.delete(d);
}

function track(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  children.add(child);
  return new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    }),
  );
}

async function stopChild(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
  await exited;
  clearTimeout(t);
}

/** Exits with 1 and install instructions when redis-server, redis-benchmark or redis-cli is missing. */
export async function requireRedisTools(): Promise<void> {
  const missing: string[] = [];
  if (!existsSync('/usr/bin/redis-server')) {
    try {
      await exec('redis-server', ['--version']);
    } catch {
      missing.push('redis-server');
    }
  }
  for (const tool of ['redis-benchmark', 'redis-cli']) {
    try {
      await exec(tool, ['--version']);
    } catch {
      missing.push(tool);
    }
  }
  if (missing.length > 0) {
    console.error(`missing: ${missing.join(', ')}. Install them with:\n  sudo apt-get install -y redis-server redis-tools`);
    process.exit(1);
  }
}

export interface RedisAof {
  port: number;
  stop(): Promise<void>;
}

/** redis-server with `--appendonly yes --appendfsync always --save ''` in a temp dir, on a free port. */
export async function startRedisAof(): Promise<RedisAof> {
  const port = await freePort();
  const dir = makeTempDir('bench-cluster-redis-');
  const bin = existsSync('/usr/bin/redis-server') ? '/usr/bin/redis-server' : 'redis-server';
  const child = spawn(
    bin,
    ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'yes', '--appendfsync', 'always'],
    { stdio: 'ignore' },
  );
  const exited = track(child);
  await waitForPing(port);
  return {
    port,
    async stop() {
      await stopChild(child, exited);
      removeTempDir(dir);
    },
  };
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** First peer ports for `nodes` nodes, PEER_PORT_STRIDE apart, with ports base .. base+workers-1 free for each. */
async function peerPortBlock(nodes: number, workers: number): Promise<number[]> {
  const span = nodes * PEER_PORT_STRIDE;
  for (let attempt = 0; attempt < PEER_PORT_ATTEMPTS; attempt++) {
    const base = PEER_PORT_MIN + Math.floor((Math.random() * (PEER_PORT_MAX - PEER_PORT_MIN - span)) / PEER_PORT_STRIDE) * PEER_PORT_STRIDE;
    const firsts = Array.from({ length: nodes }, (_, i) => base + i * PEER_PORT_STRIDE);
    let ok = true;
    for (const f of firsts) for (let w = 0; w < workers && ok; w++) ok = await portFree(f + w);
    if (ok) return firsts;
  }
  throw new Error(`no free peer port block for ${nodes} nodes x ${workers} workers after ${PEER_PORT_ATTEMPTS} attempts`);
}

export interface LogSummary {
  /** warn / error / fatal lines logged before stop() was called. */
  warn: number;
  error: number;
  fatal: number;
  /** Non-JSON lines on stdout/stderr (stack traces, uncaught errors), whenever they came. */
  other: number;
  /** warn+ lines logged after stop() was called (peer links dropping at shutdown is expected there). */
  atStop: number;
  samples: string[];
  atStopSamples: string[];
}

export interface NodeExit {
  id: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when it exited before stop() asked it to. */
  unexpected: boolean;
}

export interface ClusterOptions {
  /**
   * The compiled CLI module (`<outDir>/src/cli/main.js`, exporting `main(argv)`) the nodes run. Running the tree the
   * benchmark was compiled into (not bin/lockstep.js, which always runs dist/) keeps a run consistent while
   * someone else rebuilds dist/.
   */
  cliMain: string;
  nodes: number;
  workers: number;
  shards: number;
  fsync: 'batch' | 'always' | 'never';
}

export interface ClusterNodeInfo {
  id: number;
  port: number;
  peerPort: number;
}

export interface LockstepCluster {
  nodes: ClusterNodeInfo[];
  /** Node exits seen so far (a crash shows up here with unexpected = true). */
  exits: NodeExit[];
  stop(): Promise<{ exits: NodeExit[]; logs: Record<number, LogSummary> }>;
}

/** Starts the nodes and waits until each answers PING (not yet cluster_state:ok: see waitClusterOk). */
export async function startCluster(o: ClusterOptions): Promise<LockstepCluster> {
  const ports: number[] = [];
  while (ports.length < o.nodes) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  const peerPorts = await peerPortBlock(o.nodes, o.workers);
  const nodes: ClusterNodeInfo[] = ports.map((port, i) => ({ id: i + 1, port, peerPort: peerPorts[i]! }));
  const peers = nodes.map((n) => `${n.id}@127.0.0.1:${n.port}:${n.peerPort}`).join(',');
  const dir = makeTempDir('bench-cluster-lockstep-');
  const exits: NodeExit[] = [];
  let stopping = false;
  const procs = nodes.map((n) => {
    const logFile = join(dir, `node${n.id}.log`);
    const fd = openSync(logFile, 'a');
    const child = spawn(
      process.execPath,
      [
        '-e', CLI_ENTRY, o.cliMain, 'node', '--id', String(n.id), '--port', String(n.port), '--peers', peers,
        '--data-dir', join(dir, `node${n.id}`), '--workers', String(o.workers), '--shards', String(o.shards),
        '--fsync', o.fsync, '--log-level', 'warn', '--log-format', 'json',
      ],
      { stdio: ['ignore', fd, fd] },
    );
    closeSync(fd);
    const exited = track(child).then((e) => {
      exits.push({ id: n.id, code: e.code, signal: e.signal, unexpected: !stopping });
    });
    return { n, child, exited, logFile };
  });
  const cluster: LockstepCluster = {
    nodes,
    exits,
    async stop() {
      stopping = true;
      const stopAt = Date.now();
      await Promise.all(procs.map((p) => stopChild(p.child, p.exited)));
      await Promise.all(procs.map((p) => p.exited));
      const logs: Record<number, LogSummary> = {};
      for (const p of procs) logs[p.n.id] = summariseLog(p.logFile, stopAt);
      removeTempDir(dir);
      return { exits, logs };
    },
  };
  try {
    await Promise.all(nodes.map((n) => waitForPing(n.port, NODE_START_TIMEOUT_MS)));
  } catch (err) {
    const { logs } = await cluster.stop();
    throw new Error(`${(err as Error).message}; node logs: ${JSON.stringify(logs)}`);
  }
  return cluster;
}

function summariseLog(file: string, stopAt: number): LogSummary {
  const s: LogSummary = { warn: 0, error: 0, fatal: 0, other: 0, atStop: 0, samples: [], atStopSamples: [] };
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return s;
  }
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let rec: { level?: unknown; time?: unknown };
    try {
      rec = JSON.parse(line) as { level?: unknown; time?: unknown };
    } catch {
      s.other++;
      if (s.samples.length < LOG_SAMPLES_MAX) s.samples.push(line.slice(0, 400));
      continue;
    }
    const level = Number(rec.level ?? 0);
    if (level < 40) continue;
    if (Number(rec.time ?? 0) >= stopAt) {
      s.atStop++;
      if (s.atStopSamples.length < LOG_SAMPLES_MAX) s.atStopSamples.push(line.slice(0, 400));
      continue;
    }
    if (level >= 60) s.fatal++;
    else if (level >= 50) s.error++;
    else s.warn++;
    if (s.samples.length < LOG_SAMPLES_MAX) s.samples.push(line.slice(0, 400));
  }
  return s;
}

async function cli(port: number, args: string[]): Promise<string> {
  const { stdout } = await exec('redis-cli', ['-p', String(port), ...args], { timeout: 5000 });
  return stdout;
}

/** Counters of one node from INFO, summed over its shard workers. */
export interface NodeCounters {
  commands: number;
  failedCalls: number;
  /** Requests the node's workers sent to another node's leader. */
  forwarded: number;
  /** Error replies its workers produced (NOTLEADER, TRYAGAIN, ...); the edge retries some, so not all reach clients. */
  workerErrors: number;
  /** Sum over the shards this node reports of their Raft term: its growth counts elections (and transfers). */
  termSum: number;
}

export async function nodeCounters(port: number): Promise<NodeCounters> {
  const c: NodeCounters = { commands: 0, failedCalls: 0, forwarded: 0, workerErrors: 0, termSum: 0 };
  for (const line of (await cli(port, ['INFO'])).split('\n')) {
    const l = line.trim();
    if (l.startsWith('total_commands_processed:')) c.commands = Number(l.split(':')[1]);
    else if (l.startsWith('failed_calls:')) c.failedCalls = Number(l.split(':')[1]);
    else if (/^shard\d+:/.test(l)) {
      const m = /(?:^|,|:)term=(\d+)/.exec(l);
      if (m) c.termSum += Number(m[1]);
    } else if (/^worker\d+:/.test(l)) {
      for (const kv of l.slice(l.indexOf(':') + 1).split(',')) {
        const [k, v] = kv.split('=');
        if (k === 'forwarded') c.forwarded += Number(v);
        else if (k === 'errors') c.workerErrors += Number(v);
      }
    }
  }
  return c;
}

/** Waits until every node answers CLUSTER INFO with cluster_state:ok; returns the time it took. */
export async function waitClusterOk(c: LockstepCluster, timeoutMs = CLUSTER_OK_TIMEOUT_MS): Promise<number> {
  const t0 = Date.now();
  const pending = new Set(c.nodes.map((n) => n.port));
  while (pending.size > 0) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`cluster_state not ok within ${timeoutMs} ms on ports ${[...pending].join(',')}`);
    if (c.exits.some((e) => e.unexpected)) throw new Error(`a node exited while starting: ${JSON.stringify(c.exits)}`);
    for (const port of [...pending]) {
      try {
        if ((await cli(port, ['CLUSTER', 'INFO'])).includes('cluster_state:ok')) pending.delete(port);
      } catch {
        // not answering yet
      }
    }
    if (pending.size > 0) await new Promise((r) => setTimeout(r, 200));
  }
  return Date.now() - t0;
}

/** Slots led per RESP port, from one node's CLUSTER NODES. */
export async function ledSlots(port: number): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const line of (await cli(port, ['CLUSTER', 'NODES'])).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const addr = f[1]!.split('@')[0]!;
    let n = 0;
    for (const r of f.slice(8)) {
      const [a, b] = r.split('-').map(Number);
      if (a === undefined || Number.isNaN(a)) continue;
      n += (b ?? a) - a + 1;
    }
    out[addr] = n;
  }
  return out;
}

/**
 * Waits (bounded) until node 1's view of who leads which slots is unchanged for LEADERS_STABLE_POLLS polls and
 * every node leads something (leader balancing moves leaders during the first seconds). Returns the last map and
 * whether it settled.
 */
export async function waitLeadersStable(c: LockstepCluster): Promise<{ slots: Record<string, number>; settled: boolean; ms: number }> {
  const t0 = Date.now();
  let last = '';
  let same = 0;
  let slots: Record<string, number> = {};
  while (Date.now() - t0 < LEADERS_STABLE_TIMEOUT_MS) {
    slots = await ledSlots(c.nodes[0]!.port);
    const key = JSON.stringify(slots);
    const everyNodeLeads = c.nodes.every((n) => (slots[`127.0.0.1:${n.port}`] ?? 0) > 0);
    same = key === last ? same + 1 : 1;
    last = key;
    if (same >= LEADERS_STABLE_POLLS && everyNodeLeads) return { slots, settled: true, ms: Date.now() - t0 };
    await new Promise((r) => setTimeout(r, LEADERS_POLL_MS));
  }
  return { slots, settled: false, ms: Date.now() - t0 };
}

export interface BenchRun {
  rows: BenchRow[];
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  elapsedMs: number;
  /** stderr, plus stdout lines that are not CSV (cluster-mode banners, errors), trimmed. */
  messages: string;
}

/** Runs redis-benchmark --csv with a hard timeout; never throws for a failed run (the caller reports it). */
export function runRedisBenchmark(port: number, args: string[], timeoutMs: number): Promise<BenchRun> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn('redis-benchmark', ['-h', '127.0.0.1', '-p', String(port), '--csv', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = track(child);
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      const rows: BenchRow[] = [];
      const other: string[] = [];
      for (const line of out.split('\n')) {
        if (line.trim() === '') continue;
        const cells = line.split('","').map((x) => x.replace(/^"|"$/g, ''));
        if (cells.length >= 7 && cells[0] !== 'test') {
          rows.push({ test: cells[0]!, rps: Number(cells[1]), p50Ms: Number(cells[4]), p99Ms: Number(cells[6]) });
        } else if (cells[0] !== 'test') other.push(line.trim());
      }
      const messages = [err.trim(), ...other].filter((x) => x !== '').join('\n').slice(0, 2000);
      resolve({ rows, code, signal, timedOut, elapsedMs: Date.now() - t0, messages });
    });
  });
}
