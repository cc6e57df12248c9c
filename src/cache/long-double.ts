/**
 * Exact emulation of the x87 80-bit `long double` arithmetic that Redis' INCRBYFLOAT uses on x86-64 Linux, so our
 * replies are byte-identical to Redis' (`SET k 10.5` then `INCRBYFLOAT k 0.1` is "10.6", `0.1 + 0.2` is "0.3";
 * plain doubles would give "10.6" but "0.30000000000000004").
 *
 * A value is sign * mant * 2^exp with a 64-bit significand (normalized to [2^63, 2^64) except for subnormals
 * and zero) and the binary exponent range of the 80-bit format. Everything is done on BigInt: INCRBYFLOAT is not
 * on any hot path, and exactness matters more than speed here.
 *
 *   parseLongDouble   = Redis' string2ld(): strtold() in round-to-nearest, the whole input consumed, no leading
 *                       space, no NaN, ERANGE overflow/underflow-to-zero refused, inputs of 5120+ bytes refused.
 *   addLongDouble     = IEEE addition rounded to nearest-even on 64 bits.
 *   formatLongDouble  = ld2string(LD_STR_HUMAN): "%.17Lf" (exactly rounded, ties to even, as glibc does), then
 *                       trailing zeros and a trailing '.' removed, and "-0" written as "0".
 */

export interface LongDouble {
  /** 'fin' = finite (mant/exp valid), 'inf' = infinity, 'nan' = not a number. */
  readonly kind: 'fin' | 'inf' | 'nan';
  readonly neg: boolean;
  /** Significand: 0 for zero, otherwise < 2^64 (>= 2^63 unless subnormal). */
  readonly mant: bigint;
  /** Binary exponent applied to mant. */
  readonly exp: number;
}

/** Redis' MAX_LONG_DOUBLE_CHARS: string2ld refuses inputs this long or longer. */
export const LONG_DOUBLE_CHARS_MAX = 5 * 1024;

const MANT_BITS = 64;
/** Exponent of the smallest subnormal (2^-16445) and of every subnormal/minimum normal significand. */
const EXP_MIN = -16382 - 63;
/** Largest exponent a finite value may carry: mant < 2^64, so values < 2^16384. */
const EXP_MAX = 16383 - 63;
const TWO_64 = 1n << 64n;
const TEN_17 = 10n ** 17n;

const ZERO: LongDouble = { kind: 'fin', neg: false, mant: 0n, exp: 0 };

function bitLength(n: bigint): number {
  // n > 0. toString(16) is linear and exact; fine off the hot path.
  const hex = n.toString(16);
  const top = parseInt(hex[0] ?? '0', 16);
  return (hex.length - 1) * 4 + (32 - Math.clz32(top));
}

/**
 * Rounds the exact value n * 2^e (plus "something nonzero below" when sticky) to the nearest long double, ties to
 * even. Returns also whether the result overflowed to infinity or underflowed to zero from a nonzero input.
 */
function roundToLongDouble(
  neg: boolean,
  n: bigint,
  e: number,
  sticky: boolean,
): { v: LongDouble; overflow: boolean; underflow: boolean } {
  if (n === 0n) {
    return { v: { ...ZERO, neg }, overflow: false, underflow: sticky };
  }
  const len = bitLength(n);
  let shift = len - MANT_BITS; // > 0: drop bits; < 0: left-align
  if (e + shift < EXP_MIN) shift = EXP_MIN - e; // subnormal: fewer significant bits
  let mant: bigint;
  if (shift <= 0) {
    // Nothing is dropped. A sticky remainder (below 2^e) still has to reach the rounding: re-express it as one
    // set bit under n, which sits strictly between 0 and half an ulp exactly as the true remainder does.
    if (sticky) return roundToLongDouble(neg, (n << 2n) | 1n, e - 2, false);
    mant = n << BigInt(-shift);
  } else {
    const bshift = BigInt(shift);
    mant = n >> bshift;
    const rem = n - (mant << bshift);
    const half = 1n << (bshift - 1n);
    if (rem > half || (rem === half && (sticky || (mant & 1n) === 1n))) mant += 1n;
  }
  let exp = e + shift;
  if (mant === TWO_64) {
    mant >>= 1n;
    exp += 1;
  }
  if (mant === 0n) return { v: { ...ZERO, neg }, overflow: false, underflow: true };
  if (exp > EXP_MAX) return { v: { kind: 'inf', neg, mant: 0n, exp: 0 }, overflow: true, underflow: false };
  return { v: { kind: 'fin', neg, mant, exp }, overflow: false, underflow: false };
}

function isSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

function hexVal(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x61 + 10;
  return -1;
}

function matchWordCI(s: Buffer, at: number, word: string): boolean {
  if (s.length - at < word.length) return false;
  for (let i = 0; i < word.length; i++) {
    if (((s[at + i] ?? 0) | 0x20) !== word.charCodeAt(i)) return false;
  }
  return true;
}

/** Parses an optional exponent (e.g. "e-12" or "p+3") at `at`; returns [value, end] or null if none is there. */
function parseExponent(s: Buffer, at: number): [number, number] | null {
  let i = at + 1;
  let neg = false;
  const sign = s[i];
  if (sign === 0x2b || sign === 0x2d) {
    neg = sign === 0x2d;
    i++;
  }
  if (i >= s.length || !isDigit(s[i] ?? 0)) return null;
  let v = 0;
  while (i < s.length && isDigit(s[i] ?? 0)) {
    if (v < 1e9) v = v * 10 + ((s[i] ?? 0x30) - 0x30); // saturate: beyond this it is overflow or underflow anyway
    i++;
  }
  return [neg ? -v : v, i];
}

/**
 * Redis' string2ld: the long double the whole of `s` denotes, or null where Redis answers "not a valid float".
 * Infinity ("inf", "infinity", any case, signed) is accepted, as strtold does; NaN is refused.
 */
export function parseLongDouble(s: Buffer): LongDouble | null {
  const len = s.length;
  if (len === 0 || len >= LONG_DOUBLE_CHARS_MAX) return null;
  if (isSpace(s[0] ?? 0)) return null;
  let i = 0;
  let neg = false;
  if (s[i] === 0x2b || s[i] === 0x2d) {
    neg = s[i] === 0x2d;
    i++;
  }
  if (matchWordCI(s, i, 'inf')) {
    const end = matchWordCI(s, i, 'infinity') ? i + 8 : i + 3;
    return end === len ? { kind: 'inf', neg, mant: 0n, exp: 0 } : null;
  }
  if (matchWordCI(s, i, 'nan')) return null; // NaN (with or without "(chars)") is always refused

  // Hexadecimal float: 0x<hex>[.<hex>][p<exp>]
  if (s[i] === 0x30 && (s[i + 1] === 0x78 || s[i + 1] === 0x58)) {
    let j = i + 2;
    let n = 0n;
    let digits = 0;
    let fracDigits = 0;
    let sawDot = false;
    for (; j < len; j++) {
      const c = s[j] ?? 0;
      if (c === 0x2e && !sawDot) {
        sawDot = true;
        continue;
      }
      const h = hexVal(c);
      if (h < 0) break;
      n = (n << 4n) | BigInt(h);
      digits++;
      if (sawDot) fracDigits++;
    }
    if (digits > 0) {
      let e2 = -4 * fracDigits;
      if (j < len && (s[j] === 0x70 || s[j] === 0x50)) {
        const ex = parseExponent(s, j);
        if (ex !== null) {
          e2 += ex[0];
          j = ex[1];
        }
      }
      if (j !== len) return null;
      return finishParse(neg, n, e2);
    }
    // "0x" with no hex digit: strtold reads just the "0", leaving "x..." unconsumed.
    return null;
  }

  // Decimal: <digits>[.<digits>][e<exp>], at least one digit.
  let j = i;
  let digitsStr = '';
  let fracDigits = 0;
  let sawDot = false;
  let anyDigit = false;
  for (; j < len; j++) {
    const c = s[j] ?? 0;
    if (c === 0x2e && !sawDot) {
      sawDot = true;
      continue;
    }
    if (!isDigit(c)) break;
    anyDigit = true;
    if (digitsStr.length > 0 || c !== 0x30) digitsStr += String.fromCharCode(c);
    if (sawDot) fracDigits++;
  }
  if (!anyDigit) return null;
  let e10 = -fracDigits;
  if (j < len && (s[j] === 0x65 || s[j] === 0x45)) {
    const ex = parseExponent(s, j);
    if (ex !== null) {
      e10 += ex[0];
      j = ex[1];
    }
  }
  if (j !== len) return null;
  if (digitsStr.length === 0) return { ...ZERO, neg };
  const magnitude = digitsStr.length + e10; // value is in [10^(magnitude-1), 10^magnitude)
  if (magnitude > 4934) return null; // > LDBL_MAX (about 1.19e4932): ERANGE, HUGE_VAL
  if (magnitude < -4952) return null; // < half the smallest subnormal (about 3.6e-4951): ERANGE, zero
  const d = BigInt(digitsStr);
  if (e10 >= 0) return finishParse(neg, d * 10n ** BigInt(e10), 0);
  const den = 10n ** BigInt(-e10);
  const k = Math.max(0, bitLength(den) - bitLength(d) + MANT_BITS + 3);
  const scaled = d << BigInt(k);
  const q = scaled / den;
  const sticky = scaled - q * den !== 0n;
  const r = roundToLongDouble(neg, q, -k, sticky);
  if (r.overflow || r.underflow) return null;
  return r.v;
}

