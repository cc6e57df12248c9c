// The queue on a real 3-node cluster (child processes on loopback, plain ioredis clients on different nodes):
//   1. semantics: push/pop/ack across nodes, FIFO, visibility redelivery, nack (with DELAY), extend, dead letters
//      after MAXDELIVER with Q.DEAD and Q.REDRIVE, dedup, DELAY, BLOCK pops woken by a push on another node (FIFO
//      among blocked consumers; over 8 partitions or 3 BLPOP keys at once; 150 clients blocked on one list; a
//      consumer that leaves while it waits takes nothing), Q.INFO/LEN/LIST/PURGE, a 3-partition queue keeping
//      per-key order, the Redis list commands, bad input answered with errors on a connection that keeps working.
//   2. chaos: 5 producers (5 keys each, DEDUP ids retried until acknowledged) and 5 consumers (COUNT up to 10, short
//      visibility, random ack / nack / extend / leave, and "crashes" that drop the connection with messages in
//      flight or a pop outstanding) on one queue with MAXDELIVER 5, while the leader of its shard is killed -9 and
//      restarted; then a drain, and the recorded history is checked (test/support/queue-history.ts). Also: a DEDUP
//      id pushed before the kill and retried after the failover adds one message.
//   3. full restart: with messages acked, in flight and never delivered, SIGTERM every node and start them again:
//      every unacked message comes back after its visibility, no acked one does.
//   4. a BLPOP and a Q.POP BLOCK (one partition, and one partition per shard) waiting on one node while their shard's
//      leader on another is killed -9 get the values pushed after the failover (their takes and waits are made again).
//   5. a wake answered to a node that is paused (SIGSTOP) is handed on by the leader to the next waiter.
// Timings are reported with t.comment and never asserted tightly (the machine is small and shared).
import t from 'tap';
import type { Redis } from 'ioredis';
import { errorCode, withCluster, type ProcCluster } from '../support/cluster-procs.js';
import { checkQueueHistory, QueueHistory, type Delivered, type PopOp } from '../support/queue-history.js';
import { keySlot } from '../../src/cluster/slots.js';
import { shardOfSlot } from '../../src/cluster/ring.js';

/** Whole-file bound: the three tests together must stay well under it on a busy 2-core machine. */
const FILE_TIMEOUT_MS = 150_000;
const SEMANTICS_TIMEOUT_MS = 45_000;
const CHAOS_TIMEOUT_MS = 100_000;
const RESTART_TIMEOUT_MS = 50_000;
const SHARDS = 8;
const OPTS = { shards: SHARDS, electionTimeoutMs: 300, leaderWaitMs: 1500, requestTimeoutMs: 5000 };
/** Pause between retries of a failed request. */
const RETRY_PAUSE_MS = 100;
/** How long the leaders of some shards must stay the same to count as settled. */
const LEADERS_STABLE_MS = 1500;
/** Commands of clients that live through kills fail after this (above BLOCK and the request timeout). */
const STURDY_COMMAND_TIMEOUT_MS = 12_000;

t.setTimeout(FILE_TIMEOUT_MS);

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const shardOf = (name: string) => shardOfSlot(keySlot(Buffer.from(name)), SHARDS);
const fmtCounts = (m: Map<string, number>) => [...m].map(([k, v]) => `${k}=${v}`).join(' ') || 'none';

type Triple = [string, string, number];

const qcall = (r: Redis, ...args: (string | number)[]) => r.call(args[0] as string, ...args.slice(1).map(String));
const push = (r: Redis, q: string, payload: string, ...opts: (string | number)[]) => qcall(r, 'Q.PUSH', q, payload, ...opts) as Promise<string>;
const pop = (r: Redis, q: string, ...opts: (string | number)[]) => qcall(r, 'Q.POP', q, ...opts) as Promise<Triple[] | null>;
const ack = (r: Redis, q: string, ...ids: string[]) => qcall(r, 'Q.ACK', q, ...ids) as Promise<number>;
const qlen = (r: Redis, q: string) => qcall(r, 'Q.LEN', q) as Promise<number>;

function infoMap(v: unknown): Record<string, unknown> {
  // RESP2 flattens maps into arrays of key, value.
  if (!Array.isArray(v)) return v as Record<string, unknown>;
  const o: Record<string, unknown> = {};
  for (let i = 0; i + 1 < v.length; i += 2) o[String(v[i])] = v[i + 1];
  return o;
}

async function qinfo(r: Redis, q: string): Promise<Record<string, unknown> | null> {
  const v = await qcall(r, 'Q.INFO', q);
  if (v === null) return null;
  const m = infoMap(v);
  if (Array.isArray(m['partition_detail'])) m['partition_detail'] = (m['partition_detail'] as unknown[]).map(infoMap);
  return m;
}

/** The counts of Q.INFO as numbers. */
function counts(info: Record<string, unknown> | null): { ready: number; inflight: number; delayed: number; dead: number } {
  return { ready: Number(info?.['ready']), inflight: Number(info?.['inflight']), delayed: Number(info?.['delayed']), dead: Number(info?.['dead']) };
}

/** A client for tests that survive kills: reconnects every RETRY_PAUSE_MS, fails commands instead of queueing them long. */
function sturdyClient(c: ProcCluster, id: number): Redis {
  return c.client(id, { maxRetriesPerRequest: 0, retryStrategy: () => RETRY_PAUSE_MS, commandTimeout: STURDY_COMMAND_TIMEOUT_MS });
}

/** Runs f until it does not throw, within windowMs; rethrows the last error after that. */
async function retrying<T>(windowMs: number, f: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + windowMs;
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(RETRY_PAUSE_MS);
    }
  }
}

/** The node that leads `shard`, as the live nodes' INFO raft says (0 if none is known within the wait). */
async function leaderOf(c: ProcCluster, shard: number, waitMs = 10_000): Promise<number> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    for (const id of c.liveIds()) {
      try {
        const line = (await c.raft(id)).shards.find((s) => s.shard === shard);
        if (line !== undefined && line.role === 'leader') return id;
      } catch {
        // a node that does not answer: ask the next
      }
    }
    if (Date.now() > deadline) return 0;
    await sleep(RETRY_PAUSE_MS);
  }
}

/**
 * The leaders of `shards` once they stayed the same for LEADERS_STABLE_MS (leader balancing moves leaders during the
 * first seconds after start), or the last ones seen after `waitMs`.
 */
async function settledLeaders(c: ProcCluster, shards: number[], waitMs = 15_000): Promise<number[]> {
  const deadline = Date.now() + waitMs;
  let last = '';
  let since = Date.now();
  for (;;) {
    const leaders = await Promise.all(shards.map((s) => leaderOf(c, s)));
    const key = leaders.join(',');
    if (key !== last) {
      last = key;
      since = Date.now();
    } else if (!leaders.includes(0) && Date.now() - since >= LEADERS_STABLE_MS) return leaders;
    if (Date.now() > deadline) return leaders;
    await sleep(RETRY_PAUSE_MS);
  }
}

// -----------------------------------------------------------------------------------------------------------------
// 1. Semantics
// -----------------------------------------------------------------------------------------------------------------

