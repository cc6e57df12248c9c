/**
 * Errors of the RESP codec. A protocol error means the byte stream cannot be trusted any more (it cannot be
 * resynchronised), so the connection that produced it is answered with the message and closed.
 */
export class RespProtocolError extends Error {
  readonly code = 'PROTOCOL';

  /** `detail` is the part after the `Protocol error: ` prefix, in Redis' wording. */
  constructor(detail: string) {
    super(`Protocol error: ${detail}`);
    this.name = 'RespProtocolError';
  }
}

/** Renders one byte for an error message: printable ASCII as is, anything else as \xHH. */
export function describeByte(c: number): string {
  if (c >= 0x20 && c < 0x7f) return String.fromCharCode(c);
  return `\\x${c.toString(16).padStart(2, '0')}`;
}
