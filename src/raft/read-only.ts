/**
 * Pending ReadIndex requests on a leader (thesis section 6.4), grouped into heartbeat rounds.
 *
 * Each request records the commit index at arrival and the round it belongs to: the next heartbeat broadcast
 * starts that round (its `ctx` is the round number). A round is confirmed once a quorum of voters acknowledged a
 * heartbeat with a ctx >= the round: that proves the node was still leader after the request arrived, so every
 * request of that round and of earlier rounds can be answered with its recorded index. Rounds only grow, so
 * requests leave the queue in order (FIFO, O(1) each).
 */
import type { NodeId } from './types.js';

export interface PendingRead {
  round: number;
  index: number;
  from: NodeId;
  ctx: Uint8Array;
}

export class ReadOnlyQueue {
  private q: PendingRead[] = [];
  private head = 0;
  /** Last round started (sent in a heartbeat). */
  round = 0;
  /** Requests were added since the last round started. */
  private roundWanted = false;

  get size(): number {
    return this.q.length - this.head;
  }

  add(index: number, from: NodeId, ctx: Uint8Array): void {
    this.q.push({ round: this.round + 1, index, from, ctx });
    this.roundWanted = true;
  }

  /** A round must be started (requests wait for a heartbeat broadcast). */
  wantsRound(): boolean {
    return this.roundWanted;
  }

  /** The ctx a heartbeat broadcast should carry: starts a new round if requests wait for one, else 0 or the latest. */
  heartbeatCtx(): number {
    if (this.roundWanted) {
      this.roundWanted = false;
      this.round++;
      return this.round;
    }
    return this.size > 0 ? this.round : 0;
  }

  /** Removes and returns (through `out`) every request of a round <= confirmed. */
  release(confirmed: number, out: PendingRead[]): void {
    while (this.head < this.q.length) {
      const r = this.q[this.head] as PendingRead;
      if (r.round > confirmed) break;
      out.push(r);
      this.head++;
    }
    if (this.head === this.q.length) {
      this.q = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.q.length) {
      this.q = this.q.slice(this.head);
      this.head = 0;
    }
  }

  clear(): void {
    this.q = [];
    this.head = 0;
    this.roundWanted = false;
  }
}
