//! The client address of a request, for throttles, request logs and audit entries: the
//! connection's peer, or — only when `server.trust_forwarded_for` is on — the address that
//! the `server.trusted_proxies` reverse proxies in front of Keystone recorded in
//! `X-Forwarded-For`. A header the client wrote itself is never believed.
//!
//! Each proxy appends the address it received the request from, so with N trusted proxies
//! the last N entries are theirs and the N-th from the right is the client as the outermost
//! proxy saw it; entries further left are whatever the client sent. A Unix-socket peer
//! (nginx on `/run/keystone/keystone.sock`) has no IP address: without the switch such a
//! request has no client address at all.

use crate::config::Settings;
use salvo::Request;
use salvo::conn::SocketAddr;
use std::net::IpAddr;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The address to throttle, log and audit the request under; None when the peer is a Unix
/// socket (or unknown) and no trusted `X-Forwarded-For` entry names a valid address.
pub fn client_ip(req: &Request, settings: &Settings) -> Option<IpAddr> {
    let peer = peer_ip(req.remote_addr());
    if !settings.server.trust_forwarded_for {
        return peer;
    }
    // Bytes that are not UTF-8 spoil only the entry they are in (a client's), not the
    // entries the proxies appended to the same line.
    let values: Vec<String> = req
        .headers()
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    forwarded_client(
        values.iter().map(String::as_str),
        settings.server.trusted_proxies,
    )
    .or(peer)
}

/// The peer's IP address (IPv4-mapped IPv6 addresses as IPv4), None for Unix sockets.
pub fn peer_ip(peer: &SocketAddr) -> Option<IpAddr> {
    peer.ip().map(|ip| ip.to_canonical())
}

/// The client address recorded by `trusted_proxies` proxies in the `X-Forwarded-For`
/// header values (in the order received; several header lines form one list): the entry
/// `trusted_proxies` places from the right, or the left-most entry when there are fewer
/// (the request entered behind the outermost proxy, and every entry is a proxy's). Empty
/// entries are skipped. None when there is no entry, or the chosen one is not an IP address
/// (with or without a port): the caller then falls back to the peer.
pub fn forwarded_client<'a>(
    values: impl IntoIterator<Item = &'a str>,
    trusted_proxies: u64,
) -> Option<IpAddr> {
    let entries: Vec<&str> = values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let from_right = usize::try_from(trusted_proxies.max(1)).unwrap_or(usize::MAX);
    let index = entries.len().saturating_sub(from_right);
    entries.get(index).and_then(|entry| parse_entry(entry))
}

