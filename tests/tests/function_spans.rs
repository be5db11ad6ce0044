//! Function spans: `--function 'MODULE:QUALNAME_GLOB(arg,...)'` makes every call of a selected
//! Python function one INTERNAL span, child of the current span (the server span of the request
//! being handled, by a Flask thread or an asyncio task, or the span of the enclosing selected
//! function), timed from the call's entry to its exit, naming the function and its definition,
//! carrying the selected arguments, and marked ERROR when an exception leaves it. A coroutine or
//! generator is one span from its first entry to its final return, however often it resumes.
//!
//! Every interpreter the agent supports runs `function_service.py` (imported as the module
//! `function_service`): Flask (Werkzeug threads) and FastAPI (uvicorn's event loop) in one
//! process. Those services are started and warmed up (`/warm` calls every function thousands of
//! times, so 3.11+ specialises the calls) before the agent starts; a few more are started after
//! it. Each gets the same requests (some concurrently, so two requests' spans interleave), and
//! after the agent has stopped each must be restored: `interp->eval_frame` back to NULL on 3.11+
//! (it was set while traced), the recursion limit unchanged, deep recursion working, requests
//! served.
//!
//! Failures list every problem, then each failing service's spans (JSON, by start time), its
//! output, and the agent's log.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};

use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::{python_dir, require_ebpf_host};
use scouter_e2e::expect::Verdict;
use scouter_e2e::http::{HttpConnection, Request};
use scouter_e2e::python::{free_port, Interpreter, PythonServer, ServerProgram, DEBIAN_PYTHON};
use scouter_e2e::store::{Span, Store};

/// The `--function` selections: exact names, `*` (also across a dot: `Warehouse.restock`) and `?`.
const SELECTIONS: [&str; 9] = [
    "function_service:Orders.place(order_id,quantity)",
    "function_service:compute_*(order_id,quantity)",
    "function_service:fib(n)",
    "function_service:reserve(order_id)",
    "function_service:parse_quantity(text)",
    "function_service:describe_item(sku,price,express,coupon,options,label)",
    "function_service:stock_levels(count)",
    "function_service:fetch_inv?ntory(item)",
    "function_service:Ware*stock(count)",
];

/// Interpreters that also run a service started after the agent (found through exec).
const FRESH_VERSIONS: [&str; 3] = ["3.8.18", "3.11.7", "3.12.1"];

/// `sys.getrecursionlimit()` of a process nobody changed it in.
const DEFAULT_RECURSION_LIMIT: i64 = 1000;
/// Strings are captured up to this many characters.
const STRING_LIMIT: usize = 64;
/// What the agent appends to a string it cut (the Scouter SDK's marker).
const TRUNCATION_MARKER: &str = "...[truncated]";
/// The tail of `describe_item`'s 100-odd-character label argument (LABEL_TAIL in function_service.py).
const LABEL_TAIL_PART: &str = "abcdefghij";
/// How far a function span may stick out of its server span (timed from other kernel events).
const SERVER_SLACK_NANOS: u64 = 1_000_000;
/// How far a function span may stick out of its parent function's span: both are timed at entry
/// and exit of the calls, so only clock conversion rounding may separate them.
const FUNCTION_SLACK_NANOS: u64 = 50_000;

/// A traced function of function_service.py.
struct Def {
    qualname: &'static str,
    function_type: &'static str,
}

const PLACE: Def = Def { qualname: "Orders.place", function_type: "sync" };
const COMPUTE_TOTAL: Def = Def { qualname: "compute_total", function_type: "sync" };
const FIB: Def = Def { qualname: "fib", function_type: "sync" };
const RESERVE: Def = Def { qualname: "reserve", function_type: "sync" };
const PARSE_QUANTITY: Def = Def { qualname: "parse_quantity", function_type: "sync" };
const DESCRIBE_ITEM: Def = Def { qualname: "describe_item", function_type: "sync" };
const STOCK_LEVELS: Def = Def { qualname: "stock_levels", function_type: "generator" };
const FETCH_INVENTORY: Def = Def { qualname: "fetch_inventory", function_type: "async" };
const RESTOCK: Def = Def { qualname: "Warehouse.restock", function_type: "async_generator" };
const ALL_DEFS: [&Def; 9] = [
    &PLACE,
    &COMPUTE_TOTAL,
    &FIB,
    &RESERVE,
    &PARSE_QUANTITY,
    &DESCRIBE_ITEM,
    &STOCK_LEVELS,
    &FETCH_INVENTORY,
    &RESTOCK,
];

