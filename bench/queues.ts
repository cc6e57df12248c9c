/**
 * Queue benchmark: Lockstep's Q.PUSH / Q.POP / Q.ACK on a 3-node cluster vs NATS JetStream (3 servers, R3 file
 * stream) and, through redis-benchmark's LPUSH / RPOP, vs a single redis-server (appendfsync always, unreplicated),
 * same machine, same run.
 *
 * Runs, each a fixed window (--seconds, default 10) after an unmeasured warm-up (WARMUP_MS):
 *   push   --producers (default 50) producers, producer i on node i % 3, each keeping P pushes in flight (P = 1 and
 *          P = --inflight, default 16; pipelined on its one connection), on a queue with 1 partition and one with
 *          --partitions (default 8, Q.CREATE q PARTITIONS 8). Acknowledged pushes/s, push latency p50/p99.
 *          NATS: the same producers doing `js.publish` (awaiting the PubAck) P at a time.
 *   pop    --consumers (default 50) consumers, each looping Q.POP q COUNT --pop-count (10), then Q.ACK q ids...;
 *          on the queues the push runs filled (1 and N partitions). Acked messages/s, pop+ack cycle latency. When
 *          the queue runs dry inside the window (an empty pop and an empty queue afterwards), the rate is taken over
 *          the time until the last ack instead and the row says so. NATS: a durable pull consumer
 *          (`consumer.fetch({ max_messages })`, then `m.ack()` per message: NATS acks are fire-and-forget, Lockstep
 *          waits for Q.ACK's reply).
 *   e2e    producers (P = --e2e-inflight, default 1) and consumers (Q.POP ... BLOCK BLOCK_MS) together on a fresh
 *          queue (1 and N partitions); every payload starts with its push time, so end-to-end latency = time the pop reply
 *          arrived - time the push was sent (wall clock shared by the client threads). Backlog after the window is
 *          reported: when producers outrun consumers the latency includes the queue's growth.
 *   redis  `redis-benchmark -t lpush,rpop -c 50 -P 1` and `-P 16` (CSV) against Lockstep node 1 and the single
 *          redis-server; -n is sized by a short unmeasured probe so a measured run takes about --seconds.
 * Client threads: the clients run on --client-threads worker threads (default: the core count, at most 4; this same
 * file is the thread entry; the runner is bench/lib/client-threads.ts), as in bench/locks.ts. NATS clients get one
 * connection per producer / consumer (like Lockstep) unless --nats-conns thread (one connection per client thread).
 * Reported: a table, ratios (Lockstep over NATS and over Redis, same run), the targets computed from the figures
 * (never hard-coded): >= TARGET_PUSHES_PER_S acknowledged pushes/s with N partitions and pipelined producers, and
 * ahead of JetStream R3 (push and pop+ack); writes bench/results/queues-<timestamp>.json.
 *
 *   npm run bench:queues -- [--seconds 10] [--producers 50] [--consumers 50] [--inflight 16] [--partitions 8]
 *                           [--e2e-inflight 1] [--pop-count 10] [--payload 100] [--only push,pop,e2e,redis]
 *                           [--skip-redis] [--skip-nats] [--skip-lockstep] [--client-threads N]
 *                           [--nats-conns client|thread] [--workers N] [--shards 16] [--fsync batch] [--max-minutes M]
 *
 * Invariants: every loop is bounded by time (window + COMMAND_TIMEOUT_MS + DRAIN_MARGIN_MS, then connections are
 * closed; a client thread that still does not report is terminated); every process started is stopped in finally
 * blocks, and on exit / SIGINT by bench/lib/cluster.ts (Lockstep, redis-server, redis-benchmark) and bench/lib/procs.ts
 * (nats-server, started by bench/lib/nats.ts). The Lockstep nodes run the CLI of the tree this file was compiled into.
 * If the build answers "unknown command" to Q.PUSH (or LPUSH), that part is skipped with a note and the peers still
 * run.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { isMainThread, workerData } from 'node:worker_threads';
import { Redis } from 'ioredis';
import { argValue, printTable, repoRoot, writeResult } from './lib/procs.js';
import {
  clientThreadMain,
  connectResp,
  dealClients,
  DRAIN_MARGIN_MS,
  fmtMs,
  latency,
  nowAbs,
  runClientThreads,
  SETUP_TIMEOUT_MS,
  sleep,
  WARMUP_MS,
  type ClientWindow,
  type CounterDeltas,
  type Latency,
  type ThreadLoops,
} from './lib/client-threads.js';
import {
  requireRedisTools,
  runRedisBenchmark,
  startCluster,
  startRedisAof,
  waitClusterOk,
  waitLeadersStable,
  type BenchRun,
  type LockstepCluster,
  type LogSummary,
  type NodeExit,
} from './lib/cluster.js';
import { findNatsServer, startNatsCluster, type NatsCluster, type NatsExit } from './lib/nats.js';

/** The nodes run the CLI of the tree this file was compiled into (dist/ under npm run bench:queues). */
const cliMain = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

// ---- named limits ----
const NODES = 3;
const NATS_SERVERS = 3;
const NATS_REPLICAS = 3;
/** Queue names (Lockstep) / streams and subjects (NATS). */
const Q1 = 'bench-q1';
const QN = 'bench-qn';
const QE2E1 = 'bench-e2e1';
const QE2EN = 'bench-e2en';
const NATS_STREAM = { main: 'BENCH', e2e: 'BENCHE2E' } as const;
const NATS_SUBJECT = { main: 'bench.q', e2e: 'benche2e.q' } as const;
const NATS_DURABLE = 'bench-pull';
/*
 * Warm-up (WARMUP_MS), connection set-up bound and drain margins: bench/lib/client-threads.ts. After the window,
 * loops get COMMAND_TIMEOUT_MS + DRAIN_MARGIN_MS to finish their current operation before connections close.
 */
/** Per-command timeout (RESP) and PubAck timeout (NATS). */
const COMMAND_TIMEOUT_MS = 10_000;
/** A loop sleeps this long after an error before trying again (no hot error loops). */
const ERROR_BACKOFF_MS = 10;
/** A pop loop (no BLOCK) sleeps this long after an empty pop. */
const EMPTY_BACKOFF_MS = 20;
/** Lockstep e2e consumers: Q.POP ... BLOCK this long. */
const BLOCK_MS = 100;
/** NATS fetch: how long a pull request waits for messages (the client's minimum is 1000). */
const NATS_FETCH_EXPIRES_MS = 1_000;
/** NATS durable consumer limits: max unacked messages, ack wait (as Lockstep's default visibility). */
const NATS_MAX_ACK_PENDING = 20_000;
const NATS_ACK_WAIT_MS = 30_000;
/** Creating the stream is retried this long (JetStream may still be electing its meta leader). */
const NATS_STREAM_READY_TIMEOUT_MS = 20_000;
/** Error messages kept per run (per client thread, then merged). */
const ERROR_SAMPLES_MAX = 5;
/** redis-benchmark sizing (as bench/cluster-vs-redis.ts): probe at least PROBE_MIN requests / PROBE_ROUNDS pipelines. */
const RB_CLIENTS = 50;
const RB_PIPELINES = [1, 16] as const;
const RB_PROBE_MIN = 2_000;
const RB_PROBE_ROUNDS = 4;
const RB_MEASURED_MIN = 2_000;
const RB_MEASURED_MIN_ROUNDS = 10;
const RB_REQUESTS_MAX = 5_000_000;
const RB_PROBE_TIMEOUT_MS = 60_000;
const RB_STALL_FACTOR = 10;
const RB_MEASURED_TIMEOUT_MIN_MS = 30_000;
/** Targets from the issue. */
const TARGET_PUSHES_PER_S = 50_000;
const TARGET_PARTITIONS = 8;

