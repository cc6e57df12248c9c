/**
 * Benchmark plumbing shared by the scripts in bench/: a registry of the child processes and temp dirs a benchmark
 * makes, spawning and stopping tracked processes (optionally logging to a file), finding a binary, free loopback
 * ports, polling servers until healthy, starting and stopping a Lockstep node and a redis-server as child processes,
 * running redis-benchmark and parsing its CSV, and printing a table plus a JSON result file.
 *
 * Invariants: every process spawned here (spawnTracked, startRedis, startLockstepNode, startFrontEndNode) is
 * registered until it has exited and is SIGKILLed when this process exits (normally, by SIGINT / SIGTERM / SIGHUP,
 * which exit with 130, or on an uncaught error); every temp dir made here (makeTempDir) is removed by its owner's
 * stop() and again on exit. A spawn that fails ('error', e.g. a missing binary) counts as an exit. Limits are named
 * constants below or parameters of the helpers.
 */
import { spawn, type ChildProcess, execFile, execFileSync, type SpawnOptions } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const exec = promisify(execFile);

/** Grace between SIGTERM and SIGKILL for the processes started by startRedis / startLockstepNode / startFrontEndNode. */
export const PROC_STOP_GRACE_MS = 5_000;
/** How long startRedis / startLockstepNode / startFrontEndNode wait for PING by default. */
export const PING_TIMEOUT_MS = 15_000;
/** Attempts distinctFreePorts makes by default (freePort can hand out the same port twice in a row). */
export const FREE_PORT_ATTEMPTS = 200;

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();

function cleanupSync(): void {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true, maxRetries: 3 });
}
process.on('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    console.error(`\n${sig}: stopping every process started by the benchmark`);
    process.exit(130);
  });
}

/** A new temp dir under the OS temp dir, removed by removeTempDir or on exit. */
export function makeTempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(d);
  return d;
}

export function removeTempDir(d: string): void {
  rmSync(d, { recursive: true, force: true, maxRetries: 3 });
  tempDirs.delete(d);
}

export interface ProcExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface TrackedProc {
  child: ChildProcess;
  /** Resolves once, when the process exited or could not be spawned ('error': code and signal null). */
  exited: Promise<ProcExit>;
}

/**
 * Spawns `bin args` and registers it until it exits. With logFile, stdout and stderr are appended to that file
 * (stdin ignored); otherwise options.stdio applies.
 */
export function spawnTracked(bin: string, args: string[], options: SpawnOptions & { logFile?: string } = {}): TrackedProc {
  const { logFile, ...spawnOptions } = options;
  let child: ChildProcess;
  if (logFile !== undefined) {
    const fd = openSync(logFile, 'a');
    try {
      child = spawn(bin, args, { ...spawnOptions, stdio: ['ignore', fd, fd] });
    } finally {
      closeSync(fd);
    }
  } else {
    child = spawn(bin, args, spawnOptions);
  }
  children.add(child);
  const exited = new Promise<ProcExit>((resolve) => {
    const done = (code: number | null, signal: NodeJS.Signals | null) => {
      children.delete(child);
      resolve({ code, signal });
    };
    child.once('exit', done);
    child.once('error', () => done(null, null));
  });
  return { child, exited };
}

/** SIGTERM, then SIGKILL after graceMs; resolves when the process has exited (at once if it already has). */
export async function stopProcess(child: ChildProcess, exited: Promise<unknown>, graceMs: number): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) {
    await exited;
    return;
  }
  const kill = (sig: NodeJS.Signals) => {
    try {
      child.kill(sig);
    } catch {
      // already gone
    }
  };
  kill('SIGTERM');
  const t = setTimeout(() => kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

/** The first of `defaults` that exists, else the first `name` on PATH; undefined when not installed. */
export function findBinary(name: string, defaults: readonly string[] = []): string | undefined {
  for (const b of defaults) if (existsSync(b)) return b;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir !== '' && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

/** The last `bytes` bytes of a log file, trimmed ('(no log)' when it cannot be read). */
export function logTail(file: string, bytes: number): string {
  try {
    return readFileSync(file, 'utf8').slice(-bytes).trim();
  } catch {
    return '(no log)';
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
}

/** n distinct free ports, drawing at most `attempts` times. */
export async function distinctFreePorts(n: number, attempts = FREE_PORT_ATTEMPTS): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < attempts && ports.length < n; i++) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  if (ports.length < n) throw new Error(`could not find ${n} distinct free ports`);
  return ports;
}

/** GET url and parse the body as JSON; undefined on any failure (refused, timeout, non-2xx, not JSON). */
export async function httpJson(url: string, timeoutMs: number): Promise<unknown> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    if (!res.ok) return undefined;
    return await res.json();
  } catch {
    return undefined;
  }
}

export interface HealthWait {
  timeoutMs: number;
  pollMs: number;
  /** The timeout error message, given the keys still pending. */
  timeoutMessage(pending: number[]): string;
  /** A reason to give up at once (e.g. a process exited), checked before every round. */
  failure?(): string | undefined;
}

/** Polls `healthy(key)` for every key, each round every pending one, until all are healthy; throws on timeout. */
export async function waitAllHealthy(keys: number[], healthy: (key: number) => Promise<boolean>, w: HealthWait): Promise<void> {
  const t0 = Date.now();
  const pending = new Set(keys);
  while (pending.size > 0) {
    if (Date.now() - t0 > w.timeoutMs) throw new Error(w.timeoutMessage([...pending]));
    const failed = w.failure?.();
    if (failed !== undefined) throw new Error(failed);
    for (const k of [...pending]) if (await healthy(k)) pending.delete(k);
    if (pending.size > 0) await new Promise((r) => setTimeout(r, w.pollMs));
  }
}

