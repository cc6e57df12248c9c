/**
 * What a leader knows about each member's log (etcd-io/raft's tracker.Progress, rewritten).
 *
 *            +--------- append rejected / unreachable ---------+
 *            v                                                  |
 *   Probe --(append acked)--> Replicate                         |
 *     ^  \                        |                             |
 *     |   +--(next compacted)-->  Snapshot --(installed)--> Probe
 *     +----------------------------------------------------------+
 *
 * - Probe: at most one AppendEntries in flight (`probeSent`), until a response or heartbeat response arrives;
 *   used while the follower's match point is unknown.
 * - Replicate: optimistic pipelining: `next` advances as soon as entries are sent, bounded by `Inflights`.
 * - Snapshot: the follower needs entries the leader has compacted; InstallSnapshot chunks are streamed and
 *   appends stop until the follower reports the snapshot installed.
 *
 * Invariant: match < next; match only grows (within one leadership).
 */
import type { NodeId, Snapshot } from './types.js';
import { RaftInvariantError } from './errors.js';

export const enum ProgressState {
  Probe = 0,
  Replicate = 1,
  Snapshot = 2,
}

export const PROGRESS_STATE_NAMES = ['probe', 'replicate', 'snapshot'] as const;

/**
 * A ring buffer of the last index of each AppendEntries message in flight to one follower. Freed in order as
 * acknowledgements arrive.
 */
export class Inflights {
  private readonly ring: Float64Array;
  private start = 0;
  count = 0;

  constructor(readonly size: number) {
    if (!(size >= 1)) throw new RaftInvariantError(`inflights: size ${size} < 1`);
    this.ring = new Float64Array(size);
  }

  full(): boolean {
    return this.count === this.size;
  }

  add(last: number): void {
    if (this.count === this.size) throw new RaftInvariantError('inflights: add to a full window');
    let slot = this.start + this.count;
    if (slot >= this.size) slot -= this.size;
    this.ring[slot] = last;
    this.count++;
  }

  /** Frees every message whose last index is <= to. */
  freeLE(to: number): void {
    while (this.count > 0 && (this.ring[this.start] as number) <= to) {
      this.start++;
      if (this.start === this.size) this.start = 0;
      this.count--;
    }
  }

  reset(): void {
    this.start = 0;
    this.count = 0;
  }
}

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = ProgressState.Probe;
  /** Probe: an append was sent and no answer came yet. */
  probeSent = false;
  /** Heard from this member since the last CheckQuorum round. */
  recentActive = false;
  /**
   * Index of the ConfChange entry that removed this member (0 = a member). A removed member keeps receiving the
   * log (as a non-voting learner) until it holds that entry, so it learns of its removal and stops campaigning.
   */
  removedAt = 0;
  /** match when the previous heartbeat response arrived (detects a replicate stream that stopped moving). */
  heartbeatMatch = -1;
  /** Highest ReadIndex round (heartbeat ctx) this member acknowledged. */
  readAck = 0;
  readonly inflights: Inflights;

  // Snapshot streaming (state Snapshot only).
  /** The snapshot being streamed, or null. */
  snap: Snapshot | null = null;
  /** Index of the snapshot being sent (pendingSnapshot in etcd). */
  snapIndex = 0;
  /** Bytes sent (the next chunk's offset) and bytes acknowledged by the follower. */
  snapSent = 0;
  snapAcked = 0;
  /** The chunk carrying `done` was sent. */
  snapDoneSent = false;
  /** Heartbeat responses seen without snapshot progress; resend from `snapAcked` when it grows too large. */
  snapStall = 0;
  /** Offset of the last go-back after a rejection; further rejections asking for the same offset are echoes. */
  snapRewind = -1;
  /**
   * Lowest offset a rejection asked for below `snapAcked` since the last progress (Infinity = none). Such a
   * rejection is normally a stale one, but if the follower restarted it is the truth: the stall timer resumes
   * from here.
   */
  snapLowReject = Infinity;
  /** Stall resends since the last progress (the first resends from `snapAcked`, later ones honour snapLowReject). */
  snapStallResends = 0;

  constructor(
    readonly id: NodeId,
    next: number,
    inflightMsgsMax: number,
    public learner: boolean,
  ) {
    this.next = next;
    this.inflights = new Inflights(inflightMsgsMax);
  }

  private resetState(state: ProgressState): void {
    this.probeSent = false;
    this.state = state;
    this.inflights.reset();
    this.snap = null;
    this.snapIndex = 0;
    this.snapSent = 0;
    this.snapAcked = 0;
    this.snapDoneSent = false;
    this.snapStall = 0;
    this.snapRewind = -1;
    this.snapLowReject = Infinity;
    this.snapStallResends = 0;
  }

  /** The follower confirmed more bytes of the snapshot: the stream is moving. */
  snapshotProgressed(): void {
    this.snapStall = 0;
    this.snapLowReject = Infinity;
    this.snapStallResends = 0;
    if (this.snapAcked > this.snapRewind) this.snapRewind = -1;
  }

  /**
   * No progress for a while: resend from the last acknowledged offset (chunks or answers were lost). If that did
   * not help either, a rejection below it was not stale after all (the follower restarted after a late
   * acknowledgement lifted `snapAcked`): resend from the lowest such offset. Going back too far costs only
   * duplicates, which the follower answers with the offset it really holds.
   */
  snapStalled(): void {
    let from = this.snapAcked;
    if (this.snapStallResends > 0 && this.snapLowReject < from) from = this.snapLowReject;
    this.snapStallResends++;
    this.snapStall = 0;
    this.snapRewind = -1;
    this.snapLowReject = Infinity;
    this.snapAcked = from;
    this.snapSent = from;
    this.snapDoneSent = false;
  }

  /** Back to probing from match + 1 (a completed snapshot has raised match to the snapshot index first). */
  becomeProbe(): void {
    this.resetState(ProgressState.Probe);
    this.next = this.match + 1;
  }

  becomeReplicate(): void {
    this.resetState(ProgressState.Replicate);
    this.next = this.match + 1;
  }

  becomeSnapshot(snap: Snapshot): void {
    this.resetState(ProgressState.Snapshot);
    this.snap = snap;
    this.snapIndex = snap.meta.index;
  }

  /** Records that entries up to `last` were sent (count entries in the message). */
  sentEntries(count: number, last: number): void {
    if (this.state === ProgressState.Replicate) {
      if (count > 0) {
        this.next = last + 1;
        this.inflights.add(last);
      }
    } else if (this.state === ProgressState.Probe) {
      this.probeSent = true;
    } else {
      throw new RaftInvariantError(`progress ${this.id}: sending entries in state snapshot`);
    }
  }

  /** An acknowledgement up to n arrived; returns true if it was not stale. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.probeSent = false;
    }
    if (this.next < n + 1) this.next = n + 1;
    return updated;
  }

  /**
   * The follower rejected an append whose prevIndex was `rejected`; `matchHint` is the highest index that may
   * match. Returns false when the rejection is stale (and is then ignored).
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === ProgressState.Replicate) {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1);
    this.probeSent = false;
    return true;
  }

  isPaused(): boolean {
    switch (this.state) {
      case ProgressState.Probe:
        return this.probeSent;
      case ProgressState.Replicate:
        return this.inflights.full();
      default:
        return true;
    }
  }
}
