//! Which local process is on the other end of a connection to one of the agent's receivers.
//!
//! The receivers (OTLP gRPC/HTTP, Scouter ingest) attribute spans sent by in-process SDKs to the
//! Python processes the agent traces. The SDK's resource cannot be trusted for that: it may lack
//! `process.pid`, and a pid reported from inside a container is not the host's. The connection
//! itself is evidence the kernel vouches for: a client on this host owns the other socket of it.
//!
//! The client's socket is the row of its network namespace's `/proc/<pid>/net/tcp` (or `tcp6`)
//! whose local address is the peer the agent sees and whose remote address is the agent's side;
//! the row's inode names the socket, and its owner is the process with a `socket:[<inode>]` link
//! in `/proc/<pid>/fd`. Only the caller's candidate pids are searched (the whole host would be
//! too costly per connection), and the tables are read once per network namespace.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// Where procfs is mounted: "/proc" in production, a temporary tree in tests.
#[derive(Clone, Debug)]
pub struct Procfs {
    root: PathBuf,
}

impl Procfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn host() -> Self {
        Self::new("/proc")
    }

    /// The pid among `candidates` owning the TCP socket connected from `peer` to `local`, or None.
    ///
    /// `local` may be the listener's address rather than the connection's: an unspecified IP
    /// (`0.0.0.0`, `::`) matches any address on that port. Candidates are tried in the order given;
    /// with no candidates the answer is None, since nothing beyond them is searched.
    pub fn owner_of_connection(&self, peer: SocketAddr, local: SocketAddr, candidates: &[u32]) -> Option<u32> {
        let wanted = Connection::new(peer, local);
        self.group_by_namespace(candidates).into_iter().find_map(|pids| {
            let inode = self.client_socket_inode(&pids, &wanted)?;
            pids.into_iter().find(|&pid| self.holds_socket(pid, inode))
        })
    }

    /// Candidates grouped by network namespace, keeping the caller's order of first appearance.
    fn group_by_namespace(&self, candidates: &[u32]) -> Vec<Vec<u32>> {
        let mut groups: Vec<Vec<u32>> = Vec::new();
        let mut index: HashMap<NetNamespace, usize> = HashMap::new();
        let mut seen = HashSet::new();
        for &pid in candidates.iter().filter(|&&pid| seen.insert(pid)) {
            let slot = *index.entry(self.net_namespace(pid)).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[slot].push(pid);
        }
        groups
    }

    fn net_namespace(&self, pid: u32) -> NetNamespace {
        match fs::read_link(self.pid_dir(pid).join("ns/net")) {
            Ok(target) => NetNamespace::Link(target),
            // Without the link, sharing a namespace cannot be shown, so the pid gets its own.
            Err(_) => NetNamespace::Unknown(pid),
        }
    }

    /// The inode of the client's socket in the namespace shared by `pids`. The tables come from
    /// the first pid that can still be read: any member shows the same namespace.
    fn client_socket_inode(&self, pids: &[u32], wanted: &Connection) -> Option<u64> {
        let tables = pids.iter().find_map(|&pid| self.tcp_tables(pid))?;
        tables.iter().flat_map(|table| table.lines()).filter_map(parse_tcp_line).find_map(|(local, remote, inode)| {
            // TIME_WAIT and other orphaned rows have no socket (inode 0) and so no owner.
            (inode != 0 && wanted.is_client_side(local, remote)).then_some(inode)
        })
    }

    /// `net/tcp` and `net/tcp6` of `pid`; either may be absent (IPv6 disabled), not both.
    fn tcp_tables(&self, pid: u32) -> Option<Vec<String>> {
        let net = self.pid_dir(pid).join("net");
        let tables: Vec<String> =
            ["tcp", "tcp6"].iter().filter_map(|name| fs::read_to_string(net.join(name)).ok()).collect();
        (!tables.is_empty()).then_some(tables)
    }

    /// Whether `pid`'s fd table holds the socket. The table is per process, so threads need no
    /// separate look.
    fn holds_socket(&self, pid: u32, inode: u64) -> bool {
        let Ok(entries) = fs::read_dir(self.pid_dir(pid).join("fd")) else { return false };
        let target = format!("socket:[{inode}]");
        entries
            .filter_map(Result::ok)
            .any(|entry| fs::read_link(entry.path()).is_ok_and(|link| link.as_os_str() == target.as_str()))
    }

    fn pid_dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum NetNamespace {
    /// The target of `/proc/<pid>/ns/net`, e.g. `net:[4026531840]`.
    Link(PathBuf),
    Unknown(u32),
}

