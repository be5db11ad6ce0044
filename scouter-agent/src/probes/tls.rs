//! Uprobes on libssl (see `scouter-ebpf/src/programs/tls.rs`): attached once per library file,
//! for every process that maps it; the kernel side ignores untracked processes. Each uprobe
//! hit costs about a microsecond (a uretprobe as much again), which every OpenSSL user on the
//! host pays on its TLS reads and writes, traced or not.
//!
//! `SSL_read` and `SSL_write` (and their returns) are required; without them the library is
//! left alone, with a warning, and its processes' HTTPS is not traced. `SSL_read_ex` and
//! `SSL_write_ex` (OpenSSL 1.1.1+, what CPython 3.10+ calls) and `SSL_do_handshake` are
//! attached when present. Returns are attached before entries, so an entry never lacks its
//! return.

use std::path::Path;

use aya::programs::uprobe::UProbeLink;
use aya::Ebpf;

use super::uprobes::{attach, InstrumentedFiles};
use super::ProbeError;

/// The return program, shared by every probed function.
const RETURN: &str = "ssl_return";
/// (entry program, symbol, required).
const FUNCTIONS: [(&str, &str, bool); 5] = [
    ("ssl_write", "SSL_write", true),
    ("ssl_read", "SSL_read", true),
    ("ssl_write_ex", "SSL_write_ex", false),
    ("ssl_read_ex", "SSL_read_ex", false),
    ("ssl_do_handshake", "SSL_do_handshake", false),
];

/// Loads the programs; attaching waits for the first process of each library.
/// The feature's programs ([`super::Feature::Tls`]).
pub const PROGRAMS: [&str; 6] =
    [FUNCTIONS[0].0, FUNCTIONS[1].0, FUNCTIONS[2].0, FUNCTIONS[3].0, FUNCTIONS[4].0, RETURN];

/// Libraries already handled: whether their calls are traced.
#[derive(Default)]
pub struct TlsProbes {
    libraries: InstrumentedFiles,
}

impl TlsProbes {
    /// Attaches to `library` unless done before; returns whether its calls are traced.
    pub fn instrument(&mut self, ebpf: &mut Ebpf, library: &Path) -> bool {
        self.libraries.once(library, || match attach_all(ebpf, library) {
            Ok((links, optional_missing)) => {
                tracing::info!(library = %library.display(), ?optional_missing, "tracing HTTPS through libssl");
                Some(links)
            }
            Err(error) => {
                tracing::warn!(
                    library = %library.display(),
                    %error,
                    "HTTPS of the processes using this library is not traced"
                );
                None
            }
        })
    }

    pub fn take_links(&mut self) -> Vec<UProbeLink> {
        self.libraries.take_links()
    }
}

/// Attaches every function's probes; returns their links and the optional functions that are
/// missing. On a required function's failure, whatever was attached to this library is
/// detached again (its links are dropped).
fn attach_all(ebpf: &mut Ebpf, library: &Path) -> Result<(Vec<UProbeLink>, Vec<&'static str>), ProbeError> {
    let mut links = Vec::new();
    let mut missing = Vec::new();
    for (program, symbol, required) in FUNCTIONS {
        let attached =
            attach(ebpf, RETURN, symbol, library).and_then(|ret| Ok([ret, attach(ebpf, program, symbol, library)?]));
        match attached {
            Ok(pair) => links.extend(pair),
            Err(_) if !required => missing.push(symbol),
            Err(error) => return Err(error),
        }
    }
    Ok((links, missing))
}
