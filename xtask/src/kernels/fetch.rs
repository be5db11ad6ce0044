//! Debian's kernels, fetched into `<tools>/kernels/<package>_<version>/` and nothing installed.
//!
//! A kernel line ([`Line`]) is named by a metapackage of this machine's package sources
//! (`linux-image-cloud-amd64` for 6.1, `linux-image-6.12-cloud-amd64` for 6.12 from
//! bookworm-security); its candidate depends on one concrete image package, whose candidate
//! version names the cache directory. Both come from `apt-cache show --no-all-versions`,
//! which is local and fast, so resolving runs every time and a new kernel upload is picked up
//! by the next run. If the lists do not know the metapackage, or the mirror no longer has the
//! version they name, `apt-get update` runs and everything is tried once more.
//!
//! Fetching is `apt-get download` (root, but no sandbox user: the cache is root's) and
//! `dpkg-deb -x` into a scratch directory; only `boot/vmlinuz-*` (and `boot/config-*`, handy to
//! check what a kernel has) are kept, moved into place last, so a cache directory with a
//! `vmlinuz` is always complete. Older versions of the same line are removed then.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// A line of Debian kernels.
pub struct Line {
    /// What `--kernel` calls it.
    pub name: &'static str,
    /// The metapackage that points at the line's newest image.
    pub metapackage: &'static str,
    /// How the concrete image packages of the line begin.
    pub prefix: &'static str,
}

/// A fetched kernel.
pub struct Kernel {
    pub package: String,
    pub version: String,
    /// The kernel release, from the image's file name (`uname -r` in the guest).
    pub release: String,
    pub vmlinuz: PathBuf,
}

impl Kernel {
    /// How the report names it.
    pub fn label(&self) -> String {
        format!("{} (Debian {})", self.release, self.version)
    }
}

/// Resolves the line's newest image and fetches it into `cache` unless it is there already;
/// with fresh package lists a second time if that fails.
pub fn fetch(cache: &Path, line: &Line) -> Result<Kernel> {
    fetch_once(cache, line).or_else(|error| {
        // The lists may lack the line, or name a version the mirror has dropped since.
        println!("{error:#}\nupdating the package lists and trying again");
        cmd::run(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").arg("update"))?;
        fetch_once(cache, line)
    })
}

fn fetch_once(cache: &Path, line: &Line) -> Result<Kernel> {
    let (package, version) = resolve(line)?;
    let dir = cache.join(format!("{package}_{}", version.replace(':', "%3a")));
    let kernel = match cached(&dir, &package, &version)? {
        Some(kernel) => {
            println!("ok: {package} {version} (already in {})", dir.display());
            kernel
        }
        None => download(cache, &dir, &package, &version)?,
    };
    prune_older(cache, line, &dir);
    Ok(kernel)
}

/// The concrete image package of `line` and its candidate version.
fn resolve(line: &Line) -> Result<(String, String)> {
    let meta = apt_cache_show(line.metapackage)?;
    let depends = field(&meta, "Depends").with_context(|| format!("{} has no Depends field", line.metapackage))?;
    let package = image_dependency(depends, line.prefix).with_context(|| {
        format!("{} depends on no {}*-cloud-amd64 package (Depends: {depends})", line.metapackage, line.prefix)
    })?;
    let version = field(&apt_cache_show(&package)?, "Version")
        .with_context(|| format!("apt-cache shows no Version for {package}"))?
        .to_owned();
    Ok((package, version))
}

/// `apt-cache show` of the candidate version only.
fn apt_cache_show(package: &str) -> Result<String> {
    let out = cmd::output(Command::new("apt-cache").args(["show", "--no-all-versions", package]))
        .with_context(|| format!("the package lists do not know {package}"))?;
    if out.trim().is_empty() {
        bail!("the package lists do not know {package}");
    }
    Ok(out)
}

/// A field of the first record of `apt-cache show` output (single-line fields only).
fn field<'a>(record: &'a str, name: &str) -> Option<&'a str> {
    record
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The dependency `prefix...-cloud-amd64` in a Depends field: `a (>= 1), b | c, ...`.
fn image_dependency(depends: &str, prefix: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .filter_map(|alternative| alternative.split_whitespace().next())
        .find(|name| name.starts_with(prefix) && name.ends_with("-cloud-amd64"))
        .map(str::to_owned)
}

/// The kernel in `dir`, if a complete fetch left it there.
fn cached(dir: &Path, package: &str, version: &str) -> Result<Option<Kernel>> {
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        return Ok(None);
    }
    let release = fs::read_to_string(dir.join("release"))
        .with_context(|| format!("cannot read {}", dir.join("release").display()))?;
    Ok(Some(Kernel {
        package: package.to_owned(),
        version: version.to_owned(),
        release: release.trim().to_owned(),
        vmlinuz,
    }))
}

