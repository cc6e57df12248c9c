/**
 * Command line for the deterministic simulator.
 *
 *   node dist/test/sim/cli.js --seed N [--nodes 3|5] [--groups G] [--ticks T] [--verbose]
 *       replays one seed exactly (same seed and options, same event trace and trace hash)
 *   node dist/test/sim/cli.js --seeds COUNT [--from FIRST] [--nodes 3|5] [--ticks T] [--keep-going]
 *       runs COUNT seeds from FIRST, prints progress and a summary (seeds/s); stops at the first failure unless
 *       --keep-going. Exit status 1 if any seed failed.
 */
import { formatFailure, runSimulation, type InjectedBug, type SimOptions, type SimResult } from './simulator.js';

interface CliArgs {
  seed?: number;
  seeds?: number;
  from: number;
  nodes?: 3 | 5;
  groups?: number;
  ticks?: number;
  verbose: boolean;
  keepGoing: boolean;
  bug?: InjectedBug;
  reportDrops: boolean;
}

const USAGE = 'usage: cli.js (--seed N | --seeds COUNT [--from FIRST] [--keep-going]) [--nodes 3|5] [--groups G] [--ticks T] [--report-drops] [--verbose]';

function parseArgs(argv: string[]): CliArgs {
  const args: CliArgs = { from: 1, verbose: false, keepGoing: false, reportDrops: false };
  const int = (name: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isSafeInteger(n) || n < min) {
      throw new Error(`option ${name}: expected an integer >= ${min}, got ${v ?? 'nothing'}\n${USAGE}`);
    }
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    switch (a) {
      case '--seed':
        args.seed = int(a, argv[++i], 0);
        break;
      case '--seeds':
        args.seeds = int(a, argv[++i], 1);
        break;
      case '--from':
        args.from = int(a, argv[++i], 0);
        break;
      case '--nodes': {
        const n = int(a, argv[++i], 3);
        if (n !== 3 && n !== 5) throw new Error(`option --nodes: expected 3 or 5, got ${n}`);
        args.nodes = n;
        break;
      }
      case '--groups':
        args.groups = int(a, argv[++i], 1);
        break;
      case '--ticks':
      case '--steps':
        args.ticks = int(a, argv[++i], 1);
        break;
      case '--verbose':
      case '-v':
        args.verbose = true;
        break;
      case '--keep-going':
        args.keepGoing = true;
        break;
      case '--report-drops':
        args.reportDrops = true;
        break;
      case '--bug':
        args.bug = argv[++i] as InjectedBug;
        break;
      case '--help':
      case '-h':
        console.log(USAGE);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  }
  if (args.seed === undefined && args.seeds === undefined) throw new Error(USAGE);
  return args;
}

function optionsFor(seed: number, a: CliArgs): SimOptions {
  const o: SimOptions = { seed };
  if (a.nodes !== undefined) o.nodes = a.nodes;
  if (a.groups !== undefined) o.groups = a.groups;
  if (a.ticks !== undefined) o.ticks = a.ticks;
  if (a.bug !== undefined) o.bug = a.bug;
  if (a.reportDrops) o.reportDrops = true;
  return o;
}

function summary(r: SimResult): string {
  const s = r.stats;
  return (
    `seed ${r.seed}: ${r.ok ? 'ok' : `FAILED (${r.failure?.invariant})`} trace=${r.traceHash} events=${r.events} ` +
    `nodes=${r.nodes} groups=${r.groups} ticks=${s.ticks} crashes=${s.crashes} partitions=${s.partitions} ` +
    `leaders=${s.leaderChanges} snapshots=${s.snapshotsInstalled} compactions=${s.compactions} conf=${s.confChanges} ` +
    `msgs=${s.messagesSent}/${s.messagesDropped}dropped ops=${s.clientOps} pending=${s.pendingOps} lin=${s.linResult}`
  );
}

function main(): number {
  let args: CliArgs;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error((err as Error).message);
    return 2;
  }
  if (args.seed !== undefined) {
    const opts = optionsFor(args.seed, args);
    if (args.verbose) opts.verbose = (line) => console.log(line);
    const r = runSimulation(opts);
    console.log(summary(r));
    if (!r.ok) console.log(formatFailure(r));
    return r.ok ? 0 : 1;
  }
  const count = args.seeds!;
  const t0 = performance.now();
  let failed = 0;
  let lastPrint = t0;
  const failures: number[] = [];
  for (let i = 0; i < count; i++) {
    const seed = args.from + i;
    const r = runSimulation(optionsFor(seed, args));
    if (!r.ok) {
      failed++;
      failures.push(seed);
      console.log(formatFailure(r));
      if (!args.keepGoing) break;
    }
    const now = performance.now();
    if (now - lastPrint > 5000) {
      lastPrint = now;
      const rate = (i + 1) / ((now - t0) / 1000);
      console.log(`${i + 1}/${count} seeds, ${failed} failed, ${rate.toFixed(1)} seeds/s`);
    }
  }
  const secs = (performance.now() - t0) / 1000;
  const ran = failed > 0 && !args.keepGoing ? failures[0]! - args.from + 1 : count;
  console.log(
    `ran ${ran} seeds from ${args.from} in ${secs.toFixed(1)} s (${(ran / secs).toFixed(1)} seeds/s): ` +
      `${failed} failed${failures.length ? ` (${failures.slice(0, 20).join(', ')}${failures.length > 20 ? ', ...' : ''})` : ''}`,
  );
  return failed > 0 ? 1 : 0;
}

process.exitCode = main();
