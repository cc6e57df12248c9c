// A RaftHost whose groups each have one voter (node 1), on a real WAL and snapshot store in a directory of the test's:
// nothing is ever sent, and each group elects itself. Shared by the RaftHost tests that need real storage but no peers
// (test/node/raft-host-snapshot.test.ts, raft-host-stalls.test.ts).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { RaftHost, type StateMachine } from '../../src/node/raft-host.js';
import type { RaftConfig } from '../../src/raft/types.js';
import { SnapshotStore } from '../../src/storage/snapshot-store.js';
import { Wal } from '../../src/storage/wal.js';
import { RAFT_LIMITS_DEFAULT, raftFlowLimits, WAL_LIMITS_DEFAULT } from '../../src/config/limits.js';

/** What the helpers need of a tap test. */
interface Teardown {
  teardown(fn: () => unknown): void;
}

/** A fresh temporary directory, removed when the test ends. */
export function tempDir(t: Teardown, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface OneVoterOptions {
  /** The state machine of each group, by group id (the host hosts exactly these groups). */
  groups: Map<number, StateMachine>;
  tickMs: number;
  heartbeatTicks: number;
  electionTicksMin: number;
  seed: number;
  /** Default: silent. */
  logger?: Logger;
  /** RaftHostOptions.snapshotEntries (default 0: never). */
  snapshotEntries?: number;
  snapshotLogPercent?: number;
  /** WAL segment size (default WAL_LIMITS_DEFAULT's). */
  segmentBytes?: number;
}

export interface OneVoterHost {
  host: RaftHost;
  wal: Wal;
  /** Stops the host, then closes the WAL (a restart opens the same directory again). */
  close(): Promise<void>;
}

/**
 * Starts the host on `dir` (WAL in dir/wal, snapshots in dir/snapshots) and waits until every group has elected node
 * 1 and applied everything committed before (a read barrier per group), so a restart's state is complete on return.
 */
export async function openOneVoterHost(dir: string, o: OneVoterOptions): Promise<OneVoterHost> {
  const logger = o.logger ?? pino({ level: 'silent' });
  const limits = { ...WAL_LIMITS_DEFAULT, ...(o.segmentBytes !== undefined ? { segmentBytes: o.segmentBytes } : {}) };
  const wal = await Wal.open(join(dir, 'wal'), { limits, fsync: 'never', logger });
  const snapshots = await SnapshotStore.open(join(dir, 'snapshots'), { fsync: 'never', logger });
  const raft: Omit<RaftConfig, 'id' | 'group'> = {
    heartbeatTicks: o.heartbeatTicks,
    electionTicksMin: o.electionTicksMin,
    preVote: false,
    checkQuorum: false,
    readMode: 'safe',
    ...raftFlowLimits(RAFT_LIMITS_DEFAULT),
  };
  const host = await RaftHost.start({
    nodeId: 1,
    groups: [...o.groups].map(([id, stateMachine]) => ({ id, conf: { voters: [1], learners: [] }, stateMachine })),
    raft,
    tickMs: o.tickMs,
    wal,
    snapshots,
    transport: { send: () => undefined },
    logger,
    snapshotEntries: o.snapshotEntries ?? 0,
    ...(o.snapshotLogPercent !== undefined ? { snapshotLogPercent: o.snapshotLogPercent } : {}),
    seed: o.seed,
  });
  const ids = [...o.groups.keys()];
  const deadline = performance.now() + 10_000;
  while (!ids.every((g) => host.group(g)!.leader === 1)) {
    if (performance.now() > deadline) throw new Error('a one-voter group did not elect itself');
    await new Promise((r) => setTimeout(r, 5));
  }
  for (const g of ids) await host.readBarrier(g);
  return {
    host,
    wal,
    async close() {
      await host.stop();
      await wal.close();
    },
  };
}
