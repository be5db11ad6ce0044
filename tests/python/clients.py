"""The HTTP client libraries the tests drive, behind one small interface.

Every client does one thing: GET a URL and return (status, body bytes). Sync clients are
thread-safe and keep their connection pool between calls where the library has one (requests'
Session, urllib3's PoolManager, httpx.Client); http.client and urllib open a connection per call.
Async clients share one session per event loop (created lazily, inside the running loop).

    client = sync_client("requests", cafile=None, timeout=10)
    status, body = client.get("http://127.0.0.1:8000/chain/1")

    client = async_client("aiohttp", cafile=None, timeout=10)
    status, body = await client.get(url)

A `cafile` makes https:// URLs trust that CA (and only it).
"""

import ssl
import urllib.parse

SYNC_CLIENTS = ("http.client", "urllib", "requests", "urllib3", "httpx")
ASYNC_CLIENTS = ("httpx-async", "aiohttp")


def ssl_context(cafile):
    """A client context trusting only `cafile`, or None for the library's default."""
    if cafile is None:
        return None
    return ssl.create_default_context(cafile=cafile)


def sync_client(name, cafile=None, timeout=10.0):
    if name == "http.client":
        return HttpClientClient(cafile, timeout)
    if name == "urllib":
        return UrllibClient(cafile, timeout)
    if name == "requests":
        return RequestsClient(cafile, timeout)
    if name == "urllib3":
        return Urllib3Client(cafile, timeout)
    if name == "httpx":
        return HttpxClient(cafile, timeout)
    raise ValueError("not a sync client: %r (one of %s)" % (name, ", ".join(SYNC_CLIENTS)))


def async_client(name, cafile=None, timeout=10.0):
    if name == "httpx-async":
        return HttpxAsyncClient(cafile, timeout)
    if name == "aiohttp":
        return AiohttpClient(cafile, timeout)
    raise ValueError("not an async client: %r (one of %s)" % (name, ", ".join(ASYNC_CLIENTS)))


class HttpClientClient:
    """http.client: a new connection per call, closed afterwards."""

    def __init__(self, cafile, timeout):
        self.context = ssl_context(cafile)
        self.timeout = timeout

    def get(self, url):
        import http.client

        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.timeout, context=self.context
            )
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        try:
            target = parts.path + ("?" + parts.query if parts.query else "")
            connection.request("GET", target)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


class UrllibClient:
    """urllib.request.urlopen: a new connection per call (it sends Connection: close)."""

    def __init__(self, cafile, timeout):
        self.context = ssl_context(cafile)
        self.timeout = timeout

    def get(self, url):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=self.timeout, context=self.context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


class RequestsClient:
    def __init__(self, cafile, timeout):
        import requests

        self.session = requests.Session()
        self.verify = cafile if cafile is not None else True
        self.timeout = timeout

    def get(self, url):
        response = self.session.get(url, timeout=self.timeout, verify=self.verify)
        return response.status_code, response.content


class Urllib3Client:
    def __init__(self, cafile, timeout):
        import urllib3

        # No retries: one call is one request on the wire.
        options = {"timeout": urllib3.Timeout(total=timeout), "retries": False}
        if cafile is not None:
            options["ca_certs"] = cafile
        self.pool = urllib3.PoolManager(**options)

    def get(self, url):
        response = self.pool.request("GET", url)
        return response.status, response.data


class HttpxClient:
    def __init__(self, cafile, timeout):
        import httpx

        verify = ssl_context(cafile) if cafile is not None else True
        self.client = httpx.Client(timeout=timeout, verify=verify)

    def get(self, url):
        response = self.client.get(url)
        return response.status_code, response.content


class HttpxAsyncClient:
    def __init__(self, cafile, timeout):
        self.verify = ssl_context(cafile) if cafile is not None else True
        self.timeout = timeout
        self.client = None

    async def get(self, url):
        import httpx

        if self.client is None:
            self.client = httpx.AsyncClient(timeout=self.timeout, verify=self.verify)
        response = await self.client.get(url)
        return response.status_code, response.content


class AiohttpClient:
    def __init__(self, cafile, timeout):
        self.context = ssl_context(cafile)
        self.timeout = timeout
        self.session = None

    async def get(self, url):
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        ssl_option = self.context if self.context is not None else True
        async with self.session.get(url, ssl=ssl_option) as response:
            return response.status, await response.read()
