import t from 'tap';
import { createRng } from '../../../src/util/rng.js';
import { decodeBody, encodeFrame } from '../../../protocol/peer/frame.js';
import {
  buildBatch,
  expandBatch,
  packRaftMessage,
  unpackRaftMessage,
  validateApp,
  validateHello,
  validateRaftMessage,
  wireKindOf,
} from '../../../protocol/peer/messages.js';
import type { HeartbeatMessage, HeartbeatRespMessage, Message } from '../../../src/raft/types.js';
import { plain, sampleMessages } from './samples.js';

function viaWire(x: unknown): unknown {
  return decodeBody(encodeFrame(x).subarray(4));
}

t.test('every Raft message type survives encode, decode and validation unchanged', async (t) => {
  const msgs = sampleMessages();
  t.equal(new Set(msgs.map((m) => m.type)).size, 13, 'all 13 types covered');
  for (const m of msgs) {
    const v = validateRaftMessage(viaWire(m));
    t.not(typeof v, 'string', `type ${m.type}: ${String(v)}`);
    t.same(plain(v), plain(m), `type ${m.type}`);
  }
});

t.test('every Raft message type survives the positional wire form unchanged', async (t) => {
  for (const m of sampleMessages(7, 1, 2)) {
    const wire = viaWire(packRaftMessage(m));
    t.ok(Array.isArray(wire));
    const v = unpackRaftMessage(wire, 1, 2);
    t.not(typeof v, 'string', `type ${m.type}: ${String(v)}`);
    t.same(plain(v), plain(m), `type ${m.type}`);
  }
  const append = sampleMessages()[4]!;
  const named = encodeFrame(append).length;
  const positional = encodeFrame(packRaftMessage(append)).length;
  t.ok(positional < named - 60, `positional ${positional} B vs named ${named} B`);
});

type WireMutation = [typeIndex: number, label: string, mutate: (w: unknown[]) => void, expect: RegExp];
const wireCases: WireMutation[] = [
  [0, 'not an array', (w) => (w.length = 0), /^message\.type/],
  [0, 'unknown type', (w) => (w[0] = 99), /^message\.type: expected a message type/],
  [0, 'missing field', (w) => w.pop(), /^Vote: expected 6 fields, got 5/],
  [0, 'extra field', (w) => w.push(1), /^Vote: expected 6 fields, got 7/],
  [0, 'negative group', (w) => (w[1] = -1), /^Vote\.group/],
  [2, 'float term', (w) => (w[2] = 1.5), /^VoteResp\.term/],
  [0, 'transfer number', (w) => (w[5] = 0), /^Vote\.transfer/],
  [3, 'reject string', (w) => (w[3] = 'y'), /^PreVoteResp\.reject/],
  [4, 'prevTerm above term', (w) => (w[4] = 99), /^Append\.prevTerm/],
  [4, 'entries not tuples', (w) => (w[6] = [1, 0]), /^Append\.entries: expected an array of 3-tuples/],
  [4, 'entry term decreasing', (w) => ((w[6] as unknown[])[6] = 3), /^Append\.entries\[2\]\.term/],
  [4, 'entry type unknown', (w) => ((w[6] as unknown[])[1] = 7), /^Append\.entries\[0\]\.type/],
  [4, 'entry data string', (w) => ((w[6] as unknown[])[2] = 'x'), /^Append\.entries\[0\]\.data: expected bytes/],
  [6, 'index bigint', (w) => (w[3] = 5n), /^AppendResp\.index/],
  [7, 'hintTerm negative', (w) => (w[6] = -1), /^AppendResp\.hintTerm/],
  [8, 'commit string', (w) => (w[3] = '1'), /^Heartbeat\.commit/],
  [9, 'ctx null', (w) => (w[3] = null), /^HeartbeatResp\.ctx/],
  [10, 'voters not array', (w) => (w[5] = 3), /^Snapshot\.meta\.conf\.voters/],
  [10, 'learner 0', (w) => (w[6] = [0]), /^Snapshot\.meta\.conf\.learners\[0\]/],
  [10, 'meta.term above term', (w) => (w[4] = 6), /^Snapshot\.meta\.term/],
  [10, 'data number', (w) => (w[8] = 1), /^Snapshot\.data/],
  [10, 'done missing', (w) => (w[9] = undefined), /^Snapshot\.done/],
  [11, 'offset negative', (w) => (w[3] = -1), /^SnapshotResp\.offset/],
  [13, 'ctx number', (w) => (w[3] = 1), /^ReadIndex\.ctx/],
  [14, 'index float', (w) => (w[4] = 0.5), /^ReadIndexResp\.index/],
];

