/**
 * The keyspace commands of a cluster node: the same names, arities, flags and key positions as the node-local
 * STRING_COMMANDS, but each runs on the Raft-replicated shard that owns its key (key -> CRC16 slot -> shard) via
 * the ShardRuntime, whose workers forward to the shard's leader wherever it is. Writes reply after they commit;
 * reads after a ReadIndex barrier on the leader.
 *
 * Multi-key commands are split per shard and recombined (not refused with -CROSSSLOT, so plain clients work on any
 * node): MGET keeps the order of the keys, DEL/UNLINK/EXISTS/TOUCH add up the counts, MSET sets each shard's part
 * (atomic per shard, not across shards: a failure part-way answers the first error and may leave the other shards'
 * part applied, like a Redis Cluster client that splits MSET). MSETNX must be all-or-nothing, which needs one
 * shard: across shards it is refused with -CROSSSLOT. Keyless commands go to every shard: DBSIZE sums, KEYS
 * concatenates, FLUSHALL/FLUSHDB flush each shard, RANDOMKEY tries shards in random order, and SCAN walks the shards
 * one after another with a cursor that encodes (cursor within the shard) * S + shard.
 *
 * Runtime failures map to RESP errors: TRYAGAIN (no leader yet, outcome unknown, leader busy, node stopping),
 * NOQUORUM (a majority of the shard's replicas is unreachable from here), ERR (a bug: never a user's input).
 */
import type { CommandContext, CommandSpec } from '../server/command.js';
import { STRING_COMMANDS, ERR_INVALID_CURSOR, ERR_SYNTAX, replyValue } from '../cache/string-commands.js';
import { isReplicatedWrite, lookupWrite } from './keyspace-machine.js';
import { replayReply } from './keyspace-reply.js';
import { isErrorValue, recordValue, type RecordValue } from './record-value.js';
import { shardOfSlot } from './ring.js';
import { keySlot } from './slots.js';
import type { ShardRuntime } from './shard-runtime.js';
import type { ShardReply } from './worker-protocol.js';
import { failureReply, type ClusterCache } from '../cache/cluster-cache.js';
import { CACHE_STATE, writeKeysOf } from '../cache/coherence-wire.js';

/** The RESP error for a failed shard request. */
export function shardErrorText(r: Extract<ShardReply, { ok: false }>): string {
  switch (r.code) {
    case 'NOQUORUM':
      return `NOQUORUM ${r.message}`;
    case 'TRYAGAIN':
    case 'BUSY':
    case 'STOPPED':
      return `TRYAGAIN ${r.message}`;
    case 'NOTLEADER':
      return `TRYAGAIN ${r.message} (leader moved; retry)`;
    case 'NOSHARD':
    case 'ERR':
      return `ERR ${r.message}`;
  }
}

const B = (s: string): Buffer => Buffer.from(s);

export interface ClusterKeyspaceDeps {
  runtime: ShardRuntime;
  shards: number;
  /**
   * The node's coherent cache (src/cache/cluster-cache.ts): GET is served from it, every write goes through the
   * shard's home via it. Without it every command goes to the shard's leader.
   */
  cache?: ClusterCache;
}