impl Def {
    fn name(&self) -> &'static str {
        self.qualname.rsplit('.').next().unwrap_or(self.qualname)
    }
}

/// Where function_service.py defines the traced functions (its `# SPAN-LINE <qualname>` markers,
/// which the program checks against `co_firstlineno` at startup).
struct Source {
    file: String,
    lines: HashMap<String, i64>,
}

impl Source {
    fn read() -> Result<Self> {
        let path = python_dir().join("function_service.py");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            if let Some((_, qualname)) = line.split_once("# SPAN-LINE ") {
                lines.insert(qualname.trim().to_owned(), index as i64 + 1);
            }
        }
        for def in ALL_DEFS {
            ensure!(lines.contains_key(def.qualname), "no `# SPAN-LINE {}` marker in {}", def.qualname, path.display());
        }
        let file = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
        Ok(Self { file: file.display().to_string(), lines })
    }
}

/// A request sent to a service while it was traced.
#[derive(Debug, Clone)]
enum Call {
    /// `Orders().place(id, 3)` → `compute_total(id, 3, note=None)` (and the unselected `unselected()`).
    Place(String),
    /// `fib(3)`.
    Fib(String),
    /// `reserve(id)` raises `function_service.OutOfStock` (answer 409).
    Reserve(String),
    /// `parse_quantity(text)`: "12" succeeds, "twelve" raises ValueError (answer 400).
    Quantity(&'static str),
    /// `describe_item(7, 2.5, True, None, {...}, <label>)`.
    Describe(String),
    /// `list(stock_levels(3))`.
    Levels(String),
    /// `await fetch_inventory(item)` on the asyncio server.
    Inventory(String),
    /// `async for` over `Warehouse().restock(3)` on the asyncio server.
    Restock(String),
    /// `descend(50)`, not selected: no function span.
    Deep,
}

impl Call {
    fn path(&self) -> String {
        match self {
            Self::Place(id) => format!("/place/{id}"),
            Self::Fib(tag) => format!("/fib/3/{tag}"),
            Self::Reserve(id) => format!("/reserve/{id}"),
            Self::Quantity(text) => format!("/quantity/{text}"),
            Self::Describe(tag) => format!("/describe/{tag}"),
            Self::Levels(tag) => format!("/levels/{tag}"),
            Self::Inventory(item) => format!("/inventory/{item}"),
            Self::Restock(tag) => format!("/restock/{tag}"),
            Self::Deep => "/deep/50".to_owned(),
        }
    }

    fn on_async_server(&self) -> bool {
        matches!(self, Self::Inventory(_) | Self::Restock(_))
    }

    fn status(&self) -> u16 {
        match self {
            Self::Reserve(_) => 409,
            Self::Quantity(text) if text.parse::<i64>().is_err() => 400,
            _ => 200,
        }
    }

    /// The qualified names of the function spans its trace must hold.
    fn expected_names(&self) -> Vec<&'static str> {
        let mut names = match self {
            Self::Place(_) => vec![PLACE.qualname, COMPUTE_TOTAL.qualname],
            Self::Fib(_) => vec![FIB.qualname; 5],
            Self::Reserve(_) => vec![RESERVE.qualname],
            Self::Quantity(_) => vec![PARSE_QUANTITY.qualname],
            Self::Describe(_) => vec![DESCRIBE_ITEM.qualname],
            Self::Levels(_) => vec![STOCK_LEVELS.qualname],
            Self::Inventory(_) => vec![FETCH_INVENTORY.qualname],
            Self::Restock(_) => vec![RESTOCK.qualname],
            Self::Deep => vec![],
        };
        names.sort_unstable();
        names
    }
}

/// One expected argument: its attribute value and its value in `scouter.tracing.input`.
struct Arg {
    name: &'static str,
    attribute: Value,
    input: Value,
    /// A string cut at [`STRING_LIMIT`] characters: the value ends in [`TRUNCATION_MARKER`].
    truncated: bool,
}

