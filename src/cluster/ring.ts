/**
 * Placement: slot -> shard -> replica nodes.
 *
 * - S shards (default 16) each own a contiguous range of the 16384 slots (shard i owns
 *   [floor(i*16384/S), floor((i+1)*16384/S))).
 * - Nodes sit on a consistent-hash ring with V virtual nodes each (default 128). A shard's replicas are the first
 *   RF distinct nodes clockwise from the shard's own hash point. Adding or removing one node changes the replica
 *   set only of shards for which that node is (or becomes) one of the first RF distinct nodes: about RF/N of them,
 *   and each changed set differs by exactly one member.
 * - Preferred leaders: each shard's preferred leader is one of its replicas, chosen so every node leads about S/N
 *   shards (greedy by current load, ties broken by ring order, so every node computes the same answer).
 *
 * Pure and deterministic: the same membership gives the same placement on every node; `digest()` summarizes it so
 * peers can check at handshake that they agree.
 */
import { createHash } from 'node:crypto';
import { SLOTS } from './slots.js';
import type { NodeId } from '../raft/types.js';

/** 32-bit FNV-1a followed by a murmur3 finalizer: fast, well spread, stable across versions. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export class HashRing {
  private readonly points: { hash: number; node: NodeId }[] = [];
  readonly nodes: readonly NodeId[];

  constructor(nodes: readonly NodeId[], readonly vnodes = 128) {
    if (new Set(nodes).size !== nodes.length) throw new Error('duplicate node ids');
    this.nodes = [...nodes].sort((a, b) => a - b);
    for (const n of this.nodes) for (let v = 0; v < vnodes; v++) this.points.push({ hash: hash32(`node-${n}#${v}`), node: n });
    this.points.sort((a, b) => a.hash - b.hash || a.node - b.node);
  }

  /** The first `count` distinct nodes clockwise from `point`. */
  walk(point: number, count: number): NodeId[] {
    const out: NodeId[] = [];
    const pts = this.points;
    if (pts.length === 0) return out;
    let lo = 0;
    let hi = pts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pts[mid]!.hash < point) lo = mid + 1;
      else hi = mid;
    }
    const want = Math.min(count, this.nodes.length);
    for (let i = 0; out.length < want && i < pts.length; i++) {
      const n = pts[(lo + i) % pts.length]!.node;
      if (!out.includes(n)) out.push(n);
    }
    return out;
  }
}

export interface ShardPlacement {
  shard: number;
  slotStart: number;
  /** Exclusive. */
  slotEnd: number;
  replicas: NodeId[];
  preferredLeader: NodeId;
}

export function shardOfSlot(slot: number, shards: number): number {
  return Math.floor((slot * shards) / SLOTS);
}

export function slotRange(shard: number, shards: number): [number, number] {
  // The inverse of shardOfSlot: the smallest slot s with floor(s*S/SLOTS) >= shard.
  const start = Math.ceil((shard * SLOTS) / shards);
  const end = Math.ceil(((shard + 1) * SLOTS) / shards);
  return [start, end];
}

export function placeShards(nodes: readonly NodeId[], shards: number, rf: number, vnodes = 128): ShardPlacement[] {
  if (shards < 1 || shards > SLOTS) throw new RangeError(`shards must be in [1, ${SLOTS}], got ${shards}`);
  if (rf < 1) throw new RangeError(`replication factor must be >= 1, got ${rf}`);
  const ring = new HashRing(nodes, vnodes);
  const out: ShardPlacement[] = [];
  const leads = new Map<NodeId, number>(ring.nodes.map((n) => [n, 0]));
  for (let s = 0; s < shards; s++) {
    const [slotStart, slotEnd] = slotRange(s, shards);
    const replicas = ring.walk(hash32(`shard-${s}`), rf);
    let best = replicas[0] ?? 0;
    for (const r of replicas) if (leads.get(r)! < leads.get(best)!) best = r;
    if (best !== 0) leads.set(best, leads.get(best)! + 1);
    out.push({ shard: s, slotStart, slotEnd, replicas, preferredLeader: best });
  }
  // Greedy order can leave a node two shards off; move leadership from a node to a replica of the same shard that
  // leads at least two fewer. Every move lowers the sum of squared loads, so this ends.
  for (let moved = true; moved; ) {
    moved = false;
    for (const p of out) {
      for (const r of p.replicas) {
        if (leads.get(p.preferredLeader)! > leads.get(r)! + 1) {
          leads.set(p.preferredLeader, leads.get(p.preferredLeader)! - 1);
          leads.set(r, leads.get(r)! + 1);
          p.preferredLeader = r;
          moved = true;
        }
      }
    }
  }
  return out;
}

/** A short digest of a placement, compared by peers at handshake. */
export function placementDigest(p: readonly ShardPlacement[], extra = ''): string {
  const h = createHash('sha256');
  h.update(extra);
  for (const s of p) h.update(`${s.shard}:${s.slotStart}-${s.slotEnd}:${s.replicas.join(',')};`);
  return h.digest('hex').slice(0, 16);
}
