/**
 * A tiny runner for Raft scenario files (etcd-io/raft's interaction-test style).
 *
 * A file holds comments (`#`), and blocks:
 *
 *   command arg arg key=value
 *   ----
 *   expected output (no blank lines)
 *
 * Blocks are separated by a blank line. The runner drives an in-memory cluster of RaftCores (memory storage, a
 * message queue as the network, a trivial state machine that records applied payloads) and compares each
 * command's output with the expected text. With UPDATE_SCENARIOS=1 the test rewrites the expected parts.
 *
 * After every command the harness checks cluster invariants: at most one leader per term, and every node applies
 * the same entry at each index (State Machine Safety). A violation fails the scenario loudly.
 *
 * Commands:
 *   add-nodes N [voters=(1,2,3)] [learners=(4)] [prevote=true] [checkquorum=true] [readmode=lease]
 *             [inflight=N] [max-entries=N] [max-bytes=N] [max-uncommitted=N] [chunk=N] [election=N] [heartbeat=N]
 *   campaign ID | tick ID|all [N] | advance-time N (tick all + stabilize, N times) | process-ready ID... | deliver [FROM->TO] | drop FROM->TO|*->TO|FROM->*
 *   stabilize [quiet] [ID...] | partition 1 | 2 3 | heal | propose ID DATA [count=N] | conf-change ID
 *   add-learner|promote|remove NODE | compact ID INDEX | transfer-leader ID TO | read-index ID CTX
 *   report-unreachable ID PEER | restart ID | status ID | log ID | raft-state | queue
 *   hold FROM->TO [count=N] (takes queued messages aside: delayed) | release [FROM->TO] [count=N] (puts held
 *   messages back at the end of the queue: reordered) | duplicate FROM->TO [count=N] (queues a second copy)
 */
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RaftCore } from '../../src/raft/core.js';
import { describeConf, describeEntries, describeMessage, describeReady, ROLE_NAMES } from '../../src/raft/describe.js';
import {
  ConfChangeType,
  EntryType,
  Role,
  type ConfState,
  type Entry,
  type HardState,
  type Message,
  type NodeId,
  type RaftConfig,
  type Ready,
  type Snapshot,
} from '../../src/raft/types.js';
import { createRng } from '../../src/util/rng.js';

/** The repository root: walk up from this (compiled) file until package.json. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 10; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('scenario runner: cannot find the repository root (package.json)');
}

export function scenarioDir(): string {
  return join(repoRoot(), 'test', 'raft', 'scenarios');
}

export function listScenarios(): string[] {
  return readdirSync(scenarioDir())
    .filter((f) => f.endsWith('.txt'))
    .sort();
}

// ---------------------------------------------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------------------------------------------

export type Part = { kind: 'text'; line: string } | { kind: 'block'; command: string; expected: string; line: number };

export function parseScenario(text: string): Part[] {
  const lines = text.split('\n');
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const parts: Part[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i] as string;
    if (line.trim() === '' || line.startsWith('#')) {
      parts.push({ kind: 'text', line });
      i++;
      continue;
    }
    const start = i + 1;
    if (lines[i + 1] !== '----') throw new Error(`line ${start}: command "${line}" is not followed by ----`);
    i += 2;
    const out: string[] = [];
    while (i < lines.length && (lines[i] as string).trim() !== '') out.push(lines[i++] as string);
    parts.push({ kind: 'block', command: line, expected: out.join('\n'), line: start });
  }
  return parts;
}

export function renderScenario(parts: Part[], outputs: string[]): string {
  let k = 0;
  const out: string[] = [];
  for (const p of parts) {
    if (p.kind === 'text') out.push(p.line);
    else {
      out.push(p.command, '----', outputs[k++] ?? '');
    }
  }
  return out.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------------------------

interface Storage {
  hs: HardState;
  snap: Snapshot | null;
  entries: Entry[];
}

class TestNode {
  core!: RaftCore;
  storage: Storage = { hs: { term: 0, vote: 0, commit: 0 }, snap: null, entries: [] };
  /** Applied payloads (normal entries) as [index, text]. */
  sm: Array<[number, string]> = [];
  appliedIndex = 0;
  restarts = 0;
  constructor(
    readonly id: NodeId,
    readonly config: RaftConfig,
    readonly initialConf: ConfState,
  ) {}

  boot(): void {
    const snapIndex = this.storage.snap?.meta.index ?? 0;
    this.sm = [];
    if (this.storage.snap) {
      const text = new TextDecoder().decode(this.storage.snap.data);
      this.sm = text === '' ? [] : text.split(',').map((p) => {
        const [i, v] = p.split(':');
        return [Number(i), v ?? ''] as [number, string];
      });
    }
    this.appliedIndex = snapIndex;
    this.core = new RaftCore(
      this.config,
      {
        hardState: { ...this.storage.hs },
        snapshot: this.storage.snap,
        entries: this.storage.entries.slice(),
        initialConf: this.initialConf,
        applied: snapIndex,
      },
      createRng(this.id * 7919 + this.restarts),
    );
  }
}

