"""A traced client process that makes the GET calls it is told to, with the libraries in clients.py.

Usage: python client_calls.py

Prints "READY pid=<pid>", then reads one JSON line from stdin (the test sends it once the agent
tracks this process):

    {"calls": [{"client": "requests", "url": "http://127.0.0.1:9/x", "timeout": 1.0}, ...]}

and makes the calls one after the other (async clients each in a fresh event loop). Prints one
JSON line per call, {"url": ..., "client": ..., "status": 200 or null, "error": null or
"<ExceptionType>: message"}, then "DONE". Failures are the point here: they are reported, not
raised.
"""

import asyncio
import json
import os
import sys

import clients


def call(spec):
    timeout = float(spec.get("timeout", 10.0))
    name = spec["client"]
    if name in clients.ASYNC_CLIENTS:

        async def run():
            client = clients.async_client(name, spec.get("cafile"), timeout)
            try:
                return await client.get(spec["url"])
            finally:
                await close_async(client)

        return asyncio.run(run())
    return clients.sync_client(name, spec.get("cafile"), timeout).get(spec["url"])


async def close_async(client):
    session = getattr(client, "session", None) or getattr(client, "client", None)
    if session is None:
        return
    close = getattr(session, "aclose", None) or session.close
    await close()


def main():
    print("READY pid=%d" % os.getpid(), flush=True)
    plan = json.loads(sys.stdin.readline())
    for spec in plan["calls"]:
        result = {"url": spec["url"], "client": spec["client"], "status": None, "error": None}
        try:
            result["status"], _ = call(spec)
        except Exception as error:
            result["error"] = "%s: %s" % (type(error).__name__, error)
        print(json.dumps(result), flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