t.test('semantics over a real cluster', { timeout: SEMANTICS_TIMEOUT_MS }, async (t) => {
  await withCluster(t, OPTS, async (c) => {
    const [r1, r2, r3] = [c.client(1), c.client(2), c.client(3)] as [Redis, Redis, Redis];

    // Push on one node, pop on another, ack on the third; FIFO.
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await push([r1, r2, r3][i % 3]!, 'sem:fifo', `m${i}`));
    t.ok(ids.every((id) => /^\d+-\d+$/.test(id)), `push answers ids (${ids.join(' ')})`);
    const got = await pop(r2, 'sem:fifo', 'COUNT', 10);
    t.same(got, ids.map((id, i) => [id, `m${i}`, 1]), 'a pop on node 2 gets the 5 messages in push order, delivery count 1');
    t.equal(await ack(r3, 'sem:fifo', ...ids), 5, 'acked on node 3');
    t.equal(await ack(r1, 'sem:fifo', ...ids), 0, 'acking again counts nothing');
    t.equal(await pop(r1, 'sem:fifo'), null, 'an empty queue pops nil');
    t.equal(await qlen(r1, 'sem:fifo'), 0);

    /** The sum over every node's workers of the INFO raft counters `re` matches (its group 1). */
    const raftSum = async (re: RegExp): Promise<number> => {
      let n = 0;
      for (const r of [r1, r2, r3]) for (const m of String(await r.info('raft')).matchAll(re)) n += Number(m[1]);
      return n;
    };
    // A pop that finds nothing is answered after a read barrier, without a log entry (INFO raft: empty_pops).
    const emptyPops = (): Promise<number> => raftSum(/empty_pops=(\d+)/g);
    const e0 = await emptyPops();
    for (const r of [r1, r2, r3]) t.equal(await pop(r, 'sem:fifo'), null, 'an empty pop on every node: nil');
    t.equal(await r2.call('LPOP', 'sem:no-such-list'), null, 'LPOP of a missing list: nil');
    t.equal(await r3.call('RPOP', 'sem:no-such-list', '2'), null, 'RPOP with a count of a missing list: nil');
    // The edge's copy of the worker counters is refreshed every VIEW_REFRESH_MS (200 ms).
    let e1 = await emptyPops();
    for (let i = 0; i < 20 && e1 - e0 < 5; i++) {
      await sleep(100);
      e1 = await emptyPops();
    }
    t.ok(e1 - e0 >= 5, `answered without a log entry by the leaders (INFO empty_pops grew by ${e1 - e0})`);
    const later = await push(r1, 'sem:fifo', 'after');
    t.same(await pop(r3, 'sem:fifo'), [[later, 'after', 1]], 'a push after empty pops is delivered as usual');
    t.equal(await ack(r3, 'sem:fifo', later), 1);

    // Visibility timeout: not acked in time, delivered again with count 2. (Timeouts in this test are long enough
    // that a slow command on a loaded machine does not outlast them by accident.)
    const vid = await push(r1, 'sem:vis', 'v');
    const v0 = performance.now();
    t.same(await pop(r1, 'sem:vis', 'VISIBILITY', 1500), [[vid, 'v', 1]], 'popped with VISIBILITY 1500');
    t.equal(await pop(r2, 'sem:vis'), null, 'invisible while in flight');
    const again = await pop(r2, 'sem:vis', 'BLOCK', 5000);
    const vMs = performance.now() - v0;
    t.same(again, [[vid, 'v', 2]], `redelivered after the visibility timeout with count 2 (${Math.round(vMs)} ms)`);
    t.ok(vMs >= 1500 - 20, 'not before the visibility timeout');
    t.equal(await ack(r1, 'sem:vis', vid), 1, 'an ack (by id, from the first consumer) of the redelivered message counts');

    // Nack: back at once with count 2; nack with DELAY: delayed, then back with count 3.
    const nid = await push(r3, 'sem:nack', 'n');
    await push(r3, 'sem:nack', 'n2');
    t.same(await pop(r1, 'sem:nack'), [[nid, 'n', 1]]);
    t.equal(await qcall(r2, 'Q.NACK', 'sem:nack', nid), 1, 'nack answers 1');
    t.same(await pop(r2, 'sem:nack'), [[nid, 'n', 2]], 'a nacked message keeps its place ahead of newer ones');
    const d0 = performance.now();
    t.equal(await qcall(r3, 'Q.NACK', 'sem:nack', nid, 'DELAY', 1500), 1, 'nack with DELAY answers 1');
    t.equal(counts(await qinfo(r1, 'sem:nack')).delayed, 1, 'the message is delayed');
    const n2 = await pop(r1, 'sem:nack', 'COUNT', 5);
    t.same(n2?.map((x) => x[1]), ['n2'], 'the delayed one is skipped; the next is delivered');
    const n3 = await pop(r1, 'sem:nack', 'BLOCK', 5000);
    t.same(n3, [[nid, 'n', 3]], `delivered again after its delay (${Math.round(performance.now() - d0)} ms) with count 3`);
    t.ok(performance.now() - d0 >= 1500 - 20, 'not before the delay');
    t.equal(await qcall(r2, 'Q.NACK', 'sem:nack', '999999-0'), 0, 'nack of an unknown id answers 0');
    t.equal(await ack(r2, 'sem:nack', nid, n2![0]![0]), 2);

    // Extend keeps a message invisible past its first timeout.
    const eid = await push(r1, 'sem:ext', 'e');
    t.same(await pop(r2, 'sem:ext', 'VISIBILITY', 1000), [[eid, 'e', 1]]);
    t.equal(await qcall(r3, 'Q.EXTEND', 'sem:ext', eid, 4000), 1, 'extend answers 1');
    await sleep(1500);
    t.equal(await pop(r1, 'sem:ext'), null, 'still invisible after its first visibility lapsed');
    t.equal(counts(await qinfo(r1, 'sem:ext')).inflight, 1, 'Q.INFO counts it in flight');
    t.equal(await qcall(r3, 'Q.EXTEND', 'sem:ext', eid, 1), 1, 'extend to 1 ms');
    t.same(await pop(r1, 'sem:ext', 'BLOCK', 5000), [[eid, 'e', 2]], 'then it comes back');
    t.equal(await qcall(r3, 'Q.EXTEND', 'sem:ext', '999999-0', 1000), 0, 'extend of an unknown id answers 0');
    t.equal(await ack(r1, 'sem:ext', eid), 1);

    // Dead letters after MAXDELIVER (by nack and by a lapsed visibility); Q.DEAD; Q.REDRIVE.
    t.equal(await qcall(r1, 'Q.CREATE', 'sem:dl', 'MAXDELIVER', 2, 'VISIBILITY', 1000), 'OK', 'Q.CREATE with MAXDELIVER 2 and VISIBILITY 1000');
    const info0 = await qinfo(r2, 'sem:dl');
    t.match(info0, { maxdeliver: 2, visibility_ms: 1000, partitions: 1 }, 'Q.INFO shows the settings');
    const d1 = await push(r1, 'sem:dl', 'd1');
    const d2 = await push(r1, 'sem:dl', 'd2');
    for (const n of [1, 2]) {
      t.same(await pop(r2, 'sem:dl'), [[d1, 'd1', n]], `d1 delivery ${n}`);
      t.equal(await qcall(r2, 'Q.NACK', 'sem:dl', d1), 1);
    }
    t.same(await pop(r3, 'sem:dl'), [[d2, 'd2', 1]], 'd1 is dead after 2 deliveries: the next pop gets d2');
    t.same(await pop(r3, 'sem:dl', 'BLOCK', 5000), [[d2, 'd2', 2]], 'd2 comes back after the queue\'s 1000 ms visibility');
    let dl = counts(await qinfo(r1, 'sem:dl'));
    for (let i = 0; i < 100 && dl.dead < 2; i++) {
      await sleep(100);
      dl = counts(await qinfo(r1, 'sem:dl'));
    }
    t.same(dl, { ready: 0, inflight: 0, delayed: 0, dead: 2 }, 'd2 died when its second visibility lapsed');
    t.same(await qcall(r2, 'Q.DEAD', 'sem:dl'), [[d1, 'd1', 2, 'maxdeliver'], [d2, 'd2', 2, 'maxdeliver']], 'Q.DEAD lists both, oldest first');
    t.same(await qcall(r2, 'Q.DEAD', 'sem:dl', 'COUNT', 1), [[d1, 'd1', 2, 'maxdeliver']], 'Q.DEAD COUNT 1');
    t.equal(await qcall(r3, 'Q.REDRIVE', 'sem:dl'), 2, 'Q.REDRIVE moves 2 back');
    t.same(await pop(r1, 'sem:dl', 'COUNT', 5), [[d1, 'd1', 1], [d2, 'd2', 1]], 'redriven messages keep their ids and order, with a fresh delivery count');
    t.equal(await ack(r1, 'sem:dl', d1, d2), 2);
    t.same(await qcall(r1, 'Q.DEAD', 'sem:dl'), [], 'no dead letters left');

    // Dedup: the same DEDUP id on another node answers the first id and adds nothing.
    const first = await push(r1, 'sem:dedup', 'x', 'DEDUP', 'abc');
    t.equal(await push(r2, 'sem:dedup', 'x-again', 'DEDUP', 'abc'), first, 'a repeated DEDUP id returns the first id');
    t.equal(await qlen(r3, 'sem:dedup'), 1, 'and adds nothing');
    t.not(await push(r2, 'sem:dedup', 'y', 'DEDUP', 'abd'), first, 'another DEDUP id is another message');
    t.same((await pop(r3, 'sem:dedup', 'COUNT', 5))?.map((x) => x[1]), ['x', 'y'], 'the first payload is kept');

    // DELAY.
    const p0 = performance.now();
    await push(r1, 'sem:delay', 'later', 'DELAY', 1500);
    t.equal(await qlen(r2, 'sem:delay'), 1, 'Q.LEN counts the delayed message');
    t.equal(await pop(r2, 'sem:delay'), null, 'not deliverable before its delay');
    const late = await pop(r3, 'sem:delay', 'BLOCK', 5000);
    const delayMs = performance.now() - p0;
    t.equal(late?.[0]?.[1], 'later', `delivered ${Math.round(delayMs)} ms after the push`);
    t.ok(delayMs >= 1500 - 20, 'not before DELAY 1500');

    // BLOCK: a pop waiting on node 1 is woken by a push on node 3; two blocked consumers are served FIFO.
    const b0 = performance.now();
    const waiting = pop(r1, 'sem:block', 'BLOCK', 10_000);
    await sleep(300);
    const bid = await push(r3, 'sem:block', 'wake');
    const pushedAt = performance.now();
    t.same(await waiting, [[bid, 'wake', 1]], 'the blocked pop gets the message pushed on another node');
    t.comment(`blocked pop woken ${Math.round(performance.now() - pushedAt)} ms after the push was acknowledged (${Math.round(performance.now() - b0)} ms after it was sent)`);
    const ca = c.client(1);
    const cb = c.client(2);
    const wa = pop(ca, 'sem:block', 'BLOCK', 10_000);
    await sleep(500);
    const wb = pop(cb, 'sem:block', 'BLOCK', 10_000);
    await sleep(500);
    const f1 = await push(r3, 'sem:block', 'f1');
    const f2 = await push(r3, 'sem:block', 'f2');
    t.same([await wa, await wb], [[[f1, 'f1', 1]], [[f2, 'f2', 1]]], 'the consumer that blocked first gets the first message');
    t.equal(await pop(r2, 'sem:block', 'BLOCK', 300), null, 'a BLOCK that runs out answers nil');

    // BLOCK over many partitions: the consumer waits on all of them at once, so a push to any wakes it at once.
    // (Waiting on each partition in turn for 100 ms slices, as before, took up to 700 ms over 8 partitions.)
    await qcall(r1, 'Q.CREATE', 'sem:wide', 'PARTITIONS', SHARDS);
    const waitCounts = async (): Promise<{ waits: number; grouped: number }> => ({ waits: await raftSum(/queue_waits=(\d+)/g), grouped: await raftSum(/queue_waits_grouped=(\d+)/g) });
    const waitsBefore = await waitCounts();
    const wakes: number[] = [];
    for (let i = 0; i < 7; i++) {
      const w = pop(r1, 'sem:wide', 'BLOCK', 10_000);
      await sleep(200);
      const id = await push(r2, 'sem:wide', `w${i}`, 'KEY', `key-${i}`);
      const at = performance.now();
      const got = await w;
      wakes.push(performance.now() - at);
      t.same(got, [[id, `w${i}`, 1]], `pop over ${SHARDS} partitions gets w${i}`);
      await qcall(r1, 'Q.ACK', 'sem:wide', id);
    }
    wakes.sort((a, b) => a - b);
    t.comment(`${SHARDS}-partition blocked pop woken ${wakes.map((x) => Math.round(x)).join(', ')} ms after the push was acknowledged`);
    t.ok(wakes[3]! < 200, `the median wake does not wait for other partitions' slices (${Math.round(wakes[3]!)} ms)`);
    // Partitions whose shards one worker leads share one grouped wait: fewer waits than partitions per pop.
    const waitsAfter = await waitCounts();
    t.ok(waitsAfter.grouped > waitsBefore.grouped, `grouped waits were used (${waitsAfter.grouped - waitsBefore.grouped})`);
    t.ok(waitsAfter.waits - waitsBefore.waits < 7 * SHARDS, `${waitsAfter.waits - waitsBefore.waits} waits for 7 pops over ${SHARDS} partitions`);

    // A consumer that goes away while it waits takes nothing: the message stays ready for the next one.
    const leaving = c.client(1);
    const lp = pop(leaving, 'sem:wide', 'BLOCK', 10_000).catch(() => 'closed');
    await sleep(300);
    leaving.disconnect();
    t.equal(await lp, 'closed');
    await sleep(300);
    const kept = await push(r3, 'sem:wide', 'kept', 'KEY', 'key-kept');
    await sleep(500);
    t.match(counts(await qinfo(r2, 'sem:wide')), { ready: 1, inflight: 0 }, 'a push after the waiting consumer left is not delivered to it');
    t.same(await pop(r2, 'sem:wide', 'BLOCK', 1000), [[kept, 'kept', 1]], 'the next consumer gets it');
    // FIFO among consumers blocked on every partition (grouped waits take one place in each partition's FIFO): the
    // one that blocked first gets the first message, whichever partition it lands in. (With the leaders settled: a
    // wait that must move to a new leader joins the back of its FIFO there.)
    await settledLeaders(c, range(SHARDS));
    for (const [firstNode, secondNode] of [[1, 2], [3, 1]] as const) {
      const ea = pop(c.client(firstNode), 'sem:wide', 'BLOCK', 10_000);
      await sleep(300);
      const eb = pop(c.client(secondNode), 'sem:wide', 'BLOCK', 10_000);
      await sleep(300);
      const e1 = await push(r2, 'sem:wide', 'e1', 'KEY', `k-${firstNode}`);
      t.same(await ea, [[e1, 'e1', 1]], `the consumer on node ${firstNode} blocked first and gets the first message`);
      const e2 = await push(r2, 'sem:wide', 'e2', 'KEY', `k-${secondNode}-b`);
      t.same(await eb, [[e2, 'e2', 1]], `the consumer on node ${secondNode} gets the second`);
      await qcall(r1, 'Q.ACK', 'sem:wide', e1, e2);
    }
    // No wait is left behind: withdrawn, answered or timed out, none stays parked on any leader.
    const parkedWaits = (): Promise<number> => raftSum(/queue_waits(?:_grouped)?_parked=(\d+)/g);
    let parked = await parkedWaits();
    for (let i = 0; i < 20 && parked > 0; i++) {
      await sleep(100);
      parked = await parkedWaits();
    }
    t.equal(parked, 0, 'no queue wait stays parked once its consumers are served or gone');

    // Q.INFO, Q.LEN, Q.LIST, Q.PURGE.
    for (let i = 0; i < 4; i++) await push(r2, 'sem:info', `i${i}`);
    const held = await pop(r1, 'sem:info', 'VISIBILITY', 60_000);
    const info = await qinfo(r3, 'sem:info');
    t.match(info, { ready: 3, inflight: 1, delayed: 0, dead: 0, partitions: 1, maxdeliver: 20, visibility_ms: 30_000 }, 'Q.INFO counts and defaults');
    const detail = info?.['partition_detail'] as Record<string, unknown>[];
    t.equal(detail.length, 1, 'one partition');
    t.match(detail[0], { partition: 0, shard: shardOf('sem:info'), ready: 3, inflight: 1 }, 'partition detail: shard (shardOf(q) + p) mod S');
    t.equal(detail[0]!['leader'], await leaderOf(c, shardOf('sem:info')), 'partition detail names the shard leader');
    t.equal(await qlen(r1, 'sem:info'), 3, 'Q.LEN = ready + delayed');
    const list = (await qcall(r2, 'Q.LIST')) as string[];
    for (const q of ['sem:fifo', 'sem:dl', 'sem:info', 'sem:block']) t.ok(list.includes(q), `Q.LIST has ${q}`);
    t.equal(await qcall(r3, 'Q.PURGE', 'sem:info'), 4, 'Q.PURGE drops ready and in-flight messages');
    t.equal(await ack(r1, 'sem:info', held![0]![0]), 0, 'a purged in-flight message can no longer be acked');
    t.equal(await qlen(r1, 'sem:info'), 0);
    t.equal(await qinfo(r1, 'sem:nope'), null, 'Q.INFO of an unknown queue is nil');

    // Three partitions: ids name the partition, each key keeps its order.
    t.equal(await qcall(r1, 'Q.CREATE', 'sem:parts', 'PARTITIONS', 3), 'OK');
    await t.rejects(qcall(r2, 'Q.CREATE', 'sem:parts', 'PARTITIONS', 2), /ERR/, 'the partition count cannot change');
    const pushedByKey = new Map<string, string[]>();
    for (let i = 0; i < 30; i++) {
      const key = `k${i % 3}`;
      await push([r1, r2, r3][i % 3]!, 'sem:parts', `${key}:${i}`, 'KEY', key);
      pushedByKey.set(key, [...(pushedByKey.get(key) ?? []), `${key}:${i}`]);
    }
    const pinfo = await qinfo(r1, 'sem:parts');
    t.equal((pinfo?.['partition_detail'] as unknown[]).length, 3, 'Q.INFO details 3 partitions');
    const seen: Triple[] = [];
    for (let i = 0; i < 40 && seen.length < 30; i++) seen.push(...((await pop([r1, r2, r3][i % 3]!, 'sem:parts', 'COUNT', 4)) ?? []));
    t.equal(seen.length, 30, 'all 30 delivered');
    t.ok(seen.every((x) => /^[0-2]:\d+-\d+$/.test(x[0])), 'ids of a multi-partition queue are p:index-n');
    for (const [key, want] of pushedByKey) t.same(seen.map((x) => x[1]).filter((p) => p.startsWith(`${key}:`)), want, `per-key order of ${key}`);
    t.equal(await ack(r2, 'sem:parts', ...seen.map((x) => x[0])), 30, 'acks find their partitions');

    // Without KEY, a push lands in a partition led by the node that received it (no forwarding hop) whenever that
    // node leads one of the queue's partitions.
    t.equal(await qcall(r1, 'Q.CREATE', 'sem:local', 'PARTITIONS', SHARDS), 'OK');
    const leadersOf = async (): Promise<Map<number, number>> => {
      const d = (await qinfo(r1, 'sem:local'))?.['partition_detail'] as Record<string, unknown>[];
      return new Map(d.map((x) => [Number(x['partition']), Number(x['leader'])]));
    };
    const before = await leadersOf();
    const sent: [sender: number, partition: number][] = [];
    for (let i = 0; i < 24; i++) {
      const id = await push([r1, r2, r3][i % 3]!, 'sem:local', `u${i}`);
      sent.push([(i % 3) + 1, Number(id.split(':')[0])]);
    }
    const after = await leadersOf();
    if (![...before].every(([p, l]) => after.get(p) === l)) t.comment('a leader changed during the unkeyed pushes: locality not checked');
    else {
      const leading = new Set(before.values());
      const checked = sent.filter(([sender]) => leading.has(sender));
      t.ok(checked.length >= 8, `${checked.length} pushes went to nodes that lead a partition`);
      t.same(
        checked.filter(([sender, p]) => before.get(p) !== sender),
        [],
        'each of them landed in a partition led by the node that received it',
      );
    }
    t.equal(await qlen(r2, 'sem:local'), 24);

    // Redis list commands on the same store.
    t.equal(await r1.rpush('sem:list', 'a', 'b', 'c'), 3, 'RPUSH');
    t.equal(await r2.lpush('sem:list', 'z'), 4, 'LPUSH');
    t.same(await r3.lrange('sem:list', 0, -1), ['z', 'a', 'b', 'c'], 'LRANGE 0 -1');
    t.same(await r3.lrange('sem:list', 1, 2), ['a', 'b'], 'LRANGE 1 2');
    t.equal(await r1.llen('sem:list'), 4, 'LLEN');
    t.equal(await r2.lpop('sem:list'), 'z', 'LPOP');
    t.equal(await r3.rpop('sem:list'), 'c', 'RPOP');
    t.same(await r2.lpop('sem:list', 0), [], 'LPOP with count 0 of a list that has values: an empty array (Redis 7)');
    t.same(await r1.lpop('sem:list', 2), ['a', 'b'], 'LPOP with a count');
    t.equal(await r1.llen('sem:list'), 0);
    t.equal(await r3.rpop('sem:list', 0), null, 'RPOP with count 0 of an empty list: nil');
    t.equal(await r2.lpop('sem:list'), null, 'LPOP of an empty list is nil');
    const bl = r1.blpop('sem:list', 5);
    await sleep(300);
    await r3.rpush('sem:list', 'w');
    t.same(await bl, ['sem:list', 'w'], 'BLPOP woken by an RPUSH on another node');
    t.equal(await r2.blpop('sem:list', 0.3), null, 'BLPOP times out with nil');
    await r3.rpush('sem:list2', 'x', 'y');
    t.same(await r1.brpop('sem:list', 'sem:list2', 2), ['sem:list2', 'y'], 'BRPOP over two lists takes the first non-empty one');
    t.equal(await r1.llen('sem:list2'), 1);
    const bl3 = r1.blpop('sem:l3a', 'sem:l3b', 'sem:l3c', 10);
    await sleep(300);
    const l3At = performance.now();
    await r2.rpush('sem:l3c', 'z');
    t.same(await bl3, ['sem:l3c', 'z'], 'BLPOP over three lists is woken by a push to the last one');
    t.ok(performance.now() - l3At < 1000, 'at once, not after waiting on the others first');
    // A BLPOP whose client went away takes nothing (a list pop acks at once: the value would be lost).
    const gone = c.client(1);
    const gp = gone.blpop('sem:lgone', 10).catch(() => 'closed');
    await sleep(300);
    gone.disconnect();
    t.equal(await gp, 'closed');
    await sleep(300);
    await r3.rpush('sem:lgone', 'kept');
    await sleep(500);
    t.same(await r2.lrange('sem:lgone', 0, -1), ['kept'], 'a value pushed after the blocked client left stays in the list');
    // Many waiting clients on one list, spread over the nodes: each gets exactly one value; then half of them wait
    // again and leave, and a value pushed after that stays in the list.
    const MANY = 150;
    const crowd = Array.from({ length: MANY }, (_, i) => c.client((i % 3) + 1));
    await Promise.all(crowd.map((x) => x.ping()));
    const waiting3 = crowd.map((x) => x.blpop('sem:crowd', 20));
    await sleep(500);
    await r2.rpush('sem:crowd', ...range(MANY).map((i) => `c${i}`));
    const gotCrowd = (await Promise.all(waiting3)).map((x) => x?.[1]);
    t.equal(new Set(gotCrowd).size, MANY, `${MANY} blocked clients got ${MANY} distinct values`);
    t.equal(await r1.llen('sem:crowd'), 0);
    const leavers = crowd.slice(0, MANY / 2);
    const gone2 = leavers.map((x) => x.blpop('sem:crowd', 20).catch(() => 'closed'));
    await sleep(500);
    leavers.forEach((x) => x.disconnect());
    await Promise.all(gone2);
    await sleep(300);
    await r3.rpush('sem:crowd', 'kept');
    await sleep(500);
    t.same(await r2.lrange('sem:crowd', 0, -1), ['kept'], `after ${MANY / 2} waiting clients left, a new value stays`);

    // Bad input: errors, and the connection goes on.
    await t.rejects(qcall(r1, 'Q.PUSH', 'q'), /wrong number of arguments/i, 'Q.PUSH without a payload');
    await t.rejects(qcall(r1, 'Q.ACK', 'q'), /wrong number of arguments/i, 'Q.ACK without ids');
    await t.rejects(qcall(r1, 'Q.EXTEND', 'q', '1-0'), /wrong number of arguments/i, 'Q.EXTEND without ms');
    await t.rejects(qcall(r1, 'Q.POP', 'q', 'COUNT', 'abc'), /not an integer/, 'COUNT abc');
    await t.rejects(qcall(r1, 'Q.POP', 'q', 'COUNT', 0), /ERR/, 'COUNT 0');
    await t.rejects(qcall(r1, 'Q.POP', 'q', 'VISIBILITY', -5), /ERR/, 'VISIBILITY -5');
    await t.rejects(qcall(r1, 'Q.POP', 'q', 'BLOCK', '1.5'), /ERR/, 'BLOCK 1.5');
    await t.rejects(qcall(r1, 'Q.POP', 'q', 'COUNT'), /syntax/, 'an option without its value');
    await t.rejects(qcall(r1, 'Q.POP', 'q', 'BOGUS', 1), /syntax/, 'an unknown option');
    await t.rejects(qcall(r1, 'Q.PUSH', 'q', 'p', 'DELAY', 'soon'), /not an integer/, 'DELAY soon');
    await t.rejects(qcall(r1, 'Q.NACK', 'q', '1-0', 'DELAY', -1), /ERR/, 'NACK DELAY -1');
    await t.rejects(qcall(r1, 'Q.EXTEND', 'q', '1-0', 'abc'), /not an integer/, 'EXTEND abc');
    await t.rejects(qcall(r1, 'Q.CREATE', 'q', 'PARTITIONS', 0), /ERR/, 'PARTITIONS 0');
    await t.rejects(qcall(r1, 'Q.CREATE', 'q', 'PARTITIONS', SHARDS + 1), /ERR/, 'more partitions than shards');
    await t.rejects(qcall(r1, 'Q.CREATE', 'q', 'MAXDELIVER', 0), /ERR/, 'MAXDELIVER 0');
    await t.rejects(qcall(r1, 'Q.DEAD', 'q', 'COUNT', 'x'), /not an integer/, 'Q.DEAD COUNT x');
    await t.rejects(qcall(r1, 'LPOP', 'sem:list', 'x'), /ERR/, 'LPOP count x');
    await t.rejects(qcall(r1, 'BLPOP', 'sem:list', 'soon'), /timeout/, 'BLPOP timeout soon');
    await t.rejects(qcall(r1, 'LRANGE', 'sem:list', 'a', 'b'), /not an integer/, 'LRANGE a b');
    t.equal(await r1.ping(), 'PONG', 'the connection still works');
    t.match(await push(r1, 'sem:after', 'ok'), /^\d+-\d+$/, 'and still pushes');
  });
});

