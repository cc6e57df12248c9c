/**
 * RaftHost liveness when its thread stalls or its disk is slow (src/node/raft-host.ts, header "Liveness on a busy
 * machine"). Three real RaftHosts in this process, each with its own WAL and snapshot directory and a real
 * PeerTransport on loopback (test/support/raft-host-cluster.ts); every host's transport is wrapped by an observer that
 * records what the host sends.
 *
 * What is checked:
 * - After a stall of the event loop much longer than the election timeout, a node steps what peers sent during the
 *   stall BEFORE its next tick: no node campaigns and no leader steps down (a tick run first, or ticks caught up
 *   for the time lost, would make the follower campaign before it reads the leader's queued heartbeat).
 * - Under load, repeated long stalls change neither the term nor the leader.
 * - Heartbeats and heartbeat answers leave without waiting for an fdatasync: while a round's entries are being
 *   made durable, and for an idle group while a busy group's round waits for its fdatasync.
 * - A deposed leader's proposals beyond the new leader's log are rejected (NOTLEADER, retryable) as soon as it
 *   applies the new leader's first entry, instead of waiting for the log to grow that far.
 *
 * Limits: every wait is bounded (WAIT_MS); stalls are busy-waits of STALL_MS; the whole file takes ~20-40 s on a
 * busy 2-core machine. Hosts, transports, WALs and temp dirs are closed in teardown, also on failure.
 */
import t from 'tap';
import { HostError } from '../../src/node/raft-host.js';
import { MessageType, type Message, type NodeId } from '../../src/raft/types.js';
import { busyWait, electNode1, startCluster, view, waitFor, WAIT_MS, type Cluster, type Sent } from '../support/raft-host-cluster.js';

/**
 * A load loop's rejection handler: a refused proposal (HostError: the node is stopping at teardown, or lost its
 * leadership, which the assertions report) ends nothing; anything else is a bug and fails the test.
 */
async function refusedOnly(err: unknown): Promise<void> {
  if (!(err instanceof HostError)) throw err;
  await new Promise((r) => setTimeout(r, 5));
}

const CAMPAIGN_TYPES = new Set<MessageType>([MessageType.PreVote, MessageType.Vote]);

/** Event-loop gaps (performance.now() ms, [from, to]) of at least this long count as stalls the test did not cause. */
const FOREIGN_GAP_MS = 80;

/** What an attempt of the stall test saw: stalls it did not cause, campaigns after its stalls, roles before and after. */
type Verdict = { foreignStalls: number; campaigns: string[]; before: string; after: string };

/** Records the gaps of at least `minMs` in this process's event loop, as seen by a 10 ms timer, until stop(). */
function watchLoop(minMs: number): { gaps: [number, number][]; stop(): void } {
  const gaps: [number, number][] = [];
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    if (now - last >= minMs) gaps.push([last, now]);
    last = now;
  }, 10);
  return { gaps, stop: () => clearInterval(timer) };
}

