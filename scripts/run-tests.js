#!/usr/bin/env node
// Runs the compiled test suite with tap and ends with one plain summary line ("tests: N passed, N failed"),
// so CI logs say how many test files ran. Usage: node scripts/run-tests.js [glob-or-file ...]
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
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

// tap's TypeScript plugin is disabled in package.json (its ts-node fork breaks on TypeScript 7; we run compiled
// JS). A fresh install still has tap built with it, and tap rebuilds only after the first run: rebuild up front.
const built = 'node_modules/@tapjs/test/test-built/dist/esm/index.js';
if (readFileSync(built, 'utf8').includes('"@tapjs/typescript/import"')) {
  console.log('rebuilding tap without its TypeScript plugin (first run after install)');
  const b = spawnSync('npx', ['tap', 'build'], { stdio: 'inherit' });
  if (b.status !== 0) process.exit(b.status ?? 1);
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
