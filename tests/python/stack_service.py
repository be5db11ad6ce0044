"""A service whose handler makes its one downstream call itself, for Python stack attribution.

Usage:
    python stack_service.py --server {flask,fastapi} --port PORT --downstream URL

GET /checkout/<id>: the handler, a method of Shop (Shop.checkout on Flask's threaded Werkzeug
server with requests; Shop.checkout_async on FastAPI/uvicorn with httpx.AsyncClient), calls
GET URL/checkout/<id> on the line marked "CALL-SITE <server>" and answers with the downstream
body. POST /upload/<id> (Flask only): Shop.upload reads the request body on the line marked
"CALL-SITE upload" and answers with its length. The test reads the marked lines to know which
line the spans must name.

Readiness (stdout): "READY pid=<pid> port=<port>" once the socket listens.
"""

import argparse
import os
import socket
import sys


def announce(text):
    os.write(sys.stdout.fileno(), (text + "\n").encode())


class Shop:
    def __init__(self, downstream):
        self.downstream = downstream.rstrip("/")
        self.async_client = None

    def checkout(self, order_id):
        import requests

        response = requests.get("%s/checkout/%s" % (self.downstream, order_id), timeout=30)  # CALL-SITE flask
        return response.content

    def upload(self, order_id):
        from flask import request

        body = request.get_data()  # CALL-SITE upload
        return "%s %d\n" % (order_id, len(body))

    async def checkout_async(self, order_id: str):
        from fastapi.responses import Response

        response = await self.async_client.get("%s/checkout/%s" % (self.downstream, order_id))  # CALL-SITE fastapi
        return Response(response.content, media_type="text/plain")


def serve_flask(args, shop):
    import logging

    from flask import Flask
    from werkzeug.serving import make_server

    app = Flask("stack_service")
    app.add_url_rule("/checkout/<order_id>", view_func=shop.checkout)
    app.add_url_rule("/upload/<order_id>", view_func=shop.upload, methods=["POST"])
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    announce("READY pid=%d port=%d" % (os.getpid(), args.port))
    server.serve_forever()


def serve_fastapi(args, shop):
    import httpx
    import uvicorn
    from fastapi import FastAPI

    shop.async_client = httpx.AsyncClient(timeout=30)
    app = FastAPI()
    app.add_api_route("/checkout/{order_id}", shop.checkout_async, methods=["GET"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    config = uvicorn.Config(app, loop="asyncio", http="h11", lifespan="off", log_level="warning", access_log=False)
    announce("READY pid=%d port=%d" % (os.getpid(), args.port))
    uvicorn.Server(config).run(sockets=[sock])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("flask", "fastapi"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--downstream", required=True)
    args = parser.parse_args()
    shop = Shop(args.downstream)
    {"flask": serve_flask, "fastapi": serve_fastapi}[args.server](args, shop)


if __name__ == "__main__":
    sys.exit(main())
