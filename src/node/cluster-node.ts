/**
 * One Lockstep cluster node: the edge thread's RESP server in front of the ShardRuntime (W shard workers running
 * the node's Raft groups). Every keyspace command runs on the replicated shard that owns its key; the node that
 * receives it forwards to the shard's leader when that is another node. `lockstep node` runs this; with no
 * `--peers` it is a one-node cluster of itself (still Raft, WAL and fsync).
 *
 * The edge keeps a view of every shard (role, leader, term, indexes, lag) refreshed from the workers every
 * VIEW_REFRESH_MS; CLUSTER SLOTS/NODES/SHARDS/INFO and INFO raft/cluster/replication read that view, so they stay
 * synchronous and cheap. The view can be one refresh old: a client that routes by it and hits a node that just
 * lost leadership is forwarded, never refused.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { ClusterCache } from '../cache/cluster-cache.js';
import type { NodeOptions } from '../config/options.js';
import { clusterCommand, clusterInfoLines, leaderOf, nodeName, type ClusterView } from '../cluster/cluster-command.js';
import { clusterKeyspaceCommands } from '../cluster/cluster-keyspace.js';
import { deadlockRound, lockCommands } from '../locks/lock-commands.js';
import { DeadlockDetector } from '../locks/deadlock-detector.js';
import { queueCommands } from '../queue/queue-commands.js';
import { ShardRuntime, type RuntimeNode } from '../cluster/shard-runtime.js';
import type { ShardStatus, WorkerStats } from '../cluster/worker-protocol.js';
import { Acl } from '../server/acl.js';
import { connectionCommands } from '../server/commands/connection-commands.js';
import { constParam, frontEndConfigParams, resetServerStats, serverCommands, type InfoProvider } from '../server/commands/server-commands.js';
import { RespServer } from '../server/resp-server.js';
import { RAFT_LIMITS_DEFAULT } from '../config/limits.js';

/** How often the edge refreshes its view of the shards from the workers, in milliseconds. */
export const VIEW_REFRESH_MS = 200;

export interface ClusterNode {
  server: RespServer;
  runtime: ShardRuntime;
  view: ClusterView;
  port: number;
  /** Resolves once every shard has a known leader (or rejects after timeoutMs). */
  waitForLeaders(timeoutMs: number): Promise<void>;
  close(): Promise<void>;
}

/** The margin added to cache leases (clock-rate drift) and taken off cached TTLs (clock skew): 10% of the lease, at least 20 ms. */
function cacheMarginMs(leaseMs: number): number {
  return Math.max(20, Math.ceil(leaseMs / 10));
}

/** INFO cache lines of the homes this node runs (the shards it leads), summed over its workers. */
function homeInfoLines(ws: (WorkerStats | null)[]): string[] {
  let homes = 0;
  let directory = 0;
  const sum: Record<string, number> = {};
  for (const w of ws) {
    if (w?.cache === undefined) continue;
    homes += w.cache.homes;
    directory += w.cache.directory;
    for (const [k, v] of Object.entries(w.cache.counters)) sum[k] = (sum[k] ?? 0) + v;
  }
  const snake = (k: string): string => k.replace(/[A-Z]/g, (m) => `_${m.toLowerCase()}`);
  return [`cache_homes:${homes}`, `cache_directory_entries:${directory}`, ...Object.entries(sum).map(([k, v]) => `cache_home_${snake(k)}:${v}`)];
}

/** What the node's owner hears about besides requests. */
export interface ClusterNodeHooks {
  /**
   * A shard worker died after start (see ShardRuntimeOptions.onWorkerLost): its shards cannot be served by this
   * process any more. `lockstep node` closes and exits non-zero so that a supervisor (`lockstep start --restart`,
   * Docker's restart policy, systemd) starts it again and its Raft groups recover from the WAL.
   */
  onFatal?: (why: string) => void;
}