const enc = new TextEncoder();

export class Harness {
  nodes = new Map<NodeId, TestNode>();
  queue: Message[] = [];
  /** Messages taken aside by `hold`, queued again (after everything else) by `release`. */
  held: Message[] = [];
  partitionOf: Map<NodeId, number> | null = null;
  /** term -> leader, for Election Safety. */
  leaders = new Map<number, NodeId>();
  /** index -> "term/index payload" of applied entries, for State Machine Safety. */
  appliedAt = new Map<number, string>();

  node(id: NodeId): TestNode {
    const n = this.nodes.get(id);
    if (n === undefined) throw new Error(`no node ${id}`);
    return n;
  }

  private ids(args: string[]): NodeId[] {
    if (args.length === 0 || args[0] === 'all') return [...this.nodes.keys()];
    return args.map(Number);
  }

  run(command: string): string {
    const [cmd, ...rest] = command.trim().split(/\s+/);
    const kv = new Map<string, string>();
    const args: string[] = [];
    for (const a of rest) {
      const eq = a.indexOf('=');
      if (eq > 0) kv.set(a.slice(0, eq), a.slice(eq + 1));
      else args.push(a);
    }
    let out: string;
    try {
      out = this.exec(cmd ?? '', args, kv);
      this.checkInvariants();
    } catch (err) {
      out = `error: ${(err as Error).message}`;
      if ((err as Error).message.startsWith('INVARIANT')) throw err;
    }
    return out === '' ? 'ok' : out;
  }

