import t from 'tap';
import { createRng } from '../../../src/util/rng.js';
import { decodeBody, encodeFrame, FrameDecoder, PeerProtocolError } from '../../../protocol/peer/frame.js';
import { plain } from './samples.js';

function randomBody(rng: ReturnType<typeof createRng>, i: number): unknown {
  const n = rng.int(0, 300);
  return { k: 4, i, s: 'x'.repeat(rng.int(0, 40)), d: Uint8Array.from({ length: n }, () => rng.int(0, 256)), a: [i, i * 2, 2 ** 40 + i] };
}

function decodeAll(dec: FrameDecoder, chunks: Buffer[]): { out: unknown[]; err: PeerProtocolError | null } {
  const out: unknown[] = [];
  for (const c of chunks) {
    const err = dec.push(c, (b) => out.push(b));
    if (err !== null) return { out, err };
  }
  return { out, err: null };
}

t.test('frames survive any chunk split (seeded random splits)', async (t) => {
  const rng = createRng(20261122);
  const bodies = Array.from({ length: 200 }, (_, i) => randomBody(rng, i));
  const stream = Buffer.concat(bodies.map((b) => encodeFrame(b)));
  t.same(plain(decodeAll(new FrameDecoder(1 << 20), [stream]).out), plain(bodies), 'one chunk: deep equal');
  for (let round = 0; round < 40; round++) {
    const chunks: Buffer[] = [];
    let off = 0;
    while (off < stream.length) {
      // Mix 1-byte, small and large chunks so splits land inside headers and bodies.
      const size = rng.chance(0.3) ? rng.int(1, 4) : rng.int(1, 2000);
      chunks.push(stream.subarray(off, Math.min(stream.length, off + size)));
      off += size;
    }
    const { out, err } = decodeAll(new FrameDecoder(1 << 20), chunks);
    t.equal(err, null);
    t.equal(out.length, bodies.length, `round ${round}: every frame decoded`);
    if (out.length !== bodies.length) break;
    // Re-encoding what was decoded gives back the exact byte stream (fast, and stricter than a deep compare).
    t.ok(Buffer.concat(out.map((b) => encodeFrame(b))).equals(stream), `round ${round}: same values`);
  }
});

t.test('byte-by-byte input decodes every frame', async (t) => {
  const bodies = [{ k: 1, a: 'hello' }, { k: 2, b: new Uint8Array([9, 8, 7]) }, { k: 3 }];
  const stream = Buffer.concat(bodies.map((b) => encodeFrame(b)));
  const chunks = Array.from(stream, (b) => Buffer.from([b]));
  const { out, err } = decodeAll(new FrameDecoder(1024), chunks);
  t.equal(err, null);
  t.same(plain(out), plain(bodies));
});

t.test('Uint8Array stays binary on the wire', async (t) => {
  const frame = encodeFrame({ d: new Uint8Array([1, 2, 3]) });
  // bin8 marker 0xc4 followed by the length 3
  t.ok(frame.includes(Buffer.from([0xc4, 3, 1, 2, 3])));
  const body = decodeBody(frame.subarray(4)) as { d: unknown };
  t.ok(body.d instanceof Uint8Array);
  t.same(Array.from(body.d as Uint8Array), [1, 2, 3]);
});

t.test('a declared length above the limit is refused from the header alone, before allocating', async (t) => {
  const dec = new FrameDecoder(1024);
  const frames: unknown[] = [];
  // 4 GB declared, header split over two chunks; no body bytes follow.
  t.equal(dec.push(Buffer.from([0xff, 0xff]), (b) => frames.push(b)), null);
  const err = dec.push(Buffer.from([0xff, 0xff]), (b) => frames.push(b));
  t.ok(err instanceof PeerProtocolError);
  t.equal(err?.code, 'PEER_PROTOCOL');
  t.equal(err?.message, 'frame too large: 4294967295 > 1024');
  t.equal(dec.bufferedBytes, 0, 'nothing buffered for the body');
  t.equal(frames.length, 0);
  const small = new FrameDecoder(10);
  const big = encodeFrame({ s: 'x'.repeat(20) });
  t.match(small.push(big, () => {})?.message, /^frame too large: \d+ > 10$/);
});