type SystemName = 'lockstep' | 'nats';
type Kind = 'push' | 'pop' | 'e2e';
type Part = 'push' | 'pop' | 'e2e' | 'redis';
const ALL_PARTS: Part[] = ['push', 'pop', 'e2e', 'redis'];

// ---- client side (runs in the client threads) ----

interface Msg {
  payload: string;
  deliveries: number;
  /** nowAbs() when the message reached the client. */
  receivedAt: number;
  ackable: unknown;
}

interface Producer {
  push(payload: string): Promise<void>;
  close(): void;
}

interface Consumer {
  /** Up to popCount messages; [] when none was available (after BLOCK / fetch expiry). */
  take(): Promise<Msg[]>;
  /** Acks what take() returned; resolves to how many the server says it acked (NATS: sent). */
  ack(msgs: Msg[]): Promise<number>;
  close(): void;
}

function respClient(port: number): Promise<Redis> {
  return connectResp(port, COMMAND_TIMEOUT_MS + BLOCK_MS);
}

async function lockstepProducer(port: number, queue: string): Promise<Producer> {
  const c = await respClient(port);
  return {
    async push(payload) {
      await c.call('Q.PUSH', queue, payload);
    },
    close: () => c.disconnect(),
  };
}

async function lockstepConsumer(port: number, queue: string, popCount: number, blockMs: number): Promise<Consumer> {
  const c = await respClient(port);
  const block = blockMs > 0 ? ['BLOCK', String(blockMs)] : [];
  return {
    async take() {
      const r = (await c.call('Q.POP', queue, 'COUNT', String(popCount), ...block)) as unknown[] | null;
      const at = nowAbs();
      if (r === null || !Array.isArray(r)) return [];
      return r.map((t) => {
        const [id, payload, deliveries] = t as [string, string, number | string];
        return { payload: String(payload), deliveries: Number(deliveries), receivedAt: at, ackable: String(id) };
      });
    },
    async ack(msgs) {
      if (msgs.length === 0) return 0;
      return Number(await c.call('Q.ACK', queue, ...msgs.map((m) => m.ackable as string)));
    },
    close: () => c.disconnect(),
  };
}

type NatsModule = typeof import('nats');
type NatsConn = Awaited<ReturnType<NatsModule['connect']>>;
type NatsJsMsg = import('nats').JsMsg;

async function natsConnect(nats: NatsModule, url: string): Promise<NatsConn> {
  return nats.connect({ servers: url, reconnect: false, timeout: SETUP_TIMEOUT_MS, noEcho: true });
}

function natsProducer(nc: NatsConn, subject: string, owned: boolean): Producer {
  const js = nc.jetstream({ timeout: COMMAND_TIMEOUT_MS });
  const enc = new TextEncoder();
  return {
    async push(payload) {
      await js.publish(subject, enc.encode(payload), { timeout: COMMAND_TIMEOUT_MS });
    },
    close: () => {
      if (owned) void nc.close().catch(() => {});
    },
  };
}

async function natsConsumer(nc: NatsConn, stream: string, durable: string, popCount: number, owned: boolean): Promise<Consumer> {
  const js = nc.jetstream({ timeout: COMMAND_TIMEOUT_MS });
  const consumer = await js.consumers.get(stream, durable);
  const dec = new TextDecoder();
  return {
    async take() {
      const out: Msg[] = [];
      const it = await consumer.fetch({ max_messages: popCount, expires: NATS_FETCH_EXPIRES_MS });
      for await (const m of it) {
        // only the timestamp prefix is needed
        out.push({ payload: dec.decode(m.data.subarray(0, 32)), deliveries: m.info.deliveryCount, receivedAt: nowAbs(), ackable: m });
      }
      return out;
    },
    async ack(msgs) {
      for (const m of msgs) (m.ackable as NatsJsMsg).ack();
      return msgs.length;
    },
    close: () => {
      if (owned) void nc.close().catch(() => {});
    },
  };
}

/** Where a client thread connects and what it works on. */
interface Target {
  system: SystemName;
  /** lockstep: every node's port (client i uses node i % n). */
  ports?: number[];
  /** nats: every server's URL (client i uses server i % n). */
  urls?: string[];
  natsConns?: 'client' | 'thread';
  /** lockstep: queue name; nats: subject to publish to. */
  queue: string;
  /** nats: stream and durable pull consumer to fetch from. */
  stream?: string;
  durable?: string;
}

/** What a client thread is given (workerData). */
interface ThreadJob {
  target: Target;
  kind: Kind;
  producerIds: number[];
  consumerIds: number[];
  /** Pushes each producer keeps in flight. */
  inflight: number;
  payloadBytes: number;
  popCount: number;
  /** Lockstep Q.POP BLOCK (0 = none). */
  blockMs: number;
  /** Shared between the client threads of one run. i32: [0] abort flag. */
  i32: SharedArrayBuffer;
}

interface ThreadReport {
  pushLat: number[];
  pushes: number;
  cycleLat: number[];
  e2eLat: number[];
  acked: number;
  popped: number;
  ackMisses: number;
  redeliveries: number;
  emptyPops: number;
  /** Latest ack completion inside the window (wall clock), 0 = none. */
  lastAckAt: number;
  /** First empty pop inside the window (wall clock), 0 = none. */
  firstEmptyAt: number;
  badPayloads: number;
  errors: number;
  errorSamples: string[];
  drainTimedOut: boolean;
  aborted?: string;
}

/** A payload of `bytes` bytes (at least the prefix) starting with its creation time: "<ms since epoch>|xxxx...". */
function makePayload(bytes: number, pad: string): string {
  const head = `${nowAbs().toFixed(3)}|`;
  return bytes > head.length ? head + pad.slice(0, bytes - head.length) : head;
}

