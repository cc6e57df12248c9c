/**
 * Protocol-neutral replies of replicated commands. A write runs on the shard leader's worker when its entry is
 * applied, but its reply goes to a client whose protocol (RESP2 or RESP3) only the edge knows. So the handler
 * writes into a `ReplyRecorder`, which records each ReplySink call as a few bytes; the edge replays the record into
 * the client's real ReplyWriter with `replayReply`, which then encodes it in that client's protocol.
 *
 * Why records of calls rather than RESP bytes or a value tree: RESP bytes would fix the protocol (and transcoding
 * means parsing); a value tree allocates an object per element. A record is one view of a shared slab, no
 * allocation per reply beyond that view, and replays with one switch per call.
 *
 * Record layout: a sequence of calls, each an opcode byte and its operands:
 *   OK, NIL, NIL_ARRAY, TRUE, FALSE                   no operand
 *   INT, DOUBLE                                       f64 LE (INT: an integral number)
 *   BIGINT                                            u8 length, ASCII decimal
 *   SIMPLE, ERROR, BULK                               u32 LE length, bytes (UTF-8 for strings)
 *   ARRAY, MAP, SET, PUSH                             u32 LE count
 *   VERBATIM                                          u32 LE length, UTF-8 text, u8 length, format
 *
 * Memory rule (as ReplyWriter.take()): the recorder never writes into a region it has handed out. A record stays
 * valid while held, but it is a view of a 16 KiB slab: before sending records to another thread, copy them into
 * one batch buffer (posting a view makes structured clone copy the whole slab).
 */
import type { ReplySink } from '../server/command.js';
import { ByteReader } from '../util/byte-reader.js';
import { copyRange } from '../../protocol/buffer-view.js';

const enum Op {
  Ok = 1,
  Simple = 2,
  Error = 3,
  Int = 4,
  BigInt = 5,
  Bulk = 6,
  Nil = 7,
  NilArray = 8,
  Array = 9,
  Map = 10,
  Set = 11,
  Double = 12,
  True = 13,
  False = 14,
  Verbatim = 15,
  Push = 16,
}

const SLAB_BYTES = 16 * 1024;
const EMPTY = Buffer.alloc(0);

/** A reply record that cannot be replayed (a bug: records are made by ReplyRecorder only). */
export class ReplyRecordError extends Error {
  readonly code = 'REPLY_RECORD_CORRUPT' as const;
  constructor(message: string) {
    super(`corrupt reply record: ${message}`);
    this.name = 'ReplyRecordError';
  }
}

export class ReplyRecorder implements ReplySink {
  /**
   * Handlers of replicated commands must not branch on the protocol (none in STRING_COMMANDS does): the record is
   * replayed in whatever protocol the client speaks. 3 because RESP3 is the richer form of every call.
   */
  readonly proto = 3 as const;
  private buf: Buffer = EMPTY;
  private start = 0;
  private pos = 0;

  /** Position to truncate() back to (to discard the calls recorded after it). */
  mark(): number {
    return this.pos;
  }

  /** Forgets the calls recorded since `mark` (which must be from mark() since the last take()). */
  truncate(mark: number): void {
    if (mark < this.start || mark > this.pos) throw new RangeError('ReplyRecorder.truncate: mark is not pending');
    this.pos = mark;
  }

  /** The calls recorded since the last take(), as one record. */
  take(): Uint8Array {
    if (this.pos === this.start) return EMPTY;
    const out = this.buf.subarray(this.start, this.pos);
    this.start = this.pos;
    if (this.buf.length > SLAB_BYTES || this.buf.length - this.pos < 256) {
      this.buf = EMPTY;
      this.start = this.pos = 0;
    }
    return out;
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const pending = this.pos - this.start;
    const next = Buffer.allocUnsafe(Math.max(SLAB_BYTES, pending * 2 + n));
    if (pending > 0) next.set(this.buf.subarray(this.start, this.pos), 0);
    this.buf = next;
    this.start = 0;
    this.pos = pending;
  }

  private op(op: Op): void {
    this.ensure(1);
    this.buf[this.pos++] = op;
  }

