/**
 * PeerTransport: the TCP links between one worker of this node and the same-index worker of every other node.
 *
 * What it owns: a listening socket, one outbound connection per peer (dialed, re-dialed with exponential backoff),
 * the inbound connections peers dialed to us, per-peer send batches, pending application requests, and counters.
 *
 * Connection rule (exactly one connection per ordered pair, no dial races to break):
 *   - every node dials every peer; that outbound link carries everything this node SENDS to the peer
 *     (Raft BATCH frames and APP requests), and the replies to those requests on the way back;
 *   - inbound links carry what the peer sends to us; on them we write only handshake frames and APP replies.
 *   So a pair of nodes uses two TCP connections, one per direction. Raft is fine with this: it needs no ordering
 *   between directions, and each direction keeps its own order (one socket, one writer).
 *
 * Outbound link states:
 *
 *   idle --start/setPeer--> connecting --TCP up, HELLO sent--> handshaking --HELLO_ACK ok--> up
 *     ^                          |                                  |                        |
 *     |                          +------- error/close/timeout/REJECT+------------------------+
 *     |                                          v
 *     +------- backoff timer (min * 2^failures, capped, jittered) -- backoff
 *   any --removePeer/stop--> closed
 *
 * Invariants:
 *   - Raft messages are sent only on an `up` link; otherwise they are dropped and counted (Raft retransmits;
 *     onPeerDown tells the host to call reportUnreachable).
 *   - All messages queued for a peer during one event-loop turn leave as ONE BATCH frame in one setImmediate flush,
 *     heartbeats coalesced (a batch is split only past BATCH_BYTES_TARGET). One msgpack encode per frame; all writes
 *     of a turn go out in one writev (sockets are corked until the flush).
 *   - Bytes buffered for a peer never exceed sendQueueBytesMax by more than one message: beyond it new Raft messages
 *     are dropped and counted, requests fail with PEER_BUSY.
 *   - Nothing a peer sends can throw into the node: a bad frame or a malformed message closes that peer's link with
 *     a logged reason, and nothing from that frame reaches the host; other links are unaffected.
 *   - A request's promise settles exactly once: reply, error reply, timeout, abort, link loss or stop.
 */
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Message, NodeId } from '../raft/types.js';
import type { PeerLimits } from '../config/limits.js';
import { encodeFrame, FrameDecoder, FRAME_HEADER_BYTES } from '../../protocol/peer/frame.js';
import {
  CHALLENGE_BYTES,
  HB_STRIDE,
  HR_STRIDE,
  RAFT_HEARTBEAT,
  RAFT_HEARTBEAT_RESP,
  WireKind,
  expandBatch,
  isWireRecord,
  packRaftMessage,
  validateApp,
  type AppBody,
  type AppKind,
  type BatchBody,
} from '../../protocol/peer/messages.js';
import { Handshake, type HandshakeConfig, type HandshakeStep } from '../../protocol/peer/handshake.js';

/** Largest frame accepted before the handshake completes, in bytes (handshake frames are under 3 KiB). */
export const HANDSHAKE_FRAME_BYTES_MAX = 8 * 1024;
/** Most inbound connections in the handshake at once; more are closed at once (unauthenticated memory bound). */
export const INBOUND_HANDSHAKES_MAX = 64;
/** A batch is cut into another frame once its estimated size passes this, in bytes (keeps decode pauses short). */
export const BATCH_BYTES_TARGET = 1024 * 1024;

export interface PeerAddress {
  host: string;
  port: number;
}

export interface PeerTransportOptions {
  nodeId: NodeId;
  workerIndex: number;
  clusterId: string;
  /** Cluster secret: when set, peers must prove they know it (HMAC-SHA256 challenge-response). */
  secret?: string;
  /** The cluster runtime's digest of the shard-to-worker map; peers with another digest are refused. */
  topologyDigest: string;
  listen: PeerAddress;
  peers: Map<NodeId, PeerAddress>;
  limits: PeerLimits;
  logger: Logger;
  /** Called once per received BATCH frame with its validated messages (all addressed to this node). */
  onRaftMessages(msgs: Message[]): void;
  /** Serves a peer's `request`; the resolved value (or the rejection's code and message) goes back. */
  onRequest?(from: NodeId, payload: unknown): Promise<unknown>;
  /** Protocol version to announce (tests only). */
  protocolVersion?: number;
}

export type PeerRequestErrorCode =
  /** No reply within the timeout. */
  | 'PEER_TIMEOUT'
  /** The link to the peer is not up, or was lost before the reply came. */
  | 'PEER_DOWN'
  /** The destination is not a configured peer. */
  | 'PEER_UNKNOWN'
  /** The link's send buffer is full. */
  | 'PEER_BUSY'
  /** The request (or its reply) could not be encoded, or exceeds frameBytesMax. */
  | 'PEER_ENCODE'
  /** The caller's AbortSignal fired. */
  | 'PEER_ABORTED'
  /** The transport was stopped. */
  | 'PEER_STOPPED'
  /** The peer's handler failed; `remoteCode` holds the code it gave. */
  | 'PEER_REMOTE';

export class PeerRequestError extends Error {
  constructor(
    readonly code: PeerRequestErrorCode,
    message: string,
    /** For PEER_REMOTE: the `code` of the error the peer's handler threw (or 'ERR'). */
    readonly remoteCode?: string,
  ) {
    super(message);
    this.name = 'PeerRequestError';
  }
}

