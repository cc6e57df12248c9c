/**
 * Decodes a reply record (keyspace-reply.ts) into a small value tree. Used only where the edge must combine the
 * answers of several shards (MGET across shards, DBSIZE, KEYS, SCAN); single-shard replies are replayed straight
 * into the client's writer without building values.
 */
import type { ReplySink } from '../server/command.js';
import { replayReply } from './keyspace-reply.js';

export type RecordValue =
  | null
  | number
  | bigint
  | Buffer
  | { ok: true }
  | { simple: string }
  | { error: string }
  | { double: number }
  | { bool: boolean }
  | RecordValue[];

class ValueSink implements ReplySink {
  readonly proto = 3 as const;
  readonly top: RecordValue[] = [];
  /** Open aggregates: the array being filled and how many elements it still expects. */
  private readonly stack: { items: RecordValue[]; left: number }[] = [];

  private put(v: RecordValue): void {
    const open = this.stack[this.stack.length - 1];
    if (open === undefined) {
      this.top.push(v);
      return;
    }
    open.items.push(v);
    open.left--;
    this.close();
  }

  private close(): void {
    for (;;) {
      const open = this.stack[this.stack.length - 1];
      if (open === undefined || open.left > 0) return;
      this.stack.pop();
      this.put(open.items);
    }
  }

  private open(n: number): void {
    const items: RecordValue[] = [];
    if (n === 0) {
      this.put(items);
      return;
    }
    this.stack.push({ items, left: n });
  }

  ok(): void {
    this.put({ ok: true });
  }
  simple(s: string): void {
    this.put({ simple: s });
  }
  error(msg: string): void {
    this.put({ error: msg });
  }
  integer(n: number | bigint): void {
    this.put(n);
  }
  bulk(b: Buffer | string): void {
    this.put(typeof b === 'string' ? Buffer.from(b) : Buffer.from(b));
  }
  bulkRange(src: Uint8Array, start: number, end: number): void {
    this.put(Buffer.from(src.subarray(start, end)));
  }
  nil(): void {
    this.put(null);
  }
  nilArray(): void {
    this.put(null);
  }
  arrayHeader(n: number): void {
    this.open(n);
  }
  mapHeader(n: number): void {
    this.open(2 * n);
  }
  setHeader(n: number): void {
    this.open(n);
  }
  pushHeader(n: number): void {
    this.open(n);
  }
  double(d: number): void {
    this.put({ double: d });
  }
  boolean(b: boolean): void {
    this.put({ bool: b });
  }
  verbatim(text: string): void {
    this.put(Buffer.from(text));
  }
}

/** The first (normally only) value of a record. Bulk strings are copied (the record may be a shared slab). */
export function recordValue(record: Uint8Array): RecordValue {
  const sink = new ValueSink();
  replayReply(record, sink);
  return sink.top[0] ?? null;
}

export function isErrorValue(v: RecordValue): v is { error: string } {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v) && 'error' in v;
}
