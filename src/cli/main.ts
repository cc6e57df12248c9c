/**
 * The `lockstep` command line.
 *
 *   lockstep node [options]     run one node (RESP on --port, data under --data-dir); Ctrl-C stops it cleanly
 *   lockstep start [options]    run a local N-node cluster for development (launcher.ts); Ctrl-C stops every node
 *   lockstep status [options]   nodes and shards of a running cluster (status.ts); exit 0 when healthy
 *   lockstep help               this text
 *
 * Node options come from flags, LOCKSTEP_* environment variables or a .env file; `lockstep node --help` lists them.
 * Exit codes: 0 success, 1 failure (e.g. ports in use, cluster not healthy), 2 bad options or unknown command.
 */
import { OptionError, NODE_OPTIONS, formatHelp, loadNodeOptions } from '../config/options.js';
import { LOCKSTEP_VERSION } from '../server/version.js';
import { runLauncher } from './launcher.js';
import { runStatus } from './status.js';

const USAGE = `lockstep ${LOCKSTEP_VERSION}: distributed locks, queues and a coherent cache over the Redis protocol

Usage:
  lockstep node [options]    run one node (see: lockstep node --help)
  lockstep start [options]   run a local cluster for development: --nodes N (3) node processes on ports
                             --base-port P (7000) + i, data in --data-dir D (./data)/node<i>, --restart to
                             restart nodes that exit; other flags go to every node (see: lockstep start --help)
  lockstep status [options]  nodes (up/down, shards led, pid) and shards (leader, term, commit, applied, lag) of a
                             running cluster; exit 0 when healthy (see: lockstep status --help)
  lockstep version           print the version
  lockstep help              this text
`;

/** Exit code of `lockstep node` when one of its shard workers died (EX_SOFTWARE in sysexits.h). */
export const EXIT_WORKER_LOST = 70;

async function runNode(argv: string[], title: string): Promise<void> {
  const { options, help, positionals } = loadNodeOptions(argv);
  if (help) {
    console.log(formatHelp(title, NODE_OPTIONS));
    return;
  }
  if (positionals.length > 0) throw new OptionError(`unexpected argument "${positionals[0]}" (see --help)`);
  // Loaded here, not at the top: `lockstep status` and `lockstep start` (which only spawn nodes) start faster
  // without the node runtime and pino.
  const { startClusterNode } = await import('../node/cluster-node.js');
  const { createLogger } = await import('../util/logger.js');
  const logger = createLogger({ level: options.logLevel, format: options.logFormat, name: 'lockstep' });
  let stopping = false;
  let exitCode = 0;
  // Set once the node is up. stop() is declared first: a shard worker may die before startClusterNode returns.
  let node: Awaited<ReturnType<typeof startClusterNode>> | undefined;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    const force = setTimeout(() => process.exit(exitCode === 0 ? 1 : exitCode), 5000);
    force.unref();
    if (node === undefined) process.exit(exitCode); // still starting: nothing to close yet
    node.close().then(
      () => {
        logger.info('stopped');
        process.exit(exitCode);
      },
      (err: unknown) => {
        logger.error({ err }, 'error during shutdown');
        process.exit(1);
      },
    );
  };
  node = await startClusterNode(options, logger, {
    onFatal: () => {
      exitCode = EXIT_WORKER_LOST;
      setImmediate(() => stop('shard worker lost'));
    },
  });
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'node':
        await runNode(rest, 'lockstep node: run one Lockstep node');
        return -1;
      case 'start':
        return await runLauncher(rest);
      case 'status':
        return await runStatus(rest);
      case 'version':
      case '--version':
        console.log(LOCKSTEP_VERSION);
        return 0;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        console.log(USAGE);
        return 0;
      default:
        console.error(`lockstep: unknown command "${cmd}"\n\n${USAGE}`);
        return 2;
    }
  } catch (err) {
    if (err instanceof OptionError || (err as { code?: string }).code === 'BAD_ACL') {
      console.error(`lockstep: ${(err as Error).message}`);
      return 2;
    }
    if ((err as { code?: string }).code === 'EADDRINUSE') {
      console.error(`lockstep: ${(err as Error).message} (is another node running on that port?)`);
      return 1;
    }
    throw err;
  }
}
