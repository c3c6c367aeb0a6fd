//! The control socket: root only (mode 0600 and SO_PEERCRED), newline-delimited JSON.

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, Encoder, Framed};

use crate::{
    api::{ApiError, ErrorCode, MAX_REQUEST_BYTES, Request, Response},
    daemon::{IDLE_TIMEOUT, State},
};

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

pub async fn serve(listener: UnixListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, state.clone()));
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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

async fn connection(stream: UnixStream, state: Arc<State>) {
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
        let line = match tokio::time::timeout(IDLE_TIMEOUT, framed.next()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(Ok(Line::Request(bytes)))) => match String::from_utf8(bytes.to_vec()) {
                Ok(line) => line,
                Err(_) => {
                    let err = ApiError::new(ErrorCode::BadRequest, "request is not UTF-8");
                    if send(&mut framed, Response::err(err)).await.is_err() {
                        return;
                    }
                    continue;
                }
            },
            Ok(Some(Ok(Line::TooLong))) => {
                let err = ApiError::new(
                    ErrorCode::TooLong,
                    format!("request longer than {MAX_REQUEST_BYTES} bytes"),
                );
                if send(&mut framed, Response::err(err)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Some(Err(_))) => return,
        };
        if line.trim().is_empty() {
            continue;
        }
        let request = parse_request(&line);
        // The daemon stops only once the client has its answer.
        let shutdown = matches!(request, Ok(Request::Shutdown));
        let response = match request {
            Ok(Request::Audit { container, verdict, follow: true, .. }) => {
                match state.audit_filter(container, verdict) {
                    Ok(filter) => {
                        follow(&mut framed, &state, filter).await;
                        return;
                    }
                    Err(e) => Response::err(e),
                }
            }
            Ok(req) => {
                let state = state.clone();
                match tokio::task::spawn_blocking(move || state.handle(req)).await {
                    Ok(Ok(v)) => Response::ok(v),
                    Ok(Err(e)) => Response::err(e),
                    Err(e) => Response::err(ApiError::new(ErrorCode::Internal, e.to_string())),
                }
            }
            Err(e) => Response::err(e),
        };
        let sent = send(&mut framed, response).await;
        if shutdown {
            state.shutdown.notify_one();
            return;
        }
        if sent.is_err() {
            return;
        }
    }
}

/// Streams audit records to the client until it goes away.
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

async fn follow(framed: &mut Conn, state: &State, filter: crate::audit::Filter) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = state.audit.subscribe();
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
    use super::*;

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
}
