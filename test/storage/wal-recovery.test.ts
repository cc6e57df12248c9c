import t from 'tap';
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { Wal, WalCorruptionError, type WalOptions } from '../../src/storage/wal.js';
import type { Entry, HardState } from '../../src/raft/types.js';
import { entry, recordSpans, tempDir, view } from './helpers.js';

const opts: WalOptions = { limits: { segmentBytes: 1 << 20, recordBytesMax: 64 * 1024 }, fsync: 'never' };
const SEG = 'wal-0000000000000001.log';
const BATCH_BEGIN = 5;

interface Expected {
  entries: Map<number, Array<[number, number, string]>>;
  hard: Map<number, HardState>;
}

/** Effects of each record in write order, so a test can compute the state a prefix of the file must recover. */
type Effect = { end: number; group: number; entry?: Entry; hs?: HardState };

function expectedAt(effects: Effect[], cut: number): Expected {
  const out: Expected = { entries: new Map(), hard: new Map() };
  for (const e of effects) {
    if (e.end > cut) break;
    if (e.entry) {
      const l = out.entries.get(e.group) ?? [];
      l.push([e.entry.index, e.entry.term, new TextDecoder().decode(e.entry.data)]);
      out.entries.set(e.group, l);
    }
    if (e.hs) out.hard.set(e.group, e.hs);
  }
  return out;
}

function actual(wal: Wal): Expected {
  const out: Expected = { entries: new Map(), hard: new Map() };
  for (const [g, r] of wal.recovered()) {
    if (r.entries.length > 0) out.entries.set(g, view(r.entries));
    if (r.hardState.term !== 0) out.hard.set(g, r.hardState);
  }
  return out;
}

/**
 * Writes a small log: 20 batches, each synced on its own; most hold one ENTRIES record, every third also a
 * HARDSTATE record. Returns the file bytes and each record's effect.
 */
async function buildLog(dir: string): Promise<{ bytes: Uint8Array; effects: Effect[]; batches: Array<[number, number]> }> {
  const wal = await Wal.open(dir, opts);
  const next = new Map<number, number>();
  const plan: Array<{ group: number; entry: Entry; hs: HardState | null }> = [];
  for (let b = 0; b < 20; b++) {
    const group = b % 3;
    const i = (next.get(group) ?? 0) + 1;
    next.set(group, i);
    const e = entry(i, 1 + (b >> 3), `g${group}-${i}`);
    const hs = b % 3 === 2 ? { term: 1 + (b >> 3), vote: group, commit: i - 1 } : null;
    wal.append(group, [e], hs);
    await wal.sync();
    plan.push({ group, entry: e, hs });
  }
  await wal.close();
  const bytes = new Uint8Array(readFileSync(path.join(dir, SEG)));
  const spans = recordSpans(bytes);
  const effects: Effect[] = [];
  const batches: Array<[number, number]> = [];
  let k = 0;
  let batchStart = -1;
  for (const s of spans) {
    if (s.type === BATCH_BEGIN) {
      if (batchStart >= 0) batches.push([batchStart, s.start]);
      batchStart = s.start;
      continue;
    }
    const p = plan[k]!;
    if (s.type === 1) {
      effects.push({ end: s.end, group: p.group, entry: p.entry });
      if (p.hs === null) k++;
    } else if (s.type === 2) {
      effects.push({ end: s.end, group: p.group, hs: p.hs! });
      k++;
    }
  }
  batches.push([batchStart, bytes.length]);
  if (k !== plan.length || spans[spans.length - 1]!.end !== bytes.length) throw new Error('log layout not as expected');
  return { bytes, effects, batches };
}

