/**
 * Redis string and keyspace commands over the node-local CacheStore (ctx.db), with Redis 7.0's arity, flags, key
 * positions, replies and error messages, byte for byte (the reference is redis 7.0.x: t_string.c, expire.c, db.c).
 *
 * Handlers never throw for bad input; they reply with an error. Time is ctx.now (Unix ms). Integers are exact over
 * the whole signed 64-bit range: plain numbers on the common path, BigInt only beyond 2^53 (such replies are sent
 * as bigint). INCRBYFLOAT emulates Redis' x87 long double exactly (long-double.ts).
 *
 * Store-level hits/misses are counted by commands that read a value (GET, MGET, GETEX, GETDEL, GETRANGE, STRLEN,
 * SET ... GET); metadata probes (EXISTS, TTL, TYPE, ...) use peek() and count nothing.
 *
 * Expire times are kept as Unix ms in a double: times beyond 2^53 ms (year 287396) are rounded to a double and
 * clamped to the largest double not above 2^63-1, so PEXPIRETIME reports them rounded.
 */
import type { CommandContext, CommandFlag, CommandSpec, ReplySink } from '../server/command.js';
import { globMatchesAll } from './glob.js';
import { addLongDouble, formatLongDouble, parseLongDouble, type LongDouble } from './long-double.js';
import { CacheEntryTooLargeError, SMALL_VALUE_BYTES, entryBytes, type CacheEntry, type SetOptions } from './store.js';

// ---------------------------------------------------------------------------------------------------------------
// Replies shared by several commands (Redis' wording)
// ---------------------------------------------------------------------------------------------------------------
export const ERR_NOT_INTEGER = 'ERR value is not an integer or out of range';
export const ERR_SYNTAX = 'ERR syntax error';
export const ERR_NOT_FLOAT = 'ERR value is not a valid float';
export const ERR_OVERFLOW = 'ERR increment or decrement would overflow';
export const ERR_DECR_OVERFLOW = 'ERR decrement would overflow';
export const ERR_FLOAT_NAN = 'ERR increment would produce NaN or Infinity';
export const ERR_STRING_TOO_LONG = 'ERR string exceeds maximum allowed size (proto-max-bulk-len)';
export const ERR_OFFSET = 'ERR offset is out of range';
export const ERR_INVALID_CURSOR = 'ERR invalid cursor';

/** An entry's value as a bulk reply, copied from the store's memory without a view of it (GET's hot path). */
export function replyValue(reply: ReplySink, e: CacheEntry): void {
  reply.bulkRange(e.valueBytes, e.valueStart, e.valueStart + e.valueLength);
}

export function errInvalidExpire(command: string): string {
  return `ERR invalid expire time in '${command}' command`;
}

export function errWrongArity(command: string): string {
  return `ERR wrong number of arguments for '${command}' command`;
}

/** The reply when a write would make one entry larger than the whole cache (store bytesMax). */
export function errEntryTooLarge(e: CacheEntryTooLargeError): string {
  return `OOM command not allowed: the entry (${e.entryBytes} bytes) is larger than the cache (${e.bytesMax} bytes)`;
}

// ---------------------------------------------------------------------------------------------------------------
// Integers
// ---------------------------------------------------------------------------------------------------------------
const LLONG_MAX = 9223372036854775807n;
const LLONG_MIN = -9223372036854775808n;
/** C's LLONG_MAX / 1000 and LLONG_MIN / 1000 (truncated toward zero). */
const LLONG_MAX_DIV_1000 = 9223372036854775n;
const LLONG_MIN_DIV_1000 = -9223372036854775n;
/** The largest double that is not above LLONG_MAX: where stored expire times are clamped. */
const EXPIRE_AT_MAX = 9223372036854774784;

/**
 * Redis' string2ll over a Buffer: a signed 64-bit decimal integer with no sign '+', no spaces, no leading zeros
 * ("0" itself is fine, "-0" is not), at most 20 bytes. Returns a number when it is a safe integer, a bigint
 * beyond that, null when the bytes are not such an integer (or overflow int64).
 */
export function parseInteger(buf: Buffer): number | bigint | null {
  const len = buf.length;
  if (len === 0 || len > 20) return null;
  let i = 0;
  const c0 = buf[0] ?? 0;
  if (len === 1 && c0 === 0x30) return 0;
  const neg = c0 === 0x2d;
  if (neg) {
    if (len === 1) return null;
    i = 1;
  }
  const first = buf[i] ?? 0;
  if (first < 0x31 || first > 0x39) return null;
  if (len - i <= 15) {
    let v = 0;
    for (; i < len; i++) {
      const d = (buf[i] ?? 0) - 0x30;
      if (d < 0 || d > 9) return null;
      v = v * 10 + d;
    }
    return neg ? -v : v;
  }
  for (let j = i; j < len; j++) {
    const d = (buf[j] ?? 0) - 0x30;
    if (d < 0 || d > 9) return null;
  }
  const big = BigInt(buf.toString('latin1'));
  if (big > LLONG_MAX || big < LLONG_MIN) return null;
  return normalizeInt(big);
}

