/**
 * RaftHost: the one module that does consensus I/O for the Raft groups hosted by one thread.
 *
 * It owns, for its thread: one `RaftCore` and one state machine per group, one write-ahead log shared by all of
 * them (group commit), one snapshot store, and the peer transport. The cores are pure; everything with a clock,
 * a socket or a disk is here.
 *
 * The loop (etcd-io/raft's RawNode contract, applied to many groups at once):
 *
 *   tick timer / message / proposal  ->  schedule()  ->  one "round" per event-loop turn:
 *     1. collect Ready from every core that has one and is not in a round already
 *     2. append every group's entries + hard state to the WAL, save received snapshots   (no I/O yet)
 *        2b. send a leader's appends, heartbeats and heartbeat answers of already-durable terms  (no wait)
 *        2c. apply committed entries that were durable before the round began                    (no wait)
 *     3. ONE wal.sync() for the round's groups (one fdatasync: group commit), skipped when it (durable)
 *        holds no entries and no new term or vote (a commit-index-only change need not be durable)
 *     4. send every group's other messages through the transport (batched per peer per turn)
 *     5. apply the other committed entries, resolve the proposals and reads waiting on them
 *     6. advance every core of the round; if any has more, schedule another round
 *
 * 2b and 2c take the fdatasync off the write path's critical chain on the leader: it replicates while it writes
 * its own log, and it answers a committed write without waiting for the fdatasync of later writes. A write costs
 * max(leader fdatasync, append + follower fdatasync + answer) and one more turn, instead of the sum.
 *
 * A group is in at most one round at a time (the core hands out one Ready at a time), but rounds of different
 * groups overlap: while a round waits for its fdatasync, a later turn starts a round for the groups that were not
 * in it. So a group with nothing to persist (an idle shard's heartbeats, a follower's heartbeat answers) never
 * waits behind a busy group's fdatasync. While a group's round waits, its new proposals and messages accumulate in
 * its core and its next round takes them all; the WAL shares one write + fdatasync among every sync() made while
 * the previous one is in flight, so the fsync rate stays bounded by the disk whatever the offered load.
 *
 * Liveness on a busy machine (measured: on 2 cores shared by 3 nodes under load, a worker thread often waits
 * 100-500 ms for a CPU, and an fdatasync can take 100-450 ms):
 * - Heartbeats and heartbeat answers of a term that is already durable leave BEFORE the round's fdatasync (step
 *   2b): they carry nothing the round persists (see sendsBeforeSync), so a slow disk does not silence a leader.
 * - The ticks of a timer callback run in the check phase (setImmediate), after the poll phase has read what peers
 *   sent meanwhile: after a stall the queued heartbeats reset a follower's election timer, and the queued answers
 *   mark a leader's followers active, before a tick can start an election or a CheckQuorum step-down.
 * - One tick per timer callback, whatever the time since the last one (Node's setInterval never fires twice to
 *   catch up either). A node's Raft clock therefore stops while its thread stops: a stalled follower does not
 *   campaign the moment it runs again, and a stalled leader's CheckQuorum period stretches with it. Catching up
 *   the missed ticks would do the opposite; tried for leaders only (capped at heartbeatTicks per callback, to
 *   heartbeat at once after a stall): CheckQuorum step-downs went from 8-23 to 52-64 per 30 s run.
 *
 * Invariants:
 * - Nothing in a Ready is sent or applied before its entries and hard state are durable (step 3 before 4 and 5),
 *   except a leader's appends, heartbeats and heartbeat answers whose term was already durable when the round
 *   began (sendsBeforeSync), and committed entries that were durable before the round began (durableBeforeRound).
 *   Nothing acknowledges an entry of this round before its fdatasync: append answers always wait.
 * - A group is in at most one round; a group's round starts only after its previous round finished (so whatever
 *   its earlier Readies persisted is durable when its next Ready's messages leave).
 * - A proposal's promise resolves only after its entry is applied here, with the state machine's result; it is
 *   rejected when another entry is applied at its index, or an entry of a newer term below it (leadership was lost
 *   and the log rewritten: it can never commit; see rejectOutranked).
 * - Entries are applied exactly once per process lifetime in index order; after a restart, the state machine is
 *   rebuilt from the latest snapshot plus the committed entries after it (the WAL holds them).
 * - While a group's snapshot is encoded in steps (StateMachine.snapshotSteps, over several event-loop turns), nothing
 *   is applied to its state machine: committed entries wait in `deferred` and are applied, in order, once the
 *   encode is done or a snapshot from the leader replaced it (docs/cluster-runtime.md, Snapshots in steps).
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { RaftCore } from '../raft/core.js';
import {
  type ConfState,
  type Entry,
  EntryType,
  type GroupId,
  type Message,
  MessageType,
  type NodeId,
  type RaftConfig,
  type Ready,
  Role,
  type Snapshot,
  type SnapshotMeta,
} from '../raft/types.js';
import { createRng } from '../util/rng.js';
import type { Wal } from '../storage/wal.js';
import type { SnapshotStore } from '../storage/snapshot-store.js';
import { loadBootState } from '../storage/boot.js';
import { durableBeforeRound, sendsBeforeSync } from '../raft/ready-order.js';
import type { Steps } from '../util/steps.js';

/** A snapshot encoded in steps gets at most about this much of the thread per event-loop turn. */
export const SNAPSHOT_SLICE_MS = 8;
/**
 * While a snapshot is encoded in steps, a group's committed entries wait to be applied; past this many the rest of
 * the encode runs at once (memory stays bounded if the encode cannot keep up).
 */
