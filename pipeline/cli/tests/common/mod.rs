//! `envsynth serve` (or `simulate-policy`) as a child process on a free loopback port, and plain
//! HTTP/1.1 requests to it, for the binary's tests; and a second reader (pyarrow) for the files they write. Each
//! test file uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_envsynth");

pub struct Served {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
}

impl Served {
    /// Start `envsynth serve` on `db` with `home` as `$ENVSYNTH_HOME` (where registered plugins
    /// live), `cache` as the compiled-component cache and `token` as the write token; returns
    /// once it listens.
    pub fn start(db: &str, home: &Path, cache: &Path, token: &str) -> Served {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--db", db])
            .env("ENVSYNTH_HOME", home)
            .env("ENVSYNTH_CACHE", cache)
            .env("ENVSYNTH_TOKEN", token);
        Served::announced(cmd, "envsynth serve")
    }

    /// `envsynth simulate-policy` (`agent`: oracle, noisy:P, random) for the tasks at `tasks`:
    /// an OpenAI-compatible API at `url()` + `/v1`.
    pub fn simulated_policy(tasks: &Path, agent: &str) -> Served {
        let mut cmd = Command::new(BIN);
        cmd.args(["simulate-policy", "--addr", "127.0.0.1:0", "--agent", agent])
            .arg("--tasks")
            .arg(tasks);
        Served::announced(cmd, "envsynth simulate-policy")
    }

    /// Spawns `cmd`, and returns once it prints the line with its `http://` address.
    fn announced(mut cmd: Command, what: &str) -> Served {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split(['/', ' ', '\n']).next())
            .filter(|a| !a.is_empty())
        else {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("{what} did not start: {line}{err}");
        };
        Served {
            addr: addr.to_string(),
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request on its own connection; returns the status and the body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.send(method, path, body.unwrap_or(""), "")
    }

    /// The same, with the bearer token.
    pub fn authorized(&self, method: &str, path: &str, body: &str, token: &str) -> (u16, String) {
        self.send(
            method,
            path,
            body,
            &format!("Authorization: Bearer {token}\r\n"),
        )
    }

    fn send(&self, method: &str, path: &str, body: &str, headers: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` with python3 (pyarrow installed by `.ci/requirements.txt`) on `args` and
/// returns what it printed; fails the test with its output if it fails.
pub fn python(script: &str, args: &[&str]) -> String {
    let py = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        py.status.success(),
        "python check failed: {}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );
    String::from_utf8_lossy(&py.stdout).trim().to_string()
}