fn arg(name: &'static str, value: impl Into<Value>) -> Arg {
    let value = value.into();
    Arg { name, attribute: value.clone(), input: value, truncated: false }
}

impl Arg {
    /// Whether `actual` is this argument's `expected` value (its attribute or its input value).
    fn matches(&self, expected: &Value, actual: Option<&Value>) -> bool {
        match (actual, expected) {
            (Some(Value::String(actual)), Value::String(prefix)) if self.truncated => {
                actual.strip_prefix(prefix.as_str()) == Some(TRUNCATION_MARKER)
            }
            (Some(actual), expected) => actual == expected,
            (None, _) => false,
        }
    }

    fn describe(&self, expected: &Value) -> String {
        if self.truncated {
            format!("{expected} (the first {STRING_LIMIT} characters, then {TRUNCATION_MARKER:?})")
        } else {
            expected.to_string()
        }
    }
}

/// What one function span must say.
struct Want<'a> {
    def: &'a Def,
    parent: &'a Span,
    /// The parent is the request's server span (else an enclosing function's span).
    parent_is_server: bool,
    args: Vec<Arg>,
    /// The exception type that leaves the function (`exception.type`, `error.type`).
    error: Option<&'static str>,
    min_duration: Duration,
}

impl<'a> Want<'a> {
    fn new(def: &'a Def, parent: &'a Span, parent_is_server: bool, args: Vec<Arg>) -> Self {
        Self { def, parent, parent_is_server, args, error: None, min_duration: Duration::ZERO }
    }

    fn error(mut self, error: &'static str) -> Self {
        self.error = Some(error);
        self
    }

    fn lasting(mut self, millis: u64) -> Self {
        self.min_duration = Duration::from_millis(millis);
        self
    }
}

/// One `function_service.py` process under test.
struct Service {
    label: String,
    process: PythonServer,
    async_port: u16,
    /// 3.11+: the agent sets `interp->eval_frame` while tracing.
    has_eval_frame_hook: bool,
    /// False for Debian's python3.11, whose `_asyncio` is stripped of the task functions the
    /// agent probes: its coroutines are parented by thread only (a documented limit), so its
    /// asyncio requests are sent one at a time.
    tasks_followed: bool,
    /// `sys.getrecursionlimit()` before the agent touched the process.
    recursion_limit: i64,
    /// Requests answered as expected while traced.
    sent: Vec<Call>,
    /// Everything wrong with this service (reported with its spans as evidence).
    issues: Vec<String>,
}

impl Service {
    fn start(interpreter: &Interpreter, fresh: bool) -> Result<Self> {
        let async_port = free_port()?;
        let process = PythonServer::start(interpreter, ServerProgram::Function { async_port })?;
        let minor: u32 = interpreter.version.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
        let label = format!(
            "{} {} (pid {}, ports {}/{})",
            interpreter.label,
            if fresh { "started under the agent" } else { "warm" },
            process.pid(),
            process.port(),
            async_port
        );
        let mut service = Self {
            label,
            process,
            async_port,
            has_eval_frame_hook: minor >= 11,
            tasks_followed: interpreter.path != Path::new(DEBIAN_PYTHON),
            recursion_limit: DEFAULT_RECURSION_LIMIT,
            sent: Vec::new(),
            issues: Vec::new(),
        };
        if !fresh {
            service.get(false, "/warm", 200).context("warming up")?;
            let (frame, limit) = service.eval_frame().context("reading eval_frame before the agent")?;
            service.recursion_limit = limit;
            service.expect_eval_frame("before the agent started", &frame, false);
        }
        Ok(service)
    }

    fn port(&self, on_async_server: bool) -> u16 {
        if on_async_server {
            self.async_port
        } else {
            self.process.port()
        }
    }

    /// `GET path`, which must answer `status`; returns the body.
    fn get(&self, on_async_server: bool, path: &str, status: u16) -> Result<String> {
        let port = self.port(on_async_server);
        let response = HttpConnection::connect(port)?.send(&Request::get(path))?;
        let body = String::from_utf8_lossy(&response.body).into_owned();
        ensure!(
            response.status == status,
            "GET {path} on port {port} answered {} (expected {status}): {}",
            response.status,
            body.trim_end()
        );
        Ok(body)
    }