export async function waitForPing(port: number, timeoutMs = PING_TIMEOUT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const { stdout } = await exec('redis-cli', ['-p', String(port), 'PING'], { timeout: 2000 });
      if (stdout.trim() === 'PONG') return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server on port ${port} did not answer PING within ${timeoutMs} ms`);
}

export interface Proc {
  port: number;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** A tracked process on `port`; stop() ends it and then removes `dir` (its temp dir), if any. */
function asProc(t: TrackedProc, port: number, dir?: string): Proc {
  return {
    port,
    child: t.child,
    async stop() {
      await stopProcess(t.child, t.exited, PROC_STOP_GRACE_MS);
      if (dir !== undefined) removeTempDir(dir);
    },
  };
}

/** Waits for PING; on failure stops the process (and removes its dir) before rethrowing. */
async function pinged(p: Proc): Promise<Proc> {
  try {
    await waitForPing(p.port);
  } catch (err) {
    await p.stop();
    throw err;
  }
  return p;
}

export async function startRedis(opts: { appendfsync?: 'always' | 'everysec' | 'no' } = {}): Promise<Proc> {
  const port = await freePort();
  const dir = makeTempDir('bench-redis-');
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir];
  if (opts.appendfsync) args.push('--appendonly', 'yes', '--appendfsync', opts.appendfsync);
  else args.push('--appendonly', 'no');
  return pinged(asProc(spawnTracked('redis-server', args, { stdio: 'ignore' }), port, dir));
}

export async function startLockstepNode(extraArgs: string[] = [], nodeFlags: string[] = []): Promise<Proc> {
  const port = await freePort();
  const dir = makeTempDir('bench-lockstep-');
  const t = spawnTracked(
    process.execPath,
    [...nodeFlags, 'bin/lockstep.js', 'node', '--port', String(port), '--data-dir', dir, '--log-level', 'warn', ...extraArgs],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  return pinged(asProc(t, port, dir));
}

export interface BenchRow {
  test: string;
  rps: number;
  p50Ms: number;
  p99Ms: number;
}

/** Runs redis-benchmark with --csv and returns one row per test. */
export async function redisBenchmark(port: number, args: string[]): Promise<BenchRow[]> {
  const { stdout } = await exec('redis-benchmark', ['-p', String(port), '--csv', ...args], {
    timeout: 600_000,
    maxBuffer: 1 << 26,
  });
  const rows: BenchRow[] = [];
  for (const line of stdout.split('\n')) {
    const cells = line.split('","').map((c) => c.replace(/^"|"$/g, ''));
    if (cells.length < 7 || cells[0] === 'test') continue;
    rows.push({ test: cells[0]!, rps: Number(cells[1]), p50Ms: Number(cells[4]), p99Ms: Number(cells[6]) });
  }
  return rows;
}

/** Linux's usual clock ticks per second, used when `getconf CLK_TCK` cannot be run. */
const CLK_TCK_DEFAULT = 100;
let clockTicksPerSecond: number | undefined;

/**
 * CPU time (user + system, seconds) process `pid` has used so far, all its threads together, read from
 * /proc/<pid>/stat (Linux); undefined where there is no /proc or the process is gone. Sampled around a run, it gives a
 * server's CPU cost per request, a figure that the neighbours of a shared machine disturb far less than throughput
 * (they take CPU away from the server; they do not make its requests cost more CPU).
 */
export function processCpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // Fields after the command name, which is in parentheses and may hold spaces: state is field 3, utime 14, stime 15.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return undefined;
  if (clockTicksPerSecond === undefined) {
    try {
      clockTicksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'latin1' }).trim()) || CLK_TCK_DEFAULT;
    } catch {
      clockTicksPerSecond = CLK_TCK_DEFAULT;
    }
  }
  return (utime + stime) / clockTicksPerSecond;
}

export function printTable(headers: string[], rows: (string | number)[][]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells: (string | number)[]) => cells.map((c, i) => String(c).padStart(widths[i]!)).join('  ');
  console.log(line(headers));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) console.log(line(r));
}

export function writeResult(name: string, data: unknown): string {
  mkdirSync('bench/results', { recursive: true });
  const file = join('bench/results', `${name}.json`);
  writeFileSync(file, JSON.stringify(data, null, 2) + '\n');
  console.log(`\nJSON: ${file}`);
  console.log(JSON.stringify(data));
  return file;
}

export function argValue(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

/** The RESP front end + node-local store only (bench/lib/front-end-node.ts), for measuring that layer. */
export async function startFrontEndNode(extraArgs: string[] = [], nodeFlags: string[] = []): Promise<Proc> {
  const port = await freePort();
  const t = spawnTracked(process.execPath, [...nodeFlags, 'dist/bench/lib/front-end-node.js', '--port', String(port), '--log-level', 'warn', ...extraArgs], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return pinged(asProc(t, port));
}

/** bench/lib/floor-node.ts as a child process: the floor of a Node RESP server on this machine (see that file). */
export async function startFloorNode(): Promise<Proc> {
  const port = await freePort();
  const t = spawnTracked(process.execPath, ['dist/bench/lib/floor-node.js', '--port', String(port)], { stdio: ['ignore', 'ignore', 'inherit'] });
  return pinged(asProc(t, port));
}

/** The repository root: the nearest directory above this compiled file holding bin/lockstep.js. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'bin/lockstep.js'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('bin/lockstep.js not found above this script');
    dir = up;
  }
  return dir;
}
