//! Running external programs. Three shapes cover every task:
//! - [`run`]: inherited stdio, so the user sees cargo, rustup, apt and pip as they work
//!   ([`run_with_input`] feeds its standard input, e.g. cpio's list of files);
//! - [`output`]: stdout captured for parsing, stderr still shown so failures explain themselves;
//! - [`probe`]: silent, for "is this already there?" checks whose failure just means "no".
//!
//! Errors name the full command line, so a failed step says exactly what to run by hand.

use std::ffi::OsStr;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// Runs `cmd` to completion with the caller's stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("+ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Like [`run`], with `input` as the standard input.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<()> {
    println!("+ {}", describe(cmd));
    let mut child = cmd.stdin(Stdio::piped()).spawn().with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    let mut stdin = child.stdin.take().context("stdin is not piped")?;
    // A program that stops reading early fails on its own; its status says why.
    let written = stdin.write_all(input);
    drop(stdin);
    let status = child.wait().with_context(|| format!("cannot wait for `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    written.with_context(|| format!("cannot write to `{}`", describe(cmd)))
}

/// Runs `cmd` and returns its standard output as text; fails unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", describe(cmd), out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8 output", describe(cmd)))
}

/// Runs `cmd` silently; its stdout when it exits 0, `None` if it cannot start or fails.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}

/// `VAR=value program arg...`, with only the variables this tool set explicitly.
pub fn describe(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), value?.to_string_lossy())));
    let program = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(quote);
    envs.chain(program).collect::<Vec<_>>().join(" ")
}

/// Quotes an argument for display only when a shell would need it.
fn quote(arg: &OsStr) -> String {
    let arg = arg.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.into_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_env_program_and_quoted_args() {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "a b", "${Status}"]);
        assert_eq!(describe(&cmd), "DEBIAN_FRONTEND=noninteractive apt-get install -y 'a b' '${Status}'");
    }
}
