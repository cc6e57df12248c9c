/** Shared helpers for the RESP codec tests: seeded command generators and chunk splitters. */
import type { RespLimits } from '../../../src/config/limits.js';
import { RESP_LIMITS_DEFAULT } from '../../../src/config/limits.js';
import { RespParser } from '../../../protocol/resp/parser.js';
import type { RespProtocolError } from '../../../protocol/resp/parser.js';
import type { Rng } from '../../../src/util/rng.js';

export const LIMITS: RespLimits = { ...RESP_LIMITS_DEFAULT };

export function randomBytes(rng: Rng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  // A xorshift32 stream seeded from rng: as replayable as rng itself, and much cheaper per byte.
  let x = (Math.floor(rng.next() * 4294967296) | 1) >>> 0;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** One random argument: empty, short text, binary (CR, LF, NUL and all), medium, or now and then large. */
export function randomArg(rng: Rng): Buffer {
  const r = rng.next();
  if (r < 0.1) return Buffer.alloc(0);
  if (r < 0.5) return Buffer.from(`key:${rng.int(0, 100000)}`);
  if (r < 0.85) return randomBytes(rng, rng.int(1, 64));
  if (r < 0.985) return randomBytes(rng, rng.int(64, 1024));
  if (r < 0.999) return randomBytes(rng, rng.int(1024, 8 * 1024));
  return randomBytes(rng, rng.int(8 * 1024, 100 * 1024 + 1));
}

/** A word an inline command can carry unquoted. */
export function randomWord(rng: Rng): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-.{}';
  let s = '';
  const n = rng.int(1, 12);
  for (let i = 0; i < n; i++) s += alphabet[rng.int(0, alphabet.length)];
  return s;
}

/** Splits `input` into chunks (views) whose sizes are drawn from [1, maxChunk]. */
export function splitRandom(rng: Rng, input: Buffer, maxChunk: number): Buffer[] {
  const chunks: Buffer[] = [];
  let pos = 0;
  while (pos < input.length) {
    const n = Math.min(input.length - pos, rng.int(1, maxChunk + 1));
    chunks.push(input.subarray(pos, pos + n));
    pos += n;
  }
  return chunks;
}

export interface ParseOutcome {
  commands: Buffer[][];
  error: RespProtocolError | null;
}

/** Feeds the chunks in order to a fresh parser, keeping every command (args kept beyond the callback). */
export function parseChunks(chunks: readonly Buffer[], limits: RespLimits = LIMITS): ParseOutcome {
  const parser = new RespParser(limits);
  const commands: Buffer[][] = [];
  let error: RespProtocolError | null = null;
  for (const c of chunks) {
    error = parser.feed(c, (args) => commands.push(args));
    if (error !== null) break;
  }
  return { commands, error };
}

/** Every command rendered as hex strings, for readable deep comparisons. */
export function hexCommands(commands: readonly Buffer[][]): string[][] {
  return commands.map((args) => args.map((a) => a.toString('hex')));
}

/** True when two command lists are byte-for-byte equal. */
export function sameCommands(a: readonly Buffer[][], b: readonly Buffer[][]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as Buffer[];
    const y = b[i] as Buffer[];
    if (x.length !== y.length) return false;
    for (let j = 0; j < x.length; j++) if (!(x[j] as Buffer).equals(y[j] as Buffer)) return false;
  }
  return true;
}
