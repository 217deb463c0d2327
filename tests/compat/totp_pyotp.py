#!/usr/bin/env python3
"""A third-party TOTP implementation (PyPI `pyotp`) against keycard's.

Usage: python totp_pyotp.py URI T:CODE...
URI is the provisioning URI keycard's `totp` method answered an enrolment
with; each T:CODE is the code keycard's method computes for Unix time T.
Checks that pyotp reads the URI as keycard wrote it, that pyotp's code for
each T is keycard's, and that pyotp verifies it; then prints, for each T,
`T:CODE` with pyotp's code for T + 17 (for keycard to accept), and ALL OK.
"""
import sys

import pyotp

uri = sys.argv[1]
totp = pyotp.parse_uri(uri)
assert isinstance(totp, pyotp.TOTP), type(totp)
assert totp.issuer == "keycard", totp.issuer
assert totp.interval == 30, totp.interval
assert totp.digits in (6, 8), totp.digits
for pair in sys.argv[2:]:
    t, code = pair.split(":")
    t = int(t)
    theirs = totp.at(t)
    assert theirs == code, f"at {t}: pyotp {theirs}, keycard {code}"
    assert totp.verify(code, for_time=t), f"pyotp refuses keycard's code at {t}"
    print(f"{t + 17}:{totp.at(t + 17)}")
print(f"name={totp.name} digits={totp.digits}")
print("ALL OK")
