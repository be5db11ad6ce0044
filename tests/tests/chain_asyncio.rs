//! Cross-service traces through asyncio Python stacks (FastAPI on uvicorn, aiohttp) with async
//! clients (httpx's AsyncClient, aiohttp's ClientSession): one event-loop thread serves many
//! requests at once, so the agent cannot tell requests apart by thread. Every request must still
//! become its own five-span trace (see `scouter_e2e::chain`), also when the downstream call runs
//! in a task of its own (`asyncio.create_task`, `asyncio.gather`).
//!
//! Calls handed to asyncio's thread pool (`asyncio.to_thread`) and aiohttp servers under
//! concurrency (each connection's handler task starts before its request arrives and is handed
//! the request by the callback that reads it) are covered too.

use anyhow::Result;
use scouter_e2e::chain::{trace_chain, AsyncMode, Client, Hop, Server, Traffic};
use scouter_e2e::python::Interpreter;

/// A: FastAPI/uvicorn + httpx async (3.12.1) → B: aiohttp + aiohttp (3.11.7) → C: uvicorn (3.13.0).
fn uvicorn_aiohttp_uvicorn() -> Result<[Hop; 3]> {
    Ok([
        Hop::new(&Interpreter::pyenv("3.12.1")?, Server::Uvicorn).calling(Client::HttpxAsync),
        Hop::new(&Interpreter::pyenv("3.11.7")?, Server::Aiohttp).calling(Client::Aiohttp),
        Hop::new(&Interpreter::pyenv("3.13.0")?, Server::Uvicorn),
    ])
}

#[test]
fn uvicorn_httpx_to_aiohttp_to_uvicorn() -> Result<()> {
    trace_chain(uvicorn_aiohttp_uvicorn()?, None, Traffic::sequential(10))
}

/// 100 requests at once: 100 separate, complete traces, none borrowing another's spans. A:
/// uvicorn + httpx async (3.12.1) → B: uvicorn + aiohttp client (3.11.7) → C: aiohttp (3.13.0).
#[test]
fn one_hundred_concurrent_requests_make_one_hundred_separate_traces() -> Result<()> {
    trace_chain(
        [
            Hop::new(&Interpreter::pyenv("3.12.1")?, Server::Uvicorn).calling(Client::HttpxAsync),
            Hop::new(&Interpreter::pyenv("3.11.7")?, Server::Uvicorn).calling(Client::Aiohttp),
            Hop::new(&Interpreter::pyenv("3.13.0")?, Server::Aiohttp),
        ],
        None,
        Traffic::concurrent(100),
    )
}

/// Downstream calls in `asyncio.create_task`: A uvicorn + aiohttp (3.10.13) → B uvicorn + httpx
/// async (3.12.1) → C aiohttp (3.9.18).
#[test]
fn downstream_calls_in_create_task() -> Result<()> {
    trace_chain(
        [
            Hop::new(&Interpreter::pyenv("3.10.13")?, Server::Uvicorn)
                .calling(Client::Aiohttp)
                .mode(AsyncMode::CreateTask),
            Hop::new(&Interpreter::pyenv("3.12.1")?, Server::Uvicorn)
                .calling(Client::HttpxAsync)
                .mode(AsyncMode::CreateTask),
            Hop::new(&Interpreter::pyenv("3.9.18")?, Server::Aiohttp),
        ],
        None,
        Traffic { sequential: 3, concurrent: 20 },
    )
}

/// Downstream calls in `asyncio.gather`: A uvicorn + httpx async (3.11.7) → B uvicorn + aiohttp
/// (3.9.18) → C uvicorn (3.12.1). Debian's python3.11 ships `_asyncio` stripped of the task
/// functions the agent probes, so its tasks are parented by thread only (see the README); the
/// asyncio hops here run on builds with symbols.
#[test]
fn downstream_calls_in_gather() -> Result<()> {
    trace_chain(
        [
            Hop::new(&Interpreter::pyenv("3.11.7")?, Server::Uvicorn)
                .calling(Client::HttpxAsync)
                .mode(AsyncMode::Gather),
            Hop::new(&Interpreter::pyenv("3.9.18")?, Server::Uvicorn).calling(Client::Aiohttp).mode(AsyncMode::Gather),
            Hop::new(&Interpreter::pyenv("3.12.1")?, Server::Uvicorn),
        ],
        None,
        Traffic { sequential: 3, concurrent: 20 },
    )
}

/// Downstream calls on asyncio's thread pool (`asyncio.to_thread`, a sync client on a pool
/// thread), under concurrency: A uvicorn + requests in to_thread (3.12.1) → B uvicorn + httpx
/// sync in to_thread (3.9.18) → C uvicorn (3.13.0).
#[test]
fn downstream_calls_in_to_thread() -> Result<()> {
    trace_chain(
        [
            Hop::new(&Interpreter::pyenv("3.12.1")?, Server::Uvicorn)
                .calling(Client::Requests)
                .mode(AsyncMode::ToThread),
            Hop::new(&Interpreter::pyenv("3.9.18")?, Server::Uvicorn).calling(Client::Httpx).mode(AsyncMode::ToThread),
            Hop::new(&Interpreter::pyenv("3.13.0")?, Server::Uvicorn),
        ],
        None,
        Traffic { sequential: 3, concurrent: 20 },
    )
}

/// aiohttp servers all along the chain under concurrency: each connection's handler task starts
/// before its request arrives, and callbacks for other connections run in between. A aiohttp +
/// aiohttp (3.12.1) → B aiohttp + httpx async (3.8.18, where the wake-up is a method wrapper's
/// call) → C aiohttp (3.11.7).
#[test]
fn aiohttp_servers_under_concurrency() -> Result<()> {
    trace_chain(
        [
            Hop::new(&Interpreter::pyenv("3.12.1")?, Server::Aiohttp).calling(Client::Aiohttp),
            Hop::new(&Interpreter::pyenv("3.8.18")?, Server::Aiohttp).calling(Client::HttpxAsync),
            Hop::new(&Interpreter::pyenv("3.11.7")?, Server::Aiohttp),
        ],
        None,
        Traffic { sequential: 3, concurrent: 100 },
    )
}
