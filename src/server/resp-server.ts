/**
 * The RESP front end: accepts client connections, parses requests (protocol/resp), runs them through the
 * dispatcher and writes replies in order.
 *
 * Per connection:  socket 'data' -> RespParser.feed -> Dispatcher.dispatch (per command, in order) -> ReplyWriter
 *                  -> one socket.write per read (all replies of a pipelined batch go out together).
 * Async commands (replicated writes, lock waits) finish later: each marks its reply slot done and queues its
 * connection for one flush at the end of the event-loop turn (setImmediate), so the replies of a pipelined batch
 * that complete in the same turn (one Raft commit answers many) leave in one write, not one write each.
 *
 * Invariants and limits:
 * - Replies leave in request order; a batch of pipelined commands is answered with one write.
 * - A malformed stream gets `-ERR Protocol error: ...` and the connection is closed (it cannot be resynced).
 * - At most `clientsMax` connections; one more gets `-ERR max number of clients reached` and is closed.
 * - Backpressure: while a client's unsent replies exceed `outputBufferPauseBytes` the server stops reading from it;
 *   beyond `outputBufferBytesMax` the client is disconnected (Redis' client-output-buffer-limit).
 * - Protected mode: with no password set, only loopback clients are served.
 * None of these ever affects another client.
 */
import net from 'node:net';
import type { Logger } from 'pino';
import { RespParser } from '../../protocol/resp/parser.js';
import { ReplyWriter } from '../../protocol/resp/writer.js';
import type { CacheStore } from '../cache/store.js';
import type { RespLimits, ServerLimits } from '../config/limits.js';
import type { Acl } from './acl.js';
import type { ClientState, CommandContext, CommandSpec } from './command.js';
import { CommandTable, Dispatcher } from './dispatcher.js';

/** First buffer of a reply slot (one async command's reply); grows as needed. */
const SLOT_SLAB_BYTES = 256;

export interface ServerOptions {
  host: string;
  port: number;
  resp: RespLimits;
  server: ServerLimits;
  protectedMode: boolean;
}

export interface ServerStats {
  connectionsReceived: number;
  connectionsRejected: number;
  protocolErrors: number;
  outputLimitDisconnects: number;
  netInputBytes: number;
  netOutputBytes: number;
  pausedReads: number;
  /** Socket reads handled and socket writes issued (Redis' total_reads_processed / total_writes_processed). */
  reads: number;
  writes: number;
}

export class ClientConnection implements ClientState {
  name = '';
  proto: 2 | 3 = 2;
  authenticated: boolean;
  user = 'default';
  libName = '';
  libVersion = '';
  closeAfterReply = false;
  readonly createdAt = Date.now();
  lastCommandAt = Date.now();
  lastCommand: string | undefined = undefined;
  paused = false;
  closed = false;
  /** Queued for the server's end-of-turn flush. */
  flushQueued = false;
  private closeHooks: Set<() => void> | null = null;
  /**
   * Replies not yet in `writer` because an earlier command is still running (an async command): one slot per
   * command, in request order. Empty on the fast path.
   */
  readonly slots: { writer: ReplyWriter; done: boolean }[] = [];
  readonly writer = new ReplyWriter(2);
  readonly parser: RespParser;
  readonly ctx: CommandContext;
  readonly addr: string;
  readonly laddr: string;

  onClose(cb: () => void): () => void {
    if (this.closed) {
      queueMicrotask(cb);
      return () => undefined;
    }
    (this.closeHooks ??= new Set()).add(cb);
    return () => this.closeHooks?.delete(cb);
  }

  /** Runs the close hooks once (the socket closed). */
  runCloseHooks(): void {
    const hooks = this.closeHooks;
    this.closeHooks = null;
    if (hooks !== null) for (const cb of hooks) cb();
  }

  constructor(
    readonly id: number,
    readonly socket: net.Socket,
    limits: RespLimits,
    db: CacheStore,
    authRequired: boolean,
  ) {
    this.parser = new RespParser(limits);
    this.authenticated = !authRequired;
    this.ctx = { reply: this.writer, client: this, db, now: 0 };
    this.addr = `${socket.remoteAddress}:${socket.remotePort}`;
    this.laddr = `${socket.localAddress}:${socket.localPort}`;
  }

