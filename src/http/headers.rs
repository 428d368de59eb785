//! Header hygiene between client, gateway and upstream.
//!
//! Order matters and is fixed here: first everything hop-by-hop is removed (the standard
//! set plus whatever the peer's `Connection` header names), *then* the gateway sets its own
//! headers. A client's `Connection: x-forwarded-for` therefore removes only the client's
//! copy, never the gateway's (Traefik CVE-2021-32813 / CVE-2024-45410).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus the
/// legacy `proxy-connection` and `keep-alive`, and `Upgrade`. The order is that of
/// the bits of [`hop_by_hop_bit`].
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// W3C Trace Context (`crate::observe::trace`).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// A number as a header value, formatted with `itoa` (http's `From<u32>` goes through
/// `fmt::Write`, several times the cost).
pub fn number_value(n: u32) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(
        itoa::Buffer::new().format(n).as_bytes(),
    ))
    .expect("decimal digits are a valid header value")
}

/// Remove hop-by-hop headers, including every header named in `Connection`, and `Upgrade`.
/// Returns quickly when there is nothing to do (the common keep-alive request has at most
/// a `connection: keep-alive`).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: most messages carry no hop-by-hop header at all
    // (or only `connection`), and nine hashed removals per message showed up as 7% of
    // the proxy's user-space instructions. The names are judged by length first (no
    // other header has the length of one), and the ones present are kept as bits.
    let present = headers
        .keys()
        .fold(0u16, |bits, n| bits | hop_by_hop_bit(n));
    if present == 0 {
        return;
    }
    // Headers named in `Connection`. `keep-alive` and `close` are connection options
    // (the `keep-alive` header is removed below anyway): no allocation for the usual
    // `Connection: keep-alive`.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().ok().into_iter().flat_map(|v| v.split(',')) {
            let t = token.trim();
            if t.is_empty()
                || t.eq_ignore_ascii_case("keep-alive")
                || t.eq_ignore_ascii_case("close")
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                named.push(n);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    // Remove only the hop-by-hop headers that are present.
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Whether `name` is one of the standard hop-by-hop headers (not counting those a
/// `Connection` header names).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_bit(name) != 0
}

/// The bit of a hop-by-hop header ([`HOP_BY_HOP`] order); 0 for any other header.
fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    // Header names are lowercase.
    let s = name.as_str();
    let i = match s.len() {
        2 if s == "te" => 5,
        7 if s == "trailer" => 6,
        7 if s == "upgrade" => 8,
        10 if s == "connection" => 0,
        10 if s == "keep-alive" => 1,
        16 if s == "proxy-connection" => 2,
        17 if s == "transfer-encoding" => 7,
        18 if s == "proxy-authenticate" => 3,
        19 if s == "proxy-authorization" => 4,
        _ => return 0,
    };
    1 << i
}

/// Up to this many distinct names, a lookup compares the wanted name with each name
/// present instead of hashing it. `HeaderMap` hashes every lookup and removal with FNV,
/// byte by byte for a custom name: callgrind counted about 100–130 instructions for each
/// of the dozen done per proxied request, most of them for names that are absent,
/// against a few instructions per compared name. Most requests carry a handful of
/// fields; past this many, the hashed lookup is the cheaper one.
const SCAN_MAX: usize = 8;

/// Whether `headers` has `name`; the same answer as `HeaderMap::contains_key`.
pub fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() <= SCAN_MAX {
        headers.keys().any(|k| k == name)
    } else {
        headers.contains_key(name)
    }
}

/// One HTTP/1.1 field line, `name: value\r\n`, onto `out`.
#[inline]
pub fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The first value of `name`; the same answer as `HeaderMap::get`.
pub fn get<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() <= SCAN_MAX {
        // `iter` yields each name's first value before its others.
        headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    } else {
        headers.get(name)
    }
}

/// Remove every value of `name`, as `HeaderMap::remove` does.
pub fn remove(headers: &mut HeaderMap, name: &HeaderName) {
    if has(headers, name) {
        headers.remove(name);
    }
}

