"""A traced client that writes HTTP requests to a socket exactly as told, chunk by chunk.

Usage: python raw_client.py

Prints "READY pid=<pid>", then reads one JSON line from stdin (the test sends it once the agent
tracks this process):

    {"port": 8000, "cases": [{"name": "single", "steps": [STEP, ...]}, ...]}

Each case gets a new connection to 127.0.0.1:port (TCP_NODELAY) and runs its steps in order:

    {"write": "<hex>"}               one sendall() call with these bytes
    {"sendmsg": ["<hex>", ...]}      one vectored sendmsg() call, one buffer per item
    {"pause_ms": 5}                  sleep
    {"read": 2}                      read that many responses (status line, headers,
                                     Content-Length body)

Prints one JSON line per case, {"case": name, "responses": [{"status": 200, "body": "<hex>"}],
"error": null or a description}, then "DONE".
"""

import json
import os
import socket
import sys
import time


def read_response(reader):
    status_line = reader.readline()
    if not status_line:
        raise EOFError("connection closed before a status line")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    while True:
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = reader.read(length)
    if len(body) != length:
        raise EOFError("connection closed inside a body (%d of %d bytes)" % (len(body), length))
    return {"status": status, "body": body.hex()}


def run_case(port, case, responses):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        for step in case["steps"]:
            if "write" in step:
                sock.sendall(bytes.fromhex(step["write"]))
            elif "sendmsg" in step:
                buffers = [bytes.fromhex(item) for item in step["sendmsg"]]
                sent = sock.sendmsg(buffers)
                rest = b"".join(buffers)[sent:]
                if rest:
                    sock.sendall(rest)
            elif "pause_ms" in step:
                time.sleep(step["pause_ms"] / 1000.0)
            elif "read" in step:
                for _ in range(step["read"]):
                    responses.append(read_response(reader))
            else:
                raise ValueError("unknown step %r" % (step,))


def main():
    print("READY pid=%d" % os.getpid(), flush=True)
    plan = json.loads(sys.stdin.readline())
    for case in plan["cases"]:
        responses = []
        result = {"case": case["name"], "responses": responses, "error": None}
        try:
            run_case(plan["port"], case, responses)
        except Exception as error:  # reported to the test, which fails on it
            result["error"] = "%s: %s" % (type(error).__name__, error)
        print(json.dumps(result), flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
