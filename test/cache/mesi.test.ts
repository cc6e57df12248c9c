/**
 * The MESI transition table, pair by pair: every (state, event) pair has the expected next state and action, and
 * every pair the protocol must never produce throws CoherenceViolation.
 */
import t from 'tap';
import {
  CoherenceViolation,
  LINE_EVENTS,
  LINE_STATE_NAMES,
  LineAction,
  LineState,
  lookupTransition,
  transition,
  TransitionCounters,
  type LineEvent,
} from '../../src/cache/mesi.js';

type Want = [next: 'I' | 'S' | 'E' | 'M', action: LineAction] | 'never';
const N = LineAction.None;

// The expected table, written out independently of src/cache/mesi.ts (rows: state, columns: LINE_EVENTS order).
const EXPECTED: Record<'I' | 'S' | 'E' | 'M', Record<LineEvent, Want>> = {
  I: {
    read: ['I', LineAction.GetS],
    'write-wb': ['I', LineAction.GetM],
    'write-wt': ['I', LineAction.WriteHome],
    'fill-e': ['E', N],
    'fill-s': ['S', N],
    'fill-m': ['M', N],
    inv: ['I', N],
    'fwd-gets': ['I', N],
    flushed: ['I', N],
    evict: 'never',
    lapse: ['I', N],
    'new-home': ['I', N],
  },
  S: {
    read: ['S', LineAction.Hit],
    'write-wb': ['S', LineAction.GetM],
    'write-wt': ['I', LineAction.WriteHome],
    'fill-e': 'never',
    'fill-s': 'never',
    'fill-m': ['M', N],
    inv: ['I', N],
    'fwd-gets': 'never',
    flushed: ['S', N],
    evict: ['I', N],
    lapse: ['I', N],
    'new-home': ['I', N],
  },
  E: {
    read: ['E', LineAction.Hit],
    'write-wb': ['M', LineAction.WriteLocal],
    'write-wt': ['I', LineAction.WriteHome],
    'fill-e': 'never',
    'fill-s': 'never',
    'fill-m': 'never',
    inv: ['I', N],
    'fwd-gets': ['S', N],
    flushed: ['E', N],
    evict: ['I', N],
    lapse: ['I', N],
    'new-home': ['I', N],
  },
  M: {
    read: ['M', LineAction.Hit],
    'write-wb': ['M', LineAction.WriteLocal],
    'write-wt': ['I', LineAction.SendData],
    'fill-e': 'never',
    'fill-s': 'never',
    'fill-m': 'never',
    inv: ['I', LineAction.SendData],
    'fwd-gets': ['S', LineAction.SendData],
    flushed: ['E', N],
    evict: ['I', LineAction.SendData],
    lapse: ['I', LineAction.LoseData],
    'new-home': ['I', LineAction.SendData],
  },
};

const STATES = [LineState.I, LineState.S, LineState.E, LineState.M];

t.test('every (state, event) pair has the expected transition, and the forbidden ones throw', async (t) => {
  let pairs = 0;
  let never = 0;
  for (const s of STATES) {
    const name = LINE_STATE_NAMES[s];
    for (const e of LINE_EVENTS) {
      pairs++;
      const want = EXPECTED[name][e];
      if (want === 'never') {
        never++;
        t.equal(lookupTransition(s, e), null, `${name} + ${e} is NEVER`);
        t.throws(() => transition(s, e), CoherenceViolation, `${name} + ${e} throws`);
      } else {
        const got = transition(s, e);
        t.equal(LINE_STATE_NAMES[got.next], want[0], `${name} + ${e} -> ${want[0]}`);
        t.equal(got.action, want[1], `${name} + ${e} action`);
      }
    }
  }
  t.equal(pairs, 4 * 12, 'all 48 pairs visited');
  t.equal(never, 10, 'ten pairs are impossible');
});

t.test('a violation names the state and the event', async (t) => {
  try {
    transition(LineState.M, 'fill-e', 'key k');
    t.fail('should throw');
  } catch (err) {
    t.ok(err instanceof CoherenceViolation);
    t.match((err as Error).message, /fill-e in state M \(key k\)/);
    t.equal((err as CoherenceViolation).code, 'COHERENCE');
  }
});

t.test('write-through never produces M; write-back reaches M only through E or a grant', async (t) => {
  for (const s of STATES) {
    const wt = lookupTransition(s, 'write-wt');
    if (wt !== null) t.not(wt.next, LineState.M, `write-wt from ${LINE_STATE_NAMES[s]}`);
  }
  const intoM = STATES.flatMap((s) => LINE_EVENTS.filter((e) => lookupTransition(s, e)?.next === LineState.M && s !== LineState.M).map((e) => `${LINE_STATE_NAMES[s]}:${e}`));
  t.same(intoM.sort(), ['E:write-wb', 'I:fill-m', 'S:fill-m'].sort());
});

t.test('transition counters count changes only, with every edge listed', async (t) => {
  const c = new TransitionCounters();
  c.count(LineState.I, LineState.E);
  c.count(LineState.I, LineState.E);
  c.count(LineState.E, LineState.E);
  c.count(LineState.S, LineState.I, 3);
  t.equal(c.get(LineState.I, LineState.E), 2);
  t.equal(c.get(LineState.E, LineState.E), 0, 'self-loops are not changes');
  const entries = new Map(c.entries());
  t.equal(entries.size, 12, '12 possible changes between 4 states');
  t.equal(entries.get('S->I'), 3);
  t.equal(entries.get('M->S'), 0);
  c.reset();
  t.equal(c.get(LineState.S, LineState.I), 0);
});
