/**
 * A simulated disk for one Raft group on one node: what the host wrote, split into what is durable and what is
 * still in the page cache. Each Ready is written as one batch record (a WAL record with a checksum in the real
 * host: it is either wholly on disk or cut off as a torn tail). fsync() makes every written batch durable; a crash
 * keeps a random prefix of the unsynced batches (the kernel may have flushed some of them) and loses the rest.
 * Synced data is never corrupted or lost: that is not a fault Lockstep claims to survive.
 */
import type { ConfState, Entry, HardState, RaftBootState, Snapshot } from '../../src/raft/types.js';
import type { Rng } from '../../src/util/rng.js';

export interface WriteBatch {
  snapshot: Snapshot | null;
  entries: Entry[];
  hardState: HardState | null;
}

/** A disk operation the host performed that no correct Raft core could ask for (for example a gap in the log). */
export class DiskContractError extends Error {
  readonly code = 'DISK_CONTRACT';
}

export class SimDisk {
  hardState: HardState = { term: 0, vote: 0, commit: 0 };
  snapshot: Snapshot | null = null;
  /** Durable entries after the snapshot, contiguous. */
  entries: Entry[] = [];
  private unsynced: WriteBatch[] = [];
  /** Counters for reports. */
  fsyncs = 0;
  lostBatches = 0;

  write(batch: WriteBatch): void {
    if (batch.snapshot === null && batch.entries.length === 0 && batch.hardState === null) return;
    this.unsynced.push(batch);
  }

  get unsyncedBatches(): number {
    return this.unsynced.length;
  }

  fsync(): void {
    if (this.unsynced.length === 0) return;
    for (const b of this.unsynced) this.applyBatch(b);
    this.unsynced = [];
    this.fsyncs++;
  }

  /** Power loss: a random prefix of the unsynced batches survives (`keepAll` false: none of them does). */
  crash(rng: Rng, mayKeep: boolean): void {
    const keep = mayKeep && this.unsynced.length > 0 ? rng.int(0, this.unsynced.length + 1) : 0;
    for (let i = 0; i < keep; i++) this.applyBatch(this.unsynced[i]!);
    this.lostBatches += this.unsynced.length - keep;
    this.unsynced = [];
  }

  /**
   * A lying disk (tests of the checkers only; outside the faults we claim to survive): every durable entry after
   * the snapshot is lost while the hard state (term, vote) survives.
   */
  loseDurableEntries(): void {
    this.entries = [];
    const snapIndex = this.snapshot !== null ? this.snapshot.meta.index : 0;
    if (this.hardState.commit > snapIndex) this.hardState = { ...this.hardState, commit: snapIndex };
  }

  /** The host compacted its log at snapshot.meta.index: written atomically (temp file, fsync, rename). */
  saveSnapshot(snap: Snapshot): void {
    if (this.snapshot !== null && snap.meta.index <= this.snapshot.meta.index) return;
    this.snapshot = snap;
    const keepFrom = this.entries.findIndex((e) => e.index > snap.meta.index);
    this.entries = keepFrom < 0 ? [] : this.entries.slice(keepFrom);
  }

  lastIndex(): number {
    const last = this.entries[this.entries.length - 1];
    return last !== undefined ? last.index : this.snapshot !== null ? this.snapshot.meta.index : 0;
  }

  boot(initialConf: ConfState): RaftBootState {
    return {
      hardState: { ...this.hardState },
      snapshot: this.snapshot,
      entries: this.entries.slice(),
      initialConf,
      applied: this.snapshot !== null ? this.snapshot.meta.index : 0,
    };
  }

  private applyBatch(b: WriteBatch): void {
    if (b.snapshot !== null) {
      // A snapshot from the leader replaces the whole log (the core restored its log to it).
      this.snapshot = b.snapshot;
      this.entries = [];
    }
    if (b.entries.length > 0) {
      const first = b.entries[0]!;
      const snapIndex = this.snapshot !== null ? this.snapshot.meta.index : 0;
      if (first.index <= snapIndex) {
        throw new DiskContractError(`append at ${first.index} at or below the snapshot index ${snapIndex}`);
      }
      const last = this.lastIndex();
      if (first.index > last + 1) {
        throw new DiskContractError(`append at ${first.index} leaves a gap after the last index ${last}`);
      }
      // Drop the stored suffix from first.index on (a resolved conflict), then append.
      const cut = first.index - snapIndex - 1;
      if (cut < this.entries.length) this.entries.length = cut;
      for (let i = 0; i < b.entries.length; i++) {
        const e = b.entries[i]!;
        if (e.index !== first.index + i) throw new DiskContractError(`batch entries not contiguous at ${e.index}`);
        this.entries.push(e);
      }
    }
    if (b.hardState !== null) this.hardState = { ...b.hardState };
  }
}
