//! A small blocking HTTP/1.1 client for the service, over a Unix socket or TCP.
//!
//! One request per connection (`Connection: close`); responses with `Content-Length`,
//! chunked transfer encoding (streamed output) or read-to-EOF bodies. This is all the
//! `corral` client commands and the tests need, with no async runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::config::Addr;
use crate::wire::{ErrorBody, Health, RunList, RunState, RunStatus, SubmitRequest, SubmitResponse};

/// What can go wrong talking to the service.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service cannot be reached at all. The cause is part of the message (and not
    /// a `source`), so a `{:#}` chain says it once.
    #[error(
        "cannot reach the corral service at {addr}: {error}{}",
        unreachable_hint(error)
    )]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why.
        error: std::io::Error,
    },
    /// The connection failed midway or the answer was not HTTP.
    #[error("talking to the corral service at {addr}: {why}")]
    Protocol {
        /// The address.
        addr: String,
        /// What went wrong.
        why: String,
    },
    /// The service answered with an error status.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
}

/// What to do about a connection refused by the file system's permissions.
fn unreachable_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        "; the socket (or a directory above it) is not open to this user: the service's \
         admin grants access, e.g. with a group that owns the socket's directory, and \
         with --allow-group GROUP for who may submit (see docs/service.md, \
         \"Who can do what\")"
    } else {
        ""
    }
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

enum Framing {
    Length(u64),
    Chunked { left: u64, done: bool },
    Eof,
}

/// A response whose body is read on demand (so output can be streamed).
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The headers, names lowercased.
    pub headers: Vec<(String, String)>,
    reader: BufReader<Box<dyn Conn>>,
    framing: Framing,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish()
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.framing {
            Framing::Length(0) => Ok(0),
            Framing::Length(left) => {
                let n = (*left).min(buf.len() as u64) as usize;
                let got = self.reader.read(&mut buf[..n])?;
                if got == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the body ended early",
                    ));
                }
                *left -= got as u64;
                Ok(got)
            }
            Framing::Eof => self.reader.read(buf),
            Framing::Chunked { done: true, .. } => Ok(0),
            Framing::Chunked { left, done } => {
                if *left == 0 {
                    let mut line = String::new();
                    self.reader.read_line(&mut line)?;
                    let size = line.trim().split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("bad chunk size {line:?}"),
                        )
                    })?;
                    if size == 0 {
                        // Trailers, then the empty line.
                        loop {
                            line.clear();
                            if self.reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let n = (*left).min(buf.len() as u64) as usize;
                let got = self.reader.read(&mut buf[..n])?;
                if got == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the chunked body ended early",
                    ));
                }
                *left -= got as u64;
                if *left == 0 {
                    let mut crlf = [0u8; 2];
                    self.reader.read_exact(&mut crlf)?;
                }
                Ok(got)
            }
        }
    }
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole body.
    pub fn bytes(mut self) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.read_to_end(&mut v)?;
        Ok(v)
    }

    /// The whole body as text.
    pub fn text(self) -> std::io::Result<String> {
        Ok(String::from_utf8_lossy(&self.bytes()?).into_owned())
    }
}

/// Percent-encodes a path segment.
pub fn encode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// A client of one service.
#[derive(Debug, Clone)]
pub struct Client {
    addr: Addr,
    /// Read timeout per response (None: wait forever, e.g. for `follow`).
    pub read_timeout: Option<Duration>,
    /// The bearer token sent with every request (a TCP service needs one).
    pub token: Option<String>,
}

impl Client {
    /// A client for the service at `addr`.
    pub fn new(addr: Addr) -> Client {
        Client {
            addr,
            read_timeout: Some(Duration::from_secs(120)),
            token: None,
        }
    }

    /// The same client, sending `token` as its bearer token.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// The address.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    fn connect(&self) -> Result<Box<dyn Conn>, ClientError> {
        let unreachable = |error| ClientError::Unreachable {
            addr: self.addr.to_string(),
            error,
        };
        Ok(match &self.addr {
            Addr::Unix(p) => {
                let s = std::os::unix::net::UnixStream::connect(p).map_err(unreachable)?;
                s.set_read_timeout(self.read_timeout).map_err(unreachable)?;
                Box::new(s)
            }
            Addr::Tcp(a) => {
                let s = std::net::TcpStream::connect_timeout(a, Duration::from_secs(10))
                    .map_err(unreachable)?;
                s.set_read_timeout(self.read_timeout).map_err(unreachable)?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
        })
    }

