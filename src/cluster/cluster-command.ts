/**
 * `CLUSTER INFO|MYID|KEYSLOT|SLOTS|SHARDS|NODES|COUNTKEYSINSLOT|HELP`, answering with the real topology so that
 * cluster-aware clients (ioredis `Cluster`, `redis-cli -c`, redis-benchmark --cluster) send each key to the node
 * that leads its shard. No node ever answers MOVED (any node serves any key by forwarding), so a client with a
 * stale map only pays one forwarding hop.
 *
 * Redis Cluster has one master per slot range and nodes that are either masters or replicas; a Lockstep node
 * leads some shards and follows others. The mapping: a shard's slot range is "served" by its current leader (as
 * seen from this node: its own Raft view for shards it holds, a forwarding hint otherwise) with its other
 * replicas listed as replicas; in CLUSTER NODES every node is a `master` owning the ranges it leads.
 */
import { createHash } from 'node:crypto';
import type { ClusterMember } from '../config/options.js';
import type { CommandSpec, ReplySink } from '../server/command.js';
import { replyHelp } from '../server/commands/help.js';
import type { ShardPlacement } from './ring.js';
import { keySlot, SLOTS } from './slots.js';
import type { ShardStatus } from './worker-protocol.js';

/** What the CLUSTER command and INFO need to know; refreshed by the node from its workers. */
export interface ClusterView {
  selfId: number;
  clusterId: string;
  members: readonly ClusterMember[];
  placement: readonly ShardPlacement[];
  /** Per shard (index = shard), this node's latest status of it, or undefined before the first refresh. */
  status(): readonly (ShardStatus | undefined)[];
  /** Peers this node has an up link to (from any worker). */
  peersUp(): ReadonlySet<number>;
}

/** A Redis-style 40-hex node name, stable for (cluster id, node id). */
export function nodeName(clusterId: string, id: number): string {
  return createHash('sha1').update(`lockstep:${clusterId}:${id}`).digest('hex');
}

/** The leader this node believes a shard has (0 when it knows none). */
export function leaderOf(view: ClusterView, shard: number): number {
  const st = view.status()[shard];
  if (st === undefined) return 0;
  if (st.role === 'leader') return view.selfId;
  return st.leader;
}

/** True when every shard has a known leader (CLUSTER INFO's cluster_state:ok). */
export function clusterOk(view: ClusterView): boolean {
  for (const p of view.placement) if (leaderOf(view, p.shard) === 0) return false;
  return true;
}

function memberOf(view: ClusterView, id: number): ClusterMember | undefined {
  return view.members.find((m) => m.id === id);
}

/** The node a client should use for a shard: its leader, else the placement's preferred leader. */
function servingNode(view: ClusterView, p: ShardPlacement): number {
  const l = leaderOf(view, p.shard);
  return l !== 0 ? l : p.preferredLeader;
}

function nodeUp(view: ClusterView, id: number): boolean {
  return id === view.selfId || view.peersUp().has(id);
}

export function clusterInfoLines(view: ClusterView): string[] {
  const ok = clusterOk(view);
  let slotsOk = 0;
  let slotsFail = 0;
  let maxTerm = 0;
  let led = 0;
  const leaders = new Set<number>();
  for (const p of view.placement) {
    const l = leaderOf(view, p.shard);
    const n = p.slotEnd - p.slotStart;
    if (l !== 0) {
      slotsOk += n;
      leaders.add(l);
    } else slotsFail += n;
    const st = view.status()[p.shard];
    if (st !== undefined) maxTerm = Math.max(maxTerm, st.term);
    if (l === view.selfId) led++;
  }
  return [
    `cluster_state:${ok ? 'ok' : 'fail'}`,
    `cluster_slots_assigned:${SLOTS}`,
    `cluster_slots_ok:${slotsOk}`,
    `cluster_slots_pfail:0`,
    `cluster_slots_fail:${slotsFail}`,
    `cluster_known_nodes:${view.members.length}`,
    `cluster_size:${leaders.size}`,
    `cluster_current_epoch:${maxTerm}`,
    `cluster_my_epoch:${maxTerm}`,
    `cluster_stats_messages_sent:0`,
    `cluster_stats_messages_received:0`,
    `lockstep_shards:${view.placement.length}`,
    `lockstep_shards_led_here:${led}`,
    `lockstep_nodes_reachable:${view.members.filter((m) => nodeUp(view, m.id)).length}`,
  ];
}

const HELP = [
  'CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:',
  'INFO',
  '    Return information about the cluster.',
  'MYID',
  '    Return the node id.',
  'KEYSLOT <key>',
  '    Return the hash slot for <key>.',
  'COUNTKEYSINSLOT <slot>',
  '    Not kept per slot by Lockstep (shards hold contiguous slot ranges): answers an error.',
  'SLOTS',
  '    Return information about slots range mappings (each range is served by its shard leader).',
  'SHARDS',
  '    Return information about the shards (slot ranges, leader and replicas).',
  'NODES',
  '    Return cluster configuration seen by node (one master line per node, owning the ranges it leads).',
  'HELP',
  '    Print this help.',
];

