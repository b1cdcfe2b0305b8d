//! The server's side of a connection with consecutive `CopyData` messages
//! merged into one.
//!
//! Postgres sends a `COPY … TO STDOUT` one row per `CopyData` message, and
//! tokio-postgres hands each message on by itself: parsed, reference
//! counted, through its response channel and `CopyOutStream` — for a narrow
//! table a sixth of permafrost's CPU went to that per-row handling.  The
//! protocol gives `CopyData` boundaries no meaning (a consumer must accept
//! any split of the stream, and the COPY decoder does), so [`CopyMerge`]
//! rewrites the bytes it reads: every run of complete `CopyData` messages
//! in one read becomes a single message of their payloads, up to
//! [`MERGED_MAX`] bytes.  Every other message, a `CopyData` too large to
//! hold, and everything before [`MergeSwitch::start`] pass through as they
//! came.  It must sit where the protocol is plain text: on the socket
//! of a connection without TLS, on the TLS stream of one with.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslMode, TargetSessionAttrs};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Config, NoTls};

/// The most payload bytes one merged message carries: small enough for
/// tokio-postgres's read buffer (8 KiB) to take a message without growing.
const MERGED_MAX: usize = 4 * 1024;
/// What one read from the underlying stream asks for at least.
const READ_SIZE: usize = 64 * 1024;
/// A message longer than this passes through in pieces instead of being
/// held until it is whole.
const HOLD_MAX: usize = 64 * 1024;

const COPY_DATA: u8 = b'd';

/// A stream whose reads merge consecutive `CopyData` messages (see the
/// module doc) once its [`MergeSwitch`] has started; writes go through
/// untouched.
pub struct CopyMerge<S> {
    inner: S,
    active: Arc<AtomicBool>,
    /// Bytes read; `input[..filled]` are not rewritten yet (at most a
    /// partial message).  Allocated at the first merging read.
    input: Vec<u8>,
    filled: usize,
    /// Rewritten bytes, served from `served` on.
    output: Vec<u8>,
    served: usize,
    /// Bytes of a message passing through in pieces still to come.
    passing: usize,
    /// Set once the stream stops making sense as messages: from then on
    /// everything passes through, and tokio-postgres reports the problem.
    broken: bool,
}

/// Turns the rewriting of a [`CopyMerge`] on.
#[derive(Clone, Default)]
pub struct MergeSwitch(Arc<AtomicBool>);

