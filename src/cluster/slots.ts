/**
 * Key -> slot, exactly as Redis Cluster computes it: CRC16 (XMODEM) of the key, or of its hashtag (the part
 * between the first `{` and the next `}`, when non-empty), modulo 16384. Keeping Redis' mapping means ioredis
 * `Cluster` and `redis-cli -c` route to the right node unchanged, and `{user1}.lock` and `{user1}.queue` share
 * a slot (and therefore a shard).
 */
export const SLOTS = 16384;

const TABLE = new Uint16Array(256);
for (let i = 0; i < 256; i++) {
  let crc = i << 8;
  for (let j = 0; j < 8; j++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  TABLE[i] = crc;
}

/** CRC16-CCITT (XMODEM: poly 0x1021, init 0), over bytes [start, end). */
export function crc16(buf: Uint8Array, start = 0, end = buf.length): number {
  let crc = 0;
  for (let i = start; i < end; i++) crc = ((crc << 8) & 0xffff) ^ TABLE[((crc >> 8) ^ buf[i]!) & 0xff]!;
  return crc;
}

/** The Redis Cluster hash slot of a key (binary-safe). */
export function keySlot(key: Uint8Array): number {
  const open = key.indexOf(0x7b /* { */);
  if (open >= 0) {
    const close = key.indexOf(0x7d /* } */, open + 1);
    if (close > open + 1) return crc16(key, open + 1, close) & (SLOTS - 1);
  }
  return crc16(key) & (SLOTS - 1);
}
