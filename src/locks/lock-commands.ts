/**
 * The LOCK.* commands of a cluster node (the edge side of the lock manager): parse and check a client's request,
 * turn it into an internal lock command (lock-entries.ts) for the shard that owns the lock name (name -> CRC16
 * slot -> shard, hashtags honoured), and relay the reply. Also the cluster-wide deadlock detector's rounds.
 *
 *   LOCK.ACQUIRE name owner [MODE EXCLUSIVE|SHARED] [TTL ms] [WAIT ms] -> token | nil | -DEADLOCK <cycle>
 *   LOCK.RELEASE name owner [TOKEN t] -> 1 | 0        LOCK.RENEW name owner ttl-ms -> 1 | 0
 *   LOCK.INFO name -> map | nil                        LOCK.OWNED owner -> [[name, mode, token, remaining_ms]...]
 *   LOCK.DEADLOCKS -> [[at_ms, name, victim, cycle]...], oldest first
 *
 * A waiting acquire is parked on the shard (no client polling). If the client disconnects while it waits, or the
 * request fails with an unknown outcome, the edge sends a cancel for its waiter id: the shard drops the waiter, or
 * releases the grant it may already have produced (nobody learned of it). A retry by the same owner before the
 * cancel lands is harmless: it takes over the waiter (or the grant) under its own new id.
 */
import { randomBytes } from 'node:crypto';
import type { CommandContext, CommandSpec } from '../server/command.js';
import { replayReply } from '../cluster/keyspace-reply.js';
import { isErrorValue, recordValue, type RecordValue } from '../cluster/record-value.js';
import { shardOfSlot } from '../cluster/ring.js';
import { keySlot } from '../cluster/slots.js';
import type { ShardRuntime } from '../cluster/shard-runtime.js';
import type { ShardReply } from '../cluster/worker-protocol.js';
import { shardErrorText } from '../cluster/cluster-keyspace.js';
import { LK_ABORT, LK_ACQUIRE, LK_CANCEL, LK_DEADLOCKS, LK_EDGES, LK_INFO, LK_OWNED, LK_RELEASE, LK_RENEW, LOCK_TIME_MS_MAX } from './lock-entries.js';
import { LOCK_LIMITS_DEFAULT } from './lock-table.js';
import { DeadlockDetector, type DetectorEdge } from './deadlock-detector.js';

/** Lease of a lock acquired without TTL. */
export const LOCK_TTL_MS_DEFAULT = 30_000;

const ERR_SYNTAX = 'ERR syntax error';
const ERR_INT = 'ERR value is not an integer or out of range';

export interface LockCommandDeps {
  runtime: ShardRuntime;
  shards: number;
  nodeId: number;
}

const B = (s: string): Buffer => Buffer.from(s);

function parseMs(b: Buffer, min: number): number | string {
  const s = b.toString('latin1');
  if (!/^-?\d{1,16}$/.test(s)) return ERR_INT;
  const n = Number(s);
  if (n < min || n > LOCK_TIME_MS_MAX) return `ERR timeout out of range (${min}..${LOCK_TIME_MS_MAX} ms)`;
  return n;
}

function checkNameOwner(name: Buffer, owner: Buffer): string | null {
  if (name.length === 0 || name.length > LOCK_LIMITS_DEFAULT.nameBytesMax) return `ERR lock name must be 1..${LOCK_LIMITS_DEFAULT.nameBytesMax} bytes`;
  if (owner.length === 0 || owner.length > LOCK_LIMITS_DEFAULT.ownerBytesMax) return `ERR owner must be 1..${LOCK_LIMITS_DEFAULT.ownerBytesMax} bytes`;
  return null;
}

