/**
 * Cluster-wide deadlock detection over a wait-for graph of lock owners (pure: no I/O, no clock).
 *
 * Each round the caller gathers the wait-for edges of every shard (LockTable.edges(), one read per shard leader;
 * the reads happen at different moments) and calls round(). An edge "waiter w of owner A waits for B (holder
 * token t, or earlier waiter v) on lock L" has an identity (w, t|v) that exists for one continuous interval:
 * waiter ids and grant tokens are never reused. A cycle is acted on only when every one of its edges was also
 * present in the previous round. Since every read of round k finished before any read of round k+1 began, each
 * such edge existed throughout the gap between the rounds, so all of them existed at one instant: the cycle was
 * real, not a phantom stitched from snapshots of different moments.
 *
 * Victim: the youngest waiting request in the cycle (the largest `since`, ties broken by the larger waiter id). It
 * is failed with -DEADLOCK and keeps the locks it holds; the others proceed. After choosing a victim its waits are
 * taken out of the graph and the search goes on, so several independent cycles are broken in one round.
 */

/** One wait-for edge as gathered from a shard (owners and names as latin1 strings: binary-safe identities). */
export interface DetectorEdge {
  from: string;
  waiterId: string;
  since: number;
  name: string;
  to: string;
  toId: string;
}

export interface DeadlockVictim {
  /** The lock the victim waits for (its shard gets the abort). */
  name: string;
  waiterId: string;
  owner: string;
  /** Human-readable cycle: "a -[L1]-> b -[L2]-> a". */
  cycle: string;
}

/** Most cycles broken in one round (bounds the work a pathological graph can cause). */
export const VICTIMS_PER_ROUND_MAX = 1000;

const edgeKey = (e: DetectorEdge): string => `${e.waiterId}\u0000${e.toId}`;

export class DeadlockDetector {
  private previous = new Set<string>();

  /** Forgets the previous round (call when a round could not gather every shard, or detection moved). */
  reset(): void {
    this.previous = new Set();
  }

  /** Feeds one complete round of edges; returns the victims of the confirmed cycles. */
  round(edges: readonly DetectorEdge[]): DeadlockVictim[] {
    const confirmed = edges.filter((e) => this.previous.has(edgeKey(e)));
    this.previous = new Set(edges.map(edgeKey));
    return findVictims(confirmed);
  }
}

/** Breaks every cycle of the graph: repeatedly finds one, picks its youngest waiter, removes that waiter's edges. */
export function findVictims(edges: readonly DetectorEdge[]): DeadlockVictim[] {
  let live = edges.slice();
  const victims: DeadlockVictim[] = [];
  while (victims.length < VICTIMS_PER_ROUND_MAX) {
    const cycle = findCycle(live);
    if (cycle === null) break;
    let v = cycle[0]!;
    for (const e of cycle) if (e.since > v.since || (e.since === v.since && e.waiterId > v.waiterId)) v = e;
    victims.push({ name: v.name, waiterId: v.waiterId, owner: v.from, cycle: describe(cycle) });
    live = live.filter((e) => e.waiterId !== v.waiterId);
  }
  return victims;
}

function describe(cycle: readonly DetectorEdge[]): string {
  // It ends up in an error reply: no CR or LF.
  const parts = cycle.map((e) => `${e.from} -[${e.name}]->`);
  return `${parts.join(' ')} ${cycle[0]!.from}`.replace(/[\r\n]/g, ' ');
}

/** One cycle of the owner graph as its edges in order, or null. Iterative DFS (graphs can be deep). */
function findCycle(edges: readonly DetectorEdge[]): DetectorEdge[] | null {
  const out = new Map<string, DetectorEdge[]>();
  for (const e of edges) {
    if (e.from === e.to) continue; // a self-wait is not a cycle between owners (the table never makes one)
    let list = out.get(e.from);
    if (list === undefined) out.set(e.from, (list = []));
    list.push(e);
  }
  // 0 = unvisited, 1 = on the current path, 2 = done
  const color = new Map<string, number>();
  for (const start of out.keys()) {
    if ((color.get(start) ?? 0) !== 0) continue;
    const path: DetectorEdge[] = [];
    const stack: { node: string; next: number }[] = [{ node: start, next: 0 }];
    color.set(start, 1);
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const list = out.get(top.node) ?? [];
      if (top.next >= list.length) {
        color.set(top.node, 2);
        stack.pop();
        path.pop();
        continue;
      }
      const e = list[top.next++]!;
      const c = color.get(e.to) ?? 0;
      if (c === 1) {
        // Back edge: the cycle is the path from e.to's position to here, plus e.
        const at = stack.findIndex((f) => f.node === e.to);
        return [...path.slice(at), e];
      }
      if (c === 0) {
        color.set(e.to, 1);
        path.push(e);
        stack.push({ node: e.to, next: 0 });
      }
    }
  }
  return null;
}
