/**
 * Node options: one declarative table. Every option can be given as a flag (`--max-clients 100`), an environment
 * variable (`LOCKSTEP_MAX_CLIENTS=100`) or a line in a `.env` file (same variable names); flags win over the
 * environment, which wins over `.env`, which wins over the default. `lockstep node --help` prints the table.
 *
 * Errors name the option, what was given and what is accepted (`OptionError`, code 'BAD_OPTION').
 */
import { readFileSync, existsSync } from 'node:fs';
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
  { name: 'data-dir', kind: 'string', default: './data/node1', help: 'directory for this node\'s data' },
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
  { name: 'log-level', kind: 'enum', default: 'info', choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], help: 'pino log level' },
  { name: 'log-format', kind: 'enum', default: 'auto', choices: ['auto', 'json', 'pretty'], help: 'auto = pretty on a TTY, JSON otherwise' },
];

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
    dataDir: str('data-dir'),
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
  };
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
