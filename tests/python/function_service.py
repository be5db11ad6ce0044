"""A service whose own functions are traced as spans (the agent's `--function` selection).

Run it as an imported module, so that its functions belong to the module `function_service`
(running the file or `-m` would make it `__main__`):

    python -c 'import sys; sys.path.insert(0, sys.argv[1]); import function_service; \
               function_service.main(sys.argv[2:])' DIR --port PORT --async-port ASYNC_PORT

One process, two servers:

* Flask on Werkzeug's threaded server, on PORT (a thread): the sync routes.
    GET /place/<order_id>      Orders().place(order_id, 3), which calls
                               compute_total(order_id, 3, note=None) and unselected()
    GET /fib/<n>/<tag>         fib(n), recursive
    GET /reserve/<order_id>    reserve(order_id) raises OutOfStock: answers 409
    GET /quantity/<text>       parse_quantity(text): 200, or 400 when int() raises ValueError
    GET /describe/<tag>        describe_item(7, 2.5, True, None, {...}, <100-char label>)
    GET /levels/<tag>          list(stock_levels(3)): a generator, 10 ms per item
    GET /warm                  calls every function thousands of times (no sleeps), so that
                               3.11+ specialises the bytecode that calls them
    GET /eval_frame            {"eval_frame": interp->eval_frame as an integer (3.11+) or "n/a",
                                "recursion_limit": sys.getrecursionlimit()}
    GET /deep/<n>              descend(n): n nested calls of a plain recursive function
* FastAPI under uvicorn (asyncio, h11), on ASYNC_PORT (the main thread): the async routes.
    GET /inventory/<item>      await fetch_inventory(item): two 30 ms asyncio sleeps
    GET /restock/<tag>         async for over Warehouse().restock(3): an async generator

The line each traced function's spans must name (its code object's co_firstlineno: the first
decorator's line for a decorated function) is marked "SPAN-LINE <qualname>"; the program checks
at startup that the markers agree with the interpreter, and the test reads them.

Readiness (stdout): "READY pid=<pid> port=<port> async_port=<port>" once both sockets listen
(the asyncio one listens first, so PORT accepting connections means both do).
"""

import argparse
import asyncio
import ctypes
import json
import os
import socket
import sys
import threading
import time

# interp->eval_frame in PyInterpreterState, by (major, minor).
EVAL_FRAME_OFFSETS = {(3, 11): 1424, (3, 12): 1744, (3, 13): 8472}
LABEL_TAIL = "abcdefghij" * 10

_warming = threading.local()
_registry = []


def announce(text):
    os.write(sys.stdout.fileno(), (text + "\n").encode())


def delay(seconds):
    """`seconds`, or 0 while /warm runs on this thread."""
    return 0 if getattr(_warming, "active", False) else seconds


def pause(seconds):
    """time.sleep(seconds), skipped while /warm runs on this thread."""
    if not getattr(_warming, "active", False):
        time.sleep(seconds)


def register(function):
    """A decorator that returns the function itself (its code starts on the decorator's line)."""
    _registry.append(function.__name__)
    return function


class OutOfStock(Exception):
    pass


def compute_total(order_id, quantity, note=None):  # SPAN-LINE compute_total
    pause(0.02)
    return quantity * 10 + len(str(order_id)) + (0 if note is None else 1)


def unselected():
    return 1


class Orders:
    def place(self, order_id, quantity):  # SPAN-LINE Orders.place
        total = compute_total(order_id, quantity, note=None)
        pause(0.03)
        return total + unselected()


def fib(n):  # SPAN-LINE fib
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def reserve(order_id):  # SPAN-LINE reserve
    raise OutOfStock("order %s: out of stock" % order_id)


def parse_quantity(text):  # SPAN-LINE parse_quantity
    return int(text)


@register  # SPAN-LINE describe_item
def describe_item(sku, price, express, coupon, options, label):
    return "%s %s %s %s %d %d" % (sku, price, express, coupon, len(options), len(label))


def stock_levels(count):  # SPAN-LINE stock_levels
    for level in range(count):
        pause(0.01)
        yield level


async def fetch_inventory(item):  # SPAN-LINE fetch_inventory
    await asyncio.sleep(delay(0.03))
    await asyncio.sleep(delay(0.03))
    return "%s: 42" % item


class Warehouse:
    async def restock(self, count):  # SPAN-LINE Warehouse.restock
        for level in range(count):
            await asyncio.sleep(delay(0.01))
            yield level


def descend(n):
    return 0 if n == 0 else 1 + descend(n - 1)


TRACED = {
    "compute_total": compute_total,
    "Orders.place": Orders.place,
    "fib": fib,
    "reserve": reserve,
    "parse_quantity": parse_quantity,
    "describe_item": describe_item,
    "stock_levels": stock_levels,
    "fetch_inventory": fetch_inventory,
    "Warehouse.restock": Warehouse.restock,
}


