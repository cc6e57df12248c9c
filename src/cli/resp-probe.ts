/**
 * A tiny promise-based RESP client for the CLI (`lockstep start` readiness polling, `lockstep status`): open one
 * TCP connection, optionally AUTH, send commands one at a time and read exactly one reply for each. No ioredis in
 * the CLI path: this must keep working when the server misbehaves, and it must never hang.
 *
 * Invariants:
 *  - every call settles within its `timeoutMs` (connect + all replies); on timeout, a protocol error or a closed
 *    connection the socket is destroyed and the promise rejects with a `ProbeError` naming host:port and the cause;
 *  - a server error reply (`-ERR ...`, RESP3 `!`) is a value (`RespError`), not a rejection: callers decide;
 *  - a reply larger than REPLY_BYTES_MAX is refused (protocol error), so a broken peer cannot exhaust memory;
 *  - the socket is always closed when `probe` settles.
 *
 * Parsing is complete for RESP2 and RESP3 (the probe never sends HELLO, so servers answer RESP2; RESP3 types are
 * decoded anyway): maps become arrays of alternating keys and values, attributes are skipped, verbatim strings
 * lose their `txt:` prefix.
 */
import net from 'node:net';

/** Largest reply the probe accepts, in bytes (INFO raft with 16384 shards is about 2 MiB). */
export const REPLY_BYTES_MAX = 64 * 1024 * 1024;
/** Deepest reply nesting the probe accepts. */
export const REPLY_DEPTH_MAX = 64;

export class RespError {
  constructor(readonly message: string) {}
  toString(): string {
    return this.message;
  }
}

export type RespValue = string | number | bigint | boolean | null | RespError | RespValue[];

/** A failed exchange: connection refused/reset/closed, timeout or a protocol error. */
export class ProbeError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

export interface ProbeOptions {
  /** Bound on the whole exchange (connect, AUTH, every command), in milliseconds. */
  timeoutMs: number;
  /** Sent as `AUTH <password>` first when set; a refusal rejects with code 'AUTH'. */
  password?: string;
}

const INCOMPLETE = Symbol('incomplete');
type Parsed = { value: RespValue; end: number } | typeof INCOMPLETE;

function lineEnd(buf: Buffer, from: number): number {
  const i = buf.indexOf('\r\n', from, 'latin1');
  return i;
}

/** Parses one reply starting at `pos`; INCOMPLETE when more bytes are needed; throws on a malformed stream. */
export function parseReply(buf: Buffer, pos: number, depth = 0): Parsed {
  if (depth > REPLY_DEPTH_MAX) throw new ProbeError(`reply nested deeper than ${REPLY_DEPTH_MAX}`, 'PROTOCOL');
  if (pos >= buf.length) return INCOMPLETE;
  const type = String.fromCharCode(buf[pos]!);
  const le = lineEnd(buf, pos + 1);
  if (le < 0) return INCOMPLETE;
  const line = buf.toString('utf8', pos + 1, le);
  const next = le + 2;
  const int = (): number => {
    if (!/^-?\d+$/.test(line)) throw new ProbeError(`bad length or integer "${line.slice(0, 40)}" in reply`, 'PROTOCOL');
    return Number(line);
  };
  const bulkAt = (n: number): { text: string; end: number } | typeof INCOMPLETE => {
    if (n > REPLY_BYTES_MAX) throw new ProbeError(`reply of ${n} bytes exceeds ${REPLY_BYTES_MAX}`, 'PROTOCOL');
    if (buf.length < next + n + 2) return INCOMPLETE;
    return { text: buf.toString('utf8', next, next + n), end: next + n + 2 };
  };
  const aggregate = (count: number): Parsed => {
    const out: RespValue[] = [];
    let at = next;
    for (let i = 0; i < count; i++) {
      const r = parseReply(buf, at, depth + 1);
      if (r === INCOMPLETE) return INCOMPLETE;
      out.push(r.value);
      at = r.end;
    }
    return { value: out, end: at };
  };
  switch (type) {
    case '+':
      return { value: line, end: next };
    case '-':
      return { value: new RespError(line), end: next };
    case ':':
      return { value: int(), end: next };
    case '$':
    case '=':
    case '!': {
      const n = int();
      if (n < 0) return { value: null, end: next };
      const b = bulkAt(n);
      if (b === INCOMPLETE) return INCOMPLETE;
      if (type === '!') return { value: new RespError(b.text), end: b.end };
      return { value: type === '=' ? b.text.slice(4) : b.text, end: b.end };
    }
    case '*':
    case '~':
    case '>': {
      const n = int();
      if (n < 0) return { value: null, end: next };
      return aggregate(n);
    }
    case '%':
      return aggregate(int() * 2);
    case '|': {
      const attr = aggregate(int() * 2);
      if (attr === INCOMPLETE) return INCOMPLETE;
      return parseReply(buf, attr.end, depth + 1);
    }
    case '_':
      return { value: null, end: next };
    case '#':
      return { value: line === 't', end: next };
    case ',':
      return { value: Number(line), end: next };
    case '(':
      return { value: BigInt(line), end: next };
    default:
      throw new ProbeError(`unexpected reply type byte 0x${buf[pos]!.toString(16)}`, 'PROTOCOL');
  }
}