function threadMain(job: ThreadJob): Promise<void> {
  const { target, kind } = job;
  const i32 = new Int32Array(job.i32);
  const producers: Producer[] = [];
  const consumers: Consumer[] = [];
  const shared: NatsConn[] = [];
  const closeAll = () => {
    for (const p of producers) p.close();
    for (const c of consumers) c.close();
    for (const nc of shared) void nc.close().catch(() => {});
  };
  const open = async (): Promise<void> => {
    if (target.system === 'nats') {
      const nats = await import('nats');
      const urls = target.urls!;
      const perThread = target.natsConns === 'thread';
      // The thread's lowest client id (= its thread index) picks the server of its one shared connection.
      const ids = [...job.producerIds, ...job.consumerIds];
      const firstId = ids.length > 0 ? Math.min(...ids) : 0;
      const conn = async (id: number): Promise<NatsConn> => {
        if (perThread) {
          if (shared.length === 0) shared.push(await natsConnect(nats, urls[firstId % urls.length]!));
          return shared[0]!;
        }
        return natsConnect(nats, urls[id % urls.length]!);
      };
      for (const id of job.producerIds) producers.push(natsProducer(await conn(id), target.queue, !perThread));
      for (const id of job.consumerIds) {
        consumers.push(await natsConsumer(await conn(id), target.stream!, target.durable!, job.popCount, !perThread));
      }
    } else {
      const ports = target.ports!;
      for (const id of job.producerIds) producers.push(await lockstepProducer(ports[id % ports.length]!, target.queue));
      for (const id of job.consumerIds) {
        consumers.push(await lockstepConsumer(ports[id % ports.length]!, target.queue, job.popCount, job.blockMs));
      }
    }
  };

  const start = ({ startAt, endAt }: ClientWindow): ThreadLoops<ThreadReport> => {
    const r: ThreadReport = {
      pushLat: [], pushes: 0, cycleLat: [], e2eLat: [], acked: 0, popped: 0, ackMisses: 0, redeliveries: 0, emptyPops: 0,
      lastAckAt: 0, firstEmptyAt: 0, badPayloads: 0, errors: 0, errorSamples: [], drainTimedOut: false,
    };
    const noteError = (err: unknown) => {
      r.errors++;
      const msg = (err as Error)?.message ?? String(err);
      if (/unknown command/i.test(msg)) {
        r.aborted = `unknown command: ${msg.slice(0, 200)}`;
        Atomics.store(i32, 0, 1);
      }
      if (r.errorSamples.length < ERROR_SAMPLES_MAX) r.errorSamples.push(msg.slice(0, 300));
    };
    const running = () => Atomics.load(i32, 0) === 0 && performance.now() < endAt;
    const pad = 'x'.repeat(job.payloadBytes);

    const pushLoop = async (p: Producer): Promise<void> => {
      while (running()) {
        const a0 = performance.now();
        try {
          await p.push(makePayload(job.payloadBytes, pad));
        } catch (err) {
          noteError(err);
          await sleep(ERROR_BACKOFF_MS);
          continue;
        }
        const a1 = performance.now();
        if (a0 >= startAt && a1 <= endAt) {
          r.pushes++;
          r.pushLat.push(a1 - a0);
        }
      }
    };

    const popLoop = async (c: Consumer): Promise<void> => {
      while (running()) {
        const a0 = performance.now();
        let msgs: Msg[];
        try {
          msgs = await c.take();
        } catch (err) {
          noteError(err);
          await sleep(ERROR_BACKOFF_MS);
          continue;
        }
        const a1 = performance.now();
        if (msgs.length === 0) {
          if (a1 >= startAt && a1 <= endAt) {
            r.emptyPops++;
            if (r.firstEmptyAt === 0) r.firstEmptyAt = a1 + performance.timeOrigin;
          }
          if (job.blockMs === 0) await sleep(EMPTY_BACKOFF_MS);
          continue;
        }
        for (const m of msgs) {
          if (m.deliveries > 1) r.redeliveries++;
          if (kind === 'e2e' && m.receivedAt - performance.timeOrigin >= startAt && m.receivedAt - performance.timeOrigin <= endAt) {
            const sent = parseFloat(m.payload);
            if (Number.isFinite(sent)) r.e2eLat.push(m.receivedAt - sent);
            else r.badPayloads++;
          }
        }
        let acked: number;
        try {
          acked = await c.ack(msgs);
        } catch (err) {
          noteError(err);
          await sleep(ERROR_BACKOFF_MS);
          continue;
        }
        const a2 = performance.now();
        if (a0 >= startAt && a2 <= endAt) {
          r.popped += msgs.length;
          r.acked += acked;
          r.ackMisses += msgs.length - acked;
          r.cycleLat.push(a2 - a0);
          r.lastAckAt = Math.max(r.lastAckAt, a2 + performance.timeOrigin);
        }
      }
    };

    const loops: Promise<void>[] = [];
    if (kind !== 'pop') for (const p of producers) for (let k = 0; k < job.inflight; k++) loops.push(pushLoop(p));
    if (kind !== 'push') for (const c of consumers) loops.push(popLoop(c));
    return {
      loops: Promise.all(loops),
      report(drainTimedOut) {
        r.drainTimedOut = drainTimedOut;
        return r;
      },
    };
  };

  return clientThreadMain<ThreadReport>({ open, start, drainMs: COMMAND_TIMEOUT_MS + DRAIN_MARGIN_MS, close: closeAll });
}

// ---- main thread ----

interface RunResult {
  system: SystemName;
  kind: Kind;
  /** e.g. "push 8p P16", "pop 1p", "e2e 8p". */
  label: string;
  queue: string;
  /** Lockstep partitions (null for NATS: one stream). */
  partitions: number | null;
  producers: number;
  consumers: number;
  inflight: number;
  clientThreads: number;
  windowS: number;
  pushes: number;
  pushesPerSec: number;
  pushLatency: Latency;
  acked: number;
  /** Acked messages per second over activeS. */
  ackedPerSec: number;
  /** Seconds the acks are counted over: the window, or until the last ack when the queue ran dry. */
  activeS: number;
  ranDry: boolean;
  /** Pop (fetch) + ack cycle latency. */
  cycleLatency: Latency;
  /** e2e only: pop reply time - push send time. */
  e2e: Latency;
  ackMisses: number;
  redeliveries: number;
  emptyPops: number;
  badPayloads: number;
  /** Messages ready in the queue (NATS: consumer num_pending) after the run, when known. */
  backlogAfter: number | null;
  errors: number;
  errorSamples: string[];
  /** % of one core used by this process (all client threads) over the window. */
  clientCpuPct: number;
  /** % of one core used by the server processes (sum) over the window; null when unknown. */
  serverCpuPct: number | null;
  /** Server CPU microseconds (all servers) per message: per push (push, e2e) or per acked message (pop). */
  serverCpuUsPerMsg: number | null;
  drainTimedOut: boolean;
  aborted?: string;
  /** Lockstep: INFO counter deltas over the window, summed over the nodes. */
  counters?: CounterDeltas;
}

interface RbResult {
  system: 'lockstep' | 'redis';
  test: 'LPUSH' | 'RPOP';
  pipeline: number;
  ok: boolean;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  elapsedMs: number;
  error?: string;
}

/** Options, parsed on the main thread only (client threads get what they need in ThreadJob). */
interface Options {
  seconds: number;
  producers: number;
  consumers: number;
  inflight: number;
  e2eInflight: number;
  partitions: number;
  popCount: number;
  payload: number;
  clientThreads: number;
  parts: Part[];
  skipRedis: boolean;
  skipNats: boolean;
  skipLockstep: boolean;
  natsConns: 'client' | 'thread';
  workers: number;
  shards: number;
  fsync: 'batch' | 'always' | 'never';
}
let opts: Options;

interface RunSpec {
  target: Target;
  kind: Kind;
  label: string;
  partitions: number | null;
  inflight: number;
  serverPids: number[];
  /** Lockstep: node ports whose INFO counters are read around the window. */
  counterPorts?: number[];
  /** Ready messages left after the run (null when unknown). */
  backlog?: () => Promise<number | null>;
}

/**
 * One run: the clients are split over the client threads, which open their connections, then all start together;
 * warm-up, fixed window, bounded drain. Throws only when the connections cannot be opened.
 */
