/**
 * Raft commit throughput and latency: 3 real processes on loopback (test/support/raft-counter-node.ts) with the
 * WAL (--fsync batch by default) and the TCP peer transport. The leader runs N in-process proposers (1, 50, 500)
 * proposing 100-byte entries; a proposal completes when its entry is committed by a majority and applied on the
 * leader. Prints committed entries/s, commit latency p50/p99 and fsyncs/s on the leader (group commit shows as
 * many entries per fsync); writes bench/results/raft-commit.json.
 *
 *   npm run bench:raft -- [--ms 3000] [--fsync batch|always|never] [--proposers 1,50,500]
 *
 * Reference (../shared/PEERS.md, same kind of machine): etcd 3.4, 3 local members, 50 clients: about 2,000-2,300
 * puts/s, p99 55-68 ms.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { argValue, freePort, printTable, writeResult } from './lib/procs.js';

const ms = Number(argValue('ms', '3000'));
const fsync = argValue('fsync', 'batch');
const proposerCounts = argValue('proposers', '1,50,500').split(',').map(Number);
const bytes = Number(argValue('bytes', '100'));

async function main(): Promise<void> {
  let base = 0;
  for (;;) {
    base = (await freePort()) - 50;
    if (base > 1024 && base + 200 < 65535) break;
  }
  const dir = mkdtempSync(join(tmpdir(), 'bench-raft-'));
  const procs: ChildProcess[] = [];
  process.on('exit', () => procs.forEach((p) => p.kill('SIGKILL')));
  for (const id of [1, 2, 3]) {
    procs.push(
      spawn(process.execPath, ['dist/test/support/raft-counter-node.js', '--id', String(id), '--nodes', '3', '--base-port', String(base), '--data-dir', join(dir, `n${id}`), '--fsync', fsync, '--snapshot-entries', '100000'], { stdio: ['ignore', 'ignore', 'inherit'] }),
    );
  }
  const conns = [1, 2, 3].map((id) => {
    const c = new Redis({ port: base + id, host: '127.0.0.1', enableReadyCheck: false, retryStrategy: () => 100, maxRetriesPerRequest: 1 });
    c.on('error', () => {});
    return c;
  });
  let leader = -1;
  for (let i = 0; i < 300 && leader < 0; i++) {
    for (const [i2, c] of conns.entries()) {
      const r = (await c.call('ROLE').catch(() => null)) as [string] | null;
      if (r?.[0] === 'leader') leader = i2;
    }
    if (leader < 0) await new Promise((r) => setTimeout(r, 50));
  }
  if (leader < 0) throw new Error('no leader');
  const rows: (string | number)[][] = [];
  const results: unknown[] = [];
  for (const n of proposerCounts) {
    const out = JSON.parse(String(await conns[leader]!.call('LOAD', String(n), String(ms), String(bytes)))) as {
      perSecond: number; p50Ms: number; p99Ms: number; fsyncsPerSecond: number; committed: number; errors: number;
    };
    results.push(out);
    rows.push([n, out.perSecond, out.p50Ms, out.p99Ms, out.fsyncsPerSecond, (out.perSecond / Math.max(1, out.fsyncsPerSecond)).toFixed(1), out.errors]);
  }
  console.log(`\nRaft commit: 3 processes on loopback, --fsync ${fsync}, ${bytes}-byte entries, ${ms} ms per row\n`);
  printTable(['proposers', 'entries/s', 'p50 ms', 'p99 ms', 'fsyncs/s', 'entries/fsync', 'errors'], rows);
  console.log('\nReference (shared/PEERS.md): etcd 3.4, 3 members, 50 clients: ~2,000-2,300 puts/s, p99 ~55-68 ms');
  writeResult('raft-commit', { when: new Date().toISOString(), fsync, bytes, ms, results });
  for (const c of conns) c.disconnect();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
