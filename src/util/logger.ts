/**
 * pino loggers. JSON lines by default; pretty (pino-pretty, synchronous, to stderr-safe stdout) when stdout is a
 * TTY or `--log-format pretty`. One root logger per process; modules take `logger.child({ module })`.
 */
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export function createLogger(opts: { level: string; format: 'auto' | 'json' | 'pretty'; name?: string }): Logger {
  const usePretty = opts.format === 'pretty' || (opts.format === 'auto' && process.stdout.isTTY === true);
  const base = { level: opts.level, name: opts.name ?? 'lockstep' };
  if (!usePretty) return pino(base);
  return pino(base, pretty({ colorize: process.stdout.isTTY === true, sync: true, translateTime: 'HH:MM:ss.l' }));
}

/** A logger that drops everything (tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