t.test('each malformed field of the positional form is refused with its name', async (t) => {
  for (const [i, label, mutate, expect] of wireCases) {
    const w = viaWire(packRaftMessage(sampleMessages()[i]!)) as unknown[];
    mutate(w);
    const v = unpackRaftMessage(w, 1, 2);
    t.type(v, 'string', label);
    t.match(v, expect, label);
  }
  t.match(unpackRaftMessage({ type: 1 }, 1, 2), /^message: expected an array/);
  const many = viaWire(packRaftMessage({ ...(sampleMessages()[5] as Message & { entries: unknown[] }),
    entries: Array.from({ length: 5 }, (_, i) => ({ term: 5, index: 13 + i, type: 0, data: new Uint8Array(0) })) } as Message));
  t.match(unpackRaftMessage(many, 1, 2, { entriesPerMessageMax: 4, confNodesMax: 8 }), /^Append\.entries: expected at most 4, got 5/);
});

t.test('validation returns a fresh object without unknown fields', async (t) => {
  const raw = { ...sampleMessages()[0]!, extra: 'x', __proto__: { polluted: true } } as unknown;
  const wire = viaWire(raw) as Record<string, unknown>;
  const v = validateRaftMessage(wire) as unknown as Record<string, unknown>;
  t.not(v, wire);
  t.notOk('extra' in v);
  t.equal(Object.getPrototypeOf(v), Object.prototype);
  t.equal(v['polluted'], undefined);
});

type Mutation = [typeIndex: number, label: string, mutate: (m: Record<string, unknown>) => void, expect: RegExp];

