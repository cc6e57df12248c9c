import t from 'tap';
import { parseInteger, STRING_COMMANDS } from '../../src/cache/string-commands.js';
import { entryBytes } from '../../src/cache/store.js';
import { harness, resp } from './helpers/recording-sink.js';

const { ok, nil, int, bulk, err, simple, arr } = resp;
const NOT_INT = err('ERR value is not an integer or out of range');
const SYNTAX = err('ERR syntax error');
const NOT_FLOAT = err('ERR value is not a valid float');

t.test('the command table matches Redis 7.0 arity, flags, key positions and groups', async (t) => {
  const byName = new Map(STRING_COMMANDS.map((c) => [c.name, c]));
  const expect: [string, number, string, number, number, number, string][] = [
    ['get', 2, 'readonly,fast', 1, 1, 1, 'string'],
    ['set', -3, 'write', 1, 1, 1, 'string'],
    ['setnx', 3, 'write,fast', 1, 1, 1, 'string'],
    ['setex', 4, 'write', 1, 1, 1, 'string'],
    ['psetex', 4, 'write', 1, 1, 1, 'string'],
    ['getdel', 2, 'write,fast', 1, 1, 1, 'string'],
    ['getex', -2, 'write,fast', 1, 1, 1, 'string'],
    ['del', -2, 'write', 1, -1, 1, 'generic'],
    ['unlink', -2, 'write,fast', 1, -1, 1, 'generic'],
    ['exists', -2, 'readonly,fast', 1, -1, 1, 'generic'],
    ['mget', -2, 'readonly,fast', 1, -1, 1, 'string'],
    ['mset', -3, 'write', 1, -1, 2, 'string'],
    ['msetnx', -3, 'write', 1, -1, 2, 'string'],
    ['incr', 2, 'write,fast', 1, 1, 1, 'string'],
    ['incrby', 3, 'write,fast', 1, 1, 1, 'string'],
    ['decr', 2, 'write,fast', 1, 1, 1, 'string'],
    ['decrby', 3, 'write,fast', 1, 1, 1, 'string'],
    ['incrbyfloat', 3, 'write,fast', 1, 1, 1, 'string'],
    ['append', 3, 'write,fast', 1, 1, 1, 'string'],
    ['strlen', 2, 'readonly,fast', 1, 1, 1, 'string'],
    ['getrange', 4, 'readonly', 1, 1, 1, 'string'],
    ['setrange', 4, 'write', 1, 1, 1, 'string'],
    ['expire', -3, 'write,fast', 1, 1, 1, 'generic'],
    ['pexpire', -3, 'write,fast', 1, 1, 1, 'generic'],
    ['expireat', -3, 'write,fast', 1, 1, 1, 'generic'],
    ['pexpireat', -3, 'write,fast', 1, 1, 1, 'generic'],
    ['ttl', 2, 'readonly,fast', 1, 1, 1, 'generic'],
    ['pttl', 2, 'readonly,fast', 1, 1, 1, 'generic'],
    ['expiretime', 2, 'readonly,fast', 1, 1, 1, 'generic'],
    ['pexpiretime', 2, 'readonly,fast', 1, 1, 1, 'generic'],
    ['persist', 2, 'write,fast', 1, 1, 1, 'generic'],
    ['type', 2, 'readonly,fast', 1, 1, 1, 'generic'],
    ['scan', -2, 'readonly', 0, 0, 0, 'generic'],
    ['keys', 2, 'readonly', 0, 0, 0, 'generic'],
    ['randomkey', 1, 'readonly', 0, 0, 0, 'generic'],
    ['dbsize', 1, 'readonly,fast', 0, 0, 0, 'server'],
    ['flushall', -1, 'write', 0, 0, 0, 'server'],
    ['flushdb', -1, 'write', 0, 0, 0, 'server'],
  ];
  t.equal(STRING_COMMANDS.length, expect.length);
  for (const [name, arity, flags, first, last, step, group] of expect) {
    const c = byName.get(name);
    t.ok(c, name);
    if (!c) continue;
    t.same([c.arity, c.flags.join(','), c.firstKey, c.lastKey, c.keyStep, c.group], [arity, flags, first, last, step, group], name);
    t.ok(c.summary.length > 0);
  }
});

