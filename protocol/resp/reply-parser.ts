/**
 * Streaming RESP2/RESP3 reply parser, for our clients, CLI, tests and benchmarks (the server never parses
 * replies). Correct over fast: it accepts any chunk split, checks its limits before allocating, and copies every
 * bulk it returns, so values stay valid whatever the caller does with the chunks it fed.
 *
 * Values are tagged (`RespValue`) so that nothing is lost: a simple string and a bulk string differ, RESP2's
 * null bulk (`$-1`) and null array (`*-1`) stay distinguishable from RESP3's null (`_`), and map keys keep their
 * type. `toJs()` turns a value into plain JavaScript when that is all a caller wants.
 *
 * Types: `+` simple, `-` error, `:` integer, `$` bulk, `*` array, `_` null, `,` double, `#` boolean, `!` blob
 * error, `=` verbatim, `(` big number, `%` map, `~` set, `>` push, `|` attribute (parsed and dropped: the value
 * it annotates is delivered as if it had none). Streamed strings and aggregates (`$?`, `*?`, `;`, `.`) are not
 * supported and are reported as protocol errors.
 *
 * State: the stack of aggregates being filled, a bulk being received (allocated once at its declared size) or
 * a partial line (the only bytes ever re-buffered, bounded by lineBytesMax).
 */
import { describeByte, RespProtocolError } from './errors.js';

export type RespValue =
  | { type: 'simple'; value: string }
  /** `-` simple error or `!` blob error; value is the whole message, code word included. */
  | { type: 'error'; value: string }
  /** A number when it is a safe integer, otherwise a bigint. */
  | { type: 'integer'; value: number | bigint }
  /** value null is RESP2's null bulk string `$-1`. */
  | { type: 'bulk'; value: Buffer | null }
  | { type: 'verbatim'; format: string; value: Buffer }
  /** value null is RESP2's null array `*-1`. */
  | { type: 'array'; value: RespValue[] | null }
  | { type: 'set'; value: RespValue[] }
  | { type: 'push'; value: RespValue[] }
  | { type: 'map'; value: [RespValue, RespValue][] }
  /** RESP3 `_`. */
  | { type: 'null' }
  | { type: 'double'; value: number }
  | { type: 'boolean'; value: boolean }
  | { type: 'bignum'; value: bigint };

export interface RespReplyParserOptions {
  /** Largest bulk, verbatim or blob error accepted, in bytes. Default 512 MiB. */
  bulkBytesMax?: number;
  /** Longest line (simple string, error, number, header) accepted, in bytes. Default 1 MiB. */
  lineBytesMax?: number;
  /** Most elements declared by one aggregate. Default 2^31 - 1. */
  aggregateLengthMax?: number;
  /** Deepest nesting of aggregates. Default 128. */
  depthMax?: number;
}

type AggregateKind = 'array' | 'set' | 'push' | 'map' | 'attribute';

interface Frame {
  kind: AggregateKind;
  /** Elements still expected (a map or attribute expects two per entry). */
  left: number;
  items: RespValue[];
}

interface PendingBulk {
  kind: 36 | 61 | 33; // $ = !
  /** Declared length plus the trailing CRLF. */
  buf: Buffer;
  fill: number;
}

const CR = 13;
const LF = 10;

export class RespReplyParser {
  private readonly bulkBytesMax: number;
  private readonly lineBytesMax: number;
  private readonly aggregateLengthMax: number;
  private readonly depthMax: number;
  private readonly stack: Frame[] = [];
  private tail: Buffer | null = null;
  private bulk: PendingBulk | null = null;
  private failure: RespProtocolError | null = null;

  constructor(options: RespReplyParserOptions = {}) {
    this.bulkBytesMax = options.bulkBytesMax ?? 512 * 1024 * 1024;
    this.lineBytesMax = options.lineBytesMax ?? 1024 * 1024;
    this.aggregateLengthMax = options.aggregateLengthMax ?? 2147483647;
    this.depthMax = options.depthMax ?? 128;
  }

  /** True when no reply is partly received. */
  get idle(): boolean {
    return this.stack.length === 0 && this.tail === null && this.bulk === null;
  }

  reset(): void {
    this.stack.length = 0;
    this.tail = null;
    this.bulk = null;
    this.failure = null;
  }

