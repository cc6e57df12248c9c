/**
 * Deterministic cluster simulator (TigerBeetle VOPR / etcd style) for Lockstep's Raft core.
 *
 * What it owns: one thread runs N nodes (3 or 5), each hosting one or more Raft groups (RaftCore) over a
 * simulated clock, network and disk, plus simulated clients, all driven by ONE seed: same seed, same events, same
 * trace hash. Time is in units of 1/10 tick (TICK = 10 units); every node ticks once per tick at its own phase.
 *
 * The host loop per group is the real host's (src/node/raft-host.ts): write Ready.{snapshot,entries,hardState} as
 * one batch -> send what may leave before the fsync (a leader's appends, heartbeats) and apply the committed entries
 * that were durable before the Ready (src/raft/ready-order.ts) -> fsync -> send the other messages -> apply the other
 * committed entries -> serve reads -> advance, with crash points between the steps. A crash loses unsynced batches (a random prefix of them may survive, as a torn WAL tail is cut) and all
 * memory; a restart rebuilds RaftBootState from the durable disk and the state machine from the snapshot (and,
 * in half of the restarts, by re-applying the durable committed entries itself).
 *
 * Faults (only those Lockstep claims to survive): message loss, duplication, delay and reordering; partitions
 * (random splits, isolated nodes, one-way links) and heals; crashes of a minority of nodes at any step of the
 * host loop; leadership transfers; membership changes (remove a voter, add it back as learner, promote it).
 *
 * Checked after every event (a violation stops the run with the seed, the invariant and the last events):
 *   election-safety      at most one leader per (group, term), over the whole run
 *   log-matching         entries with the same (index, term) hold the same data and the same previous term
 *   leader-completeness  a new leader's log holds every entry committed in an earlier term
 *   committed-conflict   two nodes never report different entries committed at one index
 *   state-machine-safety no two nodes apply different entries at one index; applies are contiguous
 *   commit-monotonic     a live node's commit index never decreases
 *   snapshot-divergence  two snapshots at one index hold the same bytes
 * and at the end: liveness (once faults stop and every node is up, each group elects a leader and commits a new
 * entry within a bound), convergence (all members apply the same state) and linearizability of the client history.
 */
import { RaftCore } from '../../src/raft/core.js';
import {
  ConfChangeType,
  EntryType,
  Role,
  type ConfState,
  type Entry,
  type GroupId,
  type Message,
  type NodeId,
  type RaftConfig,
  type Ready,
  type Snapshot,
} from '../../src/raft/types.js';
import { createRng, type Rng } from '../../src/util/rng.js';
import { checkLinearizable, kvModel, type KvInput, type KvOutput, type Operation } from '../support/linearizability.js';
import { DiskContractError, SimDisk } from './disk.js';
import { EventQueue } from './event-queue.js';
import { decodeCommand, encodeCommand, KvMachine, type KvCommand } from './kv-machine.js';
import { describeMsg, Trace } from './trace.js';
import { durableBeforeRound, sendsBeforeSync } from '../../src/raft/ready-order.js';

export const TICK = 10;

/** Harness bugs a test can switch on to prove the checkers can fail. Never set outside tests. */
export type InjectedBug =
  /** The host sends a Ready's messages before fsync (acknowledges before persisting). */
  | 'send-before-fsync'
  /** The host applies every committed entry twice (and its state machine has no session table to absorb it). */
  | 'apply-twice'
  /** The state machine forgets its session table: a retried INCR applies again. */
  | 'no-dedup'
  /** The disk loses synced entries on a crash (fsync lied): committed entries can vanish from a majority. */
  | 'lose-synced-entries'
  /** Reads are served from the local state machine without ReadIndex. */
  | 'stale-read';

export interface SimOptions {
  seed: number;
  /** Cluster size; default: the seed picks 3 or 5. */
  nodes?: 3 | 5;
  /** Raft groups sharing the nodes; default: the seed picks 1 (80%) or 3. */
  groups?: number;
  /** Length of the faulty phase, in ticks (default 400). */
  ticks?: number;
  /** Simulated clients (default 4). */
  clients?: number;
  /** Check linearizability of the client history at the end (default true). */
  linearizability?: boolean;
  linTimeoutMs?: number;
  /** Print every event. */
  verbose?: (line: string) => void;
  /** Harness bug to inject (tests only). */
  bug?: InjectedBug;
  /**
   * The host calls reportUnreachable(to) for every message the network drops, when it is dropped (a TCP-like
   * transport that learns of every broken link and dropped frame). Default false: messages vanish silently, as when a peer link's send queue overflows, and the core
   * must recover by itself.
   */
  reportDrops?: boolean;
}

export interface SimFailureInfo {
  invariant: string;
  detail: string;
  /** Simulated time of the failure, in ticks. */
  tick: number;
  lastEvents: string[];
}

export interface SimResult {
  seed: number;
  ok: boolean;
  failure?: SimFailureInfo;
  /** Hash of the whole event trace (bit-for-bit determinism). */
  traceHash: string;
  events: number;
  nodes: number;
  groups: number;
  stats: {
    ticks: number;
    crashes: number;
    partitions: number;
    messagesSent: number;
    messagesDropped: number;
    snapshotsInstalled: number;
    /** Committed entries applied before their Ready's fsync (durable in an earlier Ready). */
    appliedBeforeSync: number;
    compactions: number;
    leaderChanges: number;
    confChanges: number;
    clientOps: number;
    pendingOps: number;
    linResult: 'ok' | 'illegal' | 'unknown' | 'skipped';
  };
}