// Index into sampleMessages(): 0 Vote, 1 PreVote, 2 VoteResp, 3 PreVoteResp, 4 Append, 5 empty Append, 6 AppendResp,
// 7 AppendResp reject, 8 Heartbeat, 9 HeartbeatResp, 10 Snapshot, 11 SnapshotResp, 12 TimeoutNow, 13 ReadIndex,
// 14 ReadIndexResp.
const entries = (m: Record<string, unknown>): Array<Record<string, unknown>> => m['entries'] as Array<Record<string, unknown>>;
const meta = (m: Record<string, unknown>): Record<string, unknown> => m['meta'] as Record<string, unknown>;
const conf = (m: Record<string, unknown>): Record<string, unknown> => meta(m)['conf'] as Record<string, unknown>;
const cases: Mutation[] = [
  // common fields, checked on several types
  [0, 'unknown type', (m) => (m['type'] = 14), /^message\.type: expected a message type/],
  [0, 'type 0', (m) => (m['type'] = 0), /^message\.type/],
  [0, 'string type', (m) => (m['type'] = '1'), /^message\.type/],
  [0, 'negative group', (m) => (m['group'] = -1), /^Vote\.group/],
  [2, 'fractional group', (m) => (m['group'] = 1.5), /^VoteResp\.group/],
  [4, 'from 0', (m) => (m['from'] = 0), /^Append\.from: expected a node id, got 0/],
  [6, 'to missing', (m) => delete m['to'], /^AppendResp\.to/],
  [8, 'unsafe term', (m) => (m['term'] = 2 ** 53), /^Heartbeat\.term/],
  [12, 'NaN term', (m) => (m['term'] = NaN), /^TimeoutNow\.term/],
  [12, 'bigint term', (m) => (m['term'] = 5n), /^TimeoutNow\.term/],
  // Vote / PreVote
  [0, 'lastIndex negative', (m) => (m['lastIndex'] = -3), /^Vote\.lastIndex/],
  [1, 'lastTerm string', (m) => (m['lastTerm'] = '4'), /^PreVote\.lastTerm/],
  [0, 'transfer number', (m) => (m['transfer'] = 1), /^Vote\.transfer: expected a boolean/],
  // VoteResp / PreVoteResp
  [2, 'reject missing', (m) => delete m['reject'], /^VoteResp\.reject/],
  [3, 'reject null', (m) => (m['reject'] = null), /^PreVoteResp\.reject/],
  // Append
  [4, 'prevIndex float', (m) => (m['prevIndex'] = 9.5), /^Append\.prevIndex/],
  [4, 'prevTerm above term', (m) => (m['prevTerm'] = 6), /^Append\.prevTerm/],
  [4, 'commit missing', (m) => delete m['commit'], /^Append\.commit/],
  [4, 'entries not an array', (m) => (m['entries'] = {}), /^Append\.entries: expected an array/],
  [4, 'entry not an object', (m) => (entries(m)[1] = 5 as unknown as Record<string, unknown>), /^Append\.entries\[1\]: expected an object/],
  [4, 'entry index gap', (m) => (entries(m)[1]!['index'] = 12), /^Append\.entries\[1\]\.index: expected 11, got 12/],
  [4, 'first entry not after prevIndex', (m) => (m['prevIndex'] = 8), /^Append\.entries\[0\]\.index: expected 9/],
  [4, 'entry term decreasing', (m) => (entries(m)[2]!['term'] = 4), /^Append\.entries\[2\]\.term/],
  [4, 'entry term above message term', (m) => (entries(m)[2]!['term'] = 6), /^Append\.entries\[2\]\.term/],
  [4, 'entry term below prevTerm', (m) => (entries(m)[0]!['term'] = 3), /^Append\.entries\[0\]\.term/],
  [4, 'entry type unknown', (m) => (entries(m)[0]!['type'] = 3), /^Append\.entries\[0\]\.type/],
  [4, 'entry data string', (m) => (entries(m)[0]!['data'] = 'abc'), /^Append\.entries\[0\]\.data: expected bytes/],
  [4, 'entry data array', (m) => (entries(m)[0]!['data'] = [1, 2]), /^Append\.entries\[0\]\.data/],
  // AppendResp
  [6, 'index negative', (m) => (m['index'] = -1), /^AppendResp\.index/],
  [6, 'reject string', (m) => (m['reject'] = 'no'), /^AppendResp\.reject/],
  [7, 'rejectHint missing', (m) => delete m['rejectHint'], /^AppendResp\.rejectHint/],
  [7, 'hintTerm float', (m) => (m['hintTerm'] = 0.1), /^AppendResp\.hintTerm/],
  // Heartbeat / HeartbeatResp
  [8, 'commit negative', (m) => (m['commit'] = -1), /^Heartbeat\.commit/],
  [8, 'ctx bytes', (m) => (m['ctx'] = new Uint8Array(1)), /^Heartbeat\.ctx/],
  [9, 'ctx missing', (m) => delete m['ctx'], /^HeartbeatResp\.ctx/],
  // Snapshot
  [10, 'meta missing', (m) => delete m['meta'], /^Snapshot\.meta: expected an object/],
  [10, 'meta.index negative', (m) => (meta(m)['index'] = -1), /^Snapshot\.meta\.index/],
  [10, 'meta.term above term', (m) => (meta(m)['term'] = 9), /^Snapshot\.meta\.term/],
  [10, 'conf missing', (m) => delete meta(m)['conf'], /^Snapshot\.meta\.conf: expected an object/],
  [10, 'voter 0', (m) => (conf(m)['voters'] = [1, 0]), /^Snapshot\.meta\.conf\.voters\[1\]/],
  [10, 'learners not array', (m) => (conf(m)['learners'] = 4), /^Snapshot\.meta\.conf\.learners/],
  [10, 'too many conf nodes', (m) => (conf(m)['voters'] = Array.from({ length: 1100 }, (_, i) => i + 1)), /^Snapshot\.meta\.conf: expected at most 1024/],
  [10, 'offset float', (m) => (m['offset'] = 1.5), /^Snapshot\.offset/],
  [10, 'data missing', (m) => delete m['data'], /^Snapshot\.data/],
  [10, 'done number', (m) => (m['done'] = 0), /^Snapshot\.done/],
  // SnapshotResp
  [11, 'offset negative', (m) => (m['offset'] = -5), /^SnapshotResp\.offset/],
  [11, 'index string', (m) => (m['index'] = '1'), /^SnapshotResp\.index/],
  [11, 'reject missing', (m) => delete m['reject'], /^SnapshotResp\.reject/],
  // ReadIndex / ReadIndexResp
  [13, 'ctx number', (m) => (m['ctx'] = 5), /^ReadIndex\.ctx: expected bytes/],
  [14, 'ctx missing', (m) => delete m['ctx'], /^ReadIndexResp\.ctx/],
  [14, 'index negative', (m) => (m['index'] = -1), /^ReadIndexResp\.index/],
];

