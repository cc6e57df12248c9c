import t from 'tap';
import { RespReplyError, RespReplyParser, toJs } from '../../../protocol/resp/reply-parser.js';
import type { RespReplyParserOptions, RespValue } from '../../../protocol/resp/reply-parser.js';
import { ReplyWriter, formatDouble } from '../../../protocol/resp/writer.js';
import { RespProtocolError } from '../../../protocol/resp/errors.js';
import { createRng } from '../../../src/util/rng.js';
import type { Rng } from '../../../src/util/rng.js';
import { randomBytes, randomWord, splitRandom } from './helpers.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const bulk = (s: string | Buffer): RespValue => ({ type: 'bulk', value: typeof s === 'string' ? Buffer.from(s) : s });

function parseAll(chunks: readonly Buffer[], options?: RespReplyParserOptions): { values: RespValue[]; error: RespProtocolError | null } {
  const parser = new RespReplyParser(options);
  const values: RespValue[] = [];
  let error: RespProtocolError | null = null;
  for (const c of chunks) {
    error = parser.feed(c, (v) => values.push(v));
    if (error !== null) break;
  }
  return { values, error };
}

/** Writes one random reply tree with `w` and returns the value a reply parser must read back. */
function randomReply(rng: Rng, w: ReplyWriter, depth: number): RespValue {
  const p3 = w.proto === 3;
  const kind = rng.int(0, depth > 2 ? 13 : 17);
  switch (kind) {
    case 0:
      w.ok();
      return { type: 'simple', value: 'OK' };
    case 1: {
      const s = randomWord(rng);
      w.simple(s);
      return { type: 'simple', value: s };
    }
    case 2: {
      const s = `ERR ${randomWord(rng)}`;
      w.error(s);
      return { type: 'error', value: s };
    }
    case 3: {
      const r = rng.next();
      const n = r < 0.5 ? rng.int(-10000, 10000) : r < 0.9 ? rng.int(-2e9, 2e9) * 1000003 : Number.MAX_SAFE_INTEGER;
      w.integer(n);
      return { type: 'integer', value: n };
    }
    case 4: {
      const v = 2n ** 64n + BigInt(rng.int(0, 1000));
      w.integer(v);
      return { type: 'integer', value: v };
    }
    case 5: {
      const v = randomBytes(rng, rng.int(0, 300));
      w.bulk(v);
      return bulk(v);
    }
    case 6:
      w.nil();
      return p3 ? { type: 'null' } : { type: 'bulk', value: null };
    case 7:
      w.nilArray();
      return p3 ? { type: 'null' } : { type: 'array', value: null };
    case 8: {
      const d = rng.chance(0.2) ? Infinity : (rng.next() - 0.5) * 10 ** rng.int(-20, 20);
      w.double(d);
      return p3 ? { type: 'double', value: d } : bulk(formatDouble(d));
    }
    case 9: {
      const v = rng.chance(0.5);
      w.boolean(v);
      return p3 ? { type: 'boolean', value: v } : { type: 'integer', value: v ? 1 : 0 };
    }
    case 10: {
      const s = `${randomWord(rng)}\r\n${randomWord(rng)}`;
      w.verbatim(s, 'mkd');
      return p3 ? { type: 'verbatim', format: 'mkd', value: Buffer.from(s) } : bulk(s);
    }
    case 11: {
      const s = `${rng.chance(0.5) ? '-' : ''}${rng.int(1, 1e9)}${rng.int(1e8, 1e9)}${rng.int(1e8, 1e9)}`;
      w.bigNumber(s);
      return p3 ? { type: 'bignum', value: BigInt(s) } : bulk(s);
    }
    case 12: {
      const s = 'héllo wörld';
      w.bulk(s);
      return bulk(s);
    }
    case 13:
    case 14: {
      const n = rng.int(0, 5);
      const items: RespValue[] = [];
      w.arrayHeader(n);
      for (let i = 0; i < n; i++) items.push(randomTree(rng, w, depth + 1));
      return { type: 'array', value: items };
    }
    default: {
      const n = rng.int(0, 4);
      w.mapHeader(n);
      const items: RespValue[] = [];
      for (let i = 0; i < 2 * n; i++) items.push(randomTree(rng, w, depth + 1));
      if (!p3) return { type: 'array', value: items };
      const pairs: [RespValue, RespValue][] = [];
      for (let i = 0; i < n; i++) pairs.push([items[2 * i] as RespValue, items[2 * i + 1] as RespValue]);
      return { type: 'map', value: pairs };
    }
  }
}
/** A random reply: sometimes a set or push aggregate, otherwise anything randomReply writes. */
function randomTree(rng: Rng, w: ReplyWriter, depth: number): RespValue {
  if (rng.chance(0.15) && depth <= 2) {
    const n = rng.int(0, 4);
    const kind = rng.chance(0.5) ? 'set' : 'push';
    if (kind === 'set') w.setHeader(n);
    else w.pushHeader(n);
    const items: RespValue[] = [];
    for (let i = 0; i < n; i++) items.push(randomTree(rng, w, depth + 1));
    return { type: w.proto === 3 ? kind : 'array', value: items };
  }
  return randomReply(rng, w, depth);
}

