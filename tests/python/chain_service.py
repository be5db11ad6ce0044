"""One service of an HTTP call chain (A -> B -> C), on a chosen server and client library.

Usage:
    python chain_service.py --server SERVER --port PORT
        [--downstream URL --client CLIENT [--async-mode MODE]]
        [--certfile PEM --keyfile PEM] [--cafile PEM]

GET /chain/<id>[?query]:
- with --downstream: makes exactly one call, GET URL/chain/<id>[?query] (the same query), and
  answers with the downstream status and body;
- without: answers 200 "chain <id> ends at port <PORT>\n" (the leaf).
Anything else is a 404.

Servers: http.server (ThreadingHTTPServer), werkzeug (Flask on Werkzeug's threaded server),
gunicorn-sync and gunicorn-gthread (the same Flask app, 2 workers; gthread with 4 threads each),
uvicorn (FastAPI, asyncio loop, h11) and aiohttp. Thread servers call downstream with a sync
CLIENT, asyncio servers with an async one, except with --async-mode to_thread, which runs a sync
CLIENT in asyncio's default thread pool. The other async modes wrap the call in
asyncio.create_task or asyncio.gather.

--certfile/--keyfile serve HTTPS; --cafile is the CA the client trusts for an https downstream.

Readiness (stdout): "READY pid=<pid> port=<port>" once the socket listens; gunicorn's master
prints it when it has bound, and each worker prints "WORKER pid=<pid>" once it can serve.
"""

import argparse
import asyncio
import functools
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import clients

SERVERS = ("http.server", "werkzeug", "gunicorn-sync", "gunicorn-gthread", "uvicorn", "aiohttp")
ASYNC_SERVERS = ("uvicorn", "aiohttp")
ASYNC_MODES = ("direct", "create_task", "gather", "to_thread")
GUNICORN_WORKERS = 2
GUNICORN_THREADS = 4
CLIENT_TIMEOUT = 30.0


def announce(text):
    # One write per line: gunicorn workers share the master's stdout, and print() may split a
    # line into two writes that interleave with another worker's.
    os.write(sys.stdout.fileno(), (text + "\n").encode())


def split_chain_path(path):
    """'/chain/<id>' -> '<id>', anything else -> None."""
    prefix = "/chain/"
    if path.startswith(prefix) and len(path) > len(prefix) and "/" not in path[len(prefix):]:
        return path[len(prefix):]
    return None


class Chain:
    """What a service does with /chain/<id>: the downstream URL, or the leaf answer."""

    def __init__(self, args):
        self.port = args.port
        self.downstream = args.downstream.rstrip("/") if args.downstream else None
        self.mode = args.async_mode
        self.sync = None
        self.async_ = None
        if self.downstream:
            run_sync = args.server not in ASYNC_SERVERS or self.mode == "to_thread"
            if run_sync:
                self.sync = clients.sync_client(args.client, args.cafile, CLIENT_TIMEOUT)
            else:
                self.async_ = clients.async_client(args.client, args.cafile, CLIENT_TIMEOUT)

    def url(self, chain_id, query):
        return "%s/chain/%s%s" % (self.downstream, chain_id, "?" + query if query else "")

    def leaf(self, chain_id):
        return 200, ("chain %s ends at port %d\n" % (chain_id, self.port)).encode()

    def call(self, chain_id, query):
        """For thread servers."""
        if not self.downstream:
            return self.leaf(chain_id)
        return self.sync.get(self.url(chain_id, query))

    async def call_async(self, chain_id, query):
        """For asyncio servers, in the chosen --async-mode."""
        if not self.downstream:
            return self.leaf(chain_id)
        url = self.url(chain_id, query)
        if self.mode == "direct":
            return await self.async_.get(url)
        if self.mode == "create_task":
            task = asyncio.create_task(self.async_.get(url))
            return await task
        if self.mode == "gather":
            result, _ = await asyncio.gather(self.async_.get(url), asyncio.sleep(0))
            return result
        if hasattr(asyncio, "to_thread"):
            return await asyncio.to_thread(self.sync.get, url)
        loop = asyncio.get_running_loop()  # Python 3.8: no asyncio.to_thread
        return await loop.run_in_executor(None, functools.partial(self.sync.get, url))


def server_ssl_context(args):
    if not args.certfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.certfile, args.keyfile)
    return context


# --- thread servers -------------------------------------------------------------------------


