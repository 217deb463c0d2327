// keycard's browser login page (GET /login) in headless Chromium, driven by
// playwright-core: log in, see the session, log out; fail with a wrong
// password and with an unknown user and see the same error; a server whose
// signature does not match is refused; the password is in no request.
//
// Run by crates/keycard/tests/browser.rs against the real binary:
//
//   node login.test.mjs BASE_URL USER PASSWORD USER2 PASSWORD2 SCREENSHOT_DIR
//
// Environment: KEYCARD_CHROMIUM (the browser, e.g. /usr/bin/chromium) and
// KEYCARD_BROWSER_NODE_DIR (a folder whose node_modules holds
// playwright-core; default: this folder). Prints "ALL OK" at the end;
// exits 1 with the reason on the first failed check.

import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.KEYCARD_BROWSER_NODE_DIR || here;
const { chromium } = createRequire(join(nodeDir, "package.json"))("playwright-core");

const [base, user, password, user2, password2, shots] = process.argv.slice(2);
if (!shots) {
  console.error("usage: node login.test.mjs BASE_URL USER PASSWORD USER2 PASSWORD2 SCREENSHOT_DIR");
  process.exit(2);
}
const executablePath = process.env.KEYCARD_CHROMIUM || "/usr/bin/chromium";
const origin = new URL(base).origin;
const TIMEOUT = 20000;

let step = "start";
function check(cond, what) {
  if (!cond) throw new Error(`check failed during "${step}": ${what}`);
}
function log(text) {
  console.log(`[browser] ${text}`);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  chromiumSandbox: false, // we may run as root (CI); the page is our own
  timeout: 60000,
  args: [
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    // Over HTTPS with a test certificate: trust its key, and only it.
    ...(process.env.KEYCARD_BROWSER_SPKI
      ? [`--ignore-certificate-errors-spki-list=${process.env.KEYCARD_BROWSER_SPKI}`]
      : []),
  ],
});

// Everything the page sends, and what it was answered.
const sent = [];
const problems = [];
let page;

