/**
 * Micro-benchmark of the node-local cache store: get/set ops/s over a keyspace of 100k keys with LRU eviction
 * active (itemsMax = half the keyspace), against a named baseline: a plain `Map` doing the same gets and sets with
 * no LRU, TTL or accounting. Also reports heap + ArrayBuffer bytes per entry after filling the store.
 *
 *   node .build/<x>/bench/cache-store.js [--ops N] [--keys N] [--value-bytes N]
 *
 * Tiny by default (so it runs in CI); prints a table, then one JSON line.
 */
import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';
import { CacheStore } from '../src/cache/store.js';
import { createRng } from '../src/util/rng.js';

function argNum(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  if (i < 0) return dflt;
  const v = Number(process.argv[i + 1]);
  if (!Number.isFinite(v) || v <= 0) throw new RangeError(`${name} needs a positive number`);
  return v;
}

const ops = argNum('--ops', 200_000);
const keyCount = argNum('--keys', 100_000);
const valueBytes = argNum('--value-bytes', 32);
const itemsMax = Math.floor(keyCount / 2);

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

// Keys and values as they arrive from the network: views into one big buffer.
const net = Buffer.alloc(keyCount * 16 + valueBytes + 64);
const keys: Buffer[] = [];
for (let i = 0; i < keyCount; i++) {
  const k = net.subarray(i * 16, i * 16 + 16);
  k.write(`key:${String(i).padStart(11, '0')}`, 'latin1');
  keys.push(k);
}
const value = Buffer.alloc(valueBytes, 0x61);
const rng = createRng(42);
const picks = new Uint32Array(ops);
for (let i = 0; i < ops; i++) picks[i] = rng.int(0, keyCount);

interface Row {
  name: string;
  opsPerSec: number;
}

function time(name: string, fn: () => void): Row {
  const t0 = process.hrtime.bigint();
  fn();
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  return { name, opsPerSec: Math.round(ops / s) };
}

function storeRows(): Row[] {
  const db = new CacheStore(
    { itemsMax, bytesMax: 0, expireSweepKeysMax: 200, expireSweepIntervalMs: 100 },
    () => 0,
  );
  for (let i = 0; i < keyCount; i++) db.set(keys[i] as Buffer, value);
  const rows = [
    time('store set (evicting)', () => {
      for (let i = 0; i < ops; i++) db.set(keys[picks[i] as number] as Buffer, value);
    }),
    time('store get (50% hits)', () => {
      for (let i = 0; i < ops; i++) db.get(keys[picks[i] as number] as Buffer);
    }),
    time('store 90% get / 10% set', () => {
      for (let i = 0; i < ops; i++) {
        const k = keys[picks[i] as number] as Buffer;
        if (i % 10 === 0) db.set(k, value);
        else if (db.get(k) === undefined) db.set(k, value);
      }
    }),
  ];
  if (db.size !== itemsMax) throw new Error(`store size ${db.size} != itemsMax ${itemsMax}`);
  return rows;
}

function baselineRows(): Row[] {
  const map = new Map<string, Buffer>();
  for (let i = 0; i < keyCount; i++) map.set((keys[i] as Buffer).toString('latin1'), Buffer.from(value));
  return [
    time('baseline Map set', () => {
      for (let i = 0; i < ops; i++) map.set((keys[picks[i] as number] as Buffer).toString('latin1'), Buffer.from(value));
    }),
    time('baseline Map get', () => {
      for (let i = 0; i < ops; i++) map.get((keys[picks[i] as number] as Buffer).toString('latin1'));
    }),
  ];
}

function bytesPerEntry(): { heapAndBuffersPerEntry: number; accountedPerEntry: number } {
  gc();
  const m0 = process.memoryUsage();
  const db = new CacheStore({ itemsMax: 0, bytesMax: 0, expireSweepKeysMax: 200, expireSweepIntervalMs: 100 }, () => 0);
  for (let i = 0; i < keyCount; i++) db.set(keys[i] as Buffer, value);
  gc();
  const m1 = process.memoryUsage();
  const used = m1.heapUsed + m1.arrayBuffers - (m0.heapUsed + m0.arrayBuffers);
  return { heapAndBuffersPerEntry: Math.round(used / db.size), accountedPerEntry: Math.round(db.bytes / db.size) };
}

storeRows(); // warm-up
baselineRows();
const rows = [...storeRows(), ...baselineRows()];
const mem = bytesPerEntry();
const find = (n: string) => rows.find((r) => r.name === n)?.opsPerSec ?? 0;

console.log(`cache-store: ${ops} ops, ${keyCount} keys, itemsMax ${itemsMax}, ${valueBytes}-byte values, 16-byte keys`);
console.log('| operation | ops/s |');
console.log('|---|---:|');
for (const r of rows) console.log(`| ${r.name} | ${r.opsPerSec.toLocaleString('en-US')} |`);
console.log(`| memory: heap + ArrayBuffers per entry | ${mem.heapAndBuffersPerEntry} B (accounted ${mem.accountedPerEntry} B) |`);
console.log(
  JSON.stringify({
    bench: 'cache-store',
    ops,
    keys: keyCount,
    itemsMax,
    valueBytes,
    results: Object.fromEntries(rows.map((r) => [r.name, r.opsPerSec])),
    setVsBaseline: +(find('store set (evicting)') / find('baseline Map set')).toFixed(2),
    getVsBaseline: +(find('store get (50% hits)') / find('baseline Map get')).toFixed(2),
    ...mem,
  }),
);
