/**
 * The command table and the one dispatcher every request goes through. Order of checks (as in Redis'
 * processCommand): known command -> arity -> authentication -> handler. Handlers run only with the right number of
 * arguments and an authenticated client; a handler that throws is a bug, answered with `-ERR internal error` and
 * logged, and the connection keeps working.
 */
import type { Logger } from 'pino';
import type { CommandContext, CommandSpec } from './command.js';

export class CommandTable {
  private readonly byName = new Map<string, CommandSpec>();
  /** Bumped by every add(), so that a dispatcher drops the name lookups it cached before. */
  version = 0;

  constructor(specs: Iterable<CommandSpec>) {
    for (const s of specs) this.add(s);
  }

  add(spec: CommandSpec): void {
    const name = spec.name.toLowerCase();
    if (this.byName.has(name)) throw new Error(`command ${name} is defined twice`);
    this.byName.set(name, spec);
    this.version++;
  }

  get(lowerName: string): CommandSpec | undefined {
    return this.byName.get(lowerName);
  }

  get size(): number {
    return this.byName.size;
  }

  all(): IterableIterator<CommandSpec> {
    return this.byName.values();
  }
}

/** Names up to this many bytes are cached by their packed bytes: 6 bytes and the length fit a double exactly. */
const SHORT_NAME_BYTES = 6;
/** Distinct spellings the name cache holds before it starts over (a client sending random names cannot grow it). */
const NAME_CACHE_MAX = 4096;

/** Quoted, truncated args for error messages, as Redis prints them. */
function argsPreview(args: Buffer[], from: number): string {
  let out = '';
  for (let i = from; i < args.length && out.length < 128; i++) {
    out += `'${args[i]!.toString('utf8', 0, Math.min(args[i]!.length, 128))}' `;
  }
  return out;
}

export interface DispatchStats {
  commands: number;
  rejected: number;
  errors: number;
}

export class Dispatcher {
  readonly stats: DispatchStats = { commands: 0, rejected: 0, errors: 0 };
  /** Per-command call counts, for INFO commandstats. */
  readonly calls = new Map<string, number>();
  /**
   * Command spellings seen, to their spec (null: unknown), so that a name is lower-cased once, not per call. Keyed
   * by the packed bytes for names of at most SHORT_NAME_BYTES bytes, by the name's string otherwise (see lookup).
   */
  private readonly nameCache = new Map<number | string, CommandSpec | null>();
  /** table.version the cache was filled under. */
  private tableVersion = -1;

  constructor(
    readonly table: CommandTable,
    private readonly logger: Logger,
    private readonly authRequired: () => boolean,
  ) {}

  lookup(nameArg: Buffer): CommandSpec | undefined {
    if (this.tableVersion !== this.table.version) {
      this.nameCache.clear();
      this.tableVersion = this.table.version;
    }
    const n = nameArg.length;
    let key: number | string;
    if (n > 0 && n <= SHORT_NAME_BYTES) {
      // Short names (GET, SET, INCR, LPUSH, Q.PUSH, ...) are keyed by their bytes packed into one number, exact
      // spelling, without making a string per command.
      key = n;
      for (let i = 0; i < n; i++) key = key * 256 + nameArg[i]!;
    } else key = n <= 32 ? nameArg.toString('latin1') : nameArg.toString('latin1').slice(0, 64);
    let spec = this.nameCache.get(key);
    if (spec === undefined) {
      const name = typeof key === 'string' ? key : nameArg.toString('latin1');
      spec = this.table.get(name.toLowerCase()) ?? null;
      if (this.nameCache.size >= NAME_CACHE_MAX) this.nameCache.clear();
      this.nameCache.set(key, spec);
    }
    return spec ?? undefined;
  }

  /**
   * Tries `spec.fast` (see CommandSpec): true if it answered. False, with nothing written, when the command has no
   * fast path, fails a check (dispatch() then answers the error), or the fast path declined.
   */
  tryFast(ctx: CommandContext, args: Buffer[], spec: CommandSpec): boolean {
    const fast = spec.fast;
    if (fast === undefined) return false;
    const n = args.length;
    if ((spec.arity > 0 && n !== spec.arity) || (spec.arity < 0 && n < -spec.arity)) return false;
    if (!ctx.client.authenticated && this.authRequired() && !spec.flags.includes('noauth')) return false;
    let done: boolean;
    try {
      done = fast(ctx, args);
    } catch (err) {
      this.logger.error({ err, command: spec.name }, 'command fast path failed');
      return false;
    }
    if (done) {
      this.stats.commands++;
      ctx.client.lastCommand = spec.name;
      this.calls.set(spec.name, (this.calls.get(spec.name) ?? 0) + 1);
    }
    return done;
  }

  /** Runs one command; returns the handler's promise for `async` commands (it never rejects). */
  dispatch(ctx: CommandContext, args: Buffer[], looked?: CommandSpec): Promise<void> | undefined {
    const first = args[0];
    if (first === undefined) return;
    const spec = looked ?? this.lookup(first);
    const reply = ctx.reply;
    if (spec === undefined) {
      this.stats.rejected++;
      reply.error(
        `ERR unknown command '${first.toString('utf8', 0, Math.min(first.length, 128))}', with args beginning with: ${argsPreview(args, 1)}`,
      );
      return;
    }
    const n = args.length;
    if ((spec.arity > 0 && n !== spec.arity) || (spec.arity < 0 && n < -spec.arity)) {
      this.stats.rejected++;
      reply.error(`ERR wrong number of arguments for '${spec.name}' command`);
      return;
    }
    if (!ctx.client.authenticated && this.authRequired() && !spec.flags.includes('noauth')) {
      this.stats.rejected++;
      reply.error('NOAUTH Authentication required.');
      return;
    }
    this.stats.commands++;
    ctx.client.lastCommand = spec.name;
    this.calls.set(spec.name, (this.calls.get(spec.name) ?? 0) + 1);
    try {
      const p = spec.handler(ctx, args);
      if (p !== undefined) {
        return p.catch((err: unknown) => {
          this.stats.errors++;
          this.logger.error({ err, command: spec.name }, 'command handler failed');
          reply.error(`ERR internal error in '${spec.name}'`);
        });
      }
    } catch (err) {
      this.stats.errors++;
      this.logger.error({ err, command: spec.name }, 'command handler failed');
      reply.error(`ERR internal error in '${spec.name}'`);
    }
    return undefined;
  }
}