/// `203.0.113.7`, `203.0.113.7:5120`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:5120` as an address; anything else (`unknown`, host names, RFC 7239
/// obfuscated identifiers, zone ids) is None.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let ip = if let Ok(ip) = entry.parse::<IpAddr>() {
        ip
    } else if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        socket.ip()
    } else {
        entry
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))?
            .parse::<IpAddr>()
            .ok()?
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use salvo::http::HeaderValue;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("test address"))
    }

    fn settings(trust: bool, proxies: u64) -> Settings {
        let mut s = Settings::default();
        s.server.trust_forwarded_for = trust;
        s.server.trusted_proxies = proxies;
        s
    }

    fn request(peer: SocketAddr, forwarded: &[&str]) -> Request {
        let mut req = Request::new();
        *req.remote_addr_mut() = peer;
        for value in forwarded {
            req.headers_mut().append(
                X_FORWARDED_FOR,
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        req
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddrV4::new(Ipv4Addr::from(a), port).into()
    }

    fn unix_peer() -> SocketAddr {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let addr: tokio::net::unix::SocketAddr = a.local_addr().expect("local address").into();
        addr.into()
    }

    #[test]
    fn the_header_is_ignored_unless_trusted() {
        let req = request(v4([192, 0, 2, 10], 40000), &["203.0.113.7"]);
        assert_eq!(client_ip(&req, &settings(false, 1)), ip("192.0.2.10"));
        assert_eq!(client_ip(&req, &settings(true, 1)), ip("203.0.113.7"));
        // The default configuration does not trust it.
        assert_eq!(client_ip(&req, &Settings::default()), ip("192.0.2.10"));
    }

    #[test]
    fn ipv6_peers_and_ipv4_mapped_addresses() {
        let peer: SocketAddr =
            SocketAddrV6::new("2001:db8::5".parse().expect("v6"), 443, 0, 0).into();
        assert_eq!(
            client_ip(&request(peer, &[]), &settings(false, 1)),
            ip("2001:db8::5")
        );
        let mapped: SocketAddr =
            SocketAddrV6::new(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped(), 1, 0, 0).into();
        assert_eq!(
            client_ip(&request(mapped, &[]), &settings(false, 1)),
            ip("192.0.2.1")
        );
        let req = request(
            v4([127, 0, 0, 1], 1),
            &["2001:db8::7", "::ffff:198.51.100.3"],
        );
        assert_eq!(
            client_ip(&req, &settings(true, 1)),
            ip("198.51.100.3"),
            "two header lines form one list; a mapped address becomes IPv4"
        );
        assert_eq!(client_ip(&req, &settings(true, 2)), ip("2001:db8::7"));
        assert_eq!(
            client_ip(
                &request(v4([127, 0, 0, 1], 1), &["2001:db8::7"]),
                &settings(true, 1)
            ),
            Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)))
        );
    }

    #[test]
    fn unix_socket_peers_have_no_address_of_their_own() {
        let req = request(unix_peer(), &[]);
        assert_eq!(client_ip(&req, &settings(false, 1)), None);
        assert_eq!(client_ip(&req, &settings(true, 1)), None);
        let req = request(unix_peer(), &["198.51.100.20"]);
        assert_eq!(client_ip(&req, &settings(false, 1)), None, "not trusted");
        assert_eq!(client_ip(&req, &settings(true, 1)), ip("198.51.100.20"));
        let req = request(unix_peer(), &["garbage"]);
        assert_eq!(client_ip(&req, &settings(true, 1)), None);
        assert_eq!(
            client_ip(&request(SocketAddr::Unknown, &[]), &settings(true, 1)),
            None
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_wins() {
        let one = |values: &[&str]| forwarded_client(values.iter().copied(), 1);
        let two = |values: &[&str]| forwarded_client(values.iter().copied(), 2);
        // A client-chosen prefix does not matter: nginx appended the last entry.
        assert_eq!(one(&["10.0.0.1, 203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(one(&["1.1.1.1, 2.2.2.2,203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(two(&["1.1.1.1, 203.0.113.7, 10.0.0.2"]), ip("203.0.113.7"));
        // Fewer entries than proxies: the left-most, which a proxy wrote.
        assert_eq!(two(&["203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(
            forwarded_client(["203.0.113.7, 10.0.0.2"], 9),
            ip("203.0.113.7")
        );
        // 0 proxies would mean "the peer"; the configuration refuses it, here it counts as 1.
        assert_eq!(
            forwarded_client(["1.1.1.1, 203.0.113.7"], 0),
            ip("203.0.113.7")
        );
        // Empty entries and whitespace (a client's trailing comma, odd spacing) are skipped.
        assert_eq!(one(&["1.1.1.1,, 203.0.113.7 "]), ip("203.0.113.7"));
        assert_eq!(
            two(&["1.1.1.1, ,203.0.113.7,\t10.0.0.2"]),
            ip("203.0.113.7")
        );
        assert_eq!(one(&["1.1.1.1,", "203.0.113.7"]), ip("203.0.113.7"));
    }

    #[test]
    fn ports_and_brackets_are_accepted() {
        let one = |value: &str| forwarded_client([value], 1);
        assert_eq!(one("203.0.113.7:5120"), ip("203.0.113.7"));
        assert_eq!(one("[2001:db8::1]:5120"), ip("2001:db8::1"));
        assert_eq!(one("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(one("2001:db8::1"), ip("2001:db8::1"));
    }

    #[test]
    fn malformed_entries_fall_back_to_the_peer() {
        for value in [
            "",
            " , ,",
            "unknown",
            "_hidden",
            "host.example.org",
            "203.0.113.999",
            "[2001:db8::1",
            "fe80::1%eth0",
            "203.0.113.7 extra",
            "\"203.0.113.7\"",
        ] {
            assert_eq!(forwarded_client([value], 1), None, "{value:?}");
            let req = request(v4([192, 0, 2, 10], 1), &[value]);
            assert_eq!(
                client_ip(&req, &settings(true, 1)),
                ip("192.0.2.10"),
                "{value:?}"
            );
        }
        // A malformed entry further left (the client's part) does not matter.
        assert_eq!(
            forwarded_client(["unknown, 203.0.113.7"], 1),
            ip("203.0.113.7")
        );
        // Bytes that are not UTF-8 are no address, and do not hide the proxy's entry.
        let mut req = request(v4([192, 0, 2, 10], 1), &[]);
        req.headers_mut().append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff203.0.113.7").expect("opaque bytes"),
        );
        assert_eq!(client_ip(&req, &settings(true, 1)), ip("192.0.2.10"));
        let mut req = request(v4([192, 0, 2, 10], 1), &[]);
        req.headers_mut().append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.4").expect("opaque bytes"),
        );
        assert_eq!(client_ip(&req, &settings(true, 1)), ip("198.51.100.4"));
    }

    #[test]
    fn long_headers_are_cheap_and_still_answer() {
        let long = format!("{}203.0.113.7", "10.0.0.1, ".repeat(5000));
        assert_eq!(forwarded_client([long.as_str()], 1), ip("203.0.113.7"));
    }
}
