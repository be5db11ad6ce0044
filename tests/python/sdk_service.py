"""A Flask service with an in-process tracing SDK that exports its spans to the agent.

Runs in the SDK tests' virtual environment (target/tools/venvs/sdk, see
tests/python/sdk-requirements.txt), not under the plain test interpreters.

Usage:
    python sdk_service.py --mode MODE --port PORT

Modes:
- otel-auto:   OpenTelemetry's Python SDK with FlaskInstrumentor (a SERVER span per request, except
               /flush) and RequestsInstrumentor (a CLIENT span per downstream call, which also
               injects `traceparent`), plus the manual span below.
- otel-manual: OpenTelemetry's Python SDK with no instrumentation: only the manual span below.
- scouter:     Scouter's SDK (scouter-ml): `init_tracer` with its transport to Scouter (HTTP or
               gRPC), optionally one OTLP exporter besides; /work/<tag> runs a function decorated
               `@tracer.span("handle_work")` that opens the manual span below.
- plain:       no SDK at all (a leaf, or a service to compare with).

Routes (every mode):
- GET /work/<tag>: inside a span `work <tag>` (`tracer.start_as_current_span`), calls GET
  DOWNSTREAM_URL/leaf/<tag> once with `requests`, and answers with the downstream's status, body and
  content type. Without DOWNSTREAM_URL it answers 200 "work <tag> (no downstream)\n".
- GET /leaf/<tag>: answers 200 with JSON {"tag", "port", "pid", "headers"}, where "headers" lists
  every request header as received, as [name, value] pairs in order (repeated headers stay
  separate, so a doubled `traceparent` shows). So one process can be the front and another, run
  from the same program, its leaf.
- GET /flush: flushes the SDK's exporters (OTel: `TracerProvider.force_flush()`; Scouter:
  `flush_tracer()`) and answers 200 "flushed\n" once they return; 500 "flush timed out" or
  "flush failed: <error>" when OTel reports a timeout or Scouter's flush raises (it does when an
  export failed). Never traced by the SDK.

Environment:
- OTEL_SERVICE_NAME: the service name (default "sdk-<mode>").
- DOWNSTREAM_URL: the base URL /work/<tag> calls, e.g. http://127.0.0.1:PORT (the call goes to
  DOWNSTREAM_URL/leaf/<tag>); a URL containing "{tag}" is used as given with the tag put in.
- OTEL_TRACES_EXPORTER: comma-separated exporters, "otlp", "console" and/or "none"; default "otlp"
  in the otel modes and "none" in scouter mode (where "otlp" adds Scouter's own OTLP exporter,
  `HttpSpanExporter` or `GrpcSpanExporter`, beside its transport to Scouter; Scouter takes at most
  one such exporter). SDK_CONSOLE=1 adds "console": one line per span on stdout,
  `SPAN {"name", "trace_id", "span_id", "parent_span_id", "kind"}` (OTel modes; Scouter's
  `StdoutSpanExporter` prints its own format).
- OTEL_EXPORTER_OTLP_TRACES_PROTOCOL (else OTEL_EXPORTER_OTLP_PROTOCOL): "grpc" or
  "http/protobuf" (the default); scouter mode also takes "http/json" (OtelProtocol.HttpJson),
  which OTel's Python SDK has no exporter for.
- OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: where OTLP goes: for grpc e.g. http://127.0.0.1:4317
  (plaintext), for http/protobuf the full URL, e.g. http://127.0.0.1:4318/v1/traces. Unset: the
  exporter's own default (OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317 / :4318).
- SDK_SCHEDULE_DELAY_MS: the batch processor's delay between exports (default 200).
- SDK_SERVER: "werkzeug" (default: Werkzeug's threaded server, a thread per request) or "gthread":
  gunicorn with one gthread worker of SDK_THREADS threads (default 16), so requests share a pool
  of threads. The master prints READY; the worker prints "WORKER pid=<pid>" once it serves, and
  shuts the SDK down when it exits. Export over OTLP/HTTP there: the SDK is set up before the fork.
- SDK_SERVER=asyncio (otel modes): an asyncio streams server on one thread instead, every
  connection a task of its own; /work/<tag> opens its span in the task and calls the downstream
  with asyncio streams (HTTP/1.1, Connection: close). Serves /work and /flush only.
- LEAF_DELAY_MS: how long /leaf/<tag> waits before answering (default 0), so that concurrent
  calls overlap in the caller.
- SDK_PROPAGATE=1: in otel-manual and scouter modes, put the SDK's trace context on the downstream
  request by hand (OTel: `opentelemetry.propagate.inject`; Scouter:
  `get_tracing_headers_from_current_span()`). otel-auto always propagates (RequestsInstrumentor).
- SDK_RESOURCE_PID=1: put `process.pid` (this process's pid) in the SDK's resource; neither SDK
  does by default. OTel: an int, through `Resource.create`; Scouter (whose init_tracer takes no
  resource): through OTEL_RESOURCE_ATTRIBUTES, which its Rust SDK reads, so a string. Other
  OTEL_RESOURCE_ATTRIBUTES entries pass through to both SDKs.
- scouter mode: SCOUTER_TRANSPORT "http" (default, `HttpConfig()`) or "grpc" (`GrpcConfig()`). The
  configs are built without arguments, so the SDK reads its own variables: SCOUTER_SERVER_URI
  (HTTP; default http://localhost:8000) or SCOUTER_GRPC_URI (gRPC; default
  http://localhost:50051), SCOUTER_USERNAME and SCOUTER_PASSWORD (HTTP's default: admin/admin)
  and SCOUTER_AUTH_TOKEN for HTTP. The SDK logs in inside init_tracer and raises if it cannot, so
  the program exits 1 when nothing listens there yet: start the receiver first.

Readiness (stdout): "READY pid=<pid> port=<port> mode=<mode>" once the socket listens (the SDK is
set up before). SIGTERM or SIGINT shuts the SDK down (flushing what it holds), prints
"STOPPED pid=<pid>" and exits 0. Exporter failures are logged by the SDKs and never fail a request.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import urllib.parse

import requests
from flask import Flask, Response, request
from werkzeug.serving import WSGIRequestHandler, make_server

MODES = ("otel-auto", "otel-manual", "scouter", "plain")
DOWNSTREAM_TIMEOUT = 30.0
FLUSH_TIMEOUT_MILLIS = 30000
HEADERS_KEY = "sdk_service.headers"


def announce(text):
    os.write(sys.stdout.fileno(), (text + "\n").encode())


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def schedule_delay_ms():
    return int(os.environ.get("SDK_SCHEDULE_DELAY_MS", "200"))


def exporters_wanted(default):
    names = [name.strip().lower() for name in os.environ.get("OTEL_TRACES_EXPORTER", default).split(",")]
    wanted = [name for name in names if name and name != "none"]
    if env_flag("SDK_CONSOLE") and "console" not in wanted:
        wanted.append("console")
    unknown = [name for name in wanted if name not in ("otlp", "console")]
    if unknown:
        raise SystemExit("unknown OTEL_TRACES_EXPORTER entries: %s" % ", ".join(unknown))
    return wanted


def otlp_protocol():
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    return protocol.strip().lower()


def otlp_endpoint():
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None


def downstream_url(tag):
    base = os.environ.get("DOWNSTREAM_URL")
    if not base:
        return None
    if "{tag}" in base:
        return base.replace("{tag}", tag)
    return "%s/leaf/%s" % (base.rstrip("/"), tag)


def call_downstream(url, headers):
    """One GET; returns (status, body bytes, content type)."""
    response = requests.get(url, headers=headers, timeout=DOWNSTREAM_TIMEOUT)
    return response.status_code, response.content, response.headers.get("Content-Type", "text/plain")


def no_downstream(tag):
    return 200, ("work %s (no downstream)\n" % tag).encode(), "text/plain"


class Plain:
    """No SDK."""

    def start(self):
        pass

    def instrument(self, app):
        pass

    def work(self, tag):
        url = downstream_url(tag)
        return call_downstream(url, {}) if url else no_downstream(tag)

    def flush(self):
        return True

    def shutdown(self):
        pass


def span_line(span):
    """ConsoleSpanExporter formatter: one line per span, for tests to read."""
    context = span.get_span_context()
    parent = span.parent
    fields = {
        "name": span.name,
        "trace_id": "%032x" % context.trace_id,
        "span_id": "%016x" % context.span_id,
        "parent_span_id": "%016x" % parent.span_id if parent is not None else None,
        "kind": span.kind.name,
    }
    return "SPAN " + json.dumps(fields, sort_keys=True) + "\n"


class Otel:
    """OpenTelemetry's Python SDK, with or without the Flask and requests instrumentations."""

    def __init__(self, mode, service_name):
        from opentelemetry import propagate, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        self.auto = mode == "otel-auto"
        self.propagate = not self.auto and env_flag("SDK_PROPAGATE")
        self.inject = propagate.inject
        attributes = {"service.name": service_name}
        if env_flag("SDK_RESOURCE_PID"):
            attributes["process.pid"] = os.getpid()
        self.provider = TracerProvider(resource=Resource.create(attributes))
        for name in exporters_wanted("otlp"):
            exporter = self.otlp_exporter() if name == "otlp" else ConsoleSpanExporter(formatter=span_line)
            self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms()))
        trace.set_tracer_provider(self.provider)
        self.tracer = trace.get_tracer("sdk_service")

    def start(self):
        """Nothing to start: the batch processor restarts its thread in a forked worker."""

    @staticmethod
    def otlp_exporter():
        protocol, endpoint = otlp_protocol(), otlp_endpoint()
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            secure = endpoint is not None and endpoint.startswith("https://")
            return OTLPSpanExporter(endpoint=endpoint, insecure=not secure)
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(endpoint=endpoint)
        raise SystemExit("OTLP protocol %r is not grpc or http/protobuf" % protocol)

    def instrument(self, app):
        if self.auto:
            from opentelemetry.instrumentation.flask import FlaskInstrumentor
            from opentelemetry.instrumentation.requests import RequestsInstrumentor

            FlaskInstrumentor().instrument_app(app, excluded_urls="/flush")
            RequestsInstrumentor().instrument()

    def work(self, tag):
        with self.tracer.start_as_current_span("work " + tag):
            url = downstream_url(tag)
            if not url:
                return no_downstream(tag)
            headers = {}
            if self.propagate:
                self.inject(headers)
            return call_downstream(url, headers)

    async def work_async(self, tag):
        with self.tracer.start_as_current_span("work " + tag):
            url = downstream_url(tag)
            if not url:
                return no_downstream(tag)
            return await get_async(url)

    def flush(self):
        return self.provider.force_flush(FLUSH_TIMEOUT_MILLIS)

    def shutdown(self):
        self.provider.shutdown()


