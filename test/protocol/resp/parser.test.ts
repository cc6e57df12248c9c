import t from 'tap';
import { RespParser } from '../../../protocol/resp/parser.js';
import { encodeCommand } from '../../../protocol/resp/writer.js';
import { createRng } from '../../../src/util/rng.js';
import {
  LIMITS,
  hexCommands,
  parseChunks,
  randomArg,
  randomWord,
  sameCommands,
  splitRandom,
} from './helpers.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const strs = (commands: Buffer[][]): string[][] => commands.map((args) => args.map((a) => a.toString('latin1')));

t.test('a multibulk command is parsed into its arguments', async (t) => {
  const { commands, error } = parseChunks([b('*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n')]);
  t.equal(error, null);
  t.same(strs(commands), [['SET', 'key', 'value']]);
});

t.test('binary arguments with CR, LF and NUL bytes and empty arguments survive unchanged', async (t) => {
  const arg = Buffer.from([0, 13, 10, 255, 42, 36, 13, 10, 0]);
  const { commands, error } = parseChunks([encodeCommand(['SET', arg, '', Buffer.alloc(0)])]);
  t.equal(error, null);
  t.equal(commands.length, 1);
  t.ok(commands[0]?.[1]?.equals(arg));
  t.equal(commands[0]?.[2]?.length, 0);
  t.equal(commands[0]?.[3]?.length, 0);
});

t.test('thousands of pipelined commands in one chunk are all delivered in order', async (t) => {
  const parts: Buffer[] = [];
  for (let i = 0; i < 5000; i++) parts.push(encodeCommand(['INCR', `k${i}`]));
  const { commands, error } = parseChunks([Buffer.concat(parts)]);
  t.equal(error, null);
  t.equal(commands.length, 5000);
  t.same(strs(commands.slice(0, 2)), [
    ['INCR', 'k0'],
    ['INCR', 'k1'],
  ]);
  t.same(strs(commands.slice(-1)), [['INCR', 'k4999']]);
});

t.test('*0 and negative multibulk counts are ignored like Redis does', async (t) => {
  const { commands, error } = parseChunks([b('*0\r\n*-1\r\n*-10\r\n*1\r\n$4\r\nPING\r\n')]);
  t.equal(error, null);
  t.same(strs(commands), [['PING']]);
});

t.test('inline commands split on blanks and end at CRLF or a bare LF', async (t) => {
  const { commands, error } = parseChunks([b('PING\r\nset  k\tv\nGET k \r\n')]);
  t.equal(error, null);
  t.same(strs(commands), [['PING'], ['set', 'k', 'v'], ['GET', 'k']]);
});

t.test('empty and blank inline lines are ignored', async (t) => {
  const { commands, error } = parseChunks([b('\r\n\n   \r\n\t\nPING\r\n')]);
  t.equal(error, null);
  t.same(strs(commands), [['PING']]);
});

t.test('inline commands follow Redis quoting rules', async (t) => {
  const cases: [string, string[]][] = [
    ['SET "a b" c', ['SET', 'a b', 'c']],
    ['SET "\\n\\r\\t\\b\\a\\\\\\"" x', ['SET', '\n\r\t\b\x07\\"', 'x']],
    ['SET "\\x41\\x7a\\xff\\x00" x', ['SET', 'Az\xff\x00', 'x']],
    ['SET "\\xZZ" x', ['SET', 'xZZ', 'x']],
    ['SET "\\q" x', ['SET', 'q', 'x']],
    ["SET 'it\\'s' x", ['SET', "it's", 'x']],
    ["SET 'a\\nb' x", ['SET', 'a\\nb', 'x']],
    ['SET "" \'\'', ['SET', '', '']],
    ['SET a"b c" d', ['SET', 'ab c', 'd']],
    ['  SET   k   v  ', ['SET', 'k', 'v']],
    ['\x0bSET k', ['SET', 'k']],
    ['SET a\x0bb', ['SET', 'a\x0bb']],
    ['SET "a"\t"b"', ['SET', 'a', 'b']],
    ['SET a\x00b', ['SET', 'a\x00b']],
  ];
  for (const [line, want] of cases) {
    const { commands, error } = parseChunks([b(`${line}\r\n`)]);
    t.equal(error, null, line);
    t.same(strs(commands), [want], JSON.stringify(line));
  }
});