    /// Sends one request and returns the response, whatever its status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let mut conn = self.connect()?;
        let proto = |why: String| ClientError::Protocol {
            addr: self.addr.to_string(),
            why,
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: corral/{}\r\n\
             Accept: */*\r\nConnection: close\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        if let Some(b) = body {
            msg.extend_from_slice(b);
        }
        // The service may answer (413) and close before reading a large body: a failed
        // write is only an error if no answer can be read either.
        let wrote = conn.write_all(&msg).and_then(|_| conn.flush());
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) if wrote.is_err() => {
                return Err(proto(format!(
                    "sending the request: {}",
                    wrote.unwrap_err()
                )))
            }
            Ok(0) => return Err(proto("the connection closed without an answer".into())),
            Err(e) => return Err(proto(format!("reading the answer: {e}"))),
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let status: u16 = match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
            (Some(v), Some(s)) if v.starts_with("HTTP/1.") => s,
            _ => return Err(proto(format!("not an HTTP answer: {:?}", line.trim()))),
        };
        let mut headers = Vec::new();
        loop {
            line.clear();
            if reader
                .read_line(&mut line)
                .map_err(|e| proto(format!("reading headers: {e}")))?
                == 0
            {
                break;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let framing = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            Framing::Chunked {
                left: 0,
                done: false,
            }
        } else if let Some(n) = get("content-length").and_then(|v| v.parse().ok()) {
            Framing::Length(n)
        } else if method == "HEAD" || status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            Framing::Eof
        };
        Ok(Response {
            status,
            headers,
            reader,
            framing,
        })
    }

    /// Sends a request and decodes a 2xx JSON answer; other statuses become
    /// [`ClientError::Api`] with the service's message.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, T), ClientError> {
        let r = self.request(method, path, body)?;
        let status = r.status;
        let text = r.bytes().map_err(|e| ClientError::Protocol {
            addr: self.addr.to_string(),
            why: format!("reading the answer: {e}"),
        })?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ErrorBody>(&text)
                .map(|e| e.error)
                .unwrap_or_else(|_| {
                    format!(
                        "the service answered {status}: {}",
                        String::from_utf8_lossy(&text).trim()
                    )
                });
            return Err(ClientError::Api { status, message });
        }
        let v = serde_json::from_slice(&text).map_err(|e| ClientError::Protocol {
            addr: self.addr.to_string(),
            why: format!(
                "unexpected answer ({e}): {}",
                String::from_utf8_lossy(&text)
            ),
        })?;
        Ok((status, v))
    }

    /// `POST /runs`: (201 or 200, the run's id and state).
    pub fn submit(&self, req: &SubmitRequest) -> Result<(u16, SubmitResponse), ClientError> {
        let body = serde_json::to_vec(req).expect("a request serializes");
        self.call("POST", "/runs", Some(&body))
    }

    /// `GET /runs/{id}`.
    pub fn status(&self, id: &str) -> Result<RunStatus, ClientError> {
        Ok(self.call("GET", &format!("/runs/{}", encode(id)), None)?.1)
    }

    /// `GET /runs/{id}/wait?timeout=S`: (true when final, the status).
    pub fn wait(&self, id: &str, timeout_s: f64) -> Result<(bool, RunStatus), ClientError> {
        let (code, st) = self.call(
            "GET",
            &format!("/runs/{}/wait?timeout={timeout_s}", encode(id)),
            None,
        )?;
        Ok((code == 200, st))
    }

    /// Waits until the run is final, however long that takes.
    pub fn wait_done(&self, id: &str) -> Result<RunStatus, ClientError> {
        loop {
            let (done, st) = self.wait(id, 60.0)?;
            if done {
                return Ok(st);
            }
        }
    }

    /// `POST /runs/{id}/cancel`.
    pub fn cancel(&self, id: &str) -> Result<(u16, RunStatus), ClientError> {
        self.call("POST", &format!("/runs/{}/cancel", encode(id)), None)
    }

    /// `GET /runs?state=S&limit=N`.
    pub fn list(
        &self,
        state: Option<RunState>,
        limit: Option<usize>,
    ) -> Result<RunList, ClientError> {
        let mut q = Vec::new();
        if let Some(s) = state {
            q.push(format!("state={s}"));
        }
        if let Some(n) = limit {
            q.push(format!("limit={n}"));
        }
        let path = if q.is_empty() {
            "/runs".to_string()
        } else {
            format!("/runs?{}", q.join("&"))
        };
        Ok(self.call("GET", &path, None)?.1)
    }

    /// `GET /health`.
    pub fn health(&self) -> Result<Health, ClientError> {
        Ok(self.call("GET", "/health", None)?.1)
    }

    /// `GET /runs/{id}/output?stream=S&follow=B`: the body streams as it arrives.
    pub fn output(&self, id: &str, stream: &str, follow: bool) -> Result<Response, ClientError> {
        let r = self.request(
            "GET",
            &format!(
                "/runs/{}/output?stream={stream}&follow={follow}",
                encode(id)
            ),
            None,
        )?;
        if r.status != 200 {
            let status = r.status;
            let text = r.bytes().unwrap_or_default();
            let message = serde_json::from_slice::<ErrorBody>(&text)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("the service answered {status}"));
            return Err(ClientError::Api { status, message });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(encode("run-1_a"), "run-1_a");
        assert_eq!(encode("a/../b c"), "a%2F..%2Fb%20c");
    }

    /// The client against a canned chunked answer on a socket pair.
    #[test]
    fn chunked_body() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            )
            .unwrap();
        });
        let c = Client::new(Addr::Unix(sock));
        let r = c.request("GET", "/x", None).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text().unwrap(), "abcde");
        t.join().unwrap();
        let e = Client::new(Addr::Unix(dir.path().join("nope")))
            .health()
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot reach the corral service at"),
            "{e}"
        );
        // The cause is said once, also in an error chain (`corral: {e:#}`).
        fn chain_of(e: &dyn std::error::Error) -> String {
            let mut s = e.to_string();
            let mut src = e.source();
            while let Some(c) = src {
                s += &format!(": {c}");
                src = c.source();
            }
            s
        }
        let chain = chain_of(&e);
        assert_eq!(
            chain.matches("No such file or directory").count(),
            1,
            "{chain}"
        );
        assert!(!chain.contains("--allow-group"), "{chain}");
        let denied = ClientError::Unreachable {
            addr: "/run/corral/corral.sock".into(),
            error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let chain = chain_of(&denied);
        assert_eq!(chain.matches("permission denied").count(), 1, "{chain}");
        assert!(chain.contains("--allow-group"), "{chain}");
    }
}
