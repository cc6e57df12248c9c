// Replays every scenario in test/raft/scenarios/*.txt and compares each command's output with the expected text.
// UPDATE_SCENARIOS=1 rewrites the expected parts (review the diff before committing).
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { listScenarios, readScenario, renderScenario, runScenario, scenarioDir } from './scenario-runner.js';

const update = process.env.UPDATE_SCENARIOS === '1';

for (const name of listScenarios()) {
  t.test(`scenario ${name} produces its recorded output`, async (t) => {
    const text = readScenario(name);
    const { parts, outputs } = runScenario(text);
    if (update) {
      writeFileSync(join(scenarioDir(), name), renderScenario(parts, outputs));
      t.pass('rewritten');
      return;
    }
    let k = 0;
    for (const p of parts) {
      if (p.kind !== 'block') continue;
      const actual = outputs[k++] ?? '';
      if (actual !== p.expected) {
        t.equal(actual, p.expected, `${name}:${p.line} ${p.command}`);
        return; // later outputs depend on this one
      }
    }
    t.pass(`${k} commands match`);
  });
}
