//! Who is on the other end of a request: the connection's peer, or, behind a trusted proxy,
//! the address that proxy wrote into its header.
//!
//! The proxy nearest to us writes last: a proxy that appends (`X-Forwarded-For`, Envoy's
//! default) leaves whatever the client sent before its own entry, and may add its own line
//! after the client's. So the entry used is the last one over every line of the header,
//! never the first. Entries may carry a port (`10.0.0.1:443`, `[2001:db8::1]:443`); the
//! RFC 7239 `Forwarded` header is read by its `for=` parameter. An entry that names no
//! address (`unknown`, an obfuscated `_node`) leaves the address unknown, which the limits
//! count as one client rather than none.

use std::net::{IpAddr, SocketAddr};

use actix_web::HttpRequest;
use actix_web::http::header::HeaderName;
use anyhow::Context;

/// The client an address stands for, as the limits count them: IPv6 addresses by their
/// /64, which one client usually holds whole (else one client could take a fresh address
/// per request); an IPv4 address written as IPv6 (`::ffff:a.b.c.d`, a dual-stack
/// listener's or proxy's) as itself, or every IPv4 client would share one.
pub fn one_client(address: Option<IpAddr>) -> Option<IpAddr> {
    address.map(|ip| match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    })
}

/// How to read the trusted proxy's header.
#[derive(Debug, Clone)]
enum Format {
    /// Comma-separated entries, each an address with or without a port.
    List,
    /// RFC 7239: comma-separated elements, each `;`-separated `key=value` pairs.
    Forwarded,
}

#[derive(Debug, Clone)]
pub struct ClientAddresses {
    header: Option<(HeaderName, Format)>,
}

impl ClientAddresses {
    /// `header` is ISSUER_CLIENT_ADDRESS_HEADER; one that is no header name stops the start.
    pub fn new(header: Option<&str>) -> anyhow::Result<Self> {
        let header = header
            .map(|name| {
                let parsed = HeaderName::try_from(name).with_context(|| {
                    format!("ISSUER_CLIENT_ADDRESS_HEADER {name:?} is not a header name")
                })?;
                let format = if parsed == actix_web::http::header::FORWARDED {
                    Format::Forwarded
                } else {
                    Format::List
                };
                tracing::warn!(header = %parsed, "trusting this header for client addresses: only a proxy in front must be able to set it");
                Ok::<_, anyhow::Error>((parsed, format))
            })
            .transpose()?;
        Ok(Self { header })
    }

    /// The client's address as configured; None if it cannot be told.
    pub fn of(&self, req: &HttpRequest) -> Option<IpAddr> {
        let Some((header, format)) = &self.header else {
            return req.peer_addr().map(|addr| addr.ip());
        };
        // Bytes, not text: a client's byte that is not ASCII must not make the line the
        // proxy appended its entry to vanish. Only the entry used must be text.
        let line = req.headers().get_all(header).last()?.as_bytes();
        let last = line.rsplit(|&byte| byte == b',').next()?;
        let last = std::str::from_utf8(last).ok()?;
        match format {
            Format::List => node(last),
            Format::Forwarded => last
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, value)| node(value)),
        }
    }
}

/// An address with or without a port, quoted or not: `10.0.0.1`, `10.0.0.1:443`,
/// `2001:db8::1`, `[2001:db8::1]`, `"[2001:db8::1]:443"`.
fn node(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = entry.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse().ok())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn seen(header: &str, lines: &[&str]) -> Option<IpAddr> {
        let mut request = TestRequest::default();
        for line in lines {
            request = request.append_header((header, *line));
        }
        ClientAddresses::new(Some(header))
            .unwrap()
            .of(&request.to_http_request())
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn the_last_entry_over_every_line_is_the_proxys() {
        let xff = "x-forwarded-for";
        assert_eq!(seen(xff, &["1.1.1.1, 10.0.0.2"]), ip("10.0.0.2"));
        assert_eq!(seen(xff, &["1.1.1.1", "10.0.0.2"]), ip("10.0.0.2"));
        assert_eq!(seen(xff, &["10.0.0.2:5555"]), ip("10.0.0.2"));
        assert_eq!(seen(xff, &["[2001:db8::7]:443"]), ip("2001:db8::7"));
        assert_eq!(seen(xff, &["2001:db8::7"]), ip("2001:db8::7"));
        assert_eq!(seen(xff, &["1.1.1.1, unknown"]), None);
        let forged =
            actix_web::http::header::HeaderValue::from_bytes(b"\xff1.1.1.1, 10.0.0.3").unwrap();
        let request = TestRequest::default()
            .append_header((xff, forged))
            .to_http_request();
        let addresses = ClientAddresses::new(Some(xff)).unwrap();
        assert_eq!(
            addresses.of(&request),
            ip("10.0.0.3"),
            "a client's non-ASCII byte"
        );
        assert_eq!(seen(xff, &[]), None);
    }

    #[test]
    fn forwarded_is_read_by_its_for_parameter() {
        let header = "forwarded";
        let line = "for=203.0.113.1;proto=https, For=\"[2001:db8::1]:4711\";by=10.9.9.9";
        assert_eq!(seen(header, &[line]), ip("2001:db8::1"));
        assert_eq!(
            seen(header, &["for=192.0.2.60", "for=10.1.0.3:80"]),
            ip("10.1.0.3")
        );
        assert_eq!(seen(header, &["for=_hidden"]), None);
        assert_eq!(seen(header, &["proto=https"]), None);
    }

    #[test]
    fn a_header_that_is_no_header_name_is_refused() {
        let err = ClientAddresses::new(Some("not a header")).unwrap_err();
        assert!(
            err.to_string().contains("ISSUER_CLIENT_ADDRESS_HEADER"),
            "{err}"
        );
    }
}
