//! Booting a Debian kernel under QEMU on the matrix's initramfs.
//!
//! TCG only: nested KVM does not work on the project's machines (`/dev/kvm` exists, but guest
//! kernels fail with MSR errors), and TCG with `-cpu max` boots a cloud kernel to `/init` in
//! about 3 s. No devices but the serial port (`-nodefaults`): no disk, no network card (the
//! guest only uses `lo`), no display; the console is QEMU's standard output. The guest ends by
//! powering off; a panic (`panic=-1`) reboots, which `-no-reboot` turns into QEMU exiting too.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::cmd;

const QEMU: &str = "qemu-system-x86_64";
/// Memory for the guest: the initramfs unpacks into it (about 150 MiB), then the agent, its
/// maps and Python.
const MEMORY_MIB: &str = "2048";
/// TCG runs a thread per virtual CPU: two keep the agent's threads and Python's apart.
const CPUS: &str = "2";
/// `quiet` keeps the kernel's boot messages out of the way of the result lines.
const KERNEL_ARGS: &str = "console=ttyS0 panic=-1 quiet";

/// Fails with what to do when QEMU is not installed.
pub fn ensure_available() -> Result<()> {
    if cmd::probe(Command::new(QEMU).arg("--version")).is_none() {
        bail!("{QEMU} is missing or does not run: install Debian's qemu-system-x86 (`cargo xtask setup` does)");
    }
    Ok(())
}

/// The QEMU command line that boots `vmlinuz` on `initramfs`.
pub fn command(vmlinuz: &Path, initramfs: &Path) -> Command {
    let mut qemu = Command::new(QEMU);
    qemu.args(["-accel", "tcg", "-cpu", "max", "-m", MEMORY_MIB, "-smp", CPUS])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", KERNEL_ARGS])
        .args(["-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"]);
    qemu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boots_with_tcg_and_the_serial_console_only() {
        let line = cmd::describe(&command(Path::new("/k/vmlinuz"), Path::new("/i/initramfs.cpio.gz")));
        assert_eq!(
            line,
            "qemu-system-x86_64 -accel tcg -cpu max -m 2048 -smp 2 -kernel /k/vmlinuz -initrd /i/initramfs.cpio.gz \
             -append 'console=ttyS0 panic=-1 quiet' -nodefaults -display none -serial stdio -no-reboot"
        );
    }
}
