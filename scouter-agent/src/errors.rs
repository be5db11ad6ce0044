//! Error text for logs and counters.

/// The error and its causes on one line (aya and reqwest keep the OS error as a source:
/// "error sending request: connection refused").
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
