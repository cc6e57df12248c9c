// A short randomized run of the scenario harness (the real simulator lives in test/sim): random proposals,
// ticks, message loss, partitions, restarts, compactions, transfers and membership changes, with the harness's
// Election Safety and State Machine Safety checks after every step. Prints the seed that broke.
import t from 'tap';
import { Harness } from './scenario-runner.js';
import { createRng } from '../../src/util/rng.js';

const SEEDS = 40;
const STEPS = 400;

t.test('random faults never break election or state machine safety', async (t) => {
  for (let seed = 1; seed <= SEEDS; seed++) {
    const rng = createRng(seed);
    const h = new Harness();
    const opts = rng.chance(0.5) ? 'prevote=true checkquorum=true' : '';
    const lease = opts !== '' && rng.chance(0.3) ? ' readmode=lease' : '';
    const run = (cmd: string): string => {
      const out = h.run(cmd);
      if (out.startsWith('error:') && !/has applied only|no node/.test(out)) {
        throw new Error(`seed ${seed}: "${cmd}" -> ${out}`);
      }
      return out;
    };
    run(`add-nodes 5 voters=(1,2,3) learners=(4) chunk=16 max-entries=3 inflight=3 ${opts}${lease}`);
    const ids = [1, 2, 3, 4, 5];
    let n = 0;
    try {
      for (let step = 0; step < STEPS; step++) {
        const id = ids[rng.int(0, 5)]!;
        const other = ids[rng.int(0, 5)]!;
        const r = rng.next();
        if (r < 0.3) run(`propose ${id} v${n++}`);
        else if (r < 0.55) run(`advance-time 1`);
        else if (r < 0.62) run(`drop ${id}->* count=${rng.int(1, 4)}`);
        else if (r < 0.72) run(`deliver`), run(`process-ready all`);
        else if (r < 0.76) {
          const a = ids.filter((x) => rng.chance(0.5));
          const b = ids.filter((x) => !a.includes(x));
          run(`partition ${a.join(' ')} | ${b.join(' ')}`);
        } else if (r < 0.8) run('heal');
        else if (r < 0.83) run(`restart ${id}`);
        else if (r < 0.86) {
          const c = h.node(id).core;
          if (h.node(id).appliedIndex > c.firstIndex) run(`compact ${id} ${h.node(id).appliedIndex - rng.int(0, 2)}`);
        } else if (r < 0.88) run(`transfer-leader ${id} ${other}`);
        else if (r < 0.9) run(`read-index ${id} r${n++}`);
        else if (r < 0.93) {
          const kind = ['add-learner', 'promote', 'remove'][rng.int(0, 3)]!;
          run(`conf-change ${id} ${kind} ${other}`);
        } else if (r < 0.95) run(`campaign ${id}`);
        else run('stabilize quiet');
      }
      run('heal');
      run('advance-time 60');
    } catch (err) {
      t.fail(`seed ${seed}: ${(err as Error).message}`);
      return;
    }
    // Liveness after healing: some voter leads and every live member caught up on commit.
    const leaders = ids.filter((id) => h.node(id).core.role === 3);
    t.ok(leaders.length >= 1, `seed ${seed}: a leader after healing`);
    t.ok(h.appliedAt.size >= 5, `seed ${seed}: entries were committed (${h.appliedAt.size})`);
  }
});
