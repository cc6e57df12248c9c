/**
 * `lockstep status`: asks every node of a cluster (INFO server, INFO raft, CLUSTER INFO, CLUSTER SHARDS over one
 * short connection each, all nodes in parallel) and prints a nodes table and a per-shard table, or one JSON
 * document with --json. Exit code 0 when every node answered and every shard has a leader, 1 otherwise, 2 for
 * bad options.
 *
 * Invariants:
 *  - a node is "up" only when it answered every probe command within --timeout; anything else is "down" with the
 *    reason (connection refused, timeout, AUTH refused, ...); the whole command takes at most about --timeout;
 *  - a shard "has a leader" only when a reachable node reports itself `role=leader` for it (a follower's
 *    `leader=` hint is not trusted: that node may be down); with two self-reported leaders (a deposed one that has
 *    not heard yet) the higher term wins;
 *  - slot ranges come from CLUSTER SHARDS of the first node that answered it, else from the placement formula.
 */
import { slotRange } from '../cluster/ring.js';
import { OptionError } from '../config/options.js';
import { infoFields, probe, ProbeError, replyText, RespError, type RespValue } from './resp-probe.js';

/** Default per-node bound on the probe exchange, in milliseconds. */
export const STATUS_TIMEOUT_DEFAULT_MS = 3000;
/** Most nodes `status` asks (bounds the parallel connections). */
export const STATUS_NODES_MAX = 1000;

export interface StatusTarget {
  id: number;
  host: string;
  port: number;
}

export interface ShardReplica {
  role: string;
  leader: number;
  term: number;
  commit: number;
  applied: number;
  lastIndex: number;
  lag: number;
  keys: number;
}

export interface NodeReport {
  id: number;
  host: string;
  port: number;
  up: boolean;
  /** Why the node is down (absent when up). */
  error?: string;
  pid?: number;
  clusterState?: string;
  shardsLed?: number;
  shardCount?: number;
  /** shard -> this node's view of it (from INFO raft). */
  shards: Map<number, ShardReplica>;
}

export interface ShardReport {
  shard: number;
  slots: [number, number] | null;
  /** 0 when no reachable node leads it. */
  leader: number;
  term: number;
  commit: number;
  /** The leader's lag (most entries any follower is behind); null without a leader. */
  maxLag: number | null;
  /** node id -> this node's replica of the shard (only nodes that hold one and answered). */
  replicas: Map<number, ShardReplica>;
}

export interface ClusterReport {
  ok: boolean;
  nodes: NodeReport[];
  shards: ShardReport[];
}

/** Parses "role=leader,leader=1,term=3,..." into a ShardReplica (unknown numbers become 0). */
export function parseShardLine(text: string): ShardReplica {
  const f = new Map<string, string>();
  for (const kv of text.split(',')) {
    const i = kv.indexOf('=');
    if (i > 0) f.set(kv.slice(0, i), kv.slice(i + 1));
  }
  const n = (k: string): number => {
    const v = Number(f.get(k));
    return Number.isFinite(v) ? v : 0;
  };
  return { role: f.get('role') ?? '?', leader: n('leader'), term: n('term'), commit: n('commit'), applied: n('applied'), lastIndex: n('last_index'), lag: n('lag'), keys: n('keys') };
}

/** Slot ranges by shard index from a CLUSTER SHARDS reply (RESP2: each shard a flat [key, value, ...] array). */
export function slotsFromClusterShards(v: RespValue | undefined): ([number, number] | null)[] {
  if (!Array.isArray(v)) return [];
  return v.map((entry) => {
    if (!Array.isArray(entry)) return null;
    for (let i = 0; i + 1 < entry.length; i += 2) {
      const range = entry[i + 1];
      if (entry[i] === 'slots' && Array.isArray(range) && typeof range[0] === 'number' && typeof range[1] === 'number') return [range[0], range[1]];
    }
    return null;
  });
}

