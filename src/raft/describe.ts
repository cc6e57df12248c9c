/**
 * A compact, stable text form of Raft messages, entries and Readies, for scenario tests, logs and the
 * simulator's failure output. One message per line, for example:
 *
 *   1->2 Append t2 prev=1/5 commit=5 [2/6 noop, 2/7 "put x"]
 *   2->1 AppendResp t2 reject index=7 hint=5/1
 *   3->1 PreVote t3 last=2/9 transfer
 *   1->2 Snapshot t2 snap=9/2 v(1 2 3) offset=0 len=4 done
 *
 * Entries are `term/index` followed by the payload: `noop`, a quoted string when the data is printable ASCII
 * (else `0x` + hex), or `conf <change> -> v(...) l(...)`. A group other than 0 is prefixed as `[g7]`.
 */
import { EntryType, MessageType, Role, type ConfState, type Entry, type Message, type Ready } from './types.js';
import { CONF_CHANGE_TYPE_NAMES, decodeConfChange } from './conf-change.js';

export const ROLE_NAMES: Record<Role, string> = {
  [Role.Follower]: 'follower',
  [Role.PreCandidate]: 'pre-candidate',
  [Role.Candidate]: 'candidate',
  [Role.Leader]: 'leader',
};

const MESSAGE_NAMES: Record<MessageType, string> = {
  [MessageType.Vote]: 'Vote',
  [MessageType.VoteResp]: 'VoteResp',
  [MessageType.PreVote]: 'PreVote',
  [MessageType.PreVoteResp]: 'PreVoteResp',
  [MessageType.Append]: 'Append',
  [MessageType.AppendResp]: 'AppendResp',
  [MessageType.Heartbeat]: 'Heartbeat',
  [MessageType.HeartbeatResp]: 'HeartbeatResp',
  [MessageType.Snapshot]: 'Snapshot',
  [MessageType.SnapshotResp]: 'SnapshotResp',
  [MessageType.TimeoutNow]: 'TimeoutNow',
  [MessageType.ReadIndex]: 'ReadIndex',
  [MessageType.ReadIndexResp]: 'ReadIndexResp',
};

/** Printable ASCII as a quoted string, anything else as hex; long payloads are cut. */
export function describeData(d: Uint8Array, max = 32): string {
  let printable = true;
  for (let i = 0; i < d.length; i++) {
    const c = d[i] as number;
    if (c < 0x20 || c > 0x7e || c === 0x22 || c === 0x5c) {
      printable = false;
      break;
    }
  }
  const cut = d.length > max;
  const part = cut ? d.subarray(0, max) : d;
  if (printable) return `"${String.fromCharCode(...part)}${cut ? '...' : ''}"`;
  let hex = '0x';
  for (const b of part) hex += b.toString(16).padStart(2, '0');
  return cut ? `${hex}...(${d.length} bytes)` : hex;
}

export function describeConf(c: ConfState): string {
  const l = c.learners.length > 0 ? ` l(${c.learners.join(' ')})` : '';
  return `v(${c.voters.join(' ')})${l}`;
}

export function describeEntry(e: Entry): string {
  const head = `${e.term}/${e.index}`;
  switch (e.type) {
    case EntryType.Noop:
      return `${head} noop`;
    case EntryType.ConfChange: {
      try {
        const cc = decodeConfChange(e.data);
        return `${head} conf ${CONF_CHANGE_TYPE_NAMES[cc.type]} ${cc.node} -> ${describeConf(cc.conf)}`;
      } catch {
        return `${head} conf <bad ${describeData(e.data)}>`;
      }
    }
    default:
      return `${head} ${describeData(e.data)}`;
  }
}

export function describeEntries(ents: readonly Entry[], max = 8): string {
  if (ents.length <= max) return ents.map(describeEntry).join(', ');
  const head = ents.slice(0, max - 2).map(describeEntry).join(', ');
  const tail = ents.slice(-2).map(describeEntry).join(', ');
  return `${head}, ...(${ents.length - max} more), ${tail}`;
}

export function describeMessage(m: Message): string {
  let s = `${m.group !== 0 ? `[g${m.group}] ` : ''}${m.from}->${m.to} ${MESSAGE_NAMES[m.type]} t${m.term}`;
  switch (m.type) {
    case MessageType.Vote:
    case MessageType.PreVote:
      s += ` last=${m.lastTerm}/${m.lastIndex}${m.transfer ? ' transfer' : ''}`;
      break;
    case MessageType.VoteResp:
    case MessageType.PreVoteResp:
      s += m.reject ? ' rejected' : ' granted';
      break;
    case MessageType.Append:
      s += ` prev=${m.prevTerm}/${m.prevIndex} commit=${m.commit} [${describeEntries(m.entries)}]`;
      break;
    case MessageType.AppendResp:
      s += m.reject ? ` reject index=${m.index} hint=${m.hintTerm}/${m.rejectHint}` : ` index=${m.index}`;
      break;
    case MessageType.Heartbeat:
      s += ` commit=${m.commit}${m.ctx !== 0 ? ` ctx=${m.ctx}` : ''}`;
      break;
    case MessageType.HeartbeatResp:
      if (m.ctx !== 0) s += ` ctx=${m.ctx}`;
      break;
    case MessageType.Snapshot:
      s += ` snap=${m.meta.term}/${m.meta.index} ${describeConf(m.meta.conf)} offset=${m.offset} len=${m.data.byteLength}${m.done ? ' done' : ''}`;
      break;
    case MessageType.SnapshotResp:
      s += `${m.reject ? ' reject' : ''} offset=${m.offset}${m.index > 0 ? ` installed=${m.index}` : ''}`;
      break;
    case MessageType.TimeoutNow:
      break;
    case MessageType.ReadIndex:
      s += ` ctx=${describeData(m.ctx)}`;
      break;
    case MessageType.ReadIndexResp:
      s += ` ctx=${describeData(m.ctx)} index=${m.index}`;
      break;
  }
  return s;
}

/** A multi-line description of a Ready (no blank lines; empty parts are left out). */
export function describeReady(rd: Ready, indent = ''): string {
  const lines: string[] = [];
  if (rd.softState) lines.push(`soft: leader=${rd.softState.leader} role=${ROLE_NAMES[rd.softState.role]}`);
  if (rd.hardState) lines.push(`hard: term=${rd.hardState.term} vote=${rd.hardState.vote} commit=${rd.hardState.commit}`);
  if (rd.snapshot) {
    const m = rd.snapshot.meta;
    lines.push(`snapshot: ${m.term}/${m.index} ${describeConf(m.conf)} ${describeData(rd.snapshot.data)}`);
  }
  if (rd.entries.length > 0) lines.push(`entries: ${describeEntries(rd.entries)}`);
  if (rd.committed.length > 0) lines.push(`committed: ${describeEntries(rd.committed)}`);
  for (const r of rd.readStates) lines.push(`read: ctx=${describeData(r.ctx)} index=${r.index}`);
  if (rd.messages.length > 0) {
    lines.push('messages:');
    for (const m of rd.messages) lines.push(`  ${describeMessage(m)}`);
  }
  return lines.map((l) => indent + l).join('\n');
}
