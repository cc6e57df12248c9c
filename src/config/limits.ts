/**
 * Every named limit in Lockstep, in one place (TigerBeetle style: the unit is the last word of the name).
 *
 * Each limit has a default here; the ones a user may change are exposed as node options in
 * `src/config/options.ts` (flag, `LOCKSTEP_*` environment variable, `.env`). Code takes its limits from a
 * `Limits`-shaped object passed in, never from these constants directly, so tests can shrink them.
 *
 * Sections are owned by subsystems; edit only your own section.
 */

// ---------------------------------------------------------------------------------------------------------------
// RESP front end (protocol/resp, src/server)
// ---------------------------------------------------------------------------------------------------------------
export interface RespLimits {
  /** Largest bulk string a client may send, in bytes (Redis: proto-max-bulk-len, 512 MiB). */
  bulkBytesMax: number;
  /** Most arguments in one multibulk command (Redis allows 1024*1024). */
  argsPerCommandMax: number;
  /** Longest inline command line, in bytes (Redis: 64 KiB). */
  inlineBytesMax: number;
  /** Most unparsed bytes buffered for one client, in bytes (Redis: client-query-buffer-limit, 1 GiB). */
  queryBufferBytesMax: number;
}

export const RESP_LIMITS_DEFAULT: RespLimits = {
  bulkBytesMax: 512 * 1024 * 1024,
  argsPerCommandMax: 1024 * 1024,
  inlineBytesMax: 64 * 1024,
  queryBufferBytesMax: 1024 * 1024 * 1024,
};

export interface ServerLimits {
  /** Most client connections served at once (Redis: maxclients). */
  clientsMax: number;
  /** Bytes of replies queued for one client before it is disconnected (Redis: client-output-buffer-limit). */
  outputBufferBytesMax: number;
  /** Bytes of replies queued for one client above which the server stops reading its requests. */
  outputBufferPauseBytes: number;
}

export const SERVER_LIMITS_DEFAULT: ServerLimits = {
  clientsMax: 10_000,
  outputBufferBytesMax: 256 * 1024 * 1024,
  outputBufferPauseBytes: 4 * 1024 * 1024,
};

// ---------------------------------------------------------------------------------------------------------------
// Node-local cache store (src/cache)
// ---------------------------------------------------------------------------------------------------------------
export interface CacheLimits {
  /** Most entries held; the least recently used is evicted beyond it. 0 = unbounded. */
  itemsMax: number;
  /** Most bytes held (keys + values + per-entry overhead); LRU eviction beyond it. 0 = unbounded. */
  bytesMax: number;
  /** Keys examined per active-expiry sweep step. */
  expireSweepKeysMax: number;
  /** Period of the active-expiry sweep, in milliseconds. */
  expireSweepIntervalMs: number;
  /** Longest string APPEND/SETRANGE may build, in bytes (Redis: proto-max-bulk-len). Absent = 512 MiB. */
  valueBytesMax?: number;
}

export const CACHE_LIMITS_DEFAULT: CacheLimits = {
  itemsMax: 1_000_000,
  bytesMax: 256 * 1024 * 1024,
  expireSweepKeysMax: 200,
  expireSweepIntervalMs: 100,
  valueBytesMax: 512 * 1024 * 1024,
};

// ---------------------------------------------------------------------------------------------------------------
// Raft (src/raft). Time is counted in ticks; the host decides how long a tick is.
// ---------------------------------------------------------------------------------------------------------------
export interface RaftLimits {
  /** Length of one tick, in milliseconds (used by hosts only; the core counts ticks). */
  tickMs: number;
  /** Heartbeat period, in ticks. */
  heartbeatTicks: number;
  /** Lower bound of the randomized election timeout, in ticks; the timeout is drawn from [min, 2*min). */
  electionTicksMin: number;
  /** Most AppendEntries messages in flight to one follower (pipelining window). */
  inflightMsgsMax: number;
  /** Most bytes of entries in one AppendEntries message. */
  appendBytesMax: number;
  /** Most entries in one AppendEntries message. */
  appendEntriesMax: number;
  /** Most bytes of proposed but uncommitted entries a leader accepts before refusing proposals. */
  uncommittedBytesMax: number;
  /** Size of one InstallSnapshot chunk, in bytes. */
  snapshotChunkBytes: number;
}

/** The limits a Raft core takes as they are (RaftConfig's flow-control fields), out of `r`. */
export function raftFlowLimits(r: RaftLimits): Pick<RaftLimits, 'inflightMsgsMax' | 'appendEntriesMax' | 'appendBytesMax' | 'uncommittedBytesMax' | 'snapshotChunkBytes'> {
  return {
    inflightMsgsMax: r.inflightMsgsMax,
    appendEntriesMax: r.appendEntriesMax,
    appendBytesMax: r.appendBytesMax,
    uncommittedBytesMax: r.uncommittedBytesMax,
    snapshotChunkBytes: r.snapshotChunkBytes,
  };
}

export const RAFT_LIMITS_DEFAULT: RaftLimits = {
  tickMs: 10,
  // A node takes these two from --election-timeout (default 500 ms: 50 and 16 ticks; docs/cluster-runtime.md says
  // why); these values serve runtimes started without it (tests, embedding), where fast elections keep tests short.
  heartbeatTicks: 5,
  electionTicksMin: 15,
  inflightMsgsMax: 256,
  appendBytesMax: 1024 * 1024,
  appendEntriesMax: 4096,
  uncommittedBytesMax: 64 * 1024 * 1024,
  snapshotChunkBytes: 1024 * 1024,
};

// ---------------------------------------------------------------------------------------------------------------
// Write-ahead log (src/storage)
// ---------------------------------------------------------------------------------------------------------------
export interface WalLimits {
  /** A segment file is closed and a new one started once it reaches this size, in bytes. */
  segmentBytes: number;
  /** Largest single record, in bytes; a bigger one is refused on write and treated as corruption on read. */
  recordBytesMax: number;
}

export const WAL_LIMITS_DEFAULT: WalLimits = {
  segmentBytes: 64 * 1024 * 1024,
  recordBytesMax: 64 * 1024 * 1024,
};

// ---------------------------------------------------------------------------------------------------------------
// Peer transport (protocol/peer, src/transport)
// ---------------------------------------------------------------------------------------------------------------
export interface PeerLimits {
  /** Largest frame accepted from a peer, in bytes (length prefix excluded). */
  frameBytesMax: number;
  /** Bytes queued for one peer link before new messages are dropped (Raft retransmits). */
  sendQueueBytesMax: number;
  /** Time allowed for a handshake to finish, in milliseconds. */
  handshakeTimeoutMs: number;
  /** First reconnect delay, in milliseconds; doubles per failure up to the maximum. */
  reconnectDelayMsMin: number;
  /** Longest reconnect delay, in milliseconds. */
  reconnectDelayMsMax: number;
}

export const PEER_LIMITS_DEFAULT: PeerLimits = {
  frameBytesMax: 64 * 1024 * 1024,
  sendQueueBytesMax: 256 * 1024 * 1024,
  handshakeTimeoutMs: 5_000,
  reconnectDelayMsMin: 50,
  reconnectDelayMsMax: 2_000,
};
