/**
 * An in-process 3-node RaftHost cluster on loopback for the RaftHost tests (raft-host-stall.test.ts,
 * raft-host-snapshot-steps.test.ts): real WALs, snapshot stores and peer transports, with every host's outbound
 * messages observed and optionally dropped. Teardown stops everything and removes the temp dir, also on failure.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { RaftHost, type RaftTransport, type StateMachine } from '../../src/node/raft-host.js';
import type { Entry, Message, NodeId } from '../../src/raft/types.js';
import { SnapshotStore } from '../../src/storage/snapshot-store.js';
import { Wal } from '../../src/storage/wal.js';
import { PeerTransport } from '../../src/transport/peer-transport.js';
import { PEER_LIMITS_DEFAULT, RAFT_LIMITS_DEFAULT, raftFlowLimits, WAL_LIMITS_DEFAULT } from '../../src/config/limits.js';

/** Bound of every wait for a condition. */
export const WAIT_MS = 20_000;
export const NODES: NodeId[] = [1, 2, 3];

/** The default state machine: counts the entries it applied. */
export class Counter implements StateMachine {
  count = 0;
  apply(_e: Entry): unknown {
    return ++this.count;
  }
  snapshot(): Uint8Array {
    return Buffer.from(String(this.count));
  }
  restore(data: Uint8Array): void {
    this.count = Number(Buffer.from(data).toString());
  }
}

/** One message a host handed to its transport, with its WAL's unsynced byte count at that moment. */
export interface Sent {
  from: NodeId;
  m: Message;
  unsyncedBytes: number;
}

export interface Node<M extends StateMachine = Counter> {
  id: NodeId;
  host: RaftHost;
  transport: PeerTransport;
  wal: Wal;
  machines: Map<number, M>;
}

export interface Cluster<M extends StateMachine = Counter> {
  nodes: Node<M>[];
  sent: Sent[];
  /** Hosts whose outbound messages are dropped (a one-way partition). */
  blocked: Set<NodeId>;
  /** When set, a message a host sends is dropped unless this returns true. */
  pass: ((from: NodeId, m: Message) => boolean) | null;
  /** Called (synchronously) after each send of each host, once its transport has queued the messages. */
  afterSend: ((from: NodeId, msgs: Message[]) => void) | null;
  node(id: NodeId): Node<M>;
}

export interface ClusterOptions<M extends StateMachine = Counter> {
  groups: number[];
  tickMs: number;
  heartbeatTicks: number;
  electionTicksMin: number;
  fsync: 'batch' | 'never';
  /** Election-timeout seed of every host (the host mixes in the group id). */
  seed: number;
  /** Each node's state machine of each group (default: a Counter). */
  machine?: (node: NodeId, group: number) => M;
  /** RaftHost snapshotEntries (default 0: no snapshots). */
  snapshotEntries?: number;
}

export function busyWait(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // the stall: nothing else runs on this thread
  }
}

