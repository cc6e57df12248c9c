import t from 'tap';
import { DeadlockDetector, findVictims, type DetectorEdge } from '../../src/locks/deadlock-detector.js';

const edge = (from: string, to: string, name: string, waiterId: string, since: number, toId = `h-${to}-${name}`): DetectorEdge => ({ from, to, name, waiterId, since, toId });

t.test('no cycle, no victim', async (t) => {
  t.same(findVictims([edge('a', 'b', 'L1', 'w1', 1), edge('b', 'c', 'L2', 'w2', 2)]), []);
  t.same(findVictims([]), []);
});

t.test('two-owner cycle: the youngest waiter is the victim, with the cycle described', async (t) => {
  const v = findVictims([edge('a', 'b', 'L2', 'wa', 10), edge('b', 'a', 'L1', 'wb', 20)]);
  t.equal(v.length, 1);
  t.equal(v[0]!.waiterId, 'wb');
  t.equal(v[0]!.owner, 'b');
  t.equal(v[0]!.name, 'L1');
  t.match(v[0]!.cycle, /^(a -\[L2\]-> b -\[L1\]-> a|b -\[L1\]-> a -\[L2\]-> b)$/);
});

t.test('three-owner cycle with a tail; equal ages break by waiter id', async (t) => {
  const edges = [edge('x', 'a', 'L0', 'wx', 99), edge('a', 'b', 'L1', 'w1', 5), edge('b', 'c', 'L2', 'w2', 5), edge('c', 'a', 'L3', 'w3', 5)];
  const v = findVictims(edges);
  t.equal(v.length, 1, 'the tail x -> a is not part of the cycle');
  t.equal(v[0]!.waiterId, 'w3');
});

t.test('two independent cycles are both broken in one pass', async (t) => {
  const v = findVictims([edge('a', 'b', 'L1', 'w1', 1), edge('b', 'a', 'L2', 'w2', 2), edge('c', 'd', 'L3', 'w3', 3), edge('d', 'c', 'L4', 'w4', 4)]);
  t.same(v.map((x) => x.waiterId).sort(), ['w2', 'w4']);
});

t.test('one victim can break overlapping cycles', async (t) => {
  // a waits for b and c (two waits of one owner are two waiter ids); b and c both wait for a.
  const v = findVictims([edge('a', 'b', 'L1', 'wa1', 1), edge('a', 'c', 'L2', 'wa2', 2), edge('b', 'a', 'L3', 'wb', 30), edge('c', 'a', 'L3', 'wc', 40)]);
  t.ok(v.length >= 1 && v.length <= 2);
  const left = new Set(['wa1', 'wa2', 'wb', 'wc']);
  for (const x of v) left.delete(x.waiterId);
  // Whatever is left must be acyclic.
  const remaining = [edge('a', 'b', 'L1', 'wa1', 1), edge('a', 'c', 'L2', 'wa2', 2), edge('b', 'a', 'L3', 'wb', 30), edge('c', 'a', 'L3', 'wc', 40)].filter((e) => left.has(e.waiterId));
  t.same(findVictims(remaining), []);
});

t.test('a cycle is acted on only when every edge was seen in the previous round too', async (t) => {
  const d = new DeadlockDetector();
  const cyc = [edge('a', 'b', 'L1', 'w1', 1), edge('b', 'a', 'L2', 'w2', 2)];
  t.same(d.round(cyc), [], 'first sighting is not enough');
  t.equal(d.round(cyc).length, 1, 'second consecutive sighting confirms');

  // A phantom: the two edges were never present in the same round.
  const p = new DeadlockDetector();
  t.same(p.round([cyc[0]!]), []);
  t.same(p.round([cyc[1]!]), []);
  t.same(p.round([cyc[0]!]), []);

  // A new waiter id (a retry) on one edge means a new edge: wait another round.
  const r = new DeadlockDetector();
  r.round(cyc);
  t.same(r.round([cyc[0]!, edge('b', 'a', 'L2', 'w2-retry', 3)]), []);
  t.equal(r.round([cyc[0]!, edge('b', 'a', 'L2', 'w2-retry', 3)]).length, 1);

  // reset() forgets the previous round.
  const s = new DeadlockDetector();
  s.round(cyc);
  s.reset();
  t.same(s.round(cyc), []);
});

t.test('a long chain is handled without recursion limits', async (t) => {
  const edges: DetectorEdge[] = [];
  const n = 50_000;
  for (let i = 0; i < n; i++) edges.push(edge(`o${i}`, `o${(i + 1) % n}`, `L${i}`, `w${i}`, i));
  const v = findVictims(edges);
  t.equal(v.length, 1);
  t.equal(v[0]!.waiterId, `w${n - 1}`);
});

t.test('cycle text has no CR or LF (it goes into an error reply)', async (t) => {
  const v = findVictims([edge('a\r\n', 'b', 'L1', 'w1', 1), edge('b', 'a\r\n', 'L\n2', 'w2', 2)]);
  t.notMatch(v[0]!.cycle, /[\r\n]/);
});
