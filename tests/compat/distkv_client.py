#!/usr/bin/env python3
"""DistKV's own Python client (distkv 0.65, unchanged) against a keycard server.

Usage: python distkv_client.py HOST PORT [all|password]
Run on a fresh, empty keycard server: the script creates users and
switches auth on (each mode needs its own fresh server). Exits non-zero with a traceback on the first failure.
Every check is an assert on what the real client library returned.
"""
import sys
import warnings

warnings.simplefilter("ignore")

import anyio  # noqa: E402
from distkv.auth import loader  # noqa: E402
from distkv.client import open_client  # noqa: E402
from distkv.exceptions import ClientAuthRequiredError  # noqa: E402
from moat.util import P, Path  # noqa: E402

HOST = sys.argv[1]
PORT = int(sys.argv[2])


def conn(**kw):
    return open_client(connect=dict(host=HOST, port=PORT, init_timeout=10, **kw))


def step(msg):
    print("ok:", msg, flush=True)


async def data_actions():
    # open_client only returns once its config watch saw `uptodate`.
    async with conn() as c:
        step("connect: greeting, qlen answer, config watch up to date")
        r = await c.set(P("compat.a"), value=1)
        assert r.changed is True, r
        assert (await c.get(P("compat.a"))).value == 1
        r = await c.set(P("compat.a"), value=2)
        assert r.prev == 1, r
        missing = await c.get(P("compat.nothing"))
        assert "value" not in missing, missing
        step("set/get, prev on overwrite, missing node has no value")

        # Conditional writes: prev must match; chain=None means must be new.
        await c.set(P("compat.a"), value=3, prev=2)
        try:
            await c.set(P("compat.a"), value=4, prev=99)
            raise AssertionError("a wrong prev was accepted")
        except Exception as e:  # ServerError in the client
            assert "condition" in str(e), e
        try:
            await c.set(P("compat.a"), value=5, chain=None)
            raise AssertionError("chain=None on an existing node was accepted")
        except Exception as e:
            assert "exists" in str(e), e
        assert (await c.get(P("compat.a"))).value == 3
        step("conditional writes")

        # Mixed element types and nesting; the library decompresses paths.
        await c.set(P("compat.t"), value="T")
        await c.set(P("compat.t.a.b.c"), value=2)
        await c.set(P("compat.t.a.b.d"), value=3)
        await c.set(P("compat.t.a.e"), value=4)
        await c.set(Path("compat", "t", 7, True), value="int-path")
        await c.set(Path("compat", "t", "by", b"\x00\xff"), value=b"\x01\x02")
        got = {}
        async for r in c.get_tree(P("compat.t")):
            got[tuple(r.path)] = r.value
        want = {
            (): "T",
            ("a", "b", "c"): 2,
            ("a", "b", "d"): 3,
            ("a", "e"): 4,
            (7, True): "int-path",
            ("by", b"\x00\xff"): b"\x01\x02",
        }
        assert got == want, got
        depth1 = [tuple(r.path) async for r in c.get_tree(P("compat.t"), min_depth=1, max_depth=1)]
        assert depth1 == [], depth1  # no child of t holds a value directly
        depth3 = sorted([tuple(r.path) async for r in c.get_tree(P("compat.t"), min_depth=3)])
        assert depth3 == [("a", "b", "c"), ("a", "b", "d")], depth3
        step("get_tree: all element types, depth compression, min/max depth")

        names = await c.list(P("compat.t"))
        assert set(names) == {"a", 7, "by"}, names
        step("enum")

        r = await c.delete(P("compat.a"))
        assert r.changed is True and r.prev == 3, r
        r = await c.delete(P("compat.a"))
        assert r.changed is False, r
        step("delete_value")

        # watch: current state, uptodate, then live changes and a deletion.
        await c.set(P("compat.w.old"), value=0)
        seen = []
        async with c.watch(P("compat.w"), fetch=True) as w:
            async for r in w:
                if r.get("state") == "uptodate":
                    seen.append("uptodate")
                    for i in range(12):
                        await c.set(P("compat.w.k%d" % i), value=i)
                    await c.delete(P("compat.w.old"))
                    continue
                seen.append((tuple(r.path[2:]), r.get("value", "DELETED")))
                if len(seen) >= 15:
                    break
        assert seen[0] == (("old",), 0), seen
        assert seen[1] == "uptodate", seen
        assert seen[2:14] == [(("k%d" % i,), i) for i in range(12)], seen
        assert seen[14] == (("old",), "DELETED"), seen
        step("watch: fetch, uptodate, 12 live changes (acked past qlen), deletion")


async def auth_actions():
    async with conn() as c:
        # As `distkv client auth -m root user add` does it.
        u = loader("root", "user", make=True, server=False).build({}, _initial=False)
        u._chain = None
        await u.send(c)
        # The _test method's streamed record dialogue (GiveName / HasName).
        t = loader("_test", "user", make=True, server=False).build({"name": "joe"}, _initial=False)
        t._chain = None
        await t.send(c)
        async with c._stream(action="auth_list", typ="_test", kind="user", nchain=0) as res:
            users = [dict(r)["ident"] async for r in res]
        assert users == ["joe"], users
        await c._request(action="set_auth_typ", typ="root")
        step("root and _test users created, root made current")

    try:
        async with conn() as c:
            raise AssertionError("connected without logging in")
    except ClientAuthRequiredError:
        pass
    step("a client without credentials is refused")

    async with conn(auth="root") as c:
        await c.set(P("compat.after"), value="root-login")
        assert (await c.get(P("compat.after"))).value == "root-login"
        await c._request(action="set_auth_typ", typ="_test")
        step("login with root; set_auth_typ _test")

    async with conn(auth="_test name=joe") as c:
        assert (await c.get(P("compat.after"))).value == "root-login"
        step("login with _test")



async def password_actions():
    """On a fresh server: DistKV's password method, whose client agrees a
    key with its own finite-field Diffie-Hellman and sends SHA-256(password)
    sealed in a secretbox, for creating the user and for logging in."""
    async with conn() as c:
        u = loader("password", "user", make=True, server=False).build(
            {"name": "pat", "password": "correct-horse"}, _initial=False
        )
        u._chain = None
        await u.send(c)
        await c._request(action="set_auth_typ", typ="password")
        step("password user created through DistKV's DH; password made current")

    async with conn(auth="password name=pat password=correct-horse") as c:
        await c.set(P("compat.pw"), value="password-login")
        assert (await c.get(P("compat.pw"))).value == "password-login"
        step("login with password")
    try:
        async with conn(auth="password name=pat password=wrong-horse") as c:
            raise AssertionError("a wrong password logged in")
    except AssertionError:
        raise
    except Exception as e:  # the library raises the server's error
        assert "login failed" in repr(e), repr(e)
    try:
        async with conn(auth="password name=nobody password=correct-horse") as c:
            raise AssertionError("an unknown user logged in")
    except AssertionError:
        raise
    except Exception as e:
        assert "login failed" in repr(e), repr(e)
    step("wrong password and unknown user refused")


async def main():
    mode = sys.argv[3] if len(sys.argv) > 3 else "all"
    if mode == "password":
        await password_actions()
    else:
        await data_actions()
        await auth_actions()
    print("ALL OK", flush=True)


anyio.run(main, backend="trio")
