//! Remote syslog: zonit's records reach a collector on
//! 127.0.0.1 as RFC 5424 messages, over UDP and over TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use zonit::config::SyslogTarget;

/// `<PRI>1 TIMESTAMP HOST APP PID MSGID SD MSG`
fn fields(msg: &str) -> Vec<&str> {
    msg.splitn(8, ' ').collect()
}

// One test: the logger is process-wide.
#[test]
fn records_reach_a_udp_then_a_tcp_collector_as_rfc5424() {
    zonit::logging::init(log::LevelFilter::Info, false);

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    zonit::logging::add_syslog(Some(&SyslogTarget::Udp(udp.local_addr().unwrap())));
    log::warn!("remote hello");
    log::info!(target: "unit:web", "tick 1");
    log::debug!("not sent: below the level");
    let mut buf = [0u8; 2048];
    let n = udp.recv(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    let f = fields(&first);
    // facility daemon (3) * 8 + warning (4)
    assert_eq!(f[0], "<28>1", "{first}");
    assert!(f[1].contains('T'), "RFC 3339 timestamp: {first}");
    assert_eq!(f[3], "zonit", "{first}");
    assert_eq!(f[4], std::process::id().to_string(), "{first}");
    assert_eq!(f[7], "zonit: warn: remote hello", "{first}");
    let n = udp.recv(&mut buf).unwrap();
    let second = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(second.starts_with("<30>1 "), "{second}");
    assert!(second.ends_with("zonit[web]: tick 1"), "{second}");
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(udp.recv(&mut buf).is_err(), "a debug record was sent");

    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    zonit::logging::add_syslog(Some(&SyslogTarget::Tcp(tcp.local_addr().unwrap())));
    let (conn, _) = tcp.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    log::error!("over tcp");
    log::info!("and again");
    let mut lines = BufReader::new(conn).lines();
    let a = lines.next().unwrap().unwrap();
    let b = lines.next().unwrap().unwrap();
    assert!(
        a.starts_with("<27>1 ") && a.ends_with("zonit: error: over tcp"),
        "{a}"
    );
    assert!(
        b.starts_with("<30>1 ") && b.ends_with("zonit: info: and again"),
        "{b}"
    );

    zonit::logging::add_syslog(None);
}
