/**
 * etcd peer plumbing for the benchmarks (used by bench/locks.ts): finding the etcd binary, starting an N-member
 * etcd cluster on loopback (free client and peer ports, one temp data dir per member under one temp root), waiting
 * until every member's /health says true (which in etcd 3.4 needs an elected leader and no alarm), and stopping
 * the members by PID.
 *
 * Invariants: every etcd process started here is registered by PID until it has exited and is SIGKILLed when this
 * process exits (normally, by SIGINT/SIGTERM/SIGHUP, or on an uncaught error); the temp root is removed on stop(),
 * when the start fails, and again on exit. A member's stdout/stderr go to a log file in the temp root; a failed
 * start reports the tail of each log before the root is removed. Limits are named constants below.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { freePort } from './procs.js';

/** Where Debian's etcd-server puts the binary; PATH is searched when it is not there. */
export const ETCD_DEFAULT_BIN = '/usr/bin/etcd';
/** How long all members may take to report healthy (leader elected) after spawning. */
export const ETCD_START_TIMEOUT_MS = 30_000;
/** Health polling: interval, and the timeout of one /health request. */
export const ETCD_HEALTH_POLL_MS = 200;
export const ETCD_HEALTH_REQUEST_TIMEOUT_MS = 2_000;
/** Grace between SIGTERM and SIGKILL when stopping a member. */
export const ETCD_STOP_GRACE_MS = 10_000;
/** Bytes of each member's log quoted when the start fails. */
const LOG_TAIL_BYTES = 1_500;
/** Attempts to draw distinct free ports (freePort can hand out the same port twice in a row). */
const PORT_ATTEMPTS = 200;

const running = new Map<number, ChildProcess>();
const roots = new Set<string>();

function cleanupSync(): void {
  for (const [pid] of running) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const d of roots) rmSync(d, { recursive: true, force: true, maxRetries: 3 });
}
process.on('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    console.error(`\n${sig}: stopping every etcd member started by the benchmark`);
    process.exit(130);
  });
}

/** The etcd binary: /usr/bin/etcd, else the first `etcd` on PATH; undefined when not installed. */
export function findEtcd(): string | undefined {
  if (existsSync(ETCD_DEFAULT_BIN)) return ETCD_DEFAULT_BIN;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir !== '' && existsSync(join(dir, 'etcd'))) return join(dir, 'etcd');
  }
  return undefined;
}

export interface EtcdMember {
  name: string;
  pid: number;
  clientPort: number;
  peerPort: number;
  /** host:port, the form the etcd3 client's `hosts` takes. */
  endpoint: string;
}

export interface EtcdExit {
  name: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when it exited before stop() asked it to. */
  unexpected: boolean;
}

export interface EtcdCluster {
  members: EtcdMember[];
  endpoints: string[];
  /** Member exits seen so far. */
  exits: EtcdExit[];
  /** Milliseconds from spawning to every member healthy. */
  startMs: number;
  stop(): Promise<EtcdExit[]>;
}

export interface EtcdOptions {
  bin: string;
  members: number;
}

async function distinctFreePorts(n: number): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < PORT_ATTEMPTS && ports.length < n; i++) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  if (ports.length < n) throw new Error(`could not find ${n} distinct free ports`);
  return ports;
}

