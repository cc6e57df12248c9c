// Helpers of the real-cluster cache tests (test/cache/cache-cluster.test.ts, cache-writeback.test.ts): INFO readers,
// shard leadership lookups, a retry loop for the first writes after a cluster (or a new leader) comes up, and
// GET/SET/INCR clients (some reads as MGET, served by the shard worker instead of the cache) that record a history for
// the linearizability checker.
import type { Redis } from 'ioredis';
import { errorCode, type ProcCluster } from './cluster-procs.js';
import type { KvInput, KvOutput, Operation } from './linearizability.js';
import { keySlot } from '../../src/cluster/slots.js';
import { shardOfSlot } from '../../src/cluster/ring.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function cacheInfo(c: ProcCluster, id: number): Promise<Record<string, number>> {
  const raw = await c.info(id, 'cache');
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(raw)) out[k] = Number(v);
  return out;
}

/** Sum of edge_requests over the node's workers (INFO raft): requests that left the edge thread. */
export async function edgeRequests(c: ProcCluster, id: number): Promise<number> {
  const raw = await c.info(id, 'raft');
  let n = 0;
  for (const [k, v] of Object.entries(raw)) {
    if (!/^worker\d+$/.test(k)) continue;
    const m = /edge_requests=(\d+)/.exec(v);
    if (m !== null) n += Number(m[1]);
  }
  return n;
}

/** The node leading `shard` now, from any live node's INFO raft. */
export async function leaderOf(c: ProcCluster, shard: number): Promise<number> {
  for (const id of c.liveIds()) {
    const r = await c.raft(id);
    const s = r.shards.find((x) => x.shard === shard);
    if (s !== undefined && s.role === 'leader') return id;
  }
  return 0;
}

/** A key (prefix + a number) whose shard is led by `leader` now, in a cluster of `shards` shards. */
export async function keyLedBy(c: ProcCluster, shards: number, leader: number, prefix: string): Promise<string> {
  for (let i = 0; i < 2000; i++) {
    const k = `${prefix}${i}`;
    if ((await leaderOf(c, shardOfSlot(keySlot(Buffer.from(k)), shards))) === leader) return k;
  }
  throw new Error(`no key led by node ${leader}`);
}

export async function retrying<T>(windowMs: number, f: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + windowMs;
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (Date.now() >= deadline) throw err;
      await sleep(100);
    }
  }
}


/**
 * Clients (one per entry of `nodes`, on that node) running GET (60%) / SET (20%) / INCR (20%) on `keys` until
 * stop(), recording every operation for test/support/linearizability.ts: a failed read is left out (it changed
 * nothing), a failed write is recorded with ret = Infinity (it may or may not have happened). The keys must be
 * set to '0' before (the history starts with those SETs).
 */
export function runKvClients(
  c: ProcCluster,
  keys: string[],
  nodes: number[],
): { stop(): Promise<{ history: Operation<KvInput, KvOutput>[]; counts: { ok: number; failed: number; unknown: number } }> } {
  const history: Operation<KvInput, KvOutput>[] = keys.map((key) => ({ clientId: 0, input: { kind: 'set', key, value: '0' }, output: {}, call: -2, ret: -1 }));
  const start = performance.now();
  const now = () => performance.now() - start;
  let stopped = false;
  const counts = { ok: 0, failed: 0, unknown: 0 };
  const runClient = async (node: number, id: number): Promise<void> => {
    const r = c.client(node, { maxRetriesPerRequest: 0, retryStrategy: () => 100, commandTimeout: 8000 });
    let n = 0;
    try {
      while (!stopped) {
        const key = keys[Math.floor(Math.random() * keys.length)]!;
        const roll = Math.random();
        const input: KvInput = roll < 0.6 ? { kind: 'get', key } : roll < 0.8 ? { kind: 'set', key, value: String(id * 1_000_000 + ++n) } : { kind: 'incr', key };
        const call = now();
        try {
          let output: KvOutput;
          // A quarter of the reads are single-key MGETs: the shard worker serves those from memory, outside the cache
          // protocol (cache-home.ts readGate), so the history mixes both kinds of read.
          if (input.kind === 'get') output = { value: roll < 0.15 ? ((await r.mget(key))[0] ?? null) : await r.get(key) };
          else if (input.kind === 'set') {
            await r.set(key, input.value);
            output = {};
          } else output = { value: String(await r.incr(key)) };
          history.push({ clientId: id, input, output, call, ret: now() });
          counts.ok++;
        } catch (err) {
          if (input.kind === 'get') counts.failed++;
          else {
            history.push({ clientId: id, input, output: {}, call, ret: Infinity });
            counts.unknown++;
          }
          void errorCode(err);
          await sleep(50);
        }
      }
    } finally {
      r.disconnect();
    }
  };
  const running = nodes.map((node, i) => runClient(node, i + 1));
  return {
    async stop() {
      stopped = true;
      await Promise.all(running);
      return { history, counts };
    },
  };
}

/** One ioredis client per node of `c`, disconnected at teardown: `cl(id)` is node id's, `reconnect(id)` replaces it. */
export function nodeClients(t: { teardown(fn: () => unknown): void }, c: ProcCluster): { cl(id: number): Redis; reconnect(id: number): void } {
  const r = new Map<number, Redis>(c.ids.map((id) => [id, c.client(id)]));
  t.teardown(() => {
    for (const x of r.values()) x.disconnect();
  });
  return {
    cl: (id) => r.get(id)!,
    reconnect(id) {
      r.get(id)?.disconnect();
      r.set(id, c.client(id));
    },
  };
}
