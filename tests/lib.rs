//! End-to-end test harness for Scouter Agent: real Python servers, the real agent binary, real
//! eBPF, and assertions on the spans it stores.
//!
//! # Design
//!
//! Every test follows the same shape:
//!
//! 1. [`env::require_ebpf_host`] checks the preconditions (root, agent binary). A test that needs
//!    eBPF never skips: it fails loudly with a message that says what is missing.
//! 2. A [`store::Store`] is a fresh temporary directory holding the agent's SQLite file.
//! 3. [`python::PythonServer`]s are started from the programs in `tests/python/` under a chosen
//!    [`python::Interpreter`], some before the agent (found by its /proc scan) and some after it
//!    (found through exec events: the test waits for the agent's `tracking python process pid=N`
//!    log line before sending traffic).
//! 4. An [`agent::Agent`] guard runs `scouter-agent run --store-path ...`, captures its stderr,
//!    and waits for `agent ready`. [`agent::Agent::stop`] sends SIGTERM and requires exit status 0.
//! 5. Traffic is sent with the raw HTTP/1.x client in [`http`] (std `TcpStream`, explicit
//!    keep-alive, Content-Length/chunked framing) so the number of requests is exact; [`traffic`]
//!    records every [`traffic::Exchange`] (what was sent, what came back, and when).
//! 6. After stopping the agent (which flushes everything), [`store::Store::spans`] reads every
//!    span through the agent's own CLI (`traces list --json`, then `traces show --json`), and
//!    [`expect`] compares them with the recorded exchanges, collecting *all* problems before
//!    failing so one run reports every mismatch along with the spans and the agent's log.
//!
//! Cross-service tests follow the same shape with more moving parts: [`chain::Chain`] runs three
//! `chain_service.py` services A → B → C on real Python stacks (Flask, gunicorn, FastAPI/uvicorn,
//! aiohttp; requests, urllib3, httpx, aiohttp, ...), optionally over HTTPS ([`tls::TlsFiles`]),
//! and [`traces`] checks that each request becomes one linked five-span trace. Traced one-shot Python
//! clients ([`python::PythonClient`]) drive the injection tests, whose requests an echo server
//! returns byte for byte so [`injection::compare`] can tell what the agent changed on the wire.
//!
//! Guards clean up on drop (servers are killed, the agent is terminated), so a failing test does
//! not leak processes into the next one. Tests are meant to run with `--test-threads=1`.

pub mod agent;
pub mod backends;
pub mod chain;
pub mod env;
pub mod expect;
pub mod http;
pub mod injection;
pub mod lines;
pub mod python;
pub mod store;
pub mod tls;
pub mod traces;
pub mod traffic;