/// Why a request's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFraming {
    /// Both `Content-Length` and `Transfer-Encoding`, several `Content-Length` values,
    /// or a `Transfer-Encoding` whose last coding is not `chunked` (request smuggling).
    Ambiguous,
    /// A `Transfer-Encoding` that names a coding besides `chunked` (`gzip, chunked`):
    /// the gateway re-frames bodies, so such a coding could not be passed on intact.
    OtherCoding,
}

/// Request framing that a proxy must refuse rather than forward. Costs two lookups
/// when the request has neither `Content-Length` nor `Transfer-Encoding`.
pub fn bad_framing(headers: &HeaderMap) -> Option<BadFraming> {
    if !has(headers, &header::CONTENT_LENGTH) && !has(headers, &header::TRANSFER_ENCODING) {
        return None;
    }
    // Values, not fields: `Content-Length: 5, 5` is two (RFC 9110 §8.6 lets a
    // recipient fold identical ones; DESIGN.md refuses every repeat).
    let cl: usize = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .map(|v| 1 + v.as_bytes().iter().filter(|&&b| b == b',').count())
        .sum();
    let te: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if cl > 1 || (cl == 1 && !te.is_empty()) {
        return Some(BadFraming::Ambiguous);
    }
    let last = te.last()?;
    let last_coding = last
        .to_str()
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .map(|c| c.trim().eq_ignore_ascii_case("chunked"));
    if last_coding != Some(true) {
        return Some(BadFraming::Ambiguous);
    }
    let other = te.iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"))
    });
    other.then_some(BadFraming::OtherCoding)
}

/// Keep a client's request id when it is short and plain; otherwise `None`.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// The peer's address as a header value, computed once per connection.
pub fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    let mut text = String::with_capacity(15);
    push_ip(&mut text, ip);
    HeaderValue::try_from(text).expect("an IP address is a valid header value")
}

