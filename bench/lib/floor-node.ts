/**
 * Benchmark harness: the floor of what a Node.js RESP server can do on this machine. It reads RESP2 multibulk
 * commands from `net` sockets (any split of the stream), skips over their arguments without copying them, and
 * answers every command with a constant reply (GET: a 3-byte bulk, INCR: an integer, PING: +PONG, anything else: +OK), one
 * socket write per read. No keyspace, no dispatch, no limits: nothing a real server can do without.
 * `bench:resp` runs it beside the Lockstep node and Redis in the same run, so the table shows how much of the gap to
 * Redis is the platform (Node's event loop, libuv and stream machinery per read and write) and how much is Lockstep.
 *
 *   node dist/bench/lib/floor-node.js --port P
 *
 * Stops on SIGTERM/SIGINT. Inline commands and malformed input close the connection (this is a measuring stick,
 * not a server).
 */
import net from 'node:net';

const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: floor-node --port P');
  process.exit(2);
}

const OK = Buffer.from('+OK\r\n');
const BULK = Buffer.from('$3\r\nxxx\r\n');
const INT = Buffer.from(':1\r\n');
const PONG = Buffer.from('+PONG\r\n');
const CR = 13;
const LF = 10;

/** Per-connection scanner state: where we are inside the current command. */
class Scanner {
  /** 0: expecting '*'; 1: reading a number (array or bulk header); 2: skipping bulk bytes (+CRLF); 3: expecting '$'. */
  private state = 0;
  private num = 0;
  private header = 0; // '*' or '$'
  private argsLeft = 0;
  private skip = 0;
  private argIndex = 0;
  private firstByte = 0;
  private out: Buffer[] = [];

  /** Returns the replies for the complete commands in `chunk`, or null if the stream is malformed. */
  feed(chunk: Buffer): Buffer[] | null {
    const out = this.out;
    out.length = 0;
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.state === 2) {
        const take = Math.min(this.skip, n - i);
        if (this.argIndex === 0 && this.skip > 0 && take > 0 && this.firstByte === 0) this.firstByte = chunk[i]! | 0x20;
        i += take;
        this.skip -= take;
        if (this.skip > 0) break;
        this.argIndex++;
        this.argsLeft--;
        this.state = this.argsLeft === 0 ? 0 : 3;
        if (this.argsLeft === 0) out.push(this.firstByte === 0x67 ? BULK : this.firstByte === 0x69 ? INT : this.firstByte === 0x70 ? PONG : OK);
        continue;
      }
      const b = chunk[i++]!;
      if (this.state === 0 || this.state === 3) {
        if (b !== 0x2a && b !== 0x24) return null;
        if ((this.state === 0) !== (b === 0x2a)) return null;
        this.header = b;
        this.num = 0;
        this.state = 1;
        continue;
      }
      // state 1: digits until CR, then LF
      if (b >= 48 && b <= 57) this.num = this.num * 10 + (b - 48);
      else if (b === CR) continue;
      else if (b === LF) {
        if (this.header === 0x2a) {
          if (this.num === 0) return null;
          this.argsLeft = this.num;
          this.argIndex = 0;
          this.firstByte = 0;
          this.state = 3;
        } else {
          this.skip = this.num + 2; // bytes plus CRLF
          this.state = 2;
        }
      } else return null;
    }
    return out;
  }
}

const server = net.createServer({ noDelay: true }, (socket) => {
  const scanner = new Scanner();
  socket.on('data', (chunk: Buffer) => {
    const replies = scanner.feed(chunk);
    if (replies === null) {
      socket.destroy();
      return;
    }
    if (replies.length === 1) socket.write(replies[0]!);
    else if (replies.length > 1) socket.write(Buffer.concat(replies));
  });
  socket.on('error', () => socket.destroy());
});
server.listen(port, '127.0.0.1');
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => process.exit(0));
