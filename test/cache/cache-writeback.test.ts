// The write-back policy on a real 3-node cluster (child processes on loopback, ioredis clients on every node, every
// node started with --cache-write-policy write-back):
//   1. a write to a line the node holds in E completes on that node (no request leaves its edge) and leaves it M;
//      another node's read snoops it: the data is written back and both end in S; an untouched Modified line is
//      flushed within --cache-flush-ms and is E again; local INCRs add up when read elsewhere; Modified lines pushed
//      out of a small LRU are written back; DEL of a Modified line goes through the home after its data.
//   2. linearizability of GET/SET/INCR from clients on all nodes (local writes, snoops, flushes racing each other),
//      with a node paused for less than a lease (nothing may be lost, so the history must be linearizable).
//   3. what a crash may lose: a node killed -9 right after local writes loses at most the writes nobody else read
//      (the key then reads as its last written-back value, never anything else), and never a write another node read.
// Timings are reported with t.comment and bounded generously, never asserted tightly (the machine is shared).
import t from 'tap';
import type { Redis } from 'ioredis';
import { withCluster, type ProcCluster } from '../support/cluster-procs.js';
import { cacheInfo, edgeRequests, keyLedBy as keyLedByIn, nodeClients, retrying, runKvClients } from '../support/cache-cluster.js';
import { checkLinearizable, kvModel } from '../support/linearizability.js';

const FILE_TIMEOUT_MS = 170_000;
const SHARDS = 8;
const LEASE_MS = 600;
const FLUSH_MS = 300;
const OPTS = {
  shards: SHARDS,
  electionTimeoutMs: 300,
  leaderWaitMs: 3000,
  requestTimeoutMs: 6000,
  extraFlags: ['--cache-lease', String(LEASE_MS), '--cache-write-policy', 'write-back', '--cache-flush-ms', String(FLUSH_MS), '--deadlock-detect', '600000'],
};

t.setTimeout(FILE_TIMEOUT_MS);

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const keyLedBy = (c: ProcCluster, leader: number, prefix: string) => keyLedByIn(c, SHARDS, leader, prefix);

/** CACHE.STATE of `key` asked through node `via`: node id -> [state, directory view]. */
async function states(r: Redis, key: string): Promise<Map<number, [string, string]>> {
  const rows = (await r.call('CACHE.STATE', key)) as [number, string, string][];
  return new Map(rows.map(([n, st, d]) => [n, [st, d]]));
}

/** Lines the nodes dropped because a lease lapsed or a shard's home changed (INFO cache), summed. */
async function droppedLines(c: ProcCluster): Promise<number> {
  let n = 0;
  for (const id of c.ids) {
    const x = await cacheInfo(c, id);
    n += x['cache_lease_lapsed_lines']! + x['cache_home_change_lines']!;
  }
  return n;
}

const ATTEMPTS = 5;

/**
 * Runs an observed scenario until it shows what the test expects (ok), at most ATTEMPTS times, each on fresh keys,
 * and returns the last observations for the caller's assertions (so a scenario that never works still fails).
 * Why a scenario may legitimately not show the expected states on a loaded machine with a 600 ms lease: a lapsed
 * lease or a home change drops lines to I (counted in INFO, and reported here), and a write on an E line goes
 * through the home instead of completing locally while the node's lease on the shard awaits its renewal or another
 * request for the key is still out (CacheNode.writeLocal declines: the conservative path).
 */
async function untilObserved<O>(c: ProcCluster, run: (attempt: number) => Promise<{ ok: boolean; o: O }>): Promise<{ ok: boolean; o: O }> {
  for (let attempt = 0; ; attempt++) {
    const d0 = await droppedLines(c);
    const r = await run(attempt);
    if (r.ok || attempt + 1 >= ATTEMPTS) return r;
    const d1 = await droppedLines(c);
    t.comment(`attempt ${attempt} did not show the expected states (${d1 - d0} lines dropped by a lapsed lease or a home change meanwhile): ${JSON.stringify(r.o)}; again on fresh keys`);
  }
}

