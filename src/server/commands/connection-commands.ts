/**
 * Connection commands: PING, ECHO, HELLO, AUTH, SELECT, QUIT, RESET, CLIENT. Replies and error texts follow
 * Redis 7 so that redis-cli, ioredis and redis-benchmark behave as they do against Redis.
 */
import type { ReplyWriter } from '../../../protocol/resp/writer.js';
import type { CommandContext, CommandSpec } from '../command.js';
import { replyHelp } from './help.js';
import type { ClientConnection, RespServer } from '../resp-server.js';
import { REDIS_COMPAT_VERSION } from '../version.js';

function spec(
  name: string,
  arity: number,
  flags: CommandSpec['flags'],
  summary: string,
  handler: CommandSpec['handler'],
  group = 'connection',
): CommandSpec {
  return { name, arity, flags, firstKey: 0, lastKey: 0, keyStep: 0, summary, group, handler };
}

const upper = (b: Buffer | undefined): string => (b === undefined ? '' : b.toString('latin1').toUpperCase());

/** A client name may not contain spaces or newlines (CLIENT LIST would become unparsable). */
function validName(b: Buffer): boolean {
  for (const c of b) if (c < 33 || c > 126) return false;
  return true;
}

export function connectionCommands(server: RespServer): CommandSpec[] {
  const conn = (ctx: CommandContext) => ctx.client as ClientConnection;

  function helloReply(ctx: CommandContext): void {
    const r = ctx.reply;
    r.mapHeader(7);
    r.bulk('server');
    r.bulk('lockstep');
    r.bulk('version');
    r.bulk(REDIS_COMPAT_VERSION);
    r.bulk('proto');
    r.integer(ctx.client.proto);
    r.bulk('id');
    r.integer(ctx.client.id);
    r.bulk('mode');
    r.bulk('standalone');
    r.bulk('role');
    r.bulk('master');
    r.bulk('modules');
    r.arrayHeader(0);
  }

  return [
    spec('ping', -1, ['fast', 'stale'], 'Returns the server\'s liveliness response.', (ctx, args) => {
      if (args.length > 2) return ctx.reply.error("ERR wrong number of arguments for 'ping' command");
      if (args.length === 2) ctx.reply.bulk(args[1]!);
      else ctx.reply.simple('PONG');
    }),
    spec('echo', 2, ['fast'], 'Returns the given string.', (ctx, args) => ctx.reply.bulk(args[1]!)),
    spec('select', 2, ['fast', 'loading', 'stale'], 'Changes the selected database.', (ctx, args) => {
      const s = args[1]!.toString('latin1');
      if (!/^-?\d+$/.test(s)) return ctx.reply.error('ERR value is not an integer or out of range');
      if (s !== '0') return ctx.reply.error('ERR DB index is out of range');
      ctx.reply.ok();
    }),
    spec('quit', -1, ['noauth', 'fast', 'loading', 'stale'], 'Closes the connection.', (ctx) => {
      ctx.reply.ok();
      ctx.client.closeAfterReply = true;
    }),
    spec('auth', -2, ['noauth', 'fast', 'loading', 'stale'], 'Authenticates the connection.', (ctx, args) => {
      if (args.length > 3) return ctx.reply.error('ERR syntax error');
      const user = args.length === 3 ? args[1]!.toString('utf8') : 'default';
      const pass = args[args.length - 1]!;
      if (args.length === 2 && !server.acl.authRequired) {
        return ctx.reply.error(
          'ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?',
        );
      }
      if (!server.acl.check(user, pass)) {
        return ctx.reply.error('WRONGPASS invalid username-password pair or user is disabled.');
      }
      ctx.client.authenticated = true;
      ctx.client.user = user;
      ctx.reply.ok();
    }),
    spec('hello', -1, ['noauth', 'fast', 'loading', 'stale'], 'Handshakes with the server.', (ctx, args) => {
      let proto: 2 | 3 = ctx.client.proto;
      let i = 1;
      if (args.length >= 2) {
        const v = args[1]!.toString('latin1');
        if (!/^-?\d+$/.test(v)) return ctx.reply.error('ERR Protocol version is not an integer or out of range');
        if (v !== '2' && v !== '3') return ctx.reply.error('NOPROTO unsupported protocol version');
        proto = v === '3' ? 3 : 2;
        i = 2;
      }
      let setName: Buffer | undefined;
      for (; i < args.length; i++) {
        const opt = upper(args[i]);
        if (opt === 'AUTH' && i + 2 < args.length) {
          const user = args[i + 1]!.toString('utf8');
          if (!server.acl.check(user, args[i + 2]!)) {
            return ctx.reply.error('WRONGPASS invalid username-password pair or user is disabled.');
          }
          ctx.client.authenticated = true;
          ctx.client.user = user;
          i += 2;
        } else if (opt === 'SETNAME' && i + 1 < args.length) {
          setName = args[i + 1]!;
          if (!validName(setName)) {
            return ctx.reply.error('ERR Client names cannot contain spaces, newlines or special characters.');
          }
          i += 1;
        } else {
          return ctx.reply.error(`ERR Syntax error in HELLO option '${args[i]!.toString('utf8')}'`);
        }
      }
      if (!ctx.client.authenticated && server.acl.authRequired) {
        return ctx.reply.error('NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time');
      }
      if (setName) ctx.client.name = setName.toString('utf8');
      ctx.client.proto = proto;
      conn(ctx).writer.proto = proto;
      // When HELLO runs behind an async command its reply goes to a buffer of its own: switch that one too.
      (ctx.reply as ReplyWriter).proto = proto;
      helloReply(ctx);
    }),
    spec('reset', 1, ['noauth', 'fast', 'loading', 'stale'], 'Resets the connection.', (ctx) => {
      const c = conn(ctx);
      c.proto = 2;
      c.writer.proto = 2;
      c.name = '';
      c.authenticated = !server.acl.authRequired;
      c.user = 'default';
      ctx.reply.simple('RESET');
    }),
    spec('client', -2, ['admin', 'loading', 'stale'], 'A container for client connection commands.', (ctx, args) => {
      const sub = upper(args[1]);
      const r = ctx.reply;
      const c = conn(ctx);
      const wrongArgs = () => r.error(`ERR wrong number of arguments for 'client|${sub.toLowerCase()}' command`);
      switch (sub) {
        case 'ID':
          if (args.length !== 2) return wrongArgs();
          return r.integer(c.id);
        case 'GETNAME':
          if (args.length !== 2) return wrongArgs();
          return c.name === '' ? r.nil() : r.bulk(c.name);
        case 'SETNAME':
          if (args.length !== 3) return wrongArgs();
          if (!validName(args[2]!)) {
            return r.error('ERR Client names cannot contain spaces, newlines or special characters.');
          }
          c.name = args[2]!.toString('utf8');
          return r.ok();
        case 'SETINFO': {
          if (args.length !== 4) return wrongArgs();
          const attr = upper(args[2]);
          const value = args[3]!;
          if (!validName(value) && value.length > 0) {
            return r.error(`ERR ${attr} cannot contain spaces, newlines or special characters.`);
          }
          if (attr === 'LIB-NAME') c.libName = value.toString('utf8');
          else if (attr === 'LIB-VER') c.libVersion = value.toString('utf8');
          else return r.error(`ERR Unrecognized option '${args[2]!.toString('utf8')}'`);
          return r.ok();
        }
        case 'INFO':
          if (args.length !== 2) return wrongArgs();
          return r.verbatim(c.describe(Date.now()) + '\n');
        case 'LIST': {
          let ids: Set<number> | undefined;
          if (args.length > 2) {
            if (upper(args[2]) === 'TYPE' && args.length === 4) {
              const t = upper(args[3]);
              if (!['NORMAL', 'MASTER', 'REPLICA', 'PUBSUB'].includes(t)) {
                return r.error(`ERR Unknown client type '${args[3]!.toString('utf8')}'`);
              }
              if (t !== 'NORMAL') return r.verbatim('');
            } else if (upper(args[2]) === 'ID' && args.length >= 4) {
              ids = new Set();
              for (const a of args.slice(3)) {
                const n = Number(a.toString('latin1'));
                if (!Number.isSafeInteger(n) || n <= 0) return r.error('ERR Invalid client ID');
                ids.add(n);
              }
            } else return r.error('ERR syntax error');
          }
          const now = Date.now();
          let out = '';
          for (const cl of server.clients.values()) if (!ids || ids.has(cl.id)) out += cl.describe(now) + '\n';
          return r.verbatim(out);
        }
        case 'KILL': {
          if (args.length === 3) {
            // old form: CLIENT KILL addr:port
            const addr = args[2]!.toString('utf8');
            for (const cl of server.clients.values()) {
              if (cl.addr === addr) {
                server.killClient(cl.id);
                return r.ok();
              }
            }
            return r.error('ERR No such client');
          }
          if (args.length < 4 || args.length % 2 !== 0) return r.error('ERR syntax error');
          let id: number | undefined;
          let addr: string | undefined;
          let laddr: string | undefined;
          let user: string | undefined;
          let skipMe = true;
          for (let i = 2; i < args.length; i += 2) {
            const k = upper(args[i]);
            const v = args[i + 1]!.toString('utf8');
            if (k === 'ID') {
              id = Number(v);
              if (!Number.isSafeInteger(id) || id <= 0) return r.error('ERR client-id should be greater than 0');
            } else if (k === 'ADDR') addr = v;
            else if (k === 'LADDR') laddr = v;
            else if (k === 'USER') user = v;
            else if (k === 'SKIPME') {
              const yes = v.toLowerCase();
              if (yes !== 'yes' && yes !== 'no') return r.error('ERR syntax error');
              skipMe = yes === 'yes';
            } else if (k === 'TYPE') {
              if (v.toLowerCase() !== 'normal') return r.integer(0);
            } else return r.error('ERR syntax error');
          }
          let killed = 0;
          for (const cl of [...server.clients.values()]) {
            if (id !== undefined && cl.id !== id) continue;
            if (addr !== undefined && cl.addr !== addr) continue;
            if (laddr !== undefined && cl.laddr !== laddr) continue;
            if (user !== undefined && cl.user !== user) continue;
            if (skipMe && cl === c) continue;
            if (server.killClient(cl.id)) killed++;
          }
          return r.integer(killed);
        }
        case 'HELP': {
          const lines = [
            'CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:',
            'ID', '    Return the ID of the current connection.',
            'GETNAME', '    Return the name of the current connection.',
            'SETNAME <name>', '    Assign the name <name> to the current connection.',
            'SETINFO <LIB-NAME|LIB-VER> <value>', '    Set client library name or version.',
            'INFO', '    Return information about the current client connection.',
            'LIST [TYPE NORMAL] [ID <id> [<id> ...]]', '    Return information about client connections.',
            'KILL <ip:port> | KILL [ID <id>] [ADDR <ip:port>] [LADDR <ip:port>] [USER <name>] [SKIPME yes|no]',
            '    Kill connections.',
            'HELP', '    Print this help.',
          ];
          return replyHelp(r, lines);
        }
        default:
          return r.error(`ERR unknown subcommand '${args[1]!.toString('utf8')}'. Try CLIENT HELP.`);
      }
    }),
  ];
}

