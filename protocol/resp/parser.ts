/**
 * Streaming RESP request parser: turns the bytes a client sends into commands (arrays of Buffer arguments).
 *
 * Owns: the partial state of the one command currently being received on a connection. Nothing else: commands
 * are handed to the caller as soon as their last byte arrives, and the parser keeps no history.
 *
 * Accepts both request forms Redis accepts:
 *  - multibulk (what every client library sends): `*<n>\r\n` then n times `$<len>\r\n<len bytes>\r\n`;
 *  - inline (telnet, redis-cli in some modes): one line of space-separated words with Redis' quoting rules
 *    (sdssplitargs), ended by `\r\n` or a bare `\n`.
 *
 * Invariants
 *  - Split independence: any split of the byte stream into chunks yields the same commands, in the same order,
 *    and (for a malformed stream) an error at the same command. Header lines are scanned one byte at a time
 *    with their state kept across chunks, so no header is ever re-scanned or re-buffered.
 *  - Every limit is checked before anything is allocated for the thing it limits: the argument count before the
 *    argument array grows, a bulk length before its buffer exists, the command's total size before a bulk
 *    buffer is allocated, a line's length before it is copied.
 *  - Linear time: every byte fed is looked at a bounded number of times. A bulk that spans chunks is copied
 *    once into a buffer of exactly its declared size (allocated once), never re-concatenated per chunk.
 *  - No aliasing: arguments are either views (subarray) into a chunk the caller fed, or buffers the parser
 *    allocated for that argument alone and never writes again. The only reused buffer (the inline line buffer)
 *    is never handed out: inline arguments are always fresh copies.
 *
 * Buffer ownership contract for callers
 *  - The parser keeps views into fed chunks across `feed` calls (the arguments of a command that is still
 *    incomplete), and hands out views to the callback. So a caller must not overwrite a chunk after feeding it
 *    (Node's socket 'data' buffers are fresh per read, which satisfies this; `onread` with a static buffer
 *    would not).
 *  - A consumer that keeps an argument beyond the callback and needs it to stay independent of the chunk's
 *    memory (for instance a store that keeps values) must copy it. Holding a view keeps the whole chunk alive.
 *
 * State diagram (per command; any state -> FAILED on a protocol error, which is final):
 *
 *            '*'                  count>0               '$'+len                  len bytes
 *   START --------> MB_COUNT ---------------> BULK_HEADER ------> BULK_DATA ----------------> BULK_CRLF
 *     |  ^             | count<=0 (ignored)     ^                                                |
 *     |  +-------------+                        +------------ more args ---------------------------+
 *     |  ^                                                       last arg: callback(args) -> START
 *     |  |  line complete: callback(words) unless empty
 *     +--+--------------------------------------> INLINE (any first byte other than '*')
 */
import type { RespLimits } from '../../src/config/limits.js';
import { bufferView } from '../buffer-view.js';
import { describeByte, RespProtocolError } from './errors.js';

export { RespProtocolError } from './errors.js';

/** Receives one parsed command. The args may be views into fed chunks: copy any you keep and must not share. */
export type CommandCallback = (args: Buffer[]) => void;

const ST_START = 0;
const ST_MB_COUNT = 1;
const ST_BULK_HEADER = 2;
const ST_BULK_DATA = 3;
const ST_BULK_CRLF = 4;
const ST_INLINE = 5;
const ST_FAILED = 6;

const CR = 13;
const LF = 10;
const STAR = 42;
const DOLLAR = 36;
const MINUS = 45;
const ZERO = 48;
const NINE = 57;

/** string2ll in Redis refuses anything that does not fit a signed 64-bit integer. */
const INT64_MAX_APPROX = 9.223372036854775807e18;
/** Redis refuses a multibulk count above INT_MAX before any other check. */
const INT32_MAX = 2147483647;

