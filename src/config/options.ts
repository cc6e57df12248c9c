/**
 * Node options: one declarative table. Every option can be given as a flag (`--max-clients 100`), an environment
 * variable (`LOCKSTEP_MAX_CLIENTS=100`) or a line in a `.env` file (same variable names); flags win over the
 * environment, which wins over `.env`, which wins over the default. `lockstep node --help` prints the table.
 *
 * Errors name the option, what was given and what is accepted (`OptionError`, code 'BAD_OPTION').
 */
import { readFileSync, existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import {
  CACHE_LIMITS_DEFAULT,
  RESP_LIMITS_DEFAULT,
  SERVER_LIMITS_DEFAULT,
  type CacheLimits,
  type RespLimits,
  type ServerLimits,
} from './limits.js';

export class OptionError extends Error {
  readonly code = 'BAD_OPTION';
}

type Kind = 'int' | 'bytes' | 'string' | 'bool' | 'enum';

interface OptionSpec {
  /** kebab-case flag name without the dashes */
  name: string;
  kind: Kind;
  default: string | number | boolean;
  unit?: string;
  min?: number;
  max?: number;
  choices?: readonly string[];
  help: string;
}

const GiB = 1024 * 1024 * 1024;

export const NODE_OPTIONS: readonly OptionSpec[] = [
  { name: 'host', kind: 'string', default: '127.0.0.1', help: 'address the RESP server binds to' },
  { name: 'port', kind: 'int', default: 7001, min: 0, max: 65535, help: 'RESP port (0 = pick a free one)' },
  { name: 'data-dir', kind: 'string', default: '', help: 'directory for this node\'s data (WAL, snapshots); empty = ./data/node<id>' },
  { name: 'requirepass', kind: 'string', default: '', help: 'password of the default user (empty = none)' },
  { name: 'acl-file', kind: 'string', default: '', help: 'file of ACL users ("user NAME on >PASSWORD" lines)' },
  {
    name: 'protected-mode',
    kind: 'bool',
    default: true,
    help: 'refuse non-loopback clients while no password is set',
  },
  { name: 'max-clients', kind: 'int', default: SERVER_LIMITS_DEFAULT.clientsMax, min: 1, max: 1_000_000, unit: 'connections', help: 'most client connections at once' },
  { name: 'client-output-buffer-limit', kind: 'bytes', default: SERVER_LIMITS_DEFAULT.outputBufferBytesMax, min: 1024, max: 64 * GiB, unit: 'bytes', help: 'unsent reply bytes after which a client is disconnected' },
  { name: 'client-output-pause', kind: 'bytes', default: SERVER_LIMITS_DEFAULT.outputBufferPauseBytes, min: 1024, max: 64 * GiB, unit: 'bytes', help: 'unsent reply bytes after which the server stops reading that client' },
  { name: 'proto-max-bulk-len', kind: 'bytes', default: RESP_LIMITS_DEFAULT.bulkBytesMax, min: 1, max: 4 * GiB, unit: 'bytes', help: 'largest bulk string accepted from a client' },
  { name: 'max-args', kind: 'int', default: RESP_LIMITS_DEFAULT.argsPerCommandMax, min: 1, max: 1 << 30, unit: 'arguments', help: 'most arguments in one command' },
  { name: 'max-inline', kind: 'bytes', default: RESP_LIMITS_DEFAULT.inlineBytesMax, min: 16, max: GiB, unit: 'bytes', help: 'longest inline command line' },
  { name: 'client-query-buffer-limit', kind: 'bytes', default: RESP_LIMITS_DEFAULT.queryBufferBytesMax, min: 1024, max: 64 * GiB, unit: 'bytes', help: 'most unparsed request bytes buffered per client' },
  { name: 'cache-max-items', kind: 'int', default: CACHE_LIMITS_DEFAULT.itemsMax, min: 0, max: 1e12, unit: 'entries', help: 'LRU eviction beyond this many keys (0 = unbounded)' },
  { name: 'cache-max-bytes', kind: 'bytes', default: CACHE_LIMITS_DEFAULT.bytesMax, min: 0, max: 1024 * GiB, unit: 'bytes', help: 'LRU eviction beyond this many bytes (0 = unbounded)' },
  { name: 'expire-sweep-interval', kind: 'int', default: CACHE_LIMITS_DEFAULT.expireSweepIntervalMs, min: 1, max: 60_000, unit: 'ms', help: 'period of the active TTL sweep' },
  { name: 'expire-sweep-keys', kind: 'int', default: CACHE_LIMITS_DEFAULT.expireSweepKeysMax, min: 1, max: 1_000_000, unit: 'keys', help: 'keys examined per active TTL sweep step' },
  // Cluster (a node always runs the cluster runtime; with no --peers it is a one-node cluster of itself).
  { name: 'id', kind: 'int', default: 1, min: 1, max: 65535, help: 'this node\'s id in the cluster (unique, stable across restarts)' },
  { name: 'peers', kind: 'string', default: '', help: 'every member, this node included: "ID@HOST:PORT[:PEERPORT],..." (PORT = RESP port; PEERPORT default PORT+10000); empty = a one-node cluster' },
  { name: 'peer-port', kind: 'int', default: 0, min: 0, max: 65535, help: 'first peer port of this node (worker i listens on it + i); 0 = from --peers, else --port + 10000' },
  { name: 'workers', kind: 'int', default: 0, min: 0, max: 64, unit: 'threads', help: 'shard worker threads (0 = derived from the core count: max(1, min(8, cores/2)))' },
  { name: 'shards', kind: 'int', default: 16, min: 1, max: 16384, help: 'shards (Raft groups) of the keyspace; the same on every node' },
  { name: 'replicas', kind: 'int', default: 3, min: 1, max: 15, help: 'replication factor of each shard (capped at the node count); the same on every node' },
  { name: 'fsync', kind: 'enum', default: 'batch', choices: ['always', 'batch', 'never'], help: 'WAL durability: batch = one fdatasync per group commit before any ack; never = tests and benchmarks only' },
  { name: 'cluster-id', kind: 'string', default: 'lockstep', help: 'name shared by the nodes of one cluster; peers with another are refused' },
  { name: 'cluster-secret', kind: 'string', default: '', help: 'shared secret peers prove at handshake (HMAC-SHA256); empty = none (loopback/trusted networks)' },
  { name: 'leader-wait', kind: 'int', default: 2000, min: 10, max: 600_000, unit: 'ms', help: 'how long a request waits for its shard to have a leader before -TRYAGAIN / -NOQUORUM' },
  { name: 'request-timeout', kind: 'int', default: 10_000, min: 100, max: 600_000, unit: 'ms', help: 'a replicated request not answered in this time fails with -TRYAGAIN (outcome unknown)' },
  { name: 'snapshot-entries', kind: 'int', default: 10_000, min: 0, max: 1e9, unit: 'entries', help: 'snapshot a shard after this many applied entries (0 = never); see --snapshot-log-percent' },
  { name: 'snapshot-log-percent', kind: 'int', default: 100, min: 0, max: 100_000, unit: '%', help: 'and only once the entries applied since the last snapshot hold at least this share of its size, so snapshot work stays proportional to what is written (as Redis\' auto-aof-rewrite-percentage); a shard that holds back WAL segments is snapshotted once they reach this share of its size; 0 = by entry count alone' },
  { name: 'keyspace-max-bytes', kind: 'bytes', default: 0, min: 0, max: 1024 * GiB, unit: 'bytes', help: 'replicated memory limit per shard; writes beyond it get -OOM (0 = unbounded); the same on every node' },
  { name: 'deadlock-detect', kind: 'int', default: 1000, min: 30, max: 600_000, unit: 'ms', help: 'a lock deadlock (a cycle of waiting owners across the cluster) is found and broken within this time' },
  { name: 'cache-lease', kind: 'int', default: 1000, min: 20, max: 600_000, unit: 'ms', help: 'coherent cache line lease: a node cut off from a shard\'s home stops serving its lines within this time, and a new home waits this long before its first write; the same on every node' },
  { name: 'cache-write-policy', kind: 'enum', default: 'write-through', choices: ['write-through', 'write-back'], help: 'write-through: a write completes once replicated; write-back: a write to a line this node owns completes locally and is written back within --cache-flush-ms (a node crash can lose such writes nobody else read yet); the same on every node' },
  { name: 'cache-flush-ms', kind: 'int', default: 100, min: 1, max: 600_000, unit: 'ms', help: 'write-back: a Modified line is written back at most this long after its first unflushed write' },
  { name: 'cache-keep-read-ms', kind: 'int', default: 100, min: 0, max: 600_000, unit: 'ms', help: 'write-through: a node writing a key keeps serving its line while the write is out if the line served a hit within this time (the write then invalidates it); otherwise it drops the line at once (0 = always drop)' },
  { name: 'cache-write-allocate', kind: 'enum', default: 'adaptive', choices: ['adaptive', 'always'], help: 'write-through: which single-key writes leave the writing node a line of the key (an E grant with the new value): always = every one; adaptive = those of keys read on this node since their line was installed, and the rest only while this node\'s lines are being reused (docs/cache-coherence.md); write-back always allocates' },
  { name: 'cache-refill-max', kind: 'int', default: 256, min: 0, max: 1_000_000, help: 'write-through: after an invalidation, re-read the key in the background so the next read on this node hits; at most this many in flight per node (0 = off)' },
  { name: 'cache-backing', kind: 'string', default: '', help: 'an external Redis below the replicated keyspace (redis://host:port/db): GET misses load from it, writes are sent to it (docs/cache-coherence.md); empty = none' },
  { name: 'election-timeout', kind: 'int', default: 500, min: 20, max: 60_000, unit: 'ms', help: 'lower bound of the randomized Raft election timeout (heartbeat = a third of it)' },
  { name: 'log-level', kind: 'enum', default: 'info', choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], help: 'pino log level' },
  { name: 'log-format', kind: 'enum', default: 'auto', choices: ['auto', 'json', 'pretty'], help: 'auto = pretty on a TTY, JSON otherwise' },
];