async function healthy(clientPort: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${clientPort}/health`, { signal: AbortSignal.timeout(ETCD_HEALTH_REQUEST_TIMEOUT_MS) });
    if (!res.ok) return false;
    const body = (await res.json()) as { health?: unknown };
    return body.health === 'true' || body.health === true;
  } catch {
    return false;
  }
}

function logTail(file: string): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.slice(-LOG_TAIL_BYTES).trim();
  } catch {
    return '(no log)';
  }
}

async function stopMember(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  const pid = child.pid;
  if (pid === undefined || child.exitCode !== null || child.signalCode !== null) {
    await exited;
    return;
  }
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    // already gone
  }
  const t = setTimeout(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, ETCD_STOP_GRACE_MS);
  await exited;
  clearTimeout(t);
}

/** Starts `members` etcd members forming one new cluster and waits until each reports healthy. */
export async function startEtcdCluster(o: EtcdOptions): Promise<EtcdCluster> {
  const ports = await distinctFreePorts(2 * o.members);
  const root = mkdtempSync(join(tmpdir(), 'bench-etcd-'));
  roots.add(root);
  const token = `bench-${process.pid}-${Date.now()}`;
  const specs = Array.from({ length: o.members }, (_, i) => ({ name: `m${i + 1}`, clientPort: ports[2 * i]!, peerPort: ports[2 * i + 1]! }));
  const initialCluster = specs.map((s) => `${s.name}=http://127.0.0.1:${s.peerPort}`).join(',');
  const exits: EtcdExit[] = [];
  let stopping = false;
  const procs: { member: EtcdMember; child: ChildProcess; exited: Promise<void>; log: string }[] = [];
  const stopAll = async (): Promise<EtcdExit[]> => {
    stopping = true;
    await Promise.all(procs.map((p) => stopMember(p.child, p.exited)));
    rmSync(root, { recursive: true, force: true, maxRetries: 3 });
    roots.delete(root);
    return exits;
  };
  const t0 = Date.now();
  try {
    for (const s of specs) {
      const dataDir = join(root, s.name);
      mkdirSync(dataDir);
      const log = join(root, `${s.name}.log`);
      const fd = openSync(log, 'a');
      const child = spawn(
        o.bin,
        [
          '--name', s.name, '--data-dir', dataDir,
          '--listen-client-urls', `http://127.0.0.1:${s.clientPort}`, '--advertise-client-urls', `http://127.0.0.1:${s.clientPort}`,
          '--listen-peer-urls', `http://127.0.0.1:${s.peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${s.peerPort}`,
          '--initial-cluster', initialCluster, '--initial-cluster-token', token, '--initial-cluster-state', 'new',
          '--logger', 'zap', '--log-outputs', 'stderr', '--log-level', 'warn',
        ],
        { stdio: ['ignore', fd, fd] },
      );
      closeSync(fd);
      // spawn reports a missing binary asynchronously via 'error' (and then no 'exit'); treat it as an exit.
      const exited = new Promise<void>((resolve) => {
        const done = (code: number | null, signal: NodeJS.Signals | null) => {
          if (child.pid !== undefined) running.delete(child.pid);
          exits.push({ name: s.name, code, signal, unexpected: !stopping });
          resolve();
        };
        child.once('exit', done);
        child.once('error', () => done(null, null));
      });
      if (child.pid !== undefined) running.set(child.pid, child);
      procs.push({ member: { ...s, pid: child.pid ?? -1, endpoint: `127.0.0.1:${s.clientPort}` }, child, exited, log });
    }
    const pending = new Set(specs.map((s) => s.clientPort));
    while (pending.size > 0) {
      if (Date.now() - t0 > ETCD_START_TIMEOUT_MS) throw new Error(`etcd members on client ports ${[...pending].join(',')} not healthy within ${ETCD_START_TIMEOUT_MS} ms`);
      if (exits.length > 0) throw new Error(`etcd member(s) exited while starting: ${JSON.stringify(exits)}`);
      for (const port of [...pending]) if (await healthy(port)) pending.delete(port);
      if (pending.size > 0) await new Promise((r) => setTimeout(r, ETCD_HEALTH_POLL_MS));
    }
  } catch (err) {
    const tails = procs.map((p) => `--- ${p.member.name}.log ---\n${logTail(p.log)}`).join('\n');
    await stopAll();
    throw new Error(`${(err as Error).message}\n${tails}`);
  }
  const members = procs.map((p) => p.member);
  return { members, endpoints: members.map((m) => m.endpoint), exits, startMs: Date.now() - t0, stop: stopAll };
}
