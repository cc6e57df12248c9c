import t from 'tap';
import { RaftLog } from '../../src/raft/log.js';
import { RaftInvariantError } from '../../src/raft/errors.js';
import { EntryType, type Entry } from '../../src/raft/types.js';

const e = (term: number, index: number): Entry => ({ term, index, type: EntryType.Normal, data: new Uint8Array(3) });

function logWith(terms: number[], snapIndex = 0, snapTerm = 0): RaftLog {
  const log = new RaftLog(snapIndex, snapTerm);
  terms.forEach((term, k) => log.push(e(term, snapIndex + 1 + k)));
  return log;
}

t.test('an empty log reports index 0 and term 0', async (t) => {
  const log = new RaftLog(0, 0);
  t.equal(log.firstIndex(), 1);
  t.equal(log.lastIndex(), 0);
  t.equal(log.lastTerm(), 0);
  t.equal(log.term(0), 0);
  t.equal(log.term(1), -1);
});

t.test('append must directly follow the last entry', async (t) => {
  const log = logWith([1, 1]);
  t.throws(() => log.push(e(1, 4)), RaftInvariantError);
  log.push(e(2, 3));
  t.equal(log.lastIndex(), 3);
  t.equal(log.lastTerm(), 2);
});

t.test('a conflicting append truncates the tail and moves the unstable mark back', async (t) => {
  const log = logWith([1, 1, 2, 2]);
  log.takeUnstable();
  t.equal(log.unstable, 5);
  log.appendTruncating([e(3, 3), e(3, 4), e(3, 5)]);
  t.equal(log.lastIndex(), 5);
  t.same(log.slice(1, 6).map((x) => x.term), [1, 1, 3, 3, 3]);
  t.equal(log.unstable, 3);
  t.same(log.takeUnstable().map((x) => x.index), [3, 4, 5]);
});

t.test('truncating a committed entry throws', async (t) => {
  const log = logWith([1, 1, 2]);
  log.commitTo(2);
  t.throws(() => log.appendTruncating([e(3, 2)]), RaftInvariantError);
  t.doesNotThrow(() => log.appendTruncating([e(3, 3)]));
});

t.test('committing beyond the last index throws', async (t) => {
  const log = logWith([1]);
  t.throws(() => log.commitTo(2), RaftInvariantError);
  t.equal(log.commitTo(1), true);
  t.equal(log.commitTo(1), false);
});

t.test('compaction drops the prefix and keeps terms and slices right', async (t) => {
  const terms = Array.from({ length: 5000 }, (_, k) => 1 + Math.floor(k / 1000));
  const log = logWith(terms);
  log.commitTo(5000);
  log.takeCommitted();
  log.appliedTo(5000);
  log.compact(3000, log.term(3000));
  t.equal(log.firstIndex(), 3001);
  t.equal(log.snapIndex, 3000);
  t.equal(log.term(3000), 3);
  t.equal(log.term(2999), -1);
  t.equal(log.at(3001).index, 3001);
  t.same(log.slice(4999, 5001).map((x) => x.index), [4999, 5000]);
  t.throws(() => log.slice(3000, 3002), RaftInvariantError);
  log.push(e(9, 5001));
  t.equal(log.lastIndex(), 5001);
  t.equal(log.size(), 2001);
});

t.test('compaction beyond applied or with the wrong term throws', async (t) => {
  const log = logWith([1, 1, 1]);
  log.commitTo(3);
  t.throws(() => log.compact(2, 1), RaftInvariantError);
  log.takeCommitted();
  log.appliedTo(3);
  t.throws(() => log.compact(2, 5), RaftInvariantError);
});

t.test('sliceLimited honours the entry and byte limits but always returns one entry', async (t) => {
  const log = logWith([1, 1, 1, 1, 1]);
  t.equal(log.sliceLimited(1, 3, 1 << 20).length, 3);
  t.equal(log.sliceLimited(1, 100, 7).length, 2); // 3-byte entries: 3 + 3 <= 7, a third would make 9
  t.equal(log.sliceLimited(1, 100, 1).length, 1);
  t.equal(log.sliceLimited(6, 100, 100).length, 0);
});

t.test('findConflictByTerm skips every entry of a higher term', async (t) => {
  const log = logWith([1, 1, 2, 2, 2, 4, 4]);
  t.equal(log.findConflictByTerm(7, 3), 5);
  t.equal(log.findConflictByTerm(7, 4), 7);
  t.equal(log.findConflictByTerm(7, 1), 2);
  t.equal(log.findConflictByTerm(7, 0), 0);
  t.equal(log.findConflictByTerm(9, 1), 9, 'beyond the end: unchanged');
});

t.test('committed entries are handed out once and applied in order', async (t) => {
  const log = logWith([1, 1, 1]);
  log.commitTo(2);
  t.same(log.takeCommitted().map((x) => x.index), [1, 2]);
  t.same(log.takeCommitted(), []);
  log.commitTo(3);
  t.same(log.takeCommitted().map((x) => x.index), [3]);
  log.appliedTo(3);
  t.equal(log.applied, 3);
  t.throws(() => log.appliedTo(4), RaftInvariantError);
});

t.test('restore replaces the log with a snapshot point', async (t) => {
  const log = logWith([1, 1]);
  log.restore(10, 3);
  t.equal(log.firstIndex(), 11);
  t.equal(log.lastIndex(), 10);
  t.equal(log.lastTerm(), 3);
  t.equal(log.committed, 10);
  t.throws(() => log.restore(5, 3), RaftInvariantError);
});

t.test('a million appends and compactions stay fast (no O(n) per operation)', async (t) => {
  const log = new RaftLog(0, 0);
  const data = new Uint8Array(8);
  const start = performance.now();
  for (let i = 1; i <= 1_000_000; i++) {
    log.push({ term: 1, index: i, type: EntryType.Normal, data });
    if (i % 1000 === 0) {
      log.commitTo(i);
      log.takeUnstable();
      log.takeCommitted();
      log.appliedTo(i);
      log.compact(i - 500, 1);
    }
  }
  const ms = performance.now() - start;
  t.equal(log.size(), 500);
  t.ok(ms < 3000, `took ${ms.toFixed(0)} ms`);
});
