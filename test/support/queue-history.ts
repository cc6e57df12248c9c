/**
 * Test support: a recorder and a pure checker for client histories of queue operations (Q.PUSH, Q.POP, Q.ACK,
 * Q.NACK, Q.EXTEND), as an end-to-end test records them while it kills nodes and drops consumer connections.
 *
 * Owns: `QueueHistory` (an append-only list of completed operations of ONE queue, each with the send and completion
 * times the client read from one monotonic clock, performance.now()-style ms) and `checkQueueHistory`, which proves
 * from such a history, plus optionally the queue's final state (Q.INFO counts and the full Q.DEAD list):
 *   1. Identity and dedup: a logical message is its payload (the test makes payloads unique). Every push attempt of a
 *      payload that returned an id returned the same id (a retried DEDUP id answers the first id); no id belongs to
 *      two payloads; every delivery's (id, payload) is one some push made ("phantom" otherwise); one payload is never
 *      delivered under two ids (a retry added a second copy).
 *   2. At least once: every acknowledged push (some attempt returned an id) was delivered (observed) or is dead.
 *   3. Acked is final: no delivery of a message whose pop was sent after an ack of it certainly succeeded, and a
 *      certainly acked message is not a dead letter.
 *   4. Delivery counts: each observed count is in 1..maxDeliver; one message never gets the same count twice; a
 *      delivery that completed before another was sent has the smaller count.
 *   5. Visibility (only with `visibilitySlackMs`): a later delivery of a message completes no earlier than the
 *      previous delivery's pop was sent plus that pop's visibility (minus the slack), unless a NACK or EXTEND of the
 *      message may have been applied in between.
 *   6. Per-key FIFO of first deliveries: for two messages a, b of one producer and one KEY whose pushes were
 *      acknowledged, with a's push acknowledged before b's first attempt was sent, and whose count-1 deliveries
 *      were both observed: b's was not observed strictly before a's (b's pop completed before a's pop was sent,
 *      or b ahead of a in the same pop reply).
 *   7. Dead letters (with `final`): every dead letter is a known message with deliveries = maxDeliver and reason
 *      maxdeliver; every message observed at delivery maxDeliver and then never possibly acked (no ack of it
 *      completed after that pop was sent returned non-zero or failed) is dead, once nothing is in flight.
 *   8. Counts reconcile (with `final`): messages on the server = acked + ready + inflight + delayed + dead, where the
 *      server's messages are the known ids plus at most the never-seen pushes whose outcome is unknown, and acked is
 *      between the certain acks and the certain plus the uncertain ones; Q.INFO dead = length of the Q.DEAD list;
 *      when ready + inflight + delayed = 0, every known message is acked (possibly) or dead.
 *
 * Outcomes. An operation answered with an error (-TRYAGAIN, -NOQUORUM, a timeout, a dropped connection) has an
 * unknown outcome: a push may have added its message, a pop may have delivered messages nobody saw, an ack may have
 * acked. Such operations are never used as proof. An ack of several ids that returned fewer than all is uncertain
 * for each of its ids; 0 is certain for all. Deliveries nobody saw (a pop whose reply was lost) are why checks 4-7
 * compare only observed deliveries and accept counts that skip.
 *
 * Assumptions. Payloads are unique per logical message and each producer pushes sequentially. A message is
 * delivered by Q.POP only (no LPOP/RPOP on the checked queue), nothing is purged or redriven during the history,
 * and dedup windows outlast the history. "Before" in real time uses the one client clock: x before y iff
 * x.doneAt < y.sentAt.
 *
 * Invariants: the checker is pure (no clock, no I/O) and deterministic, O(n log n) plus O(k^2) per message for its
 * k observed deliveries. It reports only what cannot happen under the rules above. At most VIOLATIONS_MAX messages
 * are kept (the count of the rest is appended). A QueueHistory holds at most HISTORY_OPS_MAX operations.
 */

export type PushOp = {
  kind: 'push';
  producer: string;
  /** The KEY argument, or null. */
  key: string | null;
  /** The DEDUP argument, or null. */
  dedup: string | null;
  payload: string;
  sentAt: number;
  doneAt: number;
  result: { id: string } | { error: string };
};

export interface Delivered {
  id: string;
  payload: string;
  /** The delivery count the server returned. */
  deliveries: number;
}

