// The proxy's pages in a real browser: headless Chromium (puppeteer-core) goes through consent → local login →
// a whoami through the upstream, a denied consent and an error page (an unregistered redirect_uri), checks what a
// person sees, runs axe-core on every page (no serious or critical violation) and saves screenshots.
//
// Run by tests/end_to_end/pages_browser.rs with: PAGES_PROXY (the proxy's base URL), PAGES_CHROMIUM (the browser),
// PAGES_SCREENSHOTS (a directory), PAGES_EXPECT (JSON: product, resource, application, a scope description).
// Every request the browser makes is checked to go to 127.0.0.1; anything else is aborted and fails the run.
// Prints one JSON line of results on stdout; exits non-zero on the first failed check.

import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import puppeteer from 'puppeteer-core';

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const PROXY = process.env.PAGES_PROXY;
const CHROMIUM = process.env.PAGES_CHROMIUM;
const SHOTS = process.env.PAGES_SCREENSHOTS;
const EXPECT = JSON.parse(process.env.PAGES_EXPECT ?? '{}');
if (!PROXY || !CHROMIUM || !SHOTS) throw new Error('PAGES_PROXY, PAGES_CHROMIUM and PAGES_SCREENSHOTS are required');

const results = { checks: 0, axe: {}, screenshots: [], offsite: [] };
function check(cond, what) {
  results.checks += 1;
  if (!cond) throw new Error(`check failed: ${what}`);
}
const b64url = (buf) => buf.toString('base64url');

// The MCP client's redirect URI: a listener on 127.0.0.1 that records what comes back.
const landed = [];
const callback = createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  landed.push(Object.fromEntries(url.searchParams));
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end('<!doctype html><html lang="en"><title>Connected</title><main><h1>Back in the application</h1></main></html>');
});
await new Promise((ok) => callback.listen(0, '127.0.0.1', ok));
const REDIRECT = `http://127.0.0.1:${callback.address().port}/callback`;

async function json(resp) {
  const text = await resp.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${resp.status}: ${text}`);
  }
}

// Registration (RFC 7591), as an MCP client does it.
const reg = await json(
  await fetch(`${PROXY}/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      client_name: EXPECT.application,
      redirect_uris: [REDIRECT],
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    }),
  }),
);
check(typeof reg.client_id === 'string', 'registration returns a client_id');
const meta = await json(await fetch(`${PROXY}/.well-known/oauth-authorization-server`));
const scopes = meta.scopes_supported ?? [];

function authorizeUrl(verifier, extra = {}) {
  const q = new URLSearchParams({
    response_type: 'code',
    client_id: reg.client_id,
    redirect_uri: REDIRECT,
    state: b64url(randomBytes(12)),
    code_challenge: b64url(createHash('sha256').update(verifier).digest()),
    code_challenge_method: 'S256',
    scope: scopes.join(' '),
    resource: `${PROXY}/mcp`,
    ...extra,
  });
  return `${PROXY}/authorize?${q}`;
}

const profile = mkdtempSync(join(tmpdir(), 'dcrp-chromium-'));
const browser = await puppeteer.launch({
  executablePath: CHROMIUM,
  headless: true,
  userDataDir: profile,
  args: [
    '--headless=new',
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--no-default-browser-check',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-domain-reliability',
    '--metrics-recording-only',
    '--no-proxy-server',
    // Nothing but 127.0.0.1 resolves.
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
  ],
});

async function newPage() {
  const page = await browser.newPage();
  await page.setViewport({ width: 720, height: 900 });
  await page.setRequestInterception(true);
  page.on('request', (req) => {
    const url = new URL(req.url());
    if (url.protocol === 'data:' || url.hostname === '127.0.0.1') return req.continue();
    results.offsite.push(req.url());
    return req.abort();
  });
  const violations = [];
  page.on('console', (msg) => {
    if (/Content Security Policy|Refused to/i.test(msg.text())) violations.push(msg.text());
  });
  page.cspViolations = violations;
  return page;
}

const text = (page, selector) => page.$eval(selector, (el) => el.innerText.trim());
const texts = (page, selector) => page.$$eval(selector, (els) => els.map((el) => el.innerText.trim()));