// -----------------------------------------------------------------------------------------------------------------
// 2. Chaos
// -----------------------------------------------------------------------------------------------------------------

/** Messages pushed in the chaos test (all producers together). */
const CHAOS_MESSAGES = 20_000;
const PRODUCERS = 5;
const CONSUMERS = 5;
/** Partition keys per producer; each (producer, key) lane pushes sequentially. */
const KEYS = 5;
const MAX_DELIVER = 5;
const VISIBILITY_MS = 1500;
/** Every POISON_EVERY-th message of a lane is never acked (nacked or left to lapse; always nacked in the drain): it must end dead. */
const POISON_EVERY = 100;
/** A message's push is retried with its DEDUP id until acknowledged or this long after its first attempt. */
const PUSH_DEADLINE_MS = 30_000;
/** Consumer choices per delivered non-poison message while not draining (the rest is ack). */
const NACK_P = 0.06;
const LEAVE_P = 0.03;
const EXTEND_P = 0.02;
/** Chance per consumer iteration of a crash (drop the connection), while not draining. */
const CRASH_P = 0.02;
/** The pop's BLOCK while consuming. */
const POP_BLOCK_MS = 300;
/** The victim is killed once this fraction of the pushes was acknowledged (or after KILL_AT_MS at the latest). */
const KILL_AT_FRACTION = 0.3;
const KILL_AT_MS = 25_000;
/** How long the victim stays down. */
const DOWN_MS = 3000;
/** The drain (consumers only, no chaos) must empty the queue within this. */
const DRAIN_DEADLINE_MS = 40_000;
/** The queue counts as drained after this many consecutive empty Q.INFO reads, DRAIN_POLL_MS apart. */
const DRAIN_EMPTY_READS = 3;
const DRAIN_POLL_MS = 500;
/** Check 5 of the checker: tolerance between the client's clock and the servers' stamps. */
const VISIBILITY_SLACK_MS = 100;

