#!/usr/bin/env node
// Entry point of the `lockstep` command. The TypeScript sources are compiled to dist/ by `npm install`
// (prepare script) or `npm run build`.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  console.error('lockstep: not built yet; run `npm run build` (or `npm install`) first');
  process.exit(1);
}
const { main: run } = await import(main.href);
const code = await run(process.argv.slice(2));
if (code >= 0) process.exitCode = code;
