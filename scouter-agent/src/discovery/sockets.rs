//! A process's TCP sockets, from /proc (the kernel events carry only the peer): the local
//! port behind an accepted connection's listener (looked up once per listener and cached by
//! the caller), the ports a process listens on (for process rules), and the connections it
//! opened before the agent saw it (which must join the header-insertion sockhash).

use std::fs;

/// `st` of a /proc/net/tcp row.
const ESTABLISHED: &str = "01";
const LISTEN: &str = "0A";
/// The TCP tables of a process's network namespace.
const TABLES: [&str; 2] = ["tcp", "tcp6"];

/// One row of a /proc/net/tcp table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    local_port: u16,
    state: String,
    inode: u64,
}

/// The rows of a /proc/net/tcp (or tcp6) table.
fn rows(table: &str) -> Vec<Row> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let columns: Vec<&str> = row.split_whitespace().collect();
            let (_, port) = columns.get(1)?.rsplit_once(':')?;
            Some(Row {
                local_port: u16::from_str_radix(port, 16).ok()?,
                state: (*columns.get(3)?).to_owned(),
                inode: columns.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// Every row of the TCP tables `pid` sees.
fn tcp_rows(pid: u32) -> Vec<Row> {
    TABLES
        .iter()
        .filter_map(|table| fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| rows(&text))
        .collect()
}

/// `pid`'s socket descriptors: (descriptor, socket inode).
fn socket_fds(pid: u32) -> Vec<(u32, u64)> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    fds.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd = entry.file_name().to_str()?.parse().ok()?;
        let inode = socket_inode(&fs::read_link(entry.path()).ok()?.to_string_lossy())?;
        Some((fd, inode))
    })
    .collect()
}

/// The local port of socket descriptor `fd` in `pid`, if it is a TCP socket.
pub fn local_port(pid: u32, fd: u32) -> Option<u16> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode = socket_inode(&link.to_string_lossy())?;
    tcp_rows(pid).into_iter().find(|row| row.inode == inode).map(|row| row.local_port)
}

/// The TCP ports `pid` listens on (for process rules that name a port).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<u64> = socket_fds(pid).into_iter().map(|(_, inode)| inode).collect();
    let mut ports: Vec<u16> = tcp_rows(pid)
        .into_iter()
        .filter(|row| row.state == LISTEN && inodes.contains(&row.inode))
        .map(|row| row.local_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The descriptors of `pid`'s established TCP connections that it opened (their local port is
/// no listening port of its network namespace): the calling ends, such as a pool's warm
/// connections.
pub fn client_connections(pid: u32) -> Vec<u32> {
    let rows = tcp_rows(pid);
    let listening: Vec<u16> = rows.iter().filter(|row| row.state == LISTEN).map(|row| row.local_port).collect();
    let calling: Vec<u64> = rows
        .iter()
        .filter(|row| row.state == ESTABLISHED && !listening.contains(&row.local_port))
        .map(|row| row.inode)
        .collect();
    socket_fds(pid).into_iter().filter(|(_, inode)| calling.contains(inode)).map(|(fd, _)| fd).collect()
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tables() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(rows(table), vec![Row { local_port: 8000, state: LISTEN.to_owned(), inode: 31337 }]);
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
        let (accepted, _) = listener.accept().unwrap();
        let clients = client_connections(std::process::id());
        assert!(clients.contains(&(client.as_raw_fd() as u32)), "the connecting end: {clients:?}");
        assert!(!clients.contains(&(accepted.as_raw_fd() as u32)), "the accepted end serves: {clients:?}");
        assert!(!clients.contains(&(listener.as_raw_fd() as u32)));
    }
}