  private exec(cmd: string, args: string[], kv: Map<string, string>): string {
    const num = (s: string | undefined, what: string): number => {
      const n = Number(s);
      if (s === undefined || !Number.isFinite(n)) throw new Error(`bad ${what}: ${s}`);
      return n;
    };
    switch (cmd) {
      case 'add-nodes':
        return this.addNodes(num(args[0], 'count'), kv);
      case 'campaign':
        return this.watch([num(args[0], 'id')], () => this.node(num(args[0], 'id')).core.campaign());
      case 'tick': {
        const ids = args[0] === undefined || args[0] === 'all' ? [...this.nodes.keys()] : [num(args[0], 'id')];
        const n = args[1] === undefined ? 1 : num(args[1], 'ticks');
        return this.watch(ids, () => {
          for (let i = 0; i < n; i++) for (const id of ids) this.node(id).core.tick();
        });
      }
      case 'advance-time': {
        // Ticks every node N times, delivering all messages and Readies quietly after each tick.
        const n = args[0] === undefined ? 1 : num(args[0], 'ticks');
        const ids = [...this.nodes.keys()];
        return this.watch(ids, () => {
          for (let i = 0; i < n; i++) {
            for (const id of ids) this.node(id).core.tick();
            this.stabilize(true);
          }
        });
      }
      case 'process-ready':
        return this.ids(args)
          .map((id) => this.processReady(id, true))
          .join('\n');
      case 'deliver':
        return this.deliver(args[0], true, kv.has('count') ? num(kv.get('count'), 'count') : Infinity);
      case 'drop':
        return this.drop(args[0] ?? '*->*', kv.has('count') ? num(kv.get('count'), 'count') : Infinity);
      case 'hold':
      case 'duplicate': {
        const count = kv.has('count') ? num(kv.get('count'), 'count') : Infinity;
        const lines: string[] = [];
        const keep: Message[] = [];
        const copies: Message[] = [];
        for (const m of this.queue) {
          if (lines.length < count && this.matches(m, args[0])) {
            lines.push(`${cmd === 'hold' ? 'held' : 'duplicated'}: ${describeMessage(m)}`);
            if (cmd === 'hold') this.held.push(m);
            else {
              keep.push(m);
              copies.push({ ...m });
            }
          } else keep.push(m);
        }
        this.queue = keep.concat(copies);
        return lines.join('\n');
      }
      case 'release': {
        const count = kv.has('count') ? num(kv.get('count'), 'count') : Infinity;
        const lines: string[] = [];
        this.held = this.held.filter((m) => {
          if (lines.length >= count || !this.matches(m, args[0])) return true;
          lines.push(`released: ${describeMessage(m)}`);
          this.queue.push(m);
          return false;
        });
        return lines.join('\n');
      }
      case 'stabilize': {
        const quiet = args[0] === 'quiet';
        return this.stabilize(quiet);
      }
      case 'partition': {
        this.partitionOf = new Map();
        let g = 0;
        for (const a of args) {
          if (a === '|') g++;
          else this.partitionOf.set(Number(a), g);
        }
        return '';
      }
      case 'heal':
        this.partitionOf = null;
        return '';
      case 'propose': {
        const id = num(args[0], 'id');
        const data = args[1] ?? '';
        const count = kv.has('count') ? num(kv.get('count'), 'count') : 1;
        const lines: string[] = [];
        for (let i = 0; i < count; i++) {
          const payload = count > 1 ? `${data}${i}` : data;
          const r = this.node(id).core.propose(enc.encode(payload));
          const line = r.ok ? `ok index=${r.index} term=${r.term}` : `refused ${r.code}${r.code === 'NOTLEADER' ? ` leader=${r.leader}` : ''}`;
          if (count === 1 || !r.ok || i === count - 1) lines.push(count > 1 ? `${payload}: ${line}` : line);
          if (!r.ok) break;
        }
        return lines.join('\n');
      }
      case 'conf-change': {
        const id = num(args[0], 'id');
        const types: Record<string, ConfChangeType> = {
          'add-learner': ConfChangeType.AddLearner,
          promote: ConfChangeType.PromoteLearner,
          remove: ConfChangeType.RemoveNode,
        };
        const t = types[args[1] ?? ''];
        if (t === undefined) throw new Error(`bad conf change ${args[1]}`);
        const r = this.node(id).core.proposeConfChange({ type: t, node: num(args[2], 'node') });
        return r.ok ? `ok index=${r.index} term=${r.term}` : `refused ${r.code}`;
      }
      case 'compact':
        return this.compact(num(args[0], 'id'), num(args[1], 'index'));
      case 'transfer-leader': {
        const id = num(args[0], 'id');
        return this.watch([id], () => this.node(id).core.transferLeader(num(args[1], 'target')));
      }
      case 'read-index': {
        const ok = this.node(num(args[0], 'id')).core.readIndex(enc.encode(args[1] ?? ''));
        return ok ? 'ok' : 'refused';
      }
      case 'report-unreachable':
        this.node(num(args[0], 'id')).core.reportUnreachable(num(args[1], 'peer'));
        return '';
      case 'restart': {
        const n = this.node(num(args[0], 'id'));
        n.restarts++;
        n.boot();
        return this.stateLine(n.id);
      }
      case 'status':
        return this.status(num(args[0], 'id'));
      case 'log': {
        const c = this.node(num(args[0], 'id')).core;
        const ents = c.entries(c.firstIndex, c.lastIndex + 1);
        return `first=${c.firstIndex} last=${c.lastIndex} commit=${c.commit} applied=${c.applied}${ents.length > 0 ? `\n${describeEntries(ents, 40)}` : ''}`;
      }
      case 'raft-state':
        return [...this.nodes.keys()].map((id) => this.stateLine(id)).join('\n');
      case 'queue':
        return this.queue.map(describeMessage).join('\n') || '(empty)';
      default:
        throw new Error(`unknown command ${cmd}`);
    }
  }

  private addNodes(count: number, kv: Map<string, string>): string {
    const list = (s: string | undefined): NodeId[] | undefined =>
      s === undefined
        ? undefined
        : s
            .replace(/[()]/g, '')
            .split(',')
            .filter((x) => x !== '')
            .map(Number);
    const first = this.nodes.size + 1;
    const newIds = Array.from({ length: count }, (_, i) => first + i);
    const conf: ConfState = { voters: list(kv.get('voters')) ?? newIds, learners: list(kv.get('learners')) ?? [] };
    const n = (k: string, d: number): number => (kv.has(k) ? Number(kv.get(k)) : d);
    for (const id of newIds) {
      const config: RaftConfig = {
        id,
        group: n('group', 0),
        heartbeatTicks: n('heartbeat', 1),
        electionTicksMin: n('election', 10),
        preVote: kv.get('prevote') === 'true',
        checkQuorum: kv.get('checkquorum') === 'true',
        readMode: kv.get('readmode') === 'lease' ? 'lease' : 'safe',
        inflightMsgsMax: n('inflight', 256),
        appendEntriesMax: n('max-entries', 100),
        appendBytesMax: n('max-bytes', 1 << 20),
        uncommittedBytesMax: n('max-uncommitted', 1 << 20),
        snapshotChunkBytes: n('chunk', 1 << 20),
      };
      const node = new TestNode(id, config, conf);
      node.boot();
      this.nodes.set(id, node);
    }
    return '';
  }

