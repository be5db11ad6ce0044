//! Cross-service traces over HTTPS: every service serves TLS with a certificate for 127.0.0.1
//! signed by a test CA (made with the `openssl` CLI), every client trusts only that CA, and the
//! test's own requests to A go through curl. The spans and their links must be exactly those of
//! plain HTTP (see `scouter_e2e::chain`), with `url.scheme` "https" and `https://` in `url.full`.

use anyhow::Result;
use scouter_e2e::chain::{trace_chain, Client, Hop, Server, Traffic};
use scouter_e2e::python::Interpreter;
use scouter_e2e::tls::TlsFiles;

/// A: Flask/Werkzeug + requests (3.12.1) → B: aiohttp + aiohttp (Debian python3.11) → C:
/// FastAPI/uvicorn (3.13.0).
#[test]
fn https_werkzeug_requests_to_aiohttp_to_uvicorn() -> Result<()> {
    trace_chain(
        [
            Hop::new(&Interpreter::pyenv("3.12.1")?, Server::Werkzeug).calling(Client::Requests),
            Hop::new(&Interpreter::debian()?, Server::Aiohttp).calling(Client::Aiohttp),
            Hop::new(&Interpreter::pyenv("3.13.0")?, Server::Uvicorn),
        ],
        Some(TlsFiles::generate()?),
        Traffic::sequential(5),
    )
}

/// A: FastAPI/uvicorn + httpx async (3.11.7) → B: gunicorn gthread + urllib3 (3.10.13) → C:
/// ThreadingHTTPServer (3.8.18).
#[test]
fn https_uvicorn_httpx_to_gunicorn_urllib3_to_http_server() -> Result<()> {
    trace_chain(
        [
            Hop::new(&Interpreter::pyenv("3.11.7")?, Server::Uvicorn).calling(Client::HttpxAsync),
            Hop::new(&Interpreter::pyenv("3.10.13")?, Server::GunicornGthread).calling(Client::Urllib3),
            Hop::new(&Interpreter::pyenv("3.8.18")?, Server::HttpServer),
        ],
        Some(TlsFiles::generate()?),
        Traffic::sequential(5),
    )
}
