import t from 'tap';
import net from 'node:net';
import type { Message } from '../../src/raft/types.js';
import { packRaftMessage } from '../../protocol/peer/messages.js';
import { append, connectAll, FakePeer, fakeConfig, hasLine, startNode, TEST_LIMITS, waitFor, WARN, type TestNode } from './helpers.js';

const stopAll = async (nodes: TestNode[]): Promise<void> => {
  await Promise.all(nodes.map((n) => n.t.stop()));
};

t.test('a peer that restarts is reconnected and traffic resumes', async (t) => {
  const a = await startNode(1);
  let b = await startNode(2);
  t.teardown(() => stopAll([a, b]));
  await connectAll([a, b]);
  const ups: number[] = [];
  const downs: number[] = [];
  a.t.onPeerUp((p) => ups.push(p));
  a.t.onPeerDown((p) => downs.push(p));
  const port = b.port;
  await b.t.stop();
  await waitFor(() => downs.length === 1, 2000, 'peer down');
  t.same(downs, [2]);
  a.t.send([append(1, 2, 0, 1)]);
  t.equal(a.t.stats.peers[2]!.drops, 1, 'dropped while down');
  b = await startNode(2, { listen: { host: '127.0.0.1', port } });
  b.t.setPeer(1, { host: '127.0.0.1', port: a.port });
  await waitFor(() => a.t.isUp(2), 3000, 'reconnected');
  t.same(ups, [2]);
  a.t.send([append(1, 2, 0, 2)]);
  await waitFor(() => b.received.length === 1, 2000, 'message after restart');
  t.equal(b.received[0]!.type === 5 && b.received[0]!.entries[0]!.index, 2);
  t.ok(hasLine(a.lines, /^peer 2 link down/, WARN));
  t.equal(a.t.stats.peers[2]!.connects, 2);
});

async function rawClient(port: number, bytes: Buffer): Promise<{ closedMs: number }> {
  const started = Date.now();
  const sock = net.connect({ host: '127.0.0.1', port });
  sock.on('error', () => {});
  sock.on('data', () => {}); // the transport's HELLO
  await new Promise<void>((r) => sock.once('connect', () => r()));
  sock.write(bytes);
  await new Promise<void>((r) => sock.once('close', () => r()));
  return { closedMs: Date.now() - started };
}

t.test('raw clients sending garbage or a 4 GB frame are disconnected while other links keep working', async (t) => {
  const nodes = await Promise.all([startNode(1), startNode(2)]);
  t.teardown(() => stopAll(nodes));
  await connectAll(nodes);
  const [a, b] = nodes as [TestNode, TestNode];

  const huge = await rawClient(b.port, Buffer.from([0xff, 0xff, 0xff, 0xff]));
  t.ok(huge.closedMs < 900, 'closed at once, not by the handshake timeout');
  t.ok(hasLine(b.lines, /^closing inbound connection from 127\.0\.0\.1:\d+: frame too large: 4294967295 > 8192$/, WARN),
    'reason logged');

  await new Promise((r) => setTimeout(r, 1010)); // the unidentified-connection log is rate limited to 1/s
  await rawClient(b.port, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  t.ok(hasLine(b.lines, /^closing inbound connection from .*: frame too large: 1195725856 > 8192$/), 'HTTP request refused');

  await rawClient(b.port, Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1]));
  t.ok(hasLine(b.lines, /frame body is not valid msgpack/), 'undecodable body refused');

  await rawClient(b.port, Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.from([0x05])]));
  t.ok(hasLine(b.lines, /handshake frame is not an object/), 'non-HELLO refused');

  t.ok(b.t.stats.protocolErrorsUnidentified >= 3);
  // The real peer link was never disturbed.
  a.t.send([append(1, 2, 3, 1)]);
  await waitFor(() => b.received.length === 1, 2000, 'traffic still flows');
  t.ok(a.t.isUp(2));
  t.equal(a.t.stats.peers[2]!.disconnects, 0);
});

