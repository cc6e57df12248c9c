/**
 * The peer handshake, as a small state machine with no I/O (the transport moves the bytes and owns the timer).
 *
 * Both ends send HELLO as soon as the TCP connection is open, without waiting (one round trip in all):
 *
 *   dialer                                    acceptor
 *     HELLO {v, cluster, node, worker, topo, auth, challenge}  -->
 *                                       <--   HELLO {...}
 *   on the other's HELLO: check it; send HELLO_ACK {proof} or REJECT {code, reason} and close
 *   on the other's HELLO_ACK: verify the proof; the link is up (or send REJECT and close)
 *
 *   states: AWAIT_HELLO --hello ok--> AWAIT_ACK --ack ok--> DONE
 *           any --bad input / mismatch / REJECT received--> FAILED
 *
 * Checks on HELLO, in order: protocol version, cluster id, cluster secret configured on both ends or neither,
 * worker index, topology digest (the cluster runtime's digest of the shard-to-worker map), node identity (the
 * dialer expects a given node at the address it dialed; the acceptor accepts only known peers, never itself).
 * Every check is symmetric except node identity and the proof, so for most mismatches both ends detect the problem
 * on their own and log it from their own point of view; the REJECT tells the other end in any case.
 *
 * Proof (when a secret is configured): HMAC-SHA256(secret, label || peer's challenge || own node || peer node ||
 * worker || cluster id || topology digest). Binding both node ids in order stops a proof from being reflected
 * back; the fresh random challenge stops replay. Compared in constant time.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { NodeId } from '../../src/raft/types.js';
import {
  CHALLENGE_BYTES,
  HANDSHAKE_STRING_CHARS_MAX,
  PEER_PROTOCOL_VERSION,
  WireKind,
  isWireRecord,
  validateHello,
  validateHelloAck,
  validateReject,
  type HelloAckBody,
  type HelloBody,
  type RejectBody,
  type RejectCode,
} from './messages.js';

export interface HandshakeConfig {
  clusterId: string;
  nodeId: NodeId;
  workerIndex: number;
  topologyDigest: string;
  /** Cluster secret; when set, both ends must prove they know it. */
  secret?: string | undefined;
  /** Protocol version announced; tests use it to simulate an old peer. Default PEER_PROTOCOL_VERSION. */
  version?: number;
}

/** Who we expect at the other end: a given node (we dialed it), or any node `isKnown` accepts (it dialed us). */
export type HandshakePeer = { expect: NodeId } | { isKnown(id: NodeId): boolean };

export type HandshakeStep =
  /** Send this HELLO_ACK; keep waiting. */
  | { kind: 'ack'; body: HelloAckBody; peer: NodeId }
  /** Handshake complete: the link belongs to `peer`. */
  | { kind: 'done'; peer: NodeId }
  /** We refuse the peer: send `body`, log `reason`, close. `peer` is the node id the peer claimed, 0 if unknown. */
  | { kind: 'refuse'; code: RejectCode; reason: string; body: RejectBody; peer: NodeId }
  /** The peer refused us (REJECT received): log `reason`, close. */
  | { kind: 'refused'; code: RejectCode; reason: string; peer: NodeId };

const PROOF_LABEL = Buffer.from('lockstep/peer/hmac/v1\0', 'latin1');

/** HMAC-SHA256 proof that the node `prover` knows the secret, over `challenge` issued by `verifier`. */
export function computeProof(secret: string, challenge: Uint8Array, prover: NodeId, verifier: NodeId,
  worker: number, clusterId: string, topologyDigest: string): Buffer {
  const ids = Buffer.allocUnsafe(24);
  ids.writeDoubleBE(prover, 0);
  ids.writeDoubleBE(verifier, 8);
  ids.writeDoubleBE(worker, 16);
  return createHmac('sha256', secret)
    .update(PROOF_LABEL)
    .update(challenge)
    .update(ids)
    .update(clusterId, 'utf8')
    .update('\0')
    .update(topologyDigest, 'utf8')
    .digest();
}