export class SimFailure extends Error {
  constructor(
    readonly invariant: string,
    readonly detail: string,
  ) {
    super(`${invariant}: ${detail}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------------------------

const enum Ev {
  NodeTick,
  Deliver,
  Chaos,
  Restart,
  ClientStart,
  ClientSend,
  ClientTimeout,
  ClientReply,
}

interface SimEv {
  time: number;
  seq: number;
  kind: Ev;
  /** Node id, client id... */
  a: number;
  /** Incarnation, sequence number... */
  b: number;
  /** Attempt number... */
  c: number;
  msg: Message | null;
  reply: ClientReply | null;
}

interface ClientReply {
  seq: number;
  out: KvOutput | null;
  /** Leader hint on refusal. */
  leader: NodeId;
}

// ---------------------------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------------------------

interface PendingRead {
  client: number;
  seq: number;
  key: string;
  /** Read index once known, -1 before. */
  index: number;
}

class GroupHost {
  core: RaftCore | null = null;
  sm = new KvMachine();
  applied = 0;
  /** Client writes proposed through this node: `${client}:${seq}`. */
  writeWaiters = new Set<string>();
  reads = new Map<string, PendingRead>();
  lastCommit = 0;
  /** Term in which this node was last seen as leader (to detect new leaderships). */
  leaderTerm = -1;
  constructor(
    readonly group: GroupId,
    readonly disk: SimDisk,
  ) {}
}

class SimNode {
  up = true;
  incarnation = 0;
  readCounter = 0;
  readonly groups: GroupHost[];
  constructor(
    readonly id: NodeId,
    groups: number,
  ) {
    this.groups = [];
    for (let g = 0; g < groups; g++) this.groups.push(new GroupHost(g, new SimDisk()));
  }
}

interface ClientState {
  id: number;
  seq: number;
  op: { input: KvInput; group: GroupId; call: number; seq: number; attempt: number } | null;
  hint: NodeId[];
  issued: number;
}

const textEnc = new TextEncoder();
const textDec = new TextDecoder();

function hashBytes(h: number, data: Uint8Array): number {
  for (let i = 0; i < data.length; i++) h = Math.imul(h ^ data[i]!, 0x01000193);
  return h;
}

function entryHash(e: Entry): number {
  let h = Math.imul(0x811c9dc5 ^ e.type, 0x01000193);
  h = Math.imul(h ^ e.data.byteLength, 0x01000193);
  return hashBytes(h, e.data) | 0;
}

interface LogRecord {
  term: number;
  hash: number;
  /** Term of the entry before it on the node that held it (-1 unknown). */
  prevTerm: number;
}

// ---------------------------------------------------------------------------------------------------------------
// The simulation
// ---------------------------------------------------------------------------------------------------------------

export function runSimulation(opts: SimOptions): SimResult {
  const sim = new Simulation(opts);
  return sim.run();
}

class Simulation {
  private readonly rng: Rng;
  private readonly n: number;
  private readonly groupCount: number;
  private readonly cfg: Omit<RaftConfig, 'id' | 'group'>;
  private readonly q = new EventQueue<SimEv>();
  private readonly trace: Trace;
  private readonly nodes: SimNode[] = [];
  private readonly clients: ClientState[] = [];
  private readonly history: Operation<KvInput, KvOutput>[] = [];
  private now = 0;
  private phase: 'faulty' | 'healing' | 'done' = 'faulty';
  private readonly bug: InjectedBug | undefined;

  // Fault parameters, drawn from the seed.
  private readonly lossP: number;
  private readonly dupP: number;
  private readonly delayMax: number;
  private readonly partitionP: number;
  private readonly crashPointP: number;
  private readonly crashP: number;
  private readonly transferP: number;
  private readonly confChangeP: number;
  private readonly compactEvery: number;
  /** blocked[from * (n+1) + to] = true when the link from -> to is cut. */
  private blocked: boolean[];
  private partitionUntil = 0;

  // Invariant state, per group.
  private readonly leaders: Map<number, NodeId>[] = [];
  private readonly logRecords: Map<number, LogRecord[]>[] = [];
  private readonly committedTerms: number[][] = [];
  /**
   * Per group and index: the term of the node that first saw the entry committed (the committing leader's term).
   * Leader Completeness (paper 5.4) binds leaders of LATER terms only: a candidate of an older term can still win
   * with stale votes after a newer leader committed something, and need not hold it.
   */
  private readonly commitTerms: number[][] = [];
  private readonly maxCommitted: number[] = [];
  private readonly appliedRecords: number[][] = [];
  private readonly appliedTerms: number[][] = [];
  private readonly snapshotHashes: Map<number, number>[] = [];
  private readonly probeDone: boolean[] = [];
  private probeSeq = 0;
  private probePendingTerm: number[] = [];
  private eventsSinceSweep = 0;
  /** Groups to pump once the current host loop is done (reportUnreachable calls made from inside one). */
  private pending: [SimNode, GroupHost][] = [];
  private pumping = false;

  private readonly stats: SimResult['stats'] = {
    ticks: 0,
    crashes: 0,
    partitions: 0,
    messagesSent: 0,
    messagesDropped: 0,
    snapshotsInstalled: 0,
    appliedBeforeSync: 0,
    compactions: 0,
    leaderChanges: 0,
    confChanges: 0,
    clientOps: 0,
    pendingOps: 0,
    linResult: 'skipped',
  };

  constructor(private readonly opts: SimOptions) {
    const rng = createRng(opts.seed);
    this.rng = rng;
    // Always draw, then override: an option must not shift the rest of the seed's random stream.
    const drawnNodes = rng.chance(0.5) ? 3 : 5;
    const drawnGroups = rng.chance(0.2) ? 3 : 1;
    this.n = opts.nodes ?? drawnNodes;
    this.groupCount = opts.groups ?? drawnGroups;
    this.bug = opts.bug;
    this.trace = new Trace(64, opts.verbose);
    const heartbeatTicks = rng.int(1, 3);
    const checkQuorum = rng.chance(0.6);
    this.cfg = {
      heartbeatTicks,
      electionTicksMin: heartbeatTicks * rng.int(4, 8),
      preVote: rng.chance(0.7),
      checkQuorum,
      readMode: checkQuorum && rng.chance(0.3) ? 'lease' : 'safe',
      inflightMsgsMax: rng.int(1, 9),
      appendEntriesMax: rng.int(1, 17),
      appendBytesMax: rng.int(64, 4096),
      uncommittedBytesMax: rng.chance(0.2) ? rng.int(256, 2048) : 1 << 20,
      snapshotChunkBytes: rng.int(16, 512),
    };
    this.lossP = [0, 0.01, 0.05, 0.15][rng.int(0, 4)]!;
    this.dupP = [0, 0.02, 0.1][rng.int(0, 3)]!;
    this.delayMax = [3, 10, 30][rng.int(0, 3)]!;
    this.partitionP = [0, 0.005, 0.02][rng.int(0, 3)]!;
    this.crashPointP = this.bug === 'send-before-fsync' ? 0.02 : [0, 0.0005, 0.002][rng.int(0, 3)]!;
    this.crashP = this.bug === 'send-before-fsync' ? 0.01 : [0, 0.002, 0.006][rng.int(0, 3)]!;
    this.transferP = rng.chance(0.3) ? 0.01 : 0;
    this.confChangeP = rng.chance(0.3) ? 0.02 : 0;
    this.compactEvery = rng.int(3, 40);
    this.blocked = new Array<boolean>((this.n + 1) * (this.n + 1)).fill(false);

    for (let g = 0; g < this.groupCount; g++) {
      this.leaders.push(new Map());
      this.logRecords.push(new Map());
      this.committedTerms.push([]);
      this.commitTerms.push([]);
      this.maxCommitted.push(0);
      this.appliedRecords.push([]);
      this.appliedTerms.push([]);
      this.snapshotHashes.push(new Map());
      this.probeDone.push(false);
      this.probePendingTerm.push(-1);
    }
    for (let id = 1; id <= this.n; id++) this.nodes.push(new SimNode(id, this.groupCount));
    const clientCount = opts.clients ?? 4;
    for (let c = 0; c < clientCount; c++) {
      this.clients.push({ id: c, seq: 0, op: null, hint: new Array<NodeId>(this.groupCount).fill(0), issued: 0 });
    }
  }

  // --- driver ----------------------------------------------------------------------------------------------------

  run(): SimResult {
    const ticks = this.opts.ticks ?? 400;
    try {
      for (const node of this.nodes) this.boot(node);
      this.schedule(Ev.Chaos, TICK, 0, 0);
      for (const c of this.clients) this.schedule(Ev.ClientStart, this.rng.int(1, 5 * TICK), c.id, 0);
      this.runUntil(ticks * TICK);
      this.heal();
      const livenessTicks = 60 * this.cfg.electionTicksMin + 200;
      const deadline = this.now + livenessTicks * TICK;
      while (this.now < deadline && !(this.probeDone.every(Boolean) && this.clients.every((c) => c.op === null))) {
        this.runUntil(Math.min(deadline, this.now + TICK));
      }
      if (!this.probeDone.every(Boolean)) {
        const st = this.nodes.map((nd) => (nd.up ? nd.groups.map((gh) => describeStatus(nd.id, gh.core!)).join(', ') : `n${nd.id} down`));
        throw new SimFailure('liveness', `no leader committed a new entry within ${livenessTicks} ticks of healing; ${st.join('; ')}`);
      }
      this.phase = 'done';
      this.checkConvergence();
      this.sweepLogs();
      this.checkHistory();
      return this.result();
    } catch (err) {
      return this.result(err);
    }
  }

  private result(err?: unknown): SimResult {
    this.stats.ticks = Math.floor(this.now / TICK);
    this.stats.clientOps = this.history.length;
    this.stats.pendingOps = this.history.filter((o) => o.ret === Infinity).length;
    const base: SimResult = {
      seed: this.opts.seed,
      ok: err === undefined,
      traceHash: this.trace.hash,
      events: this.trace.count,
      nodes: this.n,
      groups: this.groupCount,
      stats: this.stats,
    };
    if (err === undefined) return base;
    let invariant: string;
    let detail: string;
    if (err instanceof SimFailure) {
      invariant = err.invariant;
      detail = err.detail;
    } else if (err instanceof DiskContractError) {
      invariant = 'disk-contract';
      detail = err.message;
    } else if (err instanceof Error && (err as { code?: unknown }).code === 'RAFT_INVARIANT') {
      invariant = 'core-assertion';
      detail = err.stack ?? err.message;
    } else {
      invariant = 'exception';
      detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
    }
    return { ...base, failure: { invariant, detail, tick: this.now / TICK, lastEvents: this.trace.last(50) } };
  }

  private schedule(
    kind: Ev,
    delay: number,
    a: number,
    b: number,
    msg: Message | null = null,
    reply: ClientReply | null = null,
    c = 0,
  ): void {
    this.q.push({ time: this.now + delay, seq: 0, kind, a, b, c, msg, reply });
  }

  private runUntil(end: number): void {
    for (;;) {
      const ev = this.q.peek();
      if (ev === undefined || ev.time > end) break;
      this.q.pop();
      this.now = ev.time;
      this.handle(ev);
      if (++this.eventsSinceSweep >= 2000) {
        this.eventsSinceSweep = 0;
        this.sweepLogs();
      }
    }
    if (this.now < end) this.now = end;
  }

  private handle(ev: SimEv): void {
    switch (ev.kind) {
      case Ev.NodeTick: {
        const node = this.nodes[ev.a - 1]!;
        if (!node.up || node.incarnation !== ev.b) return;
        this.trace.mix(1, node.id);
        for (const gh of node.groups) {
          gh.core!.tick();
          this.pump(node, gh);
          if (!node.up) return;
        }
        this.schedule(Ev.NodeTick, TICK, node.id, node.incarnation);
        return;
      }
      case Ev.Deliver: {
        const m = ev.msg!;
        const node = this.nodes[m.to - 1]!;
        if (!node.up || this.blocked[m.from * (this.n + 1) + m.to]) {
          this.stats.messagesDropped++;
          if (this.opts.reportDrops) this.linkBroke(m.from, m.to, m.group);
          return;
        }
        this.trace.mix(2, m.type, m.from, m.to);
        this.trace.event(this.now, () => `deliver ${describeMsg(m)}`);
        const gh = node.groups[m.group]!;
        gh.core!.step(m);
        this.pump(node, gh);
        return;
      }
      case Ev.Chaos:
        this.chaos();
        this.schedule(Ev.Chaos, TICK, 0, 0);
        return;
      case Ev.Restart: {
        const node = this.nodes[ev.a - 1]!;
        if (node.up || node.incarnation !== ev.b) return;
        this.boot(node);
        return;
      }
      case Ev.ClientStart:
        this.clientStart(this.clients[ev.a]!);
        return;
      case Ev.ClientSend: {
        const c = this.clients[ev.a]!;
        if (c.op !== null && c.op.seq === ev.b && c.op.attempt === ev.c) this.clientSend(c);
        return;
      }
      case Ev.ClientTimeout: {
        const c = this.clients[ev.a]!;
        if (c.op !== null && c.op.seq === ev.b && c.op.attempt === ev.c) {
          const seq = c.op.seq;
          this.trace.event(this.now, () => `client ${c.id} timeout seq=${seq} attempt=${ev.c}`);
          c.op.attempt++;
          c.hint[c.op.group] = 0;
          this.clientSend(c);
        }
        return;
      }
      case Ev.ClientReply:
        this.clientReply(this.clients[ev.a]!, ev.reply!);
        return;
    }
  }

  // --- node lifecycle --------------------------------------------------------------------------------------------

  private initialConf(): ConfState {
    const voters: NodeId[] = [];
    for (let i = 1; i <= this.n; i++) voters.push(i);
    return { voters, learners: [] };
  }

  private boot(node: SimNode): void {
    node.up = true;
    node.incarnation++;
    const replay = node.incarnation > 1 && this.rng.chance(0.5);
    for (const gh of node.groups) {
      const boot = gh.disk.boot(this.initialConf());
      gh.sm = boot.snapshot !== null ? KvMachine.decode(boot.snapshot.data) : new KvMachine();
      gh.sm.dedup = this.bug !== 'no-dedup' && this.bug !== 'apply-twice';
      gh.applied = boot.applied;
      gh.writeWaiters.clear();
      gh.reads.clear();
      gh.leaderTerm = -1;
      if (replay) {
        // The host rebuilds its state machine itself from the durable committed entries.
        for (const e of boot.entries) {
          if (e.index > boot.hardState.commit) break;
          this.applyEntry(node, gh, e);
        }
        boot.applied = gh.applied;
      }
      const cfg: RaftConfig = { ...this.cfg, id: node.id, group: gh.group };
      gh.core = new RaftCore(cfg, boot, createRng(this.rng.int(0, 0x7fffffff)));
      gh.lastCommit = gh.core.commit;
    }
    this.trace.event(this.now, `boot n${node.id} incarnation ${node.incarnation}${replay ? ' (host replays log)' : ''}`);
    this.trace.mix(3, node.id, node.incarnation);
    for (const gh of node.groups) {
      this.pump(node, gh);
      if (!node.up) return;
    }
    this.schedule(Ev.NodeTick, this.rng.int(1, TICK + 1), node.id, node.incarnation);
  }

  private crash(node: SimNode, where: string): void {
    if (!node.up) return;
    node.up = false;
    this.stats.crashes++;
    for (const gh of node.groups) {
      gh.disk.crash(this.rng, this.bug !== 'send-before-fsync');
      if (this.bug === 'lose-synced-entries') gh.disk.loseDurableEntries();
      gh.core = null;
      gh.writeWaiters.clear();
      gh.reads.clear();
    }
    this.trace.event(this.now, `CRASH n${node.id} ${where}`);
    this.trace.mix(4, node.id);
    if (this.phase === 'faulty') this.schedule(Ev.Restart, this.rng.int(5, 150) * TICK, node.id, node.incarnation);
  }

  private downCount(): number {
    let k = 0;
    for (const nd of this.nodes) if (!nd.up) k++;
    return k;
  }

  /** A crash is allowed only while the nodes down stay a minority of the smallest configuration in use. */
  private mayCrash(): boolean {
    if (this.phase !== 'faulty') return false;
    let voters = this.n;
    for (const nd of this.nodes) {
      if (!nd.up) continue;
      for (const gh of nd.groups) voters = Math.min(voters, gh.core!.confState().voters.length);
    }
    return this.downCount() + 1 <= Math.floor((voters - 1) / 2);
  }

  private maybeCrashAt(node: SimNode, where: string): boolean {
    if (this.crashPointP > 0 && this.rng.chance(this.crashPointP) && this.mayCrash()) {
      this.crash(node, where);
      return true;
    }
    return false;
  }

  // --- the host loop ---------------------------------------------------------------------------------------------

  private pump(node: SimNode, gh: GroupHost): void {
    const outer = !this.pumping;
    this.pumping = true;
    try {
      this.pumpLoop(node, gh);
    } finally {
      if (outer) this.pumping = false;
    }
    if (outer) this.drainPending();
  }

  private pumpLoop(node: SimNode, gh: GroupHost): void {
    for (let guard = 0; guard < 1000; guard++) {
      const core = gh.core!;
      if (!core.hasReady()) {
        this.checkNode(node, gh);
        return;
      }
      const rd = core.ready();
      this.trace.mix(5, node.id, rd.entries.length, rd.committed.length);
      this.trace.event(this.now, () => describeReady(node.id, gh.group, rd));
      // 1. Write (unsynced).
      const durableTerm = gh.disk.hardState.term;
      gh.disk.write({ snapshot: rd.snapshot, entries: rd.entries, hardState: rd.hardState });
      this.checkAppended(node, gh, rd.entries);
      // 1b. What the real host sends and applies before the fsync (src/raft/ready-order.ts).
      let late = rd.messages;
      if (this.bug === 'send-before-fsync') {
        this.send(node, gh, rd.messages);
        late = [];
      } else {
        const early = rd.messages.filter((m) => sendsBeforeSync(m, durableTerm));
        if (early.length > 0) {
          late = rd.messages.filter((m) => !sendsBeforeSync(m, durableTerm));
          this.send(node, gh, early);
        }
      }
      if (this.maybeCrashAt(node, 'after early send, before early apply')) return;
      const durable = durableBeforeRound(rd);
      let early = 0;
      for (; early < rd.committed.length && rd.committed[early]!.index <= durable; early++) {
        const e = rd.committed[early]!;
        this.applyEntry(node, gh, e);
        if (this.bug === 'apply-twice' && e.type === EntryType.Normal) this.applyEntry(node, gh, e, true);
        this.stats.appliedBeforeSync++;
      }
      if (this.maybeCrashAt(node, 'after write, before fsync')) return;
      // 2. fsync.
      gh.disk.fsync();
      if (this.maybeCrashAt(node, 'after fsync, before send')) return;
      // 3. Send the rest.
      this.send(node, gh, late);
      if (this.maybeCrashAt(node, 'after send, before apply')) return;
      // 4. Apply the rest.
      if (rd.snapshot !== null) {
        const s = rd.snapshot;
        if (s.meta.index > gh.applied) {
          gh.sm = KvMachine.decode(s.data);
          gh.sm.dedup = this.bug !== 'no-dedup' && this.bug !== 'apply-twice';
          gh.applied = s.meta.index;
          this.stats.snapshotsInstalled++;
          this.trace.event(this.now, `n${node.id} g${gh.group} installs snapshot ${s.meta.index}/${s.meta.term}`);
        }
      }
      for (let i = early; i < rd.committed.length; i++) {
        const e = rd.committed[i]!;
        if (e.index <= gh.applied && rd.snapshot !== null) continue; // covered by the snapshot just installed
        this.applyEntry(node, gh, e);
        if (this.bug === 'apply-twice' && e.type === EntryType.Normal) this.applyEntry(node, gh, e, true);
      }
      for (const rs of rd.readStates) {
        const key = textDec.decode(rs.ctx);
        const pr = gh.reads.get(key);
        if (pr === undefined) continue;
        if (rs.index === 0) {
          gh.reads.delete(key);
          this.reply(pr.client, { seq: pr.seq, out: null, leader: 0 });
        } else {
          pr.index = rs.index;
        }
      }
      this.serveReads(gh);
      if (this.maybeCrashAt(node, 'after apply, before advance')) return;
      // 5. Advance.
      core.advance(rd);
      this.maybeCompact(node, gh);
    }
    throw new SimFailure('ready-loop', `n${node.id} g${gh.group}: hasReady() still true after 1000 rounds`);
  }

  private send(node: SimNode, gh: GroupHost, msgs: Message[]): void {
    for (const m of msgs) {
      this.stats.messagesSent++;
      if (m.from !== node.id || m.group !== gh.group) {
        throw new SimFailure('message-header', `n${node.id} g${gh.group} emitted ${describeMsg(m)}`);
      }
      if (m.to < 1 || m.to > this.n) continue;
      if (this.blocked[m.from * (this.n + 1) + m.to]) {
        this.stats.messagesDropped++;
        if (this.opts.reportDrops) this.linkBroke(m.from, m.to, m.group);
        else if (this.rng.chance(0.05)) gh.core!.reportUnreachable(m.to);
        continue;
      }
      if (this.rng.chance(this.lossP)) {
        this.stats.messagesDropped++;
        if (this.opts.reportDrops) this.linkBroke(m.from, m.to, m.group);
        continue;
      }
      const copies = this.rng.chance(this.dupP) ? 2 : 1;
      for (let k = 0; k < copies; k++) {
        // A long delay now and then reorders messages on one link.
        const delay = this.rng.chance(0.05) ? this.rng.int(1, this.delayMax * 5 + 1) : this.rng.int(1, this.delayMax + 1);
        this.schedule(Ev.Deliver, delay, 0, 0, cloneMessage(m));
      }
    }
  }

  /** reportDrops mode: a dropped frame breaks the link, and both ends' transports tell their cores. */
  private linkBroke(a: NodeId, b: NodeId, g: GroupId): void {
    for (const [x, y] of [
      [a, b],
      [b, a],
    ] as const) {
      const node = this.nodes[x - 1]!;
      if (!node.up) continue;
      const gh = node.groups[g]!;
      gh.core!.reportUnreachable(y);
      this.pending.push([node, gh]);
    }
    if (!this.pumping) this.drainPending();
  }

  private drainPending(): void {
    while (this.pending.length > 0) {
      const [node, gh] = this.pending.shift()!;
      if (node.up) this.pump(node, gh);
    }
  }

  private applyEntry(node: SimNode, gh: GroupHost, e: Entry, again = false): void {
    if (!again) {
      if (e.index !== gh.applied + 1) {
        throw new SimFailure('state-machine-safety', `n${node.id} g${gh.group} applies ${e.index} after ${gh.applied}`);
      }
      const h = entryHash(e);
      const recs = this.appliedRecords[gh.group]!;
      const prev = recs[e.index];
      if (prev === undefined) {
        recs[e.index] = h;
        this.appliedTerms[gh.group]![e.index] = e.term;
      } else if (prev !== h || this.appliedTerms[gh.group]![e.index] !== e.term) {
        throw new SimFailure(
          'state-machine-safety',
          `n${node.id} g${gh.group} applies ${e.index}/${e.term} but another node applied ${e.index}/${this.appliedTerms[gh.group]![e.index]} with other data`,
        );
      }
      gh.applied = e.index;
    }
    if (e.type !== EntryType.Normal) return;
    const cmd = decodeCommand(e.data);
    if (cmd.op === 'probe') {
      this.probeDone[gh.group] = this.phase !== 'faulty' || this.probeDone[gh.group]!;
      return;
    }
    const out = gh.sm.apply(cmd);
    const wkey = `${cmd.c}:${cmd.s}`;
    if (out !== null && gh.writeWaiters.has(wkey)) {
      gh.writeWaiters.delete(wkey);
      this.reply(cmd.c, { seq: cmd.s, out, leader: 0 });
    }
  }

  private serveReads(gh: GroupHost): void {
    if (gh.reads.size === 0) return;
    for (const [key, pr] of gh.reads) {
      if (pr.index >= 0 && gh.applied >= pr.index) {
        gh.reads.delete(key);
        this.reply(pr.client, { seq: pr.seq, out: { value: gh.sm.get(pr.key) }, leader: 0 });
      }
    }
  }

  private maybeCompact(node: SimNode, gh: GroupHost): void {
    const core = gh.core!;
    const snapIndex = core.firstIndex - 1;
    if (gh.applied - snapIndex < this.compactEvery) return;
    const index = gh.applied;
    const term = core.termAt(index);
    if (term < 0) throw new SimFailure('log', `n${node.id} g${gh.group}: no term for applied index ${index}`);
    const snap: Snapshot = { meta: { index, term, conf: core.confAt(index) }, data: gh.sm.encode() };
    const h = hashBytes(0x811c9dc5, snap.data) | 0;
    const seen = this.snapshotHashes[gh.group]!.get(index);
    if (seen !== undefined && seen !== h) {
      throw new SimFailure('snapshot-divergence', `n${node.id} g${gh.group}: state at ${index} differs from another node's`);
    }
    this.snapshotHashes[gh.group]!.set(index, h);
    gh.disk.saveSnapshot(snap);
    core.compact(snap);
    this.stats.compactions++;
    this.trace.event(this.now, `n${node.id} g${gh.group} compacts at ${index}/${term}`);
  }