/// Append `ip` to `out` as its `Display` writes it. An IPv4 address's octets go through
/// `itoa`: std's `Display` for it (through `fmt::write` and padding) cost about 1,250
/// instructions per new connection (callgrind, `NEWCONN=1 benches/e2e/instructions.sh`).
pub fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(itoa::Buffer::new().format(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `n` as 16 lower-case hex digits, most significant first, eight at a time: each
/// half's nibbles are spread one to a byte, and the bytes made digits together. A digit
/// (or a byte) at a time from a table cost 60-150 instructions per id, and a request
/// makes four: its request id (two halves), its trace's span id and, when it starts the
/// trace, the trace id (two halves) (callgrind).
pub fn hex16(n: u64) -> [u8; 16] {
    let half = |x: u64| {
        // Nibble k of the low 32 bits (k = 0 the least significant) into byte k.
        let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        let x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
        // Bit 4 of v + 6 is set for v >= 10: those become 'a'..='f', 39 past '9' + 1.
        // No byte's sum reaches the next byte.
        let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&half(n >> 32));
    out[8..].copy_from_slice(&half(n & 0xffff_ffff));
    out
}

/// A fresh 128-bit random request id as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    buf[..16].copy_from_slice(&hex16(fastrand::u64(..)));
    buf[16..].copy_from_slice(&hex16(fastrand::u64(..)));
    // Owned by a shared `Bytes`: the one clone (to the upstream request) is a reference
    // count, not a second allocation.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .expect("hex is a valid header value")
}

/// The fields the gateway itself sets on every upstream request, in the order of
/// [`GatewayFields`]' slots and of the wire.
static GATEWAY_FIELDS: [&HeaderName; 5] = [
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_REQUEST_ID,
    &TRACEPARENT,
];

/// The gateway's own fields of an upstream request (`x-forwarded-for/-proto/-host`,
/// `x-request-id`, `traceparent`), kept beside the request's map rather than in it.
/// Inserting them into the `HeaderMap` cost about 240 instructions each (hashing a
/// custom name, probing, making room; five per request, callgrind): the HTTP/1 client
/// writes them from here, the other clients insert them into their own copy of the
/// request ([`GatewayFields::insert_into`]). Made by [`GatewayFields::forwarding`], which
/// takes every field of these names out of the map: none is sent twice, and none is the
/// client's unless the gateway decided to keep it.
#[derive(Clone, Debug, Default)]
pub struct GatewayFields([Option<HeaderValue>; 5]);

impl GatewayFields {
    /// The forwarding fields for a request from `peer` (the peer's address as a value).
    /// From a trusted proxy the existing chain is kept and the peer appended (the first
    /// value of each field counts), and its `Forwarded` stays; from anyone else, client-sent
    /// forwarding fields (including `Forwarded`) are replaced, because nothing a client
    /// says about itself is trusted. Client-sent `x-request-id` and `traceparent` leave
    /// the map too: the gateway sets its own ([`Self::set_request_id`],
    /// [`Self::set_traceparent`]).
    pub fn forwarding(
        headers: &mut HeaderMap,
        peer: &HeaderValue,
        trusted: bool,
        proto: &'static str,
        host: Option<&HeaderValue>,
    ) -> GatewayFields {
        let mut kept: [Option<HeaderValue>; 3] = Default::default();
        // One pass over the names; the hashed removals only when there is one to remove.
        if headers
            .keys()
            .any(|k| GATEWAY_FIELDS.contains(&k) || (!trusted && k == FORWARDED))
        {
            for (i, name) in GATEWAY_FIELDS.iter().enumerate() {
                let v = headers.remove(*name);
                if let Some(slot) = kept.get_mut(i) {
                    *slot = v;
                }
            }
            if !trusted {
                headers.remove(&FORWARDED);
            }
        }
        let [prev_for, prev_proto, prev_host] = kept;
        let proto = HeaderValue::from_static(proto);
        GatewayFields(if trusted {
            let chain = prev_for
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .zip(peer.to_str().ok())
                .and_then(|(prev, p)| HeaderValue::from_str(&format!("{prev}, {p}")).ok());
            [
                Some(chain.unwrap_or_else(|| peer.clone())),
                Some(prev_proto.unwrap_or(proto)),
                prev_host.or_else(|| host.cloned()),
                None,
                None,
            ]
        } else {
            [Some(peer.clone()), Some(proto), host.cloned(), None, None]
        })
    }

    pub fn set_request_id(&mut self, v: HeaderValue) {
        self.0[3] = Some(v);
    }

    pub fn set_traceparent(&mut self, v: HeaderValue) {
        self.0[4] = Some(v);
    }

    /// The fields that are set, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        GATEWAY_FIELDS
            .iter()
            .zip(&self.0)
            .filter_map(|(n, v)| Some((*n, v.as_ref()?)))
    }

    /// The value of `name`, if it is one of these fields and set.
    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
    }

    /// Into a map of a request's own (a client other than the HTTP/1 one).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The client's address as the gateway sees it: the peer, unless the peer is a
