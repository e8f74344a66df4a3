// fleet.mjs drives Debian's chromium, headless, against the fleet page for
// attest/fleet's TestBrowser, and prints what it saw as one JSON object on
// stdout; the Go test makes the assertions. It exits 1 when it could not
// carry out a step.
//
// Usage: node fleet.mjs '{"url": ..., "origin": ..., "cert": ..., "key": ...,
//   "chromium": ..., "refused": ..., "serving": ..., "screenshot": ...}'
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const out = {};

// watch records every request a page makes and every error it logs
// (a Content-Security-Policy violation is logged as a console error).
function watch(page, into) {
  into.requests = [];
  into.errors = [];
  page.on('request', (r) => into.requests.push(r.method() + ' ' + r.url()));
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') into.errors.push(m.text()); });
  page.on('pageerror', (e) => into.errors.push(String(e)));
}

// looks returns the computed colours and visible text of selector's element.
async function looks(page, selector, inner) {
  return page.$eval(selector, (el, inner) => {
    const badge = el.querySelector(inner);
    return {
      className: el.className,
      background: getComputedStyle(el).backgroundColor,
      badgeColor: badge ? getComputedStyle(badge).color : '',
      text: el.innerText,
    };
  }, inner);
}

const browser = await chromium.launch({ executablePath: cfg.chromium, args: ['--headless=new', '--no-sandbox'] });
try {
  // An operator's browser: the client certificate is presented to origin.
  const ctx = await browser.newContext({
    ignoreHTTPSErrors: true,
    clientCertificates: [{ origin: cfg.origin, certPath: cfg.cert, keyPath: cfg.key }],
    viewport: { width: 1400, height: 900 },
  });
  const page = await ctx.newPage();
  out.withCert = {};
  watch(page, out.withCert);
  const resp = await page.goto(cfg.url, { waitUntil: 'load' });
  out.withCert.status = resp.status();
  out.withCert.title = await page.title();
  out.withCert.refused = await looks(page, `#appliance-${cfg.refused}`, '.badge');
  out.withCert.serving = await looks(page, `#appliance-${cfg.serving}`, '.badge');
  await page.screenshot({ path: cfg.screenshot, fullPage: true });

  // The refused appliance's own page, through the row's relative link.
  await Promise.all([page.waitForLoadState('load'), page.click(`#appliance-${cfg.refused} a`)]);
  await page.waitForURL(/appliances\//);
  out.withCert.detailURL = page.url();
  out.withCert.detail = await looks(page, '.panel', '.badge');
  await ctx.close();

  // A browser without a certificate: the TLS handshake must fail.
  const bare = await browser.newContext({ ignoreHTTPSErrors: true });
  const page2 = await bare.newPage();
  out.withoutCert = {};
  watch(page2, out.withoutCert);
  try {
    const r = await page2.goto(cfg.url, { waitUntil: 'load', timeout: 30000 });
    out.withoutCert.loaded = true;
    out.withoutCert.status = r.status();
  } catch (e) {
    out.withoutCert.loaded = false;
    out.withoutCert.error = String(e.message).split('\n')[0];
  }
  await bare.close();
} catch (e) {
  console.error('fleet.mjs:', e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + '\n');
