import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { repoRoot } from '../support/repo-root.js';

/** Every .ts file under dir, recursively. */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sources(p));
    else if (name.endsWith('.ts')) out.push(p);
  }
  return out;
}

t.test('protocol/ takes only types from src/ (README: the wire formats do not import the server)', async (t) => {
  const root = repoRoot();
  const files = sources(join(root, 'protocol'));
  t.ok(files.length >= 5, `found the protocol sources (${files.length})`);
  const offending: string[] = [];
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    // import ... from '<anything>/src/...' (a single- or multi-line import statement), or export ... from it
    for (const m of text.matchAll(/^(import|export)\s+([^;]*?)\s+from\s+'([^']+)'/gms)) {
      const [, , what, from] = m;
      if (!/(^|\/)src\//.test(from!)) continue;
      if (/^type\s/.test(what!)) continue;
      offending.push(`${relative(root, f)}: ${m[0].replace(/\s+/g, ' ').slice(0, 120)}`);
    }
  }
  t.same(offending, [], 'no runtime import from src/');
});