const MSG_MB_TOO_BIG = 'too big mbulk count string';
const MSG_BULK_TOO_BIG = 'too big bulk count string';
const MSG_MB_INVALID = 'invalid multibulk length';
const MSG_BULK_INVALID = 'invalid bulk length';
const MSG_INLINE_TOO_BIG = 'too big inline request';
const MSG_QUOTES = 'unbalanced quotes in request';
const MSG_QUERY_LIMIT = 'query buffer limit exceeded';

/** scanHeader results besides a position: the line is not complete yet, or the stream is malformed. */
const HDR_MORE = -1;
const HDR_ERROR = -2;

export class RespParser {
  private readonly bulkBytesMax: number;
  private readonly argsPerCommandMax: number;
  private readonly inlineBytesMax: number;
  private readonly queryBufferBytesMax: number;

  private state = ST_START;
  /** Bytes of the current command consumed so far (from its first byte); 0 between commands. */
  private cmdBytes = 0;
  private failure: RespProtocolError | null = null;

  // Header line (`*<n>` or `$<len>`) being scanned. hLen counts the line's bytes (type byte included, CR/LF not).
  private hLen = 0;
  private hVal = 0;
  private hDigits = 0;
  private hNeg = false;
  private hBad = false;
  private hCR = false;
  /** Set by scanHeader when a line is complete: the signed value, or NaN when it is not a valid integer. */
  private hResult = 0;

  // Multibulk command being assembled.
  private args: Buffer[] = [];
  private argsLeft = 0;

  // Bulk argument being received.
  private bulkLen = 0;
  private bulkBuf: Buffer | null = null;
  private bulkFill = 0;
  private crlfSeen = 0;

  // Inline line held across chunks (reused; never handed out).
  private line: Buffer | null = null;
  private lineLen = 0;
  private scratch: Buffer | null = null;

  constructor(limits: RespLimits) {
    this.bulkBytesMax = limits.bulkBytesMax;
    this.argsPerCommandMax = limits.argsPerCommandMax;
    this.inlineBytesMax = limits.inlineBytesMax;
    this.queryBufferBytesMax = limits.queryBufferBytesMax;
  }

  /** Bytes of the incomplete command held (arguments received so far plus partial data); 0 between commands. */
  get bufferedBytes(): number {
    if (this.state === ST_INLINE) return this.lineLen;
    if (this.state === ST_BULK_DATA && this.bulkBuf !== null) return this.cmdBytes + this.bulkFill;
    return this.cmdBytes;
  }

  /** Forgets any partial command and any earlier error. */
  reset(): void {
    this.state = ST_START;
    this.cmdBytes = 0;
    this.failure = null;
    this.args = [];
    this.argsLeft = 0;
    this.bulkBuf = null;
    this.bulkFill = 0;
    this.crlfSeen = 0;
    this.lineLen = 0;
    this.line = null;
    this.scratch = null;
  }

