//! Cross-service traces through thread-based Python stacks: every request to A becomes one trace
//! A SERVER → A CLIENT → B SERVER → B CLIENT → C SERVER (see `scouter_e2e::chain`).
//!
//! The agent mints the trace in the kernel, injects `traceparent` into each outgoing request and
//! parents each CLIENT span under the SERVER span its thread is serving. Gunicorn's workers are
//! forks of its master: the agent must track them as such. Sequential requests are followed by
//! concurrent ones, so gthread's thread pool and Werkzeug's thread-per-request serve several
//! requests at once and a span must not pick up another thread's parent.

use anyhow::Result;
use scouter_e2e::chain::{trace_chain, Client, Hop, Server, Traffic};
use scouter_e2e::python::Interpreter;

/// Flask on Werkzeug calling with requests → gunicorn gthread calling with urllib3 → gunicorn
/// sync, under pyenv 3.12.1, pyenv 3.11.7 and Debian's python3.11.
#[test]
fn werkzeug_requests_to_gunicorn_gthread_urllib3_to_gunicorn_sync() -> Result<()> {
    trace_chain(
        [
            Hop::new(&Interpreter::pyenv("3.12.1")?, Server::Werkzeug).calling(Client::Requests),
            Hop::new(&Interpreter::pyenv("3.11.7")?, Server::GunicornGthread).calling(Client::Urllib3),
            Hop::new(&Interpreter::debian()?, Server::GunicornSync),
        ],
        None,
        Traffic { sequential: 5, concurrent: 8 },
    )
}

/// The standard library's ThreadingHTTPServer calling with http.client → Flask on Werkzeug
/// calling with urllib → ThreadingHTTPServer, under pyenv 3.8.18, 3.13.0 and 3.10.13.
#[test]
fn http_server_http_client_to_werkzeug_urllib_to_http_server() -> Result<()> {
    trace_chain(
        [
            Hop::new(&Interpreter::pyenv("3.8.18")?, Server::HttpServer).calling(Client::HttpClient),
            Hop::new(&Interpreter::pyenv("3.13.0")?, Server::Werkzeug).calling(Client::Urllib),
            Hop::new(&Interpreter::pyenv("3.10.13")?, Server::HttpServer),
        ],
        None,
        Traffic { sequential: 5, concurrent: 8 },
    )
}
