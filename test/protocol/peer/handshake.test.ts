import t from 'tap';
import { createRng } from '../../../src/util/rng.js';
import { Handshake, type HandshakeConfig, type HandshakeStep } from '../../../protocol/peer/handshake.js';
import { decodeBody, encodeFrame } from '../../../protocol/peer/frame.js';

const rng = createRng(99);
const challenge = (): Uint8Array => Uint8Array.from({ length: 32 }, () => rng.int(0, 256));
const base = (nodeId: number, over: Partial<HandshakeConfig> = {}): HandshakeConfig => ({
  clusterId: 'alpha', nodeId, workerIndex: 2, topologyDigest: 'topo-1', ...over,
});
/** Through the real codec, as on a socket. */
const wire = (x: unknown): unknown => decodeBody(encodeFrame(x).subarray(4));

interface Outcome { a: HandshakeStep[]; b: HandshakeStep[] }

/** Runs dialer a (expects node 2) against acceptor b (knows node 1) the way the transport does. */
function run(aCfg: HandshakeConfig, bCfg: HandshakeConfig, bKnows: (id: number) => boolean = (id) => id === 1): Outcome {
  const a = new Handshake(aCfg, challenge(), { expect: 2 });
  const b = new Handshake(bCfg, challenge(), { isKnown: bKnows });
  const out: Outcome = { a: [], b: [] };
  // Both send HELLO at once.
  const toB: unknown[] = [wire(a.hello())];
  const toA: unknown[] = [wire(b.hello())];
  for (let round = 0; round < 4 && (toA.length > 0 || toB.length > 0); round++) {
    const forA = toA.splice(0);
    const forB = toB.splice(0);
    for (const body of forA) {
      const s = a.receive(body);
      out.a.push(s);
      if (s.kind === 'ack' || s.kind === 'refuse') toB.push(wire(s.body));
    }
    for (const body of forB) {
      const s = b.receive(body);
      out.b.push(s);
      if (s.kind === 'ack' || s.kind === 'refuse') toA.push(wire(s.body));
    }
  }
  return out;
}

const kinds = (steps: HandshakeStep[]): string[] => steps.map((s) => s.kind);
const firstRefusal = (steps: HandshakeStep[]): HandshakeStep | undefined =>
  steps.find((s) => s.kind === 'refuse' || s.kind === 'refused');

t.test('matching peers complete the handshake, without a secret', async (t) => {
  const r = run(base(1), base(2));
  t.same(kinds(r.a), ['ack', 'done']);
  t.same(kinds(r.b), ['ack', 'done']);
  t.same(r.a[1], { kind: 'done', peer: 2 });
  t.same(r.b[1], { kind: 'done', peer: 1 });
});

t.test('matching peers complete the handshake with the same secret', async (t) => {
  const r = run(base(1, { secret: 's3cret' }), base(2, { secret: 's3cret' }));
  t.same(kinds(r.a), ['ack', 'done']);
  t.same(kinds(r.b), ['ack', 'done']);
});

const mismatches: Array<[string, HandshakeConfig, HandshakeConfig, string, RegExp, RegExp]> = [
  ['cluster id', base(1), base(2, { clusterId: 'beta' }), 'CLUSTER',
    /^cluster id mismatch \(ours "alpha", theirs "beta"\)$/, /^cluster id mismatch \(ours "beta", theirs "alpha"\)$/],
  ['version', base(1), base(2, { version: 2 }), 'VERSION',
    /^protocol version mismatch \(ours 1, theirs 2\)$/, /^protocol version mismatch \(ours 2, theirs 1\)$/],
  ['topology digest', base(1, { topologyDigest: 'd1' }), base(2, { topologyDigest: 'd2' }), 'TOPOLOGY',
    /^topology digest mismatch \(ours "d1", theirs "d2"\)$/, /^topology digest mismatch \(ours "d2", theirs "d1"\)$/],
  ['worker index', base(1), base(2, { workerIndex: 3 }), 'WORKER',
    /^worker index mismatch \(ours 2, theirs 3\)$/, /^worker index mismatch \(ours 3, theirs 2\)$/],
  ['secret on one side', base(1, { secret: 'x' }), base(2), 'AUTH',
    /^cluster secret configured on one side only \(ours: yes, theirs: no\)$/, /ours: no, theirs: yes/],
  ['different secrets', base(1, { secret: 'x' }), base(2, { secret: 'y' }), 'AUTH',
    /^bad cluster secret proof/, /^bad cluster secret proof/],
];