// axe-core: WCAG 2.x A/AA and best practices; serious and critical violations fail the run.
async function accessible(page, name) {
  await page.evaluate(AXE_SOURCE);
  const report = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa', 'best-practice'] } }),
  );
  const bad = report.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  results.axe[name] = { violations: report.violations.map((v) => `${v.id} (${v.impact})`), passes: report.passes.length };
  check(bad.length === 0, `${name}: axe-core serious/critical violations: ${JSON.stringify(bad.map((v) => [v.id, v.nodes.map((n) => n.html)]))}`);
  check(page.cspViolations.length === 0, `${name}: CSP violations: ${page.cspViolations.join('; ')}`);
}

async function shoot(page, name, dark = false) {
  await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: dark ? 'dark' : 'light' }]);
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  results.screenshots.push(path);
  await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: 'light' }]);
}

try {
  // 1. Consent → login → the client gets a code → a whoami through the upstream.
  const verifier = b64url(randomBytes(32));
  let page = await newPage();
  const consent = await page.goto(authorizeUrl(verifier), { waitUntil: 'load' });
  check(consent.status() === 200, `consent page status ${consent.status()}`);
  check(consent.headers()['content-security-policy']?.includes("script-src") === false, 'no script source is allowed');
  check(consent.headers()['x-frame-options'] === 'DENY', 'consent page refuses framing');
  const h1 = await text(page, 'main h1');
  check(h1 === `Allow ${EXPECT.application} to access ${EXPECT.resource}?`, `consent heading: ${h1}`);
  check((await text(page, 'header')) === EXPECT.product, 'the header names the service');
  const lang = await page.$eval('html', (el) => el.lang);
  check(lang === 'en', 'the page has a language');
  const facts = await page.$$eval('dl dt', (dts) => dts.map((dt) => [dt.innerText.trim(), dt.nextElementSibling.innerText.trim()]));
  const fact = Object.fromEntries(facts);
  check(fact.Application === EXPECT.application, `application: ${fact.Application}`);
  check(/registered itself/.test(fact['Published by']), `publisher: ${fact['Published by']}`);
  const host = new URL(REDIRECT).host;
  check(fact['Your answer goes to'] === host, `answer host: ${fact['Your answer goes to']} (expected ${host})`);
  const permissions = await texts(page, 'ul[aria-labelledby="permissions"] li');
  check(permissions.some((p) => p.startsWith(EXPECT.scope_description)), `permissions: ${JSON.stringify(permissions)}`);
  check(permissions.some((p) => p.startsWith('Sign you in with your account')), `openid in words: ${JSON.stringify(permissions)}`);
  const buttons = await page.$$eval('form button', (bs) => bs.map((b) => [b.innerText.trim(), b.className]));
  check(JSON.stringify(buttons) === JSON.stringify([['Approve', 'primary'], ['Deny', 'secondary']]), `buttons: ${JSON.stringify(buttons)}`);
  const logo = await page.$eval('header img', (img) => [img.complete && img.naturalWidth > 0, img.alt]);
  check(logo[0] === true && logo[1] === '', 'the logo loads from the proxy and is decorative');
  await shoot(page, 'consent');
  await shoot(page, 'consent-dark', true);
  // Keyboard: Tab reaches Approve, then Deny, and the focused button is outlined.
  await page.focus('body');
  const order = [];
  for (let i = 0; i < 6 && order.length < 2; i += 1) {
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => {
      const el = document.activeElement;
      return el && el.tagName === 'BUTTON' ? [el.innerText.trim(), getComputedStyle(el).outlineStyle] : null;
    });
    if (focused) order.push(focused);
  }
  check(order.length === 2 && order[0][0] === 'Approve' && order[1][0] === 'Deny', `tab order: ${JSON.stringify(order)}`);
  check(order.every(([, outline]) => outline !== 'none'), `focus is visible: ${JSON.stringify(order)}`);
  await accessible(page, 'consent');
  // Responsive: on a 360px phone nothing scrolls sideways and both buttons stay on screen.
  await page.setViewport({ width: 360, height: 740 });
  const phone = await page.evaluate(() => ({
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    buttons: [...document.querySelectorAll('form button')].map((b) => b.getBoundingClientRect().right <= window.innerWidth),
  }));
  check(phone.overflow <= 0 && phone.buttons.every(Boolean), `phone layout: ${JSON.stringify(phone)}`);
  await shoot(page, 'consent-phone');
  await page.setViewport({ width: 720, height: 900 });

  // Approve with the keyboard: focus Approve and press Enter.
  await page.focus('button[value="approve"]');
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.keyboard.press('Enter')]);
  check(new URL(page.url()).pathname === '/login', `after Approve: ${page.url()}`);
  const loginH1 = await text(page, 'main h1');
  check(loginH1 === `Sign in to ${EXPECT.resource}`, `login heading: ${loginH1}`);
  check((await text(page, 'header')) === EXPECT.product, 'the login header names the service');
  check(await text(page, 'main').then((t) => t.includes(`local development login of ${EXPECT.product}`)), 'the login says it is for development');
  check((await page.$$('label[for="username"], label[for="password"]')).length === 2, 'inputs have labels');
  await accessible(page, 'login');
  await page.evaluate(() => document.activeElement?.blur());
  await shoot(page, 'login');
  // A wrong password first: the error is announced and the form stays.
  await page.type('#username', 'alice');
  await page.type('#password', 'not the password');
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('button[type="submit"]')]);
  check((await text(page, '[role="alert"]')) === 'Wrong username or password.', 'a wrong password is announced');
  await accessible(page, 'login-error');
  await page.type('#username', 'alice');
  await page.type('#password', EXPECT.password);
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('button[type="submit"]')]);
  check(page.url().startsWith(REDIRECT), `after login the browser is back at the client: ${page.url()}`);
  const back = landed.at(-1);
  check(typeof back?.code === 'string' && back.iss === meta.issuer, `the client got a code: ${JSON.stringify(back)}`);

  const token = await json(
    await fetch(`${PROXY}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        code: back.code,
        redirect_uri: REDIRECT,
        code_verifier: verifier,
        client_id: reg.client_id,
        resource: `${PROXY}/mcp`,
      }),
    }),
  );
  check(typeof token.access_token === 'string', `token: ${JSON.stringify(Object.keys(token))}`);
  const whoami = await json(await fetch(`${PROXY}/mcp/whoami`, { headers: { authorization: `Bearer ${token.access_token}` } }));
  // The recording upstream echoes each header as a list of values.
  const seen = (name) => [whoami.headers?.[name]].flat()[0];
  check(seen('x-forwarded-user') === 'alice', `whoami through the upstream: ${JSON.stringify(whoami.headers)}`);
  check(seen('authorization') === undefined, 'the proxy token is not passed through');
  results.whoami = seen('x-forwarded-user');
  await page.close();

  // 2. Deny: the client hears access_denied, and nothing else happens.
  page = await newPage();
  await page.goto(authorizeUrl(b64url(randomBytes(32))), { waitUntil: 'load' });
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('button[value="deny"]')]);
  const denied = landed.at(-1);
  check(denied?.error === 'access_denied' && denied.code === undefined, `deny: ${JSON.stringify(denied)}`);
  results.denied = denied.error;
  await page.close();

  // 3. An unregistered redirect URI (with markup in it): a page that says what happened, shows it escaped, and
  // sends nothing there.
  page = await newPage();
  const evil = 'https://evil.example/<b>steal</b>';
  const before = landed.length;
  const bad = await page.goto(authorizeUrl(b64url(randomBytes(32)), { redirect_uri: evil }), { waitUntil: 'load' });
  check(bad.status() === 400, `error page status ${bad.status()}`);
  check((await text(page, 'main h1')) === 'Invalid redirect URI', 'error heading');
  const said = await text(page, '[role="alert"] code');
  check(said === evil, `the bad redirect URI is shown as text: ${said}`);
  check((await page.$$('main b')).length === 0, 'markup in the URI is not rendered');
  check(/What you can do/.test(await text(page, 'main')), 'the page says what to do');
  check(landed.length === before, 'nothing reached the client');
  await accessible(page, 'error');
  await shoot(page, 'error');
  await page.close();

  check(results.offsite.length === 0, `the browser tried to leave 127.0.0.1: ${results.offsite.join(', ')}`);
  results.ok = true;
} finally {
  await browser.close();
  callback.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(results));
