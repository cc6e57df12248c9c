/**
 * Test support: a Lockstep cluster of real `lockstep node` child processes on loopback, for end-to-end fault tests.
 *
 * Owns: choosing free loopback ports (RESP and peer ports below the kernel's ephemeral range), one temp data dir per
 * node under one temp root, spawning / SIGTERM / SIGKILL / SIGSTOP / SIGCONT / restart of each node, waiting for
 * `CLUSTER INFO` cluster_state:ok on every live node, parsing `INFO raft`, the clients the tests open (ioredis plain
 * and Cluster, redis-cli), and each child's captured output (printed with t.comment when a test fails).
 *
 * Invariants:
 * - Every child this module spawns is killed (SIGCONT then SIGKILL) in `destroy()`, which `withCluster` always runs
 *   and `ProcCluster.start` also registers as a t.teardown; a process 'exit' hook SIGKILLs any child still alive if
 *   the test runner itself dies. The temp root is removed in `destroy()`.
 * - A node restarts on the same ports and data dir. After a start, the node's `INFO server` process_id must equal
 *   the child's pid, so a test never talks to some other process that happened to own the port.
 * - Children run with cwd = the temp root and with no LOCKSTEP_* environment variables, so neither a .env file nor
 *   the caller's environment changes their options.
 *
 * This file is also the children's entry point: run as a script (`node cluster-procs.js node --id ...`), it calls
 * the CLI's main() from the compiled tree it sits in (../../src/cli/main.js relative to itself), the way
 * bin/lockstep.js does for dist/. So the tests run the code of the same build (dist/ in CI, .build/<name>/ locally).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';

const SELF_URL = import.meta.url;
const CLI_MAIN_URL = new URL('../../src/cli/main.js', SELF_URL);

if (process.argv[1] !== undefined && pathToFileURL(resolve(process.argv[1])).href === SELF_URL) {
  const { main } = (await import(CLI_MAIN_URL.href)) as { main(argv: string[]): Promise<number> };
  const code = await main(process.argv.slice(2));
  if (code >= 0) process.exitCode = code;
}

/** Lines of output kept per node (all incarnations together); older lines are dropped. */
export const OUTPUT_LINES_MAX = 400;
/** Lines per node printed with t.comment when a test fails. */
export const OUTPUT_LINES_PRINTED = 150;
/** How long a started node may take to log "lockstep node ready". */
export const READY_TIMEOUT_MS = 30_000;
/** How long a SIGTERMed node may take to exit (the CLI forces exit after 5 s itself). */
export const STOP_TIMEOUT_MS = 15_000;
/** How long a SIGKILLed node may take to be reaped. */
export const KILL_TIMEOUT_MS = 5_000;
/** Default bound of waitClusterOk. */
export const CLUSTER_OK_TIMEOUT_MS = 30_000;
/** Per-command timeout of the admin clients (CLUSTER INFO, INFO): a SIGSTOPped node never answers. */
export const ADMIN_COMMAND_TIMEOUT_MS = 2_000;
/** redis-cli invocations are killed after this long. */
export const REDIS_CLI_TIMEOUT_MS = 10_000;
/** Ports are chosen in [PORT_LOW, PORT_HIGH): below Linux's default ephemeral range (32768+). */
const PORT_LOW = 12_000;
const PORT_HIGH = 32_000;
/** Cluster starts tried (each on new ports) when a node finds a port taken after the free-port check. */
const START_PORT_ATTEMPTS = 3;
/** Attempts at finding a free block of ports. */
const PORT_ATTEMPTS = 100;

/** The bits of a tap Test this module uses. */
export interface TestLike {
  comment(...args: unknown[]): void;
  teardown(fn: () => unknown): void;
  passing(): boolean;
}

export interface ClusterProcsOptions {
  nodes: number;
  workers: number;
  shards: number;
  fsync: 'batch' | 'always' | 'never';
  electionTimeoutMs: number;
  leaderWaitMs: number;
  requestTimeoutMs: number;
  /** More flags for every node. */
  extraFlags: string[];
}

