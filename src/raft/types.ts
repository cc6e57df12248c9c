/**
 * The contract of Lockstep's Raft core: its inputs (messages, proposals, ticks), its outputs (`Ready`) and the
 * data it hands to storage. Everything here is plain data, so it can cross a worker boundary or be msgpack-encoded
 * by the peer transport as is.
 *
 * The host loop (etcd-io/raft's RawNode model):
 *
 *   core.tick() every tickMs; core.step(msg) for every message received; core.propose(data) for client writes.
 *   while (core.hasReady()) {
 *     const rd = core.ready();
 *     persist rd.snapshot, rd.entries, rd.hardState (fsync!)   -- before anything below
 *     send rd.messages
 *     apply rd.committed (and install rd.snapshot into the state machine if present)
 *     answer rd.readStates once applied >= readState.index
 *     core.advance(rd)
 *   }
 *
 * Node ids are positive integers; 0 means "none". Group ids are non-negative integers; a core serves one group
 * and stamps its id on every message it emits.
 */

export type NodeId = number;
export type GroupId = number;
export const NO_NODE: NodeId = 0;

export const enum EntryType {
  /** A client command; `data` is opaque to Raft. */
  Normal = 0,
  /** A membership change; `data` is an encoded ConfChange (see encodeConfChange in the core). */
  ConfChange = 1,
  /** The empty entry a new leader appends to commit entries of earlier terms (Raft paper section 8). */
  Noop = 2,
}

export interface Entry {
  term: number;
  index: number;
  type: EntryType;
  data: Uint8Array;
}

/** What must be durable before a node votes or acknowledges anything. */
export interface HardState {
  term: number;
  vote: NodeId;
  commit: number;
}

export interface ConfState {
  voters: NodeId[];
  learners: NodeId[];
}

export const enum ConfChangeType {
  AddLearner = 0,
  PromoteLearner = 1,
  RemoveNode = 2,
}

export interface ConfChange {
  type: ConfChangeType;
  node: NodeId;
}

export interface SnapshotMeta {
  /** Index and term of the last entry the snapshot covers. */
  index: number;
  term: number;
  /** The configuration as of `index`. */
  conf: ConfState;
}

export interface Snapshot {
  meta: SnapshotMeta;
  /** The state machine's bytes; opaque to Raft. */
  data: Uint8Array;
}

export const enum MessageType {
  Vote = 1,
  VoteResp = 2,
  PreVote = 3,
  PreVoteResp = 4,
  Append = 5,
  AppendResp = 6,
  Heartbeat = 7,
  HeartbeatResp = 8,
  Snapshot = 9,
  SnapshotResp = 10,
  TimeoutNow = 11,
  ReadIndex = 12,
  ReadIndexResp = 13,
}

interface MessageBase {
  group: GroupId;
  from: NodeId;
  to: NodeId;
  term: number;
}

/** RequestVote (section 5.2), also used with `PreVote` (thesis section 9.6), where `term` is the proposed term. */
export interface VoteMessage extends MessageBase {
  type: MessageType.Vote | MessageType.PreVote;
  lastIndex: number;
  lastTerm: number;
  /** Set when the campaign was triggered by TimeoutNow (leadership transfer): voters ignore their leader lease. */
  transfer: boolean;
}

export interface VoteRespMessage extends MessageBase {
  type: MessageType.VoteResp | MessageType.PreVoteResp;
  reject: boolean;
}

/** AppendEntries (section 5.3). */
export interface AppendMessage extends MessageBase {
  type: MessageType.Append;
  prevIndex: number;
  prevTerm: number;
  entries: Entry[];
  commit: number;
}

export interface AppendRespMessage extends MessageBase {
  type: MessageType.AppendResp;
  /** On success: the index of the last entry now matching the leader. On reject: the rejected prevIndex. */
  index: number;
  reject: boolean;
  /** On reject: the follower's hint for fast backtracking (its last index, or the first index of the conflicting term). */
  rejectHint: number;
  /** On reject: the term of the follower's entry at rejectHint (0 if none). */
  hintTerm: number;
}

export interface HeartbeatMessage extends MessageBase {
  type: MessageType.Heartbeat;
  /** min(leader commit, follower match): never tells a follower to commit entries it may not have. */
  commit: number;
  /** ReadIndex round identifier, 0 when none. */
  ctx: number;
}

export interface HeartbeatRespMessage extends MessageBase {
  type: MessageType.HeartbeatResp;
  ctx: number;
}

/** One chunk of InstallSnapshot (section 7). Chunks are sent in order; `done` marks the last one. */
export interface SnapshotMessage extends MessageBase {
  type: MessageType.Snapshot;
  meta: SnapshotMeta;
  offset: number;
  data: Uint8Array;
  done: boolean;
}