class Scouter:
    """Scouter's SDK: spans to Scouter through its transport, optionally to OTLP as well.

    Started in the process that serves: the SDK runs its exporter on threads of a Rust runtime,
    which a fork (gunicorn's workers) does not carry over."""

    def __init__(self, service_name):
        self.service_name = service_name

    def start(self):
        service_name = self.service_name
        from scouter.tracing import (
            BatchConfig,
            GrpcSpanExporter,
            HttpSpanExporter,
            OtelExportConfig,
            OtelProtocol,
            StdoutSpanExporter,
            flush_tracer,
            get_tracer,
            get_tracing_headers_from_current_span,
            init_tracer,
            shutdown_tracer,
        )
        from scouter.transport import GrpcConfig, HttpConfig

        transport = os.environ.get("SCOUTER_TRANSPORT", "http").strip().lower()
        if transport == "http":
            transport_config = HttpConfig()
        elif transport == "grpc":
            transport_config = GrpcConfig()
        else:
            raise SystemExit("SCOUTER_TRANSPORT %r is not http or grpc" % transport)

        wanted = exporters_wanted("none")
        if len(wanted) > 1:
            raise SystemExit("Scouter's SDK takes one exporter besides its transport, not %s" % wanted)
        exporter = None
        if wanted == ["console"]:
            exporter = StdoutSpanExporter()
        elif wanted == ["otlp"]:
            protocol = otlp_protocol()
            if protocol == "grpc":
                config = OtelExportConfig(endpoint=otlp_endpoint())
                exporter = GrpcSpanExporter(export_config=config)
            elif protocol in ("http/protobuf", "http/json"):
                binary = protocol == "http/protobuf"
                config = OtelExportConfig(
                    endpoint=otlp_endpoint(),
                    protocol=OtelProtocol.HttpBinary if binary else OtelProtocol.HttpJson,
                )
                exporter = HttpSpanExporter(export_config=config)
            else:
                raise SystemExit("OTLP protocol %r is not grpc, http/protobuf or http/json" % protocol)

        if env_flag("SDK_RESOURCE_PID"):
            # init_tracer has no resource argument; the Rust SDK reads OTEL_RESOURCE_ATTRIBUTES.
            given = os.environ.get("OTEL_RESOURCE_ATTRIBUTES")
            pid = "process.pid=%d" % os.getpid()
            os.environ["OTEL_RESOURCE_ATTRIBUTES"] = pid + "," + given if given else pid
        init_tracer(
            service_name=service_name,
            transport_config=transport_config,
            exporter=exporter,
            batch_config=BatchConfig(scheduled_delay_ms=schedule_delay_ms()),
        )
        self.tracer = get_tracer(service_name)
        self.flush_tracer = flush_tracer
        self.shutdown_tracer = shutdown_tracer
        self.tracing_headers = get_tracing_headers_from_current_span
        self.propagate = env_flag("SDK_PROPAGATE")
        self.handle = self.tracer.span("handle_work")(self.handle_work)

    def instrument(self, app):
        pass

    def handle_work(self, tag):
        with self.tracer.start_as_current_span("work " + tag):
            url = downstream_url(tag)
            if not url:
                status, body, content_type = no_downstream(tag)
            else:
                headers = dict(self.tracing_headers()) if self.propagate else {}
                status, body, content_type = call_downstream(url, headers)
        # The decorator records the return value as the span's output: keep it JSON-friendly.
        return {"status": status, "body": body.decode("utf-8", "replace"), "content_type": content_type}

    def work(self, tag):
        result = self.handle(tag)
        return result["status"], result["body"].encode(), result["content_type"]

    def flush(self):
        self.flush_tracer()
        return True

    def shutdown(self):
        self.shutdown_tracer()