/** Counters for one peer; they survive reconnects. */
export interface PeerStats {
  /** The outbound link is up. */
  up: boolean;
  /** Bytes written to the outbound socket and not yet taken by the kernel (bounded by sendQueueBytesMax). */
  bufferedBytes: number;
  framesSent: number;
  bytesSent: number;
  /** Raft messages sent (coalesced heartbeats included, one each). */
  messagesSent: number;
  batchesSent: number;
  heartbeatsCoalesced: number;
  framesReceived: number;
  bytesReceived: number;
  messagesReceived: number;
  batchesReceived: number;
  /** Raft messages not sent: link down, send buffer full, or oversized. */
  drops: number;
  /** Handshakes refused, by us or by the peer. */
  rejects: number;
  /** Links closed because the peer broke the protocol. */
  protocolErrors: number;
  /** Outbound handshakes completed. */
  connects: number;
  /** Outbound links lost after being up. */
  disconnects: number;
  requestsSent: number;
  requestsFailed: number;
  requestsServed: number;
}

export interface PeerTransportStats {
  peers: Record<number, PeerStats>;
  framesSent: number;
  framesReceived: number;
  messagesSent: number;
  messagesReceived: number;
  bytesSent: number;
  bytesReceived: number;
  batchesSent: number;
  /** messagesSent / batchesSent. */
  messagesPerBatchSent: number;
  drops: number;
  /** Messages whose `to` is not a configured peer. */
  unroutable: number;
  rejects: number;
  /** Protocol errors on connections whose peer was not identified yet (garbage, port scans). */
  protocolErrorsUnidentified: number;
  protocolErrors: number;
}

function newPeerStats(): PeerStats {
  return {
    up: false, bufferedBytes: 0, framesSent: 0, bytesSent: 0, messagesSent: 0, batchesSent: 0, heartbeatsCoalesced: 0,
    framesReceived: 0, bytesReceived: 0, messagesReceived: 0, batchesReceived: 0, drops: 0, rejects: 0,
    protocolErrors: 0, connects: 0, disconnects: 0, requestsSent: 0, requestsFailed: 0, requestsServed: 0,
  };
}

interface PendingRequest {
  id: number;
  resolve(value: unknown): void;
  reject(err: PeerRequestError): void;
  timer: NodeJS.Timeout;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

type OutState = 'idle' | 'connecting' | 'handshaking' | 'up' | 'backoff' | 'closed';

interface OutLink {
  readonly peer: NodeId;
  addr: PeerAddress;
  state: OutState;
  socket: net.Socket | null;
  decoder: FrameDecoder | null;
  hs: Handshake | null;
  hsTimer: NodeJS.Timeout | null;
  retryTimer: NodeJS.Timeout | null;
  failures: number;
  /** The batch being built this turn (Raft messages in positional wire form). */
  msgs: unknown[][];
  hb: number[];
  hr: number[];
  count: number;
  estBytes: number;
  dirty: boolean;
  pending: Map<number, PendingRequest>;
  readonly stats: PeerStats;
}

interface InLink {
  readonly socket: net.Socket;
  readonly remote: string;
  readonly decoder: FrameDecoder;
  readonly hs: Handshake;
  hsTimer: NodeJS.Timeout | null;
  /** Identified peer after the handshake (0 before). */
  peer: NodeId;
  closed: boolean;
}

/** Upper bound of a message's msgpack size (as encoded by frame.ts, field names included), in bytes. */
function estimateBytes(m: Message): number {
  switch (m.type) {
    case 5 /* Append */: {
      let n = 192;
      const es = m.entries;
      for (let i = 0; i < es.length; i++) n += 56 + es[i]!.data.length;
      return n;
    }
    case 9 /* Snapshot */:
      return 256 + m.data.length + 10 * (m.meta.conf.voters.length + m.meta.conf.learners.length);
    case 12 /* ReadIndex */:
    case 13 /* ReadIndexResp */:
      return 160 + m.ctx.length;
    case 7 /* Heartbeat */:
      return HB_STRIDE * 9;
    case 8 /* HeartbeatResp */:
      return HR_STRIDE * 9;
    default:
      return 160;
  }
}

export class PeerTransport {
  private readonly opts: PeerTransportOptions;
  private readonly log: Logger;
  private readonly limits: PeerLimits;
  private readonly hsConfig: HandshakeConfig;
  private readonly out = new Map<NodeId, OutLink>();
  private readonly inbound = new Map<NodeId, InLink>();
  private readonly handshaking = new Set<InLink>();
  private readonly peerStats = new Map<NodeId, PeerStats>();
  private readonly upListeners: Array<(peer: NodeId) => void> = [];
  private readonly downListeners: Array<(peer: NodeId) => void> = [];
  private server: net.Server | null = null;
  private started = false;
  private stopped = false;
  private nextRequestId = 1;
  /** Links with queued messages this turn. */
  private readonly dirty: OutLink[] = [];
  /** Sockets corked this turn, uncorked by the flush. */
  private readonly corked: net.Socket[] = [];
  private flushHandle: NodeJS.Immediate | null = null;
  private readonly flushBound = (): void => this.flush();
  private unroutable = 0;
  private rejectsUnidentified = 0;
  private protocolErrorsUnidentified = 0;
  private lastUnidentifiedLogMs = 0;
  private suppressedUnidentifiedLogs = 0;
  private readonly recvScratch: Message[] = [];
  /** Last handshake refusal line logged at warn, per known peer. */
  private readonly refusalLogged = new Map<NodeId, string>();

