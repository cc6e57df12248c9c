// End-to-end tests of the RESP front end over real loopback sockets: ioredis (RESP3 and RESP2), raw sockets for
// what real clients never send, and the limits that protect the node.
import t from 'tap';
import { Redis } from 'ioredis';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RawClient, startTestNode } from '../support/local-node.js';

function client(port: number, extra: Record<string, unknown> = {}): Redis {
  return new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, ...extra });
}

t.test('ioredis over RESP3 and RESP2 reads and writes through every string command family', async (t) => {
  const node = await startTestNode();
  t.teardown(() => node.close());
  for (const protocol of [3, 2] as const) {
    const r = client(node.port, { protocol });
    await r.connect();
    t.equal(await r.ping(), 'PONG', `PING over RESP${protocol}`);
    t.equal(await r.set(`k${protocol}`, 'v'), 'OK');
    t.equal(await r.get(`k${protocol}`), 'v');
    t.equal(await r.incr(`n${protocol}`), 1);
    t.equal(await r.incrby(`n${protocol}`, 41), 42);
    t.same(await r.mget(`k${protocol}`, 'missing', `n${protocol}`), ['v', null, '42']);
    t.equal(await r.mset('a1', '1', 'a2', '2'), 'OK');
    t.equal(await r.exists('a1', 'a2', 'nope'), 2);
    t.equal(await r.del('a1', 'a2', 'nope'), 2);
    const bin = Buffer.from([0, 255, 13, 10, 36, 42, 1]);
    t.equal(await r.set(Buffer.from([1, 0, 2]), bin), 'OK');
    t.same(await r.getBuffer(Buffer.from([1, 0, 2])), bin, 'binary-safe keys and values');
    t.equal(await r.set('ttl', 'x', 'EX', 100), 'OK');
    const ttl = await r.ttl('ttl');
    t.ok(ttl > 98 && ttl <= 100, `TTL near 100, got ${ttl}`);
    const clientId = await r.client('ID');
    t.type(clientId, 'number');
    r.disconnect();
  }
});

t.test('HELLO switches protocol and refuses unknown versions with NOPROTO', async (t) => {
  const node = await startTestNode();
  t.teardown(() => node.close());
  const raw = await RawClient.connect(node.port);
  t.teardown(() => raw.close());
  raw.write('HELLO 3\r\n');
  const hello = await raw.until((b) => b.includes('modules'));
  t.match(hello.toString(), /^%7\r\n\$6\r\nserver\r\n\$8\r\nlockstep\r\n/, 'a RESP3 map');
  raw.write('GET nothing\r\n');
  await raw.until((b) => b.toString().endsWith('_\r\n'));
  t.pass('null is _ in RESP3');
  raw.write('HELLO 4\r\n');
  await raw.until((b) => b.includes('NOPROTO'));
  t.match(raw.received.toString(), /-NOPROTO unsupported protocol version\r\n$/);
});

t.test('unknown commands and wrong arity answer like Redis and the connection keeps working', async (t) => {
  const node = await startTestNode();
  t.teardown(() => node.close());
  const raw = await RawClient.connect(node.port);
  t.teardown(() => raw.close());
  raw.write('FOO bar baz\r\nGET\r\nPING\r\n');
  const out = (await raw.until((b) => b.includes('PONG'))).toString();
  t.equal(
    out,
    "-ERR unknown command 'FOO', with args beginning with: 'bar' 'baz' \r\n" +
      "-ERR wrong number of arguments for 'get' command\r\n+PONG\r\n",
  );
});

t.test('thousands of pipelined commands in one write are answered in order', async (t) => {
  const node = await startTestNode();
  t.teardown(() => node.close());
  const raw = await RawClient.connect(node.port);
  t.teardown(() => raw.close());
  const n = 5000;
  let req = '';
  for (let i = 0; i < n; i++) req += `*3\r\n$3\r\nSET\r\n$${String(i).length + 2}\r\nk:${i}\r\n$${String(i).length}\r\n${i}\r\n`;
  for (let i = 0; i < n; i++) req += `*2\r\n$3\r\nGET\r\n$${String(i).length + 2}\r\nk:${i}\r\n`;
  raw.write(req);
  let expected = '+OK\r\n'.repeat(n);
  for (let i = 0; i < n; i++) expected += `$${String(i).length}\r\n${i}\r\n`;
  const got = await raw.until((b) => b.length >= expected.length, 10_000);
  t.equal(got.toString(), expected);
});

