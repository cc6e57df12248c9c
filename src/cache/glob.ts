/**
 * Redis-compatible glob matching over bytes (KEYS, SCAN MATCH): the same semantics as Redis' `stringmatchlen`,
 * including its edge cases, so a pattern selects exactly the keys Redis would select.
 *
 *   *        any run of bytes (also empty)          ?        exactly one byte
 *   [abc]    one of a, b, c                         [^abc]   any byte but a, b, c
 *   [a-z]    a byte in the range (ends may be given in either order)
 *   \x       the byte x literally (also inside [...])
 *
 * Faithful quirks: an unterminated `[` class ends at the end of the pattern; a trailing `\` matches a literal
 * backslash; range ends compare as *signed* chars, as Redis does on x86/ARM Linux (so `[a-\xff]` is the range
 * [\xff .. a] = -1..97); bytes past the end of the pattern read as 0 (the sds terminator).
 *
 * Work is bounded: once the rest of a pattern after a `*` has been tried at every later position and failed, no
 * enclosing `*` retries longer matches (Redis' `skipLongerMatches`), which keeps patterns like `a*a*a*a*b` linear in
 * practice instead of exponential; and nesting is capped at GLOB_NESTING_MAX stars (deeper means "no match", as
 * later Redis releases do) so a pattern of a million `*x` cannot overflow the stack.
 *
 * Both sides are handled as latin1 strings (one char per byte, `charCodeAt` = byte), which is how the cache store
 * keys its map, so matching store keys needs no Buffer allocation.
 */

/** Most nested `*` expansions before a match attempt gives up (answers "no match"). */
export const GLOB_NESTING_MAX = 1000;

const STAR = 0x2a;
const QUESTION = 0x3f;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const BACKSLASH = 0x5c;
const CARET = 0x5e;
const DASH = 0x2d;

/** Does `subject` match the glob `pattern`? Both are Buffers (binary-safe). */
export function globMatch(pattern: Buffer, subject: Buffer, nocase = false): boolean {
  return globMatchLatin1(pattern.toString('latin1'), subject.toString('latin1'), nocase);
}

/** Same as globMatch with both sides given as latin1 strings (one char per byte). */
export function globMatchLatin1(pattern: string, subject: string, nocase = false): boolean {
  const state: MatchState = { skipLonger: false };
  return matchAt(pattern, 0, subject, 0, nocase, state, 0);
}

/**
 * Is the pattern exactly `*`? KEYS and SCAN skip matching for it (as Redis does), so it selects every key, even
 * the empty one, which stringmatchlen itself would not match (its loop needs at least one byte of subject).
 */
export function globMatchesAll(pattern: Buffer): boolean {
  return pattern.length === 1 && pattern[0] === STAR;
}

interface MatchState {
  skipLonger: boolean;
}

function byteAt(s: string, i: number): number {
  return i < s.length ? s.charCodeAt(i) : 0;
}

function lower(c: number): number {
  return c >= 0x41 && c <= 0x5a ? c + 0x20 : c;
}

/** A byte read as C's signed `char`. */
function signedChar(c: number): number {
  return c >= 0x80 ? c - 0x100 : c;
}

function matchAt(
  pattern: string,
  p: number,
  subject: string,
  s: number,
  nocase: boolean,
  state: MatchState,
  nesting: number,
): boolean {
  if (nesting > GLOB_NESTING_MAX) return false;
  const plen = pattern.length;
  const slen = subject.length;
  while (p < plen && s < slen) {
    const pc = pattern.charCodeAt(p);
    if (pc === STAR) {
      while (p + 1 < plen && pattern.charCodeAt(p + 1) === STAR) p++;
      if (p + 1 === plen) return true; // a trailing star matches the rest
      while (s < slen) {
        if (matchAt(pattern, p + 1, subject, s, nocase, state, nesting + 1)) return true;
        if (state.skipLonger) return false;
        s++;
      }
      // The rest of the pattern matches nowhere in the rest of the subject: an enclosing star trying a longer
      // match would only start the rest later still, so it cannot succeed either.
      state.skipLonger = true;
      return false;
    } else if (pc === QUESTION) {
      s++;
    } else if (pc === LBRACKET) {
      p++;
      const not = byteAt(pattern, p) === CARET;
      if (not) p++;
      let matched = false;
      const sc = subject.charCodeAt(s);
      for (;;) {
        const c = byteAt(pattern, p);
        if (c === BACKSLASH && plen - p >= 2) {
          p++;
          if (pattern.charCodeAt(p) === sc) matched = true;
        } else if (c === RBRACKET && p < plen) {
          break;
        } else if (p >= plen) {
          p--; // unterminated class: stop at the end of the pattern
          break;
        } else if (plen - p >= 3 && pattern.charCodeAt(p + 1) === DASH) {
          let start = signedChar(c);
          let end = signedChar(pattern.charCodeAt(p + 2));
          let x = signedChar(sc);
          if (start > end) {
            const t = start;
            start = end;
            end = t;
          }
          if (nocase) {
            start = lower(start);
            end = lower(end);
            x = lower(x);
          }
          p += 2;
          if (x >= start && x <= end) matched = true;
        } else if (nocase ? lower(c) === lower(sc) : c === sc) {
          matched = true;
        }
        p++;
      }
      if (not) matched = !matched;
      if (!matched) return false;
      s++;
    } else {
      let lit = pc;
      if (pc === BACKSLASH && plen - p >= 2) {
        p++;
        lit = pattern.charCodeAt(p);
      }
      const sc = subject.charCodeAt(s);
      if (nocase ? lower(lit) !== lower(sc) : lit !== sc) return false;
      s++;
    }
    p++;
    if (s === slen) {
      while (byteAt(pattern, p) === STAR && p < plen) p++;
      break;
    }
  }
  return p >= plen && s === slen;
}
