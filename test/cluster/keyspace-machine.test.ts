import t from 'tap';
import { ReplyWriter } from '../../protocol/resp/writer.js';
import { CacheStore, entryBytes } from '../../src/cache/store.js';
import { STRING_COMMANDS } from '../../src/cache/string-commands.js';
import {
  KEYSPACE_ENTRY_VERSION,
  KeyspaceEntryError,
  KeyspaceEntryKind,
  decodeEntry,
  encodeConfig,
  encodeSweep,
  encodeWrite,
} from '../../src/cluster/keyspace-codec.js';
import { ERR_OOM, KEYSPACE_SNAPSHOT_VERSION, KeyspaceMachine, isReplicatedWrite } from '../../src/cluster/keyspace-machine.js';
import { ReplyRecordError, ReplyRecorder, replayReply } from '../../src/cluster/keyspace-reply.js';
import { EntryType, type Entry } from '../../src/raft/types.js';
import type { ClientState, CommandContext, CommandSpec } from '../../src/server/command.js';
import { createRng, type Rng } from '../../src/util/rng.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const argv = (...a: string[]): Buffer[] => a.map(b);
const T0 = 1_700_000_000_000;

let nextIndex = 1;
function entry(data: Uint8Array): Entry {
  return { term: 1, index: nextIndex++, type: EntryType.Normal, data };
}

/** Applies a write and returns its reply as RESP2 text. */
function write(m: KeyspaceMachine, stamp: number, ...args: string[]): string {
  return resp(m.apply(entry(encodeWrite(argv(...args), stamp))));
}

function resp(result: unknown, proto: 2 | 3 = 2): string {
  if (!(result instanceof Uint8Array)) throw new Error(`not a reply record: ${String(result)}`);
  const w = new ReplyWriter(proto);
  replayReply(result, w);
  return w.take().toString('latin1');
}

function read(m: KeyspaceMachine, now: number, ...args: string[]): string {
  const w = new ReplyWriter(2);
  m.read(argv(...args), now, w);
  return w.take().toString('latin1');
}

function snap(m: KeyspaceMachine): Buffer {
  return Buffer.from(m.snapshot());
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof KeyspaceEntryError) return err.code;
    throw err;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------------------------
t.test('a write entry round-trips its arguments and stamp, binary-safe', async (t) => {
  const args = [b('SET'), Buffer.from([0, 255, 13, 10]), Buffer.alloc(0), Buffer.alloc(300, 7)];
  const data = encodeWrite(args, T0);
  t.equal(data[0], KEYSPACE_ENTRY_VERSION);
  const e = decodeEntry(data);
  if (e.kind !== KeyspaceEntryKind.Write) throw new Error('kind');
  t.equal(e.stampMs, T0);
  t.same(
    e.args.map((a) => a.toString('hex')),
    args.map((a) => a.toString('hex')),
  );
  t.equal(encodeWrite(argv('SET', 'key:000123', 'abc'), T0).length, 30, 'a typical SET is 30 bytes');
});

t.test('sweep and config entries round-trip', async (t) => {
  const s = decodeEntry(encodeSweep(5, argv('a', 'bb')));
  t.same(s.kind === KeyspaceEntryKind.Sweep && s.keys.map(String), ['a', 'bb']);
  t.equal(s.stampMs, 5);
  const c = decodeEntry(encodeConfig(6, 123456));
  t.same(c.kind === KeyspaceEntryKind.Config && [c.stampMs, c.keyspaceBytesMax], [6, 123456]);
});

t.test('encoders refuse a bad stamp, no arguments and a bad limit', async (t) => {
  t.throws(() => encodeWrite(argv('SET', 'k', 'v'), -1), RangeError);
  t.throws(() => encodeWrite(argv('SET', 'k', 'v'), 1.5), RangeError);
  t.throws(() => encodeWrite([], 1), RangeError);
  t.throws(() => encodeConfig(1, -1), RangeError);
});

t.test('a truncated, padded or altered entry throws KeyspaceEntryError KEYSPACE_CORRUPT', async (t) => {
  const data = Buffer.from(encodeWrite(argv('SET', 'key', 'value'), T0));
  for (let n = 0; n < data.length; n++) {
    t.equal(codeOf(() => decodeEntry(data.subarray(0, n))), 'KEYSPACE_CORRUPT', `prefix of ${n} bytes`);
  }
  t.equal(codeOf(() => decodeEntry(Buffer.concat([data, Buffer.from([0])]))), 'KEYSPACE_CORRUPT', 'trailing byte');
  const bad = (at: number, v: number): Buffer => {
    const c = Buffer.from(data);
    c[at] = v;
    return c;
  };
  t.equal(codeOf(() => decodeEntry(bad(0, 0))), 'KEYSPACE_CORRUPT', 'version 0');
  t.equal(codeOf(() => decodeEntry(bad(1, 9))), 'KEYSPACE_CORRUPT', 'unknown kind');
  t.equal(codeOf(() => decodeEntry(bad(10, 0))), 'KEYSPACE_CORRUPT', 'no arguments');
  t.equal(codeOf(() => decodeEntry(bad(10, 200))), 'KEYSPACE_CORRUPT', 'count beyond the data');
  const nan = Buffer.from(data);
  nan.writeDoubleLE(Number.NaN, 2);
  t.equal(codeOf(() => decodeEntry(nan)), 'KEYSPACE_CORRUPT', 'NaN stamp');
  const neg = Buffer.from(data);
  neg.writeDoubleLE(-5, 2);
  t.equal(codeOf(() => decodeEntry(neg)), 'KEYSPACE_CORRUPT', 'negative stamp');
  t.equal(codeOf(() => decodeEntry(Buffer.from([1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1]))), 'KEYSPACE_CORRUPT', 'short config');
  const err = (() => {
    try {
      decodeEntry(bad(10, 200));
    } catch (e) {
      return e as Error;
    }
    return undefined;
  })();
  t.match(err?.message, /corrupt keyspace entry/);
  t.equal(err?.name, 'KeyspaceEntryError');
});

