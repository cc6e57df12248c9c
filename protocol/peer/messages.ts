/**
 * What travels on a peer link: the frame bodies (a discriminated union on the numeric `k` field) and the shape
 * validation of everything a peer sends, Raft messages included.
 *
 *   HELLO      both ends, first frame: version, cluster id, node id, worker index, topology digest, challenge
 *   HELLO_ACK  both ends, after accepting the other's HELLO: proof of the cluster secret (empty without secret)
 *   REJECT     either end, instead of HELLO_ACK (or after a bad proof): code + human reason; then the link closes
 *   BATCH      dialer -> acceptor: Raft messages for any number of groups, plus coalesced heartbeats
 *   APP        request (dialer -> acceptor) / response or error (acceptor -> dialer), matched by `id`
 *
 * Raft messages travel in a BATCH in positional form (msgpack arrays, no field names): `[type, group, term, ...]`
 * with the type's fields in a fixed order (see packRaftMessage). `from` and `to` are never on the wire: they are
 * implied by the link (the authenticated peer and us), so a peer cannot speak for another node. Measured with
 * msgpackr on 100-byte Appends, the positional form encodes ~4x and decodes ~10x faster than field-named maps and
 * is 40% smaller. Heartbeats and heartbeat responses, the bulk of idle traffic between two nodes that share many
 * groups, are coalesced further into flat number arrays, `hb = [group, term, commit, ctx, ...]` and
 * `hr = [group, term, ctx, ...]`. Unpacking rebuilds exactly the objects that were sent.
 *
 * Validation is hand-written and total: every field of every message is checked for type and range, arrays are
 * bounded, and the result is a fresh object with only the known fields (nothing a peer adds, `__proto__` included,
 * reaches the Raft core). Validators return an error string instead of throwing; the transport closes the link.
 */
import type {
  AppendMessage,
  ConfState,
  Entry,
  EntryType,
  GroupId,
  HeartbeatMessage,
  HeartbeatRespMessage,
  Message,
  MessageType,
  NodeId,
  SnapshotMeta,
} from '../../src/raft/types.js';

/** Bumped on any incompatible change of the frame bodies below; peers with another version are refused. */
export const PEER_PROTOCOL_VERSION = 1;

export const WireKind = {
  Hello: 1,
  HelloAck: 2,
  Reject: 3,
  Batch: 4,
  App: 5,
} as const;
export type WireKind = (typeof WireKind)[keyof typeof WireKind];

/** Length of a handshake challenge, in bytes. */
export const CHALLENGE_BYTES = 32;
/** Length of an HMAC-SHA256 proof, in bytes. */
export const PROOF_BYTES = 32;
/** Longest cluster id, topology digest and reject reason accepted in a handshake, in UTF-16 code units. */
export const HANDSHAKE_STRING_CHARS_MAX = 1024;

export interface HelloBody {
  k: typeof WireKind.Hello;
  /** Protocol version (PEER_PROTOCOL_VERSION). Checked before anything else, so later versions can add fields. */
  v: number;
  cluster: string;
  node: NodeId;
  worker: number;
  /** Digest of the shard-to-worker map, computed by the cluster runtime; both ends must agree. */
  topo: string;
  /** Whether this end has a cluster secret configured (and so expects and sends a proof). */
  auth: boolean;
  challenge: Uint8Array;
}

export interface HelloAckBody {
  k: typeof WireKind.HelloAck;
  /** HMAC-SHA256 proof over the other end's challenge; empty when no secret is configured. */
  proof: Uint8Array;
}

export type RejectCode = 'VERSION' | 'CLUSTER' | 'TOPOLOGY' | 'WORKER' | 'AUTH' | 'NODE' | 'PROTOCOL';
const REJECT_CODES: ReadonlySet<string> = new Set(['VERSION', 'CLUSTER', 'TOPOLOGY', 'WORKER', 'AUTH', 'NODE', 'PROTOCOL']);

export interface RejectBody {
  k: typeof WireKind.Reject;
  code: RejectCode;
  reason: string;
}

/** A Raft message in positional wire form (see packRaftMessage). */
export type WireRaftMessage = unknown[];

export interface BatchBody {
  k: typeof WireKind.Batch;
  /** Raft messages other than heartbeats, in positional form, in the order they were sent. */
  m: WireRaftMessage[];
  /** Coalesced heartbeats: [group, term, commit, ctx] repeated. */
  hb: number[];
  /** Coalesced heartbeat responses: [group, term, ctx] repeated. */
  hr: number[];
}

export type AppKind = 'req' | 'res' | 'err';

