// The real Redis tools against a Lockstep node: redis-cli (which calls COMMAND DOCS at start) and
// redis-benchmark (which calls CONFIG GET). .ci/run installs them (apt-get install redis-tools).
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestNode } from '../support/local-node.js';

const run = promisify(execFile);

async function cli(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await run('redis-cli', ['-p', String(port), ...args], { timeout: 10_000 });
  return stdout;
}

t.test('redis-cli runs every kind of command against a node', async (t) => {
  const node = await startTestNode();
  t.teardown(() => node.close());
  t.equal(await cli(node.port, 'PING'), 'PONG\n');
  t.equal(await cli(node.port, 'SET', 'greeting', 'hello world'), 'OK\n');
  t.equal(await cli(node.port, 'GET', 'greeting'), 'hello world\n');
  t.equal(await cli(node.port, 'INCRBY', 'counter', '5'), '5\n');
  t.equal(await cli(node.port, 'APPEND', 'greeting', '!'), '12\n');
  t.equal(await cli(node.port, 'GET', 'nothing'), '\n', 'nil prints as an empty line in raw mode');
  t.equal(await cli(node.port, '--no-raw', 'GET', 'nothing'), '(nil)\n');
  t.match(await cli(node.port, 'INFO', 'server'), /redis_version:7\.2\.0/);
  t.match(await cli(node.port, 'NOSUCH'), /ERR unknown command 'NOSUCH'/);
  // -3 = RESP3 through HELLO 3
  t.equal(await cli(node.port, '-3', 'GET', 'greeting'), 'hello world!\n');
  // Commands from stdin (pipelined by redis-cli), as users script it.
  const { stdout } = await run('bash', ['-c', `printf 'SET a 1\\nINCR a\\nGET a\\n' | redis-cli -p ${node.port}`]);
  t.equal(stdout, 'OK\n2\n2\n');
});

t.test('redis-cli with a password: refused without it, served with it', async (t) => {
  const node = await startTestNode(['--requirepass', 'pw']);
  t.teardown(() => node.close());
  t.match(await cli(node.port, 'GET', 'x'), /NOAUTH Authentication required/);
  const { stdout } = await run('redis-cli', ['-p', String(node.port), '--no-auth-warning', '-a', 'pw', 'SET', 'x', '1']);
  t.equal(stdout, 'OK\n');
});

t.test('redis-benchmark completes ping, set, get, incr and mset with no errors', async (t) => {
  const node = await startTestNode();
  t.teardown(() => node.close());
  const { stdout, stderr } = await run(
    'redis-benchmark',
    ['-p', String(node.port), '-t', 'ping,set,get,incr,mset', '-n', '20000', '-q'],
    { timeout: 120_000 },
  );
  const out = stdout + stderr;
  for (const test of ['PING_INLINE', 'PING_MBULK', 'SET', 'GET', 'INCR', 'MSET (10 keys)']) {
    t.match(out, new RegExp(`${test.replace(/[()]/g, '\\$&')}: [\\d.]+ requests per second`), `${test} ran`);
  }
  t.notMatch(out, /error|ERR/i, 'no errors reported');
  t.equal(await cli(node.port, 'GET', 'counter:__rand_int__'), '20000\n', 'every INCR landed');
});