class RecordingHandler(WSGIRequestHandler):
    """Werkzeug's handler, also keeping the request's header lines as received (the WSGI environ
    joins repeated headers into one)."""

    def make_environ(self):
        environ = super().make_environ()
        environ[HEADERS_KEY] = [[name, value] for name, value in self.headers.items()]
        return environ


def create_app(sdk, port):
    app = Flask(__name__)

    @app.get("/work/<tag>")
    def work(tag):
        status, body, content_type = sdk.work(tag)
        return Response(body, status=status, content_type=content_type)

    @app.get("/leaf/<tag>")
    def leaf(tag):
        headers = request.environ.get(HEADERS_KEY)
        if headers is None:
            headers = [[name, value] for name, value in request.headers.items()]
        delay_ms = int(os.environ.get("LEAF_DELAY_MS", "0"))
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)
        body = {"tag": tag, "port": port, "pid": os.getpid(), "headers": headers}
        return Response(json.dumps(body) + "\n", status=200, content_type="application/json")

    @app.get("/flush")
    def flush():
        try:
            flushed = sdk.flush()
        except Exception as error:  # Scouter's flush_tracer raises when an export failed.
            return Response("flush failed: %s\n" % error, status=500, content_type="text/plain")
        if flushed:
            return Response("flushed\n", status=200, content_type="text/plain")
        return Response("flush timed out\n", status=500, content_type="text/plain")

    sdk.instrument(app)
    return app


