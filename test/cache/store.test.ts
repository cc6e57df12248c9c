import t from 'tap';
import { CacheEntryTooLargeError, CacheStore, ENTRY_OVERHEAD_BYTES, entryBytes, type CacheEntry } from '../../src/cache/store.js';
import type { CacheLimits } from '../../src/config/limits.js';
import { createRng } from '../../src/util/rng.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const keysOf = (bufs: Iterable<Buffer>): string[] => [...bufs].map((k) => k.toString('latin1'));

function makeStore(limits: Partial<CacheLimits> = {}) {
  const clock = { now: 1_000_000 };
  const evicted: string[] = [];
  const expired: string[] = [];
  const db = new CacheStore(
    { itemsMax: 0, bytesMax: 0, expireSweepKeysMax: 20, expireSweepIntervalMs: 100, ...limits },
    () => clock.now,
    {
      onEvict: (e: CacheEntry) => evicted.push(e.keyLatin1),
      onExpire: (e: CacheEntry) => expired.push(e.keyLatin1),
    },
  );
  return { db, clock, evicted, expired };
}

t.test('the least recently used entry is evicted first when over itemsMax, and get() counts as a use', async (t) => {
  const { db, evicted } = makeStore({ itemsMax: 3 });
  db.set(b('a'), b('1'));
  db.set(b('b'), b('2'));
  db.set(b('c'), b('3'));
  t.ok(db.get(b('a')), 'a is touched');
  db.set(b('d'), b('4'));
  t.same(evicted, ['b'], 'b was the least recently used');
  db.peek(b('c')); // peek does not touch
  db.set(b('e'), b('5'));
  t.same(evicted, ['b', 'c']);
  db.set(b('a'), b('overwrite')); // an overwrite touches too
  db.set(b('f'), b('6'));
  t.same(evicted, ['b', 'c', 'd']);
  t.same(keysOf(db.keys()).sort(), ['a', 'e', 'f']);
  t.equal(db.stats.evictions, 3);
  t.equal(db.size, 3);
  db.checkInvariants();
});

t.test('eviction by bytes removes LRU entries until the new entry fits, never the entry just written', async (t) => {
  const one = entryBytes(1, 10);
  const { db, evicted } = makeStore({ bytesMax: one * 3 });
  for (const k of ['a', 'b', 'c']) db.set(b(k), Buffer.alloc(10, k));
  t.equal(db.bytes, one * 3);
  db.get(b('a'));
  // A value twice as big needs two victims: b then c (a was touched).
  db.set(b('d'), Buffer.alloc(10 + one, 'd'));
  t.same(evicted, ['b', 'c']);
  t.same(keysOf(db.keys()).sort(), ['a', 'd']);
  t.ok(db.bytes <= one * 3);
  // An entry that fills the whole budget evicts everything else but stays.
  db.set(b('e'), Buffer.alloc(one * 3 - ENTRY_OVERHEAD_BYTES - 1, 'e'));
  t.same(keysOf(db.keys()), ['e']);
  t.equal(db.bytes, one * 3);
  db.checkInvariants();
});

t.test('an entry larger than bytesMax alone is refused with TOOLARGE and nothing changes', async (t) => {
  const { db } = makeStore({ bytesMax: 1000 });
  db.set(b('k'), b('old'));
  const err = t.throws(() => db.set(b('k'), Buffer.alloc(1000))) as unknown;
  t.ok(err instanceof CacheEntryTooLargeError);
  t.equal((err as CacheEntryTooLargeError).code, 'TOOLARGE');
  t.equal(db.get(b('k'))?.value.toString(), 'old');
  t.throws(() => db.append(b('k'), Buffer.alloc(1000)), { code: 'TOOLARGE' });
  t.equal(db.get(b('k'))?.value.toString(), 'old');
  db.checkInvariants();
});

t.test('an overwrite keeps the state unless given and clears the TTL unless keepTtl', async (t) => {
  const { db, clock } = makeStore();
  db.set(b('k'), b('v1'), { expireAt: clock.now + 1000, state: 3 });
  let e = db.set(b('k'), b('v2'), { keepTtl: true });
  t.equal(e.state, 3);
  t.equal(e.expireAt, clock.now + 1000);
  e = db.set(b('k'), b('v3'));
  t.equal(e.expireAt, 0);
  t.equal(e.state, 3);
  e = db.set(b('k'), b('v4'), { state: 1 });
  t.equal(e.state, 1);
  t.equal(db.set(b('new'), b('x')).state, 0, 'a new entry starts in state 0');
  t.equal(db.expiresCount, 0);
  db.checkInvariants();
});