function normalizeInt(v: bigint): number | bigint {
  return v <= 9007199254740991n && v >= -9007199254740991n ? Number(v) : v;
}

/** An integer reply, as a bigint when it is beyond the safe-integer range. */
function replyInt(ctx: CommandContext, v: number | bigint): void {
  if (typeof v === 'number' && !Number.isSafeInteger(v)) ctx.reply.integer(BigInt(v));
  else ctx.reply.integer(v);
}

/** Redis' strtoul-based cursor parse (SCAN): a C string of decimal digits, '+'/'-' allowed (wrapping), "" is 0. */
function parseCursor(buf: Buffer): number | null {
  const s = cString(buf);
  if (s.length > 0 && isCSpace(s.charCodeAt(0))) return null;
  let i = 0;
  let neg = false;
  if (s[0] === '+' || s[0] === '-') {
    neg = s[0] === '-';
    i = 1;
  }
  const digits = s.slice(i);
  if (digits.length === 0) return s.length === 0 ? 0 : null; // strtoul read nothing: valid only for ""
  if (!/^[0-9]+$/.test(digits)) return null;
  let v = BigInt(digits);
  if (v > 0xffffffffffffffffn) return null; // ERANGE
  if (neg) v = (0x10000000000000000n - v) & 0xffffffffffffffffn;
  return Number(v);
}

function isCSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

/** The argument as C sees it: the bytes before the first NUL, as latin1. */
function cString(buf: Buffer): string {
  const nul = buf.indexOf(0);
  return buf.toString('latin1', 0, nul < 0 ? buf.length : nul);
}

/** Lower-cased option name (C-string semantics) for comparing with strcasecmp-style keywords. */
function optionName(buf: Buffer): string {
  if (buf.length > 16) return '';
  return cString(buf).toLowerCase();
}

/** Redis' addReplyErrorFormat: CR and LF in an error become spaces. */
function sanitizeError(msg: string): string {
  return msg.replace(/[\r\n]/g, ' ');
}

// ---------------------------------------------------------------------------------------------------------------
// Expire-time arithmetic (exact over int64; BigInt only off the common path)
// ---------------------------------------------------------------------------------------------------------------
const SAFE_SECONDS = 9_007_199_254_740; // * 1000 + any realistic now stays a safe integer

function toExpireAt(ms: number | bigint): number {
  const n = Number(ms);
  return n > EXPIRE_AT_MAX ? EXPIRE_AT_MAX : n;
}

/**
 * Redis' getExpireMillisecondsOrReply (SET, SETEX, PSETEX, GETEX): the absolute expire time in ms, or null after
 * replying with the error.
 */
function expireArgOrReply(
  ctx: CommandContext,
  command: string,
  arg: Buffer,
  unitSeconds: boolean,
  relative: boolean,
): number | null {
  const v = parseInteger(arg);
  if (v === null) {
    ctx.reply.error(ERR_NOT_INTEGER);
    return null;
  }
  if (typeof v === 'number' && v > 0 && v < SAFE_SECONDS) {
    return (unitSeconds ? v * 1000 : v) + (relative ? ctx.now : 0);
  }
  const b = BigInt(v);
  if (b <= 0n || (unitSeconds && b > LLONG_MAX_DIV_1000)) {
    ctx.reply.error(errInvalidExpire(command));
    return null;
  }
  let ms = unitSeconds ? b * 1000n : b;
  if (relative) ms += BigInt(ctx.now);
  if (ms > LLONG_MAX) {
    ctx.reply.error(errInvalidExpire(command));
    return null;
  }
  return toExpireAt(ms);
}

// ---------------------------------------------------------------------------------------------------------------
// Store writes
// ---------------------------------------------------------------------------------------------------------------

/** db.set() that answers a too-large entry with an error reply. False if refused (nothing changed). */
function storeSet(ctx: CommandContext, key: Buffer, value: Buffer, opts?: SetOptions): boolean {
  try {
    ctx.db.set(key, value, opts);
    return true;
  } catch (err) {
    if (err instanceof CacheEntryTooLargeError) {
      ctx.reply.error(errEntryTooLarge(err));
      return false;
    }
    throw err;
  }
}

/** Replies with the too-large error if key+value could never fit the cache. True if it replied. */
function refuseTooLarge(ctx: CommandContext, keyLength: number, valueLength: number): boolean {
  const bytesMax = ctx.db.limits.bytesMax;
  const bytes = entryBytes(keyLength, valueLength);
  if (bytesMax > 0 && bytes > bytesMax) {
    ctx.reply.error(errEntryTooLarge(new CacheEntryTooLargeError(bytes, bytesMax)));
    return true;
  }
  return false;
}