class Stop(Exception):
    pass


def on_signal(signum, _frame):
    raise Stop(signum)


async def get_async(url):
    """One GET over asyncio streams; returns (status, body bytes, content type)."""
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        request = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (parts.path or "/", parts.netloc)
        writer.write(request.encode("latin-1"))
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), DOWNSTREAM_TIMEOUT)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    content_type = "text/plain"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            content_type = value.strip()
    return int(lines[0].split(" ", 2)[1]), body, content_type


async def serve_asyncio(port, mode, sdk):
    """asyncio streams on one thread: each connection is a task; one request per connection."""

    async def respond(path):
        if path.startswith("/work/"):
            return await sdk.work_async(path[len("/work/"):])
        if path == "/flush":
            flushed = await asyncio.get_running_loop().run_in_executor(None, sdk.flush)
            return (200, b"flushed\n", "text/plain") if flushed else (500, b"flush timed out\n", "text/plain")
        return 404, b"not found\n", "text/plain"

    async def handle(reader, writer):
        try:
            request_line = (await reader.readline()).decode("latin-1")
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.split(" ")
            status, body, content_type = await respond(parts[1] if len(parts) > 1 else "/")
            head = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
                status,
                "OK" if status == 200 else "Error",
                content_type,
                len(body),
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        finally:
            writer.close()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=128)
    announce("READY pid=%d port=%d mode=%s" % (os.getpid(), port, mode))
    async with server:
        await stop.wait()
    sdk.shutdown()
    announce("STOPPED pid=%d" % os.getpid())


