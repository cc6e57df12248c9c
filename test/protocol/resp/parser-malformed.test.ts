import t from 'tap';
import type { RespLimits } from '../../../src/config/limits.js';
import { RespParser, RespProtocolError } from '../../../protocol/resp/parser.js';
import { encodeCommand } from '../../../protocol/resp/writer.js';
import { createRng } from '../../../src/util/rng.js';
import { LIMITS, parseChunks, randomArg, randomBytes, sameCommands, splitRandom } from './helpers.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const TINY: RespLimits = { bulkBytesMax: 1024, argsPerCommandMax: 16, inlineBytesMax: 64, queryBufferBytesMax: 4096 };

interface Case {
  name: string;
  input: Buffer;
  error: string;
  /** Commands delivered before the error. */
  before?: number;
  limits?: RespLimits;
}

const cases: Case[] = [
  { name: 'multibulk count above INT_MAX', input: b('*2147483648\r\n'), error: 'invalid multibulk length' },
  { name: 'multibulk count above argsPerCommandMax', input: b('*1048577\r\n'), error: 'invalid multibulk length' },
  { name: 'multibulk count above a tiny argsPerCommandMax', input: b('*17\r\n'), error: 'invalid multibulk length', limits: TINY },
  { name: 'multibulk count of 20 digits', input: b('*99999999999999999999\r\n'), error: 'invalid multibulk length' },
  { name: 'non-numeric multibulk count', input: b('*abc\r\n'), error: 'invalid multibulk length' },
  { name: 'multibulk count with a leading +', input: b('*+1\r\n$4\r\nPING\r\n'), error: 'invalid multibulk length' },
  { name: 'multibulk count with a leading space', input: b('* 1\r\n$4\r\nPING\r\n'), error: 'invalid multibulk length' },
  { name: 'multibulk count with a trailing space', input: b('*1 \r\n$4\r\nPING\r\n'), error: 'invalid multibulk length' },
  { name: 'multibulk count with a leading zero', input: b('*01\r\n$4\r\nPING\r\n'), error: 'invalid multibulk length' },
  { name: 'multibulk count -0', input: b('*-0\r\n'), error: 'invalid multibulk length' },
  { name: 'empty multibulk count', input: b('*\r\n'), error: 'invalid multibulk length' },
  { name: 'NUL byte in a multibulk count', input: b('*1\x00\r\n$4\r\nPING\r\n'), error: 'invalid multibulk length' },
  { name: 'CR not followed by LF in a count', input: b('*1\rX$4\r\nPING\r\n'), error: 'invalid multibulk length' },
  { name: 'binary garbage in a multibulk count', input: b('*\xff\xfe\x80\r\n'), error: 'invalid multibulk length' },
  { name: 'bulk length of 13 digits', input: b('*1\r\n$9999999999999\r\n'), error: 'invalid bulk length' },
  { name: 'bulk length -1 in a request', input: b('*1\r\n$-1\r\n'), error: 'invalid bulk length' },
  { name: 'negative bulk length', input: b('*2\r\n$3\r\nGET\r\n$-5\r\nabc\r\n'), error: 'invalid bulk length' },
  { name: 'bulk length with a leading +', input: b('*1\r\n$+4\r\nPING\r\n'), error: 'invalid bulk length' },
  { name: 'bulk length with a leading space', input: b('*1\r\n$ 4\r\nPING\r\n'), error: 'invalid bulk length' },
  { name: 'bulk length with a trailing space', input: b('*1\r\n$4 \r\nPING\r\n'), error: 'invalid bulk length' },
  { name: 'bulk length with a leading zero', input: b('*1\r\n$04\r\nPING\r\n'), error: 'invalid bulk length' },
  { name: 'empty bulk length', input: b('*1\r\n$\r\n'), error: 'invalid bulk length' },
  { name: 'NUL byte in a bulk length', input: b('*1\r\n$4\x00\r\nPING\r\n'), error: 'invalid bulk length' },
  { name: 'bulk length above bulkBytesMax', input: b('*1\r\n$1025\r\n'), error: 'invalid bulk length', limits: TINY },
  { name: 'missing $ before a bulk', input: b('*1\r\nPING\r\n'), error: "expected '$', got 'P'" },
  { name: 'Redis: wrong multibulk payload header', input: b('*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n'), error: "expected '$', got 'f'" },
  { name: 'NUL byte instead of $', input: b('*1\r\n\x00'), error: "expected '$', got '\\x00'" },
  { name: 'bulk data longer than declared', input: b('*1\r\n$3\r\nPINGX\r\n'), error: "expected CRLF after bulk data, got 'G'" },
  { name: 'bulk data without its CR', input: b('*1\r\n$4\r\nPING\n'), error: "expected CRLF after bulk data, got '\\x0a'" },
  { name: 'bulk data with CR but no LF', input: b('*1\r\n$4\r\nPING\rX'), error: "expected CRLF after bulk data, got 'X'" },
  { name: 'unbalanced double quote', input: b('SET "abc\r\n'), error: 'unbalanced quotes in request' },
  { name: 'unbalanced single quote', input: b("SET 'abc\r\n"), error: 'unbalanced quotes in request' },
  { name: 'closing quote followed by a letter', input: b('SET "a"b\r\n'), error: 'unbalanced quotes in request' },
  { name: 'a backslash at the end of a quoted word', input: b('SET "a\\\r\n'), error: 'unbalanced quotes in request' },
  { name: 'inline line above inlineBytesMax', input: b(`${'A'.repeat(65)}\r\n`), error: 'too big inline request', limits: TINY },
  { name: 'inline line above 64 KiB without a newline', input: b('A'.repeat(70000)), error: 'too big inline request' },
  { name: 'multibulk count line above 64 KiB', input: b(`*${'1'.repeat(70000)}`), error: 'too big mbulk count string' },
  { name: 'bulk count line above 64 KiB', input: b(`*1\r\n$${'1'.repeat(70000)}`), error: 'too big bulk count string' },
  { name: 'a complete bulk count line above inlineBytesMax', input: b(`*1\r\n$${'0'.repeat(64)}\r\n`), error: 'too big bulk count string', limits: TINY },
  {
    name: 'one command larger than queryBufferBytesMax',
    input: Buffer.concat([encodeCommand(['SET', 'k', 'x'.repeat(1000)]), encodeCommand(['SET', 'k', 'y'.repeat(1000), 'z'.repeat(1000), 'w'.repeat(1000), 'v'.repeat(1000), 'u'.repeat(1000)])]),
    error: 'query buffer limit exceeded',
    before: 1,
    limits: TINY,
  },
  {
    name: 'an inline line larger than queryBufferBytesMax',
    input: b(`${'A'.repeat(200)}\r\n`),
    error: 'query buffer limit exceeded',
    limits: { ...TINY, inlineBytesMax: 1000, queryBufferBytesMax: 100 },
  },
  {
    name: 'commands before a malformed one are still delivered',
    input: Buffer.concat([encodeCommand(['PING']), b('PING\r\n'), b('*1\r\n$x\r\n')]),
    error: 'invalid bulk length',
    before: 2,
  },
];