function finishParse(neg: boolean, n: bigint, e2: number): LongDouble | null {
  if (n === 0n) return { ...ZERO, neg };
  const r = roundToLongDouble(neg, n, e2, false);
  if (r.overflow || r.underflow) return null;
  return r.v;
}

/** IEEE addition in round-to-nearest-even, as the x87 does in extended precision. */
export function addLongDouble(a: LongDouble, b: LongDouble): LongDouble {
  if (a.kind === 'nan' || b.kind === 'nan') return { kind: 'nan', neg: false, mant: 0n, exp: 0 };
  if (a.kind === 'inf' && b.kind === 'inf') {
    return a.neg === b.neg ? a : { kind: 'nan', neg: false, mant: 0n, exp: 0 };
  }
  if (a.kind === 'inf') return a;
  if (b.kind === 'inf') return b;
  if (a.mant === 0n && b.mant === 0n) return { ...ZERO, neg: a.neg && b.neg };
  if (a.mant === 0n) return b;
  if (b.mant === 0n) return a;
  const e = Math.min(a.exp, b.exp);
  const na = a.mant << BigInt(a.exp - e);
  const nb = b.mant << BigInt(b.exp - e);
  const sa = a.neg ? -na : na;
  const sb = b.neg ? -nb : nb;
  const sum = sa + sb;
  if (sum === 0n) return ZERO; // x + (-x) is +0 in round-to-nearest
  const neg = sum < 0n;
  return roundToLongDouble(neg, neg ? -sum : sum, e, false).v;
}

/** ld2string(..., LD_STR_HUMAN) for a finite value: "%.17Lf" with trailing zeros (and '.') removed, "-0" -> "0". */
export function formatLongDouble(x: LongDouble): string {
  if (x.kind !== 'fin') throw new RangeError('formatLongDouble: not a finite value');
  let q: bigint;
  if (x.exp >= 0) {
    q = (x.mant << BigInt(x.exp)) * TEN_17;
  } else {
    const sh = BigInt(-x.exp);
    const scaled = x.mant * TEN_17;
    q = scaled >> sh;
    const rem = scaled - (q << sh);
    const half = 1n << (sh - 1n);
    if (rem > half || (rem === half && (q & 1n) === 1n)) q += 1n;
  }
  const intPart = q / TEN_17;
  const frac = q % TEN_17;
  let out = intPart.toString();
  if (frac !== 0n) out += '.' + frac.toString().padStart(17, '0').replace(/0+$/, '');
  if (x.neg && out !== '0') out = '-' + out;
  return out;
}
