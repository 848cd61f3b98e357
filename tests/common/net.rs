//! The host's listening sockets, read from /proc: what a published (or refused) port left open.

use std::net::Ipv4Addr;

/// Listening sockets for `port` in /proc/net/{proto}{,6}: each one's address, as /proc spells it
/// (hex), so that "127.0.0.1 only" and "nowhere" can both be asserted.
pub fn listeners(proto: &str, port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for file in [proto.to_owned(), format!("{proto}6")] {
        let text = std::fs::read_to_string(format!("/proc/net/{file}")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (addr, p) = f[1].split_once(':').unwrap();
            // TCP lists listeners in state 0A; UDP's bound sockets are 07.
            let listening = if proto == "tcp" {
                f[3] == "0A"
            } else {
                f[3] == "07"
            };
            if listening && u16::from_str_radix(p, 16).unwrap() == port {
                out.push(format!("{file}:{addr}"));
            }
        }
    }
    out
}

/// How [`listeners`] spells a `proto` socket on 127.0.0.x (/proc's little-endian hex).
pub fn loopback(proto: &str, last: u8) -> String {
    let ip = u32::from_le_bytes(Ipv4Addr::new(127, 0, 0, last).octets());
    format!("{proto}:{ip:08X}")
}
