/**
 * RaftCore: the pure Raft state machine of one group (etcd-io/raft's RawNode model, written from the papers).
 *
 * What it owns: the in-memory log (RaftLog), term/vote/commit, the role, per-member Progress (leader), pending
 * ReadIndex rounds, snapshot streaming, leadership transfer and the membership configuration. It does no I/O:
 * inputs are tick(), step(msg), propose(), readIndex(), ...; outputs come out of ready() and are acknowledged
 * with advance(). The host persists `entries`/`hardState`/`snapshot` BEFORE sending `messages`, then applies
 * `committed`, then calls advance(). Because every message leaves through a Ready whose state is durable first,
 * a vote or an acknowledgement is never sent for state that could be lost.
 *
 * Roles:
 *
 *                  timeout (preVote)           quorum of pre-votes
 *   Follower  ---------------------->  PreCandidate  ----------------->  Candidate  --(quorum of votes)--> Leader
 *      ^   \ timeout (no preVote) / TimeoutNow -------------------------^    |                               |
 *      |                                                                     | timeout: new term            |
 *      +------------ higher term, or a leader of the current term ----------+-------------------------------+
 *                    (Leader also steps down on CheckQuorum failure or when its own removal commits)
 *
 * Invariants (asserted; a violation throws RaftInvariantError):
 *   - at most one vote per term (vote only changes when term changes or from NONE);
 *   - commit <= lastIndex, commit never decreases, committed entries are never truncated;
 *   - a leader never truncates its log; it commits only entries of its own term by counting (section 5.4.2);
 *   - only one Ready outstanding; advance() must receive exactly that Ready.
 *
 * Membership rule (see docs/raft.md): a configuration takes effect as soon as its ConfChange entry is APPENDED
 * to a node's log (the paper's rule for single-server changes), and is reverted if that entry is truncated.
 * Each ConfChange entry carries the full resulting configuration. A leader appends a new change only when the
 * previous one is committed and it has committed an entry of its own term (the fix for the single-server
 * change bug found after the thesis).
 */
import {
  EntryType,
  MessageType,
  NO_NODE,
  Role,
  type AppendMessage,
  type AppendRespMessage,
  type ConfChange,
  type ConfState,
  type Entry,
  type GroupId,
  type HardState,
  type HeartbeatMessage,
  type HeartbeatRespMessage,
  type Message,
  type NodeId,
  type ProposeResult,
  type RaftBootState,
  type RaftConfig,
  type RaftStatus,
  type ReadIndexMessage,
  type ReadIndexRespMessage,
  type ReadState,
  type Ready,
  type SnapshotMessage,
  type SnapshotRespMessage,
  type Snapshot,
  type SnapshotMeta,
  type SoftState,
  type TimeoutNowMessage,
  type VoteMessage,
  type VoteRespMessage,
} from './types.js';
import type { Rng } from '../util/rng.js';
import { RaftConfigError, RaftInvariantError } from './errors.js';
import { RaftLog } from './log.js';
import { Progress, ProgressState, PROGRESS_STATE_NAMES } from './progress.js';
import { ReadOnlyQueue, type PendingRead } from './read-only.js';
import {
  applyConfChange,
  confEquals,
  decodeConfChange,
  encodeConfChange,
  normalizeConf,
  validateConfChange,
} from './conf-change.js';

export { encodeConfChange, decodeConfChange } from './conf-change.js';
export type { ConfChangeRecord } from './conf-change.js';
export { RaftInvariantError, RaftConfigError } from './errors.js';

/** Most InstallSnapshot chunks in flight to one follower (also bounded by inflightMsgsMax). */
const SNAPSHOT_CHUNKS_INFLIGHT_MAX = 4;
/** Heartbeat responses without snapshot progress before the unacknowledged chunks are sent again. */
const SNAPSHOT_STALL_HEARTBEATS = 2;

const EMPTY_DATA = new Uint8Array(0);

interface ConfPoint {
  index: number;
  conf: ConfState;
}

/** A snapshot being received in chunks (from the leader of `term`). */
interface SnapshotReceipt {
  term: number;
  meta: SnapshotMeta;
  chunks: Uint8Array[];
  bytes: number;
}

export function validateRaftConfig(c: RaftConfig): void {
  const int = (name: keyof RaftConfig, v: number, min: number): void => {
    if (!Number.isInteger(v) || v < min) throw new RaftConfigError(name, `must be an integer >= ${min}, got ${v}`);
  };
  int('id', c.id, 1);
  int('group', c.group, 0);
  int('heartbeatTicks', c.heartbeatTicks, 1);
  int('electionTicksMin', c.electionTicksMin, c.heartbeatTicks + 1);
  int('inflightMsgsMax', c.inflightMsgsMax, 1);
  int('appendEntriesMax', c.appendEntriesMax, 1);
  int('appendBytesMax', c.appendBytesMax, 1);
  int('uncommittedBytesMax', c.uncommittedBytesMax, 1);
  int('snapshotChunkBytes', c.snapshotChunkBytes, 1);
  if (c.readMode !== 'safe' && c.readMode !== 'lease') {
    throw new RaftConfigError('readMode', `must be 'safe' or 'lease', got ${String(c.readMode)}`);
  }
  if (c.readMode === 'lease' && !c.checkQuorum) {
    throw new RaftConfigError('readMode', `'lease' needs checkQuorum: true (the lease is the CheckQuorum round)`);
  }
}

export class RaftCore {
  readonly id: NodeId;
  readonly group: GroupId;
  private readonly cfg: RaftConfig;
  private readonly rng: Rng;

  private _term = 0;
  private vote: NodeId = NO_NODE;
  private lead: NodeId = NO_NODE;
  private _role: Role = Role.Follower;
  private readonly log: RaftLog;

  /** Configuration history: [0] is the base (snapshot or initial conf), then one point per ConfChange entry. */
  private confs: ConfPoint[];
  private conf: ConfState;
  /** Leader: progress of every member (itself included when it is a member). */
  private prs = new Map<NodeId, Progress>();
  /** Candidate: votes received (true = granted). */
  private votes = new Map<NodeId, boolean>();

  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;

  private leadTransferee: NodeId = NO_NODE;
  /** Leader: index of the last ConfChange entry in its log; a new change waits until it is committed. */
  private pendingConfIndex = 0;
  /** Leader: bytes of proposals not yet committed (flow control). */
  private uncommittedBytes = 0;
  private readonly readOnly = new ReadOnlyQueue();
  private readonly releasedReads: PendingRead[] = [];

  /** Latest snapshot (from boot, compact() or a leader), sent to followers that are too far behind. */
  private snapshot: Snapshot | null;
  /** A snapshot received from the leader, to hand to the host in the next Ready. */
  private pendingSnapshot: Snapshot | null = null;
  private receipt: SnapshotReceipt | null = null;

