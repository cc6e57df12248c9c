/** One well-formed Raft message of every type, for the peer protocol tests (from node 1 to node 2). */
import type { Message } from '../../../src/raft/types.js';

export function sampleMessages(group = 7, from = 1, to = 2): Message[] {
  const bytes = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
  return [
    { type: 1, group, from, to, term: 5, lastIndex: 10, lastTerm: 4, transfer: false },
    { type: 3, group, from, to, term: 6, lastIndex: 10, lastTerm: 4, transfer: true },
    { type: 2, group, from, to, term: 5, reject: true },
    { type: 4, group, from, to, term: 6, reject: false },
    {
      type: 5, group, from, to, term: 5, prevIndex: 9, prevTerm: 4, commit: 8,
      entries: [
        { term: 4, index: 10, type: 0, data: bytes(100, 1) },
        { term: 5, index: 11, type: 2, data: new Uint8Array(0) },
        { term: 5, index: 12, type: 1, data: bytes(3, 2) },
      ],
    },
    { type: 5, group, from, to, term: 5, prevIndex: 12, prevTerm: 5, commit: 12, entries: [] },
    { type: 6, group, from, to, term: 5, index: 12, reject: false, rejectHint: 0, hintTerm: 0 },
    { type: 6, group, from, to, term: 5, index: 9, reject: true, rejectHint: 7, hintTerm: 3 },
    { type: 7, group, from, to, term: 5, commit: 8, ctx: 0 },
    { type: 8, group, from, to, term: 5, ctx: 3 },
    {
      type: 9, group, from, to, term: 5, offset: 0, data: bytes(64, 3), done: false,
      meta: { index: 100, term: 4, conf: { voters: [1, 2, 3], learners: [4] } },
    },
    { type: 10, group, from, to, term: 5, offset: 64, index: 0, reject: false },
    { type: 11, group, from, to, term: 5 },
    { type: 12, group, from, to, term: 5, ctx: bytes(8, 4) },
    { type: 13, group, from, to, term: 5, ctx: bytes(8, 4), index: 12 },
  ] as Message[];
}

/** Normalizes Buffers to plain Uint8Arrays so t.same compares contents, not classes. */
export function plain(x: unknown): unknown {
  if (x instanceof Uint8Array) return Array.from(x);
  if (Array.isArray(x)) return x.map(plain);
  if (typeof x === 'object' && x !== null) {
    const o: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(x)) o[k] = plain(v);
    return o;
  }
  return x;
}
