/**
 * NATS peer plumbing for the benchmarks (used by bench/queues.ts): finding the nats-server binary, starting an
 * N-server NATS cluster with JetStream (file storage) on loopback (free client, cluster-route and monitoring ports,
 * one config file and one store dir per server under one temp root), waiting until every server's /healthz says
 * ok (in 2.9 that needs JetStream enabled and current with the meta leader), and stopping the servers.
 *
 * Invariants: every nats-server started here is registered (bench/lib/procs.ts) until it has exited and is SIGKILLed
 * when this process exits (normally, by SIGINT/SIGTERM/SIGHUP, or on an uncaught error); the temp root is removed on
 * stop(), when the start fails, and again on exit. A server's stdout/stderr go to a log file in the temp root; a
 * failed start reports the tail of each log before the root is removed. Limits are named constants below.
 */
import { type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
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

/** Where Debian's nats-server package puts the binary; PATH is searched when it is not there. */
export const NATS_DEFAULT_BINS = ['/usr/sbin/nats-server', '/usr/bin/nats-server'];
/** How long all servers may take to report healthy (routes up, JetStream meta leader known) after spawning. */
export const NATS_START_TIMEOUT_MS = 30_000;
/** Health polling: interval, and the timeout of one /healthz request. */
export const NATS_HEALTH_POLL_MS = 200;
export const NATS_HEALTH_REQUEST_TIMEOUT_MS = 2_000;
/** Grace between SIGTERM and SIGKILL when stopping a server. */
export const NATS_STOP_GRACE_MS = 10_000;
/** JetStream limits per server (file store on the temp root, small memory store: the streams use files). */
export const NATS_MAX_FILE_STORE = '8GB';
export const NATS_MAX_MEMORY_STORE = '256MB';
/** Bytes of each server's log quoted when the start fails. */
const LOG_TAIL_BYTES = 1_500;
/** Attempts to draw distinct free ports (freePort can hand out the same port twice in a row). */
const PORT_ATTEMPTS = 300;

/** The nats-server binary: a Debian location, else the first `nats-server` on PATH; undefined when not installed. */
export function findNatsServer(): string | undefined {
  return findBinary('nats-server', NATS_DEFAULT_BINS);
}

export interface NatsServerInfo {
  name: string;
  pid: number;
  clientPort: number;
  clusterPort: number;
  monitorPort: number;
  /** nats://127.0.0.1:port, the form the nats client's `servers` takes. */
  url: string;
}

export interface NatsExit {
  name: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when it exited before stop() asked it to. */
  unexpected: boolean;
}

export interface NatsCluster {
  servers: NatsServerInfo[];
  urls: string[];
  /** Server exits seen so far. */
  exits: NatsExit[];
  /** Milliseconds from spawning to every server healthy. */
  startMs: number;
  stop(): Promise<NatsExit[]>;
}

export interface NatsOptions {
  bin: string;
  servers: number;
}

async function healthy(monitorPort: number): Promise<boolean> {
  const body = (await httpJson(`http://127.0.0.1:${monitorPort}/healthz`, NATS_HEALTH_REQUEST_TIMEOUT_MS)) as { status?: unknown } | undefined;
  return body?.status === 'ok';
}

/** nats-server's config syntax takes JSON-style quoted strings. */
const q = (s: string) => JSON.stringify(s);

/** Starts `servers` nats-server processes forming one JetStream cluster and waits until each reports healthy. */
export async function startNatsCluster(o: NatsOptions): Promise<NatsCluster> {
  const ports = await distinctFreePorts(3 * o.servers, PORT_ATTEMPTS);
  const root = makeTempDir('bench-nats-');
  const specs = Array.from({ length: o.servers }, (_, i) => ({
    name: `n${i + 1}`,
    clientPort: ports[3 * i]!,
    clusterPort: ports[3 * i + 1]!,
    monitorPort: ports[3 * i + 2]!,
  }));
  const exits: NatsExit[] = [];
  let stopping = false;
  const procs: { server: NatsServerInfo; child: ChildProcess; exited: Promise<void>; log: string }[] = [];
  const stopAll = async (): Promise<NatsExit[]> => {
    stopping = true;
    await Promise.all(procs.map((p) => stopProcess(p.child, p.exited, NATS_STOP_GRACE_MS)));
    removeTempDir(root);
    return exits;
  };
  const t0 = Date.now();
  try {
    for (const s of specs) {
      const storeDir = join(root, s.name);
      mkdirSync(storeDir);
      const routes = specs.filter((x) => x !== s).map((x) => q(`nats-route://127.0.0.1:${x.clusterPort}`));
      const conf = join(root, `${s.name}.conf`);
      writeFileSync(
        conf,
        [
          `server_name: ${q(s.name)}`,
          `listen: ${q(`127.0.0.1:${s.clientPort}`)}`,
          `http: ${q(`127.0.0.1:${s.monitorPort}`)}`,
          `jetstream {`,
          `  store_dir: ${q(storeDir)}`,
          `  max_file_store: ${NATS_MAX_FILE_STORE}`,
          `  max_memory_store: ${NATS_MAX_MEMORY_STORE}`,
          `}`,
          `cluster {`,
          `  name: "bench"`,
          `  listen: ${q(`127.0.0.1:${s.clusterPort}`)}`,
          `  routes: [${routes.join(', ')}]`,
          `}`,
          '',
        ].join('\n'),
      );
      const log = join(root, `${s.name}.log`);
      const t = spawnTracked(o.bin, ['-c', conf], { logFile: log });
      const exited = t.exited.then(({ code, signal }) => {
        exits.push({ name: s.name, code, signal, unexpected: !stopping });
      });
      procs.push({ server: { ...s, pid: t.child.pid ?? -1, url: `nats://127.0.0.1:${s.clientPort}` }, child: t.child, exited, log });
    }
    await waitAllHealthy(
      specs.map((s) => s.monitorPort),
      healthy,
      {
        timeoutMs: NATS_START_TIMEOUT_MS,
        pollMs: NATS_HEALTH_POLL_MS,
        timeoutMessage: (pending) => `nats-servers with monitor ports ${pending.join(',')} not healthy within ${NATS_START_TIMEOUT_MS} ms`,
        failure: () => (exits.length > 0 ? `nats-server(s) exited while starting: ${JSON.stringify(exits)}` : undefined),
      },
    );
  } catch (err) {
    const tails = procs.map((p) => `--- ${p.server.name}.log ---\n${logTail(p.log, LOG_TAIL_BYTES)}`).join('\n');
    await stopAll();
    throw new Error(`${(err as Error).message}\n${tails}`);
  }
  const servers = procs.map((p) => p.server);
  return { servers, urls: servers.map((s) => s.url), exits, startMs: Date.now() - t0, stop: stopAll };
}
