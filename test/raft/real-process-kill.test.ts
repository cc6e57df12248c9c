// Three real processes on loopback replicate a counter over the TCP peer transport with the write-ahead log.
// While clients increment, the leader is killed with SIGKILL; a new leader must be elected, and after the killed
// process restarts every acknowledged increment is present exactly once, in the same order on every node.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { repoRoot } from '../support/repo-root.js';

const script = join(repoRoot(), 'dist/test/support/raft-counter-node.js');

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

async function pickBasePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 20000);
    const ports = [1, 2, 3].flatMap((i) => [base + i, base + 100 + i]);
    if ((await Promise.all(ports.map(portFree))).every(Boolean)) return base;
  }
  throw new Error('no free port range');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('kill -9 of the leader loses no acknowledged increment and applies none twice', async (t) => {
  const base = await pickBasePort();
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-raft-kill-'));
  const procs = new Map<number, ChildProcess>();
  const start = (id: number) => {
    const child = spawn(
      process.execPath,
      [script, '--id', String(id), '--nodes', '3', '--base-port', String(base), '--data-dir', join(dir, `n${id}`), '--snapshot-entries', '300'],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    procs.set(id, child);
    return child;
  };
  t.teardown(() => {
    for (const p of procs.values()) p.kill('SIGKILL');
  });
  for (const id of [1, 2, 3]) start(id);

  const conns = new Map<number, Redis>();
  const conn = (id: number) => {
    let c = conns.get(id);
    if (!c) {
      c = new Redis({ port: base + id, host: '127.0.0.1', enableReadyCheck: false, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => 50, lazyConnect: false });
      c.on('error', () => {});
      conns.set(id, c);
    }
    return c;
  };
  t.teardown(() => {
    for (const c of conns.values()) c.disconnect();
  });

  async function role(id: number): Promise<[string, number, number, number, number] | null> {
    try {
      return (await conn(id).call('ROLE')) as [string, number, number, number, number];
    } catch {
      return null;
    }
  }
  async function waitLeader(exclude: number | null, timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      for (const id of [1, 2, 3]) {
        if (id === exclude) continue;
        const r = await role(id);
        if (r && r[0] === 'leader') return id;
      }
      await sleep(20);
    }
    throw new Error('no leader elected');
  }

  const leader1 = await waitLeader(null, 20_000);
  t.ok(leader1 >= 1 && leader1 <= 3, `node ${leader1} leads`);

  // Clients: each increments with unique ids; an unanswered id is retried (same id) on the next node.
  const acked = new Set<string>();
  const attempted = new Set<string>();
  let stopClients = false;
  let killedAt = 0;
  let firstAckAfterKill = 0;
  let leaderHint = leader1;
  const clients = Array.from({ length: 10 }, async (_, c) => {
    let seq = 0;
    while (!stopClients) {
      const id = `c${c}-${seq++}`;
      attempted.add(id);
      for (let tries = 0; !stopClients && tries < 200; tries++) {
        const target = tries === 0 ? leaderHint : ((leaderHint + tries) % 3) + 1;
        const sentAt = Date.now();
        try {
          await Promise.race([
            conn(target).call('INCR', id),
            sleep(1000).then(() => {
              throw new Error('timeout');
            }),
          ]);
          acked.add(id);
          leaderHint = target;
          // Count only requests sent after the kill: a reply already on its way from the old leader says nothing.
          if (killedAt && sentAt > killedAt && !firstAckAfterKill) firstAckAfterKill = Date.now();
          break;
        } catch (err) {
          const m = /NOTLEADER (\d+)/.exec(String((err as Error).message));
          if (m && Number(m[1]) > 0) leaderHint = Number(m[1]);
          await sleep(10);
        }
      }
    }
  });

  await sleep(1500);
  const before = acked.size;
  t.ok(before > 0, `${before} increments acknowledged before the kill`);
  procs.get(leader1)!.kill('SIGKILL');
  killedAt = Date.now();
  const leader2 = await waitLeader(leader1, 10_000);
  const electedMs = Date.now() - killedAt;
  t.not(leader2, leader1, `node ${leader2} took over`);
  await sleep(1500);
  stopClients = true;
  await Promise.all(clients);
  t.ok(firstAckAfterKill > 0, 'writes resumed after the kill');
  t.comment(`new leader after ${electedMs} ms; first acknowledged write ${firstAckAfterKill - killedAt} ms after the kill; ${acked.size} acknowledged in all`);
  t.ok(acked.size > before, 'increments were acknowledged after the failover');

  // Restart the killed node; it must catch up from its WAL plus the new leader.
  conns.get(leader1)?.disconnect();
  conns.delete(leader1);
  start(leader1);
  const deadline = Date.now() + 20_000;
  let lists: string[][] = [];
  while (Date.now() < deadline) {
    try {
      lists = await Promise.all([1, 2, 3].map(async (id) => (await conn(id).call('IDS')) as string[]));
      if (lists.every((l) => l.length === lists[0]!.length)) break;
    } catch {
      // restarted node not serving yet
    }
    await sleep(100);
  }
  t.equal(lists.length, 3, 'every node answered');
  const ids = lists[0]!;
  for (const [i, l] of lists.entries()) t.same(l, ids, `node ${i + 1} applied the same increments in the same order`);
  const applied = new Set(ids);
  t.equal(applied.size, ids.length, 'no increment applied twice');
  const missing = [...acked].filter((id) => !applied.has(id));
  t.same(missing, [], 'every acknowledged increment is present');
  const unknown = ids.filter((id) => !attempted.has(id));
  t.same(unknown, [], 'nothing that no client asked for');
  const counts = await Promise.all([1, 2, 3].map(async (id) => Number(await conn(id).call('GET'))));
  t.same(counts, [ids.length, ids.length, ids.length], 'the counter equals the number of distinct increments on every node');
});
