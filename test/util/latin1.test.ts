import t from 'tap';
import { latin1String } from '../../src/util/latin1.js';
import { createRng } from '../../src/util/rng.js';

t.test('latin1String equals toString("latin1") for every length around the short-key cut and all byte values', async (t) => {
  const seed = Number(process.env.SEED ?? Date.now() % 1_000_000);
  const rng = createRng(seed);
  let mismatches = 0;
  for (let len = 0; len <= 40; len++) {
    for (let round = 0; round < 50; round++) {
      const b = Buffer.alloc(len);
      for (let i = 0; i < len; i++) b[i] = Math.floor(rng.next() * 256);
      if (latin1String(b) !== b.toString('latin1')) mismatches++;
      // Views into a larger buffer, at an odd offset, as the parser hands them out.
      const big = Buffer.concat([Buffer.from([0xff, 0x00, 0x7f]), b, Buffer.from([0x80])]);
      const view = big.subarray(3, 3 + len);
      if (latin1String(view) !== b.toString('latin1')) mismatches++;
    }
  }
  t.equal(mismatches, 0, `seed ${seed}`);
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  for (let i = 0; i + 16 <= 256; i += 16) t.equal(latin1String(all.subarray(i, i + 16)), all.toString('latin1', i, i + 16));
  t.equal(latin1String(Buffer.from('key:000000012345')), 'key:000000012345');
});
