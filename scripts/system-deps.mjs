#!/usr/bin/env node
// The system packages the tests drive, which npm cannot install: one table, used three ways.
//   node scripts/system-deps.mjs check     `npm test` runs this first (pretest): one message naming
//                                          each missing package and the command that installs it.
//   node scripts/system-deps.mjs install   `npm run test:setup`: apt-get as root, sudo apt-get
//                                          otherwise; says what it installs first; idempotent.
//   import { CHROMIUM, ... }               the tests take their paths from here.
// Plain JavaScript with no dependencies, so it runs before `npm ci`.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Chromium for the browser tests (CHARFLOW_CHROMIUM names another binary, e.g. on macOS). */
export const CHROMIUM = process.env.CHARFLOW_CHROMIUM || '/usr/bin/chromium';
/** SwiftShader's Vulkan driver, shipped in Debian's chromium: a WebGPU adapter without a GPU. */
export const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';
const VULKAN_LOADERS = ['/usr/lib/x86_64-linux-gnu/libvulkan.so.1', '/usr/lib/aarch64-linux-gnu/libvulkan.so.1'];

function onPath(command) {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => dir && existsSync(join(dir, command)));
}

function haveVulkanLoader() {
  if (VULKAN_LOADERS.some((p) => existsSync(p))) return true;
  try {
    return /libvulkan\.so\.1\b/.test(execFileSync('ldconfig', ['-p'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
  } catch {
    return false;
  }
}

/** Each Debian package, what needs it, and how to tell it is there. */
export const PACKAGES = [
  {
    debian: 'chromium',
    brew: 'brew install --cask chromium (then CHARFLOW_CHROMIUM=/Applications/Chromium.app/Contents/MacOS/Chromium)',
    neededBy: 'the browser tests (test/editor/) and, for its SwiftShader Vulkan driver, the WebGPU tests (test/runtime/webgpu.test.ts, test/quant/runtime.test.ts)',
    present: () => existsSync(CHROMIUM) && (process.platform !== 'linux' || existsSync(SWIFTSHADER_ICD)),
  },
  {
    debian: 'libvulkan1',
    brew: 'none: the WebGPU tests run on Linux only (SwiftShader through the Vulkan loader)',
    neededBy: 'the WebGPU tests (test/runtime/webgpu.test.ts, test/quant/runtime.test.ts)',
    present: haveVulkanLoader,
  },
  {
    debian: 'redis-server',
    brew: 'brew install redis',
    neededBy: 'the scale-out tests (test/distributed/), which start their own redis-server on a free port',
    present: () => onPath('redis-server'),
  },
];

export function missingPackages() {
  return PACKAGES.filter((p) => !p.present());
}

function installCommand(names) {
  const sudo = typeof process.getuid === 'function' && process.getuid() !== 0 ? 'sudo ' : '';
  return `${sudo}apt-get update && ${sudo}apt-get install -y ${names.join(' ')}`;
}

function check() {
  const missing = missingPackages();
  if (!missing.length) return 0;
  const lines = [
    `npm test needs ${missing.length === 1 ? 'a system package' : 'system packages'} that npm cannot install; no test was run.`,
    ...missing.map((p) => `  - ${p.debian}: for ${p.neededBy}`),
    '',
    'Install them with:  npm run test:setup',
    `(which runs: ${installCommand(missing.map((p) => p.debian))})`,
  ];
  if (process.platform === 'darwin') lines.push('On macOS: ' + missing.map((p) => `${p.debian}: ${p.brew}`).join('; '));
  console.error(lines.join('\n'));
  return 1;
}

function install() {
  const missing = missingPackages();
  if (!missing.length) {
    console.log(`system packages for the tests: all present (${PACKAGES.map((p) => p.debian).join(', ')})`);
    return 0;
  }
  const names = missing.map((p) => p.debian);
  if (!onPath('apt-get')) {
    console.error(`missing: ${names.join(', ')}, and there is no apt-get here. Install them yourself:`);
    for (const p of missing) console.error(`  - ${p.debian}: ${p.brew}`);
    return 1;
  }
  const root = typeof process.getuid !== 'function' || process.getuid() === 0;
  const prefix = root ? [] : ['sudo'];
  console.log(`installing the Debian packages the tests need: ${names.join(' ')}`);
  for (const p of missing) console.log(`  - ${p.debian}: for ${p.neededBy}`);
  console.log(`running: ${installCommand(names)}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const run = (args) => {
    const [cmd, ...rest] = [...prefix, ...args];
    const r = spawnSync(cmd, rest, { stdio: 'inherit', env });
    if (r.status !== 0) throw new Error(`${[cmd, ...rest].join(' ')} failed (exit ${r.status ?? r.signal})`);
  };
  try {
    run(['apt-get', 'update', '-qq']);
    run(['apt-get', 'install', '-y', '-qq', ...names]);
  } catch (err) {
    console.error(String(err instanceof Error ? err.message : err));
    return 1;
  }
  const still = missingPackages();
  if (still.length) {
    console.error(`still missing after the install: ${still.map((p) => p.debian).join(', ')}`);
    return 1;
  }
  console.log('system packages for the tests: installed');
  return 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  const mode = process.argv[2];
  if (mode === 'check') process.exit(check());
  else if (mode === 'install') process.exit(install());
  else {
    console.error('usage: node scripts/system-deps.mjs check|install');
    process.exit(2);
  }
}
