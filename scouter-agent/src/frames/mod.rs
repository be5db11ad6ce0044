//! Python frames: from what the kernel captured at an I/O event (code object addresses and
//! instruction positions) to code locations (qualified name, file, line), and which of them is
//! the application's.
//!
//! - [`layout`]: the version table (where each CPython keeps its fields), checked on 3.13+
//!   against the interpreter's own [`debug_offsets`];
//! - [`attach`]: checking a process's layout before its stacks are read, and finding the
//!   thread-state slot the kernel reads (`scouter-ebpf/src/programs/python_stack.rs`);
//! - [`memory`]: reads of the process's memory; [`code`]: code objects to locations, with
//!   [`lines`] (line tables) and [`source`] (qualified names on 3.8–3.10);
//! - [`objects`]: dict lookups, type names and function arguments read from the process;
//! - [`attribution`]: the application frames of a stack; [`ProcessStacks`] holds it together
//!   per process;
//! - function spans: [`selection`] (which functions the user selected) and [`calls`] (what a
//!   call's span says: module, names, argument values, exception type).

pub mod attach;
pub mod attribution;
pub mod calls;
pub mod code;
pub mod debug_offsets;
pub mod layout;
pub mod lines;
pub mod memory;
pub mod objects;
pub mod selection;
pub mod source;
mod stacks;

pub use stacks::ProcessStacks;