async function askNode(t: StatusTarget, timeoutMs: number, password: string | undefined): Promise<{ report: NodeReport; slots: ([number, number] | null)[] }> {
  const report: NodeReport = { id: t.id, host: t.host, port: t.port, up: false, shards: new Map() };
  try {
    const [server, raft, cinfo, cshards] = await probe(t.host, t.port, [['INFO', 'server'], ['INFO', 'raft'], ['CLUSTER', 'INFO'], ['CLUSTER', 'SHARDS']], {
      timeoutMs,
      ...(password !== undefined ? { password } : {}),
    });
    const sf = infoFields(replyText(server, 'INFO server'));
    const rf = infoFields(replyText(raft, 'INFO raft'));
    const cf = infoFields(replyText(cinfo, 'CLUSTER INFO'));
    const pid = Number(sf.get('process_id'));
    if (Number.isSafeInteger(pid)) report.pid = pid;
    report.clusterState = cf.get('cluster_state') ?? '?';
    report.shardCount = Number(rf.get('raft_shards') ?? 0);
    let led = 0;
    for (const [k, v] of rf) {
      const m = /^shard(\d+)$/.exec(k);
      if (!m) continue;
      const r = parseShardLine(v);
      if (r.role === 'remote') continue;
      if (r.role === 'leader') led++;
      report.shards.set(Number(m[1]), r);
    }
    report.shardsLed = led;
    report.up = true;
    return { report, slots: cshards instanceof RespError ? [] : slotsFromClusterShards(cshards) };
  } catch (err) {
    report.error = err instanceof ProbeError ? describeProbeError(err) : String(err);
    return { report, slots: [] };
  }
}

function describeProbeError(err: ProbeError): string {
  switch (err.code) {
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'TIMEOUT':
      return 'no answer (timeout)';
    case 'CLOSED':
      return 'connection closed';
    default:
      return err.message.replace(/^[^ ]+: /, '');
  }
}

/** Asks every target in parallel and builds the report. */
export async function collectStatus(targets: readonly StatusTarget[], opts: { timeoutMs: number; password?: string }): Promise<ClusterReport> {
  const answers = await Promise.all(targets.map((t) => askNode(t, opts.timeoutMs, opts.password)));
  const nodes = answers.map((a) => a.report);
  const slots = answers.find((a) => a.slots.length > 0)?.slots ?? [];
  let shardCount = 0;
  for (const n of nodes) {
    shardCount = Math.max(shardCount, n.shardCount ?? 0);
    for (const s of n.shards.keys()) shardCount = Math.max(shardCount, s + 1);
  }
  const shards: ShardReport[] = [];
  for (let s = 0; s < shardCount; s++) {
    const replicas = new Map<number, ShardReplica>();
    let leader = 0;
    let leaderView: ShardReplica | null = null;
    let term = 0;
    let commit = 0;
    for (const n of nodes) {
      const r = n.shards.get(s);
      if (r === undefined) continue;
      replicas.set(n.id, r);
      term = Math.max(term, r.term);
      commit = Math.max(commit, r.commit);
      if (r.role === 'leader' && (leaderView === null || r.term > leaderView.term)) {
        leader = n.id;
        leaderView = r;
      }
    }
    if (leaderView !== null) commit = leaderView.commit;
    shards.push({ shard: s, slots: slots[s] ?? (shardCount > 0 ? inclusive(slotRange(s, shardCount)) : null), leader, term, commit, maxLag: leaderView?.lag ?? null, replicas });
  }
  const ok = nodes.length > 0 && nodes.every((n) => n.up) && shardCount > 0 && shards.every((s) => s.leader !== 0);
  return { ok, nodes, shards };
}

function inclusive([start, end]: [number, number]): [number, number] {
  return [start, end - 1];
}

