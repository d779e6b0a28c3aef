//! A copy of every audit record to syslog (RFC 5424), for SIEMs that collect from a syslog
//! relay rather than from files.
//!
//! The file (or stdout) stays the record of truth, with its durability guarantees; syslog
//! is a best-effort copy: a message a relay does not take is not retried, and a failing
//! relay never holds up requests. Transports: UDP (RFC 5426, one record per datagram),
//! TCP (RFC 6587 octet counting) and a local Unix datagram socket (`/dev/log`).

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

/// Where the copy goes (`[audit] syslog = { address = … }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    /// `udp://host:port`.
    Udp(String),
    /// `tcp://host:port`.
    Tcp(String),
    /// `unix:///dev/log`.
    Unix(PathBuf),
}

/// The syslog copy's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    /// Where to send.
    pub address: SyslogAddress,
    /// `APP-NAME` (default `claimgate`).
    pub app_name: String,
    /// Facility number (default 10, `authpriv`: audit trails of access decisions).
    pub facility: u8,
}

/// Facility names RFC 5424 §6.2.1 numbers.
const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("authpriv", 10),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

impl SyslogTarget {
    /// Reads `address` (`udp://`, `tcp://`, `unix://`) and a facility name.
    pub fn parse(
        address: &str,
        app_name: Option<&str>,
        facility: Option<&str>,
    ) -> Result<SyslogTarget, String> {
        let address = if let Some(a) = address.strip_prefix("udp://") {
            SyslogAddress::Udp(host_port(a)?)
        } else if let Some(a) = address.strip_prefix("tcp://") {
            SyslogAddress::Tcp(host_port(a)?)
        } else if let Some(p) = address.strip_prefix("unix://") {
            SyslogAddress::Unix(PathBuf::from(p))
        } else {
            return Err(format!(
                "syslog address {address:?}: write udp://host:port, tcp://host:port or unix:///dev/log"
            ));
        };
        let facility = match facility {
            None => 10,
            Some(f) => FACILITIES
                .iter()
                .find(|(name, _)| *name == f)
                .map(|(_, n)| *n)
                .ok_or_else(|| {
                    format!(
                        "syslog facility {f:?}: one of auth, authpriv, daemon, local0…local7, syslog, user"
                    )
                })?,
        };
        let app_name = app_name.unwrap_or("claimgate");
        if app_name.is_empty() || app_name.len() > 48 || !app_name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("syslog app_name: 1 to 48 printable ASCII characters".into());
        }
        Ok(SyslogTarget {
            address,
            app_name: app_name.to_string(),
            facility,
        })
    }
}

fn host_port(a: &str) -> Result<String, String> {
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(a.to_string()),
        _ => Err(format!("syslog address {a:?}: needs host:port")),
    }
}

/// An open connection to the relay, reopened after a failure.
pub struct Syslog {
    target: SyslogTarget,
    hostname: String,
    conn: Option<Conn>,
}

enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixDatagram),
}

/// Severity of a record: 6 informational, 4 warning for a denial, 3 error for a 5xx.
pub fn severity(denied: bool, status: u16) -> u8 {
    if status >= 500 {
        3
    } else if denied {
        4
    } else {
        6
    }
}

impl Syslog {
    /// A sender for `target`; nothing is connected until the first record.
    pub fn new(target: SyslogTarget) -> Syslog {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or_else(|| "-".into());
        Syslog {
            target,
            hostname,
            conn: None,
        }
    }

    /// The RFC 5424 message for one record (`msg` is its JSON line, without the newline).
    fn message(&self, severity: u8, time: &str, msgid: &str, msg: &[u8]) -> Vec<u8> {
        let pri = u16::from(self.target.facility) * 8 + u16::from(severity);
        let msgid = if msgid.is_empty() || !msgid.bytes().all(|b| b.is_ascii_graphic()) {
            "-"
        } else {
            &msgid[..msgid.len().min(32)]
        };
        let mut out = format!(
            "<{pri}>1 {time} {} {} {} {msgid} - ",
            self.hostname,
            self.target.app_name,
            std::process::id()
        )
        .into_bytes();
        out.extend_from_slice(msg);
        out
    }

