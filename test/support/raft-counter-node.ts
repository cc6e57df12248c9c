/**
 * A real Raft node process for end-to-end tests and benchmarks: one Raft group replicating a counter, over the
 * TCP peer transport, with the write-ahead log and snapshots on disk. Clients talk RESP (the project's own
 * server), so ioredis and redis-cli work against it:
 *
 *   INCR <id>              propose "increment once for request <id>"; replies the counter after it applied.
 *                          A repeated id is applied once (dedup), so clients can retry safely.
 *   GET                    linearizable read (ReadIndex) of the counter
 *   IDS                    linearizable read of every applied request id (for exactly-once checks)
 *   ROLE                   [role, leader id, term, commit, applied]
 *   LOAD <proposers> <ms> <bytes>
 *                          in-process load: N concurrent proposers propose entries of <bytes> for <ms>;
 *                          replies a JSON object with committed entries/s, latency p50/p99 (ms) and fsyncs/s
 *   Errors: -NOTLEADER <leader-id>, -TRYAGAIN <why>.
 *
 *   node dist/test/support/raft-counter-node.js --id 1 --nodes 3 --base-port 17000 --data-dir /tmp/x [--fsync batch]
 *
 * Node i serves RESP on base-port + i and its peer link on base-port + 100 + i.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { CacheStore } from '../../src/cache/store.js';
import { CACHE_LIMITS_DEFAULT, PEER_LIMITS_DEFAULT, RAFT_LIMITS_DEFAULT, raftFlowLimits, RESP_LIMITS_DEFAULT, SERVER_LIMITS_DEFAULT, WAL_LIMITS_DEFAULT } from '../../src/config/limits.js';
import { HostError, RaftHost, type StateMachine } from '../../src/node/raft-host.js';
import type { Entry, NodeId } from '../../src/raft/types.js';
import { Acl } from '../../src/server/acl.js';
import type { CommandContext, CommandSpec } from '../../src/server/command.js';
import { connectionCommands } from '../../src/server/commands/connection-commands.js';
import { RespServer } from '../../src/server/resp-server.js';
import { SnapshotStore } from '../../src/storage/snapshot-store.js';
import { Wal } from '../../src/storage/wal.js';
import { PeerTransport } from '../../src/transport/peer-transport.js';
import { createLogger } from '../../src/util/logger.js';

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? process.argv[i + 1] : fallback;
  if (v === undefined) throw new Error(`missing --${name}`);
  return v;
}

/** Counter with request-id dedup. Load-test entries (first byte 'L') only count. */
class CounterMachine implements StateMachine {
  ids = new Set<string>();
  count = 0;
  loadEntries = 0;
  apply(e: Entry): unknown {
    if (e.data[0] === 0x4c /* L */) {
      this.loadEntries++;
      return this.loadEntries;
    }
    const id = Buffer.from(e.data).toString('utf8');
    if (!this.ids.has(id)) {
      this.ids.add(id);
      this.count++;
    }
    return this.count;
  }
  snapshot(): Uint8Array {
    return Buffer.from(JSON.stringify({ ids: [...this.ids], count: this.count, load: this.loadEntries }));
  }
  restore(data: Uint8Array): void {
    const s = JSON.parse(Buffer.from(data).toString('utf8')) as { ids: string[]; count: number; load: number };
    this.ids = new Set(s.ids);
    this.count = s.count;
    this.loadEntries = s.load;
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function main(): Promise<void> {
  const id = Number(arg('id')) as NodeId;
  const nodes = Number(arg('nodes', '3'));
  const basePort = Number(arg('base-port'));
  const dataDir = arg('data-dir');
  const fsync = arg('fsync', 'batch') as 'always' | 'batch' | 'never';
  const snapshotEntries = Number(arg('snapshot-entries', '5000'));
  const logger = createLogger({ level: arg('log-level', 'warn'), format: 'json', name: `raft-node-${id}` });
  mkdirSync(dataDir, { recursive: true });

  const wal = await Wal.open(join(dataDir, 'wal'), { limits: WAL_LIMITS_DEFAULT, fsync, logger });
  const snapshots = await SnapshotStore.open(join(dataDir, 'snapshots'), { fsync, logger });
  const voters = Array.from({ length: nodes }, (_, i) => i + 1);
  const peers = new Map(voters.filter((v) => v !== id).map((v) => [v, { host: '127.0.0.1', port: basePort + 100 + v }]));
  let host: RaftHost | undefined;
  const transport = new PeerTransport({
    nodeId: id,
    workerIndex: 0,
    clusterId: 'raft-counter-test',
    topologyDigest: 'one-group',
    listen: { host: '127.0.0.1', port: basePort + 100 + id },
    peers,
    limits: PEER_LIMITS_DEFAULT,
    logger,
    onRaftMessages: (msgs) => host?.receive(msgs),
  });
  transport.onPeerDown((peer) => host?.peerDown(peer));
  const sm = new CounterMachine();
  host = await RaftHost.start({
    nodeId: id,
    groups: [{ id: 0, conf: { voters, learners: [] }, stateMachine: sm }],
    raft: {
      heartbeatTicks: RAFT_LIMITS_DEFAULT.heartbeatTicks,
      electionTicksMin: RAFT_LIMITS_DEFAULT.electionTicksMin,
      preVote: true,
      checkQuorum: true,
      readMode: 'safe',
      ...raftFlowLimits(RAFT_LIMITS_DEFAULT),
    },
    tickMs: RAFT_LIMITS_DEFAULT.tickMs,
    wal,
    snapshots,
    transport,
    logger,
    snapshotEntries,
  });
  await transport.start();
  const h = host;

  const fail = (ctx: CommandContext, err: unknown) => {
    if (err instanceof HostError) {
      if (err.code === 'NOTLEADER') ctx.reply.error(`NOTLEADER ${err.leader}`);
      else ctx.reply.error(`TRYAGAIN ${err.message}`);
    } else ctx.reply.error(`ERR ${(err as Error).message}`);
  };
  const cmd = (name: string, arity: number, handler: CommandSpec['handler'], async = true): CommandSpec => ({
    name, arity, flags: [], firstKey: 0, lastKey: 0, keyStep: 0, summary: name, group: 'raft-test', handler, async,
  });

  const commands: CommandSpec[] = [
    cmd('incr', 2, async (ctx, args) => {
      try {
        ctx.reply.integer((await h.propose(0, args[1]!)) as number);
      } catch (err) {
        fail(ctx, err);
      }
    }),
    cmd('get', 1, async (ctx) => {
      try {
        await h.readBarrier(0);
        ctx.reply.integer(sm.count);
      } catch (err) {
        fail(ctx, err);
      }
    }),
    cmd('ids', 1, async (ctx) => {
      try {
        await h.readBarrier(0);
        ctx.reply.arrayHeader(sm.ids.size);
        for (const x of sm.ids) ctx.reply.bulk(x);
      } catch (err) {
        fail(ctx, err);
      }
    }),
    cmd(
      'role',
      1,
      (ctx) => {
        const s = h.group(0)!.status();
        ctx.reply.arrayHeader(5);
        ctx.reply.bulk(['follower', 'precandidate', 'candidate', 'leader'][s.role]!);
        ctx.reply.integer(s.leader);
        ctx.reply.integer(s.term);
        ctx.reply.integer(s.commit);
        ctx.reply.integer(s.applied);
      },
      false,
    ),
    cmd('load', 4, async (ctx, args) => {
      const proposers = Number(args[1]!.toString());
      const ms = Number(args[2]!.toString());
      const bytes = Number(args[3]!.toString());
      const payload = Buffer.alloc(bytes, 120);
      payload[0] = 0x4c;
      const lat: number[] = [];
      const syncs0 = wal.stats.syncs;
      let errors = 0;
      const start = performance.now();
      const deadline = start + ms;
      await Promise.all(
        Array.from({ length: proposers }, async () => {
          while (performance.now() < deadline) {
            const t0 = performance.now();
            try {
              await h.propose(0, payload);
              lat.push(performance.now() - t0);
            } catch {
              errors++;
              await new Promise((r) => setTimeout(r, 10));
            }
          }
        }),
      );
      const secs = (performance.now() - start) / 1000;
      lat.sort((a, b) => a - b);
      ctx.reply.bulk(
        JSON.stringify({
          proposers,
          committed: lat.length,
          errors,
          seconds: Number(secs.toFixed(3)),
          perSecond: Math.round(lat.length / secs),
          p50Ms: Number(percentile(lat, 50).toFixed(3)),
          p99Ms: Number(percentile(lat, 99).toFixed(3)),
          fsyncsPerSecond: Math.round((wal.stats.syncs - syncs0) / secs),
        }),
      );
    }),
  ];

  const server = new RespServer(
    { host: '127.0.0.1', port: basePort + id, resp: RESP_LIMITS_DEFAULT, server: SERVER_LIMITS_DEFAULT, protectedMode: true },
    new CacheStore(CACHE_LIMITS_DEFAULT, Date.now),
    new Acl(''),
    commands,
    logger,
  );
  server.addCommands(connectionCommands(server));
  await server.listen();
  console.log(JSON.stringify({ msg: 'raft counter node ready', id, port: basePort + id }));

  const stop = async () => {
    await server.close();
    await h.stop();
    await transport.stop();
    await wal.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
