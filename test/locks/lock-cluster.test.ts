// The lock manager on a real 3-node cluster (child processes on loopback, ioredis clients):
//   1. semantics: tokens, try-lock, blocking waits woken by a release on another node, shared/exclusive, renew,
//      lease expiry handing the lock to a waiter, INFO/OWNED, a disconnected waiter is cancelled, bad input.
//   2. deadlocks: two- and three-owner cycles over locks on different shards are found and broken (-DEADLOCK to
//      the youngest waiter), the others proceed, LOCK.DEADLOCKS lists them.
//   3. chaos: 50 clients hammer 5 locks with random modes, holds and TTLs while the node leading most of them is
//      killed (-9) and later restarted; the recorded history is checked (test/support/lock-history.ts).
// Timings are reported with t.comment and bounded generously, never asserted tightly (the machine is shared).
import t from 'tap';
import type { Redis } from 'ioredis';
import { errorCode, withCluster, type ProcCluster } from '../support/cluster-procs.js';
import { checkLockHistory, LockHistory, type LockOp } from '../support/lock-history.js';
import { keySlot } from '../../src/cluster/slots.js';
import { shardOfSlot } from '../../src/cluster/ring.js';

const FILE_TIMEOUT_MS = 240_000;
const TEST_TIMEOUT_MS = 110_000;
const SHARDS = 8;
const OPTS = { shards: SHARDS, electionTimeoutMs: 300, leaderWaitMs: 1500, requestTimeoutMs: 5000 };

t.setTimeout(FILE_TIMEOUT_MS);

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const shardOf = (name: string) => shardOfSlot(keySlot(Buffer.from(name)), SHARDS);

/** `count` lock names, each on a different shard. */
function namesOnDistinctShards(prefix: string, count: number): string[] {
  const out: string[] = [];
  const used = new Set<number>();
  for (let i = 0; out.length < count; i++) {
    const n = `${prefix}${i}`;
    if (used.has(shardOf(n))) continue;
    used.add(shardOf(n));
    out.push(n);
  }
  return out;
}

const acquire = (r: Redis, name: string, owner: string, ...opts: (string | number)[]) => r.call('LOCK.ACQUIRE', name, owner, ...opts.map(String)) as Promise<number | null>;
const release = (r: Redis, name: string, owner: string, ...opts: (string | number)[]) => r.call('LOCK.RELEASE', name, owner, ...opts.map(String)) as Promise<number>;

function infoMap(v: unknown): Record<string, unknown> {
  // RESP2 flattens maps into arrays of key, value.
  if (!Array.isArray(v)) return v as Record<string, unknown>;
  const o: Record<string, unknown> = {};
  for (let i = 0; i + 1 < v.length; i += 2) o[String(v[i])] = v[i + 1];
  return o;
}