/** Left-aligned columns separated by two spaces. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

export function formatReport(r: ClusterReport): string {
  const out: string[] = [];
  out.push(
    formatTable(
      ['NODE', 'ADDRESS', 'STATE', 'LED', 'PID', 'CLUSTER'],
      r.nodes.map((n) => [String(n.id), `${n.host}:${n.port}`, n.up ? 'up' : 'down', n.up ? String(n.shardsLed ?? 0) : '-', n.pid !== undefined ? String(n.pid) : '-', n.up ? `cluster_state:${n.clusterState}` : (n.error ?? '')]),
    ),
  );
  out.push('');
  if (r.shards.length > 0) {
    const ids = r.nodes.map((n) => n.id);
    out.push(
      formatTable(
        ['SHARD', 'SLOTS', 'LEADER', 'TERM', 'COMMIT', ...ids.map((id) => `APPLIED@${id}`), 'MAX_LAG'],
        r.shards.map((s) => [
          String(s.shard),
          s.slots ? `${s.slots[0]}-${s.slots[1]}` : '-',
          s.leader !== 0 ? String(s.leader) : 'NONE',
          String(s.term),
          String(s.commit),
          ...ids.map((id) => {
            const rep = s.replicas.get(id);
            return rep === undefined ? '-' : String(rep.applied);
          }),
          s.maxLag === null ? '-' : String(s.maxLag),
        ]),
      ),
    );
    out.push('');
  } else {
    out.push('no shard information (no node answered)');
  }
  const up = r.nodes.filter((n) => n.up).length;
  const led = r.shards.filter((s) => s.leader !== 0).length;
  out.push(`${up}/${r.nodes.length} nodes up, ${led}/${r.shards.length} shards with a leader: ${r.ok ? 'OK' : 'NOT OK'}`);
  return out.join('\n');
}

export function reportJson(r: ClusterReport): unknown {
  return {
    ok: r.ok,
    nodesUp: r.nodes.filter((n) => n.up).length,
    shardsWithLeader: r.shards.filter((s) => s.leader !== 0).length,
    nodes: r.nodes.map((n) => ({
      id: n.id,
      address: `${n.host}:${n.port}`,
      up: n.up,
      ...(n.error !== undefined ? { error: n.error } : {}),
      pid: n.pid ?? null,
      shardsLed: n.up ? (n.shardsLed ?? 0) : null,
      clusterState: n.clusterState ?? null,
    })),
    shards: r.shards.map((s) => ({
      shard: s.shard,
      slots: s.slots,
      leader: s.leader === 0 ? null : s.leader,
      term: s.term,
      commit: s.commit,
      maxLag: s.maxLag,
      replicas: Object.fromEntries([...s.replicas].map(([id, rep]) => [String(id), { role: rep.role, applied: rep.applied, lastIndex: rep.lastIndex, lag: rep.lag, keys: rep.keys }])),
    })),
  };
}

export const STATUS_USAGE = `lockstep status: show the nodes and shards of a running Lockstep cluster

Usage:
  lockstep status [--nodes N] [--base-port P] [--host H] [options]   nodes as \`lockstep start\` lays them out:
                                                                   node i at H:P+i (defaults 3, 7000, 127.0.0.1)
  lockstep status --peers "1@HOST:PORT,2@HOST:PORT,..." [options]  explicit nodes (a :PEERPORT suffix is ignored)

Options:
  --json            print one JSON document instead of tables
  --timeout MS      per-node bound on the probe, in ms (default ${STATUS_TIMEOUT_DEFAULT_MS})
  --password PW     AUTH with this password (default: env LOCKSTEP_REQUIREPASS, else none)
  --help            this text

Exit code: 0 when every node is up and every shard has a leader, 1 otherwise, 2 for bad options.`;

function intArg(name: string, raw: string | undefined, min: number, max: number): number {
  if (raw === undefined) throw new OptionError(`--${name}: missing value`);
  if (!/^\d+$/.test(raw.trim())) throw new OptionError(`--${name}: expected an integer, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new OptionError(`--${name}: ${n} is out of range [${min}, ${max}]`);
  return n;
}

/** Parses "1@host:port[:peerport],..." into targets. */
export function parseTargets(text: string): StatusTarget[] {
  const out: StatusTarget[] = [];
  for (const item of text.split(',').map((x) => x.trim()).filter((x) => x !== '')) {
    const m = /^(\d+)@(\[[0-9a-fA-F:.]+\]|[^:@,\s]+):(\d+)(?::(\d+))?$/.exec(item);
    if (!m) throw new OptionError(`--peers: "${item}" is not ID@HOST:PORT[:PEERPORT]`);
    const id = Number(m[1]);
    const port = Number(m[3]);
    if (id < 1 || id > 65535) throw new OptionError(`--peers: node id ${id} is out of range [1, 65535]`);
    if (port < 1 || port > 65535) throw new OptionError(`--peers: port ${port} of node ${id} is out of range [1, 65535]`);
    if (out.some((x) => x.id === id)) throw new OptionError(`--peers: node id ${id} appears twice`);
    out.push({ id, host: m[2]!.replace(/^\[|\]$/g, ''), port });
  }
  if (out.length === 0) throw new OptionError('--peers: no nodes given');
  if (out.length > STATUS_NODES_MAX) throw new OptionError(`--peers: more than ${STATUS_NODES_MAX} nodes`);
  return out.sort((a, b) => a.id - b.id);
}

