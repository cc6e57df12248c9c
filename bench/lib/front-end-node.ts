/**
 * Benchmark harness: the RESP front end and the node-local cache store alone (no Raft, no shard workers), as a
 * child process. `bench:resp` measures this layer against Redis; `lockstep node` itself always runs the
 * replicated cluster runtime. Takes the node's flags (`--port`, limits, ...); stops on SIGTERM/SIGINT.
 */
import { loadNodeOptions } from '../../src/config/options.js';
import { startLocalNode } from '../../src/node/local-node.js';
import { createLogger } from '../../src/util/logger.js';

const { options } = loadNodeOptions(process.argv.slice(2));
const logger = createLogger({ level: options.logLevel, format: 'json', name: 'lockstep-front-end' });
const node = await startLocalNode(options, logger);
for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.on(sig, () => {
    void node.close().then(() => process.exit(0));
  });
}
