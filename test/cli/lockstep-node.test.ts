// The real CLI as a child process: `lockstep node` serves redis-cli and stops cleanly on SIGTERM and SIGINT.
import t from 'tap';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import { repoRoot } from '../support/repo-root.js';

const run = promisify(execFile);
const bin = join(repoRoot(), 'bin/lockstep.js');

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** `lockstep node` as a child process with JSON logs; resolves once it logged "ready" (or after 10 s). */
async function startNode(port: number, dataDir: string): Promise<{ child: ChildProcess; out: () => string; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [bin, 'node', '--port', String(port), '--data-dir', dataDir, '--log-format', 'json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  for (let i = 0; i < 200 && !out.includes('lockstep node ready'); i++) await new Promise((r) => setTimeout(r, 50));
  return { child, out: () => out, exited };
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`lockstep node serves redis-cli and exits 0 on ${signal}`, async (t) => {
    const port = await freePort();
    const dataDir = mkdtempSync(join(tmpdir(), 'lockstep-cli-'));
    const { child, out, exited } = await startNode(port, dataDir);
    t.match(out(), /"msg":"lockstep node ready"/, 'logs JSON lines with pino');
    const { stdout } = await run('redis-cli', ['-p', String(port), 'SET', 'k', 'v']);
    t.equal(stdout, 'OK\n');
    child.kill(signal);
    t.equal(await exited, 0, 'exit code 0');
    t.match(out(), /"msg":"stopped"/);
  });
}

t.test('lockstep node --help lists the options; a bad option exits 2 with a clear message', async (t) => {
  const { stdout } = await run(process.execPath, [bin, 'node', '--help']);
  t.match(stdout, /--port\s+RESP port/);
  t.match(stdout, /env LOCKSTEP_MAX_CLIENTS/);
  const bad = await run(process.execPath, [bin, 'node', '--port', 'x']).catch((e: { code: number; stderr: string }) => e);
  t.equal((bad as { code: number }).code, 2);
  t.match((bad as { stderr: string }).stderr, /lockstep: --port \(flag\): expected an integer, got "x"/);
  const unknown = await run(process.execPath, [bin, 'frobnicate']).catch((e: { code: number; stderr: string }) => e);
  t.equal((unknown as { code: number }).code, 2);
});

// A full disk under a real node: the WAL write fails with ENOSPC, the shard worker holding that WAL stops, and
// the node exits 70 (EXIT_WORKER_LOST) for its supervisor to restart it, instead of serving on with dead shards.
// Needs a tiny tmpfs, so root and mount(8); skipped (saying why) where mounting is not allowed.
const mountPoint = mkdtempSync(join(tmpdir(), 'lockstep-full-'));
const mounted: true | string = await run('mount', ['-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', mountPoint]).then(
  () => true as const,
  (e: Error) => `cannot mount a tmpfs here: ${e.message.split('\n')[0]}`,
);
t.test('lockstep node exits 70 when a shard worker dies on a full disk', { skip: mounted === true ? false : mounted }, async (t) => {
  t.teardown(() => run('umount', [mountPoint]).catch(() => undefined));
  const port = await freePort();
  const { child, out, exited } = await startNode(port, join(mountPoint, 'n1'));
  t.match(out(), /lockstep node ready/);
  // 100 KB values until the 3 MB disk is full; each SET waits for the WAL, so the failure shows within a few.
  const value = 'x'.repeat(100_000);
  let code: number | null | 'running' = 'running';
  for (let i = 0; i < 100 && code === 'running'; i++) {
    await new Promise<void>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => c.end(`*3\r\n$3\r\nSET\r\n$4\r\nk${String(i).padStart(3, '0')}\r\n$${value.length}\r\n${value}\r\n`));
      c.on('data', () => undefined);
      c.on('close', () => resolve());
      c.on('error', () => resolve());
    });
    code = await Promise.race([exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 20))]);
  }
  if (code === 'running') code = await Promise.race([exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 15_000))]);
  if (code === 'running') child.kill('SIGKILL');
  t.equal(code, 70, 'exit code 70 (EXIT_WORKER_LOST)');
  t.match(out(), /ENOSPC/, 'the cause is logged');
  t.match(out(), /"level":60[^\n]*shard worker \d failed[^\n]*cannot be served until this node restarts/, 'a fatal line names the worker');
});