t.test('a corpus of malformed requests each gives its clear error, whole and byte by byte', async (t) => {
  for (const c of cases) {
    const limits = c.limits ?? LIMITS;
    const whole = parseChunks([c.input], limits);
    t.ok(whole.error instanceof RespProtocolError, `${c.name}: is a RespProtocolError`);
    t.equal(whole.error?.code, 'PROTOCOL', `${c.name}: code`);
    t.equal(whole.error?.message, `Protocol error: ${c.error}`, `${c.name}: message`);
    t.equal(whole.commands.length, c.before ?? 0, `${c.name}: commands delivered before the error`);
    const bytes: Buffer[] = [];
    for (let i = 0; i < c.input.length; i++) bytes.push(c.input.subarray(i, i + 1));
    const perByte = parseChunks(bytes, limits);
    t.equal(perByte.error?.message, whole.error?.message, `${c.name}: same error byte by byte`);
    t.equal(perByte.commands.length, whole.commands.length, `${c.name}: same commands byte by byte`);
  }
});

t.test('the error is sticky: later feeds return it without parsing', async (t) => {
  const parser = new RespParser(LIMITS);
  const err = parser.feed(b('*x\r\n'), () => {});
  t.ok(err instanceof RespProtocolError);
  let n = 0;
  t.equal(parser.feed(encodeCommand(['PING']), () => n++), err);
  t.equal(n, 0);
});

/** Bytes of ArrayBuffers allocated by a feed of `input` with `limits`, and its outcome. */
function allocatedBy(input: Buffer, limits: RespLimits): { grown: number; error: string | undefined; parser: RespParser } {
  const parser = new RespParser(limits);
  const before = process.memoryUsage().arrayBuffers;
  const error = parser.feed(input, () => {})?.message;
  const grown = process.memoryUsage().arrayBuffers - before;
  return { grown, error, parser };
}

