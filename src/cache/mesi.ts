/**
 * The MESI transition table of one cache line on one node: for every (state, event) pair, the next state, or
 * NEVER for a pair the protocol must make impossible (reaching one is a coherence bug and throws). Pure: no I/O,
 * no clock. CacheNode (cache-node.ts) drives every state change of its lines through `transition`, so the table
 * is the single place that says which changes exist, and the counters of `INFO cache` count exactly its edges.
 *
 * States (docs/cache-coherence.md):
 *   M  Modified: the only valid copy; newer than memory (write-back policy only).
 *   E  Exclusive: the only cached copy, equal to memory.
 *   S  Shared: one of possibly several copies, equal to memory.
 *   I  Invalid: not cached (also: a line being filled, whose request is tracked apart from the line).
 *
 * Events:
 *   read        a local read (hit in M/E/S; in I it is a miss and the node asks the home: no state change yet)
 *   write-wb    a local write under write-back: M and E complete locally; S and I ask the home for M
 *   write-wt    a write sent to the home (every write under write-through; under write-back one the node cannot
 *               complete locally: multi-key, DEL, a line in S or I): the node drops its copy (M: its data goes home
 *               first, so the home writes it back before the write)
 *   fill-e      the home granted E for a read miss (or for the node's own write-through write)
 *   fill-s      the home granted S for a read miss
 *   fill-m      the home granted M for a write-back write (from I, or upgrading S)
 *   inv         the home invalidates the line (another node writes); M answers with its data
 *   fwd-gets    the home asks for a downgrade to S because another node reads (write-back); M answers with data
 *   flushed     memory accepted this node's write-back of its Modified line, with no local write since
 *   evict       LRU or TTL removed the line locally (M writes back first)
 *   lapse       the node's lease from the home ran out: every line of that shard is dropped (M data is lost)
 *   new-home    the shard's home moved (leader change): M writes back to the new home, clean lines drop
 */

export const enum LineState {
  I = 0,
  S = 1,
  E = 2,
  M = 3,
}

export const LINE_STATE_NAMES = ['I', 'S', 'E', 'M'] as const;
export type LineStateName = (typeof LINE_STATE_NAMES)[number];

export const LINE_EVENTS = ['read', 'write-wb', 'write-wt', 'fill-e', 'fill-s', 'fill-m', 'inv', 'fwd-gets', 'flushed', 'evict', 'lapse', 'new-home'] as const;
export type LineEvent = (typeof LINE_EVENTS)[number];

/** What the node must do besides changing state. */
export const enum LineAction {
  None = 0,
  /** Serve the read from the line. */
  Hit = 1,
  /** Ask the home for the line (GetS). */
  GetS = 2,
  /** Ask the home for ownership (GetM). */
  GetM = 3,
  /** Complete the write on the line (write-back). */
  WriteLocal = 4,
  /** Send the write to the home (write-through). */
  WriteHome = 5,
  /** Send the line's data with the acknowledgement / to memory (it was Modified). */
  SendData = 6,
  /** The Modified data could not be written back (lease lapsed): count it as lost. */
  LoseData = 7,
}

export interface Transition {
  next: LineState;
  action: LineAction;
}

/** Marks a (state, event) pair the protocol never produces. */
export const NEVER = null;

const T = (next: LineState, action: LineAction = LineAction.None): Transition => ({ next, action });
const { I, S, E, M } = { I: LineState.I, S: LineState.S, E: LineState.E, M: LineState.M };
const A = {
  None: LineAction.None,
  Hit: LineAction.Hit,
  GetS: LineAction.GetS,
  GetM: LineAction.GetM,
  WriteLocal: LineAction.WriteLocal,
  WriteHome: LineAction.WriteHome,
  SendData: LineAction.SendData,
  LoseData: LineAction.LoseData,
};

/**
 * TABLE[state][event]. Rows are I, S, E, M (the enum's order); columns follow LINE_EVENTS.
 * Why the NEVER entries are impossible:
 *   - fill-* only arrive for a request of a line the node does not hold in that state: fills install into I;
 *     fill-m may also upgrade S (the node keeps serving its S copy while it asks for M).
 *   - fwd-gets goes only to a node the directory lists as E or M; a node in S was never told it was alone,
 *     and a node in I (evicted, or not yet filled) answers it as such, which the table allows.
 *   - evict of I: an invalid line is not in the store, so nothing can evict it.
 */
const TABLE: readonly (readonly (Transition | null)[])[] = [
  //        read          write-wb         write-wt          fill-e  fill-s  fill-m  inv   fwd-gets           flushed  evict  lapse  new-home
  /* I */ [T(I, A.GetS), T(I, A.GetM), T(I, A.WriteHome), T(E), T(S), T(M), T(I), T(I), T(I), NEVER, T(I), T(I)],
  /* S */ [T(S, A.Hit), T(S, A.GetM), T(I, A.WriteHome), NEVER, NEVER, T(M), T(I), NEVER, T(S), T(I), T(I), T(I)],
  /* E */ [T(E, A.Hit), T(M, A.WriteLocal), T(I, A.WriteHome), NEVER, NEVER, NEVER, T(I), T(S), T(E), T(I), T(I), T(I)],
  /* M */ [T(M, A.Hit), T(M, A.WriteLocal), T(I, A.SendData), NEVER, NEVER, NEVER, T(I, A.SendData), T(S, A.SendData), T(E), T(I, A.SendData), T(I, A.LoseData), T(I, A.SendData)],
];

const EVENT_INDEX = new Map<LineEvent, number>(LINE_EVENTS.map((e, i) => [e, i]));

/** A (state, event) pair the protocol forbids happened: a bug in the coherence protocol, never user input. */
export class CoherenceViolation extends Error {
  readonly code = 'COHERENCE' as const;
  constructor(
    readonly state: LineState,
    readonly event: LineEvent,
    detail = '',
  ) {
    super(`coherence violation: event ${event} in state ${LINE_STATE_NAMES[state]}${detail ? ` (${detail})` : ''}`);
    this.name = 'CoherenceViolation';
  }
}

/** The table's entry, or null for NEVER (for tests and tools). */
export function lookupTransition(state: LineState, event: LineEvent): Transition | null {
  const row = TABLE[state];
  const col = EVENT_INDEX.get(event);
  if (row === undefined || col === undefined) throw new RangeError(`unknown state ${state} or event ${event}`);
  return row[col] ?? null;
}

/** The next state and action; throws CoherenceViolation on a NEVER pair. */
export function transition(state: LineState, event: LineEvent, detail?: string): Transition {
  const t = lookupTransition(state, event);
  if (t === null) throw new CoherenceViolation(state, event, detail);
  return t;
}

/** Counters of state changes, keyed 'I->E', 'E->M', ... (only changes: X->X is not counted). */
export class TransitionCounters {
  /** counts[from * 4 + to]. */
  private readonly counts = new Float64Array(16);

  count(from: LineState, to: LineState, n = 1): void {
    if (from !== to) this.counts[from * 4 + to]! += n;
  }

  get(from: LineState, to: LineState): number {
    return this.counts[from * 4 + to]!;
  }

  /** Every possible change with its count, in a fixed order (zeros included, so dashboards see every series). */
  entries(): [name: string, count: number][] {
    const out: [string, number][] = [];
    for (let from = 0; from < 4; from++) {
      for (let to = 0; to < 4; to++) {
        if (from !== to) out.push([`${LINE_STATE_NAMES[from]}->${LINE_STATE_NAMES[to]}`, this.counts[from * 4 + to]!]);
      }
    }
    return out;
  }

  reset(): void {
    this.counts.fill(0);
  }
}