export async function startClusterNode(options: NodeOptions, logger: Logger, hooks: ClusterNodeHooks = {}): Promise<ClusterNode> {
  const c = options.cluster;
  const acl = new Acl(options.requirepass);
  if (options.aclFile !== '') acl.loadFile(options.aclFile);
  const nodes = new Map<number, RuntimeNode>(c.members.map((m) => [m.id, { host: m.host, peerBasePort: m.peerPort }]));
  const ticks = Math.max(2, Math.round(c.electionTimeoutMs / RAFT_LIMITS_DEFAULT.tickMs));
  const runtime = await ShardRuntime.start({
    nodeId: c.id,
    nodes,
    workers: c.workers,
    shards: c.shards,
    rf: Math.min(c.replicas, c.members.length),
    dataDir: options.dataDir,
    fsync: c.fsync,
    clusterId: c.clusterId,
    ...(c.secret !== '' ? { secret: c.secret } : {}),
    raft: { electionTicksMin: ticks, heartbeatTicks: Math.max(1, Math.floor(ticks / 3)) },
    tuning: {
      leaderWaitMs: c.leaderWaitMs,
      requestTimeoutMs: c.requestTimeoutMs,
      snapshotEntries: c.snapshotEntries,
      snapshotLogPercent: c.snapshotLogPercent,
      keyspaceBytesMax: c.keyspaceBytesMax,
      cacheLeaseMs: c.cacheLeaseMs,
      cacheLeaseMarginMs: cacheMarginMs(c.cacheLeaseMs),
      cacheWritePolicy: c.cacheWritePolicy,
      cacheBacking: c.cacheBacking,
    },
    logLevel: options.logLevel,
    logger,
    onWorkerLost: (worker, why) => {
      logger.fatal({ worker }, `${why}: the shards on that worker cannot be served until this node restarts`);
      hooks.onFatal?.(why);
    },
  });

  let shardView: (ShardStatus | undefined)[] = new Array(c.shards).fill(undefined);
  let workerStats: (WorkerStats | null)[] = [];
  let peersUp = new Set<number>();
  const view: ClusterView = {
    selfId: c.id,
    clusterId: c.clusterId,
    members: c.members,
    placement: runtime.placement,
    status: () => shardView,
    peersUp: () => peersUp,
  };
  let refreshing = false;
  const refresh = async (): Promise<void> => {
    if (refreshing) return;
    refreshing = true;
    try {
      const [st, ws] = await Promise.all([runtime.status(), runtime.workerStats()]);
      const next: (ShardStatus | undefined)[] = new Array(c.shards).fill(undefined);
      for (const s of st) next[s.shard] = s;
      shardView = next;
      workerStats = ws;
      const up = new Set<number>();
      for (const w of ws) for (const p of w?.peersUp ?? []) up.add(p);
      peersUp = up;
    } finally {
      refreshing = false;
    }
  };
  await refresh();
  const refresher = setInterval(() => void refresh().catch((err: unknown) => logger.error({ err }, 'shard view refresh failed')), VIEW_REFRESH_MS);
  refresher.unref();

  // The node's coherent cache keeps its lines in the node-local store (docs/cache-coherence.md).
  const cache = new ClusterCache({
    nodeId: c.id,
    runtime,
    limits: options.cache,
    leaseMs: c.cacheLeaseMs,
    ttlMarginMs: cacheMarginMs(c.cacheLeaseMs),
    writePolicy: c.cacheWritePolicy,
    flushMs: c.cacheFlushMs,
    refillMax: c.cacheRefillMax,
    keepLineReadWithinMs: c.cacheKeepReadMs,
    writeAllocate: c.cacheWriteAllocate,
  });
  const server = new RespServer(
    { host: options.host, port: options.port, resp: options.resp, server: options.server, protectedMode: options.protectedMode },
    cache.store,
    acl,
    clusterKeyspaceCommands({ runtime, shards: c.shards, cache }),
    logger.child({ module: 'resp' }),
  );

  const info: InfoProvider[] = [
    { section: 'cluster', lines: () => ['cluster_enabled:1', `cluster_node_id:${c.id}`, `cluster_name:${nodeName(c.clusterId, c.id)}`, ...clusterInfoLines(view), `lockstep_workers:${c.workers}`, `lockstep_replicas:${Math.min(c.replicas, c.members.length)}`, `lockstep_topology:${runtime.topologyDigest}`] },
    {
      section: 'raft',
      lines: () => {
        const out: string[] = [];
        let leading = 0;
        for (const s of shardView) if (s?.role === 'leader') leading++;
        out.push(`raft_shards:${c.shards}`, `raft_leading:${leading}`, `raft_fsync:${c.fsync}`);
        for (const s of shardView) {
          if (s === undefined) continue;
          out.push(`shard${s.shard}:role=${s.role},leader=${s.role === 'leader' ? c.id : s.leader},term=${s.term},commit=${s.commit},applied=${s.applied},last_index=${s.lastIndex},lag=${s.lag},keys=${s.keys},worker=${s.worker}`);
        }
        const edge = runtime.edgeStats;
        workerStats.forEach((w, i) => {
          const sent = edge.requests[i] ?? 0;
          const posts = edge.batches[i] ?? 0;
          const perBatch = posts > 0 ? (sent / posts).toFixed(2) : '0';
          if (w === null) out.push(`worker${i}:state=down,edge_requests=${sent},edge_batches=${posts}`);
          else out.push(`worker${i}:state=up,edge_requests=${sent},edge_batches=${posts},requests_per_batch=${perBatch},requests=${w.requests},batches=${w.batches},writes=${w.writes},reads=${w.reads},forwarded=${w.forwarded},forwarded_in=${w.forwardedIn},errors=${w.errors},fsyncs=${w.fsyncs},raft_rounds=${w.raftRounds},appends_before_sync=${w.appendsBeforeSync},applied_before_sync=${w.appliedBeforeSync},snapshots=${w.snapshotsTaken},snapshots_unpin=${w.snapshotsToUnpin},snapshot_encode_max_ms=${w.snapshotEncodeMaxMs},tick_gap_max_ms=${w.tickGapMaxMs},stalls=${w.stalls},leaderships=${w.leaderships},step_downs=${w.stepDowns},wal_segments=${w.walSegments},wal_segments_deleted=${w.walSegmentsDeleted},wal_write_max_ms=${w.walWriteMaxMs},wal_slow_writes=${w.walSlowWrites},empty_pops=${w.emptyPopsAnswered},empty_pop_barriers=${w.emptyPopBarriers},queue_waits=${w.queueWaits},queue_waits_ready=${w.queueWaitsReady},queue_waits_grouped=${w.queueWaitsGrouped},queue_unwaits=${w.queueUnwaits},queue_waits_parked=${w.queueWaitsParked},queue_waits_grouped_parked=${w.queueWaitsGroupedParked}`);
        });
        return out;
      },
    },
    {
      section: 'replication',
      lines: () => {
        // Every node accepts writes (it forwards them), so to tools it is a master; the Raft roles are per shard.
        const led = runtime.placement.filter((p) => leaderOf(view, p.shard) === c.id).length;
        const out = ['role:master', `connected_slaves:${peersUp.size}`, `lockstep_shards_led:${led}`, `lockstep_shards_followed:${shardView.filter((s) => s !== undefined && s.role !== 'leader' && s.role !== 'remote').length}`];
        let i = 0;
        for (const m of c.members) {
          if (m.id === c.id) continue;
          out.push(`slave${i++}:ip=${m.host},port=${m.port},state=${peersUp.has(m.id) ? 'online' : 'offline'},node=${m.id}`);
        }
        return out;
      },
    },
    { section: 'cache', lines: () => [...cache.infoLines(), ...homeInfoLines(workerStats)] },
    {
      section: 'keyspace',
      lines: () => {
        let keys = 0;
        for (const s of shardView) if (s?.role === 'leader') keys += s.keys;
        return keys > 0 ? [`db0:keys=${keys},expires=0,avg_ttl=0,led_shards_only=1`] : [];
      },
    },
  ];

  server.addCommands(connectionCommands(server));
  server.addCommands([clusterCommand(view)]);
  server.addCommands(lockCommands({ runtime, shards: c.shards, nodeId: c.id }));
  server.addCommands(queueCommands({ runtime, shards: c.shards, nodeId: c.id, leaderOf: (s) => leaderOf(view, s) }));
  server.addCommands(
    serverCommands({
      server,
      runId: randomBytes(20).toString('hex'),
      extraInfo: info,
      resetStats: () => resetServerStats(server),
      config: [
        ...frontEndConfigParams(options),
        constParam('proto-max-bulk-len', String(options.resp.bulkBytesMax)),
        constParam('maxmemory', String(c.keyspaceBytesMax)),
        constParam('maxmemory-policy', 'noeviction'),
        constParam('cluster-enabled', 'yes'),
        constParam('appendonly', 'yes'),
        constParam('appendfsync', c.fsync === 'never' ? 'no' : 'always'),
        constParam('save', ''),
      ],
    }),
  );

  let port: number;
  try {
    port = await server.listen();
  } catch (err) {
    clearInterval(refresher);
    await runtime.stop();
    throw err;
  }
  // Cluster-wide deadlock detection runs on one node: the leader of shard 0 (Raft elects it; it moves on failure).
  // A cycle needs two complete rounds to be confirmed, so rounds run every third of --deadlock-detect.
  const detector = new DeadlockDetector();
  let detecting = false;
  const detectTimer = setInterval(() => {
    if (detecting) return;
    if (leaderOf(view, 0) !== c.id) {
      detector.reset();
      return;
    }
    detecting = true;
    deadlockRound(runtime, c.shards, detector)
      .then((n) => {
        if (n > 0) logger.info({ victims: n }, 'lock deadlocks broken');
      })
      .catch((err: unknown) => logger.error({ err }, 'deadlock detection round failed'))
      .finally(() => {
        detecting = false;
      });
  }, Math.max(10, Math.floor(c.deadlockDetectMs / 3)));
  detectTimer.unref();

  logger.info({ id: c.id, host: options.host, port, workers: c.workers, shards: c.shards, members: c.members.length }, 'lockstep node ready');

  return {
    server,
    runtime,
    view,
    port,
    async waitForLeaders(timeoutMs: number): Promise<void> {
      const until = Date.now() + timeoutMs;
      for (;;) {
        await refresh();
        if (runtime.placement.every((p) => leaderOf(view, p.shard) !== 0)) return;
        if (Date.now() >= until) throw new Error(`not every shard has a leader after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async close() {
      clearInterval(refresher);
      cache.stop();
      clearInterval(detectTimer);
      await server.close();
      await runtime.stop();
    },
  };
}
