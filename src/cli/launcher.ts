/**
 * `lockstep start`: the development launcher. Runs N `lockstep node` child processes on one machine as one
 * cluster, streams their logs (pino JSON turned into one readable line each, prefixed `[node<i>] `), waits until
 * every node reports `cluster_state:ok`, optionally restarts nodes that die, and stops them all on Ctrl-C.
 *
 * Layout (the launcher owns --id, --port, --peers, --data-dir and --log-format of every node):
 *   node i (1..N): RESP port P+i, peer ports P+10000+100*i .. +W-1 (worker w on +w), data dir D/node<i>.
 * Every other `--flag value` is passed verbatim to every node, after being validated as a node option (so a typo
 * fails here with exit code 2, not N times in the children).
 *
 * Invariants:
 *  - a child is never left behind by a clean stop: on SIGINT/SIGTERM/SIGHUP every live child gets SIGTERM,
 *    SIGKILL after KILL_AFTER_MS, and the launcher resolves (exit 0) only once every child has exited; a second
 *    signal SIGKILLs at once;
 *  - no restart is scheduled once stopping has begun, and pending restarts are cancelled;
 *  - restart backoff per node: BACKOFF_MIN_MS doubling to BACKOFF_MAX_MS, back to BACKOFF_MIN_MS when the node
 *    had stayed up BACKOFF_RESET_AFTER_MS;
 *  - if the launcher process exits any other way (a bug), every live child is SIGKILLed from the 'exit' hook;
 *  - readiness is polled with one short RESP connection per node per READY_POLL_MS (resp-probe), never more than
 *    one probe in flight per node.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { loadNodeOptions, NODE_OPTIONS, OptionError, splitArgs } from '../config/options.js';
import { infoFields, probe, ProbeError, replyText } from './resp-probe.js';
import { formatTable } from './status.js';

export const START_NODES_DEFAULT = 3;
/** Most nodes one launcher runs (each is a process with W worker threads). */
export const START_NODES_MAX = 64;
export const START_BASE_PORT_DEFAULT = 7000;
export const START_DATA_DIR_DEFAULT = './data';
export const START_WAIT_TIMEOUT_DEFAULT_MS = 60_000;
export const START_WAIT_TIMEOUT_MAX_MS = 24 * 3600_000;
/** Peer ports of node i start at base + PEER_PORT_OFFSET + PEER_PORT_STRIDE * i. */
export const PEER_PORT_OFFSET = 10_000;
export const PEER_PORT_STRIDE = 100;
export const BACKOFF_MIN_MS = 1_000;
export const BACKOFF_MAX_MS = 30_000;
export const BACKOFF_RESET_AFTER_MS = 60_000;
export const KILL_AFTER_MS = 10_000;
export const READY_POLL_MS = 250;
export const PROBE_TIMEOUT_MS = 2_000;

/** Node options the launcher sets per node; giving them to `start` is an error. */
const OWNED: Record<string, string> = {
  id: 'node ids are 1..--nodes',
  port: 'node i listens on --base-port + i',
  peers: 'the launcher lists every node',
  'peer-port': 'node i uses --base-port + 10000 + 100*i',
  'data-dir': 'give the launcher\'s --data-dir; node i uses <data-dir>/node<i>',
  'log-format': 'the launcher reads JSON logs and prints them readably',
};

export interface LauncherConfig {
  nodes: number;
  basePort: number;
  /** Absolute. */
  dataDir: string;
  restart: boolean;
  waitTimeoutMs: number;
  /** Node options passed verbatim to every node. */
  passthrough: string[];
  /** RESP/peer host of the nodes as clients reach them. */
  host: string;
  password: string;
  workers: number;
}