def check_markers():
    """Every SPAN-LINE marker names its function's co_firstlineno (else the test would lie)."""
    with open(__file__) as source:
        lines = source.read().splitlines()
    for qualname, function in TRACED.items():
        code = function.__code__
        marker = "# SPAN-LINE " + qualname
        marked = [n + 1 for n, line in enumerate(lines) if line.endswith(marker)]
        if marked != [code.co_firstlineno] or function.__qualname__ != qualname:
            raise SystemExit(
                "marker mismatch for %s: marked %r, co_firstlineno %d, __qualname__ %s"
                % (qualname, marked, code.co_firstlineno, function.__qualname__)
            )
    if __name__ != "function_service":
        raise SystemExit("run as the module function_service, not %r" % __name__)


def describe_args(tag):
    return (7, 2.5, True, None, {"gift": True}, "label-%s-%s" % (tag, LABEL_TAIL))


async def consume_restock(count):
    levels = []
    async for level in Warehouse().restock(count):
        levels.append(level)
    return levels


async def warm_async(rounds):
    for n in range(rounds):
        await fetch_inventory("warm-%d" % n)
        await consume_restock(3)


def warm(rounds=3000):
    _warming.active = True
    try:
        orders = Orders()
        for n in range(rounds):
            orders.place("warm-%d" % n, 3)
            compute_total("warm", n, note="x")
            describe_item(*describe_args(str(n)))
            list(stock_levels(3))
            for level in stock_levels(2):
                pass
            parse_quantity(str(n))
            try:
                parse_quantity("not-a-number")
            except ValueError:
                pass
            try:
                reserve(n)
            except OutOfStock:
                pass
        for _ in range(20):
            fib(15)
            descend(100)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(warm_async(rounds))
        finally:
            loop.close()
    finally:
        _warming.active = False
    return "warmed %d rounds\n" % rounds


def eval_frame():
    offset = EVAL_FRAME_OFFSETS.get(sys.version_info[:2])
    value = "n/a"
    if offset is not None:
        get = ctypes.pythonapi.PyInterpreterState_Get
        get.restype = ctypes.c_void_p
        get.argtypes = []
        value = ctypes.c_void_p.from_address(get() + offset).value or 0
    return json.dumps({"eval_frame": value, "recursion_limit": sys.getrecursionlimit()})


def make_flask_app():
    from flask import Flask

    app = Flask("function_service")

    @app.route("/place/<order_id>")
    def place_view(order_id):
        return "total %d\n" % Orders().place(order_id, 3)

    @app.route("/fib/<int:n>/<tag>")
    def fib_view(n, tag):
        return "fib(%d) = %d\n" % (n, fib(n))

    @app.route("/reserve/<order_id>")
    def reserve_view(order_id):
        try:
            reserve(order_id)
        except OutOfStock as error:
            return "%s\n" % error, 409
        return "reserved\n"

    @app.route("/quantity/<text>")
    def quantity_view(text):
        try:
            return "quantity %d\n" % parse_quantity(text)
        except ValueError as error:
            return "%s\n" % error, 400

    @app.route("/describe/<tag>")
    def describe_view(tag):
        return describe_item(*describe_args(tag)) + "\n"

    @app.route("/levels/<tag>")
    def levels_view(tag):
        return "levels %r\n" % list(stock_levels(3))

    @app.route("/warm")
    def warm_view():
        return warm()

    @app.route("/eval_frame")
    def eval_frame_view():
        return eval_frame()

    @app.route("/deep/<int:n>")
    def deep_view(n):
        return "ok %d\n" % descend(n)

    return app


def make_async_app():
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/inventory/{item}")
    async def inventory_view(item: str):
        return PlainTextResponse((await fetch_inventory(item)) + "\n")

    @app.get("/restock/{tag}")
    async def restock_view(tag: str):
        return PlainTextResponse("restocked %r\n" % (await consume_restock(3)))

    return app


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--async-port", type=int, required=True)
    args = parser.parse_args(argv)
    check_markers()

    import logging

    import uvicorn
    from werkzeug.serving import make_server

    async_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    async_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    async_sock.bind(("127.0.0.1", args.async_port))
    async_sock.listen(128)
    async_app = make_async_app()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    flask_server = make_server("127.0.0.1", args.port, make_flask_app(), threaded=True)
    threading.Thread(target=flask_server.serve_forever, name="flask", daemon=True).start()

    config = uvicorn.Config(
        async_app, loop="asyncio", http="h11", lifespan="off", log_level="warning", access_log=False
    )
    announce("READY pid=%d port=%d async_port=%d" % (os.getpid(), args.port, args.async_port))
    uvicorn.Server(config).run(sockets=[async_sock])
    return 0
