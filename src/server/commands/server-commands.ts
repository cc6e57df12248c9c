/**
 * Server commands: INFO, COMMAND (redis-cli calls COMMAND DOCS at start), CONFIG GET/SET/RESETSTAT
 * (redis-benchmark calls CONFIG GET), TIME. Each INFO section is a function so later subsystems (raft, cluster,
 * replication, cache coherence) can add theirs through `InfoProvider`s.
 */
import os from 'node:os';
import { globMatch } from '../../cache/glob.js';
import type { CommandContext, CommandSpec } from '../command.js';
import { replyHelp } from './help.js';
import type { RespServer } from '../resp-server.js';
import { LOCKSTEP_VERSION, REDIS_COMPAT_VERSION } from '../version.js';
import { parseBytes, type NodeOptions } from '../../config/options.js';

/** A named INFO section: returns `field:value` lines (without the header). */
export interface InfoProvider {
  section: string;
  lines(): string[];
}

/** A runtime configuration parameter for CONFIG GET / CONFIG SET. */
export interface ConfigParam {
  name: string;
  get(): string;
  /** Absent for read-only parameters. Returns an error message, or null when applied. */
  set?(value: string): string | null;
}

function spec(
  name: string,
  arity: number,
  flags: CommandSpec['flags'],
  summary: string,
  handler: CommandSpec['handler'],
): CommandSpec {
  return { name, arity, flags, firstKey: 0, lastKey: 0, keyStep: 0, summary, group: 'server', handler };
}

export interface ServerCommandDeps {
  server: RespServer;
  runId: string;
  extraInfo?: InfoProvider[];
  config: ConfigParam[];
  /** Resets the counters shown in INFO stats (CONFIG RESETSTAT). */
  resetStats(): void;
}

/** A parameter backed by a numeric byte/int limit that can be changed at run time. */
export function numericParam(
  name: string,
  get: () => number,
  set: (n: number) => void,
  min: number,
  max: number,
  bytes = false,
): ConfigParam {
  return {
    name,
    get: () => String(get()),
    set(value) {
      const n = bytes ? parseBytes(value) : /^\d+$/.test(value) ? Number(value) : null;
      if (n === null || !Number.isSafeInteger(n) || n < min || n > max) {
        return `argument must be between ${min} and ${max} inclusive`;
      }
      set(n);
      return null;
    },
  };
}

export function constParam(name: string, value: string): ConfigParam {
  return { name, get: () => value };
}

/** The CONFIG parameters of the RESP front end that every kind of node has (connections, buffers, address). */
export function frontEndConfigParams(options: NodeOptions): ConfigParam[] {
  const GiB = 1024 ** 3;
  return [
    numericParam('maxclients', () => options.server.clientsMax, (n) => (options.server.clientsMax = n), 1, 1_000_000),
    numericParam('client-query-buffer-limit', () => options.resp.queryBufferBytesMax, (n) => (options.resp.queryBufferBytesMax = n), 1024, 64 * GiB, true),
    numericParam('lockstep-client-output-buffer-limit', () => options.server.outputBufferBytesMax, (n) => (options.server.outputBufferBytesMax = n), 1024, 64 * GiB, true),
    constParam('port', String(options.port)),
    constParam('bind', options.host),
    constParam('protected-mode', options.protectedMode ? 'yes' : 'no'),
    constParam('databases', '1'),
    constParam('timeout', '0'),
  ];
}

/** CONFIG RESETSTAT of a server: its connection and command counters and its store's hit/miss counters. */
export function resetServerStats(server: RespServer): void {
  server.db.resetStats();
  server.dispatcher.calls.clear();
  for (const k of Object.keys(server.stats) as (keyof typeof server.stats)[]) server.stats[k] = 0;
  server.dispatcher.stats.commands = server.dispatcher.stats.rejected = server.dispatcher.stats.errors = 0;
}