t.test('parseInteger follows string2ll: no spaces, no plus, no leading zeros, exact int64', async (t) => {
  const p = (s: string) => parseInteger(Buffer.from(s, 'latin1'));
  t.equal(p('0'), 0);
  t.equal(p('-1'), -1);
  t.equal(p('123456789012345'), 123456789012345);
  t.equal(p('9007199254740991'), 9007199254740991);
  t.equal(p('9007199254740992'), 9007199254740992n);
  t.equal(p('9223372036854775807'), 9223372036854775807n);
  t.equal(p('-9223372036854775808'), -9223372036854775808n);
  for (const bad of ['', '-', '-0', '00', '01', '+1', ' 1', '1 ', '1a', '1.0', '9223372036854775808', '-9223372036854775809', '123456789012345678901']) {
    t.equal(p(bad), null, JSON.stringify(bad));
  }
});

t.test('GET and SET basics, with SET options in any order', async (t) => {
  const h = harness();
  t.equal(h.run('GET', 'k'), nil);
  t.equal(h.run('SET', 'k', 'v'), ok);
  t.equal(h.run('GET', 'k'), bulk('v'));
  t.equal(h.run('SET', 'k', 'v2', 'GET'), bulk('v'));
  t.equal(h.run('SET', 'new', 'x', 'GET'), nil, 'GET of a missing key replies nil and still sets');
  t.equal(h.run('GET', 'new'), bulk('x'));
  t.equal(h.run('SET', 'k', 'v3', 'nx'), nil);
  t.equal(h.run('SET', 'k', 'v3', 'NX', 'GET'), bulk('v2'), 'NX and GET together (7.0) return the old value');
  t.equal(h.run('GET', 'k'), bulk('v2'));
  t.equal(h.run('SET', 'missing', 'v', 'XX'), nil);
  t.equal(h.run('SET', 'fresh', 'f1', 'NX'), ok, 'NX sets an absent key');
  t.equal(h.run('SET', 'fresh', 'f2', 'XX'), ok, 'XX sets a present key');
  t.equal(h.run('GET', 'fresh'), bulk('f2'));
  t.equal(h.run('SET', 'missing', 'v', 'XX', 'GET'), nil);
  t.equal(h.run('EXISTS', 'missing'), int(0));
  t.equal(h.run('SET', 'k', 'v4', 'GET', 'XX', 'PX', '1500'), bulk('v2'));
  t.equal(h.run('PTTL', 'k'), int(1500));
  t.equal(h.run('SET', 'k', 'v5', 'KEEPTTL'), ok);
  t.equal(h.run('PTTL', 'k'), int(1500));
  t.equal(h.run('SET', 'k', 'v6'), ok);
  t.equal(h.run('TTL', 'k'), int(-1), 'a plain SET clears the TTL');
  t.equal(h.run('SET', 'k', 'v', 'EX', '10', 'EX', '20'), ok, 'a repeated EX is allowed, the last wins');
  t.equal(h.run('TTL', 'k'), int(20));
  t.equal(h.run('SET', 'k', 'v', 'EXAT', String(h.now / 1000 + 100)), ok);
  t.equal(h.run('TTL', 'k'), int(100));
  t.equal(h.run('SET', 'k', 'v', 'PXAT', String(h.now + 2500)), ok);
  t.equal(h.run('PTTL', 'k'), int(2500));
  t.equal(h.run('SET', 'k', 'v', 'PXAT', String(h.now - 1)), ok, 'a PXAT in the past is accepted...');
  t.equal(h.run('GET', 'k'), nil, '...and the key is gone');
  t.equal(h.run('SET'), err("ERR wrong number of arguments for 'set' command"));
});

t.test('SET rejects conflicting options and bad expire times with Redis errors', async (t) => {
  const h = harness();
  for (const opts of [
    ['NX', 'XX'],
    ['XX', 'NX'],
    ['EX', '10', 'PX', '10'],
    ['PX', '10', 'EXAT', '10'],
    ['EXAT', '10', 'PXAT', '10'],
    ['KEEPTTL', 'EX', '10'],
    ['EX', '10', 'KEEPTTL'],
    ['EX'],
    ['PERSIST'],
    ['FOO'],
    ['nxx'],
  ]) {
    t.equal(h.run('SET', 'k', 'v', ...opts), SYNTAX, opts.join(' '));
  }
  t.equal(h.run('SET', 'k', 'v', 'EX', '0'), err("ERR invalid expire time in 'set' command"));
  t.equal(h.run('SET', 'k', 'v', 'PX', '-5'), err("ERR invalid expire time in 'set' command"));
  t.equal(h.run('SET', 'k', 'v', 'EX', '9223372036854776'), err("ERR invalid expire time in 'set' command"));
  t.equal(h.run('SET', 'k', 'v', 'PX', '9223372036854775807'), err("ERR invalid expire time in 'set' command"));
  t.equal(h.run('SET', 'k', 'v', 'EX', '1.5'), NOT_INT, 'a non-integer expire is "not an integer", as in Redis');
  t.equal(h.run('SET', 'k', 'v', 'EX', 'abc'), NOT_INT);
  t.equal(h.run('SET', 'k', 'v', 'PXAT', '9223372036854775807'), ok, 'PXAT at LLONG_MAX does not overflow');
  t.equal(h.run('PEXPIRETIME', 'k'), int('9223372036854774784'), 'stored as the nearest double not above 2^63-1');
  t.equal(h.run('EXISTS', 'k'), int(1));
});