async function runScenario(spec: RunSpec): Promise<RunResult> {
  const { kind } = spec;
  const { seconds } = opts;
  const producers = kind === 'pop' ? 0 : opts.producers;
  const consumers = kind === 'push' ? 0 : opts.consumers;
  const nThreads = Math.max(1, Math.min(opts.clientThreads, Math.max(producers, consumers)));
  const i32 = new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT);
  const producerIds = dealClients(producers, nThreads);
  const consumerIds = dealClients(consumers, nThreads);
  const run = await runClientThreads<ThreadJob, ThreadReport>({
    entry: fileURLToPath(import.meta.url),
    jobs: Array.from({ length: nThreads }, (_, t) => ({
      target: spec.target,
      kind,
      producerIds: producerIds[t]!,
      consumerIds: consumerIds[t]!,
      inflight: spec.inflight,
      payloadBytes: opts.payload,
      popCount: opts.popCount,
      blockMs: kind === 'e2e' ? BLOCK_MS : 0,
      i32,
    })),
    seconds,
    drainMs: COMMAND_TIMEOUT_MS + DRAIN_MARGIN_MS,
    serverPids: spec.serverPids,
    ...(spec.counterPorts ? { counterPorts: spec.counterPorts } : {}),
  });
  const got = run.reports;
  const { missing, reportBoundMs: reportBound, startAt, windowS } = run;

  const sum = (f: (r: ThreadReport) => number) => got.reduce((s, r) => s + f(r), 0);
  let backlogAfter: number | null = null;
  if (spec.backlog) {
    try {
      backlogAfter = await spec.backlog();
    } catch {
      backlogAfter = null;
    }
  }
  // Ran dry: some pop came back empty inside the window and nothing is left ready afterwards.
  const emptyPops = sum((r) => r.emptyPops);
  const lastAckAt = Math.max(0, ...got.map((r) => r.lastAckAt));
  const ranDry = kind === 'pop' && emptyPops > 0 && backlogAfter === 0 && lastAckAt > startAt;
  const activeS = ranDry ? (lastAckAt - startAt) / 1000 : seconds;
  const acked = sum((r) => r.acked);
  const aborted = got.find((r) => r.aborted !== undefined)?.aborted;
  const result: RunResult = {
    system: spec.target.system,
    kind,
    label: spec.label,
    queue: spec.target.queue,
    partitions: spec.partitions,
    producers,
    consumers,
    inflight: kind === 'pop' ? 0 : spec.inflight,
    clientThreads: nThreads,
    windowS: Math.round(windowS * 1000) / 1000,
    pushes: sum((r) => r.pushes),
    pushesPerSec: Math.round(sum((r) => r.pushes) / seconds),
    pushLatency: latency(got.flatMap((r) => r.pushLat)),
    acked,
    ackedPerSec: activeS > 0 ? Math.round(acked / activeS) : 0,
    activeS: Math.round(activeS * 1000) / 1000,
    ranDry,
    cycleLatency: latency(got.flatMap((r) => r.cycleLat)),
    e2e: latency(got.flatMap((r) => r.e2eLat)),
    ackMisses: sum((r) => r.ackMisses),
    redeliveries: sum((r) => r.redeliveries),
    emptyPops,
    badPayloads: sum((r) => r.badPayloads),
    backlogAfter,
    errors: sum((r) => r.errors),
    errorSamples: got.flatMap((r) => r.errorSamples).slice(0, ERROR_SAMPLES_MAX),
    clientCpuPct: run.clientCpuPct,
    serverCpuPct: run.serverCpuPct,
    serverCpuUsPerMsg: null,
    drainTimedOut: got.some((r) => r.drainTimedOut) || missing > 0,
  };
  const perSec = kind === 'pop' ? result.ackedPerSec : result.pushesPerSec;
  if (run.serverCpuS !== null && perSec > 0) result.serverCpuUsPerMsg = Math.round((run.serverCpuS * 1e6) / windowS / perSec);
  if (missing > 0) result.errorSamples.push(`${missing} client thread(s) did not report within ${reportBound} ms and were terminated`);
  if (aborted !== undefined) result.aborted = aborted;
  if (run.counters) result.counters = run.counters;
  return result;
}

// ---- passes ----

const results: RunResult[] = [];
const rbResults: RbResult[] = [];
const issues: string[] = [];
const notes: Record<'lockstep' | 'nats' | 'redis' | 'lockstepLists', string> = { lockstep: '', nats: '', redis: '', lockstepLists: '' };
const infra: Record<string, unknown> = {};
const startedAt = new Date();
const load0 = loadavg();


function badList(r: RunResult): string[] {
  return [
    r.errors ? `${r.errors} errors` : '',
    r.ackMisses ? `${r.ackMisses} ack misses` : '',
    r.redeliveries ? `${r.redeliveries} redeliveries` : '',
    r.badPayloads ? `${r.badPayloads} bad payloads` : '',
    r.ranDry ? `ran dry after ${r.activeS} s` : '',
    r.drainTimedOut ? 'drain timed out' : '',
    r.aborted ?? '',
  ].filter((x) => x !== '');
}

function oneLine(r: RunResult): string {
  const cpu = `cpu client ${r.clientCpuPct}% server ${r.serverCpuPct ?? '-'}%`;
  let body: string;
  if (r.kind === 'push') {
    body = `${String(r.pushesPerSec).padStart(7)} pushes/s  p50 ${fmtMs(r.pushLatency.p50Ms)} p99 ${fmtMs(r.pushLatency.p99Ms)} ms`;
  } else if (r.kind === 'pop') {
    body = `${String(r.ackedPerSec).padStart(7)} acked/s  pop+ack p50 ${fmtMs(r.cycleLatency.p50Ms)} p99 ${fmtMs(r.cycleLatency.p99Ms)} ms  backlog after ${r.backlogAfter ?? '-'}`;
  } else {
    body =
      `push ${r.pushesPerSec}/s, acked ${r.ackedPerSec}/s  e2e p50 ${fmtMs(r.e2e.p50Ms)} p99 ${fmtMs(r.e2e.p99Ms)} ms  ` +
      `push p50 ${fmtMs(r.pushLatency.p50Ms)} ms  backlog after ${r.backlogAfter ?? '-'}`;
  }
  const bad = badList(r);
  return `  ${r.label.padEnd(13)} ${body}  ${cpu}${bad.length ? `  [${bad.join(', ')}]` : ''}`;
}

function record(r: RunResult): void {
  results.push(r);
  console.log(oneLine(r));
  const tag = `${r.system} ${r.label}`;
  if (r.errors > 0) issues.push(`${tag}: ${r.errors} errors, e.g. ${r.errorSamples.slice(0, 2).join(' | ')}`);
  if (r.ackMisses > 0) issues.push(`${tag}: ${r.ackMisses} popped messages the ack did not count`);
  if (r.redeliveries > 0) issues.push(`${tag}: ${r.redeliveries} messages delivered more than once`);
  if (r.badPayloads > 0) issues.push(`${tag}: ${r.badPayloads} payloads without a push timestamp`);
  if (r.drainTimedOut) issues.push(`${tag}: loops did not finish within ${COMMAND_TIMEOUT_MS + DRAIN_MARGIN_MS} ms after the window; connections were closed`);
  if (r.counters && (r.counters.workerErrors > 0 || r.counters.failedCalls > 0 || r.counters.termBumps > 0)) {
    issues.push(`${tag}: ${r.counters.termBumps} Raft term bumps, ${r.counters.workerErrors} worker error replies, ${r.counters.failedCalls} failed calls (INFO)`);
  }
}

/** Runs a scenario and records it; a failure to start is reported, not thrown. Returns the result (if any). */
async function runAndRecord(spec: RunSpec): Promise<RunResult | undefined> {
  try {
    const r = await runScenario(spec);
    record(r);
    return r;
  } catch (err) {
    const msg = `${spec.target.system} ${spec.label}: ${(err as Error).message}`;
    issues.push(msg);
    console.log(`  ! ${msg}`);
    return undefined;
  }
}

/** An unmeasured push run so that a pop run has messages (used when the push part is not selected). */
async function fill(spec: Omit<RunSpec, 'kind' | 'label' | 'inflight'>, label: string): Promise<void> {
  try {
    const r = await runScenario({ ...spec, kind: 'push', label, inflight: opts.inflight });
    console.log(`  (${label}: ${r.pushes} messages pushed, unmeasured fill)`);
    if (r.errors > 0) issues.push(`${spec.target.system} ${label}: ${r.errors} errors, e.g. ${r.errorSamples.slice(0, 2).join(' | ')}`);
  } catch (err) {
    issues.push(`${spec.target.system} ${label}: ${(err as Error).message}`);
  }
}

async function respCall(port: number, ...args: string[]): Promise<unknown> {
  const c = await respClient(port);
  try {
    return await c.call(args[0]!, ...args.slice(1));
  } finally {
    c.disconnect();
  }
}

async function infoPid(port: number): Promise<number | undefined> {
  const m = /process_id:(\d+)/.exec(String(await respCall(port, 'INFO', 'server')));
  return m ? Number(m[1]) : undefined;
}

function rbFailure(run: BenchRun, what: string): string {
  if (run.timedOut) return `${what}: STALL, no result within ${run.elapsedMs} ms (redis-benchmark killed)`;
  return `${what}: exit ${run.code ?? run.signal}, ${run.rows.length} rows; ${run.messages.split('\n').slice(-3).join(' | ')}`;
}