export interface SnapshotRespMessage extends MessageBase {
  type: MessageType.SnapshotResp;
  /** Bytes received so far (next offset expected); on completion the snapshot's index is in `index`. */
  offset: number;
  index: number;
  reject: boolean;
}

/** Leadership transfer: tells the target to campaign at once (thesis section 3.10). */
export interface TimeoutNowMessage extends MessageBase {
  type: MessageType.TimeoutNow;
}

/** A follower forwards a ReadIndex request to its leader; the leader answers with the read index. */
export interface ReadIndexMessage extends MessageBase {
  type: MessageType.ReadIndex;
  ctx: Uint8Array;
}

export interface ReadIndexRespMessage extends MessageBase {
  type: MessageType.ReadIndexResp;
  ctx: Uint8Array;
  /** The read index, or 0 when the leader refused (no leader / not yet committed in its term). */
  index: number;
}

export type Message =
  | VoteMessage
  | VoteRespMessage
  | AppendMessage
  | AppendRespMessage
  | HeartbeatMessage
  | HeartbeatRespMessage
  | SnapshotMessage
  | SnapshotRespMessage
  | TimeoutNowMessage
  | ReadIndexMessage
  | ReadIndexRespMessage;

export const enum Role {
  Follower = 0,
  PreCandidate = 1,
  Candidate = 2,
  Leader = 3,
}

export interface SoftState {
  leader: NodeId;
  role: Role;
}

/** A completed linearizable read: once the state machine has applied `index`, the read `ctx` may be served. */
export interface ReadState {
  ctx: Uint8Array;
  index: number;
}

export interface Ready {
  /** Changed volatile state (leader, role), or null if unchanged. Need not be persisted. */
  softState: SoftState | null;
  /** Changed hard state to persist, or null if unchanged. */
  hardState: HardState | null;
  /**
   * Entries to append to stable storage. The first entry's index may be <= the last stored index: storage must
   * then drop its stored entries from that index on (a follower's log conflict was resolved).
   */
  entries: Entry[];
  /** A snapshot received from the leader, to persist and install before applying `committed`. */
  snapshot: Snapshot | null;
  /** Messages to send, only after `entries`, `hardState` and `snapshot` are durable. */
  messages: Message[];
  /** Committed entries to apply, in order. */
  committed: Entry[];
  readStates: ReadState[];
}

/** What the host recovered from storage for one group, handed to the core at construction. */
export interface RaftBootState {
  hardState: HardState;
  /** The latest snapshot (null if none); the log starts right after snapshot.meta.index. */
  snapshot: Snapshot | null;
  /** Entries after the snapshot, contiguous, in order. */
  entries: Entry[];
  /** Configuration when there is no snapshot and no conf change in the log (a brand-new group). */
  initialConf: ConfState;
  /** Highest index already applied to the state machine (the host knows it; 0 or snapshot index on a fresh start). */
  applied: number;
}

export interface RaftConfig {
  id: NodeId;
  group: GroupId;
  /** Heartbeat period, in ticks (>= 1). */
  heartbeatTicks: number;
  /** Election timeout lower bound, in ticks (> heartbeatTicks); each timeout is drawn from [min, 2*min). */
  electionTicksMin: number;
  /** Run a PreVote round before a real election (thesis section 9.6). */
  preVote: boolean;
  /** A leader steps down if it has not heard from a quorum within an election timeout (thesis section 6.2). */
  checkQuorum: boolean;
  /** 'safe': ReadIndex confirms leadership with a heartbeat round; 'lease': the leader's lease (needs checkQuorum). */
  readMode: 'safe' | 'lease';
  /** Pipelining window per follower, in AppendEntries messages. */
  inflightMsgsMax: number;
  /** Most entries and bytes in one AppendEntries message. */
  appendEntriesMax: number;
  appendBytesMax: number;
  /** A leader refuses proposals while this many bytes are proposed but not committed. */
  uncommittedBytesMax: number;
  /** InstallSnapshot chunk size, in bytes. */
  snapshotChunkBytes: number;
}

/** Observable state for status pages, tests and the simulator's invariant checks. */
export interface RaftStatus {
  id: NodeId;
  group: GroupId;
  role: Role;
  term: number;
  vote: NodeId;
  leader: NodeId;
  commit: number;
  applied: number;
  firstIndex: number;
  lastIndex: number;
  conf: ConfState;
  /** Leader only: each peer's match index (0 elsewhere). */
  progress: Record<number, { match: number; next: number; state: 'probe' | 'replicate' | 'snapshot' }>;
}

/** Errors a proposal can meet; returned as values (they are operating conditions, not bugs). */
export type ProposeResult =
  | { ok: true; index: number; term: number }
  | { ok: false; code: 'NOTLEADER'; leader: NodeId }
  | { ok: false; code: 'TRANSFERRING' | 'BUSY' | 'CONFCHANGE_PENDING' | 'INVALID' };