  /** Leader: entries were appended (or commit moved) and followers should be sent appends at the next ready(). */
  private bcastWanted = false;
  private commitBcastWanted = false;

  private msgs: Message[] = [];
  private readStates: ReadState[] = [];
  private outstanding: Ready | null = null;
  private prevHard: HardState;
  private prevSoft: SoftState;
  /** Scratch array for quorum computations (no allocation per AppendResp). */
  private scratch: number[] = [];

  constructor(config: RaftConfig, boot: RaftBootState, rng: Rng) {
    validateRaftConfig(config);
    this.cfg = { ...config };
    this.id = config.id;
    this.group = config.group;
    this.rng = rng;

    const snap = boot.snapshot;
    const snapIndex = snap ? snap.meta.index : 0;
    this.log = new RaftLog(snapIndex, snap ? snap.meta.term : 0);
    this.snapshot = snap;
    let expected = snapIndex + 1;
    for (const e of boot.entries) {
      if (e.index !== expected) {
        throw new RaftInvariantError(`boot: entry ${e.index} where ${expected} was expected (entries not contiguous)`);
      }
      this.log.push(e);
      expected++;
    }
    this.log.unstable = this.log.lastIndex() + 1;
    const hs = boot.hardState;
    if (hs.commit > this.log.lastIndex()) {
      throw new RaftInvariantError(`boot: commit ${hs.commit} beyond last index ${this.log.lastIndex()}`);
    }
    this.log.committed = Math.max(hs.commit, snapIndex);
    const applied = Math.max(boot.applied, snapIndex);
    if (applied > this.log.committed) {
      throw new RaftInvariantError(`boot: applied ${applied} beyond commit ${this.log.committed}`);
    }
    this.log.applied = applied;
    this.log.applying = applied;
    this._term = hs.term;
    this.vote = hs.vote;
    if (this.log.lastTerm() > hs.term) {
      throw new RaftInvariantError(`boot: last entry term ${this.log.lastTerm()} above hard state term ${hs.term}`);
    }

    this.confs = [{ index: snapIndex, conf: normalizeConf(snap ? snap.meta.conf : boot.initialConf) }];
    for (const e of boot.entries) {
      if (e.type === EntryType.ConfChange) this.confs.push({ index: e.index, conf: decodeConfChange(e.data).conf });
    }
    this.conf = (this.confs[this.confs.length - 1] as ConfPoint).conf;

    this.prevHard = { term: hs.term, vote: hs.vote, commit: hs.commit };
    this.becomeFollower(this._term, NO_NODE);
    this.prevSoft = { leader: NO_NODE, role: Role.Follower };
  }

  // ------------------------------------------------------------------------------------------------------------
  // Accessors
  // ------------------------------------------------------------------------------------------------------------

  get term(): number {
    return this._term;
  }
  get leader(): NodeId {
    return this.lead;
  }
  get role(): Role {
    return this._role;
  }
  get commit(): number {
    return this.log.committed;
  }
  get applied(): number {
    return this.log.applied;
  }
  get lastIndex(): number {
    return this.log.lastIndex();
  }
  get firstIndex(): number {
    return this.log.firstIndex();
  }

  /** The current configuration (takes effect when appended; see the file comment). */
  confState(): ConfState {
    return { voters: [...this.conf.voters], learners: [...this.conf.learners] };
  }

  /** The configuration as of log index i (i >= the snapshot index); what a snapshot at i must record. */
  confAt(i: number): ConfState {
    for (let k = this.confs.length - 1; k >= 0; k--) {
      const p = this.confs[k] as ConfPoint;
      if (p.index <= i) return { voters: [...p.conf.voters], learners: [...p.conf.learners] };
    }
    throw new RaftInvariantError(`confAt(${i}): index below the snapshot ${this.log.snapIndex}`);
  }

  /** In-memory log slice [lo, hi) (tests, simulator invariant checks). */
  entries(lo: number, hi: number): Entry[] {
    return this.log.slice(lo, hi);
  }

  /** Term of entry i, or -1 if it is not in memory (compacted or beyond the end). */
  termAt(i: number): number {
    return this.log.term(i);
  }

  status(): RaftStatus {
    const progress: RaftStatus['progress'] = {};
    if (this._role === Role.Leader) {
      for (const pr of this.prs.values()) {
        progress[pr.id] = { match: pr.match, next: pr.next, state: PROGRESS_STATE_NAMES[pr.state] };
      }
    }
    return {
      id: this.id,
      group: this.group,
      role: this._role,
      term: this._term,
      vote: this.vote,
      leader: this.lead,
      commit: this.log.committed,
      applied: this.log.applied,
      firstIndex: this.log.firstIndex(),
      lastIndex: this.log.lastIndex(),
      conf: this.confState(),
      progress,
    };
  }

