/**
 * Membership changes, one server at a time (thesis section 4.1), and their encoding in log entries.
 *
 * A ConfChange entry carries the change AND the full configuration that results from it, so that any node can
 * adopt the configuration from the entry alone (a node that joins late, or replays the log from a snapshot,
 * never needs to know the base the change was applied to). Encoding (little endian):
 *
 *   u8 version (1) | u8 type | u32 node | u16 voterCount | u32 voter* | u16 learnerCount | u32 learner*
 */
import { ConfChangeType, type ConfChange, type ConfState, type NodeId } from './types.js';
import { RaftInvariantError } from './errors.js';

const CONF_CHANGE_VERSION = 1;

/** A decoded ConfChange entry: the change and the configuration that results from it. */
export interface ConfChangeRecord extends ConfChange {
  conf: ConfState;
}

export function encodeConfChange(change: ConfChange, conf: ConfState): Uint8Array {
  const n = 1 + 1 + 4 + 2 + 4 * conf.voters.length + 2 + 4 * conf.learners.length;
  const out = new Uint8Array(n);
  const dv = new DataView(out.buffer);
  let o = 0;
  dv.setUint8(o, CONF_CHANGE_VERSION);
  o += 1;
  dv.setUint8(o, change.type);
  o += 1;
  dv.setUint32(o, change.node, true);
  o += 4;
  dv.setUint16(o, conf.voters.length, true);
  o += 2;
  for (const v of conf.voters) {
    dv.setUint32(o, v, true);
    o += 4;
  }
  dv.setUint16(o, conf.learners.length, true);
  o += 2;
  for (const l of conf.learners) {
    dv.setUint32(o, l, true);
    o += 4;
  }
  return out;
}

/** Decodes a ConfChange entry's data; throws RaftInvariantError on malformed data (entries are trusted input). */
export function decodeConfChange(data: Uint8Array): ConfChangeRecord {
  const bad = (why: string): never => {
    throw new RaftInvariantError(`conf change entry: ${why}`);
  };
  if (data.byteLength < 10) bad(`too short (${data.byteLength} bytes)`);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let o = 0;
  if (dv.getUint8(o) !== CONF_CHANGE_VERSION) bad(`unknown version ${dv.getUint8(o)}`);
  o += 1;
  const type = dv.getUint8(o);
  if (type > ConfChangeType.RemoveNode) bad(`unknown type ${type}`);
  o += 1;
  const node = dv.getUint32(o, true);
  o += 4;
  const readList = (): NodeId[] => {
    if (o + 2 > data.byteLength) bad('truncated');
    const count = dv.getUint16(o, true);
    o += 2;
    if (o + 4 * count > data.byteLength) bad('truncated');
    const ids: NodeId[] = [];
    for (let i = 0; i < count; i++) {
      ids.push(dv.getUint32(o, true));
      o += 4;
    }
    return ids;
  };
  const voters = readList();
  const learners = readList();
  if (o !== data.byteLength) bad('trailing bytes');
  return { type: type as ConfChangeType, node, conf: { voters, learners } };
}

/** Why a change cannot be applied to `conf`, or null if it can. */
export function validateConfChange(conf: ConfState, cc: ConfChange): string | null {
  if (!Number.isInteger(cc.node) || cc.node <= 0 || cc.node > 0xffffffff) return `bad node id ${cc.node}`;
  const isVoter = conf.voters.includes(cc.node);
  const isLearner = conf.learners.includes(cc.node);
  switch (cc.type) {
    case ConfChangeType.AddLearner:
      return isVoter || isLearner ? `node ${cc.node} is already a member` : null;
    case ConfChangeType.PromoteLearner:
      return isLearner ? null : `node ${cc.node} is not a learner`;
    case ConfChangeType.RemoveNode:
      if (!isVoter && !isLearner) return `node ${cc.node} is not a member`;
      if (isVoter && conf.voters.length === 1) return `cannot remove the last voter ${cc.node}`;
      return null;
    default:
      return `unknown change type ${String((cc as ConfChange).type)}`;
  }
}

/** The configuration after `cc` (which must be valid). Lists stay sorted. */
export function applyConfChange(conf: ConfState, cc: ConfChange): ConfState {
  const voters = conf.voters.filter((v) => v !== cc.node);
  const learners = conf.learners.filter((l) => l !== cc.node);
  if (cc.type === ConfChangeType.AddLearner) learners.push(cc.node);
  else if (cc.type === ConfChangeType.PromoteLearner) voters.push(cc.node);
  return normalizeConf({ voters, learners });
}

export function normalizeConf(conf: ConfState): ConfState {
  return {
    voters: [...new Set(conf.voters)].sort((a, b) => a - b),
    learners: [...new Set(conf.learners)].sort((a, b) => a - b),
  };
}

export function confEquals(a: ConfState, b: ConfState): boolean {
  const x = normalizeConf(a);
  const y = normalizeConf(b);
  return (
    x.voters.length === y.voters.length &&
    x.learners.length === y.learners.length &&
    x.voters.every((v, i) => v === y.voters[i]) &&
    x.learners.every((v, i) => v === y.learners[i])
  );
}

export const CONF_CHANGE_TYPE_NAMES = ['add-learner', 'promote', 'remove'] as const;