  constructor(opts: PeerTransportOptions) {
    if (!(Number.isSafeInteger(opts.nodeId) && opts.nodeId > 0)) {
      throw new RangeError(`nodeId must be a positive integer, got ${opts.nodeId}`);
    }
    if (!(Number.isSafeInteger(opts.workerIndex) && opts.workerIndex >= 0)) {
      throw new RangeError(`workerIndex must be a non-negative integer, got ${opts.workerIndex}`);
    }
    const l = opts.limits;
    for (const key of ['frameBytesMax', 'sendQueueBytesMax', 'handshakeTimeoutMs', 'reconnectDelayMsMin', 'reconnectDelayMsMax'] as const) {
      if (!(Number.isSafeInteger(l[key]) && l[key] > 0)) throw new RangeError(`limits.${key} must be a positive integer, got ${l[key]}`);
    }
    if (l.frameBytesMax > 0xffffffff) throw new RangeError(`limits.frameBytesMax must be at most 2^32-1, got ${l.frameBytesMax}`);
    if (l.reconnectDelayMsMax < l.reconnectDelayMsMin) {
      throw new RangeError(`limits.reconnectDelayMsMax (${l.reconnectDelayMsMax}) must be >= reconnectDelayMsMin (${l.reconnectDelayMsMin})`);
    }
    this.opts = opts;
    this.limits = l;
    this.log = opts.logger.child({ component: 'peer-transport', node: opts.nodeId, worker: opts.workerIndex });
    this.hsConfig = {
      clusterId: opts.clusterId,
      nodeId: opts.nodeId,
      workerIndex: opts.workerIndex,
      topologyDigest: opts.topologyDigest,
      secret: opts.secret,
      ...(opts.protocolVersion !== undefined ? { version: opts.protocolVersion } : {}),
    };
    // Validate the handshake config now (throws on bad lengths) rather than on first connection.
    new Handshake(this.hsConfig, new Uint8Array(CHALLENGE_BYTES), { expect: 1 });
    for (const [id, addr] of opts.peers) this.addLink(id, addr);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Lifecycle
  // -------------------------------------------------------------------------------------------------------------

  /** Starts listening, then dials every peer. Resolves once listening. */
  async start(): Promise<void> {
    if (this.started) throw new Error('PeerTransport.start: already started');
    this.started = true;
    const server = net.createServer((sock) => this.onInbound(sock));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      server.once('error', onError);
      server.listen(this.opts.listen.port, this.opts.listen.host, () => {
        server.off('error', onError);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'peer listener error'));
    this.log.info({ address: this.address }, 'peer transport listening');
    for (const link of this.out.values()) this.dial(link);
  }

  /** Closes every link and the listener; pending requests fail with PEER_STOPPED. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.flushHandle !== null) {
      clearImmediate(this.flushHandle);
      this.flushHandle = null;
    }
    for (const link of this.out.values()) this.closeOut(link, 'transport stopped', 'PEER_STOPPED');
    for (const link of this.inbound.values()) this.closeIn(link);
    for (const link of this.handshaking) this.closeIn(link);
    this.dirty.length = 0;
    this.corked.length = 0;
    const server = this.server;
    if (server !== null) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** The bound listening address (after start; the port is real even when listen.port was 0). */
  get address(): PeerAddress {
    const a = this.server?.address();
    if (a === null || a === undefined || typeof a === 'string') return { ...this.opts.listen };
    return { host: a.address, port: a.port };
  }

  onPeerUp(cb: (peer: NodeId) => void): void {
    this.upListeners.push(cb);
  }

  onPeerDown(cb: (peer: NodeId) => void): void {
    this.downListeners.push(cb);
  }

  /** Adds a peer or changes its address (the old link is closed and a new one dialed). */
  setPeer(id: NodeId, addr: PeerAddress): void {
    if (this.stopped) return;
    if (!(Number.isSafeInteger(id) && id > 0) || id === this.opts.nodeId) {
      throw new RangeError(`setPeer: peer id must be a positive integer other than our own (${this.opts.nodeId}), got ${id}`);
    }
    const old = this.out.get(id);
    if (old !== undefined) {
      if (old.addr.host === addr.host && old.addr.port === addr.port) return;
      this.closeOut(old, `peer ${id} moved to ${addr.host}:${addr.port}`, 'PEER_DOWN');
      this.out.delete(id);
    }
    const link = this.addLink(id, addr);
    if (this.started) this.dial(link);
  }

  /** Forgets a peer: its links close, its pending requests fail with PEER_DOWN, its inbound link is refused. */
  removePeer(id: NodeId): void {
    const link = this.out.get(id);
    if (link !== undefined) {
      this.closeOut(link, 'peer removed', 'PEER_DOWN');
      this.out.delete(id);
    }
    const inLink = this.inbound.get(id);
    if (inLink !== undefined) this.closeIn(inLink);
  }

  /** Whether the outbound link to `peer` is up (messages to it are being sent). */
  isUp(peer: NodeId): boolean {
    return this.out.get(peer)?.state === 'up';
  }

  get stats(): PeerTransportStats {
    const s: PeerTransportStats = {
      peers: {}, framesSent: 0, framesReceived: 0, messagesSent: 0, messagesReceived: 0, bytesSent: 0,
      bytesReceived: 0, batchesSent: 0, messagesPerBatchSent: 0, drops: 0, unroutable: this.unroutable,
      rejects: this.rejectsUnidentified, protocolErrorsUnidentified: this.protocolErrorsUnidentified,
      protocolErrors: this.protocolErrorsUnidentified,
    };
    for (const [id, p] of this.peerStats) {
      const link = this.out.get(id);
      s.peers[id] = { ...p, up: link?.state === 'up', bufferedBytes: link?.socket?.writableLength ?? 0 };
      s.framesSent += p.framesSent;
      s.framesReceived += p.framesReceived;
      s.messagesSent += p.messagesSent;
      s.messagesReceived += p.messagesReceived;
      s.bytesSent += p.bytesSent;
      s.bytesReceived += p.bytesReceived;
      s.batchesSent += p.batchesSent;
      s.drops += p.drops;
      s.rejects += p.rejects;
      s.protocolErrors += p.protocolErrors;
    }
    s.messagesPerBatchSent = s.batchesSent === 0 ? 0 : s.messagesSent / s.batchesSent;
    return s;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Sending Raft messages
  // -------------------------------------------------------------------------------------------------------------

  /**
   * Queues messages for their `to` node; they leave at the end of this event-loop turn, one BATCH frame per peer.
   * Messages for peers that are down, unknown, or whose send buffer is full are dropped and counted.
   */
  send(msgs: readonly Message[]): void {
    if (this.stopped) return;
    const queueMax = this.limits.sendQueueBytesMax;
    const frameMax = this.limits.frameBytesMax;
    for (let i = 0; i < msgs.length; i++) {
      const m = msgs[i]!;
      const link = this.out.get(m.to);
      if (link === undefined) {
        this.unroutable++;
        continue;
      }
      if (link.state !== 'up' || m.from !== this.opts.nodeId) {
        if (m.from !== this.opts.nodeId) this.log.error({ msgFrom: m.from, type: m.type }, 'dropping a message not from this node');
        link.stats.drops++;
        continue;
      }
      const est = estimateBytes(m);
      if (est > frameMax) {
        link.stats.drops++;
        this.log.error({ peer: link.peer, type: m.type, group: m.group, bytes: est, frameBytesMax: frameMax },
          'dropping a message larger than frameBytesMax (raise frameBytesMax above the Raft append/snapshot sizes)');
        continue;
      }
      if (link.socket!.writableLength + link.estBytes + est > queueMax) {
        link.stats.drops++;
        continue;
      }
      if (link.count > 0 && link.estBytes + est > BATCH_BYTES_TARGET) this.flushLink(link);
      if (m.type === RAFT_HEARTBEAT) {
        link.hb.push(m.group, m.term, m.commit, m.ctx);
      } else if (m.type === RAFT_HEARTBEAT_RESP) {
        link.hr.push(m.group, m.term, m.ctx);
      } else {
        link.msgs.push(packRaftMessage(m));
      }
      link.count++;
      link.estBytes += est;
      if (!link.dirty) {
        link.dirty = true;
        this.dirty.push(link);
      }
    }
    if (this.dirty.length > 0) this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushHandle === null) this.flushHandle = setImmediate(this.flushBound);
  }

  private flush(): void {
    this.flushHandle = null;
    const dirty = this.dirty;
    for (let i = 0; i < dirty.length; i++) {
      const link = dirty[i]!;
      link.dirty = false;
      if (link.count > 0) this.flushLink(link);
    }
    dirty.length = 0;
    const corked = this.corked;
    for (let i = 0; i < corked.length; i++) corked[i]!.uncork();
    corked.length = 0;
  }

  /** Encodes the link's batch as one frame and writes it (corked until the turn's flush). */
  private flushLink(link: OutLink): void {
    const count = link.count;
    const hbCount = link.hb.length / HB_STRIDE + link.hr.length / HR_STRIDE;
    const sock = link.socket;
    if (sock === null || link.state !== 'up') {
      link.stats.drops += count;
      this.resetBatch(link);
      return;
    }
    let frame: Buffer;
    try {
      const body: BatchBody = { k: WireKind.Batch, m: link.msgs, hb: link.hb, hr: link.hr };
      frame = encodeFrame(body);
    } catch (err) {
      link.stats.drops += count;
      this.resetBatch(link);
      this.log.error({ err, peer: link.peer }, 'could not encode a batch; dropped');
      return;
    }
    this.resetBatch(link);
    if (frame.length - FRAME_HEADER_BYTES > this.limits.frameBytesMax) {
      link.stats.drops += count;
      this.log.error({ peer: link.peer, bytes: frame.length, messages: count }, 'batch frame exceeds frameBytesMax; dropped');
      return;
    }
    this.write(sock, frame);
    const st = link.stats;
    st.framesSent++;
    st.batchesSent++;
    st.messagesSent += count;
    st.heartbeatsCoalesced += hbCount;
    st.bytesSent += frame.length;
  }

  private resetBatch(link: OutLink): void {
    link.msgs.length = 0;
    link.hb.length = 0;
    link.hr.length = 0;
    link.count = 0;
    link.estBytes = 0;
  }

  /** Writes a frame; the socket stays corked until this turn's flush, so a turn's frames leave in one writev. */
  private write(sock: net.Socket, frame: Buffer): void {
    if (sock.writableCorked === 0) {
      sock.cork();
      this.corked.push(sock);
      this.scheduleFlush();
    }
    sock.write(frame);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Application requests
  // -------------------------------------------------------------------------------------------------------------

  /**
   * Sends `payload` to `to`'s onRequest handler and resolves with its result. Rejects with a PeerRequestError:
   * PEER_TIMEOUT after timeoutMs, PEER_DOWN if the link is not up or is lost before the reply, PEER_REMOTE if the
   * handler failed, PEER_UNKNOWN, PEER_BUSY, PEER_ENCODE, PEER_ABORTED (signal), PEER_STOPPED.
   */
  request(to: NodeId, payload: unknown, timeoutMs: number, signal?: AbortSignal): Promise<unknown> {
    if (this.stopped) return Promise.reject(new PeerRequestError('PEER_STOPPED', 'peer transport stopped'));
    const link = this.out.get(to);
    if (link === undefined) return Promise.reject(new PeerRequestError('PEER_UNKNOWN', `node ${to} is not a peer`));
    if (signal?.aborted === true) return Promise.reject(new PeerRequestError('PEER_ABORTED', 'request aborted'));
    if (!(timeoutMs > 0)) return Promise.reject(new RangeError(`timeoutMs must be > 0, got ${timeoutMs}`));
    const sock = link.socket;
    if (link.state !== 'up' || sock === null) {
      link.stats.requestsFailed++;
      return Promise.reject(new PeerRequestError('PEER_DOWN', `link to peer ${to} is down`));
    }
    if (sock.writableLength + link.estBytes > this.limits.sendQueueBytesMax) {
      link.stats.requestsFailed++;
      return Promise.reject(new PeerRequestError('PEER_BUSY', `send buffer to peer ${to} is full`));
    }
    const id = this.nextRequestId++;
    let frame: Buffer;
    try {
      const body: AppBody = { k: WireKind.App, id, kind: 'req', payload };
      frame = encodeFrame(body);
    } catch (err) {
      link.stats.requestsFailed++;
      return Promise.reject(new PeerRequestError('PEER_ENCODE', `request to peer ${to} cannot be encoded: ${(err as Error).message}`));
    }
    if (frame.length - FRAME_HEADER_BYTES > this.limits.frameBytesMax) {
      link.stats.requestsFailed++;
      return Promise.reject(new PeerRequestError('PEER_ENCODE', `request to peer ${to} is ${frame.length} bytes > frameBytesMax ${this.limits.frameBytesMax}`));
    }
    return new Promise<unknown>((resolve, reject) => {
      const pending: PendingRequest = {
        id,
        resolve,
        reject,
        timer: setTimeout(() => {
          if (link.pending.delete(id)) {
            this.settleCleanup(pending);
            link.stats.requestsFailed++;
            reject(new PeerRequestError('PEER_TIMEOUT', `request ${id} to peer ${to} timed out after ${timeoutMs} ms`));
          }
        }, timeoutMs),
        signal,
        onAbort: undefined,
      };
      if (signal !== undefined) {
        pending.onAbort = () => {
          if (link.pending.delete(id)) {
            this.settleCleanup(pending);
            link.stats.requestsFailed++;
            reject(new PeerRequestError('PEER_ABORTED', `request ${id} to peer ${to} aborted`));
          }
        };
        signal.addEventListener('abort', pending.onAbort, { once: true });
      }
      link.pending.set(id, pending);
      link.stats.requestsSent++;
      this.write(sock, frame);
    });
  }

  private settleCleanup(p: PendingRequest): void {
    clearTimeout(p.timer);
    if (p.signal !== undefined && p.onAbort !== undefined) p.signal.removeEventListener('abort', p.onAbort);
  }

  private failPending(link: OutLink, code: PeerRequestErrorCode, why: string): void {
    if (link.pending.size === 0) return;
    const all = [...link.pending.values()];
    link.pending.clear();
    for (const p of all) {
      this.settleCleanup(p);
      link.stats.requestsFailed++;
      p.reject(new PeerRequestError(code, `request ${p.id} to peer ${link.peer} failed: ${why}`));
    }
  }

  // -------------------------------------------------------------------------------------------------------------
  // Outbound links
  // -------------------------------------------------------------------------------------------------------------

  private statsFor(id: NodeId): PeerStats {
    let s = this.peerStats.get(id);
    if (s === undefined) {
      s = newPeerStats();
      this.peerStats.set(id, s);
    }
    return s;
  }

  private addLink(id: NodeId, addr: PeerAddress): OutLink {
    if (!(Number.isSafeInteger(id) && id > 0) || id === this.opts.nodeId) {
      throw new RangeError(`peer id must be a positive integer other than our own (${this.opts.nodeId}), got ${id}`);
    }
    const link: OutLink = {
      peer: id, addr: { host: addr.host, port: addr.port }, state: 'idle', socket: null, decoder: null, hs: null,
      hsTimer: null, retryTimer: null, failures: 0, msgs: [], hb: [], hr: [], count: 0,
      estBytes: 0, dirty: false, pending: new Map(), stats: this.statsFor(id),
    };
    this.out.set(id, link);
    return link;
  }

  private dial(link: OutLink): void {
    if (this.stopped || link.state === 'closed') return;
    link.retryTimer = null;
    link.state = 'connecting';
    const sock = net.connect({ host: link.addr.host, port: link.addr.port });
    sock.setNoDelay(true);
    link.socket = sock;
    link.decoder = new FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX);
    const hs = new Handshake(this.hsConfig, randomBytes(CHALLENGE_BYTES), { expect: link.peer });
    link.hs = hs;
    // The timeout covers the TCP connect too (a SYN to a dead host can hang for minutes).
    link.hsTimer = setTimeout(() => {
      if (link.socket === sock) this.outFailed(link, `handshake timed out after ${this.limits.handshakeTimeoutMs} ms`);
    }, this.limits.handshakeTimeoutMs);
    const onFrame = (body: unknown): void => this.onOutFrame(link, sock, body);
    sock.on('connect', () => {
      if (link.socket !== sock) return;
      sock.setKeepAlive(true, 1000);
      link.state = 'handshaking';
      sock.write(encodeFrame(hs.hello()));
    });
    sock.on('data', (chunk: Buffer) => {
      if (link.socket !== sock) return;
      link.stats.bytesReceived += chunk.length;
      const err = link.decoder!.push(chunk, onFrame);
      if (err !== null && link.socket === sock) this.outProtocolError(link, err.message);
    });
    sock.on('error', (err) => {
      if (link.socket === sock) this.outFailed(link, err.message);
    });
    sock.on('close', () => {
      if (link.socket === sock) this.outFailed(link, 'connection closed by peer');
    });
  }

  private onOutFrame(link: OutLink, sock: net.Socket, body: unknown): void {
    if (link.socket !== sock) return;
    link.stats.framesReceived++;
    if (link.state === 'handshaking' || link.state === 'connecting') {
      this.onOutHandshake(link, sock, link.hs!.receive(body));
      return;
    }
    // Up: only replies to our requests come back on an outbound link.
    if (!isWireRecord(body) || body['k'] !== WireKind.App) {
      this.outProtocolError(link, `unexpected frame kind ${isWireRecord(body) ? String(body['k']) : typeof body} on an outbound link`);
      return;
    }
    const app = validateApp(body);
    if (typeof app === 'string') {
      this.outProtocolError(link, app);
      return;
    }
    if (app.kind === 'req') {
      this.outProtocolError(link, 'request received on an outbound link');
      return;
    }
    const p = link.pending.get(app.id);
    if (p === undefined) return; // timed out or aborted already
    link.pending.delete(app.id);
    this.settleCleanup(p);
    if (app.kind === 'res') {
      p.resolve(app.payload);
    } else {
      link.stats.requestsFailed++;
      const e = isWireRecord(app.payload) ? app.payload : {};
      const code = typeof e['code'] === 'string' ? e['code'] : 'ERR';
      const msg = typeof e['message'] === 'string' ? e['message'] : 'remote error';
      p.reject(new PeerRequestError('PEER_REMOTE', `peer ${link.peer}: ${msg}`, code));
    }
  }

  private onOutHandshake(link: OutLink, sock: net.Socket, step: HandshakeStep): void {
    switch (step.kind) {
      case 'ack':
        sock.write(encodeFrame(step.body));
        return;
      case 'done': {
        if (link.hsTimer !== null) clearTimeout(link.hsTimer);
        link.hsTimer = null;
        link.hs = null;
        link.decoder!.setFrameBytesMax(this.limits.frameBytesMax);
        link.state = 'up';
        link.failures = 0;
        this.refusalLogged.delete(link.peer);
        link.stats.connects++;
        this.log.info({ peer: link.peer, addr: `${link.addr.host}:${link.addr.port}` }, `peer ${link.peer} link up`);
        this.emit(this.upListeners, link.peer);
        return;
      }
      case 'refuse':
        link.stats.rejects++;
        this.logRefusal(link.peer, `peer ${link.peer} refused: ${step.reason}`, step.code);
        sock.end(encodeFrame(step.body));
        sock.destroySoon();
        this.outFailed(link, step.reason, true);
        return;
      case 'refused':
        link.stats.rejects++;
        this.logRefusal(link.peer, `peer ${link.peer} refused us: ${step.reason}`, step.code);
        this.outFailed(link, `refused by peer: ${step.reason}`, true);
        return;
    }
  }

  /**
   * Logs a handshake refusal with a known peer at warn the first time, at debug while it repeats (reconnects retry
   * every reconnectDelayMsMax); both directions share the memory, which is cleared when the link comes up.
   */
  private logRefusal(peer: NodeId, line: string, code: string): void {
    if (this.refusalLogged.get(peer) === line) {
      this.log.debug({ peer, code }, line);
      return;
    }
    this.refusalLogged.set(peer, line);
    this.log.warn({ peer, code }, line);
  }

  private outProtocolError(link: OutLink, reason: string): void {
    link.stats.protocolErrors++;
    this.log.warn({ peer: link.peer, reason }, `peer ${link.peer} broke the protocol on our link to it; closing: ${reason}`);
    this.outFailed(link, `protocol error: ${reason}`, true);
  }

  /**
   * The current connection attempt or link is over: clean up synchronously (the socket's late events are ignored
   * because link.socket no longer points at it), fail pending requests, and schedule a reconnect.
   */
  private outFailed(link: OutLink, reason: string, logged = false): void {
    const sock = link.socket;
    const wasUp = link.state === 'up';
    this.dropSocket(link);
    if (sock !== null && !sock.destroyed && !sock.writableEnded) sock.destroy();
    this.failPending(link, 'PEER_DOWN', `link lost (${reason})`);
    if (wasUp) {
      link.stats.disconnects++;
      if (!logged) this.log.warn({ peer: link.peer, reason }, `peer ${link.peer} link down: ${reason}`);
    } else if (!logged) {
      this.log.debug({ peer: link.peer, reason, failures: link.failures }, `peer ${link.peer} connection attempt failed: ${reason}`);
    }
    if (!this.stopped && link.state !== 'closed') {
      const min = this.limits.reconnectDelayMsMin;
      const max = this.limits.reconnectDelayMsMax;
      const base = Math.min(max, min * 2 ** Math.min(link.failures, 30));
      link.failures++;
      const delay = Math.max(1, Math.round(base / 2 + Math.random() * (base / 2)));
      link.state = 'backoff';
      link.retryTimer = setTimeout(() => this.dial(link), delay);
    }
    if (wasUp) this.emit(this.downListeners, link.peer);
  }

  /** Detaches the socket and timers from the link; drops the queued batch. */
  private dropSocket(link: OutLink): void {
    if (link.hsTimer !== null) clearTimeout(link.hsTimer);
    if (link.retryTimer !== null) clearTimeout(link.retryTimer);
    link.hsTimer = null;
    link.retryTimer = null;
    link.decoder?.close();
    link.decoder = null;
    link.hs = null;
    link.socket = null;
    if (link.count > 0) {
      link.stats.drops += link.count;
      this.resetBatch(link);
    }
  }

  private closeOut(link: OutLink, reason: string, code: PeerRequestErrorCode): void {
    const sock = link.socket;
    const wasUp = link.state === 'up';
    link.state = 'closed';
    this.dropSocket(link);
    sock?.destroy();
    this.failPending(link, code, reason);
    if (wasUp) {
      link.stats.disconnects++;
      this.log.info({ peer: link.peer, reason }, `peer ${link.peer} link closed: ${reason}`);
      if (!this.stopped) this.emit(this.downListeners, link.peer);
    }
  }

  private emit(listeners: Array<(peer: NodeId) => void>, peer: NodeId): void {
    for (const cb of listeners) {
      try {
        cb(peer);
      } catch (err) {
        this.log.error({ err, peer }, 'peer up/down listener threw');
      }
    }
  }

  // -------------------------------------------------------------------------------------------------------------
  // Inbound links
  // -------------------------------------------------------------------------------------------------------------

  private onInbound(sock: net.Socket): void {
    const remote = `${sock.remoteAddress ?? '?'}:${sock.remotePort ?? '?'}`;
    if (this.stopped || this.handshaking.size >= INBOUND_HANDSHAKES_MAX) {
      this.logUnidentified(`inbound connection from ${remote} refused: ${this.stopped ? 'stopping' : 'too many handshakes in progress'}`);
      sock.destroy();
      return;
    }
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 1000);
    const link: InLink = {
      socket: sock,
      remote,
      decoder: new FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX),
      hs: new Handshake(this.hsConfig, randomBytes(CHALLENGE_BYTES), { isKnown: (id) => this.out.has(id) }),
      hsTimer: null,
      peer: 0,
      closed: false,
    };
    this.handshaking.add(link);
    link.hsTimer = setTimeout(() => {
      this.inProtocolError(link, `handshake timed out after ${this.limits.handshakeTimeoutMs} ms`, false);
    }, this.limits.handshakeTimeoutMs);
    const onFrame = (body: unknown): void => this.onInFrame(link, body);
    sock.on('data', (chunk: Buffer) => {
      if (link.closed) return;
      if (link.peer !== 0) this.statsFor(link.peer).bytesReceived += chunk.length;
      const err = link.decoder.push(chunk, onFrame);
      if (err !== null && !link.closed) this.inProtocolError(link, err.message, true);
    });
    sock.on('error', (err) => {
      if (!link.closed) this.log.debug({ peer: link.peer, remote, err: err.message }, 'inbound peer connection error');
      this.closeIn(link);
    });
    sock.on('close', () => this.closeIn(link));
    sock.write(encodeFrame(link.hs.hello()));
  }

