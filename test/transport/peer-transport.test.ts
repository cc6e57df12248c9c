import t from 'tap';
import type { Message } from '../../src/raft/types.js';
import { PeerRequestError } from '../../src/transport/peer-transport.js';
import { append, connectAll, startNode, waitFor, type TestNode } from './helpers.js';
import { plain, sampleMessages } from '../protocol/peer/samples.js';

/** JSON with sorted keys, so field order does not matter. */
function canon(x: unknown): string {
  if (Array.isArray(x)) return `[${x.map(canon).join(',')}]`;
  if (typeof x === 'object' && x !== null) {
    return `{${Object.keys(x).sort().map((k) => `${k}:${canon((x as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(x);
}

const stopAll = async (nodes: TestNode[]): Promise<void> => {
  await Promise.all(nodes.map((n) => n.t.stop()));
};

t.test('three transports exchange messages for many groups', async (t) => {
  const nodes = await Promise.all([startNode(1), startNode(2), startNode(3)]);
  t.teardown(() => stopAll(nodes));
  await connectAll(nodes);
  const sent = new Map<number, Message[]>(); // by destination
  for (const a of nodes) {
    for (const b of nodes) {
      if (a === b) continue;
      const msgs: Message[] = [];
      for (let g = 0; g < 64; g++) {
        msgs.push(...sampleMessages(g, a.id, b.id));
        msgs.push(append(a.id, b.id, g, 100 + g));
      }
      a.t.send(msgs);
      sent.set(b.id, [...(sent.get(b.id) ?? []), ...msgs]);
    }
  }
  const per = 64 * 16;
  await waitFor(() => nodes.every((n) => n.received.length === 2 * per), 5000, 'all messages delivered');
  for (const n of nodes) {
    const key = (m: Message): string => canon(plain(m));
    const got = n.received.map(key).sort();
    const want = (sent.get(n.id) ?? []).map(key).sort();
    t.same(got, want, `node ${n.id} received exactly what was sent to it`);
    t.ok(n.received.every((m) => m.to === n.id));
  }
  const s = nodes[0]!.t.stats;
  t.equal(s.messagesSent, 2 * per);
  t.equal(s.drops, 0);
  t.equal(s.protocolErrors, 0);
});

t.test('all messages sent in one turn leave as one frame', async (t) => {
  const nodes = await Promise.all([startNode(1), startNode(2)]);
  t.teardown(() => stopAll(nodes));
  await connectAll(nodes);
  const [a, b] = nodes as [TestNode, TestNode];
  const before = a.t.stats.peers[2]!;
  // Many separate send() calls in the same turn, for 16 groups.
  for (let i = 0; i < 1000; i++) a.t.send([append(1, 2, i % 16, 1 + Math.floor(i / 16))]);
  await waitFor(() => b.received.length === 1000, 3000, '1000 messages');
  const after = a.t.stats.peers[2]!;
  t.equal(after.batchesSent - before.batchesSent, 1, 'one BATCH frame');
  t.equal(after.messagesSent - before.messagesSent, 1000);
  t.same(b.deliveries, [1000], 'delivered in one onRaftMessages call');
  t.equal(a.t.stats.messagesPerBatchSent, 1000);
  // Order per group is preserved.
  for (let g = 0; g < 16; g++) {
    const idx = b.received.filter((m) => m.group === g).map((m) => (m.type === 5 ? m.entries[0]!.index : -1));
    t.same(idx, [...idx].sort((x, y) => x - y), `group ${g} in order`);
  }
  // Sends in a later turn go in another frame.
  a.t.send([append(1, 2, 0, 5000)]);
  await new Promise((r) => setImmediate(r));
  a.t.send([append(1, 2, 0, 5001)]);
  await waitFor(() => b.received.length === 1002, 3000, '2 more');
  t.equal(a.t.stats.peers[2]!.batchesSent - after.batchesSent, 2);
});

t.test('heartbeats for many groups are coalesced into flat arrays', async (t) => {
  const nodes = await Promise.all([startNode(1), startNode(2)]);
  t.teardown(() => stopAll(nodes));
  await connectAll(nodes);
  const [a, b] = nodes as [TestNode, TestNode];
  const before = a.t.stats.peers[2]!;
  const msgs: Message[] = [];
  for (let g = 0; g < 256; g++) {
    msgs.push({ type: 7, group: g, from: 1, to: 2, term: 9, commit: 1000 + g, ctx: g % 3 } as Message);
    msgs.push({ type: 8, group: g, from: 1, to: 2, term: 9, ctx: g } as Message);
  }
  a.t.send(msgs);
  await waitFor(() => b.received.length === 512, 3000, 'heartbeats');
  const after = a.t.stats.peers[2]!;
  t.equal(after.batchesSent - before.batchesSent, 1);
  t.equal(after.heartbeatsCoalesced - before.heartbeatsCoalesced, 512);
  const bytes = after.bytesSent - before.bytesSent;
  t.ok(bytes < 512 * 12, `512 heartbeats in ${bytes} bytes (under 12 bytes each)`);
  t.same(b.received.filter((m) => m.type === 7), msgs.filter((m) => m.type === 7), 'expanded heartbeats equal the sent ones');
  t.same(b.received.filter((m) => m.type === 8), msgs.filter((m) => m.type === 8));
});

t.test('messages to a peer that is down or unknown are dropped and counted', async (t) => {
  const a = await startNode(1);
  t.teardown(() => a.t.stop());
  a.t.setPeer(2, { host: '127.0.0.1', port: 1 }); // nothing listens on port 1
  a.t.send([append(1, 2, 0, 1), append(1, 9, 0, 1)]);
  t.equal(a.t.stats.peers[2]!.drops, 1);
  t.equal(a.t.stats.unroutable, 1);
  t.equal(a.t.isUp(2), false);
});

t.test('request and reply, remote errors, timeouts, aborts', async (t) => {
  let hang = false;
  const nodes = await Promise.all([
    startNode(1),
    startNode(2, {
      onRequest: async (from, payload) => {
        const p = payload as { op: string };
        if (p.op === 'fail') throw Object.assign(new Error('not the leader'), { code: 'NOTLEADER' });
        if (p.op === 'hang' || hang) return new Promise(() => {});
        return { from, echo: payload };
      },
    }),
  ]);
  t.teardown(() => stopAll(nodes));
  await connectAll(nodes);
  const [a] = nodes as [TestNode, TestNode];
  t.same(await a.t.request(2, { op: 'get', key: 'k', bytes: new Uint8Array([1, 2]) }, 1000),
    { from: 1, echo: { op: 'get', key: 'k', bytes: Buffer.from([1, 2]) } });
  const many = await Promise.all(Array.from({ length: 100 }, (_, i) => a.t.request(2, { op: 'n', i }, 2000)));
  t.same(many.map((r) => (r as { echo: { i: number } }).echo.i), Array.from({ length: 100 }, (_, i) => i));

  const err = await a.t.request(2, { op: 'fail' }, 1000).catch((e: unknown) => e);
  t.ok(err instanceof PeerRequestError);
  t.same([(err as PeerRequestError).code, (err as PeerRequestError).remoteCode], ['PEER_REMOTE', 'NOTLEADER']);
  t.match((err as Error).message, /not the leader/);

  const started = Date.now();
  const timeout = await a.t.request(2, { op: 'hang' }, 100).catch((e: unknown) => e);
  t.equal((timeout as PeerRequestError).code, 'PEER_TIMEOUT');
  t.match((timeout as Error).message, /timed out after 100 ms/);
  t.ok(Date.now() - started >= 95);

  const ac = new AbortController();
  const aborted = a.t.request(2, { op: 'hang' }, 5000, ac.signal).catch((e: unknown) => e);
  ac.abort();
  t.equal(((await aborted) as PeerRequestError).code, 'PEER_ABORTED');

  t.equal(((await a.t.request(7, {}, 100).catch((e: unknown) => e)) as PeerRequestError).code, 'PEER_UNKNOWN');
  const tooBig = await a.t.request(2, { blob: new Uint8Array(2 << 20) }, 100).catch((e: unknown) => e);
  t.equal((tooBig as PeerRequestError).code, 'PEER_ENCODE');
});

t.test('a request fails with PEER_DOWN when the peer goes away mid-request', async (t) => {
  const nodes = await Promise.all([startNode(1), startNode(2, { onRequest: () => new Promise(() => {}) })]);
  t.teardown(() => stopAll(nodes));
  await connectAll(nodes);
  const [a, b] = nodes as [TestNode, TestNode];
  const downs: number[] = [];
  a.t.onPeerDown((p) => downs.push(p));
  const pending = a.t.request(2, { op: 'slow' }, 10_000).catch((e: unknown) => e);
  await new Promise((r) => setTimeout(r, 30));
  const started = Date.now();
  await b.t.stop();
  const err = (await pending) as PeerRequestError;
  t.ok(err instanceof PeerRequestError);
  t.equal(err.code, 'PEER_DOWN');
  t.match(err.message, /request \d+ to peer 2 failed: link lost/);
  t.ok(Date.now() - started < 2000, 'rejected at link loss, not at the timeout');
  t.same(downs, [2]);
  t.equal(((await a.t.request(2, {}, 100).catch((e: unknown) => e)) as PeerRequestError).code, 'PEER_DOWN');
});

t.test('a peer without a request handler answers NO_HANDLER', async (t) => {
  const nodes = await Promise.all([startNode(1), startNode(2)]);
  t.teardown(() => stopAll(nodes));
  await connectAll(nodes);
  const err = (await nodes[0]!.t.request(2, {}, 1000).catch((e: unknown) => e)) as PeerRequestError;
  t.same([err.code, err.remoteCode], ['PEER_REMOTE', 'NO_HANDLER']);
});

t.test('stop fails pending requests with PEER_STOPPED', async (t) => {
  const nodes = await Promise.all([startNode(1), startNode(2, { onRequest: () => new Promise(() => {}) })]);
  t.teardown(() => stopAll(nodes));
  await connectAll(nodes);
  const pending = nodes[0]!.t.request(2, {}, 10_000).catch((e: unknown) => e);
  await new Promise((r) => setTimeout(r, 20));
  await nodes[0]!.t.stop();
  t.equal(((await pending) as PeerRequestError).code, 'PEER_STOPPED');
});
