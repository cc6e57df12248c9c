import t from 'tap';
import { ReplyWriter, encodeCommand, formatDouble } from '../../../protocol/resp/writer.js';

type Call = (w: ReplyWriter) => void;

/** Bytes a fresh writer of protocol `proto` produces for `call`. */
function encode(proto: 2 | 3, call: Call): string {
  const w = new ReplyWriter(proto);
  call(w);
  return w.take().toString('latin1');
}

const utf8 = (s: string): string => Buffer.from(s, 'utf8').toString('latin1');

/** [name, call, RESP2 bytes, RESP3 bytes] */
const table: [string, Call, string, string][] = [
  ['ok', (w) => w.ok(), '+OK\r\n', '+OK\r\n'],
  ['simple', (w) => w.simple('PONG'), '+PONG\r\n', '+PONG\r\n'],
  ['simple with CR/LF sanitised', (w) => w.simple('a\r\nb'), '+a  b\r\n', '+a  b\r\n'],
  ['error', (w) => w.error('ERR unknown command'), '-ERR unknown command\r\n', '-ERR unknown command\r\n'],
  ['error with CR/LF replaced', (w) => w.error('ERR a\nb\rc'), '-ERR a b c\r\n', '-ERR a b c\r\n'],
  ['non-ASCII error with LF replaced', (w) => w.error('ERR clé\nx'), utf8('-ERR clé x\r\n'), utf8('-ERR clé x\r\n')],
  ['long error with LF replaced', (w) => w.error(`ERR ${'é'.repeat(300)}\n`), utf8(`-ERR ${'é'.repeat(300)} \r\n`), utf8(`-ERR ${'é'.repeat(300)} \r\n`)],
  ['integer 0', (w) => w.integer(0), ':0\r\n', ':0\r\n'],
  ['integer 1', (w) => w.integer(1), ':1\r\n', ':1\r\n'],
  ['integer 9999', (w) => w.integer(9999), ':9999\r\n', ':9999\r\n'],
  ['integer 10000', (w) => w.integer(10000), ':10000\r\n', ':10000\r\n'],
  ['integer 1234567', (w) => w.integer(1234567), ':1234567\r\n', ':1234567\r\n'],
  ['integer -1', (w) => w.integer(-1), ':-1\r\n', ':-1\r\n'],
  ['integer -10000', (w) => w.integer(-10000), ':-10000\r\n', ':-10000\r\n'],
  ['integer max safe', (w) => w.integer(Number.MAX_SAFE_INTEGER), ':9007199254740991\r\n', ':9007199254740991\r\n'],
  ['integer min safe', (w) => w.integer(Number.MIN_SAFE_INTEGER), ':-9007199254740991\r\n', ':-9007199254740991\r\n'],
  ['integer 1e21 as a float', (w) => w.integer(1e21), ':1000000000000000000000\r\n', ':1000000000000000000000\r\n'],
  ['integer bigint', (w) => w.integer(-(2n ** 64n)), ':-18446744073709551616\r\n', ':-18446744073709551616\r\n'],
  ['bulk empty', (w) => w.bulk(''), '$0\r\n\r\n', '$0\r\n\r\n'],
  ['bulk ascii', (w) => w.bulk('abc'), '$3\r\nabc\r\n', '$3\r\nabc\r\n'],
  ['bulk utf8', (w) => w.bulk('héllo'), utf8('$6\r\nhéllo\r\n'), utf8('$6\r\nhéllo\r\n')],
  ['bulk long ascii', (w) => w.bulk('x'.repeat(300)), `$300\r\n${'x'.repeat(300)}\r\n`, `$300\r\n${'x'.repeat(300)}\r\n`],
  ['bulk long utf8', (w) => w.bulk('€'.repeat(300)), utf8(`$900\r\n${'€'.repeat(300)}\r\n`), utf8(`$900\r\n${'€'.repeat(300)}\r\n`)],
  ['bulk binary', (w) => w.bulk(Buffer.from([0, 13, 10, 255])), '$4\r\n\x00\r\n\xff\r\n', '$4\r\n\x00\r\n\xff\r\n'],
  ['bulk binary 40 bytes', (w) => w.bulk(Buffer.alloc(40, 0x7a)), `$40\r\n${'z'.repeat(40)}\r\n`, `$40\r\n${'z'.repeat(40)}\r\n`],
  ['bulkRange short', (w) => w.bulkRange(Buffer.from('xxabcyy'), 2, 5), '$3\r\nabc\r\n', '$3\r\nabc\r\n'],
  ['bulkRange empty', (w) => w.bulkRange(Buffer.from('xy'), 1, 1), '$0\r\n\r\n', '$0\r\n\r\n'],
  ['bulkRange 40 bytes inside', (w) => w.bulkRange(Buffer.from(`ab${'z'.repeat(40)}cd`), 2, 42), `$40\r\n${'z'.repeat(40)}\r\n`, `$40\r\n${'z'.repeat(40)}\r\n`],
  ['bulkRange whole', (w) => w.bulkRange(Buffer.alloc(40, 0x79), 0, 40), `$40\r\n${'y'.repeat(40)}\r\n`, `$40\r\n${'y'.repeat(40)}\r\n`],
  ['nil', (w) => w.nil(), '$-1\r\n', '_\r\n'],
  ['nilArray', (w) => w.nilArray(), '*-1\r\n', '_\r\n'],
  ['arrayHeader 0', (w) => w.arrayHeader(0), '*0\r\n', '*0\r\n'],
  ['arrayHeader 3', (w) => w.arrayHeader(3), '*3\r\n', '*3\r\n'],
  ['arrayHeader 123456', (w) => w.arrayHeader(123456), '*123456\r\n', '*123456\r\n'],
  ['mapHeader', (w) => w.mapHeader(2), '*4\r\n', '%2\r\n'],
  ['setHeader', (w) => w.setHeader(2), '*2\r\n', '~2\r\n'],
  ['pushHeader', (w) => w.pushHeader(3), '*3\r\n', '>3\r\n'],
  ['double 1.5', (w) => w.double(1.5), '$3\r\n1.5\r\n', ',1.5\r\n'],
  ['double 3', (w) => w.double(3), '$1\r\n3\r\n', ',3\r\n'],
  ['double 0.1', (w) => w.double(0.1), '$3\r\n0.1\r\n', ',0.1\r\n'],
  ['double -0', (w) => w.double(-0), '$2\r\n-0\r\n', ',-0\r\n'],
  ['double 1e21', (w) => w.double(1e21), '$5\r\n1e+21\r\n', ',1e+21\r\n'],
  ['double inf', (w) => w.double(Infinity), '$3\r\ninf\r\n', ',inf\r\n'],
  ['double -inf', (w) => w.double(-Infinity), '$4\r\n-inf\r\n', ',-inf\r\n'],
  ['double nan', (w) => w.double(NaN), '$3\r\nnan\r\n', ',nan\r\n'],
  ['boolean true', (w) => w.boolean(true), ':1\r\n', '#t\r\n'],
  ['boolean false', (w) => w.boolean(false), ':0\r\n', '#f\r\n'],
  ['verbatim', (w) => w.verbatim('hi'), '$2\r\nhi\r\n', '=6\r\ntxt:hi\r\n'],
  ['verbatim mkd utf8', (w) => w.verbatim('é', 'mkd'), utf8('$2\r\né\r\n'), utf8('=6\r\nmkd:é\r\n')],
  ['bigNumber', (w) => w.bigNumber('-123456789012345678901234567890'), '$31\r\n-123456789012345678901234567890\r\n', '(-123456789012345678901234567890\r\n'],
  ['raw', (w) => w.raw(Buffer.from('+PREENCODED\r\n')), '+PREENCODED\r\n', '+PREENCODED\r\n'],
];

