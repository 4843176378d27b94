//! Connect objects (what a rule's `connect` list names) and targets (what a workload connects to).

use serde::Serialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An inclusive port range. `*` is the whole range 0-65535: a connect to port 0 is possible,
/// and "any port" must cover it; written ports themselves must be 1-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    /// Lowest port, inclusive.
    pub lo: u16,
    /// Highest port, inclusive.
    pub hi: u16,
}

impl PortRange {
    /// Every port, as `*` means.
    pub const ANY: PortRange = PortRange { lo: 0, hi: 65535 };

    /// Whether `port` lies in the range.
    pub fn contains(self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }

    fn parse(text: &str) -> Result<PortRange, String> {
        if text == "*" {
            return Ok(PortRange::ANY);
        }
        let one = |t: &str| -> Result<u16, String> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "bad port \"{t}\": expected a number 1-65535, a range lo-hi, or *"
                ));
            }
            match t.parse::<u32>() {
                Ok(0) => Err("port 0 is not a valid port (use 1-65535, or * for any)".into()),
                Ok(n) if n <= 65535 => Ok(n as u16),
                _ => Err(format!("port {t} is out of range (1-65535)")),
            }
        };
        match text.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (one(lo)?, one(hi)?);
                if lo > hi {
                    return Err(format!(
                        "inverted port range {lo}-{hi} (the low port comes first)"
                    ));
                }
                Ok(PortRange { lo, hi })
            }
            None => one(text).map(|p| PortRange { lo: p, hi: p }),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PortRange::ANY {
            f.write_str("*")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A host-name pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// One name, lower-case, without trailing dot.
    Exact(String),
    /// `*.domain`: every name strictly below `domain` (stored without the `*.`).
    Subdomains(String),
}

impl HostPattern {
    /// Whether a normalised host name (lower-case, no trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == name,
            HostPattern::Subdomains(d) => {
                name.len() > d.len() + 1
                    && name.ends_with(d.as_str())
                    && name.as_bytes()[name.len() - d.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Subdomains(d) => write!(f, "*.{d}"),
        }
    }
}

/// An IP network: an address with its host bits clear, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net<A> {
    /// The network address.
    pub addr: A,
    /// Prefix length (0-32 for IPv4, 0-128 for IPv6).
    pub prefix_len: u8,
}

impl Net<Ipv4Addr> {
    /// Whether the network contains `ip`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        mask4(u32::from(ip), self.prefix_len) == u32::from(self.addr)
    }
}

impl Net<Ipv6Addr> {
    /// Whether the network contains `ip`.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        mask6(u128::from(ip), self.prefix_len) == u128::from(self.addr)
    }
}

/// Clears the host bits of an IPv4 address.
pub fn mask4(addr: u32, prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(prefix_len.min(32))))
    }
}

/// Clears the host bits of an IPv6 address.
pub fn mask6(addr: u128, prefix_len: u8) -> u128 {
    if prefix_len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(prefix_len.min(128))))
    }
}

/// One entry of a rule's `connect` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectObject {
    /// `host:port` or `*.domain:port`; decided when the workload resolves the name.
    Host {
        /// The name pattern.
        host: HostPattern,
        /// The ports.
        ports: PortRange,
    },
    /// `ip:port` or `cidr:port` (IPv4, and IPv4-mapped IPv6 written in brackets).
    V4 {
        /// The network (a single address is a /32).
        net: Net<Ipv4Addr>,
        /// The ports.
        ports: PortRange,
    },
    /// `[v6]:port` or `[v6cidr]:port`.
    V6 {
        /// The network (a single address is a /128).
        net: Net<Ipv6Addr>,
        /// The ports.
        ports: PortRange,
    },
    /// `unix:/path` or `unix:@abstract`; the string keeps the `/` or `@`.
    Unix(String),
    /// `raw`: raw and packet sockets.
    Raw,
}