t.test('write-back: local writes in M, snoops, flushes, INCR, DEL', async (t) => {
  await withCluster(t, OPTS, async (c) => {
    const { cl } = nodeClients(t, c);
    t.equal((await c.info(1, 'cache'))['cache_policy'], 'write-back');
    await retrying(10_000, () => cl(1).set('warm', '1'));

    // -- the first write goes through the home (E grant); the next ones stay on node 1 (M); a read elsewhere snoops.
    // Each scenario is observed first and asserted after (see untilObserved).
    const ab = await untilObserved(c, async (attempt) => {
      const k = await keyLedBy(c, 2, `wb:${attempt}:`);
      const o: Record<string, unknown> = { key: k };
      o['set1'] = await cl(1).set(k, 'v1');
      o['writer'] = (await states(cl(3), k)).get(1);
      const before = await cacheInfo(c, 1);
      const edgeBefore = await edgeRequests(c, 1);
      o['set2'] = await cl(1).set(k, 'v2');
      o['append'] = await cl(1).append(k, '+');
      o['own'] = await cl(1).get(k);
      // Edge counters read inside the window of the cache counters: a renewal sent between the two INFO calls then
      // counts on both sides (read the other way round, it could count as an edge request but not as a renewal).
      const edgeAfter = await edgeRequests(c, 1);
      const after = await cacheInfo(c, 1);
      o['localWrites'] = after['cache_local_writes']! - before['cache_local_writes']!;
      o['edgeExtra'] = edgeAfter - edgeBefore
        - (after['cache_lease_renewals_sent']! - before['cache_lease_renewals_sent']! + after['cache_flushes_sent']! - before['cache_flushes_sent']!);
      o['held'] = (await states(cl(3), k)).get(1)![0];
      // a read elsewhere snoops: the data goes home, both end in S
      await cl(1).set(k, 'v3');
      o['snooped'] = await cl(2).get(k);
      const st = await states(cl(3), k);
      o['both'] = [st.get(1), st.get(2)];
      o['third'] = await cl(3).get(k);
      const ok = JSON.stringify(o['writer']) === '["E","E"]' && o['localWrites'] === 2 && (o['edgeExtra'] as number) <= 0
        && (o['held'] === 'M' || o['held'] === 'E') && JSON.stringify(o['both']) === '[["S","S"],["S","S"]]';
      return { ok, o };
    });
    const o = ab.o;
    t.equal(o['set1'], 'OK');
    t.same(o['writer'], ['E', 'E'], 'the writer holds E');
    t.equal(o['set2'], 'OK');
    t.equal(o['append'], 3);
    t.equal(o['own'], 'v2+', 'the writer reads its own Modified line');
    t.equal(o['localWrites'], 2, 'two writes completed locally');
    t.ok((o['edgeExtra'] as number) <= 0, `no write left the edge (only renewals and flushes): ${String(o['edgeExtra'])} other requests`);
    t.ok(o['held'] === 'M' || o['held'] === 'E', `node 1 holds M (or E once flushed): ${String(o['held'])}`);
    t.equal(o['snooped'], 'v3', 'node 2 reads the Modified value');
    t.same(o['both'], [['S', 'S'], ['S', 'S']], 'writer and reader both in S');
    t.equal(o['third'], 'v3');

    // -- an untouched Modified line is flushed within --cache-flush-ms, and is clean (E) again
    const fl = await untilObserved(c, async (attempt) => {
      const f = await keyLedBy(c, 3, `flush:${attempt}:`);
      await cl(1).set(f, 'a');
      const w0 = (await cacheInfo(c, 1))['cache_local_writes']!;
      await cl(1).set(f, 'b'); // local: M
      const local = (await cacheInfo(c, 1))['cache_local_writes']! - w0;
      const t0 = Date.now();
      let st = '';
      while (Date.now() - t0 < 10_000) {
        st = (await states(cl(2), f)).get(1)![0];
        if (st === 'E' || st === 'I') break;
        await sleep(50);
      }
      return { ok: local === 1 && st === 'E', o: { f, local, st, ms: Date.now() - t0 } };
    });
    t.equal(fl.o.local, 1, 'the second write completed locally (M)');
    t.equal(fl.o.st, 'E', 'flushed and clean again');
    t.comment(`Modified -> clean after ${fl.o.ms} ms (--cache-flush-ms ${FLUSH_MS})`);
    const fi = await cacheInfo(c, 1);
    t.ok(fi['cache_flushes_accepted']! >= 1, `node 1 flushes accepted: ${fi['cache_flushes_accepted']}`);
    t.ok(fi['cache_transition_M_to_E']! >= 1, 'M->E counted');
    t.equal(await cl(3).get(fl.o.f), 'b');

    // -- INCRs on one node add up
    for (let i = 0; i < 50; i++) await cl(2).incr('wb:ctr');
    t.equal(await cl(1).get('wb:ctr'), '50', 'read elsewhere after 50 INCRs (49 of them local)');
    t.equal(await cl(2).incr('wb:ctr'), 51, 'the next INCR sees them all');

    // -- DEL of a key this node holds Modified: its data goes home first, then the delete
    await cl(1).set('wb:del', 'x');
    await cl(1).set('wb:del', 'y');
    t.equal(await cl(1).del('wb:del'), 1);
    for (const id of c.ids) t.equal(await cl(id).get('wb:del'), null, `deleted on node ${id}`);

    const homes = (await Promise.all(c.ids.map((id) => cacheInfo(c, id)))).reduce((n, x) => n + x['cache_home_writebacks']!, 0);
    t.ok(homes > 0, `the homes wrote back ${homes} Modified lines`);
  });
});