t.test('a malformed stream gets a protocol error and is closed; other clients are unaffected', async (t) => {
  const node = await startTestNode(['--proto-max-bulk-len', '1024']);
  t.teardown(() => node.close());
  const good = client(node.port);
  await good.connect();
  t.teardown(() => good.disconnect());
  const cases: [string, RegExp][] = [
    ['*2\r\n$3\r\nGET\r\n$2000\r\n', /^-ERR Protocol error: invalid bulk length\r\n$/],
    ['*1\r\n$-5\r\n', /^-ERR Protocol error: invalid bulk length\r\n$/],
    ['*abc\r\n', /^-ERR Protocol error: invalid multibulk length\r\n$/],
    ['*1\r\nGET\r\n', /^-ERR Protocol error: expected '\$', got 'G'\r\n$/],
    ['"unbalanced\r\n', /^-ERR Protocol error: unbalanced quotes in request\r\n$/],
  ];
  for (const [input, expected] of cases) {
    const raw = await RawClient.connect(node.port);
    raw.write(input);
    t.ok(await raw.waitClosed(), `closed after ${JSON.stringify(input)}`);
    t.match(raw.received.toString(), expected, JSON.stringify(input));
    raw.close();
  }
  t.equal(await good.ping(), 'PONG', 'a well-behaved client is still served');
  t.ok(node.server.stats.protocolErrors >= cases.length);
});

t.test('the max clients limit refuses one more connection with a clear error', async (t) => {
  const node = await startTestNode(['--max-clients', '2']);
  t.teardown(() => node.close());
  const a = await RawClient.connect(node.port);
  const b = await RawClient.connect(node.port);
  a.write('PING\r\n');
  b.write('PING\r\n');
  await a.until((x) => x.includes('PONG'));
  await b.until((x) => x.includes('PONG'));
  const c = await RawClient.connect(node.port);
  t.ok(await c.waitClosed());
  t.equal(c.received.toString(), '-ERR max number of clients reached\r\n');
  a.close();
  await new Promise((r) => setTimeout(r, 50));
  const d = await RawClient.connect(node.port);
  d.write('PING\r\n');
  await d.until((x) => x.includes('PONG'));
  t.pass('a slot freed by a disconnect is reused');
  b.close();
  d.close();
});

t.test('a client that does not read its replies is paused, then disconnected at the output limit', async (t) => {
  const node = await startTestNode(['--client-output-pause', '64kb', '--client-output-buffer-limit', '2mb']);
  t.teardown(() => node.close());
  const setter = client(node.port);
  await setter.connect();
  await setter.set('big', Buffer.alloc(256 * 1024, 120));
  setter.disconnect();
  const raw = await RawClient.connect(node.port);
  raw.socket.pause(); // never read
  const req = '*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n'.repeat(200); // ~50 MB of replies asked for
  raw.write(req);
  // The client reads nothing, so watch the server side: it must pause reading, then drop the connection.
  const deadline = Date.now() + 10_000;
  while (node.server.stats.outputLimitDisconnects === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.ok(node.server.stats.pausedReads >= 1, 'reading was paused first');
  t.equal(node.server.stats.outputLimitDisconnects, 1, 'then the client was disconnected at the output limit');
  t.equal(node.server.clients.size, 0, 'and is gone');
  raw.close();
  const other = client(node.port);
  await other.connect();
  t.equal(await other.ping(), 'PONG');
  other.disconnect();
});

t.test('AUTH: commands need a password; a wrong one is refused; ACL users from a file work', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-acl-'));
  const aclFile = join(dir, 'users.acl');
  writeFileSync(aclFile, '# users\nuser alice on >wonderland ~* +@all\nuser bob off >builder\n');
  const node = await startTestNode(['--requirepass', 's3cret', '--acl-file', aclFile]);
  t.teardown(() => node.close());
  const raw = await RawClient.connect(node.port);
  t.teardown(() => raw.close());
  raw.write('GET x\r\nAUTH wrong\r\nAUTH s3cret\r\nGET x\r\nAUTH alice wonderland\r\nAUTH bob builder\r\n');
  const out = (await raw.until((b) => b.toString().split('\r\n').length > 6)).toString();
  t.equal(
    out,
    '-NOAUTH Authentication required.\r\n' +
      '-WRONGPASS invalid username-password pair or user is disabled.\r\n' +
      '+OK\r\n$-1\r\n+OK\r\n' +
      '-WRONGPASS invalid username-password pair or user is disabled.\r\n',
  );
  const good = client(node.port, { password: 's3cret' });
  await good.connect();
  t.equal(await good.set('a', 'b'), 'OK', 'ioredis authenticates through HELLO 3 AUTH');
  good.disconnect();
  const alice = client(node.port, { username: 'alice', password: 'wonderland' });
  await alice.connect();
  t.equal(await alice.get('a'), 'b');
  alice.disconnect();
  const bad = client(node.port, { password: 'nope' });
  const errors: string[] = [];
  bad.on('error', (e: Error) => errors.push(e.message));
  await t.rejects(bad.connect());
  t.match(errors.join('\n'), /WRONGPASS invalid username-password pair/, 'ioredis reports WRONGPASS');
  bad.disconnect();
});

