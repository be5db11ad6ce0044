//! Which frame of a captured stack is "the application": the code a span is attributed to.
//!
//! A stack at a client request's write runs from the thread's bootstrap through the server
//! framework, the application's handler and its helpers, into the HTTP client library. Library
//! frames are the standard library and the HTTP plumbing in site-packages (clients, servers,
//! frameworks, their async runtimes). From the innermost frame outwards:
//! - the first application frame is what made the call (the client span's `code.*`);
//! - the outermost frame of that run of application frames, before library frames resume, is
//!   the handler the framework called (the server span's `code.*`).

use super::code::CodeLocation;

/// Top-level packages whose frames are plumbing between the application and the network.
const PLUMBING: &[&str] = &[
    "aiohttp",
    "aiosignal",
    "anyio",
    "asgiref",
    "certifi",
    "charset_normalizer",
    "click",
    "fastapi",
    "flask",
    "frozenlist",
    "gevent",
    "gunicorn",
    "h11",
    "h2",
    "httpcore",
    "httptools",
    "httpx",
    "hypercorn",
    "idna",
    "multidict",
    "opentelemetry",
    "requests",
    "scouter",
    "sniffio",
    "starlette",
    "urllib3",
    "uvicorn",
    "uvloop",
    "waitress",
    "werkzeug",
    "wsgiref",
    "yarl",
];

/// A stack's application frames.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// The innermost application frame.
    pub caller: Option<CodeLocation>,
    /// The outermost frame of the innermost run of application frames.
    pub handler: Option<CodeLocation>,
}

/// Attributes a stack given innermost first.
pub fn attribute(frames: &[CodeLocation]) -> Attribution {
    let mut application = frames.iter().skip_while(|frame| is_library(&frame.file));
    let Some(caller) = application.next() else { return Attribution::default() };
    let handler = application.take_while(|frame| !is_library(&frame.file)).last().unwrap_or(caller);
    Attribution { caller: Some(caller.clone()), handler: Some(handler.clone()) }
}

/// Whether frames of `file` are library code rather than the application's.
pub fn is_library(file: &str) -> bool {
    if file.starts_with('<') {
        // <frozen importlib._bootstrap>, <string>: the interpreter's own or generated code.
        return true;
    }
    if let Some(package) = installed_package(file) {
        return PLUMBING.contains(&package);
    }
    is_standard_library(file)
}

/// The top-level package of a file installed in site-packages or dist-packages.
fn installed_package(file: &str) -> Option<&str> {
    let (_, inside) = file.split_once("/site-packages/").or_else(|| file.split_once("/dist-packages/"))?;
    let first = inside.split('/').next()?;
    Some(first.strip_suffix(".py").unwrap_or(first))
}

/// `.../lib/python3.X/...` outside site-packages: the standard library of some interpreter.
fn is_standard_library(file: &str) -> bool {
    file.split('/').collect::<Vec<_>>().windows(2).any(|pair| {
        pair[0] == "lib" && pair[1].strip_prefix("python3.").is_some_and(|minor| minor.parse::<u8>().is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(function: &str, file: &str) -> CodeLocation {
        CodeLocation { function: function.into(), file: file.into(), line: Some(1) }
    }

    #[test]
    fn library_files() {
        assert!(is_library("/usr/lib/python3.11/http/client.py"));
        assert!(is_library("/root/.pyenv/versions/3.12.1/lib/python3.12/asyncio/events.py"));
        assert!(is_library("/venv/lib/python3.12/site-packages/requests/api.py"));
        assert!(is_library("/usr/lib/python3/dist-packages/urllib3/connectionpool.py"));
        assert!(is_library("<frozen importlib._bootstrap>"));
        assert!(!is_library("/srv/shop/orders.py"));
        assert!(!is_library("/venv/lib/python3.12/site-packages/shop/orders.py"), "an installed application");
        assert!(!is_library("/home/me/lib/python3.12-notes/app.py"));
    }

    #[test]
    fn caller_and_handler_of_a_flask_view_calling_through_a_helper() {
        let stack = [
            at("HTTPConnection.request", "/usr/lib/python3.11/http/client.py"),
            at("Session.request", "/venv/lib/python3.11/site-packages/requests/sessions.py"),
            at("fetch_price", "/srv/shop/prices.py"),
            at("checkout", "/srv/shop/views.py"),
            at("Flask.dispatch_request", "/venv/lib/python3.11/site-packages/flask/app.py"),
            at("Thread.run", "/usr/lib/python3.11/threading.py"),
            at("main", "/srv/shop/run.py"),
        ];
        let attribution = attribute(&stack);
        assert_eq!(attribution.caller.unwrap().function, "fetch_price");
        assert_eq!(attribution.handler.unwrap().function, "checkout");
    }

    #[test]
    fn a_stack_of_library_frames_only_has_no_attribution() {
        let stack = [at("urlopen", "/usr/lib/python3.11/urllib/request.py")];
        assert_eq!(attribute(&stack), Attribution::default());
    }
}
