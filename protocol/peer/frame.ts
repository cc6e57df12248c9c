/**
 * Peer wire framing: `[u32 big-endian body length][msgpack body]`.
 *
 * One `Packr` and one `Unpackr`, configured once for the whole process (`useRecords: false`: plain msgpack maps,
 * so any version of any msgpack decoder reads our frames and nothing depends on per-connection record state).
 * Uint8Array and Buffer values travel as msgpack `bin` and decode as Buffer (a Uint8Array).
 *
 * Encoding reserves the 4-byte length prefix inside msgpackr's output arena (RESERVE_START_SPACE), so a frame costs
 * one encode and no copy. The returned Buffer is a view of that arena; msgpackr never writes over bytes it handed
 * out (it moves forward, or starts a new arena), so the view stays valid while the socket holds it.
 *
 * Decoding accepts any chunk split. A declared length above `frameBytesMax` is refused from the 4 header bytes
 * alone, before anything is allocated. A body that fits in the current chunk is decoded in place (zero copy; the
 * chunk is never reused); a body spanning chunks is gathered into a fresh buffer of exactly the declared size,
 * never reused either, so binary values decoded from it (entry data) stay valid for as long as anyone holds them.
 */
import { Packr, Unpackr, RESERVE_START_SPACE } from 'msgpackr';

/** A peer broke the wire protocol (bad frame, bad message, failed handshake step); its link is closed. */
export class PeerProtocolError extends Error {
  readonly code = 'PEER_PROTOCOL' as const;
  constructor(message: string) {
    super(message);
    this.name = 'PeerProtocolError';
  }
}

/** Size of the length prefix, in bytes. */
export const FRAME_HEADER_BYTES = 4;

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

/** Encodes `body` as one frame (length prefix included). */
export function encodeFrame(body: unknown): Buffer {
  const frame = packr.pack(body, RESERVE_START_SPACE | FRAME_HEADER_BYTES) as Buffer;
  frame.writeUInt32BE(frame.length - FRAME_HEADER_BYTES, 0);
  return frame;
}

/** Decodes one msgpack body (no length prefix). Throws on malformed input; used by FrameDecoder and tests. */
export function decodeBody(body: Uint8Array): unknown {
  return unpackr.unpack(body);
}

/**
 * Incremental frame decoder for one connection.
 *
 * States: HEADER (collecting up to 4 length bytes) -> BODY (collecting `bodyLen` bytes) -> HEADER ...;
 * any error -> FAILED (sticky: every later push returns the same error). `close()` -> CLOSED (push ignores input).
 */
export class FrameDecoder {
  private frameBytesMax: number;
  private readonly header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFill = 0;
  /** Body being gathered across chunks, or null when reading a header. */
  private body: Buffer | null = null;
  private bodyFill = 0;
  private failed: PeerProtocolError | null = null;
  private closed = false;

  constructor(frameBytesMax: number) {
    if (!(Number.isSafeInteger(frameBytesMax) && frameBytesMax > 0 && frameBytesMax <= 0xffffffff)) {
      throw new RangeError(`frameBytesMax must be an integer in [1, 2^32-1], got ${frameBytesMax}`);
    }
    this.frameBytesMax = frameBytesMax;
  }

  /** Changes the limit for frames whose header has not been read yet (e.g. small during a handshake). */
  setFrameBytesMax(frameBytesMax: number): void {
    if (!(Number.isSafeInteger(frameBytesMax) && frameBytesMax > 0 && frameBytesMax <= 0xffffffff)) {
      throw new RangeError(`frameBytesMax must be an integer in [1, 2^32-1], got ${frameBytesMax}`);
    }
    this.frameBytesMax = frameBytesMax;
  }

  /** Stops decoding: the rest of the current chunk and every later chunk are ignored. */
  close(): void {
    this.closed = true;
  }

  /** Bytes of a partial frame held (header or body), for tests and stats. */
  get bufferedBytes(): number {
    return this.body !== null ? this.bodyFill : this.headerFill;
  }

  /**
   * Feeds one chunk; calls `onFrame` for every complete frame, in order. Returns null, or the error that makes
   * this connection unusable (the caller closes it). Never throws on bad input.
   */
  push(chunk: Buffer, onFrame: (body: unknown) => void): PeerProtocolError | null {
    if (this.failed !== null) return this.failed;
    let off = 0;
    const end = chunk.length;
    while (off < end && !this.closed) {
      if (this.body === null) {
        // HEADER
        let len: number;
        if (this.headerFill === 0 && end - off >= FRAME_HEADER_BYTES) {
          len = chunk.readUInt32BE(off);
          off += FRAME_HEADER_BYTES;
        } else {
          while (this.headerFill < FRAME_HEADER_BYTES && off < end) this.header[this.headerFill++] = chunk[off++]!;
          if (this.headerFill < FRAME_HEADER_BYTES) return null;
          this.headerFill = 0;
          len = this.header.readUInt32BE(0);
        }
        if (len > this.frameBytesMax) return this.fail(`frame too large: ${len} > ${this.frameBytesMax}`);
        if (len === 0) return this.fail('empty frame');
        if (end - off >= len) {
          const err = this.deliver(chunk.subarray(off, off + len), onFrame);
          if (err !== null) return err;
          off += len;
          continue;
        }
        this.body = Buffer.allocUnsafe(len);
        this.bodyFill = 0;
      }
      // BODY (spanning chunks)
      const body = this.body;
      const take = Math.min(body.length - this.bodyFill, end - off);
      chunk.copy(body, this.bodyFill, off, off + take);
      this.bodyFill += take;
      off += take;
      if (this.bodyFill < body.length) return null;
      this.body = null;
      this.bodyFill = 0;
      const err = this.deliver(body, onFrame);
      if (err !== null) return err;
    }
    return null;
  }

  private deliver(bytes: Buffer, onFrame: (body: unknown) => void): PeerProtocolError | null {
    let value: unknown;
    try {
      value = unpackr.unpack(bytes);
    } catch (e) {
      return this.fail(`frame body is not valid msgpack: ${(e as Error).message}`);
    }
    onFrame(value);
    return null;
  }

  private fail(reason: string): PeerProtocolError {
    this.failed = new PeerProtocolError(reason);
    this.body = null;
    return this.failed;
  }
}