t.test('semantics over a real cluster', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await withCluster(t, OPTS, async (c) => {
    const [r1, r2, r3] = [c.client(1), c.client(2), c.client(3)] as [Redis, Redis, Redis];

    const tok1 = await acquire(r1, 'sem:a', 'alice', 'TTL', 10_000);
    t.type(tok1, 'number', 'exclusive grant answers a fencing token');
    t.equal(await acquire(r2, 'sem:a', 'alice', 'TTL', 10_000), tok1, 're-acquire by the holder (via another node) returns the same token');
    t.equal(await acquire(r3, 'sem:a', 'bob'), null, 'try-lock (WAIT 0) on a held lock answers nil');

    // A blocking wait on node 3 is woken by a release sent to node 2.
    const t0 = Date.now();
    const waiting = acquire(r3, 'sem:a', 'bob', 'WAIT', 10_000);
    await sleep(300);
    t.equal(await release(r2, 'sem:a', 'alice', 'TOKEN', tok1!), 1, 'release with the right token answers 1');
    const tok2 = await waiting;
    t.type(tok2, 'number', `the waiter was granted ${Date.now() - t0} ms after asking`);
    t.ok(tok2! > tok1!, `tokens increase (${tok1} then ${tok2})`);
    t.equal(await release(r1, 'sem:a', 'alice'), 0, 'release by a non-holder answers 0');
    t.equal(await release(r1, 'sem:a', 'bob', 'TOKEN', tok1!), 0, 'release with a stale token answers 0');

    // LOCK.INFO and LOCK.OWNED.
    const info = infoMap(await r1.call('LOCK.INFO', 'sem:a'));
    t.equal(String(info['mode']), 'exclusive', 'INFO mode');
    const holders = info['holders'] as unknown[][];
    t.equal(holders.length, 1, 'INFO lists the one holder');
    t.ok(JSON.stringify(holders[0]).includes('bob'), 'the holder is bob');
    const owned = (await r2.call('LOCK.OWNED', 'bob')) as unknown[][];
    t.same(owned.map((o) => String(o[0])), ['sem:a'], 'OWNED fans out to every shard and finds bob\'s lock');
    t.equal(await release(r3, 'sem:a', 'bob'), 1, 'bob releases');
    t.equal(await r1.call('LOCK.INFO', 'sem:a'), null, 'a free lock has no INFO');

    // Shared coexists with shared; exclusive waits; shared behind a waiting exclusive waits too (no starvation).
    const s1 = await acquire(r1, 'sem:s', 'r1', 'MODE', 'SHARED');
    const s2 = await acquire(r2, 'sem:s', 'r2', 'MODE', 'SHARED');
    t.ok(typeof s1 === 'number' && typeof s2 === 'number' && s1 !== s2, 'two shared holders, distinct tokens');
    const writer = acquire(r3, 'sem:s', 'w', 'WAIT', 10_000);
    await sleep(200);
    t.equal(await acquire(r1, 'sem:s', 'r3', 'MODE', 'SHARED'), null, 'a new shared request queues behind the waiting writer (try-lock: nil)');
    t.equal(await release(r1, 'sem:s', 'r1'), 1);
    t.equal(await release(r2, 'sem:s', 'r2'), 1);
    const wtok = await writer;
    t.ok(typeof wtok === 'number' && wtok > Math.max(s1!, s2!), 'the writer is granted once both readers left, with a larger token');
    t.equal(await release(r3, 'sem:s', 'w'), 1);

    // Renew, and a lapsed lease handed to the waiter by the leader's expiry.
    const e1 = await acquire(r1, 'sem:e', 'short', 'TTL', 600);
    t.equal(await r1.call('LOCK.RENEW', 'sem:e', 'short', '800'), 1, 'renew of a held lock answers 1');
    const tExp = Date.now();
    const e2 = await acquire(r2, 'sem:e', 'next', 'WAIT', 10_000);
    const waited = Date.now() - tExp;
    t.ok(typeof e2 === 'number' && e2 > e1!, `the lapsed lease went to the waiter after ${waited} ms`);
    t.ok(waited >= 600, 'not before the renewed lease ran out');
    t.equal(await r1.call('LOCK.RENEW', 'sem:e', 'short', '1000'), 0, 'renew after losing the lock answers 0');
    t.equal(await release(r2, 'sem:e', 'next'), 1);

    // A waiter whose client disconnects is cancelled: it never holds the lock.
    t.type(await acquire(r1, 'sem:d', 'holder'), 'number');
    const gone = c.client(2);
    void acquire(gone, 'sem:d', 'ghost', 'WAIT', 20_000).catch(() => undefined);
    await sleep(300);
    const before = infoMap(await r3.call('LOCK.INFO', 'sem:d'));
    t.equal((before['waiters'] as unknown[]).length, 1, 'the ghost waits');
    gone.disconnect();
    let waiters = 1;
    for (let i = 0; i < 50 && waiters > 0; i++) {
      await sleep(100);
      waiters = (infoMap(await r3.call('LOCK.INFO', 'sem:d'))['waiters'] as unknown[]).length;
    }
    t.equal(waiters, 0, 'the disconnected waiter was cancelled');
    t.equal(await release(r1, 'sem:d', 'holder'), 1);
    t.equal(await r1.call('LOCK.INFO', 'sem:d'), null, 'and did not get the lock');

    // Bad input gets clear errors.
    await t.rejects(r1.call('LOCK.ACQUIRE', 'x'), /wrong number of arguments/i);
    await t.rejects(r1.call('LOCK.ACQUIRE', 'x', 'o', 'TTL', 'abc'), /not an integer/);
    await t.rejects(r1.call('LOCK.ACQUIRE', 'x', 'o', 'TTL', '0'), /out of range/);
    await t.rejects(r1.call('LOCK.ACQUIRE', 'x', 'o', 'MODE', 'weird'), /MODE/);
    await t.rejects(r1.call('LOCK.ACQUIRE', 'x', 'o', 'BOGUS', '1'), /syntax/);
    await t.rejects(r1.call('LOCK.ACQUIRE', '', 'o'), /lock name/);
    await t.rejects(r1.call('LOCK.RELEASE', 'x', 'o', 'TOKEN', '-1'), /not an integer/);
    t.equal(await r1.ping(), 'PONG', 'the connection still works');
  });
});