export interface ClusterMember {
  id: number;
  host: string;
  /** RESP port. */
  port: number;
  /** First peer port: worker i listens on peerPort + i. */
  peerPort: number;
}

export interface ClusterOptions {
  id: number;
  /** Every member, this node included, sorted by id. */
  members: ClusterMember[];
  workers: number;
  shards: number;
  replicas: number;
  fsync: 'always' | 'batch' | 'never';
  clusterId: string;
  secret: string;
  leaderWaitMs: number;
  requestTimeoutMs: number;
  snapshotEntries: number;
  snapshotLogPercent: number;
  keyspaceBytesMax: number;
  electionTimeoutMs: number;
  deadlockDetectMs: number;
  cacheLeaseMs: number;
  cacheWritePolicy: 'write-through' | 'write-back';
  cacheFlushMs: number;
  /** '' = no backing store. */
  cacheBacking: string;
  cacheRefillMax: number;
  cacheKeepReadMs: number;
  cacheWriteAllocate: 'adaptive' | 'always';
}

export interface NodeOptions {
  host: string;
  port: number;
  dataDir: string;
  requirepass: string;
  aclFile: string;
  protectedMode: boolean;
  logLevel: string;
  logFormat: 'auto' | 'json' | 'pretty';
  resp: RespLimits;
  server: ServerLimits;
  cache: CacheLimits;
  cluster: ClusterOptions;
}