t.test('SETNX, SETEX, PSETEX', async (t) => {
  const h = harness();
  t.equal(h.run('SETNX', 'k', 'a'), int(1));
  t.equal(h.run('SETNX', 'k', 'b'), int(0));
  t.equal(h.run('GET', 'k'), bulk('a'));
  t.equal(h.run('SETEX', 'k', '10', 'c'), ok);
  t.equal(h.run('TTL', 'k'), int(10));
  t.equal(h.run('GET', 'k'), bulk('c'));
  t.equal(h.run('PSETEX', 'k', '1234', 'd'), ok);
  t.equal(h.run('PTTL', 'k'), int(1234));
  t.equal(h.run('SETEX', 'k', '0', 'x'), err("ERR invalid expire time in 'setex' command"));
  t.equal(h.run('SETEX', 'k', '-10', 'x'), err("ERR invalid expire time in 'setex' command"));
  t.equal(h.run('PSETEX', 'k', '0', 'x'), err("ERR invalid expire time in 'psetex' command"));
  t.equal(h.run('SETEX', 'k', 'ten', 'x'), NOT_INT);
  t.equal(h.run('SETEX', 'k', '10'), err("ERR wrong number of arguments for 'setex' command"));
});

t.test('GETDEL and GETEX with every option', async (t) => {
  const h = harness();
  h.run('SET', 'k', 'v');
  t.equal(h.run('GETDEL', 'k'), bulk('v'));
  t.equal(h.run('GETDEL', 'k'), nil);
  t.equal(h.run('GETEX', 'k', 'EX', 'bogus'), nil, 'a missing key answers nil before the expire is checked');
  h.run('SET', 'k', 'v');
  t.equal(h.run('GETEX', 'k'), bulk('v'));
  t.equal(h.run('TTL', 'k'), int(-1));
  t.equal(h.run('GETEX', 'k', 'EX', '100'), bulk('v'));
  t.equal(h.run('TTL', 'k'), int(100));
  t.equal(h.run('GETEX', 'k', 'PX', '5000'), bulk('v'));
  t.equal(h.run('PTTL', 'k'), int(5000));
  t.equal(h.run('GETEX', 'k', 'EXAT', String(h.now / 1000 + 50)), bulk('v'));
  t.equal(h.run('TTL', 'k'), int(50));
  t.equal(h.run('GETEX', 'k', 'PXAT', String(h.now + 700)), bulk('v'));
  t.equal(h.run('PTTL', 'k'), int(700));
  t.equal(h.run('GETEX', 'k', 'PERSIST'), bulk('v'));
  t.equal(h.run('TTL', 'k'), int(-1));
  t.equal(h.run('GETEX', 'k', 'EX', '0'), err("ERR invalid expire time in 'getex' command"));
  t.equal(h.run('GETEX', 'k', 'EX', 'x'), NOT_INT);
  for (const opts of [['NX'], ['KEEPTTL'], ['GET'], ['EX', '1', 'PERSIST'], ['PERSIST', 'PX', '1'], ['EX']]) {
    t.equal(h.run('GETEX', 'k', ...opts), SYNTAX, opts.join(' '));
  }
  t.equal(h.run('GETEX', 'k', 'PXAT', String(h.now)), bulk('v'), 'an absolute time already reached...');
  t.equal(h.run('EXISTS', 'k'), int(0), '...deletes the key');
});

