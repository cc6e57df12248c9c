/**
 * Linearizability checker (Wing & Gong's search with Lowe's memoization, as in Porcupine), generic over a model.
 *
 * What it owns: deciding whether a concurrent history of operations (each with a call time and a return time)
 * can be explained by some total order that respects real time (an operation that returned before another was
 * called comes first) and the sequential specification `Model.step`.
 *
 * How: the history becomes a doubly linked list of call and return entries sorted by time (calls before returns
 * at equal times, so touching intervals count as concurrent). A depth-first search walks the list; at a call entry
 * it tries to linearize that operation now (model.step accepts it), "lifting" the call and its return out of the
 * list; at a return entry (an operation that had to be linearized by now but was not) it backtracks, "unlifting"
 * the last linearized operation. Each visited (set of linearized operations, model state) pair is cached, so an
 * equivalent configuration is never explored twice (Lowe). The set is a Uint32Array bitset whose hash is kept
 * incrementally (Zobrist: xor of a random word per operation), so hashing costs O(1) per step.
 *
 * Pending operations (ret = Infinity: the client crashed or timed out) may take effect at any point after their
 * call, or never. Their return entries sort after every real return; reaching one means every completed operation
 * has been linearized, so the search succeeds there. The model's `step` receives `undefined` as the output of a
 * pending operation and must then accept whatever the input does. A pending operation that leaves the state as it
 * was is never linearized (it cannot matter), and configurations that used a superset of the pending operations of
 * an already-seen one (same completed set, same state) are pruned. Even so the search is exponential in the number
 * of pending operations that change the state and overlap in one partition: keep those few (clients that retry).
 *
 * Invariants: the result is 'ok' only if a witness linearization was found (returned in `linearization`);
 * 'illegal' only after the search space was exhausted; 'unknown' only on timeout.
 */

export interface Operation<I, O> {
  clientId: number;
  input: I;
  /** The observed output; ignored (may be anything) when `ret` is Infinity. */
  output: O;
  /** Time the client invoked the operation. */
  call: number;
  /** Time the client saw the answer; Infinity for an operation that never returned (it may or may not have happened). */
  ret: number;
}

export interface Model<State, Input, Output> {
  init(): State;
  /**
   * Apply `input` to `state`; ok is false if `output` is not what the sequential specification would answer.
   * `output` is undefined for a pending operation: accept it and return the state after the input.
   * Must not mutate `state`.
   */
  step(state: State, input: Input, output: Output | undefined): [ok: boolean, next: State];
  /** Canonical string of a state, for memoization (two states with the same key must behave identically). */
  key(state: State): string;
  /** Optional: split a history into independent sub-histories (e.g. per key), each checked separately. */
  partition?(ops: Operation<Input, Output>[]): Operation<Input, Output>[][];
  describe?(input: Input, output: Output | undefined): string;
}

export type CheckResultKind = 'ok' | 'illegal' | 'unknown';

export interface CheckResult<I, O> {
  ok: boolean;
  result: CheckResultKind;
  /**
   * For 'ok': a witness linearization of each partition (operations in linearized order).
   * For 'illegal': the longest linearizable prefix found in the failing partition.
   */
  partialOrder?: Operation<I, O>[][];
  /** Index of the first partition found not linearizable (or timed out, for 'unknown'). */
  failingPartition?: number;
  /** Human-readable account of the failure. */
  explanation?: string;
  /** Search steps taken over all partitions (for performance tests). */
  steps: number;
}

export interface CheckOptions {
  /** Give up and answer 'unknown' after this long, in milliseconds (default: no limit). */
  timeoutMs?: number;
  /** Compute the witness linearizations for an 'ok' result (default true). */
  witness?: boolean;
}

/** Thrown for malformed histories (a return before its call, NaN times): a bug in the caller, not a verdict. */
export class HistoryError extends Error {
  readonly code = 'BAD_HISTORY';
  constructor(message: string) {
    super(message);
    this.name = 'HistoryError';
  }
}

