"""Every way a Python program sends and receives on a socket, over TCP (v4, v6) and unix
stream sockets: each request is written by one way (send, sendall, os.write, sendmsg,
os.writev, sendfile) and read by one way (recv, recv_into, os.read, recvmsg, os.readv,
recvfrom, a buffered file), so that each way is used at least once per family. Each request
is a POST with a small body; the vectored writes send the head and the body as two buffers,
as asyncio's `writelines` does.

One process plays both ends: a server thread per family answers each connection's request
with `200 ok` and closes; the client makes one request per connection. Prints `READY pid=N`,
waits for a line on stdin (the test's go, once the agent tracks it), then one line per request
`REQUEST <family> <write way> <read way> <path>`, then `DONE`.
"""

import os
import socket
import sys
import tempfile
import threading

WRITE_WAYS = ["send", "sendall", "write", "sendmsg", "writev", "sendfile"]
READ_WAYS = ["recv", "recv_into", "read", "recvmsg", "readv", "recvfrom", "makefile"]
BODY = b"x=1"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def read_request(conn, way):
    """Reads the request (head and body), the way `way` says."""
    data = b""
    if way == "makefile":
        reader = conn.makefile("rb")
        while not data.endswith(b"\r\n\r\n"):
            line = reader.readline()
            if not line:
                break
            data += line
        data += reader.read(len(BODY))
        reader.close()
        return data
    while not complete(data):
        if way == "recv":
            chunk = conn.recv(4096)
        elif way == "recv_into":
            buffer = bytearray(4096)
            count = conn.recv_into(buffer)
            chunk = bytes(buffer[:count])
        elif way == "read":
            chunk = os.read(conn.fileno(), 4096)
        elif way == "recvmsg":
            chunk = conn.recvmsg(4096)[0]
        elif way == "readv":
            first, second = bytearray(4096), bytearray(4096)
            count = os.readv(conn.fileno(), [first, second])
            chunk = bytes((first + second)[:count])
        elif way == "recvfrom":
            chunk = conn.recvfrom(4096)[0]
        else:
            raise ValueError(way)
        if not chunk:
            break
        data += chunk
    return data


def complete(data):
    return b"\r\n\r\n" in data and data.endswith(BODY)


def serve(listener, ways):
    """Answers connections in order; connection k is read with ways[k]."""
    for way in ways:
        conn, _ = listener.accept()
        with conn:
            read_request(conn, way)
            conn.sendall(RESPONSE)


def send_request(sock, way, request):
    end = request.index(b"\r\n\r\n") + 4
    head, body = request[:end], request[end:]
    if way == "send":
        sent = 0
        while sent < len(request):
            sent += sock.send(request[sent:])
    elif way == "sendall":
        sock.sendall(request)
    elif way == "write":
        view = memoryview(request)
        while view:
            view = view[os.write(sock.fileno(), view):]
    elif way == "sendmsg":
        assert sock.sendmsg([head, body]) == len(request)
    elif way == "writev":
        assert os.writev(sock.fileno(), [head, body]) == len(request)
    elif way == "sendfile":
        with tempfile.TemporaryFile() as file:
            file.write(request)
            file.seek(0)
            assert sock.sendfile(file) == len(request)
    else:
        raise ValueError(way)


def call(family, address, write_way, read_way, tag):
    path = f"/io/{tag}/{family}/{write_way}/{read_way}"
    head = f"POST {path} HTTP/1.1\r\nHost: io-ways\r\nUser-Agent: io-ways/1\r\nContent-Length: {len(BODY)}\r\n\r\n"
    request = head.encode() + BODY
    kind = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}[family]
    with socket.socket(kind, socket.SOCK_STREAM) as sock:
        if kind != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(address)
        send_request(sock, write_way, request)
        response = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response
    print(f"REQUEST {family} {write_way} {read_way} {path}", flush=True)


def listener_for(family, directory):
    if family == "unix":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = os.path.join(directory, "io_ways.sock")
        listener.bind(path)
        listener.listen(16)
        return listener, path
    kind, host = (socket.AF_INET, "127.0.0.1") if family == "inet" else (socket.AF_INET6, "::1")
    listener = socket.socket(kind, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(16)
    return listener, listener.getsockname()[:2]


def main():
    tag = sys.argv[1] if len(sys.argv) > 1 else "run"
    families = sys.argv[2].split(",") if len(sys.argv) > 2 else ["inet", "inet6", "unix"]
    print(f"READY pid={os.getpid()}", flush=True)
    sys.stdin.readline()
    count = max(len(WRITE_WAYS), len(READ_WAYS))
    pairs = [(WRITE_WAYS[k % len(WRITE_WAYS)], READ_WAYS[k % len(READ_WAYS)]) for k in range(count)]
    with tempfile.TemporaryDirectory() as directory:
        for family in families:
            listener, address = listener_for(family, directory)
            server = threading.Thread(target=serve, args=(listener, [read for _, read in pairs]), daemon=True)
            server.start()
            for write_way, read_way in pairs:
                call(family, address, write_way, read_way, tag)
            server.join(10)
            listener.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
