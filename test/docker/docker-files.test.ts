// No Docker engine runs on the CI machine, so the docker/ files are linted instead of built: the Dockerfile's
// instructions and the paths it copies, the compose file's structure, and every LOCKSTEP_* variable they set
// must be a real node option.
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { NODE_OPTIONS, envName, parseMembers } from '../../src/config/options.js';
import { repoRoot } from '../support/repo-root.js';

const root = repoRoot();
const KNOWN = new Set([
  'FROM', 'RUN', 'CMD', 'LABEL', 'EXPOSE', 'ENV', 'ADD', 'COPY', 'ENTRYPOINT', 'VOLUME', 'USER', 'WORKDIR', 'ARG',
  'ONBUILD', 'STOPSIGNAL', 'HEALTHCHECK', 'SHELL',
]);
const OPTION_VARS = new Set(NODE_OPTIONS.map((o) => envName(o.name)));

/** Joins continuation lines and drops comments: one string per instruction. */
function instructions(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (const line of text.split('\n')) {
    if (/^\s*#/.test(line) && cur === '') continue;
    if (line.trim() === '' && cur === '') continue;
    cur += line.replace(/\\\s*$/, ' ');
    if (!/\\\s*$/.test(line)) {
      out.push(cur.trim());
      cur = '';
    }
  }
  if (cur.trim()) out.push(cur.trim());
  return out;
}

function lockstepVars(text: string): string[] {
  return [...text.matchAll(/\b(LOCKSTEP_[A-Z0-9_]+)\b/g)].map((m) => m[1]!);
}

t.test('the Dockerfile uses known instructions, copies paths that exist and starts the real CLI', async (t) => {
  const text = readFileSync(join(root, 'docker/Dockerfile'), 'utf8');
  const ins = instructions(text);
  t.match(ins[0], /^FROM node:20/, 'starts FROM a Node 20 image');
  for (const i of ins) {
    const word = i.split(/\s+/)[0]!.toUpperCase();
    t.ok(KNOWN.has(word), `known instruction: ${word}`);
    if (word === 'COPY' && !i.includes('--from=')) {
      const parts = i.split(/\s+/).slice(1);
      for (const src of parts.slice(0, -1)) t.ok(existsSync(join(root, src)), `COPY source exists: ${src}`);
    }
    if (word === 'ENTRYPOINT' || word === 'CMD' || (word === 'HEALTHCHECK' && i.includes('CMD ['))) {
      const json = i.slice(i.indexOf('['));
      t.doesNotThrow(() => JSON.parse(json), `${word} is in exec (JSON) form`);
    }
  }
  const entry = ins.find((i) => i.startsWith('ENTRYPOINT'))!;
  const bin = (JSON.parse(entry.slice(entry.indexOf('['))) as string[])[1]!;
  t.ok(existsSync(join(root, bin)), `entrypoint script ${bin} exists`);
  const cmd = JSON.parse(ins.find((i) => i.startsWith('CMD'))!.slice(4)) as string[];
  t.equal(cmd[0], 'node', 'runs `lockstep node`');
  const port = /LOCKSTEP_PORT=(\d+)/.exec(text)?.[1];
  t.match(text, new RegExp(`EXPOSE ${port}\\b`), 'exposes the configured port');
  for (const v of lockstepVars(text)) t.ok(OPTION_VARS.has(v), `${v} is a node option`);
});

t.test('the compose file is valid YAML whose services build the image, persist data and check health', async (t) => {
  const text = readFileSync(join(root, 'docker/docker-compose.yml'), 'utf8');
  // merge: true, as docker compose does: the services share an `x-node` anchor through `<<:` merge keys.
  const doc = parse(text, { merge: true }) as {
    services: Record<string, { build?: { context: string; dockerfile: string }; ports?: string[]; volumes?: string[]; healthcheck?: { test: string[] }; environment?: Record<string, string> }>;
    volumes?: Record<string, unknown>;
  };
  const services = Object.entries(doc.services);
  t.ok(services.length >= 1, 'has services');
  for (const [name, svc] of services) {
    if (svc.build) {
      const ctx = join(root, 'docker', svc.build.context);
      t.ok(existsSync(join(ctx, svc.build.dockerfile)), `${name}: dockerfile exists relative to its context`);
    }
    for (const p of svc.ports ?? []) t.match(p, /^127\.0\.0\.1:\d+:\d+$/, `${name}: publishes on loopback only: ${p}`);
    for (const v of svc.volumes ?? []) {
      const vol = v.split(':')[0]!;
      t.ok(doc.volumes && vol in doc.volumes, `${name}: named volume ${vol} is declared`);
    }
    t.equal(svc.healthcheck?.test[0], 'CMD-SHELL', `${name}: has a health check`);
    for (const k of Object.keys(svc.environment ?? {})) t.ok(OPTION_VARS.has(k), `${name}: ${k} is a node option`);
  }
  // The cluster wiring: every node lists the same members, and its own entry is its own host name.
  const peerLists = new Set(services.map(([, svc]) => svc.environment?.LOCKSTEP_PEERS));
  t.equal(peerLists.size, 1, 'every service has the same LOCKSTEP_PEERS');
  const peers = [...peerLists][0] ?? '';
  const members = parseMembers(peers, { id: 1, host: '0.0.0.0', port: 7001, peerPort: 0 });
  t.equal(members.length, services.length, 'one member per service');
  for (const [name, svc] of services) {
    const id = Number(svc.environment?.LOCKSTEP_ID);
    const me = members.find((m) => m.id === id);
    t.equal(me?.host, (svc as { hostname?: string }).hostname ?? name, `${name}: its member entry (id ${id}) names its own host`);
  }
  for (const v of lockstepVars(readFileSync(join(root, 'docker/.env.example'), 'utf8'))) {
    t.ok(OPTION_VARS.has(v), `.env.example: ${v} is a node option`);
  }
});
