//! `prepaid serve` as a child process, for the tests that need a real
//! process to stop or kill: ports chosen by the OS, read back from the
//! line the server prints first.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const ADMIN: &str = "admin-token-0123456789";

pub struct Server {
    pub child: Child,
    pub grpc: String,
    pub http: String,
}

/// A test that fails before it stops its server must not leave the process
/// running: dropped, the server is killed (a stopped one is not signalled
/// again; std remembers it was waited for).
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `prepaid serve [args…]` on `data_dir` with an admin token.
pub fn start(data_dir: &Path, args: &[&str]) -> Server {
    start_env(data_dir, args, &[])
}

/// `start`, with more environment (which wins over the defaults here).
pub fn start_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    spawn(Command::new(env!("CARGO_BIN_EXE_prepaid")), data_dir, args, env)
}

/// `start_env` inside the network namespace `netns` (`ip netns exec`,
/// which execs the server: the child is the server itself).
pub fn start_in(netns: &str, data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_prepaid")]);
    spawn(cmd, data_dir, args, env)
}

fn spawn(mut cmd: Command, data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = cmd
        .arg("serve")
        .arg("--simulated-gateway")
        .args(args)
        .env("PREPAID_DATA_DIR", data_dir)
        .env("PREPAID_GRPC_ADDR", "127.0.0.1:0")
        .env("PREPAID_HTTP_ADDR", "127.0.0.1:0")
        .env("PREPAID_TOKENS", format!("ops:admin:{ADMIN}"))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("the server printed its addresses").unwrap();
    // "prepaid: serving gRPC on A and HTTP on B"
    assert!(line.starts_with("prepaid: serving gRPC on"), "{line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    let server = Server { child, grpc: words[4].to_string(), http: words[8].to_string() };
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    server
}

/// SIGTERM; the exit code.
pub fn sigterm(mut server: Server) -> i32 {
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    server.child.wait().unwrap().code().unwrap_or(-1)
}

/// A value from the server's `/metrics` (0 when the series is absent).
pub fn metric(server: &Server, series: &str) -> u64 {
    let mut stream = std::net::TcpStream::connect(&server.http).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}