t.test('protected mode admits only loopback clients while no password is set', async (t) => {
  const open = await startTestNode();
  t.teardown(() => open.close());
  t.ok(open.server.admits('127.0.0.1'));
  t.ok(open.server.admits('::1'));
  t.ok(open.server.admits('::ffff:127.0.0.1'));
  t.notOk(open.server.admits('10.1.2.3'));
  t.notOk(open.server.admits('192.168.0.4'));
  const locked = await startTestNode(['--requirepass', 'x']);
  t.teardown(() => locked.close());
  t.ok(locked.server.admits('10.1.2.3'), 'with a password, remote clients may connect (and must AUTH)');
  const off = await startTestNode(['--no-protected-mode']);
  t.teardown(() => off.close());
  t.ok(off.server.admits('10.1.2.3'));
});

t.test('LRU eviction by item count evicts the least recently used key, and INFO counts it', async (t) => {
  const node = await startTestNode(['--cache-max-items', '3']);
  t.teardown(() => node.close());
  const r = client(node.port);
  await r.connect();
  t.teardown(() => r.disconnect());
  await r.set('a', '1');
  await r.set('b', '2');
  await r.set('c', '3');
  await r.get('a'); // a is now most recent; b is the LRU
  await r.set('d', '4');
  t.same(await r.mget('a', 'b', 'c', 'd'), ['1', null, '3', '4']);
  const info = await r.info('stats');
  t.match(info, /evicted_keys:1\r\n/);
  t.match(info, /keyspace_misses:1\r\n/);
});

t.test('keys expire lazily and by the active sweep', async (t) => {
  const node = await startTestNode(['--expire-sweep-interval', '10']);
  t.teardown(() => node.close());
  const r = client(node.port);
  await r.connect();
  t.teardown(() => r.disconnect());
  await r.set('lazy', 'x', 'PX', 30);
  await r.set('active', 'y', 'PX', 30);
  await r.set('stays', 'z');
  await new Promise((res) => setTimeout(res, 150));
  t.equal(await r.dbsize(), 1, 'the sweep removed both expired keys without them being read');
  t.equal(await r.get('lazy'), null);
  t.match(await r.info('stats'), /expired_keys:2\r\n/);
});

