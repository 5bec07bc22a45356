//! A closed-loop HTTP/1.1 load generator for the benchmarks: `connections` keep-alive
//! connections each send a request, wait for the whole response, and send the next, until the
//! time is up. Latency is measured per request from send to the last body byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
pub use hyper::body::Bytes;

/// What to send: `requests` in turn, each a path and, for a POST, its JSON body (`None`: a GET).
#[derive(Clone, Debug)]
pub struct Load {
    pub addr: SocketAddr,
    pub requests: Vec<(String, Option<Bytes>)>,
    pub connections: usize,
    pub duration: Duration,
}

/// What came back.
#[derive(Clone, Debug)]
pub struct Report {
    pub requests: u64,
    /// Responses other than 200, and transport errors.
    pub errors: u64,
    pub seconds: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The first unexpected response, to say what went wrong.
    pub first_error: Option<String>,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Run a load for its duration on the current runtime.
pub async fn run(load: &Load) -> Result<Report, String> {
    if load.requests.is_empty() {
        return Err("no requests to send".into());
    }
    let start = Instant::now();
    let deadline = start + load.duration;
    let mut handles = Vec::with_capacity(load.connections);
    for c in 0..load.connections.max(1) {
        let load = load.clone();
        handles.push(tokio::spawn(
            async move { connection(load, c, deadline).await },
        ));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for h in handles {
        let (lat, errs, first) = h.await.map_err(|e| e.to_string())??;
        latencies.extend(lat);
        errors += errs;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            0
        } else {
            let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
            latencies[i - 1]
        }
    };
    Ok(Report {
        requests: latencies.len() as u64,
        errors,
        seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: latencies.last().copied().unwrap_or(0),
        first_error,
    })
}

type ConnResult = Result<(Vec<u64>, u64, Option<String>), String>;

async fn connection(load: Load, index: usize, deadline: Instant) -> ConnResult {
    let stream = tokio::net::TcpStream::connect(load.addr)
        .await
        .map_err(|e| format!("connecting to {}: {e}", load.addr))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    // Connections start at different requests so they do not all send the same one.
    let mut next = index * 7919;
    while Instant::now() < deadline {
        let (path, body) = &load.requests[next % load.requests.len()];
        next += 1;
        let builder = hyper::Request::builder()
            .uri(path)
            .header(hyper::header::HOST, load.addr.to_string());
        let request = match body.clone() {
            Some(b) => builder
                .method(hyper::Method::POST)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(b)),
            None => builder
                .method(hyper::Method::GET)
                .body(Full::new(Bytes::new())),
        }
        .map_err(|e| e.to_string())?;
        let sent = Instant::now();
        let outcome = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        match outcome {
            Ok((status, _)) if status == hyper::StatusCode::OK => {
                latencies.push(sent.elapsed().as_micros() as u64);
            }
            Ok((status, body)) => {
                errors += 1;
                first_error
                    .get_or_insert_with(|| format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
                break;
            }
        }
    }
    Ok((latencies, errors, first_error))
}
