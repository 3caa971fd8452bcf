#!/usr/bin/env python3
"""Request loop for the system tests: echo requests over TCP, Unix and UDP until a
stop file appears (or --duration passes), every answer checked byte for byte.

A stream connection that the server closes cleanly before any byte of the answer
(a draining old process closing an idle connection at a request boundary), or a
reused Unix connection whose send fails with EPIPE (the server shut its read side
first), is reconnected and the request sent again: counted as a reconnect, not a
failure, as in tests/bench/restart. A refused or reset connection, a timeout, a short or
wrong answer, or a lost datagram is a failure. Prints one JSON line; exit 0 only
when requests were made and none failed.
"""
import argparse
import json
import os
import socket
import sys
import time

TIMEOUT = 3.0


class Stream:
    def __init__(self, name, family, address):
        self.name, self.family, self.address = name, family, address
        self.sock = None
        self.requests = self.failed = self.reconnects = 0
        self.errors = []

    def connect(self):
        s = socket.socket(self.family, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        s.connect(self.address)
        self.sock = s

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def one(self, n, fresh):
        payload = f"{self.name} {n} {os.getpid()}\n".encode()
        for attempt in range(3):
            try:
                reused = self.sock is not None
                if not reused:
                    self.connect()
                try:
                    self.sock.sendall(payload)
                except BrokenPipeError:
                    # A draining server shuts a Unix connection's read side before its
                    # FIN, so a request that would cross the FIN is refused here, nothing
                    # taken: as clean as a close seen before sending.
                    if not (reused and self.family == socket.AF_UNIX):
                        raise
                    self.close()
                    self.reconnects += 1
                    continue
                got = b""
                while len(got) < len(payload):
                    chunk = self.sock.recv(len(payload) - len(got))
                    if not chunk:
                        break
                    got += chunk
                if not got:  # clean close before any answer byte: resend on a new connection
                    self.close()
                    self.reconnects += 1
                    continue
                if got != payload:
                    raise RuntimeError(f"wrong echo {got!r} for {payload!r}")
                self.requests += 1
                if fresh:
                    self.close()
                return
            except (OSError, RuntimeError) as e:
                self.close()
                self.failed += 1
                self.errors.append(f"{self.name} #{n}: {e}")
                return
        self.failed += 1
        self.errors.append(f"{self.name} #{n}: closed 3 times without an answer")


class Datagram:
    def __init__(self, name, address):
        self.name, self.address = name, address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(TIMEOUT)
        self.requests = self.failed = self.reconnects = 0
        self.errors = []

    def one(self, n, fresh):
        payload = f"{self.name} {n} {os.getpid()}".encode()
        try:
            self.sock.sendto(payload, self.address)
            while True:
                got, _ = self.sock.recvfrom(65536)
                if got == payload:
                    self.requests += 1
                    return
                # a late answer to an earlier datagram is not this one's: keep waiting
        except OSError as e:
            self.failed += 1
            self.errors.append(f"{self.name} #{n}: {e}")

    def close(self):
        self.sock.close()


def hostport(text):
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", action="append", default=[], help="HOST:PORT, persistent connection")
    ap.add_argument("--tcp-churn", action="append", default=[], help="HOST:PORT, a connection per request")
    ap.add_argument("--unix", action="append", default=[], help="socket path")
    ap.add_argument("--udp", action="append", default=[], help="HOST:PORT")
    ap.add_argument("--stop-file", help="stop when this file exists")
    ap.add_argument("--duration", type=float, default=0, help="stop after this many seconds")
    ap.add_argument("--interval", type=float, default=0.002, help="pause between rounds")
    ap.add_argument("--ready-file", help="touched after the first round succeeded")
    args = ap.parse_args()

    clients = []
    for a in args.tcp:
        clients.append((Stream("tcp", socket.AF_INET, hostport(a)), False))
    for a in args.tcp_churn:
        clients.append((Stream("tcp-churn", socket.AF_INET, hostport(a)), True))
    for a in args.unix:
        clients.append((Stream("unix", socket.AF_UNIX, a), False))
    for a in args.udp:
        clients.append((Datagram("udp", hostport(a)), False))
    if not clients:
        ap.error("no target")

    start = time.monotonic()
    n = 0
    while True:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        if args.duration and time.monotonic() - start >= args.duration:
            break
        n += 1
        for c, fresh in clients:
            c.one(n, fresh)
        if n == 1 and args.ready_file:
            open(args.ready_file, "w").close()
        time.sleep(args.interval)
    for c, _ in clients:
        c.close()

    result = {
        "requests": sum(c.requests for c, _ in clients),
        "failed": sum(c.failed for c, _ in clients),
        "reconnects": sum(c.reconnects for c, _ in clients),
        "by_kind": {c.name: {"requests": c.requests, "failed": c.failed, "reconnects": c.reconnects}
                    for c, _ in clients},
        "seconds": round(time.monotonic() - start, 1),
        "errors": [e for c, _ in clients for e in c.errors][:10],
    }
    print(json.dumps(result), flush=True)
    return 0 if result["requests"] > 0 and result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
