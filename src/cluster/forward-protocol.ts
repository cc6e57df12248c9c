/**
 * Worker-to-worker request forwarding: the payload of a PeerTransport `request` that worker i of one node sends to
 * worker i of the node it believes leads a shard, and the answer. One request carries every request forwarded to
 * that peer in one event-loop turn; the answer carries one result per request, in the same order.
 *
 *   request:  { f: [[shard, kind (0 write, 1 read), [arg, ...]], ...] }      (args are msgpack bin)
 *   answer:   [[0, record] | [1, code index (SHARD_ERROR_CODES), leader, message], ...]
 *
 * A peer is authenticated but still untrusted input: `parseForwardRequest` checks every field and bound and
 * throws ForwardProtocolError (the transport answers the peer with that error; nothing is applied).
 */
import type { NodeId } from '../raft/types.js';
import { RequestKind, SHARD_ERROR_CODES } from './worker-protocol.js';

/** Most requests in one forwarded batch (the sender cuts batches well below this). */
export const FORWARD_BATCH_REQUESTS_MAX = 100_000;
/** Most arguments of one forwarded request (the RESP front end's own limit is lower by default). */
export const FORWARD_ARGS_MAX = 1 << 20;

export type ForwardItem = [shard: number, kind: RequestKind, args: Uint8Array[]];
export type ForwardResult = [0, Uint8Array] | [1, number, NodeId, string];

export class ForwardProtocolError extends Error {
  readonly code = 'FORWARD_PROTOCOL' as const;
  constructor(message: string) {
    super(`forwarded batch: ${message}`);
    this.name = 'ForwardProtocolError';
  }
}

export function forwardRequest(items: ForwardItem[]): { f: ForwardItem[] } {
  return { f: items };
}

/** Validates a peer's forwarded batch; `shards` is the cluster's shard count. Args come back as Buffers. */
export function parseForwardRequest(payload: unknown, shards: number): { shard: number; kind: RequestKind; args: Buffer[] }[] {
  if (typeof payload !== 'object' || payload === null || !Array.isArray((payload as { f?: unknown }).f)) {
    throw new ForwardProtocolError('expected { f: [...] }');
  }
  const items = (payload as { f: unknown[] }).f;
  if (items.length > FORWARD_BATCH_REQUESTS_MAX) throw new ForwardProtocolError(`${items.length} requests > ${FORWARD_BATCH_REQUESTS_MAX}`);
  const out: { shard: number; kind: RequestKind; args: Buffer[] }[] = new Array(items.length);
  for (let i = 0; i < items.length; i++) {
    const it = items[i];
    if (!Array.isArray(it) || it.length !== 3) throw new ForwardProtocolError(`request ${i} is not [shard, kind, args]`);
    const [shard, kind, args] = it as unknown[];
    if (typeof shard !== 'number' || !Number.isInteger(shard) || shard < 0 || shard >= shards) throw new ForwardProtocolError(`request ${i}: bad shard ${String(shard)}`);
    if (kind !== RequestKind.Write && kind !== RequestKind.Read) throw new ForwardProtocolError(`request ${i}: bad kind ${String(kind)}`);
    if (!Array.isArray(args) || args.length === 0 || args.length > FORWARD_ARGS_MAX) throw new ForwardProtocolError(`request ${i}: bad argument list`);
    const bufs: Buffer[] = new Array(args.length);
    for (let a = 0; a < args.length; a++) {
      const v = args[a] as unknown;
      if (!(v instanceof Uint8Array)) throw new ForwardProtocolError(`request ${i}: argument ${a} is not bytes`);
      bufs[a] = Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
    }
    out[i] = { shard, kind, args: bufs };
  }
  return out;
}

/** Validates a peer's answer to a forwarded batch of `count` requests. */
export function parseForwardResults(payload: unknown, count: number): ForwardResult[] {
  if (!Array.isArray(payload) || payload.length !== count) throw new ForwardProtocolError(`expected ${count} results`);
  for (let i = 0; i < count; i++) {
    const r = payload[i] as unknown;
    if (!Array.isArray(r)) throw new ForwardProtocolError(`result ${i} is not an array`);
    if (r[0] === 0 && r.length === 2 && r[1] instanceof Uint8Array) continue;
    if (
      r[0] === 1 &&
      r.length === 4 &&
      typeof r[1] === 'number' &&
      SHARD_ERROR_CODES[r[1]] !== undefined &&
      typeof r[2] === 'number' &&
      Number.isInteger(r[2]) &&
      r[2] >= 0 &&
      typeof r[3] === 'string'
    ) {
      continue;
    }
    throw new ForwardProtocolError(`result ${i} is malformed`);
  }
  return payload as ForwardResult[];
}