try {
  log(`${browser.version()} via playwright-core, ${base}`);
  const context = await browser.newContext({
    viewport: { width: 720, height: 640 },
    deviceScaleFactor: 1,
    locale: "en-GB",
    timezoneId: "UTC",
    colorScheme: "light",
  });
  page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("request", (req) => {
    sent.push({
      // Chromium reports the 303's target as a request even though
      // redirect: "manual" stops there: it is marked and never answered.
      redirect: req.redirectedFrom() !== null,
      method: req.method(),
      url: req.url(),
      headers: req.headers(),
      body: req.postDataBuffer(),
      response: null,
    });
    const r = sent[sent.length - 1];
    req.response().then(
      (resp) => {
        r.response = resp;
      },
      () => {},
    );
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (msg) => {
    // The failed logins' 403s are logged by Chromium as failed loads;
    // anything else (a CSP violation above all) is a problem.
    if (msg.type() === "error" && !/^Failed to load resource: .*status of 403/.test(msg.text())) {
      problems.push(`console error: ${msg.text()}`);
    }
  });

  const form = page.locator("#login-form");
  const sessionView = page.locator("#session-view");
  const alert = page.locator("#login-view").getByRole("alert");
  const userBox = page.getByLabel("User name");
  const passwordBox = page.getByLabel("Password");
  const signIn = page.getByRole("button", { name: "Sign in" });
  const logOut = page.getByRole("button", { name: "Log out" });

  async function signInAs(name, pw) {
    await userBox.fill(name);
    await passwordBox.fill(pw);
    await signIn.click();
  }

  async function failedLogin(name, pw) {
    await signInAs(name, pw);
    await page.waitForFunction(() => document.getElementById("error").textContent.trim() !== "");
    await page.locator("#login-button:not([disabled])").waitFor();
    check(await sessionView.isHidden(), "the session view stays hidden");
    check((await passwordBox.inputValue()) === "", "the password box is emptied");
    return (await alert.textContent()).trim();
  }

  // ---- the page and its headers ----
  step = "load /login";
  const loaded = await page.goto(`${base}/login`);
  check(loaded.status() === 200, `GET /login is ${loaded.status()}`);
  const h = loaded.headers();
  const csp = h["content-security-policy"] || "";
  for (const d of ["script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"]) {
    check(csp.includes(d), `CSP has ${d}: ${csp}`);
  }
  check(h["x-frame-options"] === "DENY", "X-Frame-Options: DENY");
  check(h["x-content-type-options"] === "nosniff", "nosniff");
  check(h["referrer-policy"] === "no-referrer", "Referrer-Policy");
  check(h["cache-control"] === "no-store", "Cache-Control: no-store");
  await form.waitFor();
  check((await page.title()).includes("Sign in"), "the title says Sign in");
  // The stylesheet applied (the CSP allows it by hash).
  const radius = await page.locator("main").evaluate((e) => getComputedStyle(e).borderTopLeftRadius);
  check(radius === "12px", `the stylesheet applies (border radius ${radius})`);
  check(await signIn.isEnabled(), "the Sign in button is enabled");

  // ---- log in ----
  step = "log in";
  await signInAs(user, password);
  await sessionView.waitFor({ state: "visible" });
  check(await page.locator("#login-view").isHidden(), "the form is hidden once logged in");
  const shownUser = (await page.locator("#session-user").textContent()).trim();
  check(shownUser === user, `the page shows the user (${shownUser})`);
  const expires = page.locator("#session-expires");
  const expiresText = `${(await expires.textContent()).trim()} ${(await page.locator("#session-expires-in").textContent()).trim()}`;
  const expiresAt = Date.parse(await expires.getAttribute("datetime"));
  check(/\d{4}/.test(expiresText) && /in \d+ (minutes?|hours|days)$/.test(expiresText), `the expiry is readable: ${expiresText}`);
  check(expiresAt > Date.now() && expiresAt < Date.now() + 400 * 86400 * 1000, `the expiry is in the future: ${expiresText}`);
  // Shown only after the signed GET /session/{sid} answered 200 with the
  // server's signature, and the signature matched.
  const server = (await page.locator("#session-server").textContent()).trim();
  check(server.includes("Verified"), `the server is verified: ${server}`);
  check((await sessionView.getAttribute("data-state")) === "authenticated", "state: authenticated");
  check(await logOut.isEnabled(), "the Log out button is enabled");

  // What went over the wire: the four requests of a login, the GET signed.
  const wire = sent.map((r) => `${r.method} ${new URL(r.url).pathname}`);
  log(`requests so far: ${wire.join(", ")}`);
  const sessionNew = sent.find((r) => r.method === "POST" && r.url.endsWith("/session/new"));
  check(sessionNew, "POST /session/new was sent");
  const started = JSON.parse(sessionNew.body.toString("utf8"));
  check(started.method === "scram-sha-256" && started.user === user, "the login names the method and user");
  check(/^n,,n=[^,]+,r=[A-Za-z0-9+/=]+$/.test(started.data), `client-first: ${started.data}`);
  const shownGet = sent.find((r) => r.method === "GET" && !r.redirect && /\/session\/[A-Za-z0-9_-]+$/.test(r.url));
  check(shownGet, "a GET /session/{sid} was sent");
  check(
    /^Keycard v=2, sid=[A-Za-z0-9_-]+, ts=\d+, nonce=[A-Za-z0-9_-]{22}, sig=[A-Za-z0-9_-]{43}$/.test(shownGet.headers.authorization || ""),
    `the GET is signed: ${shownGet.headers.authorization}`,
  );
  check(shownGet.response && shownGet.response.status() === 200, "the signed GET answered 200");
  for (const r of sent.filter((r) => r.method === "GET" && r.url.includes("/session/") && !r.headers.authorization)) {
    check(r.redirect && !r.response, `an unsigned GET ${r.url} was sent`);
  }

  step = "screenshot";
  mkdirSync(shots, { recursive: true });
  const shot = join(shots, "login-session.png");
  await page.screenshot({ path: shot });
  log(`screenshot: ${shot}`);

  // ---- log out ----
  step = "log out";
  await logOut.click();
  await form.waitFor({ state: "visible" });
  check(await sessionView.isHidden(), "the session view is hidden after logging out");
  const status = (await page.locator("#status").textContent()).trim();
  check(status === "You have been logged out.", `status after logout: ${status}`);
  const deleted = sent.find((r) => r.method === "DELETE");
  check(deleted && /^Keycard v=2, sid=/.test(deleted.headers.authorization || ""), "the DELETE is signed");
  check(deleted.response && deleted.response.status() === 204, "DELETE /session/{sid} answered 204");
  check(await signIn.isEnabled(), "Sign in is enabled again");

  // ---- a wrong password, an unknown user: the same error ----
  step = "wrong password";
  const wrongPassword = `${password}-wrong`;
  const wrong = await failedLogin(user, wrongPassword);
  log(`wrong password: "${wrong}"`);
  check(/login failed/i.test(wrong), `the error says the login failed: ${wrong}`);

  step = "unknown user";
  const nobody = `nobody-${Date.now()}`;
  const unknown = await failedLogin(nobody, password);
  log(`unknown user: "${unknown}"`);
  await page.screenshot({ path: join(shots, "login-failed.png") });
  check(unknown === wrong, `the same error for an unknown user ("${unknown}") and a wrong password ("${wrong}")`);
  const failedPuts = sent.filter((r) => r.method === "PUT" && r.response && r.response.status() === 403);
  check(failedPuts.length === 2, `both failures were the server's 403 (${failedPuts.length})`);

  // ---- a name with '=' and ',' and a non-ASCII password ----
  step = "escaped user name";
  await signInAs(user2, password2);
  await sessionView.waitFor({ state: "visible" });
  const shown2 = (await page.locator("#session-user").textContent()).trim();
  check(shown2 === user2, `the page shows ${user2} (${shown2})`);
  await logOut.click();
  await form.waitFor({ state: "visible" });

  // ---- a server that cannot prove itself is refused ----
  step = "forged server signature";
  await page.route(/\/session\/[A-Za-z0-9_-]+$/, async (route) => {
    if (route.request().method() !== "GET") return route.fallback();
    const real = await route.fetch();
    const body = await real.json();
    body.data = `v=${Buffer.alloc(32, 7).toString("base64")}`;
    await route.fulfill({ response: real, json: body });
  });
  const forged = await failedLogin(user, password);
  log(`forged signature: "${forged}"`);
  check(/could not prove/.test(forged), `a wrong server signature is refused: ${forged}`);
  await page.unroute(/\/session\/[A-Za-z0-9_-]+$/);

  // ---- the passwords never left the browser ----
  step = "no password on the wire";
  const secrets = [password, wrongPassword, password2];
  const forms = (s) => [
    s,
    s.normalize("NFKC"),
    encodeURIComponent(s),
    Buffer.from(s).toString("base64"),
    Buffer.from(s).toString("base64url"),
    Buffer.from(s).toString("hex"),
  ];
  for (const r of sent) {
    check(new URL(r.url).origin === origin, `a request left the origin: ${r.url}`);
    const texts = [r.url, JSON.stringify(r.headers), r.body ? r.body.toString("utf8") : ""];
    for (const s of secrets) {
      for (const f of forms(s)) {
        for (const t of texts) {
          check(!t.includes(f), `a password (as "${f}") appears in ${r.method} ${r.url}`);
        }
      }
    }
  }
  const posted = sent.filter((r) => r.body && r.body.length > 0).length;
  log(`${sent.length} requests (${posted} with a body), no password in any of them`);

  step = "end";
  check(problems.length === 0, `console/page errors:\n  ${problems.join("\n  ")}`);
  console.log("ALL OK");
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  if (problems.length) console.error(`console/page errors:\n  ${problems.join("\n  ")}`);
  console.error(`requests: ${sent.map((r) => `${r.method} ${r.url} -> ${r.response ? r.response.status() : "?"}`).join("\n  ")}`);
  if (page) {
    try {
      await page.screenshot({ path: join(shots, "failure.png") });
      console.error(`page text:\n${await page.locator("body").innerText()}`);
      console.error(`screenshot of the failure: ${join(shots, "failure.png")}`);
    } catch {
      // the page is gone
    }
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