export function checkLinearizable<S, I, O>(
  model: Model<S, I, O>,
  history: readonly Operation<I, O>[],
  opts: CheckOptions = {},
): CheckResult<I, O> {
  for (const op of history) {
    if (Number.isNaN(op.call) || Number.isNaN(op.ret) || !Number.isFinite(op.call) || op.ret < op.call) {
      throw new HistoryError(`operation of client ${op.clientId} has call ${op.call} and return ${op.ret}`);
    }
  }
  const partitions = model.partition ? model.partition(history.slice()) : [history.slice()];
  const deadline = opts.timeoutMs !== undefined ? performance.now() + opts.timeoutMs : Infinity;
  const witness = opts.witness ?? true;
  const orders: Operation<I, O>[][] = [];
  let steps = 0;
  let timedOutAt = -1;
  for (let p = 0; p < partitions.length; p++) {
    const part = partitions[p]!;
    let r = checkSingle(model, part, deadline, false);
    steps += r.steps;
    if (r.verdict === 'illegal') {
      // Search again, this time recording the longest linearizable prefix for the explanation.
      const again = checkSingle(model, part, Infinity, true);
      if (again.verdict === 'illegal') r = again;
      const prefix = r.order.map((i) => part[i]!);
      return {
        ok: false,
        result: 'illegal',
        partialOrder: [prefix],
        failingPartition: p,
        explanation: explainFailure(model, part, r.order, r.stuck, p),
        steps,
      };
    }
    if (r.verdict === 'unknown') {
      if (timedOutAt < 0) timedOutAt = p;
      // A later partition may still be provably illegal, but the deadline has passed: stop here.
      break;
    }
    if (witness) orders.push(r.order.map((i) => part[i]!));
  }
  if (timedOutAt >= 0) {
    return {
      ok: false,
      result: 'unknown',
      failingPartition: timedOutAt,
      explanation: `timed out after ${opts.timeoutMs} ms in partition ${timedOutAt}`,
      steps,
    };
  }
  return witness ? { ok: true, result: 'ok', partialOrder: orders, steps } : { ok: true, result: 'ok', steps };
}

interface SingleResult {
  verdict: CheckResultKind;
  /** ok: the linearization; illegal: the longest linearizable prefix (operation indices into the partition). */
  order: number[];
  /** illegal: the operations that were candidates right after the longest prefix. */
  stuck: number[];
  steps: number;
}

/** Random 32-bit words from a fixed splitmix32 stream: Zobrist keys for the linearized-set hash. */
function zobristKeys(n: number): Int32Array {
  const keys = new Int32Array(n);
  let s = 0x2545f491;
  for (let i = 0; i < n; i++) {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    keys[i] = z ^ (z >>> 16);
  }
  return keys;
}

function hashString(s: string): number {
  let h = 0x811c9dc5 | 0;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h;
}

/**
 * One memoized configuration: the set of completed operations linearized, the state, and every set of pending
 * operations linearized seen with them. A configuration is dominated by one with the same completed set and state
 * and a subset of its pending operations (pending operations are optional, so fewer used means more options left).
 */
interface CacheEntry {
  done: Uint32Array;
  state: string;
  pendings: Uint32Array[];
}