    fn send(&self, call: &Call) -> Result<String> {
        self.get(call.on_async_server(), &call.path(), call.status())
    }

    /// `/eval_frame`: the raw `interp->eval_frame` (an integer, or "n/a" before 3.11) and the
    /// recursion limit.
    fn eval_frame(&self) -> Result<(Value, i64)> {
        let body = self.get(false, "/eval_frame", 200)?;
        let value: Value = serde_json::from_str(&body).with_context(|| format!("/eval_frame answered {body:?}"))?;
        let limit = value["recursion_limit"].as_i64().with_context(|| format!("/eval_frame answered {body:?}"))?;
        Ok((value["eval_frame"].clone(), limit))
    }

    /// `interp->eval_frame` must be set (`hooked`) or NULL on 3.11+, and "n/a" before.
    fn expect_eval_frame(&mut self, when: &str, frame: &Value, hooked: bool) {
        let fine = match (self.has_eval_frame_hook, hooked) {
            (false, _) => frame == "n/a",
            (true, false) => frame.as_u64() == Some(0),
            (true, true) => frame.as_u64().is_some_and(|pointer| pointer != 0),
        };
        if !fine {
            let expected = match (self.has_eval_frame_hook, hooked) {
                (false, _) => "\"n/a\" (no eval_frame hook before 3.11)",
                (true, false) => "0 (NULL: the default evaluator)",
                (true, true) => "a non-zero pointer (the agent's hook)",
            };
            self.issues.push(format!("{when}: interp->eval_frame is {frame}, expected {expected}"));
        }
    }

    /// Sends the traced requests: places and inventory look-ups concurrently (two Flask threads
    /// and two asyncio tasks at once), then the rest one by one.
    fn send_traffic(&mut self, index: usize) {
        let mut concurrent = vec![Call::Place(format!("p{index}-0")), Call::Place(format!("p{index}-1"))];
        let inventory = [Call::Inventory(format!("i{index}-0")), Call::Inventory(format!("i{index}-1"))];
        let mut sequential = Vec::new();
        if self.tasks_followed {
            concurrent.extend(inventory);
        } else {
            sequential.extend(inventory);
        }
        let results: Vec<Result<String>> = thread::scope(|scope| {
            let handles: Vec<_> = concurrent.iter().map(|call| scope.spawn(|| self.send(call))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("request thread panicked"))).collect()
        });
        sequential.extend([
            Call::Fib(format!("f{index}")),
            Call::Reserve(format!("r{index}")),
            Call::Quantity("12"),
            Call::Quantity("twelve"),
            Call::Describe(format!("d{index}")),
            Call::Levels(format!("l{index}")),
            Call::Restock(format!("s{index}")),
            Call::Deep,
        ]);
        let mut outcomes: Vec<(Call, Result<String>)> = concurrent.into_iter().zip(results).collect();
        for call in sequential {
            let result = self.send(&call);
            outcomes.push((call, result));
        }
        for (call, result) in outcomes {
            match result {
                Ok(_) => self.sent.push(call),
                Err(error) => self.issues.push(format!("while traced: {error:#}")),
            }
        }
    }

    /// After the agent stopped: no hook left, the recursion limit as it was, deep recursion and
    /// requests on both servers working.
    fn check_restored(&mut self) {
        match self.eval_frame() {
            Ok((frame, limit)) => {
                self.expect_eval_frame("after the agent stopped", &frame, false);
                if limit != self.recursion_limit {
                    self.issues.push(format!(
                        "after the agent stopped: sys.getrecursionlimit() is {limit}, it was {}",
                        self.recursion_limit
                    ));
                }
            }
            Err(error) => self.issues.push(format!("after the agent stopped: {error:#}")),
        }
        let checks = [
            (false, "/deep/900", 200),
            (false, "/place/after-0", 200),
            (false, "/fib/3/after", 200),
            (false, "/reserve/after", 409),
            (true, "/inventory/after", 200),
            (false, "/place/after-1", 200),
        ];
        for (on_async_server, path, status) in checks {
            if let Err(error) = self.get(on_async_server, path, status) {
                self.issues.push(format!("after the agent stopped: {error:#}"));
            }
        }
    }

    /// Checks the spans of every request sent while traced, and that no other function span exists.
    fn check_spans(&mut self, source: &Source, spans: &[Span]) {
        let pid = i64::from(self.process.pid());
        let own: Vec<&Span> = spans.iter().filter(|span| span.pid() == Some(pid)).collect();
        let functions: Vec<&Span> = own.iter().copied().filter(|span| is_function_span(span)).collect();
        let mut accounted = HashSet::new();
        let mut checker = Checker { source, issues: Vec::new() };
        for call in &self.sent {
            checker.check_call(&own, &functions, call, &mut accounted);
        }
        for span in functions.iter().filter(|span| !accounted.contains(span.span_id.as_str())) {
            let selected = ALL_DEFS.iter().any(|def| def.qualname == span.name);
            let why = if selected {
                "belongs to the trace of no request sent while traced"
            } else {
                "is not a selected function"
            };
            checker.issues.push(format!("function span {:?} {why}\n      {}", span.name, span.json));
        }
        self.issues.extend(checker.issues);
    }

    /// Moves the issues into `verdict`, with this service's spans and output as evidence.
    fn report(self, verdict: &mut Verdict, spans: &[Span]) {
        if self.issues.is_empty() {
            return;
        }
        for issue in &self.issues {
            verdict.problem(format!("{}: {issue}", self.label));
        }
        let pid = i64::from(self.process.pid());
        let mut own: Vec<&Span> = spans.iter().filter(|span| span.pid() == Some(pid)).collect();
        own.sort_by_key(|span| span.start_time_unix_nano);
        let mut text = format!("{}: requests sent while traced:\n", self.label);
        for call in &self.sent {
            let port = self.port(call.on_async_server());
            text.push_str(&format!("    GET {} (port {port}) -> {}\n", call.path(), call.status()));
        }
        text.push_str(&format!("  its spans ({}), by start time:\n", own.len()));
        for span in own {
            text.push_str(&format!("    {}\n", span.json));
        }
        text.push_str(&format!("  its output:\n{}\n", indent(&self.process.output(), "    ")));
        verdict.add_context(text);
    }
}

