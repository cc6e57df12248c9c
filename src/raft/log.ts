/**
 * The in-memory Raft log of one group: every entry after the last snapshot, plus the indexes that say how far the
 * host has been told to persist and apply.
 *
 * Layout: `buf[head + (i - firstIndex)]` holds entry i. Appends push; a conflict truncates by shortening the array
 * (O(1)); compaction advances `head` and copies the live tail down only when more than half of the array is dead
 * (amortized O(1) per entry). No per-operation O(n) work on the hot path.
 *
 * Invariants (checked, a violation throws RaftInvariantError):
 *   snapIndex <= applied <= applying <= committed <= lastIndex
 *   snapIndex <= committed; entries are contiguous: buf[k].index === firstIndex + k - head
 *   nothing at or below `committed` is ever truncated
 *   unstable (first index not yet handed out for persisting) is in [firstIndex, lastIndex + 1]
 */
import type { Entry } from './types.js';
import { RaftInvariantError } from './errors.js';

/** Compaction copies the live tail down only when at least this many dead slots have piled up. */
const COMPACT_COPY_SLOTS_MIN = 1024;

export class RaftLog {
  private buf: Entry[] = [];
  private head = 0;
  /** Index and term of the last entry covered by the snapshot (0/0 with no snapshot). */
  snapIndex: number;
  snapTerm: number;
  /** Highest index known to be committed. */
  committed: number;
  /** Highest index the host has applied (advanced). */
  applied: number;
  /** Highest index handed to the host for applying (in a Ready, maybe not yet advanced). */
  applying: number;
  /** First index not yet handed to the host for persisting. */
  unstable: number;

  constructor(snapIndex: number, snapTerm: number) {
    this.snapIndex = snapIndex;
    this.snapTerm = snapTerm;
    this.committed = snapIndex;
    this.applied = snapIndex;
    this.applying = snapIndex;
    this.unstable = snapIndex + 1;
  }

  firstIndex(): number {
    return this.snapIndex + 1;
  }

  lastIndex(): number {
    return this.snapIndex + this.buf.length - this.head;
  }

  lastTerm(): number {
    const n = this.buf.length;
    return n > this.head ? (this.buf[n - 1] as Entry).term : this.snapTerm;
  }

  /** Number of entries held in memory. */
  size(): number {
    return this.buf.length - this.head;
  }

  /** Term of entry i; the snapshot's term at snapIndex; -1 when i is compacted away or beyond the last index. */
  term(i: number): number {
    if (i === this.snapIndex) return this.snapTerm;
    if (i < this.snapIndex) return -1;
    const e = this.buf[this.head + i - this.snapIndex - 1];
    return e === undefined ? -1 : e.term;
  }

  matchTerm(i: number, term: number): boolean {
    const t = this.term(i);
    return t >= 0 && t === term;
  }

  /** Entry i (must be in memory). */
  at(i: number): Entry {
    const e = this.buf[this.head + i - this.snapIndex - 1];
    if (e === undefined || i <= this.snapIndex) {
      throw new RaftInvariantError(`log: entry ${i} not in memory [${this.firstIndex()}, ${this.lastIndex()}]`);
    }
    return e;
  }

  /** Appends one entry that must directly follow the last one. */
  push(e: Entry): void {
    if (e.index !== this.lastIndex() + 1) {
      throw new RaftInvariantError(`log: append of ${e.index} after last index ${this.lastIndex()}`);
    }
    this.buf.push(e);
  }

  /**
   * Appends `ents` (contiguous) after truncating every entry at or above ents[0].index. Truncating a committed
   * entry is a safety violation and throws.
   */
  appendTruncating(ents: readonly Entry[], from = 0): void {
    const first = ents[from];
    if (first === undefined) return;
    const last = this.lastIndex();
    if (first.index <= last) {
      if (first.index <= this.committed) {
        throw new RaftInvariantError(
          `log: truncation at ${first.index} would drop committed entries (committed ${this.committed})`,
        );
      }
      this.buf.length = this.head + (first.index - this.snapIndex - 1);
      if (this.unstable > first.index) this.unstable = first.index;
    } else if (first.index !== last + 1) {
      throw new RaftInvariantError(`log: gap appending ${first.index} after last index ${last}`);
    }
    for (let k = from; k < ents.length; k++) {
      const e = ents[k] as Entry;
      if (e.index !== first.index + k - from) throw new RaftInvariantError(`log: appended entries not contiguous`);
      this.buf.push(e);
    }
  }