  /** Leader only: the node a leadership transfer is under way to, or NO_NODE. */
  get transferee(): NodeId {
    return this.leadTransferee;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Inputs
  // ------------------------------------------------------------------------------------------------------------

  tick(): void {
    if (this._role === Role.Leader) this.tickHeartbeat();
    else this.tickElection();
  }

  campaign(): void {
    this.hup(false);
  }

  propose(data: Uint8Array): ProposeResult {
    const refused = this.refuseProposal(data.byteLength);
    if (refused !== null) return refused;
    const e = this.appendOwn(EntryType.Normal, data);
    this.uncommittedBytes += data.byteLength;
    return { ok: true, index: e.index, term: e.term };
  }

  proposeConfChange(change: ConfChange): ProposeResult {
    const refused = this.refuseProposal(0);
    if (refused !== null) return refused;
    if (this.pendingConfIndex > this.log.committed || this.log.term(this.log.committed) !== this._term) {
      return { ok: false, code: 'CONFCHANGE_PENDING' };
    }
    if (validateConfChange(this.conf, change) !== null) return { ok: false, code: 'INVALID' };
    const next = applyConfChange(this.conf, change);
    const e = this.appendOwn(EntryType.ConfChange, encodeConfChange(change, next));
    return { ok: true, index: e.index, term: e.term };
  }

  readIndex(ctx: Uint8Array): boolean {
    if (this._role === Role.Leader) return this.handleReadIndex(ctx, this.id);
    if (this.lead === NO_NODE) return false;
    const m: ReadIndexMessage = {
      type: MessageType.ReadIndex,
      group: this.group,
      from: this.id,
      to: this.lead,
      term: this._term,
      ctx,
    };
    this.msgs.push(m);
    return true;
  }

  transferLeader(to: NodeId): void {
    if (this._role !== Role.Leader) return;
    if (to === this.id || !this.conf.voters.includes(to)) return;
    if (this.leadTransferee === to) return;
    this.leadTransferee = to;
    // The transfer must finish within one election timeout (tickHeartbeat aborts it).
    this.electionElapsed = 0;
    const pr = this.prs.get(to);
    if (pr === undefined) return;
    if (pr.match === this.log.lastIndex()) this.sendTimeoutNow(to);
    else this.sendAppend(pr, true);
  }

  reportUnreachable(id: NodeId): void {
    if (this._role !== Role.Leader) return;
    const pr = this.prs.get(id);
    if (pr === undefined || id === this.id) return;
    // Only a pipelining follower goes back to probing (etcd's rule). A snapshot transfer must not restart from
    // byte 0 on every lost frame (it would never finish on a lossy link): its own stall timer resends from the
    // last acknowledged offset. A probing follower already has at most one append in flight.
    if (pr.state === ProgressState.Replicate) pr.becomeProbe();
  }

  /**
   * The host took a snapshot of its state machine at snapshot.meta.index (<= applied): drop the log up to it and
   * keep the snapshot for lagging followers. meta.term and meta.conf must be the log's (see confAt()).
   */
  compact(snapshot: Snapshot): void {
    const { index, term, conf } = snapshot.meta;
    if (index <= this.log.snapIndex) return;
    if (index > this.log.applied) {
      throw new RaftInvariantError(`compact(${index}) beyond applied ${this.log.applied}`);
    }
    const t = this.log.term(index);
    if (t !== term) throw new RaftInvariantError(`compact(${index}): snapshot term ${term}, log term ${t}`);
    const want = this.confAt(index);
    if (!confEquals(conf, want)) {
      throw new RaftInvariantError(
        `compact(${index}): snapshot conf ${JSON.stringify(conf)} differs from the log's ${JSON.stringify(want)}`,
      );
    }
    this.log.compact(index, term);
    this.snapshot = { meta: { index, term, conf: want }, data: snapshot.data };
    // Keep the latest configuration point at or below the snapshot as the new base.
    let k = 0;
    while (k + 1 < this.confs.length && (this.confs[k + 1] as ConfPoint).index <= index) k++;
    this.confs = this.confs.slice(k);
    (this.confs[0] as ConfPoint).index = index;
  }

  step(m: Message): void {
    if (m.group !== this.group) return;
    if (m.to !== this.id) {
      throw new RaftInvariantError(`node ${this.id} group ${this.group}: got a message for node ${m.to}`);
    }
    if (m.from === NO_NODE || m.from === this.id) return;

    if (m.term > this._term) {
      if (m.type === MessageType.Vote || m.type === MessageType.PreVote) {
        // Leader lease (thesis 4.2.3 / 6.2): a node that heard from a live leader within the minimum election
        // timeout ignores (pre)vote requests, so a rejoining node cannot disrupt a healthy leader. A transfer
        // (TimeoutNow) campaign overrides it.
        const inLease =
          (this.cfg.checkQuorum || this.cfg.preVote) &&
          this.lead !== NO_NODE &&
          this.electionElapsed < this.cfg.electionTicksMin;
        if (inLease && !m.transfer) return;
      }
      if (m.type === MessageType.PreVote) {
        // Never change term on a pre-vote request.
      } else if (m.type === MessageType.PreVoteResp && !m.reject) {
        // A granted pre-vote carries the term we would campaign for; the term moves when the real election starts.
      } else if (
        m.type === MessageType.Append ||
        m.type === MessageType.Heartbeat ||
        m.type === MessageType.Snapshot
      ) {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, NO_NODE);
      }
    } else if (m.term < this._term) {
      if ((this.cfg.checkQuorum || this.cfg.preVote) && (m.type === MessageType.Heartbeat || m.type === MessageType.Append)) {
        // A stale leader (or a node that partitioned away and was overtaken) learns the newer term from this.
        this.send<AppendRespMessage>({
          type: MessageType.AppendResp,
          to: m.from,
          term: this._term,
          index: 0,
          reject: false,
          rejectHint: 0,
          hintTerm: 0,
        });
      } else if (m.type === MessageType.PreVote) {
        this.send<VoteRespMessage>({ type: MessageType.PreVoteResp, to: m.from, term: this._term, reject: true });
      } else if (m.type === MessageType.Vote) {
        // Paper 5.1: a stale RequestVote is rejected with our term, so the candidate catches up. Ignoring it (as
        // etcd does) can livelock without PreVote: a node that keeps campaigning one term ahead (e.g. under an
        // uncommitted configuration that leaves out the other candidate) is never overtaken (simulator seed 48186).
        this.send<VoteRespMessage>({ type: MessageType.VoteResp, to: m.from, term: this._term, reject: true });
      }
      return;
    }

    if (m.type === MessageType.Vote || m.type === MessageType.PreVote) {
      this.handleVoteRequest(m);
      return;
    }
    switch (this._role) {
      case Role.Leader:
        this.stepLeader(m);
        break;
      case Role.Candidate:
      case Role.PreCandidate:
        this.stepCandidate(m);
        break;
      default:
        this.stepFollower(m);
    }
  }

  // ------------------------------------------------------------------------------------------------------------
  // Ready / advance
  // ------------------------------------------------------------------------------------------------------------

  hasReady(): boolean {
    if (this.outstanding !== null) return false;
    this.flush();
    return (
      this.msgs.length > 0 ||
      this.log.hasUnstable() ||
      this.log.hasNextCommitted() ||
      this.pendingSnapshot !== null ||
      this.readStates.length > 0 ||
      this.hardChanged() ||
      this.lead !== this.prevSoft.leader ||
      this._role !== this.prevSoft.role
    );
  }

  ready(): Ready {
    if (this.outstanding !== null) throw new RaftInvariantError('ready() while a Ready is outstanding');
    this.flush();
    const softState =
      this.lead !== this.prevSoft.leader || this._role !== this.prevSoft.role
        ? { leader: this.lead, role: this._role }
        : null;
    const hardState = this.hardChanged()
      ? { term: this._term, vote: this.vote, commit: this.log.committed }
      : null;
    const snapshot = this.pendingSnapshot;
    this.pendingSnapshot = null;
    const rd: Ready = {
      softState,
      hardState,
      entries: this.log.takeUnstable(),
      snapshot,
      messages: this.msgs,
      committed: this.log.takeCommitted(),
      readStates: this.readStates,
    };
    if (softState !== null) this.prevSoft = softState;
    if (hardState !== null) this.prevHard = hardState;
    this.msgs = [];
    this.readStates = [];
    this.outstanding = rd;
    return rd;
  }

  advance(rd: Ready): void {
    if (this.outstanding === null) throw new RaftInvariantError('advance() without an outstanding Ready');
    if (rd !== this.outstanding) throw new RaftInvariantError('advance() with a Ready that is not the outstanding one');
    this.outstanding = null;
    let applied = this.log.applied;
    if (rd.snapshot !== null && rd.snapshot.meta.index > applied) applied = rd.snapshot.meta.index;
    const lastCommitted = rd.committed[rd.committed.length - 1];
    if (lastCommitted !== undefined && lastCommitted.index > applied) applied = lastCommitted.index;
    if (applied > this.log.applied) this.log.appliedTo(applied);
  }

