/**
 * Test helpers: an in-process Lockstep node on an ephemeral loopback port, and a raw socket client for protocol
 * tests that real clients would never send.
 */
import net from 'node:net';
import { loadNodeOptions, type NodeOptions } from '../../src/config/options.js';
import { startLocalNode, type LocalNode } from '../../src/node/local-node.js';
import { silentLogger } from '../../src/util/logger.js';

/** Starts a node; `flags` are CLI flags (e.g. ['--requirepass', 'x']). The port is always ephemeral. */
export async function startTestNode(flags: string[] = []): Promise<LocalNode & { options: NodeOptions }> {
  const { options } = loadNodeOptions(['--port', '0', ...flags], {}, '/nonexistent/.env');
  const node = await startLocalNode(options, silentLogger());
  return Object.assign(node, { options });
}

/** A raw TCP client collecting every byte the server sends, and whether the server closed the connection. */
export class RawClient {
  readonly socket: net.Socket;
  private chunks: Buffer[] = [];
  closed = false;
  private waiters: (() => void)[] = [];

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => {});
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  get received(): Buffer {
    return Buffer.concat(this.chunks);
  }

  write(data: Buffer | string): void {
    this.socket.write(data);
  }

  /** Waits until `pred(received)` holds or the socket closes; fails after timeoutMs. */
  async until(pred: (b: Buffer) => boolean, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const b = this.received;
      if (pred(b)) return b;
      if (this.closed) return b;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting; received ${JSON.stringify(b.toString('latin1').slice(0, 300))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    await this.until(() => false, timeoutMs).catch(() => undefined);
    return this.closed;
  }

  close(): void {
    this.socket.destroy();
  }
}