/// trusted proxy, in which case the right-most `X-Forwarded-For` entry that is not a
/// trusted proxy itself (entries left of it are the client's own claims). Addresses
/// are canonical (`::ffff:a.b.c.d` is `a.b.c.d`). `None` when that entry is not an IP
/// address: the client is unknown.
pub fn client_ip(
    headers: &HeaderMap,
    peer: std::net::IpAddr,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    let mut client = peer;
    for entry in values
        .iter()
        .rev()
        .flat_map(|v| v.as_bytes().rsplit(|b| *b == b','))
    {
        let text = std::str::from_utf8(entry).ok()?.trim();
        let ip = text
            .parse::<std::net::IpAddr>()
            .or_else(|_| text.parse::<std::net::SocketAddr>().map(|s| s.ip()))
            .ok()?
            .to_canonical();
        if !is_trusted(&ip) {
            return Some(ip);
        }
        client = ip;
    }
    // Every hop is trusted: the left-most one is as close to the client as we know.
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_values_are_the_addresses_as_std_writes_them() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let mut ips: Vec<IpAddr> = (0..=255u8)
            .map(|o| IpAddr::V4(Ipv4Addr::new(o, 255 - o, o / 10, o % 100)))
            .collect();
        ips.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        ips.push(IpAddr::V4(Ipv4Addr::BROADCAST));
        ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        ips.push(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()));
        for ip in ips {
            assert_eq!(ip_value(ip).to_str().ok(), Some(ip.to_string().as_str()));
        }
    }

    #[test]
    fn scanned_lookups_agree_with_hashed_ones() {
        let probes: Vec<HeaderName> = ["host", "x-a", "x-f", "x-absent", "content-length"]
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        // Below and above SCAN_MAX distinct names, with repeated names among them.
        for n in 0..20 {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("h"));
            for i in 0..n {
                let name =
                    HeaderName::from_bytes(format!("x-{}", (b'a' + i % 12) as char).as_bytes())
                        .expect("name");
                h.append(name, HeaderValue::from(u16::from(i)));
            }
            for p in &probes {
                assert_eq!(has(&h, p), h.contains_key(p), "{n} {p}");
                assert_eq!(get(&h, p), h.get(p), "{n} {p}");
                let (mut a, mut b) = (h.clone(), h.clone());
                remove(&mut a, p);
                b.remove(p);
                assert_eq!(a, b, "{n} {p}");
            }
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn client_ip_is_the_right_most_untrusted_forwarded_entry() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let h = map(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.1.1")]);
        assert_eq!(client_ip(&h, lb, &trusted), ip("203.0.113.7"));
        // Not from a trusted proxy: the header is the client's own claim.
        let peer: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(&h, peer, &trusted), ip("198.51.100.1"));
        // Several headers read as one list; mapped IPv6 is IPv4.
        let h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "::ffff:10.2.2.2,10.3.3.3"),
        ]);
        assert_eq!(client_ip(&h, lb, &trusted), ip("1.1.1.1"));
        let mapped: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(&map(&[]), mapped, &trusted), ip("10.0.0.1"));
        let h = map(&[("x-forwarded-for", "unknown, 10.3.3.3")]);
        assert_eq!(client_ip(&h, lb, &trusted), None);
        let h = map(&[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(client_ip(&h, lb, &trusted), ip("10.9.9.9"));
    }

    #[test]
    fn hop_by_hop_bits_match_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name), 1 << i, "{name}");
        }
        for other in [
            "host",
            "tee",
            "connections",
            "content-length",
            "x-upgrade",
            "trailers",
        ] {
            assert_eq!(
                hop_by_hop_bit(&HeaderName::from_static(other)),
                0,
                "{other}"
            );
        }
        let mut h = map(&[
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "x"),
            ("trailer", "x-t"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn client_cannot_remove_gateway_forwarding_headers() {
        let mut h = map(&[("connection", "x-forwarded-for, x-request-id")]);
        remove_hop_by_hop(&mut h);
        let f = GatewayFields::forwarding(
            &mut h,
            &HeaderValue::from_static("192.0.2.1"),
            false,
            "http",
            Some(&HeaderValue::from_static("a.example")),
        );
        assert_eq!(f.get("x-forwarded-for").unwrap(), "192.0.2.1");
        assert_eq!(f.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(f.get("x-forwarded-host").unwrap(), "a.example");
        assert!(h.is_empty());
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.3"),
            ("forwarded", "for=10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example"),
            ("x-request-id", "client-id"),
            ("traceparent", "00-client"),
            ("x-kept", "1"),
        ]);
        let mut f = GatewayFields::forwarding(
            &mut h,
            &HeaderValue::from_static("192.0.2.1"),
            false,
            "http",
            None,
        );
        // Nothing of the client's under the gateway's names is left in the map.
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "1");
        let set: Vec<_> = f
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            set,
            [
                ("x-forwarded-for", "192.0.2.1"),
                ("x-forwarded-proto", "http")
            ]
        );
        f.set_request_id(HeaderValue::from_static("gw-id"));
        f.set_traceparent(HeaderValue::from_static("00-gw"));
        f.insert_into(&mut h);
        assert_eq!(h.len(), 5);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-request-id"], "gw-id");
        assert_eq!(h["traceparent"], "00-gw");
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn trusted_forwarding_headers_are_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        let f = GatewayFields::forwarding(
            &mut h,
            &HeaderValue::from_static("10.0.0.2"),
            true,
            "http",
            Some(&HeaderValue::from_static("a")),
        );
        assert_eq!(f.get("x-forwarded-for").unwrap(), "203.0.113.9, 10.0.0.2");
        assert_eq!(f.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(f.get("x-forwarded-host").unwrap(), "a");
        // A trusted proxy's `Forwarded` is passed on; its other fields are in `f` only.
        assert_eq!(h.len(), 1);
        assert_eq!(h["forwarded"], "for=203.0.113.9");
        let mut h = map(&[("x-forwarded-host", "b"), ("host", "a")]);
        let f = GatewayFields::forwarding(
            &mut h,
            &HeaderValue::from_static("10.0.0.2"),
            true,
            "https",
            Some(&HeaderValue::from_static("a")),
        );
        assert_eq!(f.get("x-forwarded-for").unwrap(), "10.0.0.2");
        assert_eq!(f.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(f.get("x-forwarded-host").unwrap(), "b");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn bad_framing_is_detected() {
        use BadFraming::*;
        let te = |v: &'static str| map(&[("transfer-encoding", v)]);
        let cases: &[(HeaderMap, Option<BadFraming>)] = &[
            (
                map(&[("content-length", "5"), ("transfer-encoding", "chunked")]),
                Some(Ambiguous),
            ),
            (
                map(&[("content-length", "5"), ("content-length", "6")]),
                Some(Ambiguous),
            ),
            (
                map(&[("content-length", "5"), ("content-length", "5")]),
                Some(Ambiguous),
            ),
            (map(&[("content-length", "5, 5")]), Some(Ambiguous)),
            (te("chunked, gzip"), Some(Ambiguous)),
            (te("identity"), Some(Ambiguous)),
            (te("gzip, chunked"), Some(OtherCoding)),
            (
                map(&[
                    ("transfer-encoding", "deflate"),
                    ("transfer-encoding", "chunked"),
                ]),
                Some(OtherCoding),
            ),
            (te("chunked"), None),
            (te(" Chunked "), None),
            (te(", chunked"), None),
            (map(&[("content-length", "5")]), None),
            (map(&[]), None),
        ];
        for (h, want) in cases {
            assert_eq!(bad_framing(h), *want, "{h:?}");
        }
    }

    #[test]
    fn numbers_as_values() {
        for n in [0u32, 7, 10, 4_294_967_295] {
            assert_eq!(number_value(n), HeaderValue::from(n));
        }
    }

    #[test]
    fn hex_digits_are_what_format_writes() {
        assert_eq!(&hex16(0x00f0_67aa_0ba9_02b7), b"00f067aa0ba902b7");
        assert_eq!(&hex16(u64::MAX), b"ffffffffffffffff");
        assert_eq!(&hex16(1), b"0000000000000001");
        assert_eq!(&hex16(0), b"0000000000000000");
        let mut cases: Vec<u64> = (0..64).map(|i| 1 << i).collect();
        cases.extend((0..16).map(|d| d * 0x1111_1111_1111_1111));
        cases.extend((0..10_000).map(|_| fastrand::u64(..)));
        for n in cases {
            assert_eq!(hex16(n), format!("{n:016x}").as_bytes(), "{n:#x}");
        }
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(valid_request_id(&id));
        assert_ne!(id, new_request_id());
    }
}
