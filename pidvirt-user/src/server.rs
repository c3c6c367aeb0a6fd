//! The control socket: root only (mode 0600 and SO_PEERCRED), newline-delimited JSON, one
//! request a line and one response a line. The server knows the framing, the limits and the
//! error codes; what a request means is its [`Handler`]'s.

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, Encoder, Framed};

use crate::{
    api::{ApiError, AuditQuery, ErrorCode, MAX_REQUEST_BYTES, Request, Response},
    audit::{Filter, Record},
};

/// How long the server waits for a request line before closing an idle connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_mins(5);

/// What answers the requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request (called on a blocking thread: it may take locks and read /proc).
    fn handle(&self, req: Request) -> Result<Box<serde_json::value::RawValue>, ApiError>;
    /// The live audit stream for `audit --follow`, with its checked filter.
    fn follow(&self, query: AuditQuery) -> Result<Follow, ApiError>;
    /// Stops the daemon (called once the answer to `shutdown` is sent).
    fn shutdown(&self);
}

/// A live audit stream and which of its records a client wants.
pub struct Follow {
    pub filter: Filter,
    pub records: tokio::sync::broadcast::Receiver<Arc<Record>>,
}

/// Binds the socket at `path`: creates its directory, replaces a stale socket, refuses to steal
/// the socket of a running daemon, and restricts it to root.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another pidvirt daemon is serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Serves `listener` until the task is dropped.
pub async fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, handler.clone()));
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Parses one request line into a request or the error to answer with.
pub fn parse_request(line: &str) -> Result<Request, ApiError> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    let Some(op) = value.get("op") else {
        return Err(ApiError::new(ErrorCode::BadRequest, "request has no `op`"));
    };
    let Some(op) = op.as_str() else {
        return Err(ApiError::new(ErrorCode::BadRequest, "`op` must be a string"));
    };
    let op = op.to_string();
    serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("unknown variant") {
            ApiError::new(ErrorCode::UnknownOp, format!("unknown op `{op}`"))
        } else {
            ApiError::new(ErrorCode::BadRequest, format!("bad `{op}` request: {msg}"))
        }
    })
}

async fn connection<H: Handler>(stream: UnixStream, handler: Arc<H>) {
    let peer_uid = stream.peer_cred().map(|c| c.uid()).ok();
    // Lines of bytes: a request that is not UTF-8 gets an error answer like any other.
    let mut framed = Framed::new(stream, RequestCodec::new());
    if peer_uid != Some(0) {
        // Read the request first, so that the client is not writing into a closed socket.
        let _ = tokio::time::timeout(Duration::from_secs(5), framed.next()).await;
        let err = ApiError::new(
            ErrorCode::PermissionDenied,
            format!("permission denied: peer uid {peer_uid:?} is not root"),
        );
        let _ = send(&mut framed, Response::err(err)).await;
        return;
    }
    loop {
        let request = match tokio::time::timeout(IDLE_TIMEOUT, framed.next()).await {
            Ok(Some(Ok(Line::Request(bytes)))) => match std::str::from_utf8(&bytes) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => parse_request(line),
                Err(_) => Err(ApiError::new(ErrorCode::BadRequest, "request is not UTF-8")),
            },
            Ok(Some(Ok(Line::TooLong))) => Err(ApiError::new(
                ErrorCode::TooLong,
                format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            )),
            // Idle for too long, closed by the client, or unreadable.
            Err(_) | Ok(None | Some(Err(_))) => return,
        };
        // The daemon stops only once the client has its answer.
        let shutdown = matches!(request, Ok(Request::Shutdown));
        let response = match request {
            Ok(Request::Audit { container, verdict, syscall, since, follow: true, .. }) => {
                let handler = handler.clone();
                let query = AuditQuery { container, verdict, syscall, since };
                match tokio::task::spawn_blocking(move || handler.follow(query)).await {
                    Ok(Ok(stream)) => {
                        follow(&mut framed, stream).await;
                        return;
                    }
                    Ok(Err(e)) => Response::err(e),
                    Err(e) => Response::err(ApiError::internal(e)),
                }
            }
            Ok(req) => {
                let handler = handler.clone();
                match tokio::task::spawn_blocking(move || handler.handle(req)).await {
                    Ok(Ok(v)) => Response::raw(v),
                    Ok(Err(e)) => Response::err(e),
                    Err(e) => Response::err(ApiError::internal(e)),
                }
            }
            Err(e) => Response::err(e),
        };
        let sent = send(&mut framed, response).await;
        if shutdown {
            handler.shutdown();
            return;
        }
        if sent.is_err() {
            return;
        }
    }
}

