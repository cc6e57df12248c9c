/**
 * One Lockstep node serving RESP on its node-local keyspace. This is the assembly point: it builds the cache
 * store, users, command table and RESP server from `NodeOptions`, runs the active expiry sweep, and shuts down
 * cleanly. (The cluster runtime will put Raft-replicated shards behind the same front end.)
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { CacheStore } from '../cache/store.js';
import { STRING_COMMANDS } from '../cache/string-commands.js';
import type { NodeOptions } from '../config/options.js';
import { Acl } from '../server/acl.js';
import { connectionCommands } from '../server/commands/connection-commands.js';
import { constParam, frontEndConfigParams, numericParam, resetServerStats, serverCommands } from '../server/commands/server-commands.js';
import { RespServer } from '../server/resp-server.js';

export interface LocalNode {
  server: RespServer;
  db: CacheStore;
  port: number;
  close(): Promise<void>;
}

export async function startLocalNode(options: NodeOptions, logger: Logger): Promise<LocalNode> {
  const acl = new Acl(options.requirepass);
  if (options.aclFile !== '') acl.loadFile(options.aclFile);
  const db = new CacheStore(options.cache, Date.now);
  const server = new RespServer(
    { host: options.host, port: options.port, resp: options.resp, server: options.server, protectedMode: options.protectedMode },
    db,
    acl,
    STRING_COMMANDS,
    logger.child({ module: 'resp' }),
  );
  const GiB = 1024 ** 3;
  server.addCommands(connectionCommands(server));
  server.addCommands(
    serverCommands({
      server,
      runId: randomBytes(20).toString('hex'),
      resetStats: () => resetServerStats(server),
      config: [
        ...frontEndConfigParams(options),
        numericParam('maxmemory', () => options.cache.bytesMax, (n) => (options.cache.bytesMax = n), 0, 1024 * GiB, true),
        numericParam('lockstep-cache-max-items', () => options.cache.itemsMax, (n) => (options.cache.itemsMax = n), 0, 1e12),
        numericParam('proto-max-bulk-len', () => options.resp.bulkBytesMax, (n) => {
          options.resp.bulkBytesMax = n;
          options.cache.valueBytesMax = n;
        }, 1, 4 * GiB, true),
        constParam('maxmemory-policy', 'allkeys-lru'),
        // The node-local keyspace is memory only; durability comes from the replicated shards (cluster runtime).
        constParam('save', ''),
        constParam('appendonly', 'no'),
      ],
    }),
  );
  const port = await server.listen();
  const sweep = setInterval(() => db.sweepExpired(options.cache.expireSweepKeysMax), options.cache.expireSweepIntervalMs);
  sweep.unref();
  logger.info({ host: options.host, port }, 'lockstep node ready');
  return {
    server,
    db,
    port,
    async close() {
      clearInterval(sweep);
      await server.close();
    },
  };
}