t.test('a 100 MB declared bulk is refused by the limits before anything is allocated', async (t) => {
  const declared = 100 * 1024 * 1024;
  const input = b(`*2\r\n$3\r\nSET\r\n$${declared}\r\nabc`);

  const byBulkLimit = allocatedBy(input, { ...LIMITS, bulkBytesMax: 1024 * 1024 });
  t.equal(byBulkLimit.error, 'Protocol error: invalid bulk length');
  t.ok(byBulkLimit.grown < declared / 2, `bulk limit: grew ${byBulkLimit.grown} bytes`);

  const byQueryLimit = allocatedBy(input, { ...LIMITS, queryBufferBytesMax: 1024 * 1024 });
  t.equal(byQueryLimit.error, 'Protocol error: query buffer limit exceeded');
  t.ok(byQueryLimit.grown < declared / 2, `query buffer limit: grew ${byQueryLimit.grown} bytes`);

  // Control: when the limits allow it, the same input does allocate the declared size (so the probe works).
  const allowed = allocatedBy(input, LIMITS);
  t.equal(allowed.error, undefined);
  t.ok(allowed.grown >= declared, `allowed: grew ${allowed.grown} bytes`);
  t.equal(allowed.parser.bufferedBytes, input.length);
  allowed.parser.reset();
});

t.test('huge declared counts allocate nothing up front', async (t) => {
  const before = process.memoryUsage().arrayBuffers;
  const parser = new RespParser(LIMITS);
  t.equal(parser.feed(b('*1048576\r\n$1\r\nx\r\n'), () => {}), null, 'an allowed count is accepted');
  t.ok(process.memoryUsage().arrayBuffers - before < 1024 * 1024, 'no argument array sized by the declared count');
  t.equal(parser.bufferedBytes, 17);
});

/** A byte alphabet biased towards protocol characters so the fuzz reaches deep parser states. */
const FUZZ_ALPHABET = b('*$\r\n\r\n0123456789-+ "\'\\x\t\x00');

function garbage(rng: ReturnType<typeof createRng>, n: number): Buffer {
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) {
    out[i] = rng.chance(0.7) ? (FUZZ_ALPHABET[rng.int(0, FUZZ_ALPHABET.length)] as number) : rng.int(0, 256);
  }
  return out;
}

const FUZZ_LIMITS: RespLimits = { bulkBytesMax: 64 * 1024, argsPerCommandMax: 1000, inlineBytesMax: 1024, queryBufferBytesMax: 256 * 1024 };

t.test('random garbage never throws or hangs, and its outcome does not depend on chunking (fuzz, many seeds)', async (t) => {
  let errors = 0;
  let parsed = 0;
  let mismatches = 0;
  for (let seed = 1; seed <= 400; seed++) {
    const rng = createRng(seed);
    let input: Buffer;
    if (seed % 2 === 0) {
      input = garbage(rng, rng.int(0, 3000));
    } else {
      // A valid pipeline with a few bytes mutated.
      const parts: Buffer[] = [];
      for (let i = 0; i < 20; i++) {
        const args: Buffer[] = [];
        const argc = rng.int(1, 5);
        for (let j = 0; j < argc; j++) args.push(randomArg(rng).subarray(0, 200));
        parts.push(encodeCommand(args));
      }
      input = Buffer.concat(parts);
      const flips = rng.int(1, 4);
      for (let k = 0; k < flips; k++) input[rng.int(0, input.length)] = FUZZ_ALPHABET[rng.int(0, FUZZ_ALPHABET.length)] as number;
    }
    let whole: ReturnType<typeof parseChunks>;
    let split: ReturnType<typeof parseChunks>;
    try {
      whole = parseChunks([input], FUZZ_LIMITS);
      split = parseChunks(splitRandom(rng, input, rng.int(1, 300)), FUZZ_LIMITS);
    } catch (e) {
      t.fail(`seed ${seed}: threw ${String(e)}`);
      continue;
    }
    for (const r of [whole, split]) {
      if (r.error !== null && !(r.error instanceof RespProtocolError && r.error.message.startsWith('Protocol error: '))) {
        t.fail(`seed ${seed}: returned something other than a RespProtocolError`);
      }
    }
    if (whole.error !== null) errors++;
    else parsed++;
    if (whole.error?.message !== split.error?.message || !sameCommands(whole.commands, split.commands)) {
      mismatches++;
      t.fail(`seed ${seed}: whole gave ${whole.error?.message}, split gave ${split.error?.message}`);
    }
  }
  t.equal(mismatches, 0);
  t.ok(errors > 50 && parsed > 20, `both outcomes are exercised (errors ${errors}, clean ${parsed})`);
});

t.test('pure random bytes are survived at every seed', async (t) => {
  let failures = 0;
  for (let seed = 1000; seed < 1200; seed++) {
    const rng = createRng(seed);
    const input = randomBytes(rng, rng.int(1, 4096));
    try {
      const r = parseChunks(splitRandom(rng, input, 64), FUZZ_LIMITS);
      if (r.error !== null && r.error.code !== 'PROTOCOL') failures++;
    } catch {
      failures++;
    }
  }
  t.equal(failures, 0);
});