t.test('each malformed field of each message type is refused with its name', async (t) => {
  for (const [i, label, mutate, expect] of cases) {
    const m = viaWire(sampleMessages()[i]) as Record<string, unknown>;
    mutate(m);
    const v = validateRaftMessage(m);
    t.type(v, 'string', label);
    t.match(v, expect, label);
  }
});

t.test('non-objects are refused, never thrown on', async (t) => {
  for (const x of [null, undefined, 5, 'x', [], new Uint8Array(3), [1, 2, 3]]) {
    t.type(validateRaftMessage(x), 'string');
  }
});

t.test('the entries array is bounded', async (t) => {
  const m = sampleMessages()[5] as Message & { entries: unknown[] };
  const many = { ...m, entries: Array.from({ length: 5 }, (_, i) => ({ term: 5, index: 13 + i, type: 0, data: new Uint8Array(0) })) };
  t.not(typeof validateRaftMessage(many), 'string');
  t.match(validateRaftMessage(many, { entriesPerMessageMax: 4, confNodesMax: 8 }), /^Append\.entries: expected at most 4, got 5/);
});

t.test('coalesced heartbeats expand to exactly the messages sent (lossless)', async (t) => {
  const rng = createRng(7);
  const sent: Message[] = [];
  for (let g = 0; g < 500; g++) {
    const hb: HeartbeatMessage = { type: 7, group: g, from: 3, to: 9, term: rng.int(0, 2 ** 31) * 1000 + g, commit: rng.int(0, 2 ** 31), ctx: rng.int(0, 3) };
    const hr: HeartbeatRespMessage = { type: 8, group: g * 2, from: 3, to: 9, term: rng.int(0, 1000), ctx: rng.int(0, 100) };
    sent.push(hb, hr);
  }
  // large values near the top of the safe range survive too
  sent.push({ type: 7, group: 2 ** 40, from: 3, to: 9, term: Number.MAX_SAFE_INTEGER, commit: 2 ** 52, ctx: 2 ** 33 });
  const body = buildBatch(sent);
  t.equal(body.m.length, 0, 'no heartbeat travels as an object');
  t.equal(body.hb.length, 501 * 4);
  t.equal(body.hr.length, 500 * 3);
  const frame = encodeFrame(body);
  const out: Message[] = [];
  t.equal(expandBatch(decodeBody(frame.subarray(4)) as Record<string, unknown>, 3, 9, out), null);
  const byType = (ms: Message[], type: number): Message[] => ms.filter((m) => m.type === type);
  t.same(byType(out, 7), byType(sent, 7), 'heartbeats identical, in order');
  t.same(byType(out, 8), byType(sent, 8), 'heartbeat responses identical, in order');
  const objectsFrame = encodeFrame({ k: 4, m: sent, hb: [], hr: [] });
  t.ok(frame.length * 2 < objectsFrame.length, `coalesced ${frame.length} B vs ${objectsFrame.length} B as objects`);
});

