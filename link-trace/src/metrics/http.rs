//! The metrics endpoint: `GET /metrics` over HTTP/1.1.
//!
//! Written by hand on tokio's TcpListener rather than with a web framework:
//! there is one route and one method, no keep-alive, no body to read, and
//! `httparse` parses the request head. Each connection is a task of its own
//! on the daemon's runtime, with a limit on the request's size and on the
//! time to read it and to write the answer, and at most `MAX_CONNECTIONS`
//! at once, so a slow or hostile client is cut off and can hold up neither
//! capture nor other scrapes.

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry as PromRegistry;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

/// A request head longer than this is refused (431).
pub const MAX_REQUEST_BYTES: usize = 8192;
const MAX_HEADERS: usize = 32;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed as soon as accepted.
const MAX_CONNECTIONS: usize = 16;
/// What `prometheus-client` writes: the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "metrics_listen {0} is not a loopback address; the endpoint has no authentication, so serving it beyond this host needs --metrics-allow-remote"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// The endpoint is for this host unless the operator says otherwise.
pub fn check_address(addr: SocketAddr, allow_remote: bool) -> Result<(), MetricsError> {
    if allow_remote || addr.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(MetricsError::NotLoopback(addr))
    }
}

/// Checks the address and binds it (at start-up, so a port in use is a
/// start-up error).
pub async fn bind(addr: SocketAddr, allow_remote: bool) -> Result<TcpListener, MetricsError> {
    check_address(addr, allow_remote)?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves scrapes of `registry` until the runtime stops.
pub fn spawn(listener: TcpListener, registry: Arc<PromRegistry>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(serve(listener, registry))
}

async fn serve(listener: TcpListener, registry: Arc<PromRegistry>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut last_report: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: say so now and then, and
                // wait a little rather than spin.
                if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    eprintln!("link-trace: warning: metrics endpoint: accept failed: {e}");
                    last_report = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the limit the connection is dropped, that is closed, at once.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            handle(stream, &registry).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, registry: &PromRegistry) {
    let response = match timeout(READ_TIMEOUT, read_request(&mut stream, registry)).await {
        Ok(Some(response)) => response,
        // The client went away before a whole request head.
        Ok(None) => return,
        Err(_) => Response::text(
            408,
            "Request Timeout",
            "request head not received in time\n",
        ),
    };
    let bytes = response.to_bytes();
    let _ = timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

async fn read_request(stream: &mut TcpStream, registry: &PromRegistry) -> Option<Response> {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        let room = MAX_REQUEST_BYTES - request.len();
        request.extend_from_slice(&chunk[..n.min(room)]);
        if let Some(response) = respond(&request, || super::encode(registry)) {
            return Some(response);
        }
    }
}

/// An HTTP response; `Connection: close` always.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// HEAD: the headers of the GET answer without its body.
    pub head_only: bool,
    /// The methods to name in an `Allow` header (405).
    pub allow: Option<&'static str>,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            head_only: false,
            allow: None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if let Some(allow) = self.allow {
            out.extend_from_slice(format!("Allow: {allow}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The answer to the request bytes received so far, or None while the
/// head is incomplete. `scrape` runs only for a good request for /metrics.
pub fn respond(
    request: &[u8],
    scrape: impl FnOnce() -> Result<String, std::fmt::Error>,
) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let too_large = || {
        Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        )
    };
    match parsed.parse(request) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if request.len() >= MAX_REQUEST_BYTES => {
            return Some(too_large());
        }
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return Some(too_large()),
        Err(e) => {
            return Some(Response::text(
                400,
                "Bad Request",
                &format!("bad request: {e}\n"),
            ));
        }
    }
    let path = parsed.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    if path != "/metrics" {
        return Some(Response::text(
            404,
            "Not Found",
            "not found: metrics are at /metrics\n",
        ));
    }
    let method = parsed.method.unwrap_or_default();
    if method != "GET" && method != "HEAD" {
        return Some(Response {
            allow: Some("GET, HEAD"),
            ..Response::text(405, "Method Not Allowed", "only GET and HEAD\n")
        });
    }
    Some(match scrape() {
        Ok(text) => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            body: text.into_bytes(),
            head_only: method == "HEAD",
            allow: None,
        },
        Err(_) => Response::text(
            500,
            "Internal Server Error",
            "the metrics could not be encoded\n",
        ),
    })
}