  /**
   * Parses every complete reply in the bytes fed so far, calling onReply for each top-level reply in order.
   * Returns null, or the protocol error that stopped parsing (sticky; replies before it were delivered).
   */
  feed(chunk: Buffer, onReply: (value: RespValue) => void): RespProtocolError | null {
    if (this.failure !== null) return this.failure;
    let data = chunk;
    if (this.tail !== null) {
      data = Buffer.concat([this.tail, chunk]);
      this.tail = null;
    }
    const end = data.length;
    let pos = 0;
    for (;;) {
      const pending = this.bulk;
      if (pending !== null) {
        const take = Math.min(pending.buf.length - pending.fill, end - pos);
        pending.buf.set(data.subarray(pos, pos + take), pending.fill);
        pending.fill += take;
        pos += take;
        if (pending.fill < pending.buf.length) return null;
        this.bulk = null;
        const len = pending.buf.length - 2;
        if (pending.buf[len] !== CR || pending.buf[len + 1] !== LF) return this.fail('expected CRLF after bulk data');
        const v = this.blob(pending.kind, pending.buf.subarray(0, len));
        if (v === null) return this.failure;
        this.emit(v, onReply);
        continue;
      }
      if (pos >= end) return null;
      const lf = data.indexOf(LF, pos);
      if (lf === -1) {
        if (end - pos > this.lineBytesMax + 1) return this.fail('reply line too long');
        this.tail = Buffer.from(data.subarray(pos, end));
        return null;
      }
      if (lf === pos || data[lf - 1] !== CR) return this.fail('expected CRLF at end of line');
      const type = data[pos] as number;
      const ls = pos + 1;
      const le = lf - 1;
      if (le - ls > this.lineBytesMax) return this.fail('reply line too long');
      pos = lf + 1;
      switch (type) {
        case 43: // +
          this.emit({ type: 'simple', value: data.toString('utf8', ls, le) }, onReply);
          break;
        case 45: // -
          this.emit({ type: 'error', value: data.toString('utf8', ls, le) }, onReply);
          break;
        case 58: {
          // :
          const v = parseInteger(data, ls, le);
          if (v === null) return this.fail('invalid integer');
          this.emit({ type: 'integer', value: v }, onReply);
          break;
        }
        case 36: // $
        case 61: // =
        case 33: {
          // !
          const len = parseInteger(data, ls, le);
          if (len === null || typeof len === 'bigint') return this.fail('invalid bulk length');
          if (len === -1 && type === 36) {
            this.emit({ type: 'bulk', value: null }, onReply);
            break;
          }
          if (len < 0 || len > this.bulkBytesMax) return this.fail('invalid bulk length');
          if (end - pos >= len + 2) {
            if (data[pos + len] !== CR || data[pos + len + 1] !== LF) return this.fail('expected CRLF after bulk data');
            const v = this.blob(type, Buffer.from(data.subarray(pos, pos + len)));
            if (v === null) return this.failure;
            pos += len + 2;
            this.emit(v, onReply);
          } else {
            this.bulk = { kind: type, buf: Buffer.allocUnsafe(len + 2), fill: 0 };
          }
          break;
        }
        case 42: // *
        case 37: // %
        case 126: // ~
        case 62: // >
        case 124: {
          // |
          const n = parseInteger(data, ls, le);
          if (n === null || typeof n === 'bigint') return this.fail('invalid multibulk length');
          if (n === -1 && type === 42) {
            this.emit({ type: 'array', value: null }, onReply);
            break;
          }
          if (n < 0 || n > this.aggregateLengthMax) return this.fail('invalid multibulk length');
          const kind: AggregateKind =
            type === 42 ? 'array' : type === 37 ? 'map' : type === 126 ? 'set' : type === 62 ? 'push' : 'attribute';
          if (n === 0) {
            if (kind !== 'attribute') this.emit(buildAggregate(kind, []), onReply);
            break;
          }
          if (this.stack.length >= this.depthMax) return this.fail('aggregates nested too deep');
          this.stack.push({ kind, left: kind === 'map' || kind === 'attribute' ? n * 2 : n, items: [] });
          break;
        }
        case 95: // _
          if (le !== ls) return this.fail('invalid null');
          this.emit({ type: 'null' }, onReply);
          break;
        case 44: {
          // ,
          const v = parseDouble(data.toString('latin1', ls, le));
          if (v === null) return this.fail('invalid double');
          this.emit({ type: 'double', value: v }, onReply);
          break;
        }
        case 35: // #
          if (le - ls !== 1 || (data[ls] !== 116 && data[ls] !== 102)) return this.fail('invalid boolean');
          this.emit({ type: 'boolean', value: data[ls] === 116 }, onReply);
          break;
        case 40: {
          // (
          const v = parseInteger(data, ls, le, true);
          if (v === null) return this.fail('invalid big number');
          this.emit({ type: 'bignum', value: BigInt(v) }, onReply);
          break;
        }
        default:
          return this.fail(`unexpected reply type '${describeByte(type)}'`);
      }
    }
  }