for (const [what, aCfg, bCfg, code, aReason, bReason] of mismatches) {
  t.test(`a ${what} mismatch is refused on both sides with the specific reason`, async (t) => {
    const r = run(aCfg, bCfg);
    const ra = firstRefusal(r.a);
    const rb = firstRefusal(r.b);
    t.equal(ra?.kind, 'refuse', 'the dialer refuses on its own');
    t.equal(rb?.kind, 'refuse', 'the acceptor refuses on its own');
    t.ok(ra !== undefined && 'code' in ra && ra.code === code);
    t.ok(rb !== undefined && 'code' in rb && rb.code === code);
    t.match(ra && 'reason' in ra ? ra.reason : '', aReason);
    t.match(rb && 'reason' in rb ? rb.reason : '', bReason);
    t.notOk(r.a.some((s) => s.kind === 'done') || r.b.some((s) => s.kind === 'done'), 'no side completes');
  });
}

t.test('an unknown node is refused by the acceptor and the dialer hears why', async (t) => {
  const r = run(base(1), base(2), () => false);
  const rb = firstRefusal(r.b);
  t.same(rb && 'reason' in rb ? [rb.kind, rb.code, rb.reason] : [], ['refuse', 'NODE', 'node 1 is not a known peer']);
  const ra = r.a.find((s) => s.kind === 'refused');
  t.same(ra && 'reason' in ra ? [ra.code, ra.reason, ra.peer] : [], ['NODE', 'node 1 is not a known peer', 2]);
});

t.test('the dialer refuses a node other than the one it dialed', async (t) => {
  const r = run(base(1), base(3), () => true);
  const ra = firstRefusal(r.a);
  t.same(ra && 'reason' in ra ? [ra.kind, ra.code, ra.reason] : [], ['refuse', 'NODE', 'node id mismatch (expected 2, got 3)']);
});

t.test('a peer claiming our own id is refused', async (t) => {
  const b = new Handshake(base(1), challenge(), { isKnown: () => true });
  const s = b.receive(wire(new Handshake(base(1), challenge(), { expect: 1 }).hello()));
  t.same(s.kind === 'refuse' ? [s.code, s.reason] : [], ['NODE', 'peer claims our own node id 1']);
});

t.test('out-of-order and malformed handshake frames are refused', async (t) => {
  const mk = (): Handshake => new Handshake(base(1), challenge(), { expect: 2 });
  const s1 = mk().receive({ k: 2, proof: new Uint8Array(0) });
  t.match(s1.kind === 'refuse' ? s1.reason : '', /^expected HELLO, got frame kind 2/);
  const s2 = mk().receive({ k: 4, m: [], hb: [], hr: [] });
  t.equal(s2.kind, 'refuse');
  const s3 = mk().receive('garbage');
  t.match(s3.kind === 'refuse' ? s3.reason : '', /not an object/);
  const s4 = mk().receive({ k: 1, v: 1, cluster: 'alpha', node: 2, worker: 2, topo: 'topo-1', auth: false });
  t.match(s4.kind === 'refuse' ? s4.reason : '', /^hello\.challenge/);
  const h = mk();
  h.receive(wire(new Handshake(base(2), challenge(), { expect: 1 }).hello()));
  const s5 = h.receive({ k: 2, proof: new Uint8Array(32) });
  t.same(s5.kind === 'refuse' ? [s5.code, s5.reason] : [], ['PROTOCOL', 'unexpected proof: no cluster secret is configured']);
});

t.test('a proof made for another challenge or reflected back is refused', async (t) => {
  const cfgA = base(1, { secret: 'k' });
  const cfgB = base(2, { secret: 'k' });
  const a = new Handshake(cfgA, challenge(), { expect: 2 });
  const b = new Handshake(cfgB, challenge(), { isKnown: () => true });
  const ackFromA = a.receive(wire(b.hello()));
  t.equal(ackFromA.kind, 'ack');
  b.receive(wire(a.hello()));
  // Reflect a's own proof back to a: it was computed for b's challenge with a as prover.
  const reflected = a.receive(ackFromA.kind === 'ack' ? wire(ackFromA.body) : null);
  t.same(reflected.kind === 'refuse' ? reflected.code : '', 'AUTH');
});