t.test("the caller's mark starts at 0, survives overwrites and state changes unless given, and dies with the entry", async (t) => {
  const { db } = makeStore();
  const e = db.set(b('k'), b('v1'));
  t.equal(e.mark, 0, 'a new entry starts with mark 0');
  e.mark = 42;
  t.equal(db.set(b('k'), b('v2'), { state: 2 }).mark, 42, 'an overwrite without mark keeps it');
  t.equal(db.set(b('k'), b('v3'), { mark: 7 }).mark, 7, 'an overwrite with mark sets it');
  t.equal(db.set(b('k'), b('v4'), { mark: 0 }).mark, 0, 'mark 0 clears it');
  db.peek(b('k'))!.mark = 9;
  db.delete(b('k'));
  t.equal(db.set(b('k'), b('v5')).mark, 0, 'a key set again after a delete starts over');
  t.equal(db.set(b('m'), b('x'), { mark: 5 }).mark, 5, 'a new entry takes a given mark');
  db.checkInvariants();
});

t.test('values are copied on insert, so the caller may reuse its buffer', async (t) => {
  const { db } = makeStore();
  const net = Buffer.from('hello world, a network buffer of some length well beyond the small-value slab size.......');
  const small = Buffer.from('tiny');
  db.set(b('big'), net);
  db.set(b('small'), small);
  net.fill(0);
  small.fill(0);
  t.equal(db.get(b('big'))?.value.toString().slice(0, 11), 'hello world');
  t.equal(db.get(b('small'))?.value.toString(), 'tiny');
});

t.test('valueBytes/valueStart/valueLength name the same bytes as value, wherever the value is kept', async (t) => {
  const { db } = makeStore();
  const rangeOf = (e: CacheEntry | undefined): string => {
    if (e === undefined) return 'absent';
    return e.valueBytes.subarray(e.valueStart, e.valueStart + e.valueLength).toString('latin1');
  };
  const cases: [string, Buffer][] = [
    ['empty', Buffer.alloc(0)],
    ['slab', b('small value')],
    ['slab neighbour', b('another small one')],
    ['own buffer', Buffer.alloc(300, 'q')],
  ];
  for (const [name, v] of cases) db.set(b(name), v);
  for (const [name, v] of cases) {
    const e = db.get(b(name));
    t.equal(rangeOf(e), v.toString('latin1'), name);
    t.equal(e?.value.toString('latin1'), v.toString('latin1'), `${name}: value`);
    t.equal(e?.valueLength, v.length, `${name}: length`);
  }
  const slab = db.peek(b('slab'));
  const neighbour = db.peek(b('slab neighbour'));
  t.equal(slab?.valueBytes, neighbour?.valueBytes, 'small values share one slab');
  t.not(slab?.valueStart, neighbour?.valueStart);
  db.append(b('slab'), b(' grown'));
  t.equal(rangeOf(db.peek(b('slab'))), 'small value grown', 'after append');
  t.equal(rangeOf(db.peek(b('slab neighbour'))), 'another small one', 'the neighbour is untouched');
  const owned = Buffer.from('taken as is');
  db.set(b('owned'), owned, { copy: false });
  t.equal(db.peek(b('owned'))?.valueBytes, owned, 'copy: false keeps the caller\'s Buffer');
  db.set(b('slab'), b('overwritten'));
  t.equal(rangeOf(db.peek(b('slab'))), 'overwritten');
  db.checkInvariants();
});

t.test('binary keys and values round-trip byte for byte', async (t) => {
  const { db } = makeStore();
  const keys = [Buffer.from([0]), Buffer.from([0xff, 0xfe, 0, 1]), Buffer.from('\r\n', 'latin1'), Buffer.alloc(0)];
  keys.forEach((k, i) => db.set(k, Buffer.from([i, 0, 0xff, 0x80])));
  keys.forEach((k, i) => t.same([...(db.get(k)?.value ?? [])], [i, 0, 0xff, 0x80]));
  const scanned = db.scan(0, 100)[1].map((k) => k.toString('hex')).sort();
  t.same(scanned, keys.map((k) => k.toString('hex')).sort());
  t.same(db.peek(keys[1] as Buffer)?.key, keys[1]);
  t.notOk(db.has(Buffer.from([0xff, 0xfe, 0])), 'a prefix is another key');
});