  private hardChanged(): boolean {
    const h = this.prevHard;
    return h.term !== this._term || h.vote !== this.vote || h.commit !== this.log.committed;
  }

  /** Leader: turn deferred broadcasts into messages (batches every proposal since the last Ready). */
  private flush(): void {
    if (this._role !== Role.Leader) {
      this.bcastWanted = false;
      this.commitBcastWanted = false;
      return;
    }
    if (this.readOnly.wantsRound()) this.bcastHeartbeat();
    if (this.bcastWanted || this.commitBcastWanted) {
      const withCommit = this.commitBcastWanted;
      this.bcastWanted = false;
      this.commitBcastWanted = false;
      for (const pr of this.prs.values()) {
        if (pr.id === this.id) continue;
        let sent = this.sendAppend(pr, withCommit);
        while (sent) sent = this.sendAppend(pr, false);
      }
    }
  }

  // ------------------------------------------------------------------------------------------------------------
  // Role changes
  // ------------------------------------------------------------------------------------------------------------

  private reset(term: number): void {
    if (term !== this._term) {
      if (term < this._term) throw new RaftInvariantError(`term going backwards ${this._term} -> ${term}`);
      this._term = term;
      this.vote = NO_NODE;
      this.receipt = null; // a partial snapshot from an older term's leader can never be completed
    }
    this.lead = NO_NODE;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.rng.int(this.cfg.electionTicksMin, 2 * this.cfg.electionTicksMin);
    this.leadTransferee = NO_NODE;
    this.votes.clear();
    this.prs.clear();
    this.pendingConfIndex = 0;
    this.uncommittedBytes = 0;
    this.readOnly.clear();
    this.bcastWanted = false;
    this.commitBcastWanted = false;
  }

  private becomeFollower(term: number, lead: NodeId): void {
    this.reset(term);
    this._role = Role.Follower;
    this.lead = lead;
  }

  private becomePreCandidate(): void {
    if (this._role === Role.Leader) throw new RaftInvariantError('leader cannot become pre-candidate');
    // No term change and no vote: a pre-candidate disturbs nobody (thesis 9.6).
    this.votes.clear();
    this.lead = NO_NODE;
    this._role = Role.PreCandidate;
  }

  private becomeCandidate(): void {
    if (this._role === Role.Leader) throw new RaftInvariantError('leader cannot become candidate');
    this.reset(this._term + 1);
    this.vote = this.id;
    this._role = Role.Candidate;
  }

  private becomeLeader(): void {
    if (this._role !== Role.Candidate) throw new RaftInvariantError(`becomeLeader from role ${this._role}`);
    this.reset(this._term);
    this._role = Role.Leader;
    this.lead = this.id;
    const last = this.log.lastIndex();
    for (const v of this.conf.voters) this.addProgress(v, last + 1, false);
    for (const l of this.conf.learners) this.addProgress(l, last + 1, true);
    const self = this.prs.get(this.id);
    if (self !== undefined) {
      self.match = last;
      self.becomeReplicate();
      self.recentActive = true;
    }
    this.pendingConfIndex = (this.confs[this.confs.length - 1] as ConfPoint).index;
    // The no-op of the new term: committing it commits every earlier entry (section 5.4.2 / 8).
    this.appendOwn(EntryType.Noop, EMPTY_DATA);
  }

  private addProgress(id: NodeId, next: number, learner: boolean): Progress {
    const pr = new Progress(id, next, this.cfg.inflightMsgsMax, learner);
    pr.recentActive = true;
    this.prs.set(id, pr);
    return pr;
  }

  private isVoter(id: NodeId): boolean {
    return this.conf.voters.includes(id);
  }