/// A connection as the agent sees it, with addresses in canonical form so that an IPv4 client
/// seen through a dual-stack listener (`::ffff:a.b.c.d`) matches its IPv4 row, and vice versa.
/// Ports and IPs are compared without IPv6 scope or flow info, which the tables do not carry.
struct Connection {
    peer: (IpAddr, u16),
    local: (IpAddr, u16),
}

impl Connection {
    fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self { peer: endpoint(peer), local: endpoint(local) }
    }

    /// Whether a table row with these addresses is the client's end: its local side is our peer
    /// and its remote side is us.
    fn is_client_side(&self, row_local: SocketAddr, row_remote: SocketAddr) -> bool {
        let (remote_ip, remote_port) = endpoint(row_remote);
        let (local_ip, local_port) = self.local;
        endpoint(row_local) == self.peer
            && remote_port == local_port
            && (local_ip.is_unspecified() || remote_ip == local_ip)
    }
}

fn endpoint(address: SocketAddr) -> (IpAddr, u16) {
    (address.ip().to_canonical(), address.port())
}

/// One row of `/proc/<pid>/net/tcp{,6}` as (local address, remote address, socket inode); None
/// for the header and anything malformed.
fn parse_tcp_line(line: &str) -> Option<(SocketAddr, SocketAddr, u64)> {
    let mut columns = line.split_whitespace();
    let local = decode_socket_address(columns.nth(1)?)?;
    let remote = decode_socket_address(columns.next()?)?;
    // Skips st, tx_queue:rx_queue, tr:tm->when, retrnsmt, uid and timeout.
    let inode = columns.nth(6)?.parse().ok()?;
    Some((local, remote, inode))
}

/// `0100007F:1F90` → 127.0.0.1:8080; 32 hex digits before the colon for IPv6.
fn decode_socket_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let ip = match address.len() {
        8 => IpAddr::V4(decode_ipv4(address)?),
        32 => IpAddr::V6(decode_ipv6(address)?),
        _ => return None,
    };
    if port.len() != 4 || !is_hex(port) {
        return None;
    }
    // The kernel prints the port already converted to host order, unlike the address.
    Some(SocketAddr::new(ip, u16::from_str_radix(port, 16).ok()?))
}

fn decode_ipv4(hex: &str) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(network_order_word(hex)?))
}

/// IPv6 addresses are printed as four words, each the same way as an IPv4 address.
fn decode_ipv6(hex: &str) -> Option<Ipv6Addr> {
    let mut octets = [0u8; 16];
    for (word, chunk) in octets.chunks_exact_mut(4).enumerate() {
        chunk.copy_from_slice(&network_order_word(hex.get(word * 8..word * 8 + 8)?)?);
    }
    Some(Ipv6Addr::from(octets))
}

/// The kernel prints the network-order address word as a host integer (`%08X`), so its bytes in
/// host order are the address's bytes: `0100007F` is 127.0.0.1 on little-endian hosts.
fn network_order_word(hex: &str) -> Option<[u8; 4]> {
    if hex.len() != 8 || !is_hex(hex) {
        return None;
    }
    Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
}