  private onInFrame(link: InLink, body: unknown): void {
    if (link.closed) return;
    if (link.peer === 0) {
      this.onInHandshake(link, link.hs.receive(body));
      return;
    }
    const st = this.statsFor(link.peer);
    st.framesReceived++;
    if (!isWireRecord(body)) {
      this.inProtocolError(link, `frame body is ${Array.isArray(body) ? 'an array' : typeof body}, not an object`, true);
      return;
    }
    const k = body['k'];
    if (k === WireKind.Batch) {
      const out = this.recvScratch;
      const err = expandBatch(body, link.peer, this.opts.nodeId, out);
      if (err !== null) {
        out.length = 0;
        this.inProtocolError(link, err, true);
        return;
      }
      const msgs = out.slice();
      out.length = 0;
      st.batchesReceived++;
      st.messagesReceived += msgs.length;
      if (msgs.length === 0) return;
      try {
        this.opts.onRaftMessages(msgs);
      } catch (err2) {
        this.log.error({ err: err2, peer: link.peer }, 'onRaftMessages threw');
      }
      return;
    }
    if (k === WireKind.App) {
      const app = validateApp(body);
      if (typeof app === 'string') {
        this.inProtocolError(link, app, true);
        return;
      }
      if (app.kind !== 'req') {
        this.inProtocolError(link, `APP ${app.kind} received on an inbound link`, true);
        return;
      }
      this.serveRequest(link, app.id, app.payload);
      return;
    }
    this.inProtocolError(link, `unexpected frame kind ${String(k)} on an inbound link`, true);
  }