function endpoint(r: ReplySink, m: ClusterMember, view: ClusterView): void {
  r.arrayHeader(3);
  r.bulk(m.host);
  r.integer(m.port);
  r.bulk(nodeName(view.clusterId, m.id));
}

/** Consecutive shards served by the same node with the same replicas, merged into one range (fewer, larger ranges). */
function servedRanges(view: ClusterView): { start: number; end: number; serving: number; replicas: number[] }[] {
  const out: { start: number; end: number; serving: number; replicas: number[] }[] = [];
  for (const p of view.placement) {
    if (p.slotEnd <= p.slotStart) continue;
    const serving = servingNode(view, p);
    const replicas = p.replicas.filter((x) => x !== serving);
    const last = out[out.length - 1];
    if (last !== undefined && last.serving === serving && last.end === p.slotStart && last.replicas.join() === replicas.join()) {
      last.end = p.slotEnd;
      continue;
    }
    out.push({ start: p.slotStart, end: p.slotEnd, serving, replicas });
  }
  return out;
}

export function clusterNodesText(view: ClusterView): string {
  const ranges = servedRanges(view);
  let maxTerm = 0;
  for (const st of view.status()) if (st !== undefined) maxTerm = Math.max(maxTerm, st.term);
  const lines: string[] = [];
  for (const m of view.members) {
    const flags = m.id === view.selfId ? 'myself,master' : nodeUp(view, m.id) ? 'master' : 'master,fail?';
    const slots = ranges.filter((r) => r.serving === m.id).map((r) => (r.end - 1 === r.start ? `${r.start}` : `${r.start}-${r.end - 1}`));
    const link = nodeUp(view, m.id) ? 'connected' : 'disconnected';
    lines.push(`${nodeName(view.clusterId, m.id)} ${m.host}:${m.port}@${m.peerPort} ${flags} - 0 0 ${maxTerm} ${link}${slots.length ? ' ' + slots.join(' ') : ''}`);
  }
  return lines.join('\n') + '\n';
}

export function clusterCommand(view: ClusterView): CommandSpec {
  return {
    name: 'cluster',
    arity: -2,
    flags: ['stale'],
    firstKey: 0,
    lastKey: 0,
    keyStep: 0,
    group: 'cluster',
    summary: 'Cluster topology: INFO, MYID, KEYSLOT, SLOTS, SHARDS, NODES',
    handler(ctx, args) {
      const r = ctx.reply;
      const sub = args[1]!.toString('latin1').toLowerCase();
      const want = (n: number): boolean => {
        if (args.length === n) return true;
        r.error(`ERR unknown subcommand or wrong number of arguments for '${sub}'. Try CLUSTER HELP.`);
        return false;
      };
      switch (sub) {
        case 'help':
          if (want(2)) replyHelp(r, HELP);
          return;
        case 'info':
          if (want(2)) r.verbatim(clusterInfoLines(view).join('\r\n') + '\r\n');
          return;
        case 'myid':
          if (want(2)) r.bulk(nodeName(view.clusterId, view.selfId));
          return;
        case 'keyslot':
          if (want(3)) r.integer(keySlot(args[2]!));
          return;
        case 'countkeysinslot':
          if (want(3)) r.error('ERR COUNTKEYSINSLOT is not supported: Lockstep keeps keys per shard, not per slot');
          return;
        case 'slots': {
          if (!want(2)) return;
          const ranges = servedRanges(view);
          r.arrayHeader(ranges.length);
          for (const g of ranges) {
            const nodes = [g.serving, ...g.replicas].map((id) => memberOf(view, id)).filter((m): m is ClusterMember => m !== undefined);
            r.arrayHeader(2 + nodes.length);
            r.integer(g.start);
            r.integer(g.end - 1);
            for (const m of nodes) endpoint(r, m, view);
          }
          return;
        }
        case 'shards': {
          if (!want(2)) return;
          r.arrayHeader(view.placement.length);
          for (const p of view.placement) {
            const serving = servingNode(view, p);
            const st = view.status()[p.shard];
            r.mapHeader(2);
            r.bulk('slots');
            r.arrayHeader(2);
            r.integer(p.slotStart);
            r.integer(p.slotEnd - 1);
            r.bulk('nodes');
            const ids = [serving, ...p.replicas.filter((x) => x !== serving)];
            r.arrayHeader(ids.length);
            for (const id of ids) {
              const m = memberOf(view, id)!;
              r.mapHeader(7);
              r.bulk('id');
              r.bulk(nodeName(view.clusterId, id));
              r.bulk('port');
              r.integer(m.port);
              r.bulk('ip');
              r.bulk(m.host);
              r.bulk('endpoint');
              r.bulk(m.host);
              r.bulk('role');
              r.bulk(id === serving ? 'master' : 'replica');
              r.bulk('replication-offset');
              r.integer(id === view.selfId && st !== undefined ? st.applied : 0);
              r.bulk('health');
              r.bulk(nodeUp(view, id) ? 'online' : 'failed');
            }
          }
          return;
        }
        case 'nodes':
          if (want(2)) r.verbatim(clusterNodesText(view));
          return;
        default:
          r.error(`ERR unknown subcommand '${args[1]!.toString('utf8', 0, 64)}'. Try CLUSTER HELP.`);
      }
    },
  };
}