t.test('after a stall, a node steps what arrived meanwhile before it ticks (no campaign, no step-down)', async (t) => {
  // Election timeout 2 or 3 ticks, a heartbeat every tick: a follower is one tick from its timeout whenever the
  // leader's heartbeat is in flight. The stall starts right after the leader's heartbeat frame left, so after the
  // stall the follower has that heartbeat waiting on its socket. A tick run before it is read (or the ticks of
  // the stall caught up) would fire its election timer; several seeds, so that some follower draws 2.
  //
  // With timeouts this tight, a stall the test did not cause (the machine or a parallel test file holding this
  // process for a tick or more) may start a legitimate election: the three in-process nodes then tick in an order
  // no real deployment shares. A 10 ms timer watches this process's event loop (watchLoop), so such an attempt is
  // recognised, reported as inconclusive and run again (at most ATTEMPTS times in all); only an attempt whose event
  // loop stalled for the test's own stalls alone is judged.
  const groups = [0];
  const TRIALS = 4;
  const STALLS = 3;
  const ATTEMPTS = 3;
  const STALL_MS = 1_000; // > 3 x the longest election timeout (3 ticks x 100 ms)
  for (let trial = 0; trial < TRIALS; trial++) {
    await t.test(`seed ${trial + 1}`, async (t) => {
      for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
        let verdict: Verdict | null = null;
        // Its own subtest, so that its cluster is torn down before the next attempt starts.
        await t.test(`attempt ${attempt}`, async (t) => {
          const c = await startCluster(t, { groups, tickMs: 100, heartbeatTicks: 1, electionTicksMin: 2, fsync: 'never', seed: trial + 1 });
          await electNode1(c, groups);
          const before = view(c, groups);
          const loop = watchLoop(FOREIGN_GAP_MS);
          const ours: [number, number][] = [];
          const mark = c.sent.length;
          let stallsLeft = STALLS;
          let armed = true;
          c.afterSend = (from, msgs) => {
            if (!armed || from !== 1 || !msgs.some((m) => m.type === MessageType.Heartbeat)) return;
            armed = false;
            // The transport flushes in a setImmediate queued before this one: the heartbeat frame is in the kernel.
            setImmediate(() => {
              const from = performance.now();
              busyWait(STALL_MS);
              ours.push([from, performance.now()]);
              stallsLeft--;
            });
          };
          for (let i = 0; i < STALLS; i++) {
            armed = true;
            await waitFor(() => stallsLeft === STALLS - i - 1, `stall ${i + 1}`);
            // Let the nodes run a few ticks between stalls.
            await new Promise((r) => setTimeout(r, 300));
          }
          c.afterSend = null;
          loop.stop();
          const foreignStalls = loop.gaps.filter(([a, b]) => !ours.some(([x, y]) => a < y && x < b)).length;
          const campaigns = c.sent.slice(mark).filter((s) => CAMPAIGN_TYPES.has(s.m.type)).map((s) => `n${s.from}:${s.m.type}`);
          verdict = { foreignStalls, campaigns, before, after: view(c, groups) };
        });
        const v = verdict as Verdict | null; // (assigned inside the subtest's callback, which TypeScript cannot see)
        if (v === null) return; // the attempt failed on its own (reported there)
        if (v.foreignStalls > 0 && attempt < ATTEMPTS) {
          t.comment(`attempt ${attempt}: ${v.foreignStalls} stall(s) the test did not cause; inconclusive, running it again`);
          continue;
        }
        t.equal(v.foreignStalls, 0, 'the event loop saw no stall besides the test\'s own');
        t.same(v.campaigns, [], 'nobody campaigned after the stalls');
        t.equal(v.after, v.before, 'roles, leaders and terms unchanged');
        return;
      }
    });
  }
});

t.test('long stalls under load change neither the term nor the leader', async (t) => {
  const groups = [0, 1];
  const STALLS = 3;
  const STALL_MS = 1_500; // > 3 x the longest election timeout (2 x 10 ticks x 20 ms)
  const c = await startCluster(t, { groups, tickMs: 20, heartbeatTicks: 3, electionTicksMin: 10, fsync: 'batch', seed: 7 });
  await electNode1(c, groups);
  const before = view(c, groups);
  // Load on group 0 (group 1 stays idle): proposals keep appends, answers and fdatasyncs in flight at every stall.
  let loading = true;
  let committed = 0;
  const loaders = Array.from({ length: 8 }, async () => {
    while (loading) {
      await c.node(1).host.propose(0, Buffer.alloc(512, 1)).then(() => committed++, refusedOnly);
    }
  });
  for (let i = 0; i < STALLS; i++) {
    await new Promise((r) => setTimeout(r, 300));
    const from = committed;
    busyWait(STALL_MS);
    await waitFor(() => committed > from + 50, `proposals commit again after stall ${i + 1}`);
  }
  loading = false;
  await Promise.all(loaders);
  t.equal(view(c, groups), before, 'roles, leaders and terms unchanged');
  t.notOk(c.sent.some((s) => CAMPAIGN_TYPES.has(s.m.type) && s.m.term > 1), 'no campaign after the first election');
  await waitFor(() => c.nodes.every((n) => n.machines.get(0)!.count >= committed), 'every node applied the load');
  t.ok(committed > STALLS * 50, `${committed} proposals committed`);
});