t.test('inline and multibulk commands can be mixed on one connection', async (t) => {
  const input = Buffer.concat([b('PING\r\n'), encodeCommand(['GET', 'x']), b('ECHO "hi there"\n'), encodeCommand(['DEL', 'x'])]);
  const { commands, error } = parseChunks([input]);
  t.equal(error, null);
  t.same(strs(commands), [['PING'], ['GET', 'x'], ['ECHO', 'hi there'], ['DEL', 'x']]);
});

t.test('a short pipeline parses identically at every split point, every pair of split points and byte by byte', async (t) => {
  const input = Buffer.concat([
    encodeCommand(['SET', 'k', Buffer.from([13, 10, 0, 36])]),
    b('*0\r\n'),
    b('PING "a\\x41" \'b c\'\r\n'),
    encodeCommand(['MSET', '', 'x', 'yy', 'zzz']),
    b('\n'),
    b('GET k\n'),
    encodeCommand(['DEL', 'k']),
  ]);
  const whole = parseChunks([input]);
  t.equal(whole.error, null);
  t.equal(whole.commands.length, 5);
  let mismatches = 0;
  for (let i = 1; i < input.length; i++) {
    const r = parseChunks([input.subarray(0, i), input.subarray(i)]);
    if (r.error !== null || !sameCommands(r.commands, whole.commands)) mismatches++;
    for (let j = i + 1; j < input.length; j++) {
      const r2 = parseChunks([input.subarray(0, i), input.subarray(i, j), input.subarray(j)]);
      if (r2.error !== null || !sameCommands(r2.commands, whole.commands)) mismatches++;
    }
  }
  const bytes: Buffer[] = [];
  for (let i = 0; i < input.length; i++) bytes.push(input.subarray(i, i + 1));
  const perByte = parseChunks(bytes);
  t.equal(perByte.error, null);
  t.ok(sameCommands(perByte.commands, whole.commands), 'byte by byte');
  t.equal(mismatches, 0, 'every single and double split parses like the whole');
});

t.test('a long random pipeline parses identically under random chunking (property, many seeds)', async (t) => {
  for (let seed = 1; seed <= 16; seed++) {
    const rng = createRng(seed);
    const expected: Buffer[][] = [];
    const parts: Buffer[] = [];
    for (let i = 0; i < 2000; i++) {
      if (rng.chance(0.05)) {
        const words: string[] = [];
        const n = rng.int(1, 6);
        for (let j = 0; j < n; j++) words.push(randomWord(rng));
        parts.push(Buffer.from(words.join(' ') + (rng.chance(0.5) ? '\r\n' : '\n')));
        expected.push(words.map((w) => Buffer.from(w)));
        continue;
      }
      const argc = rng.chance(0.02) ? rng.int(9, 60) : rng.int(1, 9);
      const args: Buffer[] = [];
      for (let j = 0; j < argc; j++) args.push(randomArg(rng));
      parts.push(encodeCommand(args));
      expected.push(args);
    }
    const input = Buffer.concat(parts);
    const whole = parseChunks([input]);
    if (whole.error !== null || !sameCommands(whole.commands, expected)) {
      t.fail(`seed ${seed}: whole input did not parse to the generated commands (${whole.error?.message})`);
      continue;
    }
    const maxChunk = [7, 100, 1500, 16 * 1024, 70 * 1024, 300, 4096, 40][seed % 8] as number;
    const split = parseChunks(splitRandom(rng, input, maxChunk));
    if (split.error !== null || !sameCommands(split.commands, expected)) {
      t.fail(`seed ${seed}: chunks of at most ${maxChunk} bytes parsed differently (${split.error?.message})`);
      continue;
    }
    t.pass(`seed ${seed}: ${expected.length} commands, ${input.length} bytes, chunks <= ${maxChunk}`);
  }
});

