"""A msgpack connection to keycard for the compatibility scripts: the
greeting read, seq-numbered requests, messages as dicts. The socket may be
plain or TLS (Python's `ssl`)."""
import msgpack


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.unpacker = msgpack.Unpacker(raw=False)
        self.greeting = self.recv()
        self.seq = 0

    def recv(self):
        while True:
            for msg in self.unpacker:
                return msg
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed")
            self.unpacker.feed(data)

    def send(self, **msg):
        self.sock.sendall(msgpack.packb(msg, use_bin_type=True))

    def request(self, **msg):
        self.seq += 1
        self.send(seq=self.seq, **msg)
        return self.seq