export const START_USAGE = `lockstep start: run a local Lockstep cluster for development (N node processes on this machine)

Usage:
  lockstep start [--nodes N] [--base-port P] [--data-dir D] [--restart] [--wait-timeout MS] [node options]

Options:
  --nodes N            nodes to run, 1..${START_NODES_MAX} (default ${START_NODES_DEFAULT})
  --base-port P        node i serves RESP on P+i and peers on P+${PEER_PORT_OFFSET}+${PEER_PORT_STRIDE}*i (+w for worker w) (default ${START_BASE_PORT_DEFAULT})
  --data-dir D         node i keeps its data in D/node<i> (default ${START_DATA_DIR_DEFAULT})
  --restart            restart a node that exits (backoff ${BACKOFF_MIN_MS / 1000} s doubling to ${BACKOFF_MAX_MS / 1000} s, reset after ${BACKOFF_RESET_AFTER_MS / 1000} s up)
  --wait-timeout MS    how long to wait for cluster_state:ok on every node before saying which are not ready
                       (the launcher keeps running either way) (default ${START_WAIT_TIMEOUT_DEFAULT_MS})
  --help               this text

Every other --flag value is passed to every node (e.g. --workers 2 --shards 16 --fsync never --log-level debug
--requirepass secret); see lockstep node --help. The launcher sets --id, --port, --peers, --peer-port, --data-dir
and --log-format itself.

Ctrl-C (SIGINT) or SIGTERM stops every node (SIGTERM, SIGKILL after ${KILL_AFTER_MS / 1000} s) and exits 0 once all are gone;
a second Ctrl-C kills them at once. Exit code 2 for bad options, 1 when the ports are taken or every node died.`;