export function clusterKeyspaceCommands(deps: ClusterKeyspaceDeps): CommandSpec[] {
  const { runtime, shards, cache } = deps;
  const shardOf = (key: Buffer): number => shardOfSlot(keySlot(key), shards);
  /** Submits to the shard; a write goes through the cache (which invalidates every other copy first) when there is one. */
  const submit = (shard: number, kind: 'write' | 'read', args: Buffer[], cb: (r: ShardReply) => void): void => {
    if (kind === 'read' || cache === undefined) {
      runtime.submit(shard, kind, args, cb);
      return;
    }
    const spec = lookupWrite(args[0]);
    const keys = spec === undefined ? 'all' : writeKeysOf(spec, args);
    cache.write(shard, keys, args, keys !== 'all' && keys.length === 1 ? keys[0] : undefined, cb);
  };
  const exec = (shard: number, kind: 'write' | 'read', args: Buffer[]): Promise<ShardReply> => new Promise((resolve) => submit(shard, kind, args, resolve));

  /** One shard: replay its record (or its error) into the client's reply. */
  const single = (ctx: CommandContext, shard: number, kind: 'write' | 'read', args: Buffer[]): Promise<void> =>
    new Promise((resolve) => {
      submit(shard, kind, args, (r) => {
        if (r.ok) replayReply(r.record, ctx.reply);
        else ctx.reply.error(shardErrorText(r));
        resolve();
      });
    });

  /** Runs one request per shard (in parallel); the first failure or error value wins, else the decoded values. */
  const fanOut = async (parts: { shard: number; args: Buffer[] }[], kind: 'write' | 'read'): Promise<{ error: string } | RecordValue[]> => {
    const replies = await Promise.all(parts.map((p) => exec(p.shard, kind, p.args)));
    const values: RecordValue[] = [];
    for (const r of replies) {
      if (!r.ok) return { error: shardErrorText(r) };
      const v = recordValue(r.record);
      if (isErrorValue(v)) return v;
      values.push(v);
    }
    return values;
  };

  /** Groups key positions by shard, keeping order; `step` 2 for key/value pairs. */
  const groupKeys = (args: Buffer[], step: number): Map<number, number[]> => {
    const groups = new Map<number, number[]>();
    for (let i = 1; i < args.length; i += step) {
      const s = shardOf(args[i]!);
      let g = groups.get(s);
      if (g === undefined) groups.set(s, (g = []));
      g.push(i);
    }
    return groups;
  };

  const everyShard = (args: Buffer[]): { shard: number; args: Buffer[] }[] => Array.from({ length: shards }, (_, shard) => ({ shard, args }));

  const sumKeys = (name: string, kind: 'write' | 'read') => async (ctx: CommandContext, args: Buffer[]): Promise<void> => {
    const groups = groupKeys(args, 1);
    if (groups.size === 1) return single(ctx, groups.keys().next().value!, kind, args);
    const parts = [...groups].map(([shard, idx]) => ({ shard, args: [B(name), ...idx.map((i) => args[i]!)] }));
    const res = await fanOut(parts, kind);
    if (isErrorValue(res as RecordValue)) return ctx.reply.error((res as { error: string }).error);
    let n = 0;
    for (const v of res as RecordValue[]) n += Number(v);
    ctx.reply.integer(n);
  };

  const handlers: Record<string, CommandSpec['handler']> = {
    ...(cache === undefined
      ? {}
      : {
          get: (ctx: CommandContext, args: Buffer[]): Promise<void> =>
            new Promise((resolve) => {
              cache.get(shardOf(args[1]!), args[1]!, (r) => {
                if (!r.ok) ctx.reply.error(shardErrorText(failureReply(r)));
                else if (r.value === null) ctx.reply.nil();
                else ctx.reply.bulk(r.value.v);
                resolve();
              });
            }),
        }),
    del: sumKeys('del', 'write'),
    unlink: sumKeys('unlink', 'write'),
    exists: sumKeys('exists', 'read'),
    async mget(ctx, args) {
      const groups = groupKeys(args, 1);
      if (groups.size === 1) return single(ctx, groups.keys().next().value!, 'read', args);
      const entries = [...groups];
      const res = await fanOut(entries.map(([shard, idx]) => ({ shard, args: [B('mget'), ...idx.map((i) => args[i]!)] })), 'read');
      if (!Array.isArray(res)) return ctx.reply.error(res.error);
      const out: RecordValue[] = new Array(args.length - 1);
      entries.forEach(([, idx], g) => {
        const vals = res[g] as RecordValue[];
        idx.forEach((argIndex, j) => (out[argIndex - 1] = vals[j] ?? null));
      });
      ctx.reply.arrayHeader(out.length);
      for (const v of out) {
        if (Buffer.isBuffer(v)) ctx.reply.bulk(v);
        else ctx.reply.nil();
      }
    },
    async mset(ctx, args) {
      if ((args.length - 1) % 2 !== 0) return ctx.reply.error("ERR wrong number of arguments for 'mset' command");
      const groups = groupKeys(args, 2);
      if (groups.size === 1) return single(ctx, groups.keys().next().value!, 'write', args);
      const parts = [...groups].map(([shard, idx]) => ({ shard, args: [B('mset'), ...idx.flatMap((i) => [args[i]!, args[i + 1]!])] }));
      const res = await fanOut(parts, 'write');
      if (!Array.isArray(res)) return ctx.reply.error(res.error);
      ctx.reply.ok();
    },
    async msetnx(ctx, args) {
      if ((args.length - 1) % 2 !== 0) return ctx.reply.error("ERR wrong number of arguments for 'msetnx' command");
      const groups = groupKeys(args, 2);
      if (groups.size !== 1) return ctx.reply.error("CROSSSLOT Keys in request don't hash to the same shard (MSETNX is all-or-nothing; use {hashtags})");
      return single(ctx, groups.keys().next().value!, 'write', args);
    },
    async dbsize(ctx, args) {
      const res = await fanOut(everyShard(args), 'read');
      if (!Array.isArray(res)) return ctx.reply.error(res.error);
      ctx.reply.integer(res.reduce<number>((n, v) => n + Number(v), 0));
    },
    async keys(ctx, args) {
      const res = await fanOut(everyShard(args), 'read');
      if (!Array.isArray(res)) return ctx.reply.error(res.error);
      const all = res.flatMap((v) => (Array.isArray(v) ? v : []));
      ctx.reply.arrayHeader(all.length);
      for (const k of all) ctx.reply.bulk(k as Buffer);
    },
    async flushall(ctx, args) {
      const res = await fanOut(everyShard(args), 'write');
      if (!Array.isArray(res)) return ctx.reply.error(res.error);
      ctx.reply.ok();
    },
    async flushdb(ctx, args) {
      const res = await fanOut(everyShard(args), 'write');
      if (!Array.isArray(res)) return ctx.reply.error(res.error);
      ctx.reply.ok();
    },
    async randomkey(ctx, args) {
      const order = Array.from({ length: shards }, (_, i) => i);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1));
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      for (const shard of order) {
        const r = await exec(shard, 'read', args);
        if (!r.ok) return ctx.reply.error(shardErrorText(r));
        const v = recordValue(r.record);
        if (v !== null) return replayReply(r.record, ctx.reply);
      }
      ctx.reply.nil();
    },
    async scan(ctx, args) {
      const text = args[1]!.toString('latin1');
      if (!/^\d{1,20}$/.test(text)) return ctx.reply.error(ERR_INVALID_CURSOR);
      const cursor = BigInt(text);
      if (cursor >= 1n << 64n) return ctx.reply.error(ERR_INVALID_CURSOR);
      const S = BigInt(shards);
      let shard = Number(cursor % S);
      let inner = cursor / S;
      const rest = args.slice(2);
      if (rest.length % 2 !== 0) return ctx.reply.error(ERR_SYNTAX);
      // Walk shards until one returns keys or the last one is done (an empty page is allowed, as in Redis).
      for (;;) {
        const r = await exec(shard, 'read', [B('scan'), B(inner.toString()), ...rest]);
        if (!r.ok) return ctx.reply.error(shardErrorText(r));
        const v = recordValue(r.record);
        if (isErrorValue(v)) return ctx.reply.error(v.error);
        const [nextBuf, keys] = v as [Buffer, Buffer[]];
        const next = BigInt(nextBuf.toString('latin1'));
        let out: bigint;
        if (next !== 0n) out = next * S + BigInt(shard);
        else if (shard + 1 < shards) out = BigInt(shard + 1);
        else out = 0n;
        if (keys.length === 0 && next === 0n && shard + 1 < shards) {
          shard++;
          inner = 0n;
          continue;
        }
        ctx.reply.arrayHeader(2);
        ctx.reply.bulk(out.toString());
        ctx.reply.arrayHeader(keys.length);
        for (const k of keys) ctx.reply.bulk(k);
        return;
      }
    },
  };

  /**
   * CACHE.STATE key: each node's MESI state of the key, asked by the shard's home (so also its directory's view):
   * one [node id, state, directory] array per node. See serveCacheState in shard-worker.ts.
   */
  const cacheState: CommandSpec = {
    name: 'cache.state',
    arity: 2,
    flags: ['readonly'],
    firstKey: 1,
    lastKey: 1,
    keyStep: 1,
    async: true,
    summary: "Each node's MESI state (M/E/S/I) of a key, and the home directory's view of it",
    group: 'cache',
    handler: (ctx, args) => single(ctx, shardOf(args[1]!), 'read', [B(CACHE_STATE), args[1]!]),
  };

  const commands = STRING_COMMANDS.map((spec): CommandSpec => {
    const kind = isReplicatedWrite(spec) ? 'write' : 'read';
    const special = handlers[spec.name];
    let handler: CommandSpec['handler'];
    if (special !== undefined) handler = special;
    else if (spec.firstKey === 1 && spec.lastKey === 1) handler = (ctx, args) => single(ctx, shardOf(args[1]!), kind, args);
    else throw new Error(`cluster keyspace: no routing for '${spec.name}'`);
    if (spec.name === 'get' && cache !== undefined) {
      // A hit answers synchronously, with no thread hop: the async handler runs only for a miss.
      const fast = (ctx: CommandContext, args: Buffer[]): boolean => {
        const key = args[1]!;
        const e = cache.peekHit(shardOf(key), key);
        if (e === undefined) return false;
        if (e === null) ctx.reply.nil();
        else replyValue(ctx.reply, e);
        return true;
      };
      return { ...spec, handler, async: true, fast };
    }
    return { ...spec, handler, async: true };
  });
  commands.push(cacheState);
  return commands;
}
