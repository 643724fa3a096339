#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `wagate-sim` as its own process: it prints where it listens, serves the
//! control API there, and refuses non-loopback addresses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_wagate-sim");

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_simulator_process_announces_its_ports_and_serves_counters() {
    let mut child = Command::new(BIN)
        .args(["--ws", "127.0.0.1:0", "--control", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let ports: serde_json::Value = serde_json::from_str(&line).unwrap();
    let ws = ports["ws"].as_str().unwrap();
    assert!(
        ws.starts_with("ws://127.0.0.1:") && ws.ends_with("/ws/chat"),
        "{ws}"
    );
    let control = ports["control"].as_str().unwrap();
    let addr = control.trim_start_matches("http://");

    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /control/counters HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"connections_total\":0"), "{response}");
}

#[test]
fn the_simulator_process_refuses_to_listen_beyond_loopback() {
    let out = Command::new(BIN)
        .args(["--ws", "0.0.0.0:0", "--control", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
