//! The CLI side of the control socket.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
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

/// Sends `req` and hands every response line's result to `each` until the daemon closes the
/// stream (for `audit --follow`).
pub async fn stream(
    socket: &Path,
    req: &Request,
    mut each: impl FnMut(serde_json::Value) -> bool,
) -> Result<(), ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(req).context("encode request")?;
    line.push('\n');
    write.write_all(line.as_bytes()).await.context("send request")?;
    let mut lines = BufReader::new(read).lines();
    while let Some(answer) = lines.next_line().await.context("read response")? {
        let resp: Response = serde_json::from_str(&answer).context("decode response")?;
        if !resp.ok {
            return Err(ClientError::Api(
                resp.error.unwrap_or_else(|| {
                    ApiError::new(crate::api::ErrorCode::Internal, "error without detail")
                }),
            ));
        }
        if let Some(n) = resp.lagged {
            tracing::warn!("{n} audit records skipped: this client read too slowly");
            continue;
        }
        if !each(resp.result.unwrap_or(serde_json::Value::Null)) {
            break;
        }
    }
    Ok(())
}

/// Sends one request and returns its result.
pub async fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(req).context("encode request")?;
    line.push('\n');
    // A daemon that refuses the request may answer and close before reading all of it: the
    // answer matters more than the write error.
    let sent = write.write_all(line.as_bytes()).await;
    let mut reader = BufReader::new(read);
    let mut answer = String::new();
    reader.read_line(&mut answer).await.context("read response")?;
    if answer.is_empty() {
        sent.context("send request")?;
        return Err(anyhow!("the daemon closed the connection without answering").into());
    }
    let resp: Response = serde_json::from_str(&answer).context("decode response")?;
    if !resp.ok {
        return Err(ClientError::Api(
            resp.error
                .unwrap_or_else(|| ApiError::new(crate::api::ErrorCode::Internal, "error without detail")),
        ));
    }
    let result = resp.result.unwrap_or(serde_json::Value::Null);
    Ok(serde_json::from_value(result).context("decode result")?)
}