  /** A line of CLIENT LIST / CLIENT INFO. */
  describe(now: number): string {
    const age = Math.floor((now - this.createdAt) / 1000);
    const idle = Math.floor((now - this.lastCommandAt) / 1000);
    return (
      `id=${this.id} addr=${this.addr} laddr=${this.laddr} fd=-1 name=${this.name} age=${age} idle=${idle} ` +
      `flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=${this.parser.bufferedBytes} qbuf-free=0 argv-mem=0 ` +
      `multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=${this.socket.writableLength} tot-mem=0 events=r ` +
      `cmd=${this.lastCommand ?? 'NULL'} user=${this.user} redir=-1 resp=${this.proto} lib-name=${this.libName} lib-ver=${this.libVersion}`
    );
  }
}

export class RespServer {
  readonly table: CommandTable;
  readonly dispatcher: Dispatcher;
  readonly clients = new Map<number, ClientConnection>();
  readonly stats: ServerStats = {
    connectionsReceived: 0,
    connectionsRejected: 0,
    protocolErrors: 0,
    outputLimitDisconnects: 0,
    netInputBytes: 0,
    netOutputBytes: 0,
    pausedReads: 0,
    reads: 0,
    writes: 0,
  };
  readonly startedAt = Date.now();
  private nextClientId = 1;
  /** Connections with finished async replies, flushed once at the end of this event-loop turn. */
  private flushList: ClientConnection[] = [];
  private flushScheduled = false;
  private readonly server: net.Server;
  private boundPort = 0;

  constructor(
    readonly options: ServerOptions,
    readonly db: CacheStore,
    readonly acl: Acl,
    commands: Iterable<CommandSpec>,
    private readonly logger: Logger,
  ) {
    this.table = new CommandTable(commands);
    this.dispatcher = new Dispatcher(this.table, logger, () => acl.authRequired);
    this.server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.server.on('error', (err) => logger.error({ err }, 'RESP server error'));
  }

  /** Adds commands after construction (admin commands need the server itself). */
  addCommands(specs: Iterable<CommandSpec>): void {
    for (const s of specs) this.table.add(s);
  }

