/**
 * Benchmark plumbing shared by the scripts in bench/: free loopback ports, starting and stopping a Lockstep node
 * and a redis-server as child processes, running redis-benchmark and parsing its CSV, and printing a table plus a
 * JSON result file. Every process started here is killed on exit.
 */
import { spawn, type ChildProcess, execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const exec = promisify(execFile);
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
}

export async function waitForPing(port: number, timeoutMs = 15_000): Promise<void> {
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

function track(child: ChildProcess, port: number): Proc {
  children.add(child);
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return {
    port,
    child,
    async stop() {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
      children.delete(child);
    },
  };
}

export async function startRedis(opts: { appendfsync?: 'always' | 'everysec' | 'no' } = {}): Promise<Proc> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'bench-redis-'));
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir];
  if (opts.appendfsync) args.push('--appendonly', 'yes', '--appendfsync', opts.appendfsync);
  else args.push('--appendonly', 'no');
  const child = spawn('redis-server', args, { stdio: 'ignore' });
  const p = track(child, port);
  await waitForPing(port);
  return p;
}

export async function startLockstepNode(extraArgs: string[] = [], nodeFlags: string[] = []): Promise<Proc> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'bench-lockstep-'));
  const child = spawn(
    process.execPath,
    [...nodeFlags, 'bin/lockstep.js', 'node', '--port', String(port), '--data-dir', dir, '--log-level', 'warn', ...extraArgs],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const p = track(child, port);
  await waitForPing(port);
  return p;
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
  const child = spawn(process.execPath, [...nodeFlags, 'dist/bench/lib/front-end-node.js', '--port', String(port), '--log-level', 'warn', ...extraArgs], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const p = track(child, port);
  await waitForPing(port);
  return p;
}
