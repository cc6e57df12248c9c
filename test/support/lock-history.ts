/**
 * Test support: a recorder and a pure checker for client histories of distributed lock operations
 * (LOCK.ACQUIRE / LOCK.RELEASE / LOCK.RENEW), as an end-to-end test records them while it kills nodes.
 *
 * Owns: `LockHistory` (an append-only list of completed operations, each with the send and completion times the
 * client read from ONE monotonic clock, performance.now()-style ms), and `checkLockHistory`, which proves from such a
 * history alone:
 *   1. Mutual exclusion by lease time: the CONFIRMED holding intervals of different grants on one name never overlap
 *      when at least one of them is exclusive (X). Shared (S) grants may overlap (their maximum concurrency is a stat).
 *   2. Fencing tokens: a lease granted (first acquire completed) before another lease of the same name could have
 *      been created (its acquires, or an errored acquire that may have created it, were sent) has the smaller
 *      token; one token never goes to two owners; a token never comes back after its lease provably ended. (Per
 *      lease, not per acquire: a holder's re-acquire legitimately returns its older token after newer S grants.)
 *   3. Well-formedness: every operation has a known result and doneAt >= sentAt.
 *   4. Every release/renew that returned 1 is explained by some acquire of that owner on that name.
 * Error results (-TRYAGAIN, -NOQUORUM, ...) have unknown outcomes: they are allowed, counted, and never used as proof.
 *
 * Definitions ("a before b" means a + clockSlackMs <= b: real-time order, leniently):
 * - A lease is the set of acquires on one name that returned one token to one owner (the first grant and the
 *   re-acquires that returned the same token). Its confirmed interval is [start, end]: start = the earliest doneAt of
 *   its acquires (the server granted it no later than that), end = the latest sentAt of a proof that the server
 *   still held it (applied no earlier than sent): a re-acquire that returned the same token, or a release/renew by
 *   the owner that returned 1 and is attributed to this lease. The interval is confirmed only if end > start. The
 *   lease is X from the earliest doneAt of an acquire of it in mode X (an upgrade), S before that.
 * - Attribution of a release/renew r that returned 1: a release with TOKEN t belongs to the owner's lease with token
 *   t. A release without token, or a renew, belongs to the lease the owner held when r was applied: the only
 *   candidate among the owner's leases on that name that may have begun before r was applied (some acquire of it
 *   sent before r completed) and had not provably ended before r was sent. An acquire of that owner on that name
 *   that errored is also a candidate (it may have produced a grant nobody learned of), unless a later acquire of the
 *   owner, sent after it completed, returned a token before r was sent (the server hands the retry the grant it may
 *   have produced, or that grant ended). r is used only when exactly one candidate remains and it is a known lease;
 *   with no candidate at all, r is reported (the server said the owner held a lock it could not hold).
 * - Errored acquires: their effect, if any, is applied before a later acquire of the same owner and name sent after
 *   the error came back (Raft order; the edge hands such a retry the grant or waiter the errored request produced).
 *   A history where an errored request took effect after such a retry may be reported falsely.
 * - A lease provably ended by the completion of an op of its owner on its name sent after the lease began: a release
 *   without token (1 or 0), a release with its token (1 or 0), a release with another token that returned 1, a renew
 *   that returned 0, or an acquire that returned another token. This relies on the server keeping at most one grant
 *   per owner and name (a holder's re-acquire, in either mode, returns its token).
 *
 * Invariants: the checker is pure (no clock, no I/O) and deterministic; for histories of sequential clients it runs
 * in about O(n log n + leases x errored acquires per owner and name) (each lease's search stops at its first proof). Nothing it reports as a violation can
 * happen under the assumptions above; the converse is not claimed (intervals are lower bounds of the real leases).
 * At most VIOLATIONS_MAX messages are kept (the count of the rest is appended). A LockHistory holds at most
 * HISTORY_OPS_MAX operations.
 */

export type AcquireResult =
  | { t: 'granted'; token: number }
  | { t: 'nil' }
  | { t: 'deadlock'; message: string }
  | { t: 'error'; message: string };

export type AcquireOp = {
  kind: 'acquire';
  client: string;
  owner: string;
  name: string;
  mode: 'X' | 'S';
  ttlMs: number;
  waitMs: number;
  sentAt: number;
  doneAt: number;
  result: AcquireResult;
};