/** The default worker count for a machine with `cores` cores. */
export function defaultWorkers(cores: number): number {
  return Math.max(1, Math.min(8, Math.floor(cores / 2)));
}

/**
 * Parses `--peers` ("ID@HOST:PORT[:PEERPORT],..."). With an empty list the node is a one-node cluster of itself.
 * This node's entry must match --port (when both are given) and its peer port comes from --peer-port if set.
 */
export function parseMembers(text: string, self: { id: number; host: string; port: number; peerPort: number }): ClusterMember[] {
  const out: ClusterMember[] = [];
  const items = text.split(',').map((x) => x.trim()).filter((x) => x !== '');
  if (items.length === 0) {
    return [{ id: self.id, host: self.host, port: self.port, peerPort: self.peerPort !== 0 ? self.peerPort : self.port + 10000 }];
  }
  for (const item of items) {
    const m = /^(\d+)@(\[[0-9a-fA-F:.]+\]|[^:@,\s]+):(\d+)(?::(\d+))?$/.exec(item);
    if (!m) throw new OptionError(`--peers: "${item}" is not ID@HOST:PORT[:PEERPORT]`);
    const id = Number(m[1]);
    const port = Number(m[3]);
    const peerPort = m[4] !== undefined ? Number(m[4]) : port + 10000;
    if (id < 1 || id > 65535) throw new OptionError(`--peers: node id ${id} is out of range [1, 65535]`);
    for (const [what, v] of [['port', port], ['peer port', peerPort]] as const) {
      if (v < 1 || v > 65535) throw new OptionError(`--peers: ${what} ${v} of node ${id} is out of range [1, 65535]`);
    }
    if (out.some((x) => x.id === id)) throw new OptionError(`--peers: node id ${id} appears twice`);
    out.push({ id, host: m[2]!.replace(/^\[|\]$/g, ''), port, peerPort });
  }
  const me = out.find((x) => x.id === self.id);
  if (me === undefined) throw new OptionError(`--peers does not list this node (--id ${self.id})`);
  if (self.peerPort !== 0) me.peerPort = self.peerPort;
  return out.sort((a, b) => a.id - b.id);
}