function sameBits(a: Uint32Array, b: Uint32Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function isSubset(a: Uint32Array, b: Uint32Array): boolean {
  for (let i = 0; i < a.length; i++) if ((a[i]! & ~b[i]!) !== 0) return false;
  return true;
}

function checkSingle<S, I, O>(
  model: Model<S, I, O>,
  ops: readonly Operation<I, O>[],
  deadline: number,
  record: boolean,
): SingleResult {
  const n = ops.length;
  if (n === 0) return { verdict: 'ok', order: [], stuck: [], steps: 0 };

  // Entries: 2*i is the call of op i, 2*i+1 its return. Sort by time, calls before returns at equal times.
  const order = new Int32Array(2 * n);
  for (let i = 0; i < 2 * n; i++) order[i] = i;
  const timeOf = (e: number): number => (e & 1 ? ops[e >> 1]!.ret : ops[e >> 1]!.call);
  const sorted = Array.from(order).sort((a, b) => {
    const ta = timeOf(a);
    const tb = timeOf(b);
    if (ta !== tb) return ta < tb ? -1 : 1;
    const ka = a & 1;
    const kb = b & 1;
    if (ka !== kb) return ka - kb;
    return a - b;
  });

  // Doubly linked list over entry ids; HEAD = 2n is the sentinel, NIL = -1.
  const HEAD = 2 * n;
  const NIL = -1;
  const next = new Int32Array(2 * n + 1).fill(NIL);
  const prev = new Int32Array(2 * n + 1).fill(NIL);
  let last = HEAD;
  for (const e of sorted) {
    next[last] = e;
    prev[e] = last;
    last = e;
  }
  next[last] = NIL;

  const lift = (call: number): void => {
    // Remove the call entry and its return entry from the list.
    const ret = call + 1;
    next[prev[call]!] = next[call]!;
    if (next[call]! !== NIL) prev[next[call]!] = prev[call]!;
    next[prev[ret]!] = next[ret]!;
    if (next[ret]! !== NIL) prev[next[ret]!] = prev[ret]!;
  };
  const unlift = (call: number): void => {
    const ret = call + 1;
    next[prev[ret]!] = ret;
    if (next[ret]! !== NIL) prev[next[ret]!] = ret;
    next[prev[call]!] = call;
    if (next[call]! !== NIL) prev[next[call]!] = call;
  };

  const words = (n + 31) >>> 5;
  const done = new Uint32Array(words); // completed operations linearized
  const pend = new Uint32Array(words); // pending operations linearized
  const zob = zobristKeys(n);
  let doneHash = 0;
  const cache = new Map<number, CacheEntry[]>();

  // Stack of linearized ops with the state before each.
  const stackOp: number[] = [];
  const stackState: S[] = [];
  let state = model.init();
  let longest: number[] = [];
  let stuckAtLongest: number[] = [];
  let steps = 0;

  let entry = next[HEAD]!;
  while (next[HEAD]! !== NIL) {
    if ((++steps & 1023) === 0 && performance.now() > deadline) {
      return { verdict: 'unknown', order: [], stuck: [], steps };
    }
    const opIdx = entry >> 1;
    const op = ops[opIdx]!;
    if ((entry & 1) === 0) {
      // A call entry: try to linearize this operation now.
      const pending = op.ret === Infinity;
      const [ok, nextState] = model.step(state, op.input, pending ? undefined : op.output);
      // A pending operation that does not change the state is never needed: leave it out (it "never happened").
      if (ok && !(pending && model.key(nextState) === model.key(state))) {
        const w = opIdx >>> 5;
        const mask = 1 << (opIdx & 31);
        const set = pending ? pend : done;
        set[w] = set[w]! | mask;
        const newHash = pending ? doneHash : doneHash ^ zob[opIdx]!;
        const stateKey = model.key(nextState);
        const h = (newHash ^ hashString(stateKey)) | 0;
        let bucket = cache.get(h);
        let found: CacheEntry | undefined;
        let dominated = false;
        if (bucket !== undefined) {
          for (const c of bucket) {
            if (c.state === stateKey && sameBits(c.done, done)) {
              found = c;
              for (const p of c.pendings) {
                if (isSubset(p, pend)) {
                  dominated = true;
                  break;
                }
              }
              break;
            }
          }
        }
        if (!dominated) {
          if (found === undefined) {
            found = { done: done.slice(), state: stateKey, pendings: [] };
            if (bucket === undefined) {
              bucket = [];
              cache.set(h, bucket);
            }
            bucket.push(found);
          }
          found.pendings.push(pend.slice());
          stackOp.push(opIdx);
          stackState.push(state);
          state = nextState;
          doneHash = newHash;
          lift(entry);
          entry = next[HEAD]!;
          continue;
        }
        set[w] = set[w]! & ~mask;
      }
      entry = next[entry]!;
    } else {
      // A return entry of an operation not yet linearized.
      if (op.ret === Infinity) {
        // Every completed operation is linearized; pending ones left over never took effect.
        return { verdict: 'ok', order: stackOp.slice(), stuck: [], steps };
      }
      if (record && (stackOp.length > longest.length || stuckAtLongest.length === 0)) {
        longest = stackOp.slice();
        stuckAtLongest = candidates(next, HEAD, NIL);
      }
      if (stackOp.length === 0) {
        return { verdict: 'illegal', order: longest, stuck: stuckAtLongest, steps };
      }
      const top = stackOp.pop()!;
      state = stackState.pop()!;
      const w = top >>> 5;
      if (ops[top]!.ret === Infinity) {
        pend[w] = pend[w]! & ~(1 << (top & 31));
      } else {
        done[w] = done[w]! & ~(1 << (top & 31));
        doneHash ^= zob[top]!;
      }
      const call = top * 2;
      unlift(call);
      entry = next[call]!;
    }
  }
  return { verdict: 'ok', order: stackOp.slice(), stuck: [], steps };
}

/** Operations whose calls precede the first return in the remaining list: the ones that could go next. */
function candidates(next: Int32Array, head: number, nil: number): number[] {
  const out: number[] = [];
  for (let e = next[head]!; e !== nil; e = next[e]!) {
    if (e & 1) {
      out.push(e >> 1); // the op that had to be linearized by now
      break;
    }
    out.push(e >> 1);
    if (out.length > 16) break;
  }
  return out;
}

function explainFailure<S, I, O>(
  model: Model<S, I, O>,
  ops: readonly Operation<I, O>[],
  prefix: number[],
  stuck: number[],
  partition: number,
): string {
  const fmt = (i: number): string => {
    const op = ops[i]!;
    const pending = op.ret === Infinity;
    const body = model.describe
      ? model.describe(op.input, pending ? undefined : op.output)
      : `${JSON.stringify(op.input)} -> ${pending ? '?' : JSON.stringify(op.output)}`;
    return `client ${op.clientId} [${op.call}, ${pending ? 'pending' : op.ret}] ${body}`;
  };
  let state = model.init();
  for (const i of prefix) state = model.step(state, ops[i]!.input, ops[i]!.ret === Infinity ? undefined : ops[i]!.output)[1];
  const lines = [`partition ${partition} (${ops.length} operations) is not linearizable.`];
  const shown = prefix.slice(-10);
  lines.push(`longest linearizable prefix: ${prefix.length} operations${prefix.length > shown.length ? ' (last 10 shown)' : ''}:`);
  for (const i of shown) lines.push(`  ${fmt(i)}`);
  lines.push(`state after it: ${model.key(state)}`);
  lines.push('none of these can go next:');
  for (const i of stuck) lines.push(`  ${fmt(i)}`);
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// Ready models
// ---------------------------------------------------------------------------------------------------------------

/** Group operations by a key, keeping history order within each group. */
export function partitionBy<I, O>(ops: Operation<I, O>[], keyOf: (input: I) => string): Operation<I, O>[][] {
  const groups = new Map<string, Operation<I, O>[]>();
  for (const op of ops) {
    const k = keyOf(op.input);
    let g = groups.get(k);
    if (g === undefined) {
      g = [];
      groups.set(k, g);
    }
    g.push(op);
  }
  return [...groups.values()];
}

// --- single register -------------------------------------------------------------------------------------------
export type RegisterValue = number | string | null;
export type RegisterInput =
  | { kind: 'read' }
  | { kind: 'write'; value: RegisterValue }
  | { kind: 'cas'; expect: RegisterValue; value: RegisterValue };
/** read: { value }; write: {}; cas: { ok } (true if it swapped). */
export type RegisterOutput = { value?: RegisterValue; ok?: boolean };

export function registerModel(initial: RegisterValue = 0): Model<RegisterValue, RegisterInput, RegisterOutput> {
  return {
    init: () => initial,
    step(state, input, output) {
      switch (input.kind) {
        case 'read':
          return [output === undefined || output.value === state, state];
        case 'write':
          return [true, input.value];
        case 'cas': {
          const swapped = state === input.expect;
          const ok = output === undefined || output.ok === swapped;
          return [ok, swapped ? input.value : state];
        }
      }
    },
    key: (s) => JSON.stringify(s),
    describe(input, output) {
      const out = output === undefined ? '?' : input.kind === 'cas' ? String(output.ok) : JSON.stringify(output.value ?? null);
      switch (input.kind) {
        case 'read':
          return `read() -> ${out}`;
        case 'write':
          return `write(${JSON.stringify(input.value)})`;
        case 'cas':
          return `cas(${JSON.stringify(input.expect)}, ${JSON.stringify(input.value)}) -> ${out}`;
      }
    },
  };
}

// --- key-value map, partitioned per key --------------------------------------------------------------------------
export type KvInput =
  | { kind: 'get'; key: string }
  | { kind: 'set'; key: string; value: string }
  | { kind: 'del'; key: string }
  | { kind: 'incr'; key: string; by?: number };
/**
 * get: { value } (null when absent); set: {}; del: { deleted } (optional: checked when present);
 * incr: { value } the new value as a decimal string, or { error: 'NOTINT' } if the stored value is not an integer.
 */
export type KvOutput = { value?: string | null; deleted?: boolean; error?: 'NOTINT' };

const INT_RE = /^-?(0|[1-9][0-9]*)$/;

/** Redis-like string map; each key is an independent register, so histories partition per key. */
export function kvModel(): Model<string | null, KvInput, KvOutput> {
  return {
    init: () => null,
    step(state, input, output) {
      switch (input.kind) {
        case 'get':
          return [output === undefined || (output.value ?? null) === state, state];
        case 'set':
          return [true, input.value];
        case 'del': {
          const ok = output === undefined || output.deleted === undefined || output.deleted === (state !== null);
          return [ok, null];
        }
        case 'incr': {
          const cur = state === null ? 0 : INT_RE.test(state) ? Number(state) : NaN;
          if (Number.isNaN(cur)) return [output === undefined || output.error === 'NOTINT', state];
          const nv = String(cur + (input.by ?? 1));
          return [output === undefined || (output.error === undefined && output.value === nv), nv];
        }
      }
    },
    key: (s) => (s === null ? '\u0000' : s),
    partition: (ops) => partitionBy(ops, (i) => i.key),
    describe(input, output) {
      const out = output === undefined ? '?' : output.error ?? JSON.stringify(output.value ?? output.deleted ?? null);
      switch (input.kind) {
        case 'get':
          return `get(${input.key}) -> ${out}`;
        case 'set':
          return `set(${input.key}, ${JSON.stringify(input.value)})`;
        case 'del':
          return `del(${input.key}) -> ${out}`;
        case 'incr':
          return `incr(${input.key}${input.by !== undefined ? `, ${input.by}` : ''}) -> ${out}`;
      }
    },
  };
}

// --- counter ---------------------------------------------------------------------------------------------------
export type CounterInput = { kind: 'add'; n: number } | { kind: 'read' };
export type CounterOutput = { value?: number };

export function counterModel(): Model<number, CounterInput, CounterOutput> {
  return {
    init: () => 0,
    step(state, input, output) {
      if (input.kind === 'add') return [true, state + input.n];
      return [output === undefined || output.value === state, state];
    },
    key: (s) => String(s),
    describe: (input, output) =>
      input.kind === 'add' ? `add(${input.n})` : `read() -> ${output === undefined ? '?' : output.value}`,
  };
}

// --- exclusive lock with owners and fencing tokens, partitioned per lock name ------------------------------------
export type LockInput = { kind: 'acquire'; lock: string; owner: string } | { kind: 'release'; lock: string; owner: string };
/**
 * acquire (a try-lock): { ok, token } where token is the fencing token when ok. A free lock must be granted;
 * a re-acquire by the holder succeeds with the same token; tokens strictly increase per lock.
 * release: { ok } true iff the caller held the lock.
 */
export type LockOutput = { ok: boolean; token?: number };
export interface LockState {
  holder: string | null;
  /** Token of the current holder; -1 if the grant was a pending operation whose token nobody saw. */
  token: number;
  /** Largest token ever seen granted (a lower bound for the next one). */
  maxToken: number;
}

export function lockModel(): Model<LockState, LockInput, LockOutput> {
  return {
    init: () => ({ holder: null, token: 0, maxToken: 0 }),
    step(state, input, output) {
      if (input.kind === 'release') {
        const held = state.holder === input.owner;
        const ok = output === undefined || output.ok === held;
        return [ok, held ? { holder: null, token: 0, maxToken: state.maxToken } : state];
      }
      if (state.holder === null) {
        if (output === undefined) return [true, { holder: input.owner, token: -1, maxToken: state.maxToken }];
        const t = output.token;
        const ok = output.ok && (t === undefined || t > state.maxToken);
        return [ok, { holder: input.owner, token: t ?? -1, maxToken: t ?? state.maxToken }];
      }
      if (state.holder === input.owner) {
        if (output === undefined) return [true, state];
        const t = output.token;
        if (!output.ok) return [false, state];
        if (t === undefined) return [true, state];
        if (state.token === -1) return [t > state.maxToken, { holder: state.holder, token: t, maxToken: t }];
        return [t === state.token, state];
      }
      return [output === undefined || !output.ok, state];
    },
    key: (s) => `${s.holder ?? ''}\u0000${s.token}\u0000${s.maxToken}`,
    partition: (ops) => partitionBy(ops, (i) => i.lock),
    describe(input, output) {
      const out = output === undefined ? '?' : output.ok ? `ok token=${output.token ?? '?'}` : 'refused';
      return `${input.kind}(${input.lock}, ${input.owner}) -> ${out}`;
    },
  };
}
