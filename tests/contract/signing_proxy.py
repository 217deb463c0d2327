#!/usr/bin/env python3
"""A signing proxy for the REST contract run: logs in to keycard as USER
(SCRAM, with examples/python/keycard_rest.py) and forwards every request
it gets to keycard with an `Authorization: Keycard v=2, …` header computed
over the exact bytes it forwards, its If-Match and If-None-Match included
(DESIGN §4.1, docs/REST.md). A fuzzer pointed at it reaches
past the signature check into every signed route.

    signing_proxy.py http://127.0.0.1:8427 USER PASSWORD

Prints `LISTENING <port>` once it serves on 127.0.0.1.
"""

import http.client
import http.server
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
import keycard_rest  # noqa: E402

HOP = {"host", "authorization", "connection", "content-length", "transfer-encoding"}


def main():
    upstream, user, password = sys.argv[1:4]
    kc = keycard_rest.Keycard(upstream)
    kc.login(user, password)
    target = urllib.parse.urlsplit(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            # Version 2 signs the preconditions: sign what is forwarded.
            pre = {k.lower(): v for k, v in headers.items()}
            headers["Authorization"] = kc.authorization(
                self.command, self.path, body,
                pre.get("if-match", ""), pre.get("if-none-match", ""),
            )
            headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
            finally:
                conn.close()
            self.send_response_only(r.status, r.reason)
            for k, v in r.getheaders():
                if k.lower() not in HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = forward

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
