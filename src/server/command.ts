/**
 * The contract between the RESP server and command handlers: one declarative table entry per command (Redis
 * style: name, arity, flags, key positions, handler) and the context a handler gets. The dispatcher
 * (src/server/dispatcher.ts) checks arity, auth and flags before any handler runs, so handlers may assume the
 * argument count is right.
 *
 * Handlers reply through `ReplySink`; they never throw for bad user input (they reply with an error); a throw (or
 * a rejected promise) is a bug and is answered with `-ERR internal error` and logged.
 */
import type { CacheStore } from '../cache/store.js';

/** Where a handler writes its reply. Implemented by protocol/resp's ReplyWriter; RESP2/RESP3 aware. */
export interface ReplySink {
  readonly proto: 2 | 3;
  /** +OK */
  ok(): void;
  /** +<s> (s must not contain CR or LF) */
  simple(s: string): void;
  /** -<msg>; msg starts with the code word, e.g. "ERR syntax error", "WRONGTYPE ...". */
  error(msg: string): void;
  /** :<n> */
  integer(n: number | bigint): void;
  /** $<len>\r\n<bytes>\r\n */
  bulk(b: Buffer | string): void;
  /** bulk() of the bytes src[start, end), without a view of them (the cache store's values: CacheEntry.valueBytes). */
  bulkRange(src: Uint8Array, start: number, end: number): void;
  /** The null bulk string ($-1 in RESP2, _ in RESP3). */
  nil(): void;
  /** The null array (*-1 in RESP2, _ in RESP3). */
  nilArray(): void;
  /** *<n>: n elements follow. */
  arrayHeader(n: number): void;
  /** %<n> in RESP3 (n key/value pairs follow); *<2n> in RESP2. */
  mapHeader(n: number): void;
  /** ~<n> in RESP3; *<n> in RESP2. */
  setHeader(n: number): void;
  /** ,<d> in RESP3; a bulk string in RESP2. */
  double(d: number): void;
  /** #t/#f in RESP3; :1/:0 in RESP2. */
  boolean(b: boolean): void;
  /** =<len>\r\ntxt:<text> in RESP3; a bulk string in RESP2. */
  verbatim(text: string, format?: string): void;
  /** ><n> in RESP3; *<n> in RESP2. */
  pushHeader(n: number): void;
}

export type CommandFlag =
  | 'write' // changes data
  | 'readonly' // reads data only
  | 'admin' // server administration
  | 'noauth' // allowed before AUTH (HELLO, AUTH, QUIT, RESET)
  | 'fast' // O(1) or O(log n)
  | 'noscript'
  | 'loading'
  | 'stale';

export interface ClientState {
  readonly id: number;
  name: string;
  proto: 2 | 3;
  authenticated: boolean;
  user: string;
  libName: string;
  libVersion: string;
  /** Set by a handler (QUIT) to close the connection once the reply is flushed. */
  closeAfterReply: boolean;
  /** Name of the last command run (set by the dispatcher; CLIENT LIST shows it). */
  lastCommand?: string;
  /**
   * Registers `cb` to run once when the connection closes (a parked command cancels its wait with it); returns a
   * function that unregisters it. Absent on internal clients that never close.
   */
  onClose?(cb: () => void): () => void;
}

export interface CommandContext {
  reply: ReplySink;
  client: ClientState;
  /** The node-local keyspace. */
  db: CacheStore;
  /** Wall-clock time of this command in Unix milliseconds (taken once per batch by the server). */
  now: number;
}

export interface CommandSpec {
  /** Lower-case name; subcommands are handled by the parent's handler. */
  name: string;
  /** Redis convention: N means exactly N arguments including the name; -N means at least N. */
  arity: number;
  flags: readonly CommandFlag[];
  /** 1-based positions of keys (0 when none); lastKey -1 means "the last argument". */
  firstKey: number;
  lastKey: number;
  keyStep: number;
  /**
   * Runs the command. A synchronous handler writes its reply before returning. A handler of a command marked
   * `async: true` returns a promise and writes its reply (into `ctx.reply`, which then is its own buffer) before
   * the promise settles; the server still sends replies in request order.
   */
  handler(ctx: CommandContext, args: Buffer[]): void | Promise<void>;
  /** The handler waits for something (replication, a lock): it gets its own reply buffer. */
  async?: boolean;
  /**
   * For an `async` command that can often answer at once (a GET that hits the node's coherent cache): writes its
   * reply and returns true, or returns false having written nothing, and the async handler runs. Tried only when
   * the connection has no reply pending (so the answer is in order), after arity and auth checks passed.
   */
  fast?(ctx: CommandContext, args: Buffer[]): boolean;
  /** Short help line for COMMAND DOCS. */
  summary: string;
  /** Redis command group for COMMAND DOCS ('string', 'generic', 'connection', 'server', ...). */
  group: string;
}