/// A request line, or the news that one was too long (as an item, not an error: a framed
/// stream ends after its decoder's first error, and a too-long request must not end the
/// connection).
pub enum Line {
    Request(Bytes),
    TooLong,
}

/// Newline-delimited byte lines of at most MAX_REQUEST_BYTES.
pub struct RequestCodec(AnyDelimiterCodec);

impl RequestCodec {
    pub fn new() -> Self {
        Self(AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), MAX_REQUEST_BYTES))
    }
}

impl Default for RequestCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for RequestCodec {
    type Item = Line;
    type Error = AnyDelimiterCodecError;
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, Self::Error> {
        match self.0.decode(buf) {
            Ok(line) => Ok(line.map(Line::Request)),
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => Ok(Some(Line::TooLong)),
            Err(e) => Err(e),
        }
    }
}

impl Encoder<String> for RequestCodec {
    type Error = AnyDelimiterCodecError;
    fn encode(&mut self, line: String, buf: &mut BytesMut) -> Result<(), Self::Error> {
        self.0.encode(line, buf)
    }
}

type Conn = Framed<UnixStream, RequestCodec>;

/// Streams audit records to the client until it goes away.
async fn follow(framed: &mut Conn, stream: Follow) {
    use tokio::sync::broadcast::error::RecvError;
    let Follow { filter, records: mut rx } = stream;
    loop {
        tokio::select! {
            r = rx.recv() => {
                let response = match r {
                    Ok(record) if filter.accepts(&record) => Response::ok(&*record),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => Response::lagged(n),
                    Err(RecvError::Closed) => return,
                };
                if send(framed, response).await.is_err() {
                    return;
                }
            }
            // The client closing its side ends the stream.
            next = framed.next() => if next.is_none() { return },
        }
    }
}

