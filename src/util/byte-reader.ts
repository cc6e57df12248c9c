/**
 * A bounds-checked little-endian reader over one buffer, for the fixed binary forms decoded from peers and workers
 * (reply records, cache home answers, forwarded batches). Every read checks the remaining length first and throws
 * the error the caller's `truncated` makes (each format keeps its own error type and message); nothing is
 * allocated from a length before it is checked against the bytes actually there.
 */
export class ByteReader {
  readonly buf: Buffer;
  /** Offset of the next byte to read. */
  pos = 0;

  constructor(
    u: Uint8Array,
    private readonly truncated: (what: string, at: number) => Error,
  ) {
    this.buf = Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
  }

  /** Bytes not read yet. */
  get remaining(): number {
    return this.buf.length - this.pos;
  }

  need(n: number, what: string): void {
    if (this.pos + n > this.buf.length) throw this.truncated(what, this.pos);
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  f64(what: string): number {
    this.need(8, what);
    const v = this.buf.readDoubleLE(this.pos);
    this.pos += 8;
    return v;
  }

  /** The next n bytes, as a view of the buffer. */
  view(n: number, what: string): Buffer {
    this.need(n, what);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /** A u32 length, then that many bytes (a view). */
  lenView(what: string): Buffer {
    return this.view(this.u32(what), what);
  }
}