const BYTE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1e3, kb: 1024, m: 1e6, mb: 1024 ** 2, g: 1e9, gb: GiB };

/** Parses "512mb", "1gb", "64kb", "1000" (Redis-style units: kb = 1024, k = 1000). */
export function parseBytes(text: string): number | null {
  const m = /^\s*(\d+)\s*([a-z]*)\s*$/i.exec(text);
  if (!m) return null;
  const mult = BYTE_UNITS[(m[2] ?? '').toLowerCase()];
  if (mult === undefined) return null;
  return Number(m[1]) * mult;
}

function convert(spec: OptionSpec, raw: string, source: string): string | number | boolean {
  const where = `--${spec.name} (${source})`;
  switch (spec.kind) {
    case 'string':
      return raw;
    case 'bool': {
      const v = raw.toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(v)) return true;
      if (['0', 'false', 'no', 'off'].includes(v)) return false;
      throw new OptionError(`${where}: expected yes/no, got "${raw}"`);
    }
    case 'enum':
      if (!spec.choices?.includes(raw)) {
        throw new OptionError(`${where}: expected one of ${spec.choices?.join('|')}, got "${raw}"`);
      }
      return raw;
    case 'int':
    case 'bytes': {
      const n = spec.kind === 'bytes' ? parseBytes(raw) : /^-?\d+$/.test(raw.trim()) ? Number(raw) : null;
      const unit = spec.unit ? ` ${spec.unit}` : '';
      if (n === null || !Number.isSafeInteger(n)) {
        throw new OptionError(`${where}: expected ${spec.kind === 'bytes' ? 'a size like 64mb' : 'an integer'}, got "${raw}"`);
      }
      if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) {
        throw new OptionError(`${where}: ${n}${unit} is out of range [${spec.min}, ${spec.max}]`);
      }
      return n;
    }
  }
}

