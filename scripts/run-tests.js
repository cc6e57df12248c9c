#!/usr/bin/env node
// Runs the compiled test suite with tap and ends with one plain summary line ("tests: N passed, N failed"),
// so CI logs say how many test files ran. Usage: node scripts/run-tests.js [glob-or-file ...]
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function findTests(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...findTests(p));
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

const args = process.argv.slice(2);
const files = args.length > 0 ? args : findTests('dist/test').sort();
const jobs = process.env.LOCKSTEP_TEST_JOBS ?? '2';
const res = spawnSync('npx', ['tap', '--reporter=tap', `--jobs=${jobs}`, '--timeout=600', ...files], {
  stdio: ['ignore', 'pipe', 'inherit'],
  encoding: 'utf8',
  maxBuffer: 1 << 30,
});
process.stdout.write(res.stdout ?? '');
let passed = 0;
let failed = 0;
for (const line of (res.stdout ?? '').split('\n')) {
  if (/^ok \d+ /.test(line)) passed++;
  else if (/^not ok \d+ /.test(line)) failed++;
}
if (res.status !== 0 && failed === 0) failed = 1;
console.log(`tests: ${passed} passed, ${failed} failed`);
process.exit(res.status === 0 && failed === 0 ? 0 : 1);
