/**
 * Entry point of a shard worker thread (spawned by src/cluster/shard-runtime.ts). All logic lives in
 * src/cluster/shard-worker.ts; the contract with the edge is src/cluster/worker-protocol.ts.
 */
import { parentPort } from 'node:worker_threads';
import { runShardWorker } from '../src/cluster/shard-worker.js';

if (parentPort === null) throw new Error('workers/shard-worker.js must run as a worker thread');
runShardWorker(parentPort);