t.test('a silent raw client is dropped after the handshake timeout', async (t) => {
  const b = await startNode(2, { limits: { ...TEST_LIMITS, handshakeTimeoutMs: 150 } });
  t.teardown(() => b.t.stop());
  const started = Date.now();
  const sock = net.connect({ host: '127.0.0.1', port: b.port });
  sock.on('error', () => {});
  sock.on('data', () => {});
  await new Promise<void>((r) => sock.once('close', () => r()));
  t.ok(Date.now() - started >= 140);
  t.ok(hasLine(b.lines, /handshake timed out after 150 ms/));
});

t.test('a peer that sends a malformed batch after the handshake has its link closed, nothing reaches Raft', async (t) => {
  const b = await startNode(2);
  const c = await startNode(4);
  t.teardown(() => stopAll([b, c]));
  await connectAll([b, c]);
  b.t.setPeer(3, { host: '127.0.0.1', port: 1 }); // node 3 is known; its listener is never reached
  const fake = new FakePeer(fakeConfig(3));
  t.teardown(() => fake.close());
  await fake.dial(b.port, 2);
  fake.write({ k: 4, m: [packRaftMessage(append(3, 2, 1, 1))], hb: [], hr: [] });
  await waitFor(() => b.received.length === 1, 2000, 'a valid batch is delivered');
  t.equal(b.received[0]!.from, 3);
  // One valid and one malformed message in the same frame: nothing of the frame is delivered.
  const bad = packRaftMessage(append(3, 2, 1, 3));
  bad[4] = 'x'; // prevTerm
  fake.write({ k: 4, m: [packRaftMessage(append(3, 2, 1, 2)), bad], hb: [], hr: [] });
  await waitFor(() => fake.closed, 2000, 'link closed');
  t.equal(b.received.length, 1);
  t.ok(hasLine(b.lines, /^closing the link from peer 3: batch\.m\[1\]: Append\.prevTerm: expected an integer in \[0, 3\], got "x"$/, WARN));
  t.equal(b.t.stats.peers[3]!.protocolErrors, 1);

  // A frame of an unexpected kind after the handshake closes the link too.
  const fake2 = new FakePeer(fakeConfig(3));
  t.teardown(() => fake2.close());
  await fake2.dial(b.port, 2);
  fake2.write({ k: 1, v: 1 });
  await waitFor(() => fake2.closed, 2000, 'link closed after a second HELLO');
  t.ok(hasLine(b.lines, /^closing the link from peer 3: unexpected frame kind 1 on an inbound link$/));
  // Other links keep working.
  c.t.send([append(4, 2, 0, 1)]);
  await waitFor(() => b.received.length === 2, 2000, 'other peer still delivers');
  t.equal(b.received[1]!.from, 4);
});

t.test('a peer that stops reading makes new messages drop instead of queueing without bound', async (t) => {
  const limits = { ...TEST_LIMITS, sendQueueBytesMax: 256 * 1024 };
  const a = await startNode(1, { limits });
  t.teardown(() => a.t.stop());
  const stuck = new FakePeer(fakeConfig(2));
  t.teardown(() => stuck.close());
  const port = await stuck.listen((sock) => sock.pause());
  a.t.setPeer(2, { host: '127.0.0.1', port });
  await waitFor(() => a.t.isUp(2), 2000, 'link to the stuck peer up');
  let sent = 0;
  for (let turn = 0; turn < 200 && a.t.stats.peers[2]!.drops === 0; turn++) {
    const msgs: Message[] = [];
    for (let i = 0; i < 200; i++) msgs.push(append(1, 2, i % 16, ++sent, 1000));
    a.t.send(msgs);
    await new Promise((r) => setTimeout(r, 1));
  }
  const s = a.t.stats.peers[2]!;
  t.ok(s.drops > 0, `drops counted (${s.drops})`);
  t.ok(s.bufferedBytes <= limits.sendQueueBytesMax + 2000, `buffered ${s.bufferedBytes} B <= sendQueueBytesMax + one message`);
  // Keep offering for a while: the buffer stays bounded, the excess is dropped.
  for (let turn = 0; turn < 50; turn++) {
    const msgs: Message[] = [];
    for (let i = 0; i < 200; i++) msgs.push(append(1, 2, i % 16, ++sent, 1000));
    a.t.send(msgs);
    await new Promise((r) => setImmediate(r));
    t.ok(a.t.stats.peers[2]!.bufferedBytes <= limits.sendQueueBytesMax + 2000, 'still bounded');
  }
  const s2 = a.t.stats.peers[2]!;
  t.ok(s2.drops > s.drops + 5000, `most of the extra load dropped (${s2.drops - s.drops} of 10000)`);
  t.ok(a.t.isUp(2), 'the link stays up');
});

