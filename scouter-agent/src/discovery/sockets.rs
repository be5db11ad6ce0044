//! Local addresses of a process's sockets, from /proc (the kernel events carry only the
//! peer). Used for the listening socket behind each accepted connection: listeners live long,
//! so the lookup is done once per listener and cached by the caller.

use std::fs;

/// The local port of socket descriptor `fd` in `pid`, if it is a TCP socket.
pub fn local_port(pid: u32, fd: u32) -> Option<u16> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode = socket_inode(&link.to_string_lossy())?;
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        port_of_inode(&text, inode)
    })
}

/// The TCP ports `pid` listens on (for process rules that name a port).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let inodes: Vec<u64> = fds
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| socket_inode(&link.to_string_lossy()))
        .collect();
    let mut ports: Vec<u16> = ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| listeners(&text))
        .filter(|(inode, _)| inodes.contains(inode))
        .map(|(_, port)| port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// (inode, local port) of the listening rows of a /proc/net/tcp table.
fn listeners(table: &str) -> Vec<(u64, u16)> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let columns: Vec<&str> = row.split_whitespace().collect();
            if columns.get(3) != Some(&LISTEN) {
                return None;
            }
            let (_, port) = columns.get(1)?.rsplit_once(':')?;
            Some((columns.get(9)?.parse().ok()?, u16::from_str_radix(port, 16).ok()?))
        })
        .collect()
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Finds `inode` in a /proc/net/tcp table; returns the local port of its row.
fn port_of_inode(table: &str, inode: u64) -> Option<u16> {
    table.lines().skip(1).find_map(|row| {
        let columns: Vec<&str> = row.split_whitespace().collect();
        let row_inode: u64 = columns.get(9)?.parse().ok()?;
        if row_inode != inode {
            return None;
        }
        let (_, port) = columns.get(1)?.rsplit_once(':')?;
        u16::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tables() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(port_of_inode(table, 31337), Some(8000));
        assert_eq!(port_of_inode(table, 1), None);
        assert_eq!(socket_inode("socket:[31337]"), Some(31337));
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn finds_a_real_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        use std::os::fd::AsRawFd;
        assert_eq!(local_port(std::process::id(), listener.as_raw_fd() as u32), Some(port));
        assert!(listening_ports(std::process::id()).contains(&port));
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let connected = client.local_addr().unwrap().port();
        assert!(!listening_ports(std::process::id()).contains(&connected), "connected, not listening");
    }
}