  private stateLine(id: NodeId): string {
    const c = this.node(id).core;
    return `${id}: ${ROLE_NAMES[c.role]} term=${c.term} lead=${c.leader} commit=${c.commit} applied=${c.applied} last=${c.lastIndex}`;
  }

  private status(id: NodeId): string {
    const s = this.node(id).core.status();
    const lines = [
      `${id}: ${ROLE_NAMES[s.role]} term=${s.term} vote=${s.vote} lead=${s.leader} commit=${s.commit} applied=${s.applied} log=[${s.firstIndex},${s.lastIndex}] conf=${describeConf(s.conf)}`,
    ];
    for (const [peer, p] of Object.entries(s.progress)) {
      lines.push(`  ${peer}: ${p.state} match=${p.match} next=${p.next}`);
    }
    return lines.join('\n');
  }

  /** Runs fn and reports role/term/leader changes of the given nodes. */
  private watch(ids: NodeId[], fn: () => void): string {
    const before = ids.map((id) => this.stateShort(id));
    fn();
    const lines: string[] = [];
    ids.forEach((id, i) => {
      const after = this.stateShort(id);
      if (after !== before[i]) lines.push(`${id}: ${before[i]} -> ${after}`);
    });
    return lines.join('\n');
  }

  private stateShort(id: NodeId): string {
    const c = this.node(id).core;
    return `${ROLE_NAMES[c.role]} term=${c.term} lead=${c.leader}`;
  }

  processReady(id: NodeId, verbose: boolean): string {
    const n = this.node(id);
    const c = n.core;
    if (!c.hasReady()) return verbose ? `> ${id}: no Ready` : '';
    const rd = c.ready();
    const text = `> ${id} handling Ready\n${describeReady(rd, '  ')}`;
    this.persist(n, rd);
    for (const m of rd.messages) this.queue.push(m);
    this.apply(n, rd);
    if (rd.softState?.role === Role.Leader) {
      const prev = this.leaders.get(c.term);
      if (prev !== undefined && prev !== id) throw new Error(`INVARIANT: two leaders in term ${c.term}: ${prev} and ${id}`);
      this.leaders.set(c.term, id);
    }
    c.advance(rd);
    return text;
  }

  private persist(n: TestNode, rd: Ready): void {
    const st = n.storage;
    if (rd.snapshot) {
      st.snap = rd.snapshot;
      st.entries = [];
    }
    const first = rd.entries[0];
    if (first !== undefined) {
      const base = (st.snap?.meta.index ?? 0) + 1;
      const keep = first.index - base;
      if (keep < 0 || keep > st.entries.length) throw new Error(`storage ${n.id}: entries from ${first.index} leave a gap`);
      st.entries.length = keep;
      for (const e of rd.entries) st.entries.push(e);
    }
    if (rd.hardState) st.hs = { ...rd.hardState };
  }

  private apply(n: TestNode, rd: Ready): void {
    if (rd.snapshot) {
      const text = new TextDecoder().decode(rd.snapshot.data);
      n.sm = text === '' ? [] : text.split(',').map((p) => {
        const [i, v] = p.split(':');
        return [Number(i), v ?? ''] as [number, string];
      });
      n.appliedIndex = rd.snapshot.meta.index;
    }
    for (const e of rd.committed) {
      if (e.index !== n.appliedIndex + 1) {
        throw new Error(`INVARIANT: node ${n.id} applies ${e.index} after ${n.appliedIndex}`);
      }
      const key = `${e.term}/${e.index}/${e.type}/${new TextDecoder().decode(e.data)}`;
      const prev = this.appliedAt.get(e.index);
      if (prev !== undefined && prev !== key) {
        throw new Error(`INVARIANT: node ${n.id} applies ${key} at ${e.index}, another node applied ${prev}`);
      }
      this.appliedAt.set(e.index, key);
      if (e.type === EntryType.Normal) n.sm.push([e.index, new TextDecoder().decode(e.data)]);
      n.appliedIndex = e.index;
    }
  }

