// `lockstep start` and `lockstep status` as real processes: a 3-node cluster comes up, serves redis-cli on any
// node, reports healthy, restarts a SIGKILLed node (which serves the data again), and stops on SIGINT with exit 0
// and no node left behind. `status` against nothing exits 1; bad launcher options exit 2. Bounded: every wait has
// a deadline and teardown kills whatever is still running.
import t from 'tap';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import { repoRoot } from '../support/repo-root.js';

const run = promisify(execFile);
const bin = join(repoRoot(), 'bin/lockstep.js');
const NODES = 3;
const WORKERS = 1;
/** Deadline of each readiness wait (2 busy cores, three processes starting). */
const WAIT_MS = 60_000;
/** Bound on the whole file (tap's default of 30 s is too tight for three real processes on busy cores). */
t.setTimeout(150_000);

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '127.0.0.1', port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/** Lowest ephemeral (outgoing connection) port: ports at or above it can be taken by any connection at any time. */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isSafeInteger(low) && low > 0 ? low : 32_768;
  } catch {
    return 32_768;
  }
}

/**
 * A base port P whose RESP ports P+1..P+N and peer ports P+10000+100*i+w are all free right now, every one below
 * the ephemeral range (so no outgoing connection of another process can grab one between this check and the bind).
 */
