#!/usr/bin/env python3
"""A small keycard REST client: standard library plus PyPI `scramp`.

    python keycard_rest.py URL USER PASSWORD

Logs in with SCRAM-SHA-256 (scramp computes every SCRAM message; the
password never leaves this process), derives the session key K as
docs/REST.md says, then makes signed requests: shows the session, writes,
reads and conditionally rewrites a value under /kv, checks that a replayed
request is refused, and logs out. Prints ALL OK at the end.
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request

import scramp


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """The login's 303 carries the server's final message: read it, do
    not follow it (the follow-up GET would have to be signed)."""

    def redirect_request(self, *args, **kwargs):
        return None


class Keycard:
    def __init__(self, url):
        self.url = url.rstrip("/")
        self.opener = urllib.request.build_opener(NoRedirect)
        self.sid = None
        self.key = None

    def request(self, method, path, body=None, headers=None, sign=True):
        data = b"" if body is None else json.dumps(body).encode()
        headers = dict(headers or {})
        if sign:
            headers["Authorization"] = self.authorization(method, path, data)
        req = urllib.request.Request(
            self.url + path, data=data or None, method=method, headers=headers
        )
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def authorization(self, method, path, body, ts=None, nonce=None):
        """DESIGN §4.1: HMAC-SHA256(K, canonical), as docs/REST.md shows."""
        path, _, query = path.partition("?")
        ts = int(time.time()) if ts is None else ts
        nonce = b64u(os.urandom(16) if nonce is None else nonce)
        canonical = "\n".join(
            [method.upper(), path, query, self.sid, str(ts), nonce,
             hashlib.sha256(body).hexdigest()]
        )
        sig = b64u(hmac.new(self.key, canonical.encode(), hashlib.sha256).digest())
        return f"Keycard sid={self.sid}, ts={ts}, nonce={nonce}, sig={sig}"

    def login(self, user, password):
        c = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
        first = c.get_client_first()
        status, _, body = self.request(
            "POST", "/session/new",
            {"method": "scram-sha-256", "user": user, "data": first}, sign=False,
        )
        if status != 201:
            raise PermissionError(f"{status} {body!r}")
        answer = json.loads(body)
        sid, server_first = answer["sid"], answer["data"]
        c.set_server_first(server_first)
        final = c.get_client_final()
        status, headers, body = self.request(
            "PUT", f"/session/{sid}", {"data": final}, sign=False
        )
        if status != 303:
            raise PermissionError(f"{status} {body!r}")
        assert headers["Location"] == f"/session/{sid}"
        # Mutual authentication: scramp checks the server's signature.
        c.set_server_final(json.loads(body)["data"])
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


def main():
    url, user, password = sys.argv[1:4]
    kc = Keycard(url)

    status, _, body = kc.request("GET", "/", sign=False)
    assert status == 200 and "scram-sha-256" in json.loads(body)["methods"], body

    for bad in ("wrong password", None):
        try:
            Keycard(url).login(user if bad else "nobody-" + user, bad or password + "x")
            raise AssertionError("a bad login succeeded")
        except PermissionError as e:
            assert str(e).startswith("403"), e

    kc.login(user, password)
    status, _, body = kc.request("GET", f"/session/{kc.sid}")
    session = json.loads(body)
    assert status == 200 and session["state"] == "authenticated", body
    assert session["user"] == user

    status, headers, body = kc.request("PUT", "/kv/example/greeting", {"value": "hello"})
    assert status == 200, body
    etag = headers["ETag"]
    status, _, body = kc.request("GET", "/kv/example/greeting")
    assert status == 200 and json.loads(body)["value"] == "hello", body
    status, _, _ = kc.request(
        "PUT", "/kv/example/greeting", {"value": "hi"}, {"If-Match": '"1"'}
    )
    assert status == 412, status
    status, _, _ = kc.request(
        "PUT", "/kv/example/greeting", {"value": "hi"}, {"If-Match": etag}
    )
    assert status == 200, status

    # A replayed request (same ts and nonce) is refused.
    auth = kc.authorization("GET", "/kv/example/greeting", b"", nonce=b"\x01" * 16)
    headers = {"Authorization": auth}
    first = kc.request("GET", "/kv/example/greeting", headers=headers, sign=False)[0]
    again = kc.request("GET", "/kv/example/greeting", headers=headers, sign=False)[0]
    assert (first, again) == (200, 401), (first, again)

    status, _, _ = kc.request("DELETE", f"/session/{kc.sid}")
    assert status == 204, status
    status, _, _ = kc.request("GET", f"/session/{kc.sid}")
    assert status == 401, status
    print("ALL OK")


if __name__ == "__main__":
    main()