  // --- invariants ------------------------------------------------------------------------------------------------

  private checkAppended(node: SimNode, gh: GroupHost, ents: Entry[]): void {
    if (ents.length === 0) return;
    const core = gh.core!;
    let prevTerm = core.termAt(ents[0]!.index - 1);
    for (const e of ents) {
      this.recordLogEntry(node, gh.group, e, prevTerm);
      prevTerm = e.term;
    }
  }

  private recordLogEntry(node: SimNode, group: GroupId, e: Entry, prevTerm: number): void {
    const recs = this.logRecords[group]!;
    const h = entryHash(e);
    let list = recs.get(e.index);
    if (list === undefined) {
      list = [];
      recs.set(e.index, list);
    }
    for (const r of list) {
      if (r.term !== e.term) continue;
      if (r.hash !== h) {
        throw new SimFailure('log-matching', `n${node.id} g${group}: entry ${e.index}/${e.term} holds different data than on another node`);
      }
      if (r.prevTerm >= 0 && prevTerm >= 0 && r.prevTerm !== prevTerm) {
        throw new SimFailure(
          'log-matching',
          `n${node.id} g${group}: entry ${e.index}/${e.term} follows term ${prevTerm} here but term ${r.prevTerm} on another node`,
        );
      }
      if (r.prevTerm < 0) r.prevTerm = prevTerm;
      return;
    }
    list.push({ term: e.term, hash: h, prevTerm });
  }

