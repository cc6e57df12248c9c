import t from 'tap';
import { pack, unpack } from 'msgpackr';
import { bufferView, copyRange } from '../../protocol/buffer-view.js';

t.test('bufferView is a Buffer over the same bytes as subarray, to every Buffer API', async (t) => {
  const base = Buffer.from('__hello world__');
  const inner = base.subarray(2, 13); // a view with a non-zero byteOffset, as socket chunks are
  const v = bufferView(inner, 6, 11);
  t.ok(Buffer.isBuffer(v));
  t.ok(v instanceof Buffer);
  t.equal(v.constructor, Buffer);
  t.equal(v.length, 5);
  t.equal(v.toString(), 'world');
  t.equal(v.toString('latin1'), inner.subarray(6, 11).toString('latin1'));
  t.ok(v.equals(Buffer.from('world')));
  t.equal(Buffer.compare(v, inner.subarray(6, 11)), 0);
  t.equal(Buffer.concat([v, Buffer.from('!')]).toString(), 'world!');
  t.equal(Buffer.from(v).toString(), 'world', 'Buffer.from copies it');
  t.ok(Buffer.isBuffer(v.subarray(1)));
  t.equal(v.subarray(1, 3).toString(), 'or');
  t.equal(v.readUInt8(0), 0x77);
  t.same(unpack(pack([v])), [Buffer.from('world')], 'msgpackr packs it as bytes');
  t.equal(bufferView(inner, 3, 3).length, 0, 'an empty view');
  inner[6] = 0x57; // 'W'
  t.equal(v.toString(), 'World', 'it shares memory with the buffer it views');
});

t.test('copyRange copies exactly src[start, end) to dst at a position, short and long runs alike', async (t) => {
  const src = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
  for (const [start, end] of [[0, 0], [3, 7], [10, 41], [0, 100], [5, 100]] as const) {
    const dst = Buffer.alloc(120, 0xee);
    const after = copyRange(dst, 9, src, start, end);
    t.equal(after, 9 + end - start, `[${start}, ${end}) returns the end position`);
    t.same([...dst.subarray(9, after)], [...src.subarray(start, end)], `[${start}, ${end}) bytes`);
    t.ok(dst.subarray(0, 9).every((x) => x === 0xee) && dst.subarray(after).every((x) => x === 0xee), `[${start}, ${end}) nothing else written`);
  }
});
