/**
 * Micro-benchmark of the RESP codec hot path: parsing a 16-deep pipeline of `SET key:NNN <3-byte value>` /
 * `GET key:NNN` requests with RespParser, and encoding their replies (+OK, $3 bulk) with ReplyWriter.
 *
 * Baseline (named "naive-string"): the obvious implementation a first version would use: decode the chunk to a
 * latin1 string and split it on CRLF for parsing; build reply strings and Buffer.from them for encoding. The
 * figures to watch are the ratios, which are stable across machines; absolute numbers depend on the host.
 *
 * Usage: node .build/<name>/bench/resp-codec.js [--iterations N]   (N pipelines per measurement; tiny default)
 * Prints one line per measurement and, last, one JSON line.
 */
import { RESP_LIMITS_DEFAULT } from '../src/config/limits.js';
import { RespParser } from '../protocol/resp/parser.js';
import { ReplyWriter, encodeCommand } from '../protocol/resp/writer.js';

const DEPTH = 16;

function parseArgs(argv: readonly string[]): { iterations: number } {
  let iterations = 2000;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--iterations') {
      const n = Number(argv[i + 1]);
      if (!Number.isSafeInteger(n) || n < 1) {
        throw new RangeError(`--iterations must be a positive integer, got ${String(argv[i + 1])}`);
      }
      iterations = n;
      i++;
    } else {
      throw new RangeError(`unknown option ${String(argv[i])} (accepted: --iterations N)`);
    }
  }
  return { iterations };
}

function buildPipeline(): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < DEPTH; i++) {
    const key = `key:${String(i).padStart(3, '0')}`;
    parts.push(i % 2 === 0 ? encodeCommand(['SET', key, 'xyz']) : encodeCommand(['GET', key]));
  }
  return Buffer.concat(parts);
}

/** Runs fn(iterations) once to warm up, then times it; returns commands per second. */
function measure(iterations: number, fn: (n: number) => number): number {
  fn(Math.max(2000, Math.min(iterations, 20000)));
  const start = process.hrtime.bigint();
  const commands = fn(iterations);
  const ns = Number(process.hrtime.bigint() - start);
  return commands / (ns / 1e9);
}

function parseWithRespParser(pipeline: Buffer): (n: number) => number {
  const parser = new RespParser(RESP_LIMITS_DEFAULT);
  let count = 0;
  let keyBytes = 0;
  const onCommand = (args: Buffer[]): void => {
    count++;
    keyBytes += (args[1] as Buffer).length;
  };
  return (n) => {
    count = 0;
    for (let i = 0; i < n; i++) {
      const err = parser.feed(pipeline, onCommand);
      if (err !== null) throw err;
    }
    if (keyBytes < 0) throw new Error('unreachable');
    return count;
  };
}

/** Baseline parser: string decode + split on CRLF, multibulk only, no limits or partial input. */
function parseNaive(pipeline: Buffer): (n: number) => number {
  let keyBytes = 0;
  return (n) => {
    let count = 0;
    for (let i = 0; i < n; i++) {
      const lines = pipeline.toString('latin1').split('\r\n');
      let j = 0;
      while (j < lines.length - 1) {
        const argc = Number((lines[j] as string).slice(1));
        j++;
        const args: Buffer[] = [];
        for (let k = 0; k < argc; k++) {
          args.push(Buffer.from(lines[j + 1] as string, 'latin1'));
          j += 2;
        }
        count++;
        keyBytes += (args[1] as Buffer).length;
      }
    }
    if (keyBytes < 0) throw new Error('unreachable');
    return count;
  };
}

function encodeWithReplyWriter(): (n: number) => number {
  const writer = new ReplyWriter(2);
  const value = Buffer.from('xyz');
  let bytes = 0;
  return (n) => {
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < DEPTH; c += 2) {
        writer.ok();
        writer.bulk(value);
      }
      bytes += writer.take().length;
    }
    if (bytes < 0) throw new Error('unreachable');
    return n * DEPTH;
  };
}

/** Baseline encoder: reply strings concatenated, then one Buffer.from per pipeline. */
function encodeNaive(): (n: number) => number {
  const value = Buffer.from('xyz');
  let bytes = 0;
  return (n) => {
    for (let i = 0; i < n; i++) {
      let out = '';
      for (let c = 0; c < DEPTH; c += 2) {
        out += '+OK\r\n';
        const s = value.toString('latin1');
        out += `$${value.length}\r\n${s}\r\n`;
      }
      bytes += Buffer.from(out, 'latin1').length;
    }
    if (bytes < 0) throw new Error('unreachable');
    return n * DEPTH;
  };
}

function main(): void {
  const { iterations } = parseArgs(process.argv.slice(2));
  const pipeline = buildPipeline();
  const results = {
    bench: 'resp-codec',
    depth: DEPTH,
    iterations,
    commands: iterations * DEPTH,
    parseCmdsPerSec: Math.round(measure(iterations, parseWithRespParser(pipeline))),
    parseBaselineCmdsPerSec: Math.round(measure(iterations, parseNaive(pipeline))),
    encodeCmdsPerSec: Math.round(measure(iterations, encodeWithReplyWriter())),
    encodeBaselineCmdsPerSec: Math.round(measure(iterations, encodeNaive())),
    baseline: 'naive-string',
    node: process.version,
  };
  const fmt = (n: number): string => n.toLocaleString('en-US');
  const ratio = (a: number, b: number): string => (a / b).toFixed(2);
  console.log(`pipeline: ${DEPTH} x SET/GET, ${pipeline.length} bytes, ${iterations} iterations`);
  const line = (what: string, ours: number, base: number): string =>
    `${what}  ${fmt(ours)} cmd/s   naive-string ${fmt(base)} cmd/s   x${ratio(ours, base)}`;
  console.log(line('parse   RespParser ', results.parseCmdsPerSec, results.parseBaselineCmdsPerSec));
  console.log(line('encode  ReplyWriter', results.encodeCmdsPerSec, results.encodeBaselineCmdsPerSec));
  console.log(JSON.stringify(results));
}

main();