export type PopOp = {
  kind: 'pop';
  consumer: string;
  /** The visibility the pop asked for (ms), or null when it used the queue default (check 5 then skips it). */
  visibilityMs: number | null;
  sentAt: number;
  doneAt: number;
  /** The deliveries in reply order ([] for nil). */
  result: Delivered[] | { error: string };
};

export type AckOp = {
  kind: 'ack';
  consumer: string;
  ids: string[];
  sentAt: number;
  doneAt: number;
  result: number | { error: string };
};

export type NackOp = {
  kind: 'nack';
  consumer: string;
  id: string;
  delayMs: number;
  sentAt: number;
  doneAt: number;
  result: 0 | 1 | { error: string };
};

export type ExtendOp = {
  kind: 'extend';
  consumer: string;
  id: string;
  ms: number;
  sentAt: number;
  doneAt: number;
  result: 0 | 1 | { error: string };
};

export type QueueOp = PushOp | PopOp | AckOp | NackOp | ExtendOp;

export interface DeadLetter {
  id: string;
  payload: string;
  deliveries: number;
  reason: string;
}

/** The queue at the end of the history (read after every client stopped). */
export interface FinalState {
  ready: number;
  inflight: number;
  delayed: number;
  /** Q.INFO dead. */
  dead: number;
  /** Q.DEAD with a COUNT above `dead`: every dead letter. */
  deadLetters: DeadLetter[];
}

export interface CheckOptions {
  /** The queue's MAXDELIVER. */
  maxDeliver: number;
  /** The queue's state at the end; checks 7 and 8 need it. */
  final?: FinalState;
  /** Enables check 5 with this tolerance (ms) between the client's clock and the servers' stamps. */
  visibilitySlackMs?: number;
}

export interface CheckStats {
  /** Distinct payloads pushed. */
  messages: number;
  pushAttempts: number;
  /** Messages some push attempt of which returned an id. */
  pushesAcked: number;
  /** Messages no attempt of which returned an id (outcome unknown). */
  pushesUnknown: number;
  /** Of those, delivered or dead anyway (they did land). */
  unknownLanded: number;
  /** Pushes whose DEDUP answered an id after an earlier attempt of the same message had failed. */
  dedupRetriesAnswered: number;
  pops: number;
  popErrors: number;
  /** Observed deliveries, and of them redeliveries (count > 1). */
  deliveries: number;
  redeliveries: number;
  /** Highest delivery count observed. */
  maxCount: number;
  /** Messages with at least one certain ack, and with only uncertain ones. */
  acked: number;
  ackUncertain: number;
  nacks: number;
  /** Dead letters in `final`. */
  dead: number;
  /** Messages whose first delivery was compared with an earlier pushed one of its producer and key. */
  orderChecked: number;
  /** Pairs of deliveries checked against the visibility timeout. */
  visibilityChecked: number;
}

export interface CheckReport {
  ok: boolean;
  violations: string[];
  stats: CheckStats;
}

/** Most operations one QueueHistory keeps (a bound on the test's memory, far above what a test records). */
export const HISTORY_OPS_MAX = 2_000_000;
/** Most violation messages a report lists; the number of further ones is appended as one more line. */
export const VIOLATIONS_MAX = 100;

/** An append-only history of completed queue operations, in the order the test recorded them. */
export class QueueHistory {
  readonly #ops: QueueOp[] = [];

  record(op: QueueOp): void {
    if (this.#ops.length >= HISTORY_OPS_MAX) throw new RangeError(`QueueHistory: more than ${HISTORY_OPS_MAX} operations`);
    this.#ops.push(op);
  }

