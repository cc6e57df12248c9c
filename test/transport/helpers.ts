/** Shared helpers for the peer transport tests: captured logs, transports on ephemeral ports, a scriptable fake peer. */
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { pino, type Logger } from 'pino';
import type { PeerLimits } from '../../src/config/limits.js';
import type { Message, NodeId } from '../../src/raft/types.js';
import { PeerTransport, type PeerTransportOptions } from '../../src/transport/peer-transport.js';
import { encodeFrame, FrameDecoder } from '../../protocol/peer/frame.js';
import { Handshake, type HandshakeConfig } from '../../protocol/peer/handshake.js';

export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

export function captureLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { logger, lines };
}

export const TEST_LIMITS: PeerLimits = {
  frameBytesMax: 1 << 20,
  sendQueueBytesMax: 8 << 20,
  handshakeTimeoutMs: 1000,
  reconnectDelayMsMin: 20,
  reconnectDelayMsMax: 100,
};

export interface TestNode {
  id: NodeId;
  t: PeerTransport;
  lines: LogLine[];
  received: Message[];
  /** One entry per onRaftMessages call: the number of messages delivered. */
  deliveries: number[];
  port: number;
}

export async function startNode(id: NodeId, over: Partial<PeerTransportOptions> = {}): Promise<TestNode> {
  const { logger, lines } = captureLogger();
  const node: Partial<TestNode> & { received: Message[]; deliveries: number[] } = { id, lines, received: [], deliveries: [] };
  const t = new PeerTransport({
    nodeId: id,
    workerIndex: 0,
    clusterId: 'test-cluster',
    topologyDigest: 'digest-1',
    listen: { host: '127.0.0.1', port: 0 },
    peers: new Map(),
    limits: TEST_LIMITS,
    logger,
    onRaftMessages: (msgs) => {
      node.deliveries.push(msgs.length);
      for (const m of msgs) node.received.push(m);
    },
    ...over,
  });
  await t.start();
  node.t = t;
  node.port = t.address.port;
  return node as TestNode;
}

/** Makes every node a peer of every other, and waits until all links are up. */
export async function connectAll(nodes: TestNode[]): Promise<void> {
  for (const a of nodes) for (const b of nodes) if (a !== b) a.t.setPeer(b.id, { host: '127.0.0.1', port: b.port });
  await waitFor(() => nodes.every((a) => nodes.every((b) => a === b || a.t.isUp(b.id))), 3000, 'all links up');
}

export async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export function hasLine(lines: LogLine[], re: RegExp, level?: number): boolean {
  return lines.some((l) => re.test(l.msg) && (level === undefined || l.level === level));
}

export const WARN = 40;

/**
 * A scripted peer speaking the wire protocol by hand. As a dialer it connects to a transport and completes the
 * handshake as node `id`; as an acceptor it listens and answers the handshake of a transport that dials it.
 */
export class FakePeer {
  sock: net.Socket | null = null;
  server: net.Server | null = null;
  readonly frames: unknown[] = [];
  up = false;
  closed = false;

  constructor(private readonly cfg: HandshakeConfig) {}

  /** Dials `port` and completes the handshake; resolves when up. */
  async dial(port: number, expect: NodeId): Promise<void> {
    const sock = net.connect({ host: '127.0.0.1', port });
    this.attach(sock, new Handshake(this.cfg, randomBytes(32), { expect }));
    await waitFor(() => this.up || this.closed, 2000, 'fake peer handshake');
    if (!this.up) throw new Error('fake peer handshake failed');
  }

  /** Listens on an ephemeral port; the first connection is handshaken, then `afterUp` runs. */
  async listen(afterUp: (sock: net.Socket) => void = () => {}): Promise<number> {
    const server = net.createServer((sock) => {
      this.attach(sock, new Handshake(this.cfg, randomBytes(32), { isKnown: () => true }), afterUp);
    });
    this.server = server;
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    return (server.address() as net.AddressInfo).port;
  }

  private attach(sock: net.Socket, hs: Handshake, afterUp: (sock: net.Socket) => void = () => {}): void {
    this.sock = sock;
    const dec = new FrameDecoder(1 << 24);
    sock.on('connect', () => sock.write(encodeFrame(hs.hello())));
    if (!sock.connecting) sock.write(encodeFrame(hs.hello()));
    sock.on('data', (chunk: Buffer) => {
      dec.push(chunk, (body) => {
        if (this.up) {
          this.frames.push(body);
          return;
        }
        const step = hs.receive(body);
        if (step.kind === 'ack') sock.write(encodeFrame(step.body));
        if (step.kind === 'done') {
          this.up = true;
          afterUp(sock);
        }
      });
    });
    sock.on('error', () => {});
    sock.on('close', () => (this.closed = true));
  }

  write(body: unknown): void {
    this.sock?.write(encodeFrame(body));
  }

  async close(): Promise<void> {
    this.sock?.destroy();
    const server = this.server;
    if (server !== null) await new Promise<void>((r) => server.close(() => r()));
  }
}

export function fakeConfig(nodeId: NodeId, over: Partial<HandshakeConfig> = {}): HandshakeConfig {
  return { clusterId: 'test-cluster', nodeId, workerIndex: 0, topologyDigest: 'digest-1', ...over };
}

export function append(from: NodeId, to: NodeId, group: number, index: number, bytes = 100): Message {
  return {
    type: 5, group, from, to, term: 3, prevIndex: index - 1, prevTerm: 3, commit: index - 1,
    entries: [{ term: 3, index, type: 0, data: new Uint8Array(bytes).fill(index & 0xff) }],
  } as Message;
}
