#!/usr/bin/env python3
"""SCRAM-SHA-256-PLUS from a client nobody here wrote: PyPI `scramp` with
channel binding (`tls-server-end-point`, RFC 5929) taken from Python's own
`ssl` socket, against keycard's msgpack and REST listeners over TLS.

Usage: python scramp_plus.py HOST PORT HTTP_PORT CAFILE USER PASSWORD
On a keycard server with TLS on, scram-sha-256 current and SCRAM user
USER/PASSWORD: the greeting and GET / offer scram-sha-256-plus; scramp logs
in with it on both listeners (REST: the session key derived as for
scram-sha-256, then a signed request); binding data for another
certificate (a man in the middle's) is refused; a client that supports
binding but was shown no -plus (`y,,`) is refused; a wrong password fails
as any login does. Only msgpack framing and HTTP are hand-written here:
every SCRAM string, the binding data included, is scramp's.
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import sys

import scramp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
import keycard_rest  # noqa: E402  (the signing, as the example does it)
from kc_msgpack import Conn as Msgpack  # noqa: E402

HOST, PORT, HTTP_PORT, CAFILE, USER, PASSWORD = sys.argv[1:7]
PORT, HTTP_PORT = int(PORT), int(HTTP_PORT)
CTX = ssl.create_default_context(cafile=CAFILE)
PLUS = "scram-sha-256-plus"


def step(msg):
    print("ok:", msg, flush=True)




def Conn():
    """A msgpack connection over TLS."""
    raw = socket.create_connection((HOST, PORT), timeout=10)
    return Msgpack(CTX.wrap_socket(raw, server_hostname=HOST))


def another_certificates_binding():
    """What a man in the middle's connection would bind to: the end point
    of a certificate that is not the server's (the CA's own)."""
    with open(CAFILE) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    return ("tls-server-end-point", hashlib.sha256(der).digest())


def msgpack_login(mechanisms, password, binding):
    """Logs in on a new connection; None on success, else the error."""
    c = Conn()
    client = scramp.ScramClient(mechanisms, USER, password, channel_binding=binding(c.sock))
    typ = client.mechanism_name.lower()
    seq = c.request(action="auth", typ=typ, ident=USER, data=client.get_client_first())
    start = c.recv()
    if "error" in start:
        return start["code"], start["error"]
    assert start["state"] == "start", start
    server_first = c.recv()
    if "error" in server_first:
        return server_first["code"], server_first["error"]
    client.set_server_first(server_first["data"])
    c.send(seq=seq, data=client.get_client_final())
    final = c.recv()
    if "error" in final:
        return final["code"], final["error"]
    client.set_server_final(final["data"])  # raises if the server's signature is wrong
    assert c.recv()["state"] == "end"
    c.request(action="whoami")
    who = c.recv()
    assert who.get("user") == USER, who
    return None


def rest_login():
    """A REST login with scram-sha-256-plus on one kept-alive HTTPS
    connection; returns (sid, K) after checking the server's signature."""
    conn = http.client.HTTPSConnection(HOST, HTTP_PORT, context=CTX, timeout=10)
    conn.request("GET", "/")
    methods = json.loads(conn.getresponse().read())["methods"]
    assert PLUS in methods, methods
    client = scramp.ScramClient(
        ["SCRAM-SHA-256-PLUS"], USER, PASSWORD, channel_binding=("tls-server-end-point", conn.sock)
    )
    first = client.get_client_first()
    body = json.dumps({"method": PLUS, "user": USER, "data": first})
    conn.request("POST", "/session/new", body, {"content-type": "application/json"})
    r = conn.getresponse()
    answer = json.loads(r.read())
    assert r.status == 201, (r.status, answer)
    sid, server_first = answer["sid"], answer["data"]
    client.set_server_first(server_first)
    final = client.get_client_final()
    conn.request("PUT", f"/session/{sid}", json.dumps({"data": final}),
                 {"content-type": "application/json"})
    r = conn.getresponse()
    done = json.loads(r.read())
    assert r.status == 303, (r.status, done)
    client.set_server_final(done["data"])
    # K as for scram-sha-256 (docs/REST.md), from this exchange's
    # AuthMessage, whose c= carries the binding.
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", PASSWORD.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = final.split(",p=")[0]
    assert without_proof.startswith("c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws"), without_proof
    auth_message = f"{client.client_first_bare},{server_first},{without_proof}"
    key = hmac.new(client_key, b"keycard session key" + auth_message.encode(), hashlib.sha256)
    return sid, key.digest()


def main():
    assert PLUS in Conn().greeting["auth"], "the greeting offers -plus over TLS"
    step("the greeting offers scram-sha-256-plus")

    bound = lambda sock: ("tls-server-end-point", sock)  # noqa: E731
    assert msgpack_login(["SCRAM-SHA-256-PLUS"], PASSWORD, bound) is None
    step("scramp logs in with SCRAM-SHA-256-PLUS (tls-server-end-point) over msgpack")

    code, _ = msgpack_login(["SCRAM-SHA-256-PLUS"], "not the password", bound)
    assert code == "auth_failed", code
    step("a wrong password fails as any login does")

    code, text = msgpack_login(
        ["SCRAM-SHA-256-PLUS"], PASSWORD, lambda sock: another_certificates_binding()
    )
    assert code == "bad_request" and "does not match" in text, (code, text)
    step("binding data for another certificate is refused")

    # scramp with binding data but shown only SCRAM-SHA-256 sends y,,.
    code, text = msgpack_login(["SCRAM-SHA-256"], PASSWORD, bound)
    assert code is not None and "removed" in text, (code, text)
    step("y,, to a server offering -plus is refused (a downgrade)")

    sid, key = rest_login()
    kc = keycard_rest.Keycard(f"https://{HOST}:{HTTP_PORT}", CAFILE)
    kc.sid, kc.key = sid, key
    status, _, body = kc.request("GET", f"/session/{sid}")
    assert status == 200 and json.loads(body)["user"] == USER, (status, body)
    step("scramp logs in with SCRAM-SHA-256-PLUS over REST; its session key signs")
    print("ALL OK", flush=True)


main()