t.test('chaos: producers and consumers on every node while the queue\'s leader is killed -9; the history checks out', { timeout: CHAOS_TIMEOUT_MS }, async (t) => {
  const Q = 'chaos:q';
  await withCluster(t, OPTS, async (c) => {
    const admin = sturdyClient(c, 1);
    t.equal(await qcall(admin, 'Q.CREATE', Q, 'PARTITIONS', 1, 'MAXDELIVER', MAX_DELIVER, 'VISIBILITY', VISIBILITY_MS), 'OK');
    const shard = shardOf(Q);
    // A second queue on the same shard, for the dedicated dedup-across-failover check.
    const DQ = range(10_000).map((i) => `dedup:${i}`).find((n) => shardOf(n) === shard)!;

    const history = new QueueHistory();
    const errors = new Map<string, number>();
    const samples = new Map<string, string>();
    const noteErr = (e: unknown): string => {
      const k = errorCode(e);
      errors.set(k, (errors.get(k) ?? 0) + 1);
      if (!samples.has(k)) samples.set(k, (e as Error).message);
      return (e as Error).message;
    };
    let seed = 20240611;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff;
    };
    const perLane = Math.ceil(CHAOS_MESSAGES / (PRODUCERS * KEYS));
    let pushesAcked = 0;
    let pushesAbandoned = 0;
    let killAt = Infinity;
    let lastAckBeforeKill = 0;
    let firstAckAfterKill = Infinity;
    const t0 = performance.now();

    // Producers: one connection each, KEYS lanes over it, each lane sequential.
    const producer = async (p: number): Promise<void> => {
      const r = sturdyClient(c, (p % 3) + 1);
      await Promise.all(
        range(KEYS).map(async (k) => {
          for (let j = 0; j < perLane; j++) {
            const poison = j % POISON_EVERY === POISON_EVERY - 1;
            const payload = `p${p}:k${k}:${j}${poison ? ':poison' : ''}`;
            const dedup = `p${p}k${k}-${j}`;
            const first = performance.now();
            for (;;) {
              const sentAt = performance.now();
              try {
                const id = await push(r, Q, payload, 'KEY', `k${k}`, 'DEDUP', dedup);
                const doneAt = performance.now();
                history.record({ kind: 'push', producer: `p${p}`, key: `k${k}`, dedup, payload, sentAt, doneAt, result: { id } });
                pushesAcked++;
                if (doneAt < killAt) lastAckBeforeKill = Math.max(lastAckBeforeKill, doneAt);
                else if (sentAt > killAt) firstAckAfterKill = Math.min(firstAckAfterKill, doneAt);
                break;
              } catch (e) {
                history.record({ kind: 'push', producer: `p${p}`, key: `k${k}`, dedup, payload, sentAt, doneAt: performance.now(), result: { error: noteErr(e) } });
                if (performance.now() - first > PUSH_DEADLINE_MS) {
                  pushesAbandoned++;
                  break;
                }
                await sleep(RETRY_PAUSE_MS);
              }
            }
          }
        }),
      );
    };

    // Consumers.
    let draining = false;
    let stopConsumers = false;
    let crashes = 0;
    const consumer = async (i: number): Promise<void> => {
      const node = (i % 3) + 1;
      let r = sturdyClient(c, node);
      let gen = 0;
      const name = () => `c${i}.${gen}`;
      const crash = () => {
        crashes++;
        r.disconnect();
        gen++;
        r = sturdyClient(c, node);
      };
      while (!stopConsumers) {
        const count = 1 + Math.floor(rnd() * 10);
        const crashNow = !draining && rnd() < CRASH_P;
        const crashMidPop = crashNow && rnd() < 0.5;
        const who = name();
        const sentAt = performance.now();
        let delivered: Delivered[];
        try {
          const pending = pop(r, Q, 'COUNT', count, 'VISIBILITY', VISIBILITY_MS, 'BLOCK', POP_BLOCK_MS);
          if (crashMidPop) {
            // Drop the connection with the pop outstanding: whatever it delivered, nobody sees.
            pending.catch(() => undefined);
            await sleep(Math.floor(rnd() * 5));
            crash();
          }
          const v = await pending;
          delivered = (v ?? []).map(([id, payload, n]) => ({ id, payload, deliveries: Number(n) }));
          history.record({ kind: 'pop', consumer: who, visibilityMs: VISIBILITY_MS, sentAt, doneAt: performance.now(), result: delivered });
        } catch (e) {
          history.record({ kind: 'pop', consumer: who, visibilityMs: VISIBILITY_MS, sentAt, doneAt: performance.now(), result: { error: noteErr(e) } });
          if (!crashMidPop) await sleep(RETRY_PAUSE_MS);
          continue;
        }
        if (delivered.length === 0) continue;
        if (crashNow) {
          // Drop the connection holding these messages: they come back after their visibility.
          crash();
          continue;
        }
        const toAck: string[] = [];
        for (const d of delivered) {
          const poison = d.payload.endsWith(':poison');
          const x = rnd();
          if (poison || (!draining && x < NACK_P + LEAVE_P + EXTEND_P)) {
            if (poison ? draining || x < 0.5 : x < NACK_P) {
              const delayMs = rnd() < 0.2 ? 100 : 0;
              const s = performance.now();
              try {
                const v = (await qcall(r, 'Q.NACK', Q, d.id, ...(delayMs > 0 ? ['DELAY', delayMs] : []))) as 0 | 1;
                history.record({ kind: 'nack', consumer: name(), id: d.id, delayMs, sentAt: s, doneAt: performance.now(), result: v });
              } catch (e) {
                history.record({ kind: 'nack', consumer: name(), id: d.id, delayMs, sentAt: s, doneAt: performance.now(), result: { error: noteErr(e) } });
              }
            } else if (!poison && x >= NACK_P + LEAVE_P) {
              const s = performance.now();
              try {
                const v = (await qcall(r, 'Q.EXTEND', Q, d.id, 2 * VISIBILITY_MS)) as 0 | 1;
                history.record({ kind: 'extend', consumer: name(), id: d.id, ms: 2 * VISIBILITY_MS, sentAt: s, doneAt: performance.now(), result: v });
              } catch (e) {
                history.record({ kind: 'extend', consumer: name(), id: d.id, ms: 2 * VISIBILITY_MS, sentAt: s, doneAt: performance.now(), result: { error: noteErr(e) } });
              }
              toAck.push(d.id);
            }
            // else: leave it; its visibility lapses.
          } else toAck.push(d.id);
        }
        if (toAck.length === 0) continue;
        const s = performance.now();
        try {
          const n = await ack(r, Q, ...toAck);
          history.record({ kind: 'ack', consumer: name(), ids: toAck, sentAt: s, doneAt: performance.now(), result: n });
        } catch (e) {
          history.record({ kind: 'ack', consumer: name(), ids: toAck, sentAt: s, doneAt: performance.now(), result: { error: noteErr(e) } });
          await sleep(RETRY_PAUSE_MS);
        }
      }
    };

    const consumers = range(CONSUMERS).map(consumer);
    const producers = Promise.all(range(PRODUCERS).map(producer));

    // The failover, with the dedup check riding on it.
    const killUntil = performance.now() + KILL_AT_MS;
    while (pushesAcked < KILL_AT_FRACTION * perLane * PRODUCERS * KEYS && performance.now() < killUntil) await sleep(100);
    const dedupId = await retrying(10_000, () => push(admin, DQ, 'once', 'DEDUP', 'failover-1'));
    const victim = await leaderOf(c, shard);
    t.ok(victim > 0, `node ${victim} leads shard ${shard} of ${Q}`);
    const pushesAtKill = pushesAcked;
    killAt = performance.now();
    await c.kill(victim);
    t.comment(`SIGKILL node ${victim} (leader of shard ${shard}) after ${pushesAtKill} acknowledged pushes, ${Math.round(killAt - t0)} ms in`);
    const survivor = sturdyClient(c, c.ids.find((id) => id !== victim)!);
    const dedupAgain = await retrying(15_000, () => push(survivor, DQ, 'once-retry', 'DEDUP', 'failover-1'));
    t.equal(dedupAgain, dedupId, `the DEDUP id pushed before the kill answers the same id after the failover (${dedupId})`);
    t.equal(await retrying(10_000, () => qlen(survivor, DQ)), 1, 'Q.LEN counts it once');
    const newLeader = await leaderOf(c, shard);
    t.comment(`shard ${shard} led by node ${newLeader} after the failover (${Math.round(performance.now() - killAt)} ms after the kill)`);
    await sleep(Math.max(0, DOWN_MS - (performance.now() - killAt)));
    const restartAt = performance.now();
    await c.startNode(victim);
    t.comment(`node ${victim} restarted ${Math.round(restartAt - killAt)} ms after the kill, ready in ${Math.round(performance.now() - restartAt)} ms`);

    await producers;
    const pushedAt = performance.now();
    t.comment(`producers done ${Math.round(pushedAt - t0)} ms in: ${pushesAcked} acknowledged, ${pushesAbandoned} abandoned; push gap around the kill: last ack before ${Math.round(killAt - lastAckBeforeKill)} ms before it, first ack of a push sent after it ${Number.isFinite(firstAckAfterKill) ? `${Math.round(firstAckAfterKill - killAt)} ms after` : 'never'}`);

    // Drain: no more chaos; consumers ack everything and nack poison until the queue stays empty.
    draining = true;
    t.comment(`backlog when the producers were done: ${JSON.stringify(counts(await retrying(10_000, () => qinfo(admin, Q))))}`);
    const drainUntil = performance.now() + DRAIN_DEADLINE_MS;
    let empties = 0;
    let last = { ready: -1, inflight: -1, delayed: -1, dead: -1 };
    while (empties < DRAIN_EMPTY_READS && performance.now() < drainUntil) {
      await sleep(DRAIN_POLL_MS);
      try {
        last = counts(await qinfo(admin, Q));
        empties = last.ready + last.inflight + last.delayed === 0 ? empties + 1 : 0;
      } catch (e) {
        noteErr(e);
        empties = 0;
      }
    }
    stopConsumers = true;
    await Promise.all(consumers);
    t.ok(empties >= DRAIN_EMPTY_READS, `drained in ${Math.round(performance.now() - pushedAt)} ms (last Q.INFO ${JSON.stringify(last)})`);

    const finalInfo = counts(await retrying(10_000, () => qinfo(admin, Q)));
    const deadRaw = (await retrying(10_000, () => qcall(admin, 'Q.DEAD', Q, 'COUNT', 10_000))) as [string, string, number, string][];
    const final = { ...finalInfo, deadLetters: deadRaw.map(([id, payload, deliveries, reason]) => ({ id, payload, deliveries: Number(deliveries), reason })) };
    const report = checkQueueHistory(history.ops, { maxDeliver: MAX_DELIVER, final, visibilitySlackMs: VISIBILITY_SLACK_MS });
    t.comment(`ops ${history.ops.length}; crashes ${crashes}; final ${JSON.stringify(finalInfo)}; stats ${JSON.stringify(report.stats)}`);
    t.comment(`errors ${fmtCounts(errors)}; samples ${[...samples].map(([k, v]) => `${k}: ${v}`).join(' | ') || 'none'}`);
    for (const v of report.violations.slice(0, 30)) t.comment(`violation: ${v}`);
    t.ok(report.ok, `the history has no violation (${report.violations.length})`);
    t.equal(pushesAbandoned, 0, 'every push was acknowledged within its retry deadline');
    const poisonCount = Math.floor(perLane / POISON_EVERY) * PRODUCERS * KEYS;
    t.ok(report.stats.dead >= poisonCount, `dead letters happened (${report.stats.dead}, at least the ${poisonCount} poison messages)`);
    t.ok(report.stats.redeliveries > 0 && report.stats.deliveries >= report.stats.pushesAcked, `deliveries ${report.stats.deliveries}, redeliveries ${report.stats.redeliveries}`);
    t.ok(report.stats.orderChecked > 1000, `per-key order was checked for ${report.stats.orderChecked} messages`);
    const popsAfterKill = history.ops.filter((o): o is PopOp => o.kind === 'pop' && o.sentAt > killAt && Array.isArray(o.result) && o.result.length > 0);
    const firstPopAfterKill = Math.min(...popsAfterKill.map((o) => o.doneAt));
    t.ok(popsAfterKill.length > 0, `consumers got messages from pops sent after the kill (${popsAfterKill.length} pops, the first answered ${Math.round(firstPopAfterKill - killAt)} ms after the kill)`);
    t.comment(`whole chaos run ${Math.round(performance.now() - t0)} ms for ${CHAOS_MESSAGES} messages`);
  });
});