t.test('heartbeats and their answers do not wait for an fdatasync', async (t) => {
  // Group 0 is busy (4 KiB proposals, so a round with entries leaves >= 4 KiB unsynced until its fdatasync), group
  // 1 is idle. Every node's WAL syncs for real (fsync batch). Before the fix a round sent everything after its
  // fdatasync, so a heartbeat never left while entries were unsynced.
  const groups = [0, 1];
  const ENTRY_BYTES = 4096;
  const c = await startCluster(t, { groups, tickMs: 10, heartbeatTicks: 2, electionTicksMin: 30, fsync: 'batch', seed: 11 });
  await electNode1(c, groups);
  let loading = true;
  let committed = 0;
  const loaders = Array.from({ length: 8 }, async () => {
    while (loading) {
      await c.node(1).host.propose(0, Buffer.alloc(ENTRY_BYTES, 2)).then(() => committed++, refusedOnly);
    }
  });
  const early = (from: NodeId, type: MessageType, group: number) => (s: Sent) =>
    s.from === from && s.m.type === type && s.m.group === group && s.unsyncedBytes >= ENTRY_BYTES;
  try {
    // The three events need a heartbeat tick to fall inside an fdatasync; on a fast disk those windows are short,
    // so this wait is longer than the others (CI once missed them in 20 s; a quiet run took 27 s). The old code never
    // produces them.
    await waitFor(
      () => c.sent.some(early(1, MessageType.Heartbeat, 0)) && c.sent.some(early(1, MessageType.Heartbeat, 1))
        && c.sent.some((s) => s.from !== 1 && s.m.type === MessageType.HeartbeatResp && s.unsyncedBytes >= ENTRY_BYTES),
      'heartbeats of both groups and heartbeat answers sent while entries were unsynced',
      4 * WAIT_MS,
    );
  } finally {
    // Also on a timeout: loaders left running kept the file alive until tap's 600 s limit.
    loading = false;
    await Promise.all(loaders);
  }
  t.ok(c.sent.some(early(1, MessageType.Heartbeat, 0)), 'busy group: a heartbeat left while its entries were being synced');
  t.ok(c.sent.some(early(1, MessageType.Heartbeat, 1)), 'idle group: a heartbeat left while the busy group was syncing');
  t.ok(c.sent.some((s) => s.from !== 1 && s.m.type === MessageType.HeartbeatResp && s.unsyncedBytes >= ENTRY_BYTES),
    'followers: a heartbeat answer left while their entries were being synced');
  t.ok(c.node(1).host.stats.heartbeatsBeforeSync > 0, 'counted in stats.heartbeatsBeforeSync');
  // A leader's appends leave while its own copy is being synced (Raft thesis 10.2.1, src/raft/ready-order.ts), but an
  // append answer (an acknowledgement) still waits for the fdatasync of the entries it acknowledges (group 1 writes
  // no entries, so the only unsynced bytes besides a busy round's are small hard-state records).
  const appendsEarly = c.sent.filter((s) => s.from === 1 && s.m.group === 0 && s.unsyncedBytes >= ENTRY_BYTES
    && s.m.type === MessageType.Append && s.m.entries.length > 0);
  t.ok(appendsEarly.length > 0, `the leader replicated while syncing: ${appendsEarly.length} appends left with entries unsynced`);
  t.ok(c.node(1).host.stats.appendsBeforeSync > 0, 'counted in stats.appendsBeforeSync');
  const answersEarly = c.sent.filter((s) => s.m.group === 0 && s.unsyncedBytes >= ENTRY_BYTES && s.m.type === MessageType.AppendResp);
  t.same(answersEarly.map((s) => `n${s.from}:${s.m.type}`), [], 'no append answer left while entries were unsynced');
  t.ok(committed > 0, `${committed} proposals committed`);
  await waitFor(() => c.nodes.every((n) => n.machines.get(0)!.count >= committed), 'every node applied the load');
});

t.test("a deposed leader's proposals beyond the new leader's log are rejected once it applies a newer term", async (t) => {
  const groups = [0];
  const PROPOSALS = 5;
  const c = await startCluster(t, { groups, tickMs: 20, heartbeatTicks: 3, electionTicksMin: 10, fsync: 'never', seed: 23 });
  await electNode1(c, groups);
  // Node 1 is cut off (nothing it sends arrives) and proposes: its entries stay in its own log only.
  c.blocked.add(1);
  const outcomes: (string | null)[] = Array.from({ length: PROPOSALS }, () => null);
  const pending = Array.from({ length: PROPOSALS }, (_, i) =>
    c.node(1).host.propose(0, Buffer.from(`lost-${i}`)).then(
      () => (outcomes[i] = 'committed'),
      (err: unknown) => (outcomes[i] = err instanceof HostError ? err.code : String(err)),
    ));
  const lastOfNode1 = c.node(1).host.group(0)!.lastIndex;
  await waitFor(() => [2, 3].some((id) => c.node(id as NodeId).host.group(0)!.role === 3), 'nodes 2 and 3 elect a new leader');
  const newLeader = [2, 3].find((id) => c.node(id as NodeId).host.group(0)!.role === 3) as NodeId;
  t.ok(c.node(newLeader).host.group(0)!.lastIndex < lastOfNode1, "the new leader's log is shorter than the lost entries");
  // Node 1 rejoins; the group stays idle, so the indexes of its lost entries are not reused for a long time.
  c.blocked.delete(1);
  await waitFor(() => outcomes.every((o) => o !== null), 'every lost proposal is settled');
  await Promise.all(pending);
  t.same(outcomes, Array.from({ length: PROPOSALS }, () => 'NOTLEADER'), 'all rejected as retryable, none committed');
  t.ok(c.node(newLeader).host.group(0)!.lastIndex < lastOfNode1, 'settled before the new leader reached those indexes');
});
