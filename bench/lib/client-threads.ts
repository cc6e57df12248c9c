/**
 * Client threads for the load-generating benchmarks (bench/locks.ts, bench/queues.ts, bench/cache.ts). One Node
 * thread driving 50 ioredis connections saturates a core well before the servers do, so a run splits its clients
 * over worker threads whose entry is the benchmark file itself (it calls clientThreadMain when !isMainThread).
 *
 * Protocol of one run (runClientThreads on the main thread, clientThreadMain in each thread):
 *   1. every thread opens its connections and posts 'ready' (or 'setup-failed'); the main thread waits at most
 *      SETUP_TIMEOUT_MS for all of them, else terminates them and throws;
 *   2. the main thread posts 'go' with one wall-clock window [startAt, endAt]: startAt = now + warm-up, endAt =
 *      startAt + seconds. The loops start at once (the warm-up is unmeasured: each loop counts only operations that
 *      started and finished inside the window) and stop starting work at endAt;
 *   3. a thread waits for its loops at most until endAt + drainMs, closes its connections, waits at most
 *      CLOSE_GRACE_MS more if the loops had not finished, and posts its one report;
 *   4. the main thread reads its own CPU, the servers' CPU (/proc), Lockstep INFO counters and an optional caller
 *      snapshot at the window's edges (timers; when the last report is handled before a late end timer, the end is
 *      read right then), waits for the reports until endAt + drainMs + CLOSE_GRACE_MS + REPORT_MARGIN_MS, then
 *      terminates every thread (a thread that did not report counts as missing).
 * Also here: latency percentiles, a wall clock shared by the threads, and an ioredis connection with the
 * benchmarks' settings (no offline queue, no retries, a command timeout).
 *
 * Invariants: a run is bounded in time by the limits above; every thread is terminated before runClientThreads
 * returns or throws; the reports are whatever the threads posted, never partial objects.
 */
import { performance } from 'node:perf_hooks';
import { parentPort, Worker } from 'node:worker_threads';
import { Redis } from 'ioredis';
import { nodeCounters, type NodeCounters } from './cluster.js';
import { processCpuSeconds } from './procs.js';

/** Unmeasured warm-up before every window. */
export const WARMUP_MS = 1_000;
/** How long the client threads may take to open their connections. */
export const SETUP_TIMEOUT_MS = 30_000;
/** Margin the benchmarks add to their longest operation to get a thread's drain bound after the window. */
export const DRAIN_MARGIN_MS = 5_000;
/** After closing connections, how long a thread waits for its loops to notice (then it reports anyway). */
export const CLOSE_GRACE_MS = 5_000;
/** Beyond a thread's own drain bound, how long the main thread waits for its report before terminating it. */
export const REPORT_MARGIN_MS = 10_000;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** Wall-clock ms with sub-ms precision, comparable across threads. */
export const nowAbs = () => performance.timeOrigin + performance.now();

/** An ioredis connection, connected: no offline queue, no retries or reconnects, commands time out. */
export async function connectResp(port: number, commandTimeoutMs: number): Promise<Redis> {
  const c = new Redis({
    host: '127.0.0.1',
    port,
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    commandTimeout: commandTimeoutMs,
  });
  c.on('error', () => {
    // surfaced through the failing commands
  });
  await c.connect();
  return c;
}

// ---- latencies ----

export interface Latency {
  n: number;
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
  meanMs: number | null;
}

/** Percentiles (nearest rank) of latencies in ms, rounded to microseconds. */
export function latency(xs: number[]): Latency {
  if (xs.length === 0) return { n: 0, p50Ms: null, p99Ms: null, maxMs: null, meanMs: null };
  const s = Float64Array.from(xs).sort();
  const q = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return { n: s.length, p50Ms: r(q(0.5)), p99Ms: r(q(0.99)), maxMs: r(s[s.length - 1]!), meanMs: r(s.reduce((a, b) => a + b, 0) / s.length) };
}

export function fmtMs(x: number | null | undefined): string {
  return x === null || x === undefined ? '-' : x < 10 ? x.toFixed(2) : x.toFixed(1);
}

// ---- thread side ----

/** The measured window on this thread's performance.now() clock. */
export interface ClientWindow {
  startAt: number;
  endAt: number;
}

export interface ThreadLoops<R> {
  /** Settles when every loop of this thread has stopped. */
  loops: Promise<unknown>;
  /** This thread's report, built once the loops stopped or the drain bound passed. */
  report(drainTimedOut: boolean): R;
}

export interface ClientThreadSpec<R> {
  /** Opens this thread's connections; throwing reports a setup failure (close() and afterClose() are called first). */
  open(): Promise<void>;
  /** Starts the loops (at 'go', so they run through the warm-up too). */
  start(window: ClientWindow): ThreadLoops<R>;
  /** How long after the window the loops may take to finish their current operation before close(). */
  drainMs: number;
  /** Closes whatever open() opened, also after a partial open. */
  close(): void;
  /** Called after the loops stopped (or CLOSE_GRACE_MS after close()), e.g. to close a client shared by the loops. */
  afterClose?(): void;
}