// -----------------------------------------------------------------------------------------------------------------
// 3. Full restart
// -----------------------------------------------------------------------------------------------------------------

t.test('full restart: unacked messages survive SIGTERM of every node; acked ones stay gone', { timeout: RESTART_TIMEOUT_MS }, async (t) => {
  const Q = 'restart:q';
  const N = 300;
  const ACKED = 50;
  const HELD = 100;
  const HELD_VISIBILITY_MS = 3000;
  const COME_BACK_MS = 30_000;
  await withCluster(t, OPTS, async (c) => {
    const clients = c.ids.map((id) => c.client(id));
    const r = clients[0]!;
    const payloads = range(N).map((i) => `r${i}`);
    for (let i = 0; i < N; i += 50) await Promise.all(payloads.slice(i, i + 50).map((p, j) => push(clients[(i + j) % 3]!, Q, p)));
    const acked = (await pop(r, Q, 'COUNT', ACKED, 'VISIBILITY', 60_000))!;
    t.equal(await ack(r, Q, ...acked.map((x) => x[0])), ACKED, `${ACKED} popped and acked`);
    const held = (await pop(clients[1]!, Q, 'COUNT', HELD, 'VISIBILITY', HELD_VISIBILITY_MS))!;
    t.equal(held.length, HELD, `${HELD} popped and held (VISIBILITY ${HELD_VISIBILITY_MS})`);
    t.match(counts(await qinfo(r, Q)), { ready: N - ACKED - HELD, inflight: HELD, dead: 0 });

    const t0 = Date.now();
    const codes = await Promise.all(c.ids.map((id) => c.stop(id)));
    t.comment(`SIGTERM every node: exit codes ${codes.join(',')} in ${Date.now() - t0} ms`);
    const started = await c.startAll();
    t.comment(`restarted: ready in ${started.readyMs} ms, cluster ok in ${started.okMs} ms (${started.detail})`);

    const rr = sturdyClient(c, 3);
    const got = new Map<string, Triple>();
    const until = Date.now() + COME_BACK_MS;
    while (got.size < N - ACKED && Date.now() < until) {
      try {
        const v = await pop(rr, Q, 'COUNT', 100, 'VISIBILITY', 60_000, 'BLOCK', 1000);
        for (const x of v ?? []) got.set(x[1], x);
      } catch {
        await sleep(RETRY_PAUSE_MS);
      }
    }
    t.comment(`${got.size} messages back ${Date.now() - t0} ms after the stop`);
    const ackedSet = new Set(acked.map((x) => x[1]));
    const heldSet = new Set(held.map((x) => x[1]));
    const missing = payloads.filter((p) => !ackedSet.has(p) && !got.has(p));
    t.same(missing, [], `every unacked message came back (${N - ACKED})`);
    t.same([...got.keys()].filter((p) => ackedSet.has(p)), [], 'no acked message came back');
    t.same([...got.values()].filter((x) => x[2] !== (heldSet.has(x[1]) ? 2 : 1)).map((x) => `${x[1]}#${x[2]}`), [], 'held ones with delivery count 2, never-delivered ones with 1');
    const heldIds = new Map(held.map((x) => [x[1], x[0]]));
    t.same([...got.values()].filter((x) => heldIds.has(x[1]) && heldIds.get(x[1]) !== x[0]).map((x) => x[1]), [], 'held messages keep their ids');
    t.equal(await retrying(10_000, () => ack(rr, Q, ...[...got.values()].map((x) => x[0]))), got.size, 'all acked');
    t.same(counts(await qinfo(rr, Q)), { ready: 0, inflight: 0, delayed: 0, dead: 0 }, 'the queue is empty');
  });
});