  /** Log Matching over every live in-memory log (via entries()). */
  private sweepLogs(): void {
    for (const node of this.nodes) {
      if (!node.up) continue;
      for (const gh of node.groups) {
        const core = gh.core!;
        const first = core.firstIndex;
        const last = core.lastIndex;
        if (last < first) continue;
        const ents = core.entries(first, last + 1);
        let prevTerm = core.termAt(first - 1);
        for (let i = 0; i < ents.length; i++) {
          const e = ents[i]!;
          if (e.index !== first + i) throw new SimFailure('log', `n${node.id} g${gh.group}: entries() not contiguous at ${e.index}`);
          this.recordLogEntry(node, gh.group, e, prevTerm);
          prevTerm = e.term;
        }
      }
    }
  }

  private checkNode(node: SimNode, gh: GroupHost): void {
    const core = gh.core!;
    const g = gh.group;
    const term = core.term;
    if (core.role === Role.Leader) {
      const leaders = this.leaders[g]!;
      const other = leaders.get(term);
      if (other === undefined) {
        leaders.set(term, node.id);
        this.stats.leaderChanges++;
        this.trace.event(this.now, `n${node.id} g${g} becomes leader of term ${term}`);
      } else if (other !== node.id) {
        throw new SimFailure('election-safety', `g${g}: nodes ${other} and ${node.id} are both leaders of term ${term}`);
      }
      if (gh.leaderTerm !== term) {
        gh.leaderTerm = term;
        this.checkLeaderCompleteness(node, gh);
      }
    }
    const commit = core.commit;
    if (commit < gh.lastCommit) {
      throw new SimFailure('commit-monotonic', `n${node.id} g${g}: commit went from ${gh.lastCommit} down to ${commit}`);
    }
    if (commit > gh.lastCommit) {
      const terms = this.committedTerms[g]!;
      const from = Math.max(gh.lastCommit + 1, core.firstIndex);
      for (let i = from; i <= commit; i++) {
        const t = core.termAt(i);
        if (t < 0) throw new SimFailure('log', `n${node.id} g${g}: committed entry ${i} is not in its log`);
        const known = terms[i];
        if (known === undefined) {
          terms[i] = t;
          this.commitTerms[g]![i] = core.term;
        } else if (known !== t) {
          throw new SimFailure('committed-conflict', `g${g}: n${node.id} committed ${i}/${t}, another node committed ${i}/${known}`);
        }
      }
      if (commit > this.maxCommitted[g]!) this.maxCommitted[g] = commit;
      gh.lastCommit = commit;
    }
  }