t.test('a log cut at every byte offset recovers exactly the records written before the cut, and keeps working', async (t) => {
  const src = tempDir(t);
  const { bytes, effects } = await buildLog(src);
  t.ok(bytes.length > 600 && bytes.length < 4000, `log of ${bytes.length} bytes`);
  const work = tempDir(t);
  let failures = 0;
  for (let cut = 0; cut <= bytes.length; cut++) {
    const dir = path.join(work, String(cut));
    mkdirSync(dir);
    writeFileSync(path.join(dir, SEG), bytes.subarray(0, cut));
    const want = expectedAt(effects, cut);
    let wal = await Wal.open(dir, opts);
    const got = actual(wal);
    const ok = JSON.stringify([...got.entries].sort()) === JSON.stringify([...want.entries].sort()) &&
      JSON.stringify([...got.hard].sort()) === JSON.stringify([...want.hard].sort());
    if (!ok) {
      failures++;
      if (failures <= 3) t.fail(`cut at ${cut}: recovered ${JSON.stringify([...got.entries])} / ${JSON.stringify([...got.hard])}`);
    }
    // The cut file was repaired in place; appending continues and survives another reopen.
    const g1 = wal.recovered().get(1)?.entries ?? [];
    const nextIndex = g1.length + 1;
    wal.append(1, [entry(nextIndex, 9, 'after')], { term: 9, vote: 1, commit: 0 });
    await wal.close();
    wal = await Wal.open(dir, opts);
    const r = wal.recovered().get(1);
    if (r === undefined || r.entries.length !== nextIndex || r.entries[nextIndex - 1]!.term !== 9 || r.hardState.term !== 9) {
      failures++;
      if (failures <= 3) t.fail(`cut at ${cut}: append after recovery lost`);
    }
    await wal.close();
    rmSync(dir, { recursive: true, force: true });
  }
  t.equal(failures, 0, `all ${bytes.length + 1} cut offsets recover a prefix and accept appends`);
});

t.test('a flipped bit in any earlier batch is corruption; in the last batch it is cut as a torn tail', async (t) => {
  const src = tempDir(t);
  const { bytes, effects, batches } = await buildLog(src);
  const work = tempDir(t);
  const dir = path.join(work, 'x');
  const file = path.join(dir, SEG);
  const open = async (b: Uint8Array): Promise<Wal | WalCorruptionError> => {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir);
    writeFileSync(file, b);
    try {
      return await Wal.open(dir, opts);
    } catch (e) {
      if (e instanceof WalCorruptionError) return e;
      throw e;
    }
  };

  // Every bit of batch 10 of 20 (its BATCH_BEGIN and records).
  const [mStart, mEnd] = batches[9]!;
  let notCorrupt = 0;
  let namesFile = 0;
  for (let o = mStart; o < mEnd; o++) {
    for (let bit = 0; bit < 8; bit++) {
      const b = bytes.slice();
      b[o]! ^= 1 << bit;
      const res = await open(b);
      if (res instanceof Wal) {
        notCorrupt++;
        await res.close();
      } else {
        if (res.code === 'WAL_CORRUPT' && res.file === file && res.offset >= mStart && res.offset < mEnd) namesFile++;
      }
    }
  }
  const bits = (mEnd - mStart) * 8;
  t.equal(notCorrupt, 0, `all ${bits} flips in a middle batch refuse to open`);
  t.equal(namesFile, bits, 'the error names the file and an offset inside the damaged batch');

  // The last batch holds an ENTRIES and a HARDSTATE record (batch 20 is b=19: 19 % 3 == 1, so ENTRIES only;
  // use batch 18 (b=17) as "last" by cutting the file after it).
  const [lStart, lEnd] = batches[17]!;
  const prefix = bytes.slice(0, lEnd);
  const spans = recordSpans(prefix).filter((s) => s.start >= lStart);
  t.same(spans.map((s) => s.type), [BATCH_BEGIN, 1, 2], 'last batch: BATCH_BEGIN, ENTRIES, HARDSTATE');
  let wrong = 0;
  for (let o = lStart; o < lEnd; o++) {
    for (let bit = 0; bit < 8; bit++) {
      const b = prefix.slice();
      b[o]! ^= 1 << bit;
      const res = await open(b);
      if (!(res instanceof Wal)) {
        wrong++;
        continue;
      }
      // The records before the damaged one survive; the damaged one and everything after it are cut.
      const damaged = spans.find((s) => o >= s.start && o < s.end)!;
      const want = expectedAt(effects, damaged.start);
      const got = actual(res);
      if (
        JSON.stringify([...got.entries].sort()) !== JSON.stringify([...want.entries].sort()) ||
        JSON.stringify([...got.hard].sort()) !== JSON.stringify([...want.hard].sort()) ||
        res.stats.tornBytesCut !== lEnd - damaged.start ||
        statSync(file).size !== damaged.start
      ) {
        wrong++;
      }
      await res.close();
    }
  }
  t.equal(wrong, 0, `all ${(lEnd - lStart) * 8} flips in the last batch are cut as a torn tail at the damaged record`);
});

