/**
 * RESP reply encoder (RESP2 and RESP3) and request encoder.
 *
 * `ReplyWriter` appends replies to one slab (a preallocated Buffer of 16 KiB, grown for big replies) and `take()`
 * hands out the pending bytes as a single view of that slab without copying. The writer never writes into a
 * region it has handed out: later replies go after it, and when the slab is full a fresh slab is allocated (the
 * old one lives on only while someone holds a view of it, e.g. until the socket has flushed it). So the Buffer
 * `take()` returns may be passed straight to `socket.write`.
 *
 * Hot-path rules: no per-reply allocation for the common replies (+OK, integers, headers, short ASCII bulks);
 * numbers are written digit by digit (0..9999 from a precomputed table), never through String(n); strings take
 * an ASCII fast path and fall back to `buf.write(s, 'utf8')`.
 *
 * RESP2/RESP3 mapping (ReplySink in src/server/command.ts):
 *   nil -> `$-1` / `_`, nilArray -> `*-1` / `_`, map -> `*2n` / `%n`, set -> `*n` / `~n`, push -> `*n` / `>n`,
 *   double -> bulk / `,`, boolean -> `:1`,`:0` / `#t`,`#f`, verbatim -> bulk / `=`, bigNumber -> bulk / `(`.
 */
import type { ReplySink } from '../../src/server/command.js';
import { copyRange } from '../buffer-view.js';

const CR = 13;
const LF = 10;
/** Size of a fresh slab: 16 KiB, like Redis' per-client reply buffer (PROTO_REPLY_CHUNK_BYTES). */
const SLAB_BYTES = 16 * 1024;
const EMPTY = Buffer.alloc(0);
/** Strings up to this many UTF-16 units are tried on the ASCII fast path. */
const ASCII_FAST_MAX = 256;

// Decimal digits of 0..9999, concatenated; SMALL_OFF[n] and SMALL_LEN[n] locate the digits of n.
const SMALL_MAX = 10000;
const SMALL_OFF = new Uint16Array(SMALL_MAX);
const SMALL_LEN = new Uint8Array(SMALL_MAX);
const SMALL_DIGITS: Buffer = (() => {
  let text = '';
  for (let n = 0; n < SMALL_MAX; n++) {
    SMALL_OFF[n] = text.length;
    const s = String(n);
    SMALL_LEN[n] = s.length;
    text += s;
  }
  return Buffer.from(text, 'latin1');
})();

/** Writes the decimal digits of a non-negative safe integer at `pos`; returns the position after them. */
function writeUint(buf: Buffer, pos: number, n: number): number {
  if (n < SMALL_MAX) {
    let off = SMALL_OFF[n] as number;
    const stop = off + (SMALL_LEN[n] as number);
    while (off < stop) buf[pos++] = SMALL_DIGITS[off++] as number;
    return pos;
  }
  let digits = 5;
  for (let t = Math.floor(n / 100000); t > 0; t = Math.floor(t / 10)) digits++;
  let p = pos + digits;
  let t = n;
  while (p > pos) {
    const q = Math.floor(t / 10);
    buf[--p] = 48 + (t - q * 10);
    t = q;
  }
  return pos + digits;
}

/** Bytes needed for the decimal digits of a non-negative safe integer. */
function uintLength(n: number): number {
  if (n < SMALL_MAX) return SMALL_LEN[n] as number;
  let digits = 5;
  for (let t = Math.floor(n / 100000); t > 0; t = Math.floor(t / 10)) digits++;
  return digits;
}

function checkCount(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`ReplyWriter.${what}: count must be a non-negative integer, got ${n}`);
  }
}

export class ReplyWriter implements ReplySink {
  /** Protocol version of the replies written from now on (HELLO switches it). */
  proto: 2 | 3;
  private buf: Buffer = EMPTY;
  /** Start of the bytes not yet taken. */
  private start = 0;
  private pos = 0;

  /**
   * @param slabBytes size of the slab allocated on first write; a writer that holds one short reply (the reply
   * of one async command) should pass a small value.
   */
  constructor(proto: 2 | 3 = 2, private readonly slabBytes = SLAB_BYTES) {
    this.proto = proto;
  }