/** A Buffer this module built (INCR results...): the store copies small ones into its slabs, adopts big ones. */
function ownedSetOptions(value: Buffer, keepTtl: boolean): SetOptions {
  return { keepTtl, copy: value.length < SMALL_VALUE_BYTES };
}

const scratch = Buffer.allocUnsafeSlow(64);

/** The decimal text of an integer in a scratch Buffer (copied by the store). */
function intBytes(v: number | bigint): Buffer {
  const s = String(v);
  const n = scratch.write(s, 0, 'latin1');
  return scratch.subarray(0, n);
}

// ---------------------------------------------------------------------------------------------------------------
// SET / GETEX option parsing (parseExtendedStringArgumentsOrReply)
// ---------------------------------------------------------------------------------------------------------------
const F_NX = 1 << 0;
const F_XX = 1 << 1;
const F_EX = 1 << 2;
const F_PX = 1 << 3;
const F_KEEPTTL = 1 << 4;
const F_GET = 1 << 5;
const F_EXAT = 1 << 6;
const F_PXAT = 1 << 7;
const F_PERSIST = 1 << 8;
const F_ANY_EXPIRE = F_EX | F_PX | F_EXAT | F_PXAT;

interface ExtendedArgs {
  flags: number;
  expire: Buffer | undefined;
}

function parseExtendedArgs(ctx: CommandContext, args: Buffer[], forSet: boolean): ExtendedArgs | null {
  let flags = 0;
  let expire: Buffer | undefined;
  for (let j = forSet ? 3 : 2; j < args.length; j++) {
    const opt = optionName(arg(args, j));
    const next = j === args.length - 1 ? undefined : args[j + 1];
    if (opt === 'nx' && !(flags & F_XX) && forSet) {
      flags |= F_NX;
    } else if (opt === 'xx' && !(flags & F_NX) && forSet) {
      flags |= F_XX;
    } else if (opt === 'get' && forSet) {
      flags |= F_GET;
    } else if (opt === 'keepttl' && !(flags & (F_PERSIST | F_ANY_EXPIRE)) && forSet) {
      flags |= F_KEEPTTL;
    } else if (opt === 'persist' && !forSet && !(flags & (F_ANY_EXPIRE | F_KEEPTTL))) {
      flags |= F_PERSIST;
    } else if (opt === 'ex' && !(flags & (F_KEEPTTL | F_PERSIST | F_EXAT | F_PX | F_PXAT)) && next) {
      flags |= F_EX;
      expire = next;
      j++;
    } else if (opt === 'px' && !(flags & (F_KEEPTTL | F_PERSIST | F_EX | F_EXAT | F_PXAT)) && next) {
      flags |= F_PX;
      expire = next;
      j++;
    } else if (opt === 'exat' && !(flags & (F_KEEPTTL | F_PERSIST | F_EX | F_PX | F_PXAT)) && next) {
      flags |= F_EXAT;
      expire = next;
      j++;
    } else if (opt === 'pxat' && !(flags & (F_KEEPTTL | F_PERSIST | F_EX | F_EXAT | F_PX)) && next) {
      flags |= F_PXAT;
      expire = next;
      j++;
    } else {
      ctx.reply.error(ERR_SYNTAX);
      return null;
    }
  }
  return { flags, expire };
}

/** The absolute expire time for parsed SET/GETEX flags, or null after replying with the error. */
function extendedExpireOrReply(ctx: CommandContext, command: string, a: ExtendedArgs): number | null {
  const arg = a.expire;
  if (arg === undefined) return 0;
  const unitSeconds = (a.flags & (F_EX | F_EXAT)) !== 0;
  const relative = (a.flags & (F_EX | F_PX)) !== 0;
  return expireArgOrReply(ctx, command, arg, unitSeconds, relative);
}

// ---------------------------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------------------------
function arg(args: Buffer[], i: number): Buffer {
  const a = args[i];
  if (a === undefined) throw new RangeError(`argument ${i} missing (the dispatcher checks arity)`);
  return a;
}

function getCommand(ctx: CommandContext, args: Buffer[]): void {
  const e = ctx.db.get(arg(args, 1));
  if (e === undefined) ctx.reply.nil();
  else replyValue(ctx.reply, e);
}

/** setGenericCommand: the shared tail of SET, SETNX, SETEX and PSETEX. */
function setGeneric(
  ctx: CommandContext,
  flags: number,
  key: Buffer,
  value: Buffer,
  expireAt: number,
  okReply: () => void,
  abortReply: () => void,
): void {
  if (refuseTooLarge(ctx, key.length, value.length)) return;
  if (flags & F_GET) {
    const old = ctx.db.get(key);
    if (old === undefined) ctx.reply.nil();
    else ctx.reply.bulk(old.value);
  }
  if (flags & (F_NX | F_XX)) {
    const found = ctx.db.has(key);
    if ((flags & F_NX && found) || (flags & F_XX && !found)) {
      if (!(flags & F_GET)) abortReply();
      return;
    }
  }
  const opts: SetOptions = expireAt !== 0 ? { expireAt } : { keepTtl: (flags & F_KEEPTTL) !== 0 };
  if (!storeSet(ctx, key, value, opts)) return;
  if (!(flags & F_GET)) okReply();
}