t.test('an entry of a newer format version throws KEYSPACE_VERSION, naming the version', async (t) => {
  const data = Buffer.from(encodeWrite(argv('SET', 'k', 'v'), T0));
  data[0] = KEYSPACE_ENTRY_VERSION + 1;
  t.equal(codeOf(() => decodeEntry(data)), 'KEYSPACE_VERSION');
  t.throws(() => decodeEntry(data), { message: /version 2.*upgrade this node/ });
  const m = new KeyspaceMachine();
  t.equal(codeOf(() => m.apply(entry(data))), 'KEYSPACE_VERSION');
  t.equal(m.lastStampMs, 0, 'nothing applied');
});

t.test('random garbage never decodes into anything but an entry or KeyspaceEntryError', async (t) => {
  const rng = createRng(7);
  let errors = 0;
  for (let i = 0; i < 3000; i++) {
    const g = Buffer.alloc(rng.int(0, 40));
    for (let j = 0; j < g.length; j++) g[j] = rng.int(0, 256);
    if (g.length > 1 && rng.chance(0.7)) g[0] = 1; // mostly get past the version byte
    if (g.length > 2 && rng.chance(0.7)) g[1] = rng.int(1, 4);
    try {
      decodeEntry(g);
    } catch (err) {
      if (!(err instanceof KeyspaceEntryError)) throw err;
      errors++;
    }
  }
  t.ok(errors > 2500, `${errors} of 3000 refused`);
});

t.test('an entry naming a command that is not a replicated write, or with a wrong arity, throws KEYSPACE_COMMAND', async (t) => {
  const m = new KeyspaceMachine();
  t.equal(codeOf(() => m.apply(entry(encodeWrite(argv('GET', 'k'), 1)))), 'KEYSPACE_COMMAND');
  t.equal(codeOf(() => m.apply(entry(encodeWrite(argv('NOSUCH'), 1)))), 'KEYSPACE_COMMAND');
  t.equal(codeOf(() => m.apply(entry(encodeWrite(argv('SET', 'k'), 1)))), 'KEYSPACE_COMMAND');
  t.equal(codeOf(() => m.apply(entry(encodeWrite(argv('INCR', 'k', 'x'), 1)))), 'KEYSPACE_COMMAND');
  t.equal(m.lastStampMs, 0, 'a refused entry changes nothing');
  t.equal(write(m, 1, 'sEt', 'k', 'v'), '+OK\r\n', 'names are case-insensitive');
});

t.test('non-Normal entries are ignored', async (t) => {
  const m = new KeyspaceMachine();
  t.equal(m.apply({ term: 1, index: 1, type: EntryType.Noop, data: new Uint8Array(0) }), undefined);
  t.equal(m.store.size, 0);
});

// ---------------------------------------------------------------------------------------------------------------
// Reply records
// ---------------------------------------------------------------------------------------------------------------
t.test('a reply record replays every ReplySink call exactly, in RESP2 and in RESP3', async (t) => {
  const script = (s: ReplyRecorder | ReplyWriter): void => {
    s.ok();
    s.simple('PONG');
    s.error('ERR bad thing\r\nx');
    s.integer(0);
    s.integer(-42);
    s.integer(2 ** 53 - 1);
    s.integer(9223372036854775807n);
    s.integer(-9223372036854775808n);
    s.bulk(Buffer.from([0, 1, 2, 255]));
    s.bulk('héllo');
    s.bulk(Buffer.alloc(100, 0x61));
    s.bulkRange(Buffer.from('--range--'), 2, 7);
    s.bulkRange(Buffer.alloc(120, 0x62), 10, 110);
    s.nil();
    s.nilArray();
    s.arrayHeader(3);
    s.mapHeader(2);
    s.setHeader(1);
    s.pushHeader(4);
    s.double(1.5);
    s.double(-Infinity);
    s.boolean(true);
    s.boolean(false);
    s.verbatim('some text', 'mkd');
  };
  for (const proto of [2, 3] as const) {
    const direct = new ReplyWriter(proto);
    script(direct);
    const rec = new ReplyRecorder();
    script(rec);
    const replayed = new ReplyWriter(proto);
    replayReply(rec.take(), replayed);
    t.equal(replayed.take().toString('latin1'), direct.take().toString('latin1'), `RESP${proto}`);
  }
});

