//! Services that ran before the agent, with warm connection pools: the chain starts with no
//! agent, requests fill every client's pool (requests' Session, urllib3's PoolManager,
//! httpx's AsyncClient, aiohttp's ClientSession keep their connections) and every server's
//! keep-alive connections, then the agent starts. Every request after that must be one
//! complete trace A SERVER → A CLIENT → B SERVER → B CLIENT → C SERVER (see
//! `scouter_e2e::chain`): the agent follows sockets it never saw opened, from their next
//! request, and joins the pooled connections to the sockhash its sk_msg program inserts
//! `traceparent` on.

use anyhow::Result;
use scouter_e2e::chain::{trace_warm_chain, Client, Hop, Server, Traffic};
use scouter_e2e::python::Interpreter;

/// Requests that fill the pools before the agent starts: sequential ones, then concurrent ones
/// so that each pool holds several connections.
const WARM: Traffic = Traffic { sequential: 5, concurrent: 5 };

/// Flask on Werkzeug calling with a requests Session → gunicorn gthread calling with urllib3 →
/// gunicorn sync.
#[test]
fn sync_pools_warmed_before_the_agent() -> Result<()> {
    trace_warm_chain(
        [
            Hop::new(&Interpreter::pyenv("3.12.1")?, Server::Werkzeug).calling(Client::Requests),
            Hop::new(&Interpreter::pyenv("3.11.7")?, Server::GunicornGthread).calling(Client::Urllib3),
            Hop::new(&Interpreter::debian()?, Server::GunicornSync),
        ],
        None,
        WARM,
        Traffic { sequential: 10, concurrent: 8 },
    )
}

/// FastAPI on uvicorn calling with a module-level httpx AsyncClient → aiohttp's server calling
/// with an aiohttp ClientSession → uvicorn.
#[test]
fn asyncio_pools_warmed_before_the_agent() -> Result<()> {
    trace_warm_chain(
        [
            Hop::new(&Interpreter::pyenv("3.12.1")?, Server::Uvicorn).calling(Client::HttpxAsync),
            Hop::new(&Interpreter::pyenv("3.11.7")?, Server::Aiohttp).calling(Client::Aiohttp),
            Hop::new(&Interpreter::pyenv("3.13.0")?, Server::Uvicorn),
        ],
        None,
        WARM,
        Traffic { sequential: 10, concurrent: 8 },
    )
}