export const APPLY_DEFERRED_MAX = 100_000;

interface SnapshotJob {
  steps: Steps<Uint8Array>;
  meta: SnapshotMeta;
  busyMs: number;
  longestMs: number;
  turns: number;
}

/** Ticks between checks for groups that keep the WAL's oldest segment alive (unpinOldestSegment). */
const PIN_CHECK_TICKS = 100;

/** A deterministic state machine driven by committed entries. */
export interface StateMachine {
  /** Applies one committed Normal entry; the return value resolves the proposal's promise on this node. */
  apply(entry: Entry): unknown;
  /** Serializes the whole state (as of the last applied entry). */
  snapshot(): Uint8Array;
  /**
   * Optional: snapshot() in steps (each next() a bounded slice of the work, the last one returning the bytes). The
   * host then spreads a snapshot over event-loop turns and applies nothing to the machine until it is done.
   */
  snapshotSteps?(): Steps<Uint8Array>;
  /** Replaces the whole state with a snapshot's. */
  restore(data: Uint8Array): void;
}

/** What the host needs from the peer transport (src/transport/peer-transport.ts implements it). */
export interface RaftTransport {
  send(msgs: Message[]): void;
}

export class HostError extends Error {
  constructor(
    readonly code: 'NOTLEADER' | 'TRYAGAIN' | 'STOPPED' | 'BUSY',
    message: string,
    readonly leader: NodeId = 0,
  ) {
    super(message);
  }
}

interface Pending {
  term: number;
  resolve(v: unknown): void;
  reject(e: Error): void;
  /** A proposal of an older term made for the same index, still undecided (see propose()). */
  earlier?: Pending;
}

interface PendingRead {
  resolve(): void;
  reject(e: Error): void;
}

interface Group {
  id: GroupId;
  core: RaftCore;
  sm: StateMachine;
  applied: number;
  /** Term of the entry at `applied` (0 until one is applied or a snapshot restored). */
  appliedTerm: number;
  /** Applied entries since the last snapshot. */
  sinceSnapshot: number;
  /** Entry data bytes applied since the last snapshot. */
  bytesSinceSnapshot: number;
  /** Size of the last snapshot taken, installed or booted from (0: none). */
  snapshotBytes: number;
  proposals: Map<number, Pending>;
  /** ReadIndex requests by ctx key, waiting for their read index. */
  reads: Map<string, PendingRead>;
  /** Read barriers whose index is known, waiting for `applied` to reach it (sorted by index as they arrive). */
  readWaits: { index: number; resolve(): void }[];
  snapshotting: boolean;
  /** A snapshot being encoded in steps (StateMachine.snapshotSteps); committed entries wait in `deferred` meanwhile. */
  encoding: SnapshotJob | null;
  /** Committed entries not applied yet because of `encoding`, in index order (applied once it ends). */
  deferred: Entry[];
  /** This node led the group at its last soft state (noteRole). */
  leading: boolean;
  /** Its Ready is being handled by a round (the core hands out one at a time). */
  inRound: boolean;
  /** A durable snapshot whose log prefix the core may now drop (done between rounds, never mid-Ready). */
  pendingCompact: Snapshot | null;
  /** Term and vote of the last hard state handed to the WAL (they force an fdatasync when they change). */
  syncedTerm: number;
  syncedVote: NodeId;
}