impl MergeSwitch {
    /// From now on, merge: call once the connection is established (its
    /// startup and authentication are not messages of this shape) and
    /// before the first query — the next byte starts a message.
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl<S> CopyMerge<S> {
    /// Wraps `inner`, passing everything through until `switch` starts.
    pub fn new(inner: S, switch: &MergeSwitch) -> Self {
        Self {
            inner,
            active: switch.0.clone(),
            input: Vec::new(),
            filled: 0,
            output: Vec::new(),
            served: 0,
            passing: 0,
            broken: false,
        }
    }

    fn merging(&self) -> bool {
        !self.broken && self.active.load(Ordering::Acquire)
    }

    /// Rewrites what `input` holds into `output`; a partial message short
    /// enough to hold stays in `input`.
    fn rewrite(&mut self) {
        let mut at = 0;
        let mut merged: Option<usize> = None; // where the open merged message starts
        loop {
            let rest = &self.input[at..self.filled];
            if self.passing > 0 {
                let n = self.passing.min(rest.len());
                self.output.extend_from_slice(&rest[..n]);
                self.passing -= n;
                at += n;
                if self.passing > 0 {
                    break;
                }
                continue;
            }
            if rest.len() < 5 {
                break;
            }
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if len < 4 {
                self.broken = true;
                break;
            }
            let whole = 1 + len;
            let complete = whole <= rest.len();
            if rest[0] == COPY_DATA && complete {
                let start = match merged {
                    Some(start) if self.output.len() - start - 5 + (len - 4) <= MERGED_MAX => start,
                    _ => {
                        close(&mut self.output, merged);
                        self.output.extend_from_slice(&[COPY_DATA, 0, 0, 0, 0]);
                        self.output.len() - 5
                    }
                };
                merged = Some(start);
                self.output.extend_from_slice(&rest[5..whole]);
                at += whole;
                continue;
            }
            close(&mut self.output, merged.take());
            if complete {
                self.output.extend_from_slice(&rest[..whole]);
                at += whole;
            } else if whole > HOLD_MAX {
                self.output.extend_from_slice(rest);
                self.passing = whole - rest.len();
                at += rest.len();
            } else {
                break;
            }
        }
        close(&mut self.output, merged);
        if self.broken {
            self.output.extend_from_slice(&self.input[at..self.filled]);
            at = self.filled;
        }
        self.input.copy_within(at..self.filled, 0);
        self.filled -= at;
    }
}

/// Writes the length of the merged message that starts at `start` (its
/// tag) and runs to the end of `output`.
fn close(output: &mut [u8], start: Option<usize>) {
    if let Some(start) = start {
        let len = (output.len() - start - 1) as u32;
        output[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CopyMerge<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.served < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.served);
                buf.put_slice(&this.output[this.served..this.served + n]);
                this.served += n;
                if this.served == this.output.len() {
                    this.output.clear();
                    this.served = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if !this.merging() && this.filled == 0 {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.input.is_empty() {
                this.input = vec![0; HOLD_MAX + READ_SIZE];
            }
            let mut read = ReadBuf::new(&mut this.input[this.filled..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let got = read.filled().len();
            if got == 0 {
                // The end of the stream: a partial message goes on as it is.
                this.output.extend_from_slice(&this.input[..this.filled]);
                this.filled = 0;
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.filled += got;
            this.rewrite();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CopyMerge<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for CopyMerge<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// One server [`open`] may connect to: a TCP host (its `hostaddr`, if
/// given, is where the socket goes; the name is what TLS verifies) or a
/// Unix socket directory.
pub enum Endpoint {
    Tcp {
        host: String,
        addr: Option<std::net::IpAddr>,
        port: u16,
    },
    #[cfg(unix)]
    Unix { dir: std::path::PathBuf, port: u16 },
}

impl Endpoint {
    fn describe(&self) -> String {
        match self {
            Endpoint::Tcp { host, port, .. } => format!("{host}:{port}"),
            #[cfg(unix)]
            Endpoint::Unix { dir, port } => format!("{}:{port}", dir.display()),
        }
    }
}

/// Where [`open`] connects: the DSN's servers in the order libpq tries
/// them, and what the session must allow (`target_session_attrs`).
pub struct Targets {
    endpoints: Vec<Endpoint>,
    attrs: TargetSessionAttrs,
}

/// The DSN's servers as libpq pairs them — the i-th host with the i-th
/// `hostaddr` and the i-th port (or the one port) — or `None`, which sends
/// the DSN to tokio-postgres as it is: lists that do not pair (its error
/// then), a `hostaddr` without a host name or beside a socket directory,
/// `load_balance_hosts=random`.
pub fn targets(cfg: &Config) -> Option<Targets> {
    let (hosts, addrs, ports) = (cfg.get_hosts(), cfg.get_hostaddrs(), cfg.get_ports());
    let paired = hosts.len() == addrs.len() || addrs.is_empty();
    if hosts.is_empty()
        || !paired
        || (ports.len() > 1 && ports.len() != hosts.len())
        || cfg.get_load_balance_hosts() != LoadBalanceHosts::Disable
    {
        return None;
    }
    let endpoints = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let addr = addrs.get(i).copied();
            match host {
                Host::Tcp(host) => Some(Endpoint::Tcp {
                    host: host.clone(),
                    addr,
                    port,
                }),
                #[cfg(unix)]
                Host::Unix(dir) => addr.is_none().then(|| Endpoint::Unix {
                    dir: dir.clone(),
                    port,
                }),
            }
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Targets {
        endpoints,
        attrs: cfg.get_target_session_attrs(),
    })
}

/// Why [`open`] did not connect.
pub enum Failure {
    Postgres(tokio_postgres::Error),
    /// The TCP connection itself (or the TLS name).
    Socket(io::Error),
    /// Every server was reached, but none allows what
    /// `target_session_attrs` asks for.
    Attrs(TargetSessionAttrs),
}

/// Connects to the first of `targets` that answers and allows what its
/// `target_session_attrs` asks (libpq's order; the last failure when none
/// does), over a socket of our own with [`CopyMerge`] where the protocol
/// is plain text — on the TLS stream when the server took TLS, on the
/// socket when not — and drives the connection on its own task.
pub async fn open<T>(cfg: &Config, targets: &Targets, mut tls: Option<T>) -> Result<Client, Failure>
where
    T: MakeTlsConnect<CopyMerge<Socket>>,
    T::TlsConnect: Send + 'static,
    <T::TlsConnect as TlsConnect<CopyMerge<Socket>>>::Future: Send + 'static,
    T::Stream: Send + 'static,
{
    let mut failure = None;
    for endpoint in &targets.endpoints {
        let client = match open_one(cfg, endpoint, tls.as_mut()).await {
            Ok(client) => client,
            Err(e) => {
                failure = Some(e);
                continue;
            }
        };
        match allows(&client, targets.attrs).await {
            Ok(true) => return Ok(client),
            Ok(false) => failure = Some(Failure::Attrs(targets.attrs)),
            Err(e) => failure = Some(Failure::Postgres(e)),
        }
        tracing::debug!(
            "postgres {}: not taken ({:?} asked)",
            endpoint.describe(),
            targets.attrs
        );
    }
    Err(failure.unwrap_or_else(|| Failure::Socket(io::Error::other("no host to connect to"))))
}

/// Whether the session allows what `attrs` asks, by its
/// `transaction_read_only` as libpq and tokio-postgres read it.
async fn allows(client: &Client, attrs: TargetSessionAttrs) -> Result<bool, tokio_postgres::Error> {
    if attrs == TargetSessionAttrs::Any {
        return Ok(true);
    }
    let read_only = client
        .simple_query("SHOW transaction_read_only")
        .await?
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "on"),
            _ => None,
        });
    Ok(match attrs {
        TargetSessionAttrs::ReadWrite => read_only == Some(false),
        TargetSessionAttrs::ReadOnly => read_only == Some(true),
        _ => true,
    })
}

/// One connection to `endpoint`: the socket, TLS when `tls` is given and
/// the server takes it (never over a Unix socket, whatever `sslmode`
/// says, as libpq), the login.
async fn open_one<T>(
    cfg: &Config,
    endpoint: &Endpoint,
    tls: Option<&mut T>,
) -> Result<Client, Failure>
where
    T: MakeTlsConnect<CopyMerge<Socket>>,
    T::TlsConnect: Send + 'static,
    <T::TlsConnect as TlsConnect<CopyMerge<Socket>>>::Future: Send + 'static,
    T::Stream: Send + 'static,
{
    let socket = Socket::connect(cfg, endpoint)
        .await
        .map_err(Failure::Socket)?;
    let on_socket = MergeSwitch::default();
    let stream = CopyMerge::new(socket, &on_socket);
    let (tls, host) = match (tls, endpoint) {
        (Some(make), Endpoint::Tcp { host, .. }) => (Some(make), host.as_str()),
        _ => (None, ""),
    };
    let Some(make) = tls else {
        // Never TLS over a Unix socket, whatever `sslmode` asks: libpq's rule.
        let mut plain = cfg.clone();
        plain.ssl_mode(SslMode::Disable);
        let (client, connection) = plain
            .connect_raw(stream, NoTls)
            .await
            .map_err(Failure::Postgres)?;
        merge_from_now(&on_socket, endpoint, "socket");
        super::drive(connection);
        return Ok(client);
    };
    let connect = make
        .make_tls_connect(host)
        .map_err(|e| Failure::Socket(io::Error::other(e.into())))?;
    let on_tls = MergeSwitch::default();
    let tls = MergedTls {
        inner: connect,
        switch: on_tls.clone(),
        used: Arc::new(AtomicBool::new(false)),
    };
    let used = tls.used.clone();
    let (client, connection) = cfg
        .connect_raw(stream, tls)
        .await
        .map_err(Failure::Postgres)?;
    if used.load(Ordering::Acquire) {
        merge_from_now(&on_tls, endpoint, "TLS stream");
    } else {
        merge_from_now(&on_socket, endpoint, "socket");
    }
    super::drive(connection);
    Ok(client)
}

/// Starts `switch` (the connection to `endpoint` is up) and says where.
fn merge_from_now(switch: &MergeSwitch, endpoint: &Endpoint, on: &str) {
    switch.start();
    tracing::debug!(
        "postgres {}: COPY rows merged on the {on}",
        endpoint.describe()
    );
}

/// The socket under a connection [`open`] makes.
pub enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Socket {
    /// Connects to `endpoint` within the DSN's connect timeout.
    async fn connect(cfg: &Config, endpoint: &Endpoint) -> io::Result<Socket> {
        let connecting = async {
            match endpoint {
                Endpoint::Tcp { host, addr, port } => {
                    tcp(cfg, host, *addr, *port).await.map(Socket::Tcp)
                }
                #[cfg(unix)]
                Endpoint::Unix { dir, port } => {
                    tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
                        .await
                        .map(Socket::Unix)
                }
            }
        };
        match cfg.get_connect_timeout() {
            Some(limit) => tokio::time::timeout(*limit, connecting)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))?,
            None => connecting.await,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Socket::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The TCP socket to `host` (at `addr` when given), set up as
/// tokio-postgres sets up its own: no Nagle delay, the DSN's keepalives and
/// user timeout.
async fn tcp(
    cfg: &Config,
    host: &str,
    addr: Option<std::net::IpAddr>,
    port: u16,
) -> io::Result<TcpStream> {
    let stream = match addr {
        Some(ip) => TcpStream::connect((ip, port)).await?,
        None => TcpStream::connect((host, port)).await?,
    };
    stream.set_nodelay(true)?;
    let sock = socket2::SockRef::from(&stream);
    #[cfg(target_os = "linux")]
    if let Some(limit) = cfg.get_tcp_user_timeout() {
        sock.set_tcp_user_timeout(Some(*limit))?;
    }
    if cfg.get_keepalives() {
        let mut keepalive = socket2::TcpKeepalive::new().with_time(cfg.get_keepalives_idle());
        #[cfg(not(any(target_os = "windows", target_os = "openbsd", target_os = "solaris")))]
        if let Some(interval) = cfg.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        #[cfg(not(any(target_os = "windows", target_os = "openbsd", target_os = "solaris")))]
        if let Some(retries) = cfg.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        sock.set_tcp_keepalive(&keepalive)?;
    }
    Ok(stream)
}

/// A TLS connector whose stream merges COPY rows ([`CopyMerge`], started
/// by [`open`] once connected); `used` tells that the server took TLS.
struct MergedTls<T> {
    inner: T,
    switch: MergeSwitch,
    used: Arc<AtomicBool>,
}

impl<S, T> TlsConnect<S> for MergedTls<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: 'static,
{
    type Stream = CopyMerge<T::Stream>;
    type Error = T::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<CopyMerge<T::Stream>, T::Error>> + Send + 'static>>;

    fn connect(self, stream: S) -> Self::Future {
        let MergedTls {
            inner,
            switch,
            used,
        } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            let stream = handshake.await?;
            used.store(true, Ordering::Release);
            Ok(CopyMerge::new(stream, &switch))
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Serves `data` in reads of the sizes `sizes` cycles through.
    struct Chunked {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let size = this.sizes[this.turn % this.sizes.len()];
            this.turn += 1;
            let n = size.min(buf.remaining()).min(this.data.len() - this.at);
            buf.put_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(()))
        }
    }

    fn message(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    /// (tag, payload) of each message of `bytes`, which must be whole.
    fn messages(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            out.push((bytes[at], bytes[at + 5..at + 1 + len].to_vec()));
            at += 1 + len;
        }
        out
    }

    /// Consecutive CopyData payloads joined: what a COPY consumer sees.
    fn joined(msgs: &[(u8, Vec<u8>)]) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        for (tag, payload) in msgs {
            match out.last_mut() {
                Some((COPY_DATA, data)) if *tag == COPY_DATA => data.extend_from_slice(payload),
                _ => out.push((*tag, payload.clone())),
            }
        }
        out
    }

    /// A COPY's server side: a response, rows of varied widths (one far
    /// larger than is held), a notice in the middle, the end.
    fn copy_stream() -> Vec<u8> {
        let mut s = message(b'H', &[0, 0, 0]);
        let mut seed = 7u64;
        for row in 0..3000u32 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let width = match row {
                1500 => HOLD_MAX + 1000,
                _ => (seed >> 33) as usize % 120,
            };
            let payload: Vec<u8> = (0..width).map(|i| (i as u32 ^ row) as u8).collect();
            s.extend(message(COPY_DATA, &payload));
            if row == 700 {
                s.extend(message(b'N', b"SNOTICE\0\0"));
            }
        }
        s.extend(message(b'c', &[]));
        s.extend(message(b'C', b"COPY 3000\0"));
        s.extend(message(b'Z', b"I"));
        s
    }

    async fn through(data: Vec<u8>, sizes: Vec<usize>, start: bool) -> Vec<u8> {
        let switch = MergeSwitch::default();
        if start {
            switch.start();
        }
        let mut merged = CopyMerge::new(
            Chunked {
                data,
                at: 0,
                sizes,
                turn: 0,
            },
            &switch,
        );
        let mut out = Vec::new();
        merged.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn copy_rows_merge_into_fewer_messages_and_everything_else_stays() {
        let input = copy_stream();
        let sent = messages(&input);
        for sizes in [
            vec![1],
            vec![3, 7, 1],
            vec![5000],
            vec![65536],
            vec![17, 8192, 2],
        ] {
            let out = through(input.clone(), sizes.clone(), true).await;
            let got = messages(&out);
            assert_eq!(joined(&got), joined(&sent), "reads of {sizes:?}");
            // Only what one read brings is merged: nothing waits for more.
            let rows = got.iter().filter(|(t, _)| *t == COPY_DATA).count();
            assert!(
                sizes.iter().any(|s| *s < 100) || rows < sent.len() / 10,
                "reads of {sizes:?}: {rows} CopyData messages for 3000 rows"
            );
            assert!(got.iter().all(|(t, p)| *t != COPY_DATA
                || p.len() <= MERGED_MAX
                || p.len() == HOLD_MAX + 1000));
        }
    }

    #[tokio::test]
    async fn before_the_start_and_after_nonsense_bytes_pass_through_as_they_came() {
        let input = copy_stream();
        assert_eq!(through(input.clone(), vec![5, 9000], false).await, input);
        // A length below its own four bytes: not a message; from there on
        // everything passes through for tokio-postgres to refuse.
        let mut broken = message(COPY_DATA, b"row");
        broken.extend_from_slice(&[COPY_DATA, 0, 0, 0, 2, 1, 2, 3]);
        broken.extend(message(COPY_DATA, b"next"));
        let out = through(broken.clone(), vec![4096], true).await;
        assert_eq!(out, broken);
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_message_hands_on_what_came() {
        let mut input = message(COPY_DATA, b"whole");
        let cut = message(COPY_DATA, b"cut short");
        input.extend_from_slice(&cut[..7]);
        let out = through(input.clone(), vec![3], true).await;
        assert_eq!(out, input);
    }

    /// What `targets` makes of a DSN: each endpoint's description, or
    /// `None` when the DSN goes to tokio-postgres as it is.
    fn endpoints(dsn: &str) -> Option<Vec<String>> {
        let cfg: Config = dsn.parse().expect("a DSN");
        targets(&cfg).map(|t| t.endpoints.iter().map(Endpoint::describe).collect())
    }

    #[test]
    fn hosts_pair_with_their_hostaddr_and_port_as_libpq_pairs_them() {
        assert_eq!(endpoints("host=db port=6432"), Some(vec!["db:6432".into()]));
        assert_eq!(
            endpoints("host=a,b,/run/pg port=5433"),
            Some(vec![
                "a:5433".into(),
                "b:5433".into(),
                "/run/pg:5433".into()
            ])
        );
        assert_eq!(
            endpoints("host=a,b port=1,2 target_session_attrs=read-write"),
            Some(vec!["a:1".into(), "b:2".into()])
        );
        let cfg: Config = "host=a,b hostaddr=10.0.0.1,10.0.0.2"
            .parse()
            .expect("a DSN");
        let t = targets(&cfg).expect("paired");
        assert!(matches!(
            &t.endpoints[1],
            Endpoint::Tcp { host, addr: Some(ip), port: 5432 } if host == "b" && ip.to_string() == "10.0.0.2"
        ));
        // Left to tokio-postgres: what does not pair, no host name, random order.
        assert_eq!(endpoints("host=a,b port=1,2,3"), None);
        assert_eq!(endpoints("hostaddr=10.0.0.1"), None);
        assert_eq!(endpoints("host=/run/pg hostaddr=10.0.0.1"), None);
        assert_eq!(endpoints("host=a,b load_balance_hosts=random"), None);
    }
}
