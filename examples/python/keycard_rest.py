#!/usr/bin/env python3
"""A small keycard REST client: standard library plus PyPI `scramp`.

    python keycard_rest.py URL USER PASSWORD [--cafile CA.pem]

Logs in with SCRAM-SHA-256 (scramp computes every SCRAM message; the
password never leaves this process), derives the session key K as
docs/REST.md says, then makes signed requests (version 2: the If-Match and
If-None-Match headers are signed too): shows the session, writes, reads
and conditionally rewrites a value under /kv, checks that a replayed
request and a request whose If-Match was stripped are refused, and logs
out. Prints ALL OK at the end; on an error, prints one line to stderr and
exits with 1 (2 for bad arguments).
"""
import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import scramp

PROG = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "keycard_rest.py"


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Failure(Exception):
    """What went wrong, in one line for the user."""


class LoginFailed(Failure):
    """The server refused the login (`status` is its HTTP status)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """The login's 303 carries the server's final message: read it, do
    not follow it (the follow-up GET would have to be signed)."""

    def redirect_request(self, *args, **kwargs):
        return None


def error_text(body):
    """The `error` of a keycard error body, else the body itself, short."""
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace") or "(no body)"


class Keycard:
    def __init__(self, url, cafile=None):
        self.url = url.rstrip("/")
        handlers = [NoRedirect]
        if cafile is not None:
            # HTTPS trusting this CA (else the system's, as urllib does).
            try:
                context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as e:
                raise Failure(f"cannot use the CA file {cafile!r}: {e}") from None
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)
        self.sid = None
        self.key = None

    def request(self, method, path, body=None, headers=None, sign=True):
        data = b"" if body is None else json.dumps(body).encode()
        headers = dict(headers or {})
        if sign:
            def header(name):
                return next((v for k, v in headers.items() if k.lower() == name), "")

            headers["Authorization"] = self.authorization(
                method, path, data, header("if-match"), header("if-none-match")
            )
        req = urllib.request.Request(
            self.url + path, data=data or None, method=method, headers=headers
        )
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()
        except urllib.error.URLError as e:
            reason = getattr(e.reason, "strerror", None) or e.reason
            raise Failure(f"cannot reach {self.url}: {reason}") from None
        except (socket.timeout, TimeoutError):
            raise Failure(f"{self.url} did not answer within 10 s") from None
        except (http.client.HTTPException, ConnectionError) as e:
            raise Failure(
                f"{self.url} does not speak HTTP as keycard's REST API does "
                f"({type(e).__name__}); is this the --http address?"
            ) from None

    def authorization(self, method, path, body, if_match="", if_none_match="",
                      ts=None, nonce=None):
        """DESIGN §4.1, version 2: HMAC-SHA256(K, canonical), as
        docs/REST.md shows; the preconditions are the last two lines."""
        path, _, query = path.partition("?")
        ts = int(time.time()) if ts is None else ts
        nonce = b64u(os.urandom(16) if nonce is None else nonce)
        canonical = "\n".join(
            [method.upper(), path, query, self.sid, str(ts), nonce,
             hashlib.sha256(body).hexdigest(), if_match.strip(), if_none_match.strip()]
        )
        sig = b64u(hmac.new(self.key, canonical.encode(), hashlib.sha256).digest())
        return f"Keycard v=2, sid={self.sid}, ts={ts}, nonce={nonce}, sig={sig}"

    def login(self, user, password):
        c = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
        first = c.get_client_first()
        status, headers, body = self.request(
            "POST", "/session/new",
            {"method": "scram-sha-256", "user": user, "data": first}, sign=False,
        )
        if status != 201:
            raise refusal(status, headers, body, user)
        try:
            answer = json.loads(body)
            sid, server_first = answer["sid"], answer["data"]
        except (ValueError, KeyError, TypeError):
            raise Failure(f"{self.url} is not a keycard REST API (POST /session/new)") from None
        c.set_server_first(server_first)
        final = c.get_client_final()
        status, headers, body = self.request(
            "PUT", f"/session/{sid}", {"data": final}, sign=False
        )
        if status != 303:
            raise refusal(status, headers, body, user)
        if headers["Location"] != f"/session/{sid}":
            raise Failure(f"the login answered Location {headers['Location']!r}")
        # Mutual authentication: scramp checks the server's signature.
        try:
            c.set_server_final(json.loads(body)["data"])
        except scramp.ScramException:
            raise Failure(
                "the server could not prove that it knows this user's verifier "
                "(is it the server you meant?)"
            ) from None
        # K = HMAC(ClientKey, "keycard session key" || AuthMessage).
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        without_proof = final.split(",p=")[0]
        auth_message = f"{c.client_first_bare},{server_first},{without_proof}"
        self.key = hmac.new(
            client_key, b"keycard session key" + auth_message.encode(), hashlib.sha256
        ).digest()
        self.sid = sid


def refusal(status, headers, body, user):
    """The exception for a refused login step."""
    if status == 403:
        return LoginFailed(status, f"login failed for {user!r}: wrong password or no such user")
    if status == 429:
        retry = headers.get("Retry-After", "?")
        return LoginFailed(status, f"login refused for now (throttled): retry in {retry} s")
    return LoginFailed(status, f"login failed: {status} {error_text(body)}")


def check(ok, what):
    if not ok:
        raise Failure(f"unexpected answer: {what}")


def demo(url, user, password, cafile=None):
    kc = Keycard(url, cafile)

    status, _, body = kc.request("GET", "/", sign=False)
    try:
        methods = json.loads(body)["methods"]
    except (ValueError, KeyError, TypeError):
        raise Failure(f"{url} is not a keycard REST API (GET / answered {status})") from None
    check(status == 200 and "scram-sha-256" in methods, f"GET / {status} {body!r}")

    # A wrong password and an unknown user are refused alike.
    for who, pw in ((user, password + "x"), ("nobody-" + user, password)):
        try:
            Keycard(url, cafile).login(who, pw)
        except LoginFailed as e:
            check(e.status == 403, f"a bad login: {e}")
        else:
            raise Failure("a bad login succeeded")

    kc.login(user, password)
    status, _, body = kc.request("GET", f"/session/{kc.sid}")
    check(status == 200, f"GET /session {status} {body!r}")
    session = json.loads(body)
    check(session["state"] == "authenticated" and session["user"] == user, body)

    status, headers, body = kc.request("PUT", "/kv/example/greeting", {"value": "hello"})
    check(status == 200, f"PUT /kv {status} {error_text(body)}")
    etag = headers["ETag"]
    status, _, body = kc.request("GET", "/kv/example/greeting")
    check(status == 200 and json.loads(body)["value"] == "hello", f"GET /kv {status} {body!r}")
    status, _, body = kc.request(
        "PUT", "/kv/example/greeting", {"value": "hi"}, {"If-Match": '"1"'}
    )
    check(status == 412, f"a stale If-Match: {status} {error_text(body)}")

    # The precondition is signed: stripped on the way, the request fails.
    data = json.dumps({"value": "hi"}).encode()
    auth = kc.authorization("PUT", "/kv/example/greeting", data, if_match=etag)
    status, _, _ = kc.request(
        "PUT", "/kv/example/greeting", {"value": "hi"}, {"Authorization": auth}, sign=False
    )
    check(status == 401, f"a stripped If-Match: {status}")

    status, _, body = kc.request(
        "PUT", "/kv/example/greeting", {"value": "hi"}, {"If-Match": etag}
    )
    check(status == 200, f"a current If-Match: {status} {error_text(body)}")

    # A replayed request (same ts and nonce) is refused.
    auth = kc.authorization("GET", "/kv/example/greeting", b"", nonce=b"\x01" * 16)
    headers = {"Authorization": auth}
    first = kc.request("GET", "/kv/example/greeting", headers=headers, sign=False)[0]
    again = kc.request("GET", "/kv/example/greeting", headers=headers, sign=False)[0]
    check((first, again) == (200, 401), f"a replay: {(first, again)}")

    status, _, _ = kc.request("DELETE", f"/session/{kc.sid}")
    check(status == 204, f"logout: {status}")
    status, _, _ = kc.request("GET", f"/session/{kc.sid}")
    check(status == 401, f"after logout: {status}")
    print("ALL OK")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, not the usage block: --help has that.
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parse_args(argv):
    p = Parser(
        prog=PROG,
        description="Log in to keycard's REST API with SCRAM-SHA-256 and try "
        "signed requests under /kv/example (docs/REST.md).",
    )
    p.add_argument("url", metavar="URL", help="the REST API, e.g. http://127.0.0.1:8427")
    p.add_argument("user", metavar="USER", help="a scram-sha-256 user")
    p.add_argument("password", metavar="PASSWORD", help="its password")
    p.add_argument(
        "--cafile",
        metavar="CA.pem",
        help="for an https URL: trust the CA certificates in this file "
        "(default: the system's)",
    )
    args = p.parse_args(argv)
    u = urllib.parse.urlsplit(args.url)
    if u.scheme not in ("http", "https") or not u.hostname:
        p.error(f"URL must be http://HOST:PORT or https://HOST:PORT, not {args.url!r}")
    try:
        u.port
    except ValueError:
        p.error(f"URL has a bad port: {args.url!r}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        demo(args.url, args.user, args.password, args.cafile)
    except Failure as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # anything else: still one line, no traceback
        print(f"{PROG}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