t.test('DEL, UNLINK and EXISTS count keys (EXISTS counts repeats)', async (t) => {
  const h = harness();
  h.run('MSET', 'a', '1', 'b', '2', 'c', '3');
  t.equal(h.run('EXISTS', 'a', 'a', 'b', 'nope'), int(3));
  t.equal(h.run('DEL', 'a', 'a', 'nope'), int(1));
  t.equal(h.run('UNLINK', 'b', 'c'), int(2));
  t.equal(h.run('EXISTS', 'a', 'b', 'c'), int(0));
  t.equal(h.run('DEL'), err("ERR wrong number of arguments for 'del' command"));
});

t.test('MGET, MSET, MSETNX', async (t) => {
  const h = harness();
  t.equal(h.run('MSET', 'a', '1', 'b', '2'), ok);
  t.equal(h.run('MGET', 'a', 'nope', 'b'), arr(bulk('1'), nil, bulk('2')));
  t.equal(h.run('MSET', 'a', '1', 'b'), err("ERR wrong number of arguments for 'mset' command"));
  t.equal(h.run('MSETNX', 'a', '1', 'b'), err("ERR wrong number of arguments for 'msetnx' command"));
  t.equal(h.run('MSETNX', 'x', '1', 'a', '9'), int(0));
  t.equal(h.run('EXISTS', 'x'), int(0), 'nothing is set when one key exists');
  t.equal(h.run('MSETNX', 'x', '1', 'y', '2', 'x', '3'), int(1));
  t.equal(h.run('MGET', 'x', 'y'), arr(bulk('3'), bulk('2')));
  h.run('EXPIRE', 'a', '100');
  h.run('MSET', 'a', 'new');
  t.equal(h.run('TTL', 'a'), int(-1), 'MSET clears TTLs like SET');
});

t.test('INCR family is exact over int64 and keeps the TTL', async (t) => {
  const h = harness();
  t.equal(h.run('INCR', 'n'), int(1));
  t.equal(h.run('INCRBY', 'n', '41'), int(42));
  t.equal(h.run('DECR', 'n'), int(41));
  t.equal(h.run('DECRBY', 'n', '50'), int(-9));
  t.equal(h.run('GET', 'n'), bulk('-9'));
  h.run('EXPIRE', 'n', '100');
  t.equal(h.run('INCR', 'n'), int(-8));
  t.equal(h.run('TTL', 'n'), int(100));
  h.run('SET', 'n', '9223372036854775806');
  t.equal(h.run('INCR', 'n'), int('9223372036854775807'));
  t.equal(h.run('INCR', 'n'), err('ERR increment or decrement would overflow'));
  t.equal(h.run('GET', 'n'), bulk('9223372036854775807'));
  h.run('SET', 'n', '-9223372036854775807');
  t.equal(h.run('DECR', 'n'), int('-9223372036854775808'));
  t.equal(h.run('DECR', 'n'), err('ERR increment or decrement would overflow'));
  t.equal(h.run('INCRBY', 'n', '9223372036854775807'), int(-1));
  t.equal(h.run('DECRBY', 'n', '-9223372036854775808'), err('ERR decrement would overflow'));
  h.run('SET', 'n', '9007199254740991');
  t.equal(h.run('INCR', 'n'), int('9007199254740992'), 'past 2^53 the reply is exact (bigint)');
  t.equal(h.run('INCR', 'n'), int('9007199254740993'));
  t.equal(h.run('DECRBY', 'n', '9007199254740993'), int(0));
  for (const bad of [' 1', '1 ', '+1', '01', '1.5', 'abc', '', '9223372036854775808']) {
    h.run('SET', 'v', bad);
    t.equal(h.run('INCR', 'v'), NOT_INT, `value ${JSON.stringify(bad)}`);
  }
  t.equal(h.run('INCRBY', 'n', 'x'), NOT_INT);
  t.equal(h.run('INCRBY', 'n', '9223372036854775808'), NOT_INT);
  t.equal(h.run('DECRBY', 'n', '1.0'), NOT_INT);
});

