//! Whether a connection reached Postgres through a connection pooler.
//!
//! permafrost keeps state on its sessions: each table's advisory lock (held
//! by the run's connection between its transactions) and the session
//! settings every connection starts with (`TimeZone`, `DateStyle`,
//! `row_security`, timeouts).  A pooler in transaction or statement mode (PgBouncer
//! `pool_mode = transaction`, the transaction ports of Supavisor and the
//! like) hands the server connection to another client after each
//! transaction: the lock stays behind on a server connection that other
//! clients use — a later run there takes it again as its own, one that
//! reaches the server directly finds the table held until the pooler
//! closes that connection — and the settings reach other clients, while
//! ours run without them.
//!
//! A pooler cannot pass the server's cancel key on (its clients share
//! server connections), so it announces one of its own: the backend pid a
//! connection's handshake announced differs from `pg_backend_pid()`.  That
//! tells a pooler from a direct connection (and from a TCP proxy or NAT,
//! which pass the handshake through), not a session-mode pooler from a
//! transaction-mode one: a pooler is refused unless `database.pooler:
//! session` says it keeps one server connection per client session.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio_postgres::Client;
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

use crate::config::Pooler;
use crate::error::{Error, Result};

/// The code a `CancelRequest` carries after its length.
const CANCEL_REQUEST_CODE: [u8; 4] = 80877102_i32.to_be_bytes();

/// Refuses a connection that reached Postgres through a pooler, unless
/// `pooler` allows one.  `announced` is the pid the handshake announced
/// (`None`: not known, which refuses nothing), `backend` the server's
/// `pg_backend_pid()`.
pub fn judge(announced: Option<i32>, backend: i32, pooler: Pooler) -> Result<()> {
    let Some(announced) = announced else {
        return Ok(());
    };
    if announced == backend || pooler == Pooler::Session {
        return Ok(());
    }
    Err(Error::config(format!(
        "`database.dsn` reaches PostgreSQL through a connection pooler or a proxy that hands \
         out cancel keys of its own (the connection was announced as backend {announced}, the \
         server runs it as {backend})"
    ))
    .with_hint(
        "permafrost holds each table's lock and its settings on its session, which a pooler in \
         transaction or statement mode gives other clients between transactions: point \
         `database.dsn` at the server (or the pooler's session-mode port); behind one that keeps \
         one server connection per client session (PgBouncer `pool_mode = session`, a proxy \
         that pools nothing), set `database.pooler: session`; nothing was read or deleted",
    ))
}

/// The backend pid `client`'s handshake announced (its `BackendKeyData`),
/// read from the cancel request tokio-postgres would send for it: written
/// into memory, not sent.  `None` if that request does not come out as
/// the protocol's.
pub async fn announced_pid(client: &Client) -> Option<i32> {
    let (ours, mut theirs) = tokio::io::duplex(256);
    // An `sslmode` that asks for TLS first sends an SSLRequest and reads
    // one byte: yes — and the "TLS" below passes the stream through.
    theirs.write_all(b"S").await.ok()?;
    client
        .cancel_token()
        .cancel_query_raw(Captured(ours), PassThrough)
        .await
        .ok()?;
    let mut sent = Vec::new();
    theirs.read_to_end(&mut sent).await.ok()?;
    cancel_request_pid(&sent)
}

/// The pid of the `CancelRequest` that ends `sent` (after an SSLRequest,
/// if one was sent): length 16, the request's code, pid, secret key.
fn cancel_request_pid(sent: &[u8]) -> Option<i32> {
    let request = sent.get(sent.len().checked_sub(16)?..)?;
    let (head, rest) = request.split_at(8);
    if head[..4] != 16_i32.to_be_bytes() || head[4..] != CANCEL_REQUEST_CODE {
        return None;
    }
    Some(i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]))
}

/// The in-memory end a cancel request is written to.
struct Captured(DuplexStream);

/// A "TLS" that hands the stream on as it is.
struct PassThrough;

impl TlsConnect<Captured> for PassThrough {
    type Stream = Captured;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<Captured>>;

    fn connect(self, stream: Captured) -> Self::Future {
        std::future::ready(Ok(stream))
    }
}

impl TlsStream for Captured {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for Captured {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Captured {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancel_request(pid: i32) -> Vec<u8> {
        let mut buf = 16_i32.to_be_bytes().to_vec();
        buf.extend(CANCEL_REQUEST_CODE);
        buf.extend(pid.to_be_bytes());
        buf.extend(0x5eed_i32.to_be_bytes());
        buf
    }

    #[test]
    fn the_pid_is_read_from_the_cancel_request_with_or_without_an_ssl_request() {
        assert_eq!(cancel_request_pid(&cancel_request(4242)), Some(4242));
        let mut after_ssl = vec![0, 0, 0, 8, 4, 210, 22, 47];
        after_ssl.extend(cancel_request(-7));
        assert_eq!(cancel_request_pid(&after_ssl), Some(-7));
        assert_eq!(cancel_request_pid(&after_ssl[..20]), None);
        assert_eq!(cancel_request_pid(&[0, 0, 0, 8, 4, 210, 22, 47]), None);
    }

    #[test]
    fn a_pooler_is_refused_unless_it_keeps_sessions() {
        assert!(judge(Some(10), 10, Pooler::None).is_ok());
        assert!(judge(None, 10, Pooler::None).is_ok());
        assert!(judge(Some(99), 10, Pooler::Session).is_ok());
        let e = judge(Some(99), 10, Pooler::None).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Config);
        assert!(e.to_string().contains("connection pooler"), "{e}");
    }
}