  private opCount(op: Op, n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`ReplyRecorder: bad count ${n}`);
    this.ensure(5);
    const b = this.buf;
    b[this.pos] = op;
    b.writeUInt32LE(n, this.pos + 1);
    this.pos += 5;
  }

  /** op with the bytes v[start, end). */
  private opBytes(op: Op, v: Uint8Array, start: number, end: number): void {
    const len = end - start;
    this.opCount(op, len);
    this.ensure(len);
    this.pos = copyRange(this.buf, this.pos, v, start, end);
  }

  private opText(op: Op, s: string): void {
    const len = Buffer.byteLength(s, 'utf8');
    this.opCount(op, len);
    this.ensure(len);
    this.pos += this.buf.write(s, this.pos, len, 'utf8');
  }

  private opF64(op: Op, d: number): void {
    this.ensure(9);
    this.buf[this.pos] = op;
    this.buf.writeDoubleLE(d, this.pos + 1);
    this.pos += 9;
  }

  ok(): void {
    this.op(Op.Ok);
  }
  simple(s: string): void {
    this.opText(Op.Simple, s);
  }
  error(msg: string): void {
    this.opText(Op.Error, msg);
  }
  integer(n: number | bigint): void {
    if (typeof n === 'number') {
      if (!Number.isInteger(n)) throw new RangeError(`ReplyRecorder.integer: not an integer: ${n}`);
      this.opF64(Op.Int, n);
      return;
    }
    const s = n.toString();
    this.ensure(2 + s.length);
    this.buf[this.pos++] = Op.BigInt;
    this.buf[this.pos++] = s.length;
    this.pos += this.buf.write(s, this.pos, 'latin1');
  }
  bulk(b: Buffer | string): void {
    if (typeof b === 'string') this.opText(Op.Bulk, b);
    else this.opBytes(Op.Bulk, b, 0, b.length);
  }
  bulkRange(src: Uint8Array, start: number, end: number): void {
    this.opBytes(Op.Bulk, src, start, end);
  }
  nil(): void {
    this.op(Op.Nil);
  }
  nilArray(): void {
    this.op(Op.NilArray);
  }
  arrayHeader(n: number): void {
    this.opCount(Op.Array, n);
  }
  mapHeader(n: number): void {
    this.opCount(Op.Map, n);
  }
  setHeader(n: number): void {
    this.opCount(Op.Set, n);
  }
  pushHeader(n: number): void {
    this.opCount(Op.Push, n);
  }
  double(d: number): void {
    this.opF64(Op.Double, d);
  }
  boolean(b: boolean): void {
    this.op(b ? Op.True : Op.False);
  }
  verbatim(text: string, format = 'txt'): void {
    this.opText(Op.Verbatim, text);
    const f = Buffer.from(format, 'utf8');
    if (f.length > 255) throw new RangeError('ReplyRecorder.verbatim: format too long');
    this.ensure(1 + f.length);
    this.buf[this.pos++] = f.length;
    f.copy(this.buf, this.pos);
    this.pos += f.length;
  }
}

/**
 * Replays a record into `sink` (e.g. the client's ReplyWriter, in its protocol). Bulk strings are passed as views
 * of the record. Throws ReplyRecordError on a malformed record.
 */
export function replayReply(record: Uint8Array, sink: ReplySink): void {
  const r = new ByteReader(record, (_what, at) => new ReplyRecordError(`truncated at byte ${at}`));
  while (r.remaining > 0) {
    const op = r.u8('opcode') as Op;
    switch (op) {
      case Op.Ok:
        sink.ok();
        break;
      case Op.Simple:
        sink.simple(r.lenView('length').toString('utf8'));
        break;
      case Op.Error:
        sink.error(r.lenView('length').toString('utf8'));
        break;
      case Op.Int:
        sink.integer(r.f64('number'));
        break;
      case Op.BigInt: {
        const s = r.view(r.u8('length'), 'digits').toString('latin1');
        if (!/^-?[0-9]+$/.test(s)) throw new ReplyRecordError(`bad big integer ${JSON.stringify(s)}`);
        sink.integer(BigInt(s));
        break;
      }
      case Op.Bulk:
        sink.bulk(r.lenView('length'));
        break;
      case Op.Nil:
        sink.nil();
        break;
      case Op.NilArray:
        sink.nilArray();
        break;
      case Op.Array:
        sink.arrayHeader(r.u32('count'));
        break;
      case Op.Map:
        sink.mapHeader(r.u32('count'));
        break;
      case Op.Set:
        sink.setHeader(r.u32('count'));
        break;
      case Op.Push:
        sink.pushHeader(r.u32('count'));
        break;
      case Op.Double:
        sink.double(r.f64('number'));
        break;
      case Op.True:
        sink.boolean(true);
        break;
      case Op.False:
        sink.boolean(false);
        break;
      case Op.Verbatim: {
        const text = r.lenView('length').toString('utf8');
        sink.verbatim(text, r.view(r.u8('length'), 'format').toString('utf8'));
        break;
      }
      default:
        throw new ReplyRecordError(`unknown opcode ${op as number} at byte ${r.pos - 1}`);
    }
  }
}
