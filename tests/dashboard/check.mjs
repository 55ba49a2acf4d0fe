// Drives keygate's dashboard in Debian's headless Chromium, as a person would, and prints what
// it saw as one JSON object for the Rust test that started it (tests/dashboard.rs) to judge.
//
// Input (environment):
//   DASHBOARD_URL    the admin listener, e.g. http://127.0.0.1:PORT
//   DASHBOARD_TOKEN  the admin token (the password of HTTP Basic auth)
//   DASHBOARD_KEY    a key id whose page to open
//   ARTIFACTS        a directory for the screenshots
//   KEYGATE_CHROMIUM the browser (default /usr/bin/chromium, Debian's `chromium` package)
//
// Steps: the overview without credentials must answer 401; signed in, the overview is shot at
// 1280x900 and at 375x812 (a phone, with its meta viewport honoured); the key page is shot and
// every chart point (`[data-value]` inside `<svg data-chart>`) is read back; every request a
// page made is recorded, and any to another host than DASHBOARD_URL's fails the run (such
// requests are also aborted, so nothing leaves the machine).
//
// Output (stdout, one line): {"unauthorized_status", "www_authenticate", "overview_keys", "points", "requests",
// "phone_overflow", "key_phone_overflow", "console_errors", "screenshots"}; exit 0. On any
// failure: a message on stderr, exit 1.

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 375, height: 812 };
const TIMEOUT_MS = 20_000;

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

/** Schemes that never reach the network. */
function isLocalScheme(url) {
  return /^(data|blob|about):/.test(url);
}

async function main() {
  const base = new URL(required('DASHBOARD_URL'));
  const token = required('DASHBOARD_TOKEN');
  const keyId = required('DASHBOARD_KEY');
  const artifacts = required('ARTIFACTS');
  await mkdir(artifacts, { recursive: true });
  const url = (p) => new URL(p, base).href;

  const requests = [];
  const foreign = [];
  const consoleErrors = [];
  const screenshots = [];

  // A fresh, throwaway profile: plain launch uses a new temporary user-data-dir.
  const browser = await chromium.launch({
    executablePath: process.env.KEYGATE_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: TIMEOUT_MS,
  });

  /**
   * A context whose every request is recorded and whose foreign requests are aborted. Console
   * errors are recorded for signed-in contexts (an anonymous page logs its expected 401).
   */
  async function context(options, { recordConsole = true } = {}) {
    const ctx = await browser.newContext({ ...options, serviceWorkers: 'block' });
    ctx.setDefaultTimeout(TIMEOUT_MS);
    ctx.on('page', (page) => {
      page.on('request', (req) => requests.push(req.url()));
      if (recordConsole) {
        page.on('console', (msg) => {
          if (msg.type() === 'error') consoleErrors.push(msg.text());
        });
      }
      page.on('pageerror', (err) => consoleErrors.push(String(err)));
    });
    await ctx.route('**/*', (route) => {
      const u = route.request().url();
      if (isLocalScheme(u) || new URL(u).host === base.host) return route.continue();
      return route.abort('blockedbyclient');
    });
    return ctx;
  }

  async function open(page, p, wantStatus) {
    const response = await page.goto(url(p), { waitUntil: 'load' });
    if (!response) throw new Error(`GET ${p}: no response`);
    if (wantStatus !== undefined && response.status() !== wantStatus) {
      throw new Error(`GET ${p}: status ${response.status()}, want ${wantStatus}`);
    }
    return response;
  }

  async function shoot(page, name) {
    const file = path.join(artifacts, name);
    await page.screenshot({ path: file, fullPage: true });
    screenshots.push(file);
  }

  const overflows = (page) =>
    page.evaluate((w) => document.documentElement.scrollWidth > w + 1, PHONE.width);

  try {
    // (a) No credentials: refused, with a Basic challenge the browser can answer. Chromium
    // receives the 401, then (having no credentials to offer) fails the navigation with
    // ERR_INVALID_AUTH_CREDENTIALS, so the 401 is read from the response event.
    const anonymous = await context({ viewport: DESKTOP }, { recordConsole: false });
    const anonymousPage = await anonymous.newPage();
    const [refused] = await Promise.all([
      anonymousPage.waitForResponse((r) => r.url() === url('/dashboard')),
      anonymousPage.goto(url('/dashboard')).catch((err) => {
        if (!String(err?.message).includes('ERR_INVALID_AUTH_CREDENTIALS')) throw err;
      }),
    ]);
    const unauthorizedStatus = refused.status();
    if (unauthorizedStatus !== 401) {
      throw new Error(`GET /dashboard without credentials: status ${unauthorizedStatus}, want 401`);
    }
    const challenge = refused.headers()['www-authenticate'] ?? '';
    if (!/^basic\b/i.test(challenge)) {
      throw new Error(`the 401 lacks a Basic challenge (WWW-Authenticate: ${challenge || 'none'})`);
    }
    await anonymous.close();

    // Credentials go to the dashboard's own origin only.
    const httpCredentials = { username: 'admin', password: token, origin: base.origin };

    // (b) The overview on a desktop and on a phone.
    const desktop = await context({ viewport: DESKTOP, httpCredentials });
    const overview = await desktop.newPage();
    await open(overview, '/dashboard', 200);
    await shoot(overview, 'overview-desktop.png');
    const overviewKeys = await overview.$$eval('#keys a[href^="/dashboard/keys/"]', (links) =>
      links.map((a) =>
        decodeURIComponent(a.getAttribute('href').slice('/dashboard/keys/'.length)),
      ),
    );

    const phone = await context({
      viewport: PHONE,
      isMobile: true,
      hasTouch: true,
      deviceScaleFactor: 2,
      httpCredentials,
    });
    const phoneOverview = await phone.newPage();
    await open(phoneOverview, '/dashboard', 200);
    await shoot(phoneOverview, 'overview-phone.png');
    const phoneOverflow = await overflows(phoneOverview);

    // (c) The key page and its chart points.
    const keyPath = `/dashboard/keys/${encodeURIComponent(keyId)}`;
    const keyPage = await desktop.newPage();
    await open(keyPage, keyPath, 200);
    await shoot(keyPage, 'key-desktop.png');
    const points = await keyPage.$$eval('[data-value]', (elements) =>
      elements.map((el) => ({
        chart: el.closest('svg[data-chart]')?.getAttribute('data-chart') ?? null,
        label: el.getAttribute('data-label'),
        value: Number(el.getAttribute('data-value')),
      })),
    );
    const phoneKey = await phone.newPage();
    await open(phoneKey, keyPath, 200);
    await shoot(phoneKey, 'key-phone.png');
    const keyPhoneOverflow = await overflows(phoneKey);

    await desktop.close();
    await phone.close();

    // (d) Every request stayed on the dashboard's host.
    for (const u of requests) {
      if (!isLocalScheme(u) && new URL(u).host !== base.host) foreign.push(u);
    }
    if (foreign.length > 0) {
      throw new Error(`requests to another host than ${base.host}: ${foreign.join(', ')}`);
    }

    // (e) The report.
    process.stdout.write(
      `${JSON.stringify({
        unauthorized_status: unauthorizedStatus,
        www_authenticate: challenge,
        overview_keys: overviewKeys,
        points,
        requests,
        phone_overflow: phoneOverflow,
        key_phone_overflow: keyPhoneOverflow,
        console_errors: consoleErrors,
        screenshots,
      })}\n`,
    );
  } finally {
    await browser.close();
  }
}

try {
  await main();
} catch (err) {
  process.stderr.write(`dashboard check failed: ${err?.stack ?? err}\n`);
  process.exitCode = 1;
}