  /** Bytes written and not yet taken. */
  get length(): number {
    return this.pos - this.start;
  }

  isEmpty(): boolean {
    return this.pos === this.start;
  }

  /**
   * Returns every pending byte as one Buffer and starts over. The Buffer is a view of the writer's slab that the
   * writer never writes again, so it stays valid (and may be handed to socket.write) for as long as it is held.
   */
  take(): Buffer {
    if (this.pos === this.start) return EMPTY;
    const out = this.buf.subarray(this.start, this.pos);
    this.start = this.pos;
    // Do not keep appending to a slab that grew for a big reply, or one that is almost full.
    if (this.buf.length > this.slabBytes || this.buf.length - this.pos < 512) {
      this.buf = EMPTY;
      this.start = 0;
      this.pos = 0;
    }
    return out;
  }

  /** Makes room for n more bytes. */
  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const pending = this.pos - this.start;
    const size = Math.max(this.slabBytes, pending + n, pending * 2);
    const next = Buffer.allocUnsafe(size);
    if (pending > 0) next.set(this.buf.subarray(this.start, this.pos), 0);
    this.buf = next;
    this.start = 0;
    this.pos = pending;
  }

  /** <prefix><n>\r\n for a non-negative safe integer n. */
  private header(prefix: number, n: number): void {
    this.ensure(20);
    const b = this.buf;
    let p = this.pos;
    b[p++] = prefix;
    p = writeUint(b, p, n);
    b[p++] = CR;
    b[p++] = LF;
    this.pos = p;
  }

  /** Writes `s` (UTF-8) with no framing; returns its byte length. Any CR or LF becomes a space if `clean`. */
  private text(s: string, clean: boolean): number {
    const n = s.length;
    if (n <= ASCII_FAST_MAX) {
      let ascii = true;
      for (let i = 0; i < n; i++) {
        if (s.charCodeAt(i) > 0x7f) {
          ascii = false;
          break;
        }
      }
      if (ascii) {
        this.ensure(n);
        const b = this.buf;
        let p = this.pos;
        for (let i = 0; i < n; i++) {
          const c = s.charCodeAt(i);
          b[p++] = clean && (c === CR || c === LF) ? 32 : c;
        }
        this.pos = p;
        return n;
      }
    }
    const len = Buffer.byteLength(s, 'utf8');
    this.ensure(len);
    const from = this.pos;
    this.buf.write(s, from, len, 'utf8');
    this.pos = from + len;
    if (clean) {
      // UTF-8 continuation and lead bytes are >= 0x80, so a CR or LF byte is always the character itself.
      const b = this.buf;
      for (let i = from; i < this.pos; i++) if (b[i] === CR || b[i] === LF) b[i] = 32;
    }
    return len;
  }

  private crlf(): void {
    this.ensure(2);
    this.buf[this.pos++] = CR;
    this.buf[this.pos++] = LF;
  }

  /** +OK */
  ok(): void {
    this.ensure(5);
    const b = this.buf;
    let p = this.pos;
    b[p++] = 43; // +
    b[p++] = 79; // O
    b[p++] = 75; // K
    b[p++] = CR;
    b[p++] = LF;
    this.pos = p;
  }

  /** +<s>; a CR or LF in s (which the contract forbids) is replaced by a space so the stream stays framed. */
  simple(s: string): void {
    this.ensure(1);
    this.buf[this.pos++] = 43;
    this.text(s, true);
    this.crlf();
  }

  /** -<msg>, with any CR or LF in msg replaced by a space. */
  error(msg: string): void {
    this.ensure(1);
    this.buf[this.pos++] = 45;
    this.text(msg, true);
    this.crlf();
  }

  /** :<n>. Throws RangeError (before writing anything) if n is a number that is not an integer. */
  integer(n: number | bigint): void {
    if (typeof n === 'number') {
      if (n >= 0 && n < SMALL_MAX && (n | 0) === n) {
        this.header(58, n);
        return;
      }
      if (Number.isSafeInteger(n)) {
        this.ensure(22);
        const b = this.buf;
        let p = this.pos;
        b[p++] = 58;
        if (n < 0) {
          b[p++] = 45;
          n = -n;
        }
        p = writeUint(b, p, n);
        b[p++] = CR;
        b[p++] = LF;
        this.pos = p;
        return;
      }
      if (!Number.isInteger(n)) throw new RangeError(`ReplyWriter.integer: not an integer: ${n}`);
      n = BigInt(n);
    }
    this.ensure(1);
    this.buf[this.pos++] = 58;
    this.text(n.toString(), false);
    this.crlf();
  }

  /** $<len>\r\n<bytes>\r\n */
  bulk(v: Buffer | string): void {
    if (typeof v !== 'string') {
      this.bulkRange(v, 0, v.length);
      return;
    }
    const n = v.length;
    if (n <= ASCII_FAST_MAX) {
      let ascii = true;
      for (let i = 0; i < n; i++) {
        if (v.charCodeAt(i) > 0x7f) {
          ascii = false;
          break;
        }
      }
      if (ascii) {
        this.header(36, n);
        this.ensure(n + 2);
        const b = this.buf;
        let p = this.pos;
        for (let i = 0; i < n; i++) b[p++] = v.charCodeAt(i);
        b[p++] = CR;
        b[p++] = LF;
        this.pos = p;
        return;
      }
    }
    const len = Buffer.byteLength(v, 'utf8');
    this.header(36, len);
    this.ensure(len + 2);
    this.buf.write(v, this.pos, len, 'utf8');
    this.pos += len;
    this.crlf();
  }

  /** bulk() of the bytes src[start, end), without making a view of them. */
  bulkRange(src: Uint8Array, start: number, end: number): void {
    const len = end - start;
    this.header(36, len);
    this.ensure(len + 2);
    const b = this.buf;
    let p = copyRange(b, this.pos, src, start, end);
    b[p++] = CR;
    b[p++] = LF;
    this.pos = p;
  }

  /** The null bulk string: $-1 (RESP2) or _ (RESP3). */
  nil(): void {
    if (this.proto === 3) this.raw3(95);
    else this.rawMinusOne(36);
  }

  /** The null array: *-1 (RESP2) or _ (RESP3). */
  nilArray(): void {
    if (this.proto === 3) this.raw3(95);
    else this.rawMinusOne(42);
  }

  /** <c>\r\n */
  private raw3(c: number): void {
    this.ensure(3);
    const b = this.buf;
    b[this.pos] = c;
    b[this.pos + 1] = CR;
    b[this.pos + 2] = LF;
    this.pos += 3;
  }

  /** <c>-1\r\n */
  private rawMinusOne(c: number): void {
    this.ensure(5);
    const b = this.buf;
    const p = this.pos;
    b[p] = c;
    b[p + 1] = 45;
    b[p + 2] = 49;
    b[p + 3] = CR;
    b[p + 4] = LF;
    this.pos = p + 5;
  }

  /** *<n> */
  arrayHeader(n: number): void {
    checkCount(n, 'arrayHeader');
    this.header(42, n);
  }

  /** %<n> (RESP3), *<2n> (RESP2): n key/value pairs follow. */
  mapHeader(n: number): void {
    checkCount(n, 'mapHeader');
    if (this.proto === 3) this.header(37, n);
    else this.header(42, n * 2);
  }

  /** ~<n> (RESP3), *<n> (RESP2) */
  setHeader(n: number): void {
    checkCount(n, 'setHeader');
    this.header(this.proto === 3 ? 126 : 42, n);
  }

  /** ><n> (RESP3), *<n> (RESP2) */
  pushHeader(n: number): void {
    checkCount(n, 'pushHeader');
    this.header(this.proto === 3 ? 62 : 42, n);
  }

  /** ,<d> (RESP3: inf, -inf, nan) or the same text as a bulk string (RESP2). Shortest round-trip form. */
  double(d: number): void {
    const s = formatDouble(d);
    if (this.proto === 3) {
      this.ensure(1);
      this.buf[this.pos++] = 44;
      this.text(s, false);
      this.crlf();
    } else {
      this.bulk(s);
    }
  }

  /** #t / #f (RESP3), :1 / :0 (RESP2) */
  boolean(v: boolean): void {
    if (this.proto === 3) this.raw3b(35, v ? 116 : 102);
    else this.raw3b(58, v ? 49 : 48);
  }

  /** <a><b>\r\n */
  private raw3b(a: number, c: number): void {
    this.ensure(4);
    const b = this.buf;
    const p = this.pos;
    b[p] = a;
    b[p + 1] = c;
    b[p + 2] = CR;
    b[p + 3] = LF;
    this.pos = p + 4;
  }

  /** =<len>\r\n<fmt>:<text>\r\n (RESP3; fmt is exactly 3 ASCII letters, default txt), a bulk string in RESP2. */
  verbatim(text: string, format = 'txt'): void {
    if (this.proto !== 3) {
      this.bulk(text);
      return;
    }
    if (format.length !== 3 || Buffer.byteLength(format, 'utf8') !== 3) {
      throw new RangeError(`ReplyWriter.verbatim: format must be 3 ASCII characters, got ${JSON.stringify(format)}`);
    }
    const len = Buffer.byteLength(text, 'utf8');
    this.header(61, len + 4);
    this.text(format, false);
    this.ensure(1);
    this.buf[this.pos++] = 58;
    this.text(text, false);
    this.crlf();
  }

  /** ((RESP3) or a bulk string (RESP2). s is an optionally negative decimal integer of any size. */
  bigNumber(s: string): void {
    let i = s.charCodeAt(0) === 45 ? 1 : 0;
    if (i >= s.length) throw new RangeError(`ReplyWriter.bigNumber: not an integer: ${JSON.stringify(s)}`);
    for (; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c < 48 || c > 57) throw new RangeError(`ReplyWriter.bigNumber: not an integer: ${JSON.stringify(s)}`);
    }
    if (this.proto === 3) {
      this.ensure(1);
      this.buf[this.pos++] = 40;
      this.text(s, false);
      this.crlf();
    } else {
      this.bulk(s);
    }
  }

  /** Appends preencoded bytes as they are. */
  raw(bytes: Buffer): void {
    const n = bytes.length;
    this.ensure(n);
    this.buf.set(bytes, this.pos);
    this.pos += n;
  }
}