// -----------------------------------------------------------------------------------------------------------------
// 4. Blocked pops through a failover
// -----------------------------------------------------------------------------------------------------------------

t.test('a blocked BLPOP and Q.POP BLOCK ride out a kill -9 of their leader', { timeout: RESTART_TIMEOUT_MS }, async (t) => {
  await withCluster(t, OPTS, async (c) => {
    // A list and a queue whose shards one node (the victim) leads; the consumers wait on another node, so their
    // takes are forwarded to the victim, and the values are pushed through the third.
    const list = 'fo:list';
    const victim = await leaderOf(c, shardOf(list));
    t.not(victim, 0, `the list's shard has a leader (node ${victim})`);
    let q = '';
    for (let i = 0; i < 200 && q === ''; i++) if ((await leaderOf(c, shardOf(`fo:q${i}`))) === victim) q = `fo:q${i}`;
    t.not(q, '', `a queue name on a shard node ${victim} leads: ${q}`);
    const [waiter, pusher] = c.ids.filter((id) => id !== victim) as [number, number];
    const r1 = c.client(waiter);
    const r1b = c.client(waiter);
    const r1c = c.client(waiter);
    // And a queue with a partition on every shard: its consumer's grouped waits on the victim fail with it, and it
    // waits on those partitions one by one until their new leaders serve it.
    const wide = 'fo:wide';
    t.equal(await qcall(r1, 'Q.CREATE', wide, 'PARTITIONS', SHARDS), 'OK');
    const bl = r1.blpop(list, 20);
    const qp = pop(r1b, q, 'BLOCK', 20_000);
    const wp = pop(r1c, wide, 'BLOCK', 20_000);
    await sleep(500);
    await c.kill(victim);
    t.comment(`killed node ${victim}, the leader of both shards; consumers on node ${waiter}, pushes through node ${pusher}`);
    const r3 = sturdyClient(c, pusher);
    await retrying(15_000, () => r3.rpush(list, 'after'));
    const id = await retrying(15_000, () => push(r3, q, 'after'));
    t.same(await bl, [list, 'after'], 'the BLPOP waited through the failover and got the value pushed after it');
    t.same(await qp, [[id, 'after', 1]], 'so did the Q.POP BLOCK');
    const wid = await retrying(15_000, () => push(r3, wide, 'after'));
    t.same(await wp, [[wid, 'after', 1]], `and the Q.POP BLOCK over ${SHARDS} partitions`);
  });
});