  /** Builds the value of a complete `$`, `=` or `!` payload (already a private copy). */
  private blob(kind: number, bytes: Buffer): RespValue | null {
    if (kind === 36) return { type: 'bulk', value: bytes };
    if (kind === 33) return { type: 'error', value: bytes.toString('utf8') };
    if (bytes.length < 4 || bytes[3] !== 58) {
      this.fail('invalid verbatim string');
      return null;
    }
    return { type: 'verbatim', format: bytes.toString('latin1', 0, 3), value: bytes.subarray(4) };
  }

  /** Hands a complete value to its enclosing aggregate, completing aggregates upward, or to the caller. */
  private emit(value: RespValue, onReply: (value: RespValue) => void): void {
    let v = value;
    for (;;) {
      const top = this.stack[this.stack.length - 1];
      if (top === undefined) {
        onReply(v);
        return;
      }
      top.items.push(v);
      if (--top.left > 0) return;
      this.stack.pop();
      // A complete attribute is dropped: the enclosing aggregate still waits for the value it annotates.
      if (top.kind === 'attribute') return;
      v = buildAggregate(top.kind, top.items);
    }
  }

  private fail(detail: string): RespProtocolError {
    const err = new RespProtocolError(detail);
    this.failure = err;
    return err;
  }
}

function buildAggregate(kind: Exclude<AggregateKind, 'attribute'>, items: RespValue[]): RespValue {
  if (kind !== 'map') return { type: kind, value: items };
  const pairs: [RespValue, RespValue][] = [];
  for (let i = 0; i + 1 < items.length; i += 2) pairs.push([items[i] as RespValue, items[i + 1] as RespValue]);
  return { type: 'map', value: pairs };
}

/**
 * Parses an optionally negative decimal integer from data[s..e). Returns a number when it is a safe integer,
 * a bigint when it is larger, null when it is not an integer. `big` allows any number of digits.
 */
function parseInteger(data: Buffer, s: number, e: number, big = false): number | bigint | null {
  let i = s;
  let neg = false;
  if (i < e && data[i] === 45) {
    neg = true;
    i++;
  } else if (i < e && data[i] === 43) {
    i++;
  }
  if (i >= e) return null;
  if (e - i > 20 && !big) return null;
  let v = 0;
  for (let j = i; j < e; j++) {
    const c = data[j] as number;
    if (c < 48 || c > 57) return null;
    v = v * 10 + (c - 48);
  }
  if (v <= Number.MAX_SAFE_INTEGER) return neg ? -v : v;
  const b = BigInt(data.toString('latin1', i, e));
  return neg ? -b : b;
}

function parseDouble(s: string): number | null {
  switch (s) {
    case 'inf':
    case '+inf':
      return Infinity;
    case '-inf':
      return -Infinity;
    case 'nan':
    case '-nan':
      return NaN;
    default: {
      if (s.length === 0) return null;
      const v = Number(s);
      return Number.isNaN(v) ? null : v;
    }
  }
}

/**
 * Plain JavaScript for a reply: simple and bulk strings as UTF-8 strings, errors as `RespReplyError`, integers as
 * number or bigint, nulls as null, arrays/sets/pushes as arrays, maps as `Map`, verbatim strings as their text,
 * doubles and booleans as themselves, big numbers as bigint.
 */
export function toJs(v: RespValue): unknown {
  switch (v.type) {
    case 'simple':
      return v.value;
    case 'error':
      return new RespReplyError(v.value);
    case 'integer':
    case 'double':
    case 'boolean':
    case 'bignum':
      return v.value;
    case 'bulk':
      return v.value === null ? null : v.value.toString('utf8');
    case 'verbatim':
      return v.value.toString('utf8');
    case 'null':
      return null;
    case 'array':
      return v.value === null ? null : v.value.map(toJs);
    case 'set':
    case 'push':
      return v.value.map(toJs);
    case 'map':
      return new Map(v.value.map(([k, x]) => [toJs(k), toJs(x)]));
  }
}

/** An error reply from the server; `code` is its first word (ERR, WRONGTYPE, NOTLEADER, ...). */
export class RespReplyError extends Error {
  readonly code: string;
  constructor(message: string) {
    super(message);
    this.name = 'RespReplyError';
    const sp = message.indexOf(' ');
    this.code = sp === -1 ? message : message.slice(0, sp);
  }
}
