/** The reply of `<COMMAND> HELP`: one simple string per line, as Redis sends it. */
import type { ReplySink } from '../command.js';

export function replyHelp(r: ReplySink, lines: readonly string[]): void {
  r.arrayHeader(lines.length);
  for (const l of lines) r.simple(l);
}