impl ConnectObject {
    /// Parses and validates one connect object.
    pub fn parse(text: &str) -> Result<ConnectObject, String> {
        if text == "raw" {
            return Ok(ConnectObject::Raw);
        }
        if let Some(rest) = text.strip_prefix("unix:") {
            return parse_unix(rest).map(ConnectObject::Unix);
        }
        if let Some(rest) = text.strip_prefix('[') {
            let Some((inner, ports)) = rest.split_once("]:") else {
                return Err(format!(
                    "bad address \"{text}\": expected [ipv6]:port or [ipv6/len]:port"
                ));
            };
            let ports = PortRange::parse(ports)?;
            let (addr, len) = match inner.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (inner, None),
            };
            let addr: Ipv6Addr = addr
                .parse()
                .map_err(|_| format!("bad IPv6 address \"{addr}\" in \"{text}\""))?;
            let prefix_len = parse_prefix(len, 128, text)?;
            if mask6(u128::from(addr), prefix_len) != u128::from(addr) {
                let net = Ipv6Addr::from(mask6(u128::from(addr), prefix_len));
                return Err(format!(
                    "bad CIDR \"{inner}\": host bits are set (did you mean {net}/{prefix_len}?)"
                ));
            }
            // IPv4-mapped networks are IPv4 networks: targets in them are judged by IPv4 rules.
            if prefix_len >= 96 {
                if let Some(v4) = addr.to_ipv4_mapped() {
                    return Ok(ConnectObject::V4 {
                        net: Net {
                            addr: v4,
                            prefix_len: prefix_len - 96,
                        },
                        ports,
                    });
                }
            }
            return Ok(ConnectObject::V6 {
                net: Net { addr, prefix_len },
                ports,
            });
        }
        let Some((host, ports)) = text.rsplit_once(':') else {
            return Err(format!(
                "bad connect object \"{text}\": expected host:port, ip:port, cidr:port, [ipv6]:port, unix:/path, unix:@name or raw"
            ));
        };
        if host.contains(':') {
            return Err(format!(
                "bad address \"{text}\": IPv6 addresses go in brackets, e.g. [::1]:443"
            ));
        }
        let ports = PortRange::parse(ports)?;
        if let Some((addr, len)) = host.split_once('/') {
            let addr: Ipv4Addr = addr
                .parse()
                .map_err(|_| format!("bad CIDR \"{host}\": \"{addr}\" is not an IPv4 address"))?;
            let prefix_len = parse_prefix(Some(len), 32, text)?;
            if mask4(u32::from(addr), prefix_len) != u32::from(addr) {
                let net = Ipv4Addr::from(mask4(u32::from(addr), prefix_len));
                return Err(format!(
                    "bad CIDR \"{host}\": host bits are set (did you mean {net}/{prefix_len}?)"
                ));
            }
            return Ok(ConnectObject::V4 {
                net: Net { addr, prefix_len },
                ports,
            });
        }
        if let Ok(addr) = host.parse::<Ipv4Addr>() {
            return Ok(ConnectObject::V4 {
                net: Net {
                    addr,
                    prefix_len: 32,
                },
                ports,
            });
        }
        if !host.is_empty() && host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("bad IPv4 address \"{host}\""));
        }
        let host = match host.strip_prefix("*.") {
            Some(domain) => HostPattern::Subdomains(parse_host_name(domain, text)?),
            None => HostPattern::Exact(parse_host_name(host, text)?),
        };
        Ok(ConnectObject::Host { host, ports })
    }

    /// The ports, for objects that have them.
    pub fn ports(&self) -> Option<PortRange> {
        match self {
            ConnectObject::Host { ports, .. }
            | ConnectObject::V4 { ports, .. }
            | ConnectObject::V6 { ports, .. } => Some(*ports),
            ConnectObject::Unix(_) | ConnectObject::Raw => None,
        }
    }

    /// Whether a normalised target matches this object.
    pub fn matches(&self, target: &Target) -> bool {
        match (self, target) {
            (ConnectObject::Raw, Target::Raw) => true,
            (ConnectObject::Unix(p), Target::Unix(t)) => p == t,
            (ConnectObject::Host { host, ports }, Target::Host { name, port }) => {
                ports.contains(*port) && host.matches(name)
            }
            (ConnectObject::V4 { net, ports }, Target::Addr(sa)) => match sa.ip() {
                IpAddr::V4(ip) => ports.contains(sa.port()) && net.contains(ip),
                IpAddr::V6(_) => false,
            },
            (ConnectObject::V6 { net, ports }, Target::Addr(sa)) => match sa.ip() {
                IpAddr::V6(ip) => ports.contains(sa.port()) && net.contains(ip),
                IpAddr::V4(_) => false,
            },
            _ => false,
        }
    }
}