type ToMain<R> = { type: 'ready' } | { type: 'setup-failed'; message: string } | { type: 'done'; report: R };
interface GoMessage {
  type: 'go';
  /** Wall-clock ms (nowAbs): the measured window [startAt, endAt]. */
  startAt: number;
  endAt: number;
}

/** The body of a client thread (call it when !isMainThread). */
export async function clientThreadMain<R>(spec: ClientThreadSpec<R>): Promise<void> {
  const port = parentPort!;
  try {
    await spec.open();
  } catch (err) {
    spec.close();
    spec.afterClose?.();
    port.postMessage({ type: 'setup-failed', message: (err as Error).message } satisfies ToMain<R>);
    return;
  }
  const goMsg = new Promise<GoMessage>((resolve) => port.once('message', (m: GoMessage) => resolve(m)));
  port.postMessage({ type: 'ready' } satisfies ToMain<R>);
  const go = await goMsg;
  // This thread's clock: performance.now() at the window's edges.
  const window = { startAt: go.startAt - performance.timeOrigin, endAt: go.endAt - performance.timeOrigin };
  const run = spec.start(window);
  const drainBound = Math.max(0, window.endAt - performance.now()) + spec.drainMs;
  const finished = await Promise.race([run.loops.then(() => true), sleep(drainBound).then(() => false)]);
  spec.close();
  if (!finished) await Promise.race([run.loops, sleep(CLOSE_GRACE_MS)]);
  spec.afterClose?.();
  port.postMessage({ type: 'done', report: run.report(!finished) } satisfies ToMain<R>);
}

// ---- main thread ----

/** Summed CPU seconds of the processes; undefined when none is given or one is gone. */
export function sumCpu(pids: number[]): number | undefined {
  if (pids.length === 0) return undefined;
  let total = 0;
  for (const p of pids) {
    const c = processCpuSeconds(p);
    if (c === undefined) return undefined;
    total += c;
  }
  return total;
}

export async function snapshotCounters(ports: number[]): Promise<NodeCounters[] | undefined> {
  try {
    return await Promise.all(ports.map((p) => nodeCounters(p)));
  } catch {
    return undefined;
  }
}

/** Lockstep INFO counter deltas over a window, summed over the nodes. */
export interface CounterDeltas {
  commands: number;
  forwarded: number;
  workerErrors: number;
  failedCalls: number;
  /** The largest per-node growth of the summed Raft terms (elections and transfers). */
  termBumps: number;
}

export function counterDeltas(before: NodeCounters[], after: NodeCounters[]): CounterDeltas {
  const d = (f: keyof NodeCounters) => after.reduce((s, x, i) => s + x[f] - before[i]![f], 0);
  return {
    commands: d('commands'),
    forwarded: d('forwarded'),
    workerErrors: d('workerErrors'),
    failedCalls: d('failedCalls'),
    termBumps: Math.max(...after.map((x, i) => x.termSum - before[i]!.termSum)),
  };
}

export interface ThreadRunSpec<J, S> {
  /** The thread entry: the benchmark file (fileURLToPath(import.meta.url)). */
  entry: string;
  /** One job (the thread's workerData) per thread. */
  jobs: J[];
  /** Window length. */
  seconds: number;
  /** Unmeasured warm-up before the window (default WARMUP_MS). */
  warmupMs?: number;
  /** The threads' drain bound after the window (as ClientThreadSpec.drainMs). */
  drainMs: number;
  /** Server processes whose CPU is read at the window's edges ([] = not measured). */
  serverPids: number[];
  /** Lockstep: node ports whose INFO counters are read at the window's edges. */
  counterPorts?: number[];
  /** Anything else to read at the window's edges (a failure gives no snapshots). */
  snapshot?: () => Promise<S>;
}

export interface ThreadRunOutcome<R, S> {
  /** The reports received, in thread order (missing threads left out). */
  reports: R[];
  /** Threads that did not report within reportBoundMs (terminated). */
  missing: number;
  reportBoundMs: number;
  threads: number;
  /** Wall-clock ms (nowAbs) of the window. */
  startAt: number;
  endAt: number;
  /** The window as measured by the main thread's timers (falls back to `seconds`). */
  windowS: number;
  /** % of one core used by this process (all threads) over the window. */
  clientCpuPct: number;
  /** CPU seconds the server processes used over the window; null when unknown. */
  serverCpuS: number | null;
  /** % of one core used by the server processes (sum) over the window; null when unknown. */
  serverCpuPct: number | null;
  counters?: CounterDeltas;
  snapshots?: { before: S; after: S };
}

/**
 * One run: one thread per job, which open their connections, then all start together; warm-up, fixed window,
 * bounded drain. Throws only when the connections cannot be opened (every thread terminated first).
 */
