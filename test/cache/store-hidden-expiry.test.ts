import t from 'tap';
import { CacheStore, entryBytes, type CacheEntry, type ExpiryMode } from '../../src/cache/store.js';
import type { CacheLimits } from '../../src/config/limits.js';
import { createRng } from '../../src/util/rng.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const keysOf = (bufs: Iterable<Buffer>): string[] => [...bufs].map((k) => k.toString('latin1'));

function makeStore(expiry: ExpiryMode | undefined, limits: Partial<CacheLimits> = {}) {
  const clock = { now: 1_000 };
  const expired: string[] = [];
  const db = new CacheStore(
    { itemsMax: 0, bytesMax: 0, expireSweepKeysMax: 20, expireSweepIntervalMs: 100, ...limits },
    () => clock.now,
    { expiry, onExpire: (e: CacheEntry) => expired.push(e.keyLatin1) },
  );
  return { db, clock, expired };
}

/** A store in 'hide' mode holding a live key and one that expires at 1100. */
function withStale() {
  const s = makeStore('hide');
  s.db.set(b('live'), b('1'));
  s.db.set(b('stale'), b('2'), { expireAt: 1100 });
  s.clock.now = 1101;
  return s;
}

t.test("without the option a store deletes expired entries on lookup, as before ('delete' is the default)", async (t) => {
  const { db, clock, expired } = makeStore(undefined);
  t.equal(db.expiryMode, 'delete');
  db.set(b('k'), b('v'), { expireAt: 1100 });
  clock.now = 1101;
  t.equal(db.peek(b('k')), undefined);
  t.equal(db.size, 0, 'the lookup removed it');
  t.same(expired, ['k']);
});

t.test('an expired entry is invisible to every lookup but stays in place in hide mode', async (t) => {
  const { db, expired } = withStale();
  t.equal(db.expiryMode, 'hide');
  const bytes = db.bytes;
  t.equal(db.get(b('stale')), undefined);
  t.equal(db.peek(b('stale')), undefined);
  t.equal(db.peekLatin1('stale'), undefined);
  t.notOk(db.has(b('stale')));
  t.notOk(db.setExpire(b('stale'), 5000), 'setExpire treats it as absent');
  t.equal(db.size, 2, 'still held');
  t.equal(db.bytes, bytes);
  t.equal(db.expiresCount, 1);
  t.same(expired, [], 'no expiration happened');
  t.equal(db.stats.misses, 1, 'get() of a hidden entry is a miss');
  t.equal(db.stats.expirations, 0);
  db.checkInvariants();
});

t.test('scan, keys and randomEntry skip a hidden entry without removing it', async (t) => {
  const { db } = withStale();
  const [cursor, keys] = db.scan(0, 100);
  t.equal(cursor, 0);
  t.same(keysOf(keys), ['live']);
  t.same(keysOf(db.keys()), ['live']);
  for (let i = 0; i < 50; i++) t.equal(db.randomEntry()?.keyLatin1, 'live');
  t.equal(db.size, 2);
  db.checkInvariants();
});

t.test('randomEntry finds the one live entry among many hidden ones', async (t) => {
  const { db, clock } = makeStore('hide');
  for (let i = 0; i < 500; i++) db.set(b(`s${i}`), b('x'), { expireAt: 1100 });
  db.set(b('live'), b('1'));
  clock.now = 2000;
  for (let i = 0; i < 20; i++) t.equal(db.randomEntry()?.keyLatin1, 'live');
  t.equal(db.size, 501);
});

t.test('randomEntry gives nothing when every entry is hidden', async (t) => {
  const { db, clock } = makeStore('hide');
  db.set(b('a'), b('1'), { expireAt: 1100 });
  clock.now = 1200;
  t.equal(db.randomEntry(), undefined);
  t.equal(db.size, 1);
});

t.test('an overwrite replaces a hidden entry as a new one (removed, counted as expired)', async (t) => {
  const { db, expired } = withStale();
  db.set(b('stale'), b('new'));
  t.equal(db.peek(b('stale'))?.value.toString(), 'new');
  t.equal(db.peek(b('stale'))?.expireAt, 0, 'the old TTL is gone');
  t.same(expired, ['stale']);
  t.equal(db.size, 2);
  t.same(
    [...db.entries()].map((e) => e.keyLatin1),
    ['live', 'stale'],
    'it is a new insertion (at the end of the order)',
  );
  db.checkInvariants();
});

t.test('set with keepTtl on a hidden entry does not keep the dead TTL', async (t) => {
  const { db } = withStale();
  db.set(b('stale'), b('x'), { keepTtl: true });
  t.equal(db.peek(b('stale'))?.expireAt, 0);
  db.checkInvariants();
});

t.test('append to a hidden entry starts from an empty value', async (t) => {
  const { db } = withStale();
  t.equal(db.append(b('stale'), b('abc')).value.toString(), 'abc');
  t.equal(db.peek(b('stale'))?.expireAt, 0);
  db.checkInvariants();
});

t.test('delete of a hidden entry removes it and answers false', async (t) => {
  const { db, expired } = withStale();
  t.notOk(db.delete(b('stale')));
  t.equal(db.size, 1);
  t.same(expired, ['stale']);
  t.equal(db.expiresCount, 0);
  db.checkInvariants();
});