t.test('write-back with flushes 60 s away: eviction writes back; a crash loses at most the writes nobody else read', async (t) => {
  const flags = [...OPTS.extraFlags.map((f) => (f === String(FLUSH_MS) ? '60000' : f)), '--cache-max-items', '100'];
  await withCluster(t, { ...OPTS, extraFlags: flags }, async (c) => {
    const { cl } = nodeClients(t, c);
    await retrying(10_000, () => cl(1).set('warm', '1'));

    // -- Modified lines pushed out of a 100-line LRU are written back (the flush timer is 60 s away)
    const dropped = (x: Record<string, number>): number => x['cache_lease_lapsed_lines']! + x['cache_home_change_lines']!;
    const dropped0 = dropped(await cacheInfo(c, 3));
    for (let i = 0; i < 90; i++) await cl(3).set(`ev:${i}`, `a${i}`); // through the home: E lines
    const lw = (await cacheInfo(c, 3))['cache_local_writes']!;
    for (let i = 0; i < 90; i++) await cl(3).set(`ev:${i}`, `b${i}`); // local: M lines
    const mid = await cacheInfo(c, 3);
    // A line dropped because its lease lapsed (a late renewal on a loaded machine: the lease is 600 ms) or its
    // shard's leader changed (election timeout 300 ms) is written through the home instead, as it must be; the
    // rest complete locally.
    const local = mid['cache_local_writes']! - lw;
    const droppedLines = dropped(mid) - dropped0;
    t.ok(local + droppedLines >= 80, `local writes: ${local} of 90 (${droppedLines} lines dropped by a lapse or a leader change)`);
    for (let i = 90; i < 200; i++) await cl(3).set(`ev:${i}`, `b${i}`); // new lines push the Modified ones out
    let bad = 0;
    for (let i = 0; i < 200; i++) if ((await cl(1).get(`ev:${i}`)) !== `b${i}`) bad++;
    t.equal(bad, 0, 'every last write is read on node 1');
    const ev = await cacheInfo(c, 3);
    t.ok(ev['cache_evictions']! > 0 && ev['cache_lines']! <= 100, `node 3 evicted ${ev['cache_evictions']} lines, holds ${ev['cache_lines']}`);
    t.ok(ev['cache_flushes_accepted']! > 0, `evicted Modified lines were flushed: ${ev['cache_flushes_accepted']}`);
    t.equal(ev['cache_writebacks_lost'], 0, 'nothing lost');
    // Keys whose home is node 2, so killing node 1 leaves their home alone.
    const read = await keyLedBy(c, 2, 'seen:');
    const unread = await keyLedBy(c, 2, 'unseen:');
    t.equal(await cl(1).set(read, 'r1'), 'OK');
    t.equal(await cl(1).set(read, 'r2'), 'OK'); // local (M)
    t.equal(await cl(3).get(read), 'r2', 'read on node 3: snooped and written back');
    t.equal(await cl(1).set(read, 'r3'), 'OK'); // through the home again (node 1 holds S now)
    t.equal(await cl(1).set(unread, 'u1'), 'OK');
    t.equal(await cl(1).set(unread, 'u2'), 'OK'); // local (M), flush due only after 60 s
    t.same((await states(cl(2), unread)).get(1), ['M', 'E'], 'node 1 holds u2 Modified (the directory lists its E grant)');
    await c.kill(1);
    // The home gives node 1 up when its lease lapses; then reads go on.
    const t0 = Date.now();
    const got = await retrying(15_000, () => cl(3).get(unread));
    t.comment(`after the kill, the unread key reads ${JSON.stringify(got)} (${Date.now() - t0} ms)`);
    t.ok(got === 'u1' || got === 'u2', 'the unread key holds its last written-back value or the lost write, nothing else');
    t.equal(got, 'u1', 'u2 was never written back (the flush was 60 s away): lost, as documented');
    t.equal(await cl(3).get(read), 'r3', 'what another node read, and the later write through the home, survive');
    t.equal(await cl(2).get(read), 'r3');
    const lapsed = (await cacheInfo(c, 2))['cache_home_downgrades_lapsed']! + (await cacheInfo(c, 3))['cache_home_downgrades_lapsed']!;
    t.comment(`downgrades given up at the homes: ${lapsed}`);
  });
});