export function serverCommands(deps: ServerCommandDeps): CommandSpec[] {
  const { server } = deps;

  function infoSections(): Map<string, () => string[]> {
    const m = new Map<string, () => string[]>();
    m.set('server', () => {
      const up = Math.floor((Date.now() - server.startedAt) / 1000);
      return [
        `redis_version:${REDIS_COMPAT_VERSION}`,
        `lockstep_version:${LOCKSTEP_VERSION}`,
        'redis_mode:standalone',
        `os:${os.type()} ${os.release()} ${os.arch()}`,
        `arch_bits:64`,
        `process_id:${process.pid}`,
        `run_id:${deps.runId}`,
        `tcp_port:${server.port}`,
        `uptime_in_seconds:${up}`,
        `uptime_in_days:${Math.floor(up / 86400)}`,
        `node_version:${process.version}`,
        `executable:${process.argv[1] ?? ''}`,
      ];
    });
    m.set('clients', () => {
      let paused = 0;
      for (const c of server.clients.values()) if (c.paused) paused++;
      return [
        `connected_clients:${server.clients.size}`,
        `maxclients:${server.options.server.clientsMax}`,
        `clients_paused_for_output:${paused}`,
      ];
    });
    m.set('memory', () => {
      const mem = process.memoryUsage();
      return [
        `used_memory:${mem.heapUsed + mem.external}`,
        `used_memory_rss:${mem.rss}`,
        `used_memory_heap:${mem.heapUsed}`,
        `used_memory_external:${mem.external}`,
        `used_memory_array_buffers:${mem.arrayBuffers}`,
        `cache_bytes:${server.db.bytes}`,
        `maxmemory:${server.db.limits.bytesMax}`,
        'maxmemory_policy:allkeys-lru',
      ];
    });
    m.set('stats', () => {
      const s = server.stats;
      const d = server.dispatcher.stats;
      const c = server.db.stats;
      return [
        `total_connections_received:${s.connectionsReceived}`,
        `rejected_connections:${s.connectionsRejected}`,
        `total_commands_processed:${d.commands}`,
        `rejected_calls:${d.rejected}`,
        `failed_calls:${d.errors}`,
        `total_net_input_bytes:${s.netInputBytes}`,
        `total_net_output_bytes:${s.netOutputBytes}`,
        `protocol_errors:${s.protocolErrors}`,
        `client_output_buffer_limit_disconnections:${s.outputLimitDisconnects}`,
        `client_reads_paused:${s.pausedReads}`,
        `total_reads_processed:${s.reads}`,
        `total_writes_processed:${s.writes}`,
        `keyspace_hits:${c.hits}`,
        `keyspace_misses:${c.misses}`,
        `evicted_keys:${c.evictions}`,
        `expired_keys:${c.expirations}`,
      ];
    });
    m.set('commandstats', () => {
      const out: string[] = [];
      for (const [name, calls] of server.dispatcher.calls) out.push(`cmdstat_${name}:calls=${calls}`);
      return out;
    });
    m.set('keyspace', () => (server.db.size > 0 ? [`db0:keys=${server.db.size},expires=${server.db.expiresCount},avg_ttl=0`] : []));
    for (const p of deps.extraInfo ?? []) m.set(p.section, () => p.lines());
    return m;
  }

  const DEFAULT_SECTIONS = ['server', 'clients', 'memory', 'stats', 'keyspace'];

  function info(ctx: CommandContext, args: Buffer[]): void {
    const sections = infoSections();
    let wanted: string[];
    const asked = args.slice(1).map((a) => a.toString('utf8').toLowerCase());
    if (asked.length === 0 || asked.includes('default')) wanted = [...DEFAULT_SECTIONS, ...(deps.extraInfo ?? []).map((p) => p.section)];
    else if (asked.includes('all') || asked.includes('everything')) wanted = [...sections.keys()];
    else wanted = asked;
    const parts: string[] = [];
    for (const name of wanted) {
      const f = sections.get(name);
      if (!f) continue;
      parts.push(`# ${name[0]!.toUpperCase()}${name.slice(1)}\r\n${f().map((l) => l + '\r\n').join('')}`);
    }
    ctx.reply.verbatim(parts.join('\r\n'));
  }

  // ---- COMMAND -------------------------------------------------------------------------------------------------
  function commandInfo(ctx: CommandContext, s: CommandSpec): void {
    const r = ctx.reply;
    r.arrayHeader(10);
    r.bulk(s.name);
    r.integer(s.arity);
    r.setHeader(s.flags.length);
    for (const f of s.flags) r.simple(f);
    r.integer(s.firstKey);
    r.integer(s.lastKey);
    r.integer(s.keyStep);
    r.setHeader(0); // ACL categories
    r.arrayHeader(0); // tips
    r.arrayHeader(0); // key specs
    r.arrayHeader(0); // subcommands
  }

  function commandDocs(ctx: CommandContext, s: CommandSpec): void {
    const r = ctx.reply;
    r.bulk(s.name);
    r.mapHeader(3);
    r.bulk('summary');
    r.bulk(s.summary);
    r.bulk('since');
    r.bulk('1.0.0');
    r.bulk('group');
    r.bulk(s.group);
  }

  function command(ctx: CommandContext, args: Buffer[]): void {
    const r = ctx.reply;
    const table = server.table;
    if (args.length === 1) {
      r.arrayHeader(table.size);
      for (const s of table.all()) commandInfo(ctx, s);
      return;
    }
    const sub = args[1]!.toString('latin1').toUpperCase();
    const named = args.slice(2).map((a) => a.toString('utf8').toLowerCase());
    switch (sub) {
      case 'COUNT':
        if (args.length !== 2) break;
        return r.integer(table.size);
      case 'INFO': {
        const list = named.length === 0 ? [...table.all()] : named.map((n) => table.get(n));
        r.arrayHeader(list.length);
        for (const s of list) (s ? commandInfo(ctx, s) : r.nilArray());
        return;
      }
      case 'DOCS': {
        const list = (named.length === 0 ? [...table.all()] : named.map((n) => table.get(n))).filter(
          (s): s is CommandSpec => s !== undefined,
        );
        r.mapHeader(list.length);
        for (const s of list) commandDocs(ctx, s);
        return;
      }
      case 'LIST': {
        if (args.length !== 2) return r.error('ERR syntax error');
        r.arrayHeader(table.size);
        for (const s of table.all()) r.bulk(s.name);
        return;
      }
      case 'GETKEYS': {
        if (args.length < 3) break;
        const target = table.get(args[2]!.toString('latin1').toLowerCase());
        if (!target) return r.error('ERR Invalid command specified');
        const cmdArgs = args.slice(2);
        const n = cmdArgs.length;
        if ((target.arity > 0 && n !== target.arity) || (target.arity < 0 && n < -target.arity)) {
          return r.error('ERR Invalid number of arguments specified for command');
        }
        if (target.firstKey === 0) return r.error('ERR The command has no key arguments');
        const last = target.lastKey < 0 ? n + target.lastKey : target.lastKey;
        const keys: Buffer[] = [];
        for (let i = target.firstKey; i <= last && i < n; i += target.keyStep) keys.push(cmdArgs[i]!);
        r.arrayHeader(keys.length);
        for (const k of keys) r.bulk(k);
        return;
      }
      case 'HELP': {
        const lines = [
          'COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:',
          '(no subcommand)', '    Return details about all commands.',
          'COUNT', '    Return the total number of commands in this server.',
          'LIST', '    Return a list of all commands in this server.',
          'INFO [<command-name> ...]', '    Return details about the given commands, or all of them.',
          'DOCS [<command-name> ...]', '    Return documentation details about the given commands, or all of them.',
          'GETKEYS <full-command>', '    Return the keys from a full command.',
          'HELP', '    Print this help.',
        ];
        return replyHelp(r, lines);
      }
      default:
        return r.error(`ERR unknown subcommand '${args[1]!.toString('utf8')}'. Try COMMAND HELP.`);
    }
    r.error(`ERR wrong number of arguments for 'command|${sub.toLowerCase()}' command`);
  }

  // ---- CONFIG --------------------------------------------------------------------------------------------------
  const params = new Map(deps.config.map((p) => [p.name, p]));

  function config(ctx: CommandContext, args: Buffer[]): void {
    const r = ctx.reply;
    const sub = args[1]!.toString('latin1').toUpperCase();
    if (sub === 'GET') {
      if (args.length < 3) return r.error("ERR wrong number of arguments for 'config|get' command");
      const found = new Map<string, string>();
      for (const pat of args.slice(2)) {
        const lower = Buffer.from(pat.toString('utf8').toLowerCase());
        for (const p of params.values()) if (globMatch(lower, Buffer.from(p.name), true)) found.set(p.name, p.get());
      }
      r.mapHeader(found.size);
      for (const [k, v] of found) {
        r.bulk(k);
        r.bulk(v);
      }
      return;
    }
    if (sub === 'SET') {
      if (args.length < 4 || args.length % 2 !== 0) {
        return r.error("ERR wrong number of arguments for 'config|set' command");
      }
      // Validate all first so the command is atomic, as in Redis 7.
      const changes: [ConfigParam, string][] = [];
      for (let i = 2; i < args.length; i += 2) {
        const name = args[i]!.toString('utf8').toLowerCase();
        const p = params.get(name);
        if (!p) return r.error(`ERR Unknown option or number of arguments for CONFIG SET - '${name}'`);
        if (!p.set) return r.error(`ERR CONFIG SET failed (possibly related to argument '${name}') - can't set immutable config`);
        changes.push([p, args[i + 1]!.toString('utf8')]);
      }
      const before = changes.map(([p]) => p.get());
      for (let i = 0; i < changes.length; i++) {
        const [p, v] = changes[i]!;
        const err = p.set!(v);
        if (err !== null) {
          for (let j = 0; j < i; j++) changes[j]![0].set!(before[j]!);
          return r.error(`ERR CONFIG SET failed (possibly related to argument '${p.name}') - ${err}`);
        }
      }
      return r.ok();
    }
    if (sub === 'RESETSTAT') {
      if (args.length !== 2) return r.error("ERR wrong number of arguments for 'config|resetstat' command");
      deps.resetStats();
      return r.ok();
    }
    if (sub === 'HELP') {
      const lines = [
        'CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:',
        'GET <pattern>', '    Return parameters matching the glob-like <pattern> and their values.',
        'SET <directive> <value>', '    Set the configuration <directive> to <value>.',
        'RESETSTAT', '    Reset statistics reported by the INFO command.',
        'HELP', '    Print this help.',
      ];
      return replyHelp(r, lines);
    }
    r.error(`ERR unknown subcommand '${args[1]!.toString('utf8')}'. Try CONFIG HELP.`);
  }

  return [
    spec('info', -1, ['loading', 'stale'], 'Returns information and statistics about the server.', info),
    spec('command', -1, ['loading', 'stale'], 'Returns detailed information about all commands.', command),
    spec('config', -2, ['admin', 'noscript', 'loading', 'stale'], 'A container for server configuration commands.', config),
    spec('time', 1, ['loading', 'stale', 'fast'], 'Returns the server time.', (ctx) => {
      const ms = Date.now();
      ctx.reply.arrayHeader(2);
      ctx.reply.bulk(String(Math.floor(ms / 1000)));
      ctx.reply.bulk(String((ms % 1000) * 1000));
    }),
  ];
}
