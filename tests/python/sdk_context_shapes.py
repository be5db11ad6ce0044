"""OpenTelemetry's trace context in the exact shape its Python SDK gives it, without the SDK (the
test interpreters do not have it installed; the real SDK runs in tests/python/sdk_service.py):

- a `ContextVar` named "current_context" (opentelemetry.context.contextvars_context), set on
  attach and reset on detach;
- its value a dict subclass (opentelemetry.context.Context) holding the current span under
  "current-span-<uuid4>";
- the span an instance whose attributes are assigned in `ReadableSpan.__init__`'s order, its
  `_context` a tuple subclass (trace_api.SpanContext: trace id, span id, ...) of ints, its
  `_kind` an Enum member (SERVER is 1).

Usage: python sdk_context_shapes.py PORT LEAF_PORT

GET / on PORT (a thread per request) makes a random span current, calls the leaf on LEAF_PORT
(echo_server.py, which answers with the request's raw bytes) with urllib while the span is
current, resets the context, and answers "MATCH <traceparent> <trace id> <span id>" when the traceparent the leaf received carries the
span's trace id, else "NOMATCH ...". Prints "READY pid=<pid> port=<port>" once serving.
"""

import contextvars, enum, http.server, os, random, sys, urllib.request, uuid
VAR = contextvars.ContextVar("current_context", default=None)
KEY = "current-span-" + str(uuid.uuid4())
class Kind(enum.Enum):
    INTERNAL = 0
    SERVER = 1
class SpanContext(tuple):
    def __new__(cls, trace_id, span_id):
        return tuple.__new__(cls, (trace_id, span_id, False, 1, None, True))
class Span:
    def __init__(self, name, context, kind):
        self._name = name
        self._context = context
        self._kind = kind
        self._parent = None
        self._attributes = {}
class Context(dict):
    pass
LEAF = "http://127.0.0.1:%d/leaf" % int(sys.argv[2])


def traceparent_of(raw_request):
    """The traceparent line of the request the leaf echoed, or None."""
    for line in raw_request.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "traceparent":
            return value.strip()
    return None


class Front(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        trace, span = random.getrandbits(128), random.getrandbits(64)
        token = VAR.set(Context({KEY: Span("work", SpanContext(trace, span), Kind.INTERNAL)}))
        try:
            got = traceparent_of(urllib.request.urlopen(LEAF).read())
        finally:
            VAR.reset(token)
        ok = got is not None and got.split("-")[1] == "%032x" % trace
        body = ("%s %s %032x %016x\n" % ("MATCH" if ok else "NOMATCH", got, trace, span)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
front = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Front)
print("READY pid=%d port=%d" % (os.getpid(), front.server_address[1]), flush=True)
front.serve_forever()