export function envName(optionName: string): string {
  return 'LOCKSTEP_' + optionName.toUpperCase().replace(/-/g, '_');
}

/** Reads KEY=VALUE lines (comments with #, optional quotes). Returns {} when the file does not exist. */
export function readEnvFile(path: string): Record<string, string> {
  if (!existsSync(path)) return {};
  const out: Record<string, string> = {};
  for (const line of readFileSync(path, 'utf8').split(/\r?\n/)) {
    const m = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(line);
    if (!m || line.trimStart().startsWith('#')) continue;
    let v = m[2] ?? '';
    if ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'"))) v = v.slice(1, -1);
    out[m[1]!] = v;
  }
  return out;
}

export interface ParsedArgs {
  options: Map<string, string>;
  positionals: string[];
  help: boolean;
}

/** Splits argv into --name value / --name=value pairs; `--no-x` sets a bool option to no. */
export function splitArgs(argv: readonly string[], specs: readonly OptionSpec[]): ParsedArgs {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const options = new Map<string, string>();
  const positionals: string[] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      help = true;
      continue;
    }
    if (!a.startsWith('--')) {
      positionals.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    let name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
    let value: string | undefined = eq >= 0 ? a.slice(eq + 1) : undefined;
    if (!byName.has(name) && name.startsWith('no-') && byName.get(name.slice(3))?.kind === 'bool') {
      name = name.slice(3);
      value = 'no';
    }
    const spec = byName.get(name);
    if (!spec) throw new OptionError(`unknown option --${name} (see --help)`);
    if (value === undefined) {
      if (spec.kind === 'bool' && (argv[i + 1] === undefined || argv[i + 1]!.startsWith('--'))) value = 'yes';
      else {
        value = argv[++i];
        if (value === undefined) throw new OptionError(`--${name}: missing value`);
      }
    }
    options.set(name, value);
  }
  return { options, positionals, help };
}

/** Resolves every option from flags, environment and .env; returns name -> typed value. */
export function resolveOptions(
  specs: readonly OptionSpec[],
  flags: Map<string, string>,
  env: Record<string, string | undefined>,
  envFile: Record<string, string>,
): Map<string, string | number | boolean> {
  const out = new Map<string, string | number | boolean>();
  for (const spec of specs) {
    const key = envName(spec.name);
    const flag = flags.get(spec.name);
    if (flag !== undefined) out.set(spec.name, convert(spec, flag, 'flag'));
    else if (env[key] !== undefined) out.set(spec.name, convert(spec, env[key]!, key));
    else if (envFile[key] !== undefined) out.set(spec.name, convert(spec, envFile[key]!, `.env ${key}`));
    else out.set(spec.name, spec.default);
  }
  return out;
}