  get ops(): readonly QueueOp[] {
    return this.#ops;
  }
}

function fmtTime(x: number): string {
  return Number.isFinite(x) ? String(Math.round(x * 1000) / 1000) : String(x);
}

function resultText(r: number | { error: string }): string {
  return typeof r === 'number' ? String(r) : `error ${r.error}`;
}

/** A one-line description of op number i, for violation messages. */
export function describeOp(i: number, op: QueueOp): string {
  let what: string;
  switch (op.kind) {
    case 'push': {
      const r = op.result;
      what = `PUSH ${JSON.stringify(op.payload)}${op.key === null ? '' : ` KEY ${op.key}`}${op.dedup === null ? '' : ` DEDUP ${op.dedup}`} -> ${'id' in r ? r.id : `error ${r.error}`} by ${op.producer}`;
      break;
    }
    case 'pop': {
      const r = op.result;
      const res = Array.isArray(r) ? `[${r.map((d) => `${d.id}#${d.deliveries}`).join(' ')}]` : `error ${r.error}`;
      what = `POP vis=${op.visibilityMs ?? 'default'} -> ${res} by ${op.consumer}`;
      break;
    }
    case 'ack':
      what = `ACK ${op.ids.join(' ')} -> ${resultText(op.result)} by ${op.consumer}`;
      break;
    case 'nack':
      what = `NACK ${op.id} delay=${op.delayMs} -> ${resultText(op.result)} by ${op.consumer}`;
      break;
    case 'extend':
      what = `EXTEND ${op.id} ${op.ms} -> ${resultText(op.result)} by ${op.consumer}`;
      break;
  }
  return `#${i} ${what} [sent ${fmtTime(op.sentAt)}, done ${fmtTime(op.doneAt)}]`;
}

function isTime(x: unknown): x is number {
  return typeof x === 'number' && Number.isFinite(x);
}

function isErr(r: unknown): r is { error: string } {
  return r !== null && typeof r === 'object' && typeof (r as { error?: unknown }).error === 'string';
}

/** Why op is malformed, or null if it is well formed. */
function malformed(op: QueueOp): string | null {
  if (op === null || typeof op !== 'object') return 'not an object';
  const o = op as unknown as Record<string, unknown>;
  if (!isTime(o.sentAt) || !isTime(o.doneAt)) return 'sentAt and doneAt must be finite numbers';
  if ((o.doneAt as number) < (o.sentAt as number)) return 'doneAt is before sentAt';
  const r = o.result as unknown;
  switch (op.kind) {
    case 'push':
      if (typeof op.payload !== 'string' || typeof op.producer !== 'string') return 'a push needs a payload and a producer';
      if (isErr(r)) return null;
      return r !== null && typeof r === 'object' && typeof (r as { id?: unknown }).id === 'string' ? null : `unknown push result ${JSON.stringify(r)}`;
    case 'pop':
      if (isErr(r)) return null;
      if (!Array.isArray(r)) return `unknown pop result ${JSON.stringify(r)}`;
      for (const d of r as unknown[]) {
        const x = d as Partial<Delivered> | null;
        if (x === null || typeof x !== 'object' || typeof x.id !== 'string' || typeof x.payload !== 'string') return 'a delivery needs an id and a payload';
        if (typeof x.deliveries !== 'number' || !Number.isSafeInteger(x.deliveries)) return `delivery count ${JSON.stringify(x.deliveries)} is not an integer`;
      }
      return null;
    case 'ack':
      if (!Array.isArray(op.ids) || op.ids.length === 0) return 'an ack needs ids';
      if (isErr(r)) return null;
      if (typeof r !== 'number' || !Number.isSafeInteger(r) || r < 0) return `unknown ack result ${JSON.stringify(r)}`;
      if (r > new Set(op.ids).size) return `ack of ${new Set(op.ids).size} distinct ids returned ${r}`;
      return null;
    case 'nack':
    case 'extend':
      if (typeof op.id !== 'string') return `a ${op.kind} needs an id`;
      return r === 0 || r === 1 || isErr(r) ? null : `unknown ${op.kind} result ${JSON.stringify(r)}`;
    default:
      return `unknown op kind ${JSON.stringify(o.kind)}`;
  }
}

interface Obs {
  op: number;
  sentAt: number;
  doneAt: number;
  count: number;
  /** Position in the pop's reply. */
  pos: number;
  visibilityMs: number | null;
}

interface AckMark {
  op: number;
  sentAt: number;
  doneAt: number;
  certain: boolean;
}

interface Msg {
  payload: string;
  producer: string;
  key: string | null;
  dedup: string | null;
  firstPushOp: number;
  firstSentAt: number;
  /** The id the server gave it (from a push reply, else from a delivery or the dead list). */
  id: string | null;
  /** Earliest completion of a push attempt that returned an id (Infinity if none) and that op. */
  pushAckedAt: number;
  pushAckOp: number;
  /** Earliest completion of a push attempt of it that failed (Infinity if none). */
  failedDoneAt: number;
  obs: Obs[];
  /** Acks of it that returned non-zero or failed (possibly or certainly acked it). */
  acks: AckMark[];
  /** NACK/EXTEND ops of it (any result): they may move its visibility deadline. */
  moves: { op: number; sentAt: number; doneAt: number; kind: 'nack' | 'extend'; result: 0 | 1 | { error: string } }[];
  dead: DeadLetter | null;
}

/** Index of the first element of `sorted` whose key is >= x (sorted ascending by key). */
function lowerBound<T>(sorted: readonly T[], x: number, key: (v: T) => number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (key(sorted[mid]!) < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Checks a recorded queue history (see the file header for what is proven). Pure. */
export function checkQueueHistory(ops: readonly QueueOp[], opts: CheckOptions): CheckReport {
  const maxDeliver = opts.maxDeliver;
  if (!Number.isSafeInteger(maxDeliver) || maxDeliver < 1) throw new RangeError(`maxDeliver must be a positive integer, got ${maxDeliver}`);
  const slack = opts.visibilitySlackMs;
  if (slack !== undefined && !(Number.isFinite(slack) && slack >= 0)) throw new RangeError(`visibilitySlackMs must be a finite number >= 0, got ${slack}`);
  const final = opts.final;
  const violations: string[] = [];
  const v = (kind: string, text: string) => violations.push(`[${kind}] ${text}`);
  const stats: CheckStats = {
    messages: 0, pushAttempts: 0, pushesAcked: 0, pushesUnknown: 0, unknownLanded: 0, dedupRetriesAnswered: 0, pops: 0, popErrors: 0,
    deliveries: 0, redeliveries: 0, maxCount: 0, acked: 0, ackUncertain: 0, nacks: 0, dead: 0, orderChecked: 0, visibilityChecked: 0,
  };
  const d = (i: number): string => describeOp(i, ops[i]!);

  const good: boolean[] = ops.map((op, i) => {
    const why = malformed(op);
    if (why !== null) v('malformed', `${why}: ${typeof op === 'object' && op !== null && 'kind' in op ? d(i) : `#${i}`}`);
    return why === null;
  });

  // --- 1. Pushes: logical messages by payload, ids.
  const byPayload = new Map<string, Msg>();
  const byId = new Map<string, Msg>();
  const claimId = (m: Msg, id: string, where: string): boolean => {
    const other = byId.get(id);
    if (other !== undefined && other !== m) {
      v('identity', `id ${id} belongs to two messages (${JSON.stringify(other.payload)} and ${JSON.stringify(m.payload)}): ${where}`);
      return false;
    }
    byId.set(id, m);
    return true;
  };
  ops.forEach((op, i) => {
    if (!good[i] || op.kind !== 'push') return;
    stats.pushAttempts++;
    let m = byPayload.get(op.payload);
    if (m === undefined) {
      m = {
        payload: op.payload, producer: op.producer, key: op.key, dedup: op.dedup, firstPushOp: i, firstSentAt: op.sentAt, id: null,
        pushAckedAt: Infinity, pushAckOp: -1, failedDoneAt: Infinity, obs: [], acks: [], moves: [], dead: null,
      };
      byPayload.set(op.payload, m);
    } else {
      if (m.producer !== op.producer || m.key !== op.key || m.dedup !== op.dedup) {
        v('malformed', `payloads must be unique per message; ${d(i)} repeats ${d(m.firstPushOp)} with another producer, key or dedup id`);
        return;
      }
      if (op.sentAt < m.firstSentAt) {
        m.firstSentAt = op.sentAt;
        m.firstPushOp = i;
      }
    }
    const r = op.result;
    if (!('id' in r)) {
      if (op.doneAt < m.failedDoneAt) m.failedDoneAt = op.doneAt;
      return;
    }
    if (m.id !== null && m.id !== r.id) {
      v('dedup', `two ids for one message ${JSON.stringify(op.payload)}${op.dedup === null ? ' (no DEDUP id)' : ` (DEDUP ${op.dedup})`}: ${m.id} (${d(m.pushAckOp)}) and ${r.id} (${d(i)})`);
      return;
    }
    if (m.id === null && !claimId(m, r.id, d(i))) return;
    m.id = r.id;
    if (op.doneAt < m.pushAckedAt) {
      m.pushAckedAt = op.doneAt;
      m.pushAckOp = i;
    }
  });
  for (const m of byPayload.values()) {
    stats.messages++;
    if (m.pushAckOp >= 0) stats.pushesAcked++;
    else stats.pushesUnknown++;
  }
  for (const m of byPayload.values()) {
    if (m.pushAckOp >= 0 && m.failedDoneAt <= ops[m.pushAckOp]!.sentAt) stats.dedupRetriesAnswered++;
  }

  // --- Pops: observed deliveries.
  ops.forEach((op, i) => {
    if (!good[i] || op.kind !== 'pop') return;
    stats.pops++;
    if (!Array.isArray(op.result)) {
      stats.popErrors++;
      return;
    }
    const inThisPop = new Set<Msg>();
    op.result.forEach((del, pos) => {
      stats.deliveries++;
      if (del.deliveries > 1) stats.redeliveries++;
      if (del.deliveries > stats.maxCount) stats.maxCount = del.deliveries;
      const m = byPayload.get(del.payload);
      if (m === undefined) {
        const owner = byId.get(del.id);
        v('phantom', `delivery of ${del.id} with a payload nobody pushed${owner === undefined ? '' : ` (id ${del.id} was given to ${JSON.stringify(owner.payload)})`}: ${d(i)}`);
        return;
      }
      if (m.id === null) {
        if (!claimId(m, del.id, d(i))) return;
        m.id = del.id;
      } else if (m.id !== del.id) {
        const owner = byId.get(del.id);
        if (owner !== undefined && owner !== m) v('phantom', `delivery of ${del.id} carries ${JSON.stringify(del.payload)}, but ${del.id} is the id of ${JSON.stringify(owner.payload)}: ${d(i)}`);
        else v('dedup', `message ${JSON.stringify(m.payload)} (id ${m.id}) delivered again under a second id ${del.id}: a second copy was added: ${d(i)}`);
        return;
      }
      if (inThisPop.has(m)) v('count', `one pop delivered ${del.id} twice: ${d(i)}`);
      inThisPop.add(m);
      m.obs.push({ op: i, sentAt: op.sentAt, doneAt: op.doneAt, count: del.deliveries, pos, visibilityMs: op.visibilityMs });
    });
  });

  // --- Acks, nacks, extends.
  ops.forEach((op, i) => {
    if (!good[i]) return;
    if (op.kind === 'ack') {
      const r = op.result;
      if (r === 0) return;
      const certain = typeof r === 'number' && r === new Set(op.ids).size;
      for (const id of new Set(op.ids)) {
        const m = byId.get(id);
        if (m === undefined) continue; // an id nobody was given is simply not acked (ack 0 for it)
        m.acks.push({ op: i, sentAt: op.sentAt, doneAt: op.doneAt, certain });
      }
    } else if (op.kind === 'nack' || op.kind === 'extend') {
      if (op.kind === 'nack' && op.result === 1) stats.nacks++;
      const m = byId.get(op.id);
      if (m !== undefined) m.moves.push({ op: i, sentAt: op.sentAt, doneAt: op.doneAt, kind: op.kind, result: op.result });
    }
  });

  // --- Dead letters of the final state.
  if (final !== undefined) {
    const seen = new Set<string>();
    for (const dl of final.deadLetters) {
      stats.dead++;
      if (seen.has(dl.id)) {
        v('dead', `dead letter ${dl.id} listed twice`);
        continue;
      }
      seen.add(dl.id);
      const m = byPayload.get(dl.payload);
      const owner = byId.get(dl.id);
      if (m === undefined) {
        v('phantom', `dead letter ${dl.id} has a payload nobody pushed${owner === undefined ? '' : ` (id ${dl.id} was given to ${JSON.stringify(owner.payload)})`}`);
        continue;
      }
      if (m.id === null) {
        if (!claimId(m, dl.id, `dead letter ${dl.id}`)) continue;
        m.id = dl.id;
      } else if (m.id !== dl.id) {
        if (owner !== undefined && owner !== m) v('phantom', `dead letter ${dl.id} carries ${JSON.stringify(dl.payload)}, but ${dl.id} is the id of ${JSON.stringify(owner.payload)}`);
        else v('dedup', `message ${JSON.stringify(m.payload)} (id ${m.id}) is also dead letter ${dl.id}: a second copy was added`);
        continue;
      }
      m.dead = dl;
      if (dl.deliveries !== maxDeliver) v('dead', `dead letter ${dl.id} had ${dl.deliveries} deliveries, not maxDeliver ${maxDeliver}`);
      if (dl.reason !== 'maxdeliver') v('dead', `dead letter ${dl.id} has reason ${JSON.stringify(dl.reason)}, not maxdeliver`);
    }
  }

  // --- Per message: 2, 3, 4, 5, 7.
  const msgs = [...byPayload.values()];
  for (const m of msgs) {
    const name = `${m.id ?? '(no id)'} ${JSON.stringify(m.payload)}`;
    if (m.pushAckOp < 0 && (m.obs.length > 0 || m.dead !== null)) stats.unknownLanded++;
    const certainAcks = m.acks.filter((a) => a.certain);
    if (certainAcks.length > 0) stats.acked++;
    else if (m.acks.length > 0) stats.ackUncertain++;

    // 2. At least once.
    if (m.pushAckOp >= 0 && m.obs.length === 0 && m.dead === null) {
      v('lost', `message ${name} was pushed (${d(m.pushAckOp)}) but never delivered${final === undefined ? '' : ' nor dead'}`);
    }

    // 3. Acked is final.
    if (certainAcks.length > 0) {
      const ack = certainAcks.reduce((a, b) => (b.doneAt < a.doneAt ? b : a));
      for (const o of m.obs) {
        if (o.sentAt > ack.doneAt) v('acked-returned', `message ${name} delivered again (${d(o.op)}) after ${d(ack.op)}`);
      }
      if (m.dead !== null) v('acked-returned', `message ${name} is a dead letter after ${d(ack.op)}`);
    }

    // 4. Delivery counts.
    const obs = [...m.obs].sort((a, b) => a.sentAt - b.sentAt || a.doneAt - b.doneAt);
    for (const o of obs) {
      if (o.count < 1 || o.count > maxDeliver) v('count', `message ${name} delivered with count ${o.count}, outside 1..maxDeliver ${maxDeliver}: ${d(o.op)}`);
    }
    for (let x = 0; x < obs.length; x++) {
      for (let y = x + 1; y < obs.length; y++) {
        const a = obs[x]!;
        const b = obs[y]!;
        if (a.count === b.count) v('count', `message ${name} delivered twice with count ${a.count}: ${d(a.op)} and ${d(b.op)}`);
        else if (a.doneAt < b.sentAt && a.count > b.count) v('count', `message ${name}: count ${a.count} (${d(a.op)}) then count ${b.count} (${d(b.op)})`);
      }
    }

    // 5. Visibility.
    if (slack !== undefined) {
      for (const a of obs) {
        if (a.visibilityMs === null) continue;
        for (const b of obs) {
          if (b.count <= a.count || b.doneAt < a.sentAt) continue;
          const moved = m.moves.some((mv) => mv.sentAt < b.doneAt && mv.doneAt > a.sentAt);
          if (moved) continue;
          stats.visibilityChecked++;
          if (b.doneAt < a.sentAt + a.visibilityMs - slack) {
            v('visibility', `message ${name} redelivered ${fmtTime(b.doneAt - a.sentAt)} ms after a delivery with visibility ${a.visibilityMs} ms and no nack/extend: ${d(a.op)} then ${d(b.op)}`);
          }
        }
      }
    }

    // 7. Must be dead: observed at its last allowed delivery and never possibly acked after that.
    if (final !== undefined && m.dead === null && final.inflight === 0) {
      const last = obs.filter((o) => o.count === maxDeliver);
      for (const o of last) {
        if (m.acks.some((a) => a.doneAt > o.sentAt)) continue;
        v('dead', `message ${name} was delivered for the maxDeliver-th time (${d(o.op)}) and never acked, but it is not a dead letter`);
      }
    }
  }

  // --- 6. Per-key FIFO of first deliveries.
  const groups = new Map<string, Msg[]>();
  for (const m of msgs) {
    if (m.key === null || m.pushAckOp < 0) continue;
    const k = `${m.producer.length}:${m.producer}\u0000${m.key}`;
    let g = groups.get(k);
    if (g === undefined) groups.set(k, (g = []));
    g.push(m);
  }
  const firstObs = (m: Msg): Obs | undefined => m.obs.find((o) => o.count === 1);
  const before = (a: Msg, b: Msg): boolean => a.pushAckedAt < b.firstSentAt;
  const orderKey = new Map<Msg, string>();
  for (const [k, g] of groups) {
    for (const m of g) orderKey.set(m, k);
    g.sort((a, b) => a.pushAckedAt - b.pushAckedAt);
    // prefix[j] = the member of g[0..j] whose first delivery's pop was sent last.
    const prefix: (Msg | null)[] = [];
    let best: Msg | null = null;
    for (const m of g) {
      const f = firstObs(m);
      if (f !== undefined && (best === null || f.sentAt > firstObs(best)!.sentAt)) best = m;
      prefix.push(best);
    }
    for (const b of g) {
      const fb = firstObs(b);
      if (fb === undefined) continue;
      const n = lowerBound(g, b.firstSentAt, (m) => m.pushAckedAt);
      if (n === 0) continue;
      const a = prefix[n - 1];
      if (a === null || a === undefined) continue;
      stats.orderChecked++;
      const fa = firstObs(a)!;
      if (fa.sentAt > fb.doneAt) {
        v('order', `key ${b.key} of ${b.producer}: ${JSON.stringify(a.payload)} (push ${d(a.pushAckOp)}) was pushed before ${JSON.stringify(b.payload)} (first sent ${fmtTime(b.firstSentAt)}) but first-delivered after it: ${d(fb.op)} completed before ${d(fa.op)} was sent`);
      }
    }
  }
  // Same pop: reply order must follow push order.
  ops.forEach((op, i) => {
    if (!good[i] || op.kind !== 'pop' || !Array.isArray(op.result)) return;
    const firsts: Msg[] = [];
    for (const del of op.result) {
      const m = byId.get(del.id);
      if (del.deliveries === 1 && m !== undefined && m.payload === del.payload && orderKey.has(m)) firsts.push(m);
    }
    for (let x = 0; x < firsts.length; x++) {
      for (let y = x + 1; y < firsts.length; y++) {
        const b = firsts[x]!;
        const a = firsts[y]!;
        if (orderKey.get(a) === orderKey.get(b) && before(a, b)) {
          v('order', `key ${b.key} of ${b.producer}: ${JSON.stringify(a.payload)} was pushed before ${JSON.stringify(b.payload)} but comes after it in one pop reply: ${d(i)}`);
        }
      }
    }
  });

  // --- 8. Reconcile with the final counts.
  if (final !== undefined) {
    if (final.dead !== final.deadLetters.length) v('reconcile', `Q.INFO dead ${final.dead} but Q.DEAD listed ${final.deadLetters.length} dead letters`);
    const remaining = final.ready + final.inflight + final.delayed;
    let known = 0;
    let acked = 0;
    let uncertain = 0;
    let unknownPushes = 0;
    const lost: string[] = [];
    for (const m of msgs) {
      if (m.id === null) {
        unknownPushes++;
        continue;
      }
      known++;
      const isAcked = m.acks.some((a) => a.certain);
      if (isAcked) acked++;
      else if (m.acks.length > 0) uncertain++;
      else if (m.dead === null && remaining === 0) lost.push(`${m.id} ${JSON.stringify(m.payload)}`);
    }
    for (const x of lost.slice(0, 20)) v('lost', `message ${x} is neither acked nor dead, and the queue is empty`);
    if (lost.length > 20) v('lost', `... and ${lost.length - 20} more messages neither acked nor dead`);
    // server messages T in [known, known + unknownPushes]; T = ackedOnServer + remaining + dead, ackedOnServer in [acked, acked + uncertain].
    const lo = known - remaining - final.dead;
    const hi = known + unknownPushes - remaining - final.dead;
    if (hi < acked || lo > acked + uncertain) {
      v('reconcile', `counts do not add up: ${known} known messages (+ up to ${unknownPushes} unknown pushes) != acked [${acked}, ${acked + uncertain}] + ready ${final.ready} + inflight ${final.inflight} + delayed ${final.delayed} + dead ${final.dead}`);
    }
  }

  const kept = violations.length > VIOLATIONS_MAX ? [...violations.slice(0, VIOLATIONS_MAX), `... and ${violations.length - VIOLATIONS_MAX} more violations`] : violations;
  return { ok: violations.length === 0, violations: kept, stats };
}
