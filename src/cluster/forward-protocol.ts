/**
 * Worker-to-worker request forwarding: the payload of a PeerTransport `request` that worker i of one node sends to
 * worker i of the node it believes leads a shard, and the answer. One request carries every request forwarded to
 * that peer in one event-loop turn; the answer carries one result per request, in the same order.
 *
 * Both travel as one msgpack bin in a fixed binary layout (little-endian), not as msgpack arrays: msgpack spends
 * a slow path on every Buffer value (each argument and record), and a forwarded SET measured 9 us to encode and
 * decode that way against 4 us in this form (docs/architecture.md).
 *
 *   request:  { f: bin }   bin = u32 count, then per request: u32 shard, u8 kind (0 write, 1 read), u32 argc,
 *                          argc x (u32 length, bytes)
 *   answer:   bin          u32 count, then per result: u8 0, u32 length, record bytes
 *                                                   or u8 1, u8 code index (SHARD_ERROR_CODES), u32 leader,
 *                                                      u32 length, UTF-8 message
 *
 * A peer is authenticated but still untrusted input: `parseForwardRequest` checks every field and bound and
 * throws ForwardProtocolError (the transport answers the peer with that error; nothing is applied). Arguments and
 * records are views of the received frame, which is never reused (protocol/peer/frame.ts).
 */
import type { NodeId } from '../raft/types.js';
import { ByteReader } from '../util/byte-reader.js';
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

/** A bounds-checked reader of a forwarded payload: running out of bytes is a ForwardProtocolError. */
function reader(u: Uint8Array): ByteReader {
  return new ByteReader(u, (what) => new ForwardProtocolError(`truncated (${what})`));
}

/** Refuses bytes left after the last item. */
function atEnd(r: ByteReader): void {
  if (r.remaining !== 0) throw new ForwardProtocolError(`${r.remaining} bytes after the last item`);
}

export function forwardRequest(items: ForwardItem[]): { f: Buffer } {
  let size = 4;
  for (const [, , args] of items) {
    size += 9;
    for (const a of args) size += 4 + a.length;
  }
  const b = Buffer.allocUnsafe(size);
  b.writeUInt32LE(items.length, 0);
  let o = 4;
  for (const [shard, kind, args] of items) {
    b.writeUInt32LE(shard, o);
    b[o + 4] = kind;
    b.writeUInt32LE(args.length, o + 5);
    o += 9;
    for (const a of args) {
      b.writeUInt32LE(a.length, o);
      b.set(a, o + 4);
      o += 4 + a.length;
    }
  }
  return { f: b };
}

/** Validates and decodes a peer's forwarded batch; arguments are views of the payload. */
export function parseForwardRequest(payload: unknown, shards: number): { shard: number; kind: RequestKind; args: Buffer[] }[] {
  const f = typeof payload === 'object' && payload !== null ? (payload as { f?: unknown }).f : undefined;
  if (!(f instanceof Uint8Array)) throw new ForwardProtocolError('expected { f: bytes }');
  const r = reader(f);
  const count = r.u32('count');
  if (count > FORWARD_BATCH_REQUESTS_MAX) throw new ForwardProtocolError(`${count} requests > ${FORWARD_BATCH_REQUESTS_MAX}`);
  // Each request takes at least 13 bytes (header and one argument length): a count beyond that is a lie.
  if (count * 13 > r.buf.length) throw new ForwardProtocolError(`${count} requests cannot fit in ${r.buf.length} bytes`);
  const out: { shard: number; kind: RequestKind; args: Buffer[] }[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const shard = r.u32('shard');
    if (shard >= shards) throw new ForwardProtocolError(`request ${i}: bad shard ${shard}`);
    const kind = r.u8('kind');
    if (kind !== RequestKind.Write && kind !== RequestKind.Read) throw new ForwardProtocolError(`request ${i}: bad kind ${kind}`);
    const argc = r.u32('argument count');
    if (argc === 0 || argc > FORWARD_ARGS_MAX || argc * 4 > r.buf.length) throw new ForwardProtocolError(`request ${i}: bad argument list`);
    const args: Buffer[] = new Array(argc);
    for (let a = 0; a < argc; a++) args[a] = r.lenView(`request ${i} argument ${a}`);
    out[i] = { shard, kind, args };
  }
  atEnd(r);
  return out;
}

/** The answer to a forwarded batch: one result per request, in order. */
export function encodeForwardResults(results: ForwardResult[]): Buffer {
  let size = 4;
  const messages: (Buffer | null)[] = new Array(results.length);
  for (let i = 0; i < results.length; i++) {
    const r = results[i]!;
    if (r[0] === 0) {
      size += 5 + r[1].length;
      messages[i] = null;
    } else {
      const m = Buffer.from(r[3], 'utf8');
      messages[i] = m;
      size += 10 + m.length;
    }
  }
  const b = Buffer.allocUnsafe(size);
  b.writeUInt32LE(results.length, 0);
  let o = 4;
  for (let i = 0; i < results.length; i++) {
    const r = results[i]!;
    if (r[0] === 0) {
      b[o] = 0;
      b.writeUInt32LE(r[1].length, o + 1);
      b.set(r[1], o + 5);
      o += 5 + r[1].length;
    } else {
      const m = messages[i]!;
      b[o] = 1;
      b[o + 1] = r[1];
      b.writeUInt32LE(r[2], o + 2);
      b.writeUInt32LE(m.length, o + 6);
      b.set(m, o + 10);
      o += 10 + m.length;
    }
  }
  return b;
}

/** Validates and decodes a peer's answer to a forwarded batch of `count` requests; records are views of it. */
export function parseForwardResults(payload: unknown, count: number): ForwardResult[] {
  if (!(payload instanceof Uint8Array)) throw new ForwardProtocolError('expected the results as bytes');
  const r = reader(payload);
  const n = r.u32('count');
  if (n !== count) throw new ForwardProtocolError(`expected ${count} results, got ${n}`);
  const out: ForwardResult[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const status = r.u8('status');
    if (status === 0) out[i] = [0, r.lenView(`result ${i}`)];
    else if (status === 1) {
      const code = r.u8('code');
      if (SHARD_ERROR_CODES[code] === undefined) throw new ForwardProtocolError(`result ${i}: unknown error code ${code}`);
      const leader = r.u32('leader');
      out[i] = [1, code, leader, r.lenView(`result ${i} message`).toString('utf8')];
    } else throw new ForwardProtocolError(`result ${i} is malformed (status ${status})`);
  }
  atEnd(r);
  return out;
}