t.test('a mixed batch keeps the order of non-heartbeat messages', async (t) => {
  const msgs = [...sampleMessages(1), ...sampleMessages(2)];
  const out: Message[] = [];
  t.equal(expandBatch(viaWire(buildBatch(msgs)) as Record<string, unknown>, 1, 2, out), null);
  const notHb = (m: Message): boolean => m.type !== 7 && m.type !== 8;
  t.same(plain(out.filter(notHb)), plain(msgs.filter(notHb)));
  t.equal(out.length, msgs.length);
});

t.test('from and to come from the link, never from the wire', async (t) => {
  const out: Message[] = [];
  const frame = encodeFrame(buildBatch(sampleMessages(1, 5, 3)));
  t.notOk(frame.includes(Buffer.from('from')), 'no field names on the wire');
  t.equal(expandBatch(decodeBody(frame.subarray(4)) as Record<string, unknown>, 1, 2, out), null);
  t.ok(out.length === 15 && out.every((m) => m.from === 1 && m.to === 2));
});

t.test('malformed batch arrays are refused', async (t) => {
  t.match(expandBatch({ k: 4, m: {}, hb: [], hr: [] }, 1, 2, []), /^batch\.m: expected an array/);
  t.match(expandBatch({ k: 4, m: [], hb: [1, 2, 3], hr: [] }, 1, 2, []), /^batch\.hb: expected an array of 4-tuples/);
  t.match(expandBatch({ k: 4, m: [], hb: [], hr: [1, 2] }, 1, 2, []), /^batch\.hr/);
  t.match(expandBatch({ k: 4, m: [], hb: [1, 2, -3, 0], hr: [] }, 1, 2, []), /^batch\.hb\[0\]/);
  t.match(expandBatch({ k: 4, m: [], hb: [], hr: [1, 'a', 0] }, 1, 2, []), /^batch\.hr\[0\]/);
  t.match(expandBatch({ k: 4, m: [[99]], hb: [], hr: [] }, 1, 2, []), /^batch\.m\[0\]: message\.type/);
  t.match(expandBatch({ k: 4, hb: [], hr: [] }, 1, 2, []), /^batch\.m/);
});

t.test('envelope checks for HELLO and APP', async (t) => {
  const hello = { k: 1, v: 1, cluster: 'c', node: 2, worker: 0, topo: 't', auth: false, challenge: new Uint8Array(32) };
  t.not(typeof validateHello(hello), 'string');
  t.match(validateHello({ ...hello, challenge: new Uint8Array(31) }), /^hello\.challenge/);
  t.match(validateHello({ ...hello, cluster: 'x'.repeat(2000) }), /^hello\.cluster/);
  t.match(validateHello({ ...hello, node: 0 }), /^hello\.node/);
  t.match(validateApp({ k: 5, id: -1, kind: 'req' }), /^app\.id/);
  t.match(validateApp({ k: 5, id: 1, kind: 'push' }), /^app\.kind/);
  t.same(validateApp({ k: 5, id: 1, kind: 'res', payload: [1] }), { k: 5, id: 1, kind: 'res', payload: [1] });
  t.equal(wireKindOf({ k: 4 }), 4);
  t.equal(wireKindOf({ k: 9 }), null);
  t.equal(wireKindOf([4]), null);
});