t.test('every reply type the writer writes reads back to the same value (RESP2 and RESP3, many seeds)', async (t) => {
  for (const proto of [2, 3] as const) {
    for (let seed = 1; seed <= 100; seed++) {
      const rng = createRng(seed * 31 + proto);
      const w = new ReplyWriter(proto);
      const expected: RespValue[] = [];
      const n = rng.int(1, 30);
      for (let i = 0; i < n; i++) expected.push(randomTree(rng, w, 0));
      const bytes = w.take();
      const whole = parseAll([bytes]);
      const split = parseAll(splitRandom(rng, bytes, rng.int(1, 64)));
      if (whole.error !== null || split.error !== null) {
        t.fail(`proto ${proto} seed ${seed}: ${whole.error?.message ?? split.error?.message}`);
        continue;
      }
      t.same(whole.values, expected, `proto ${proto} seed ${seed}: whole`);
      t.same(split.values, expected, `proto ${proto} seed ${seed}: split`);
    }
  }
});

t.test('each writer method reads back as its documented type', async (t) => {
  const w = new ReplyWriter(3);
  w.ok();
  w.error('WRONGTYPE Operation against a key');
  w.integer(-7);
  w.bulk('v');
  w.nil();
  w.double(NaN);
  w.double(-Infinity);
  w.boolean(false);
  w.verbatim('text');
  w.bigNumber('1');
  w.mapHeader(1);
  w.bulk('k');
  w.setHeader(0);
  w.pushHeader(1);
  w.simple('x');
  const { values, error } = parseAll([w.take()]);
  t.equal(error, null);
  t.same(values.map((v) => v.type), ['simple', 'error', 'integer', 'bulk', 'null', 'double', 'double', 'boolean', 'verbatim', 'bignum', 'map', 'push']);
  t.ok(values[5]?.type === 'double' && Number.isNaN(values[5].value), 'nan');
  t.same(values[6], { type: 'double', value: -Infinity });
  t.same(values[10], { type: 'map', value: [[bulk('k'), { type: 'set', value: [] }]] });
});

t.test('a composite reply parses identically at every split point', async (t) => {
  const input = b(
    '*4\r\n$3\r\nabc\r\n%1\r\n+k\r\n~2\r\n:1\r\n,2.5\r\n|1\r\n+ttl\r\n:10\r\n=8\r\ntxt:a\r\nb\r\n(12345678901234567890123\r\n>1\r\n_\r\n',
  );
  const whole = parseAll([input]);
  t.equal(whole.error, null);
  t.equal(whole.values.length, 2);
  let mismatches = 0;
  for (let i = 1; i < input.length; i++) {
    const r = parseAll([input.subarray(0, i), input.subarray(i)]);
    if (r.error !== null) mismatches++;
    else t.same(r.values, whole.values, `split at ${i}`);
  }
  t.equal(mismatches, 0);
});

t.test('attributes are parsed and dropped, at top level and inside aggregates', async (t) => {
  const top = parseAll([b('|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n')]);
  t.equal(top.error, null);
  t.same(top.values, [{ type: 'array', value: [{ type: 'integer', value: 2039123 }, { type: 'integer', value: 9543892 }] }]);
  const nested = parseAll([b('*2\r\n:1\r\n|1\r\n+ttl\r\n:3600\r\n:2\r\n|0\r\n+OK\r\n')]);
  t.equal(nested.error, null);
  t.same(nested.values, [
    { type: 'array', value: [{ type: 'integer', value: 1 }, { type: 'integer', value: 2 }] },
    { type: 'simple', value: 'OK' },
  ]);
});

t.test('push messages, blob errors and RESP2 nulls keep their identity', async (t) => {
  const { values, error } = parseAll([b('>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n!21\r\nSYNTAX invalid syntax\r\n$-1\r\n*-1\r\n*0\r\n_\r\n')]);
  t.equal(error, null);
  t.same(values, [
    { type: 'push', value: [bulk('message'), bulk('ch'), bulk('hello')] },
    { type: 'error', value: 'SYNTAX invalid syntax' },
    { type: 'bulk', value: null },
    { type: 'array', value: null },
    { type: 'array', value: [] },
    { type: 'null' },
  ]);
});