// -----------------------------------------------------------------------------------------------------------------
// 5. A wake lost with its edge node
// -----------------------------------------------------------------------------------------------------------------

t.test('a wake answered to a paused node is handed on to the next waiter by the leader (backstop re-wake)', { timeout: RESTART_TIMEOUT_MS }, async (t) => {
  await withCluster(t, OPTS, async (c) => {
    // Two partitions, so a Q.POP BLOCK waits on both (a wait, not a take). Node `away` leads neither partition: the
    // first consumer waits there, then the node is paused (SIGSTOP), so the leader's "ready" answer to its wait sits
    // unread and nothing hands the wake on. The second consumer, parked behind it, must still get the message while
    // `away` is paused: the leader wakes the next waiter when messages stay ready after a wake.
    const q = 'bk:q';
    const r0 = c.client(1);
    t.equal(await qcall(r0, 'Q.CREATE', q, 'PARTITIONS', 2), 'OK');
    const detail = (await qinfo(r0, q))!['partition_detail'] as Record<string, unknown>[];
    // (Settled first: a leader moving to `away` after it was chosen would void the scenario.)
    const leaders = await settledLeaders(c, detail.map((d) => Number(d['shard'])));
    t.notOk(leaders.includes(0), `both partitions have leaders (nodes ${leaders.join(', ')})`);
    const away = c.ids.find((id) => !leaders.includes(id)) ?? c.ids.find((id) => id !== leaders[0])!;
    const [other, pusher] = [c.ids.find((id) => id !== away && !leaders.includes(id)) ?? c.ids.find((id) => id !== away)!, c.ids.find((id) => id !== away)!];
    const first = pop(c.client(away), q, 'BLOCK', 20_000);
    await sleep(300);
    const second = pop(c.client(other), q, 'BLOCK', 20_000);
    await sleep(300);
    c.pause(away);
    const t0 = Date.now();
    try {
      const id = await push(c.client(pusher), q, 'x');
      const got = await Promise.race([second, sleep(5_000).then(() => 'timeout' as const)]);
      t.same(got, [[id, 'x', 1]], `the second consumer (node ${other}) got the message while node ${away} stayed paused`);
      t.comment(`woken ${Date.now() - t0} ms after the push began (the leader looks again 200 ms after a wake)`);
    } finally {
      c.resume(away);
    }
    // The first consumer's connection lived through the pause: its wait goes on and takes the next message.
    const id2 = await retrying(10_000, () => push(c.client(pusher), q, 'y'));
    t.same(await first, [[id2, 'y', 1]], `the first consumer (node ${away}) takes the next message after it resumed`);
  });
});
