/**
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI (RFC 3720), ext4, LevelDB and etcd's WAL.
 *
 * Pure TypeScript, slice-by-8: eight 256-entry tables let the inner loop consume 8 bytes per iteration with 8 table
 * lookups and no data-dependent branches. The tables are built once at module load (8 KiB). For inputs of
 * `WORD_PATH_BYTES_MIN` bytes or more on a little-endian host, the 8 bytes are read as two 32-bit words through an
 * Int32Array view of the aligned middle of the buffer (2-3x faster than assembling words from bytes); short inputs
 * take the byte path, where creating a view would cost more than it saves.
 *
 * Incremental use: `crc32c(b, crc32c(a))` equals `crc32c(concat(a, b))`. The `seed` is the CRC value returned by the
 * previous call (0 to start), not a raw register value; the pre/post inversion is handled inside.
 */

const POLY = 0x82f63b78;
const WORD_PATH_BYTES_MIN = 256;

const T: Int32Array = (() => {
  const t = new Int32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[n]!;
    for (let s = 1; s < 8; s++) {
      c = t[c & 0xff]! ^ (c >>> 8);
      t[s * 256 + n] = c;
    }
  }
  return t;
})();

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * CRC32C of `buf[start, end)`, continuing from `seed` (the CRC of the preceding bytes, 0 for none).
 * Returns an unsigned 32-bit integer.
 */
export function crc32c(buf: Uint8Array, seed = 0, start = 0, end: number = buf.length): number {
  const t = T;
  let crc = ~seed;
  let i = start;
  if (LITTLE_ENDIAN && end - i >= WORD_PATH_BYTES_MIN) {
    while (((buf.byteOffset + i) & 3) !== 0) {
      crc = t[(crc ^ buf[i]!) & 0xff]! ^ (crc >>> 8);
      i++;
    }
    const pairs = (end - i) >>> 3;
    const w = new Int32Array(buf.buffer, buf.byteOffset + i, pairs * 2);
    const wEnd = pairs * 2;
    for (let k = 0; k < wEnd; k += 2) {
      const lo = crc ^ w[k]!;
      const hi = w[k + 1]!;
      crc =
        t[0x700 + (lo & 0xff)]! ^
        t[0x600 + ((lo >>> 8) & 0xff)]! ^
        t[0x500 + ((lo >>> 16) & 0xff)]! ^
        t[0x400 + (lo >>> 24)]! ^
        t[0x300 + (hi & 0xff)]! ^
        t[0x200 + ((hi >>> 8) & 0xff)]! ^
        t[0x100 + ((hi >>> 16) & 0xff)]! ^
        t[hi >>> 24]!;
    }
    i += pairs * 8;
  } else {
    const end8 = end - ((end - i) & 7);
    while (i < end8) {
      const lo = crc ^ (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24));
      crc =
        t[0x700 + (lo & 0xff)]! ^
        t[0x600 + ((lo >>> 8) & 0xff)]! ^
        t[0x500 + ((lo >>> 16) & 0xff)]! ^
        t[0x400 + (lo >>> 24)]! ^
        t[0x300 + buf[i + 4]!]! ^
        t[0x200 + buf[i + 5]!]! ^
        t[0x100 + buf[i + 6]!]! ^
        t[buf[i + 7]!]!;
      i += 8;
    }
  }
  while (i < end) {
    crc = t[(crc ^ buf[i]!) & 0xff]! ^ (crc >>> 8);
    i++;
  }
  return ~crc >>> 0;
}