function encode(args: readonly string[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.from(a, 'utf8');
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/**
 * Connects to host:port, sends each command in turn (after AUTH when a password is given) and resolves with one
 * reply per command. Rejects with a ProbeError on connection failure, timeout or protocol error.
 */
export function probe(host: string, port: number, commands: readonly (readonly string[])[], opts: ProbeOptions): Promise<RespValue[]> {
  const where = `${host}:${port}`;
  return new Promise<RespValue[]>((resolve, reject) => {
    const sock = net.connect({ host, port });
    let buf: Buffer = Buffer.alloc(0);
    const queue: (readonly string[])[] = [];
    if (opts.password !== undefined && opts.password !== '') queue.push(['AUTH', opts.password]);
    const authed = queue.length;
    queue.push(...commands);
    const replies: RespValue[] = [];
    let settled = false;
    const finish = (err: ProbeError | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(replies.slice(authed));
    };
    const timer = setTimeout(() => finish(new ProbeError(`${where}: no answer within ${opts.timeoutMs} ms`, 'TIMEOUT')), opts.timeoutMs);
    const sendNext = (): void => {
      const cmd = queue[replies.length];
      if (cmd === undefined) finish(null);
      else sock.write(encode(cmd));
    };
    sock.setNoDelay(true);
    sock.on('connect', sendNext);
    sock.on('data', (chunk: Buffer) => {
      if (settled) return;
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      if (buf.length > REPLY_BYTES_MAX) return finish(new ProbeError(`${where}: reply exceeds ${REPLY_BYTES_MAX} bytes`, 'PROTOCOL'));
      try {
        for (;;) {
          const r = parseReply(buf, 0);
          if (r === INCOMPLETE) return;
          buf = buf.subarray(r.end);
          if (replies.length < authed && r.value instanceof RespError) {
            return finish(new ProbeError(`${where}: AUTH refused: ${r.value.message}`, 'AUTH'));
          }
          replies.push(r.value);
          if (replies.length === queue.length) return finish(null);
          sendNext();
        }
      } catch (err) {
        const e = err instanceof ProbeError ? err : new ProbeError(String(err), 'PROTOCOL');
        finish(new ProbeError(`${where}: ${e.message}`, e.code));
      }
    });
    sock.on('error', (err: NodeJS.ErrnoException) => finish(new ProbeError(`${where}: ${err.code ?? err.message}`, err.code ?? 'ERROR')));
    sock.on('close', () => finish(new ProbeError(`${where}: connection closed before the reply`, 'CLOSED')));
  });
}

/** The text of a reply that should be a string (INFO, CLUSTER INFO); throws on an error reply or another type. */
export function replyText(v: RespValue | undefined, what: string): string {
  if (typeof v === 'string') return v;
  if (v instanceof RespError) throw new ProbeError(`${what}: ${v.message}`, 'REPLY');
  throw new ProbeError(`${what}: unexpected reply ${JSON.stringify(v === undefined ? null : String(v))}`, 'REPLY');
}

/** `key:value` lines of an INFO-style text (comments and blank lines skipped). */
export function infoFields(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const raw of text.split(/\r?\n/)) {
    if (raw === '' || raw.startsWith('#')) continue;
    const i = raw.indexOf(':');
    if (i > 0) out.set(raw.slice(0, i), raw.slice(i + 1));
  }
  return out;
}