function setCommand(ctx: CommandContext, args: Buffer[]): void {
  if (args.length === 3) {
    // Plain SET key value, most SETs: no options to parse, no existence check, no TTL kept; store.set refuses an
    // entry that could never fit (storeSet answers that error).
    if (storeSet(ctx, arg(args, 1), arg(args, 2))) ctx.reply.ok();
    return;
  }
  const a = parseExtendedArgs(ctx, args, true);
  if (a === null) return;
  const expireAt = extendedExpireOrReply(ctx, 'set', a);
  if (expireAt === null) return;
  setGeneric(
    ctx,
    a.flags,
    arg(args, 1),
    arg(args, 2),
    expireAt,
    () => ctx.reply.ok(),
    () => ctx.reply.nil(),
  );
}

function setnxCommand(ctx: CommandContext, args: Buffer[]): void {
  setGeneric(
    ctx,
    F_NX,
    arg(args, 1),
    arg(args, 2),
    0,
    () => ctx.reply.integer(1),
    () => ctx.reply.integer(0),
  );
}

function setexGeneric(ctx: CommandContext, args: Buffer[], command: string, unitSeconds: boolean): void {
  const expireAt = expireArgOrReply(ctx, command, arg(args, 2), unitSeconds, true);
  if (expireAt === null) return;
  setGeneric(
    ctx,
    unitSeconds ? F_EX : F_PX,
    arg(args, 1),
    arg(args, 3),
    expireAt,
    () => ctx.reply.ok(),
    () => ctx.reply.nil(),
  );
}

function getdelCommand(ctx: CommandContext, args: Buffer[]): void {
  const key = arg(args, 1);
  const e = ctx.db.get(key);
  if (e === undefined) {
    ctx.reply.nil();
    return;
  }
  ctx.reply.bulk(e.value);
  ctx.db.delete(key);
}

function getexCommand(ctx: CommandContext, args: Buffer[]): void {
  const a = parseExtendedArgs(ctx, args, false);
  if (a === null) return;
  const key = arg(args, 1);
  const e = ctx.db.get(key);
  if (e === undefined) {
    ctx.reply.nil();
    return;
  }
  const expireAt = extendedExpireOrReply(ctx, 'getex', a);
  if (expireAt === null) return;
  ctx.reply.bulk(e.value);
  if (a.flags & (F_EXAT | F_PXAT) && expireAt <= ctx.now) {
    ctx.db.delete(key);
  } else if (a.expire !== undefined) {
    ctx.db.setExpire(key, expireAt);
  } else if (a.flags & F_PERSIST) {
    ctx.db.setExpire(key, 0);
  }
}

function delCommand(ctx: CommandContext, args: Buffer[]): void {
  let n = 0;
  for (let j = 1; j < args.length; j++) if (ctx.db.delete(arg(args, j))) n++;
  ctx.reply.integer(n);
}

function existsCommand(ctx: CommandContext, args: Buffer[]): void {
  let n = 0;
  for (let j = 1; j < args.length; j++) if (ctx.db.has(arg(args, j))) n++;
  ctx.reply.integer(n);
}

function mgetCommand(ctx: CommandContext, args: Buffer[]): void {
  ctx.reply.arrayHeader(args.length - 1);
  for (let j = 1; j < args.length; j++) {
    const e = ctx.db.get(arg(args, j));
    if (e === undefined) ctx.reply.nil();
    else replyValue(ctx.reply, e);
  }
}

function msetGeneric(ctx: CommandContext, args: Buffer[], nx: boolean): void {
  if (args.length % 2 === 0) {
    ctx.reply.error(errWrongArity(nx ? 'msetnx' : 'mset'));
    return;
  }
  for (let j = 1; j < args.length; j += 2) {
    if (refuseTooLarge(ctx, arg(args, j).length, arg(args, j + 1).length)) return;
  }
  if (nx) {
    for (let j = 1; j < args.length; j += 2) {
      if (ctx.db.has(arg(args, j))) {
        ctx.reply.integer(0);
        return;
      }
    }
  }
  for (let j = 1; j < args.length; j += 2) ctx.db.set(arg(args, j), arg(args, j + 1));
  if (nx) ctx.reply.integer(1);
  else ctx.reply.ok();
}

