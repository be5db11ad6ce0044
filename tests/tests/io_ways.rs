//! Every way a Python process sends and receives is seen: `send`, `sendall`, `os.write`,
//! `sendmsg`, `os.writev` and `sendfile` on the client, `recv`, `recv_into`, `os.read`,
//! `recvmsg`, `os.readv`, `recvfrom` and a buffered file on the server, over TCP v4, TCP v6 and
//! unix stream sockets (`io_ways.py`: one process, both ends, one request per connection).
//!
//! Each request must give one SERVER span with its path. Each request whose head was written
//! from a buffer must give one CLIENT span too, and over TCP the SERVER span is its child
//! (the inserted `traceparent`); over unix sockets nothing is inserted (sk_msg programs run on
//! TCP only), so the SERVER span has no parent. A head sent with `sendfile` has no buffer to
//! read: its SERVER span must be there, its CLIENT span may not be (README, "Known limits").

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::{summary, Verdict};
use scouter_e2e::python::{Interpreter, PythonClient};
use scouter_e2e::store::{Span, Store};
use scouter_e2e::traces::url_path;

/// One request `io_ways.py` made: `REQUEST <family> <write way> <read way> <path>`.
struct Made {
    family: String,
    write_way: String,
    read_way: String,
    path: String,
}

fn parse(line: &str) -> Result<Made> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        ["REQUEST", family, write_way, read_way, path] => Ok(Made {
            family: (*family).to_owned(),
            write_way: (*write_way).to_owned(),
            read_way: (*read_way).to_owned(),
            path: (*path).to_owned(),
        }),
        _ => anyhow::bail!("io_ways.py printed {line:?}"),
    }
}

fn spans_of<'a>(spans: &'a [Span], kind: &str, path: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|span| span.kind == kind)
        .filter(|span| {
            let own =
                if kind == "SERVER" { span.attr_str("url.path") } else { span.attr_str("url.full").and_then(url_path) };
            own == Some(path)
        })
        .collect()
}

/// What is wrong with the spans of one request.
fn issues(made: &Made, spans: &[Span]) -> Vec<String> {
    let mut issues = Vec::new();
    let servers = spans_of(spans, "SERVER", &made.path);
    let clients = spans_of(spans, "CLIENT", &made.path);
    let [server] = servers.as_slice() else {
        issues.push(format!("{} SERVER span(s), expected 1 (read with {})", servers.len(), made.read_way));
        return issues;
    };
    let readable_head = made.write_way != "sendfile";
    match (clients.as_slice(), readable_head) {
        ([client], _) => {
            let expected_parent = (made.family != "unix").then(|| client.span_id.as_str());
            if server.parent_span_id.as_deref() != expected_parent {
                issues.push(format!(
                    "the SERVER span's parent is {:?}, expected {expected_parent:?} (the CLIENT span's, over TCP)",
                    server.parent_span_id
                ));
            }
        }
        ([], false) => {}
        (clients, _) => {
            issues.push(format!("{} CLIENT span(s), expected 1 (written with {})", clients.len(), made.write_way))
        }
    }
    issues
}

#[test]
fn every_way_of_sending_and_receiving_over_tcp_v4_v6_and_unix_sockets() -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let mut agent = Agent::start(&store)?;
    let mut program = PythonClient::start(&Interpreter::pyenv("3.12.1")?, "io_ways.py", &["ways".to_owned()])?;
    verdict.step("tracking io_ways.py", agent.wait_tracking(program.pid()));
    let lines = program.run("go", Duration::from_secs(60)).with_context(|| program.output())?;
    let made: Vec<Made> = lines.iter().map(|line| parse(line)).collect::<Result<_>>()?;

    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    let families: HashSet<&str> = made.iter().map(|m| m.family.as_str()).collect();
    if families.len() != 3 || made.len() != 21 {
        verdict.problem(format!(
            "io_ways.py made {} requests over {families:?}, expected 7 on each of 3 families",
            made.len()
        ));
    }
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        for request in &made {
            for issue in issues(request, &spans) {
                verdict.problem(format!("{}: {issue}", request.path));
            }
        }
        let shown: Vec<String> = spans.iter().map(summary).collect();
        verdict.add_context(format!("spans:\n{}", shown.join("\n")));
    }
    verdict.finish(&log_context("agent", &log))
}