  private onInHandshake(link: InLink, step: HandshakeStep): void {
    const sock = link.socket;
    switch (step.kind) {
      case 'ack':
        sock.write(encodeFrame(step.body));
        return;
      case 'done': {
        if (link.hsTimer !== null) clearTimeout(link.hsTimer);
        link.hsTimer = null;
        this.handshaking.delete(link);
        const old = this.inbound.get(step.peer);
        if (old !== undefined) {
          this.log.info({ peer: step.peer }, `peer ${step.peer} reconnected; closing its previous inbound link`);
          this.closeIn(old);
        }
        link.peer = step.peer;
        link.decoder.setFrameBytesMax(this.limits.frameBytesMax);
        this.inbound.set(step.peer, link);
        this.log.debug({ peer: step.peer, remote: link.remote }, `inbound link from peer ${step.peer} up`);
        return;
      }
      case 'refuse': {
        const who = step.peer !== 0 ? `peer ${step.peer}` : `inbound connection from ${link.remote}`;
        this.countReject(step.peer);
        this.logInRefusal(step.peer, `${who} refused: ${step.reason}`, step.code);
        sock.end(encodeFrame(step.body));
        this.closeIn(link, false);
        return;
      }
      case 'refused': {
        this.countReject(step.peer);
        this.logInRefusal(step.peer, `peer ${step.peer} refused us: ${step.reason}`, step.code);
        this.closeIn(link);
        return;
      }
    }
  }

