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

  constructor(specs: Iterable<CommandSpec>) {
    for (const s of specs) this.add(s);
  }

  add(spec: CommandSpec): void {
    const name = spec.name.toLowerCase();
    if (this.byName.has(name)) throw new Error(`command ${name} is defined twice`);
    this.byName.set(name, spec);
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
  /** Cache of the lower-case name of the last few distinct command spellings (avoids toLowerCase per call). */
  private readonly nameCache = new Map<string, CommandSpec | null>();

  constructor(
    readonly table: CommandTable,
    private readonly logger: Logger,
    private readonly authRequired: () => boolean,
  ) {}

  lookup(nameArg: Buffer): CommandSpec | undefined {
    const raw = nameArg.length <= 32 ? nameArg.toString('latin1') : nameArg.toString('latin1').slice(0, 64);
    let spec = this.nameCache.get(raw);
    if (spec === undefined) {
      spec = this.table.get(raw.toLowerCase()) ?? null;
      if (this.nameCache.size > 4096) this.nameCache.clear();
      this.nameCache.set(raw, spec);
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