export interface AppBody {
  k: typeof WireKind.App;
  /** Chosen by the requester; the response carries the same id. */
  id: number;
  kind: AppKind;
  /** Opaque to the transport. For 'err': `{ code: string, message: string }`. */
  payload: unknown;
}

export type WireBody = HelloBody | HelloAckBody | RejectBody | BatchBody | AppBody;

/** Bounds applied to arrays inside Raft messages (the frame size bounds everything else). */
export interface RaftMessageBounds {
  /** Most entries in one Append message. */
  entriesPerMessageMax: number;
  /** Most voters + learners in a snapshot's configuration. */
  confNodesMax: number;
}

export const RAFT_MESSAGE_BOUNDS_DEFAULT: RaftMessageBounds = {
  entriesPerMessageMax: 65_536,
  confNodesMax: 1_024,
};

// Raft message and entry type numbers, mirrored from src/raft/types.ts (protocol/ imports only types from src/).
// The checks below fail to compile if the two ever disagree.
const MT = {
  Vote: 1 as MessageType.Vote,
  VoteResp: 2 as MessageType.VoteResp,
  PreVote: 3 as MessageType.PreVote,
  PreVoteResp: 4 as MessageType.PreVoteResp,
  Append: 5 as MessageType.Append,
  AppendResp: 6 as MessageType.AppendResp,
  Heartbeat: 7 as MessageType.Heartbeat,
  HeartbeatResp: 8 as MessageType.HeartbeatResp,
  Snapshot: 9 as MessageType.Snapshot,
  SnapshotResp: 10 as MessageType.SnapshotResp,
  TimeoutNow: 11 as MessageType.TimeoutNow,
  ReadIndex: 12 as MessageType.ReadIndex,
  ReadIndexResp: 13 as MessageType.ReadIndexResp,
} as const;
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Assert<T extends true> = T;
export type MessageTypeNumbersAgree = Assert<
  Same<MessageType.Vote, 1> &
    Same<MessageType.VoteResp, 2> &
    Same<MessageType.PreVote, 3> &
    Same<MessageType.PreVoteResp, 4> &
    Same<MessageType.Append, 5> &
    Same<MessageType.AppendResp, 6> &
    Same<MessageType.Heartbeat, 7> &
    Same<MessageType.HeartbeatResp, 8> &
    Same<MessageType.Snapshot, 9> &
    Same<MessageType.SnapshotResp, 10> &
    Same<MessageType.TimeoutNow, 11> &
    Same<MessageType.ReadIndex, 12> &
    Same<MessageType.ReadIndexResp, 13> &
    Same<EntryType, 0 | 1 | 2>
>;
const ENTRY_TYPE_MAX = 2;
const MESSAGE_TYPE_MAX = 13;

/** Raft message type numbers, for the transport's heartbeat fast path and for tests. */
export const RAFT_HEARTBEAT = MT.Heartbeat;
export const RAFT_HEARTBEAT_RESP = MT.HeartbeatResp;

// ---------------------------------------------------------------------------------------------------------------
// Field checks
// ---------------------------------------------------------------------------------------------------------------

/** A non-negative safe integer (terms, indexes, offsets, group ids, counters). */
function isNat(x: unknown): x is number {
  return Number.isSafeInteger(x) && (x as number) >= 0;
}

/** A node id: a positive safe integer (0 means "none" and never addresses a message). */
function isNodeId(x: unknown): x is number {
  return Number.isSafeInteger(x) && (x as number) > 0;
}

function isBytes(x: unknown): x is Uint8Array {
  return x instanceof Uint8Array;
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x) && !(x instanceof Uint8Array);
}

function describe(x: unknown): string {
  if (x === null) return 'null';
  if (Array.isArray(x)) return 'array';
  if (x instanceof Uint8Array) return 'bytes';
  if (typeof x === 'number') return String(x);
  if (typeof x === 'string') return JSON.stringify(x.length > 32 ? `${x.slice(0, 32)}...` : x);
  return typeof x;
}

const NAMES = [
  '?', 'Vote', 'VoteResp', 'PreVote', 'PreVoteResp', 'Append', 'AppendResp', 'Heartbeat', 'HeartbeatResp',
  'Snapshot', 'SnapshotResp', 'TimeoutNow', 'ReadIndex', 'ReadIndexResp',
];

function bad(type: number, field: string, want: string, got: unknown): string {
  return `${NAMES[type] ?? 'message'}.${field}: expected ${want}, got ${describe(got)}`;
}