export interface RaftHostOptions {
  nodeId: NodeId;
  /** The groups this host serves and their initial membership (used only when a group has no state yet). */
  groups: { id: GroupId; conf: ConfState; stateMachine: StateMachine }[];
  raft: Omit<RaftConfig, 'id' | 'group'>;
  tickMs: number;
  wal: Wal;
  snapshots: SnapshotStore;
  transport: RaftTransport;
  logger: Logger;
  /** Take a snapshot of a group after this many applied entries (0 = never). */
  snapshotEntries: number;
  /**
   * ... and only once the data of the entries applied since its last snapshot is at least this percentage of that
   * snapshot's size (0 or absent: by entry count alone). Each snapshot then costs at most what was written since
   * the one before (times 100 / percent): snapshot work stays proportional to the write volume whatever the state
   * size, and a restart replays at most about that much log.
   */
  snapshotLogPercent?: number;
  /** Seed for election-timeout randomness (defaults to a mix of node id and time). */
  seed?: number;
}

export interface RaftHostStats {
  rounds: number;
  syncs: number;
  entriesPersisted: number;
  entriesApplied: number;
  messagesSent: number;
  /** Of messagesSent, heartbeats and heartbeat answers sent before their round's fdatasync (see sendsBeforeSync). */
  heartbeatsBeforeSync: number;
  /** Of messagesSent, a leader's appends sent before its round's fdatasync (see sendsBeforeSync). */
  appendsBeforeSync: number;
  /** Of entriesApplied, committed entries applied before their round's fdatasync (see durableBeforeRound). */
  appliedBeforeSync: number;
  snapshotsTaken: number;
  snapshotsInstalled: number;
  /** Of snapshotsTaken, those taken because the group kept the WAL's oldest segment alive (unpinOldestSegment). */
  snapshotsToUnpin: number;
  /**
   * Stalls: the longest gap between two ticks (ms), and how many gaps reached half the election timeout. The thread
   * did something else meanwhile (a snapshot encode, a long apply, GC): a leader sends no heartbeat during it, and
   * a stall past the election timeout lets its followers elect another (a term bump under load).
   */
  tickGapMaxMs: number;
  stalls: number;
  /**
   * Snapshot encodes: the thread time the last one took in all (ms), the longest it held the thread at once (ms: the
   * whole encode for StateMachine.snapshot, the longest turn's share for snapshotSteps), and the event-loop turns
   * encodes in steps took in all.
   */
  snapshotEncodeMs: number;
  snapshotEncodeMaxMs: number;
  snapshotEncodeTurns: number;
  /** This node became leader of a group / stopped leading one. */
  leaderships: number;
  stepDowns: number;
}

export class RaftHost {
  readonly stats: RaftHostStats = {
    rounds: 0,
    syncs: 0,
    entriesPersisted: 0,
    entriesApplied: 0,
    messagesSent: 0,
    heartbeatsBeforeSync: 0,
    appendsBeforeSync: 0,
    appliedBeforeSync: 0,
    snapshotsTaken: 0,
    snapshotsInstalled: 0,
    snapshotsToUnpin: 0,
    tickGapMaxMs: 0,
    stalls: 0,
    snapshotEncodeMs: 0,
    snapshotEncodeMaxMs: 0,
    snapshotEncodeTurns: 0,
    leaderships: 0,
    stepDowns: 0,
  };
  /** Half the lower bound of the election timeout: a tick gap or snapshot encode this long is worth a warning. */
  private readonly stallWarnMs: number;
  private lastTickAt = 0;
  private lastStallWarnAt = Number.NEGATIVE_INFINITY;
  private readonly groups = new Map<GroupId, Group>();
  private ticker: NodeJS.Timeout | undefined;
  /** A timer callback's ticks are waiting for the check phase (see onTimer). */
  private tickScheduled = false;
  private scheduled = false;
  /** Rounds started and not finished (they overlap; each holds its own groups). */
  private roundsInFlight = 0;
  private stopped = false;
  private readCounter = 0;
  private ticksSincePinCheck = 0;

  private constructor(private readonly opts: RaftHostOptions) {
    this.stallWarnMs = (opts.raft.electionTicksMin * opts.tickMs) / 2;
  }

  /** Recovers every group from the WAL and snapshots, then starts ticking. */
  static async start(opts: RaftHostOptions): Promise<RaftHost> {
    const host = new RaftHost(opts);
    const seed = opts.seed ?? (opts.nodeId * 2654435761 + Date.now()) >>> 0;
    for (const g of opts.groups) {
      const boot = await loadBootState(opts.wal, opts.snapshots, g.id, g.conf);
      if (boot.snapshot) {
        g.stateMachine.restore(boot.snapshot.data);
        boot.applied = boot.snapshot.meta.index;
      } else {
        boot.applied = 0;
      }
      const core = new RaftCore({ ...opts.raft, id: opts.nodeId, group: g.id }, boot, createRng(seed + g.id * 7919));
      host.groups.set(g.id, {
        id: g.id,
        core,
        sm: g.stateMachine,
        applied: boot.applied,
        appliedTerm: boot.snapshot ? boot.snapshot.meta.term : 0,
        sinceSnapshot: 0,
        bytesSinceSnapshot: 0,
        snapshotBytes: boot.snapshot?.data.length ?? 0,
        proposals: new Map(),
        reads: new Map(),
        readWaits: [],
        snapshotting: false,
        encoding: null,
        deferred: [],
        leading: false,
        inRound: false,
        pendingCompact: null,
        syncedTerm: boot.hardState.term,
        syncedVote: boot.hardState.vote,
      });
    }
    host.ticker = setInterval(() => host.onTimer(), opts.tickMs);
    host.schedule();
    return host;
  }

