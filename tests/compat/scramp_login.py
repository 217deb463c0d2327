#!/usr/bin/env python3
"""A third-party SCRAM implementation (PyPI `scramp`) against keycard.

Usage: python scramp_login.py HOST PORT
On a fresh, open keycard server: creates user `pat` with a verifier that
scramp computed (PostgreSQL's text form), makes scram-sha-256 current, then
logs in with scramp's client: right password, wrong password, unknown user.
Only msgpack framing is hand-written here; every SCRAM string is scramp's.
"""
import base64
import socket
import sys

import scramp

from kc_msgpack import Conn as Msgpack

HOST, PORT = sys.argv[1], int(sys.argv[2])
PASSWORD = "pässwörd with spaces"


def Conn():
    return Msgpack(socket.create_connection((HOST, PORT), timeout=10))


def step(msg):
    print("ok:", msg, flush=True)


def login(user, password):
    """Returns None on success, else the server's error code."""
    c = Conn()
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    seq = c.request(action="auth", typ="scram-sha-256", ident=user, data=client.get_client_first())
    start = c.recv()
    if "error" in start:
        return start.get("code")
    assert start["state"] == "start", start
    server_first = c.recv()
    if "error" in server_first:
        return server_first.get("code")
    client.set_server_first(server_first["data"])
    c.send(seq=seq, data=client.get_client_final())
    final = c.recv()
    if "error" in final:
        return final.get("code")
    client.set_server_final(final["data"])  # raises if the server's signature is wrong
    end = c.recv()
    assert end["state"] == "end", end
    # Logged in: a data request works.
    c.request(action="get_value", path=["x"])
    reply = c.recv()
    assert "error" not in reply, reply
    return None


def main():
    c = Conn()
    assert "auth" not in c.greeting
    mech = scramp.ScramMechanism("SCRAM-SHA-256")
    salt, stored_key, server_key, iterations = mech.make_auth_info(PASSWORD, iteration_count=4096)
    b64 = lambda b: base64.b64encode(b).decode()
    verifier = f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
    c.request(action="auth_set", typ="scram-sha-256", kind="user", ident="pat", data={"verifier": verifier})
    r = c.recv()
    assert "error" not in r, r
    c.request(action="set_auth_typ", typ="scram-sha-256")
    r = c.recv()
    assert "error" not in r, r
    step("user created from scramp's verifier; scram-sha-256 current")

    assert login("pat", PASSWORD) is None
    step("scramp's client logs in")
    wrong = login("pat", "not the password")
    unknown = login("nobody", PASSWORD)
    assert wrong == unknown == "auth_failed", (wrong, unknown)
    step("wrong password and unknown user: same error")
    print("ALL OK", flush=True)


main()