t.test('every reply type is encoded byte-exact in RESP2 and RESP3', async (t) => {
  for (const [name, call, resp2, resp3] of table) {
    t.equal(JSON.stringify(encode(2, call)), JSON.stringify(resp2), `RESP2 ${name}`);
    t.equal(JSON.stringify(encode(3, call)), JSON.stringify(resp3), `RESP3 ${name}`);
  }
});

t.test('every integer from -20000 to 20000 is encoded like String(n)', async (t) => {
  const w = new ReplyWriter();
  let expected = '';
  for (let n = -20000; n <= 20000; n++) {
    w.integer(n);
    expected += `:${n}\r\n`;
  }
  t.equal(w.take().toString('latin1'), expected);
});

t.test('large integers of every digit count are encoded like String(n)', async (t) => {
  const w = new ReplyWriter();
  let expected = '';
  for (let n = 1; n <= Number.MAX_SAFE_INTEGER; n = n * 10 + 7) {
    w.integer(n);
    w.integer(n - 1);
    expected += `:${n}\r\n:${n - 1}\r\n`;
  }
  t.equal(w.take().toString('latin1'), expected);
});

t.test('invalid arguments throw before anything is written', async (t) => {
  const w = new ReplyWriter(3);
  t.throws(() => w.integer(1.5), RangeError);
  t.throws(() => w.integer(NaN), RangeError);
  t.throws(() => w.arrayHeader(-1), RangeError);
  t.throws(() => w.mapHeader(1.5), RangeError);
  t.throws(() => w.verbatim('x', 'markdown'), RangeError);
  t.throws(() => w.bigNumber('12a'), RangeError);
  t.throws(() => w.bigNumber('-'), RangeError);
  t.ok(w.isEmpty());
  t.equal(w.length, 0);
});