export async function waitFor(cond: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** What startCluster needs of a tap test: somewhere to register the cleanup. */
export interface HasTeardown {
  teardown(fn: () => unknown): void;
}

/**
 * Three real RaftHosts in this process, each with its own WAL and snapshot directory and a real PeerTransport on
 * loopback; every host's transport is wrapped by an observer that records (and may drop) what the host sends.
 */
export async function startCluster<M extends StateMachine = Counter>(t: HasTeardown, o: ClusterOptions<M>): Promise<Cluster<M>> {
  const dir = mkdtempSync(join(tmpdir(), 'raft-host-stall-'));
  const logger = pino({ level: 'silent' });
  const nodes: Node<M>[] = [];
  const cluster: Cluster<M> = {
    nodes,
    sent: [],
    blocked: new Set(),
    pass: null,
    afterSend: null,
    node: (id) => nodes.find((n) => n.id === id)!,
  };
  t.teardown(async () => {
    for (const n of nodes) await n.host.stop().catch(() => undefined);
    for (const n of nodes) await n.transport.stop().catch(() => undefined);
    for (const n of nodes) await n.wal.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });
  const transports = new Map<NodeId, PeerTransport>();
  const hosts = new Map<NodeId, RaftHost>();
  for (const id of NODES) {
    const transport = new PeerTransport({
      nodeId: id,
      workerIndex: 0,
      clusterId: 'raft-host-stall',
      topologyDigest: 'test',
      listen: { host: '127.0.0.1', port: 0 },
      peers: new Map(),
      limits: PEER_LIMITS_DEFAULT,
      logger,
      onRaftMessages: (msgs) => hosts.get(id)?.receive(msgs),
    });
    transport.onPeerDown((peer) => hosts.get(id)?.peerDown(peer));
    await transport.start();
    transports.set(id, transport);
  }
  for (const a of NODES) for (const b of NODES) if (a !== b) transports.get(a)!.setPeer(b, transports.get(b)!.address);
  await waitFor(() => NODES.every((a) => NODES.every((b) => a === b || transports.get(a)!.isUp(b))), 'all peer links up');
  for (const id of NODES) {
    const wal = await Wal.open(join(dir, `n${id}`, 'wal'), { limits: WAL_LIMITS_DEFAULT, fsync: o.fsync, logger });
    const snapshots = await SnapshotStore.open(join(dir, `n${id}`, 'snapshots'), { fsync: o.fsync, logger });
    const inner = transports.get(id)!;
    const observed: RaftTransport = {
      send(all) {
        if (cluster.blocked.has(id)) return;
        const pass = cluster.pass;
        const msgs = pass === null ? all : all.filter((m) => pass(id, m));
        if (msgs.length === 0) return;
        const unsyncedBytes = wal.stats.bytesAppended - wal.stats.bytesDurable;
        for (const m of msgs) cluster.sent.push({ from: id, m, unsyncedBytes });
        inner.send(msgs);
        cluster.afterSend?.(id, msgs);
      },
    };
    const make = o.machine ?? ((): M => new Counter() as unknown as M);
    const machines = new Map(o.groups.map((g): [number, M] => [g, make(id, g)]));
    const host = await RaftHost.start({
      nodeId: id,
      groups: o.groups.map((g) => ({ id: g, conf: { voters: [...NODES], learners: [] }, stateMachine: machines.get(g)! })),
      raft: {
        heartbeatTicks: o.heartbeatTicks,
        electionTicksMin: o.electionTicksMin,
        preVote: true,
        checkQuorum: true,
        readMode: 'safe',
        ...raftFlowLimits(RAFT_LIMITS_DEFAULT),
      },
      tickMs: o.tickMs,
      wal,
      snapshots,
      transport: observed,
      logger,
      snapshotEntries: o.snapshotEntries ?? 0,
      seed: o.seed + id * 1_000_003,
    });
    hosts.set(id, host);
    nodes.push({ id, host, transport: inner, wal, machines });
  }
  return cluster;
}

/** Makes node 1 lead every group (it campaigns before any election timer can fire) and waits until it does. */
export async function electNode1<M extends StateMachine>(c: Cluster<M>, groups: number[]): Promise<void> {
  for (const g of groups) c.node(1).host.group(g)!.campaign();
  await waitFor(
    () => groups.every((g) => c.nodes.every((n) => n.host.group(g)!.leader === 1) && c.node(1).host.group(g)!.commit > 0),
    'node 1 leads every group and committed its first entry',
  );
}

export const ROLE_NAMES = ['follower', 'precandidate', 'candidate', 'leader'];

/** Role, leader and term of every group on every node. */
export function view<M extends StateMachine>(c: Cluster<M>, groups: number[]): string {
  return c.nodes.map((n) => groups.map((g) => {
    const core = n.host.group(g)!;
    return `n${n.id}g${g}:${ROLE_NAMES[core.role] ?? core.role}/${core.leader}/${core.term}`;
  }).join(' ')).join(' ');
}

