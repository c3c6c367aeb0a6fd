//! The control socket: root only (mode 0600 and SO_PEERCRED), newline-delimited JSON.

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

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
    let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(MAX_REQUEST_BYTES));
    if peer_uid != Some(0) {
        let err = ApiError::new(
            ErrorCode::BadRequest,
            format!("permission denied: peer uid {peer_uid:?} is not root"),
        );
        let _ = send(&mut framed, Response::err(err)).await;
        return;
    }
    loop {
        let line = match tokio::time::timeout(IDLE_TIMEOUT, framed.next()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(Ok(line))) => line,
            Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                let err = ApiError::new(
                    ErrorCode::TooLong,
                    format!("request longer than {MAX_REQUEST_BYTES} bytes"),
                );
                if send(&mut framed, Response::err(err)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Some(Err(LinesCodecError::Io(_)))) => return,
        };
        if line.trim().is_empty() {
            continue;
        }
        let response = match parse_request(&line) {
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
        if send(&mut framed, response).await.is_err() {
            return;
        }
    }
}

/// Streams audit records to the client until it goes away.
async fn follow(framed: &mut Framed<UnixStream, LinesCodec>, state: &State, filter: crate::audit::Filter) {
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

async fn send(framed: &mut Framed<UnixStream, LinesCodec>, r: Response) -> Result<(), LinesCodecError> {
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
