/**
 * Users and passwords. The `default` user's password comes from `--requirepass`; more users come from an ACL file
 * in the Redis ACL-file syntax, restricted to the rules Lockstep enforces today:
 *
 *   user <name> [on|off] [>password]... [#<sha256-hex>]... [nopass] [resetpass] [~* | allkeys] [+@all | allcommands]
 *
 * Key and command permission rules other than "everything" are refused at load time (with the line number), so a
 * file never silently grants more than it says. Passwords are kept as SHA-256 digests and compared in constant
 * time.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';

export class AclError extends Error {
  readonly code = 'BAD_ACL';
}

interface User {
  name: string;
  enabled: boolean;
  nopass: boolean;
  digests: Buffer[];
}

function sha256(s: Buffer | string): Buffer {
  return createHash('sha256').update(s).digest();
}

export class Acl {
  private readonly users = new Map<string, User>();

  constructor(requirepass: string) {
    this.users.set('default', {
      name: 'default',
      enabled: true,
      nopass: requirepass === '',
      digests: requirepass === '' ? [] : [sha256(requirepass)],
    });
  }

  /** True when a new connection must authenticate before running commands. */
  get authRequired(): boolean {
    const d = this.users.get('default')!;
    return !(d.enabled && d.nopass);
  }

  /** True when the default user has no password (protected mode applies). */
  get defaultUserOpen(): boolean {
    const d = this.users.get('default')!;
    return d.enabled && d.nopass;
  }

  get userNames(): string[] {
    return [...this.users.keys()];
  }

  check(user: string, password: Buffer): boolean {
    const u = this.users.get(user);
    if (!u || !u.enabled) return false;
    if (u.nopass) return true;
    const d = sha256(password);
    let ok = false;
    for (const digest of u.digests) if (timingSafeEqual(d, digest)) ok = true;
    return ok;
  }

  loadFile(path: string): void {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new AclError(`cannot read ACL file ${path}: ${(err as Error).message}`);
    }
    this.loadText(text, path);
  }

  loadText(text: string, source = 'ACL'): void {
    const lines = text.split(/\r?\n/);
    lines.forEach((raw, i) => {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) return;
      const where = `${source}:${i + 1}`;
      const words = line.split(/\s+/);
      if (words[0] !== 'user' || words.length < 2) throw new AclError(`${where}: expected "user <name> ...", got "${line}"`);
      const name = words[1]!;
      const user: User = this.users.get(name) ?? { name, enabled: false, nopass: false, digests: [] };
      for (const rule of words.slice(2)) {
        if (rule === 'on') user.enabled = true;
        else if (rule === 'off') user.enabled = false;
        else if (rule === 'nopass') {
          user.nopass = true;
          user.digests = [];
        } else if (rule === 'resetpass') {
          user.nopass = false;
          user.digests = [];
        } else if (rule.startsWith('>')) {
          user.digests.push(sha256(rule.slice(1)));
          user.nopass = false;
        } else if (rule.startsWith('#')) {
          const hex = rule.slice(1);
          if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new AclError(`${where}: "${rule}" is not a SHA-256 hex digest`);
          user.digests.push(Buffer.from(hex, 'hex'));
          user.nopass = false;
        } else if (rule === '~*' || rule === 'allkeys' || rule === '+@all' || rule === 'allcommands' || rule === '&*' || rule === 'allchannels') {
          // everything is what Lockstep grants an authenticated user today
        } else {
          throw new AclError(`${where}: rule "${rule}" is not supported (Lockstep grants all keys and commands to every enabled user)`);
        }
      }
      this.users.set(name, user);
    });
  }
}
