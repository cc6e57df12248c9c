/** A RaftConfig for core tests: quick ticks, no PreVote or CheckQuorum, the default flow-control limits. */
import { RAFT_LIMITS_DEFAULT, raftFlowLimits } from '../../src/config/limits.js';
import type { RaftConfig } from '../../src/raft/types.js';

export function coreConfig(id: number, over: Partial<RaftConfig> = {}): RaftConfig {
  return {
    id,
    group: 7,
    heartbeatTicks: 1,
    electionTicksMin: 10,
    preVote: false,
    checkQuorum: false,
    readMode: 'safe',
    ...raftFlowLimits(RAFT_LIMITS_DEFAULT),
    ...over,
  };
}