def flask_app(chain):
    from flask import Flask, Response, request

    app = Flask("chain_service")

    @app.route("/chain/<chain_id>")
    def chain_route(chain_id):
        status, body = chain.call(chain_id, request.query_string.decode())
        return Response(body, status=status, mimetype="text/plain")

    return app


def serve_http_server(args, chain):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format, *args):
            pass

        def do_GET(self):
            path, _, query = self.path.partition("?")
            chain_id = split_chain_path(path)
            status, body = chain.call(chain_id, query) if chain_id else (404, b"not found\n")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    context = server_ssl_context(args)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    announce("READY pid=%d port=%d" % (os.getpid(), args.port))
    server.serve_forever()


def serve_werkzeug(args, chain):
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no request log
    server = make_server("127.0.0.1", args.port, flask_app(chain), threaded=True, ssl_context=server_ssl_context(args))
    announce("READY pid=%d port=%d" % (os.getpid(), args.port))
    server.serve_forever()


def serve_gunicorn(args, chain):
    from gunicorn.app.base import BaseApplication

    def when_ready(arbiter):
        announce("READY pid=%d port=%d" % (os.getpid(), args.port))

    def post_worker_init(worker):
        announce("WORKER pid=%d" % os.getpid())

    options = {
        "bind": "127.0.0.1:%d" % args.port,
        "workers": GUNICORN_WORKERS,
        "worker_class": "gthread" if args.server == "gunicorn-gthread" else "sync",
        "threads": GUNICORN_THREADS if args.server == "gunicorn-gthread" else 1,
        "timeout": 60,
        "graceful_timeout": 1,
        "loglevel": "warning",
        "when_ready": when_ready,
        "post_worker_init": post_worker_init,
    }
    if args.certfile:
        options.update(certfile=args.certfile, keyfile=args.keyfile)

    class Application(BaseApplication):
        def load_config(self):
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return flask_app(chain)

    Application().run()


# --- asyncio servers ------------------------------------------------------------------------


def listening_socket(port):
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def serve_uvicorn(args, chain):
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    app = FastAPI()

    @app.get("/chain/{chain_id}")
    async def chain_route(chain_id: str, request: Request):
        status, body = await chain.call_async(chain_id, request.url.query)
        return Response(body, status_code=status, media_type="text/plain")

    config = uvicorn.Config(
        app,
        loop="asyncio",
        http="h11",
        lifespan="off",
        log_level="warning",
        access_log=False,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
    )
    sock = listening_socket(args.port)
    announce("READY pid=%d port=%d" % (os.getpid(), args.port))
    uvicorn.Server(config).run(sockets=[sock])


def serve_aiohttp(args, chain):
    from aiohttp import web

    async def chain_route(request):
        status, body = await chain.call_async(request.match_info["chain_id"], request.query_string)
        return web.Response(body=body, status=status, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/chain/{chain_id}", chain_route)
    sock = listening_socket(args.port)
    announce("READY pid=%d port=%d" % (os.getpid(), args.port))
    web.run_app(app, sock=sock, ssl_context=server_ssl_context(args), print=None, access_log=None)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=SERVERS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--downstream", help="base URL of the next service, e.g. http://127.0.0.1:8001")
    parser.add_argument("--client", choices=clients.SYNC_CLIENTS + clients.ASYNC_CLIENTS)
    parser.add_argument("--async-mode", choices=ASYNC_MODES, default="direct")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--cafile")
    args = parser.parse_args()
    if args.downstream and not args.client:
        parser.error("--downstream needs --client")
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    if args.downstream:
        is_async = args.server in ASYNC_SERVERS
        wants = clients.ASYNC_CLIENTS if is_async and args.async_mode != "to_thread" else clients.SYNC_CLIENTS
        if args.client not in wants:
            parser.error("--server %s with --async-mode %s needs one of: %s" % (args.server, args.async_mode, ", ".join(wants)))
    if args.async_mode != "direct" and args.server not in ASYNC_SERVERS:
        parser.error("--async-mode applies to asyncio servers only")
    return args


def main():
    args = parse_args()
    chain = Chain(args)
    serve = {
        "http.server": serve_http_server,
        "werkzeug": serve_werkzeug,
        "gunicorn-sync": serve_gunicorn,
        "gunicorn-gthread": serve_gunicorn,
        "uvicorn": serve_uvicorn,
        "aiohttp": serve_aiohttp,
    }[args.server]
    serve(args, chain)


if __name__ == "__main__":
    sys.exit(main())
