/**
 * The messages of the MESI coherence protocol between a node's cache (CacheNode, cache-node.ts) and a shard's home
 * (CacheHome, cache-home.ts), and the I/O each side is given. Plain data: the cluster carries them over the
 * request path (node -> home) and peer requests (home -> node); the simulator carries them over its lossy network.
 *
 * Keys are latin1 strings (1:1 with the key's bytes). `V` is the cached value type: a record of memory (the
 * replicated keyspace) with its expiry; `null` stands for "no such key" (absent keys are cached too, so a miss on a
 * missing key is not a round trip every time).
 *
 * Identity of a grant: (epoch, gen). `epoch` is the home's Raft term: a new leader is a new home with an empty
 * directory. `gen` numbers the home's grants; an invalidation names the grant it revokes.
 */
import type { NodeId } from '../raft/types.js';

export type CacheKey = string;

/** Result codes of a failed request (mirrors the runtime's: the caller turns them into RESP errors). */
export type CoherenceErrorCode = 'TRYAGAIN' | 'NOTLEADER' | 'NOQUORUM' | 'ERR' | 'STOPPED' | 'BUSY' | 'NOSHARD';

export interface CoherenceFailure {
  ok: false;
  code: CoherenceErrorCode;
  message: string;
  /** The underlying error, when the failure came from the runtime (the worker re-routes by it). */
  cause?: unknown;
}

// ---------------------------------------------------------------- node -> home (requests, answered once)

/** Read miss: the value, and a line (E or S) when the node may cache it. */
export interface GetSRequest {
  t: 'gets';
  from: NodeId;
  shard: number;
  key: CacheKey;
  /** false: the node will not cache the answer (it has a write of this key in flight): just read memory. */
  cacheable: boolean;
}

/** A write-through write: the home invalidates every other copy, then writes memory, then answers. */
export interface WriteRequest<Op> {
  t: 'write';
  from: NodeId;
  shard: number;
  /** The keys the write touches; 'all' for a keyless write of the whole shard (FLUSHALL). */
  keys: CacheKey[] | 'all';
  op: Op;
  /** The node wants an E line of this key with the written value (a single-key write whose result it can cache). */
  want?: CacheKey;
  /**
   * The lines of the written keys the node held and dropped when it sent this write (clean ones: S or E), with the
   * home epoch they were granted in: the home need not invalidate those grants (write-through; see CacheHome.revokeOthers).
   */
  dropped?: { epoch: number; items: [key: CacheKey, gen: number][] };
}

/** Lease renewal, with the clean lines the node evicted since its last renewal (so the directory forgets them). */
export interface RenewRequest {
  t: 'renew';
  from: NodeId;
  shard: number;
  /** The home epoch the evicted gens were granted in: gens restart in every home, so another epoch's are ignored. */
  epoch: number;
  evicted: [key: CacheKey, gen: number][];
}

/**
 * Write-back: the node's Modified line of `key` (granted as E with `gen` in home `epoch`), to be written to memory.
 * Sent at most flushMs after the line became dirty, when it is evicted, and when the shard's home changed (then with
 * the old epoch: a new home takes those only during its takeover wait). `value` null: the key was deleted.
 */
export interface FlushRequest<V = unknown> {
  t: 'flush';
  from: NodeId;
  shard: number;
  epoch: number;
  key: CacheKey;
  gen: number;
  value: V | null;
}

export type NodeRequest<Op, V = unknown> = GetSRequest | WriteRequest<Op> | RenewRequest | FlushRequest<V>;

/** Every successful answer renews the node's lease when `lease` is true (the home confirmed its leadership). */
interface AnswerBase {
  ok: true;
  epoch: number;
  home: NodeId;
  lease: boolean;
}

export interface DataAnswer<V> extends AnswerBase {
  t: 'data';
  value: V | null;
  /** 'E' or 'S' when the node may install the line; null when it must not cache it. */
  grant: 'E' | 'S' | null;
  gen: number;
}

export interface WrittenAnswer<V, R> extends AnswerBase {
  t: 'written';
  result: R;
  /** An E line of `want` with its value after the write, when granted. */
  grant: { key: CacheKey; value: V | null; gen: number } | null;
}

export interface LeaseAnswer extends AnswerBase {
  t: 'lease';
}

/** `accepted` false: the home did not write it (the grant was revoked, or the takeover wait is over): it is lost. */
export interface FlushAnswer extends AnswerBase {
  t: 'flushed';
  accepted: boolean;
  /** Refused because an invalidation or downgrade of that line is on its way to the node: its answer carries the data. */
  pending?: boolean;
}

export type HomeAnswer<V, R> = DataAnswer<V> | WrittenAnswer<V, R> | LeaseAnswer | FlushAnswer;

// ---------------------------------------------------------------- home -> node (answered with an ack)

export interface InvMessage {
  t: 'inv';
  shard: number;
  epoch: number;
  /** The keys to drop, each with the gen of the grant being revoked. */
  items: [key: CacheKey, gen: number][];
}

/**
 * The home listed another reader of a line this node was granted in E (MESI's Fwd-GetS): the line becomes S.
 * Under write-through an E line is clean and is never written locally, so the home does not wait for the answer;
 * the message keeps the node's reported state exact (CACHE.STATE, INFO cache).
 */
export interface DownMessage {
  t: 'down';
  shard: number;
  epoch: number;
  /** The keys to downgrade, each with the gen of the E grant. */
  items: [key: CacheKey, gen: number][];
}

/** CACHE.STATE: what state does the node hold `key` in? Sent by the shard's home to every node. */
export interface StateQuery {
  t: 'state';
  shard: number;
  key: CacheKey;
}

export type HomeMessage = InvMessage | DownMessage | StateQuery;

/** A Modified line's data riding an acknowledgement (write-back): the key, its grant's gen, the value (null: deleted). */
export type DirtyItem<V = unknown> = [key: CacheKey, gen: number, value: V | null];

export interface InvAck {
  t: 'invack';
  from: NodeId;
  shard: number;
  epoch: number;
  items: [key: CacheKey, gen: number][];
  /** Write-back: the data of the Modified lines among them (the home writes it to memory before going on). */
  data?: DirtyItem[];
}

/** A node's answer to a StateQuery: its line's state as it would serve it now (I unless a live line holds it). */
export interface StateReport {
  t: 'state';
  from: NodeId;
  state: 'M' | 'E' | 'S' | 'I';
}

export interface DownAck {
  t: 'downack';
  from: NodeId;
  shard: number;
  epoch: number;
  items: [key: CacheKey, gen: number][];
  /** Write-back: the data of the lines that were Modified (they are S now, clean once memory has it). */
  data?: DirtyItem[];
}

export type NodeAck = InvAck | DownAck | StateReport;