export async function runClientThreads<J, R, S = never>(spec: ThreadRunSpec<J, S>): Promise<ThreadRunOutcome<R, S>> {
  const { seconds } = spec;
  const threads = spec.jobs.map((job) => {
    const w = new Worker(spec.entry, { workerData: job });
    let onReady!: () => void;
    let onSetupFail!: (e: Error) => void;
    let onDone!: (r: R | undefined) => void;
    const ready = new Promise<void>((res, rej) => ((onReady = res), (onSetupFail = rej)));
    const done = new Promise<R | undefined>((res) => (onDone = res));
    // A setup failure of a thread nobody awaits yet must not become an unhandled rejection.
    ready.catch(() => {});
    w.on('message', (m: ToMain<R>) => {
      if (m.type === 'ready') onReady();
      else if (m.type === 'setup-failed') onSetupFail(new Error(m.message));
      else onDone(m.report);
    });
    w.on('error', (e) => {
      onSetupFail(e);
      onDone(undefined);
    });
    w.on('exit', () => {
      onSetupFail(new Error('client thread exited before it was ready'));
      onDone(undefined);
    });
    return { w, ready, done };
  });
  const terminateAll = () => Promise.all(threads.map((t) => t.w.terminate()));
  try {
    await Promise.race([
      Promise.all(threads.map((t) => t.ready)),
      sleep(SETUP_TIMEOUT_MS).then(() => {
        throw new Error(`client connections not open within ${SETUP_TIMEOUT_MS} ms`);
      }),
    ]);
  } catch (err) {
    await terminateAll();
    throw err;
  }

  const startAt = nowAbs() + (spec.warmupMs ?? WARMUP_MS);
  const endAt = startAt + seconds * 1000;
  for (const t of threads) t.w.postMessage({ type: 'go', startAt, endAt } satisfies GoMessage);
  let cpuStart: NodeJS.CpuUsage | undefined;
  let cpuEnd: NodeJS.CpuUsage | undefined;
  let srvStart: number | undefined;
  let srvEnd: number | undefined;
  let wallStart = 0;
  let wallEnd = 0;
  let countersBefore: Promise<NodeCounters[] | undefined> | undefined;
  let countersAfter: Promise<NodeCounters[] | undefined> | undefined;
  let snapBefore: Promise<S | undefined> | undefined;
  let snapAfter: Promise<S | undefined> | undefined;
  const snap = () => spec.snapshot!().catch(() => undefined);
  const markStart = () => {
    wallStart = nowAbs();
    cpuStart = process.cpuUsage();
    srvStart = sumCpu(spec.serverPids);
    if (spec.counterPorts) countersBefore = snapshotCounters(spec.counterPorts);
    if (spec.snapshot) snapBefore = snap();
  };
  const markEnd = () => {
    wallEnd = nowAbs();
    cpuEnd = process.cpuUsage();
    srvEnd = sumCpu(spec.serverPids);
    if (spec.counterPorts) countersAfter = snapshotCounters(spec.counterPorts);
    if (spec.snapshot) snapAfter = snap();
  };
  const startTimer = setTimeout(markStart, Math.max(0, startAt - nowAbs()));
  const endTimer = setTimeout(markEnd, Math.max(0, endAt - nowAbs()));

  const reportBoundMs = Math.max(0, endAt - nowAbs()) + spec.drainMs + CLOSE_GRACE_MS + REPORT_MARGIN_MS;
  const reports = await Promise.race([Promise.all(threads.map((t) => t.done)), sleep(reportBoundMs).then(() => undefined)]);
  clearTimeout(startTimer);
  clearTimeout(endTimer);
  // The last report can be handled in the same event-loop turn as a late end timer, before it: mark the end now
  // (a few ms after the window, not never).
  if (wallStart !== 0 && wallEnd === 0 && nowAbs() >= endAt) markEnd();
  await terminateAll();
  const got = (reports ?? []).filter((x): x is Awaited<R> => x !== undefined) as R[];

  const windowS = wallEnd > wallStart ? (wallEnd - wallStart) / 1000 : seconds;
  const cpuUs = cpuStart && cpuEnd ? cpuEnd.user - cpuStart.user + cpuEnd.system - cpuStart.system : 0;
  const serverCpuS = srvStart !== undefined && srvEnd !== undefined ? srvEnd - srvStart : null;
  const out: ThreadRunOutcome<R, S> = {
    reports: got,
    missing: threads.length - got.length,
    reportBoundMs,
    threads: threads.length,
    startAt,
    endAt,
    windowS,
    clientCpuPct: Math.round(cpuUs / 1e4 / windowS),
    serverCpuS,
    serverCpuPct: serverCpuS === null ? null : Math.round((serverCpuS * 100) / windowS),
  };
  if (countersBefore && countersAfter) {
    const [b, a] = await Promise.all([countersBefore, countersAfter]);
    if (a && b) out.counters = counterDeltas(b, a);
  }
  if (snapBefore && snapAfter) {
    const [b, a] = await Promise.all([snapBefore, snapAfter]);
    if (b !== undefined && a !== undefined) out.snapshots = { before: b, after: a };
  }
  return out;
}

/** Client ids 0..clients-1 dealt round-robin over `threads` threads: thread t gets the ids i with i % threads === t. */
export function dealClients(clients: number, threads: number): number[][] {
  return Array.from({ length: threads }, (_, t) => Array.from({ length: clients }, (_, i) => i).filter((i) => i % threads === t));
}
