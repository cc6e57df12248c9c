/**
 * The queue commands of a cluster node (Q.* and the Redis list commands), the edge side of the queue: parse and
 * check a request, find the partition(s) it concerns, send internal queue commands (queue-entries.ts) to their
 * shards, and combine the replies.
 *
 * Placement: partition p of queue q lives on shard (shardOf(q) + p) mod S, so the partitions of a queue land on
 * consecutive shards, which the leader balancing spreads over the nodes. A queue's partition count is fixed when
 * it is created (Q.CREATE, or the first push with 1 partition) and cached here once seen (it never changes).
 * KEY picks a partition by jump consistent hash of the key (same key, same partition, so per-key order holds);
 * without KEY, a push goes to a partition this node leads (rotating among them; over all when it leads none). Message ids of a multi-partition queue are "p:id".
 *
 * Pops take from partitions in turn, starting with the ones this node leads. A pop with BLOCK (or BLPOP, BRPOP)
 * on one target sends a take (`_q.take`, a wait that carries the pop: the leader proposes it when messages are
 * ready, in FIFO order among waiting consumers). On several targets it sends waits (`_q.wait`) to all at once, one
 * per (node, worker) leading partitions of the queue (a grouped wait names them all): a leader answers at once for
 * a partition with messages ready, and otherwise wakes its waiting consumers in FIFO order as messages become
 * ready; the edge takes from the targets that answered ready with plain pops (in answer order, filling COUNT),
 * withdraws the other waits (`_q.unwait`), and waits again if faster consumers emptied them.
 * Both are withdrawn when the client goes away, so nothing is taken for it (docs/queues.md).
 *
 * Lists: a Redis list is the 1-partition queue of the same name; LPOP/RPOP/BLPOP deliver and ack at once.
 * Lists and queues do not share a namespace with the string keys (no WRONGTYPE between them).
 */
import { randomBytes } from 'node:crypto';
import type { CommandContext, CommandSpec } from '../server/command.js';
import { replayReply } from '../cluster/keyspace-reply.js';
import { isErrorValue, recordValue, type RecordValue } from '../cluster/record-value.js';
import type { ShardRuntime } from '../cluster/shard-runtime.js';
import type { ShardReply } from '../cluster/worker-protocol.js';
import { shardErrorText } from '../cluster/cluster-keyspace.js';
import { QUEUE_LIMITS_DEFAULT } from './queue-state.js';
import { Q_ACK, Q_CREATE, Q_DEAD, Q_EXTEND, Q_INFO, Q_LEN, Q_LIST, Q_LLEN, Q_LPOP, Q_LPUSH, Q_LRANGE, Q_NACK, Q_POP, Q_PURGE, Q_PUSH, Q_REDRIVE, Q_RPOP, Q_RPUSH, Q_TAKE, Q_UNWAIT, Q_WAIT, QUEUE_BLOCK_MS_MAX, queuePartitionShard, WAIT_GROUP_MAX } from './queue-entries.js';

/** A blocking pop whose wait failed with TRYAGAIN (its leader went away) waits this long, then waits again. */
const WAIT_RETRY_PAUSE_MS = 50;

/** Where a blocking pop may take from: one queue partition on its shard. */
interface WaitTarget {
  shard: number;
  q: Buffer;
  p: number;
}
/** Most messages one Q.POP may take. */
export const POP_COUNT_MAX = 10_000;

const ERR_SYNTAX = 'ERR syntax error';
const ERR_INT = 'ERR value is not an integer or out of range';
const B = (s: string): Buffer => Buffer.from(s);

export interface QueueCommandDeps {
  runtime: ShardRuntime;
  shards: number;
  nodeId: number;
  /** The node that leads a shard, as the edge's view knows it (0: unknown). */
  leaderOf(shard: number): number;
}

/** Jump consistent hash (Lamping & Veach) of a 32-bit key hash into [0, buckets). */
export function jumpHash(key: Buffer, buckets: number): number {
  let h = 2166136261;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key[i]!, 16777619) >>> 0;
  let b = -1;
  let j = 0;
  let state = BigInt(h) | 1n;
  while (j < buckets) {
    b = j;
    state = (state * 2862933555777941757n + 1n) & 0xffffffffffffffffn;
    j = Math.floor((b + 1) * (2 ** 31 / Number((state >> 33n) + 1n)));
  }
  return b;
}

function parseInt10(b: Buffer | undefined, min: number, max: number): number | null {
  const s = b?.toString('latin1') ?? '';
  if (!/^-?\d{1,16}$/.test(s)) return null;
  const n = Number(s);
  return n >= min && n <= max ? n : null;
}

