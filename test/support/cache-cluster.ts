// Helpers of the real-cluster cache tests (test/cache/cache-cluster.test.ts, cache-writeback.test.ts): INFO readers,
// shard leadership lookups and a retry loop for the first writes after a cluster (or a new leader) comes up.
import type { ProcCluster } from './cluster-procs.js';
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

