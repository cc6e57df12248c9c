/**
 * The replicated state machine the simulator drives: a string map with SET, INCR and GET, plus a session table
 * (client id -> last sequence number applied and its answer) so that a retried command is applied once and
 * answered with the first answer. Commands travel in entry data as JSON. Snapshots encode the map and the
 * sessions in a canonical order, so two replicas at the same index produce identical bytes.
 */
import type { KvOutput } from '../support/linearizability.js';

export interface KvCommand {
  /** Client id; -1 for the simulator's own liveness probes. */
  c: number;
  /** The client's sequence number (one command in flight per client). */
  s: number;
  op: 'set' | 'incr' | 'probe';
  k: string;
  v?: string;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeCommand(cmd: KvCommand): Uint8Array {
  return enc.encode(JSON.stringify(cmd));
}

export function decodeCommand(data: Uint8Array): KvCommand {
  return JSON.parse(dec.decode(data)) as KvCommand;
}

interface Session {
  seq: number;
  out: KvOutput;
}

const INT_RE = /^-?(0|[1-9][0-9]*)$/;

export class KvMachine {
  private data = new Map<string, string>();
  private sessions = new Map<number, Session>();
  /** Test hook: apply retried commands again (the bug the session table prevents). */
  dedup = true;

  /** Applies a command; null when it is a stale retry of a command older than the client's last one. */
  apply(cmd: KvCommand): KvOutput | null {
    if (cmd.op === 'probe') return {};
    const sess = this.sessions.get(cmd.c);
    if (this.dedup && sess !== undefined && cmd.s <= sess.seq) return cmd.s === sess.seq ? sess.out : null;
    let out: KvOutput;
    if (cmd.op === 'set') {
      this.data.set(cmd.k, cmd.v ?? '');
      out = {};
    } else {
      const cur = this.data.get(cmd.k);
      if (cur !== undefined && !INT_RE.test(cur)) {
        out = { error: 'NOTINT' };
      } else {
        const nv = String(Number(cur ?? '0') + 1);
        this.data.set(cmd.k, nv);
        out = { value: nv };
      }
    }
    this.sessions.set(cmd.c, { seq: cmd.s, out });
    return out;
  }

  get(key: string): string | null {
    return this.data.get(key) ?? null;
  }

  encode(): Uint8Array {
    const d = [...this.data.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const s = [...this.sessions.entries()].sort((a, b) => a[0] - b[0]);
    return enc.encode(JSON.stringify({ d, s }));
  }

  static decode(bytes: Uint8Array): KvMachine {
    const m = new KvMachine();
    if (bytes.byteLength === 0) return m;
    const o = JSON.parse(dec.decode(bytes)) as { d: [string, string][]; s: [number, Session][] };
    for (const [k, v] of o.d) m.data.set(k, v);
    for (const [c, sess] of o.s) m.sessions.set(c, sess);
    return m;
  }
}
