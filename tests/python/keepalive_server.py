"""HTTP/1.1 keep-alive test server (stdlib only).

Usage: python keepalive_server.py PORT

- every response carries Content-Length, so clients can reuse the connection;
- GET /status/NNN and POST /status/NNN answer with status NNN;
- any other GET answers 200 with a small body naming the path;
- any other POST reads the body and answers 200 with its length.
Each connection is served by its own thread (ThreadingHTTPServer), as in real threaded servers.
Request logging is silenced.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes; without TCP_NODELAY, Nagle's algorithm and the client's
    # delayed ACK would hold every body back ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.respond(self.status_for_path(), ("hello from %s\n" % self.path).encode())

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.respond(self.status_for_path(), ("received %d bytes\n" % len(body)).encode())

    def status_for_path(self):
        path = self.path.split("?", 1)[0]
        if path.startswith("/status/"):
            return int(path[len("/status/"):])
        return 200

    def respond(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