t.test('deadlocks across shards are found and broken', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await withCluster(t, { ...OPTS, extraFlags: ['--deadlock-detect', '600'] }, async (c) => {
    for (const size of [2, 3]) {
      const names = namesOnDistinctShards(`dl${size}:`, size);
      const owners = names.map((_, i) => `o${size}-${i}`);
      const clients = owners.map((_, i) => c.client((i % 3) + 1));
      // Owner i holds lock i, then waits for lock i+1 (mod size): a cycle through `size` shards.
      for (let i = 0; i < size; i++) t.type(await acquire(clients[i]!, names[i]!, owners[i]!, 'TTL', 60_000), 'number');
      // The waits start in ring order, so the last one is the youngest request and must be the victim.
      const t0 = Date.now();
      const waits: Promise<{ i: number; v: number | null; err: string | null; at: number }>[] = [];
      for (let i = 0; i < size; i++) {
        waits.push(
          acquire(clients[i]!, names[(i + 1) % size]!, owners[i]!, 'WAIT', 30_000, 'TTL', 60_000).then(
            (v) => ({ i, v, err: null as string | null, at: Date.now() - t0 }),
            (e: Error) => ({ i, v: null, err: e.message, at: Date.now() - t0 }),
          ),
        );
        await sleep(100);
      }
      const victim = await Promise.race(waits);
      t.match(victim.err, /^DEADLOCK /, `${size} owners: a waiter is told DEADLOCK after ${victim.at} ms: ${victim.err}`);
      t.equal(victim.i, size - 1, 'the victim is the youngest request');
      t.ok(victim.at < 10_000, 'within a bounded time');
      // The victim keeps its own lock until it decides. It releases; the ring unwinds: each owner granted in turn
      // releases both its locks, which lets the owner before it in.
      t.equal(await release(clients[victim.i]!, names[victim.i]!, owners[victim.i]!), 1, 'the victim still held its own lock');
      for (let step = 1; step < size; step++) {
        const j = (victim.i - step + size) % size;
        const got = await waits[j]!;
        t.equal(got.err, null, `owner ${j} was not a victim`);
        t.type(got.v, 'number', `owner ${j} was granted as the ring unwound`);
        t.equal(await release(clients[j]!, names[(j + 1) % size]!, owners[j]!), 1);
        t.equal(await release(clients[j]!, names[j]!, owners[j]!), 1);
      }
      const listed = (await c.client(1).call('LOCK.DEADLOCKS')) as unknown[][];
      t.ok(listed.some((d) => String(d[2]) === owners[victim.i]), 'LOCK.DEADLOCKS lists the victim');
    }
  });
});