function validateConf(x: unknown, bounds: RaftMessageBounds, type: number): ConfState | string {
  if (!isRecord(x)) return bad(type, 'meta.conf', 'an object', x);
  const voters = x['voters'];
  const learners = x['learners'];
  if (!Array.isArray(voters)) return bad(type, 'meta.conf.voters', 'an array', voters);
  if (!Array.isArray(learners)) return bad(type, 'meta.conf.learners', 'an array', learners);
  if (voters.length + learners.length > bounds.confNodesMax) {
    return bad(type, 'meta.conf', `at most ${bounds.confNodesMax} nodes`, voters.length + learners.length);
  }
  for (let i = 0; i < voters.length; i++) {
    if (!isNodeId(voters[i])) return bad(type, `meta.conf.voters[${i}]`, 'a node id', voters[i]);
  }
  for (let i = 0; i < learners.length; i++) {
    if (!isNodeId(learners[i])) return bad(type, `meta.conf.learners[${i}]`, 'a node id', learners[i]);
  }
  return { voters: voters.slice() as NodeId[], learners: learners.slice() as NodeId[] };
}

function validateEntries(x: Record<string, unknown>, prevIndex: number, prevTerm: number, term: number,
  bounds: RaftMessageBounds): Entry[] | string {
  const raw = x['entries'];
  if (!Array.isArray(raw)) return bad(MT.Append, 'entries', 'an array', raw);
  const n = raw.length;
  if (n > bounds.entriesPerMessageMax) return bad(MT.Append, 'entries', `at most ${bounds.entriesPerMessageMax}`, n);
  const out: Entry[] = new Array<Entry>(n);
  let lastTerm = prevTerm;
  for (let i = 0; i < n; i++) {
    const e: unknown = raw[i];
    if (!isRecord(e)) return bad(MT.Append, `entries[${i}]`, 'an object', e);
    const eTerm = e['term'];
    const eIndex = e['index'];
    const eType = e['type'];
    const eData = e['data'];
    // Entries are contiguous after prevIndex, with terms that never decrease and never exceed the leader's term.
    if (eIndex !== prevIndex + 1 + i) return bad(MT.Append, `entries[${i}].index`, String(prevIndex + 1 + i), eIndex);
    if (!isNat(eTerm) || eTerm < lastTerm || eTerm > term) {
      return bad(MT.Append, `entries[${i}].term`, `an integer in [${lastTerm}, ${term}]`, eTerm);
    }
    if (!Number.isInteger(eType) || (eType as number) < 0 || (eType as number) > ENTRY_TYPE_MAX) {
      return bad(MT.Append, `entries[${i}].type`, 'an entry type (0..2)', eType);
    }
    if (!isBytes(eData)) return bad(MT.Append, `entries[${i}].data`, 'bytes', eData);
    lastTerm = eTerm;
    out[i] = { term: eTerm, index: eIndex, type: eType as EntryType, data: eData };
  }
  return out;
}

/**
 * Checks a decoded Raft message and returns a fresh, well-formed copy, or a reason it is malformed.
 * Never throws.
 */