export const CLUSTER_PROCS_DEFAULTS: ClusterProcsOptions = {
  nodes: 3,
  workers: 2,
  shards: 8,
  fsync: 'batch',
  electionTimeoutMs: 300,
  leaderWaitMs: 1500,
  requestTimeoutMs: 10_000,
  extraFlags: [],
};

export type NodeState = 'down' | 'running' | 'paused';

export interface ShardLine {
  shard: number;
  role: string;
  leader: number;
  term: number;
  commit: number;
  applied: number;
  lastIndex: number;
  keys: number;
}

export interface RaftInfo {
  leading: number;
  shards: ShardLine[];
}

/** Every child still alive, SIGKILLed if the test process exits without a teardown. */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of liveChildren) {
      try {
        c.kill('SIGCONT');
        c.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function portFree(port: number): Promise<boolean> {
  return new Promise((resolvePort) => {
    const s = net.createServer();
    s.once('error', () => resolvePort(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolvePort(true)));
  });
}

/** The error's code as a client sees it: the first word of a Redis error reply, else CLIENT:<start of the message>. */
export function errorCode(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  const m = /^([A-Z][A-Z_]+)(\s|$)/.exec(msg);
  if (m !== null && (err as { name?: string }).name === 'ReplyError') return m[1]!;
  return `CLIENT:${(msg.split(/[.(]/)[0] ?? msg).trim().slice(0, 40)}`;
}

export class NodeProc {
  child: ChildProcess | null = null;
  state: NodeState = 'down';
  incarnation = 0;
  /** The incarnation that last logged "lockstep node ready". */
  readyIncarnation = 0;
  /** Date.now() of the current incarnation's spawn, first output line and ready line (0 = not yet). */
  spawnedAt = 0;
  firstOutputAt = 0;
  readyAt = 0;
  lines: string[] = [];
  private exitWait: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | null = null;

  constructor(
    readonly id: number,
    readonly port: number,
    readonly peerPort: number,
    readonly dataDir: string,
  ) {}

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  record(chunk: string): void {
    for (const line of chunk.split('\n')) {
      if (line === '') continue;
      if (this.firstOutputAt === 0) this.firstOutputAt = Date.now();
      if (line.includes('"msg":"lockstep node ready"')) {
        this.readyIncarnation = this.incarnation;
        this.readyAt = Date.now();
      }
      this.lines.push(`[${this.incarnation}] ${line}`);
    }
    if (this.lines.length > OUTPUT_LINES_MAX) this.lines.splice(0, this.lines.length - OUTPUT_LINES_MAX);
  }

  attach(child: ChildProcess): void {
    this.child = child;
    this.incarnation++;
    this.spawnedAt = Date.now();
    this.firstOutputAt = this.readyAt = 0;
    this.state = 'running';
    liveChildren.add(child);
    child.stdout?.setEncoding('utf8');
    child.stderr?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => this.record(d));
    child.stderr?.on('data', (d: string) => this.record(d));
    this.exitWait = new Promise((resolveExit) => {
      child.once('exit', (code, signal) => {
        liveChildren.delete(child);
        if (this.child === child) this.state = 'down';
        this.record(`<exit code=${code} signal=${signal}>`);
        resolveExit({ code, signal });
      });
    });
  }

  /** Resolves with the exit of the current child (or at once when none runs); rejects after timeoutMs. */
  async exited(timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.exitWait === null) return { code: null, signal: null };
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`node ${this.id} (pid ${this.pid}) did not exit within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exitWait, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

export class ProcCluster {
  readonly nodes: NodeProc[];
  private admins = new Map<number, Redis>();
  private clients = new Set<Redis | Cluster>();
  private destroyed = false;

  private constructor(
    readonly opts: ClusterProcsOptions,
    readonly root: string,
    base: number,
  ) {
    this.nodes = [];
    for (let i = 1; i <= opts.nodes; i++) {
      this.nodes.push(new NodeProc(i, base + i, base + 100 + 10 * i, join(root, `node${i}`)));
    }
  }

  /** Picks ports and makes the temp root; starts nothing. Registers destroy() as a teardown. */
  static async create(t: TestLike, options: Partial<ClusterProcsOptions> = {}): Promise<ProcCluster> {
    installExitHook();
    const opts = { ...CLUSTER_PROCS_DEFAULTS, ...options };
    if (opts.workers > 9 || opts.nodes > 9) throw new Error('port layout holds at most 9 nodes of at most 9 workers');
    const base = await ProcCluster.pickBase(opts);
    const root = mkdtempSync(join(tmpdir(), 'lockstep-e2e-'));
    const c = new ProcCluster(opts, root, base);
    t.teardown(() => c.destroy());
    return c;
  }

  /**
   * create(), then starts every node and waits for cluster_state:ok everywhere. A node that finds one of its ports
   * taken (EADDRINUSE: another test file running in parallel picked overlapping ports between our check and the
   * bind) makes the whole cluster start again on new ports, up to START_PORT_ATTEMPTS times.
   */
  static async start(t: TestLike, options: Partial<ClusterProcsOptions> = {}): Promise<ProcCluster> {
    for (let attempt = 1; ; attempt++) {
      const c = await ProcCluster.create(t, options);
      try {
        await c.startAll();
        return c;
      } catch (err) {
        const retry = attempt < START_PORT_ATTEMPTS && String((err as Error).message).includes('EADDRINUSE');
        if (!retry) c.dumpOutput(t);
        await c.destroy();
        if (!retry) throw err;
        t.comment(`a port of the cluster was taken meanwhile (EADDRINUSE); starting again on new ports (attempt ${attempt + 1})`);
      }
    }
  }

  /**
   * Starts every node that is down, then waits for cluster_state:ok on every live node. Resolves with the time
   * until every started node was ready and the time until cluster_state:ok, both from the call, in ms, and per
   * started node a breakdown: spawn to its first output line (process start, module loading) and to "ready".
   */
  async startAll(): Promise<{ readyMs: number; okMs: number; detail: string }> {
    const t0 = Date.now();
    const starting = this.nodes.filter((n) => n.state === 'down');
    await Promise.all(starting.map((n) => this.startNode(n.id)));
    const readyMs = Date.now() - t0;
    await this.waitClusterOk();
    const detail = starting.map((n) => `node${n.id}: first output ${n.firstOutputAt - n.spawnedAt} ms, ready ${n.readyAt - n.spawnedAt} ms`).join('; ');
    return { readyMs, okMs: Date.now() - t0, detail };
  }

  private static async pickBase(opts: ClusterProcsOptions): Promise<number> {
    for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
      const base = PORT_LOW + 200 * Math.floor(Math.random() * ((PORT_HIGH - PORT_LOW) / 200 - 1));
      const ports: number[] = [];
      for (let i = 1; i <= opts.nodes; i++) {
        ports.push(base + i);
        for (let w = 0; w < opts.workers; w++) ports.push(base + 100 + 10 * i + w);
      }
      if ((await Promise.all(ports.map(portFree))).every(Boolean)) return base;
    }
    throw new Error(`no free block of ports in [${PORT_LOW}, ${PORT_HIGH}) after ${PORT_ATTEMPTS} attempts`);
  }

  get ids(): number[] {
    return this.nodes.map((n) => n.id);
  }

  node(id: number): NodeProc {
    const n = this.nodes[id - 1];
    if (n === undefined) throw new Error(`no node ${id}`);
    return n;
  }

  port(id: number): number {
    return this.node(id).port;
  }

  /** Ids of the nodes whose process runs and is not paused. */
  liveIds(): number[] {
    return this.nodes.filter((n) => n.state === 'running').map((n) => n.id);
  }

  get peersFlag(): string {
    return this.nodes.map((n) => `${n.id}@127.0.0.1:${n.port}:${n.peerPort}`).join(',');
  }

  flags(id: number): string[] {
    const n = this.node(id);
    const o = this.opts;
    return [
      '--id', String(id), '--port', String(n.port), '--peers', this.peersFlag, '--data-dir', n.dataDir,
      '--workers', String(o.workers), '--shards', String(o.shards), '--fsync', o.fsync,
      '--election-timeout', String(o.electionTimeoutMs), '--leader-wait', String(o.leaderWaitMs),
      '--request-timeout', String(o.requestTimeoutMs), '--log-format', 'json', ...o.extraFlags,
    ];
  }

  /** Spawns node `id` (same ports and data dir every time) and waits until it logs ready and answers as itself. */
  async startNode(id: number): Promise<void> {
    if (this.destroyed) throw new Error('cluster destroyed');
    const n = this.node(id);
    if (n.state !== 'down') throw new Error(`node ${id} is ${n.state}`);
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('LOCKSTEP_')) env[k] = v;
    const child = spawn(process.execPath, [fileURLToPath(SELF_URL), 'node', ...this.flags(id)], {
      cwd: this.root,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    n.attach(child);
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (n.child !== child || n.state === 'down') throw new Error(`node ${id} exited during start:\n${n.lines.slice(-20).join('\n')}`);
      if (n.readyIncarnation === n.incarnation) break;
      if (Date.now() > deadline) throw new Error(`node ${id} not ready within ${READY_TIMEOUT_MS} ms:\n${n.lines.slice(-20).join('\n')}`);
      await sleep(25);
    }
    const pid = Number((await this.info(id, 'server'))['process_id']);
    if (pid !== child.pid) throw new Error(`port ${n.port} answers as pid ${pid}, not node ${id}'s pid ${child.pid}`);
  }

  /** SIGKILL; resolves once the process is gone. */
  async kill(id: number): Promise<void> {
    const n = this.node(id);
    if (n.child === null || n.state === 'down') return;
    n.child.kill('SIGKILL');
    await n.exited(KILL_TIMEOUT_MS);
  }

  /** SIGTERM (a clean stop); resolves with the exit code. */
  async stop(id: number): Promise<number | null> {
    const n = this.node(id);
    if (n.child === null || n.state === 'down') return null;
    if (n.state === 'paused') n.child.kill('SIGCONT');
    n.child.kill('SIGTERM');
    const { code } = await n.exited(STOP_TIMEOUT_MS);
    return code;
  }

  pause(id: number): void {
    const n = this.node(id);
    if (n.child === null || n.state !== 'running') throw new Error(`node ${id} is ${n.state}`);
    n.child.kill('SIGSTOP');
    n.state = 'paused';
  }

  resume(id: number): void {
    const n = this.node(id);
    if (n.child === null || n.state !== 'paused') throw new Error(`node ${id} is ${n.state}`);
    n.child.kill('SIGCONT');
    n.state = 'running';
  }

  /** Stops `id` (SIGTERM) if it runs, then starts it again on the same ports and data dir. */
  async restart(id: number): Promise<void> {
    await this.stop(id);
    await this.startNode(id);
  }

  /** A client for status commands, reused; every command fails after ADMIN_COMMAND_TIMEOUT_MS. */
  admin(id: number): Redis {
    let r = this.admins.get(id);
    if (r === undefined) {
      r = new Redis({
        host: '127.0.0.1',
        port: this.port(id),
        enableReadyCheck: false,
        maxRetriesPerRequest: 1,
        commandTimeout: ADMIN_COMMAND_TIMEOUT_MS,
        retryStrategy: () => 100,
        lazyConnect: false,
      });
      r.on('error', () => {});
      this.admins.set(id, r);
    }
    return r;
  }

  /** INFO <section> of node `id` as key -> value. */
  async info(id: number, section: string): Promise<Record<string, string>> {
    const text = (await this.admin(id).call('INFO', section)) as string;
    const out: Record<string, string> = {};
    for (const line of text.split('\r\n')) {
      const i = line.indexOf(':');
      if (i > 0 && !line.startsWith('#')) out[line.slice(0, i)] = line.slice(i + 1);
    }
    return out;
  }

  /** INFO raft of node `id`, parsed. */
  async raft(id: number): Promise<RaftInfo> {
    const info = await this.info(id, 'raft');
    const shards: ShardLine[] = [];
    for (const [k, v] of Object.entries(info)) {
      const m = /^shard(\d+)$/.exec(k);
      if (m === null) continue;
      const f = Object.fromEntries(v.split(',').map((kv) => kv.split('=') as [string, string]));
      shards.push({
        shard: Number(m[1]),
        role: f['role'] ?? '',
        leader: Number(f['leader']),
        term: Number(f['term']),
        commit: Number(f['commit']),
        applied: Number(f['applied']),
        lastIndex: Number(f['last_index']),
        keys: Number(f['keys']),
      });
    }
    shards.sort((a, b) => a.shard - b.shard);
    return { leading: Number(info['raft_leading']), shards };
  }

  /** Waits until CLUSTER INFO says cluster_state:ok on every node in `ids` (default: the live ones). */
  async waitClusterOk(timeoutMs = CLUSTER_OK_TIMEOUT_MS, ids = this.liveIds()): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      const states = await Promise.all(
        ids.map(async (id) => {
          try {
            const text = (await this.admin(id).call('CLUSTER', 'INFO')) as string;
            return /cluster_state:ok/.test(text) ? 'ok' : 'fail';
          } catch (err) {
            return `error ${(err as Error).message}`;
          }
        }),
      );
      if (states.every((s) => s === 'ok')) return;
      last = ids.map((id, i) => `${id}:${states[i]}`).join(' ');
      if (Date.now() > deadline) throw new Error(`cluster_state not ok on every node within ${timeoutMs} ms (${last})`);
      await sleep(100);
    }
  }

  /** A plain ioredis client to node `id`, disconnected by destroy(). */
  client(id: number, options: RedisOptions = {}): Redis {
    const r = new Redis({ host: '127.0.0.1', port: this.port(id), enableReadyCheck: true, maxRetriesPerRequest: 1, ...options });
    r.on('error', () => {});
    this.clients.add(r);
    return r;
  }

  /** An ioredis Cluster client seeded with every node, disconnected by destroy(). */
  clusterClient(options: ClusterOptions = {}): Cluster {
    const c = new Cluster(
      this.nodes.map((n) => ({ host: '127.0.0.1', port: n.port })),
      { enableReadyCheck: true, slotsRefreshTimeout: 2000, ...options },
    );
    c.on('error', () => {});
    this.clients.add(c);
    return c;
  }

  /** Runs redis-cli against node `id`; resolves with its stdout (exit status 0 required). */
  redisCli(id: number, args: string[], opts: { cluster?: boolean } = {}): Promise<string> {
    const argv = ['-h', '127.0.0.1', '-p', String(this.port(id)), ...(opts.cluster === true ? ['-c'] : []), ...args];
    return new Promise((resolveCli, reject) => {
      execFile('redis-cli', argv, { timeout: REDIS_CLI_TIMEOUT_MS }, (err, stdout, stderr) => {
        if (err !== null) reject(new Error(`redis-cli ${argv.join(' ')}: ${err.message} ${stderr}`));
        else resolveCli(stdout);
      });
    });
  }

  /** Prints the tail of every node's output with t.comment. */
  dumpOutput(t: TestLike): void {
    for (const n of this.nodes) {
      t.comment(`---- node ${n.id} (port ${n.port}, state ${n.state}), last ${OUTPUT_LINES_PRINTED} lines ----\n${n.lines.slice(-OUTPUT_LINES_PRINTED).join('\n')}`);
    }
  }

  /** Disconnects every client, kills every child (paused ones too), removes the temp root. Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const c of this.clients) c.disconnect();
    for (const r of this.admins.values()) r.disconnect();
    for (const n of this.nodes) {
      if (n.child !== null && n.state !== 'down') {
        n.child.kill('SIGCONT');
        n.child.kill('SIGKILL');
      }
    }
    await Promise.all(this.nodes.map((n) => n.exited(KILL_TIMEOUT_MS).catch(() => undefined)));
    rmSync(this.root, { recursive: true, force: true });
  }
}

/**
 * Starts a cluster, runs `fn`, and always destroys the cluster; when the test failed (or `fn` threw) every node's
 * output tail is printed with t.comment first. An error thrown by `fn` is rethrown (tap reports it).
 */
export async function withCluster(t: TestLike, options: Partial<ClusterProcsOptions>, fn: (c: ProcCluster) => Promise<void>): Promise<void> {
  const c = await ProcCluster.start(t, options);
  let failed = false;
  try {
    await fn(c);
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    if (failed || !t.passing()) c.dumpOutput(t);
    await c.destroy();
  }
}