/// Checks the spans of one service's requests.
struct Checker<'s> {
    source: &'s Source,
    issues: Vec<String>,
}

impl Checker<'_> {
    fn check_call<'a>(
        &mut self,
        own: &[&'a Span],
        functions: &[&'a Span],
        call: &Call,
        accounted: &mut HashSet<&'a str>,
    ) {
        let path = call.path();
        let servers: Vec<&Span> = own
            .iter()
            .copied()
            .filter(|s| s.kind == "SERVER" && s.attr_str("url.path") == Some(path.as_str()))
            .collect();
        let server = match servers.as_slice() {
            [server] => *server,
            [] => return self.issues.push(format!("GET {path}: no SERVER span")),
            many => return self.issues.push(format!("GET {path}: {} SERVER spans", many.len())),
        };
        let found: Vec<&Span> = functions.iter().copied().filter(|s| s.trace_id == server.trace_id).collect();
        accounted.extend(found.iter().map(|s| s.span_id.as_str()));
        let mut names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        let expected = call.expected_names();
        if names != expected {
            self.issues.push(format!(
                "GET {path}: its trace {} holds the function spans {names:?}, expected {expected:?}",
                server.trace_id
            ));
        }
        let what = format!("GET {path}");
        match call {
            Call::Place(id) => {
                let args = || vec![arg("order_id", id.as_str()), arg("quantity", 3)];
                let place = one(&found, &PLACE);
                if let Some(place) = place {
                    self.check(&what, place, Want::new(&PLACE, server, true, args()).lasting(50));
                }
                if let (Some(place), Some(total)) = (place, one(&found, &COMPUTE_TOTAL)) {
                    // `note` is an argument too, but not selected: it must not be captured.
                    self.check(&what, total, Want::new(&COMPUTE_TOTAL, place, false, args()).lasting(20));
                }
            }
            Call::Fib(_) => self.check_fib(&what, &found, server, true, 3),
            Call::Reserve(id) => {
                if let Some(span) = one(&found, &RESERVE) {
                    let want = Want::new(&RESERVE, server, true, vec![arg("order_id", id.as_str())]);
                    self.check(&what, span, want.error("function_service.OutOfStock"));
                }
            }
            Call::Quantity(text) => {
                if let Some(span) = one(&found, &PARSE_QUANTITY) {
                    let want = Want::new(&PARSE_QUANTITY, server, true, vec![arg("text", *text)]);
                    let want = if call.status() == 400 { want.error("ValueError") } else { want };
                    self.check(&what, span, want);
                }
            }
            Call::Describe(tag) => {
                if let Some(span) = one(&found, &DESCRIBE_ITEM) {
                    let label: String =
                        format!("label-{tag}-{}", LABEL_TAIL_PART.repeat(10)).chars().take(STRING_LIMIT).collect();
                    let args = vec![
                        arg("sku", 7),
                        arg("price", 2.5),
                        arg("express", true),
                        Arg { attribute: json!("None"), input: Value::Null, ..arg("coupon", Value::Null) },
                        arg("options", "<dict>"),
                        Arg { truncated: true, ..arg("label", label) },
                    ];
                    self.check(&what, span, Want::new(&DESCRIBE_ITEM, server, true, args));
                }
            }
            Call::Levels(_) => {
                if let Some(span) = one(&found, &STOCK_LEVELS) {
                    let want = Want::new(&STOCK_LEVELS, server, true, vec![arg("count", 3)]);
                    self.check(&what, span, want.lasting(30));
                }
            }
            Call::Inventory(item) => {
                if let Some(span) = one(&found, &FETCH_INVENTORY) {
                    let want = Want::new(&FETCH_INVENTORY, server, true, vec![arg("item", item.as_str())]);
                    self.check(&what, span, want.lasting(60));
                }
            }
            Call::Restock(_) => {
                if let Some(span) = one(&found, &RESTOCK) {
                    let want = Want::new(&RESTOCK, server, true, vec![arg("count", 3)]);
                    self.check(&what, span, want.lasting(30));
                }
            }
            Call::Deep => {}
        }
    }

    /// The `fib(n)` span under `parent`, and recursively its two children: `fib(n-1)`, then
    /// `fib(n-2)` after it.
    fn check_fib(&mut self, what: &str, found: &[&Span], parent: &Span, parent_is_server: bool, n: i64) {
        let matching: Vec<&Span> = found
            .iter()
            .copied()
            .filter(|s| {
                s.name == FIB.qualname
                    && s.parent_span_id.as_deref() == Some(parent.span_id.as_str())
                    && s.attr_int("function.argument.n") == Some(n)
            })
            .collect();
        let [span] = matching.as_slice() else {
            return self.issues.push(format!(
                "{what}: {} spans of fib({n}) with parent {} ({}), expected 1",
                matching.len(),
                parent.span_id,
                parent.name
            ));
        };
        self.check(what, span, Want::new(&FIB, parent, parent_is_server, vec![arg("n", n)]));
        let children: Vec<&Span> =
            found.iter().copied().filter(|s| s.parent_span_id.as_deref() == Some(span.span_id.as_str())).collect();
        let expected_children = if n >= 2 { 2 } else { 0 };
        if children.len() != expected_children {
            self.issues.push(format!(
                "{what}: fib({n}) (spanId {}) has {} child span(s), expected {expected_children}",
                span.span_id,
                children.len()
            ));
        }
        if n >= 2 {
            self.check_fib(what, found, span, false, n - 1);
            self.check_fib(what, found, span, false, n - 2);
            let child = |k: i64| children.iter().find(|s| s.attr_int("function.argument.n") == Some(k));
            if let (Some(first), Some(second)) = (child(n - 1), child(n - 2)) {
                if first.end_time_unix_nano > second.start_time_unix_nano + FUNCTION_SLACK_NANOS {
                    self.issues.push(format!(
                        "{what}: fib({}) ends at {}, after fib({}) (called after it returned) starts at {}",
                        n - 1,
                        first.end_time_unix_nano,
                        n - 2,
                        second.start_time_unix_nano
                    ));
                }
            }
        }
    }

    /// Everything `want` says about `span`, as one problem listing every mismatch.
    fn check(&mut self, what: &str, span: &Span, want: Want) {
        let def = want.def;
        let mut wrong = Vec::new();
        if span.kind != "INTERNAL" {
            wrong.push(format!("kind {:?}, expected \"INTERNAL\"", span.kind));
        }
        if span.name != def.qualname {
            wrong.push(format!("name {:?}, expected {:?}", span.name, def.qualname));
        }
        if span.trace_id != want.parent.trace_id {
            wrong.push(format!("traceId {}, expected the parent's {}", span.trace_id, want.parent.trace_id));
        }
        if span.parent_span_id.as_deref() != Some(want.parent.span_id.as_str()) {
            wrong.push(format!(
                "parentSpanId {:?}, expected {} ({} span {:?})",
                span.parent_span_id, want.parent.span_id, want.parent.kind, want.parent.name
            ));
        }
        let line = self.source.lines.get(def.qualname).copied().unwrap_or_default();
        let attributes = [
            ("code.function.name", json!(def.qualname)),
            ("code.file.path", json!(self.source.file)),
            ("code.line.number", json!(line)),
            ("function.module", json!("function_service")),
            ("function.qualname", json!(def.qualname)),
            ("function.name", json!(def.name())),
            ("function.type", json!(def.function_type)),
        ];
        for (key, expected) in &attributes {
            expect_attribute(&mut wrong, span, key, expected);
        }
        for arg in &want.args {
            let key = format!("function.argument.{}", arg.name);
            if !arg.matches(&arg.attribute, span.attr(&key)) {
                wrong.push(format!(
                    "attribute {key} is {}, expected {}",
                    shown(span.attr(&key)),
                    arg.describe(&arg.attribute)
                ));
            }
        }
        let selected: HashSet<String> = want.args.iter().map(|a| format!("function.argument.{}", a.name)).collect();
        for key in span.attributes.keys().filter(|k| k.starts_with("function.argument.") && !selected.contains(*k)) {
            wrong.push(format!("attribute {key} captured, but that argument was not selected"));
        }
        let input: Map<String, Value> = want.args.iter().map(|a| (a.name.to_owned(), a.input.clone())).collect();
        match span.attr_str("scouter.tracing.input").map(serde_json::from_str::<Value>) {
            Some(Ok(Value::Object(actual)))
                if actual.len() == want.args.len()
                    && want.args.iter().all(|a| a.matches(&a.input, actual.get(a.name))) => {}
            Some(Ok(value)) => wrong.push(format!(
                "scouter.tracing.input is {value}, expected {}{}",
                Value::Object(input),
                if want.args.iter().any(|a| a.truncated) { " (long strings cut and marked)" } else { "" }
            )),
            Some(Err(error)) => wrong.push(format!("scouter.tracing.input is not JSON: {error}")),
            None => wrong.push(format!(
                "scouter.tracing.input is {}, expected the JSON string {}",
                shown(span.attr("scouter.tracing.input")),
                Value::Object(input)
            )),
        }
        match want.error {
            Some(error) => {
                if span.status.code != "ERROR" || span.status.message.is_empty() {
                    wrong.push(format!(
                        "status {:?} with message {:?}, expected \"ERROR\" with a message ({error} left the function)",
                        span.status.code, span.status.message
                    ));
                }
                expect_attribute(&mut wrong, span, "exception.type", &json!(error));
                expect_attribute(&mut wrong, span, "error.type", &json!(error));
            }
            None => {
                if span.status.code == "ERROR" {
                    wrong.push(format!("status ERROR ({:?}), but the function returned", span.status.message));
                }
                for key in ["exception.type", "error.type"] {
                    if let Some(value) = span.attr(key) {
                        wrong.push(format!("attribute {key} is {value}, but the function returned"));
                    }
                }
            }
        }
        let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
        let duration = end.saturating_sub(start);
        if start > end || duration < want.min_duration.as_nanos() as u64 {
            wrong.push(format!(
                "lasts {} ns ([{start}, {end}]), expected at least {:?} (the time the function sleeps)",
                duration as i128 * if start > end { -1 } else { 1 },
                want.min_duration
            ));
        }
        let slack = if want.parent_is_server { SERVER_SLACK_NANOS } else { FUNCTION_SLACK_NANOS };
        let (parent_start, parent_end) = (want.parent.start_time_unix_nano, want.parent.end_time_unix_nano);
        if start + slack < parent_start || end > parent_end + slack {
            wrong.push(format!(
                "[{start}, {end}] is not within its parent's [{parent_start}, {parent_end}] (± {slack} ns)"
            ));
        }
        if !wrong.is_empty() {
            self.issues.push(format!(
                "{what}: span {} (spanId {}): {}\n      {}",
                def.qualname,
                span.span_id,
                wrong.join("; "),
                span.json
            ));
        }
    }
}