t.test('records taken earlier stay valid while later ones are written, and truncate() drops calls', async (t) => {
  const rec = new ReplyRecorder();
  const records: Uint8Array[] = [];
  for (let i = 0; i < 5000; i++) {
    rec.bulk(`value-${i}`);
    records.push(rec.take());
  }
  t.equal(resp(records[0]), '$7\r\nvalue-0\r\n');
  t.equal(resp(records[4999]), '$10\r\nvalue-4999\r\n');
  rec.ok();
  const mark = rec.mark();
  rec.integer(5);
  rec.truncate(mark);
  rec.error('OOM x');
  t.equal(resp(rec.take()), '+OK\r\n-OOM x\r\n');
  t.equal(rec.take().length, 0, 'nothing pending');
  t.throws(() => rec.truncate(mark + 100), RangeError);
});

t.test('a malformed reply record throws ReplyRecordError', async (t) => {
  const w = new ReplyWriter(2);
  t.throws(() => replayReply(Buffer.from([99]), w), ReplyRecordError);
  t.throws(() => replayReply(Buffer.from([6, 10, 0, 0, 0, 1]), w), ReplyRecordError, 'bulk runs past the end');
  t.throws(() => replayReply(Buffer.from([4, 0, 0]), w), ReplyRecordError, 'truncated integer');
  t.throws(() => replayReply(Buffer.from([5, 2, 0x41, 0x42]), w), ReplyRecordError, 'big integer of letters');
});

// ---------------------------------------------------------------------------------------------------------------
// Command classification
// ---------------------------------------------------------------------------------------------------------------
t.test('isReplicatedWrite is exactly the write flag, and read() refuses writes', async (t) => {
  const writes = STRING_COMMANDS.filter(isReplicatedWrite).map((s) => s.name);
  t.ok(writes.includes('set') && writes.includes('flushall') && writes.includes('getex'));
  t.notOk(writes.includes('get') || writes.includes('scan') || writes.includes('ttl'));
  for (const s of STRING_COMMANDS) t.equal(isReplicatedWrite(s), s.flags.includes('write'), s.name);
  const m = new KeyspaceMachine();
  t.throws(() => m.read(argv('SET', 'k', 'v'), 1, new ReplyWriter(2)), TypeError);
  t.throws(() => m.read(argv('NOSUCH'), 1, new ReplyWriter(2)), TypeError);
  t.equal(read(m, 1, 'GET'), "-ERR wrong number of arguments for 'get' command\r\n");
});

// ---------------------------------------------------------------------------------------------------------------
// Random command generation (shared by the result and determinism tests)
// ---------------------------------------------------------------------------------------------------------------
const KEYS = ['k0', 'k1', 'k2', 'k3', 'k4', 'k5', '{t}a', '{t}b'];

function pick<T>(rng: Rng, xs: readonly T[]): T {
  return xs[rng.int(0, xs.length)] as T;
}

function randomValue(rng: Rng): string {
  switch (rng.int(0, 5)) {
    case 0:
      return String(rng.int(-1000, 1000));
    case 1:
      return (rng.next() * 100 - 50).toFixed(rng.int(0, 4));
    case 2:
      return '';
    case 3:
      return 'x'.repeat(rng.int(1, 200));
    default:
      return `v${rng.int(0, 1_000_000)}`;
  }
}