    /// Sends one record; on failure the connection is dropped (and made again next time).
    pub fn send(&mut self, severity: u8, time: &str, msgid: &str, msg: &[u8]) -> std::io::Result<()> {
        let message = self.message(severity, time, msgid, msg);
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let result = match self.conn.as_mut() {
            Some(Conn::Udp(socket, to)) => socket.send_to(&message, *to).map(|_| ()),
            Some(Conn::Tcp(stream)) => {
                // RFC 6587 octet counting: the length, a space, the message
                let mut framed = format!("{} ", message.len()).into_bytes();
                framed.extend_from_slice(&message);
                stream.write_all(&framed)
            }
            #[cfg(unix)]
            Some(Conn::Unix(socket)) => socket.send(&message).map(|_| ()),
            None => Ok(()),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn connect(&self) -> std::io::Result<Conn> {
        let resolve = |a: &str| {
            a.to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{a}: no address")))
        };
        match &self.target.address {
            SyslogAddress::Udp(a) => {
                let to = resolve(a)?;
                let local: SocketAddr = if to.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                Ok(Conn::Udp(UdpSocket::bind(local)?, to))
            }
            SyslogAddress::Tcp(a) => {
                let stream = TcpStream::connect_timeout(&resolve(a)?, Duration::from_secs(2))?;
                stream.set_write_timeout(Some(Duration::from_secs(2)))?;
                Ok(Conn::Tcp(stream))
            }
            #[cfg(unix)]
            SyslogAddress::Unix(path) => {
                let socket = std::os::unix::net::UnixDatagram::unbound()?;
                socket.connect(path)?;
                Ok(Conn::Unix(socket))
            }
            #[cfg(not(unix))]
            SyslogAddress::Unix(_) => Err(std::io::Error::other("unix sockets need a Unix host")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_record_goes_out_as_an_rfc5424_datagram() {
        let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
        relay.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let target =
            SyslogTarget::parse(&format!("udp://{}", relay.local_addr().unwrap()), None, None).unwrap();
        let mut s = Syslog::new(target);
        s.send(
            4,
            "2026-11-29T15:21:15.820Z",
            "GetObject",
            br#"{"decision":"deny"}"#,
        )
        .unwrap();
        let mut buf = [0u8; 2048];
        let n = relay.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).to_string();
        // authpriv (10) * 8 + warning (4) = 84
        assert!(got.starts_with("<84>1 2026-11-29T15:21:15.820Z "), "{got}");
        assert!(
            got.ends_with(&format!(
                " claimgate {} GetObject - {{\"decision\":\"deny\"}}",
                std::process::id()
            )),
            "{got}"
        );
    }

    #[test]
    fn over_tcp_each_record_is_octet_counted() {
        let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = SyslogTarget::parse(
            &format!("tcp://{}", relay.local_addr().unwrap()),
            Some("cg"),
            Some("local3"),
        )
        .unwrap();
        let mut s = Syslog::new(target);
        s.send(6, "2026-11-29T15:21:15.820Z", "PutObject", b"{}").unwrap();
        s.send(3, "2026-11-29T15:21:16.000Z", "", b"{}").unwrap();
        drop(s);
        let (mut conn, _) = relay.accept().unwrap();
        let mut all = String::new();
        conn.read_to_string(&mut all).unwrap();
        let (len, rest) = all.split_once(' ').unwrap();
        let first = &rest[..len.parse::<usize>().unwrap()];
        // local3 (19) * 8 + informational (6) = 158
        assert!(first.starts_with("<158>1 2026-11-29T15:21:15.820Z "), "{first}");
        assert!(first.ends_with(" cg ") || first.contains(" cg "), "{first}");
        let second = &rest[first.len()..];
        assert!(
            second.contains("<155>1 ") && second.contains(" - - {}"),
            "{second}"
        );
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        assert!(
            SyslogTarget::parse("syslog.example.com:514", None, None)
                .unwrap_err()
                .contains("udp://host:port")
        );
        assert!(
            SyslogTarget::parse("udp://relay", None, None)
                .unwrap_err()
                .contains("host:port")
        );
        assert!(
            SyslogTarget::parse("udp://relay:514", None, Some("mail"))
                .unwrap_err()
                .contains("facility")
        );
        assert!(SyslogTarget::parse("udp://relay:514", Some("has space"), None).is_err());
        let unix = SyslogTarget::parse("unix:///dev/log", None, Some("auth")).unwrap();
        assert_eq!(
            (unix.address, unix.facility),
            (SyslogAddress::Unix("/dev/log".into()), 4)
        );
    }

    #[test]
    fn severities_follow_the_outcome() {
        assert_eq!(
            (severity(false, 200), severity(true, 403), severity(false, 503)),
            (6, 4, 3)
        );
    }
}