const mismatchCases: Array<[string, Record<string, unknown>, Record<string, unknown>, RegExp, RegExp]> = [
  ['cluster id', { clusterId: 'a' }, { clusterId: 'b' },
    /^peer 2 refused: cluster id mismatch \(ours "a", theirs "b"\)$/, /^peer 1 refused: cluster id mismatch \(ours "b", theirs "a"\)$/],
  ['protocol version', {}, { protocolVersion: 2 },
    /^peer 2 refused: protocol version mismatch \(ours 1, theirs 2\)$/, /^peer 1 refused: protocol version mismatch \(ours 2, theirs 1\)$/],
  ['topology digest', { topologyDigest: 'x1' }, { topologyDigest: 'x2' },
    /^peer 2 refused: topology digest mismatch \(ours "x1", theirs "x2"\)$/, /^peer 1 refused: topology digest mismatch \(ours "x2", theirs "x1"\)$/],
  ['secret', { secret: 'one' }, { secret: 'two' },
    /^peer 2 refused: bad cluster secret proof/, /^peer 1 refused: bad cluster secret proof/],
  ['secret on one side', { secret: 'one' }, {},
    /^peer 2 refused: cluster secret configured on one side only \(ours: yes, theirs: no\)$/, /^peer 1 refused: cluster secret configured on one side only \(ours: no, theirs: yes\)$/],
];

for (const [what, aOver, bOver, aLine, bLine] of mismatchCases) {
  t.test(`a ${what} mismatch is refused and logged on both sides`, async (t) => {
    const a = await startNode(1, aOver);
    const b = await startNode(2, bOver);
    t.teardown(() => stopAll([a, b]));
    const ups: number[] = [];
    a.t.onPeerUp((p) => ups.push(p));
    b.t.onPeerUp((p) => ups.push(p));
    a.t.setPeer(2, { host: '127.0.0.1', port: b.port });
    b.t.setPeer(1, { host: '127.0.0.1', port: a.port });
    await waitFor(() => hasLine(a.lines, aLine, WARN) && hasLine(b.lines, bLine, WARN), 3000, `${what} refusal logged on both sides`);
    t.pass(`both sides logged the ${what} refusal`);
    await new Promise((r) => setTimeout(r, 150)); // a retry or two
    t.same(ups, [], 'no link comes up');
    t.ok(a.t.stats.peers[2]!.rejects > 0 && b.t.stats.peers[1]!.rejects > 0);
    const warns = a.lines.filter((l) => l.level === WARN && aLine.test(l.msg)).length;
    t.equal(warns, 1, 'a repeated refusal is logged once at warn');
  });
}

t.test('a secret shared by both sides lets the link up', async (t) => {
  const a = await startNode(1, { secret: 'shh' });
  const b = await startNode(2, { secret: 'shh' });
  t.teardown(() => stopAll([a, b]));
  await connectAll([a, b]);
  a.t.send([append(1, 2, 0, 1)]);
  await waitFor(() => b.received.length === 1, 2000, 'delivered');
  t.pass('delivered');
});

t.test('an unknown node dialing in is refused, and it logs why', async (t) => {
  const a = await startNode(1);
  const b = await startNode(2);
  t.teardown(() => stopAll([a, b]));
  a.t.setPeer(2, { host: '127.0.0.1', port: b.port }); // b does not know node 1
  await waitFor(() => hasLine(a.lines, /^peer 2 refused us: node 1 is not a known peer$/, WARN), 2000, 'refusal');
  t.ok(hasLine(b.lines, /^peer 1 refused: node 1 is not a known peer$/), 'the acceptor logs it too');
  t.notOk(a.t.isUp(2));
  b.t.setPeer(1, { host: '127.0.0.1', port: a.port });
  await waitFor(() => a.t.isUp(2) && b.t.isUp(1), 3000, 'up once b learns about node 1');
  b.t.removePeer(1);
  await waitFor(() => !a.t.isUp(2), 3000, 'a sees the link closed after b removed it');
  t.pass('removePeer closes the links');
});