impl fmt::Display for ConnectObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectObject::Host { host, ports } => write!(f, "{host}:{ports}"),
            ConnectObject::V4 { net, ports } if net.prefix_len == 32 => {
                write!(f, "{}:{ports}", net.addr)
            }
            ConnectObject::V4 { net, ports } => {
                write!(f, "{}/{}:{ports}", net.addr, net.prefix_len)
            }
            ConnectObject::V6 { net, ports } if net.prefix_len == 128 => {
                write!(f, "[{}]:{ports}", net.addr)
            }
            ConnectObject::V6 { net, ports } => {
                write!(f, "[{}/{}]:{ports}", net.addr, net.prefix_len)
            }
            ConnectObject::Unix(p) => write!(f, "unix:{p}"),
            ConnectObject::Raw => f.write_str("raw"),
        }
    }
}

fn parse_prefix(len: Option<&str>, max: u8, text: &str) -> Result<u8, String> {
    let Some(len) = len else { return Ok(max) };
    match len.parse::<u8>() {
        Ok(n) if n <= max && !len.starts_with('+') => Ok(n),
        _ => Err(format!(
            "bad CIDR in \"{text}\": prefix length \"{len}\" must be 0-{max}"
        )),
    }
}

fn parse_unix(rest: &str) -> Result<String, String> {
    if rest.contains('\0') {
        return Err("unix socket names cannot contain NUL".into());
    }
    if rest.len() > 1 && (rest.starts_with('/') || rest.starts_with('@')) {
        Ok(rest.to_string())
    } else {
        Err(format!(
            "bad unix socket \"unix:{rest}\": expected unix:/absolute/path or unix:@abstract-name"
        ))
    }
}

/// Whether a unix socket address is spelled the one way a rule can name it: an abstract name
/// (`@name`), or an absolute path with no empty, `.` or `..` component and no trailing `/`.
///
/// The kernel judges the address string as the process passes it, not the socket it reaches,
/// so `/run/./docker.sock` would dodge a refuse rule on `/run/docker.sock`. A path spelled any
/// other way (relative ones included) is therefore refused unless a rule names that exact
/// spelling, whatever the policy's default.
pub fn unix_is_canonical(address: &str) -> bool {
    if address.starts_with('@') {
        return true;
    }
    let Some(rest) = address.strip_prefix('/') else {
        return false;
    };
    rest.is_empty()
        || rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Lower-cases a host name, drops one trailing dot, and checks its labels.
pub fn parse_host_name(name: &str, text: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(name)
    } else {
        Err(format!(
            "bad host name in \"{text}\": expected letters, digits, '-' and '.', optionally a leading \"*.\""
        ))
    }
}

/// What a workload connects to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An address and port.
    Addr(SocketAddr),
    /// A host name and port (matched against host rules; the resolver's question).
    Host {
        /// The name (normalised by [`Target::parse`] and [`Target::normalized`]).
        name: String,
        /// The port.
        port: u16,
    },
    /// A unix socket: `"/path"` or `"@abstract"`.
    Unix(String),
    /// A raw or packet socket.
    Raw,
}

