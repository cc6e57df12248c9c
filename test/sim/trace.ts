/**
 * The simulator's event trace: a rolling 32-bit hash of every event (two runs of one seed must end with the same
 * hash: that is the determinism check) and a ring of the last events, formatted only when a run fails.
 */
import { describeMessage } from '../../src/raft/describe.js';
import type { Message } from '../../src/raft/types.js';

/** One line for a Raft message, in the core's own notation (src/raft/describe.ts), group always shown. */
export function describeMsg(m: Message): string {
  const line = describeMessage(m);
  return m.group === 0 ? `[g0] ${line}` : line;
}

export class Trace {
  private ring: (string | (() => string))[];
  private pos = 0;
  count = 0;
  private h = 0x811c9dc5 | 0;

  constructor(
    private readonly size: number,
    private readonly verbose: ((line: string) => void) | undefined,
  ) {
    this.ring = new Array<string | (() => string)>(size).fill('');
  }

  /** Folds numbers into the running hash. */
  mix(a: number, b = 0, c = 0, d = 0): void {
    let h = this.h;
    h = Math.imul(h ^ (a | 0), 0x01000193);
    h = Math.imul(h ^ (b | 0), 0x01000193);
    h = Math.imul(h ^ (c | 0), 0x01000193);
    h = Math.imul(h ^ (d | 0), 0x01000193);
    this.h = h;
  }

  /** Records an event; `line` is formatted lazily (only on failure or in verbose mode). */
  event(time: number, line: string | (() => string)): void {
    this.count++;
    this.mix(time, this.count);
    const stamped = typeof line === 'string' ? `[${fmtTime(time)}] ${line}` : (): string => `[${fmtTime(time)}] ${line()}`;
    if (this.verbose) this.verbose(typeof stamped === 'string' ? stamped : stamped());
    this.ring[this.pos] = stamped;
    this.pos = (this.pos + 1) % this.size;
  }

  get hash(): string {
    return (this.h >>> 0).toString(16).padStart(8, '0');
  }

  last(n: number): string[] {
    const out: string[] = [];
    const k = Math.min(n, this.size, this.count);
    for (let i = k; i > 0; i--) {
      const v = this.ring[(this.pos - i + this.size * 2) % this.size]!;
      out.push(typeof v === 'string' ? v : v());
    }
    return out;
  }
}

/** Simulated time is in units of 1/10 tick; shown as ticks with one decimal. */
function fmtTime(t: number): string {
  return `${Math.floor(t / 10)}.${t % 10}`;
}