t.test('INCRBYFLOAT matches Redis long double results and errors', async (t) => {
  const h = harness();
  t.equal(h.run('INCRBYFLOAT', 'novar', '1'), bulk('1'));
  t.equal(h.run('INCRBYFLOAT', 'novar', '0.25'), bulk('1.25'));
  t.equal(h.run('GET', 'novar'), bulk('1.25'));
  h.run('SET', 'novar', '1.5');
  t.equal(h.run('INCRBYFLOAT', 'novar', '1.5'), bulk('3'));
  h.run('SET', 'novar', '17179869184');
  t.equal(h.run('INCRBYFLOAT', 'novar', '1.5'), bulk('17179869185.5'));
  h.run('SET', 'novar', '17179869184');
  t.equal(h.run('INCRBYFLOAT', 'novar', '17179869184'), bulk('34359738368'));
  h.run('SET', 'mykey', '10.50');
  t.equal(h.run('INCRBYFLOAT', 'mykey', '0.1'), bulk('10.6'));
  t.equal(h.run('INCRBYFLOAT', 'mykey', '-5'), bulk('5.6'));
  h.run('SET', 'mykey', '5.0e3');
  t.equal(h.run('INCRBYFLOAT', 'mykey', '2.0e2'), bulk('5200'));
  h.run('SET', 'x', '0.1');
  t.equal(h.run('INCRBYFLOAT', 'x', '0.2'), bulk('0.3'), 'long double precision, not double');
  h.run('SET', 'foo', '1');
  t.equal(h.run('INCRBYFLOAT', 'foo', '-1.1'), bulk('-0.1'));
  h.run('DEL', 'foo');
  h.run('INCRBYFLOAT', 'foo', String(1 / 41));
  t.equal(h.run('INCRBYFLOAT', 'foo', String(-1 / 41)), bulk('0'), 'no negative zero');
  t.equal(h.run('INCRBYFLOAT', 'hex', '0x10'), bulk('16'), 'strtold reads hex floats');
  t.equal(h.run('INCRBYFLOAT', 'tiny', '0.000003814697265625'), bulk('0.00000381469726562'), '%.17Lf ties to even');
  h.run('SET', 'foo', '0');
  t.equal(h.run('INCRBYFLOAT', 'foo', '+inf'), err('ERR increment would produce NaN or Infinity'));
  t.equal(h.run('GET', 'foo'), bulk('0'));
  for (const bad of [' 11', '11 ', ' 11 ', 'abc', '1e', '0x', 'nan', '1..2', '1e5000']) {
    h.run('SET', 'bad', bad);
    t.equal(h.run('INCRBYFLOAT', 'bad', '1'), NOT_FLOAT, `value ${JSON.stringify(bad)}`);
  }
  h.run('SET', 'nul', '1');
  h.run('SETRANGE', 'nul', '2', '2');
  t.equal(h.run('INCRBYFLOAT', 'nul', '1'), NOT_FLOAT, 'string to double with null terminator');
  t.equal(h.run('INCRBYFLOAT', 'foo', 'x'), NOT_FLOAT);
  t.equal(h.run('INCRBYFLOAT', 'foo', ''), NOT_FLOAT);
  h.run('SET', 'big', '1e308');
  t.equal(h.run('INCRBYFLOAT', 'big', '1e308').length > 300, true, 'beyond double range like Redis long double');
});

t.test('APPEND, STRLEN, GETRANGE, SETRANGE', async (t) => {
  const h = harness();
  t.equal(h.run('APPEND', 'k', 'Hello'), int(5));
  t.equal(h.run('APPEND', 'k', ' World'), int(11));
  t.equal(h.run('GET', 'k'), bulk('Hello World'));
  t.equal(h.run('STRLEN', 'k'), int(11));
  t.equal(h.run('STRLEN', 'nope'), int(0));
  h.run('SET', 'mykey', 'This is a string');
  t.equal(h.run('GETRANGE', 'mykey', '0', '3'), bulk('This'));
  t.equal(h.run('GETRANGE', 'mykey', '-3', '-1'), bulk('ing'));
  t.equal(h.run('GETRANGE', 'mykey', '0', '-1'), bulk('This is a string'));
  t.equal(h.run('GETRANGE', 'mykey', '10', '100'), bulk('string'));
  t.equal(h.run('GETRANGE', 'mykey', '5', '3'), bulk(''));
  t.equal(h.run('GETRANGE', 'mykey', '-1', '-5'), bulk(''));
  t.equal(h.run('GETRANGE', 'mykey', '-100', '2'), bulk('Thi'));
  t.equal(h.run('GETRANGE', 'mykey', '-9223372036854775807', '-9223372036854775808'), bulk(''));
  t.equal(h.run('GETRANGE', 'mykey', '0', '9223372036854775807'), bulk('This is a string'));
  t.equal(h.run('GETRANGE', 'nope', '0', '-1'), bulk(''));
  t.equal(h.run('GETRANGE', 'mykey', 'a', '1'), NOT_INT);
  t.equal(h.run('GETRANGE', 'mykey', '0', '1.5'), NOT_INT);
  h.run('SET', 'key1', 'Hello World');
  t.equal(h.run('SETRANGE', 'key1', '6', 'Redis'), int(11));
  t.equal(h.run('GET', 'key1'), bulk('Hello Redis'));
  t.equal(h.run('SETRANGE', 'key2', '6', 'Redis'), int(11));
  t.equal(h.run('GET', 'key2'), bulk('\0\0\0\0\0\0Redis'));
  t.equal(h.run('SETRANGE', 'key3', '0', ''), int(0));
  t.equal(h.run('EXISTS', 'key3'), int(0), 'setting nothing on a missing key creates nothing');
  t.equal(h.run('SETRANGE', 'key1', '100', ''), int(11));
  t.equal(h.run('SETRANGE', 'key1', '-1', 'x'), err('ERR offset is out of range'));
  t.equal(h.run('SETRANGE', 'key1', 'x', 'x'), NOT_INT);
  t.equal(h.run('SETRANGE', 'key1', '536870911', 'xx'), err('ERR string exceeds maximum allowed size (proto-max-bulk-len)'));
  h.run('EXPIRE', 'key1', '100');
  t.equal(h.run('SETRANGE', 'key1', '0', 'J'), int(11));
  t.equal(h.run('TTL', 'key1'), int(100), 'SETRANGE keeps the TTL');
  t.equal(h.run('APPEND', 'key1', '!'), int(12));
  t.equal(h.run('TTL', 'key1'), int(100), 'APPEND keeps the TTL');
});