  /** Entries [lo, hi) as a new array. The range must be in memory. */
  slice(lo: number, hi: number): Entry[] {
    if (lo > hi) throw new RaftInvariantError(`log: bad slice [${lo}, ${hi})`);
    if (lo === hi) return [];
    if (lo <= this.snapIndex || hi > this.lastIndex() + 1) {
      throw new RaftInvariantError(
        `log: slice [${lo}, ${hi}) out of memory range [${this.firstIndex()}, ${this.lastIndex() + 1})`,
      );
    }
    const base = this.head - this.snapIndex - 1;
    return this.buf.slice(base + lo, base + hi);
  }

  /**
   * Entries from lo on, at most `countMax` of them and at most `bytesMax` bytes of data (but always at least one
   * entry when lo <= lastIndex). lo must be > snapIndex.
   */
  sliceLimited(lo: number, countMax: number, bytesMax: number): Entry[] {
    const last = this.lastIndex();
    if (lo > last) return [];
    let hi = Math.min(last + 1, lo + countMax);
    const base = this.head - this.snapIndex - 1;
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      bytes += (this.buf[base + i] as Entry).data.byteLength;
      if (bytes > bytesMax && i > lo) {
        hi = i;
        break;
      }
    }
    return this.buf.slice(base + lo, base + hi);
  }

  /** Moves the commit index forward; committing beyond the last index is a bug. */
  commitTo(i: number): boolean {
    if (i <= this.committed) return false;
    if (i > this.lastIndex()) {
      throw new RaftInvariantError(`log: commit ${i} is beyond last index ${this.lastIndex()}`);
    }
    this.committed = i;
    return true;
  }

  /** Entries not yet handed out for persisting; marks them handed out. */
  takeUnstable(): Entry[] {
    const last = this.lastIndex();
    if (this.unstable > last) return [];
    const ents = this.slice(this.unstable, last + 1);
    this.unstable = last + 1;
    return ents;
  }

  hasUnstable(): boolean {
    return this.unstable <= this.lastIndex();
  }

  hasNextCommitted(): boolean {
    return this.committed > this.applying;
  }

  /** Committed entries not yet handed out for applying; marks them handed out. */
  takeCommitted(): Entry[] {
    if (this.committed <= this.applying) return [];
    const lo = Math.max(this.applying + 1, this.firstIndex());
    const ents = this.slice(lo, this.committed + 1);
    this.applying = this.committed;
    return ents;
  }

  appliedTo(i: number): void {
    if (i > this.applying || i > this.committed) {
      throw new RaftInvariantError(`log: applied ${i} beyond handed-out ${this.applying} / committed ${this.committed}`);
    }
    if (i > this.applied) this.applied = i;
  }

  /**
   * Largest index <= i whose term is <= term (etcd's findConflictByTerm): the follower/leader uses it to skip a
   * whole term of conflicting entries in one round trip. Stops at the snapshot index.
   */
  findConflictByTerm(i: number, term: number): number {
    if (i > this.lastIndex()) return i;
    while (i > this.snapIndex) {
      const t = this.term(i);
      if (t <= term) return i;
      i--;
    }
    return i;
  }

  /** Drops entries <= i (i <= applied). */
  compact(i: number, term: number): void {
    if (i <= this.snapIndex) return;
    if (i > this.applied) throw new RaftInvariantError(`log: compact ${i} beyond applied ${this.applied}`);
    const t = this.term(i);
    if (t !== term) throw new RaftInvariantError(`log: compact ${i} with term ${term}, log has term ${t}`);
    this.head += i - this.snapIndex;
    this.snapIndex = i;
    this.snapTerm = term;
    if (this.unstable <= i) this.unstable = i + 1;
    if (this.head >= COMPACT_COPY_SLOTS_MIN && this.head * 2 >= this.buf.length) {
      this.buf = this.buf.slice(this.head);
      this.head = 0;
    }
  }

  /** Replaces the whole log with a snapshot at (index, term); everything up to it counts as committed. */
  restore(index: number, term: number): void {
    if (index <= this.committed) {
      throw new RaftInvariantError(`log: restore to ${index} at or below committed ${this.committed}`);
    }
    this.buf = [];
    this.head = 0;
    this.snapIndex = index;
    this.snapTerm = term;
    this.committed = index;
    this.applying = index;
    this.unstable = index + 1;
  }
}
