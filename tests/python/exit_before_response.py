"""A server that reads one request completely and then exits without responding.

Usage: python exit_before_response.py PORT

The process dies with os._exit(3) while the request is in flight: the request head (and body)
were read, no response byte was written.
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        os._exit(3)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        os._exit(3)


def main():
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()


if __name__ == "__main__":
    main()