t.test('sweepExpired and clear remove hidden entries', async (t) => {
  const { db, expired } = withStale();
  t.equal(db.sweepExpired(10), 1);
  t.same(expired, ['stale']);
  t.equal(db.size, 1);
  db.set(b('s2'), b('x'), { expireAt: 1200 });
  const s = withStale();
  s.db.clear();
  t.equal(s.db.size, 0);
  t.equal(s.db.contentBytes, 0);
  db.checkInvariants();
});

t.test('findExpired names expired keys without removing them and resumes where it stopped', async (t) => {
  const { db, clock } = makeStore('hide');
  for (let i = 0; i < 10; i++) db.set(b(`k${i}`), b('v'), { expireAt: i < 5 ? 1100 : 9999 });
  db.set(b('nottl'), b('v'));
  clock.now = 1200;
  t.same(keysOf(db.findExpired(3)), ['k0', 'k1', 'k2']);
  t.same(keysOf(db.findExpired(3)), ['k3', 'k4'], 'resumes at the cursor; k5 is live');
  t.same(keysOf(db.findExpired(100)), ['k0', 'k1', 'k2', 'k3', 'k4'], 'at most the ring once, wrapping around');
  t.equal(db.size, 11, 'nothing removed');
  t.same(keysOf(db.findExpired(100, 4)), ['k0', 'k1'], 'stops once the key bytes reach keyBytesMax');
  db.checkInvariants();
});

t.test('findExpired also works in delete mode and on an empty ring', async (t) => {
  const { db, clock } = makeStore('delete');
  t.same(db.findExpired(10), []);
  db.set(b('a'), b('v'), { expireAt: 1100 });
  clock.now = 1101;
  t.same(keysOf(db.findExpired(10)), ['a']);
  t.equal(db.size, 1);
});

t.test('removeExpired removes a key only when it is held and expired', async (t) => {
  const { db, clock, expired } = makeStore('hide');
  db.set(b('ttl'), b('v'), { expireAt: 1100 });
  db.set(b('nottl'), b('v'));
  t.notOk(db.removeExpired(b('ttl')), 'not yet expired');
  clock.now = 1100;
  t.notOk(db.removeExpired(b('ttl')), 'still there at its expire instant');
  clock.now = 1101;
  t.notOk(db.removeExpired(b('nottl')));
  t.notOk(db.removeExpired(b('absent')));
  t.ok(db.removeExpired(b('ttl')));
  t.notOk(db.removeExpired(b('ttl')), 'already gone');
  t.same(expired, ['ttl']);
  t.equal(db.stats.activeExpirations, 1);
  t.equal(db.stats.expirations, 1);
  t.equal(db.size, 1);
  db.checkInvariants();
});

t.test('contentBytes counts keys, values and overhead but not the spare room of appends', async (t) => {
  const { db } = makeStore('hide');
  db.set(b('a'), b('12345'));
  t.equal(db.contentBytes, entryBytes(1, 5));
  db.append(b('a'), b('678'));
  t.equal(db.contentBytes, entryBytes(1, 8));
  t.ok(db.bytes > db.contentBytes, 'bytes includes the append buffer');
  db.append(b('a'), b('9'));
  t.equal(db.contentBytes, entryBytes(1, 9), 'append into the spare room');
  db.set(b('b'), b('xy'));
  db.set(b('a'), b('z'));
  t.equal(db.contentBytes, entryBytes(1, 1) + entryBytes(1, 2));
  db.delete(b('b'));
  t.equal(db.contentBytes, entryBytes(1, 1));
  db.clear();
  t.equal(db.contentBytes, 0);
  db.checkInvariants();
});

t.test('entries() lists every held entry, hidden ones included, in insertion order', async (t) => {
  const { db } = withStale();
  db.set(b('z'), b('3'));
  db.set(b('live'), b('overwrite keeps the place'));
  t.same(
    [...db.entries()].map((e) => [e.keyLatin1, e.expireAt]),
    [
      ['live', 0],
      ['stale', 1100],
      ['z', 0],
    ],
  );
});

t.test('in hide mode no sequence of reads changes what the store holds (random)', async (t) => {
  for (let seed = 1; seed <= 20; seed++) {
    const rng = createRng(seed);
    const { db, clock } = makeStore('hide');
    for (let i = 0; i < 200; i++) {
      db.set(b(`k${rng.int(0, 50)}`), b('v'.repeat(rng.int(0, 20))), rng.chance(0.5) ? { expireAt: rng.int(1000, 3000) } : {});
    }
    const before = [...db.entries()].map((e) => `${e.keyLatin1}=${e.value.toString()}@${e.expireAt}`);
    const bytes = db.contentBytes;
    for (let i = 0; i < 500; i++) {
      clock.now = rng.int(500, 4000);
      const k = b(`k${rng.int(0, 50)}`);
      const op = rng.int(0, 6);
      if (op === 0) db.get(k);
      else if (op === 1) db.peek(k);
      else if (op === 2) db.has(k);
      else if (op === 3) db.scan(rng.int(0, 100), rng.int(1, 20));
      else if (op === 4) db.randomEntry();
      else void [...db.keys()];
    }
    const after = [...db.entries()].map((e) => `${e.keyLatin1}=${e.value.toString()}@${e.expireAt}`);
    t.same(after, before, `seed ${seed}`);
    t.equal(db.contentBytes, bytes);
    db.checkInvariants();
  }
});