t.test('CLIENT, COMMAND, CONFIG, INFO, SELECT, TIME, QUIT and RESET behave like Redis', async (t) => {
  const node = await startTestNode();
  t.teardown(() => node.close());
  const r = client(node.port);
  await r.connect();
  t.teardown(() => r.disconnect());
  t.equal(await r.client('SETNAME', 'worker-1'), 'OK');
  t.equal(await r.client('GETNAME'), 'worker-1');
  t.match(String(await r.client('LIST')), /name=worker-1 /);
  await t.rejects(r.client('SETNAME', 'has space'), /Client names cannot contain spaces/);
  t.equal(await r.call('COMMAND', 'COUNT'), node.server.table.size);
  const docs = (await r.call('COMMAND', 'DOCS', 'get')) as unknown[];
  t.equal(docs[0], 'get');
  t.same(await r.config('GET', 'save'), ['save', '']);
  t.same(await r.config('GET', 'maxmemory*'), ['maxmemory', String(256 * 1024 * 1024), 'maxmemory-policy', 'allkeys-lru']);
  t.equal(await r.config('SET', 'maxmemory', '1mb'), 'OK');
  t.same(await r.config('GET', 'maxmemory'), ['maxmemory', String(1024 * 1024)]);
  await t.rejects(r.config('SET', 'nosuch', '1'), /Unknown option/);
  t.match(await r.info(), /# Server\r\nredis_version:7\.2\.0/);
  t.equal(await r.select(0), 'OK');
  await t.rejects(r.select(1), /DB index is out of range/);
  const [sec] = (await r.time()) as unknown as [string, string];
  t.ok(Math.abs(Number(sec) - Date.now() / 1000) < 5);
  const raw = await RawClient.connect(node.port);
  raw.write('HELLO 3\r\nRESET\r\nQUIT\r\n');
  t.ok(await raw.waitClosed(), 'QUIT closes the connection');
  t.match(raw.received.toString(), /\+RESET\r\n\+OK\r\n$/);
  const victim = client(node.port);
  await victim.connect();
  const id = await victim.client('ID');
  t.equal(await r.client('KILL', 'ID', String(id)), 1);
});

t.test('SCAN through ioredis returns every key exactly as stored', async (t) => {
  const node = await startTestNode();
  t.teardown(() => node.close());
  const r = client(node.port);
  await r.connect();
  t.teardown(() => r.disconnect());
  const want = new Set<string>();
  const pipe = r.pipeline();
  for (let i = 0; i < 1000; i++) {
    pipe.set(`user:${i}`, String(i));
    want.add(`user:${i}`);
  }
  for (let i = 0; i < 100; i++) pipe.set(`other:${i}`, 'x');
  await pipe.exec();
  const seen = new Set<string>();
  let cursor = '0';
  do {
    const [next, keys] = await r.scan(cursor, 'MATCH', 'user:*', 'COUNT', 100);
    for (const k of keys) seen.add(k);
    cursor = next;
  } while (cursor !== '0');
  t.same([...seen].sort(), [...want].sort());
});

t.test('async replies that finish in the same turn leave in one socket write, in request order', async (t) => {
  const node = await startTestNode();
  t.teardown(() => node.close());
  // An async command whose replies all settle on one timer, like a Raft commit answering a pipelined batch at once;
  // the even-numbered ones settle first, so order comes from the server, not from the settling.
  let batch: (() => void)[] = [];
  node.server.addCommands([
    {
      name: 'delayed',
      arity: 2,
      flags: ['fast'],
      firstKey: 0,
      lastKey: 0,
      keyStep: 0,
      async: true,
      summary: 'test: replies with its argument after a shared timer',
      group: 'server',
      handler: (ctx, args) =>
        new Promise<void>((resolve) => {
          if (batch.length === 0) setTimeout(() => {
            const b = batch;
            batch = [];
            for (let i = 0; i < b.length; i += 2) b[i]!();
            for (let i = 1; i < b.length; i += 2) b[i]!();
          }, 20);
          const n = Number(args[1]!.toString());
          batch.push(() => {
            ctx.reply.integer(n);
            resolve();
          });
        }),
    },
  ]);
  const raw = await RawClient.connect(node.port);
  t.teardown(() => raw.close());
  const N = 200;
  const writesBefore = node.server.stats.writes;
  let req = '';
  for (let i = 0; i < N; i++) req += `*2\r\n$7\r\ndelayed\r\n$${String(i).length}\r\n${i}\r\n`;
  raw.write(req);
  const expected = Array.from({ length: N }, (_, i) => `:${i}\r\n`).join('');
  const got = await raw.until((b) => b.length >= expected.length);
  t.equal(got.toString(), expected, 'every reply, in request order');
  const writes = node.server.stats.writes - writesBefore;
  t.ok(writes >= 1 && writes <= 3, `replies settled in one turn left in ${writes} write(s) for ${N} replies`);
  const info = await new Promise<string>((resolve) => {
    raw.write('INFO stats\r\n');
    void raw.until((b) => b.includes('total_writes_processed')).then((b) => resolve(b.toString()));
  });
  t.match(info, /total_reads_processed:\d+/, 'INFO stats counts socket reads');
  t.match(info, /total_writes_processed:\d+/, 'and socket writes');
});