  get port(): number {
    return this.boundPort;
  }

  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen(this.options.port, this.options.host, () => {
        this.server.off('error', onError);
        const addr = this.server.address();
        this.boundPort = typeof addr === 'object' && addr ? addr.port : this.options.port;
        resolve(this.boundPort);
      });
    });
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of this.clients.values()) c.socket.destroy();
    await closed;
  }

  killClient(id: number): boolean {
    const c = this.clients.get(id);
    if (!c) return false;
    c.closeAfterReply = true;
    c.socket.end();
    setImmediate(() => c.socket.destroy());
    return true;
  }

  /** Protected mode: with no password for the default user, only loopback clients are admitted. */
  admits(remoteAddress: string | undefined): boolean {
    if (!this.options.protectedMode || !this.acl.defaultUserOpen) return true;
    if (remoteAddress === undefined) return false;
    return remoteAddress.startsWith('127.') || remoteAddress === '::1' || remoteAddress.startsWith('::ffff:127.');
  }

  private accept(socket: net.Socket): void {
    this.stats.connectionsReceived++;
    socket.setNoDelay(true);
    if (this.clients.size >= this.options.server.clientsMax) {
      this.stats.connectionsRejected++;
      socket.end('-ERR max number of clients reached\r\n');
      socket.on('error', () => {});
      return;
    }
    if (!this.admits(socket.remoteAddress)) {
      this.stats.connectionsRejected++;
      socket.end(
        '-DENIED Lockstep is running in protected mode because protected mode is enabled and no password is set ' +
          'for the default user. Only loopback clients are served. Set a password (--requirepass) or disable ' +
          'protected mode (--no-protected-mode) to accept remote clients.\r\n',
      );
      socket.on('error', () => {});
      return;
    }
    const client = new ClientConnection(this.nextClientId++, socket, this.options.resp, this.db, this.acl.authRequired);
    this.clients.set(client.id, client);
    socket.on('data', (chunk: Buffer) => this.onData(client, chunk));
    socket.on('drain', () => this.onDrain(client));
    socket.on('error', (err) => this.logger.debug({ err, client: client.id }, 'client socket error'));
    socket.on('close', () => {
      client.closed = true;
      this.clients.delete(client.id);
      try {
        client.runCloseHooks();
      } catch (err) {
        this.logger.error({ err, client: client.id }, 'client close hook failed');
      }
    });
  }

  private onData(client: ClientConnection, chunk: Buffer): void {
    if (client.closed || client.closeAfterReply) return;
    this.stats.reads++;
    this.stats.netInputBytes += chunk.length;
    const ctx = client.ctx;
    ctx.now = Date.now();
    const err = client.parser.feed(chunk, (args) => {
      if (client.closeAfterReply || client.closed) return;
      const spec = this.dispatcher.lookup(args[0]!);
      if (client.slots.length === 0 && spec?.async !== true) this.dispatcher.dispatch(ctx, args, spec);
      else if (client.slots.length === 0 && spec!.fast !== undefined && this.dispatcher.tryFast(ctx, args, spec!)) {
        // answered at once (a cache hit)
      } else this.dispatchOrdered(client, args, spec);
      // A large pipeline may produce far more reply bytes than it took to ask: hand them to the socket early and
      // enforce the output limit per command, not per read.
      if (client.writer.length > this.options.server.outputBufferPauseBytes) this.flush(client);
    });
    if (client.closed) return;
    if (err) {
      this.stats.protocolErrors++;
      if (client.slots.length === 0) client.writer.error(`ERR ${err.message}`);
      else {
        const w = new ReplyWriter(client.proto);
        w.error(`ERR ${err.message}`);
        client.slots.push({ writer: w, done: true });
      }
      client.closeAfterReply = true;
      this.logger.debug({ client: client.id, addr: client.addr, reason: err.message }, 'closing client: protocol error');
    }
    client.lastCommandAt = ctx.now;
    this.flush(client);
  }

  /**
   * Slow path: the command is async, or runs behind one. It writes into its own buffer; buffers are moved to the
   * connection's writer strictly in request order as the commands at the head complete.
   */
  private dispatchOrdered(client: ClientConnection, args: Buffer[], spec: CommandSpec | undefined): void {
    // Args may be views into the read buffer, which is reused once this read is parsed: an async handler that
    // looks at them later needs its own copy.
    const own = spec?.async === true ? args.map((a) => Buffer.from(a)) : args;
    const slot = { writer: new ReplyWriter(client.proto, SLOT_SLAB_BYTES), done: false };
    client.slots.push(slot);
    const ctx: CommandContext = { reply: slot.writer, client, db: this.db, now: client.ctx.now };
    const p = this.dispatcher.dispatch(ctx, own, spec);
    if (p === undefined) slot.done = true;
    else
      void p.then(() => {
        slot.done = true;
        if (!client.closed) this.flushSoon(client);
      });
  }

  /**
   * Queues the connection for one flush at the end of this event-loop turn: the async replies finishing in the same
   * turn (a worker's reply batch answers many at once) then leave in one socket write.
   */
  private flushSoon(client: ClientConnection): void {
    if (client.flushQueued) return;
    client.flushQueued = true;
    this.flushList.push(client);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushQueued);
    }
  }

  private readonly flushQueued = (): void => {
    const list = this.flushList;
    this.flushList = [];
    this.flushScheduled = false;
    for (const client of list) {
      client.flushQueued = false;
      // flush moves the finished head slots into the writer first
      if (!client.closed) this.flush(client);
    }
  };

  private moveDoneSlots(client: ClientConnection): void {
    let n = 0;
    while (n < client.slots.length && client.slots[n]!.done) {
      const w = client.slots[n]!.writer;
      if (w.length > 0) client.writer.raw(w.take());
      n++;
    }
    if (n > 0) client.slots.splice(0, n);
  }

  private flush(client: ClientConnection): void {
    const socket = client.socket;
    if (client.slots.length > 0) this.moveDoneSlots(client);
    if (client.writer.length > 0) {
      const out = client.writer.take();
      this.stats.netOutputBytes += out.length;
      this.stats.writes++;
      socket.write(out);
    }
    if (client.closeAfterReply && client.slots.length === 0) {
      socket.end();
      return;
    }
    const pending = socket.writableLength;
    if (pending > this.options.server.outputBufferBytesMax) {
      this.stats.outputLimitDisconnects++;
      this.logger.warn({ client: client.id, addr: client.addr, pending }, 'closing client: output buffer limit reached');
      client.closed = true;
      socket.destroy();
      return;
    }
    if (pending > this.options.server.outputBufferPauseBytes && !client.paused) {
      client.paused = true;
      this.stats.pausedReads++;
      socket.pause();
    }
  }

  private onDrain(client: ClientConnection): void {
    if (client.paused) {
      client.paused = false;
      client.socket.resume();
    }
  }
}