impl Target {
    /// Parses `1.2.3.4:443`, `[::1]:80`, `host:443`, `unix:/run/x.sock`, `unix:@name` or `raw`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if s == "raw" {
            return Ok(Target::Raw);
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            return parse_unix(rest).map(Target::Unix);
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr).normalized());
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!(
                "bad target \"{s}\": expected ip:port, [ipv6]:port, host:port, unix:/path, unix:@name or raw"
            ));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("bad port \"{port}\" in \"{s}\" (0-65535)"))?;
        if host.contains(':') || host.contains('[') {
            return Err(format!("bad address \"{host}\" in \"{s}\""));
        }
        let name = parse_host_name(host, s)?;
        Ok(Target::Host { name, port })
    }

    /// The form rules judge: IPv4-mapped IPv6 becomes IPv4; host names lower-case without a
    /// trailing dot.
    pub fn normalized(self) -> Target {
        match self {
            Target::Addr(SocketAddr::V6(sa)) => match sa.ip().to_ipv4_mapped() {
                Some(v4) => Target::Addr(SocketAddr::new(IpAddr::V4(v4), sa.port())),
                None => Target::Addr(SocketAddr::V6(sa)),
            },
            Target::Host { name, port } => {
                let name = name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase();
                Target::Host { name, port }
            }
            other => other,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Host { name, port } => write!(f, "{name}:{port}"),
            Target::Unix(p) => write!(f, "unix:{p}"),
            Target::Raw => f.write_str("raw"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ConnectObject {
        ConnectObject::parse(s).unwrap()
    }
    fn t(s: &str) -> Target {
        Target::parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints_canonically() {
        for (input, out) in [
            ("api.anthropic.com:443", "api.anthropic.com:443"),
            ("API.Example.COM.:443", "api.example.com:443"),
            ("*.github.com:443", "*.github.com:443"),
            ("10.0.0.0/8:5432", "10.0.0.0/8:5432"),
            ("127.0.0.1:8000-8999", "127.0.0.1:8000-8999"),
            ("1.2.3.4:443-443", "1.2.3.4:443"),
            ("[2001:db8::/32]:443", "[2001:db8::/32]:443"),
            ("[::1]:*", "[::1]:*"),
            ("[::ffff:10.0.0.0/104]:80", "10.0.0.0/8:80"),
            ("unix:/run/app.sock", "unix:/run/app.sock"),
            ("unix:@name", "unix:@name"),
            ("raw", "raw"),
        ] {
            assert_eq!(p(input).to_string(), out, "{input}");
        }
    }

    #[test]
    fn rejects_bad_objects() {
        for bad in [
            "1.2.3.4:0",
            "1.2.3.4:65536",
            "1.2.3.4:9000-8000",
            "1.2.3.4:",
            "1.2.3.4",
            "10.0.0.1/8:80",
            "10.0.0.0/33:80",
            "300.1.1.1:80",
            "::1:80",
            "[::1/129]:80",
            "[zz]:80",
            "[::1]",
            "unix:",
            "unix:rel",
            "unix:@",
            "*.:443",
            "a..b:443",
            "*:443",
            "ex ample.com:443",
        ] {
            assert!(ConnectObject::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching() {
        assert!(p("*.github.com:443").matches(&t("api.github.com:443")));
        assert!(p("*.github.com:443").matches(&t("API.GitHub.com.:443")));
        assert!(!p("*.github.com:443").matches(&t("github.com:443")));
        assert!(!p("*.github.com:443").matches(&t("evilgithub.com:443")));
        assert!(p("10.0.0.0/8:*").matches(&t("10.9.9.9:0")));
        assert!(p("10.0.0.0/8:*").matches(&t("[::ffff:10.1.2.3]:80")));
        assert!(!p("[::/0]:*").matches(&t("[::ffff:10.1.2.3]:80")));
        assert!(p("[2001:db8::/32]:443").matches(&t("[2001:db8::1]:443")));
        assert!(!p("127.0.0.1:8000-8999").matches(&t("127.0.0.1:9000")));
        assert!(p("unix:@x").matches(&t("unix:@x")));
        for ok in [
            "/",
            "/run/app.sock",
            "/run/.hidden",
            "/run/...",
            "@x",
            "@/a//b/../",
        ] {
            assert!(unix_is_canonical(ok), "{ok}");
        }
        for bad in [
            "//run/x",
            "/run//x",
            "/run/./x",
            "/run/../run/x",
            "/run/x/",
            "/run/.",
            "/run/..",
            "run/x",
            "./x",
            "",
        ] {
            assert!(!unix_is_canonical(bad), "{bad}");
        }
        assert!(!p("unix:@x").matches(&t("unix:/x")));
    }
}
