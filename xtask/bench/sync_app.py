"""Bench service, sync variant: a Flask app (served by gunicorn's gthread workers) that makes
one downstream HTTP call per request with requests.

The downstream URL comes from BENCH_DOWNSTREAM_URL. Each worker thread keeps its own
requests.Session, so downstream connections are reused, as a production client pool would.
"""

import os
import threading

import flask
import requests

DOWNSTREAM = os.environ["BENCH_DOWNSTREAM_URL"]

app = flask.Flask(__name__)
_local = threading.local()


def session():
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


@app.get("/")
def index():
    downstream = session().get(DOWNSTREAM, timeout=5)
    return "downstream %d\n" % downstream.status_code, 200, {"Content-Type": "text/plain"}