t.test('APPEND respects valueBytesMax and the store refuses entries larger than the cache', async (t) => {
  const h = harness({ valueBytesMax: 10, bytesMax: entryBytes(1, 50) });
  t.equal(h.run('APPEND', 'k', '12345678'), int(8));
  t.equal(h.run('APPEND', 'k', '123'), err('ERR string exceeds maximum allowed size (proto-max-bulk-len)'));
  t.equal(h.run('SETRANGE', 'k', '9', '12'), err('ERR string exceeds maximum allowed size (proto-max-bulk-len)'));
  const big = 'x'.repeat(51);
  const oom = `-OOM command not allowed: the entry (${entryBytes(1, 51)} bytes) is larger than the cache (${entryBytes(1, 50)} bytes)\r\n`;
  t.equal(h.run('SET', 'k', big), oom);
  t.equal(h.run('SET', 'k', big, 'GET'), oom, 'refused before the GET part replies');
  t.equal(h.run('MSET', 'a', '1', 'k', big), oom);
  t.equal(h.run('EXISTS', 'a'), int(0), 'MSET is all or nothing');
  t.equal(h.run('GET', 'k'), bulk('12345678'));
});

t.test('EXPIRE family with NX, XX, GT, LT and Redis errors', async (t) => {
  const h = harness();
  t.equal(h.run('EXPIRE', 'nope', '10'), int(0));
  h.run('SET', 'k', 'v');
  t.equal(h.run('EXPIRE', 'k', '100', 'XX'), int(0), 'XX needs an existing TTL');
  t.equal(h.run('EXPIRE', 'k', '100', 'GT'), int(0), 'no TTL counts as infinite for GT');
  t.equal(h.run('EXPIRE', 'k', '100', 'LT'), int(1), 'no TTL counts as infinite for LT');
  t.equal(h.run('EXPIRE', 'k', '50', 'NX'), int(0));
  t.equal(h.run('EXPIRE', 'k', '200', 'gt'), int(1));
  t.equal(h.run('TTL', 'k'), int(200));
  t.equal(h.run('EXPIRE', 'k', '150', 'GT'), int(0));
  t.equal(h.run('EXPIRE', 'k', '250', 'LT'), int(0));
  t.equal(h.run('EXPIRE', 'k', '150', 'XX', 'LT'), int(1));
  t.equal(h.run('TTL', 'k'), int(150));
  t.equal(h.run('PEXPIRE', 'k', '1500'), int(1));
  t.equal(h.run('PTTL', 'k'), int(1500));
  t.equal(h.run('TTL', 'k'), int(2), 'TTL rounds to the nearest second');
  t.equal(h.run('EXPIREAT', 'k', String(h.now / 1000 + 30)), int(1));
  t.equal(h.run('TTL', 'k'), int(30));
  t.equal(h.run('EXPIRETIME', 'k'), int(h.now / 1000 + 30));
  t.equal(h.run('PEXPIREAT', 'k', String(h.now + 12345)), int(1));
  t.equal(h.run('PEXPIRETIME', 'k'), int(h.now + 12345));
  t.equal(h.run('EXPIRE', 'k', '10', 'NX', 'XX'), err('ERR NX and XX, GT or LT options at the same time are not compatible'));
  t.equal(h.run('EXPIRE', 'k', '10', 'NX', 'GT'), err('ERR NX and XX, GT or LT options at the same time are not compatible'));
  t.equal(h.run('EXPIRE', 'k', '10', 'GT', 'LT'), err('ERR GT and LT options at the same time are not compatible'));
  t.equal(h.run('EXPIRE', 'k', '10', 'FOO'), err('ERR Unsupported option FOO'));
  t.equal(h.run('EXPIRE', 'k', '10', 'a\r\nb'), err('ERR Unsupported option a  b'));
  t.equal(h.run('EXPIRE', 'k', 'ten', 'FOO'), err('ERR Unsupported option FOO'), 'options are checked before the time');
  t.equal(h.run('EXPIRE', 'k', 'ten'), NOT_INT);
  t.equal(h.run('EXPIRE', 'k', '9223372036854775807'), err("ERR invalid expire time in 'expire' command"));
  t.equal(h.run('EXPIRE', 'k', '-9223372036854775808'), err("ERR invalid expire time in 'expire' command"));
  t.equal(h.run('PEXPIRE', 'k', '9223372036854775807'), err("ERR invalid expire time in 'pexpire' command"));
  t.equal(h.run('EXPIREAT', 'k', '9223372036854775807'), err("ERR invalid expire time in 'expireat' command"));
  t.equal(h.run('EXPIREAT', 'k', '9223372036854775'), int(1), 'the largest EXPIREAT that fits');
  t.equal(h.run('EXPIRETIME', 'k'), int('9223372036854775'));
  t.equal(h.run('EXPIRE', 'k', '-1'), int(1), 'a negative TTL deletes the key');
  t.equal(h.run('EXISTS', 'k'), int(0));
  h.run('SET', 'k', 'v');
  t.equal(h.run('PEXPIREAT', 'k', String(h.now)), int(1), 'a time already reached deletes the key');
  t.equal(h.run('GET', 'k'), nil);
  t.equal(h.run('EXPIRE', 'k'), err("ERR wrong number of arguments for 'expire' command"));
});

