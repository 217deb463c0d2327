// keycard's browser login page: SCRAM-SHA-256 (RFC 5802 / RFC 7677) run
// in the page with WebCrypto, so the password never leaves the browser,
// then requests signed with the session key K (docs/REST.md, version 2).
//
// The flow:
//   POST /session/new {method, user, data: client-first}  -> 201 {sid, data: server-first}
//   PUT /session/{sid} {data: client-final}                -> 303 (an opaqueredirect here)
//   GET /session/{sid} (signed)                            -> {state, user, expires_at, data: "v=…"}
//     data must equal the ServerSignature computed here (mutual authentication)
//   DELETE /session/{sid} (signed)                         -> 204, log out
//
// K is imported as a non-extractable HMAC key and kept in memory only: a
// reload forgets it, and the session then ends at its expiry.
"use strict";

(() => {
  const enc = new TextEncoder();

  // Iteration counts a server may ask for: RFC 7677's minimum, and a bound
  // so a hostile server cannot keep the page busy for minutes.
  const MIN_ITERATIONS = 4096;
  const MAX_ITERATIONS = 10000000;

  const $ = (id) => document.getElementById(id);
  const el = {};

  // The live session: {sid, key (CryptoKey), user, expiresAt, timer}.
  let session = null;
  // Server clock minus ours, in milliseconds (from the Date header), so a
  // signed request's ts falls in the server's window even if this
  // machine's clock is off.
  let skew = 0;

  // ---- bytes ----

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  function b64(bytes) {
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  }

  function unb64(text) {
    const s = atob(text); // throws on bad input
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  function b64url(bytes) {
    return b64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function random(n) {
    return crypto.getRandomValues(new Uint8Array(n));
  }

  // Constant-time-ish comparison of two strings (the signature is public
  // once sent, but there is no reason to leak where it differs).
  function same(a, b) {
    if (a.length !== b.length) return false;
    let d = 0;
    for (let i = 0; i < a.length; i++) d |= a.charCodeAt(i) ^ b.charCodeAt(i);
    return d === 0;
  }

  // ---- WebCrypto ----

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  async function hmacKey(raw, extractable = false) {
    return crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, extractable, [
      "sign",
    ]);
  }

  async function hmac(keyBytes, message) {
    const key = await hmacKey(keyBytes);
    return new Uint8Array(await crypto.subtle.sign("HMAC", key, message));
  }

  async function pbkdf2(password, salt, iterations) {
    const base = await crypto.subtle.importKey("raw", password, "PBKDF2", false, ["deriveBits"]);
    const bits = await crypto.subtle.deriveBits(
      { name: "PBKDF2", hash: "SHA-256", salt, iterations },
      base,
      256,
    );
    return new Uint8Array(bits);
  }

  // ---- SCRAM-SHA-256 ----

  // A user name as a SCRAM saslname: '=' and ',' escaped.
  function saslname(name) {
    return name.replace(/=/g, "=3D").replace(/,/g, "=2C");
  }

  class LoginError extends Error {}

  // Parses "a=…,b=…" into a map; the first occurrence of an attribute wins.
  function attributes(message) {
    const out = new Map();
    for (const part of message.split(",")) {
      const eq = part.indexOf("=");
      if (eq !== 1) throw new LoginError("The server's SCRAM message is malformed.");
      const k = part[0];
      if (!out.has(k)) out.set(k, part.slice(2));
    }
    return out;
  }

  // Everything a login computes from the password and the server's first
  // message. Only derived keys leave this function; the password's bytes
  // are overwritten once PBKDF2 has them.
  async function scramProof(password, clientFirstBare, serverFirst, cnonce) {
    const a = attributes(serverFirst);
    if (a.has("e")) throw new LoginError(`The server refused the login: ${a.get("e")}`);
    if (a.has("m")) throw new LoginError("The server asks for a SCRAM extension this page does not know.");
    const nonce = a.get("r");
    const saltText = a.get("s");
    const iterText = a.get("i");
    if (!nonce || !saltText || !iterText) throw new LoginError("The server's SCRAM challenge is incomplete.");
    if (!nonce.startsWith(cnonce) || nonce.length === cnonce.length) {
      throw new LoginError("The server's SCRAM nonce does not extend ours.");
    }
    if (!/^[0-9]+$/.test(iterText)) throw new LoginError("The server's iteration count is not a number.");
    const iterations = Number(iterText);
    if (iterations < MIN_ITERATIONS || iterations > MAX_ITERATIONS) {
      throw new LoginError(`The server asks for ${iterations} iterations, outside ${MIN_ITERATIONS}…${MAX_ITERATIONS}.`);
    }
    let salt;
    try {
      salt = unb64(saltText);
    } catch {
      throw new LoginError("The server's salt is not base64.");
    }

    // "biws" is base64("n,,"): no channel binding, no authorization identity.
    const clientFinalWithoutProof = `c=biws,r=${nonce}`;
    const authMessage = enc.encode(`${clientFirstBare},${serverFirst},${clientFinalWithoutProof}`);

    // SASLprep (RFC 4013) approximated by NFKC normalisation: it maps the
    // same compatibility characters and leaves ASCII alone; the mapping of
    // non-ASCII spaces and the prohibited-character checks are not done.
    const pwBytes = enc.encode(password.normalize("NFKC"));
    let salted;
    try {
      salted = await pbkdf2(pwBytes, salt, iterations);
    } finally {
      pwBytes.fill(0);
    }
    const clientKey = await hmac(salted, enc.encode("Client Key"));
    const serverKey = await hmac(salted, enc.encode("Server Key"));
    salted.fill(0);
    const storedKey = await sha256(clientKey);
    const clientSignature = await hmac(storedKey, authMessage);
    const proof = clientKey.map((b, i) => b ^ clientSignature[i]);
    const serverSignature = b64(await hmac(serverKey, authMessage));
    serverKey.fill(0);

    // K = HMAC-SHA256(key = ClientKey, "keycard session key" || AuthMessage),
    // imported non-extractable: script can sign with it but not read it.
    const kBytes = await hmac(clientKey, concat(enc.encode("keycard session key"), authMessage));
    clientKey.fill(0);
    const key = await hmacKey(kBytes, false);
    kBytes.fill(0);

    return {
      clientFinal: `${clientFinalWithoutProof},p=${b64(proof)}`,
      serverSignature,
      key,
    };
  }

  // ---- HTTP ----

  function noteServerClock(response) {
    const date = Date.parse(response.headers.get("Date") || "");
    if (Number.isFinite(date)) skew = date - Date.now();
  }

  // The message to show for an error answer ({error, code} JSON).
  async function problem(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON
    }
    // The server answers a wrong password and an unknown user alike
    // (403 auth_failed); so does this page.
    if (body && body.code === "auth_failed") return "Login failed: wrong user name or password.";
    const text = body && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
    let msg = text.charAt(0).toUpperCase() + text.slice(1);
    if (!/[.!?]$/.test(msg)) msg += ".";
    const retry = response.headers.get("Retry-After");
    if (response.status === 429 && retry) msg += ` Try again in ${retry} s.`;
    return msg;
  }

  function postJson(method, path, value) {
    return fetch(path, {
      method,
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(value),
      cache: "no-store",
      credentials: "omit",
      redirect: "manual",
    });
  }

  // A request signed with the session key (docs/REST.md, "Signed
  // requests", version 2). The page sends no If-Match or If-None-Match,
  // so their two lines are empty.
  async function signedFetch(method, path, body = "") {
    const ts = Math.floor((Date.now() + skew) / 1000);
    const nonce = b64url(random(16));
    const bodyBytes = enc.encode(body);
    const canonical = [
      method.toUpperCase(),
      path, // as sent: our paths are plain ASCII with no escapes
      "", // no query
      session.sid,
      String(ts),
      nonce,
      hex(await sha256(bodyBytes)),
      "", // no If-Match
      "", // no If-None-Match
    ].join("\n");
    const sig = b64url(new Uint8Array(await crypto.subtle.sign("HMAC", session.key, enc.encode(canonical))));
    const init = {
      method,
      headers: { Authorization: `Keycard v=2, sid=${session.sid}, ts=${ts}, nonce=${nonce}, sig=${sig}` },
      cache: "no-store",
      credentials: "omit",
      redirect: "manual",
    };
    if (body !== "") init.body = bodyBytes;
    return fetch(path, init);
  }

  // ---- the page ----

  function setBusy(button, busy, label) {
    button.disabled = busy;
    button.setAttribute("aria-busy", busy ? "true" : "false");
    if (label) button.textContent = label;
  }

  function status(text) {
    el.status.textContent = text;
  }

  function showError(where, text) {
    where.textContent = text;
  }

  function forget() {
    if (session && session.timer) clearTimeout(session.timer);
    session = null;
  }

  function showLogin(message = "") {
    forget();
    el.sessionView.hidden = true;
    el.loginView.hidden = false;
    document.title = "Sign in · keycard";
    showError(el.sessionError, "");
    showError(el.error, message);
    status("");
    el.password.value = "";
    (el.user.value ? el.password : el.user).focus();
  }

  function inWords(ms) {
    const mins = Math.round((ms - (Date.now() + skew)) / 60000);
    if (mins <= 0) return "in less than a minute";
    if (mins < 120) return `in ${mins} minute${mins === 1 ? "" : "s"}`;
    const hours = Math.round(mins / 60);
    if (hours < 72) return `in ${hours} hours`;
    return `in ${Math.round(hours / 24)} days`;
  }

  function showSession(info) {
    el.sessionUser.textContent = info.user;
    el.sessionMethod.textContent = info.method || "scram-sha-256";
    el.sessionExpires.dateTime = new Date(info.expires_at).toISOString();
    el.sessionExpires.textContent = new Date(info.expires_at).toLocaleString(undefined, {
      dateStyle: "medium",
      timeStyle: "short",
    });
    el.sessionExpiresIn.textContent = inWords(info.expires_at);
    el.sessionServer.textContent = "✓ Verified";
    el.sessionServer.className = "verified";
    el.sessionView.dataset.state = info.state;
    el.loginView.hidden = true;
    el.sessionView.hidden = false;
    document.title = `${info.user} · keycard`;
    status("");
    el.sessionTitle.focus();
    // Back to the form when the session ends by itself. setTimeout's limit
    // is about 24.8 days; a longer session simply keeps its page.
    const left = info.expires_at - (Date.now() + skew);
    if (left < 2 ** 31 - 1) {
      session.timer = setTimeout(() => showLogin("Your session has expired. Please sign in again."), Math.max(left, 0));
    }
  }

  async function login(user, password) {
    const cnonce = b64(random(24));
    const clientFirstBare = `n=${saslname(user)},r=${cnonce}`;

    status("Contacting the server…");
    const started = await postJson("POST", "/session/new", {
      method: "scram-sha-256",
      user,
      data: `n,,${clientFirstBare}`,
    });
    noteServerClock(started);
    if (started.status !== 201) throw new LoginError(await problem(started));
    const first = await started.json();
    if (typeof first.sid !== "string" || !/^[A-Za-z0-9_-]{1,128}$/.test(first.sid) || typeof first.data !== "string") {
      throw new LoginError("The server's answer is not what this page expects.");
    }

    status("Checking your password…");
    const scram = await scramProof(password, clientFirstBare, first.data, cnonce);

    const answered = await postJson("PUT", `/session/${first.sid}`, { data: scram.clientFinal });
    // Success is a 303 to /session/{sid}; with redirect: "manual" the
    // browser hands it over as an opaque redirect (status 0).
    if (answered.type !== "opaqueredirect" && answered.status !== 303) {
      throw new LoginError(await problem(answered));
    }
    session = { sid: first.sid, key: scram.key, user, timer: null };

    status("Verifying the server…");
    const shown = await signedFetch("GET", `/session/${session.sid}`);
    if (!shown.ok) {
      forget();
      throw new LoginError(await problem(shown));
    }
    const info = await shown.json();
    // Mutual authentication: only a server that holds this user's
    // ServerKey can produce the signature.
    if (typeof info.data !== "string" || !same(info.data, `v=${scram.serverSignature}`)) {
      forget();
      throw new LoginError("The server could not prove it knows your credentials; the session was abandoned.");
    }
    if (info.state !== "authenticated" || typeof info.expires_at !== "number") {
      forget();
      throw new LoginError("The server did not confirm the session.");
    }
    showSession(info);
  }

  async function onSubmit(event) {
    event.preventDefault();
    const user = el.user.value;
    const password = el.password.value;
    if (!user || !password) {
      showError(el.error, "Enter your user name and password.");
      (user ? el.password : el.user).focus();
      return;
    }
    showError(el.error, "");
    setBusy(el.loginButton, true, "Signing in…");
    try {
      await login(user, password);
      el.password.value = "";
    } catch (e) {
      forget();
      status("");
      const msg = e instanceof LoginError ? e.message : `Sign-in failed: ${e && e.message ? e.message : e}`;
      showError(el.error, msg);
      el.password.value = "";
      el.password.focus();
    } finally {
      setBusy(el.loginButton, false, "Sign in");
    }
  }

  async function onLogout() {
    if (!session) return showLogin();
    setBusy(el.logoutButton, true, "Logging out…");
    showError(el.sessionError, "");
    try {
      const r = await signedFetch("DELETE", `/session/${session.sid}`);
      // 204: gone. 401: the session had already ended; either way it is over.
      if (r.status === 204 || r.status === 401) {
        showLogin();
        status("You have been logged out.");
      } else {
        showError(el.sessionError, await problem(r));
      }
    } catch (e) {
      showError(el.sessionError, `Logging out failed: ${e && e.message ? e.message : e}`);
    } finally {
      setBusy(el.logoutButton, false, "Log out");
    }
  }

  function start() {
    for (const [name, id] of Object.entries({
      loginView: "login-view",
      sessionView: "session-view",
      form: "login-form",
      user: "user",
      password: "password",
      loginButton: "login-button",
      error: "error",
      status: "status",
      sessionTitle: "session-title",
      sessionError: "session-error",
      sessionUser: "session-user",
      sessionMethod: "session-method",
      sessionExpires: "session-expires",
      sessionExpiresIn: "session-expires-in",
      sessionServer: "session-server",
      logoutButton: "logout-button",
    })) {
      el[name] = $(id);
    }
    if (!window.isSecureContext || !crypto.subtle) {
      showError(el.error, "This page needs a secure context (HTTPS or localhost) for WebCrypto.");
      el.loginButton.disabled = true;
      return;
    }
    el.form.addEventListener("submit", onSubmit);
    el.logoutButton.addEventListener("click", onLogout);
    el.user.focus();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