  get nodeId(): NodeId {
    return this.opts.nodeId;
  }

  group(id: GroupId): RaftCore | undefined {
    return this.groups.get(id)?.core;
  }

  groupIds(): GroupId[] {
    return [...this.groups.keys()];
  }

  /** Messages from the transport. Messages for unknown groups are dropped (counted by the caller). */
  receive(msgs: Message[]): void {
    for (const m of msgs) {
      const g = this.groups.get(m.group);
      if (g && !this.stopped) g.core.step(m);
    }
    this.schedule();
  }

  /** Tells every group that a peer is unreachable (its links are down). */
  peerDown(id: NodeId): void {
    for (const g of this.groups.values()) g.core.reportUnreachable(id);
  }

  /**
   * Proposes `data` to a group. Resolves with the state machine's apply result once the entry is committed and
   * applied here; rejects with NOTLEADER (with the leader's id when known) or TRYAGAIN. `onIndex`, when given, is
   * called at once with the log index the entry was given (not when the proposal is refused).
   */
  propose(groupId: GroupId, data: Uint8Array, onIndex?: (index: number) => void): Promise<unknown> {
    const g = this.groups.get(groupId);
    if (!g) return Promise.reject(new HostError('TRYAGAIN', `group ${groupId} is not hosted here`));
    if (this.stopped) return Promise.reject(new HostError('STOPPED', 'node is stopping'));
    const r = g.core.propose(data);
    if (!r.ok) {
      if (r.code === 'NOTLEADER') return Promise.reject(new HostError('NOTLEADER', 'not the leader', r.leader));
      return Promise.reject(new HostError(r.code === 'BUSY' ? 'BUSY' : 'TRYAGAIN', `proposal refused: ${r.code}`));
    }
    onIndex?.(r.index);
    this.schedule();
    return new Promise((resolve, reject) => {
      // An earlier proposal at this index (of an older term: this node lost leadership and got it back, and its
      // log was cut below that entry) is not dropped: its outcome is decided only when index r.index is applied,
      // with whichever term the committed entry has (it could still be the old one, from another node's log).
      const earlier = g.proposals.get(r.index);
      g.proposals.set(r.index, { term: r.term, resolve, reject, ...(earlier !== undefined ? { earlier } : {}) });
    });
  }

  /** Starts a leadership transfer of a group this node leads (Raft thesis 3.10); a no-op elsewhere. */
  transferLeader(groupId: GroupId, to: NodeId): void {
    const g = this.groups.get(groupId);
    if (!g || this.stopped) return;
    g.core.transferLeader(to);
    this.schedule();
  }

  /** The index of the last entry applied to a group's state machine here (0 for a group not hosted). */
  appliedIndex(groupId: GroupId): number {
    return this.groups.get(groupId)?.applied ?? 0;
  }

