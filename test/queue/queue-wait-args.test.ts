// The queue wait commands' arguments (src/queue/queue-entries.ts): `_q.wait`, `_q.take` and `_q.unwait` are checked
// like any queue write, told apart from the writes that are proposed, and give the worker their partition, time, id
// and (a take) the pop it carries; a grouped wait names several partitions of its queue.
import t from 'tap';
import { checkQueueCommand, partitionKey, Q_LPOP, Q_POP, Q_TAKE, Q_UNWAIT, Q_WAIT, QUEUE_BLOCK_MS_MAX, queueBlockMs, queuePartitionShard, queueWaitKind, takePopArgs, unwaitAnswered, WAIT_GROUP_MAX, waitIdOf, waitPartitions } from '../../src/queue/queue-entries.js';
import { shardOfSlot } from '../../src/cluster/ring.js';
import { keySlot } from '../../src/cluster/slots.js';

const A = (...xs: string[]): Buffer[] => xs.map((x) => Buffer.from(x));

t.test('well-formed waits pass the write check; malformed ones get a reason', async (t) => {
  t.equal(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500', '1.ab.0')), null);
  t.equal(checkQueueCommand('write', A(Q_UNWAIT, 'q', '3', '1.ab.0')), null);
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '0', 'id')), /bad block/, 'a wait of 0 ms');
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', String(QUEUE_BLOCK_MS_MAX + 1), 'id')), /bad block/, 'longer than the BLOCK limit');
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', 'soon', 'id')), /bad block/);
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500', '')), /bad wait id/);
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500', 'x'.repeat(65))), /bad wait id/);
  t.match(checkQueueCommand('write', A(Q_UNWAIT, 'q', '3', '')), /bad wait id/);
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500')), /bad arguments/, 'a wait without its id');
  t.equal(checkQueueCommand('write', A(Q_UNWAIT, 'q', '3', 'id', '1')), null, 'an unwait of a wait that answered ready');
  t.match(checkQueueCommand('write', A(Q_UNWAIT, 'q', '3', 'id', 'extra')), /bad arguments/);
  t.match(checkQueueCommand('write', A(Q_UNWAIT, 'q', '3')), /bad arguments/);
  t.match(checkQueueCommand('write', A(Q_WAIT, '', '3', '500', 'id')), /bad queue or partition/);
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '-1', '500', 'id')), /bad queue or partition/);
  t.not(checkQueueCommand('read', A(Q_WAIT, 'q', '3', '500', 'id')), null, 'a wait is not a read');
});

t.test('the worker tells waits from proposed writes, and reads their fields', async (t) => {
  t.equal(queueWaitKind(A(Q_WAIT, 'q', '3', '500', 'id')), 'wait');
  t.equal(queueWaitKind(A(Q_UNWAIT, 'q', '3', 'id')), 'unwait');
  for (const name of [Q_POP, '_q.push', '_q.rpush', '_q.lpop', 'set', '_q.waiT', '_q.wai', '']) t.equal(queueWaitKind(A(name, 'q', '0')), '', `${name || '(empty)'} is not a wait`);
  t.equal(queueWaitKind([]), '');
  t.equal(queueBlockMs(A(Q_WAIT, 'q', '3', '500', 'id')), 500, 'a wait stays up to its time');
  t.equal(queueBlockMs(A(Q_POP, 'q', '0', 'c', '1', '', '500')), 0, 'a pop never waits on the worker now');
  t.equal(queueBlockMs(A(Q_UNWAIT, 'q', '3', 'id')), 0);
  t.equal(partitionKey(A(Q_WAIT, 'q', '3', '500', 'id')), '3\u0000q');
  t.equal(partitionKey(A(Q_UNWAIT, 'q', '3', 'id')), partitionKey(A(Q_POP, 'q', '3', 'c', '1', '', '0')), 'the same key as the pops of that partition');
  t.equal(waitIdOf(A(Q_WAIT, 'q', '3', '500', 'n.b.7')), 'n.b.7');
  t.equal(waitIdOf(A(Q_UNWAIT, 'q', '3', 'n.b.7')), 'n.b.7');
  t.equal(waitIdOf(A(Q_UNWAIT, 'q', '3', 'n.b.7', '1')), 'n.b.7');
  t.equal(unwaitAnswered(A(Q_UNWAIT, 'q', '3', 'n.b.7', '1')), true);
  t.equal(unwaitAnswered(A(Q_UNWAIT, 'q', '3', 'n.b.7')), false);
});

