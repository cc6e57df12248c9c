import t from 'tap';
import { Inflights, Progress, ProgressState } from '../../src/raft/progress.js';
import { RaftInvariantError } from '../../src/raft/errors.js';

t.test('the inflight window fills, refuses more, and frees in order', async (t) => {
  const w = new Inflights(3);
  w.add(5);
  w.add(10);
  w.add(15);
  t.ok(w.full());
  t.throws(() => w.add(20), RaftInvariantError);
  w.freeLE(9);
  t.equal(w.count, 2);
  w.add(20);
  w.freeLE(15);
  t.equal(w.count, 1);
  w.freeLE(100);
  t.equal(w.count, 0);
  t.notOk(w.full());
});

t.test('a probe pauses after one append until an answer comes', async (t) => {
  const pr = new Progress(2, 10, 4, false);
  t.equal(pr.state, ProgressState.Probe);
  t.notOk(pr.isPaused());
  pr.sentEntries(3, 12);
  t.ok(pr.isPaused());
  t.equal(pr.next, 10, 'probing does not move next optimistically');
  t.ok(pr.maybeUpdate(12));
  t.notOk(pr.isPaused());
  t.equal(pr.next, 13);
});

t.test('replicate advances next optimistically and pauses when the window is full', async (t) => {
  const pr = new Progress(2, 1, 2, false);
  pr.maybeUpdate(0);
  pr.becomeReplicate();
  pr.sentEntries(5, 5);
  pr.sentEntries(5, 10);
  t.equal(pr.next, 11);
  t.ok(pr.isPaused());
  pr.maybeUpdate(5);
  pr.inflights.freeLE(5);
  t.notOk(pr.isPaused());
});

t.test('a stale rejection is ignored and a fresh one moves next back to the hint', async (t) => {
  const pr = new Progress(2, 20, 4, false);
  t.notOk(pr.maybeDecrTo(10, 5), 'probe: rejected index is not next-1: stale');
  t.ok(pr.maybeDecrTo(19, 7));
  t.equal(pr.next, 8);
  pr.maybeUpdate(7);
  pr.becomeReplicate();
  t.notOk(pr.maybeDecrTo(6, 0), 'replicate: at or below match: stale');
  t.ok(pr.maybeDecrTo(9, 3));
  t.equal(pr.next, 8, 'replicate: falls back to match + 1');
});

t.test('next never drops below match + 1', async (t) => {
  const pr = new Progress(2, 20, 4, false);
  pr.match = 15;
  t.ok(pr.maybeDecrTo(19, 3));
  t.equal(pr.next, 16);
});

t.test('the snapshot state pauses appends and returns to probe after match', async (t) => {
  const pr = new Progress(2, 3, 4, false);
  pr.becomeSnapshot({ meta: { index: 50, term: 2, conf: { voters: [1, 2], learners: [] } }, data: new Uint8Array(10) });
  t.ok(pr.isPaused());
  t.throws(() => pr.sentEntries(1, 3), RaftInvariantError);
  pr.maybeUpdate(50);
  pr.becomeProbe();
  t.equal(pr.state, ProgressState.Probe);
  t.equal(pr.next, 51);
  t.equal(pr.snap, null);
});

t.test('a stalled snapshot stream resends from the acknowledged offset, then from a lower rejected one', async (t) => {
  const pr = new Progress(2, 1, 4, false);
  pr.becomeSnapshot({ meta: { index: 9, term: 1, conf: { voters: [1, 2], learners: [] } }, data: new Uint8Array(80) });
  pr.snapSent = 64;
  pr.snapAcked = 48;
  pr.snapRewind = 40;
  pr.snapshotProgressed();
  t.equal(pr.snapRewind, -1, 'progress past the rewind point forgets it');
  pr.snapLowReject = 8; // a rejection below what was acknowledged (looks stale)
  pr.snapStalled();
  t.equal(pr.snapAcked, 48, 'first stall: resend from the acknowledged offset');
  t.equal(pr.snapSent, 48);
  t.equal(pr.snapLowReject, Infinity);
  pr.snapSent = 80;
  pr.snapDoneSent = true;
  pr.snapLowReject = 8; // still rejected below: the follower really holds 8 bytes (it restarted)
  pr.snapStalled();
  t.equal(pr.snapAcked, 8, 'second stall without progress: resend from the rejected offset');
  t.equal(pr.snapSent, 8);
  t.notOk(pr.snapDoneSent);
  pr.snapAcked = 16;
  pr.snapshotProgressed();
  t.equal(pr.snapStallResends, 0, 'progress resets the stall count');
  pr.snapLowReject = 8;
  pr.snapStalled();
  t.equal(pr.snapAcked, 16, 'after progress the first stall trusts the acknowledgement again');
});
