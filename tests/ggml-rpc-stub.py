#!/usr/bin/env python3
"""A stand-in for ggml-rpc-server that speaks another RPC protocol (99.0.0), for the ggml
device's version check (tests/gpu_ggml.rs). It takes the server's `-H HOST -p PORT`, announces
itself as the server does, and answers ggml's HELLO (command 14) the way ggml 0.27's server
does, a 28-byte reply whose first three bytes are the major, minor and patch version; then it
closes the connection (a client of another major version gives up there)."""
import socket
import struct
import sys

HELLO = 14
REPLY_SIZE = 28


def exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


args = sys.argv[1:]
host, port = args[args.index("-H") + 1], int(args[args.index("-p") + 1])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, port))
server.listen()
print("Starting RPC server v99.0.0", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        try:
            head = exactly(conn, 9)
            exactly(conn, struct.unpack("<Q", head[1:])[0])
            if head[0] == HELLO:
                conn.sendall(struct.pack("<Q", REPLY_SIZE) + bytes([99, 0, 0]) + bytes(REPLY_SIZE - 3))
        except ConnectionError:
            pass
