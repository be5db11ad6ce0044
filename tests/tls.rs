//! Throwaway TLS material for the HTTPS tests, made with the `openssl` command-line tool: a CA
//! and a server certificate for `127.0.0.1` and `localhost` signed by it, valid for two days, in
//! a temporary directory removed on drop.
//!
//! The server certificate carries the extensions strict verifiers insist on (Python 3.13 turns on
//! `VERIFY_X509_STRICT`): subject alternative names, key identifiers, and `serverAuth`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A CA certificate, and a server certificate and key signed by it.
pub struct TlsFiles {
    _dir: tempfile::TempDir,
    /// The CA certificate clients trust (PEM).
    pub ca: PathBuf,
    /// The server certificate (PEM), for 127.0.0.1 and localhost.
    pub cert: PathBuf,
    /// The server's private key (PEM, unencrypted).
    pub key: PathBuf,
}

const SERVER_EXTENSIONS: &str = "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
";

impl TlsFiles {
    /// Generates a fresh CA and server certificate.
    pub fn generate() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("scouter-e2e-tls-").tempdir().context("creating a temp dir")?;
        let path = |name: &str| dir.path().join(name);
        let (ca_key, ca, key, csr, cert, ext) =
            (path("ca.key"), path("ca.pem"), path("server.key"), path("server.csr"), path("server.pem"), path("ext"));
        std::fs::write(&ext, SERVER_EXTENSIONS).context("writing the extensions file")?;
        openssl(
            "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=scouter-e2e-ca \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
            &[("-keyout", &ca_key), ("-out", &ca)],
        )?;
        openssl("req -new -newkey rsa:2048 -nodes -subj /CN=127.0.0.1", &[("-keyout", &key), ("-out", &csr)])?;
        openssl(
            "x509 -req -CAcreateserial -days 2 -sha256",
            &[("-in", &csr), ("-CA", &ca), ("-CAkey", &ca_key), ("-extfile", &ext), ("-out", &cert)],
        )?;
        Ok(Self { _dir: dir, ca, cert, key })
    }
}

/// Runs `openssl` with the whitespace-separated `fixed` arguments, then each (option, file) pair;
/// fails with its output if it fails.
fn openssl(fixed: &str, files: &[(&str, &Path)]) -> Result<()> {
    let mut command = Command::new("openssl");
    command.args(fixed.split_whitespace());
    for (option, path) in files {
        command.arg(option).arg(path);
    }
    let output = command
        .output()
        .context("running `openssl` (the HTTPS tests need the openssl command-line tool: `cargo xtask setup`)")?;
    if !output.status.success() {
        bail!(
            "`openssl {fixed} ...` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_certificate_verifies_against_the_ca() {
        let files = TlsFiles::generate().unwrap();
        let output = Command::new("openssl")
            .args(["verify", "-verify_ip", "127.0.0.1", "-CAfile"])
            .arg(&files.ca)
            .arg(&files.cert)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
}