export function lockCommands(deps: LockCommandDeps): CommandSpec[] {
  const { runtime, shards } = deps;
  const shardOf = (name: Buffer): number => shardOfSlot(keySlot(name), shards);
  // Waiter ids: unique across this node's restarts (a random boot tag) and across nodes (the node id).
  const boot = randomBytes(4).toString('hex');
  let seq = 0;
  const newWaiterId = (): string => `${deps.nodeId}.${boot}.${(seq++).toString(36)}`;

  const relay = (ctx: CommandContext, shard: number, kind: 'write' | 'read', args: Buffer[]): Promise<void> =>
    new Promise((resolve) => {
      runtime.submit(shard, kind, args, (r) => {
        if (r.ok) replayReply(r.record, ctx.reply);
        else ctx.reply.error(shardErrorText(r));
        resolve();
      });
    });

  const cancel = (shard: number, name: Buffer, waiterId: string): void => {
    runtime.submit(shard, 'write', [B(LK_CANCEL), name, B(waiterId)], () => undefined);
  };

  /** Every shard's answer to a read, decoded; the first failure wins. */
  const everyShard = async (args: Buffer[]): Promise<RecordValue[][] | string> => {
    const replies: ShardReply[] = await Promise.all(Array.from({ length: shards }, (_, s) => runtime.execute(s, 'read', args)));
    const out: RecordValue[][] = [];
    for (const r of replies) {
      if (!r.ok) return shardErrorText(r);
      const v = recordValue(r.record);
      if (isErrorValue(v)) return v.error;
      out.push(Array.isArray(v) ? v : []);
    }
    return out;
  };

  const spec = (name: string, arity: number, flags: CommandSpec['flags'], firstKey: number, summary: string, handler: CommandSpec['handler']): CommandSpec => ({
    name,
    arity,
    flags,
    firstKey,
    lastKey: firstKey,
    keyStep: firstKey === 0 ? 0 : 1,
    handler,
    async: true,
    summary,
    group: 'lock',
  });

  return [
    spec('lock.acquire', -3, ['write'], 1, 'Acquires a lock: a fencing token, nil if not granted within WAIT, or -DEADLOCK', async (ctx, args) => {
      const name = args[1]!;
      const owner = args[2]!;
      const bad = checkNameOwner(name, owner);
      if (bad !== null) return ctx.reply.error(bad);
      let mode = 'X';
      let ttl = LOCK_TTL_MS_DEFAULT;
      let wait = 0;
      for (let i = 3; i < args.length; i += 2) {
        const opt = args[i]!.toString('latin1').toUpperCase();
        const val = args[i + 1];
        if (val === undefined) return ctx.reply.error(ERR_SYNTAX);
        if (opt === 'MODE') {
          const m = val.toString('latin1').toUpperCase();
          if (m === 'EXCLUSIVE' || m === 'X') mode = 'X';
          else if (m === 'SHARED' || m === 'S') mode = 'S';
          else return ctx.reply.error('ERR MODE must be EXCLUSIVE or SHARED');
        } else if (opt === 'TTL') {
          const n = parseMs(val, 1);
          if (typeof n === 'string') return ctx.reply.error(n);
          ttl = n;
        } else if (opt === 'WAIT') {
          const n = parseMs(val, 0);
          if (typeof n === 'string') return ctx.reply.error(n);
          wait = n;
        } else return ctx.reply.error(ERR_SYNTAX);
      }
      const shard = shardOf(name);
      const waiterId = newWaiterId();
      // A waiting request is cancelled if its client goes away before the answer.
      const unhook = wait > 0 && ctx.client.onClose !== undefined ? ctx.client.onClose(() => cancel(shard, name, waiterId)) : null;
      const r = await runtime.execute(shard, 'write', [B(LK_ACQUIRE), name, owner, B(mode), B(String(ttl)), B(String(wait)), B(waiterId)]);
      unhook?.();
      if (r.ok) return replayReply(r.record, ctx.reply);
      // The outcome is unknown (it may be queued or even granted): withdraw it, best effort.
      if (r.code !== 'ERR' && r.code !== 'NOSHARD') cancel(shard, name, waiterId);
      ctx.reply.error(shardErrorText(r));
    }),
    spec('lock.release', -3, ['write'], 1, 'Releases a lock: 1 released, 0 not held', (ctx, args) => {
      const name = args[1]!;
      const owner = args[2]!;
      const bad = checkNameOwner(name, owner);
      if (bad !== null) return ctx.reply.error(bad);
      let token = '';
      if (args.length === 5 && args[3]!.toString('latin1').toUpperCase() === 'TOKEN') {
        token = args[4]!.toString('latin1');
        if (!/^\d{1,16}$/.test(token) || !Number.isSafeInteger(Number(token))) return ctx.reply.error(ERR_INT);
      } else if (args.length !== 3) return ctx.reply.error(ERR_SYNTAX);
      return relay(ctx, shardOf(name), 'write', [B(LK_RELEASE), name, owner, B(token)]);
    }),
    spec('lock.renew', 4, ['write'], 1, 'Extends a held lock\'s lease: 1, or 0 when the lock was lost', (ctx, args) => {
      const name = args[1]!;
      const owner = args[2]!;
      const bad = checkNameOwner(name, owner);
      if (bad !== null) return ctx.reply.error(bad);
      const ttl = parseMs(args[3]!, 1);
      if (typeof ttl === 'string') return ctx.reply.error(ttl);
      return relay(ctx, shardOf(name), 'write', [B(LK_RENEW), name, owner, B(String(ttl))]);
    }),
    spec('lock.info', 2, ['readonly'], 1, 'Mode, holders and waiters of a lock (nil when free)', (ctx, args) => relay(ctx, shardOf(args[1]!), 'read', [B(LK_INFO), args[1]!])),
    spec('lock.owned', 2, ['readonly'], 0, 'The locks an owner holds: [name, mode, token, remaining_ms] each', async (ctx, args) => {
      const res = await everyShard([B(LK_OWNED), args[1]!]);
      if (typeof res === 'string') return ctx.reply.error(res);
      const all = res.flat() as RecordValue[][];
      ctx.reply.arrayHeader(all.length);
      for (const [name, mode, token, remaining] of all) {
        ctx.reply.arrayHeader(4);
        ctx.reply.bulk(name as Buffer);
        ctx.reply.bulk(mode as Buffer);
        ctx.reply.integer(token as number);
        ctx.reply.integer(remaining as number);
      }
    }),
    spec('lock.deadlocks', 1, ['readonly'], 0, 'The most recent deadlocks broken: [at_ms, name, victim, cycle] each', async (ctx) => {
      const res = await everyShard([B(LK_DEADLOCKS)]);
      if (typeof res === 'string') return ctx.reply.error(res);
      const all = (res.flat() as RecordValue[][]).sort((a, b) => Number(a[0]) - Number(b[0]));
      ctx.reply.arrayHeader(all.length);
      for (const [at, name, victim, cycle] of all) {
        ctx.reply.arrayHeader(4);
        ctx.reply.integer(at as number);
        ctx.reply.bulk(name as Buffer);
        ctx.reply.bulk(victim as Buffer);
        ctx.reply.bulk(cycle as Buffer);
      }
    }),
  ];
}

