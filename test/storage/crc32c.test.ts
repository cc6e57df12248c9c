import t from 'tap';
import { crc32c } from '../../src/storage/crc32c.js';

const enc = new TextEncoder();

t.test('crc32c matches the RFC 3720 and common test vectors', async (t) => {
  t.equal(crc32c(enc.encode('123456789')), 0xe3069283);
  t.equal(crc32c(new Uint8Array(32)), 0x8a9136aa);
  t.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43);
  const inc = new Uint8Array(32).map((_, i) => i);
  t.equal(crc32c(inc), 0x46dd794e);
  const dec = new Uint8Array(32).map((_, i) => 31 - i);
  t.equal(crc32c(dec), 0x113fdb5c);
  t.equal(crc32c(new Uint8Array(0)), 0);
  t.equal(crc32c(enc.encode('a')), 0xc1d04330);
});

t.test('crc32c is incremental and agrees between the byte and word paths at every split and alignment', async (t) => {
  const buf = new Uint8Array(3000);
  let x = 12345;
  for (let i = 0; i < buf.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    buf[i] = x >>> 24;
  }
  // Reference: byte at a time through the 1-byte path (inputs shorter than the word-path threshold).
  let ref = 0;
  for (let i = 0; i < buf.length; i += 100) ref = crc32c(buf.subarray(i, Math.min(buf.length, i + 100)), ref);
  t.equal(crc32c(buf), ref, 'whole equals chained small pieces');
  for (const split of [0, 1, 7, 8, 255, 256, 257, 1024, 2999, 3000]) {
    t.equal(crc32c(buf, crc32c(buf, 0, 0, split), split), ref, `split at ${split}`);
  }
  for (let off = 1; off < 8; off++) {
    const shifted = new Uint8Array(buf.length + off);
    shifted.set(buf, off);
    t.equal(crc32c(shifted.subarray(off)), ref, `unaligned by ${off}`);
  }
});
