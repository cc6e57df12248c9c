/**
 * latin1String(b): the bytes of `b` as a string of char codes 0-255 (what `b.toString('latin1')` returns), made
 * faster for short buffers. Keys are short, and every keyspace command turns its key into a string to look it up:
 * `toString('latin1')` is a call into C++ costing about 200 ns on this machine whatever the length, while
 * `String.fromCharCode` with the bytes as arguments stays in V8 (about 70 ns for 16 bytes). Both give a flat
 * one-byte string, so Map lookups and hashing see no difference. Buffers longer than SHORT_BYTES take the C++ way.
 */
const SHORT_BYTES = 16;
const fcc = String.fromCharCode;

export function latin1String(b: Uint8Array): string {
  const n = b.length;
  if (n > SHORT_BYTES) return Buffer.prototype.latin1Slice.call(b, 0, n);
  switch (n) {
    case 0:
      return '';
    case 1:
      return fcc(b[0]!);
    case 2:
      return fcc(b[0]!, b[1]!);
    case 3:
      return fcc(b[0]!, b[1]!, b[2]!);
    case 4:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!);
    case 5:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!);
    case 6:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!);
    case 7:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!);
    case 8:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!, b[7]!);
    case 9:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!, b[7]!, b[8]!);
    case 10:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!, b[7]!, b[8]!, b[9]!);
    case 11:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!, b[7]!, b[8]!, b[9]!, b[10]!);
    case 12:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!, b[7]!, b[8]!, b[9]!, b[10]!, b[11]!);
    case 13:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!, b[7]!, b[8]!, b[9]!, b[10]!, b[11]!, b[12]!);
    case 14:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!, b[7]!, b[8]!, b[9]!, b[10]!, b[11]!, b[12]!, b[13]!);
    case 15:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!, b[7]!, b[8]!, b[9]!, b[10]!, b[11]!, b[12]!, b[13]!, b[14]!);
    default:
      return fcc(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!, b[7]!, b[8]!, b[9]!, b[10]!, b[11]!, b[12]!, b[13]!, b[14]!, b[15]!);
  }
}
