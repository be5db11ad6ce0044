//! Python frames: from what the kernel captured at an I/O event (code object addresses and
//! instruction positions) to code locations (qualified name, file, line).

pub mod lines;
pub mod source;