t.test('returned bulks are private copies', async (t) => {
  const chunk = b('$3\r\nabc\r\n');
  const { values } = parseAll([chunk]);
  chunk.fill(0x7a);
  t.same(values, [bulk('abc')]);
});

t.test('a large bulk fed in small chunks is assembled in linear time', async (t) => {
  const size = 8 * 1024 * 1024;
  const parser = new RespReplyParser();
  const got: RespValue[] = [];
  const start = process.hrtime.bigint();
  t.equal(parser.feed(b(`$${size}\r\n`), (v) => got.push(v)), null);
  const piece = Buffer.alloc(1024, 0x61);
  for (let sent = 0; sent < size; sent += piece.length) parser.feed(piece, (v) => got.push(v));
  t.notOk(parser.idle);
  t.equal(parser.feed(b('\r\n'), (v) => got.push(v)), null);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  t.equal(got.length, 1);
  t.ok(got[0]?.type === 'bulk' && got[0].value?.length === size);
  t.ok(parser.idle);
  t.ok(ms < 5000, `took ${ms.toFixed(0)} ms`);
});

t.test('malformed replies give a protocol error instead of throwing', async (t) => {
  const cases: [string, string, RespReplyParserOptions?][] = [
    ['+OK\n', 'expected CRLF at end of line'],
    ['$3\r\nabcX\r\n', 'expected CRLF after bulk data'],
    ['$3\r\nab', ''],
    ['$?\r\n', 'invalid bulk length'],
    ['*?\r\n', 'invalid multibulk length'],
    ['$-2\r\n', 'invalid bulk length'],
    ['%-1\r\n', 'invalid multibulk length'],
    [':12a\r\n', 'invalid integer'],
    [',abc\r\n', 'invalid double'],
    ['#x\r\n', 'invalid boolean'],
    ['_x\r\n', 'invalid null'],
    ['(1.5\r\n', 'invalid big number'],
    ['=2\r\nab\r\n', 'invalid verbatim string'],
    ['@foo\r\n', "unexpected reply type '@'"],
    ['\x00\r\n', "unexpected reply type '\\x00'"],
    ['$11\r\nhello world\r\n', 'invalid bulk length', { bulkBytesMax: 10 }],
    ['+hello world\r\n', 'reply line too long', { lineBytesMax: 10 }],
    ['+hello world', 'reply line too long', { lineBytesMax: 10 }],
    ['*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n', 'aggregates nested too deep', { depthMax: 3 }],
    ['*5\r\n', 'invalid multibulk length', { aggregateLengthMax: 4 }],
  ];
  for (const [input, message, options] of cases) {
    const r = parseAll([b(input)], options);
    if (message === '') {
      t.equal(r.error, null, `${JSON.stringify(input)} is incomplete, not an error`);
      continue;
    }
    t.ok(r.error instanceof RespProtocolError, JSON.stringify(input));
    t.equal(r.error?.message, `Protocol error: ${message}`, JSON.stringify(input));
  }
});

t.test('random garbage never throws (fuzz)', async (t) => {
  let threw = 0;
  for (let seed = 1; seed <= 300; seed++) {
    const rng = createRng(seed);
    const alphabet = b('+-:$*_,#!=(%~>|\r\n0123456789?');
    const input = Buffer.allocUnsafe(rng.int(1, 500));
    for (let i = 0; i < input.length; i++) input[i] = rng.chance(0.8) ? (alphabet[rng.int(0, alphabet.length)] as number) : rng.int(0, 256);
    try {
      parseAll(splitRandom(rng, input, 50), { bulkBytesMax: 4096, aggregateLengthMax: 1000 });
    } catch {
      threw++;
    }
  }
  t.equal(threw, 0);
});

t.test('toJs turns replies into plain JavaScript values', async (t) => {
  const { values } = parseAll([b('*6\r\n+OK\r\n$2\r\nhi\r\n$-1\r\n:5\r\n%1\r\n+k\r\n#t\r\n=7\r\ntxt:abc\r\n-ERR boom\r\n')]);
  t.same(toJs(values[0] as RespValue), ['OK', 'hi', null, 5, new Map([['k', true]]), 'abc']);
  const err = toJs(values[1] as RespValue);
  t.ok(err instanceof RespReplyError);
  t.equal((err as RespReplyError).code, 'ERR');
  t.equal((err as RespReplyError).message, 'ERR boom');
});