/** Redis-style text for a double: shortest round-trip digits; inf, -inf, nan; -0 keeps its sign. */
export function formatDouble(d: number): string {
  if (d === Infinity) return 'inf';
  if (d === -Infinity) return '-inf';
  if (d !== d) return 'nan';
  if (d === 0) return Object.is(d, -0) ? '-0' : '0';
  return String(d);
}

/**
 * Encodes a command as a RESP2 multibulk request (`*<n>\r\n$<len>\r\n<arg>\r\n...`). Strings are sent as UTF-8.
 * Used by clients, tools and tests; allocates exactly one Buffer of the final size.
 */
export function encodeCommand(args: readonly (Buffer | string)[]): Buffer {
  const n = args.length;
  const lens = new Array<number>(n);
  let total = 1 + uintLength(n) + 2;
  for (let i = 0; i < n; i++) {
    const a = args[i] as Buffer | string;
    const len = typeof a === 'string' ? Buffer.byteLength(a, 'utf8') : a.length;
    lens[i] = len;
    total += 1 + uintLength(len) + 2 + len + 2;
  }
  const out = Buffer.allocUnsafe(total);
  let p = 0;
  out[p++] = 42;
  p = writeUint(out, p, n);
  out[p++] = CR;
  out[p++] = LF;
  for (let i = 0; i < n; i++) {
    const a = args[i] as Buffer | string;
    const len = lens[i] as number;
    out[p++] = 36;
    p = writeUint(out, p, len);
    out[p++] = CR;
    out[p++] = LF;
    if (typeof a === 'string') out.write(a, p, len, 'utf8');
    else out.set(a, p);
    p += len;
    out[p++] = CR;
    out[p++] = LF;
  }
  return out;
}
