/**
 * Builds a Raft group's boot state from durable storage: the newest valid snapshot plus the WAL's recovered
 * entries after it, checked for contiguity and consistency with the hard state.
 */
import type { ConfState, Entry, GroupId, HardState, RaftBootState } from '../raft/types.js';
import type { SnapshotStore } from './snapshot-store.js';
import type { Wal } from './wal.js';

export type BootErrorCode = 'BOOT_SNAPSHOT_MISSING' | 'BOOT_INCONSISTENT';

/** Storage does not hold a bootable state for a group; the node must not start this group from it. */
export class BootError extends Error {
  readonly code: BootErrorCode;
  readonly group: GroupId;
  constructor(code: BootErrorCode, group: GroupId, message: string) {
    super(`group ${group}: ${message}`);
    this.name = 'BootError';
    this.code = code;
    this.group = group;
  }
}

/**
 * Combines the latest snapshot of `group` with the WAL's recovered state.
 *
 * - The WAL's snapshot marker says a snapshot up to its index was durable; the snapshot store must still hold one
 *   at least that new (else BOOT_SNAPSHOT_MISSING: the entries before the marker are gone from the WAL).
 * - A snapshot newer than the marker (saved, crash before the marker was durable) is used; the log is trimmed by
 *   Raft's InstallSnapshot rule: if the log holds the snapshot's last entry with the same term, entries after it
 *   are kept, otherwise the whole log is dropped.
 * - The entries must then start right after the snapshot (or at 1) and be contiguous; hardState.commit is raised
 *   to the snapshot index and must not exceed the last index (BOOT_INCONSISTENT otherwise).
 * - `applied` is the snapshot index (0 without one): the host installs the snapshot into its state machine first.
 */
export async function loadBootState(
  wal: Wal,
  snapshots: SnapshotStore,
  group: GroupId,
  initialConf: ConfState,
): Promise<RaftBootState> {
  const rec = wal.recovered().get(group);
  const snapshot = await snapshots.loadLatest(group);
  const marker = rec?.snapshotMeta ?? null;
  let entries: Entry[] = rec?.entries ?? [];
  const hs: HardState = rec?.hardState ?? { term: 0, vote: 0, commit: 0 };

  if (marker !== null) {
    if (snapshot === null || snapshot.meta.index < marker.index) {
      throw new BootError(
        'BOOT_SNAPSHOT_MISSING',
        group,
        `the WAL says a snapshot at index ${marker.index} is durable, but the newest valid snapshot file is ` +
          (snapshot === null ? 'none' : `at index ${snapshot.meta.index}`),
      );
    }
    if (snapshot.meta.index === marker.index && snapshot.meta.term !== marker.term) {
      throw new BootError(
        'BOOT_INCONSISTENT',
        group,
        `snapshot at index ${marker.index} has term ${snapshot.meta.term}, the WAL marker says ${marker.term}`,
      );
    }
  }

  const base = snapshot?.meta.index ?? 0;
  if (snapshot !== null && entries.length > 0) {
    const first = entries[0]!.index;
    const at = base - first;
    if (at >= 0) {
      entries = at < entries.length && entries[at]!.term === snapshot.meta.term ? entries.slice(at + 1) : [];
    }
  }
  for (let i = 0; i < entries.length; i++) {
    if (entries[i]!.index !== base + 1 + i) {
      throw new BootError(
        'BOOT_INCONSISTENT',
        group,
        `log not contiguous after the snapshot at ${base}: expected index ${base + 1 + i}, found ${entries[i]!.index}`,
      );
    }
  }
  const lastIndex = entries.length > 0 ? entries[entries.length - 1]!.index : base;
  const commit = Math.max(hs.commit, base);
  if (commit > lastIndex) {
    throw new BootError('BOOT_INCONSISTENT', group, `commit ${commit} is beyond the last stored index ${lastIndex}`);
  }
  return {
    hardState: { term: hs.term, vote: hs.vote, commit },
    snapshot,
    entries,
    initialConf,
    applied: base,
  };
}