async fn send(framed: &mut Conn, r: Response) -> Result<(), AnyDelimiterCodecError> {
    let line = serde_json::to_string(&r)
        .unwrap_or_else(|e| format!(r#"{{"ok":false,"error":{{"code":"internal","message":"{e}"}}}}"#));
    framed.send(line).await
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, atomic::AtomicBool};

    use tokio::{
        io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
        sync::broadcast,
    };

    use super::*;
    use crate::audit::ContainerMatch;

    #[test]
    fn bad_requests_are_classified() {
        assert_eq!(parse_request("{").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(parse_request("[]").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(parse_request(r#"{"op":5}"#).unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(parse_request(r#"{"op":"fly"}"#).unwrap_err().code, ErrorCode::UnknownOp);
        assert_eq!(parse_request(r#"{"op":"translate"}"#).unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            parse_request(r#"{"op":"ps","container":"x"}"#).unwrap(),
            Request::Ps { container: Some("x".into()) }
        );
    }

    /// Answers `ps` with the container it was asked for, `containers` with an error, and
    /// streams what the test sends.
    struct Fake {
        live: broadcast::Sender<Arc<Record>>,
        stopped: AtomicBool,
        seen: Mutex<Vec<Request>>,
    }

    impl Handler for Fake {
        fn handle(&self, req: Request) -> Result<Box<serde_json::value::RawValue>, ApiError> {
            self.seen.lock().unwrap().push(req.clone());
            let raw = |v: serde_json::Value| Ok(serde_json::value::to_raw_value(&v).unwrap());
            match req {
                Request::Ps { container } => raw(serde_json::json!({ "asked": container })),
                Request::Shutdown => raw(serde_json::json!({ "stopping": true })),
                _ => Err(ApiError::new(ErrorCode::UnknownContainer, "nope")),
            }
        }
        fn follow(&self, q: AuditQuery) -> Result<Follow, ApiError> {
            if q.container.as_deref() == Some("ghost") {
                return Err(ApiError::new(ErrorCode::UnknownContainer, "unknown container `ghost`"));
            }
            let filter = Filter {
                container: q.container.map(ContainerMatch::Id),
                verdict: q.verdict,
                ..Default::default()
            };
            Ok(Follow { filter, records: self.live.subscribe() })
        }
        fn shutdown(&self) {
            self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    struct Served {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        fake: Arc<Fake>,
    }

    fn serve_fake() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = bind(&path).unwrap();
        let fake = Arc::new(Fake {
            live: broadcast::channel(16).0,
            stopped: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        });
        tokio::spawn(serve(listener, fake.clone()));
        Served { _dir: dir, path, fake }
    }

    struct Client {
        read: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
        write: tokio::net::unix::OwnedWriteHalf,
    }

    impl Client {
        async fn connect(path: &Path) -> Self {
            let (read, write) = UnixStream::connect(path).await.unwrap().into_split();
            Self { read: BufReader::new(read).lines(), write }
        }
        async fn send(&mut self, bytes: &[u8]) {
            self.write.write_all(bytes).await.unwrap();
        }
        async fn answer(&mut self) -> serde_json::Value {
            let line = tokio::time::timeout(Duration::from_secs(5), self.read.next_line())
                .await
                .expect("an answer within 5 s")
                .unwrap()
                .expect("the connection is open");
            serde_json::from_str(&line).unwrap()
        }
        async fn call(&mut self, line: &str) -> serde_json::Value {
            self.send(format!("{line}\n").as_bytes()).await;
            self.answer().await
        }
    }

    fn code(v: &serde_json::Value) -> &str {
        v["error"]["code"].as_str().unwrap_or("")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_bad_line_gets_its_error_and_the_connection_survives() {
        let s = serve_fake();
        let mut c = Client::connect(&s.path).await;
        assert_eq!(c.call(r#"{"op":"ps","container":"web"}"#).await["result"]["asked"], "web");
        assert_eq!(code(&c.call("{").await), "bad_request");
        assert_eq!(code(&c.call(r#"{"op":"fly"}"#).await), "unknown_op");
        assert_eq!(code(&c.call(r#"{"op":"ps","bogus":1}"#).await), "bad_request");
        c.send(b"\xff\xfe\n").await;
        assert_eq!(code(&c.answer().await), "bad_request");
        let long = format!("{{\"op\":\"ps\",\"container\":\"{}\"}}\n", "x".repeat(MAX_REQUEST_BYTES));
        c.send(long.as_bytes()).await;
        assert_eq!(code(&c.answer().await), "too_long");
        // Blank lines are skipped; the handler's own errors keep their code.
        c.send(b"\n\n").await;
        assert_eq!(code(&c.call(r#"{"op":"containers"}"#).await), "unknown_container");
        assert_eq!(c.call(r#"{"op":"ps"}"#).await["ok"], true);
        let seen = s.fake.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "only well-formed requests reach the handler: {seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_is_answered_before_the_handler_stops() {
        let s = serve_fake();
        let mut c = Client::connect(&s.path).await;
        assert_eq!(c.call(r#"{"op":"shutdown"}"#).await["result"]["stopping"], true);
        let start = std::time::Instant::now();
        while !s.fake.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(start.elapsed() < Duration::from_secs(5), "shutdown was not passed on");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_streams_filtered_records_until_the_client_goes() {
        let s = serve_fake();
        let mut c = Client::connect(&s.path).await;
        assert_eq!(
            code(&c.call(r#"{"op":"audit","follow":true,"container":"ghost"}"#).await),
            "unknown_container"
        );
        c.send(b"{\"op\":\"audit\",\"follow\":true,\"verdict\":\"leak\"}\n").await;
        let record = |verdict: &str, value: i64| Record {
            ts_ns: 1,
            time: None,
            syscall: "kill".into(),
            direction: "in".into(),
            verdict: verdict.into(),
            value,
            container: "c".into(),
            runtime: None,
            k8s: None,
            caller: crate::audit::Caller {
                host_pid: 1,
                host_tid: 1,
                vpid: 1,
                vtid: 1,
                pidns: 1,
                comm: "x".into(),
            },
            target: None,
            also: None,
            read_at: None,
            truth: None,
        };
        // The subscription exists once the server has read the request.
        let start = std::time::Instant::now();
        while s.fake.live.receiver_count() == 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "no subscriber");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (verdict, value) in [("unknown", 1), ("leak", 2), ("leak", 3)] {
            s.fake.live.send(Arc::new(record(verdict, value))).unwrap();
        }
        assert_eq!(c.answer().await["result"]["value"], 2);
        assert_eq!(c.answer().await["result"]["value"], 3);
        drop(c);
        let start = std::time::Instant::now();
        while s.fake.live.receiver_count() > 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "the stream outlived its client");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
