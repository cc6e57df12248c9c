/** Shared helpers for the storage tests: temp dirs, entries, a tiny independent record-boundary parser. */
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Entry, EntryType } from '../../src/raft/types.js';

export interface TapLike {
  teardown(fn: () => void | Promise<void>): void;
}

export function tempDir(t: TapLike, prefix = 'lockstep-storage-'): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export function entry(index: number, term: number, text = `e${index}`): Entry {
  return { index, term, type: 0 as EntryType, data: new TextEncoder().encode(text) };
}

export function entries(first: number, last: number, term: number, text?: (i: number) => string): Entry[] {
  const out: Entry[] = [];
  for (let i = first; i <= last; i++) out.push(entry(i, term, text ? text(i) : `e${i}`));
  return out;
}

/** Plain view of entries for deep equality. */
export function view(es: readonly Entry[]): Array<[number, number, string]> {
  return es.map((e) => [e.index, e.term, new TextDecoder().decode(e.data)]);
}

export interface RecordSpan {
  start: number;
  end: number;
  type: number;
}

/** Record spans of a segment file, by reading only the length words (independent of the WAL's reader). */
export function recordSpans(file: Uint8Array, headerBytes = 24): RecordSpan[] {
  const out: RecordSpan[] = [];
  let pos = headerBytes;
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  while (pos + 9 <= file.length) {
    const len = dv.getUint32(pos, true);
    const end = pos + 8 + len;
    if (end > file.length) break;
    out.push({ start: pos, end, type: file[pos + 8]! });
    pos = end;
  }
  return out;
}