/** redis-benchmark -t lpush,rpop at one pipeline depth: a probe sizes -n, then the measured run. */
async function rbPass(system: 'lockstep' | 'redis', port: number): Promise<void> {
  for (const pipeline of RB_PIPELINES) {
    const common = ['-t', 'lpush,rpop', '-c', String(RB_CLIENTS), '-P', String(pipeline), '-d', String(opts.payload)];
    const fail = (error: string) => {
      for (const test of ['LPUSH', 'RPOP'] as const) {
        rbResults.push({ system, test, pipeline, ok: false, rps: 0, p50Ms: 0, p99Ms: 0, requests: 0, elapsedMs: 0, error });
      }
      issues.push(`${system} redis-benchmark: ${error}`);
      console.log(`  ! ${error}`);
    };
    const probeN = Math.max(RB_PROBE_MIN, RB_CLIENTS * pipeline * RB_PROBE_ROUNDS);
    const probe = await runRedisBenchmark(port, [...common, '-n', String(probeN)], RB_PROBE_TIMEOUT_MS);
    const pRows = new Map(probe.rows.map((r) => [r.test, r]));
    const pl = pRows.get('LPUSH');
    const pr = pRows.get('RPOP');
    if (probe.code !== 0 || probe.timedOut || !pl || !pr || !(pl.rps > 0) || !(pr.rps > 0)) {
      fail(rbFailure(probe, `P${pipeline} probe -n ${probeN}`));
      continue;
    }
    const minN = Math.max(RB_MEASURED_MIN, RB_CLIENTS * pipeline * RB_MEASURED_MIN_ROUNDS);
    const n = Math.min(RB_REQUESTS_MAX, Math.max(minN, Math.round(Math.min(pl.rps, pr.rps) * opts.seconds)));
    const expectedMs = (n / pl.rps + n / pr.rps) * 1000;
    const run = await runRedisBenchmark(port, [...common, '-n', String(n)], Math.max(RB_MEASURED_TIMEOUT_MIN_MS, expectedMs * RB_STALL_FACTOR));
    const rows = new Map(run.rows.map((r) => [r.test, r]));
    if (run.code !== 0 || run.timedOut || !rows.get('LPUSH') || !rows.get('RPOP')) {
      fail(rbFailure(run, `P${pipeline} -n ${n}`));
      continue;
    }
    for (const test of ['LPUSH', 'RPOP'] as const) {
      const row = rows.get(test)!;
      const res: RbResult = { system, test, pipeline, ok: true, rps: row.rps, p50Ms: row.p50Ms, p99Ms: row.p99Ms, requests: n, elapsedMs: run.elapsedMs };
      rbResults.push(res);
      console.log(`  ${`${test} P${pipeline}`.padEnd(13)} ${String(Math.round(row.rps)).padStart(7)} req/s  p50 ${fmtMs(row.p50Ms)} p99 ${fmtMs(row.p99Ms)} ms  (-n ${n})`);
    }
    if (run.messages.trim() !== '' && /error/i.test(run.messages)) issues.push(`${system} redis-benchmark P${pipeline}: ${run.messages.slice(0, 300)}`);
  }
}

const wants = (p: Part) => opts.parts.includes(p);

/** Q.* on a 3-node cluster, then redis-benchmark against node 1. */
async function lockstepPass(): Promise<void> {
  if (!existsSync(cliMain)) {
    const msg = `lockstep: ${cliMain} is missing (run \`npx tsc -p tsconfig.json\` first); skipped`;
    console.log(msg);
    issues.push(msg);
    notes.lockstep = 'not built';
    return;
  }
  const t0 = Date.now();
  const rec: {
    ports?: number[]; startMs?: number; leaderSlots?: Record<string, number>; leadersSettled?: boolean; exits?: NodeExit[];
    logs?: Record<number, LogSummary>; queueInfo?: Record<string, unknown>; error?: string;
  } = {};
  infra.lockstep = rec;
  let cluster: LockstepCluster | undefined;
  try {
    cluster = await startCluster({ cliMain, nodes: NODES, workers: opts.workers, shards: opts.shards, fsync: opts.fsync });
    const ports = cluster.nodes.map((n) => n.port);
    rec.ports = ports;
    await waitClusterOk(cluster);
    rec.startMs = Date.now() - t0;
    const leaders = await waitLeadersStable(cluster);
    rec.leaderSlots = leaders.slots;
    rec.leadersSettled = leaders.settled;
    if (!leaders.settled) issues.push(`lockstep: leader map not settled after ${leaders.ms} ms`);
    console.log(`Lockstep: ${NODES} nodes on ${ports.join(',')} (--workers ${opts.workers} --shards ${opts.shards} --fsync ${opts.fsync}), ready after ${rec.startMs} ms`);
    const pids = (await Promise.all(ports.map((p) => infoPid(p)))).filter((p): p is number => p !== undefined);
    const serverPids = pids.length === ports.length ? pids : [];
    const crashed = () => {
      const c = cluster!.exits.filter((e) => e.unexpected);
      if (c.length > 0) throw new Error(`node(s) exited during the run: ${JSON.stringify(c)}`);
    };

    // Probe: does this build have Q.*?
    let haveQueues = false;
    if (wants('push') || wants('pop') || wants('e2e')) {
      try {
        await respCall(ports[0]!, 'Q.PUSH', 'bench-probe', 'probe');
        haveQueues = true;
      } catch (err) {
        const msg = (err as Error).message;
        if (/unknown command/i.test(msg)) {
          console.log('lockstep: Q.* not available in this build');
          notes.lockstep = 'Q.* not available in this build';
        } else {
          console.log(`lockstep: Q.PUSH probe failed: ${msg}`);
          notes.lockstep = `probe failed: ${msg}`;
          issues.push(`lockstep probe: ${msg}`);
        }
      }
    }
    if (haveQueues) {
      for (const [q, p] of [[Q1, 1], [QN, opts.partitions], [QE2E1, 1], [QE2EN, opts.partitions]] as const) {
        await respCall(ports[0]!, 'Q.CREATE', q, 'PARTITIONS', String(p));
      }
      const backlog = (q: string) => async () => Number(await respCall(ports[0]!, 'Q.LEN', q));
      const base = { serverPids, counterPorts: ports };
      const target = (queue: string): Target => ({ system: 'lockstep', ports, queue });
      const queues = [
        { q: Q1, p: 1 },
        { q: QN, p: opts.partitions },
      ];
      let abortedRun = false;
      if (wants('push')) {
        console.log(`Lockstep push: ${opts.producers} producers`);
        outer: for (const { q, p } of queues) {
          for (const inflight of inflights()) {
            const r = await runAndRecord({ ...base, target: target(q), kind: 'push', label: `push ${p}p P${inflight}`, partitions: p, inflight });
            crashed();
            if (r?.aborted) {
              abortedRun = true;
              break outer;
            }
          }
        }
      }
      if (wants('pop') && !abortedRun) {
        console.log(`Lockstep pop+ack: ${opts.consumers} consumers, Q.POP COUNT ${opts.popCount} then Q.ACK`);
        for (const { q, p } of queues) {
          if (!wants('push')) await fill({ ...base, target: target(q), partitions: p }, `fill ${p}p`);
          const r = await runAndRecord({ ...base, target: target(q), kind: 'pop', label: `pop ${p}p`, partitions: p, inflight: 0, backlog: backlog(q) });
          crashed();
          if (r?.aborted) {
            abortedRun = true;
            break;
          }
        }
      }
      if (wants('e2e') && !abortedRun) {
        console.log(`Lockstep end-to-end: ${opts.producers} producers (P${opts.e2eInflight}) + ${opts.consumers} consumers (BLOCK ${BLOCK_MS}), fresh queues`);
        for (const [q, p] of [[QE2E1, 1], [QE2EN, opts.partitions]] as const) {
          await runAndRecord({
            ...base, target: target(q), kind: 'e2e', label: `e2e ${p}p P${opts.e2eInflight}`,
            partitions: p, inflight: opts.e2eInflight, backlog: backlog(q),
          });
          crashed();
        }
      }
      const info: Record<string, unknown> = {};
      for (const q of [Q1, QN, QE2E1, QE2EN]) {
        try {
          info[q] = respToObject(await respCall(ports[0]!, 'Q.INFO', q));
        } catch (err) {
          info[q] = `Q.INFO failed: ${(err as Error).message}`;
        }
      }
      rec.queueInfo = info;
    }

    if (wants('redis')) {
      let haveLists = false;
      try {
        await respCall(ports[0]!, 'LPUSH', 'bench-probe-list', 'probe');
        await respCall(ports[0]!, 'RPOP', 'bench-probe-list');
        haveLists = true;
      } catch (err) {
        const msg = (err as Error).message;
        notes.lockstepLists = /unknown command/i.test(msg) ? 'LPUSH/RPOP not available in this build' : `LPUSH probe failed: ${msg}`;
        console.log(`lockstep: ${notes.lockstepLists}`);
        if (!/unknown command/i.test(msg)) issues.push(`lockstep list probe: ${msg}`);
      }
      if (haveLists) {
        console.log(`Lockstep redis-benchmark (node 1, ${RB_CLIENTS} clients, lists are 1-partition queues)`);
        await rbPass('lockstep', ports[0]!);
        crashed();
      }
    }
  } catch (err) {
    rec.error = (err as Error).message;
    issues.push(`lockstep: ${rec.error}`);
    console.log(`  ! lockstep: ${rec.error}`);
  } finally {
    if (cluster) {
      const { exits, logs } = await cluster.stop();
      rec.exits = exits;
      rec.logs = logs;
      for (const [id, s] of Object.entries(logs)) {
        if (s.warn + s.error + s.fatal + s.other > 0) {
          issues.push(`lockstep node ${id} log: ${s.warn} warn, ${s.error} error, ${s.fatal} fatal, ${s.other} non-JSON; e.g. ${s.samples.slice(0, 2).join(' || ')}`);
        }
      }
      const bad = exits.filter((e) => e.unexpected || (e.code !== 0 && e.signal !== 'SIGTERM'));
      if (bad.length > 0) issues.push(`lockstep: node exits ${JSON.stringify(bad)}`);
    }
  }
}

