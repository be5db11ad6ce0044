"""A raw TCP server that answers every HTTP/1.1 request with the exact bytes it received.

Usage: python echo_server.py PORT

Plain sockets, one thread per connection. Each request is read as its head (up to and including
the blank line) plus a Content-Length body, and answered 200 with those raw bytes as the body, so
a client sees byte for byte what arrived on the wire. Several requests per connection (keep-alive
and pipelining) are answered in order until the client closes.

Prints "READY pid=<pid> port=<port>" once listening.
"""

import os
import socket
import sys
import threading

MAX_HEAD = 64 * 1024


def content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def serve_connection(conn):
    buffer = b""
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            while b"\r\n\r\n" not in buffer:
                if len(buffer) > MAX_HEAD:
                    return
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            head_end = buffer.index(b"\r\n\r\n") + 4
            total = head_end + content_length(buffer[:head_end])
            while len(buffer) < total:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            raw, buffer = buffer[:total], buffer[total:]
            reply = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(raw)
            )
            conn.sendall(reply + raw)


def main():
    port = int(sys.argv[1])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    print("READY pid=%d port=%d" % (os.getpid(), port), flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