function intOpt(name: string, raw: string | undefined, min: number, max: number): number {
  if (raw === undefined) throw new OptionError(`start: --${name}: missing value`);
  if (!/^-?\d+$/.test(raw.trim())) throw new OptionError(`start: --${name}: expected an integer, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new OptionError(`start: --${name}: ${n} is out of range [${min}, ${max}]`);
  return n;
}

export function peerPortOf(basePort: number, i: number): number {
  return basePort + PEER_PORT_OFFSET + PEER_PORT_STRIDE * i;
}

/** Parses `lockstep start` arguments; throws OptionError (exit code 2) with a message naming the option. */
export function parseStartArgs(argv: readonly string[]): { config: LauncherConfig; help: boolean } {
  const boolNode = new Set(NODE_OPTIONS.filter((s) => s.kind === 'bool').flatMap((s) => [s.name, `no-${s.name}`]));
  const mine = new Map<string, string>();
  let restart = false;
  let help = false;
  const passthrough: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      help = true;
      continue;
    }
    if (!a.startsWith('--')) throw new OptionError(`start: unexpected argument "${a}" (see lockstep start --help)`);
    const eq = a.indexOf('=');
    const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
    if (name === 'restart') {
      const v = eq >= 0 ? a.slice(eq + 1).toLowerCase() : 'yes';
      if (!['yes', 'no', 'true', 'false', '1', '0', 'on', 'off'].includes(v)) throw new OptionError(`start: --restart: expected yes/no, got "${v}"`);
      restart = ['yes', 'true', '1', 'on'].includes(v);
      continue;
    }
    if (['nodes', 'base-port', 'data-dir', 'wait-timeout'].includes(name)) {
      const value = eq >= 0 ? a.slice(eq + 1) : argv[++i];
      if (value === undefined) throw new OptionError(`start: --${name}: missing value`);
      mine.set(name, value);
      continue;
    }
    if (OWNED[name] !== undefined) throw new OptionError(`start: --${name} is set by the launcher (${OWNED[name]})`);
    passthrough.push(a);
    if (eq < 0 && !(boolNode.has(name) && (argv[i + 1] === undefined || argv[i + 1]!.startsWith('--')))) {
      const value = argv[++i];
      if (value === undefined) throw new OptionError(`start: --${name}: missing value`);
      passthrough.push(value);
    }
  }
  const nodes = mine.has('nodes') ? intOpt('nodes', mine.get('nodes'), 1, START_NODES_MAX) : START_NODES_DEFAULT;
  const basePort = mine.has('base-port') ? intOpt('base-port', mine.get('base-port'), 1, 65535) : START_BASE_PORT_DEFAULT;
  const waitTimeoutMs = mine.has('wait-timeout') ? intOpt('wait-timeout', mine.get('wait-timeout'), 0, START_WAIT_TIMEOUT_MAX_MS) : START_WAIT_TIMEOUT_DEFAULT_MS;
  const dataDirRaw = mine.get('data-dir') ?? START_DATA_DIR_DEFAULT;
  if (dataDirRaw === '') throw new OptionError('start: --data-dir: empty');
  // Unknown node options are reported by name before anything else; values are checked by the node's own loader
  // (the same environment and .env the children will read).
  try {
    splitArgs(passthrough, NODE_OPTIONS);
  } catch (err) {
    if (err instanceof OptionError) throw new OptionError(`start: ${err.message.replace(' (see --help)', '')}: not a launcher option nor a node option (see lockstep start --help, lockstep node --help)`);
    throw err;
  }
  if (basePort + nodes > 65535 || peerPortOf(basePort, nodes) > 65535) {
    throw new OptionError(`start: --base-port ${basePort} with --nodes ${nodes} needs ports up to ${peerPortOf(basePort, nodes)} (> 65535); use a lower --base-port`);
  }
  const dataDir = resolve(dataDirRaw);
  const probeArgv = ['--id', '1', '--port', String(basePort + 1), '--peers', peersList('127.0.0.1', nodes, basePort), '--data-dir', join(dataDir, 'node1'), ...passthrough];
  const { options } = loadNodeOptions(probeArgv);
  const workers = options.cluster.workers;
  const lastPeer = peerPortOf(basePort, nodes) + workers - 1;
  if (lastPeer > 65535) {
    throw new OptionError(`start: --base-port ${basePort} with --nodes ${nodes} and ${workers} workers needs peer ports up to ${lastPeer} (> 65535); use a lower --base-port`);
  }
  const host = options.host === '0.0.0.0' || options.host === '::' || options.host === '' ? '127.0.0.1' : options.host;
  return { config: { nodes, basePort, dataDir, restart, waitTimeoutMs, passthrough, host, password: options.requirepass, workers }, help };
}

export function peersList(host: string, nodes: number, basePort: number): string {
  const h = host.includes(':') ? `[${host}]` : host;
  return Array.from({ length: nodes }, (_, k) => `${k + 1}@${h}:${basePort + k + 1}:${peerPortOf(basePort, k + 1)}`).join(',');
}

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const DROPPED_FIELDS = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name', 'v']);

function fieldValue(v: unknown): string {
  if (typeof v === 'string') return /^[^\s="]+$/.test(v) ? v : JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === null) return String(v);
  return JSON.stringify(v) ?? String(v);
}

function clock(ms: number): string {
  const d = new Date(ms);
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/**
 * One pino JSON line as "HH:MM:SS.mmm LEVEL msg k=v ..." (pid, hostname and name dropped; an error's stack on
 * the following lines). Anything that is not a pino JSON object is returned unchanged.
 */
export function formatLogLine(line: string): string {
  if (!line.startsWith('{')) return line;
  let rec: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(line);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return line;
    rec = parsed as Record<string, unknown>;
  } catch {
    return line;
  }
  if (typeof rec['level'] !== 'number' && typeof rec['level'] !== 'string') return line;
  const level = typeof rec['level'] === 'number' ? (LEVELS[rec['level']] ?? `L${rec['level']}`) : String(rec['level']).toUpperCase();
  const parts: string[] = [];
  if (typeof rec['time'] === 'number') parts.push(clock(rec['time']));
  parts.push(level.padEnd(5));
  if (rec['msg'] !== undefined) parts.push(String(rec['msg']));
  const stacks: string[] = [];
  for (const [k, v] of Object.entries(rec)) {
    if (DROPPED_FIELDS.has(k)) continue;
    if (v !== null && typeof v === 'object' && typeof (v as { stack?: unknown }).stack === 'string') {
      const e = v as { message?: unknown; stack: string };
      parts.push(`${k}=${fieldValue(String(e.message ?? ''))}`);
      stacks.push(...e.stack.split('\n').slice(1).map((s) => `    ${s.trim()}`));
      continue;
    }
    parts.push(`${k}=${fieldValue(v)}`);
  }
  return [parts.join(' '), ...stacks].join('\n');
}

function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolvePort) => {
    const s = net.createServer();
    s.once('error', () => resolvePort(false));
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolvePort(true)));
  });
}

/** bin/lockstep.js, found from this module's location (it runs from dist/ or another build dir). */
export function lockstepBin(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'lockstep') return join(dir, 'bin', 'lockstep.js');
    const up = dirname(dir);
    if (up === dir) throw new Error('lockstep: cannot find bin/lockstep.js (package root not found above ' + fileURLToPath(import.meta.url) + ')');
    dir = up;
  }
}

interface NodeProc {
  i: number;
  respPort: number;
  peerPort: number;
  dataDir: string;
  child: ChildProcess | null;
  pid: number | null;
  startedAt: number;
  backoffMs: number;
  restartTimer: NodeJS.Timeout | null;
  ready: boolean;
  probing: boolean;
  /** Why the last readiness probe failed. */
  notReady: string;
  starts: number;
}

function say(text: string): void {
  process.stdout.write(`[launcher] ${text}\n`);
}

/** Runs the launcher until it is stopped; resolves with the process exit code. */
export async function runLauncher(argv: readonly string[]): Promise<number> {
  const { config: cfg, help } = parseStartArgs(argv);
  if (help) {
    console.log(START_USAGE);
    return 0;
  }
  const bin = lockstepBin();
  const peers = peersList(cfg.host, cfg.nodes, cfg.basePort);
  const procs: NodeProc[] = Array.from({ length: cfg.nodes }, (_, k) => ({
    i: k + 1,
    respPort: cfg.basePort + k + 1,
    peerPort: peerPortOf(cfg.basePort, k + 1),
    dataDir: join(cfg.dataDir, `node${k + 1}`),
    child: null,
    pid: null,
    startedAt: 0,
    backoffMs: BACKOFF_MIN_MS,
    restartTimer: null,
    ready: false,
    probing: false,
    notReady: 'not started',
    starts: 0,
  }));

  const busy: string[] = [];
  for (const p of procs) {
    if (!(await portFree(cfg.host, p.respPort))) busy.push(`${p.respPort} (RESP of node ${p.i})`);
    for (let w = 0; w < cfg.workers; w++) if (!(await portFree(cfg.host, p.peerPort + w))) busy.push(`${p.peerPort + w} (peer port of node ${p.i} worker ${w})`);
  }
  if (busy.length > 0) {
    console.error(`lockstep start: ports in use on ${cfg.host}: ${busy.join(', ')}; is a cluster already running? (try --base-port)`);
    return 1;
  }

  let stopping = false;
  let allReadyAt = 0;
  let resolveDone: (code: number) => void = () => {};
  const done = new Promise<number>((r) => (resolveDone = r));
  const t0 = Date.now();

  const pipeLines = (stream: NodeJS.ReadableStream, i: number, out: NodeJS.WriteStream): void => {
    const rl = createInterface({ input: stream, crlfDelay: Infinity });
    rl.on('line', (line) => {
      const text = formatLogLine(line);
      out.write(text.split('\n').map((l) => `[node${i}] ${l}\n`).join(''));
    });
  };

  const alive = (): NodeProc[] => procs.filter((p) => p.child !== null);

  const finishIfGone = (): void => {
    if (stopping && alive().length === 0) {
      clearTimeout(killTimer ?? undefined);
      for (const s of SIGNALS) process.removeListener(s, onSignal);
      say('every node has stopped');
      resolveDone(0);
    }
  };

  const spawnNode = (p: NodeProc): void => {
    mkdirSync(p.dataDir, { recursive: true });
    const args = [bin, 'node', '--id', String(p.i), '--port', String(p.respPort), '--peers', peers, '--data-dir', p.dataDir, ...cfg.passthrough, '--log-format', 'json'];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    p.child = child;
    p.pid = child.pid ?? null;
    p.startedAt = Date.now();
    p.ready = false;
    p.notReady = 'starting';
    p.starts++;
    pipeLines(child.stdout!, p.i, process.stdout);
    pipeLines(child.stderr!, p.i, process.stderr);
    let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
    let handled = false;
    const onGone = (): void => {
      if (handled) return;
      handled = true;
      if (p.child === child) {
        p.child = null;
        p.ready = false;
        p.notReady = 'exited';
      }
      onExit(p, exit?.code ?? null, exit?.signal ?? null);
    };
    child.on('exit', (code, signal) => (exit = { code, signal }));
    child.on('close', onGone);
    child.on('error', (err) => {
      say(`node ${p.i}: ${err.message}`);
      if (child.pid === undefined) onGone();
    });
  };

  const onExit = (p: NodeProc, code: number | null, signal: NodeJS.Signals | null): void => {
    if (stopping) {
      say(`node ${p.i} stopped (code ${code}, signal ${signal})`);
      finishIfGone();
      return;
    }
    say(`node ${p.i} exited (code ${code}, signal ${signal})`);
    if (!cfg.restart) {
      if (alive().length === 0) {
        say('every node has exited; stopping (use --restart to restart nodes that exit)');
        stopping = true;
        for (const s of SIGNALS) process.removeListener(s, onSignal);
        clearTimeout(pollTimer ?? undefined);
        resolveDone(1);
      } else say(`node ${p.i} is not restarted (start with --restart for that); the other nodes keep running`);
      return;
    }
    if (Date.now() - p.startedAt >= BACKOFF_RESET_AFTER_MS) p.backoffMs = BACKOFF_MIN_MS;
    const delay = p.backoffMs;
    p.backoffMs = Math.min(p.backoffMs * 2, BACKOFF_MAX_MS);
    say(`restarting node ${p.i} in ${(delay / 1000).toFixed(0)} s`);
    p.restartTimer = setTimeout(() => {
      p.restartTimer = null;
      if (stopping) return;
      spawnNode(p);
      say(`node ${p.i} restarted (pid ${p.pid}, start #${p.starts})`);
    }, delay);
  };

  // Readiness: poll every node that is running and not yet ready.
  let pollTimer: NodeJS.Timeout | null = null;
  let timeoutReported = false;
  const pollOnce = (): void => {
    if (stopping) return;
    for (const p of procs) {
      if (p.child === null || p.ready || p.probing) continue;
      p.probing = true;
      const child = p.child;
      probe(cfg.host, p.respPort, [['CLUSTER', 'INFO']], { timeoutMs: PROBE_TIMEOUT_MS, ...(cfg.password !== '' ? { password: cfg.password } : {}) })
        .then(
          ([reply]) => {
            const state = infoFields(replyText(reply, 'CLUSTER INFO')).get('cluster_state') ?? '?';
            return state === 'ok' ? null : `cluster_state:${state}`;
          },
          (err: unknown) => (err instanceof ProbeError && err.code === 'ECONNREFUSED' ? 'not listening yet' : err instanceof Error ? err.message : String(err)),
        )
        .catch((err: unknown) => (err instanceof Error ? err.message : String(err)))
        .then((why) => {
          p.probing = false;
          if (stopping || p.child !== child) return;
          if (why !== null) {
            p.notReady = why;
            return;
          }
          p.ready = true;
          if (allReadyAt !== 0) say(`node ${p.i} ready (pid ${p.pid}, cluster_state:ok)`);
          if (allReadyAt === 0 && procs.every((q) => q.ready)) {
            allReadyAt = Date.now();
            const auth = cfg.password !== '' ? ' -a <password>' : '';
            say(`Lockstep cluster ready: ${cfg.nodes} node${cfg.nodes > 1 ? 's' : ''}, every shard has a leader (${((allReadyAt - t0) / 1000).toFixed(1)} s)`);
            say(`try: redis-cli -c -p ${cfg.basePort + 1}${auth}    status: lockstep status --nodes ${cfg.nodes} --base-port ${cfg.basePort}    stop: Ctrl-C`);
          }
        });
    }
    if (allReadyAt === 0 && !timeoutReported && Date.now() - t0 >= cfg.waitTimeoutMs) {
      timeoutReported = true;
      const missing = procs.filter((q) => !q.ready).map((q) => `node ${q.i} (${q.child === null ? 'not running' : q.notReady})`);
      say(`not ready after ${cfg.waitTimeoutMs} ms: ${missing.join(', ')}; still running and waiting`);
    }
    pollTimer = setTimeout(pollOnce, READY_POLL_MS);
  };

  // Shutdown.
  const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  let killTimer: NodeJS.Timeout | null = null;
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals === 1) {
      stopping = true;
      clearTimeout(pollTimer ?? undefined);
      for (const p of procs) {
        if (p.restartTimer !== null) clearTimeout(p.restartTimer);
        p.restartTimer = null;
      }
      const live = alive();
      say(`${signal}: stopping ${live.length} node${live.length === 1 ? '' : 's'} (SIGTERM, SIGKILL after ${KILL_AFTER_MS / 1000} s; Ctrl-C again to kill now)`);
      for (const p of live) p.child!.kill('SIGTERM');
      killTimer = setTimeout(() => {
        for (const p of alive()) {
          say(`node ${p.i} still running after ${KILL_AFTER_MS / 1000} s: SIGKILL`);
          p.child!.kill('SIGKILL');
        }
      }, KILL_AFTER_MS);
      finishIfGone();
    } else {
      say(`${signal} again: killing ${alive().length} node(s) now`);
      for (const p of alive()) p.child!.kill('SIGKILL');
    }
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  // Safety nets: a launcher that dies of a bug must not leave nodes behind, and a closed stdout (`| head`) must
  // not kill it.
  const killAllOnExit = (): void => {
    for (const p of alive()) p.child!.kill('SIGKILL');
  };
  process.on('exit', killAllOnExit);
  const ignorePipeErrors = (err: NodeJS.ErrnoException): void => {
    if (err.code !== 'EPIPE') throw err;
  };
  process.stdout.on('error', ignorePipeErrors);
  process.stderr.on('error', ignorePipeErrors);
  void done.then(() => {
    process.removeListener('exit', killAllOnExit);
    process.stdout.removeListener('error', ignorePipeErrors);
    process.stderr.removeListener('error', ignorePipeErrors);
  });

  for (const p of procs) spawnNode(p);
  const peerCol = (p: NodeProc) => (cfg.workers > 1 ? `${p.peerPort}-${p.peerPort + cfg.workers - 1}` : String(p.peerPort));
  process.stdout.write(
    formatTable(
      ['NODE', 'RESP PORT', 'PEER PORT', 'DATA DIR', 'PID'],
      procs.map((p) => [String(p.i), String(p.respPort), peerCol(p), p.dataDir, String(p.pid ?? '-')]),
    ) + '\n',
  );
  say(`waiting for every node to report cluster_state:ok (up to ${cfg.waitTimeoutMs} ms)${cfg.restart ? '; nodes that exit are restarted' : ''}`);
  pollTimer = setTimeout(pollOnce, READY_POLL_MS);
  return done;
}