/** A RESP2 map reply (flat [key, value, ...] array, nested arrays of such maps) as an object, for the JSON. */
function respToObject(v: unknown): unknown {
  if (!Array.isArray(v)) return v;
  const isMap = v.length % 2 === 0 && v.length > 0 && v.every((x, i) => i % 2 === 1 || typeof x === 'string');
  if (!isMap) return v.map(respToObject);
  const o: Record<string, unknown> = {};
  for (let i = 0; i < v.length; i += 2) o[v[i] as string] = respToObject(v[i + 1]);
  return o;
}

function inflights(): number[] {
  return opts.inflight > 1 ? [1, opts.inflight] : [1];
}

/** Creates a stream (retrying while JetStream elects its meta leader) and a durable pull consumer on it. */
async function natsSetupStream(nats: NatsModule, nc: NatsConn, stream: string, subject: string): Promise<void> {
  const jsm = await nc.jetstreamManager({ timeout: COMMAND_TIMEOUT_MS });
  const t0 = Date.now();
  for (;;) {
    try {
      await jsm.streams.add({
        name: stream,
        subjects: [subject],
        storage: nats.StorageType.File,
        num_replicas: NATS_REPLICAS,
        retention: nats.RetentionPolicy.Workqueue,
      });
      break;
    } catch (err) {
      if (Date.now() - t0 > NATS_STREAM_READY_TIMEOUT_MS) throw new Error(`stream ${stream} not created within ${NATS_STREAM_READY_TIMEOUT_MS} ms: ${(err as Error).message}`);
      await sleep(200);
    }
  }
  await jsm.consumers.add(stream, {
    durable_name: NATS_DURABLE,
    ack_policy: nats.AckPolicy.Explicit,
    ack_wait: nats.nanos(NATS_ACK_WAIT_MS),
    max_ack_pending: NATS_MAX_ACK_PENDING,
  });
}