/** A random write command line over KEYS at about time `now`. */
function randomWrite(rng: Rng, now: number): string[] {
  const k = (): string => pick(rng, KEYS);
  const ms = (): string => String(rng.int(1, 400));
  const secs = (): string => String(rng.int(1, 3));
  switch (rng.int(0, 24)) {
    case 0:
    case 1:
    case 2: {
      const cmd = ['SET', k(), randomValue(rng)];
      if (rng.chance(0.3)) cmd.push(pick(rng, ['NX', 'XX']));
      if (rng.chance(0.3)) cmd.push('GET');
      const x = rng.int(0, 7);
      if (x === 0) cmd.push('PX', ms());
      else if (x === 1) cmd.push('EX', secs());
      else if (x === 2) cmd.push('PXAT', String(now + rng.int(-100, 400)));
      else if (x === 3) cmd.push('EXAT', String(Math.floor(now / 1000) + rng.int(0, 2)));
      else if (x === 4) cmd.push('KEEPTTL');
      if (rng.chance(0.03)) cmd.push('BOGUS');
      return cmd;
    }
    case 3:
      return ['SETNX', k(), randomValue(rng)];
    case 4:
      return ['PSETEX', k(), ms(), randomValue(rng)];
    case 5:
      return ['SETEX', k(), rng.chance(0.1) ? '0' : secs(), randomValue(rng)];
    case 6:
      return ['INCR', k()];
    case 7:
      return ['INCRBY', k(), String(rng.int(-50, 50))];
    case 8:
      return ['DECRBY', k(), String(rng.int(-50, 50))];
    case 9:
      return ['INCRBYFLOAT', k(), (rng.next() * 10 - 5).toFixed(rng.int(0, 5))];
    case 10:
      return ['APPEND', k(), randomValue(rng)];
    case 11:
      return ['SETRANGE', k(), String(rng.int(0, 40)), randomValue(rng)];
    case 12:
      return ['DEL', k(), ...(rng.chance(0.5) ? [k()] : [])];
    case 13:
      return ['UNLINK', k()];
    case 14: {
      const cmd = [pick(rng, ['EXPIRE', 'PEXPIRE']), k(), rng.chance(0.1) ? '-1' : ms()];
      if (rng.chance(0.3)) cmd.push(pick(rng, ['NX', 'XX', 'GT', 'LT']));
      return cmd;
    }
    case 15:
      return ['PEXPIREAT', k(), String(now + rng.int(-200, 500))];
    case 16:
      return ['EXPIREAT', k(), String(Math.floor(now / 1000) + rng.int(-1, 2))];
    case 17:
      return ['PERSIST', k()];
    case 18:
      return ['GETDEL', k()];
    case 19: {
      const x = rng.int(0, 4);
      const opt = x === 0 ? ['PX', ms()] : x === 1 ? ['PERSIST'] : x === 2 ? ['PXAT', String(now + rng.int(-50, 300))] : [];
      return ['GETEX', k(), ...opt];
    }
    case 20:
      return ['MSET', k(), randomValue(rng), k(), randomValue(rng)];
    case 21:
      return ['MSETNX', k(), randomValue(rng), k(), randomValue(rng)];
    case 22:
      return ['DECR', k()];
    default:
      return rng.chance(0.2) ? ['FLUSHALL'] : ['SET', k(), randomValue(rng)];
  }
}