t.test("write-back: a killed home's Modified lines reach the new home during its takeover wait", async (t) => {
  // A lease well above the election time: the nodes hear of the new home before their leases lapse.
  const flags = OPTS.extraFlags.map((f) => (f === String(FLUSH_MS) ? '60000' : f === String(LEASE_MS) ? '1500' : f));
  await withCluster(t, { ...OPTS, extraFlags: flags }, async (c) => {
    const { cl } = nodeClients(t, c);
    await retrying(10_000, () => cl(1).set('warm', '1'));
    const k = await keyLedBy(c, 2, 'lc:');
    // The first write must leave node 1 an E line. Right after start the shard's home may be new (the rebalancer
    // moves leaderships), and a write that waited out its takeover (longer than a lease) gets a grant whose lease ran
    // out on the way: it installs nothing. CI once failed here that way (the second write then went home: E, not M).
    let writer: [string, string] | undefined;
    for (let i = 0; i < 20 && writer?.[0] !== 'E'; i++) {
      t.equal(await cl(1).set(k, 'm1'), 'OK');
      writer = (await states(cl(3), k)).get(1);
      if (writer?.[0] !== 'E') await sleep(200);
    }
    t.same(writer, ['E', 'E'], 'node 1 holds m1 in E');
    t.equal(await cl(1).set(k, 'm2'), 'OK'); // local (M); its flush is 60 s away
    t.same((await states(cl(3), k)).get(1), ['M', 'E'], 'node 1 holds m2 Modified');
    const before = await cacheInfo(c, 1);
    await c.kill(2);
    const t0 = Date.now();
    const got = await retrying(15_000, () => cl(3).get(k));
    t.comment(`read after killing the home: ${JSON.stringify(got)} in ${Date.now() - t0} ms`);
    t.equal(got, 'm2', 'the Modified value was written back to the new home');
    const after = await cacheInfo(c, 1);
    t.ok(after['cache_flushes_accepted']! > before['cache_flushes_accepted']!, 'by a flush of node 1');
    t.equal(after['cache_writebacks_lost'], 0, 'nothing lost');
    t.equal(await cl(1).get(k), 'm2');
  });
});

t.test('write-back: GET/SET/INCR from all nodes stay linearizable (a short pause included)', async (t) => {
  const flags = OPTS.extraFlags.map((f) => (f === String(FLUSH_MS) ? '200' : f === String(LEASE_MS) ? '1500' : f));
  // The pause must not move leadership: this run checks the protocol with every home in place (home changes under
  // write-back have their own scenarios above). With the file's 300 ms election timeout a 400 ms pause sometimes
  // let node 3's followers elect, and the rebalancer moved leadership straight back: two home changes in ~0.4 s
  // (CI once failed that way; see the session notes on the write-back loss it exposed).
  await withCluster(t, { ...OPTS, electionTimeoutMs: 1500, extraFlags: flags }, async (c) => {
    const KEYS = ['wlin:a', 'wlin:b', 'wlin:c'];
    const warm = c.client(1);
    for (const k of KEYS) await retrying(10_000, () => warm.set(k, '0'));
    warm.disconnect();
    const run = runKvClients(c, KEYS, c.ids.flatMap((id) => [id, id]));
    await sleep(2500);
    c.pause(3); // well under the 1500 ms lease and election timeout: writers wait for node 3, nothing lapses or moves
    await sleep(400);
    c.resume(3);
    await sleep(2500);
    const { history, counts } = await run.stop();
    t.comment(`ops: ${counts.ok} ok, ${counts.failed} failed reads, ${counts.unknown} writes with unknown outcome`);
    t.ok(counts.ok > 100, 'the cluster served operations throughout');
    const infos = await Promise.all(c.ids.map((id) => cacheInfo(c, id)));
    const sum = (f: string) => infos.reduce((n, x) => n + (x[f] ?? 0), 0);
    t.comment(`local writes ${sum('cache_local_writes')}, flushes ${sum('cache_flushes_accepted')}, data in answers ${sum('cache_writebacks_in_answers')}, hits ${sum('cache_hits')}`);
    t.ok(sum('cache_local_writes') > 0, 'some writes completed locally');
    t.equal(sum('cache_writebacks_lost'), 0, 'nothing was lost');
    const res = checkLinearizable(kvModel(), history, { timeoutMs: 60_000, witness: false });
    t.equal(res.result, 'ok', `history of ${history.length} operations is linearizable`);
    if (res.result !== 'ok') t.comment(res.explanation ?? '');
  });
});