  /**
   * Parses as many complete commands as the buffered bytes hold, calling `onCommand` for each in order, and
   * keeps the incomplete tail for the next call. Returns null, or the protocol error that stopped parsing (the
   * commands before it were delivered; the error is sticky: later calls return it again without parsing).
   * An exception thrown by `onCommand` propagates and leaves the parser in an unspecified state. Not reentrant:
   * `onCommand` must not call `feed` or `reset` on the same parser.
   */
  feed(chunk: Buffer, onCommand: CommandCallback): RespProtocolError | null {
    if (this.failure !== null) return this.failure;
    const end = chunk.length;
    let pos = 0;
    while (pos < end) {
      switch (this.state) {
        case ST_START: {
          if (chunk[pos] === STAR) {
            // Fast path: a whole, well-formed command in this chunk is parsed with locals only. Anything else
            // (incomplete, malformed, near a limit) returns -1 having changed nothing, and the state machine
            // below parses the same bytes with full checks and exact errors.
            const next = this.fastCommand(chunk, pos, end, onCommand);
            if (next >= 0) {
              pos = next;
              break;
            }
            pos++;
            this.cmdBytes = 1;
            this.beginHeader(1);
            this.state = ST_MB_COUNT;
          } else {
            this.lineLen = 0;
            this.state = ST_INLINE;
          }
          break;
        }

        case ST_MB_COUNT: {
          const r = this.scanHeader(chunk, pos, end, MSG_MB_TOO_BIG, MSG_MB_INVALID);
          if (r === HDR_MORE) return this.checkPartial();
          if (r === HDR_ERROR) return this.failure;
          pos = r;
          const n = this.hResult;
          // NaN (not an integer) fails both comparisons below and lands here.
          if (!(n <= INT32_MAX) || n > this.argsPerCommandMax) return this.fail(MSG_MB_INVALID);
          if (n <= 0) {
            // `*0` and negative counts are ignored, as Redis does.
            this.cmdBytes = 0;
            this.state = ST_START;
            break;
          }
          this.args = [];
          this.argsLeft = n;
          this.beginHeader(0);
          this.state = ST_BULK_HEADER;
          break;
        }

        case ST_BULK_HEADER: {
          if (this.hLen === 0) {
            const c = chunk[pos] as number;
            if (c !== DOLLAR) return this.fail(`expected '$', got '${describeByte(c)}'`);
            this.hLen = 1;
            this.cmdBytes++;
            pos++;
            if (pos === end) return this.checkPartial();
          }
          const r = this.scanHeader(chunk, pos, end, MSG_BULK_TOO_BIG, MSG_BULK_INVALID);
          if (r === HDR_MORE) return this.checkPartial();
          if (r === HDR_ERROR) return this.failure;
          pos = r;
          const len = this.hResult;
          if (!(len >= 0) || len > this.bulkBytesMax) return this.fail(MSG_BULK_INVALID);
          if (this.cmdBytes + len + 2 > this.queryBufferBytesMax) return this.fail(MSG_QUERY_LIMIT);
          this.bulkLen = len;
          this.bulkBuf = null;
          this.bulkFill = 0;
          this.state = ST_BULK_DATA;
          break;
        }

        case ST_BULK_DATA: {
          const len = this.bulkLen;
          const avail = end - pos;
          let big = this.bulkBuf;
          if (big === null) {
            if (avail >= len + 2 && chunk[pos + len] === CR && chunk[pos + len + 1] === LF) {
              // Hot path: the whole argument and its CRLF are in this chunk.
              this.args.push(bufferView(chunk, pos, pos + len));
              pos += len + 2;
              this.cmdBytes += len + 2;
              if (--this.argsLeft === 0) {
                this.finishCommand(onCommand);
              } else {
                this.beginHeader(0);
                this.state = ST_BULK_HEADER;
              }
              break;
            }
            if (avail >= len) {
              this.args.push(bufferView(chunk, pos, pos + len));
              pos += len;
              this.cmdBytes += len;
              this.crlfSeen = 0;
              this.state = ST_BULK_CRLF;
              break;
            }
            // The argument spans chunks: allocate it once at its declared size (already checked against
            // bulkBytesMax and queryBufferBytesMax) and copy pieces in as they arrive.
            big = Buffer.allocUnsafe(len);
            this.bulkBuf = big;
            this.bulkFill = 0;
          }
          const take = Math.min(len - this.bulkFill, avail);
          big.set(chunk.subarray(pos, pos + take), this.bulkFill);
          this.bulkFill += take;
          pos += take;
          if (this.bulkFill === len) {
            this.args.push(big);
            this.bulkBuf = null;
            this.cmdBytes += len;
            this.crlfSeen = 0;
            this.state = ST_BULK_CRLF;
          }
          break;
        }

        case ST_BULK_CRLF: {
          const c = chunk[pos] as number;
          if (c !== (this.crlfSeen === 0 ? CR : LF)) {
            return this.fail(`expected CRLF after bulk data, got '${describeByte(c)}'`);
          }
          pos++;
          this.cmdBytes++;
          if (++this.crlfSeen === 2) {
            if (--this.argsLeft === 0) {
              this.finishCommand(onCommand);
            } else {
              this.beginHeader(0);
              this.state = ST_BULK_HEADER;
            }
          }
          break;
        }

        case ST_INLINE: {
          const r = this.scanInline(chunk, pos, end, onCommand);
          if (r < 0) return this.failure;
          pos = r;
          break;
        }

        default:
          // ST_FAILED is unreachable here: failure is checked on entry and every fail() returns at once.
          throw new Error(`RespParser: impossible state ${this.state}`);
      }
    }
    return this.checkPartial();
  }