function quote(s: string): string {
  return JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}...` : s);
}

export class Handshake {
  private state: 'await_hello' | 'await_ack' | 'done' | 'failed' = 'await_hello';
  private peerId: NodeId = 0;
  private readonly version: number;

  /** @param challenge CHALLENGE_BYTES fresh random bytes (the caller draws them: this module has no randomness). */
  constructor(
    private readonly cfg: HandshakeConfig,
    private readonly challenge: Uint8Array,
    private readonly peer: HandshakePeer,
  ) {
    if (challenge.length !== CHALLENGE_BYTES) throw new RangeError(`challenge must be ${CHALLENGE_BYTES} bytes`);
    if (cfg.clusterId.length > HANDSHAKE_STRING_CHARS_MAX || cfg.topologyDigest.length > HANDSHAKE_STRING_CHARS_MAX) {
      throw new RangeError(`clusterId and topologyDigest must be at most ${HANDSHAKE_STRING_CHARS_MAX} chars`);
    }
    if (cfg.secret !== undefined && cfg.secret.length === 0) throw new RangeError('secret must not be empty');
    this.version = cfg.version ?? PEER_PROTOCOL_VERSION;
  }

  /** The first frame to send. */
  hello(): HelloBody {
    return {
      k: WireKind.Hello,
      v: this.version,
      cluster: this.cfg.clusterId,
      node: this.cfg.nodeId,
      worker: this.cfg.workerIndex,
      topo: this.cfg.topologyDigest,
      auth: this.cfg.secret !== undefined,
      challenge: this.challenge,
    };
  }

  get done(): boolean {
    return this.state === 'done';
  }

  /** The node id the peer claimed in its HELLO (0 before it arrived). */
  get claimedPeer(): NodeId {
    return this.peerId;
  }

  /** Feeds one decoded frame body received during the handshake. */
  receive(body: unknown): HandshakeStep {
    if (this.state === 'done' || this.state === 'failed') {
      return this.refuse('PROTOCOL', `unexpected frame after the handshake ${this.state === 'done' ? 'finished' : 'failed'}`);
    }
    if (!isWireRecord(body)) return this.refuse('PROTOCOL', 'handshake frame is not an object');
    const k = body['k'];
    if (k === WireKind.Reject) {
      const r = validateReject(body);
      if (typeof r === 'string') return this.refuse('PROTOCOL', r);
      this.state = 'failed';
      return { kind: 'refused', code: r.code, reason: r.reason, peer: this.peerId };
    }
    if (this.state === 'await_hello') {
      if (k !== WireKind.Hello) return this.refuse('PROTOCOL', `expected HELLO, got frame kind ${String(k)}`);
      return this.onHello(body);
    }
    if (k !== WireKind.HelloAck) return this.refuse('PROTOCOL', `expected HELLO_ACK, got frame kind ${String(k)}`);
    return this.onAck(body);
  }

  private onHello(body: Record<string, unknown>): HandshakeStep {
    // Version first: a HELLO from another version may have other fields.
    const v = body['v'];
    if (v !== this.version) {
      return this.refuse('VERSION', `protocol version mismatch (ours ${this.version}, theirs ${String(v)})`);
    }
    const h = validateHello(body);
    if (typeof h === 'string') return this.refuse('PROTOCOL', h);
    this.peerId = h.node;
    const cfg = this.cfg;
    if (h.cluster !== cfg.clusterId) {
      return this.refuse('CLUSTER', `cluster id mismatch (ours ${quote(cfg.clusterId)}, theirs ${quote(h.cluster)})`);
    }
    const auth = cfg.secret !== undefined;
    if (h.auth !== auth) {
      return this.refuse('AUTH', `cluster secret configured on one side only (ours: ${auth ? 'yes' : 'no'}, theirs: ${h.auth ? 'yes' : 'no'})`);
    }
    if (h.worker !== cfg.workerIndex) {
      return this.refuse('WORKER', `worker index mismatch (ours ${cfg.workerIndex}, theirs ${h.worker})`);
    }
    if (h.topo !== cfg.topologyDigest) {
      return this.refuse('TOPOLOGY', `topology digest mismatch (ours ${quote(cfg.topologyDigest)}, theirs ${quote(h.topo)})`);
    }
    if (h.node === cfg.nodeId) return this.refuse('NODE', `peer claims our own node id ${h.node}`);
    if ('expect' in this.peer) {
      if (h.node !== this.peer.expect) {
        return this.refuse('NODE', `node id mismatch (expected ${this.peer.expect}, got ${h.node})`);
      }
    } else if (!this.peer.isKnown(h.node)) {
      return this.refuse('NODE', `node ${h.node} is not a known peer`);
    }
    this.state = 'await_ack';
    const proof = cfg.secret === undefined
      ? new Uint8Array(0)
      : computeProof(cfg.secret, h.challenge, cfg.nodeId, h.node, cfg.workerIndex, cfg.clusterId, cfg.topologyDigest);
    return { kind: 'ack', body: { k: WireKind.HelloAck, proof }, peer: h.node };
  }

  private onAck(body: Record<string, unknown>): HandshakeStep {
    const a = validateHelloAck(body);
    if (typeof a === 'string') return this.refuse('PROTOCOL', a);
    const cfg = this.cfg;
    if (cfg.secret !== undefined) {
      const expected = computeProof(cfg.secret, this.challenge, this.peerId, cfg.nodeId, cfg.workerIndex,
        cfg.clusterId, cfg.topologyDigest);
      if (a.proof.length !== expected.length || !timingSafeEqual(a.proof, expected)) {
        return this.refuse('AUTH', 'bad cluster secret proof (the cluster secrets differ)');
      }
    } else if (a.proof.length !== 0) {
      return this.refuse('PROTOCOL', 'unexpected proof: no cluster secret is configured');
    }
    this.state = 'done';
    return { kind: 'done', peer: this.peerId };
  }

  private refuse(code: RejectCode, reason: string): HandshakeStep {
    this.state = 'failed';
    return { kind: 'refuse', code, reason, body: { k: WireKind.Reject, code, reason }, peer: this.peerId };
  }
}
