/**
 * The order in which a Raft host may act on a Ready: what may leave or be applied before the Ready's entries and
 * hard state are durable. Shared by the real host (src/node/raft-host.ts) and the simulator's host loop
 * (test/sim/simulator.ts), so the simulator checks exactly the rule the host runs.
 */
import { MessageType, type Message, type Ready } from './types.js';

/**
 * May `m` leave before its round's fdatasync? Only messages that acknowledge nothing the round persists, and only
 * of the term that was already durable when the round began (a message after a term change waits: its term is in
 * this round's hard state):
 * - A leader's appends (Raft thesis section 10.2.1; etcd's raftNode sends a leader's messages before saving). The
 *   leader writes its log in parallel with replicating it. Its own copy of a new entry counts toward the commit
 *   index before it is durable, so an entry may commit while only a follower has it on disk, but nothing depends on
 *   that commit before the leader's fdatasync: the group is in one round at a time, so the commit index computed
 *   from the followers' answers reaches the state machine (the client's reply) and the followers (in appends and
 *   heartbeats) only in a later round, after this round's fdatasync. If the leader crashes first, nobody was told
 *   the entry committed, and a new leader may keep or drop it. A leader cannot get two different entries to the
 *   same (term, index) either: after a restart it is a follower, and it can lead only in a newer term.
 * - Heartbeats and heartbeat answers. A heartbeat carries the leader's (durable) term, min(commit, the follower's
 *   match) and a ReadIndex context; an answer carries the follower's term and that context. For the reason above
 *   the commit index never points at an entry of this round.
 * Everything else waits: append answers (they say "I have it on disk"), votes and their answers, snapshots,
 * TimeoutNow and ReadIndex traffic.
 */
export function sendsBeforeSync(m: Message, durableTerm: number): boolean {
  return (
    (m.type === MessageType.Append || m.type === MessageType.Heartbeat || m.type === MessageType.HeartbeatResp) &&
    m.term === durableTerm
  );
}

/**
 * The highest index of `rd.committed` that is already durable here when the round begins, so it may be applied
 * before the round's fdatasync: every entry below the first one this Ready hands over for persisting (the core
 * hands over all of its unpersisted entries at once, and a group's previous round finished its fdatasync before
 * this one began). Entries the Ready persists (a follower learns an entry and its commit in one append; a single
 * voter commits its own entry at once) wait for the fdatasync, and nothing is applied early when the Ready carries
 * a snapshot (it is installed after the fdatasync, before any entry).
 */
export function durableBeforeRound(rd: Ready): number {
  if (rd.snapshot) return 0;
  const first = rd.entries[0];
  return first === undefined ? Number.MAX_SAFE_INTEGER : first.index - 1;
}