t.test('TTL, PTTL, EXPIRETIME, PEXPIRETIME and PERSIST report -2 and -1 like Redis', async (t) => {
  const h = harness();
  for (const c of ['TTL', 'PTTL', 'EXPIRETIME', 'PEXPIRETIME']) t.equal(h.run(c, 'nope'), int(-2), c);
  h.run('SET', 'k', 'v');
  for (const c of ['TTL', 'PTTL', 'EXPIRETIME', 'PEXPIRETIME']) t.equal(h.run(c, 'k'), int(-1), c);
  t.equal(h.run('PERSIST', 'k'), int(0));
  t.equal(h.run('PERSIST', 'nope'), int(0));
  h.run('PEXPIRE', 'k', '1499');
  t.equal(h.run('TTL', 'k'), int(1));
  t.equal(h.run('PERSIST', 'k'), int(1));
  t.equal(h.run('TTL', 'k'), int(-1));
  h.run('PEXPIRE', 'k', '100');
  h.now += 100;
  t.equal(h.run('PTTL', 'k'), int(0), 'at the expire instant the key still exists with TTL 0');
  h.now += 1;
  t.equal(h.run('PTTL', 'k'), int(-2));
  t.equal(h.db.stats.expirations, 1);
});

t.test('TYPE, DBSIZE, RANDOMKEY, FLUSHALL and FLUSHDB', async (t) => {
  const h = harness();
  t.equal(h.run('TYPE', 'k'), simple('none'));
  t.equal(h.run('RANDOMKEY'), nil);
  h.run('SET', 'k', 'v');
  t.equal(h.run('TYPE', 'k'), simple('string'));
  t.equal(h.run('RANDOMKEY'), bulk('k'));
  t.equal(h.run('DBSIZE'), int(1));
  t.equal(h.run('FLUSHALL', 'bogus'), SYNTAX);
  t.equal(h.run('FLUSHALL', 'ASYNC', 'SYNC'), SYNTAX);
  t.equal(h.run('FLUSHDB', 'sync'), ok);
  t.equal(h.run('DBSIZE'), int(0));
  h.run('SET', 'k', 'v');
  t.equal(h.run('FLUSHALL', 'async'), ok);
  t.equal(h.run('FLUSHALL'), ok);
  t.equal(h.run('DBSIZE'), int(0));
});

