import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NODE_OPTIONS, OptionError, formatHelp, loadNodeOptions, parseBytes } from '../../src/config/options.js';

const noEnvFile = '/nonexistent/.env';

t.test('defaults apply when nothing is given', async (t) => {
  const { options } = loadNodeOptions([], {}, noEnvFile);
  t.equal(options.port, 7001);
  t.equal(options.host, '127.0.0.1');
  t.equal(options.protectedMode, true);
  t.equal(options.resp.bulkBytesMax, 512 * 1024 * 1024);
  t.equal(options.cluster.cacheKeepReadMs, 100);
  t.equal(loadNodeOptions(['--cache-keep-read-ms', '0'], {}, noEnvFile).options.cluster.cacheKeepReadMs, 0);
  t.equal(options.cluster.cacheWriteAllocate, 'adaptive');
  t.equal(loadNodeOptions(['--cache-write-allocate', 'always'], {}, noEnvFile).options.cluster.cacheWriteAllocate, 'always');
  t.throws(() => loadNodeOptions(['--cache-write-allocate', 'never'], {}, noEnvFile), /expected one of adaptive\|always/);
});

t.test('flags beat the environment, which beats .env, which beats the default', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-opt-'));
  const envFile = join(dir, '.env');
  writeFileSync(envFile, '# comment\nLOCKSTEP_PORT=7100\nLOCKSTEP_MAX_CLIENTS="50"\nexport LOCKSTEP_LOG_LEVEL=debug\n');
  const fromFile = loadNodeOptions([], {}, envFile).options;
  t.equal(fromFile.port, 7100);
  t.equal(fromFile.server.clientsMax, 50);
  t.equal(fromFile.logLevel, 'debug');
  const fromEnv = loadNodeOptions([], { LOCKSTEP_PORT: '7200' }, envFile).options;
  t.equal(fromEnv.port, 7200);
  const fromFlag = loadNodeOptions(['--port', '7300'], { LOCKSTEP_PORT: '7200' }, envFile).options;
  t.equal(fromFlag.port, 7300);
  t.equal(loadNodeOptions(['--port=7400'], {}, noEnvFile).options.port, 7400);
});

t.test('sizes accept Redis-style units', async (t) => {
  t.equal(parseBytes('1000'), 1000);
  t.equal(parseBytes('64kb'), 65536);
  t.equal(parseBytes('2MB'), 2 * 1024 * 1024);
  t.equal(parseBytes('1gb'), 1024 ** 3);
  t.equal(parseBytes('5k'), 5000);
  t.equal(parseBytes('12xb'), null);
  t.equal(parseBytes('-1'), null);
  t.equal(loadNodeOptions(['--cache-max-bytes', '10mb'], {}, noEnvFile).options.cache.bytesMax, 10 * 1024 * 1024);
});

t.test('bad options are refused with the option, the value and the accepted range', async (t) => {
  t.throws(() => loadNodeOptions(['--port', '70000'], {}, noEnvFile), new OptionError('--port (flag): 70000 is out of range [0, 65535]'));
  t.throws(() => loadNodeOptions(['--port', 'abc'], {}, noEnvFile), /--port \(flag\): expected an integer, got "abc"/);
  t.throws(() => loadNodeOptions([], { LOCKSTEP_MAX_CLIENTS: '0' }, noEnvFile), /--max-clients \(LOCKSTEP_MAX_CLIENTS\): 0 connections is out of range/);
  t.throws(() => loadNodeOptions(['--log-level', 'loud'], {}, noEnvFile), /expected one of trace\|debug/);
  t.throws(() => loadNodeOptions(['--bogus', '1'], {}, noEnvFile), /unknown option --bogus/);
  t.throws(() => loadNodeOptions(['--port'], {}, noEnvFile), /--port: missing value/);
  t.throws(() => loadNodeOptions(['--protected-mode', 'maybe'], {}, noEnvFile), /expected yes\/no/);
  t.throws(() => loadNodeOptions(['--cache-write-policy', 'write-around'], {}, noEnvFile), /expected one of write-through\|write-back/);
  t.throws(() => loadNodeOptions(['--cache-backing', 'http://x:1'], {}, noEnvFile), /--cache-backing: expected a redis:\/\/host:port/);
  t.throws(() => loadNodeOptions(['--cache-backing', 'not a url'], {}, noEnvFile), /--cache-backing: expected a redis:\/\/host:port/);
  t.equal(loadNodeOptions(['--cache-backing', 'redis://127.0.0.1:6379/2'], {}, noEnvFile).options.cluster.cacheBacking, 'redis://127.0.0.1:6379/2');
  t.equal(loadNodeOptions([], {}, noEnvFile).options.cluster.cacheWritePolicy, 'write-through', 'write-through by default');
});

t.test('boolean flags take yes/no or a --no- prefix', async (t) => {
  t.equal(loadNodeOptions(['--no-protected-mode'], {}, noEnvFile).options.protectedMode, false);
  t.equal(loadNodeOptions(['--protected-mode', 'no'], {}, noEnvFile).options.protectedMode, false);
  t.equal(loadNodeOptions(['--protected-mode'], {}, noEnvFile).options.protectedMode, true);
});

t.test('--help lists every option with its default and environment variable', async (t) => {
  const help = formatHelp('title', NODE_OPTIONS);
  for (const o of NODE_OPTIONS) {
    t.match(help, `--${o.name}`, `lists --${o.name}`);
    t.match(help, `LOCKSTEP_${o.name.toUpperCase().replace(/-/g, '_')}`);
  }
  t.match(help, /default 7001; env LOCKSTEP_PORT/);
  t.match(help, /default 536870912 bytes; env LOCKSTEP_PROTO_MAX_BULK_LEN/);
});