  private countReject(peer: NodeId): void {
    if (peer !== 0 && this.out.has(peer)) this.statsFor(peer).rejects++;
    else this.rejectsUnidentified++;
  }

  private logInRefusal(peer: NodeId, line: string, code: string): void {
    if (peer !== 0 && this.out.has(peer)) this.logRefusal(peer, line, code);
    else this.logUnidentified(line, code);
  }

  /** Logs about unidentified connections are limited to one line per second (a port scan must not flood logs). */
  private logUnidentified(line: string, code?: string): void {
    const now = Date.now();
    if (now - this.lastUnidentifiedLogMs < 1000) {
      this.suppressedUnidentifiedLogs++;
      this.log.debug({ code }, line);
      return;
    }
    this.lastUnidentifiedLogMs = now;
    const suppressed = this.suppressedUnidentifiedLogs;
    this.suppressedUnidentifiedLogs = 0;
    this.log.warn(suppressed > 0 ? { code, suppressed } : { code }, line);
  }

  private inProtocolError(link: InLink, reason: string, isProtocol: boolean): void {
    if (link.closed) return;
    if (link.peer !== 0) {
      if (isProtocol) this.statsFor(link.peer).protocolErrors++;
      this.log.warn({ peer: link.peer, reason }, `closing the link from peer ${link.peer}: ${reason}`);
    } else {
      if (isProtocol) this.protocolErrorsUnidentified++;
      this.logUnidentified(`closing inbound connection from ${link.remote}: ${reason}`);
    }
    this.closeIn(link);
  }