/** Options "NAME value" from args[from..]: a map of upper-case names, or an error reply text. */
function options(args: Buffer[], from: number, allowed: readonly string[]): Map<string, Buffer> | string {
  const out = new Map<string, Buffer>();
  for (let i = from; i < args.length; i += 2) {
    const name = args[i]!.toString('latin1').toUpperCase();
    const v = args[i + 1];
    if (!allowed.includes(name) || v === undefined) return ERR_SYNTAX;
    out.set(name, v);
  }
  return out;
}

export function queueCommands(deps: QueueCommandDeps): CommandSpec[] {
  const { runtime, shards } = deps;
  const shardOfPart = (q: Buffer, p: number): number => queuePartitionShard(q, p, shards);
  /** The shard of a queue's partition 0 (and of a Redis list). */
  const homeShard = (q: Buffer): number => shardOfPart(q, 0);
  const partitionsCache = new Map<string, number>();
  let rotate = 0;

  const exec = (shard: number, kind: 'write' | 'read', args: Buffer[]): Promise<ShardReply> => runtime.execute(shard, kind, args);

  /** The decoded value of a reply, or { error } with the RESP error text. */
  const value = (r: ShardReply): RecordValue => (r.ok ? recordValue(r.record) : { error: shardErrorText(r) });

  /** The queue's partition count (1 for a queue that does not exist yet), or an error text. */
  const partitionsOf = async (q: Buffer): Promise<number | string> => {
    const key = q.toString('latin1');
    const cached = partitionsCache.get(key);
    if (cached !== undefined) return cached;
    const v = value(await exec(homeShard(q), 'read', [B(Q_INFO), q, B('0')]));
    if (isErrorValue(v)) return v.error;
    if (!Array.isArray(v)) return 1; // no such queue yet: a push creates it with one partition
    const n = Number(v[4]);
    partitionsCache.set(key, n);
    return n;
  };

  /**
   * The partitions of q, the ones this node leads first, each group rotating from call to call: the order a pop
   * tries them in. Its head is the partition of a push without KEY: one this node leads (no forwarding hop, and
   * messages without a key have no order across partitions anyway), or any when it leads none. With producers on
   * every node the partitions fill evenly (leaders are balanced); consumers drain every partition.
   */
  const localFirst = (q: Buffer, parts: number): number[] => {
    const start = rotate++ % parts;
    const all = Array.from({ length: parts }, (_, i) => (start + i) % parts);
    return [...all.filter((p) => deps.leaderOf(shardOfPart(q, p)) === deps.nodeId), ...all.filter((p) => deps.leaderOf(shardOfPart(q, p)) !== deps.nodeId)];
  };

  const extId = (parts: number, p: number, id: Buffer): string => (parts > 1 ? `${p}:${id.toString('latin1')}` : id.toString('latin1'));
  const splitId = (id: Buffer): [number, Buffer] => {
    const s = id.toString('latin1');
    const at = s.indexOf(':');
    if (at < 0) return [0, id];
    const p = Number(s.slice(0, at));
    return Number.isSafeInteger(p) && p >= 0 ? [p, B(s.slice(at + 1))] : [0, id];
  };

  const consumerOf = (ctx: CommandContext): string => `${deps.nodeId}:${ctx.client.id}`;

  // Wait ids: unique across this node's restarts (a random boot tag) and across nodes (the node id).
  const boot = randomBytes(4).toString('hex');
  let waitSeq = 0;
  const newWaitId = (): Buffer => B(`${deps.nodeId}.${boot}.${(waitSeq++).toString(36)}`);

  /**
   * After a wait or take failed: true (once WAIT_RETRY_PAUSE_MS has passed) if it should be made again, which is when
   * its leader went away (TRYAGAIN) and time is left before `until`.
   */
  const waitAgain = async (err: string, until: number): Promise<boolean> => {
    if (!err.startsWith('TRYAGAIN') || until - Date.now() <= WAIT_RETRY_PAUSE_MS) return false;
    await new Promise((r) => setTimeout(r, WAIT_RETRY_PAUSE_MS));
    return true;
  };

  /**
   * Withdraws a wait or take; `answered`: it answered ready already, so this only hands its wake on; `others`: the
   * other partitions of a grouped wait (t is its first).
   */
  const unwait = (t: WaitTarget, id: Buffer, answered = false, others: number[] = []): void => {
    const args = [B(Q_UNWAIT), t.q, B(String(t.p)), id];
    if (answered || others.length > 0) args.push(B(answered ? '1' : '0'), ...others.map((p) => B(String(p))));
    runtime.submit(t.shard, 'write', args, () => undefined);
  };

  /**
   * One round of waiting: a wait on every target at once (a leader answers at once for a partition with messages
   * ready). Partitions of one queue whose shards one worker leads (as far as this node knows) share one grouped
   * wait; a group its worker refuses (the leaders moved) is replaced by a wait per partition. `first` resolves with
   * the index of the first target that answered ready, null when every wait ran out or the client went away, or an
   * error text when a wait failed. `ready` lists, in answer order, every target that answered ready so far.
   * close(tried) ends the round: it withdraws the waits still out and hands on the wakes of the ready targets not
   * tried (an unwait makes their leader wake its next waiters).
   */
  const openRound = (ctx: CommandContext, spots: WaitTarget[], ms: number): { first: Promise<number | string | null>; ready: number[]; close(tried: number[]): void } => {
    const ready: number[] = [];
    /** The waits sent: the targets each names (a group when more than one) and its wait id. */
    const waits: { targets: number[]; id: Buffer; answered: boolean }[] = [];
    /** The wait each ready target answered in. */
    const readyIn = new Map<number, Buffer>();
    let left = 0;
    let closed = false;
    let settle: (v: number | string | null) => void = () => undefined;
    const first = new Promise<number | string | null>((resolve) => {
      let done = false;
      settle = (v) => {
        if (done) return;
        done = true;
        resolve(v);
      };
    });
    const unhook = ctx.client.onClose?.(() => settle(null));
    const send = (targets: number[]): void => {
      const w = { targets, id: newWaitId(), answered: false };
      waits.push(w);
      left++;
      const t0 = spots[targets[0]!]!;
      const args = [B(Q_WAIT), t0.q, B(String(t0.p)), B(String(ms)), w.id];
      for (let k = 1; k < targets.length; k++) args.push(B(String(spots[targets[k]!]!.p)));
      runtime.submit(t0.shard, 'write', args, (r) => {
        w.answered = true;
        left--;
        const v = r.ok ? recordValue(r.record) : { error: shardErrorText(r) };
        if (typeof v === 'number' && v >= 1 && v <= targets.length) {
          const i = targets[v - 1]!;
          // A wake after close was withdrawn already: its unwait hands it on.
          if (!closed) {
            ready.push(i);
            readyIn.set(i, w.id);
          }
          settle(i);
        } else if (isErrorValue(v)) {
          // A group its worker refused (it does not lead them all): wait on each of its partitions alone.
          if (targets.length > 1 && !closed) for (const i of targets) send([i]);
          else settle(v.error);
        } else if (left === 0) settle(null);
      });
    };
    const groups = new Map<string, number[]>();
    const batches: number[][] = [];
    spots.forEach((t, i) => {
      const leader = deps.leaderOf(t.shard);
      if (leader === 0) {
        batches.push([i]);
        return;
      }
      const key = `${leader}\u0000${runtime.workerOf(t.shard)}\u0000${t.q.toString('latin1')}`;
      let g = groups.get(key);
      if (g === undefined || g.length >= WAIT_GROUP_MAX) {
        g = [];
        groups.set(key, g);
        batches.push(g);
      }
      g.push(i);
    });
    for (const b of batches) send(b);
    return {
      first,
      ready,
      close(tried: number[]): void {
        if (closed) return;
        closed = true;
        unhook?.();
        settle(null);
        for (const w of waits) {
          if (w.answered) continue;
          unwait(spots[w.targets[0]!]!, w.id, false, w.targets.slice(1).map((i) => spots[i]!.p));
        }
        for (const i of ready) if (!tried.includes(i)) unwait(spots[i]!, readyIn.get(i)!, true);
      },
    };
  };

  /**
   * Takes from the first target `attempt` (a pop that does not wait) returns items for. Without BLOCK: tries each
   * in turn (an empty answer is then linearizable: see popAfterBarrier in the worker). With BLOCK: waits on all of
   * them at once (openRound) and tries the ready ones in the order they answered, again until BLOCK runs out if a
   * faster consumer took what was there. Nothing is taken for a client that went away. `more` lists the other
   * targets known to have messages (to fill a COUNT from); the caller must call done(tried) with the ones of them
   * it tried.
   */
  const takeFrom = async (
    ctx: CommandContext,
    targets: number[],
    blockMs: number,
    where: (target: number) => WaitTarget,
    popOf: (target: number) => Buffer[],
  ): Promise<{ target: number; items: RecordValue[]; more: number[]; done(tried: number[]): void } | string | null> => {
    const attempt = async (t: number): Promise<RecordValue[] | string> => asItems(value(await exec(where(t).shard, 'write', popOf(t))));
    if (blockMs <= 0) {
      for (const t of targets) {
        const r = await attempt(t);
        if (typeof r === 'string') return r;
        if (r.length > 0) return { target: t, items: r, more: [], done: () => undefined };
      }
      return null;
    }
    const until = Date.now() + blockMs;
    const spots = targets.map(where);
    let gone = false;
    const unhook = ctx.client.onClose?.(() => (gone = true));
    try {
      if (targets.length === 1) {
        // One target: a take, a wait that carries its pop, which the leader proposes as soon as messages are
        // ready (at once if they are), so a wake costs no extra round trip.
        const t = targets[0]!;
        const spot = spots[0]!;
        for (;;) {
          const left = until - Date.now();
          if (left <= 0 || gone) return null;
          const id = newWaitId();
          const unhookTake = ctx.client.onClose?.(() => unwait(spot, id));
          const r = asItems(value(await exec(spot.shard, 'write', [B(Q_TAKE), spot.q, B(String(spot.p)), B(String(left)), id, ...popOf(t)])));
          unhookTake?.();
          if (typeof r === 'string') {
            // If its leader went away after the take proposed its pop, the outcome is unknown either way (a Q.POP's
            // messages come back after their visibility timeout); taking again loses nothing more.
            if (await waitAgain(r, until)) continue;
            return r;
          }
          return r.length > 0 ? { target: t, items: r, more: [], done: () => undefined } : null;
        }
      }
      for (;;) {
        const left = until - Date.now();
        if (left <= 0 || gone) return null;
        const round = openRound(ctx, spots, left);
        const w = await round.first;
        if (w === null || typeof w === 'string') {
          round.close([]);
          // A wait changes nothing, so one lost with its leader (failover, link down) is simply made again.
          if (typeof w === 'string' && (await waitAgain(w, until))) continue;
          return w;
        }
        // Try the ready targets in answer order; more may answer while a take is out.
        const tried: number[] = [];
        for (let k = 0; k < round.ready.length && !gone; k++) {
          const i = round.ready[k]!;
          tried.push(i);
          const r = await attempt(targets[i]!);
          if (typeof r === 'string') {
            round.close(tried);
            return r;
          }
          if (r.length > 0) {
            const more = round.ready.slice(k + 1).map((j) => targets[j]!);
            return { target: targets[i]!, items: r, more, done: (alsoTried) => round.close([...tried, ...alsoTried.map((u) => targets.indexOf(u))]) };
          }
        }
        // Every ready target was emptied by faster consumers (or the client left): wait again.
        round.close(tried);
      }
    } finally {
      unhook?.();
    }
  };

  const asItems = (v: RecordValue): RecordValue[] | string => (isErrorValue(v) ? v.error : Array.isArray(v) ? v : []);

  const spec = (name: string, arity: number, flags: CommandSpec['flags'], firstKey: number, lastKey: number, summary: string, group: string, handler: CommandSpec['handler']): CommandSpec => ({
    name,
    arity,
    flags,
    firstKey,
    lastKey,
    keyStep: firstKey === 0 ? 0 : 1,
    handler,
    async: true,
    summary,
    group,
  });

  /** Runs one read or write per partition of q and returns the decoded values, or an error text. */
  const everyPartition = async (q: Buffer, kind: 'write' | 'read', build: (p: number) => Buffer[]): Promise<RecordValue[] | string> => {
    const parts = await partitionsOf(q);
    if (typeof parts === 'string') return parts;
    const vals = (await Promise.all(Array.from({ length: parts }, (_, p) => exec(shardOfPart(q, p), kind, build(p))))).map(value);
    for (const v of vals) if (isErrorValue(v)) return v.error;
    return vals;
  };

  const sumReply = async (ctx: CommandContext, q: Buffer, kind: 'write' | 'read', build: (p: number) => Buffer[]): Promise<void> => {
    const vals = await everyPartition(q, kind, build);
    if (typeof vals === 'string') return ctx.reply.error(vals);
    ctx.reply.integer(vals.reduce<number>((n, v) => n + Number(v), 0));
  };

  const listPop = (head: boolean) => async (ctx: CommandContext, args: Buffer[]): Promise<void> => {
    const q = args[1]!;
    let count = 1;
    if (args.length === 3) {
      const n = parseInt10(args[2], 0, POP_COUNT_MAX);
      if (n === null) return ctx.reply.error('ERR value is out of range, must be positive');
      count = n;
    } else if (args.length > 3) return ctx.reply.error(ERR_SYNTAX);
    if (count === 0) {
      // Redis 7: a count of 0 pops nothing; the reply says whether the list exists (empty array) or not (nil).
      const len = value(await exec(homeShard(q), 'read', [B(Q_LLEN), q, B('0')]));
      if (isErrorValue(len)) return ctx.reply.error(len.error);
      return typeof len === 'number' && len > 0 ? ctx.reply.arrayHeader(0) : ctx.reply.nilArray();
    }
    const v = value(await exec(homeShard(q), 'write', [B(head ? Q_LPOP : Q_RPOP), q, B('0'), B(String(count)), B('0')]));
    if (isErrorValue(v)) return ctx.reply.error(v.error);
    const items = Array.isArray(v) ? (v as Buffer[]) : [];
    if (args.length === 2) return items.length === 0 ? ctx.reply.nil() : ctx.reply.bulk(items[0]!);
    if (items.length === 0) return ctx.reply.nilArray();
    ctx.reply.arrayHeader(items.length);
    for (const b of items) ctx.reply.bulk(b);
  };

  const blockingListPop = (head: boolean) => async (ctx: CommandContext, args: Buffer[]): Promise<void> => {
    const secs = Number(args[args.length - 1]!.toString('latin1'));
    if (!Number.isFinite(secs) || secs < 0 || !/^\d+(\.\d+)?$/.test(args[args.length - 1]!.toString('latin1'))) return ctx.reply.error('ERR timeout is not a float or out of range');
    const blockMs = secs === 0 ? QUEUE_BLOCK_MS_MAX : Math.min(QUEUE_BLOCK_MS_MAX, Math.ceil(secs * 1000));
    const keys = args.slice(1, -1);
    const r = await takeFrom(
      ctx,
      keys.map((_, i) => i),
      blockMs,
      (i) => ({ shard: homeShard(keys[i]!), q: keys[i]!, p: 0 }),
      (i) => [B(head ? Q_LPOP : Q_RPOP), keys[i]!, B('0'), B('1'), B('0')],
    );
    if (typeof r === 'string') return ctx.reply.error(r);
    if (r === null) return ctx.reply.nilArray();
    r.done([]);
    ctx.reply.arrayHeader(2);
    ctx.reply.bulk(keys[r.target]!);
    ctx.reply.bulk(r.items[0] as Buffer);
  };

  const listPush = (head: boolean) => async (ctx: CommandContext, args: Buffer[]): Promise<void> => {
    const q = args[1]!;
    const r = await exec(homeShard(q), 'write', [B(head ? Q_LPUSH : Q_RPUSH), q, B('0'), ...args.slice(2)]);
    if (r.ok) replayReply(r.record, ctx.reply);
    else ctx.reply.error(shardErrorText(r));
  };

  return [
    spec('q.push', -3, ['write'], 1, 1, 'Pushes a message: its id, once a majority has it on disk', 'queue', async (ctx, args) => {
      const q = args[1]!;
      const opts = options(args, 3, ['KEY', 'DEDUP', 'DELAY']);
      if (typeof opts === 'string') return ctx.reply.error(opts);
      const delay = opts.has('DELAY') ? parseInt10(opts.get('DELAY'), 0, QUEUE_LIMITS_DEFAULT.delayMsMax) : 0;
      if (delay === null) return ctx.reply.error(ERR_INT);
      const parts = await partitionsOf(q);
      if (typeof parts === 'string') return ctx.reply.error(parts);
      const key = opts.get('KEY');
      const p = parts === 1 ? 0 : key !== undefined ? jumpHash(key, parts) : localFirst(q, parts)[0]!;
      const v = value(await exec(shardOfPart(q, p), 'write', [B(Q_PUSH), q, B(String(p)), args[2]!, opts.get('DEDUP') ?? B(''), B(String(delay))]));
      if (isErrorValue(v)) return ctx.reply.error(v.error);
      ctx.reply.bulk(extId(parts, p, v as Buffer));
    }),
    spec('q.pop', -2, ['write'], 1, 1, 'Pops up to COUNT messages: [id, payload, deliveries] each, or nil', 'queue', async (ctx, args) => {
      const q = args[1]!;
      const opts = options(args, 2, ['COUNT', 'VISIBILITY', 'BLOCK']);
      if (typeof opts === 'string') return ctx.reply.error(opts);
      const count = opts.has('COUNT') ? parseInt10(opts.get('COUNT'), 1, POP_COUNT_MAX) : 1;
      const vis = opts.has('VISIBILITY') ? parseInt10(opts.get('VISIBILITY'), 1, QUEUE_LIMITS_DEFAULT.visibilityMsMax) : 0;
      const block = opts.has('BLOCK') ? parseInt10(opts.get('BLOCK'), 0, QUEUE_BLOCK_MS_MAX) : 0;
      if (count === null || vis === null || block === null) return ctx.reply.error(ERR_INT);
      const parts = await partitionsOf(q);
      if (typeof parts === 'string') return ctx.reply.error(parts);
      const consumer = B(consumerOf(ctx));
      const popArgs = (p: number, n: number): Buffer[] => [B(Q_POP), q, B(String(p)), consumer, B(String(n)), B(vis === 0 ? '' : String(vis)), B('0')];
      const r = await takeFrom(
        ctx,
        localFirst(q, parts),
        block,
        (p) => ({ shard: shardOfPart(q, p), q, p }),
        (p) => popArgs(p, count),
      );
      if (typeof r === 'string') return ctx.reply.error(r);
      if (r === null) return ctx.reply.nilArray();
      const got: [number, RecordValue[]][] = (r.items as RecordValue[][]).map((it) => [r.target, it]);
      // Fill COUNT from the other partitions, without waiting: after a BLOCK, from the ones whose leaders said they
      // have messages ready; without, from every other one in turn.
      const others = block > 0 ? r.more : localFirst(q, parts).filter((p) => p !== r.target);
      let k = 0;
      for (; k < others.length && got.length < count; k++) {
        const p = others[k]!;
        const more = asItems(value(await exec(shardOfPart(q, p), 'write', popArgs(p, count - got.length))));
        if (typeof more === 'string') break; // what was taken so far is delivered; the rest waits for the next pop
        for (const it of more as RecordValue[][]) got.push([p, it]);
      }
      r.done(others.slice(0, k));
      ctx.reply.arrayHeader(got.length);
      for (const [p, it] of got) {
        ctx.reply.arrayHeader(3);
        ctx.reply.bulk(extId(parts, p, it[0] as Buffer));
        ctx.reply.bulk(it[1] as Buffer);
        ctx.reply.integer(it[2] as number);
      }
    }),
    spec('q.ack', -3, ['write'], 1, 1, 'Acknowledges delivered messages: how many were in flight', 'queue', async (ctx, args) => {
      const q = args[1]!;
      const byPart = new Map<number, Buffer[]>();
      for (const id of args.slice(2)) {
        const [p, inner] = splitId(id);
        let l = byPart.get(p);
        if (l === undefined) byPart.set(p, (l = []));
        l.push(inner);
      }
      const vals = (await Promise.all([...byPart].map(([p, ids]) => exec(shardOfPart(q, p), 'write', [B(Q_ACK), q, B(String(p)), ...ids])))).map(value);
      let n = 0;
      for (const v of vals) {
        if (isErrorValue(v)) return ctx.reply.error(v.error);
        n += Number(v);
      }
      ctx.reply.integer(n);
    }),
    spec('q.nack', -3, ['write'], 1, 1, 'Returns a delivered message to the queue (after DELAY ms): 1 or 0', 'queue', async (ctx, args) => {
      const opts = options(args, 3, ['DELAY']);
      if (typeof opts === 'string') return ctx.reply.error(opts);
      const delay = opts.has('DELAY') ? parseInt10(opts.get('DELAY'), 0, QUEUE_LIMITS_DEFAULT.delayMsMax) : 0;
      if (delay === null) return ctx.reply.error(ERR_INT);
      const [p, id] = splitId(args[2]!);
      const r = await exec(shardOfPart(args[1]!, p), 'write', [B(Q_NACK), args[1]!, B(String(p)), id, B(String(delay))]);
      if (r.ok) replayReply(r.record, ctx.reply);
      else ctx.reply.error(shardErrorText(r));
    }),
    spec('q.extend', 4, ['write'], 1, 1, 'Keeps a delivered message invisible for ms more: 1 or 0', 'queue', async (ctx, args) => {
      const ms = parseInt10(args[3], 1, QUEUE_LIMITS_DEFAULT.visibilityMsMax);
      if (ms === null) return ctx.reply.error(ERR_INT);
      const [p, id] = splitId(args[2]!);
      const r = await exec(shardOfPart(args[1]!, p), 'write', [B(Q_EXTEND), args[1]!, B(String(p)), id, B(String(ms))]);
      if (r.ok) replayReply(r.record, ctx.reply);
      else ctx.reply.error(shardErrorText(r));
    }),
    spec('q.create', -2, ['write'], 1, 1, 'Creates a queue or changes its settings (the partition count is fixed at creation)', 'queue', async (ctx, args) => {
      const q = args[1]!;
      const opts = options(args, 2, ['PARTITIONS', 'MAXDELIVER', 'VISIBILITY', 'DEDUPWINDOW']);
      if (typeof opts === 'string') return ctx.reply.error(opts);
      const num = (k: string, min: number, max: number): string | null => {
        if (!opts.has(k)) return '';
        const n = parseInt10(opts.get(k), min, max);
        return n === null ? null : String(n);
      };
      const fields = [num('MAXDELIVER', 1, QUEUE_LIMITS_DEFAULT.maxDeliverMax), num('VISIBILITY', 1, QUEUE_LIMITS_DEFAULT.visibilityMsMax), num('DEDUPWINDOW', 0, QUEUE_LIMITS_DEFAULT.dedupWindowMsMax)];
      let parts: number | null = 0;
      if (opts.has('PARTITIONS')) parts = parseInt10(opts.get('PARTITIONS'), 1, Math.min(QUEUE_LIMITS_DEFAULT.partitionsPerQueueMax, shards));
      if (parts === null || fields.includes(null)) return ctx.reply.error(`${ERR_INT} (PARTITIONS 1..${Math.min(QUEUE_LIMITS_DEFAULT.partitionsPerQueueMax, shards)})`);
      if (parts === 0) {
        const known = await partitionsOf(q);
        if (typeof known === 'string') return ctx.reply.error(known);
        parts = known;
      }
      const build = (p: number): Buffer[] => [B(Q_CREATE), q, B(String(p)), B(String(parts)), ...fields.map((f) => B(f!))];
      // Partition 0 decides (it refuses a different count); then the others.
      const first = value(await exec(shardOfPart(q, 0), 'write', build(0)));
      if (isErrorValue(first)) return ctx.reply.error(first.error);
      const rest = (await Promise.all(Array.from({ length: parts - 1 }, (_, i) => exec(shardOfPart(q, i + 1), 'write', build(i + 1))))).map(value);
      for (const v of rest) if (isErrorValue(v)) return ctx.reply.error(v.error);
      partitionsCache.set(q.toString('latin1'), parts);
      ctx.reply.ok();
    }),
    spec('q.info', 2, ['readonly'], 1, 1, 'Counts (ready, in flight, delayed, dead), settings and partitions of a queue', 'queue', async (ctx, args) => {
      const q = args[1]!;
      const vals = await everyPartition(q, 'read', (p) => [B(Q_INFO), q, B(String(p))]);
      if (typeof vals === 'string') return ctx.reply.error(vals);
      const first = vals[0];
      if (!Array.isArray(first)) return ctx.reply.nilArray();
      const sum = (i: number): number => vals.reduce<number>((n, v) => n + (Array.isArray(v) ? Number(v[i]) : 0), 0);
      const r = ctx.reply;
      r.mapHeader(9);
      for (const [k, i] of [['ready', 0], ['inflight', 1], ['delayed', 2], ['dead', 3]] as const) {
        r.bulk(k);
        r.integer(sum(i));
      }
      r.bulk('partitions');
      r.integer(Number(first[4]));
      r.bulk('maxdeliver');
      r.integer(Number(first[5]));
      r.bulk('visibility_ms');
      r.integer(Number(first[6]));
      r.bulk('dedupwindow_ms');
      r.integer(Number(first[7]));
      r.bulk('partition_detail');
      r.arrayHeader(vals.length);
      vals.forEach((v, p) => {
        const a = Array.isArray(v) ? v : [0, 0, 0, 0];
        const shard = shardOfPart(q, p);
        r.mapHeader(7);
        r.bulk('partition');
        r.integer(p);
        r.bulk('shard');
        r.integer(shard);
        r.bulk('leader');
        r.integer(deps.leaderOf(shard));
        for (const [k, i] of [['ready', 0], ['inflight', 1], ['delayed', 2], ['dead', 3]] as const) {
          r.bulk(k);
          r.integer(Number(a[i]));
        }
      });
    }),
    spec('q.len', 2, ['readonly'], 1, 1, 'Messages waiting (ready + delayed) in a queue', 'queue', (ctx, args) => sumReply(ctx, args[1]!, 'read', (p) => [B(Q_LEN), args[1]!, B(String(p))])),
    spec('q.dead', -2, ['readonly'], 1, 1, 'Peeks dead letters: [id, payload, deliveries, reason] each', 'queue', async (ctx, args) => {
      const q = args[1]!;
      const opts = options(args, 2, ['COUNT']);
      if (typeof opts === 'string') return ctx.reply.error(opts);
      const count = opts.has('COUNT') ? parseInt10(opts.get('COUNT'), 1, POP_COUNT_MAX) : 10;
      if (count === null) return ctx.reply.error(ERR_INT);
      const vals = await everyPartition(q, 'read', (p) => [B(Q_DEAD), q, B(String(p)), B(String(count))]);
      if (typeof vals === 'string') return ctx.reply.error(vals);
      const parts = vals.length;
      const all = vals.flatMap((v, p) => (Array.isArray(v) ? (v as RecordValue[][]).map((d) => [p, d] as const) : [])).slice(0, count);
      ctx.reply.arrayHeader(all.length);
      for (const [p, d] of all) {
        ctx.reply.arrayHeader(4);
        ctx.reply.bulk(extId(parts, p, d[0] as Buffer));
        ctx.reply.bulk(d[1] as Buffer);
        ctx.reply.integer(d[2] as number);
        ctx.reply.bulk(d[3] as Buffer);
      }
    }),
    spec('q.redrive', 2, ['write'], 1, 1, 'Moves dead letters back to ready: how many', 'queue', (ctx, args) => sumReply(ctx, args[1]!, 'write', (p) => [B(Q_REDRIVE), args[1]!, B(String(p))])),
    spec('q.purge', 2, ['write'], 1, 1, 'Drops every ready, delayed and in-flight message: how many', 'queue', (ctx, args) => sumReply(ctx, args[1]!, 'write', (p) => [B(Q_PURGE), args[1]!, B(String(p))])),
    spec('q.list', 1, ['readonly'], 0, 0, 'The queues of the cluster', 'queue', async (ctx) => {
      const vals = (await Promise.all(Array.from({ length: shards }, (_, s) => exec(s, 'read', [B(Q_LIST)])))).map(value);
      const names = new Set<string>();
      for (const v of vals) {
        if (isErrorValue(v)) return ctx.reply.error(v.error);
        for (const x of (Array.isArray(v) ? v : []) as RecordValue[][]) if (Number(x[1]) === 0) names.add((x[0] as Buffer).toString('latin1'));
      }
      const sorted = [...names].sort();
      ctx.reply.arrayHeader(sorted.length);
      for (const n of sorted) ctx.reply.bulk(Buffer.from(n, 'latin1'));
    }),
    spec('rpush', -3, ['write', 'fast'], 1, 1, 'Appends values to a list (a 1-partition queue)', 'list', listPush(false)),
    spec('lpush', -3, ['write', 'fast'], 1, 1, 'Prepends values to a list', 'list', listPush(true)),
    spec('lpop', -2, ['write', 'fast'], 1, 1, 'Removes and returns the first values of a list', 'list', listPop(true)),
    spec('rpop', -2, ['write', 'fast'], 1, 1, 'Removes and returns the last values of a list', 'list', listPop(false)),
    spec('blpop', -3, ['write'], 1, -2, 'LPOP that waits for a value on the first non-empty list', 'list', blockingListPop(true)),
    spec('brpop', -3, ['write'], 1, -2, 'RPOP that waits for a value on the first non-empty list', 'list', blockingListPop(false)),
    spec('llen', 2, ['readonly', 'fast'], 1, 1, 'The length of a list', 'list', async (ctx, args) => {
      const r = await exec(homeShard(args[1]!), 'read', [B(Q_LLEN), args[1]!, B('0')]);
      if (r.ok) replayReply(r.record, ctx.reply);
      else ctx.reply.error(shardErrorText(r));
    }),
    spec('lrange', 4, ['readonly'], 1, 1, 'A range of a list\'s values', 'list', async (ctx, args) => {
      const start = parseInt10(args[2], -Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
      const stop = parseInt10(args[3], -Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
      if (start === null || stop === null) return ctx.reply.error(ERR_INT);
      const r = await exec(homeShard(args[1]!), 'read', [B(Q_LRANGE), args[1]!, B('0'), args[2]!, args[3]!]);
      if (r.ok) replayReply(r.record, ctx.reply);
      else ctx.reply.error(shardErrorText(r));
    }),
  ];
}