/** incrDecrCommand: the value at key (absent = 0) plus incr, exact over int64. */
function incrDecr(ctx: CommandContext, key: Buffer, incr: number | bigint): void {
  const e = ctx.db.peek(key);
  let value: number | bigint = 0;
  if (e !== undefined) {
    const v = parseInteger(e.value);
    if (v === null) {
      ctx.reply.error(ERR_NOT_INTEGER);
      return;
    }
    value = v;
  }
  let result: number | bigint;
  if (typeof value === 'number' && typeof incr === 'number' && Number.isSafeInteger(value + incr)) {
    result = value + incr;
  } else {
    const r = BigInt(value) + BigInt(incr);
    if (r > LLONG_MAX || r < LLONG_MIN) {
      ctx.reply.error(ERR_OVERFLOW);
      return;
    }
    result = normalizeInt(r);
  }
  const bytes = intBytes(result);
  if (!storeSet(ctx, key, bytes, { keepTtl: true })) return;
  replyInt(ctx, result);
}

function incrbyCommand(ctx: CommandContext, args: Buffer[]): void {
  const incr = parseInteger(arg(args, 2));
  if (incr === null) {
    ctx.reply.error(ERR_NOT_INTEGER);
    return;
  }
  incrDecr(ctx, arg(args, 1), incr);
}

function decrbyCommand(ctx: CommandContext, args: Buffer[]): void {
  const incr = parseInteger(arg(args, 2));
  if (incr === null) {
    ctx.reply.error(ERR_NOT_INTEGER);
    return;
  }
  if (incr === LLONG_MIN) {
    ctx.reply.error(ERR_DECR_OVERFLOW);
    return;
  }
  incrDecr(ctx, arg(args, 1), typeof incr === 'number' ? -incr : normalizeInt(-incr));
}

function incrbyfloatCommand(ctx: CommandContext, args: Buffer[]): void {
  const key = arg(args, 1);
  const e = ctx.db.peek(key);
  let value: LongDouble | null = { kind: 'fin', neg: false, mant: 0n, exp: 0 };
  if (e !== undefined) value = parseLongDouble(e.value);
  const incr = value === null ? null : parseLongDouble(arg(args, 2));
  if (value === null || incr === null) {
    ctx.reply.error(ERR_NOT_FLOAT);
    return;
  }
  const sum = addLongDouble(value, incr);
  if (sum.kind !== 'fin') {
    ctx.reply.error(ERR_FLOAT_NAN);
    return;
  }
  const text = Buffer.from(formatLongDouble(sum), 'latin1');
  if (!storeSet(ctx, key, text, ownedSetOptions(text, true))) return;
  ctx.reply.bulk(text);
}

function appendCommand(ctx: CommandContext, args: Buffer[]): void {
  const key = arg(args, 1);
  const suffix = arg(args, 2);
  const e = ctx.db.peek(key);
  if (e !== undefined && e.valueLength + suffix.length > ctx.db.valueBytesMax) {
    ctx.reply.error(ERR_STRING_TOO_LONG);
    return;
  }
  try {
    const after = ctx.db.append(key, suffix);
    ctx.reply.integer(after.value.length);
  } catch (err) {
    if (!(err instanceof CacheEntryTooLargeError)) throw err;
    ctx.reply.error(errEntryTooLarge(err));
  }
}

function strlenCommand(ctx: CommandContext, args: Buffer[]): void {
  const e = ctx.db.get(arg(args, 1));
  ctx.reply.integer(e === undefined ? 0 : e.valueLength);
}

function getrangeCommand(ctx: CommandContext, args: Buffer[]): void {
  const start0 = parseInteger(arg(args, 2));
  if (start0 === null) {
    ctx.reply.error(ERR_NOT_INTEGER);
    return;
  }
  const end0 = parseInteger(arg(args, 3));
  if (end0 === null) {
    ctx.reply.error(ERR_NOT_INTEGER);
    return;
  }
  const e = ctx.db.get(arg(args, 1));
  if (e === undefined) {
    ctx.reply.bulk(EMPTY);
    return;
  }
  const len = e.valueLength;
  // Mixed number/bigint comparisons are exact in JS; values beyond +-2^53 only matter through their sign here.
  if (start0 < 0 && end0 < 0 && start0 > end0) {
    ctx.reply.bulk(EMPTY);
    return;
  }
  let start = Number(start0);
  let end = Number(end0);
  if (start < 0) start = len + start;
  if (end < 0) end = len + end;
  if (start < 0) start = 0;
  if (end < 0) end = 0;
  if (end >= len) end = len - 1;
  if (start > end || len === 0) ctx.reply.bulk(EMPTY);
  else ctx.reply.bulkRange(e.valueBytes, e.valueStart + start, e.valueStart + end + 1);
}

const EMPTY = Buffer.alloc(0);

