import t from 'tap';
import { HashRing, placeShards, placementDigest, shardOfSlot, slotRange } from '../../src/cluster/ring.js';
import { SLOTS } from '../../src/cluster/slots.js';

t.test('shards own contiguous slot ranges that cover every slot exactly once', async (t) => {
  for (const S of [1, 3, 16, 100]) {
    let next = 0;
    for (let s = 0; s < S; s++) {
      const [a, b] = slotRange(s, S);
      t.equal(a, next, `shard ${s}/${S} starts where the previous ended`);
      for (const slot of [a, b - 1]) t.equal(shardOfSlot(slot, S), s);
      next = b;
    }
    t.equal(next, SLOTS);
  }
});

t.test('virtual nodes spread ring ownership evenly across nodes', async (t) => {
  const nodes = [1, 2, 3, 4, 5];
  const ring = new HashRing(nodes, 128);
  const owned = new Map<number, number>(nodes.map((n) => [n, 0]));
  const samples = 20000;
  for (let i = 0; i < samples; i++) {
    const n = ring.walk(Math.floor((i / samples) * 2 ** 32), 1)[0]!;
    owned.set(n, owned.get(n)! + 1);
  }
  for (const [n, c] of owned) {
    const share = c / samples;
    t.ok(Math.abs(share - 0.2) < 0.06, `node ${n} owns ${(share * 100).toFixed(1)}% of the ring (ideal 20% +- 6)`);
  }
});

t.test('each shard has RF distinct replicas and leadership is spread within one shard of ideal', async (t) => {
  for (const [nodes, shards, rf] of [[[1, 2, 3], 16, 3], [[1, 2, 3, 4, 5], 64, 3], [[1, 2, 3, 4, 5, 6, 7], 128, 3]] as const) {
    const p = placeShards(nodes, shards, rf);
    const leads = new Map<number, number>();
    const replicaCount = new Map<number, number>();
    for (const s of p) {
      t.equal(new Set(s.replicas).size, Math.min(rf, nodes.length));
      t.ok(s.replicas.includes(s.preferredLeader));
      leads.set(s.preferredLeader, (leads.get(s.preferredLeader) ?? 0) + 1);
      for (const r of s.replicas) replicaCount.set(r, (replicaCount.get(r) ?? 0) + 1);
    }
    const ideal = shards / nodes.length;
    for (const n of nodes) {
      const l = leads.get(n) ?? 0;
      t.ok(Math.abs(l - ideal) <= 1.01, `${nodes.length} nodes, ${shards} shards: node ${n} leads ${l} (ideal ${ideal.toFixed(1)})`);
      const r = replicaCount.get(n) ?? 0;
      const idealR = (shards * rf) / nodes.length;
      t.ok(Math.abs(r - idealR) / idealR < 0.35, `node ${n} holds ${r} replicas (ideal ${idealR.toFixed(1)})`);
    }
  }
});

t.test('adding or removing a node moves only shards whose replica set must change', async (t) => {
  const shards = 256;
  const before = placeShards([1, 2, 3, 4, 5], shards, 3);
  const added = placeShards([1, 2, 3, 4, 5, 6], shards, 3);
  let changed = 0;
  for (let s = 0; s < shards; s++) {
    const a = new Set(before[s]!.replicas);
    const b = new Set(added[s]!.replicas);
    const gone = [...a].filter((x) => !b.has(x));
    const come = [...b].filter((x) => !a.has(x));
    if (gone.length + come.length === 0) continue;
    changed++;
    t.same(come, [6], `shard ${s}: only the new node joins`);
    t.equal(gone.length, 1, `shard ${s}: exactly one replica leaves`);
  }
  const frac = changed / shards;
  t.ok(frac > 0.3 && frac < 0.7, `adding a 6th node changed ${(frac * 100).toFixed(0)}% of shards (about RF/N = 50%)`);

  const removed = placeShards([1, 2, 4, 5], shards, 3);
  for (let s = 0; s < shards; s++) {
    const a = before[s]!.replicas;
    const b = removed[s]!.replicas;
    if (!a.includes(3)) t.same([...b].sort(), [...a].sort(), `shard ${s} did not hold node 3 and is unchanged`);
    else t.same(b.filter((x) => a.includes(x)).sort(), a.filter((x) => x !== 3).sort(), `shard ${s} keeps its other replicas`);
  }
});

t.test('the placement digest is equal for equal memberships and differs otherwise', async (t) => {
  t.equal(placementDigest(placeShards([3, 1, 2], 16, 3)), placementDigest(placeShards([1, 2, 3], 16, 3)));
  t.not(placementDigest(placeShards([1, 2, 3], 16, 3)), placementDigest(placeShards([1, 2, 3], 32, 3)));
  t.not(placementDigest(placeShards([1, 2, 3], 16, 3)), placementDigest(placeShards([1, 2, 4], 16, 3)));
});