export type ReleaseOp = {
  kind: 'release';
  client: string;
  owner: string;
  name: string;
  token: number | null;
  sentAt: number;
  doneAt: number;
  result: 0 | 1 | { error: string };
};

export type RenewOp = {
  kind: 'renew';
  client: string;
  owner: string;
  name: string;
  ttlMs: number;
  sentAt: number;
  doneAt: number;
  result: 0 | 1 | { error: string };
};

export type LockOp = AcquireOp | ReleaseOp | RenewOp;

/** Most operations one LockHistory keeps (a bound on the test's memory, far above what a test records). */
export const HISTORY_OPS_MAX = 2_000_000;
/** Most violation messages a report lists; the number of further ones is appended as one more line. */
export const VIOLATIONS_MAX = 100;

/** An append-only history of completed lock operations, in the order the test recorded them. */
export class LockHistory {
  readonly #ops: LockOp[] = [];

  record(op: LockOp): void {
    if (this.#ops.length >= HISTORY_OPS_MAX) throw new RangeError(`LockHistory: more than ${HISTORY_OPS_MAX} operations`);
    this.#ops.push(op);
  }

  get ops(): readonly LockOp[] {
    return this.#ops;
  }
}

export interface CheckOptions {
  /** How much two times on the client clock may be off and still be taken as ordered (ms, default 0). */
  clockSlackMs?: number;
}

export interface CheckStats {
  /** Acquires that returned a token (first grants and re-acquires). */
  grants: number;
  /** Distinct (name, token, owner): what the grants amount to. */
  leases: number;
  /** Leases with a non-empty confirmed interval (the ones mutual exclusion was checked on). */
  confirmed: number;
  /** Releases that returned 1. */
  releases: number;
  /** Renews that returned 0 (the lease had been lost). */
  lost: number;
  /** Acquires that returned nil (not granted within WAIT). */
  nil: number;
  /** Acquires refused with -DEADLOCK. */
  deadlocks: number;
  /** Operations that returned another error: outcome unknown. */
  unknown: number;
  /** Most S leases of one name whose confirmed intervals overlapped at one instant. */
  maxConcurrentShared: number;
  /** Leases whose owner sent no release or renew for that name after the lease's last grant (left to expire). */
  unreleased: number;
}

export interface CheckReport {
  ok: boolean;
  violations: string[];
  stats: CheckStats;
}

/** A lease's confirmed interval, as the checker proved it (ops are indexes into the checked history). */
export interface LeaseInterval {
  name: string;
  owner: string;
  token: number;
  /** 'X' if any acquire of the lease asked for X. */
  mode: 'X' | 'S';
  start: number;
  end: number;
  /** When the lease provably was X (the earliest doneAt of an X acquire of it), or null if it never was. */
  xStart: number | null;
  /** The acquire whose doneAt is `start`. */
  grantOp: number;
  /** The op whose sentAt is `end`. */
  confirmOp: number;
}

interface Entry<T extends LockOp = LockOp> {
  i: number;
  op: T;
}

interface Lease {
  name: string;
  owner: string;
  token: number;
  /** Acquires that returned this token to this owner, by sentAt. */
  members: Entry<AcquireOp>[];
  minSentAt: number;
  start: number;
  startOp: number;
  xStart: number | null;
  end: number;
  endOp: number;
  /** Completion time of the earliest proof that the lease ended (Infinity if none) and that proof's op. */
  endedBy: number;
  endedOp: number;
  /** The server created the lease no earlier than this: the sentAt of an acquire that may have created it, and that op. */
  createdAfter: number;
  createdAfterOp: number;
}

interface Analysis {
  violations: string[];
  stats: CheckStats;
  intervals: LeaseInterval[];
}

function fmtTime(x: number): string {
  return Number.isFinite(x) ? String(Math.round(x * 1000) / 1000) : String(x);
}

/** A one-line description of op number i, for violation messages. */
export function describeOp(i: number, op: LockOp): string {
  let what: string;
  switch (op.kind) {
    case 'acquire': {
      const r = op.result;
      const res = r.t === 'granted' ? `token ${r.token}` : r.t === 'nil' ? 'nil' : r.t === 'deadlock' ? `DEADLOCK ${r.message}` : `error ${r.message}`;
      what = `ACQUIRE ${JSON.stringify(op.name)} ${op.mode} ttl=${op.ttlMs} wait=${op.waitMs} -> ${res}`;
      break;
    }
    case 'release':
      what = `RELEASE ${JSON.stringify(op.name)}${op.token === null ? '' : ` TOKEN ${op.token}`} -> ${resultText(op.result)}`;
      break;
    case 'renew':
      what = `RENEW ${JSON.stringify(op.name)} ttl=${op.ttlMs} -> ${resultText(op.result)}`;
      break;
  }
  return `#${i} ${what} by owner ${op.owner} (client ${op.client}) [sent ${fmtTime(op.sentAt)}, done ${fmtTime(op.doneAt)}]`;
}

function resultText(r: 0 | 1 | { error: string }): string {
  return typeof r === 'number' ? String(r) : `error ${r.error}`;
}

function isTime(x: unknown): x is number {
  return typeof x === 'number' && Number.isFinite(x);
}

/** Why op is malformed, or null if it is well formed. */
function malformed(op: LockOp): string | null {
  if (op === null || typeof op !== 'object') return 'not an object';
  const o = op as unknown as Record<string, unknown>;
  if (typeof o.owner !== 'string' || typeof o.name !== 'string' || typeof o.client !== 'string') return 'client, owner and name must be strings';
  if (!isTime(o.sentAt) || !isTime(o.doneAt)) return 'sentAt and doneAt must be finite numbers';
  if ((o.doneAt as number) < (o.sentAt as number)) return 'doneAt is before sentAt';
  const r = o.result as unknown;
  if (op.kind === 'acquire') {
    if (o.mode !== 'X' && o.mode !== 'S') return 'mode must be X or S';
    if (r === undefined || r === null || typeof r !== 'object') return 'the acquire has no result (its waiter never settled)';
    const t = (r as { t?: unknown }).t;
    if (t === 'granted') {
      const token = (r as { token?: unknown }).token;
      if (typeof token !== 'number' || !Number.isSafeInteger(token) || token < 0) return 'a granted token must be a non-negative integer';
    } else if (t === 'deadlock' || t === 'error') {
      if (typeof (r as { message?: unknown }).message !== 'string') return 'an error result needs a message';
    } else if (t !== 'nil') return `unknown acquire result ${JSON.stringify(t)}`;
    return null;
  }
  if (op.kind === 'release' || op.kind === 'renew') {
    if (op.kind === 'release' && o.token !== null && !(typeof o.token === 'number' && Number.isSafeInteger(o.token))) return 'a release token must be an integer or null';
    if (r === 0 || r === 1) return null;
    if (r !== null && typeof r === 'object' && typeof (r as { error?: unknown }).error === 'string') return null;
    return `unknown ${op.kind} result ${JSON.stringify(r)}`;
  }
  return `unknown op kind ${JSON.stringify(o.kind)}`;
}

function pairKey(owner: string, name: string): string {
  return `${owner.length}:${owner}\u0000${name}`;
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

function analyze(ops: readonly LockOp[], opts: CheckOptions): Analysis {
  const slack = opts.clockSlackMs ?? 0;
  if (!(slack >= 0) || !Number.isFinite(slack)) throw new RangeError(`clockSlackMs must be a finite number >= 0, got ${slack}`);
  const violations: string[] = [];
  const stats: CheckStats = { grants: 0, leases: 0, confirmed: 0, releases: 0, lost: 0, nil: 0, deadlocks: 0, unknown: 0, maxConcurrentShared: 0, unreleased: 0 };
  const d = (i: number): string => describeOp(i, ops[i]!);

  // --- Well-formedness and counts; group the valid ops by (owner, name) and by name.
  const byPair = new Map<string, Entry[]>();
  const grantsByName = new Map<string, Entry<AcquireOp>[]>();
  ops.forEach((op, i) => {
    const why = malformed(op);
    if (why !== null) {
      let text: string;
      try {
        text = d(i);
      } catch {
        text = `#${i} ${JSON.stringify(op)}`;
      }
      violations.push(`malformed op: ${text}: ${why}`);
      return;
    }
    if (op.kind === 'acquire') {
      const r = op.result;
      if (r.t === 'granted') {
        stats.grants++;
        let g = grantsByName.get(op.name);
        if (g === undefined) grantsByName.set(op.name, (g = []));
        g.push({ i, op });
      } else if (r.t === 'nil') stats.nil++;
      else if (r.t === 'deadlock') stats.deadlocks++;
      else stats.unknown++;
    } else if (typeof op.result !== 'number') stats.unknown++;
    else if (op.kind === 'release' && op.result === 1) stats.releases++;
    else if (op.kind === 'renew' && op.result === 0) stats.lost++;
    const k = pairKey(op.owner, op.name);
    let list = byPair.get(k);
    if (list === undefined) byPair.set(k, (list = []));
    list.push({ i, op });
  });

  // --- Leases: (name, token, owner). One token going to two owners of one name is a violation right away.
  const leaseByKey = new Map<string, Lease>();
  const leasesByPair = new Map<string, Lease[]>();
  const leaseKey = (name: string, token: number, owner: string): string => `${name.length}:${name}\u0000${token}\u0000${owner}`;
  for (const [name, grants] of grantsByName) {
    const firstByToken = new Map<number, Map<string, number>>();
    for (const { i, op } of grants) {
      const token = (op.result as { token: number }).token;
      let owners = firstByToken.get(token);
      if (owners === undefined) firstByToken.set(token, (owners = new Map()));
      if (!owners.has(op.owner)) owners.set(op.owner, i);
      const k = leaseKey(name, token, op.owner);
      let lease = leaseByKey.get(k);
      if (lease === undefined) {
        lease = { name, owner: op.owner, token, members: [], minSentAt: Infinity, start: Infinity, startOp: -1, xStart: null, end: -Infinity, endOp: -1, endedBy: Infinity, endedOp: -1, createdAfter: Infinity, createdAfterOp: -1 };
        leaseByKey.set(k, lease);
        const pk = pairKey(op.owner, name);
        let pl = leasesByPair.get(pk);
        if (pl === undefined) leasesByPair.set(pk, (pl = []));
        pl.push(lease);
      }
      lease.members.push({ i, op });
      lease.minSentAt = Math.min(lease.minSentAt, op.sentAt);
      if (op.doneAt < lease.start) {
        lease.start = op.doneAt;
        lease.startOp = i;
      }
      if (op.mode === 'X' && (lease.xStart === null || op.doneAt < lease.xStart)) lease.xStart = op.doneAt;
    }
    for (const [token, owners] of firstByToken) {
      if (owners.size > 1) {
        const list = [...owners.values()].map(d).join('; ');
        violations.push(`token ${token} of ${JSON.stringify(name)} was granted to ${owners.size} different owners: ${list}`);
      }
    }
  }
  stats.leases = leaseByKey.size;
  const confirm = (lease: Lease, at: number, i: number): void => {
    if (at > lease.end) {
      lease.end = at;
      lease.endOp = i;
    }
  };
  for (const lease of leaseByKey.values()) {
    lease.members.sort((a, b) => a.op.sentAt - b.op.sentAt || a.i - b.i);
    // A re-acquire that returned the same token proves the lease was held when it was applied (after its sentAt).
    for (const m of lease.members) confirm(lease, m.op.sentAt, m.i);
  }

  // --- Per (owner, name): end proofs of each lease, then attribution of every release/renew that returned 1.
  for (const [pk, pairOps] of byPair) {
    pairOps.sort((a, b) => a.op.sentAt - b.op.sentAt || a.i - b.i);
    const leases = leasesByPair.get(pk) ?? [];
    const grantedMembers = pairOps.filter((e): e is Entry<AcquireOp> => e.op.kind === 'acquire' && e.op.result.t === 'granted');

    // endedBy: the earliest completion of an op that proves the lease over, among ops sent after it began.
    for (const lease of leases) {
      const from = lowerBound(pairOps, lease.start + slack, (e) => e.op.sentAt);
      for (let j = from; j < pairOps.length; j++) {
        const { i, op } = pairOps[j]!;
        if (op.sentAt >= lease.endedBy) break; // nothing sent later can complete earlier
        if (endsLease(op, lease.token) && op.doneAt < lease.endedBy) {
          lease.endedBy = op.doneAt;
          lease.endedOp = i;
        }
      }
      // A token that comes back after its grant provably ended was given to two different grants.
      for (const m of lease.members) {
        if (lease.endedBy + slack <= m.op.sentAt) {
          violations.push(`token ${lease.token} of ${JSON.stringify(lease.name)} came back after its grant ended: ${d(m.i)} was sent after ${d(lease.endedOp)} completed (the grant was ${d(lease.startOp)})`);
          break;
        }
      }
    }

    // Errored acquires: possible grants nobody learned of, until a later acquire of this owner returned a token.
    const errored = pairOps.filter((e) => e.op.kind === 'acquire' && e.op.result.t === 'error');
    const supersededAt = errored.map(({ op }) => {
      let best = Infinity;
      const from = lowerBound(grantedMembers, op.doneAt + slack, (e) => e.op.sentAt);
      for (let j = from; j < grantedMembers.length; j++) {
        const m = grantedMembers[j]!;
        if (m.op.sentAt >= best) break;
        best = Math.min(best, m.op.doneAt);
      }
      return best;
    });
    const erroredMaxSuperseded = prefixMax(supersededAt);

    // createdAfter: the earliest sentAt of an acquire that may have created the lease: its own acquires, or an
    // errored one of the owner that no acquire of another lease took over before this lease's first acquire was sent.
    // An errored acquire e is taken over by any acquire of another lease sent after e completed and completed
    // before this lease's first acquire was sent: so with M the latest sentAt of such an acquire, e may be the
    // creator iff e.doneAt + slack > M. The first such e (by sentAt) is found by bisecting the prefix max of doneAt.
    const membersByDone = [...grantedMembers].sort((a, b) => a.op.doneAt - b.op.doneAt);
    const latestSent = topTwoByToken(membersByDone);
    const erroredMaxDone = prefixMax(errored.map((e) => e.op.doneAt));
    for (const lease of leases) {
      const first = lease.members[0]!;
      lease.createdAfter = first.op.sentAt;
      lease.createdAfterOp = first.i;
      const limit = lowerBound(errored, lease.minSentAt, (e) => e.op.sentAt);
      if (limit === 0) continue;
      const k = lowerBound(membersByDone, lease.minSentAt - slack, (m) => m.op.doneAt); // members before: [0, k)
      const m = k === 0 ? -Infinity : pickOther(latestSent[k - 1]!, lease.token);
      const j = lowerBound(erroredMaxDone, m - slack, (x) => x); // first with max doneAt >= m - slack
      let jj = j;
      while (jj < limit && !(erroredMaxDone[jj]! + slack > m)) jj++; // step past equality (> not >=)
      if (jj < limit) {
        lease.createdAfter = errored[jj]!.op.sentAt;
        lease.createdAfterOp = errored[jj]!.i;
      }
    }

    const leasesBySent = [...leases].sort((a, b) => a.minSentAt - b.minSentAt);
    const leasesMaxEnded = prefixMax(leasesBySent.map((l) => l.endedBy));

    for (const { i, op } of pairOps) {
      if (op.kind === 'acquire' || op.result !== 1) continue;
      // Could errored acquire e have produced the grant r found? Yes unless r completed before e was sent, or a
      // later acquire of the owner took that grant over (returned a token) before r was sent.
      let erroredCandidate = false;
      for (let j = lowerBound(errored, op.doneAt + slack, (e) => e.op.sentAt) - 1; j >= 0; j--) {
        if (erroredMaxSuperseded[j]! + slack <= op.sentAt) break;
        if (supersededAt[j]! + slack > op.sentAt) {
          erroredCandidate = true;
          break;
        }
      }
      if (op.kind === 'release' && op.token !== null) {
        const lease = leaseByKey.get(leaseKey(op.name, op.token, op.owner));
        if (lease !== undefined) {
          if (lease.endedBy + slack <= op.sentAt) {
            violations.push(`release with token ${op.token} returned 1 after its grant ended: ${d(i)} was sent after ${d(lease.endedOp)} completed (the grant was ${d(lease.startOp)})`);
          } else confirm(lease, op.sentAt, i);
          continue;
        }
        const other = (grantsByName.get(op.name) ?? []).find((g) => (g.op.result as { token: number }).token === op.token);
        if (other !== undefined) {
          violations.push(`release returned 1 for a token granted to another owner: ${d(i)}; the token was granted by ${d(other.i)}`);
          continue;
        }
        if (!erroredCandidate) violations.push(`release returned 1 for a token its owner was never granted and no errored acquire can explain: ${d(i)}`);
        continue;
      }
      // A release without token, or a renew: which of the owner's leases did the server find?
      const candidates: Lease[] = [];
      for (let j = lowerBound(leasesBySent, op.doneAt + slack, (l) => l.minSentAt) - 1; j >= 0 && candidates.length < 2; j--) {
        if (leasesMaxEnded[j]! + slack <= op.sentAt) break;
        const l = leasesBySent[j]!;
        if (l.endedBy + slack > op.sentAt) candidates.push(l);
      }
      if (candidates.length === 1 && !erroredCandidate) confirm(candidates[0]!, op.sentAt, i);
      else if (candidates.length === 0 && !erroredCandidate) {
        const last = leasesBySent.filter((l) => l.minSentAt < op.doneAt + slack).at(-1);
        const why = last === undefined ? 'no acquire of that owner on that name was sent before it completed' : `the owner's last grant ${d(last.startOp)} had ended (${d(last.endedOp)})`;
        violations.push(`${op.kind} returned 1 but the owner could hold nothing: ${d(i)}; ${why}`);
      }
    }
  }

  // --- Confirmed intervals; mutual exclusion per name.
  const intervals: LeaseInterval[] = [];
  const confirmedByName = new Map<string, Lease[]>();
  for (const lease of leaseByKey.values()) {
    if (!(lease.end > lease.start)) continue;
    stats.confirmed++;
    let list = confirmedByName.get(lease.name);
    if (list === undefined) confirmedByName.set(lease.name, (list = []));
    list.push(lease);
    intervals.push({
      name: lease.name,
      owner: lease.owner,
      token: lease.token,
      mode: lease.xStart === null ? 'S' : 'X',
      start: lease.start,
      end: lease.end,
      xStart: lease.xStart,
      grantOp: lease.startOp,
      confirmOp: lease.endOp,
    });
  }
  const overlap = (a0: number, a1: number, b0: number, b1: number): number => Math.min(a1, b1) - Math.max(a0, b0);
  for (const [name, list] of confirmedByName) {
    list.sort((a, b) => a.start - b.start || a.token - b.token);
    let active: Lease[] = [];
    for (const l of list) {
      active = active.filter((a) => a.end - l.start > slack);
      for (const a of active) {
        // The X part of one lease against the whole of the other, both ways.
        const ax = a.xStart === null ? -Infinity : overlap(Math.max(a.start, a.xStart), a.end, l.start, l.end);
        const lx = l.xStart === null ? -Infinity : overlap(Math.max(l.start, l.xStart), l.end, a.start, a.end);
        const by = Math.max(ax, lx);
        if (by > slack) {
          const kinds = `${a.xStart === null ? 'S' : 'X'}/${l.xStart === null ? 'S' : 'X'}`;
          violations.push(
            `mutual exclusion (${kinds}) on ${JSON.stringify(name)}: confirmed holdings overlap by ${fmtTime(by)} ms: ` +
              `token ${a.token} held by ${a.owner} over [${fmtTime(a.start)}, ${fmtTime(a.end)}] (${d(a.startOp)} .. ${d(a.endOp)}) and ` +
              `token ${l.token} held by ${l.owner} over [${fmtTime(l.start)}, ${fmtTime(l.end)}] (${d(l.startOp)} .. ${d(l.endOp)})`,
          );
        }
      }
      active.push(l);
    }
    // Shared concurrency: the S part of each lease ([start, xStart) or all of it).
    const events: [number, number][] = [];
    for (const l of list) {
      const sEnd = l.xStart === null ? l.end : Math.min(l.end, l.xStart);
      if (sEnd > l.start) events.push([l.start, 1], [sEnd, -1]);
    }
    events.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let cur = 0;
    for (const [, delta] of events) {
      cur += delta;
      stats.maxConcurrentShared = Math.max(stats.maxConcurrentShared, cur);
    }
  }

  // --- Token order respects real time, per name: a lease created (granted no later than its first doneAt) before
  // another lease could have been created has the smaller token. Re-acquires return older tokens legitimately, so
  // the order is between leases, each created somewhere in [createdAfter, start].
  const leasesByName = new Map<string, Lease[]>();
  for (const lease of leaseByKey.values()) {
    let list = leasesByName.get(lease.name);
    if (list === undefined) leasesByName.set(lease.name, (list = []));
    list.push(lease);
  }
  for (const [name, list] of leasesByName) {
    const byStart = [...list].sort((a, b) => a.start - b.start);
    const byCreatedAfter = [...list].sort((a, b) => a.createdAfter - b.createdAfter);
    let p = 0;
    let max: Lease | null = null;
    for (const b of byCreatedAfter) {
      while (p < byStart.length && byStart[p]!.start + slack <= b.createdAfter) {
        const a = byStart[p++]!;
        if (max === null || a.token > max.token) max = a;
      }
      if (max !== null && max.token > b.token) {
        violations.push(
          `token order on ${JSON.stringify(name)}: token ${b.token} was created after ${d(b.createdAfterOp)} was sent (granted by ${d(b.startOp)}), ` +
            `although the larger token ${max.token} had already been granted by ${d(max.startOp)}`,
        );
      }
    }
  }

  // --- Leases left to expire (statistic only).
  for (const [pk, leases] of leasesByPair) {
    let lastSettle = -Infinity;
    for (const e of byPair.get(pk) ?? []) if (e.op.kind !== 'acquire') lastSettle = Math.max(lastSettle, e.op.sentAt);
    for (const lease of leases) {
      let lastGrant = -Infinity;
      for (const m of lease.members) lastGrant = Math.max(lastGrant, m.op.doneAt);
      if (lastSettle < lastGrant) stats.unreleased++;
    }
  }

  return { violations, stats, intervals };
}

/** Does `op` (an op of the lease's owner on its name, sent after the lease began) prove the lease with `token` over? */
function endsLease(op: LockOp, token: number): boolean {
  switch (op.kind) {
    case 'acquire':
      return op.result.t === 'granted' && op.result.token !== token;
    case 'release':
      if (typeof op.result !== 'number') return false;
      return op.token === null || op.token === token || op.result === 1;
    case 'renew':
      return op.result === 0;
  }
}

/** Per prefix of members (sorted by doneAt): the largest sentAt, and the largest among other tokens than that one's. */
type TopTwo = { sent: number; token: number; otherSent: number };
function topTwoByToken(members: readonly Entry<AcquireOp>[]): TopTwo[] {
  const out: TopTwo[] = [];
  let cur: TopTwo = { sent: -Infinity, token: NaN, otherSent: -Infinity };
  for (const { op } of members) {
    const token = (op.result as { token: number }).token;
    const sent = op.sentAt;
    if (token === cur.token) cur = { ...cur, sent: Math.max(cur.sent, sent) };
    else if (sent > cur.sent) cur = { sent, token, otherSent: cur.sent };
    else cur = { ...cur, otherSent: Math.max(cur.otherSent, sent) };
    out.push(cur);
  }
  return out;
}

/** The largest sentAt of a member whose token is not `token`. */
function pickOther(t: TopTwo, token: number): number {
  return t.token === token ? t.otherSent : t.sent;
}

function prefixMax(xs: readonly number[]): number[] {
  const out: number[] = [];
  let m = -Infinity;
  for (const x of xs) out.push((m = Math.max(m, x)));
  return out;
}

/** Check a recorded history (see the file header for what is proven and what is assumed). */
export function checkLockHistory(ops: readonly LockOp[], opts: CheckOptions = {}): CheckReport {
  const { violations, stats } = analyze(ops, opts);
  const kept = violations.length > VIOLATIONS_MAX ? [...violations.slice(0, VIOLATIONS_MAX), `... and ${violations.length - VIOLATIONS_MAX} more violations`] : violations;
  return { ok: violations.length === 0, violations: kept, stats };
}

/** The confirmed intervals the checker found, by name then start: for debugging a failure, and for tests. */
export function confirmedIntervals(ops: readonly LockOp[], opts: CheckOptions = {}): LeaseInterval[] {
  return analyze(ops, opts).intervals.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.start - b.start));
}
