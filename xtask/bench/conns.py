#!/usr/bin/env python3
"""Idle TCP connections for `cargo xtask bench`.

Holds many established connections open so the tracer's memory can be
measured while it tracks them.

  conns.py listen ADDR PORTS          listen on ADDR:PORT for each PORT (comma-separated),
                                      never accept (the kernel completes the handshakes and
                                      queues the sockets; no file descriptor per connection),
                                      print "listening", hold until stdin closes
  conns.py connect ADDR PORTS COUNT   open COUNT connections spread over PORTS, from several
                                      processes (each is capped by RLIMIT_NOFILE's hard limit,
                                      which only CAP_SYS_RESOURCE could raise), print
                                      "open N failed M", hold until stdin closes

Everything is bounded: the connect phase gives up after CONNECT_SECS or after
MAX_FAILURES failures, and nothing is held longer than HOLD_SECS.
"""

import os
import resource
import select
import socket
import sys
import time

CONNECT_SECS = 90
HOLD_SECS = 180
MAX_FAILURES = 200
# File descriptors each process keeps for itself (stdio, pipes, the interpreter).
RESERVED_FDS = 64


def hold():
    """Returns when stdin closes or HOLD_SECS pass, whichever is first."""
    deadline = time.monotonic() + HOLD_SECS
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready and not sys.stdin.buffer.read1(4096):
            return


def listen(addr, ports):
    socks = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        # Clamped by net.core.somaxconn, which the bench raises in this netns.
        s.listen(1 << 20)
        socks.append(s)
    print("listening", flush=True)
    hold()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_some(addr, ports, first, count, deadline):
    """Opens `count` connections; returns them and the number of failures."""
    conns = []
    failures = 0
    i = first
    while len(conns) < count and failures < MAX_FAILURES and time.monotonic() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((addr, ports[i % len(ports)]))
            conns.append(s)
        except OSError:
            s.close()
            failures += 1
        i += 1
    return conns, failures


def connect(addr, ports, total):
    per_proc = max(1, raise_nofile() - RESERVED_FDS)
    deadline = time.monotonic() + CONNECT_SECS
    hold_r, hold_w = os.pipe()
    result_r, result_w = os.pipe()
    children = []
    first = 0
    while first < total:
        count = min(per_proc, total - first)
        pid = os.fork()
        if pid == 0:
            os.close(hold_w)
            os.close(result_r)
            conns, failures = open_some(addr, ports, first, count, deadline)
            os.write(result_w, f"{len(conns)} {failures}\n".encode())
            # Block until the parent closes its end (or dies), then exit,
            # which closes every connection.
            os.read(hold_r, 1)
            os._exit(0)
        children.append(pid)
        first += count
    os.close(hold_r)
    os.close(result_w)

    opened = failed = 0
    with os.fdopen(result_r, "rb") as results:
        for _ in children:
            line = results.readline()
            if not line:
                break
            fields = line.split()
            opened += int(fields[0])
            failed += int(fields[1])
    print(f"open {opened} failed {failed} processes {len(children)} per_process {per_proc}", flush=True)
    hold()
    os.close(hold_w)
    for pid in children:
        os.waitpid(pid, 0)


def main():
    mode = sys.argv[1]
    addr = sys.argv[2]
    ports = [int(p) for p in sys.argv[3].split(",")]
    if mode == "listen":
        listen(addr, ports)
    elif mode == "connect":
        connect(addr, ports, int(sys.argv[4]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
