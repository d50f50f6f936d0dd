// The browser tests' Chromium: Debian's (or CHARFLOW_CHROMIUM's), headless. No silent skip: a missing
// browser is an error naming the command that installs it (`npm test` checks for it before any test).
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { CHROMIUM } from '../../scripts/system-deps.mjs';

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: npm run test:setup`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}