/// The one span of `def` among `found` (a wrong count is reported by the caller).
fn one<'a>(found: &[&'a Span], def: &Def) -> Option<&'a Span> {
    match found.iter().filter(|s| s.name == def.qualname).collect::<Vec<_>>().as_slice() {
        [span] => Some(**span),
        _ => None,
    }
}

fn expect_attribute(wrong: &mut Vec<String>, span: &Span, key: &str, expected: &Value) {
    if span.attr(key) != Some(expected) {
        wrong.push(format!("attribute {key} is {}, expected {expected}", shown(span.attr(key))));
    }
}

fn shown(value: Option<&Value>) -> String {
    value.map_or("missing".to_owned(), Value::to_string)
}

/// A span made for a Python function (by kind, or by its function attributes if the kind is wrong).
fn is_function_span(span: &Span) -> bool {
    span.kind == "INTERNAL" || span.attr("function.qualname").is_some() || span.attr("function.type").is_some()
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|line| format!("{prefix}{line}")).collect::<Vec<_>>().join("\n")
}

/// Starts one service per interpreter, all at once (each takes a second or two to import Flask
/// and FastAPI).
fn start_services(interpreters: &[Interpreter], fresh: bool) -> Result<Vec<Service>> {
    thread::scope(|scope| {
        let handles: Vec<_> =
            interpreters.iter().map(|interpreter| scope.spawn(move || Service::start(interpreter, fresh))).collect();
        handles
            .into_iter()
            .zip(interpreters)
            .map(|(handle, interpreter)| {
                let started = handle.join().unwrap_or_else(|_| bail!("the starting thread panicked"));
                started.with_context(|| format!("starting function_service.py under {}", interpreter.label))
            })
            .collect()
    })
}