function setrangeCommand(ctx: CommandContext, args: Buffer[]): void {
  const key = arg(args, 1);
  const value = arg(args, 3);
  const offset0 = parseInteger(arg(args, 2));
  if (offset0 === null) {
    ctx.reply.error(ERR_NOT_INTEGER);
    return;
  }
  if (offset0 < 0) {
    ctx.reply.error(ERR_OFFSET);
    return;
  }
  const e = ctx.db.peek(key);
  const oldLen = e === undefined ? 0 : e.valueLength;
  if (value.length === 0) {
    ctx.reply.integer(oldLen);
    return;
  }
  if (offset0 > ctx.db.valueBytesMax - value.length) {
    ctx.reply.error(ERR_STRING_TOO_LONG);
    return;
  }
  const offset = Number(offset0);
  const newLen = Math.max(oldLen, offset + value.length);
  if (refuseTooLarge(ctx, key.length, newLen)) return;
  // Copy on write: the old value may still be referenced by a reply being written.
  const next = Buffer.allocUnsafeSlow(newLen);
  if (e !== undefined) e.value.copy(next, 0);
  next.fill(0, oldLen, Math.max(oldLen, offset));
  value.copy(next, offset);
  if (!storeSet(ctx, key, next, ownedSetOptions(next, true))) return;
  ctx.reply.integer(newLen);
}

// --- expire family --------------------------------------------------------------------------------------------
const EXP_NX = 1;
const EXP_XX = 2;
const EXP_GT = 4;
const EXP_LT = 8;

function expireGeneric(ctx: CommandContext, args: Buffer[], command: string, absolute: boolean, unitSeconds: boolean) {
  let flags = 0;
  for (let j = 3; j < args.length; j++) {
    const opt = optionName(arg(args, j));
    if (opt === 'nx') flags |= EXP_NX;
    else if (opt === 'xx') flags |= EXP_XX;
    else if (opt === 'gt') flags |= EXP_GT;
    else if (opt === 'lt') flags |= EXP_LT;
    else {
      ctx.reply.error(sanitizeError(`ERR Unsupported option ${cString(arg(args, j))}`));
      return;
    }
  }
  if (flags & EXP_NX && flags & (EXP_XX | EXP_GT | EXP_LT)) {
    ctx.reply.error('ERR NX and XX, GT or LT options at the same time are not compatible');
    return;
  }
  if (flags & EXP_GT && flags & EXP_LT) {
    ctx.reply.error('ERR GT and LT options at the same time are not compatible');
    return;
  }
  const v = parseInteger(arg(args, 2));
  if (v === null) {
    ctx.reply.error(ERR_NOT_INTEGER);
    return;
  }
  const basetime = absolute ? 0 : ctx.now;
  let when: number | bigint;
  if (typeof v === 'number' && Math.abs(v) < SAFE_SECONDS) {
    when = (unitSeconds ? v * 1000 : v) + basetime;
  } else {
    let b = BigInt(v);
    if (unitSeconds) {
      if (b > LLONG_MAX_DIV_1000 || b < LLONG_MIN_DIV_1000) {
        ctx.reply.error(errInvalidExpire(command));
        return;
      }
      b *= 1000n;
    }
    if (b > LLONG_MAX - BigInt(basetime)) {
      ctx.reply.error(errInvalidExpire(command));
      return;
    }
    when = b + BigInt(basetime);
  }
  const key = arg(args, 1);
  const e = ctx.db.peek(key);
  if (e === undefined) {
    ctx.reply.integer(0);
    return;
  }
  if (flags !== 0) {
    const current = e.expireAt === 0 ? -1 : e.expireAt;
    if (flags & EXP_NX && current !== -1) return ctx.reply.integer(0);
    if (flags & EXP_XX && current === -1) return ctx.reply.integer(0);
    if (flags & EXP_GT && (when <= current || current === -1)) return ctx.reply.integer(0);
    if (flags & EXP_LT && current !== -1 && when >= current) return ctx.reply.integer(0);
  }
  if (when <= ctx.now) ctx.db.delete(key);
  else ctx.db.setExpire(key, toExpireAt(when));
  ctx.reply.integer(1);
}

function ttlGeneric(ctx: CommandContext, args: Buffer[], outputMs: boolean, outputAbs: boolean): void {
  const e = ctx.db.peek(arg(args, 1));
  if (e === undefined) {
    ctx.reply.integer(-2);
    return;
  }
  if (e.expireAt === 0) {
    ctx.reply.integer(-1);
    return;
  }
  if (e.expireAt > Number.MAX_SAFE_INTEGER) {
    // Far future (beyond year 287396): exact integer arithmetic on the stored double.
    const ttl = BigInt(e.expireAt) - (outputAbs ? 0n : BigInt(ctx.now));
    replyInt(ctx, normalizeInt(outputMs ? ttl : (ttl + 500n) / 1000n));
    return;
  }
  let ttl = outputAbs ? e.expireAt : e.expireAt - ctx.now;
  if (ttl < 0) ttl = 0;
  ctx.reply.integer(outputMs ? ttl : Math.floor((ttl + 500) / 1000));
}

function persistCommand(ctx: CommandContext, args: Buffer[]): void {
  const key = arg(args, 1);
  const e = ctx.db.peek(key);
  if (e === undefined || e.expireAt === 0) {
    ctx.reply.integer(0);
    return;
  }
  ctx.db.setExpire(key, 0);
  ctx.reply.integer(1);
}