/// Downloads and unpacks the image into a scratch directory, then moves what is kept to `dir`.
fn download(cache: &Path, dir: &Path, package: &str, version: &str) -> Result<Kernel> {
    let scratch = cache.join(format!(".fetch-{package}"));
    remove_dir_if_present(&scratch)?;
    fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    cmd::run(
        Command::new("apt-get")
            .current_dir(&scratch)
            // Root downloads into root's directory: no need to drop to apt's sandbox user.
            .args(["-o", "APT::Sandbox::User=root", "download"])
            .arg(format!("{package}={version}")),
    )
    .with_context(|| format!("cannot download {package} {version}"))?;
    let deb = only_file(&scratch, |name| name.ends_with(".deb"))?;
    let unpacked = scratch.join("unpacked");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let boot = unpacked.join("boot");
    let image = only_file(&boot, |name| name.starts_with("vmlinuz-"))?;
    let release =
        image.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("vmlinuz-")).map(str::to_owned);
    let release = release.with_context(|| format!("cannot tell the kernel release from {}", image.display()))?;

    let staged = scratch.join("kept");
    fs::create_dir_all(&staged).with_context(|| format!("cannot create {}", staged.display()))?;
    move_file(&image, &staged.join("vmlinuz"))?;
    let config = boot.join(format!("config-{release}"));
    if config.is_file() {
        move_file(&config, &staged.join("config"))?;
    }
    fs::write(staged.join("release"), format!("{release}\n")).context("cannot write the kernel release")?;
    remove_dir_if_present(dir)?;
    fs::rename(&staged, dir).with_context(|| format!("cannot move {} to {}", staged.display(), dir.display()))?;
    remove_dir_if_present(&scratch)?;
    println!("fetched: {package} {version} into {}", dir.display());
    Ok(Kernel { package: package.to_owned(), version: version.to_owned(), release, vmlinuz: dir.join("vmlinuz") })
}

/// The one file in `dir` whose name `wanted` accepts.
fn only_file(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_name().to_str().is_some_and(&wanted) && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("{} has no such file", dir.display()),
        many => bail!("{} has {} candidates: {many:?}", dir.display(), many.len()),
    }
}

fn move_file(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Removes the cached kernels of `line` other than `keep` (a failure only costs disk space).
fn prune_older(cache: &Path, line: &Line, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let of_line = entry.file_name().to_str().is_some_and(|name| name.starts_with(line.prefix));
        if of_line && path != keep && path.is_dir() {
            println!("removing an older kernel of the {} line: {}", line.name, path.display());
            if let Err(error) = fs::remove_dir_all(&path) {
                eprintln!("warning: cannot remove {}: {error}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Installed-Size: 13
Provides: linux-latest-modules-6.1.0-57-cloud-amd64, virtualbox-guest-modules, wireguard-modules (= 1.0.0)
Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)
Description-en: Linux for x86-64 cloud (meta-package)
 This package depends on the latest Linux kernel and modules for use on
 cloud platforms including Amazon EC2, Microsoft Azure, and GCE.

Package: linux-image-cloud-amd64
Version: 6.1.176-1
Depends: linux-image-6.1.0-44-cloud-amd64 (= 6.1.176-1)
";

    #[test]
    fn reads_fields_of_the_first_record() {
        assert_eq!(field(META, "Version"), Some("6.1.192-3"));
        assert_eq!(field(META, "Depends"), Some("linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)"));
        assert_eq!(field(META, "Pre-Depends"), None);
        // `Description-en:` is not `Description:`.
        assert_eq!(field(META, "Description"), None);
    }

    #[test]
    fn finds_the_image_a_metapackage_points_at() {
        let depends = field(META, "Depends").unwrap();
        assert_eq!(image_dependency(depends, "linux-image-6.1.").as_deref(), Some("linux-image-6.1.0-57-cloud-amd64"));
        // Not a package of another line.
        assert_eq!(image_dependency(depends, "linux-image-6.12."), None);
        let twelve =
            "linux-image-6.12.118+deb12-cloud-amd64 (= 6.12.118-1~deb12u1), initramfs-tools | linux-initramfs-tool";
        assert_eq!(
            image_dependency(twelve, "linux-image-6.12.").as_deref(),
            Some("linux-image-6.12.118+deb12-cloud-amd64")
        );
        let unsigned = "linux-image-6.12.118+deb12-cloud-amd64-unsigned (= 6.12.118-1~deb12u1)";
        assert_eq!(image_dependency(unsigned, "linux-image-6.12."), None);
    }
}
