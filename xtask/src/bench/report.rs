//! The results: one table row per run, then what each tracer recorded.

use std::time::Duration;

use super::{Measurement, Mode, Outcome};

const TABLE_HEADER: [&str; 10] =
    ["variant", "mode", "req/s", "vs none", "p50", "p99", "errors", "svc CPU/req", "agent CPU", "agent RSS (peak)"];

pub fn print_table(outcomes: &[Outcome]) {
    println!("\n== results ==");
    println!("{}", table_row(&TABLE_HEADER.map(String::from)));
    for outcome in outcomes {
        let baseline = outcomes
            .iter()
            .find(|o| o.variant == outcome.variant && o.mode == Mode::Bare)
            .and_then(|o| o.result.as_ref().ok());
        match &outcome.result {
            Ok(m) => println!("{}", table_row(&figures(outcome, m, baseline))),
            Err(_) => println!("{:<8} {:<6} FAILED (see above)", outcome.variant.name(), outcome.mode.name()),
        }
    }
    println!(
        "svc CPU/req: CPU time (user+system) of the service's processes in the measured window / requests \
         (uprobe handling is charged here too)\n\
         agent CPU: the agent's CPU time in the measured window, % of one core; agent RSS: VmRSS at the end \
         of the window (VmHWM)"
    );
    if outcomes.iter().any(|o| o.result.as_ref().is_ok_and(|m| !m.foreign_agents.is_empty())) {
        println!("*: another scouter-agent (not the bench's) was running during this run and traced it too");
    }
}

fn table_row(cells: &[String; 10]) -> String {
    let [variant, mode, rate, versus, p50, p99, errors, cpu, agent_cpu, agent_rss] = cells;
    format!(
        "{variant:<8} {mode:<6} {rate:>9} {versus:>8} {p50:>9} {p99:>9} {errors:>7} {cpu:>13} {agent_cpu:>10} {agent_rss:>17}"
    )
}

/// One run's cells, its requests/s compared with the untraced run of its variant.
fn figures(outcome: &Outcome, m: &Measurement, baseline: Option<&Measurement>) -> [String; 10] {
    let versus = match baseline {
        Some(base) if outcome.mode != Mode::Bare => {
            format!("{:+.1}%", (m.wrk.requests_per_sec / base.wrk.requests_per_sec - 1.0) * 100.0)
        }
        _ => "-".into(),
    };
    let cpu_per_request = m.service_cpu.as_secs_f64() * 1e6 / m.wrk.requests.max(1) as f64;
    let (agent_cpu, agent_rss) = match &m.agent {
        Some(agent) => (
            format!("{:.1}%", agent.cpu.as_secs_f64() / m.wall.as_secs_f64() * 100.0),
            format!("{:.1} ({:.1}) MiB", mib(agent.memory.rss_kib), mib(agent.memory.peak_kib)),
        ),
        None => ("-".into(), "-".into()),
    };
    let marker = if m.foreign_agents.is_empty() { "" } else { "*" };
    [
        outcome.variant.name().into(),
        format!("{}{marker}", outcome.mode.name()),
        format!("{:.0}", m.wrk.requests_per_sec),
        versus,
        millis(m.wrk.p50),
        millis(m.wrk.p99),
        m.wrk.errors.to_string(),
        format!("{cpu_per_request:.0} us"),
        agent_cpu,
        agent_rss,
    ]
}

pub fn print_traced_work(outcomes: &[Outcome]) {
    let traced: Vec<(String, &String)> =
        outcomes.iter().filter_map(|o| Some((o.label(), o.result.as_ref().ok()?.traced.as_ref()?))).collect();
    if traced.is_empty() {
        return;
    }
    println!("\n== what the tracers recorded (service's whole life: readiness probe, warm-up, measured window) ==");
    for (label, text) in traced {
        println!("{label:<14} {text}");
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