t.test('a take carries a well-formed pop of its own partition', async (t) => {
  const pop = [Q_POP, 'q', '3', 'c1', '10', '', '0'];
  t.equal(checkQueueCommand('write', A(Q_TAKE, 'q', '3', '500', 'id', ...pop)), null);
  t.equal(checkQueueCommand('write', A(Q_TAKE, 'q', '0', '500', 'id', Q_LPOP, 'q', '0', '1', '0')), null, 'a list pop');
  t.equal(queueWaitKind(A(Q_TAKE, 'q', '3', '500', 'id', ...pop)), 'take');
  t.equal(queueBlockMs(A(Q_TAKE, 'q', '3', '500', 'id', ...pop)), 500);
  t.equal(waitIdOf(A(Q_TAKE, 'q', '3', '500', 'n.b.9', ...pop)), 'n.b.9', 'the id, not the last argument');
  t.same(takePopArgs(A(Q_TAKE, 'q', '3', '500', 'id', ...pop)).map(String), pop);
  t.match(checkQueueCommand('write', A(Q_TAKE, 'q', '3', '500', 'id')), /no pop/);
  t.match(checkQueueCommand('write', A(Q_TAKE, 'q', '3', '500', 'id', '_q.push', 'q', '3', 'x', '', '0')), /carries no pop/);
  t.match(checkQueueCommand('write', A(Q_TAKE, 'q', '3', '500', 'id', Q_POP, 'other', '3', 'c1', '1', '', '0')), /another partition/);
  t.match(checkQueueCommand('write', A(Q_TAKE, 'q', '3', '500', 'id', Q_POP, 'q', '4', 'c1', '1', '', '0')), /another partition/);
  t.match(checkQueueCommand('write', A(Q_TAKE, 'q', '3', '500', 'id', Q_POP, 'q', '3', 'c1', '0', '', '0')), /bad count/, 'the pop itself is checked');
  t.match(checkQueueCommand('write', A(Q_TAKE, 'q', '3', '0', 'id', ...pop)), /bad block/);
  t.match(checkQueueCommand('write', A(Q_TAKE, 'q', '3', '500', '', ...pop)), /bad wait id/);
  t.match(checkQueueCommand('write', A(Q_TAKE, 'q', '3', '500', 'id', Q_POP)), /carries no pop/);
});

t.test('a grouped wait and its unwait name further partitions of the queue', async (t) => {
  t.equal(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500', 'id', '5', '0', '7')), null);
  t.same(waitPartitions(A(Q_WAIT, 'q', '3', '500', 'id', '5', '0', '7')), [3, 5, 0, 7], 'its own partition first');
  t.same(waitPartitions(A(Q_WAIT, 'q', '3', '500', 'id')), [3], 'a plain wait names one');
  t.equal(waitIdOf(A(Q_WAIT, 'q', '3', '500', 'n.b.7', '5')), 'n.b.7');
  t.equal(queueBlockMs(A(Q_WAIT, 'q', '3', '500', 'id', '5')), 500);
  t.equal(queueWaitKind(A(Q_WAIT, 'q', '3', '500', 'id', '5')), 'wait');
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500', 'id', '5', '5')), /repeated/, 'a partition named twice');
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500', 'id', '3')), /repeated/, 'its own partition again');
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500', 'id', 'x')), /bad or repeated/);
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500', 'id', '-2')), /bad or repeated/);
  const many = Array.from({ length: WAIT_GROUP_MAX }, (_, i) => String(i + 10));
  t.equal(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500', 'id', ...many.slice(1))), null, `${WAIT_GROUP_MAX} partitions in all`);
  t.match(checkQueueCommand('write', A(Q_WAIT, 'q', '3', '500', 'id', ...many)), /more than/, 'one more is refused');

  t.equal(checkQueueCommand('write', A(Q_UNWAIT, 'q', '3', 'id', '0', '5', '7')), null, 'a grouped unwait');
  t.equal(checkQueueCommand('write', A(Q_UNWAIT, 'q', '3', 'id', '0')), null);
  t.same(waitPartitions(A(Q_UNWAIT, 'q', '3', 'id', '0', '5', '7')), [3, 5, 7]);
  t.same(waitPartitions(A(Q_UNWAIT, 'q', '3', 'id', '1')), [3]);
  t.equal(unwaitAnswered(A(Q_UNWAIT, 'q', '3', 'id', '0', '5')), false);
  t.equal(unwaitAnswered(A(Q_UNWAIT, 'q', '3', 'id', '1', '5')), true);
  t.equal(waitIdOf(A(Q_UNWAIT, 'q', '3', 'n.b.7', '0', '5')), 'n.b.7');
  t.match(checkQueueCommand('write', A(Q_UNWAIT, 'q', '3', 'id', '2', '5')), /bad arguments/, 'the flag is 0 or 1');
  t.match(checkQueueCommand('write', A(Q_UNWAIT, 'q', '3', 'id', '0', '3')), /repeated/);
});

t.test("a partition's shard: the queue name's shard, then the next ones in turn", async (t) => {
  const q = Buffer.from('orders');
  const home = shardOfSlot(keySlot(q), 16);
  t.equal(queuePartitionShard(q, 0, 16), home);
  t.equal(queuePartitionShard(q, 3, 16), (home + 3) % 16);
  t.equal(queuePartitionShard(q, 16, 16), home, 'wraps around');
});