#[test]
fn selected_functions_become_spans_on_every_interpreter_and_the_process_is_restored() -> Result<()> {
    require_ebpf_host()?;
    let source = Source::read()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();

    let mut services = start_services(&Interpreter::every()?, false)?;
    let arguments: Vec<&str> = SELECTIONS.iter().flat_map(|selection| ["--function", selection]).collect();
    let mut agent = Agent::start_with_args(&store, &arguments)?;
    let fresh = FRESH_VERSIONS.iter().map(|version| Interpreter::pyenv(version)).collect::<Result<Vec<_>>>()?;
    services.extend(start_services(&fresh, true)?);

    for service in &mut services {
        let pid = service.process.pid();
        if let Err(error) = agent.wait_tracking(pid) {
            service.issues.push(format!("{error:#}"));
        }
        if let Err(error) = agent.wait_tracing_functions(pid) {
            service.issues.push(format!("{error:#}"));
        }
    }
    for (index, service) in services.iter_mut().enumerate() {
        match service.eval_frame() {
            Ok((frame, _)) => service.expect_eval_frame("while traced", &frame, true),
            Err(error) => service.issues.push(format!("while traced: {error:#}")),
        }
        service.send_traffic(index);
    }

    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    for service in &mut services {
        service.check_restored();
    }

    let Some(spans) = verdict.step("reading the store", store.spans()) else {
        for service in services {
            service.report(&mut verdict, &[]);
        }
        return verdict.finish(&log_context("agent", &log));
    };
    let pids: HashSet<i64> = services.iter().map(|service| i64::from(service.process.pid())).collect();
    let strays =
        spans.iter().filter(|span| is_function_span(span) && !span.pid().is_some_and(|pid| pids.contains(&pid)));
    for span in strays {
        verdict.problem(format!("function span {:?} attributed to no service:\n      {}", span.name, span.json));
    }
    for mut service in services {
        service.check_spans(&source, &spans);
        service.report(&mut verdict, &spans);
    }
    verdict.finish(&log_context("agent", &log))
}