  /**
   * Parses one complete multibulk command starting at chunk[pos] (a '*') using locals only and delivers it.
   * Returns the position after it, or -1 (nothing consumed or changed) when the command is incomplete in this
   * chunk, malformed, or touches a limit: the state machine then handles it, errors included.
   */
  private fastCommand(chunk: Buffer, pos: number, end: number, onCommand: CommandCallback): number {
    let p = pos + 1;
    if (p >= end) return -1;
    let c = chunk[p] as number;
    if (c <= ZERO || c > NINE) return -1; // "0", "-n" and garbage go the slow way
    const argsMax = Math.min(this.argsPerCommandMax, INT32_MAX);
    const lineMax = this.inlineBytesMax;
    let n = c - ZERO;
    p++;
    while (p < end) {
      c = chunk[p] as number;
      if (c < ZERO || c > NINE) break;
      n = n * 10 + (c - ZERO);
      if (n > argsMax) return -1;
      p++;
    }
    if (p + 1 >= end || chunk[p] !== CR || chunk[p + 1] !== LF || p - pos > lineMax) return -1;
    p += 2;
    const bulkMax = this.bulkBytesMax;
    const queryMax = this.queryBufferBytesMax;
    const args: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      if (p + 3 >= end || chunk[p] !== DOLLAR) return -1;
      p++;
      c = chunk[p] as number;
      let len: number;
      const lineStart = p - 1;
      if (c === ZERO) {
        len = 0;
        p++;
      } else {
        if (c < ZERO || c > NINE) return -1;
        len = c - ZERO;
        p++;
        while (p < end) {
          c = chunk[p] as number;
          if (c < ZERO || c > NINE) break;
          len = len * 10 + (c - ZERO);
          if (len > bulkMax) return -1;
          p++;
        }
      }
      if (p + 1 >= end || chunk[p] !== CR || chunk[p + 1] !== LF || p - lineStart > lineMax) return -1;
      p += 2;
      const stop = p + len;
      if (stop + 2 > end || chunk[stop] !== CR || chunk[stop + 1] !== LF) return -1;
      if (stop + 2 - pos > queryMax) return -1;
      args.push(bufferView(chunk, p, stop));
      p = stop + 2;
    }
    onCommand(args);
    return p;
  }

  private finishCommand(onCommand: CommandCallback): void {
    const args = this.args;
    this.args = [];
    this.cmdBytes = 0;
    this.state = ST_START;
    onCommand(args);
  }

  /** Starts a header line; `seen` is 1 when its type byte was already consumed (and counts toward its length). */
  private beginHeader(seen: number): void {
    this.hLen = seen;
    this.hVal = 0;
    this.hDigits = 0;
    this.hNeg = false;
    this.hBad = false;
    this.hCR = false;
  }

  /**
   * At the end of a chunk: the command's bytes held so far must stay within queryBufferBytesMax. Bulk lengths
   * are checked when declared, so this only catches partial header lines.
   */
  private checkPartial(): RespProtocolError | null {
    if (this.state === ST_MB_COUNT || this.state === ST_BULK_HEADER) {
      if (this.cmdBytes > this.queryBufferBytesMax) return this.fail(MSG_QUERY_LIMIT);
    }
    return null;
  }

  /**
   * Scans a header line's number (after its `*` or `$`) from chunk[pos..end) with Redis' string2ll rules
   * (optional '-', no '+', no spaces, no leading zeros, 64-bit range). Returns the position after the line's
   * LF with the value in hResult (NaN if not a valid integer), HDR_MORE if the chunk ended first (state kept),
   * or HDR_ERROR (failure set).
   */
  private scanHeader(chunk: Buffer, pos: number, end: number, tooBig: string, invalid: string): number {
    let len = this.hLen;
    let val = this.hVal;
    let digits = this.hDigits;
    let neg = this.hNeg;
    let bad = this.hBad;
    const start = pos;
    const max = this.inlineBytesMax;
    while (pos < end) {
      const c = chunk[pos++] as number;
      if (this.hCR) {
        if (c !== LF) {
          this.fail(invalid);
          return HDR_ERROR;
        }
        this.cmdBytes += pos - start;
        if (this.cmdBytes > this.queryBufferBytesMax) {
          this.fail(MSG_QUERY_LIMIT);
          return HDR_ERROR;
        }
        this.hResult = bad || digits === 0 ? NaN : neg ? -val : val;
        return pos;
      }
      if (c === CR) {
        this.hCR = true;
        continue;
      }
      if (++len > max) {
        this.fail(tooBig);
        return HDR_ERROR;
      }
      if (c >= ZERO && c <= NINE) {
        // A leading zero is only valid as the whole number "0" (and never as "-0").
        if (digits > 0 && val === 0) bad = true;
        else if (digits === 0 && c === ZERO && neg) bad = true;
        val = val * 10 + (c - ZERO);
        digits++;
        if (val > INT64_MAX_APPROX) bad = true;
      } else if (c === MINUS && len === 2) {
        neg = true;
      } else {
        bad = true;
      }
    }
    this.cmdBytes += pos - start;
    this.hLen = len;
    this.hVal = val;
    this.hDigits = digits;
    this.hNeg = neg;
    this.hBad = bad;
    return HDR_MORE;
  }

  /**
   * Inline command: collects one line (held in `line` if it spans chunks), splits it and delivers it. Returns
   * the position after the consumed bytes, or -1 on error (failure set).
   */
  private scanInline(chunk: Buffer, pos: number, end: number, onCommand: CommandCallback): number {
    const nl = chunk.indexOf(LF, pos);
    if (nl === -1) {
      // Incomplete line: check the limits the complete line can only exceed further, then hold the bytes.
      const held = this.lineLen + (end - pos);
      const content = chunk[end - 1] === CR ? held - 1 : held;
      if (content > this.inlineBytesMax) return this.failN(MSG_INLINE_TOO_BIG);
      if (held > this.queryBufferBytesMax) return this.failN(MSG_QUERY_LIMIT);
      this.appendLine(chunk, pos, end);
      return end;
    }
    // The complete line is held bytes + chunk[pos..nl); its content excludes the LF and one CR before it.
    const total = this.lineLen + (nl - pos) + 1;
    const before = nl > pos ? chunk[nl - 1] : this.lineLen > 0 ? (this.line as Buffer)[this.lineLen - 1] : LF;
    const content = before === CR ? total - 2 : total - 1;
    if (content > this.inlineBytesMax) return this.failN(MSG_INLINE_TOO_BIG);
    if (total > this.queryBufferBytesMax) return this.failN(MSG_QUERY_LIMIT);
    let src = chunk;
    let ls = pos;
    if (this.lineLen > 0) {
      this.appendLine(chunk, pos, nl);
      src = this.line as Buffer;
      ls = 0;
    }
    const le = ls + content;
    this.lineLen = 0;
    this.state = ST_START;
    this.cmdBytes = 0;
    const words = this.splitInline(src, ls, le);
    if (words === null) return this.failN(MSG_QUOTES);
    if (words.length > 0) onCommand(words);
    return nl + 1;
  }

  private appendLine(chunk: Buffer, from: number, to: number): void {
    const n = to - from;
    const need = this.lineLen + n;
    let line = this.line;
    if (line === null || line.length < need) {
      const cap = Math.max(256, Math.min(need * 2, this.inlineBytesMax + 2), need);
      const grown = Buffer.allocUnsafe(cap);
      if (line !== null && this.lineLen > 0) grown.set(line.subarray(0, this.lineLen), 0);
      line = grown;
      this.line = grown;
    }
    line.set(chunk.subarray(from, to), this.lineLen);
    this.lineLen = need;
  }

  /**
   * Splits an inline line into words the way Redis' sdssplitargs does: blanks separate words; "double quotes"
   * take \n \r \t \b \a \xHH and \<any> escapes; 'single quotes' take \' only; a closing quote must be followed
   * by a blank or the end of the line; an unterminated quote returns null. Unlike Redis, a NUL byte is an
   * ordinary byte, not the end of the line. Words are fresh copies.
   */
  private splitInline(src: Buffer, s: number, e: number): Buffer[] | null {
    const words: Buffer[] = [];
    let scratch = this.scratch;
    if (scratch === null || scratch.length < e - s) {
      scratch = Buffer.allocUnsafe(Math.max(256, e - s));
      this.scratch = scratch;
    }
    let p = s;
    for (;;) {
      while (p < e && isBlank(src[p] as number)) p++;
      if (p >= e) return words;
      let inDq = false;
      let inSq = false;
      let w = 0;
      for (;;) {
        if (inDq) {
          if (p >= e) return null;
          const c = src[p] as number;
          const hex = p + 3 < e && src[p + 1] === X_LOWER && isHex(src[p + 2] as number) && isHex(src[p + 3] as number);
          if (c === BACKSLASH && hex) {
            scratch[w++] = hexVal(src[p + 2] as number) * 16 + hexVal(src[p + 3] as number);
            p += 4;
          } else if (c === BACKSLASH && p + 1 < e) {
            scratch[w++] = unescape(src[p + 1] as number);
            p += 2;
          } else if (c === DQUOTE) {
            if (p + 1 < e && !isBlank(src[p + 1] as number)) return null;
            p++;
            break;
          } else {
            scratch[w++] = c;
            p++;
          }
        } else if (inSq) {
          if (p >= e) return null;
          const c = src[p] as number;
          if (c === BACKSLASH && p + 1 < e && src[p + 1] === SQUOTE) {
            scratch[w++] = SQUOTE;
            p += 2;
          } else if (c === SQUOTE) {
            if (p + 1 < e && !isBlank(src[p + 1] as number)) return null;
            p++;
            break;
          } else {
            scratch[w++] = c;
            p++;
          }
        } else {
          if (p >= e) break;
          const c = src[p] as number;
          if (c === SPACE || c === LF || c === CR || c === TAB) {
            p++;
            break;
          }
          if (c === DQUOTE) inDq = true;
          else if (c === SQUOTE) inSq = true;
          else scratch[w++] = c;
          p++;
        }
      }
      const word = Buffer.allocUnsafe(w);
      word.set(scratch.subarray(0, w), 0);
      words.push(word);
    }
  }

  private fail(detail: string): RespProtocolError {
    const err = new RespProtocolError(detail);
    this.failure = err;
    this.state = ST_FAILED;
    this.args = [];
    this.bulkBuf = null;
    return err;
  }

  private failN(detail: string): number {
    this.fail(detail);
    return -1;
  }
}

const SPACE = 32;
const TAB = 9;
const BACKSLASH = 92;
const DQUOTE = 34;
const SQUOTE = 39;
const X_LOWER = 120;

/** C isspace(): space, \t, \n, \v, \f, \r. */
function isBlank(c: number): boolean {
  return c === SPACE || (c >= 9 && c <= 13);
}

function isHex(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 97 && c <= 102) || (c >= 65 && c <= 70);
}

function hexVal(c: number): number {
  if (c <= 57) return c - 48;
  if (c >= 97) return c - 87;
  return c - 55;
}

function unescape(c: number): number {
  switch (c) {
    case 110: // n
      return LF;
    case 114: // r
      return CR;
    case 116: // t
      return TAB;
    case 98: // b
      return 8;
    case 97: // a
      return 7;
    default:
      return c;
  }
}