function randomRead(rng: Rng): string[] {
  const k = (): string => pick(rng, KEYS);
  switch (rng.int(0, 12)) {
    case 0:
      return ['GET', k()];
    case 1:
      return ['MGET', k(), k(), k()];
    case 2:
      return ['EXISTS', k(), k()];
    case 3:
      return ['PTTL', k()];
    case 4:
      return ['TTL', k()];
    case 5:
      return ['STRLEN', k()];
    case 6:
      return ['GETRANGE', k(), String(rng.int(-5, 5)), String(rng.int(-5, 20))];
    case 7:
      return ['TYPE', k()];
    case 8:
      return ['PEXPIRETIME', k()];
    case 9:
      return ['SCAN', String(rng.int(0, 5)), 'COUNT', String(rng.int(1, 10))];
    case 10:
      return ['KEYS', pick(rng, ['*', 'k*', '{t}*'])];
    default:
      return ['RANDOMKEY'];
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Results equal the non-replicated handler's
// ---------------------------------------------------------------------------------------------------------------
const SPECS = new Map<string, CommandSpec>(STRING_COMMANDS.map((s) => [s.name, s]));
const CLIENT: ClientState = {
  id: 1,
  name: '',
  proto: 2,
  authenticated: true,
  user: 'default',
  libName: '',
  libVersion: '',
  closeAfterReply: false,
};

/** The node-local path: the handler on a plain store (delete mode) at time `now`, replying RESP2. */
function plainHarness() {
  const h = { now: 0 };
  const db = new CacheStore({ itemsMax: 0, bytesMax: 0, expireSweepKeysMax: 20, expireSweepIntervalMs: 100 }, () => h.now);
  const run = (now: number, args: string[], proto: 2 | 3 = 2): string => {
    h.now = now;
    const w = new ReplyWriter(proto);
    const spec = SPECS.get((args[0] as string).toLowerCase()) as CommandSpec;
    const ctx: CommandContext = { reply: w, client: CLIENT, db, now };
    void spec.handler(ctx, argv(...args));
    return w.take().toString('latin1');
  };
  return { db, run };
}

t.test('apply returns exactly what the handler replies on a plain store at the same time (RESP2 and RESP3)', async (t) => {
  let compared = 0;
  for (let seed = 1; seed <= 40; seed++) {
    const rng = createRng(seed);
    const m = new KeyspaceMachine();
    const plain = plainHarness();
    let now = T0;
    for (let i = 0; i < 250; i++) {
      now += rng.int(0, 120);
      const proto = rng.chance(0.5) ? 2 : 3;
      if (rng.chance(0.7)) {
        const args = randomWrite(rng, now);
        const got = resp(m.apply(entry(encodeWrite(argv(...args), now))), proto);
        const want = plain.run(now, args, proto);
        if (got !== want) {
          t.equal(got, want, `seed ${seed} step ${i}: ${args.join(' ')}`);
          return;
        }
      } else {
        const args = randomRead(rng);
        if (args[0] === 'SCAN' || args[0] === 'KEYS' || args[0] === 'RANDOMKEY') continue; // orders differ by design
        const w = new ReplyWriter(proto);
        m.read(argv(...args), now, w);
        const got = w.take().toString('latin1');
        const want = plain.run(now, args, proto);
        if (got !== want) {
          t.equal(got, want, `seed ${seed} step ${i}: ${args.join(' ')}`);
          return;
        }
      }
      compared++;
    }
    m.store.checkInvariants();
  }
  t.ok(compared > 9000, `${compared} replies compared`);
});

// ---------------------------------------------------------------------------------------------------------------
// Time and expiry
// ---------------------------------------------------------------------------------------------------------------
t.test('expiry follows the stamps: PX 100 at 1000 is visible at 1099, gone at 1100... and INCR at 1100 starts from 0', async (t) => {
  const m = new KeyspaceMachine();
  t.equal(write(m, 1000, 'SET', 'k', '41', 'PX', '100'), '+OK\r\n');
  t.equal(read(m, 1099, 'GET', 'k'), '$2\r\n41\r\n');
  t.equal(read(m, 1100, 'GET', 'k'), '$2\r\n41\r\n', 'still there at its expire instant (Redis: expired once now > expireAt)');
  t.equal(read(m, 1101, 'GET', 'k'), '$-1\r\n');
  t.equal(m.store.size, 1, 'a read removes nothing (hide mode)');
  t.equal(write(m, 1100, 'INCR', 'k'), ':42\r\n', 'at stamp 1100 the key is still live');

  const m2 = new KeyspaceMachine();
  write(m2, 1000, 'SET', 'k', '41', 'PX', '100');
  t.equal(write(m2, 1101, 'INCR', 'k'), ':1\r\n', 'after its expire time INCR starts from 0');
  t.equal(read(m2, 1101, 'PTTL', 'k'), ':-1\r\n', 'and the new key has no TTL');

  const m3 = new KeyspaceMachine();
  write(m3, 1000, 'SET', 'k', '41', 'PX', '100');
  write(m3, 1000, 'SET', 'other', 'v');
  for (const now of [1101, 5000, 99999]) t.equal(read(m3, now, 'EXISTS', 'k'), ':0\r\n');
  t.equal(m3.store.size, 2, 'physically present until a sweep or a write removes it');
  t.equal(m3.apply(entry(encodeSweep(1200, argv('k', 'other', 'absent')))), 1, 'a sweep removes only expired keys');
  t.equal(m3.store.size, 1);
  t.equal(read(m3, 1200, 'GET', 'other'), '$1\r\nv\r\n');
});

t.test('a write to an expired key removes it physically (hide mode)', async (t) => {
  const m = new KeyspaceMachine();
  write(m, 1000, 'SET', 'k', 'old', 'PX', '10');
  const bytes = m.store.contentBytes;
  t.equal(write(m, 2000, 'APPEND', 'k', 'new'), ':3\r\n');
  t.equal(m.store.contentBytes, bytes, 'same key and value length: the stale value is gone');
  t.equal(write(m, 2000, 'DEL', 'k'), ':1\r\n');
  write(m, 2000, 'SET', 'j', 'v', 'PX', '10');
  t.equal(write(m, 3000, 'DEL', 'j'), ':0\r\n', 'DEL of an expired key answers 0');
  t.equal(m.store.size, 0, 'and removes it');
});

t.test('time never goes backwards in the log: a stamp behind lastStampMs runs at lastStampMs', async (t) => {
  const m = new KeyspaceMachine();
  write(m, 1000, 'SET', 'a', 'v');
  t.equal(m.lastStampMs, 1000);
  write(m, 500, 'SET', 'b', 'v', 'PX', '100');
  t.equal(m.lastStampMs, 1000);
  t.equal(read(m, 1000, 'PEXPIRETIME', 'b'), ':1100\r\n', 'expire time counted from 1000, not 500');
  t.equal(read(m, 0, 'PTTL', 'b'), ':100\r\n', 'a read with a clock behind the log runs at lastStampMs');
  write(m, 1050, 'SET', 'c', 'v');
  t.equal(m.lastStampMs, 1050);
  t.equal(m.apply(entry(encodeSweep(10, argv('b')))), 0, 'a sweep stamped in the past runs at lastStampMs too');
});

t.test('planSweep names only expired keys, resumes where it stopped, and changes nothing by itself', async (t) => {
  const m = new KeyspaceMachine();
  for (let i = 0; i < 10; i++) write(m, 1000, 'SET', `k${i}`, 'v', 'PX', i < 6 ? '10' : '100000');
  write(m, 1000, 'SET', 'nottl', 'v');
  t.equal(m.planSweep(1005, 100), null, 'nothing expired yet');
  const before = snap(m);
  const p1 = m.planSweep(2000, 4);
  t.equal(p1?.keys, 4);
  t.same(snap(m), before, 'planning changes no replicated state');
  const follower = new KeyspaceMachine();
  follower.restore(before);
  if (p1 === null) throw new Error('plan');
  t.equal(m.apply(entry(p1.entry)), 4);
  t.equal(follower.apply(entry(p1.entry)), 4);
  const p2 = m.planSweep(2000, 4);
  t.equal(p2?.keys, 2, 'resumes after the keys already examined');
  if (p2 === null) throw new Error('plan');
  m.apply(entry(p2.entry));
  follower.apply(entry(p2.entry));
  t.same(snap(m), snap(follower));
  t.equal(m.store.size, 5);
  t.equal(m.stats.sweptKeys, 6);
});

t.test('a sweep keeps a key that was written again between plan and apply', async (t) => {
  const m = new KeyspaceMachine();
  write(m, 1000, 'SET', 'k', 'v', 'PX', '10');
  const plan = m.planSweep(2000, 10);
  write(m, 2000, 'SET', 'k', 'fresh');
  if (plan === null) throw new Error('plan');
  t.equal(m.apply(entry(plan.entry)), 0);
  t.equal(read(m, 2000, 'GET', 'k'), '$5\r\nfresh\r\n');
});

// ---------------------------------------------------------------------------------------------------------------
// Memory limit
// ---------------------------------------------------------------------------------------------------------------
const OOM = `-${ERR_OOM}\r\n`;

t.test('a write that would take the keyspace over keyspaceBytesMax is refused and undone, a shrinking one allowed', async (t) => {
  const max = entryBytes(2, 10) * 3 + 5;
  const m = new KeyspaceMachine({ keyspaceBytesMax: max });
  t.equal(write(m, 1, 'SET', 'k1', '0123456789'), '+OK\r\n');
  t.equal(write(m, 1, 'SET', 'k2', '0123456789', 'PX', '5000'), '+OK\r\n');
  t.equal(write(m, 1, 'SET', 'k3', '0123456789'), '+OK\r\n');
  t.equal(write(m, 1, 'SET', 'k4', 'x'), OOM, 'a fourth entry does not fit');
  t.equal(read(m, 1, 'EXISTS', 'k4'), ':0\r\n');
  t.equal(write(m, 1, 'APPEND', 'k1', '123456'), OOM, 'growing beyond the limit');
  t.equal(write(m, 1, 'APPEND', 'k1', '12345'), ':15\r\n', 'growing up to the limit');
  t.equal(m.store.contentBytes, max);
  t.equal(write(m, 1, 'SET', 'k2', 'abcdefghij', 'GET'), '$10\r\n0123456789\r\n', 'a same-size overwrite is fine at the limit');
  t.equal(write(m, 1, 'SET', 'k2', 'abcdefghijK', 'GET'), OOM, 'the GET part of a refused SET is not answered');
  t.equal(read(m, 1, 'GET', 'k2'), '$10\r\nabcdefghij\r\n', 'value restored');
  t.equal(read(m, 1, 'PTTL', 'k2'), ':-1\r\n', 'the TTL the refused SET ... GET would have cleared is the one before it');
  t.equal(write(m, 1, 'MSET', 'k3', 'short', 'k5', 'long value'), OOM, 'MSET is all or nothing');
  t.equal(read(m, 1, 'MGET', 'k3', 'k5'), '*2\r\n$10\r\n0123456789\r\n$-1\r\n');
  t.equal(write(m, 1, 'SETRANGE', 'k3', '1000', 'x'), OOM, 'SETRANGE far out (undo path)');
  t.equal(write(m, 1, 'INCRBYFLOAT', 'k9', '1e300'), OOM, 'INCRBYFLOAT (undo path)');
  t.equal(write(m, 1, 'DEL', 'k1'), ':1\r\n', 'deletes are always allowed');
  t.equal(write(m, 1, 'SET', 'k4', 'x'), '+OK\r\n', 'room again');
  t.ok(m.store.contentBytes <= max);
  t.equal(m.stats.oomRefusals, 6);
  m.store.checkInvariants();
});

t.test('a refused write with the same key twice ends as it began', async (t) => {
  const m = new KeyspaceMachine({ keyspaceBytesMax: entryBytes(1, 3) + 10 });
  write(m, 1, 'SET', 'a', 'abc');
  t.equal(write(m, 1, 'MSET', 'a', 'x', 'a', 'a much longer value'), OOM);
  t.equal(read(m, 1, 'GET', 'a'), '$3\r\nabc\r\n');
});

t.test('OOM decisions are the same on every replica, and the limit is replicated by config entries', async (t) => {
  const rng = createRng(99);
  const limit = 2200;
  const a = new KeyspaceMachine({ keyspaceBytesMax: limit });
  const bm = new KeyspaceMachine({ keyspaceBytesMax: limit });
  let ooms = 0;
  for (let i = 0; i < 600; i++) {
    const now = T0 + i * 10;
    const data = i === 300 ? encodeConfig(now, 1500) : encodeWrite(argv(...randomWrite(rng, now)), now);
    const ra = a.apply(entry(data));
    const rb = bm.apply(entry(data));
    if (ra instanceof Uint8Array && resp(ra) === OOM) ooms++;
    t.equal(ra instanceof Uint8Array ? resp(ra) : ra, rb instanceof Uint8Array ? resp(rb) : rb);
    if (rng.chance(0.3)) a.read(argv(...randomRead(rng)), now + rng.int(-1000, 100000), new ReplyWriter(2));
  }
  t.ok(ooms > 10, `${ooms} writes refused`);
  t.equal(a.keyspaceBytesMax, 1500);
  t.same(snap(a), snap(bm));
});

// ---------------------------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------------------------
t.test('snapshot and restore round-trip entries, expiry, hidden entries, lastStampMs and the limit', async (t) => {
  const m = new KeyspaceMachine({ keyspaceBytesMax: 1 << 20 });
  write(m, 1000, 'SET', 'plain', 'v');
  write(m, 1000, 'SET', 'ttl', 'v', 'PX', '5000');
  write(m, 1000, 'SET', 'stale', 'v', 'PX', '10');
  write(m, 1000, 'SET', 'bin\x00\xff', Buffer.alloc(300, 0xfe).toString('latin1'));
  write(m, 1000, 'APPEND', 'plain', 'xyz');
  m.apply(entry(encodeConfig(2000, 123456)));
  const s = snap(m);
  const r = new KeyspaceMachine();
  write(r, 1, 'SET', 'to-be-replaced', 'v');
  r.restore(s);
  t.same(snap(r), s, 'byte-identical snapshot after restore');
  t.equal(r.lastStampMs, 2000);
  t.equal(r.keyspaceBytesMax, 123456);
  t.equal(r.store.size, 4, 'the hidden entry is state too');
  t.equal(r.store.contentBytes, m.store.contentBytes);
  t.equal(read(r, 0, 'PEXPIRETIME', 'ttl'), ':6000\r\n');
  t.equal(read(r, 0, 'GET', 'plain'), '$4\r\nvxyz\r\n');
  t.equal(read(r, 0, 'EXISTS', 'to-be-replaced', 'stale'), ':0\r\n');
  t.equal(read(r, 0, 'STRLEN', 'bin\x00\xff'), ':300\r\n');
  r.store.checkInvariants();
  const empty = new KeyspaceMachine();
  const e = new KeyspaceMachine();
  e.restore(empty.snapshot());
  t.equal(e.store.size, 0);
});

t.test('a corrupt snapshot throws KeyspaceEntryError and leaves the machine as it was', async (t) => {
  const m = new KeyspaceMachine();
  write(m, 1000, 'SET', 'a', 'v', 'PX', '100');
  write(m, 1000, 'SET', 'b', 'v');
  const s = snap(m);
  const r = new KeyspaceMachine();
  write(r, 5, 'SET', 'mine', 'v');
  const before = snap(r);
  for (let n = 0; n < s.length; n++) {
    t.equal(codeOf(() => r.restore(s.subarray(0, n))), 'KEYSPACE_CORRUPT', `prefix of ${n} bytes`);
  }
  t.equal(codeOf(() => r.restore(Buffer.concat([s, Buffer.from([0])]))), 'KEYSPACE_CORRUPT', 'trailing byte');
  const magic = Buffer.from(s);
  magic[0] = 0;
  t.equal(codeOf(() => r.restore(magic)), 'KEYSPACE_CORRUPT', 'bad magic');
  const dup = Buffer.from(s);
  dup.writeUInt32LE(3, 21);
  const twice = Buffer.concat([dup, s.subarray(25, 25 + 4)]); // "b" again
  t.equal(codeOf(() => r.restore(twice)), 'KEYSPACE_CORRUPT', 'duplicate key');
  const newer = Buffer.from(s);
  newer[4] = KEYSPACE_SNAPSHOT_VERSION + 1;
  t.equal(codeOf(() => r.restore(newer)), 'KEYSPACE_VERSION');
  // No lock is held here: the lock section is an empty table's snapshot.
  const cut = Buffer.from(s.subarray(0, s.length - 8 - new KeyspaceMachine().locks.snapshot().length - new KeyspaceMachine().queues.snapshot().length));
  cut[4] = 1;
  t.equal(codeOf(() => r.restore(Buffer.concat([cut, Buffer.from([0, 0, 0, 0])]))), 'KEYSPACE_CORRUPT', 'a version 1 snapshot has no lock section');
  t.same(snap(r), before, 'unchanged');
  const v1 = new KeyspaceMachine();
  v1.restore(cut);
  t.same(snap(v1), s, 'a version 1 snapshot (no lock section) restores the keyspace');
});

t.test('a restored machine continues identically', async (t) => {
  for (let seed = 1; seed <= 20; seed++) {
    const rng = createRng(seed * 31);
    const a = new KeyspaceMachine({ keyspaceBytesMax: 6000 });
    const log: Uint8Array[] = [];
    let now = T0;
    for (let i = 0; i < 200; i++) {
      now += rng.int(-50, 100);
      log.push(encodeWrite(argv(...randomWrite(rng, now)), Math.max(0, now)));
    }
    const cut = rng.int(0, log.length);
    log.slice(0, cut).forEach((d) => a.applyData(d));
    const r = new KeyspaceMachine();
    r.restore(a.snapshot());
    for (const d of log.slice(cut)) {
      const ra = a.applyData(d);
      const rr = r.applyData(d);
      if (resp(ra) !== resp(rr)) {
        t.equal(resp(rr), resp(ra), `seed ${seed}`);
        return;
      }
    }
    t.same(snap(r), snap(a), `seed ${seed}: restored at ${cut}`);
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------------------------
t.test('replicas fed the same log end byte-identical whatever one of them reads meanwhile (seeded, many seeds)', async (t) => {
  const seeds = 150;
  let oomSeen = 0;
  for (let seed = 1; seed <= seeds; seed++) {
    const rng = createRng(seed);
    const limit = rng.chance(0.3) ? rng.int(2000, 8000) : 0;
    const leader = new KeyspaceMachine({ keyspaceBytesMax: limit });
    const follower = new KeyspaceMachine({ keyspaceBytesMax: limit });
    let stamp = T0;
    let lateJoiner: KeyspaceMachine | undefined;
    const steps = rng.int(100, 300);
    for (let i = 0; i < steps; i++) {
      // Stamps mostly advance, sometimes go backwards (a new leader with a slower clock).
      stamp += rng.chance(0.1) ? -rng.int(0, 2000) : rng.int(0, 150);
      const x = rng.next();
      let data: Uint8Array;
      if (x < 0.05) {
        const plan = leader.planSweep(stamp + rng.int(-100, 1000), rng.int(1, 6));
        data = plan?.entry ?? encodeSweep(Math.max(0, stamp), [b(pick(rng, KEYS))]);
      } else if (x < 0.07) {
        data = encodeSweep(Math.max(0, stamp), KEYS.filter(() => rng.chance(0.5)).map(b));
      } else {
        data = encodeWrite(argv(...randomWrite(rng, stamp)), Math.max(0, stamp));
      }
      const e = entry(data);
      const ra = leader.apply(e);
      const rb = follower.apply(e);
      const rc = lateJoiner?.apply(e);
      if (ra instanceof Uint8Array && resp(ra) === OOM) oomSeen++;
      const same = ra instanceof Uint8Array ? resp(ra) === resp(rb) : ra === rb;
      if (!same || (lateJoiner !== undefined && (ra instanceof Uint8Array ? resp(ra) !== resp(rc) : ra !== rc))) {
        t.fail(`seed ${seed} step ${i}: results differ`);
        return;
      }
      // Reads on the leader only, at random local times (behind, at, and far ahead of the log).
      for (let r = rng.int(0, 3); r > 0; r--) {
        leader.read(argv(...randomRead(rng)), stamp + rng.int(-5000, 5000), new ReplyWriter(2));
      }
      if (lateJoiner === undefined && rng.chance(0.01)) {
        lateJoiner = new KeyspaceMachine();
        lateJoiner.restore(follower.snapshot());
      }
    }
    const sa = snap(leader);
    const sb = snap(follower);
    if (!sa.equals(sb) || (lateJoiner !== undefined && !snap(lateJoiner).equals(sa))) {
      t.fail(`seed ${seed}: snapshots differ`);
      return;
    }
    leader.store.checkInvariants();
    follower.store.checkInvariants();
  }
  t.pass(`${seeds} seeds byte-identical`);
  t.ok(oomSeen > 0, `the limit was hit ${oomSeen} times`);
});

t.test('snapshotSteps: a large state is encoded in steps, to the same bytes as snapshot()', async (t) => {
  const m = new KeyspaceMachine();
  for (let i = 0; i < 10_000; i++) write(m, T0 + i, 'SET', `key:${i}`, `value-${i}`, ...(i % 3 === 0 ? ['PX', '600000'] : []));
  for (let i = 0; i < 9_000; i++) write(m, T0 + 10_000 + i, '_q.push', 'jobs', String(i % 2), `payload-${i}`, '', '0');
  write(m, T0 + 20_000, '_q.pop', 'jobs', '0', 'c1', '100', '', '0');
  t.equal(read(m, T0 + 20_000, '_q.len', 'jobs', '0'), ':4400\r\n', 'partition 0 holds 4,400 ready messages (100 more delivered)');
  const whole = snap(m);
  const steps = m.snapshotSteps();
  let yields = 0;
  let r = steps.next();
  while (r.done !== true) {
    yields++;
    r = steps.next();
  }
  t.ok(yields >= 5, `10,000 keys and 9,000 messages took ${yields + 1} steps`);
  t.same(Buffer.from(r.value), whole, 'the same bytes as snapshot()');
  const copy = new KeyspaceMachine();
  copy.restore(r.value);
  t.same(snap(copy), whole, 'and they restore to the same state');
});