  private checkLeaderCompleteness(node: SimNode, gh: GroupHost): void {
    const core = gh.core!;
    const g = gh.group;
    const maxC = this.maxCommitted[g]!;
    const terms = this.committedTerms[g]!;
    const commitTerms = this.commitTerms[g]!;
    for (let i = Math.max(1, core.firstIndex); i <= maxC; i++) {
      const known = terms[i];
      if (known === undefined || commitTerms[i]! >= core.term) continue;
      const t = core.termAt(i); // -1 when beyond this leader's log: a missing committed entry
      if (t !== known) {
        throw new SimFailure(
          'leader-completeness',
          `g${g}: n${node.id} leads term ${core.term} but holds ${i}/${t}, committed was ${i}/${known}`,
        );
      }
    }
  }

  // --- faults ----------------------------------------------------------------------------------------------------

  private chaos(): void {
    const rng = this.rng;
    if (this.phase !== 'faulty') {
      this.probe();
      return;
    }
    // Partitions.
    if (this.partitionUntil > 0 && this.now >= this.partitionUntil) {
      this.blocked.fill(false);
      this.partitionUntil = 0;
      this.trace.event(this.now, 'network heals');
    } else if (this.partitionUntil === 0 && rng.chance(this.partitionP)) {
      this.partition();
    }
    // Crashes between events.
    if (this.crashP > 0 && rng.chance(this.crashP) && this.mayCrash()) {
      const up = this.nodes.filter((nd) => nd.up);
      if (up.length > 0) this.crash(up[rng.int(0, up.length)]!, 'between events');
    }
    // Leadership transfers and membership changes.
    for (let g = 0; g < this.groupCount; g++) {
      const leader = this.leaderOf(g);
      if (leader === null) continue;
      const core = leader.groups[g]!.core!;
      if (this.transferP > 0 && rng.chance(this.transferP)) {
        const voters = core.confState().voters.filter((v) => v !== leader.id);
        if (voters.length > 0) {
          const to = voters[rng.int(0, voters.length)]!;
          this.trace.event(this.now, `g${g} transfer leadership n${leader.id} -> n${to}`);
          core.transferLeader(to);
          this.pump(leader, leader.groups[g]!);
          if (!leader.up) continue;
        }
      }
      if (this.confChangeP > 0 && rng.chance(this.confChangeP)) this.changeMembership(leader, g);
    }
  }