export interface StatusArgs {
  targets: StatusTarget[];
  json: boolean;
  timeoutMs: number;
  password?: string;
  help: boolean;
}

export function parseStatusArgs(argv: readonly string[], env: Record<string, string | undefined> = process.env): StatusArgs {
  const given = new Map<string, string>();
  let json = false;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      help = true;
      continue;
    }
    if (a === '--json') {
      json = true;
      continue;
    }
    if (!a.startsWith('--')) throw new OptionError(`status: unexpected argument "${a}" (see lockstep status --help)`);
    const eq = a.indexOf('=');
    const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
    if (!['nodes', 'base-port', 'host', 'peers', 'timeout', 'password'].includes(name)) {
      throw new OptionError(`status: unknown option --${name} (see lockstep status --help)`);
    }
    const value = eq >= 0 ? a.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new OptionError(`--${name}: missing value`);
    given.set(name, value);
  }
  const timeoutMs = given.has('timeout') ? intArg('timeout', given.get('timeout'), 50, 600_000) : STATUS_TIMEOUT_DEFAULT_MS;
  let targets: StatusTarget[];
  if (given.has('peers')) {
    for (const n of ['nodes', 'base-port', 'host']) if (given.has(n)) throw new OptionError(`status: --peers and --${n} exclude each other`);
    targets = parseTargets(given.get('peers')!);
  } else {
    const nodes = given.has('nodes') ? intArg('nodes', given.get('nodes'), 1, STATUS_NODES_MAX) : 3;
    const base = given.has('base-port') ? intArg('base-port', given.get('base-port'), 0, 65535 - nodes) : 7000;
    const host = given.get('host') ?? '127.0.0.1';
    if (host === '') throw new OptionError('--host: empty');
    targets = Array.from({ length: nodes }, (_, k) => ({ id: k + 1, host, port: base + k + 1 }));
  }
  const password = given.get('password') ?? env['LOCKSTEP_REQUIREPASS'];
  return { targets, json, timeoutMs, ...(password !== undefined && password !== '' ? { password } : {}), help };
}

/** `lockstep status ...`; resolves with the exit code. */
export async function runStatus(argv: readonly string[]): Promise<number> {
  const args = parseStatusArgs(argv);
  if (args.help) {
    console.log(STATUS_USAGE);
    return 0;
  }
  const report = await collectStatus(args.targets, { timeoutMs: args.timeoutMs, ...(args.password !== undefined ? { password: args.password } : {}) });
  console.log(args.json ? JSON.stringify(reportJson(report), null, 2) : formatReport(report));
  return report.ok ? 0 : 1;
}
