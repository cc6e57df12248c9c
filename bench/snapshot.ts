/**
 * Snapshot encode / restore cost of the queue state, the part of a shard's snapshot that grows with unconsumed
 * messages. A snapshot is taken on the shard worker's thread, synchronously: while it encodes, no group of that
 * worker sends heartbeats, so a long encode on a leader lets its followers' election timers run out (measured: a
 * 32 MB queue snapshot took 0.9-1.2 s and the shard's term went from 2 to 12 under a pipelined Q.PUSH load).
 *
 * Builds a QueueState with --messages (default 450,000) messages of --payload bytes (100) on one partition, a
 * --delivered share (default 10%) of them popped (in flight, with delivery fields set), and --dedup entries; then
 * times snapshot() and restore() (best and median of --rounds, default 5) and prints MB/s and JSON
 * (bench/results/snapshot.json).
 *
 *   npm run bench:snapshot -- [--messages 450000] [--payload 100] [--delivered 0.1] [--dedup 10000] [--rounds 5]
 */
import { performance } from 'node:perf_hooks';
import { QueueState } from '../src/queue/queue-state.js';
import { argValue, writeResult } from './lib/procs.js';

const messages = Number(argValue('messages', '450000'));
const payloadBytes = Number(argValue('payload', '100'));
const deliveredShare = Number(argValue('delivered', '0.1'));
const dedupCount = Number(argValue('dedup', '10000'));
const rounds = Number(argValue('rounds', '5'));

const limits = { queueLengthMax: messages + 10, inflightPerConsumerMax: messages + 10, dedupEntriesMax: dedupCount + 10 };

function build(): QueueState {
  const s = new QueueState(limits);
  const q = Buffer.from('bench-queue');
  const payload = Buffer.alloc(payloadBytes, 0x61);
  let index = 1;
  let stamp = 1_000;
  const batch = 1_000;
  for (let done = 0; done < messages; ) {
    const n = Math.min(batch, messages - done);
    const items = [];
    for (let i = 0; i < n; i++) {
      const d = done + i;
      items.push(d < dedupCount ? { payload, dedup: Buffer.from(`dedup-${d}`) } : { payload });
    }
    s.push(stamp++, index++, q, 0, items);
    done += n;
  }
  let popped = 0;
  const want = Math.floor(messages * deliveredShare);
  while (popped < want) {
    const r = s.pop(stamp++, index++, q, 0, `consumer-${popped % 50}`, Math.min(1_000, want - popped), 60_000);
    if (!Array.isArray(r) || r.length === 0) break;
    popped += r.length;
  }
  return s;
}

function timeIt(f: () => void): { bestMs: number; medianMs: number } {
  const t: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    f();
    t.push(performance.now() - t0);
  }
  t.sort((a, b) => a - b);
  return { bestMs: t[0]!, medianMs: t[Math.floor(t.length / 2)]! };
}

const t0 = performance.now();
const state = build();
const buildMs = performance.now() - t0;
let snap = state.snapshot();
const encode = timeIt(() => {
  snap = state.snapshot();
});
const mb = snap.length / 1e6;
const restore = timeIt(() => new QueueState(limits).restore(snap));
const result = {
  when: new Date().toISOString(),
  options: { messages, payloadBytes, deliveredShare, dedupCount, rounds },
  buildMs: Math.round(buildMs),
  snapshotBytes: snap.length,
  encode: { ...encode, mbPerS: Math.round(mb / (encode.medianMs / 1000)) },
  restore: { ...restore, mbPerS: Math.round(mb / (restore.medianMs / 1000)) },
};
console.log(
  `queue snapshot: ${messages} messages of ${payloadBytes} B (${Math.round(deliveredShare * 100)}% in flight, ${dedupCount} dedup ids) = ${mb.toFixed(1)} MB\n` +
    `  encode   best ${encode.bestMs.toFixed(0)} ms  median ${encode.medianMs.toFixed(0)} ms  ${result.encode.mbPerS} MB/s\n` +
    `  restore  best ${restore.bestMs.toFixed(0)} ms  median ${restore.medianMs.toFixed(0)} ms  ${result.restore.mbPerS} MB/s`,
);
writeResult('snapshot', result);