function typeCommand(ctx: CommandContext, args: Buffer[]): void {
  ctx.reply.simple(ctx.db.peek(arg(args, 1)) === undefined ? 'none' : 'string');
}

// --- keyspace iteration ---------------------------------------------------------------------------------------
/** SCAN's COUNT default (Redis: 10). */
const SCAN_COUNT_DEFAULT = 10;

function scanCommand(ctx: CommandContext, args: Buffer[]): void {
  const cursor = parseCursor(arg(args, 1));
  if (cursor === null) {
    ctx.reply.error(ERR_INVALID_CURSOR);
    return;
  }
  let count = SCAN_COUNT_DEFAULT;
  let match: Buffer | undefined;
  let typeName: string | undefined;
  for (let i = 2; i < args.length; ) {
    const remaining = args.length - i;
    const opt = optionName(arg(args, i));
    if (opt === 'count' && remaining >= 2) {
      const c = parseInteger(arg(args, i + 1));
      if (c === null) {
        ctx.reply.error(ERR_NOT_INTEGER);
        return;
      }
      if (c < 1) {
        ctx.reply.error(ERR_SYNTAX);
        return;
      }
      count = Number(c);
      i += 2;
    } else if (opt === 'match' && remaining >= 2) {
      const p = arg(args, i + 1);
      match = globMatchesAll(p) ? undefined : p;
      i += 2;
    } else if (opt === 'type' && remaining >= 2) {
      typeName = cString(arg(args, i + 1)).toLowerCase();
      i += 2;
    } else {
      ctx.reply.error(ERR_SYNTAX);
      return;
    }
  }
  const [next, found] = ctx.db.scan(cursor, Math.min(count, Number.MAX_SAFE_INTEGER / 16), match);
  const keys = typeName === undefined || typeName === 'string' ? found : [];
  ctx.reply.arrayHeader(2);
  ctx.reply.bulk(String(next));
  ctx.reply.arrayHeader(keys.length);
  for (const k of keys) ctx.reply.bulk(k);
}

function keysCommand(ctx: CommandContext, args: Buffer[]): void {
  const p = arg(args, 1);
  const [, keys] = ctx.db.scan(0, Number.MAX_SAFE_INTEGER / 16, globMatchesAll(p) ? undefined : p);
  ctx.reply.arrayHeader(keys.length);
  for (const k of keys) ctx.reply.bulk(k);
}

function randomkeyCommand(ctx: CommandContext): void {
  const e = ctx.db.randomEntry();
  if (e === undefined) ctx.reply.nil();
  else ctx.reply.bulk(e.key);
}

function dbsizeCommand(ctx: CommandContext): void {
  ctx.reply.integer(ctx.db.size);
}

function flushCommand(ctx: CommandContext, args: Buffer[]): void {
  if (args.length === 2) {
    const opt = optionName(arg(args, 1));
    if (opt !== 'sync' && opt !== 'async') {
      ctx.reply.error(ERR_SYNTAX);
      return;
    }
  } else if (args.length !== 1) {
    ctx.reply.error(ERR_SYNTAX);
    return;
  }
  ctx.db.clear();
  ctx.reply.ok();
}

// ---------------------------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------------------------
function spec(
  name: string,
  arity: number,
  flags: readonly CommandFlag[],
  keys: readonly [firstKey: number, lastKey: number, keyStep: number],
  group: string,
  summary: string,
  handler: (ctx: CommandContext, args: Buffer[]) => void,
): CommandSpec {
  return { name, arity, flags, firstKey: keys[0], lastKey: keys[1], keyStep: keys[2], group, summary, handler };
}

const W = ['write'] as const;
const WF = ['write', 'fast'] as const;
const R = ['readonly'] as const;
const RF = ['readonly', 'fast'] as const;
const KEY1 = [1, 1, 1] as const;
const KEYS_ALL = [1, -1, 1] as const;
const KEYS_PAIRS = [1, -1, 2] as const;
const NO_KEYS = [0, 0, 0] as const;

