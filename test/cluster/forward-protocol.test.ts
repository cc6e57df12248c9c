/**
 * The forwarded-batch wire form (src/cluster/forward-protocol.ts): requests and results round-trip exactly, and
 * every malformed payload a peer could send is refused with a ForwardProtocolError before anything is allocated
 * from its lengths or applied.
 */
import t from 'tap';
import {
  encodeForwardResults,
  FORWARD_BATCH_REQUESTS_MAX,
  ForwardProtocolError,
  forwardRequest,
  parseForwardRequest,
  parseForwardResults,
  type ForwardItem,
  type ForwardResult,
} from '../../src/cluster/forward-protocol.js';
import { RequestKind, SHARD_ERROR_CODES } from '../../src/cluster/worker-protocol.js';

const B = (s: string): Buffer => Buffer.from(s, 'latin1');
const SHARDS = 16;

/** Whether `f` throws a ForwardProtocolError whose message matches `re`. */
function refusal(f: () => unknown, re: RegExp): boolean {
  try {
    f();
  } catch (e) {
    return e instanceof ForwardProtocolError && re.test(e.message);
  }
  return false;
}

t.test('a batch of requests round-trips: shards, kinds, binary-safe arguments, in order', async (t) => {
  const items: ForwardItem[] = [
    [0, RequestKind.Write, [B('set'), B('k'), B('v')]],
    [15, RequestKind.Read, [B('get'), B('k\u00e9')]],
    [7, RequestKind.Write, [B('set'), Buffer.from([0, 13, 10, 255]), Buffer.alloc(70_000, 1), Buffer.alloc(0)]],
  ];
  const back = parseForwardRequest(forwardRequest(items), SHARDS);
  t.same(
    back.map((r) => [r.shard, r.kind, r.args.map((a) => a.toString('hex'))]),
    items.map(([s, k, args]) => [s, k, args.map((a) => Buffer.from(a).toString('hex'))]),
  );
  t.ok(back.every((r) => r.args.every((a) => Buffer.isBuffer(a))), 'arguments come back as Buffers');
  t.same(parseForwardRequest(forwardRequest([]), SHARDS), [], 'an empty batch');
});

t.test('results round-trip: records and errors with their code, leader and message', async (t) => {
  const results: ForwardResult[] = [
    [0, B('+OK\r\n')],
    [1, SHARD_ERROR_CODES.indexOf('NOTLEADER'), 3, 'shard 4 is led by node 3 \u2014 retry'],
    [0, Buffer.alloc(0)],
    [1, 0, 0, ''],
  ];
  const back = parseForwardResults(encodeForwardResults(results), results.length);
  t.same(
    back.map((r) => (r[0] === 0 ? [0, Buffer.from(r[1]).toString('latin1')] : r)),
    results.map((r) => (r[0] === 0 ? [0, Buffer.from(r[1]).toString('latin1')] : r)),
  );
});

t.test('malformed requests are refused with a ForwardProtocolError', async (t) => {
  const good = forwardRequest([[3, RequestKind.Write, [B('set'), B('k'), B('v')]]]).f;
  const refused = (payload: unknown, re: RegExp, what: string): void => void t.ok(refusal(() => parseForwardRequest(payload, SHARDS), re), what);
  refused({ f: [] }, /expected \{ f: bytes \}/, 'the old array form');
  refused(null, /expected/, 'no payload');
  refused({ f: good.subarray(0, good.length - 1) }, /truncated/, 'one byte short');
  refused({ f: Buffer.concat([good, Buffer.from([0])]) }, /after the last item/, 'one byte too many');
  const badShard = Buffer.from(good);
  badShard.writeUInt32LE(SHARDS, 4);
  refused({ f: badShard }, /bad shard 16/, 'a shard this cluster does not have');
  const badKind = Buffer.from(good);
  badKind[8] = 9;
  refused({ f: badKind }, /bad kind 9/, 'an unknown kind');
  const noArgs = Buffer.from(good);
  noArgs.writeUInt32LE(0, 9);
  refused({ f: noArgs }, /bad argument list/, 'no arguments');
  const hugeArgc = Buffer.from(good);
  hugeArgc.writeUInt32LE(0xffffffff, 9);
  refused({ f: hugeArgc }, /bad argument list/, 'an argument count beyond the payload');
  const hugeLen = Buffer.from(good);
  hugeLen.writeUInt32LE(0xfffffff0, 13);
  refused({ f: hugeLen }, /truncated/, 'an argument length beyond the payload');
  const hugeCount = Buffer.from(good);
  hugeCount.writeUInt32LE(FORWARD_BATCH_REQUESTS_MAX + 1, 0);
  refused({ f: hugeCount }, /requests >/, 'more requests than FORWARD_BATCH_REQUESTS_MAX');
  const lyingCount = Buffer.from(good);
  lyingCount.writeUInt32LE(1000, 0);
  refused({ f: lyingCount }, /cannot fit/, 'a count the payload cannot hold');
});

t.test('malformed results are refused with a ForwardProtocolError', async (t) => {
  const good = encodeForwardResults([[0, B('+OK\r\n')], [1, 1, 2, 'x']]);
  const refused = (payload: unknown, count: number, re: RegExp, what: string): void => void t.ok(refusal(() => parseForwardResults(payload, count), re), what);
  refused([[0, B('+OK\r\n')]], 1, /as bytes/, 'the old array form');
  refused(good, 3, /expected 3 results, got 2/, 'a different count');
  refused(good.subarray(0, good.length - 1), 2, /truncated/, 'one byte short');
  refused(Buffer.concat([good, Buffer.from([7])]), 2, /after the last item/, 'one byte too many');
  const badStatus = Buffer.from(good);
  badStatus[4] = 5;
  refused(badStatus, 2, /status 5/, 'an unknown status');
  const badCode = Buffer.from(good);
  badCode[4 + 5 + 5 + 1] = 200;
  refused(badCode, 2, /unknown error code 200/, 'an error code outside SHARD_ERROR_CODES');
  // Random bytes: always an answer or a ForwardProtocolError, never another exception.
  const others: string[] = [];
  for (let i = 0; i < 2000; i++) {
    const junk = Buffer.from(Array.from({ length: 1 + (i % 40) }, (_, j) => (i * 89 + j * 211 + (i >> 2)) & 0xff));
    for (const parse of [() => parseForwardResults(junk, junk[0]! & 3), () => parseForwardRequest({ f: junk }, SHARDS)]) {
      try {
        parse();
      } catch (e) {
        if (!(e instanceof ForwardProtocolError)) others.push(String(e));
      }
    }
  }
  t.same(others, [], 'no other exception escapes either parser');
});