/**
 * One round of cluster-wide deadlock detection: gathers every shard's wait-for edges (a ReadIndex read on each
 * shard's leader) and aborts the victims of cycles confirmed across two rounds. Returns how many it aborted, or
 * -1 when a shard could not answer (the detector is reset: confirmation needs two complete rounds in a row).
 */
export async function deadlockRound(runtime: ShardRuntime, shards: number, detector: DeadlockDetector): Promise<number> {
  const replies = await Promise.all(Array.from({ length: shards }, (_, s) => runtime.execute(s, 'read', [B(LK_EDGES)])));
  const edges: DetectorEdge[] = [];
  for (const r of replies) {
    if (!r.ok) {
      detector.reset();
      return -1;
    }
    const v = recordValue(r.record);
    if (!Array.isArray(v)) {
      detector.reset();
      return -1;
    }
    for (let i = 0; i + 5 < v.length; i += 6) {
      edges.push({
        from: (v[i] as Buffer).toString('latin1'),
        waiterId: (v[i + 1] as Buffer).toString('latin1'),
        since: Number(v[i + 2]),
        name: (v[i + 3] as Buffer).toString('latin1'),
        to: (v[i + 4] as Buffer).toString('latin1'),
        toId: (v[i + 5] as Buffer).toString('latin1'),
      });
    }
  }
  const victims = detector.round(edges);
  await Promise.all(
    victims.map((v) => {
      const name = Buffer.from(v.name, 'latin1');
      return runtime.execute(shardOfSlot(keySlot(name), shards), 'write', [B(LK_ABORT), name, Buffer.from(v.waiterId, 'latin1'), Buffer.from(v.cycle, 'latin1').subarray(0, 4096)]);
    }),
  );
  return victims.length;
}
