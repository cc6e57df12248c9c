/**
 * Test helpers for the cache commands: a ReplySink that encodes what a handler writes as RESP2 (or RESP3) text, so
 * tests can compare replies byte for byte with what Redis sends, and a tiny harness that runs a command line the
 * way the dispatcher would (arity check first, then the handler).
 */
import { CacheStore, type CacheStoreOptions } from '../../../src/cache/store.js';
import { STRING_COMMANDS } from '../../../src/cache/string-commands.js';
import type { CacheLimits } from '../../../src/config/limits.js';
import type { ClientState, CommandContext, CommandSpec, ReplySink } from '../../../src/server/command.js';

export class RecordingSink implements ReplySink {
  out = '';
  constructor(readonly proto: 2 | 3 = 2) {}
  ok(): void {
    this.out += '+OK\r\n';
  }
  simple(s: string): void {
    this.out += `+${s}\r\n`;
  }
  error(msg: string): void {
    this.out += `-${msg}\r\n`;
  }
  integer(n: number | bigint): void {
    if (typeof n === 'number' && !Number.isSafeInteger(n)) throw new Error(`integer reply ${n} is not a safe integer`);
    this.out += `:${n}\r\n`;
  }
  bulk(b: Buffer | string): void {
    const buf = typeof b === 'string' ? Buffer.from(b) : b;
    this.out += `$${buf.length}\r\n${buf.toString('latin1')}\r\n`;
  }
  bulkRange(src: Uint8Array, start: number, end: number): void {
    this.bulk(Buffer.from(src.buffer, src.byteOffset + start, end - start));
  }
  nil(): void {
    this.out += this.proto === 3 ? '_\r\n' : '$-1\r\n';
  }
  nilArray(): void {
    this.out += this.proto === 3 ? '_\r\n' : '*-1\r\n';
  }
  arrayHeader(n: number): void {
    this.out += `*${n}\r\n`;
  }
  mapHeader(n: number): void {
    this.out += this.proto === 3 ? `%${n}\r\n` : `*${2 * n}\r\n`;
  }
  setHeader(n: number): void {
    this.out += this.proto === 3 ? `~${n}\r\n` : `*${n}\r\n`;
  }
  double(d: number): void {
    if (this.proto === 3) this.out += `,${d}\r\n`;
    else this.bulk(String(d));
  }
  boolean(b: boolean): void {
    this.out += this.proto === 3 ? `#${b ? 't' : 'f'}\r\n` : `:${b ? 1 : 0}\r\n`;
  }
  verbatim(text: string, format = 'txt'): void {
    if (this.proto === 3) this.out += `=${text.length + 4}\r\n${format}:${text}\r\n`;
    else this.bulk(text);
  }
  pushHeader(n: number): void {
    this.out += this.proto === 3 ? `>${n}\r\n` : `*${n}\r\n`;
  }
  take(): string {
    const s = this.out;
    this.out = '';
    return s;
  }
}

const TABLE = new Map<string, CommandSpec>(STRING_COMMANDS.map((c) => [c.name, c]));

export interface Harness {
  db: CacheStore;
  sink: RecordingSink;
  /** Simulated wall clock in Unix ms; the store and ctx.now both read it. */
  now: number;
  /** Runs one command (args as strings, latin1, or Buffers) and returns the RESP it produced. */
  run(...args: (string | Buffer)[]): string;
}

export const TEST_LIMITS: CacheLimits = {
  itemsMax: 0,
  bytesMax: 0,
  expireSweepKeysMax: 20,
  expireSweepIntervalMs: 100,
};

export function harness(limits: Partial<CacheLimits> = {}, options: CacheStoreOptions = {}, proto: 2 | 3 = 2): Harness {
  const h = {} as Harness;
  h.now = 1_700_000_000_000;
  h.sink = new RecordingSink(proto);
  h.db = new CacheStore({ ...TEST_LIMITS, ...limits }, () => h.now, options);
  const client: ClientState = {
    id: 1,
    name: '',
    proto,
    authenticated: true,
    user: 'default',
    libName: '',
    libVersion: '',
    closeAfterReply: false,
  };
  h.run = (...raw) => {
    const args = raw.map((a) => (typeof a === 'string' ? Buffer.from(a, 'latin1') : a));
    const name = (args[0] ?? Buffer.alloc(0)).toString('latin1').toLowerCase();
    const spec = TABLE.get(name);
    if (spec === undefined) throw new Error(`no such command in STRING_COMMANDS: ${name}`);
    if ((spec.arity > 0 && args.length !== spec.arity) || (spec.arity < 0 && args.length < -spec.arity)) {
      return `-ERR wrong number of arguments for '${name}' command\r\n`;
    }
    const ctx: CommandContext = { reply: h.sink, client, db: h.db, now: h.now };
    spec.handler(ctx, args);
    h.db.checkInvariants();
    return h.sink.take();
  };
  return h;
}

/** RESP2 encodings for compact expectations. */
export const resp = {
  ok: '+OK\r\n',
  nil: '$-1\r\n',
  int: (n: number | bigint | string): string => `:${n}\r\n`,
  bulk: (s: string): string => `$${Buffer.byteLength(s, 'latin1')}\r\n${s}\r\n`,
  err: (m: string): string => `-${m}\r\n`,
  simple: (s: string): string => `+${s}\r\n`,
  arr: (...items: string[]): string => `*${items.length}\r\n${items.join('')}`,
};