  private partition(): void {
    const rng = this.rng;
    const n = this.n;
    const kind = rng.int(0, 3);
    this.blocked.fill(false);
    if (kind === 0) {
      // A random split into two sides.
      const side: boolean[] = [];
      let a = 0;
      for (let i = 1; i <= n; i++) {
        side[i] = rng.chance(0.5);
        if (side[i]) a++;
      }
      if (a === 0 || a === n) side[rng.int(1, n + 1)] = !side[1];
      for (let i = 1; i <= n; i++) for (let j = 1; j <= n; j++) if (side[i] !== side[j]) this.blocked[i * (n + 1) + j] = true;
      this.trace.event(this.now, `partition: {${[...Array(n).keys()].map((i) => i + 1).filter((i) => side[i]).join(',')}} | rest`);
    } else if (kind === 1) {
      const x = rng.int(1, n + 1);
      for (let j = 1; j <= n; j++) {
        this.blocked[x * (n + 1) + j] = true;
        this.blocked[j * (n + 1) + x] = true;
      }
      this.trace.event(this.now, `partition: n${x} isolated`);
    } else {
      // One-way links: each directed link cut with probability 1/3.
      const cut: string[] = [];
      for (let i = 1; i <= n; i++) {
        for (let j = 1; j <= n; j++) {
          if (i !== j && rng.chance(1 / 3)) {
            this.blocked[i * (n + 1) + j] = true;
            cut.push(`${i}->${j}`);
          }
        }
      }
      this.trace.event(this.now, `partition: one-way cuts ${cut.join(' ')}`);
    }
    this.stats.partitions++;
    this.partitionUntil = this.now + rng.int(10, 200) * TICK;
    this.trace.mix(6, kind);
  }

