/**
 * The coherence protocol's wire forms: requests and answers survive encoding, and malformed input from a peer or a
 * bug is refused with an error instead of reaching the edge's cache.
 */
import t from 'tap';
import type { HomeAnswer } from '../../src/cache/coherence-types.js';
import {
  type CachedValue,
  CacheWireError,
  checkCacheCommand,
  decodeAnswer,
  decodeCacheRequest,
  encodeAnswer,
  encodeCacheRequest,
  isCacheCommand,
  CACHE_BATCH_MAX,
  isCacheBatchPayload,
  isInvAck,
  isStateReport,
  writeKeysOf,
} from '../../src/cache/coherence-wire.js';

const B = (s: string) => Buffer.from(s, 'latin1');

t.test('requests round-trip through their internal command form', async (t) => {
  const gets = encodeCacheRequest({ t: 'gets', from: 2, shard: 5, key: 'k\u00e9y', cacheable: false });
  t.equal(gets.kind, 'read');
  t.ok(isCacheCommand(gets.args));
  t.equal(checkCacheCommand('read', gets.args), null);
  t.same(decodeCacheRequest(gets.args), { t: 'gets', from: 2, shard: -1, key: 'k\u00e9y', cacheable: false });

  const renew = encodeCacheRequest({ t: 'renew', from: 3, shard: 1, epoch: 7, evicted: [['a', 4]] });
  t.equal(checkCacheCommand('read', renew.args), null);
  t.same(decodeCacheRequest(renew.args), { t: 'renew', from: 3, shard: -1, epoch: 7, evicted: [['a', 4]] });

  const write = encodeCacheRequest({ t: 'write', from: 1, shard: 0, keys: ['x'], op: [B('set'), B('x'), B('1')], want: 'x' });
  t.equal(write.kind, 'write');
  t.equal(checkCacheCommand('write', write.args), null);
  const w = decodeCacheRequest(write.args);
  t.same(w.t === 'write' ? [w.keys, w.want, w.op.map((b) => b.toString()), w.dropped] : null, [['x'], 'x', ['set', 'x', '1'], undefined]);
  const dw = decodeCacheRequest(encodeCacheRequest({ t: 'write', from: 1, shard: 0, keys: ['x'], op: [B('incr'), B('x')], dropped: { epoch: 4, items: [['x', 9]] } }).args);
  t.same(dw.t === 'write' ? [dw.dropped, dw.op.map((b) => b.toString())] : null, [{ epoch: 4, items: [['x', 9]] }, ['incr', 'x']], 'the grants the writer dropped');
  const bad = encodeCacheRequest({ t: 'write', from: 1, shard: 0, keys: ['x'], op: [B('incr'), B('x')] }).args;
  bad[4] = Buffer.from([0x93, 0x01, 0x02, 0x03]);
  t.throws(() => decodeCacheRequest(bad), /bad dropped list/);

  const flush = encodeCacheRequest({ t: 'write', from: 1, shard: 0, keys: 'all', op: [B('flushall')] });
  t.equal(checkCacheCommand('write', flush.args), null, 'a one-argument write (FLUSHALL) is well formed');
  const f = decodeCacheRequest(flush.args);
  t.same(f.t === 'write' ? [f.keys, f.want] : null, ['all', undefined]);
});

t.test('malformed commands are refused', async (t) => {
  t.notOk(isCacheCommand([B('get'), B('k')]));
  t.match(checkCacheCommand('write', [B('_c.gets'), B('1'), B('k'), B('1')]), /malformed/, 'wrong kind');
  t.match(checkCacheCommand('read', [B('_c.gets'), B('1'), B('k')]), /malformed/, 'wrong arity');
  t.match(checkCacheCommand('read', [B('_c.gets'), B('zero'), B('k'), B('1')]), /bad node id/);
  t.match(checkCacheCommand('read', [B('_c.nope'), B('1')]), /malformed/);
  t.throws(() => decodeCacheRequest([B('_c.renew'), B('1'), B('x'), Buffer.from([0xc1])]), /bad epoch/);
});