t.test('SCAN and KEYS: cursor, MATCH, COUNT, TYPE and errors', async (t) => {
  const h = harness();
  for (let i = 0; i < 25; i++) h.run('SET', `key:${i}`, 'v');
  h.run('SET', 'other', 'v');
  const seen: string[] = [];
  let cursor = '0';
  let calls = 0;
  do {
    const out = h.run('SCAN', cursor, 'MATCH', 'key:*', 'COUNT', '7');
    const lines = out.split('\r\n');
    cursor = lines[2] ?? 'x';
    const n = Number((lines[3] ?? '*0').slice(1));
    for (let i = 0; i < n; i++) seen.push(lines[5 + 2 * i] ?? '');
    calls++;
  } while (cursor !== '0' && calls < 100);
  t.equal(seen.length, 25);
  t.equal(new Set(seen).size, 25);
  t.ok(calls >= 4, 'COUNT bounds the work per call');
  const all = h.run('SCAN', '0', 'COUNT', '1000');
  t.ok(all.startsWith('*2\r\n$1\r\n0\r\n*26\r\n'), 'one call covers everything with a large COUNT');
  t.equal(h.run('SCAN', '0', 'COUNT', '1000', 'TYPE', 'list'), arr(bulk('0'), '*0\r\n'));
  t.ok(h.run('SCAN', '0', 'COUNT', '1000', 'TYPE', 'STRING').startsWith('*2\r\n$1\r\n0\r\n*26\r\n'));
  t.equal(h.run('SCAN', '0', 'MATCH', 'other'), arr(bulk('11'), '*0\r\n'), 'a cursor may come back with no keys');
  t.equal(h.run('SCAN', 'abc'), err('ERR invalid cursor'));
  t.equal(h.run('SCAN', ' 1'), err('ERR invalid cursor'));
  t.equal(h.run('SCAN', '18446744073709551616'), err('ERR invalid cursor'));
  t.equal(h.run('SCAN', '18446744073709551615'), arr(bulk('0'), '*0\r\n'));
  t.equal(h.run('SCAN', '0', 'COUNT', '0'), SYNTAX);
  t.equal(h.run('SCAN', '0', 'COUNT', 'x'), NOT_INT);
  t.equal(h.run('SCAN', '0', 'COUNT'), SYNTAX);
  t.equal(h.run('SCAN', '0', 'FOO', 'bar'), SYNTAX);
  const keys = h.run('KEYS', 'key:1*');
  t.equal(keys.split('\r\n')[0], '*11', 'key:1 and key:10..19');
  t.ok(h.run('KEYS', '*').startsWith('*26\r\n'));
  h.run('SET', '', 'empty key');
  t.ok(h.run('KEYS', '*').startsWith('*27\r\n'), 'the lone * selects the empty key too');
  t.equal(h.run('KEYS', 'nomatch*'), '*0\r\n');
});

t.test('read commands count hits and misses; metadata probes do not', async (t) => {
  const h = harness();
  h.run('SET', 'k', 'v');
  h.run('GET', 'k');
  h.run('GET', 'nope');
  h.run('MGET', 'k', 'nope');
  h.run('EXISTS', 'k', 'nope');
  h.run('TTL', 'k');
  t.same([h.db.stats.hits, h.db.stats.misses], [2, 2]);
});

t.test('RESP3 clients get the RESP3 null for missing values', async (t) => {
  const h = harness({}, {}, 3);
  t.equal(h.run('GET', 'nope'), '_\r\n');
  t.equal(h.run('MGET', 'nope'), '*1\r\n_\r\n');
});

t.test('binary keys and values pass through commands unchanged', async (t) => {
  const h = harness();
  const key = Buffer.from([0, 0xff, 0x0d, 0x0a]);
  const value = Buffer.from([0x80, 0, 0x81]);
  t.equal(h.run('SET', key, value), ok);
  t.equal(h.run('GET', key), `$3\r\n${value.toString('latin1')}\r\n`);
  t.equal(h.run('KEYS', Buffer.from([0x2a, 0xff, 0x2a])), `*1\r\n$4\r\n${key.toString('latin1')}\r\n`);
});