export function loadNodeOptions(
  argv: readonly string[],
  env: Record<string, string | undefined> = process.env,
  envFilePath = '.env',
): { options: NodeOptions; help: boolean; positionals: string[] } {
  const parsed = splitArgs(argv, NODE_OPTIONS);
  const v = resolveOptions(NODE_OPTIONS, parsed.options, env, readEnvFile(envFilePath));
  const num = (n: string) => v.get(n) as number;
  const str = (n: string) => v.get(n) as string;
  const options: NodeOptions = {
    host: str('host'),
    port: num('port'),
    dataDir: str('data-dir') !== '' ? str('data-dir') : `./data/node${num('id')}`,
    requirepass: str('requirepass'),
    aclFile: str('acl-file'),
    protectedMode: v.get('protected-mode') as boolean,
    logLevel: str('log-level'),
    logFormat: str('log-format') as NodeOptions['logFormat'],
    resp: {
      bulkBytesMax: num('proto-max-bulk-len'),
      argsPerCommandMax: num('max-args'),
      inlineBytesMax: num('max-inline'),
      queryBufferBytesMax: num('client-query-buffer-limit'),
    },
    server: {
      clientsMax: num('max-clients'),
      outputBufferBytesMax: num('client-output-buffer-limit'),
      outputBufferPauseBytes: num('client-output-pause'),
    },
    cache: {
      itemsMax: num('cache-max-items'),
      bytesMax: num('cache-max-bytes'),
      expireSweepIntervalMs: num('expire-sweep-interval'),
      expireSweepKeysMax: num('expire-sweep-keys'),
      // Redis' checkStringLength: APPEND and SETRANGE may not build a string longer than proto-max-bulk-len.
      valueBytesMax: num('proto-max-bulk-len'),
    },
    cluster: {
      id: num('id'),
      members: [],
      workers: num('workers') === 0 ? defaultWorkers(availableParallelism()) : num('workers'),
      shards: num('shards'),
      replicas: num('replicas'),
      fsync: str('fsync') as ClusterOptions['fsync'],
      clusterId: str('cluster-id'),
      secret: str('cluster-secret'),
      leaderWaitMs: num('leader-wait'),
      requestTimeoutMs: num('request-timeout'),
      snapshotEntries: num('snapshot-entries'),
      snapshotLogPercent: num('snapshot-log-percent'),
      keyspaceBytesMax: num('keyspace-max-bytes'),
      electionTimeoutMs: num('election-timeout'),
      deadlockDetectMs: num('deadlock-detect'),
      cacheLeaseMs: num('cache-lease'),
      cacheWritePolicy: str('cache-write-policy') as 'write-through' | 'write-back',
      cacheFlushMs: num('cache-flush-ms'),
      cacheBacking: str('cache-backing'),
      cacheRefillMax: num('cache-refill-max'),
      cacheKeepReadMs: num('cache-keep-read-ms'),
      cacheWriteAllocate: str('cache-write-allocate') as 'adaptive' | 'always',
    },
  };
  options.cluster.members = parseMembers(str('peers'), { id: num('id'), host: str('host'), port: num('port'), peerPort: num('peer-port') });
  if (str('peers').trim() !== '') {
    // The --peers entry is authoritative for this node's RESP port (other nodes and CLUSTER SLOTS use it).
    const me = options.cluster.members.find((m) => m.id === options.cluster.id)!;
    if (parsed.options.has('port') && options.port !== me.port) {
      throw new OptionError(`--port ${options.port} disagrees with this node's entry in --peers (${me.host}:${me.port})`);
    }
    options.port = me.port;
  }
  if (options.cluster.cacheBacking !== '') {
    let ok = false;
    try {
      const u = new URL(options.cluster.cacheBacking);
      ok = u.protocol === 'redis:' || u.protocol === 'rediss:';
    } catch {
      ok = false;
    }
    if (!ok) throw new OptionError(`--cache-backing: expected a redis://host:port[/db] URL, got "${options.cluster.cacheBacking}"`);
  }
  if (options.cluster.shards < options.cluster.workers) {
    throw new OptionError(`--shards ${options.cluster.shards} is less than --workers ${options.cluster.workers}: some workers would have nothing to do`);
  }
  return { options, help: parsed.help, positionals: parsed.positionals };
}

export function formatHelp(title: string, specs: readonly OptionSpec[]): string {
  const lines = [title, '', 'Options (flag, environment variable; also read from .env):'];
  for (const s of specs) {
    const def = s.kind === 'bool' ? (s.default ? 'yes' : 'no') : s.default === '' ? '(none)' : String(s.default);
    const unit = s.unit ? ` ${s.unit}` : '';
    const choices = s.choices ? ` [${s.choices.join('|')}]` : '';
    lines.push(`  --${s.name.padEnd(28)} ${s.help}${choices}`);
    lines.push(`  ${''.padEnd(30)} default ${def}${unit}; env ${envName(s.name)}`);
  }
  lines.push('  --help                         this text');
  return lines.join('\n');
}