t.test('a bulk that spans chunks is one private copy of exactly its declared size', async (t) => {
  const value = Buffer.alloc(100 * 1024);
  for (let i = 0; i < value.length; i++) value[i] = (i * 7) & 0xff;
  const input = encodeCommand(['SET', 'k', value]);
  const chunks = splitRandom(createRng(7), input, 1024);
  const { commands, error } = parseChunks(chunks);
  t.equal(error, null);
  const got = commands[0]?.[2];
  t.ok(got !== undefined && got.equals(value));
  t.equal(got?.buffer.byteLength, value.length, 'backing store is exactly the declared size');
  for (const c of chunks) c.fill(0xee);
  t.ok(got?.equals(value), 'overwriting the fed chunks does not change it');
});

t.test('a huge bulk fed in small chunks parses in linear time', async (t) => {
  const size = 16 * 1024 * 1024;
  const header = b(`*2\r\n$3\r\nSET\r\n$${size}\r\n`);
  const parser = new RespParser(LIMITS);
  let got: Buffer[] | undefined;
  const start = process.hrtime.bigint();
  t.equal(parser.feed(header, (a) => (got = a)), null);
  const piece = Buffer.alloc(2048, 0x61);
  for (let sent = 0; sent < size; sent += piece.length) {
    const err = parser.feed(piece, (a) => (got = a));
    if (err !== null) t.fail(err.message);
  }
  t.equal(parser.bufferedBytes, header.length + size, 'the partial command counts as buffered');
  t.equal(parser.feed(b('\r\n'), (a) => (got = a)), null);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  t.equal(got?.[1]?.length, size);
  t.equal(parser.bufferedBytes, 0);
  t.ok(ms < 5000, `took ${ms.toFixed(0)} ms (re-concatenating per chunk would copy ~64 GB)`);
});

t.test('the inline line buffer is never handed out: earlier inline args stay intact', async (t) => {
  const parser = new RespParser(LIMITS);
  const seen: Buffer[][] = [];
  for (const piece of ['SET aaaa', 'aaaa bbbb', 'bbbb\r\n', 'SET cccc', 'cccc dddd', 'dddd\r\n']) {
    t.equal(parser.feed(b(piece), (a) => seen.push(a)), null);
  }
  t.same(strs(seen), [
    ['SET', 'aaaaaaaa', 'bbbbbbbb'],
    ['SET', 'cccccccc', 'dddddddd'],
  ]);
});

t.test('bufferedBytes counts the incomplete command and drops to zero when it completes', async (t) => {
  const parser = new RespParser(LIMITS);
  const input = encodeCommand(['SET', 'key', 'value']);
  t.equal(parser.bufferedBytes, 0);
  t.equal(parser.feed(input.subarray(0, 20), () => {}), null);
  t.equal(parser.bufferedBytes, 20);
  let n = 0;
  t.equal(parser.feed(input.subarray(20), () => n++), null);
  t.equal(n, 1);
  t.equal(parser.bufferedBytes, 0);
  t.equal(parser.feed(b('PIN'), () => n++), null);
  t.equal(parser.bufferedBytes, 3);
});

t.test('reset forgets a partial command and an earlier error', async (t) => {
  const parser = new RespParser(LIMITS);
  t.equal(parser.feed(b('*2\r\n$3\r\nGET\r\n'), () => {}), null);
  parser.reset();
  const got: Buffer[][] = [];
  t.equal(parser.feed(b('*1\r\n$4\r\nPING\r\n'), (a) => got.push(a)), null);
  t.same(strs(got), [['PING']]);
  t.not(parser.feed(b('*x\r\n'), () => {}), null);
  parser.reset();
  t.equal(parser.feed(b('PING\r\n'), (a) => got.push(a)), null);
  t.same(hexCommands(got).length, 2);
});