  private changeMembership(leader: SimNode, g: GroupId, mayRemove = true): void {
    const rng = this.rng;
    const gh = leader.groups[g]!;
    const core = gh.core!;
    const conf = core.confState();
    let change: { type: ConfChangeType; node: NodeId } | null = null;
    const missing = this.nodes.map((nd) => nd.id).filter((id) => !conf.voters.includes(id) && !conf.learners.includes(id));
    if (missing.length > 0) {
      change = { type: ConfChangeType.AddLearner, node: missing[0]! };
    } else if (conf.learners.length > 0) {
      const l = conf.learners[0]!;
      const pr = core.status().progress[l];
      if (pr !== undefined && pr.match >= core.lastIndex - 3) change = { type: ConfChangeType.PromoteLearner, node: l };
    } else if (mayRemove && conf.voters.length >= 3 && rng.chance(0.5)) {
      const candidates = conf.voters.filter((v) => v !== leader.id);
      change = { type: ConfChangeType.RemoveNode, node: candidates[rng.int(0, candidates.length)]! };
    }
    if (change === null) return;
    const res = core.proposeConfChange(change);
    this.trace.event(this.now, `g${g} n${leader.id} proposes ${['add-learner', 'promote', 'remove'][change.type]} n${change.node}: ${res.ok ? `index ${res.index}` : res.code}`);
    if (res.ok) this.stats.confChanges++;
    this.pump(leader, gh);
  }

  private leaderOf(g: GroupId): SimNode | null {
    let best: SimNode | null = null;
    let bestTerm = -1;
    for (const nd of this.nodes) {
      if (!nd.up) continue;
      const core = nd.groups[g]!.core!;
      if (core.role === Role.Leader && core.term > bestTerm) {
        best = nd;
        bestTerm = core.term;
      }
    }
    return best;
  }

  /** End of the faulty phase: heal the network, restart every node, stop injecting faults. */
  private heal(): void {
    this.phase = 'healing';
    this.blocked.fill(false);
    this.partitionUntil = 0;
    this.trace.event(this.now, 'faults stop: network heals, every node restarts');
    for (const nd of this.nodes) if (!nd.up) this.boot(nd);
  }

  /**
   * Healing phase: ask the current leader of each group to commit a fresh entry, and to take back any node a
   * membership change left out (a removed node that keeps campaigning would otherwise disrupt the group forever).
   */
  private probe(): void {
    for (let g = 0; g < this.groupCount; g++) {
      if (this.confChangeP > 0) {
        const leader = this.leaderOf(g);
        if (leader !== null && this.rng.chance(0.2)) this.changeMembership(leader, g, false);
      }
      if (this.probeDone[g]) continue;
      const leader = this.leaderOf(g);
      if (leader === null) continue;
      const gh = leader.groups[g]!;
      const core = gh.core!;
      if (this.probePendingTerm[g] === core.term && this.rng.chance(0.9)) continue;
      const res = core.propose(encodeCommand({ c: -1, s: ++this.probeSeq, op: 'probe', k: '' }));
      if (res.ok) this.probePendingTerm[g] = core.term;
      this.pump(leader, gh);
    }
  }

  private checkConvergence(): void {
    // Let every member catch up, then compare state machines.
    const deadline = this.now + (40 * this.cfg.electionTicksMin + 200) * TICK;
    for (;;) {
      let target = -1;
      let behind = false;
      const lagging: string[] = [];
      for (let g = 0; g < this.groupCount; g++) {
        const leader = this.leaderOf(g);
        if (leader === null) {
          behind = true;
          lagging.push(`g${g}: no leader`);
          continue;
        }
        const lcore = leader.groups[g]!.core!;
        target = lcore.commit;
        const conf = lcore.confState();
        for (const id of [...conf.voters, ...conf.learners]) {
          const gh = this.nodes[id - 1]!.groups[g]!;
          if (gh.applied < target || gh.core!.commit < target) {
            behind = true;
            lagging.push(`g${g} n${id} applied ${gh.applied} < ${target}`);
          }
        }
      }
      if (!behind) break;
      if (this.now >= deadline) {
        const st = this.nodes.map((nd) => (nd.up ? nd.groups.map((gh) => describeStatus(nd.id, gh.core!)).join(', ') : `n${nd.id} down`));
        throw new SimFailure('convergence', `members did not catch up: ${lagging.join('; ')}; ${st.join('; ')}`);
      }
      this.runUntil(this.now + TICK);
    }
    for (let g = 0; g < this.groupCount; g++) {
      const leader = this.leaderOf(g)!;
      const conf = leader.groups[g]!.core!.confState();
      const want = leader.groups[g]!.sm.encode();
      const wantH = hashBytes(0x811c9dc5, want);
      for (const id of [...conf.voters, ...conf.learners]) {
        const gh = this.nodes[id - 1]!.groups[g]!;
        if (gh.applied !== leader.groups[g]!.applied) continue;
        if (hashBytes(0x811c9dc5, gh.sm.encode()) !== wantH) {
          throw new SimFailure('convergence', `g${g}: n${id} and leader n${leader.id} hold different state at ${gh.applied}`);
        }
      }
    }
  }

  private checkHistory(): void {
    if (this.opts.linearizability === false) return;
    for (const c of this.clients) {
      if (c.op !== null) {
        this.history.push({ clientId: c.id, input: c.op.input, output: {}, call: c.op.call, ret: Infinity });
      }
    }
    const res = checkLinearizable(kvModel(), this.history, { timeoutMs: this.opts.linTimeoutMs ?? 10_000, witness: false });
    this.stats.linResult = res.result;
    if (res.result === 'illegal') throw new SimFailure('linearizability', res.explanation ?? 'not linearizable');
  }