t.test('chaos: 50 clients on 5 locks while the leader is killed and restarted; the history checks out', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const CLIENTS = 50;
  const LOCKS = namesOnDistinctShards('chaos:', 5);
  const BEFORE_KILL_MS = 4000;
  const DOWN_MS = 4000;
  const AFTER_RESTART_MS = 4000;
  await withCluster(t, OPTS, async (c) => {
    // The victim: the node leading most of the locks' shards.
    const raft = await c.raft(1);
    const counts = new Map<number, number>();
    for (const n of LOCKS) {
      const leader = raft.shards.find((s) => s.shard === shardOf(n))?.leader ?? 0;
      counts.set(leader, (counts.get(leader) ?? 0) + 1);
    }
    const victim = [...counts].sort((a, b) => b[1] - a[1])[0]![0] || 1;
    t.comment(`locks on shards ${LOCKS.map(shardOf).join(',')}; leaders ${JSON.stringify([...counts])}; killing node ${victim}`);

    const history = new LockHistory();
    let stop = false;
    let seed = 12345;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff;
    };
    const errors = new Map<string, number>();
    const noteErr = (e: unknown) => {
      const k = errorCode(e);
      errors.set(k, (errors.get(k) ?? 0) + 1);
    };
    const loop = async (i: number): Promise<void> => {
      const r = c.client((i % 3) + 1, { maxRetriesPerRequest: 0, retryStrategy: () => 100, commandTimeout: 20_000 });
      const owner = `c${i}`;
      while (!stop) {
        const name = LOCKS[Math.floor(rnd() * LOCKS.length)]!;
        const mode = rnd() < 0.7 ? 'X' : 'S';
        const ttlMs = 400 + Math.floor(rnd() * 1600);
        const waitMs = rnd() < 0.2 ? 0 : Math.floor(rnd() * 1500);
        const sentAt = performance.now();
        let token: number | null = null;
        try {
          const v = await acquire(r, name, owner, 'MODE', mode === 'X' ? 'EXCLUSIVE' : 'SHARED', 'TTL', ttlMs, 'WAIT', waitMs);
          const doneAt = performance.now();
          if (typeof v === 'number') {
            token = v;
            history.record({ kind: 'acquire', client: String(i), owner, name, mode, ttlMs, waitMs, sentAt, doneAt, result: { t: 'granted', token: v } });
          } else history.record({ kind: 'acquire', client: String(i), owner, name, mode, ttlMs, waitMs, sentAt, doneAt, result: { t: 'nil' } });
        } catch (e) {
          noteErr(e);
          const msg = (e as Error).message;
          history.record({ kind: 'acquire', client: String(i), owner, name, mode, ttlMs, waitMs, sentAt, doneAt: performance.now(), result: /^DEADLOCK/.test(msg) ? { t: 'deadlock', message: msg } : { t: 'error', message: msg } });
          await sleep(50);
          continue;
        }
        if (token === null) continue;
        await sleep(Math.floor(rnd() * 150));
        if (rnd() < 0.3) {
          const rs = performance.now();
          try {
            const v = (await r.call('LOCK.RENEW', name, owner, String(ttlMs))) as 0 | 1;
            history.record({ kind: 'renew', client: String(i), owner, name, ttlMs, sentAt: rs, doneAt: performance.now(), result: v });
          } catch (e) {
            noteErr(e);
            history.record({ kind: 'renew', client: String(i), owner, name, ttlMs, sentAt: rs, doneAt: performance.now(), result: { error: (e as Error).message } });
          }
          await sleep(Math.floor(rnd() * 100));
        }
        const ls = performance.now();
        try {
          const v = (await release(r, name, owner, 'TOKEN', token)) as 0 | 1;
          history.record({ kind: 'release', client: String(i), owner, name, token, sentAt: ls, doneAt: performance.now(), result: v });
        } catch (e) {
          noteErr(e);
          history.record({ kind: 'release', client: String(i), owner, name, token, sentAt: ls, doneAt: performance.now(), result: { error: (e as Error).message } });
          await sleep(50);
        }
      }
    };
    const loops = Array.from({ length: CLIENTS }, (_, i) => loop(i));
    await sleep(BEFORE_KILL_MS);
    const grantsBefore = history.ops.filter((o) => o.kind === 'acquire' && o.result.t === 'granted').length;
    await c.kill(victim);
    t.comment(`killed node ${victim} after ${grantsBefore} grants`);
    await sleep(DOWN_MS);
    await c.startNode(victim);
    await sleep(AFTER_RESTART_MS);
    stop = true;
    await Promise.all(loops);

    const report = checkLockHistory(history.ops);
    t.comment(`ops ${history.ops.length}; stats ${JSON.stringify(report.stats)}; errors ${[...errors].map(([k, v]) => `${k}=${v}`).join(' ') || 'none'}`);
    for (const v of report.violations.slice(0, 20)) t.comment(`violation: ${v}`);
    t.ok(report.ok, `the history has no violation (${report.violations.length})`);
    t.ok(report.stats.grants > 200, `enough grants to mean something (${report.stats.grants})`);
    const grantsAfter = (history.ops as LockOp[]).filter((o) => o.kind === 'acquire' && o.result.t === 'granted' && o.sentAt > 0).length - grantsBefore;
    t.ok(grantsAfter > 50, `locks kept being granted after the kill (${grantsAfter})`);
  });
});
