import t from 'tap';
import { RaftCore, decodeConfChange, encodeConfChange, RaftConfigError, RaftInvariantError } from '../../src/raft/core.js';
import {
  ConfChangeType,
  MessageType,
  Role,
  type Message,
  type RaftConfig,
  type RaftBootState,
} from '../../src/raft/types.js';
import { createRng } from '../../src/util/rng.js';
import { describeMessage } from '../../src/raft/describe.js';
import { coreConfig } from '../support/raft-config.js';

const config = coreConfig;

function boot(voters: number[]): RaftBootState {
  return {
    hardState: { term: 0, vote: 0, commit: 0 },
    snapshot: null,
    entries: [],
    initialConf: { voters, learners: [] },
    applied: 0,
  };
}

/** Drives cores to quiescence, delivering every message (in memory, no persistence). */
function pump(cores: Map<number, RaftCore>, rounds = 10_000): void {
  for (let r = 0; r < rounds; r++) {
    const msgs: Message[] = [];
    for (const c of cores.values()) {
      while (c.hasReady()) {
        const rd = c.ready();
        for (const m of rd.messages) msgs.push(m);
        c.advance(rd);
      }
    }
    if (msgs.length === 0) return;
    for (const m of msgs) cores.get(m.to)?.step(m);
  }
  throw new Error('pump: no quiescence');
}

function cluster(n: number, over: Partial<RaftConfig> = {}): Map<number, RaftCore> {
  const ids = Array.from({ length: n }, (_, k) => k + 1);
  return new Map(ids.map((id) => [id, new RaftCore(config(id, over), boot(ids), createRng(id))]));
}

t.test('options out of range are refused with the option named', async (t) => {
  t.throws(() => new RaftCore(config(1, { heartbeatTicks: 0 }), boot([1]), createRng(1)), RaftConfigError);
  t.throws(() => new RaftCore(config(1, { electionTicksMin: 1 }), boot([1]), createRng(1)), /electionTicksMin/);
  t.throws(() => new RaftCore(config(1, { readMode: 'lease' }), boot([1]), createRng(1)), /checkQuorum/);
  t.throws(() => new RaftCore(config(0), boot([1]), createRng(1)), /id/);
});

t.test('a single voter elects itself and commits at once', async (t) => {
  const c = new RaftCore(config(1), boot([1]), createRng(1));
  c.campaign();
  t.equal(c.role, Role.Leader);
  const r = c.propose(new TextEncoder().encode('x'));
  t.same(r, { ok: true, index: 2, term: 1 });
  const rd = c.ready();
  t.same(rd.entries.map((e) => e.index), [1, 2]);
  t.same(rd.committed.map((e) => e.index), [1, 2]);
  t.same(rd.hardState, { term: 1, vote: 1, commit: 2 });
  c.advance(rd);
  t.equal(c.applied, 2);
  t.notOk(c.hasReady());
});

t.test('messages of another group are ignored and messages for another node throw', async (t) => {
  const c = new RaftCore(config(1), boot([1, 2, 3]), createRng(1));
  c.step({ type: MessageType.Vote, group: 8, from: 2, to: 1, term: 5, lastIndex: 0, lastTerm: 0, transfer: false });
  t.equal(c.term, 0);
  t.throws(
    () => c.step({ type: MessageType.Vote, group: 7, from: 2, to: 3, term: 5, lastIndex: 0, lastTerm: 0, transfer: false }),
    RaftInvariantError,
  );
  c.step({ type: MessageType.Vote, group: 7, from: 2, to: 1, term: 5, lastIndex: 0, lastTerm: 0, transfer: false });
  t.equal(c.term, 5);
  const rd = c.ready();
  t.equal(rd.messages.length, 1);
  t.equal(describeMessage(rd.messages[0]!), '[g7] 1->2 VoteResp t5 granted');
  t.same(rd.hardState, { term: 5, vote: 2, commit: 0 });
});

t.test('ready and advance must alternate with the same Ready', async (t) => {
  const c = new RaftCore(config(1), boot([1]), createRng(1));
  c.campaign();
  const rd = c.ready();
  t.throws(() => c.ready(), RaftInvariantError);
  t.notOk(c.hasReady(), 'nothing is ready while a Ready is outstanding');
  t.throws(() => c.advance({ ...rd }), /not the outstanding/);
  c.advance(rd);
  t.throws(() => c.advance(rd), /without an outstanding/);
});

t.test('a boot state with a commit index beyond the log is refused', async (t) => {
  const b = boot([1]);
  b.hardState = { term: 1, vote: 0, commit: 3 };
  t.throws(() => new RaftCore(config(1), b, createRng(1)), RaftInvariantError);
});

t.test('a conf change entry round-trips the change and the resulting configuration', async (t) => {
  const data = encodeConfChange({ type: ConfChangeType.PromoteLearner, node: 4 }, { voters: [1, 2, 3, 4], learners: [5] });
  t.same(decodeConfChange(data), { type: ConfChangeType.PromoteLearner, node: 4, conf: { voters: [1, 2, 3, 4], learners: [5] } });
  t.throws(() => decodeConfChange(data.subarray(0, 8)), RaftInvariantError);
  const bad = data.slice();
  bad[0] = 9;
  t.throws(() => decodeConfChange(bad), /version/);
});

t.test('a restarted node keeps its term, vote, log and configuration', async (t) => {
  const cores = cluster(3);
  cores.get(1)!.campaign();
  pump(cores);
  const leader = cores.get(1)!;
  leader.proposeConfChange({ type: ConfChangeType.AddLearner, node: 4 });
  pump(cores);
  const c2 = cores.get(2)!;
  const st = c2.status();
  const again = new RaftCore(
    config(2),
    {
      hardState: { term: st.term, vote: st.vote, commit: st.commit },
      snapshot: null,
      entries: c2.entries(1, c2.lastIndex + 1),
      initialConf: { voters: [1, 2, 3], learners: [] },
      applied: st.applied,
    },
    createRng(9),
  );
  t.same(again.status().conf, { voters: [1, 2, 3], learners: [4] });
  t.equal(again.term, st.term);
  t.equal(again.status().vote, 1);
  t.equal(again.commit, st.commit);
  t.notOk(again.hasReady(), 'nothing to redo: all was applied');
});

t.test('a leader replicates 100k proposals across groups quickly', async (t) => {
  const groups = 4;
  const per = 25_000;
  const data = new Uint8Array(64);
  const clusters = Array.from({ length: groups }, (_, g) => {
    const ids = [1, 2, 3];
    return new Map(ids.map((id) => [id, new RaftCore({ ...config(id), group: g }, boot(ids), createRng(id + g))]));
  });
  for (const cl of clusters) {
    cl.get(1)!.campaign();
    pump(cl);
  }
  const start = performance.now();
  for (let batch = 0; batch < per / 500; batch++) {
    for (const cl of clusters) {
      const leader = cl.get(1)!;
      for (let i = 0; i < 500; i++) {
        const r = leader.propose(data);
        if (!r.ok) throw new Error(`refused ${r.code}`);
      }
      pump(cl);
    }
  }
  const ms = performance.now() - start;
  for (const cl of clusters) {
    for (const c of cl.values()) t.equal(c.commit, per + 1, `node ${c.id} group ${c.group} committed everything`);
  }
  const rate = Math.round((groups * per) / (ms / 1000));
  t.comment(`${groups * per} entries in ${ms.toFixed(0)} ms: ${rate} entries/s (leader + 2 followers in one thread)`);
  t.ok(rate > 50_000, `rate ${rate}/s (target 100k+/s on an idle core)`);
});