/// `from_str_radix` alone would accept a leading sign.
fn is_hex(text: &str) -> bool {
    text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::symlink;
    use std::path::Path;

    // The hex literals below are in the byte order of little-endian hosts, as the agent's eBPF
    // target (bpfel) is.

    const TCP_HEADER: &str =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
    const TCP6_HEADER: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn parses_ipv4_rows() {
        let listener = "   0: 0100007F:10DD 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 31337 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_tcp_line(listener), Some((addr("127.0.0.1:4317"), addr("0.0.0.0:0"), 31337)));

        let established = "   1: 0100007F:B26E 0100007F:10DD 01 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(parse_tcp_line(established), Some((addr("127.0.0.1:45678"), addr("127.0.0.1:4317"), 12345)));

        let remote = "   2: 020200C0:AA28 507100CB:01BB 01 00000000:00000000 00:00000000 00000000     0        0 1900315 1 0000000052a0fab3 20 4 31 44 -1";
        assert_eq!(parse_tcp_line(remote), Some((addr("192.0.2.2:43560"), addr("203.0.113.80:443"), 1900315)));

        let time_wait = "   3: 0100007F:B270 0100007F:10DD 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000";
        assert_eq!(parse_tcp_line(time_wait), Some((addr("127.0.0.1:45680"), addr("127.0.0.1:4317"), 0)));
    }

    #[test]
    fn parses_ipv6_rows() {
        let loopback = "   0: 00000000000000000000000001000000:B26E 00000000000000000000000001000000:10DD 01 00000000:00000000 00:00000000 00000000  1000        0 23456 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(parse_tcp_line(loopback), Some((addr("[::1]:45678"), addr("[::1]:4317"), 23456)));

        let mapped = "   1: 0000000000000000FFFF00000100007F:B26E 0000000000000000FFFF00000100007F:10DD 01 00000000:00000000 00:00000000 00000000  1000        0 34567 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse_tcp_line(mapped),
            Some((addr("[::ffff:127.0.0.1]:45678"), addr("[::ffff:127.0.0.1]:4317"), 34567))
        );

        // 2001:db8::2, words printed as host-order integers.
        let global = "   2: B80D0120000000000000000002000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 45678 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_tcp_line(global), Some((addr("[2001:db8::2]:8080"), addr("[::]:0"), 45678)));
    }

    #[test]
    fn rejects_headers_and_malformed_rows() {
        assert_eq!(parse_tcp_line(TCP_HEADER), None);
        assert_eq!(parse_tcp_line(TCP6_HEADER), None);
        assert_eq!(parse_tcp_line(""), None);
        assert_eq!(parse_tcp_line("   0: 0100007F:10DD 00000000:0000 0A"), None);
        assert_eq!(parse_tcp_line("   0: +100007F:10DD 00000000:0000 0A 0:0 0:0 0 0 0 1"), None);
        assert_eq!(parse_tcp_line("   0: 0100007F:10D 00000000:0000 0A 0:0 0:0 0 0 0 1"), None);
        assert_eq!(parse_tcp_line("   0: 0100007F:10DD 00000000:0000 0A 0:0 0:0 0 0 0 x"), None);
        assert_eq!(decode_socket_address("0000000000000000FFFF00000100007é:10DD"), None);
    }

    fn row(sl: u32, local: &str, remote: &str, inode: u64) -> String {
        format!("  {sl:>2}: {local} {remote} 01 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0000000000000000 20 4 30 10 -1")
    }

    /// A process in the fake procfs: its namespace link (if any), net tables (if any) and the
    /// socket inodes its fds point to.
    fn fake_process(
        root: &Path,
        pid: u32,
        namespace: Option<&str>,
        tables: Option<(&[String], &[String])>,
        sockets: &[u64],
    ) {
        let dir = root.join(pid.to_string());
        fs::create_dir_all(dir.join("fd")).expect("fd dir");
        if let Some(namespace) = namespace {
            fs::create_dir_all(dir.join("ns")).expect("ns dir");
            symlink(namespace, dir.join("ns/net")).expect("ns link");
        }
        if let Some((tcp, tcp6)) = tables {
            fs::create_dir_all(dir.join("net")).expect("net dir");
            let tcp = [TCP_HEADER.to_string()].iter().chain(tcp).cloned().collect::<Vec<_>>().join("\n");
            let tcp6 = [TCP6_HEADER.to_string()].iter().chain(tcp6).cloned().collect::<Vec<_>>().join("\n");
            fs::write(dir.join("net/tcp"), tcp + "\n").expect("tcp");
            fs::write(dir.join("net/tcp6"), tcp6 + "\n").expect("tcp6");
        }
        // A non-socket fd first, as stdin would be.
        symlink("/dev/null", dir.join("fd/0")).expect("fd 0");
        for (fd, inode) in sockets.iter().enumerate() {
            symlink(format!("socket:[{inode}]"), dir.join(format!("fd/{}", fd + 3))).expect("fd link");
        }
    }

    /// Namespace A: pids 100 (tables readable, owns nothing relevant) and 101 (owns socket 12345,
    /// tables unreadable). Namespace B: pid 200 with its own tables. Pid 300: no directory.
    fn fake_procfs() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let host_tcp = [
            // The agent's own accepted socket: the reverse direction, owned by nobody here.
            row(0, "0100007F:10DD", "0100007F:B26E", 999),
            // An older connection from the same port, in TIME_WAIT.
            row(1, "0100007F:B26E", "0100007F:10DD", 0),
            row(2, "0100007F:B26E", "0100007F:10DD", 12345),
            row(3, "0100007F:C350", "0100007F:1F90", 555),
        ];
        let host_tcp6 =
            [row(0, "0000000000000000FFFF00000100007F:D431", "0000000000000000FFFF00000100007F:10DD", 23456)];
        fake_process(root.path(), 100, Some("net:[4026531840]"), Some((&host_tcp, &host_tcp6)), &[999, 555]);
        fake_process(root.path(), 101, Some("net:[4026531840]"), None, &[12345, 23456]);

        let container_tcp = [row(0, "0200000A:1388", "0100000A:10DD", 777)];
        fake_process(root.path(), 200, Some("net:[4026532000]"), Some((&container_tcp, &[])), &[777]);
        root
    }

    #[test]
    fn finds_the_owner_among_candidates() {
        let root = fake_procfs();
        let procfs = Procfs::new(root.path());
        let candidates = [300, 101, 100, 200];
        let local = addr("127.0.0.1:4317");

        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:45678"), local, &candidates), Some(101));
        assert_eq!(procfs.owner_of_connection(addr("10.0.0.2:5000"), addr("10.0.0.1:4317"), &candidates), Some(200));
        // The agent listening on every address, or through a dual-stack socket.
        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:45678"), addr("0.0.0.0:4317"), &candidates), Some(101));
        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:45678"), addr("[::]:4317"), &candidates), Some(101));
        assert_eq!(
            procfs.owner_of_connection(addr("[::ffff:127.0.0.1]:45678"), addr("[::ffff:127.0.0.1]:4317"), &candidates),
            Some(101)
        );
        // A dual-stack client socket (tcp6 row) seen by an IPv4 listener.
        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:54321"), local, &candidates), Some(101));
    }

    #[test]
    fn nobody_owns_it() {
        let root = fake_procfs();
        let procfs = Procfs::new(root.path());
        let local = addr("127.0.0.1:4317");

        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:40000"), local, &[100, 101, 200]), None);
        // The row exists but its owner is not a candidate.
        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:45678"), local, &[100, 200]), None);
        // Right peer, wrong agent side.
        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:45678"), addr("127.0.0.2:4317"), &[101, 100]), None);
        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:45678"), addr("127.0.0.1:4318"), &[101, 100]), None);
        // The peer's row (owned by 100) is connected to another port, 8080, not to the agent.
        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:50000"), local, &[100]), None);
        // Only missing pids, or none at all.
        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:45678"), local, &[300, 301]), None);
        assert_eq!(procfs.owner_of_connection(addr("127.0.0.1:45678"), local, &[]), None);
    }

    #[test]
    fn unreadable_namespace_counts_as_its_own() {
        let root = tempfile::tempdir().expect("tempdir");
        let tcp = [row(0, "0100007F:B26E", "0100007F:10DD", 12345)];
        fake_process(root.path(), 400, None, Some((&tcp, &[])), &[12345]);
        // Without a namespace link 401 cannot borrow 400's tables, and has none of its own.
        fake_process(root.path(), 401, None, None, &[12345]);
        let procfs = Procfs::new(root.path());
        let (peer, local) = (addr("127.0.0.1:45678"), addr("127.0.0.1:4317"));

        assert_eq!(procfs.owner_of_connection(peer, local, &[401, 400]), Some(400));
        assert_eq!(procfs.owner_of_connection(peer, local, &[401]), None);
    }

    /// Connects `connect_to` to a listener bound at `bind`; None when this host cannot bind it.
    fn real_connection(
        bind: &str,
        connect_to: impl Fn(u16) -> SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr, [TcpStream; 2])> {
        let listener = TcpListener::bind(bind).ok()?;
        let local = listener.local_addr().expect("listener address");
        let client = TcpStream::connect(connect_to(local.port())).expect("connect");
        let (server, peer) = listener.accept().expect("accept");
        Some((peer, local, [client, server]))
    }

    #[test]
    fn finds_this_process_over_ipv4() {
        let me = std::process::id();
        let host = Procfs::host();
        let (peer, local, _streams) =
            real_connection("127.0.0.1:0", |port| SocketAddr::from(([127, 0, 0, 1], port))).expect("bind 127.0.0.1");

        assert_eq!(host.owner_of_connection(peer, local, &[me]), Some(me));
        assert_eq!(host.owner_of_connection(peer, local, &[u32::MAX, me]), Some(me));
        assert_eq!(host.owner_of_connection(peer, SocketAddr::from(([0, 0, 0, 0], local.port())), &[me]), Some(me));
        assert_eq!(host.owner_of_connection(peer, local, &[]), None);
    }

    #[test]
    fn finds_this_process_over_ipv6() {
        let me = std::process::id();
        let host = Procfs::host();
        // Hosts (and containers) without IPv6 cannot bind ::1; only this part is skipped then.
        let Some((peer, local, _streams)) = real_connection("[::1]:0", |port| addr(&format!("[::1]:{port}"))) else {
            eprintln!("skipped: cannot bind [::1]");
            return;
        };
        assert!(peer.is_ipv6());
        assert_eq!(host.owner_of_connection(peer, local, &[me]), Some(me));
        assert_eq!(host.owner_of_connection(peer, local, &[]), None);
    }

    #[test]
    fn finds_this_process_across_address_families() {
        let me = std::process::id();
        let host = Procfs::host();
        // An IPv4 listener reached from an IPv6 socket: the client's row is in tcp6 as ::ffff:127.0.0.1.
        let (peer, local, _streams) =
            real_connection("127.0.0.1:0", |port| addr(&format!("[::ffff:127.0.0.1]:{port}"))).expect("bind 127.0.0.1");
        assert!(peer.is_ipv4());
        assert_eq!(host.owner_of_connection(peer, local, &[me]), Some(me));

        // A dual-stack listener reached over IPv4: the agent sees ::ffff:127.0.0.1, the row is in tcp.
        let Some((peer, local, _streams)) =
            real_connection("[::ffff:127.0.0.1]:0", |port| SocketAddr::from(([127, 0, 0, 1], port)))
        else {
            eprintln!("skipped: cannot bind [::ffff:127.0.0.1]");
            return;
        };
        assert!(peer.is_ipv6());
        assert_eq!(host.owner_of_connection(peer, local, &[me]), Some(me));
    }
}