async function natsPass(): Promise<void> {
  if (!(wants('push') || wants('pop') || wants('e2e'))) return;
  const bin = findNatsServer();
  if (bin === undefined) {
    console.log('nats: nats-server is not installed (apt-get install nats-server); NATS JetStream skipped');
    notes.nats = 'nats-server not installed';
    return;
  }
  let nats: NatsModule;
  try {
    nats = await import('nats');
  } catch (err) {
    console.log(`nats: the nats npm package cannot be loaded (${(err as Error).message}); skipped`);
    notes.nats = 'nats package missing';
    return;
  }
  let version = '';
  try {
    version = execFileSync(bin, ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    // reported as unknown
  }
  const rec: { version: string; urls?: string[]; startMs?: number; exits?: NatsExit[]; streams?: Record<string, unknown>; error?: string } = { version };
  infra.nats = rec;
  let cluster: NatsCluster | undefined;
  let admin: NatsConn | undefined;
  try {
    cluster = await startNatsCluster({ bin, servers: NATS_SERVERS });
    rec.urls = cluster.urls;
    rec.startMs = cluster.startMs;
    admin = await natsConnect(nats, cluster.urls[0]!);
    await natsSetupStream(nats, admin, NATS_STREAM.main, NATS_SUBJECT.main);
    await natsSetupStream(nats, admin, NATS_STREAM.e2e, NATS_SUBJECT.e2e);
    console.log(`NATS JetStream (${version}): ${NATS_SERVERS} servers on ${cluster.urls.join(',')}, R${NATS_REPLICAS} file streams, healthy after ${cluster.startMs} ms; connections per ${opts.natsConns}`);
    const jsm = await admin.jetstreamManager({ timeout: COMMAND_TIMEOUT_MS });
    const pids = cluster.servers.map((s) => s.pid);
    const crashed = () => {
      const c = cluster!.exits.filter((e) => e.unexpected);
      if (c.length > 0) throw new Error(`nats-server(s) exited during the run: ${JSON.stringify(c)}`);
    };
    const target = (which: 'main' | 'e2e'): Target => ({
      system: 'nats', urls: cluster!.urls, natsConns: opts.natsConns, queue: NATS_SUBJECT[which], stream: NATS_STREAM[which], durable: NATS_DURABLE,
    });
    const backlog = (which: 'main' | 'e2e') => async () => (await jsm.consumers.info(NATS_STREAM[which], NATS_DURABLE)).num_pending;
    const base = { serverPids: pids, partitions: null };
    if (wants('push')) {
      console.log(`NATS publish: ${opts.producers} producers, js.publish awaiting the PubAck`);
      for (const inflight of inflights()) {
        await runAndRecord({ ...base, target: target('main'), kind: 'push', label: `push P${inflight}`, inflight });
        crashed();
      }
    }
    if (wants('pop')) {
      console.log(`NATS pull consumer: ${opts.consumers} consumers, fetch ${opts.popCount} then ack each (fire-and-forget)`);
      if (!wants('push')) await fill({ ...base, target: target('main') }, 'fill');
      await runAndRecord({ ...base, target: target('main'), kind: 'pop', label: 'fetch+ack', inflight: 0, backlog: backlog('main') });
      crashed();
    }
    if (wants('e2e')) {
      console.log(`NATS end-to-end: ${opts.producers} producers (P${opts.e2eInflight}) + ${opts.consumers} consumers (fetch expires ${NATS_FETCH_EXPIRES_MS} ms)`);
      await runAndRecord({ ...base, target: target('e2e'), kind: 'e2e', label: `e2e P${opts.e2eInflight}`, inflight: opts.e2eInflight, backlog: backlog('e2e') });
      crashed();
    }
    const streams: Record<string, unknown> = {};
    for (const s of Object.values(NATS_STREAM)) {
      try {
        const i = await jsm.streams.info(s);
        streams[s] = { messages: i.state.messages, bytes: i.state.bytes, leader: i.cluster?.leader, replicas: i.cluster?.replicas?.map((r) => ({ name: r.name, current: r.current })) };
      } catch (err) {
        streams[s] = `stream info failed: ${(err as Error).message}`;
      }
    }
    rec.streams = streams;
  } catch (err) {
    rec.error = (err as Error).message;
    issues.push(`nats: ${rec.error.split('\n')[0]}`);
    console.log(`  ! nats: ${rec.error}`);
  } finally {
    if (admin) await admin.close().catch(() => {});
    if (cluster) {
      rec.exits = await cluster.stop();
      const bad = rec.exits.filter((e) => e.unexpected);
      if (bad.length > 0) issues.push(`nats: server exits ${JSON.stringify(bad)}`);
    }
  }
}

// ---- report ----

function find(system: SystemName, label: string): RunResult | undefined {
  return results.find((r) => r.system === system && r.label === label && r.aborted === undefined && (r.pushes > 0 || r.acked > 0));
}

function rate(r: RunResult | undefined): number | undefined {
  if (r === undefined) return undefined;
  return r.kind === 'push' ? r.pushesPerSec : r.ackedPerSec;
}

function ratioOf(a: number | undefined, b: number | undefined): number | null {
  return a !== undefined && b !== undefined && b > 0 ? Math.round((a / b) * 100) / 100 : null;
}

function rb(system: 'lockstep' | 'redis', test: 'LPUSH' | 'RPOP', pipeline: number): RbResult | undefined {
  return rbResults.find((r) => r.system === system && r.test === test && r.pipeline === pipeline && r.ok);
}

let finished = false;
function finish(partial: boolean): void {
  if (finished) return;
  finished = true;
  const P = opts.inflight;
  const N = opts.partitions;
  console.log(
    `\nQueues: ${opts.producers} producers / ${opts.consumers} consumers on up to ${opts.clientThreads} client threads, ${opts.seconds} s window per run ` +
      `after ${WARMUP_MS} ms warm-up, payload ${opts.payload} B${partial ? '  [PARTIAL: stopped early]' : ''}. Lockstep ${NODES} nodes --fsync ${opts.fsync} ` +
      `(replicated, push acked after a majority has it on disk); NATS JetStream ${NATS_SERVERS} servers, R${NATS_REPLICAS} file stream, workqueue ` +
      `retention (acks on replication, fsync on a timer); redis appendfsync always (single, unreplicated).\n`,
  );
  const rows: (string | number)[][] = [];
  for (const r of results) {
    const lat = r.kind === 'push' ? r.pushLatency : r.kind === 'pop' ? r.cycleLatency : r.e2e;
    const opsCell = r.kind === 'push' ? r.pushesPerSec : r.kind === 'pop' ? r.ackedPerSec : `${r.pushesPerSec} / ${r.ackedPerSec}`;
    const clients = r.kind === 'push' ? `${r.producers}x${r.inflight}` : r.kind === 'pop' ? `${r.consumers}` : `${r.producers}x${r.inflight} + ${r.consumers}`;
    rows.push([
      r.system, r.label, clients, opsCell, fmtMs(lat.p50Ms), fmtMs(lat.p99Ms), r.errors,
      `${r.clientCpuPct}%`, r.serverCpuPct === null ? '-' : `${r.serverCpuPct}%`, r.serverCpuUsPerMsg ?? '-', badList(r).join(', ').slice(0, 60),
    ]);
  }
  for (const [sys, note] of [['lockstep', notes.lockstep], ['nats', notes.nats]] as const) {
    if (note !== '' && !results.some((r) => r.system === sys)) rows.push([sys, '-', '-', '-', '-', '-', '-', '-', '-', '-', note.slice(0, 60)]);
  }
  printTable(['system', 'run', 'clients', 'msgs/s', 'p50 ms', 'p99 ms', 'errors', 'client cpu', 'server cpu', 'srv us/msg', 'notes'], rows);
  console.log(
    'msgs/s: push = acknowledged pushes/s; pop = acked messages/s; e2e = pushes/s / acked/s. Latency: push = push round trip; ' +
      'pop = pop (fetch) + ack cycle; e2e = pop reply - push sent. cpu = % of one core over the window (client = this process); ' +
      'srv us/msg = server CPU microseconds (all servers) per message (push and e2e: per push; pop: per acked message).',
  );
  if (rbResults.length > 0 || notes.lockstepLists !== '') {
    console.log(`\nredis-benchmark -t lpush,rpop -c ${RB_CLIENTS} -d ${opts.payload} (Lockstep: node 1; redis: appendfsync always):`);
    const rbRows: (string | number)[][] = [];
    for (const pipeline of RB_PIPELINES) {
      for (const test of ['LPUSH', 'RPOP'] as const) {
        const l = rb('lockstep', test, pipeline);
        const r = rb('redis', test, pipeline);
        rbRows.push([
          `${test} P${pipeline}`, l ? Math.round(l.rps) : '-', l ? fmtMs(l.p50Ms) : '-', l ? fmtMs(l.p99Ms) : '-',
          r ? Math.round(r.rps) : '-', r ? fmtMs(r.p50Ms) : '-', r ? fmtMs(r.p99Ms) : '-', ratioOf(l?.rps, r?.rps) ?? '-',
        ]);
      }
    }
    printTable(['test', 'lockstep req/s', 'p50 ms', 'p99 ms', 'redis req/s', 'p50 ms', 'p99 ms', 'ratio'], rbRows);
    if (notes.lockstepLists !== '') console.log(`  lockstep: ${notes.lockstepLists}`);
  }

  // Ratios: like for like (same in-flight depth), Lockstep over the peer.
  const ratios: Record<string, number | null> = {};
  const natsPushBest = Math.max(0, ...results.filter((r) => r.system === 'nats' && r.kind === 'push' && !r.aborted).map((r) => r.pushesPerSec));
  console.log('\nratios (Lockstep over the peer, same run):');
  const show = (k: string, v: number | null) => {
    ratios[k] = v;
    console.log(`  ${k.padEnd(44)} ${v === null ? '- (missing result)' : `${v}x`}`);
  };
  for (const p of [1, N]) for (const inflight of inflights()) show(`push ${p}p P${inflight} vs NATS push P${inflight}`, ratioOf(rate(find('lockstep', `push ${p}p P${inflight}`)), rate(find('nats', `push P${inflight}`))));
  for (const p of [1, N]) show(`pop ${p}p vs NATS fetch+ack`, ratioOf(rate(find('lockstep', `pop ${p}p`)), rate(find('nats', 'fetch+ack'))));
  for (const pipeline of RB_PIPELINES) {
    for (const test of ['LPUSH', 'RPOP'] as const) show(`${test} P${pipeline} (redis-benchmark) vs Redis`, ratioOf(rb('lockstep', test, pipeline)?.rps, rb('redis', test, pipeline)?.rps));
  }
  show(`Q.PUSH ${N}p P${P} vs Redis LPUSH P16`, ratioOf(rate(find('lockstep', `push ${N}p P${P}`)), rb('redis', 'LPUSH', 16)?.rps));

  const pushN = find('lockstep', `push ${N}p P${P}`);
  const popN = find('lockstep', `pop ${N}p`);
  const natsPop = find('nats', 'fetch+ack');
  const verdict = (ok: boolean | null) => (ok === null ? 'not measured' : ok ? 'met' : 'NOT met');
  const pipelined = P > 1 && N >= TARGET_PARTITIONS;
  const pushRatio = ratioOf(pushN?.pushesPerSec, natsPushBest > 0 ? natsPushBest : undefined);
  const popRatio = ratioOf(popN?.ackedPerSec, natsPop?.ackedPerSec);
  const targets = [
    {
      name: `>= ${TARGET_PUSHES_PER_S} acknowledged pushes/s with ${TARGET_PARTITIONS} partitions and pipelined producers (push ${N}p P${P})`,
      value: pushN?.pushesPerSec ?? null,
      met: pushN && pipelined ? pushN.pushesPerSec >= TARGET_PUSHES_PER_S : null,
    },
    {
      name: `ahead of JetStream R3 in the same run: push ${N}p P${P} / best NATS publish rate (${natsPushBest || '-'}/s)`,
      value: pushRatio,
      met: pushRatio === null ? null : pushRatio > 1,
    },
    {
      name: `ahead of JetStream R3 in the same run: pop+ack ${N}p / NATS fetch+ack (${natsPop?.ackedPerSec ?? '-'}/s)`,
      value: popRatio,
      met: popRatio === null ? null : popRatio > 1,
    },
  ];
  console.log('\ntargets (from the issue):');
  for (const t of targets) console.log(`  ${t.name}: ${t.value ?? '-'} -> ${verdict(t.met)}`);
  if (!pipelined) console.log(`  note: the first target is stated for ${TARGET_PARTITIONS}+ partitions and --inflight > 1 (this run: ${N} partitions, --inflight ${P})`);

  if (issues.length > 0) {
    console.log('\nissues seen:');
    for (const i of issues) console.log(`  - ${i}`);
  }
  const stamp = startedAt.toISOString().replace(/[:.]/g, '-');
  writeResult(`queues-${stamp}`, {
    when: startedAt.toISOString(),
    partial,
    durationS: Math.round((Date.now() - startedAt.getTime()) / 1000),
    machine: { cpus: cpus().length, loadavgStart: load0, loadavgEnd: loadavg() },
    options: { ...opts, warmupMs: WARMUP_MS, blockMs: BLOCK_MS, natsFetchExpiresMs: NATS_FETCH_EXPIRES_MS, rbClients: RB_CLIENTS },
    notes,
    results,
    redisBenchmark: rbResults,
    ratios,
    targets,
    infra,
    issues,
  });
}

function parseOptions(): Options {
  const num = (name: string, fallback: string) => Number(argValue(name, fallback));
  const only = argValue('only', '').toLowerCase();
  const parts = only === '' ? ALL_PARTS : (only.split(',').map((s) => s.trim()) as Part[]);
  const o: Options = {
    seconds: num('seconds', '10'),
    producers: num('producers', '50'),
    consumers: num('consumers', '50'),
    inflight: num('inflight', '16'),
    e2eInflight: num('e2e-inflight', '1'),
    partitions: num('partitions', String(TARGET_PARTITIONS)),
    popCount: num('pop-count', '10'),
    payload: num('payload', '100'),
    clientThreads: num('client-threads', String(Math.max(1, Math.min(4, availableParallelism())))),
    parts,
    skipRedis: process.argv.includes('--skip-redis'),
    skipNats: process.argv.includes('--skip-nats'),
    skipLockstep: process.argv.includes('--skip-lockstep'),
    natsConns: argValue('nats-conns', 'client') as Options['natsConns'],
    // Same default as the node's --workers 0: max(1, min(8, cores / 2)).
    workers: num('workers', String(Math.max(1, Math.min(8, Math.floor(availableParallelism() / 2))))),
    shards: num('shards', '16'),
    fsync: argValue('fsync', 'batch') as Options['fsync'],
  };
  const bad: string[] = [];
  if (!(o.seconds > 0)) bad.push('--seconds must be > 0');
  const posInt = (name: string, v: number) => {
    if (!Number.isInteger(v) || v < 1) bad.push(`--${name} must be a positive integer`);
  };
  posInt('producers', o.producers);
  posInt('consumers', o.consumers);
  posInt('inflight', o.inflight);
  posInt('e2e-inflight', o.e2eInflight);
  posInt('partitions', o.partitions);
  posInt('pop-count', o.popCount);
  posInt('client-threads', o.clientThreads);
  posInt('workers', o.workers);
  posInt('shards', o.shards);
  if (!Number.isInteger(o.payload) || o.payload < 0) bad.push('--payload must be a non-negative integer');
  for (const p of parts) if (!ALL_PARTS.includes(p)) bad.push(`--only takes a comma list of ${ALL_PARTS.join(', ')} (got "${p}")`);
  if (o.natsConns !== 'client' && o.natsConns !== 'thread') bad.push('--nats-conns takes client or thread');
  if (!['batch', 'always', 'never'].includes(o.fsync)) bad.push('--fsync takes batch, always or never');
  if (bad.length > 0) {
    console.error(bad.join('\n'));
    process.exit(2);
  }
  return o;
}

async function main(): Promise<void> {
  opts = parseOptions();
  process.chdir(repoRoot());
  const { seconds, skipRedis, skipLockstep, skipNats } = opts;
  const rbWanted = wants('redis');
  if ((rbWanted && !skipRedis) || !skipLockstep) await requireRedisTools();
  // Estimate: per client run warm-up + window + ~2 s set-up; redis-benchmark ~2 windows per pipeline depth.
  const perRunS = WARMUP_MS / 1000 + seconds + 2;
  const nInf = inflights().length;
  const lsRuns = (wants('push') ? 2 * nInf : 0) + (wants('pop') ? 2 * (wants('push') ? 1 : 2) : 0) + (wants('e2e') ? 2 : 0);
  const natsRuns = (wants('push') ? nInf : 0) + (wants('pop') ? (wants('push') ? 1 : 2) : 0) + (wants('e2e') ? 1 : 0);
  const rbS = rbWanted ? RB_PIPELINES.length * (2 * seconds + 3) : 0;
  const estimateS = Math.round(
    (skipLockstep ? 0 : lsRuns * perRunS + rbS + 30) + (skipNats ? 0 : natsRuns * perRunS + 10) + (skipRedis ? 0 : rbS + 2),
  );
  const maxMinutes = Number(argValue('max-minutes', String(Math.ceil((estimateS * 3) / 60) + 2)));
  console.log(
    `queues: parts ${opts.parts.join(',')}, ${opts.producers} producers (P1, P${opts.inflight}) / ${opts.consumers} consumers on up to ` +
      `${opts.clientThreads} client threads, ${seconds} s each; estimated ~${Math.ceil(estimateS / 6) / 10} min, hard limit ${maxMinutes} min. ` +
      `Load average ${load0.map((x) => x.toFixed(2)).join(' ')} on ${cpus().length} cpus.\n`,
  );
  setTimeout(() => {
    console.error(`\nhard limit of ${maxMinutes} min reached: printing partial results and stopping everything`);
    finish(true);
    process.exit(2);
  }, maxMinutes * 60_000).unref();

  if (rbWanted && !skipRedis) {
    let redis: Awaited<ReturnType<typeof startRedisAof>> | undefined;
    try {
      redis = await startRedisAof();
      infra.redis = { port: redis.port };
      console.log(`redis-server (appendfsync always, single unreplicated instance) on ${redis.port}, redis-benchmark ${RB_CLIENTS} clients`);
      await rbPass('redis', redis.port);
    } catch (err) {
      issues.push(`redis: ${(err as Error).message}`);
      console.log(`  ! redis: ${(err as Error).message}`);
    } finally {
      if (redis) await redis.stop();
    }
  }
  if (!skipLockstep) await lockstepPass();
  if (!skipNats) await natsPass();
  finish(false);
}

if (isMainThread) {
  // SIGINT / SIGTERM (bench/lib/procs.ts and bench/lib/cluster.ts exit with 130 after killing their processes) or an
  // uncaught error: print and write what was measured so far.
  process.on('exit', () => {
    if (!finished && (results.length > 0 || rbResults.length > 0)) finish(true);
  });
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
} else {
  void threadMain(workerData as ThreadJob);
}
