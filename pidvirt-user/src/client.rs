//! The CLI side of the control socket.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::api::{ApiError, Request, Response};

/// Why a request failed: the daemon could not be reached, or it answered with an error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the pidvirt daemon at {path}: {source} (is `pidvirt run` running?)")]
    Connect { path: String, source: std::io::Error },
    #[error("{0}")]
    Api(ApiError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A connection with one request sent.
struct Sent {
    answers: BufReader<OwnedReadHalf>,
    /// Kept open: dropping it shuts our side down, which ends a followed stream.
    _write: OwnedWriteHalf,
    /// The result of the write (a daemon that refuses a request may answer and close before
    /// reading all of it: the answer matters more than the write error).
    result: std::io::Result<()>,
}

/// Connects and sends one request line.
async fn send(socket: &Path, req: &Request) -> Result<Sent, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(req).context("encode request")?;
    line.push('\n');
    let result = write.write_all(line.as_bytes()).await;
    Ok(Sent { answers: BufReader::new(read), _write: write, result })
}

/// The result of a response line, decoded as `T` (no result decodes as JSON null), or its error.
fn result_of<T: DeserializeOwned>(resp: &Response) -> Result<T, ClientError> {
    if !resp.ok {
        return Err(ClientError::Api(
            resp.error
                .clone()
                .unwrap_or_else(|| ApiError::new(crate::api::ErrorCode::Internal, "error without detail")),
        ));
    }
    let raw = resp.result.as_ref().map_or("null", |r| r.get());
    Ok(serde_json::from_str(raw).context("decode result")?)
}

/// Sends `req` and hands every response line's result to `each` until the daemon closes the
/// stream (for `audit --follow`).
pub async fn stream(
    socket: &Path,
    req: &Request,
    mut each: impl FnMut(serde_json::Value) -> bool,
) -> Result<(), ClientError> {
    let sent = send(socket, req).await?;
    sent.result.context("send request")?;
    let mut lines = sent.answers.lines();
    while let Some(answer) = lines.next_line().await.context("read response")? {
        let resp: Response = serde_json::from_str(&answer).context("decode response")?;
        if let Some(n) = resp.lagged {
            tracing::warn!("{n} audit records skipped: this client read too slowly");
            continue;
        }
        if !each(result_of(&resp)?) {
            break;
        }
    }
    Ok(())
}

/// Sends one request and returns its result.
pub async fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, ClientError> {
    let mut sent = send(socket, req).await?;
    let mut answer = String::new();
    sent.answers.read_line(&mut answer).await.context("read response")?;
    if answer.is_empty() {
        sent.result.context("send request")?;
        return Err(anyhow!("the daemon closed the connection without answering").into());
    }
    let resp: Response = serde_json::from_str(&answer).context("decode response")?;
    result_of(&resp)
}