async function freeBasePort(): Promise<number> {
  const top = Math.min(ephemeralLow(), 65_536) - (10_000 + 100 * NODES + WORKERS);
  const low = 2_000;
  if (top <= low) throw new Error(`no room for a cluster below the ephemeral port range (${ephemeralLow()})`);
  for (let attempt = 0; attempt < 100; attempt++) {
    const base = low + Math.floor(Math.random() * (top - low));
    const ports: number[] = [];
    for (let i = 1; i <= NODES; i++) {
      ports.push(base + i);
      for (let w = 0; w < WORKERS; w++) ports.push(base + 10_000 + 100 * i + w);
    }
    let ok = true;
    for (const p of ports) if (!(await portFree(p))) ok = false;
    if (ok) return base;
  }
  throw new Error('no free base port found');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function redisCli(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await run('redis-cli', ['-p', String(port), ...args], { timeout: 10_000 });
  return stdout;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

interface Launcher {
  child: ChildProcess;
  output(): string;
  waitFor(re: RegExp, ms?: number): Promise<RegExpExecArray>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function launch(args: string[]): Launcher {
  const child = spawn(process.execPath, [bin, 'start', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return {
    child,
    output: () => out,
    async waitFor(re, ms = WAIT_MS) {
      const until = Date.now() + ms;
      for (;;) {
        const m = re.exec(out);
        if (m) return m;
        if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${re}; launcher output:\n${out.slice(-4000)}`);
        await sleep(50);
      }
    },
    exited,
  };
}

t.test('lockstep start runs a 3-node cluster: ready, redis-cli, status, restart after SIGKILL, clean stop', async (t) => {
  const base = await freeBasePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'lockstep-launcher-'));
  const pids = new Set<number>();
  const l = launch(['--nodes', String(NODES), '--base-port', String(base), '--data-dir', dataDir, '--workers', String(WORKERS), '--shards', '4', '--restart']);
  const nodePids = (): number[] => [
    ...[...l.output().matchAll(/^(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\d+)$/gm)].map((m) => Number(m[5])),
    ...[...l.output().matchAll(/node \d+ restarted \(pid (\d+)/g)].map((m) => Number(m[1])),
  ];
  t.teardown(async () => {
    // Even on failure: let the launcher stop its nodes (SIGINT, bounded), then SIGKILL whatever is left, including
    // nodes a SIGKILLed launcher could not stop.
    const exited = () => l.child.exitCode !== null || l.child.signalCode !== null;
    if (!exited()) {
      l.child.kill('SIGINT');
      let guard: NodeJS.Timeout | undefined;
      await Promise.race([l.exited, new Promise((r) => (guard = setTimeout(r, 15_000)))]);
      clearTimeout(guard);
      if (!exited()) {
        l.child.kill('SIGKILL');
        await l.exited;
      }
    }
    for (const pid of [...pids, ...nodePids()]) if (alive(pid)) process.kill(pid, 'SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  await l.waitFor(/^3\s+\d+\s+\d+\s+\S+\s+\d+$/m, 30_000);
  for (const pid of nodePids()) pids.add(pid);
  t.equal(pids.size, NODES, 'the table lists one pid per node');
  await l.waitFor(/Lockstep cluster ready/);
  // The hint is the launcher's next line, which may come in a later read than the "ready" line.
  t.ok(await l.waitFor(new RegExp(`try: redis-cli -c -p ${base + 1}`), 5_000), 'hint names node 1');
  t.match(l.output(), new RegExp(`^3\\s+${base + 3}\\s+${base + 10_300}\\s+\\S+node3\\s+\\d+$`, 'm'), 'node 3: RESP P+3, peer P+10300, data dir D/node3');
  t.match(l.output(), /^\[node1\] \d\d:\d\d:\d\d\.\d{3} INFO\s+lockstep node ready id=1 /m, 'pino JSON lines are printed readably with the node prefix');

  t.equal(await redisCli(base + 1, 'SET', 'k', 'v'), 'OK\n');
  t.equal(await redisCli(base + 3, 'GET', 'k'), 'v\n', 'another node serves the write');

  // A young cluster still moves leaders (balancing), and a shard in an election has no leader for a moment: ask
  // again until status is healthy (exit 0), within a deadline.
  const status = (...extra: string[]) => run(process.execPath, [bin, 'status', '--nodes', String(NODES), '--base-port', String(base), ...extra], { timeout: 30_000 });
  let st = await status().catch((e: { code: number; stdout: string }) => e);
  for (const until = Date.now() + WAIT_MS; (st as { code?: number }).code !== undefined && Date.now() < until; ) {
    await sleep(500);
    st = await status().catch((e: { code: number; stdout: string }) => e);
  }
  t.equal((st as { code?: number }).code, undefined, 'status exits 0');
  t.match(st.stdout, /3\/3 nodes up, 4\/4 shards with a leader: OK/);
  for (let i = 1; i <= NODES; i++) t.match(st.stdout, new RegExp(`^${i}\\s+127\\.0\\.0\\.1:${base + i}\\s+up\\s+\\d+\\s+\\d+\\s+cluster_state:`, 'm'), `node ${i} up`);
  t.match(st.stdout, /^3\s+12288-16383\s+\d\s+\d+\s+\d+/m, 'shard 3 with its slot range and a leader');
  const js = await status('--json').catch((e: { code: number; stdout: string }) => e);
  const doc = JSON.parse(js.stdout) as { ok: boolean; nodes: { up: boolean; pid: number }[]; shards: { leader: number | null }[] };
  t.equal(doc.ok, (js as { code?: number }).code === undefined, '--json: ok agrees with the exit code');
  t.same(doc.nodes.map((n) => n.up), [true, true, true]);
  t.same(new Set(doc.nodes.map((n) => n.pid)), pids, 'status reports the pids the launcher started');
  t.equal(doc.shards.length, 4);

  const victim = Number(/process_id:(\d+)/.exec(await redisCli(base + 2, 'INFO', 'server'))![1]);
  t.ok(pids.has(victim), 'INFO server process_id is a launcher child');
  process.kill(victim, 'SIGKILL');
  await l.waitFor(/\[launcher\] node 2 exited \(code null, signal SIGKILL\)/);
  const restarted = Number((await l.waitFor(/\[launcher\] node 2 restarted \(pid (\d+)/))[1]);
  pids.add(restarted);
  t.not(restarted, victim);
  let got = '';
  for (const until = Date.now() + WAIT_MS; got !== 'v\n' && Date.now() < until; ) {
    got = await redisCli(base + 2, 'GET', 'k').catch(() => '');
    if (got !== 'v\n') await sleep(200);
  }
  t.equal(got, 'v\n', 'the restarted node serves k again');
  t.equal(Number(/process_id:(\d+)/.exec(await redisCli(base + 2, 'INFO', 'server'))![1]), restarted);
  t.ok(l.child.exitCode === null, 'the launcher kept running');

  l.child.kill('SIGINT');
  let guard: NodeJS.Timeout | undefined;
  const { code } = await Promise.race([l.exited, new Promise<{ code: number }>((r) => (guard = setTimeout(() => r({ code: -1 }), 30_000)))]);
  clearTimeout(guard);
  t.equal(code, 0, 'launcher exits 0 on SIGINT');
  t.match(l.output(), /\[launcher\] every node has stopped/);
  for (const pid of pids) t.notOk(alive(pid), `node process ${pid} is gone`);
});

t.test('lockstep status with nothing listening exits 1 and says the nodes are down', async (t) => {
  const base = await freeBasePort();
  const r = await run(process.execPath, [bin, 'status', '--nodes', '3', '--base-port', String(base), '--timeout', '2000'], { timeout: 30_000 }).catch(
    (e: { code: number; stdout: string }) => e,
  );
  t.equal((r as { code?: number }).code, 1);
  for (let i = 1; i <= 3; i++) t.match((r as { stdout: string }).stdout, new RegExp(`^${i}\\s+127\\.0\\.0\\.1:${base + i}\\s+down\\s`, 'm'));
  t.match((r as { stdout: string }).stdout, /0\/3 nodes up.*NOT OK/);
});

t.test('lockstep start refuses bad options with exit 2 and a clear message', async (t) => {
  const cases: [string[], RegExp][] = [
    [['--nodes', '0'], /lockstep: start: --nodes: 0 is out of range \[1, 64\]/],
    [['--base-port', 'x'], /--base-port: expected an integer, got "x"/],
    [['--port', '7001'], /--port is set by the launcher/],
    [['--frobnicate', '1'], /unknown option --frobnicate/],
    [['--workers', 'many'], /--workers \(flag\): expected an integer, got "many"/],
  ];
  const results = await Promise.all(cases.map(([args]) => run(process.execPath, [bin, 'start', ...args], { timeout: 30_000 }).catch((e: { code: number; stderr: string }) => e)));
  cases.forEach(([args, re], k) => {
    t.equal((results[k] as { code?: number }).code, 2, args.join(' '));
    t.match((results[k] as { stderr: string }).stderr, re);
  });
});
