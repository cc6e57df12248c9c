import t from 'tap';
import { globMatch, globMatchesAll } from '../../src/cache/glob.js';

const m = (pattern: string | Buffer, subject: string | Buffer, nocase = false): boolean =>
  globMatch(
    typeof pattern === 'string' ? Buffer.from(pattern, 'latin1') : pattern,
    typeof subject === 'string' ? Buffer.from(subject, 'latin1') : subject,
    nocase,
  );

t.test('KEYS with pattern and hashtag cases from Redis keyspace.tcl select the same keys', async (t) => {
  const keys = ['key_x', 'key_y', 'key_z', 'foo_a', 'foo_b', 'foo_c', '{a}x', '{a}y', '{a}z', '{b}a', '{b}b', '{b}c'];
  const sel = (p: string) => keys.filter((k) => m(p, k)).sort();
  t.same(sel('foo*'), ['foo_a', 'foo_b', 'foo_c']);
  t.same(sel('{a}*'), ['{a}x', '{a}y', '{a}z']);
  t.same(sel('*{b}*'), ['{b}a', '{b}b', '{b}c']);
  t.same(sel('*'), [...keys].sort());
});

t.test('wildcards, classes, ranges and escapes behave as stringmatchlen', async (t) => {
  t.ok(m('h?llo', 'hello'));
  t.ok(m('h?llo', 'hallo'));
  t.notOk(m('h?llo', 'hllo'));
  t.ok(m('h*llo', 'hllo'));
  t.ok(m('h*llo', 'heeeello'));
  t.ok(m('h[ae]llo', 'hello'));
  t.notOk(m('h[ae]llo', 'hillo'));
  t.ok(m('h[^e]llo', 'hallo'));
  t.notOk(m('h[^e]llo', 'hello'));
  t.ok(m('h[a-b]llo', 'hbllo'));
  t.notOk(m('h[a-b]llo', 'hcllo'));
  t.ok(m('h[b-a]llo', 'hallo'), 'a reversed range is swapped');
  t.ok(m('\\*', '*'));
  t.notOk(m('\\*', 'a'));
  t.ok(m('a\\?b', 'a?b'));
  t.notOk(m('a\\?b', 'axb'));
  t.ok(m('[\\]]', ']'), 'an escaped ] inside a class');
  t.ok(m('[\\-]', '-'));
  t.ok(m('a*', 'a'), 'a trailing star matches nothing');
  t.ok(m('a**b', 'ab'));
  t.notOk(m('a', ''));
  t.notOk(m('', 'a'));
  t.ok(m('', ''));
  t.ok(m('*a*b*c*', 'xaybzc'));
  t.notOk(m('*a*b*c*', 'xaybz'));
});

t.test('the edge cases of Redis matching are kept', async (t) => {
  t.notOk(m('*', ''), 'stringmatchlen needs one byte of subject for *; KEYS special-cases the lone *');
  t.ok(globMatchesAll(Buffer.from('*')));
  t.notOk(globMatchesAll(Buffer.from('**')));
  t.ok(m('[abc', 'b'), 'an unterminated class ends at the end of the pattern');
  t.notOk(m('[abc', 'bx'));
  t.ok(m('[a-]', '_'), '[a-] is the range from ] to a');
  t.notOk(m('[a-]', '-'));
  t.ok(m('a\\', 'a\\'), 'a trailing backslash is a literal backslash');
  t.ok(m(Buffer.from([0x5b, 0x61, 0x2d, 0xff, 0x5d]), Buffer.from('0')), 'ranges compare signed chars: [a-\\xff] is -1..97');
  t.ok(m(Buffer.from([0x5b, 0x61, 0x2d, 0xff, 0x5d]), Buffer.from([0xff])));
  t.notOk(m(Buffer.from([0x5b, 0x61, 0x2d, 0xff, 0x5d]), Buffer.from([0x80])));
  t.notOk(m(Buffer.from([0x5b, 0x61, 0x2d, 0xff, 0x5d]), Buffer.from('b')));
});

t.test('matching is binary-safe and nocase folds only ASCII letters', async (t) => {
  t.ok(m(Buffer.from([0x61, 0x00, 0x2a]), Buffer.from([0x61, 0x00, 0xff, 0x00])));
  t.notOk(m(Buffer.from([0x61, 0x00]), Buffer.from([0x61])));
  t.ok(m(Buffer.from([0x3f]), Buffer.from([0x00])));
  t.ok(m('HeLLo*', 'hello world', true));
  t.notOk(m('HeLLo*', 'hello world', false));
  t.ok(m('[A-C]x', 'bx', true));
});

t.test('pathological patterns finish quickly (regression: very long nested loops)', async (t) => {
  const subject = 'a'.repeat(69);
  const start = process.hrtime.bigint();
  t.notOk(m('a*'.repeat(100) + 'b', subject));
  t.notOk(m('*a'.repeat(30) + '*b', 'a'.repeat(5000)));
  t.ok(m('*a'.repeat(30) + '*', 'a'.repeat(5000)));
  t.notOk(m('*x'.repeat(100_000), 'x'.repeat(2000)), 'a pattern deeper than the nesting cap does not overflow the stack');
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  t.ok(ms < 2000, `bounded work (${ms.toFixed(1)} ms)`);
});
