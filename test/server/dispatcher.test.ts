import t from 'tap';
import pino from 'pino';
import { CommandTable, Dispatcher } from '../../src/server/dispatcher.js';
import type { CommandSpec } from '../../src/server/command.js';

function spec(name: string): CommandSpec {
  return { name, arity: -1, flags: [], firstKey: 0, lastKey: 0, keyStep: 0, group: 'server', summary: name, handler: () => undefined } as unknown as CommandSpec;
}

function dispatcher(names: string[]): { d: Dispatcher; table: CommandTable } {
  const table = new CommandTable(names.map(spec));
  return { d: new Dispatcher(table, pino({ level: 'silent' }), () => false), table };
}

t.test('lookup is case-insensitive for short and long names, and exact about length', async (t) => {
  const { d } = dispatcher(['get', 'q.push', 'q.redrive', 'x']);
  for (const spelling of ['get', 'GET', 'GeT', 'gET']) t.equal(d.lookup(Buffer.from(spelling))?.name, 'get', spelling);
  for (const spelling of ['q.push', 'Q.PUSH', 'q.Push']) t.equal(d.lookup(Buffer.from(spelling))?.name, 'q.push', spelling);
  for (const spelling of ['q.redrive', 'Q.REDRIVE']) t.equal(d.lookup(Buffer.from(spelling))?.name, 'q.redrive', 'a name past the short-name size');
  t.equal(d.lookup(Buffer.from('x'))?.name, 'x');
  // Same bytes packed with a different length must not collide: "\0get" and "get" differ only by a leading zero byte.
  t.equal(d.lookup(Buffer.from('\0get', 'latin1')), undefined);
  t.equal(d.lookup(Buffer.from('get\0', 'latin1')), undefined);
  t.equal(d.lookup(Buffer.from('ge')), undefined);
  t.equal(d.lookup(Buffer.from('gets')), undefined);
  t.equal(d.lookup(Buffer.alloc(0)), undefined);
  t.equal(d.lookup(Buffer.from('get')), d.lookup(Buffer.from('GET')), 'cached answers stay the same');
});

t.test('unknown names are remembered as unknown, and the cache stays bounded and correct past its size', async (t) => {
  const { d } = dispatcher(['get', 'incrbyfloat']);
  // 10,000 distinct short and long unknown names: far more than the cache holds, so it starts over several times.
  for (let i = 0; i < 10_000; i++) {
    t.equal(d.lookup(Buffer.from(`u${i}`)), undefined);
    t.equal(d.lookup(Buffer.from(`unknown-long-${i}`)), undefined);
    if (i % 997 === 0) {
      t.equal(d.lookup(Buffer.from('GET'))?.name, 'get');
      t.equal(d.lookup(Buffer.from('IncrByFloat'))?.name, 'incrbyfloat');
    }
  }
  t.equal(d.lookup(Buffer.from('Get'))?.name, 'get');
});

t.test('a command added after a name was looked up is found (the cached "unknown" is dropped)', async (t) => {
  const { d, table } = dispatcher(['get']);
  t.equal(d.lookup(Buffer.from('hello')), undefined);
  t.equal(d.lookup(Buffer.from('longer-name')), undefined);
  table.add(spec('hello'));
  table.add(spec('longer-name'));
  t.equal(d.lookup(Buffer.from('HELLO'))?.name, 'hello');
  t.equal(d.lookup(Buffer.from('longer-name'))?.name, 'longer-name');
});