t.test('an expired entry disappears on lookup, counting an expiration and a miss', async (t) => {
  const { db, clock, expired } = makeStore();
  db.set(b('k'), b('v'), { expireAt: clock.now + 100 });
  clock.now += 100;
  t.ok(db.get(b('k')), 'alive at exactly expireAt (Redis expires when now > expireAt)');
  clock.now += 1;
  t.equal(db.peek(b('k')), undefined, 'peek expires it too');
  t.same(expired, ['k']);
  t.equal(db.get(b('k')), undefined);
  t.same(db.stats, { hits: 1, misses: 1, evictions: 0, expirations: 1, activeExpirations: 0 });
  t.equal(db.size, 0);
  db.resetStats();
  t.same(db.stats, { hits: 0, misses: 0, evictions: 0, expirations: 0, activeExpirations: 0 });
});

t.test('the active sweep examines only keys with a TTL and resumes where it stopped', async (t) => {
  const { db, clock, expired } = makeStore();
  for (let i = 0; i < 1000; i++) db.set(b(`plain${i}`), b('v'));
  for (let i = 0; i < 30; i++) db.set(b(`t${i}`), b('v'), { expireAt: clock.now + (i < 10 ? 10_000 : 10) });
  clock.now += 11;
  t.equal(db.sweepExpired(10), 0, 't0..t9 are examined first and still alive');
  t.equal(db.sweepExpired(10), 10, 'the next step resumes at t10');
  t.same(expired, Array.from({ length: 10 }, (_, i) => `t${i + 10}`));
  t.equal(db.sweepExpired(5), 5);
  t.equal(db.sweepExpired(100), 5, 'a step never examines more keys than have a TTL');
  t.equal(db.sweepExpired(100), 0);
  t.equal(db.size, 1010);
  t.equal(db.stats.activeExpirations, 20);
  t.equal(db.stats.expirations, 20);
  db.checkInvariants();
});

t.test('the sweep survives a hook that deletes other keys while it runs', async (t) => {
  const clock = { now: 0 };
  const db: CacheStore = new CacheStore(
    { itemsMax: 0, bytesMax: 0, expireSweepKeysMax: 20, expireSweepIntervalMs: 100 },
    () => clock.now,
    { onExpire: (e) => void db.delete(Buffer.from(e.keyLatin1 + 'x', 'latin1')) },
  );
  for (let i = 0; i < 10; i++) {
    db.set(b(`k${i}`), b('v'), { expireAt: 5 });
    db.set(b(`k${i}x`), b('v'), { expireAt: 5 });
  }
  clock.now = 6;
  const n = db.sweepExpired(100);
  t.equal(n, 10, 'the k<i>x entries were removed by the hook, not by the sweep');
  t.equal(db.size, 0);
  db.checkInvariants();
});

t.test('setExpire sets and removes TTLs; changing TTLs keeps the ring consistent', async (t) => {
  const { db, clock } = makeStore();
  db.set(b('k'), b('v'));
  t.ok(db.setExpire(b('k'), clock.now + 50));
  t.equal(db.expiresCount, 1);
  t.ok(db.setExpire(b('k'), clock.now + 60));
  t.equal(db.expiresCount, 1);
  t.ok(db.setExpire(b('k'), 0));
  t.equal(db.expiresCount, 0);
  t.notOk(db.setExpire(b('missing'), 5));
  db.checkInvariants();
});

t.test('scan returns every key present for the whole scan exactly once under concurrent inserts and deletes', async (t) => {
  for (let seed = 1; seed <= 30; seed++) {
    const rng = createRng(seed);
    const { db } = makeStore({ itemsMax: 0 });
    let next = 0;
    const initial = 50 + rng.int(0, 300);
    for (let i = 0; i < initial; i++) db.set(b(`k${next++}`), b('v'));
    const atStart = new Set(keysOf(db.keys()));
    const removed = new Set<string>();
    const seen = new Map<string, number>();
    let cursor = 0;
    let calls = 0;
    do {
      const [c, keys] = db.scan(cursor, rng.int(1, 20));
      for (const k of keysOf(keys)) seen.set(k, (seen.get(k) ?? 0) + 1);
      cursor = c;
      // Mutate between calls: inserts, deletes, overwrites.
      for (let m = rng.int(0, 15); m > 0; m--) {
        const op = rng.next();
        if (op < 0.4) db.set(b(`k${next++}`), b('v'));
        else if (op < 0.8) {
          const victim = `k${rng.int(0, next)}`;
          if (db.delete(b(victim))) removed.add(victim);
        } else db.set(b(`k${rng.int(0, next)}`), b('overwritten'));
      }
      db.checkInvariants();
      if (++calls > 10_000) throw new Error('scan did not terminate');
    } while (cursor !== 0);
    let missing = 0;
    let dup = 0;
    for (const k of atStart) {
      if (removed.has(k)) continue;
      const n = seen.get(k) ?? 0;
      if (n === 0) missing++;
      if (n > 1) dup++;
    }
    t.equal(missing, 0, `seed ${seed}: no stable key missed`);
    t.equal(dup, 0, `seed ${seed}: no stable key returned twice`);
  }
});