def start_worker(sdk):
    sdk.start()
    announce("WORKER pid=%d" % os.getpid())


def serve_gthread(app, port, mode, sdk):
    """gunicorn, one gthread worker: requests run on a pool of threads that serve one another's
    next requests."""
    from gunicorn.app.base import BaseApplication

    class Service(BaseApplication):
        def load_config(self):
            settings = {
                "bind": "127.0.0.1:%d" % port,
                "workers": 1,
                "worker_class": "gthread",
                "threads": int(os.environ.get("SDK_THREADS", "16")),
                "loglevel": "warning",
                "when_ready": lambda _arbiter: announce("READY pid=%d port=%d mode=%s" % (os.getpid(), port, mode)),
                "post_worker_init": lambda _worker: start_worker(sdk),
                "worker_exit": lambda _arbiter, _worker: sdk.shutdown(),
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            return app

    Service().run()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    service_name = os.environ.get("OTEL_SERVICE_NAME") or "sdk-%s" % args.mode
    if args.mode == "plain":
        sdk = Plain()
    elif args.mode == "scouter":
        sdk = Scouter(service_name)
    else:
        sdk = Otel(args.mode, service_name)

    if os.environ.get("SDK_SERVER") == "asyncio":
        if not isinstance(sdk, Otel):
            raise SystemExit("SDK_SERVER=asyncio serves the otel modes only")
        sdk.start()
        asyncio.run(serve_asyncio(args.port, args.mode, sdk))
        return 0
    app = create_app(sdk, args.port)
    if os.environ.get("SDK_SERVER", "werkzeug") == "gthread":
        serve_gthread(app, args.port, args.mode, sdk)
        return 0
    sdk.start()
    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=RecordingHandler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    announce("READY pid=%d port=%d mode=%s" % (os.getpid(), args.port, args.mode))
    try:
        server.serve_forever()
    except Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        server.server_close()
        sdk.shutdown()
    announce("STOPPED pid=%d" % os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