  /** A linearizable read barrier: resolves once this node has applied everything committed before the call. */
  readBarrier(groupId: GroupId): Promise<void> {
    const g = this.groups.get(groupId);
    if (!g) return Promise.reject(new HostError('TRYAGAIN', `group ${groupId} is not hosted here`));
    const key = `${this.opts.nodeId}:${++this.readCounter}`;
    const ctx = Buffer.from(key);
    if (!g.core.readIndex(ctx)) {
      return Promise.reject(new HostError('TRYAGAIN', 'no leader known', g.core.leader));
    }
    this.schedule();
    return new Promise((resolve, reject) => g.reads.set(key, { resolve, reject }));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.ticker) clearInterval(this.ticker);
    // Let the rounds and any snapshot in flight finish: the caller closes the WAL next.
    const busy = () => this.roundsInFlight > 0 || [...this.groups.values()].some((g) => g.snapshotting);
    while (busy()) await new Promise((r) => setTimeout(r, 1));
    for (const g of this.groups.values()) {
      for (const first of g.proposals.values()) {
        for (let p: Pending | undefined = first; p !== undefined; p = p.earlier) p.reject(new HostError('STOPPED', 'node is stopping'));
      }
      for (const r of g.reads.values()) r.reject(new HostError('STOPPED', 'node is stopping'));
      g.proposals.clear();
      g.reads.clear();
    }
  }

  /**
   * Tick timer callback (timers phase). The ticks themselves run in the check phase of this loop iteration, after
   * the poll phase has delivered what peers sent while this thread was not running: a follower that stalled reads
   * the leader's queued heartbeat before its election timer moves, a leader reads its followers' queued answers
   * before a CheckQuorum check.
   */
  private onTimer(): void {
    if (this.stopped || this.tickScheduled) return;
    this.tickScheduled = true;
    setImmediate(() => {
      this.tickScheduled = false;
      this.tick();
    });
  }

  /** One tick for every core (see the header: never more, however late the timer came). */
  private tick(): void {
    if (this.stopped) return;
    const now = performance.now();
    if (this.lastTickAt > 0) {
      const gap = now - this.lastTickAt;
      if (gap > this.stats.tickGapMaxMs) this.stats.tickGapMaxMs = gap;
      if (gap >= this.stallWarnMs) {
        this.stats.stalls++;
        if (now - this.lastStallWarnAt >= 1000) {
          this.lastStallWarnAt = now;
          this.opts.logger.warn(
            {
              gapMs: Math.round(gap),
              electionTimeoutMs: 2 * this.stallWarnMs,
              lastSnapshotEncodeMs: Math.round(this.stats.snapshotEncodeMs),
              walWriteMaxMs: Math.round(this.opts.wal.stats.writeMaxMs),
              walSlowWrites: this.opts.wal.stats.slowWrites,
            },
            'raft ticks stalled: this thread was busy elsewhere (followers of groups it leads may call an election)',
          );
        }
      }
    }
    this.lastTickAt = now;
    for (const g of this.groups.values()) g.core.tick();
    if (++this.ticksSincePinCheck >= PIN_CHECK_TICKS) {
      this.ticksSincePinCheck = 0;
      this.unpinOldestSegment();
    }
    this.schedule();
  }

  /**
   * Snapshots the groups that keep the WAL's oldest segment alive (Wal.pinningGroups), whatever their snapshot
   * thresholds, once they have applied past the entries they hold there. Only a prefix of segments can be deleted,
   * so one quiet group with a few unsnapshotted entries would otherwise keep every segment the busy groups write
   * after it: the WAL would grow without bound. A group with a large state waits until the WAL held back (the closed
   * segments) is snapshotLogPercent of its last snapshot's size, as its own snapshots wait for its log: its snapshot
   * costs time in proportion to its state, and holds its writes that long (they wait for the encode), so at once it
   * would cost that stall for every segment the other groups write. The WAL then stays within about that share of
   * the largest pinning state (as Redis' AOF within auto-aof-rewrite-percentage), and each forced snapshot frees at
   * least as much as it encodes.
   */
  private unpinOldestSegment(): void {
    if (this.opts.snapshotEntries <= 0) return;
    const percent = this.opts.snapshotLogPercent ?? 0;
    const held = this.opts.wal.closedSegmentBytes();
    for (const { group, index } of this.opts.wal.pinningGroups()) {
      const g = this.groups.get(group);
      if (g === undefined || g.applied < index || g.sinceSnapshot <= 0) continue;
      if (percent > 0 && held * 100 < percent * g.snapshotBytes) continue;
      if (this.maybeSnapshot(g, true)) this.stats.snapshotsToUnpin++;
    }
  }

  private schedule(): void {
    if (this.scheduled || this.stopped) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.startRound();
    });
  }

  /** Starts a round for every group that has a Ready and is not in a round; it runs concurrently with others. */
  private startRound(): void {
    if (this.stopped) return;
    let compacted = false;
    for (const g of this.groups.values()) {
      if (g.pendingCompact && !g.inRound) {
        g.core.compact(g.pendingCompact);
        g.pendingCompact = null;
        compacted = true;
      }
    }
    if (compacted) void this.opts.wal.compact().catch((err: unknown) => this.opts.logger.error({ err }, 'WAL compaction failed'));
    const readies: [Group, Ready][] = [];
    for (const g of this.groups.values()) {
      if (g.inRound || !g.core.hasReady()) continue;
      g.inRound = true;
      readies.push([g, g.core.ready()]);
    }
    if (readies.length === 0) return;
    this.roundsInFlight++;
    this.round(readies).then(
      () => {
        this.roundsInFlight--;
        for (const [g] of readies) g.inRound = false;
        // What reached these groups while they were in the round (others were scheduled when it came).
        if (readies.some(([g]) => g.core.hasReady() || g.pendingCompact !== null)) this.schedule();
      },
      (err: unknown) => {
        this.roundsInFlight--;
        // A storage failure: we cannot promise durability any more. Stop loudly rather than carry on (the
        // rethrown error is an unhandled rejection: it ends the thread, as the runtime expects).
        this.opts.logger.fatal({ err }, 'raft host failed; stopping');
        this.stopped = true;
        if (this.ticker) clearInterval(this.ticker);
        throw err;
      },
    );
  }

  private async round(readies: [Group, Ready][]): Promise<void> {
    this.stats.rounds++;
    const { wal, snapshots } = this.opts;

    // 1-2. Persist: received snapshots first (their files must exist before the WAL points past them).
    let needSync = false;
    /** Per Ready: the term that was durable before this round (heartbeats of that term may leave before the sync). */
    const durableTerms: number[] = [];
    for (const [g, rd] of readies) {
      durableTerms.push(g.syncedTerm);
      if (rd.snapshot) {
        await snapshots.save(g.id, rd.snapshot);
        wal.markSnapshot(g.id, rd.snapshot.meta);
        needSync = true;
      }
      if (rd.entries.length > 0 || rd.hardState) {
        wal.append(g.id, rd.entries, rd.hardState);
        this.stats.entriesPersisted += rd.entries.length;
        // As in etcd's MustSync: new entries, a new term or a new vote must be durable before anything depending
        // on them leaves; a hard state that only advances the commit index need not be (a lost commit index is
        // learned again from the leader), so it rides along with the next fdatasync instead of forcing one.
        const hs = rd.hardState;
        if (rd.entries.length > 0 || (hs && (hs.term !== g.syncedTerm || hs.vote !== g.syncedVote))) needSync = true;
        if (hs) {
          g.syncedTerm = hs.term;
          g.syncedVote = hs.vote;
        }
      }
    }
    // 2b. Heartbeats (and their answers) of an already-durable term do not wait for the fdatasync.
    const out: Message[] = [];
    if (needSync) {
      const early: Message[] = [];
      for (let i = 0; i < readies.length; i++) {
        const durableTerm = durableTerms[i]!;
        for (const m of readies[i]![1].messages) (sendsBeforeSync(m, durableTerm) ? early : out).push(m);
      }
      if (early.length > 0) {
        this.opts.transport.send(early);
        this.stats.messagesSent += early.length;
        for (const m of early) {
          if (m.type === MessageType.Append) this.stats.appendsBeforeSync++;
          else this.stats.heartbeatsBeforeSync++;
        }
      }
      // 2c. Committed entries that were durable here before this round need not wait for its fdatasync.
      for (const [g, rd] of readies) {
        const durable = durableBeforeRound(rd);
        for (const e of rd.committed) {
          if (e.index > durable) break;
          if (e.index > g.applied) this.stats.appliedBeforeSync++;
          this.applyEntry(g, e);
        }
        this.releaseReads(g);
      }
    } else {
      for (const [, rd] of readies) for (const m of rd.messages) out.push(m);
    }
    // 3. One fdatasync for every group of this round.
    if (needSync) {
      await wal.sync();
      this.stats.syncs++;
    }
    // 4. Send.
    if (out.length > 0) {
      this.opts.transport.send(out);
      this.stats.messagesSent += out.length;
    }
    // 5. Apply (what 2c left), then answer reads.
    for (const [g, rd] of readies) {
      if (rd.snapshot) this.installSnapshot(g, rd.snapshot);
      for (const e of rd.committed) this.applyEntry(g, e);
      for (const rs of rd.readStates) {
        const key = Buffer.from(rs.ctx).toString();
        const waiting = g.reads.get(key);
        if (!waiting) continue;
        g.reads.delete(key);
        if (rs.index <= g.applied) waiting.resolve();
        else g.readWaits.push({ index: rs.index, resolve: waiting.resolve });
      }
      this.releaseReads(g);
      if (rd.softState) this.noteRole(g, rd.softState.role);
      if (rd.softState && rd.softState.role !== Role.Leader) this.failReadsOnLeaderLoss(g);
    }
    // 6. Advance.
    for (const [g, rd] of readies) g.core.advance(rd);
    for (const [g] of readies) this.maybeSnapshot(g);
  }

  /** Logs leadership changes of this node (an election it won, a leadership it lost). */
  private noteRole(g: Group, role: Role): void {
    const leading = role === Role.Leader;
    if (leading === g.leading) return;
    g.leading = leading;
    if (leading) {
      this.stats.leaderships++;
      this.opts.logger.info({ group: g.id, term: g.core.term }, 'leading group');
    } else {
      this.stats.stepDowns++;
      this.opts.logger.info({ group: g.id, term: g.core.term, leader: g.core.leader }, 'no longer leading group');
    }
  }

  private installSnapshot(g: Group, snap: Snapshot): void {
    if (g.encoding !== null) {
      // The leader's snapshot replaces the state being encoded: drop that encode (entries it held back follow).
      g.encoding = null;
      g.snapshotting = false;
    }
    g.sm.restore(snap.data);
    g.applied = snap.meta.index;
    snapshotAt(g, snap);
    this.stats.snapshotsInstalled++;
    // Proposals at or below the snapshot can no longer be matched to an outcome here.
    for (const [index, first] of g.proposals) {
      if (index <= snap.meta.index) {
        g.proposals.delete(index);
        for (let p: Pending | undefined = first; p !== undefined; p = p.earlier) p.reject(new HostError('TRYAGAIN', 'outcome unknown: the log was replaced by a snapshot'));
      }
    }
    if (snap.meta.term > g.appliedTerm) this.rejectOutranked(g, snap.meta.index, snap.meta.term);
    g.appliedTerm = snap.meta.term;
    this.applyDeferred(g);
  }

  /**
   * An entry of term `term` is committed at `index`: every proposal above it made in an older term can never commit,
   * so it is rejected (NOTLEADER: the caller may retry it elsewhere). Why: a committed entry is in the log of every
   * later leader, and terms never decrease along a log, so every entry after `index` in any later leader's log has
   * a term >= `term`. Without this, the proposals a deposed leader appended beyond the new leader's log waited until
   * the new leader's log grew that far, which on a quiet group meant the caller's whole timeout.
   * Runs once per term boundary of the applied log (new proposals always carry the proposer's current term, which
   * is already >= `term` here), so its scan of the pending proposals costs nothing in steady state.
   */
  private rejectOutranked(g: Group, index: number, term: number): void {
    for (const [i, first] of g.proposals) {
      if (i <= index) continue;
      let head: Pending | undefined;
      let tail: Pending | undefined;
      for (let p: Pending | undefined = first; p !== undefined; ) {
        const next: Pending | undefined = p.earlier;
        if (p.term < term) {
          p.reject(new HostError('NOTLEADER', 'leadership changed before the entry committed', g.core.leader));
        } else {
          // Kept: relink the survivors in their order.
          delete p.earlier;
          if (tail === undefined) head = p;
          else tail.earlier = p;
          tail = p;
        }
        p = next;
      }
      if (head === undefined) g.proposals.delete(i);
      else if (head !== first) g.proposals.set(i, head);
    }
  }

  private applyEntry(g: Group, e: Entry): void {
    if (e.index <= g.applied) return; // already covered by a snapshot
    if (g.encoding !== null || g.deferred.length > 0) {
      // A snapshot is being encoded in steps: the state must not change until it is done (runSnapshotSteps).
      const last = g.deferred.length > 0 ? g.deferred[g.deferred.length - 1]!.index : g.applied;
      if (e.index > last) g.deferred.push(e);
      return;
    }
    if (e.index !== g.applied + 1) {
      throw new Error(`group ${g.id}: applying entry ${e.index} after ${g.applied} would skip entries`);
    }
    let result: unknown = undefined;
    if (e.type === EntryType.Normal && e.data.length > 0) result = g.sm.apply(e);
    g.applied = e.index;
    g.sinceSnapshot++;
    g.bytesSinceSnapshot += e.data.length;
    this.stats.entriesApplied++;
    const first = g.proposals.get(e.index);
    if (first) {
      g.proposals.delete(e.index);
      // The committed entry at this index decides every proposal made for it: the one of its term succeeded, the
      // others can never commit (an index holds one committed entry), so they may safely be retried.
      for (let p: Pending | undefined = first; p !== undefined; p = p.earlier) {
        if (p.term === e.term) p.resolve(result);
        else p.reject(new HostError('NOTLEADER', 'leadership changed before the entry committed', g.core.leader));
      }
    }
    if (e.term > g.appliedTerm) this.rejectOutranked(g, e.index, e.term);
    g.appliedTerm = e.term;
  }

  private releaseReads(g: Group): void {
    if (g.readWaits.length === 0) return;
    const keep: Group['readWaits'] = [];
    for (const w of g.readWaits) (w.index <= g.applied ? w.resolve() : keep.push(w));
    g.readWaits = keep;
  }

  private failReadsOnLeaderLoss(g: Group): void {
    // ReadIndex requests sent by a leader that stepped down may never be answered: fail them so callers retry.
    if (g.core.role === Role.Leader) return;
    for (const r of g.reads.values()) r.reject(new HostError('TRYAGAIN', 'leadership changed during a read', g.core.leader));
    g.reads.clear();
  }

  /**
   * Takes a snapshot of `g` if its thresholds are reached (or `force`: see unpinOldestSegment) and none is in
   * progress; returns whether it did.
   */
  private maybeSnapshot(g: Group, force = false): boolean {
    const every = this.opts.snapshotEntries;
    if (every <= 0 || g.snapshotting) return false;
    if (!force) {
      if (g.sinceSnapshot < every) return false;
      const percent = this.opts.snapshotLogPercent ?? 0;
      if (percent > 0 && g.bytesSinceSnapshot * 100 < percent * g.snapshotBytes) return false;
    }
    g.snapshotting = true;
    const index = g.applied;
    const term = g.core.termAt(index);
    if (term < 0) {
      g.snapshotting = false;
      return false; // already compacted past it (a snapshot was installed meanwhile)
    }
    const meta: SnapshotMeta = { index, term, conf: g.core.confAt(index) };
    if (g.sm.snapshotSteps !== undefined) {
      g.encoding = { steps: g.sm.snapshotSteps(), meta, busyMs: 0, longestMs: 0, turns: 0 };
      this.runSnapshotSteps(g, g.encoding);
      return true;
    }
    const t0 = performance.now();
    const data = g.sm.snapshot();
    const ms = performance.now() - t0;
    this.snapshotEncoded(g, { meta, data }, ms, ms);
    return true;
  }

  /**
   * One turn's share of a snapshot encoded in steps: steps until SNAPSHOT_SLICE_MS have passed, then again in a later
   * turn (ticks, messages and other groups' rounds run in between), so a large state no longer holds the thread for
   * the whole encode. The group applies nothing meanwhile (applyEntry defers). If more than APPLY_DEFERRED_MAX
   * entries wait, the rest is encoded at once.
   */
  private runSnapshotSteps(g: Group, job: SnapshotJob): void {
    if (g.encoding !== job) return; // dropped (a snapshot from the leader was installed)
    if (this.stopped) {
      g.encoding = null;
      g.snapshotting = false;
      return;
    }
    const t0 = performance.now();
    const hurry = g.deferred.length >= APPLY_DEFERRED_MAX;
    let r: IteratorResult<void, Uint8Array>;
    do r = job.steps.next();
    while (r.done !== true && (hurry || performance.now() - t0 < SNAPSHOT_SLICE_MS));
    const ms = performance.now() - t0;
    job.busyMs += ms;
    job.turns++;
    if (ms > job.longestMs) job.longestMs = ms;
    if (r.done !== true) {
      setImmediate(() => this.runSnapshotSteps(g, job));
      return;
    }
    g.encoding = null;
    this.stats.snapshotEncodeTurns += job.turns;
    this.snapshotEncoded(g, { meta: job.meta, data: r.value }, job.busyMs, job.longestMs);
    this.applyDeferred(g);
    this.schedule();
  }

  /** Applies the entries held back while a snapshot was encoded, and answers the reads waiting for them. */
  private applyDeferred(g: Group): void {
    if (g.deferred.length === 0) return;
    const list = g.deferred;
    g.deferred = [];
    for (const e of list) this.applyEntry(g, e);
    this.releaseReads(g);
  }

  /** A snapshot of `g` is encoded (it took `busyMs` of this thread, at most `longestMs` at once): save it. */
  private snapshotEncoded(g: Group, snap: Snapshot, busyMs: number, longestMs: number): void {
    this.stats.snapshotEncodeMs = busyMs;
    if (longestMs > this.stats.snapshotEncodeMaxMs) this.stats.snapshotEncodeMaxMs = longestMs;
    if (longestMs >= this.stallWarnMs) {
      this.opts.logger.warn(
        { group: g.id, ms: Math.round(longestMs), bytes: snap.data.length, electionTimeoutMs: 2 * this.stallWarnMs },
        'snapshot encode held the thread (no heartbeats from it meanwhile)',
      );
    }
    snapshotAt(g, snap);
    void (async () => {
      try {
        await this.opts.snapshots.save(g.id, snap);
        this.opts.wal.markSnapshot(g.id, snap.meta);
        await this.opts.wal.sync();
        g.pendingCompact = snap;
        this.stats.snapshotsTaken++;
        this.schedule();
      } catch (err) {
        this.opts.logger.error({ err, group: g.id }, 'snapshot failed');
      } finally {
        g.snapshotting = false;
      }
    })();
  }
}

/** `g`'s state is now that of `snap` (taken or installed): the snapshot thresholds count from here. */
function snapshotAt(g: Group, snap: Snapshot): void {
  g.sinceSnapshot = 0;
  g.bytesSinceSnapshot = 0;
  g.snapshotBytes = snap.data.length;
}