t.test('damage in a segment that is not the last one is corruption, as is a missing segment', async (t) => {
  const dir = tempDir(t);
  const small: WalOptions = { limits: { segmentBytes: 1024, recordBytesMax: 1024 }, fsync: 'never' };
  let wal = await Wal.open(dir, small);
  for (let i = 1; i <= 40; i++) {
    wal.append(1, [entry(i, 1, 'x'.repeat(50))], null);
    await wal.sync();
  }
  await wal.close();
  const names = readdirSync(dir).filter((n) => n.endsWith('.log')).sort();
  t.ok(names.length >= 3);
  // Cut the tail of the first segment: in a non-last segment that is corruption, not a torn tail.
  const first = path.join(dir, names[0]!);
  const orig = readFileSync(first);
  writeFileSync(first, orig.subarray(0, orig.length - 3));
  await t.rejects(Wal.open(dir, small), { code: 'WAL_CORRUPT', file: first });
  writeFileSync(first, orig);
  // A missing middle segment.
  const mid = path.join(dir, names[1]!);
  const midBytes = readFileSync(mid);
  rmSync(mid);
  await t.rejects(Wal.open(dir, small), { code: 'WAL_CORRUPT', message: /missing/ });
  writeFileSync(mid, midBytes);
  wal = await Wal.open(dir, small);
  t.equal(wal.recovered().get(1)!.entries.length, 40);
  await wal.close();
});

t.test('a last segment torn while being created is removed and the previous one continues', async (t) => {
  const dir = tempDir(t);
  const small: WalOptions = { limits: { segmentBytes: 1024, recordBytesMax: 1024 }, fsync: 'never' };
  let wal = await Wal.open(dir, small);
  for (let i = 1; i <= 30; i++) {
    wal.append(1, [entry(i, 1, 'x'.repeat(50))], null);
    await wal.sync();
  }
  await wal.close();
  const names = readdirSync(dir).filter((n) => n.endsWith('.log')).sort();
  const lastSeq = Number(names[names.length - 1]!.slice(4, 20));
  const torn = path.join(dir, `wal-${String(lastSeq + 1).padStart(16, '0')}.log`);
  writeFileSync(torn, new Uint8Array([0x4c, 0x4b, 0x57]));
  wal = await Wal.open(dir, small);
  t.equal(wal.recovered().get(1)!.entries.length, 30);
  wal.append(1, [entry(31, 1)], null);
  await wal.close();
  wal = await Wal.open(dir, small);
  t.equal(wal.recovered().get(1)!.entries.length, 31);
  await wal.close();
});

t.test('a record longer than recordBytesMax is corruption when followed by a valid batch', async (t) => {
  const dir = tempDir(t);
  let wal = await Wal.open(dir, opts);
  for (let i = 1; i <= 3; i++) {
    wal.append(1, [entry(i, 1)], null);
    await wal.sync();
  }
  await wal.close();
  const file = path.join(dir, SEG);
  const b = new Uint8Array(readFileSync(file));
  const spans = recordSpans(b);
  const victim = spans.find((s) => s.type === 1)!;
  new DataView(b.buffer).setUint32(victim.start, 10_000_000, true);
  writeFileSync(file, b);
  await t.rejects(Wal.open(dir, opts), { code: 'WAL_CORRUPT', offset: victim.start, message: /out of range/ });
  void wal;
});