t.test('a length exactly at the limit is accepted', async (t) => {
  const frame = encodeFrame({ s: 'abc' });
  const dec = new FrameDecoder(frame.length - 4);
  const out: unknown[] = [];
  t.equal(dec.push(frame, (b) => out.push(b)), null);
  t.same(out, [{ s: 'abc' }]);
});

t.test('a garbage body is refused and the decoder stays failed', async (t) => {
  const dec = new FrameDecoder(1024);
  const out: unknown[] = [];
  // 0xc1 is never used in msgpack
  const err = dec.push(Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1]), (b) => out.push(b));
  t.ok(err instanceof PeerProtocolError);
  t.match(err?.message, /^frame body is not valid msgpack/);
  t.equal(out.length, 0);
  t.equal(dec.push(encodeFrame({ ok: 1 }), (b) => out.push(b)), err, 'sticky error');
  t.equal(out.length, 0);
});

t.test('a body with trailing bytes after the value is refused', async (t) => {
  const dec = new FrameDecoder(1024);
  // fixint 1 followed by fixint 2 inside a 2-byte body
  const err = dec.push(Buffer.from([0, 0, 0, 2, 0x01, 0x02]), () => {});
  t.match(err?.message, /^frame body is not valid msgpack/);
});

t.test('a body cut short inside the frame is refused', async (t) => {
  const dec = new FrameDecoder(1024);
  // declares 2 bytes: a fixarray of 2 with only one element
  const err = dec.push(Buffer.from([0, 0, 0, 2, 0x92, 0x01]), () => {});
  t.match(err?.message, /^frame body is not valid msgpack/);
});

t.test('an empty frame is refused', async (t) => {
  const err = new FrameDecoder(1024).push(Buffer.from([0, 0, 0, 0]), () => {});
  t.equal(err?.message, 'empty frame');
});

t.test('a truncated frame delivers nothing and waits for the rest', async (t) => {
  const frame = encodeFrame({ k: 4, d: new Uint8Array(500) });
  const dec = new FrameDecoder(1024);
  const out: unknown[] = [];
  t.equal(dec.push(frame.subarray(0, 300), (b) => out.push(b)), null);
  t.equal(out.length, 0);
  t.equal(dec.bufferedBytes, 296);
  t.equal(dec.push(frame.subarray(300), (b) => out.push(b)), null);
  t.equal(out.length, 1);
  t.equal(dec.bufferedBytes, 0);
});

t.test('binary values decoded from a gathered frame are not overwritten by later frames', async (t) => {
  const a = encodeFrame({ d: new Uint8Array(100).fill(1) });
  const b = encodeFrame({ d: new Uint8Array(100).fill(2) });
  const dec = new FrameDecoder(1024);
  const out: Array<{ d: Uint8Array }> = [];
  const push = (c: Buffer): void => void dec.push(c, (x) => out.push(x as { d: Uint8Array }));
  push(a.subarray(0, 50));
  push(a.subarray(50));
  push(b.subarray(0, 50));
  push(b.subarray(50));
  t.equal(out.length, 2);
  t.ok(out[0]!.d.every((x) => x === 1));
  t.ok(out[1]!.d.every((x) => x === 2));
});

t.test('close() stops decoding the rest of the chunk', async (t) => {
  const dec = new FrameDecoder(1024);
  const out: unknown[] = [];
  const stream = Buffer.concat([encodeFrame(1), encodeFrame(2), encodeFrame(3)]);
  dec.push(stream, (b) => {
    out.push(b);
    if (b === 2) dec.close();
  });
  t.same(out, [1, 2]);
});

t.test('a bad frameBytesMax is refused', async (t) => {
  t.throws(() => new FrameDecoder(0), RangeError);
  t.throws(() => new FrameDecoder(2 ** 32), RangeError);
});