t.test('scan filters by pattern, skips holes left by deletes and removes expired entries it meets', async (t) => {
  const { db, clock } = makeStore();
  for (let i = 0; i < 500; i++) db.set(b(`user:${i}`), b('v'));
  for (let i = 0; i < 500; i++) db.set(b(`other:${i}`), b('v'));
  for (let i = 0; i < 450; i++) db.delete(b(`user:${i}`)); // a long run of holes (compaction may run)
  db.set(b('user:x'), b('v'), { expireAt: clock.now + 1 });
  clock.now += 2;
  const found: string[] = [];
  let cursor = 0;
  let calls = 0;
  do {
    const [c, keys] = db.scan(cursor, 10, b('user:*'));
    found.push(...keysOf(keys));
    cursor = c;
    calls++;
  } while (cursor !== 0 && calls < 1000);
  t.equal(cursor, 0);
  t.same(found.sort(), Array.from({ length: 50 }, (_, i) => `user:${i + 450}`).sort());
  t.equal(db.peekLatin1('user:x'), undefined);
  t.equal(db.stats.expirations, 1);
  t.same(db.scan(987_654_321, 10), [0, []], 'a cursor past the end finishes the scan');
  db.checkInvariants();
});

t.test('append grows in place with spare room and never changes a value already handed out', async (t) => {
  const { db } = makeStore();
  db.set(b('log'), b('start'));
  const first = db.get(b('log'))?.value as Buffer;
  db.append(b('log'), b('-one'));
  const second = db.get(b('log'))?.value as Buffer;
  db.append(b('log'), b('-two'));
  db.append(b('log'), b('-three'));
  t.equal(first.toString(), 'start');
  t.equal(second.toString(), 'start-one');
  t.equal(db.get(b('log'))?.value.toString(), 'start-one-two-three');
  const e = db.peek(b('log'));
  t.ok(e && e.bytes >= entryBytes(3, e.value.length), 'spare room is counted in bytes');
  t.equal(db.append(b('fresh'), b('x')).value.toString(), 'x', 'append creates a missing key');
  let big = 0;
  for (let i = 0; i < 2000; i++) big = db.append(b('many'), Buffer.alloc(100, 'z')).value.length;
  t.equal(big, 200_000);
  db.checkInvariants();
});

t.test('randomEntry returns every live key over many draws and never an expired one', async (t) => {
  const { db, clock } = makeStore();
  for (let i = 0; i < 20; i++) db.set(b(`k${i}`), b('v'));
  for (let i = 0; i < 200; i++) db.set(b(`gone${i}`), b('v'));
  for (let i = 0; i < 200; i++) db.delete(b(`gone${i}`));
  db.set(b('stale'), b('v'), { expireAt: clock.now });
  clock.now += 1;
  const counts = new Map<string, number>();
  for (let i = 0; i < 4000; i++) {
    const e = db.randomEntry();
    if (e) counts.set(e.keyLatin1, (counts.get(e.keyLatin1) ?? 0) + 1);
  }
  t.equal(counts.size, 20);
  t.notOk(counts.has('stale'));
  for (const n of counts.values()) t.ok(n > 100 && n < 320, `roughly uniform (${n} of 4000 over 20 keys)`);
  db.clear();
  t.equal(db.randomEntry(), undefined);
});

t.test('clear empties everything but keeps counters and later scans work', async (t) => {
  const { db } = makeStore({ itemsMax: 2 });
  db.set(b('a'), b('1'), { expireAt: 5_000_000 });
  db.get(b('a'));
  db.clear();
  t.equal(db.size, 0);
  t.equal(db.bytes, 0);
  t.equal(db.expiresCount, 0);
  t.equal(db.stats.hits, 1);
  db.set(b('z'), b('1'));
  t.same(keysOf(db.scan(0, 10)[1]), ['z']);
  db.checkInvariants();
});