export function validateRaftMessage(x: unknown, bounds: RaftMessageBounds = RAFT_MESSAGE_BOUNDS_DEFAULT): Message | string {
  if (!isRecord(x)) return `message: expected an object, got ${describe(x)}`;
  const type = x['type'];
  if (!Number.isInteger(type) || (type as number) < 1 || (type as number) > MESSAGE_TYPE_MAX) {
    return `message.type: expected a message type (1..${MESSAGE_TYPE_MAX}), got ${describe(type)}`;
  }
  const t = type as number;
  const group = x['group'];
  const from = x['from'];
  const to = x['to'];
  const term = x['term'];
  if (!isNat(group)) return bad(t, 'group', 'a group id', group);
  if (!isNodeId(from)) return bad(t, 'from', 'a node id', from);
  if (!isNodeId(to)) return bad(t, 'to', 'a node id', to);
  if (!isNat(term)) return bad(t, 'term', 'a non-negative integer', term);

  switch (t) {
    case MT.Vote:
    case MT.PreVote: {
      const lastIndex = x['lastIndex'];
      const lastTerm = x['lastTerm'];
      const transfer = x['transfer'];
      if (!isNat(lastIndex)) return bad(t, 'lastIndex', 'a non-negative integer', lastIndex);
      if (!isNat(lastTerm)) return bad(t, 'lastTerm', 'a non-negative integer', lastTerm);
      if (typeof transfer !== 'boolean') return bad(t, 'transfer', 'a boolean', transfer);
      return { type: t === MT.Vote ? MT.Vote : MT.PreVote, group, from, to, term, lastIndex, lastTerm, transfer };
    }
    case MT.VoteResp:
    case MT.PreVoteResp: {
      const reject = x['reject'];
      if (typeof reject !== 'boolean') return bad(t, 'reject', 'a boolean', reject);
      return { type: t === MT.VoteResp ? MT.VoteResp : MT.PreVoteResp, group, from, to, term, reject };
    }
    case MT.Append: {
      const prevIndex = x['prevIndex'];
      const prevTerm = x['prevTerm'];
      const commit = x['commit'];
      if (!isNat(prevIndex)) return bad(t, 'prevIndex', 'a non-negative integer', prevIndex);
      if (!isNat(prevTerm) || prevTerm > term) return bad(t, 'prevTerm', `an integer in [0, ${term}]`, prevTerm);
      if (!isNat(commit)) return bad(t, 'commit', 'a non-negative integer', commit);
      const entries = validateEntries(x, prevIndex, prevTerm, term, bounds);
      if (typeof entries === 'string') return entries;
      const msg: AppendMessage = { type: MT.Append, group, from, to, term, prevIndex, prevTerm, entries, commit };
      return msg;
    }
    case MT.AppendResp: {
      const index = x['index'];
      const reject = x['reject'];
      const rejectHint = x['rejectHint'];
      const hintTerm = x['hintTerm'];
      if (!isNat(index)) return bad(t, 'index', 'a non-negative integer', index);
      if (typeof reject !== 'boolean') return bad(t, 'reject', 'a boolean', reject);
      if (!isNat(rejectHint)) return bad(t, 'rejectHint', 'a non-negative integer', rejectHint);
      if (!isNat(hintTerm)) return bad(t, 'hintTerm', 'a non-negative integer', hintTerm);
      return { type: MT.AppendResp, group, from, to, term, index, reject, rejectHint, hintTerm };
    }
    case MT.Heartbeat: {
      const commit = x['commit'];
      const ctx = x['ctx'];
      if (!isNat(commit)) return bad(t, 'commit', 'a non-negative integer', commit);
      if (!isNat(ctx)) return bad(t, 'ctx', 'a non-negative integer', ctx);
      return { type: MT.Heartbeat, group, from, to, term, commit, ctx };
    }
    case MT.HeartbeatResp: {
      const ctx = x['ctx'];
      if (!isNat(ctx)) return bad(t, 'ctx', 'a non-negative integer', ctx);
      return { type: MT.HeartbeatResp, group, from, to, term, ctx };
    }
    case MT.Snapshot: {
      const meta = x['meta'];
      const offset = x['offset'];
      const data = x['data'];
      const done = x['done'];
      if (!isRecord(meta)) return bad(t, 'meta', 'an object', meta);
      const mIndex = meta['index'];
      const mTerm = meta['term'];
      if (!isNat(mIndex)) return bad(t, 'meta.index', 'a non-negative integer', mIndex);
      if (!isNat(mTerm) || mTerm > term) return bad(t, 'meta.term', `an integer in [0, ${term}]`, mTerm);
      const conf = validateConf(meta['conf'], bounds, t);
      if (typeof conf === 'string') return conf;
      if (!isNat(offset)) return bad(t, 'offset', 'a non-negative integer', offset);
      if (!isBytes(data)) return bad(t, 'data', 'bytes', data);
      if (typeof done !== 'boolean') return bad(t, 'done', 'a boolean', done);
      const m: SnapshotMeta = { index: mIndex, term: mTerm, conf };
      return { type: MT.Snapshot, group, from, to, term, meta: m, offset, data, done };
    }
    case MT.SnapshotResp: {
      const offset = x['offset'];
      const index = x['index'];
      const reject = x['reject'];
      if (!isNat(offset)) return bad(t, 'offset', 'a non-negative integer', offset);
      if (!isNat(index)) return bad(t, 'index', 'a non-negative integer', index);
      if (typeof reject !== 'boolean') return bad(t, 'reject', 'a boolean', reject);
      return { type: MT.SnapshotResp, group, from, to, term, offset, index, reject };
    }
    case MT.TimeoutNow:
      return { type: MT.TimeoutNow, group, from, to, term };
    case MT.ReadIndex: {
      const ctx = x['ctx'];
      if (!isBytes(ctx)) return bad(t, 'ctx', 'bytes', ctx);
      return { type: MT.ReadIndex, group, from, to, term, ctx };
    }
    default: {
      // MT.ReadIndexResp (the range check above leaves no other value)
      const ctx = x['ctx'];
      const index = x['index'];
      if (!isBytes(ctx)) return bad(t, 'ctx', 'bytes', ctx);
      if (!isNat(index)) return bad(t, 'index', 'a non-negative integer', index);
      return { type: MT.ReadIndexResp, group, from, to, term, ctx, index };
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Positional wire form of Raft messages
// ---------------------------------------------------------------------------------------------------------------
//
//   Vote, PreVote          [type, group, term, lastIndex, lastTerm, transfer]
//   VoteResp, PreVoteResp  [type, group, term, reject]
//   Append                 [type, group, term, prevIndex, prevTerm, commit, entries]
//                          entries = [term, type, data, term, type, data, ...]; entry i has index prevIndex + 1 + i
//   AppendResp             [type, group, term, index, reject, rejectHint, hintTerm]
//   Heartbeat              [type, group, term, commit, ctx]      (normally coalesced into BATCH.hb instead)
//   HeartbeatResp          [type, group, term, ctx]              (normally coalesced into BATCH.hr instead)
//   Snapshot               [type, group, term, meta.index, meta.term, voters, learners, offset, data, done]
//   SnapshotResp           [type, group, term, offset, index, reject]
//   TimeoutNow             [type, group, term]
//   ReadIndex              [type, group, term, ctx]
//   ReadIndexResp          [type, group, term, ctx, index]

/** Numbers per entry in an Append's flat entries array. */
export const ENTRY_STRIDE = 3;

/** The positional wire form of `m` (from and to are left out: the link implies them). */
export function packRaftMessage(m: Message): WireRaftMessage {
  switch (m.type) {
    case MT.Vote:
    case MT.PreVote:
      return [m.type, m.group, m.term, m.lastIndex, m.lastTerm, m.transfer];
    case MT.VoteResp:
    case MT.PreVoteResp:
      return [m.type, m.group, m.term, m.reject];
    case MT.Append: {
      const es = m.entries;
      const flat = new Array<unknown>(es.length * ENTRY_STRIDE);
      for (let i = 0, j = 0; i < es.length; i++, j += ENTRY_STRIDE) {
        const e = es[i]!;
        flat[j] = e.term;
        flat[j + 1] = e.type;
        flat[j + 2] = e.data;
      }
      return [m.type, m.group, m.term, m.prevIndex, m.prevTerm, m.commit, flat];
    }
    case MT.AppendResp:
      return [m.type, m.group, m.term, m.index, m.reject, m.rejectHint, m.hintTerm];
    case MT.Heartbeat:
      return [m.type, m.group, m.term, m.commit, m.ctx];
    case MT.HeartbeatResp:
      return [m.type, m.group, m.term, m.ctx];
    case MT.Snapshot:
      return [m.type, m.group, m.term, m.meta.index, m.meta.term, m.meta.conf.voters, m.meta.conf.learners, m.offset,
        m.data, m.done];
    case MT.SnapshotResp:
      return [m.type, m.group, m.term, m.offset, m.index, m.reject];
    case MT.TimeoutNow:
      return [m.type, m.group, m.term];
    case MT.ReadIndex:
      return [m.type, m.group, m.term, m.ctx];
    case MT.ReadIndexResp:
      return [m.type, m.group, m.term, m.ctx, m.index];
  }
}

/** Field count of each type's positional form, indexed by type. */
const WIRE_LENGTH = [0, 6, 4, 6, 4, 7, 7, 5, 4, 10, 6, 3, 4, 5];

/**
 * Checks a positional Raft message received on the link from `from` to `to` and rebuilds the message object, or
 * returns why it is malformed. Never throws. The result is checked by validateRaftMessage's rules, field for field.
 */
export function unpackRaftMessage(x: unknown, from: NodeId, to: NodeId,
  bounds: RaftMessageBounds = RAFT_MESSAGE_BOUNDS_DEFAULT): Message | string {
  if (!Array.isArray(x)) return `message: expected an array, got ${describe(x)}`;
  const type: unknown = x[0];
  if (!Number.isInteger(type) || (type as number) < 1 || (type as number) > MESSAGE_TYPE_MAX) {
    return `message.type: expected a message type (1..${MESSAGE_TYPE_MAX}), got ${describe(type)}`;
  }
  const t = type as number;
  if (x.length !== WIRE_LENGTH[t]) return `${NAMES[t]}: expected ${WIRE_LENGTH[t]} fields, got ${x.length}`;
  const group: unknown = x[1];
  const term: unknown = x[2];
  if (!isNat(group)) return bad(t, 'group', 'a group id', group);
  if (!isNat(term)) return bad(t, 'term', 'a non-negative integer', term);
  switch (t) {
    case MT.Vote:
    case MT.PreVote: {
      const lastIndex: unknown = x[3];
      const lastTerm: unknown = x[4];
      const transfer: unknown = x[5];
      if (!isNat(lastIndex)) return bad(t, 'lastIndex', 'a non-negative integer', lastIndex);
      if (!isNat(lastTerm)) return bad(t, 'lastTerm', 'a non-negative integer', lastTerm);
      if (typeof transfer !== 'boolean') return bad(t, 'transfer', 'a boolean', transfer);
      return { type: t === MT.Vote ? MT.Vote : MT.PreVote, group, from, to, term, lastIndex, lastTerm, transfer };
    }
    case MT.VoteResp:
    case MT.PreVoteResp: {
      const reject: unknown = x[3];
      if (typeof reject !== 'boolean') return bad(t, 'reject', 'a boolean', reject);
      return { type: t === MT.VoteResp ? MT.VoteResp : MT.PreVoteResp, group, from, to, term, reject };
    }
    case MT.Append: {
      const prevIndex: unknown = x[3];
      const prevTerm: unknown = x[4];
      const commit: unknown = x[5];
      const flat: unknown = x[6];
      if (!isNat(prevIndex)) return bad(t, 'prevIndex', 'a non-negative integer', prevIndex);
      if (!isNat(prevTerm) || prevTerm > term) return bad(t, 'prevTerm', `an integer in [0, ${term}]`, prevTerm);
      if (!isNat(commit)) return bad(t, 'commit', 'a non-negative integer', commit);
      if (!Array.isArray(flat) || flat.length % ENTRY_STRIDE !== 0) {
        return bad(t, 'entries', `an array of ${ENTRY_STRIDE}-tuples`, flat);
      }
      const n = flat.length / ENTRY_STRIDE;
      if (n > bounds.entriesPerMessageMax) return bad(t, 'entries', `at most ${bounds.entriesPerMessageMax}`, n);
      const entries = new Array<Entry>(n);
      let lastTerm = prevTerm;
      for (let i = 0, j = 0; i < n; i++, j += ENTRY_STRIDE) {
        const eTerm: unknown = flat[j];
        const eType: unknown = flat[j + 1];
        const eData: unknown = flat[j + 2];
        if (!isNat(eTerm) || eTerm < lastTerm || eTerm > term) {
          return bad(t, `entries[${i}].term`, `an integer in [${lastTerm}, ${term}]`, eTerm);
        }
        if (!Number.isInteger(eType) || (eType as number) < 0 || (eType as number) > ENTRY_TYPE_MAX) {
          return bad(t, `entries[${i}].type`, 'an entry type (0..2)', eType);
        }
        if (!isBytes(eData)) return bad(t, `entries[${i}].data`, 'bytes', eData);
        lastTerm = eTerm;
        entries[i] = { term: eTerm, index: prevIndex + 1 + i, type: eType as EntryType, data: eData };
      }
      const msg: AppendMessage = { type: MT.Append, group, from, to, term, prevIndex, prevTerm, entries, commit };
      return msg;
    }
    case MT.AppendResp: {
      const index: unknown = x[3];
      const reject: unknown = x[4];
      const rejectHint: unknown = x[5];
      const hintTerm: unknown = x[6];
      if (!isNat(index)) return bad(t, 'index', 'a non-negative integer', index);
      if (typeof reject !== 'boolean') return bad(t, 'reject', 'a boolean', reject);
      if (!isNat(rejectHint)) return bad(t, 'rejectHint', 'a non-negative integer', rejectHint);
      if (!isNat(hintTerm)) return bad(t, 'hintTerm', 'a non-negative integer', hintTerm);
      return { type: MT.AppendResp, group, from, to, term, index, reject, rejectHint, hintTerm };
    }
    case MT.Heartbeat: {
      const commit: unknown = x[3];
      const ctx: unknown = x[4];
      if (!isNat(commit)) return bad(t, 'commit', 'a non-negative integer', commit);
      if (!isNat(ctx)) return bad(t, 'ctx', 'a non-negative integer', ctx);
      return { type: MT.Heartbeat, group, from, to, term, commit, ctx };
    }
    case MT.HeartbeatResp: {
      const ctx: unknown = x[3];
      if (!isNat(ctx)) return bad(t, 'ctx', 'a non-negative integer', ctx);
      return { type: MT.HeartbeatResp, group, from, to, term, ctx };
    }
    case MT.Snapshot: {
      const mIndex: unknown = x[3];
      const mTerm: unknown = x[4];
      const offset: unknown = x[7];
      const data: unknown = x[8];
      const done: unknown = x[9];
      if (!isNat(mIndex)) return bad(t, 'meta.index', 'a non-negative integer', mIndex);
      if (!isNat(mTerm) || mTerm > term) return bad(t, 'meta.term', `an integer in [0, ${term}]`, mTerm);
      const conf = validateConf({ voters: x[5], learners: x[6] }, bounds, t);
      if (typeof conf === 'string') return conf;
      if (!isNat(offset)) return bad(t, 'offset', 'a non-negative integer', offset);
      if (!isBytes(data)) return bad(t, 'data', 'bytes', data);
      if (typeof done !== 'boolean') return bad(t, 'done', 'a boolean', done);
      return { type: MT.Snapshot, group, from, to, term, meta: { index: mIndex, term: mTerm, conf }, offset, data, done };
    }
    case MT.SnapshotResp: {
      const offset: unknown = x[3];
      const index: unknown = x[4];
      const reject: unknown = x[5];
      if (!isNat(offset)) return bad(t, 'offset', 'a non-negative integer', offset);
      if (!isNat(index)) return bad(t, 'index', 'a non-negative integer', index);
      if (typeof reject !== 'boolean') return bad(t, 'reject', 'a boolean', reject);
      return { type: MT.SnapshotResp, group, from, to, term, offset, index, reject };
    }
    case MT.TimeoutNow:
      return { type: MT.TimeoutNow, group, from, to, term };
    case MT.ReadIndex: {
      const ctx: unknown = x[3];
      if (!isBytes(ctx)) return bad(t, 'ctx', 'bytes', ctx);
      return { type: MT.ReadIndex, group, from, to, term, ctx };
    }
    default: {
      const ctx: unknown = x[3];
      const index: unknown = x[4];
      if (!isBytes(ctx)) return bad(t, 'ctx', 'bytes', ctx);
      if (!isNat(index)) return bad(t, 'index', 'a non-negative integer', index);
      return { type: MT.ReadIndexResp, group, from, to, term, ctx, index };
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Batches and heartbeat coalescing
// ---------------------------------------------------------------------------------------------------------------

/** Numbers per coalesced heartbeat and heartbeat response. */
export const HB_STRIDE = 4;
export const HR_STRIDE = 3;

export function pushHeartbeat(hb: number[], m: HeartbeatMessage): void {
  hb.push(m.group, m.term, m.commit, m.ctx);
}

export function pushHeartbeatResp(hr: number[], m: HeartbeatRespMessage): void {
  hr.push(m.group, m.term, m.ctx);
}

/**
 * Builds a BATCH body from messages that all go from one node to one other node (the transport builds the same
 * body incrementally; this is the reference used by tests and tools).
 */
export function buildBatch(msgs: readonly Message[]): BatchBody {
  const body: BatchBody = { k: WireKind.Batch, m: [], hb: [], hr: [] };
  for (const m of msgs) {
    if (m.type === MT.Heartbeat) pushHeartbeat(body.hb, m);
    else if (m.type === MT.HeartbeatResp) pushHeartbeatResp(body.hr, m);
    else body.m.push(packRaftMessage(m));
  }
  return body;
}

/**
 * Validates a BATCH body received on the link from `from` to `to` and appends its messages to `out`: the ordinary
 * messages in order, then the expanded heartbeats, then the heartbeat responses, all addressed from `from` to `to`.
 * Returns null, or why the batch is malformed (then `out` may hold part of it: discard it).
 */
export function expandBatch(body: Record<string, unknown>, from: NodeId, to: NodeId, out: Message[],
  bounds: RaftMessageBounds = RAFT_MESSAGE_BOUNDS_DEFAULT): string | null {
  const m = body['m'];
  const hb = body['hb'];
  const hr = body['hr'];
  if (!Array.isArray(m)) return `batch.m: expected an array, got ${describe(m)}`;
  if (!Array.isArray(hb) || hb.length % HB_STRIDE !== 0) {
    return `batch.hb: expected an array of ${HB_STRIDE}-tuples, got ${describe(hb)}${Array.isArray(hb) ? ` of length ${hb.length}` : ''}`;
  }
  if (!Array.isArray(hr) || hr.length % HR_STRIDE !== 0) {
    return `batch.hr: expected an array of ${HR_STRIDE}-tuples, got ${describe(hr)}${Array.isArray(hr) ? ` of length ${hr.length}` : ''}`;
  }
  for (let i = 0; i < m.length; i++) {
    const v = unpackRaftMessage(m[i], from, to, bounds);
    if (typeof v === 'string') return `batch.m[${i}]: ${v}`;
    out.push(v);
  }
  for (let i = 0; i < hb.length; i += HB_STRIDE) {
    const group: unknown = hb[i];
    const term: unknown = hb[i + 1];
    const commit: unknown = hb[i + 2];
    const ctx: unknown = hb[i + 3];
    if (!isNat(group) || !isNat(term) || !isNat(commit) || !isNat(ctx)) {
      return `batch.hb[${i / HB_STRIDE}]: expected 4 non-negative integers`;
    }
    const msg: HeartbeatMessage = { type: MT.Heartbeat, group: group as GroupId, from, to, term, commit, ctx };
    out.push(msg);
  }
  for (let i = 0; i < hr.length; i += HR_STRIDE) {
    const group: unknown = hr[i];
    const term: unknown = hr[i + 1];
    const ctx: unknown = hr[i + 2];
    if (!isNat(group) || !isNat(term) || !isNat(ctx)) {
      return `batch.hr[${i / HR_STRIDE}]: expected 3 non-negative integers`;
    }
    const msg: HeartbeatRespMessage = { type: MT.HeartbeatResp, group: group as GroupId, from, to, term, ctx };
    out.push(msg);
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// Envelope checks for the other kinds
// ---------------------------------------------------------------------------------------------------------------

function isShortString(x: unknown): x is string {
  return typeof x === 'string' && x.length <= HANDSHAKE_STRING_CHARS_MAX;
}

/** Checks a HELLO body. The version is checked by the caller first (a later version may change other fields). */
export function validateHello(x: Record<string, unknown>): HelloBody | string {
  const { v, cluster, node, worker, topo, auth, challenge } = x;
  if (!isNat(v)) return `hello.v: expected a version number, got ${describe(v)}`;
  if (!isShortString(cluster)) return `hello.cluster: expected a string of at most ${HANDSHAKE_STRING_CHARS_MAX} chars`;
  if (!isNodeId(node)) return `hello.node: expected a node id, got ${describe(node)}`;
  if (!isNat(worker)) return `hello.worker: expected a worker index, got ${describe(worker)}`;
  if (!isShortString(topo)) return `hello.topo: expected a string of at most ${HANDSHAKE_STRING_CHARS_MAX} chars`;
  if (typeof auth !== 'boolean') return `hello.auth: expected a boolean, got ${describe(auth)}`;
  if (!isBytes(challenge) || challenge.length !== CHALLENGE_BYTES) {
    return `hello.challenge: expected ${CHALLENGE_BYTES} bytes, got ${describe(challenge)}`;
  }
  return { k: WireKind.Hello, v, cluster, node, worker, topo, auth, challenge };
}

export function validateHelloAck(x: Record<string, unknown>): HelloAckBody | string {
  const proof = x['proof'];
  if (!isBytes(proof) || (proof.length !== 0 && proof.length !== PROOF_BYTES)) {
    return `hello_ack.proof: expected 0 or ${PROOF_BYTES} bytes, got ${describe(proof)}`;
  }
  return { k: WireKind.HelloAck, proof };
}

export function validateReject(x: Record<string, unknown>): RejectBody | string {
  const code = x['code'];
  const reason = x['reason'];
  if (typeof code !== 'string' || !REJECT_CODES.has(code)) return `reject.code: unknown code ${describe(code)}`;
  if (!isShortString(reason)) return `reject.reason: expected a string of at most ${HANDSHAKE_STRING_CHARS_MAX} chars`;
  return { k: WireKind.Reject, code: code as RejectCode, reason };
}

export function validateApp(x: Record<string, unknown>): AppBody | string {
  const id = x['id'];
  const kind = x['kind'];
  if (!isNat(id)) return `app.id: expected a non-negative integer, got ${describe(id)}`;
  if (kind !== 'req' && kind !== 'res' && kind !== 'err') return `app.kind: expected req|res|err, got ${describe(kind)}`;
  return { k: WireKind.App, id, kind, payload: x['payload'] };
}

/** The frame body's kind, or null when it is not an object with a known numeric `k`. */
export function wireKindOf(body: unknown): WireKind | null {
  if (!isRecord(body)) return null;
  const k = body['k'];
  return k === 1 || k === 2 || k === 3 || k === 4 || k === 5 ? k : null;
}

export { isRecord as isWireRecord };
