/**
 * The rule of what a host may send or apply before a Ready is durable (src/raft/ready-order.ts), on Readies from
 * real cores: a single voter (its own entry commits in the Ready that persists it) and a 3-voter leader (appends
 * may leave early, append answers may not).
 */
import t from 'tap';
import { RaftCore } from '../../src/raft/core.js';
import { durableBeforeRound, sendsBeforeSync } from '../../src/raft/ready-order.js';
import { MessageType, Role, type Message, type RaftBootState, type Ready } from '../../src/raft/types.js';
import { createRng } from '../../src/util/rng.js';
import { coreConfig } from '../support/raft-config.js';

const config = (id: number) => coreConfig(id, { group: 1 });

function boot(voters: number[]): RaftBootState {
  return { hardState: { term: 0, vote: 0, commit: 0 }, snapshot: null, entries: [], initialConf: { voters, learners: [] }, applied: 0 };
}

/** Takes and advances every Ready of `c`, returning them (a host that persists each before the next). */
function drain(c: RaftCore): Ready[] {
  const out: Ready[] = [];
  while (c.hasReady()) {
    const rd = c.ready();
    out.push(rd);
    c.advance(rd);
  }
  return out;
}

t.test('a single voter: an entry committed in the Ready that persists it waits for the fdatasync', async (t) => {
  const c = new RaftCore(config(1), boot([1]), createRng(1));
  c.campaign();
  drain(c);
  t.equal(c.role, Role.Leader);
  t.ok(c.propose(Buffer.from('x')).ok);
  const rd = c.ready();
  const own = rd.entries[rd.entries.length - 1]!;
  t.ok(rd.committed.some((e) => e.index === own.index), 'the new entry is committed in the Ready that persists it');
  t.ok(durableBeforeRound(rd) < own.index, 'so it is not applied before the fdatasync');
  t.equal(durableBeforeRound(rd), rd.entries[0]!.index - 1, 'everything below the Ready\'s first entry was durable');
  c.advance(rd);
  t.ok(c.propose(Buffer.from('y')).ok);
  const rd2 = c.ready();
  t.ok(rd2.entries.length > 0);
  t.equal(durableBeforeRound(rd2), rd2.entries[0]!.index - 1);
  c.advance(rd2);
});

t.test('a Ready without entries: all of its committed entries were durable; with a snapshot: none early', async (t) => {
  const base: Ready = { softState: null, hardState: null, entries: [], committed: [], messages: [], snapshot: null, readStates: [] } as unknown as Ready;
  t.equal(durableBeforeRound(base), Number.MAX_SAFE_INTEGER);
  const withSnap = { ...base, snapshot: { meta: { index: 9, term: 2, conf: { voters: [1], learners: [] } }, data: new Uint8Array() } } as unknown as Ready;
  t.equal(durableBeforeRound(withSnap), 0);
});

t.test('three voters: the leader\'s appends may leave before its fdatasync, the followers\' answers may not', async (t) => {
  const cores = new Map<number, RaftCore>([1, 2, 3].map((id) => [id, new RaftCore(config(id), boot([1, 2, 3]), createRng(id))]));
  const deliver = (msgs: Message[]) => {
    for (const m of msgs) cores.get(m.to)!.step(m);
  };
  // Elect node 1, delivering everything (each Ready "persisted" before its messages leave).
  cores.get(1)!.campaign();
  for (let i = 0; i < 50; i++) {
    const msgs: Message[] = [];
    for (const c of cores.values()) for (const rd of drain(c)) msgs.push(...rd.messages);
    if (msgs.length === 0) break;
    deliver(msgs);
  }
  const leader = cores.get(1)!;
  t.equal(leader.role, Role.Leader);
  const term = leader.term;
  t.ok(leader.propose(Buffer.from('w')).ok);
  const rd = leader.ready();
  const appends = rd.messages.filter((m) => m.type === MessageType.Append);
  t.ok(appends.length === 2 && appends.every((m) => m.type === MessageType.Append && m.entries.length > 0), 'the leader\'s Ready carries appends of its new entry');
  t.ok(appends.every((m) => sendsBeforeSync(m, term)), 'they may leave before the leader\'s fdatasync');
  t.notOk(appends.some((m) => sendsBeforeSync(m, term - 1)), 'but not when their term is not durable yet');
  leader.advance(rd);
  deliver(appends);
  const follower = cores.get(2)!;
  const frd = follower.ready();
  const answers = frd.messages.filter((m) => m.type === MessageType.AppendResp);
  t.ok(answers.length > 0, 'the follower answers');
  t.notOk(answers.some((m) => sendsBeforeSync(m, follower.term)), 'an append answer never leaves before the fdatasync');
  follower.advance(frd);
  for (const type of [MessageType.Vote, MessageType.VoteResp, MessageType.PreVote, MessageType.Snapshot, MessageType.TimeoutNow, MessageType.ReadIndex, MessageType.ReadIndexResp]) {
    t.notOk(sendsBeforeSync({ type, term, group: 1, from: 1, to: 2 } as unknown as Message, term), `type ${type} waits`);
  }
});
