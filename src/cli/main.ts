/**
 * The `lockstep` command line.
 *
 *   lockstep node [options]     run one node (RESP on --port, data under --data-dir); Ctrl-C stops it cleanly
 *   lockstep start [options]    run a local Lockstep for development (today: one node, same options as `node`)
 *   lockstep help               this text
 *
 * Options come from flags, LOCKSTEP_* environment variables or a .env file; `lockstep node --help` lists them.
 */
import { OptionError, NODE_OPTIONS, formatHelp, loadNodeOptions } from '../config/options.js';
import { startClusterNode } from '../node/cluster-node.js';
import { createLogger } from '../util/logger.js';
import { LOCKSTEP_VERSION } from '../server/version.js';

const USAGE = `lockstep ${LOCKSTEP_VERSION}: distributed locks, queues and a coherent cache over the Redis protocol

Usage:
  lockstep node [options]    run one node (see: lockstep node --help)
  lockstep start [options]   run a local Lockstep for development (today a single node; same options)
  lockstep version           print the version
  lockstep help              this text
`;

async function runNode(argv: string[], title: string): Promise<void> {
  const { options, help, positionals } = loadNodeOptions(argv);
  if (help) {
    console.log(formatHelp(title, NODE_OPTIONS));
    return;
  }
  if (positionals.length > 0) throw new OptionError(`unexpected argument "${positionals[0]}" (see --help)`);
  const logger = createLogger({ level: options.logLevel, format: options.logFormat, name: 'lockstep' });
  const node = await startClusterNode(options, logger);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    const force = setTimeout(() => process.exit(1), 5000);
    force.unref();
    node.close().then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err }, 'error during shutdown');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  if (title.startsWith('lockstep start')) {
    console.log(`Lockstep is running: redis-cli -p ${node.port}   (Ctrl-C to stop)`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'node':
        await runNode(rest, 'lockstep node: run one Lockstep node');
        return -1;
      case 'start':
        await runNode(rest, 'lockstep start: run a local Lockstep (one node for now)');
        return -1;
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