t.test('every kind of answer round-trips exactly; a truncated, padded or garbled one is refused', async (t) => {
  const answers: HomeAnswer<CachedValue, Uint8Array>[] = [
    { t: 'data', ok: true, epoch: 3, home: 1, lease: true, value: { v: B('hello'), x: 0 }, grant: 'E', gen: 9 },
    { t: 'data', ok: true, epoch: 2 ** 40, home: 7, lease: false, value: { v: B(''), x: 1_800_000_000_000 }, grant: 'S', gen: 2 ** 33 },
    { t: 'data', ok: true, epoch: 1, home: 2, lease: true, value: null, grant: null, gen: 0 },
    { t: 'written', ok: true, epoch: 3, home: 1, lease: true, result: Buffer.from([1, 2]), grant: { key: 'k\u00e9\u00ff', value: { v: B('v'), x: 5 }, gen: 2 } },
    { t: 'written', ok: true, epoch: 3, home: 1, lease: true, result: Buffer.from('+OK\r\n'), grant: { key: 'gone', value: null, gen: 4 } },
    { t: 'written', ok: true, epoch: 3, home: 1, lease: false, result: Buffer.alloc(0), grant: null },
    { t: 'written', ok: true, epoch: 3, home: 1, lease: true, result: Buffer.alloc(100_000, 7), grant: { key: 'big', value: { v: Buffer.alloc(70_000, 9), x: 0 }, gen: 1 } },
    { t: 'lease', ok: true, epoch: 5, home: 3, lease: true },
    { t: 'flushed', ok: true, epoch: 5, home: 3, lease: false, accepted: false, pending: true },
    { t: 'flushed', ok: true, epoch: 5, home: 3, lease: true, accepted: true },
  ];
  for (const a of answers) {
    const wire = Buffer.from(encodeAnswer(a));
    const back = decodeAnswer(wire);
    t.same(back, a, `${a.t} round-trips`);
    if (back.t === 'data' && back.value !== null) t.ok(Buffer.isBuffer(back.value.v), 'values come back as Buffers');
    wire.fill(0xee);
    t.same(back, a, 'the decoded answer owns its bytes (the input may be reused)');
    const again = encodeAnswer(a);
    t.throws(() => decodeAnswer(again.subarray(0, again.length - 1)), /bad answer/, `${a.t}: one byte short`);
    t.throws(() => decodeAnswer(Buffer.concat([again, Buffer.from([0])])), /bad answer/, `${a.t}: one byte too many`);
  }
  t.throws(() => decodeAnswer(Buffer.alloc(0)), /bad answer/, 'empty');
  const unknown = Buffer.from(encodeAnswer(answers[7]!));
  unknown[0] = 9;
  t.throws(() => decodeAnswer(unknown), /bad answer/, 'an unknown kind');
  const nanEpoch = Buffer.from(encodeAnswer(answers[7]!));
  nanEpoch.writeDoubleLE(Number.NaN, 2);
  t.throws(() => decodeAnswer(nanEpoch), /bad answer/, 'an epoch that is not an integer');
  // Random bytes never crash the decoder: each is an answer or a CacheWireError.
  let refused = 0;
  const otherErrors: string[] = [];
  for (let i = 0; i < 2000; i++) {
    const junk = Buffer.from(Array.from({ length: 1 + (i % 60) }, (_, j) => (i * 131 + j * 197 + (i >> 3)) & 0xff));
    try {
      decodeAnswer(junk);
    } catch (err) {
      if (err instanceof CacheWireError) refused++;
      else otherErrors.push(String(err));
    }
  }
  t.same(otherErrors, [], 'no other error escapes the decoder');
  t.ok(refused > 1900, `garbage is refused (${refused} of 2000)`);
});

t.test('invalidations and acknowledgements from a peer are checked item by item', async (t) => {
  const inv = { t: 'inv', shard: 1, epoch: 2, items: [['k', 3]] };
  const one = (m: unknown): boolean => isCacheBatchPayload({ cs: [m] });
  t.ok(one(inv));
  t.notOk(one({ ...inv, items: [['k']] }), 'an item without a gen');
  t.notOk(one({ ...inv, items: [[3, 'k']] }), 'swapped types');
  t.notOk(one({ ...inv, items: 'k' }), 'not a list');
  t.notOk(isCacheBatchPayload({ f: [] }), 'a forward batch is not an invalidation');
  t.ok(one({ t: 'down', shard: 1, epoch: 2, items: [['k', 3]] }), 'a downgrade');
  t.notOk(one({ t: 'down', shard: 1, epoch: 2, items: [['k', 'x']] }), 'a downgrade with a bad gen');
  t.ok(one({ t: 'state', shard: 1, key: 'k' }), 'a CACHE.STATE query');
  t.notOk(one({ t: 'state', shard: 1, key: 7 }), 'a state query without a string key');
  t.notOk(one({ t: 'other', shard: 1, epoch: 2, items: [] }), 'an unknown message');
  t.ok(isCacheBatchPayload({ cs: [inv, { t: 'state', shard: 4, key: 'x' }, { ...inv, shard: 9 }] }), 'messages of several shards and kinds');
  t.notOk(isCacheBatchPayload({ cs: [inv, { ...inv, epoch: 'x' }] }), 'one bad message refuses the batch');
  t.notOk(isCacheBatchPayload({ cs: [] }), 'an empty batch');
  t.notOk(isCacheBatchPayload({ cs: new Array(CACHE_BATCH_MAX + 1).fill(inv) }), 'more than CACHE_BATCH_MAX messages');
  t.notOk(isCacheBatchPayload({ cs: inv }), 'not a list');
  t.ok(isStateReport({ t: 'state', from: 2, state: 'S' }));
  t.notOk(isStateReport({ t: 'state', from: 2, state: 'X' }), 'not a MESI state');
  t.ok(isInvAck({ t: 'invack', from: 1, shard: 1, epoch: 2, items: [['k', 3]] }));
  t.notOk(isInvAck({ t: 'invack', from: 1, shard: 1, epoch: 2, items: [['k', 1.5]] }));
});

t.test('the keys a write touches come from its command spec', async (t) => {
  const args = [B('mset'), B('a'), B('1'), B('b'), B('2')];
  t.same(writeKeysOf({ firstKey: 1, lastKey: -1, keyStep: 2 }, args), ['a', 'b']);
  t.same(writeKeysOf({ firstKey: 1, lastKey: -1, keyStep: 1 }, [B('del'), B('x'), B('y')]), ['x', 'y']);
  t.equal(writeKeysOf({ firstKey: 0, lastKey: 0, keyStep: 0 }, [B('flushall')]), 'all');
});