t.test('switching proto changes the encoding of the following replies', async (t) => {
  const w = new ReplyWriter();
  t.equal(w.proto, 2);
  w.nil();
  w.proto = 3;
  w.nil();
  w.mapHeader(1);
  t.equal(w.take().toString('latin1'), '$-1\r\n_\r\n%1\r\n');
});

t.test('take returns every pending byte once and leaves the writer empty', async (t) => {
  const w = new ReplyWriter();
  t.ok(w.isEmpty());
  t.equal(w.take().length, 0);
  w.ok();
  w.integer(42);
  t.equal(w.length, 10);
  t.notOk(w.isEmpty());
  t.equal(w.take().toString(), '+OK\r\n:42\r\n');
  t.ok(w.isEmpty());
  t.equal(w.length, 0);
  t.equal(w.take().length, 0);
});

t.test('a taken buffer is never overwritten by later replies', async (t) => {
  const w = new ReplyWriter();
  const taken: [Buffer, string][] = [];
  for (let i = 0; i < 3000; i++) {
    w.bulk(`value-${i}-${'x'.repeat(i % 97)}`);
    w.integer(i);
    if (i % 7 === 0) {
      const out = w.take();
      taken.push([out, out.toString('latin1')]);
    }
  }
  const rest = w.take();
  taken.push([rest, rest.toString('latin1')]);
  w.bulk(Buffer.alloc(200 * 1024, 1));
  taken.push([w.take(), '']);
  let changed = 0;
  for (const [buf, text] of taken.slice(0, -1)) if (buf.toString('latin1') !== text) changed++;
  t.equal(changed, 0);
  t.equal(taken[taken.length - 1]?.[0].length, 200 * 1024 + 11);
});

t.test('a reply larger than the slab is written whole', async (t) => {
  const w = new ReplyWriter();
  const big = Buffer.alloc(1024 * 1024, 0x61);
  w.ok();
  w.bulk(big);
  w.ok();
  const out = w.take();
  t.equal(out.length, 5 + 10 + big.length + 2 + 5);
  t.equal(out.subarray(0, 15).toString(), '+OK\r\n$1048576\r\n');
  t.equal(out.subarray(-7).toString(), '\r\n+OK\r\n');
});

t.test('doubles use the shortest round-trip text', async (t) => {
  for (const d of [0.1, 1 / 3, 1e-7, 123456789.125, -2.5e-300, 5e-324, Number.MAX_VALUE]) {
    t.equal(Number(formatDouble(d)), d, String(d));
  }
});

t.test('encodeCommand writes a RESP2 multibulk request', async (t) => {
  t.equal(encodeCommand(['SET', 'k', Buffer.from([0, 255])]).toString('latin1'), '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00\xff\r\n');
  t.equal(encodeCommand([]).toString(), '*0\r\n');
  t.equal(encodeCommand(['é', '']).toString('latin1'), utf8('*2\r\n$2\r\né\r\n$0\r\n\r\n'));
  const long = 'y'.repeat(12345);
  t.equal(encodeCommand([long]).toString(), `*1\r\n$12345\r\n${long}\r\n`);
});
