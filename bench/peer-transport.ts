/**
 * Peer transport benchmark: two PeerTransports on loopback, the sender on the main thread and the receiver on a
 * worker thread (as two nodes would each have their own thread).
 *
 *   1. throughput: 100-byte Append messages across 16 groups at high offered load (the sender offers 256 messages
 *      per event-loop turn while less than 4 MiB is buffered): messages/s, frames/s, messages per frame, drops;
 *   2. Raft ping-pong: one Append out, one AppendResp back, repeated: round-trip p50/p99;
 *   3. APP request/reply ping-pong: round-trip p50/p99.
 *
 * Baseline: the Node loopback TCP ping-pong (64 B) in /work/shared/PEERS.md: 21,447 round trips/s, p50 41 us,
 * p99 95 us, measured on the same kind of machine. Prints a table and one JSON line.
 *
 *   node .build/<name>/bench/peer-transport.js [--seconds N]     (default 0.5 s per phase)
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { pino } from 'pino';
import { PeerTransport } from '../src/transport/peer-transport.js';
import { PEER_LIMITS_DEFAULT } from '../src/config/limits.js';
import type { AppendMessage, Message } from '../src/raft/types.js';

const GROUPS = 16;
const ENTRY_BYTES = 100;
const PER_TURN = 256;
const BUFFERED_BYTES_MAX = 4 * 1024 * 1024;
const BASELINE = { name: 'Node loopback TCP ping-pong 64 B (PEERS.md)', ops: 21_447, p50Us: 41, p99Us: 95 };

const logger = pino({ level: 'warn' }, pino.destination(2));

function makeTransport(nodeId: number, onRaftMessages: (m: Message[]) => void,
  onRequest?: (from: number, p: unknown) => Promise<unknown>): PeerTransport {
  return new PeerTransport({
    nodeId, workerIndex: 0, clusterId: 'bench', topologyDigest: 'bench', listen: { host: '127.0.0.1', port: 0 },
    peers: new Map(), limits: PEER_LIMITS_DEFAULT, logger, onRaftMessages, ...(onRequest ? { onRequest } : {}),
  });
}

type ToWorker = { op: 'peer'; port: number } | { op: 'report' } | { op: 'stop' };
type FromWorker = { op: 'listening'; port: number } | { op: 'up' } | { op: 'report'; messages: number; frames: number; bytes: number } | { op: 'stopped' };

async function receiver(): Promise<void> {
  const port = parentPort!;
  let messages = 0;
  const t: PeerTransport = makeTransport(2, (msgs) => {
    messages += msgs.length;
    // Ping-pong: answer group 999 at once.
    const first = msgs[0]!;
    if (first.group === 999 && first.type === 5) {
      t.send([{ type: 6, group: 999, from: 2, to: 1, term: first.term, index: first.prevIndex + 1, reject: false, rejectHint: 0, hintTerm: 0 }]);
    }
  }, async (_from, p) => p);
  await t.start();
  t.onPeerUp(() => port.postMessage({ op: 'up' } satisfies FromWorker));
  port.postMessage({ op: 'listening', port: t.address.port } satisfies FromWorker);
  port.on('message', (m: ToWorker) => {
    if (m.op === 'peer') t.setPeer(1, { host: '127.0.0.1', port: m.port });
    else if (m.op === 'report') {
      const s = t.stats;
      port.postMessage({ op: 'report', messages, frames: s.framesReceived, bytes: s.bytesReceived } satisfies FromWorker);
    } else {
      void t.stop().then(() => port.postMessage({ op: 'stopped' } satisfies FromWorker));
    }
  });
  void workerData;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

async function main(): Promise<void> {
  const i = process.argv.indexOf('--seconds');
  const seconds = i > 0 ? Number(process.argv[i + 1]) : 0.5;
  if (!(seconds > 0 && seconds <= 600)) throw new RangeError(`--seconds must be in (0, 600], got ${process.argv[i + 1]}`);
  const phaseMs = seconds * 1000;

  const worker = new Worker(new URL(import.meta.url));
  const inbox: FromWorker[] = [];
  let wake: (() => void) | null = null;
  worker.on('message', (m: FromWorker) => {
    inbox.push(m);
    wake?.();
  });
  worker.on('error', (e) => {
    console.error(e);
    process.exitCode = 1;
  });
  const next = async (op: FromWorker['op']): Promise<FromWorker> => {
    for (;;) {
      const idx = inbox.findIndex((m) => m.op === op);
      if (idx >= 0) return inbox.splice(idx, 1)[0]!;
      await new Promise<void>((r) => (wake = r));
    }
  };

  let rtts: number[] = [];
  let pingSent = 0n;
  let pinging = false;
  let pingIndex = 0;
  const data = new Uint8Array(ENTRY_BYTES).fill(7);
  const ping = (): void => {
    pingIndex++;
    pingSent = process.hrtime.bigint();
    sender.send([{ type: 5, group: 999, from: 1, to: 2, term: 1, prevIndex: pingIndex - 1, prevTerm: 1, commit: 0, entries: [{ term: 1, index: pingIndex, type: 0, data }] }]);
  };
  const sender: PeerTransport = makeTransport(1, (msgs) => {
    if (pinging && msgs[0]!.group === 999) {
      rtts.push(Number(process.hrtime.bigint() - pingSent) / 1000);
      ping();
    }
  });
  await sender.start();
  const listening = (await next('listening')) as { port: number };
  sender.setPeer(2, { host: '127.0.0.1', port: listening.port });
  worker.postMessage({ op: 'peer', port: sender.address.port } satisfies ToWorker);
  await next('up');
  while (!sender.isUp(2)) await new Promise((r) => setTimeout(r, 5));

  // 1. Throughput.
  const indexes = new Array<number>(GROUPS).fill(0);
  let offered = 0;
  const t0 = process.hrtime.bigint();
  const before = sender.stats;
  await new Promise<void>((resolve) => {
    const deadline = Date.now() + phaseMs;
    const turn = (): void => {
      if (Date.now() >= deadline) return resolve();
      if (sender.stats.peers[2]!.bufferedBytes < BUFFERED_BYTES_MAX) {
        const batch: AppendMessage[] = [];
        for (let k = 0; k < PER_TURN; k++) {
          const g = k % GROUPS;
          const idx = ++indexes[g]!;
          batch.push({ type: 5, group: g, from: 1, to: 2, term: 1, prevIndex: idx - 1, prevTerm: 1, commit: idx - 1, entries: [{ term: 1, index: idx, type: 0, data }] });
        }
        offered += PER_TURN;
        sender.send(batch);
      }
      setImmediate(turn);
    };
    turn();
  });
  // Let the receiver drain what was sent, then read its counters.
  for (let k = 0; k < 400; k++) {
    worker.postMessage({ op: 'report' } satisfies ToWorker);
    const r = (await next('report')) as { messages: number };
    if (r.messages >= sender.stats.messagesSent - before.messagesSent) break;
    await new Promise((res) => setTimeout(res, 5));
  }
  const elapsedS = Number(process.hrtime.bigint() - t0) / 1e9;
  worker.postMessage({ op: 'report' } satisfies ToWorker);
  const rep = (await next('report')) as { messages: number; frames: number; bytes: number };
  const after = sender.stats;
  const tp = {
    seconds: +elapsedS.toFixed(3),
    offered,
    messagesPerSec: Math.round(rep.messages / elapsedS),
    framesPerSec: Math.round((after.batchesSent - before.batchesSent) / elapsedS),
    messagesPerFrame: +((after.messagesSent - before.messagesSent) / Math.max(1, after.batchesSent - before.batchesSent)).toFixed(1),
    mbPerSec: +((after.bytesSent - before.bytesSent) / elapsedS / 1e6).toFixed(1),
    bytesPerMessage: +((after.bytesSent - before.bytesSent) / Math.max(1, after.messagesSent - before.messagesSent)).toFixed(1),
    drops: after.drops - before.drops,
  };

  // 2. Raft ping-pong.
  rtts = [];
  pinging = true;
  ping();
  await new Promise((r) => setTimeout(r, phaseMs));
  pinging = false;
  await new Promise((r) => setTimeout(r, 20));
  const raftRtts = rtts.slice().sort((a, b) => a - b);

  // 3. APP request/reply ping-pong.
  const appRtts: number[] = [];
  const payload = { op: 'get', key: 'user:1', data: new Uint8Array(64) };
  const appDeadline = Date.now() + phaseMs;
  while (Date.now() < appDeadline) {
    const s = process.hrtime.bigint();
    await sender.request(2, payload, 1000);
    appRtts.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  appRtts.sort((a, b) => a - b);

  const pp = (xs: number[]): { ops: number; p50Us: number; p99Us: number } => ({
    ops: Math.round(xs.length / seconds),
    p50Us: Math.round(percentile(xs, 0.5)),
    p99Us: Math.round(percentile(xs, 0.99)),
  });
  const result = {
    bench: 'peer-transport',
    seconds,
    throughput: tp,
    raftPingPong: pp(raftRtts),
    appPingPong: pp(appRtts),
    baseline: BASELINE,
  };
  console.log(`peer transport, ${seconds} s per phase, sender on the main thread, receiver on a worker thread`);
  console.log(`throughput   ${tp.messagesPerSec.toLocaleString('en')} msg/s  ${tp.framesPerSec.toLocaleString('en')} frames/s  ` +
    `${tp.messagesPerFrame} msg/frame  ${tp.mbPerSec} MB/s  ${tp.bytesPerMessage} B/msg  drops ${tp.drops}`);
  console.log(`raft ping    ${result.raftPingPong.ops.toLocaleString('en')} rt/s  p50 ${result.raftPingPong.p50Us} us  p99 ${result.raftPingPong.p99Us} us`);
  console.log(`app request  ${result.appPingPong.ops.toLocaleString('en')} rt/s  p50 ${result.appPingPong.p50Us} us  p99 ${result.appPingPong.p99Us} us`);
  console.log(`baseline     ${BASELINE.ops.toLocaleString('en')} rt/s  p50 ${BASELINE.p50Us} us  p99 ${BASELINE.p99Us} us  (${BASELINE.name})`);
  console.log(JSON.stringify(result));

  await sender.stop();
  worker.postMessage({ op: 'stop' } satisfies ToWorker);
  await next('stopped');
  await worker.terminate();
}

if (isMainThread) {
  main().catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  });
} else {
  void receiver();
}
