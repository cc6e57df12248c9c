import t from 'tap';
import { crc16, keySlot } from '../../src/cluster/slots.js';

t.test('crc16 is the XMODEM variant Redis Cluster uses', async (t) => {
  t.equal(crc16(Buffer.from('123456789')), 0x31c3);
  t.equal(crc16(Buffer.alloc(0)), 0);
});

t.test('key slots match the values Redis Cluster computes', async (t) => {
  // Values from `CLUSTER KEYSLOT` on Redis 7.
  t.equal(keySlot(Buffer.from('foo')), 12182);
  t.equal(keySlot(Buffer.from('bar')), 5061);
  t.equal(keySlot(Buffer.from('hello')), 866);
  t.equal(keySlot(Buffer.from('somekey')), 11058);
});

t.test('a hashtag puts related keys in one slot; an empty or unclosed tag hashes the whole key', async (t) => {
  t.equal(keySlot(Buffer.from('{user1000}.following')), keySlot(Buffer.from('{user1000}.followers')));
  t.equal(keySlot(Buffer.from('{user1}.lock')), keySlot(Buffer.from('user1')));
  t.equal(keySlot(Buffer.from('foo{}{bar}')), crc16(Buffer.from('foo{}{bar}')) & 16383, 'empty first tag: whole key');
  t.equal(keySlot(Buffer.from('foo{{bar}}zap')), keySlot(Buffer.from('{bar')), 'tag is from the first { to the next }');
  t.equal(keySlot(Buffer.from('foo{bar')), crc16(Buffer.from('foo{bar')) & 16383, 'unclosed: whole key');
});
