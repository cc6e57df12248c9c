/**
 * etcd peer plumbing for the benchmarks (used by bench/locks.ts): finding the etcd binary, starting an N-member
 * etcd cluster on loopback (free client and peer ports, one temp data dir per member under one temp root), waiting
 * until every member's /health says true (which in etcd 3.4 needs an elected leader and no alarm), and stopping
 * the members (SIGTERM, then SIGKILL after a grace).
 *
 * Invariants: every etcd process started here is registered (bench/lib/procs.ts) until it has exited and is
 * SIGKILLed when this process exits (normally, by SIGINT/SIGTERM/SIGHUP, or on an uncaught error); the temp root is
 * removed on stop(), when the start fails, and again on exit. A member's stdout/stderr go to a log file in the temp
 * root; a failed start reports the tail of each log before the root is removed. Limits are named constants below.
 */
import { type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  distinctFreePorts,
  findBinary,
  httpJson,
  logTail,
  makeTempDir,
  removeTempDir,
  spawnTracked,
  stopProcess,
  waitAllHealthy,
} from './procs.js';

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

/** The etcd binary: /usr/bin/etcd, else the first `etcd` on PATH; undefined when not installed. */
export function findEtcd(): string | undefined {
  return findBinary('etcd', [ETCD_DEFAULT_BIN]);
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

async function healthy(clientPort: number): Promise<boolean> {
  const body = (await httpJson(`http://127.0.0.1:${clientPort}/health`, ETCD_HEALTH_REQUEST_TIMEOUT_MS)) as { health?: unknown } | undefined;
  return body?.health === 'true' || body?.health === true;
}

/** Starts `members` etcd members forming one new cluster and waits until each reports healthy. */
export async function startEtcdCluster(o: EtcdOptions): Promise<EtcdCluster> {
  const ports = await distinctFreePorts(2 * o.members, PORT_ATTEMPTS);
  const root = makeTempDir('bench-etcd-');
  const token = `bench-${process.pid}-${Date.now()}`;
  const specs = Array.from({ length: o.members }, (_, i) => ({ name: `m${i + 1}`, clientPort: ports[2 * i]!, peerPort: ports[2 * i + 1]! }));
  const initialCluster = specs.map((s) => `${s.name}=http://127.0.0.1:${s.peerPort}`).join(',');
  const exits: EtcdExit[] = [];
  let stopping = false;
  const procs: { member: EtcdMember; child: ChildProcess; exited: Promise<void>; log: string }[] = [];
  const stopAll = async (): Promise<EtcdExit[]> => {
    stopping = true;
    await Promise.all(procs.map((p) => stopProcess(p.child, p.exited, ETCD_STOP_GRACE_MS)));
    removeTempDir(root);
    return exits;
  };
  const t0 = Date.now();
  try {
    for (const s of specs) {
      const dataDir = join(root, s.name);
      mkdirSync(dataDir);
      const log = join(root, `${s.name}.log`);
      const t = spawnTracked(
        o.bin,
        [
          '--name', s.name, '--data-dir', dataDir,
          '--listen-client-urls', `http://127.0.0.1:${s.clientPort}`, '--advertise-client-urls', `http://127.0.0.1:${s.clientPort}`,
          '--listen-peer-urls', `http://127.0.0.1:${s.peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${s.peerPort}`,
          '--initial-cluster', initialCluster, '--initial-cluster-token', token, '--initial-cluster-state', 'new',
          '--logger', 'zap', '--log-outputs', 'stderr', '--log-level', 'warn',
        ],
        { logFile: log },
      );
      const exited = t.exited.then(({ code, signal }) => {
        exits.push({ name: s.name, code, signal, unexpected: !stopping });
      });
      procs.push({ member: { ...s, pid: t.child.pid ?? -1, endpoint: `127.0.0.1:${s.clientPort}` }, child: t.child, exited, log });
    }
    await waitAllHealthy(
      specs.map((s) => s.clientPort),
      healthy,
      {
        timeoutMs: ETCD_START_TIMEOUT_MS,
        pollMs: ETCD_HEALTH_POLL_MS,
        timeoutMessage: (pending) => `etcd members on client ports ${pending.join(',')} not healthy within ${ETCD_START_TIMEOUT_MS} ms`,
        failure: () => (exits.length > 0 ? `etcd member(s) exited while starting: ${JSON.stringify(exits)}` : undefined),
      },
    );
  } catch (err) {
    const tails = procs.map((p) => `--- ${p.member.name}.log ---\n${logTail(p.log, LOG_TAIL_BYTES)}`).join('\n');
    await stopAll();
    throw new Error(`${(err as Error).message}\n${tails}`);
  }
  const members = procs.map((p) => p.member);
  return { members, endpoints: members.map((m) => m.endpoint), exits, startMs: Date.now() - t0, stop: stopAll };
}