  private quorum(): number {
    return (this.conf.voters.length >> 1) + 1;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Elections (section 5.2, PreVote thesis 9.6, CheckQuorum thesis 6.2)
  // ------------------------------------------------------------------------------------------------------------

  private tickElection(): void {
    this.electionElapsed++;
    if (this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      if (this.isVoter(this.id)) this.hup(false);
      else {
        // A non-voter (in its own view, which may be stale: it may have missed its promotion) does not campaign,
        // but it has not heard from its leader for a whole election timeout: forget it, so the leader lease in
        // step() no longer drops vote requests. Otherwise a node that missed its promotion would ignore every
        // candidate forever, and a configuration that needs its vote could never elect a leader.
        this.lead = NO_NODE;
      }
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.cfg.electionTicksMin) {
      this.electionElapsed = 0;
      if (this.cfg.checkQuorum) {
        if (!this.quorumActive()) {
          this.becomeFollower(this._term, NO_NODE);
          return;
        }
      }
      if (this.leadTransferee !== NO_NODE) this.leadTransferee = NO_NODE; // transfer timed out: abort
    }
    if (this.heartbeatElapsed >= this.cfg.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.bcastHeartbeat();
    }
  }

  /** CheckQuorum: did a quorum of voters (self included) talk to us since the last check? Resets the marks. */
  private quorumActive(): boolean {
    let active = 0;
    for (const pr of this.prs.values()) {
      if (pr.id === this.id) {
        if (!pr.learner) active++;
        continue;
      }
      if (pr.recentActive && !pr.learner) active++;
      pr.recentActive = false;
    }
    return active >= this.quorum();
  }

  /** Like quorumActive() but without resetting the marks. */
  private quorumRecentlyActive(): boolean {
    let active = 0;
    for (const pr of this.prs.values()) {
      if (!pr.learner && (pr.id === this.id || pr.recentActive)) active++;
    }
    return active >= this.quorum();
  }

  private hup(transfer: boolean): void {
    if (this._role === Role.Leader) return;
    if (!this.isVoter(this.id)) return;
    if (this.cfg.preVote && !transfer) this.campaignRound(true, false);
    else this.campaignRound(false, transfer);
  }

  private campaignRound(pre: boolean, transfer: boolean): void {
    let voteTerm: number;
    if (pre) {
      this.becomePreCandidate();
      voteTerm = this._term + 1;
    } else {
      this.becomeCandidate();
      voteTerm = this._term;
    }
    this.votes.set(this.id, true);
    if (this.tally() === 1) {
      // Single voter: won at once.
      if (pre) this.campaignRound(false, transfer);
      else this.becomeLeader();
      return;
    }
    const lastIndex = this.log.lastIndex();
    const lastTerm = this.log.lastTerm();
    for (const v of this.conf.voters) {
      if (v === this.id) continue;
      this.send<VoteMessage>({
        type: pre ? MessageType.PreVote : MessageType.Vote,
        to: v,
        term: voteTerm,
        lastIndex,
        lastTerm,
        transfer,
      });
    }
  }

  /** 1 = won, -1 = lost, 0 = pending. */
  private tally(): number {
    let granted = 0;
    let rejected = 0;
    for (const v of this.conf.voters) {
      const r = this.votes.get(v);
      if (r === true) granted++;
      else if (r === false) rejected++;
    }
    const q = this.quorum();
    if (granted >= q) return 1;
    if (rejected > this.conf.voters.length - q) return -1;
    return 0;
  }

  private handleVoteRequest(m: VoteMessage): void {
    const pre = m.type === MessageType.PreVote;
    // We may vote for m.from if we already did in this term, or if we have neither voted nor a leader in this
    // term; a pre-vote for a future term is always possible (it changes nothing here).
    const canVote =
      this.vote === m.from || (this.vote === NO_NODE && this.lead === NO_NODE) || (pre && m.term > this._term);
    const upToDate =
      m.lastTerm > this.log.lastTerm() || (m.lastTerm === this.log.lastTerm() && m.lastIndex >= this.log.lastIndex());
    const respType = pre ? MessageType.PreVoteResp : MessageType.VoteResp;
    if (canVote && upToDate) {
      // A granted pre-vote answers with the proposed term (the pre-candidate counts it); a vote with ours (equal).
      this.send<VoteRespMessage>({ type: respType, to: m.from, term: m.term, reject: false });
      if (!pre) {
        if (this.vote !== NO_NODE && this.vote !== m.from) {
          throw new RaftInvariantError(`node ${this.id} would vote twice in term ${this._term}`);
        }
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.send<VoteRespMessage>({ type: respType, to: m.from, term: this._term, reject: true });
    }
  }

  private stepCandidate(m: Message): void {
    switch (m.type) {
      case MessageType.Append:
      case MessageType.Heartbeat:
      case MessageType.Snapshot:
        // A leader of our term exists (m.term === term here).
        this.becomeFollower(m.term, m.from);
        this.stepFollower(m);
        return;
      case MessageType.PreVoteResp:
      case MessageType.VoteResp: {
        const mine = this._role === Role.PreCandidate ? MessageType.PreVoteResp : MessageType.VoteResp;
        if (m.type !== mine) return;
        if (!this.votes.has(m.from)) this.votes.set(m.from, !m.reject);
        const r = this.tally();
        if (r === 1) {
          if (this._role === Role.PreCandidate) this.campaignRound(false, false);
          else this.becomeLeader();
        } else if (r === -1) {
          this.becomeFollower(this._term, NO_NODE);
        }
        return;
      }
      case MessageType.ReadIndexResp:
        this.handleReadIndexResp(m);
        return;
      default:
        return; // TimeoutNow, ReadIndex, responses meant for a leader: ignored
    }
  }

  // ------------------------------------------------------------------------------------------------------------
  // Follower
  // ------------------------------------------------------------------------------------------------------------

  private stepFollower(m: Message): void {
    switch (m.type) {
      case MessageType.Append:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppend(m);
        return;
      case MessageType.Heartbeat:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case MessageType.Snapshot:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshotChunk(m);
        return;
      case MessageType.TimeoutNow:
        // Leadership transfer: campaign at once, skipping PreVote, overriding the voters' lease.
        this.hup(true);
        return;
      case MessageType.ReadIndexResp:
        this.handleReadIndexResp(m);
        return;
      default:
        return;
    }
  }

  private handleAppend(m: AppendMessage): void {
    const log = this.log;
    let prevIndex = m.prevIndex;
    let prevTerm = m.prevTerm;
    let from = 0;
    const ents = m.entries;
    if (prevIndex < log.committed) {
      // Entries at or below our commit index match the leader's already (Leader Completeness); skip them.
      while (from < ents.length && (ents[from] as Entry).index <= log.committed) from++;
      if (from === ents.length) {
        this.sendAppendResp(m.from, log.committed);
        return;
      }
      // Safety check: whatever the message holds at or below our commit index must equal our log.
      for (let k = 0; k < from; k++) {
        const e = ents[k] as Entry;
        const t = log.term(e.index);
        if (t >= 0 && t !== e.term) {
          throw new RaftInvariantError(
            `append from ${m.from}: entry ${e.index} has term ${e.term}, our committed entry has term ${t}`,
          );
        }
      }
      prevIndex = (ents[from] as Entry).index - 1;
      prevTerm = log.term(prevIndex);
      if (prevIndex < log.committed || prevTerm < 0) {
        throw new RaftInvariantError(`append: cannot realign at ${prevIndex} (committed ${log.committed})`);
      }
    }
    if (!log.matchTerm(prevIndex, prevTerm)) {
      // Reject with a hint: the last index that may match (etcd's findConflictByTerm), so the leader skips a whole
      // conflicting term (or our missing tail) in one round trip.
      const hintIndex = log.findConflictByTerm(Math.min(prevIndex, log.lastIndex()), prevTerm);
      const hintTerm = Math.max(log.term(hintIndex), 0);
      this.send<AppendRespMessage>({
        type: MessageType.AppendResp,
        to: m.from,
        term: this._term,
        index: prevIndex,
        reject: true,
        rejectHint: hintIndex,
        hintTerm,
      });
      return;
    }
    // Find the first entry that is new or conflicting (usually the first: a plain append at the end).
    const last = log.lastIndex();
    let k = from;
    while (k < ents.length) {
      const e = ents[k] as Entry;
      if (e.index > last) break;
      if (log.term(e.index) !== e.term) break;
      k++;
    }
    if (k < ents.length) {
      const e = ents[k] as Entry;
      if (e.index <= last) this.truncateConfs(e.index);
      log.appendTruncating(ents, k);
      for (let j = k; j < ents.length; j++) {
        const x = ents[j] as Entry;
        if (x.type === EntryType.ConfChange) this.adoptConf(x);
      }
    }
    const lastNew = prevIndex + (ents.length - from);
    log.commitTo(Math.min(m.commit, lastNew));
    this.sendAppendResp(m.from, lastNew);
  }

  private sendAppendResp(to: NodeId, index: number): void {
    this.send<AppendRespMessage>({
      type: MessageType.AppendResp,
      to,
      term: this._term,
      index,
      reject: false,
      rejectHint: 0,
      hintTerm: 0,
    });
  }

  private handleHeartbeat(m: HeartbeatMessage): void {
    this.log.commitTo(m.commit);
    this.send<HeartbeatRespMessage>({ type: MessageType.HeartbeatResp, to: m.from, term: this._term, ctx: m.ctx });
  }

  /**
   * Follower: one InstallSnapshot chunk. The receipt is keyed by (leader term, snapshot index, snapshot term), so
   * chunks of different transfers never mix, and it only grows: every answer carries the number of bytes we
   * actually hold (the offset we need next), whatever chunk it answers. Stale, duplicated or reordered chunks
   * are therefore harmless: a chunk we already hold (offset 0 included) is re-acknowledged with our real offset,
   * a chunk beyond it is rejected with our real offset, and the leader resumes from there (handleSnapshotResp).
   */
  private handleSnapshotChunk(m: SnapshotMessage): void {
    const reply = (offset: number, index: number, reject: boolean): void => {
      this.send<SnapshotRespMessage>({ type: MessageType.SnapshotResp, to: m.from, term: this._term, offset, index, reject });
    };
    const meta = m.meta;
    if (meta.index <= this.log.committed) {
      // We already hold (and committed) everything it covers: a late chunk of a snapshot we installed, or one
      // the leader sent before learning how far we are. Our committed prefix matches the leader's log.
      if (this.receipt !== null && this.receipt.meta.index <= this.log.committed) this.receipt = null;
      reply(0, this.log.committed, false);
      return;
    }
    let r = this.receipt;
    const same = r !== null && r.term === m.term && r.meta.index === meta.index && r.meta.term === meta.term;
    if (!same && r !== null && r.term === m.term && r.meta.index > meta.index) {
      // A leader streams ever newer snapshots within its term: this chunk is a late one of an earlier transfer.
      // Dropping it (as if lost) keeps it from replacing the transfer in progress or confusing the leader.
      return;
    }
    if (!same) {
      if (m.offset !== 0) {
        reply(0, 0, true); // a transfer we do not have (restarted, or its first chunk is late or lost)
        return;
      }
      r = this.receipt = { term: m.term, meta, chunks: [], bytes: 0 };
    }
    const rc = r as SnapshotReceipt;
    const end = m.offset + m.data.byteLength;
    if (m.offset > rc.bytes) {
      reply(rc.bytes, 0, true); // gap: a chunk before it was lost or is late
      return;
    }
    if (end < rc.bytes || (end === rc.bytes && !m.done)) {
      reply(rc.bytes, 0, false); // duplicate (or stale): we hold all of it already
      return;
    }
    // New bytes from rc.bytes to end (chunks from one leader are aligned, but do not rely on it).
    if (end > rc.bytes) {
      rc.chunks.push(m.offset === rc.bytes ? m.data : m.data.subarray(rc.bytes - m.offset));
      rc.bytes = end;
    }
    if (!m.done) {
      reply(rc.bytes, 0, false);
      return;
    }
    this.receipt = null;
    let data: Uint8Array;
    if (rc.chunks.length === 1) data = rc.chunks[0] as Uint8Array;
    else {
      data = new Uint8Array(rc.bytes);
      let o = 0;
      for (const c of rc.chunks) {
        data.set(c, o);
        o += c.byteLength;
      }
    }
    const index = this.installSnapshot({ meta: rc.meta, data });
    reply(rc.bytes, index, false);
  }

  /** Installs a snapshot from the leader (if it is news); returns the index the follower now matches. */
  private installSnapshot(snap: Snapshot): number {
    const { index, term } = snap.meta;
    const log = this.log;
    if (index <= log.committed) return log.committed;
    if (log.matchTerm(index, term)) {
      // We hold that entry already: just fast-forward the commit index.
      log.commitTo(index);
      return index;
    }
    log.restore(index, term);
    const conf = normalizeConf(snap.meta.conf);
    this.confs = [{ index, conf }];
    this.conf = conf;
    const kept: Snapshot = { meta: { index, term, conf }, data: snap.data };
    this.snapshot = kept;
    this.pendingSnapshot = kept;
    return index;
  }

  private handleReadIndexResp(m: ReadIndexRespMessage): void {
    // index 0 = refused: nothing to relay (the host times the read out and retries).
    if (m.index > 0) this.readStates.push({ ctx: m.ctx, index: m.index });
  }

  // ------------------------------------------------------------------------------------------------------------
  // Leader
  // ------------------------------------------------------------------------------------------------------------

  private refuseProposal(bytes: number): ProposeResult | null {
    if (this._role !== Role.Leader) return { ok: false, code: 'NOTLEADER', leader: this.lead };
    if (this.leadTransferee !== NO_NODE) return { ok: false, code: 'TRANSFERRING' };
    if (this.uncommittedBytes > 0 && this.uncommittedBytes + bytes > this.cfg.uncommittedBytesMax) {
      return { ok: false, code: 'BUSY' };
    }
    return null;
  }

  /** Leader: appends one entry of its term to its own log. */
  private appendOwn(type: EntryType, data: Uint8Array): Entry {
    const e: Entry = { term: this._term, index: this.log.lastIndex() + 1, type, data };
    this.log.push(e);
    if (type === EntryType.ConfChange) {
      this.adoptConf(e);
      this.pendingConfIndex = e.index;
    }
    const self = this.prs.get(this.id);
    if (self !== undefined) self.maybeUpdate(e.index);
    this.bcastWanted = true;
    // With a single voter (or after a removal shrank the quorum) the entry may be committed right away.
    if (this.conf.voters.length <= 1 || type === EntryType.ConfChange) this.maybeCommit();
    return e;
  }

  /** A ConfChange entry was appended to our log: its configuration takes effect now. */
  private adoptConf(e: Entry): void {
    const conf = normalizeConf(decodeConfChange(e.data).conf);
    this.confs.push({ index: e.index, conf });
    this.setConf(conf);
  }

  /** Entries from index i on are about to be truncated: revert configurations they introduced. */
  private truncateConfs(i: number): void {
    let changed = false;
    while (this.confs.length > 1 && (this.confs[this.confs.length - 1] as ConfPoint).index >= i) {
      this.confs.pop();
      changed = true;
    }
    if (changed) this.setConf((this.confs[this.confs.length - 1] as ConfPoint).conf);
  }

  private setConf(conf: ConfState): void {
    this.conf = conf;
    if (this._role !== Role.Leader) return;
    // Leader: keep progress in step with the configuration. A removed member stays as a non-voting "learner"
    // until it holds its removal entry (see Progress.removedAt); the leader itself is dropped at once.
    const last = this.log.lastIndex();
    for (const pr of [...this.prs.values()]) {
      if (conf.voters.includes(pr.id) || conf.learners.includes(pr.id)) continue;
      if (this.leadTransferee === pr.id) this.leadTransferee = NO_NODE;
      if (pr.id === this.id || pr.match >= last) this.prs.delete(pr.id);
      else if (pr.removedAt === 0) {
        pr.removedAt = last;
        pr.learner = true;
      }
    }
    for (const v of conf.voters) {
      const pr = this.prs.get(v);
      if (pr === undefined || pr.removedAt !== 0) this.addProgress(v, last, false);
      else pr.learner = false;
    }
    for (const l of conf.learners) {
      const pr = this.prs.get(l);
      if (pr === undefined || pr.removedAt !== 0) this.addProgress(l, last, true);
      else pr.learner = true;
    }
  }

  /** Leader: commit the highest index a quorum of voters holds, if it is of the current term (5.4.2). */
  private maybeCommit(): boolean {
    const voters = this.conf.voters;
    const s = this.scratch;
    s.length = 0;
    for (const v of voters) {
      const pr = this.prs.get(v);
      s.push(pr === undefined ? 0 : pr.match);
    }
    if (s.length === 0) return false;
    s.sort((a, b) => b - a);
    const mci = s[this.quorum() - 1] as number;
    if (mci <= this.log.committed || this.log.term(mci) !== this._term) return false;
    const old = this.log.committed;
    this.log.commitTo(mci);
    this.onLeaderCommit(old);
    return true;
  }

  private onLeaderCommit(old: number): void {
    // Release flow-control budget of the newly committed entries of this term.
    if (this.uncommittedBytes > 0) {
      const lo = Math.max(old + 1, this.log.firstIndex());
      for (let i = lo; i <= this.log.committed; i++) {
        const e = this.log.at(i);
        if (e.term === this._term && e.type === EntryType.Normal) this.uncommittedBytes -= e.data.byteLength;
      }
      if (this.uncommittedBytes < 0) this.uncommittedBytes = 0;
    }
    this.commitBcastWanted = true;
    // A leader that removed itself steps down once the removal is committed (thesis 4.2.2).
    if (!this.isVoter(this.id) && this.log.committed >= this.pendingConfIndex) {
      this.flush(); // tell the others about the commit first
      this.becomeFollower(this._term, NO_NODE);
    }
  }

  private stepLeader(m: Message): void {
    switch (m.type) {
      case MessageType.AppendResp:
        this.handleAppendResp(m);
        return;
      case MessageType.HeartbeatResp:
        this.handleHeartbeatResp(m);
        return;
      case MessageType.SnapshotResp:
        this.handleSnapshotResp(m);
        return;
      case MessageType.ReadIndex:
        this.handleReadIndex(m.ctx, m.from);
        return;
      default:
        return;
    }
  }

  private handleAppendResp(m: AppendRespMessage): void {
    const pr = this.prs.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    if (m.reject) {
      let hint = m.rejectHint;
      if (m.hintTerm > 0) hint = this.log.findConflictByTerm(m.rejectHint, m.hintTerm);
      if (pr.maybeDecrTo(m.index, hint)) {
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        this.sendAppend(pr, true);
      }
      return;
    }
    if (m.index > this.log.lastIndex()) {
      throw new RaftInvariantError(`node ${m.from} acknowledged ${m.index} beyond leader's last ${this.log.lastIndex()}`);
    }
    const wasPaused = pr.isPaused();
    const updated = pr.maybeUpdate(m.index);
    // A probe answered at exactly our match point also proves where the follower stands.
    if (!updated && !(pr.state === ProgressState.Probe && pr.match === m.index)) return; // stale
    if (pr.state === ProgressState.Probe) pr.becomeReplicate();
    else if (pr.state === ProgressState.Snapshot) {
      if (pr.match >= pr.snapIndex || pr.match >= this.log.snapIndex) {
        pr.becomeProbe();
        pr.becomeReplicate();
      }
    } else pr.inflights.freeLE(m.index);
    if (pr.removedAt !== 0 && pr.match >= pr.removedAt) {
      this.prs.delete(pr.id); // a removed member now holds its removal entry: done with it
      return;
    }
    const committed = !pr.learner && this.maybeCommit();
    if (this._role !== Role.Leader) return; // stepped down (own removal committed)
    // A follower whose window was full may have missed commit announcements: tell it (etcd does the same).
    let sent = this.sendAppend(pr, !committed && wasPaused);
    while (sent) sent = this.sendAppend(pr, false);
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) this.sendTimeoutNow(m.from);
  }

  private handleHeartbeatResp(m: HeartbeatRespMessage): void {
    const pr = this.prs.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    if (pr.state === ProgressState.Snapshot) {
      if (pr.snapSent > pr.snapAcked || pr.snapDoneSent) {
        pr.snapStall++;
        if (pr.snapStall >= SNAPSHOT_STALL_HEARTBEATS) {
          // Chunks (or the answers) were lost, or a stale acknowledgement put us beyond what the follower holds.
          pr.snapStalled();
          this.sendSnapshotChunks(pr);
        }
      }
    } else {
      pr.probeSent = false;
      const behind = pr.match < this.log.lastIndex();
      if (pr.state === ProgressState.Replicate && behind && pr.match === pr.heartbeatMatch) {
        // No acknowledgement for a whole heartbeat period while entries are outstanding: appends were probably
        // lost. Fall back to probing from match + 1 (an empty probe also finds a follower that lost entries).
        pr.becomeProbe();
      }
      pr.heartbeatMatch = pr.match;
      if (behind || pr.state === ProgressState.Probe) this.sendAppend(pr, true);
    }
    if (m.ctx > 0 && !pr.learner && m.ctx > pr.readAck) {
      pr.readAck = m.ctx;
      this.releaseReads();
    }
  }

  /**
   * Leader: an answer about a snapshot transfer. `offset` is how many bytes the follower held when it answered
   * (the next offset it needs). The follower's count only grows within one transfer, except when it restarts
   * (back to 0), so:
   *   - an acknowledgement above `snapAcked` is news whatever we sent since: move both marks up to it (a
   *     rewound leader thus skips what the follower already has);
   *   - a rejection at or above `snapAcked` (a gap: chunks were lost) or at 0 (the follower lost its partial
   *     snapshot, or never got the first chunk) resends from that offset, once per offset (the other chunks of
   *     the window are rejected with the same offset and must not restart the stream again and again);
   *   - a rejection strictly between 0 and `snapAcked` is stale (reordered), unless the follower restarted and
   *     a stale acknowledgement lifted `snapAcked` above what it holds now: kept as `snapLowReject`; if a stall
   *     resend from `snapAcked` does not move either, the next one resends from there (Progress.snapStalled).
   * Nothing here can wedge the stream: whatever the leader sends next, the follower's answer carries its real
   * offset, and the stall timer resends when answers stop.
   */
  private handleSnapshotResp(m: SnapshotRespMessage): void {
    const pr = this.prs.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    if (m.index > 0) {
      // Installed (or the follower already had it): it matches us up to m.index.
      if (m.index > this.log.lastIndex()) {
        throw new RaftInvariantError(`node ${m.from} reports snapshot ${m.index} beyond leader's last ${this.log.lastIndex()}`);
      }
      const updated = pr.maybeUpdate(m.index);
      if (pr.state === ProgressState.Snapshot) {
        // Appends can resume once the follower holds the snapshot being sent or anything we still have entries
        // after (a late answer of an earlier transfer may say less; the current transfer then goes on).
        if (pr.match >= pr.snapIndex || pr.match >= this.log.snapIndex) {
          pr.becomeProbe();
          this.sendAppend(pr, true);
        }
      } else if (updated && !pr.learner) {
        this.maybeCommit();
      }
      return;
    }
    const snap = pr.snap;
    if (pr.state !== ProgressState.Snapshot || snap === null) return;
    const o = m.offset;
    // Answers carry no transfer id: one beyond this snapshot's size is about an earlier (larger) one.
    if (o > snap.data.byteLength) return;
    if (!m.reject) {
      if (o > pr.snapAcked) {
        pr.snapAcked = o;
        if (pr.snapSent < o) pr.snapSent = o;
        pr.snapshotProgressed();
      }
    } else if (o >= pr.snapAcked || o === 0) {
      if (o > pr.snapAcked) {
        pr.snapAcked = o; // the follower holds o bytes
        pr.snapshotProgressed();
      }
      if (o !== pr.snapRewind) {
        pr.snapStall = 0;
        pr.snapRewind = o;
        pr.snapSent = o;
        if (pr.snapAcked > o) pr.snapAcked = o;
        pr.snapDoneSent = false;
      }
    } else if (o < pr.snapLowReject) {
      pr.snapLowReject = o;
    }
    this.sendSnapshotChunks(pr);
  }

  /** Leader: sends the next append to pr if allowed. Returns true if a message with entries was sent. */
  private sendAppend(pr: Progress, sendIfEmpty: boolean): boolean {
    if (pr.isPaused()) return false;
    const log = this.log;
    const prevIndex = pr.next - 1;
    const prevTerm = log.term(prevIndex);
    if (prevTerm < 0) {
      if (prevIndex > log.lastIndex()) {
        throw new RaftInvariantError(`progress ${pr.id}: next ${pr.next} beyond last index ${log.lastIndex()} + 1`);
      }
      this.startSnapshot(pr);
      return false;
    }
    const ents = log.sliceLimited(pr.next, this.cfg.appendEntriesMax, this.cfg.appendBytesMax);
    if (ents.length === 0 && !sendIfEmpty) return false;
    const last = ents.length > 0 ? (ents[ents.length - 1] as Entry).index : prevIndex;
    this.send<AppendMessage>({
      type: MessageType.Append,
      to: pr.id,
      term: this._term,
      prevIndex,
      prevTerm,
      entries: ents,
      commit: log.committed,
    });
    pr.sentEntries(ents.length, last);
    return ents.length > 0;
  }

  private startSnapshot(pr: Progress): void {
    const snap = this.snapshot;
    if (snap === null || snap.meta.index < pr.next - 1) {
      throw new RaftInvariantError(`progress ${pr.id}: needs a snapshot but none covers index ${pr.next - 1}`);
    }
    pr.becomeSnapshot(snap);
    this.sendSnapshotChunks(pr);
  }

  private sendSnapshotChunks(pr: Progress): void {
    const snap = pr.snap;
    if (snap === null) return;
    const chunk = this.cfg.snapshotChunkBytes;
    const window = Math.min(this.cfg.inflightMsgsMax, SNAPSHOT_CHUNKS_INFLIGHT_MAX);
    const total = snap.data.byteLength;
    while (!pr.snapDoneSent && Math.ceil((pr.snapSent - pr.snapAcked) / chunk) < window) {
      const offset = pr.snapSent;
      const len = Math.min(chunk, total - offset);
      const done = offset + len >= total;
      this.send<SnapshotMessage>({
        type: MessageType.Snapshot,
        to: pr.id,
        term: this._term,
        meta: snap.meta,
        offset,
        data: snap.data.subarray(offset, offset + len),
        done,
      });
      pr.snapSent = offset + len;
      if (done) pr.snapDoneSent = true;
    }
  }

  private bcastHeartbeat(): void {
    const ctx = this.readOnly.heartbeatCtx();
    const self = this.prs.get(this.id);
    if (self !== undefined && ctx > self.readAck) self.readAck = ctx;
    for (const pr of this.prs.values()) {
      if (pr.id === this.id) continue;
      this.send<HeartbeatMessage>({
        type: MessageType.Heartbeat,
        to: pr.id,
        term: this._term,
        commit: Math.min(pr.match, this.log.committed),
        ctx,
      });
    }
    // A lone voter confirms its own rounds.
    if (ctx > 0) this.releaseReads();
  }

  private sendTimeoutNow(to: NodeId): void {
    this.send<TimeoutNowMessage>({ type: MessageType.TimeoutNow, to, term: this._term });
  }

  private committedInTerm(): boolean {
    return this.log.term(this.log.committed) === this._term;
  }

  /** Leader: a read request from itself or a follower (thesis 6.4). Returns false if refused. */
  private handleReadIndex(ctx: Uint8Array, from: NodeId): boolean {
    if (!this.committedInTerm()) {
      // Our commit index may be stale until an entry of this term commits.
      if (from !== this.id) this.answerRead(from, ctx, 0);
      return false;
    }
    const index = this.log.committed;
    const lone = this.conf.voters.length === 1 && this.isVoter(this.id);
    // Lease reads only while a quorum answered within the current CheckQuorum period; otherwise (just after a
    // check, or while followers are silent) fall back to a confirmed ReadIndex round.
    if (lone || (this.cfg.readMode === 'lease' && this.quorumRecentlyActive())) {
      this.answerRead(from, ctx, index);
      return true;
    }
    this.readOnly.add(index, from, ctx);
    return true;
  }

  private answerRead(from: NodeId, ctx: Uint8Array, index: number): void {
    if (from === this.id) {
      if (index > 0) this.readStates.push({ ctx, index });
      return;
    }
    this.send<ReadIndexRespMessage>({ type: MessageType.ReadIndexResp, to: from, term: this._term, ctx, index });
  }

  /** Answers every pending read whose heartbeat round a quorum of voters confirmed. */
  private releaseReads(): void {
    if (this.readOnly.size === 0) return;
    const s = this.scratch;
    s.length = 0;
    for (const v of this.conf.voters) {
      const pr = this.prs.get(v);
      s.push(pr === undefined ? 0 : pr.readAck);
    }
    if (s.length === 0) return;
    s.sort((a, b) => b - a);
    const confirmed = s[this.quorum() - 1] as number;
    if (confirmed <= 0) return;
    const out = this.releasedReads;
    out.length = 0;
    this.readOnly.release(confirmed, out);
    for (const r of out) this.answerRead(r.from, r.ctx, r.index);
    out.length = 0;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Output
  // ------------------------------------------------------------------------------------------------------------

  /** Queues a message, stamping group and sender. */
  private send<M extends Message>(m: Omit<M, 'group' | 'from'>): void {
    const full = m as unknown as M;
    full.group = this.group;
    full.from = this.id;
    this.msgs.push(full);
  }
}

export { Role, MessageType, EntryType, NO_NODE } from './types.js';