  private closeIn(link: InLink, destroy = true): void {
    if (link.closed) return;
    link.closed = true;
    link.decoder.close();
    if (link.hsTimer !== null) clearTimeout(link.hsTimer);
    link.hsTimer = null;
    this.handshaking.delete(link);
    if (link.peer !== 0 && this.inbound.get(link.peer) === link) this.inbound.delete(link.peer);
    if (destroy) link.socket.destroy();
    else link.socket.destroySoon();
  }

  private serveRequest(link: InLink, id: number, payload: unknown): void {
    const handler = this.opts.onRequest;
    if (handler === undefined) {
      this.reply(link, id, 'err', { code: 'NO_HANDLER', message: 'this node serves no peer requests' });
      return;
    }
    let p: Promise<unknown>;
    try {
      p = handler.call(this.opts, link.peer, payload);
    } catch (err) {
      this.reply(link, id, 'err', errorPayload(err));
      return;
    }
    Promise.resolve(p).then(
      (value) => this.reply(link, id, 'res', value),
      (err: unknown) => this.reply(link, id, 'err', errorPayload(err)),
    );
  }

  private reply(link: InLink, id: number, kind: AppKind, payload: unknown): void {
    if (link.closed || this.stopped) return;
    const st = this.statsFor(link.peer);
    if (link.socket.writableLength > this.limits.sendQueueBytesMax) {
      st.drops++;
      return;
    }
    let frame: Buffer;
    try {
      frame = encodeFrame({ k: WireKind.App, id, kind, payload } satisfies AppBody);
    } catch (err) {
      frame = encodeFrame({ k: WireKind.App, id, kind: 'err', payload: { code: 'PEER_ENCODE', message: `reply cannot be encoded: ${(err as Error).message}` } } satisfies AppBody);
    }
    if (frame.length - FRAME_HEADER_BYTES > this.limits.frameBytesMax) {
      frame = encodeFrame({ k: WireKind.App, id, kind: 'err', payload: { code: 'PEER_ENCODE', message: `reply of ${frame.length} bytes exceeds frameBytesMax` } } satisfies AppBody);
    }
    st.requestsServed++;
    this.write(link.socket, frame);
  }
}

function errorPayload(err: unknown): { code: string; message: string } {
  if (err instanceof Error) {
    const code = (err as Error & { code?: unknown }).code;
    return { code: typeof code === 'string' ? code : 'ERR', message: err.message };
  }
  return { code: 'ERR', message: String(err) };
}