  private compact(id: NodeId, index: number): string {
    const n = this.node(id);
    const c = n.core;
    if (index > n.appliedIndex) throw new Error(`node ${id} has applied only ${n.appliedIndex}`);
    const data = enc.encode(
      n.sm
        .filter(([i]) => i <= index)
        .map(([i, v]) => `${i}:${v}`)
        .join(','),
    );
    const snap: Snapshot = { meta: { index, term: c.termAt(index), conf: c.confAt(index) }, data };
    c.compact(snap);
    n.storage.snap = snap;
    n.storage.entries = n.storage.entries.filter((e) => e.index > index);
    return `first=${c.firstIndex} last=${c.lastIndex}`;
  }

  private matches(m: Message, pattern: string | undefined): boolean {
    if (pattern === undefined) return true;
    const [f, t] = pattern.split('->');
    return (f === '*' || Number(f) === m.from) && (t === undefined || t === '*' || Number(t) === m.to);
  }

  private cut(m: Message): boolean {
    const p = this.partitionOf;
    if (p === null) return false;
    return (p.get(m.from) ?? -1) !== (p.get(m.to) ?? -1);
  }

  /** Delivers queued messages matching pattern; lists them (verbose) or only the dropped ones (stabilize). */
  deliver(pattern: string | undefined, verbose: boolean, count = Infinity): string {
    const batch: Message[] = [];
    const keep: Message[] = [];
    for (const m of this.queue) (batch.length < count && this.matches(m, pattern) ? batch : keep).push(m);
    this.queue = keep;
    const lines: string[] = [];
    for (const m of batch) {
      const n = this.nodes.get(m.to);
      if (n === undefined || this.cut(m)) {
        lines.push(`dropped: ${describeMessage(m)}`);
        continue;
      }
      if (verbose) lines.push(describeMessage(m));
      n.core.step(m);
    }
    return lines.join('\n');
  }

  private drop(pattern: string, count: number): string {
    const lines: string[] = [];
    this.queue = this.queue.filter((m) => {
      if (lines.length >= count || !this.matches(m, pattern)) return true;
      lines.push(`dropped: ${describeMessage(m)}`);
      return false;
    });
    return lines.join('\n');
  }

  stabilize(quiet: boolean): string {
    const lines: string[] = [];
    for (let round = 0; round < 1000; round++) {
      let busy = false;
      for (const id of this.nodes.keys()) {
        const s = this.processReady(id, false);
        if (s !== '') {
          busy = true;
          if (!quiet) lines.push(s);
        }
      }
      if (this.queue.length > 0) {
        busy = true;
        const s = this.deliver(undefined, false);
        if (!quiet && s !== '') lines.push(s);
      }
      if (!busy) return quiet ? '' : lines.join('\n');
    }
    throw new Error('stabilize: no quiescence after 1000 rounds');
  }

  private checkInvariants(): void {
    // Log Matching on committed prefixes: every committed entry in memory equals what was applied at its index.
    for (const n of this.nodes.values()) {
      const c = n.core;
      const lo = Math.max(c.firstIndex, c.commit - 50);
      for (const e of c.entries(lo, c.commit + 1)) {
        const key = `${e.term}/${e.index}/${e.type}/${new TextDecoder().decode(e.data)}`;
        const prev = this.appliedAt.get(e.index);
        if (prev !== undefined && prev !== key) {
          throw new Error(`INVARIANT: node ${n.id} has committed ${key}, applied elsewhere: ${prev}`);
        }
      }
      if (c.role === Role.Leader) {
        const prev = this.leaders.get(c.term);
        if (prev !== undefined && prev !== n.id) throw new Error(`INVARIANT: two leaders in term ${c.term}`);
        this.leaders.set(c.term, n.id);
      }
    }
  }
}

/** Runs one scenario file; returns the parts and the actual outputs. */
export function runScenario(text: string): { parts: Part[]; outputs: string[] } {
  const parts = parseScenario(text);
  const h = new Harness();
  const outputs: string[] = [];
  for (const p of parts) if (p.kind === 'block') outputs.push(h.run(p.command));
  return { parts, outputs };
}

export function readScenario(name: string): string {
  return readFileSync(join(scenarioDir(), name), 'utf8');
}