  // --- clients ---------------------------------------------------------------------------------------------------

  private clientStart(c: ClientState): void {
    if (c.op !== null || this.phase !== 'faulty') return;
    const rng = this.rng;
    const group = rng.int(0, this.groupCount);
    const key = `g${group}k${rng.int(0, 3)}`;
    const p = rng.next();
    const input: KvInput =
      p < 0.4 ? { kind: 'get', key } : p < 0.7 ? { kind: 'set', key, value: String(rng.int(0, 1000)) } : { kind: 'incr', key };
    c.seq++;
    c.issued++;
    c.op = { input, group, call: this.now, seq: c.seq, attempt: 0 };
    this.trace.event(this.now, () => `client ${c.id} calls seq=${c.seq} ${JSON.stringify(input)}`);
    this.clientSend(c);
  }

  private clientSend(c: ClientState): void {
    const op = c.op!;
    const rng = this.rng;
    const hint = c.hint[op.group]!;
    const target = hint !== 0 && rng.chance(0.8) ? hint : rng.int(1, this.n + 1);
    const attempt = op.attempt;
    this.schedule(Ev.ClientTimeout, rng.int(20, 60) * TICK, c.id, op.seq, null, null, attempt);
    const node = this.nodes[target - 1]!;
    this.trace.mix(7, c.id, op.seq, target);
    if (!node.up) return; // no answer; the timeout retries
    const gh = node.groups[op.group]!;
    const core = gh.core!;
    const input = op.input;
    if (input.kind === 'get') {
      if (this.bug === 'stale-read') {
        this.reply(c.id, { seq: op.seq, out: { value: gh.sm.get(input.key) }, leader: 0 });
        return;
      }
      const ctxKey = `${node.id}.${node.incarnation}.${++node.readCounter}`;
      const ok = core.readIndex(textEnc.encode(ctxKey));
      if (!ok) {
        this.reply(c.id, { seq: op.seq, out: null, leader: core.leader });
        return;
      }
      gh.reads.set(ctxKey, { client: c.id, seq: op.seq, key: input.key, index: -1 });
    } else {
      const cmd: KvCommand =
        input.kind === 'set' ? { c: c.id, s: op.seq, op: 'set', k: input.key, v: input.value } : { c: c.id, s: op.seq, op: 'incr', k: input.key };
      const res = core.propose(encodeCommand(cmd));
      if (!res.ok) {
        this.reply(c.id, { seq: op.seq, out: null, leader: res.code === 'NOTLEADER' ? res.leader : 0 });
        return;
      }
      gh.writeWaiters.add(`${c.id}:${op.seq}`);
    }
    this.pump(node, gh);
  }

  private reply(client: number, r: ClientReply): void {
    if (client < 0) return;
    this.schedule(Ev.ClientReply, this.rng.int(1, 6), client, 0, null, r);
  }

  private clientReply(c: ClientState, r: ClientReply): void {
    const op = c.op;
    if (op === null || op.seq !== r.seq) return;
    if (r.out === null) {
      // Refused (not leader, no leader, read refused): retry soon, at the hinted leader if any.
      c.hint[op.group] = r.leader;
      op.attempt++;
      this.schedule(Ev.ClientSend, this.rng.int(1, 3) * TICK, c.id, op.seq, null, null, op.attempt);
      return;
    }
    this.history.push({ clientId: c.id, input: op.input, output: r.out, call: op.call, ret: this.now });
    this.trace.event(this.now, () => `client ${c.id} returns seq=${op.seq} ${JSON.stringify(r.out)}`);
    this.trace.mix(8, c.id, op.seq);
    c.op = null;
    if (this.phase === 'faulty') this.schedule(Ev.ClientStart, this.rng.int(1, 4) * TICK, c.id, 0);
  }
}

function describeStatus(id: NodeId, core: RaftCore): string {
  const st = core.status();
  let out = `n${id} g${st.group} ${['follower', 'precandidate', 'candidate', 'leader'][st.role]} t${st.term} lead=${st.leader} commit=${st.commit} applied=${st.applied} log=[${st.firstIndex}, ${st.lastIndex}] voters=${st.conf.voters.join(',')}`;
  if (st.conf.learners.length) out += ` learners=${st.conf.learners.join(',')}`;
  if (st.role === Role.Leader) {
    out += ' progress={' + Object.entries(st.progress).map(([k, p]) => `${k}:${p.state} m${p.match} n${p.next}`).join(' ') + '}';
  }
  return out;
}

function cloneMessage(m: Message): Message {
  const c = { ...m } as Message;
  if ('entries' in c) c.entries = c.entries.map((e) => ({ term: e.term, index: e.index, type: e.type, data: e.data }));
  return c;
}

function describeReady(id: NodeId, g: GroupId, rd: Ready): string {
  const parts = [`n${id} g${g} ready`];
  if (rd.softState) parts.push(`soft=${['F', 'PC', 'C', 'L'][rd.softState.role]}/lead${rd.softState.leader}`);
  if (rd.hardState) parts.push(`hard=t${rd.hardState.term}/v${rd.hardState.vote}/c${rd.hardState.commit}`);
  if (rd.snapshot) parts.push(`snap=${rd.snapshot.meta.index}/${rd.snapshot.meta.term}`);
  if (rd.entries.length) parts.push(`persist=${rd.entries[0]!.index}..${rd.entries[rd.entries.length - 1]!.index}`);
  if (rd.committed.length) parts.push(`apply=${rd.committed[0]!.index}..${rd.committed[rd.committed.length - 1]!.index}`);
  if (rd.messages.length) parts.push(`send=${rd.messages.length}`);
  if (rd.readStates.length) parts.push(`reads=${rd.readStates.map((r) => r.index).join(',')}`);
  return parts.join(' ');
}

/** Formats a failed result for people: seed, invariant, detail, last events, and how to replay. */
export function formatFailure(r: SimResult): string {
  if (r.failure === undefined) return `seed ${r.seed}: ok`;
  const f = r.failure;
  return [
    `SEED ${r.seed} FAILED: ${f.invariant} at tick ${f.tick.toFixed(1)} (${r.nodes} nodes, ${r.groups} group(s))`,
    f.detail,
    `last ${f.lastEvents.length} events:`,
    ...f.lastEvents.map((l) => `  ${l}`),
    `replay: node dist/test/sim/cli.js --seed ${r.seed}${r.nodes ? ` --nodes ${r.nodes}` : ''} --verbose`,
  ].join('\n');
}