/** The string and keyspace commands, Redis 7.0's table entries (Redis' denyoom/random flags have no equivalent). */
export const STRING_COMMANDS: CommandSpec[] = [
  spec('get', 2, RF, KEY1, 'string', 'Get the value of a key', getCommand),
  spec('set', -3, W, KEY1, 'string', 'Set the string value of a key', setCommand),
  spec('setnx', 3, WF, KEY1, 'string', 'Set the value of a key, only if the key does not exist', setnxCommand),
  spec('setex', 4, W, KEY1, 'string', 'Set the value and expiration of a key', (c, a) => setexGeneric(c, a, 'setex', true)),
  spec('psetex', 4, W, KEY1, 'string', 'Set the value and expiration in milliseconds of a key', (c, a) =>
    setexGeneric(c, a, 'psetex', false),
  ),
  spec('getdel', 2, WF, KEY1, 'string', 'Get the value of a key and delete the key', getdelCommand),
  spec('getex', -2, WF, KEY1, 'string', 'Get the value of a key and optionally set its expiration', getexCommand),
  spec('del', -2, W, KEYS_ALL, 'generic', 'Delete a key', delCommand),
  spec(
    'unlink',
    -2,
    WF,
    KEYS_ALL,
    'generic',
    'Delete a key asynchronously in another thread. Otherwise it is just as DEL, but non blocking.',
    delCommand,
  ),
  spec('exists', -2, RF, KEYS_ALL, 'generic', 'Determine if a key exists', existsCommand),
  spec('mget', -2, RF, KEYS_ALL, 'string', 'Get the values of all the given keys', mgetCommand),
  spec('mset', -3, W, KEYS_PAIRS, 'string', 'Set multiple keys to multiple values', (c, a) => msetGeneric(c, a, false)),
  spec('msetnx', -3, W, KEYS_PAIRS, 'string', 'Set multiple keys to multiple values, only if none of the keys exist', (c, a) =>
    msetGeneric(c, a, true),
  ),
  spec('incr', 2, WF, KEY1, 'string', 'Increment the integer value of a key by one', (c, a) => incrDecr(c, arg(a, 1), 1)),
  spec('incrby', 3, WF, KEY1, 'string', 'Increment the integer value of a key by the given amount', incrbyCommand),
  spec('decr', 2, WF, KEY1, 'string', 'Decrement the integer value of a key by one', (c, a) => incrDecr(c, arg(a, 1), -1)),
  spec('decrby', 3, WF, KEY1, 'string', 'Decrement the integer value of a key by the given number', decrbyCommand),
  spec('incrbyfloat', 3, WF, KEY1, 'string', 'Increment the float value of a key by the given amount', incrbyfloatCommand),
  spec('append', 3, WF, KEY1, 'string', 'Append a value to a key', appendCommand),
  spec('strlen', 2, RF, KEY1, 'string', 'Get the length of the value stored in a key', strlenCommand),
  spec('getrange', 4, R, KEY1, 'string', 'Get a substring of the string stored at a key', getrangeCommand),
  spec('setrange', 4, W, KEY1, 'string', 'Overwrite part of a string at key starting at the specified offset', setrangeCommand),
  spec('expire', -3, WF, KEY1, 'generic', "Set a key's time to live in seconds", (c, a) =>
    expireGeneric(c, a, 'expire', false, true),
  ),
  spec('pexpire', -3, WF, KEY1, 'generic', "Set a key's time to live in milliseconds", (c, a) =>
    expireGeneric(c, a, 'pexpire', false, false),
  ),
  spec('expireat', -3, WF, KEY1, 'generic', 'Set the expiration for a key as a UNIX timestamp', (c, a) =>
    expireGeneric(c, a, 'expireat', true, true),
  ),
  spec(
    'pexpireat',
    -3,
    WF,
    KEY1,
    'generic',
    'Set the expiration for a key as a UNIX timestamp specified in milliseconds',
    (c, a) => expireGeneric(c, a, 'pexpireat', true, false),
  ),
  spec('ttl', 2, RF, KEY1, 'generic', 'Get the time to live for a key in seconds', (c, a) => ttlGeneric(c, a, false, false)),
  spec('pttl', 2, RF, KEY1, 'generic', 'Get the time to live for a key in milliseconds', (c, a) =>
    ttlGeneric(c, a, true, false),
  ),
  spec('expiretime', 2, RF, KEY1, 'generic', 'Get the expiration Unix timestamp for a key', (c, a) =>
    ttlGeneric(c, a, false, true),
  ),
  spec('pexpiretime', 2, RF, KEY1, 'generic', 'Get the expiration Unix timestamp for a key in milliseconds', (c, a) =>
    ttlGeneric(c, a, true, true),
  ),
  spec('persist', 2, WF, KEY1, 'generic', 'Remove the expiration from a key', persistCommand),
  spec('type', 2, RF, KEY1, 'generic', 'Determine the type stored at key', typeCommand),
  spec('scan', -2, R, NO_KEYS, 'generic', 'Incrementally iterate the keys space', scanCommand),
  spec('keys', 2, R, NO_KEYS, 'generic', 'Find all keys matching the given pattern', keysCommand),
  spec('randomkey', 1, R, NO_KEYS, 'generic', 'Return a random key from the keyspace', randomkeyCommand),
  spec('dbsize', 1, RF, NO_KEYS, 'server', 'Return the number of keys in the selected database', dbsizeCommand),
  spec('flushall', -1, W, NO_KEYS, 'server', 'Remove all keys from all databases', flushCommand),
  spec('flushdb', -1, W, NO_KEYS, 'server', 'Remove all keys from the current database', flushCommand),
];
