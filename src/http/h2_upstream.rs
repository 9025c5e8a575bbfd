//! HTTP/2 to pool servers (`protocol = "h2"` on a `[[pools]]` entry): one multiplexed
//! connection per server, each request a stream on it.
//!
//! The shared exchange speaks HTTP/1.1 to an upstream, so each stream is handed to it as
//! the near end of an in-memory pipe ([`UpStream::Pipe`]), the mirror of `h2_server`: a
//! task here reads the HTTP/1.1 request the exchange writes, sends it as HEADERS and DATA
//! (request trailers too), and writes the server's answer back as an HTTP/1.1 response,
//! chunked with the HTTP/2 trailers as its trailer section when the request said
//! `TE: trailers`. The response path after that is the HTTP/1.1 one (and `h2_server` turns
//! a chunked trailer section back into HTTP/2 trailers for an HTTP/2 client).
//!
//! ```text
//! exchange --HTTP/1.1 bytes--> pipe --> stream task --HEADERS/DATA--> h2 connection
//! exchange <--HTTP/1.1 bytes-- pipe <-- stream task <--HEADERS/DATA/trailers--
//! ```
//!
//! A stream that fails before any response byte (refused, reset, the connection gone or
//! going away) closes the pipe with nothing written: the exchange sees a connection closed
//! before responding, which the reverse proxy retries like an HTTP/1.1 one.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::SendStream;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

use super::chunked::ChunkedDecoder;
use super::codec::{self, Framing, Headers, RequestHead};
use super::exchange::UpStream;
use super::h2_server::{chunked_trailers, fill, send_data, CONNECTION_SPECIFIC, PIPE_BYTES};
use super::pool::PoolKey;
use crate::pool::ServerPool;
use crate::shutdown::Shutdown;

/// Stream and connection flow-control windows we offer servers: the response bytes a
/// server may send ahead of the client reading them.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The HTTP/2 connections to the servers of `protocol = "h2"` pools, one per server.
pub struct H2Pool {
    conns: Mutex<HashMap<PoolKey, Conn>>,
    /// One opener per server at a time: the others wait and share its connection.
    opening: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    idle_timeout: Duration,
    read_timeout: Duration,
    max_head: usize,
    /// Its drain closes every connection once its streams are done.
    shutdown: Shutdown,
}

#[derive(Clone)]
struct Conn {
    send: SendRequest<Bytes>,
    peer: SocketAddr,
    life: Arc<Life>,
}

impl Conn {
    /// A sender for one new stream, once the server's stream limit leaves room (within
    /// `wait`).
    async fn ready(&self, wait: Duration) -> Result<SendRequest<Bytes>, StreamError> {
        match timeout(wait, self.send.clone().ready()).await {
            Err(_) => Err(StreamError::Request(
                "no stream free on the connection".into(),
            )),
            Ok(Err(e)) => Err(StreamError::Gone(e)),
            Ok(Ok(s)) => Ok(s),
        }
    }
}

/// What the connection's task and its streams share.
struct Life {
    /// Streams in flight.
    active: AtomicUsize,
    last_used: Mutex<Instant>,
    /// The connection ended, failed or was told to go away: no new streams.
    ended: AtomicBool,
    /// The server's first SETTINGS are known to have been read (a PING it answered came
    /// after them): whether it takes extended CONNECT can be asked.
    settled: AtomicBool,
    /// To ask the server for that PING answer (one asker at a time).
    ping: tokio::sync::Mutex<Option<h2::PingPong>>,
    /// The pool server the connection was opened for, followed across reloads: once a
    /// reload removes it, the connection takes no new streams and closes when idle.
    server: Mutex<Option<(Arc<ServerPool>, usize)>>,
}

impl Life {
    /// Whether the server is still configured (its pool's newest successor has it).
    fn server_configured(&self) -> bool {
        let Ok(mut s) = self.server.lock() else {
            return true;
        };
        match s.as_ref().map(|(p, i)| p.server_now(*i)) {
            None => true,
            Some(Some(now)) => {
                *s = Some(now);
                true
            }
            Some(None) => false,
        }
    }
}

/// How a WebSocket goes to a server of an `h2` pool (see [`H2Pool::websocket`]).
pub(super) enum Websocket {
    /// An RFC 8441 extended CONNECT stream on the server's connection.
    Stream(UpStream, SocketAddr),
    /// The server did not announce `SETTINGS_ENABLE_CONNECT_PROTOCOL`: HTTP/1.1.
    Http1,
    /// No connection yet: the caller connects and calls [`H2Pool::open`] (`websocket`).
    Open(Opening),
}

/// Held while a connection to a server is being opened (see [`H2Pool::stream`]). When
/// nobody else waits for that server, its lock leaves the map (keys with a PROXY header
/// are per client, so the map must not keep them).
pub(super) struct Opening {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    lock: Arc<tokio::sync::Mutex<()>>,
    key: PoolKey,
    pool: std::sync::Weak<H2Pool>,
}

impl Drop for Opening {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        if let Ok(mut m) = pool.opening.lock() {
            // The map's, the guard's and ours: no waiter.
            let alone = m
                .get(&self.key)
                .is_some_and(|l| Arc::ptr_eq(l, &self.lock) && Arc::strong_count(l) <= 3);
            if alone {
                m.remove(&self.key);
            }
        };
    }
}

/// What a stream needs besides its connection.
#[derive(Clone, Copy)]
pub(super) struct StreamOpts {
    /// `https` over `[pools.tls]`, else `http`: the `:scheme` sent.
    pub(super) scheme: &'static str,
    /// Longest wait for the server to allow one more stream (its concurrency limit).
    pub(super) wait: Duration,
}

impl H2Pool {
    pub fn new(
        idle_timeout: Duration,
        read_timeout: Duration,
        max_head: usize,
        shutdown: Shutdown,
    ) -> Arc<H2Pool> {
        Arc::new(H2Pool {
            conns: Mutex::default(),
            opening: Mutex::default(),
            idle_timeout,
            read_timeout,
            max_head: max_head.max(64 * 1024),
            shutdown,
        })
    }

    /// A stream on the live connection to `key`, or (none being open) the right to open
    /// one: the caller connects, then calls [`H2Pool::open`] with it. Waits while another
    /// request is opening that connection.
    pub(super) async fn stream(
        self: &Arc<Self>,
        key: &PoolKey,
        opts: StreamOpts,
    ) -> Result<(UpStream, SocketAddr), Opening> {
        let c = self.conn(key).await?;
        let peer = c.peer;
        Ok((self.start(key.clone(), c, opts), peer))
    }

    /// A WebSocket to `key`: an extended CONNECT stream when the server's live connection
    /// allows it (its SETTINGS read first), HTTP/1.1 when it does not, or the right to open
    /// the connection.
    pub(super) async fn websocket(self: &Arc<Self>, key: &PoolKey, opts: StreamOpts) -> Websocket {
        match self.conn(key).await {
            Err(opening) => Websocket::Open(opening),
            Ok(c) if self.extended_connect(&c).await => {
                let peer = c.peer;
                Websocket::Stream(self.start(key.clone(), c, opts), peer)
            }
            Ok(_) => Websocket::Http1,
        }
    }

    /// Whether the server announced `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441 section
    /// 3). Its SETTINGS come first on the connection, so once it answered a PING sent after
    /// the handshake they have been read; without an answer within the read timeout, no.
    async fn extended_connect(&self, c: &Conn) -> bool {
        if !c.life.settled.load(Ordering::Acquire) {
            let mut ping = c.life.ping.lock().await;
            if !c.life.settled.load(Ordering::Acquire) {
                if let Some(p) = ping.as_mut() {
                    let pong = timeout(self.read_timeout, p.ping(h2::Ping::opaque())).await;
                    if matches!(pong, Ok(Ok(_))) {
                        c.life.settled.store(true, Ordering::Release);
                    }
                }
            }
        }
        c.life.settled.load(Ordering::Acquire) && c.send.is_extended_connect_protocol_enabled()
    }

    /// The live connection to `key`, or (none being open) the right to open one.
    async fn conn(self: &Arc<Self>, key: &PoolKey) -> Result<Conn, Opening> {
        if let Some(c) = self.live(key) {
            return Ok(c);
        }
        let lock = match self.opening.lock() {
            Ok(mut m) => m.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let guard = lock.clone().lock_owned().await;
        let opening = Opening {
            _guard: guard,
            lock,
            key: key.clone(),
            pool: Arc::downgrade(self),
        };
        match self.live(key) {
            Some(c) => Ok(c),
            None => Err(opening),
        }
    }

    /// Starts HTTP/2 on a new connection to `key` (the preface, SETTINGS) and opens a
    /// stream on it. Over TLS the server must have chosen `h2` by ALPN. For a `websocket`,
    /// `None` when the server does not take extended CONNECT (the connection stays for
    /// other requests). `server` is the pool server it is for (followed across reloads).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open(
        self: &Arc<Self>,
        _opening: Opening,
        key: PoolKey,
        io: UpStream,
        (peer, server): (SocketAddr, (Arc<ServerPool>, usize)),
        opts: StreamOpts,
        limit: Duration,
        websocket: bool,
    ) -> Result<Option<UpStream>, String> {
        if let UpStream::Tls(t) = &io {
            if t.get_ref().1.alpn_protocol() != Some(&b"h2"[..]) {
                return Err("the server did not choose h2 by ALPN".into());
            }
        }
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(self.max_head as u32)
            .enable_push(false)
            // The requests of one pass leave in one write (`Gather`).
            .handshake::<_, Bytes>(crate::gather::Gather::new(io));
        let (send, mut conn) = match timeout(limit, handshake).await {
            Err(_) => return Err("HTTP/2 handshake timed out".into()),
            Ok(Err(e)) => return Err(format!("HTTP/2 handshake: {e}")),
            Ok(Ok(c)) => c,
        };
        let life = Arc::new(Life {
            active: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            ended: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            ping: tokio::sync::Mutex::new(conn.ping_pong()),
            server: Mutex::new(Some(server)),
        });
        let c = Conn { send, peer, life };
        if let Ok(mut m) = self.conns.lock() {
            m.insert(key.clone(), c.clone());
        }
        tokio::spawn(drive(
            Arc::downgrade(self),
            key.clone(),
            conn,
            c.life.clone(),
            self.shutdown.clone(),
        ));
        if websocket && !self.extended_connect(&c).await {
            return Ok(None);
        }
        Ok(Some(self.start(key, c, opts)))
    }

    /// The connection to `key`, if it is live.
    fn live(&self, key: &PoolKey) -> Option<Conn> {
        let m = self.conns.lock().ok()?;
        m.get(key)
            .filter(|c| !c.life.ended.load(Ordering::Acquire))
            .cloned()
    }

    /// The pipe for one request, its task started.
    fn start(self: &Arc<Self>, key: PoolKey, c: Conn, opts: StreamOpts) -> UpStream {
        let (near, far) = tokio::io::duplex(PIPE_BYTES);
        c.life.active.fetch_add(1, Ordering::AcqRel);
        let pool = self.clone();
        tokio::spawn(async move {
            let life = c.life.clone();
            if let Err(e) = pool.run_stream(&c, far, opts).await {
                tracing::debug!(server = %c.peer, "HTTP/2 stream to the server: {e}");
                if e.connection_gone() {
                    pool.forget(&key, &life);
                }
            }
            if let Ok(mut t) = life.last_used.lock() {
                *t = Instant::now();
            }
            life.active.fetch_sub(1, Ordering::AcqRel);
        });
        UpStream::Pipe(near)
    }

    /// No new streams on this connection (it failed or goes away).
    fn forget(&self, key: &PoolKey, life: &Arc<Life>) {
        life.ended.store(true, Ordering::Release);
        if let Ok(mut m) = self.conns.lock() {
            if m.get(key).is_some_and(|c| Arc::ptr_eq(&c.life, life)) {
                m.remove(key);
            }
        }
    }

    /// One request: from the pipe to the server, and its answer back.
    async fn run_stream(
        &self,
        c: &Conn,
        io: DuplexStream,
        opts: StreamOpts,
    ) -> Result<(), StreamError> {
        let t = self.read_timeout;
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut buf = BytesMut::with_capacity(8192);
        let head = loop {
            match codec::parse_request(&buf, self.max_head) {
                Ok(Some((h, len))) => {
                    buf.advance(len);
                    break h;
                }
                Ok(None) => {}
                Err(e) => return Err(StreamError::Request(e.to_string())),
            }
            if timeout(t, fill(&mut rd, &mut buf))
                .await
                .map_err(|_| StreamError::Request("no request head".into()))?
                .is_err()
            {
                return Ok(());
            }
        };
        let framing =
            codec::request_framing(&head).map_err(|e| StreamError::Request(e.to_string()))?;
        if let Some(key) = websocket_key(&head) {
            return self.run_websocket(c, (rd, wr), buf, &head, key, opts).await;
        }
        let req = h2_request(&head, opts.scheme).map_err(|e| StreamError::Request(e.into()))?;
        let trailers_wanted = head.headers.has_token("te", "trailers");
        if framing != Framing::None && head.headers.has_token("expect", "100-continue") {
            // The server is not asked (HTTP/2 needs no 100-continue here): go ahead.
            wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let mut send = c.ready(opts.wait).await?;
        let (response, body) = send
            .send_request(req, framing == Framing::None)
            .map_err(StreamError::Gone)?;
        let pump = send_body(&mut rd, buf, body, framing, self.max_head, t);
        let answer = relay_answer(&mut wr, response, &head.method, trailers_wanted, t);
        tokio::pin!(pump, answer);
        let mut pumped = framing == Framing::None;
        loop {
            tokio::select! {
                r = &mut pump, if !pumped => {
                    pumped = true;
                    match r {
                        // The server stopped the request body: a server may answer in
                        // full and then reset with NO_ERROR (RFC 9113 section 8.1); the
                        // answer, or its own error, decides.
                        Err(StreamError::Stream(e)) => {
                            tracing::debug!(server = %c.peer, "request body not sent: {e}");
                        }
                        // The client's body broke off: the stream is reset (dropped) at once.
                        r => r?,
                    }
                }
                r = &mut answer => return r,
            }
        }
    }
}

impl H2Pool {
    /// A WebSocket handshake from the pipe as an RFC 8441 extended CONNECT: the server's
    /// 2xx becomes the HTTP/1.1 `101` (with the `Sec-WebSocket-Accept` for the handshake's
    /// key, which HTTP/2 does not carry), then bytes flow both ways as DATA frames until
    /// either side ends. Another answer is relayed as a response.
    async fn run_websocket<R, W>(
        &self,
        c: &Conn,
        (mut rd, mut wr): (R, W),
        buf: BytesMut,
        head: &RequestHead,
        key: String,
        opts: StreamOpts,
    ) -> Result<(), StreamError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let req =
            h2_websocket_request(head, opts.scheme).map_err(|e| StreamError::Request(e.into()))?;
        let mut send = c.ready(opts.wait).await?;
        let (response, mut up) = send.send_request(req, false).map_err(StreamError::Gone)?;
        // The exchange gives up after its first-byte timeout; so does this stream.
        let resp = match timeout(opts.wait, response).await {
            Err(_) => return Err(StreamError::Request("no answer to the CONNECT".into())),
            Ok(r) => r.map_err(gone)?,
        };
        if !resp.status().is_success() {
            // Refused (e.g. 403, 404): an ordinary response; the stream ends here.
            let _ = up.send_data(Bytes::new(), true);
            return write_answer(&mut wr, resp, "GET", false, self.read_timeout).await;
        }
        let (parts, mut down) = resp.into_parts();
        wr.write_all(&h1_switch_head(&parts.headers, &key)).await?;
        wr.flush().await?;
        let upward = async {
            let mut buf = buf;
            loop {
                if buf.is_empty() && fill(&mut rd, &mut buf).await.is_err() {
                    // The tunnel ended (or half-closed) on the client's side.
                    return up
                        .send_data(Bytes::new(), true)
                        .map_err(StreamError::Stream);
                }
                send_data(&mut up, buf.split().freeze())
                    .await
                    .map_err(StreamError::Stream)?;
            }
        };
        let downward = async {
            while let Some(d) = down.data().await {
                let d = d.map_err(StreamError::Stream)?;
                wr.write_all(&d).await?;
                wr.flush().await?;
                let _ = down.flow_control().release_capacity(d.len());
            }
            wr.shutdown().await?;
            Ok::<(), StreamError>(())
        };
        tokio::pin!(upward, downward);
        tokio::select! {
            // The server ended its side: the client's may go on until it ends too.
            r = &mut downward => {
                r?;
                upward.await
            }
            // The client's side ended (or the tunnel closed): the server has the read
            // timeout to end its side, then the stream is reset.
            r = &mut upward => {
                r?;
                timeout(self.read_timeout, downward).await.unwrap_or(Ok(()))
            }
        }
    }
}

/// A stream error as the response future or a body read gave it: the connection's, or
/// this stream's alone.
fn gone(e: h2::Error) -> StreamError {
    if e.is_go_away() || e.is_io() {
        StreamError::Gone(e)
    } else {
        StreamError::Stream(e)
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("{0}")]
    Request(String),
    #[error("pipe: {0}")]
    Pipe(#[from] std::io::Error),
    /// The connection failed or goes away (GOAWAY): no new streams on it.
    #[error("connection: {0}")]
    Gone(h2::Error),
    #[error("stream: {0}")]
    Stream(h2::Error),
}

impl StreamError {
    fn connection_gone(&self) -> bool {
        match self {
            StreamError::Gone(_) => true,
            StreamError::Stream(e) => e.is_go_away() || e.is_io(),
            _ => false,
        }
    }
}

/// The connection's task: drives it until it ends. It stops taking new streams once it
/// has had none for the pool's idle time, when the proxy drains, or when a reload removed
/// its server; then, its streams done and no handle left, the h2 crate closes it with
/// GOAWAY (`NO_ERROR`).
async fn drive<T>(
    pool: std::sync::Weak<H2Pool>,
    key: PoolKey,
    conn: h2::client::Connection<T, Bytes>,
    life: Arc<Life>,
    shutdown: Shutdown,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let idle = pool
        .upgrade()
        .map_or(Duration::from_secs(60), |p| p.idle_timeout);
    let every = close_check_every(idle);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!("HTTP/2 connection to a server ended: {e}");
                }
                break;
            }
            _ = shutdown.draining(), if !closing => closing = true,
            _ = tokio::time::sleep(every), if !closing => {
                let quiet = life.active.load(Ordering::Acquire) == 0
                    && life.last_used.lock().map_or(true, |t| t.elapsed() >= idle);
                closing = quiet || !life.server_configured();
                if !closing {
                    continue;
                }
            }
        }
        if closing && !life.ended.swap(true, Ordering::AcqRel) {
            // No new streams: the map lets go of its handle, the streams in flight of
            // theirs as they end.
            tracing::debug!(server = ?key, "HTTP/2 connection to a server closing");
            if let Some(p) = pool.upgrade() {
                p.forget(&key, &life);
            }
        }
    }
    life.ended.store(true, Ordering::Release);
    if let Some(p) = pool.upgrade() {
        p.forget(&key, &life);
    }
}

/// How often a connection looks at its idle time and its server's removal: half the idle
/// time, between 50 ms and 1 s.
fn close_check_every(idle: Duration) -> Duration {
    (idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The request body out of the pipe into DATA frames (within the server's window), then
/// END_STREAM, or the trailers of a chunked body.
async fn send_body<R: AsyncRead + Unpin>(
    rd: &mut R,
    mut buf: BytesMut,
    mut send: SendStream<Bytes>,
    framing: Framing,
    max: usize,
    t: Duration,
) -> Result<(), StreamError> {
    match framing {
        Framing::None | Framing::UntilClose => return Ok(()),
        Framing::Length(mut left) => {
            while left > 0 {
                if buf.is_empty() {
                    read_more(rd, &mut buf, t).await?;
                }
                let take = (buf.len() as u64).min(left) as usize;
                left -= take as u64;
                send_data(&mut send, buf.split_to(take).freeze())
                    .await
                    .map_err(StreamError::Stream)?;
            }
            send.send_data(Bytes::new(), true)
                .map_err(StreamError::Stream)?;
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::new(max);
            let mut tail: Vec<u8> = Vec::new();
            loop {
                if buf.is_empty() {
                    read_more(rd, &mut buf, t).await?;
                }
                let p = dec
                    .advance(&buf)
                    .map_err(|e| StreamError::Request(e.to_string()))?;
                match p.data {
                    Some(r) => {
                        let mut chunk = buf.split_to(p.consumed);
                        chunk.advance(r.start);
                        tail.clear();
                        send_data(&mut send, chunk.freeze())
                            .await
                            .map_err(StreamError::Stream)?;
                    }
                    None => {
                        tail.extend_from_slice(&buf[..p.consumed]);
                        buf.advance(p.consumed);
                    }
                }
                if p.done {
                    break;
                }
            }
            let trailers = chunked_trailers(&tail);
            if trailers.is_empty() {
                send.send_data(Bytes::new(), true)
            } else {
                send.send_trailers(trailers)
            }
            .map_err(StreamError::Stream)?;
        }
    }
    Ok(())
}

/// More of the request body out of the pipe, within the read timeout.
async fn read_more<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    t: Duration,
) -> Result<(), StreamError> {
    match timeout(t, fill(rd, buf)).await {
        Err(_) => Err(StreamError::Request(
            "request body not received in time".into(),
        )),
        Ok(r) => r.map_err(StreamError::Pipe),
    }
}

/// The server's answer into the pipe as an HTTP/1.1 response. Nothing is written until
/// the response head has come, so a stream refused or reset before it reads as a
/// connection closed before responding.
async fn relay_answer<W: AsyncWrite + Unpin>(
    wr: &mut W,
    response: h2::client::ResponseFuture,
    method: &str,
    trailers_wanted: bool,
    t: Duration,
) -> Result<(), StreamError> {
    // Interim answers (103 Early Hints, ...) go on as HTTP/1.1 1xx heads, then the final.
    let mut response = response;
    let mut interim_open = true;
    let mut interim = 0;
    let resp = loop {
        let next = std::future::poll_fn(|cx| {
            if interim_open {
                match response.poll_informational(cx) {
                    Poll::Ready(Some(r)) => return Poll::Ready(Answer::Interim(r)),
                    Poll::Ready(None) => interim_open = false,
                    Poll::Pending => {}
                }
            }
            Pin::new(&mut response).poll(cx).map(Answer::Final)
        })
        .await;
        match next {
            Answer::Final(r) => break r.map_err(gone)?,
            Answer::Interim(r) => {
                let r = r.map_err(gone)?;
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(StreamError::Request("too many 1xx responses".into()));
                }
                if let Some(head) = h1_interim_head(r.status().as_u16(), r.headers()) {
                    wr.write_all(&head).await?;
                    wr.flush().await?;
                }
            }
        }
    };
    write_answer(wr, resp, method, trailers_wanted, t).await
}

/// A final HTTP/2 answer into the pipe as an HTTP/1.1 response: its head, then its body
/// (chunked with the trailers when its length is not known).
async fn write_answer<W: AsyncWrite + Unpin>(
    wr: &mut W,
    resp: http::Response<h2::RecvStream>,
    method: &str,
    trailers_wanted: bool,
    t: Duration,
) -> Result<(), StreamError> {
    let (parts, mut body) = resp.into_parts();
    let (head, out) = h1_response_head(
        parts.status.as_u16(),
        &parts.headers,
        method,
        body.is_end_stream(),
    );
    wr.write_all(&head).await?;
    if out == BodyOut::None {
        wr.flush().await?;
        return Ok(());
    }
    let chunked = out == BodyOut::Chunked;
    loop {
        let data = match timeout(t, body.data()).await {
            Err(_) => return Err(StreamError::Request("response body stalled".into())),
            Ok(None) => break,
            Ok(Some(d)) => d.map_err(StreamError::Stream)?,
        };
        let n = data.len();
        if chunked && n > 0 {
            wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            wr.write_all(&data).await?;
            wr.write_all(b"\r\n").await?;
        } else {
            wr.write_all(&data).await?;
        }
        let _ = body.flow_control().release_capacity(n);
    }
    if chunked {
        let trailers = match timeout(t, body.trailers()).await {
            Err(_) => return Err(StreamError::Request("response trailers stalled".into())),
            Ok(r) => r.map_err(StreamError::Stream)?,
        };
        let kept = trailers.filter(|_| trailers_wanted).unwrap_or_default();
        wr.write_all(&last_chunk(&kept)).await?;
    }
    wr.flush().await?;
    Ok(())
}

/// What the response future gave: a 1xx, or the final answer.
enum Answer {
    Interim(Result<http::Response<()>, h2::Error>),
    Final(Result<http::Response<h2::RecvStream>, h2::Error>),
}

/// 1xx answers relayed per stream, at most (the exchange has its own, lower, limit).
const MAX_INTERIM: usize = 64;

/// The HTTP/1.1 head for an interim (1xx) HTTP/2 answer, without the connection-specific
/// fields; none for `100 Continue` (the request's `Expect` is answered here, not sent up)
/// and `101` (not a valid HTTP/2 status).
fn h1_interim_head(status: u16, fields: &HeaderMap) -> Option<Vec<u8>> {
    if !(102..200).contains(&status) || status == 101 {
        return None;
    }
    let mut h = Headers::default();
    for (name, value) in fields {
        let n = name.as_str();
        if CONNECTION_SPECIFIC.contains(&n) || n == "te" {
            continue;
        }
        h.push(n, value.as_bytes());
    }
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = Vec::with_capacity(128);
    codec::write_response_head(&mut out, status, reason, &h);
    Some(out)
}

/// How the HTTP/1.1 response carries the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyOut {
    /// None (HEAD, 204, 304, or END_STREAM on the head).
    None,
    /// As the server's `content-length` says.
    Raw,
    /// Chunked, with the trailers at the end.
    Chunked,
}

/// An HTTP/2 request for the HTTP/1.1 head the exchange wrote: `:authority` from `Host`,
/// `:path` the origin-form target, without the connection-specific fields (RFC 9113
/// section 8.2.2) and `Expect`; `te: trailers` always (gRPC servers require it).
fn h2_request(head: &RequestHead, scheme: &str) -> Result<Request<()>, &'static str> {
    let mut req = h2_request_of(head, scheme, &["te", "expect", "http2-settings"])?;
    let method = http::Method::from_bytes(head.method.as_bytes()).map_err(|_| "bad method")?;
    if method == http::Method::CONNECT {
        return Err("CONNECT");
    }
    *req.method_mut() = method;
    req.headers_mut()
        .insert(http::header::TE, HeaderValue::from_static("trailers"));
    Ok(req)
}

/// A `GET` to `:authority` from `Host` and `:path` the origin-form target, with `head`'s
/// fields but for `Host`, the connection-specific ones (RFC 9113 section 8.2.2), those
/// `Connection` lists and `skip` (lower case).
fn h2_request_of(
    head: &RequestHead,
    scheme: &str,
    skip: &[&str],
) -> Result<Request<()>, &'static str> {
    let host = head.headers.get_str("host").ok_or("no Host")?;
    if !head.target.starts_with('/') {
        return Err("not an origin-form target");
    }
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(host)
        .path_and_query(head.target.as_str())
        .build()
        .map_err(|_| "bad Host or target")?;
    let mut req = Request::new(());
    *req.uri_mut() = uri;
    let listed = head.headers.tokens("connection");
    let h = req.headers_mut();
    for f in &head.headers.0 {
        let name = f.name.to_ascii_lowercase();
        if CONNECTION_SPECIFIC.contains(&name.as_str())
            || name == "host"
            || skip.contains(&name.as_str())
            || listed.contains(&name)
        {
            continue;
        }
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| "bad field name")?;
        let v = HeaderValue::from_bytes(&f.value).map_err(|_| "bad field value")?;
        h.append(n, v);
    }
    Ok(req)
}

/// The `Sec-WebSocket-Key` of a WebSocket handshake (RFC 6455 section 4.1: `GET` with
/// `Upgrade: websocket` and `Connection: Upgrade`), which then goes as extended CONNECT.
fn websocket_key(head: &RequestHead) -> Option<String> {
    let handshake = head.method == "GET"
        && head.headers.has_token("upgrade", "websocket")
        && head.headers.has_token("connection", "upgrade");
    handshake
        .then(|| head.headers.get_str("sec-websocket-key"))
        .flatten()
        .map(|k| k.trim().to_string())
}

/// The extended CONNECT (RFC 8441 section 4) for a WebSocket handshake: `:protocol
/// websocket`, `:path` the target, the handshake's fields (`Sec-WebSocket-Version`,
/// `-Protocol`, `-Extensions`, `Origin`, ...) without `Sec-WebSocket-Key` (HTTP/2
/// WebSocket has none, section 5) and the connection-specific ones.
fn h2_websocket_request(head: &RequestHead, scheme: &str) -> Result<Request<()>, &'static str> {
    let skip = ["te", "expect", "content-length", "sec-websocket-key"];
    let mut req = h2_request_of(head, scheme, &skip)?;
    *req.method_mut() = http::Method::CONNECT;
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    Ok(req)
}

/// RFC 6455 section 4.2.2: base64 of the SHA-1 of the key and the protocol's GUID.
fn websocket_accept(key: &str) -> String {
    use base64::Engine;
    let mut d = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    d.update(key.as_bytes());
    d.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(d.finish())
}

/// The HTTP/1.1 `101` for a server's 2xx to an extended CONNECT: `Upgrade: websocket`,
/// the accept value for `key`, and the server's fields (its chosen subprotocol and
/// extensions) without the connection-specific ones.
fn h1_switch_head(fields: &HeaderMap, key: &str) -> Vec<u8> {
    let mut h = Headers::default();
    h.push("Upgrade", "websocket");
    h.push("Connection", "Upgrade");
    h.push("Sec-WebSocket-Accept", websocket_accept(key));
    for (name, value) in fields {
        let n = name.as_str();
        if CONNECTION_SPECIFIC.contains(&n)
            || matches!(n, "te" | "content-length" | "sec-websocket-accept")
        {
            continue;
        }
        h.push(n, value.as_bytes());
    }
    let mut out = Vec::with_capacity(256);
    codec::write_response_head(&mut out, 101, "Switching Protocols", &h);
    out
}

/// The HTTP/1.1 head for an HTTP/2 response, and how its body follows: as its
/// `content-length` says, else chunked (room for trailers); nothing for HEAD, 204, 304 or
/// a head that ended the stream.
fn h1_response_head(
    status: u16,
    fields: &HeaderMap,
    method: &str,
    end_stream: bool,
) -> (Vec<u8>, BodyOut) {
    let mut h = Headers::default();
    for (name, value) in fields {
        let n = name.as_str();
        if CONNECTION_SPECIFIC.contains(&n) || n == "te" {
            continue;
        }
        h.push(n, value.as_bytes());
    }
    let bodiless =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let out = if bodiless {
        BodyOut::None
    } else if end_stream {
        if !h.contains("content-length") {
            h.push("content-length", "0");
        }
        BodyOut::None
    } else if h.contains("content-length") {
        BodyOut::Raw
    } else {
        h.push("transfer-encoding", "chunked");
        BodyOut::Chunked
    };
    let mut out_head = Vec::with_capacity(256);
    codec::write_response_head(&mut out_head, status, codec::reason(status), &h);
    (out_head, out)
}

/// The end of a chunked body: the last chunk and the trailer section.
fn last_chunk(trailers: &HeaderMap) -> Vec<u8> {
    let mut end = b"0\r\n".to_vec();
    for (name, value) in trailers {
        if CONNECTION_SPECIFIC.contains(&name.as_str())
            || matches!(name.as_str(), "content-length" | "host" | "trailer" | "te")
        {
            continue;
        }
        crate::http::codec::push_field(&mut end, name.as_str().as_bytes(), value.as_bytes());
    }
    end.extend_from_slice(b"\r\n");
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> RequestHead {
        codec::parse_request(text.as_bytes(), 8192)
            .expect("parses")
            .expect("complete")
            .0
    }

    #[tokio::test]
    async fn opening_locks_do_not_outlive_their_openers() {
        let pool = H2Pool::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            1024,
            Shutdown::new(),
        );
        let key = PoolKey {
            host: crate::connector::Host::Name("a".into()),
            port: 1,
        };
        let opts = StreamOpts {
            scheme: "http",
            wait: Duration::from_secs(1),
        };
        let Err(opening) = pool.stream(&key, opts).await else {
            panic!("no connection yet: the caller opens one");
        };
        assert_eq!(pool.opening.lock().expect("lock").len(), 1);
        drop(opening);
        assert!(pool.opening.lock().expect("lock").is_empty());
    }

    #[test]
    fn connections_look_at_closing_often_enough() {
        assert_eq!(
            close_check_every(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(
            close_check_every(Duration::from_millis(400)),
            Duration::from_millis(200)
        );
        assert_eq!(
            close_check_every(Duration::from_millis(10)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn requests_lose_connection_fields_and_ask_for_trailers() {
        let head = req("POST /svc/Call?x=1 HTTP/1.1\r\nHost: api.test:8080\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nContent-Type: application/grpc\r\nTE: trailers\r\n\r\n");
        let r = h2_request(&head, "http").expect("maps");
        assert_eq!(r.method(), "POST");
        assert_eq!(r.uri().to_string(), "http://api.test:8080/svc/Call?x=1");
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "te"]);
        assert_eq!(r.headers()["te"], "trailers");
    }

    #[test]
    fn bad_requests_are_not_sent() {
        assert!(
            h2_request(&req("GET / HTTP/1.1\r\n\r\n"), "http").is_err(),
            "no Host"
        );
        assert!(h2_request(&req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), "http").is_err());
        assert!(h2_request(&req("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), "https").is_err());
    }

    #[test]
    fn responses_are_chunked_unless_their_length_is_known() {
        let mut f = HeaderMap::new();
        f.insert("content-type", HeaderValue::from_static("application/grpc"));
        let (head, out) = h1_response_head(200, &f, "POST", false);
        let head = String::from_utf8(head).expect("text");
        assert_eq!(out, BodyOut::Chunked);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");

        f.insert("content-length", HeaderValue::from_static("5"));
        assert_eq!(h1_response_head(200, &f, "GET", false).1, BodyOut::Raw);
        assert_eq!(h1_response_head(200, &f, "HEAD", false).1, BodyOut::None);
        assert_eq!(h1_response_head(304, &f, "GET", false).1, BodyOut::None);

        // A trailers-only answer (gRPC errors): the head ended the stream.
        let mut only = HeaderMap::new();
        only.insert("grpc-status", HeaderValue::from_static("5"));
        let (head, out) = h1_response_head(200, &only, "POST", true);
        assert_eq!(out, BodyOut::None);
        let head = String::from_utf8(head).expect("text");
        assert!(
            head.contains("grpc-status: 5\r\ncontent-length: 0\r\n"),
            "{head}"
        );
    }

    #[test]
    fn interim_answers_become_http11_heads_but_not_100_or_101() {
        let mut f = HeaderMap::new();
        f.insert("link", HeaderValue::from_static("</a.css>; rel=preload"));
        f.insert("connection", HeaderValue::from_static("close"));
        let head = String::from_utf8(h1_interim_head(103, &f).expect("103")).expect("text");
        assert_eq!(
            head,
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
        );
        assert!(h1_interim_head(100, &f).is_none());
        assert!(h1_interim_head(101, &f).is_none());
        assert!(h1_interim_head(200, &f).is_none());
        assert!(h1_interim_head(102, &HeaderMap::new()).is_some());
    }

    #[test]
    fn websocket_handshakes_become_extended_connect() {
        let head = req("GET /chat?room=1 HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\nOrigin: http://app.test\r\n\r\n");
        assert_eq!(
            websocket_key(&head).as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        let r = h2_websocket_request(&head, "http").expect("maps");
        assert_eq!(r.method(), "CONNECT");
        assert_eq!(r.uri().to_string(), "http://app.test/chat?room=1");
        let p = r
            .extensions()
            .get::<h2::ext::Protocol>()
            .expect(":protocol");
        assert_eq!(p.as_str(), "websocket");
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["sec-websocket-version", "sec-websocket-protocol", "origin"]
        );
        // Not a WebSocket handshake: no key, another method, or no Connection: Upgrade.
        let no_key =
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert!(websocket_key(&req(no_key)).is_none());
        let post = "POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n";
        assert!(websocket_key(&req(post)).is_none());
        let plain =
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n";
        assert!(websocket_key(&req(plain)).is_none());
    }

    #[test]
    fn the_switch_carries_the_accept_for_the_clients_key() {
        // RFC 6455 section 1.3's example.
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let mut f = HeaderMap::new();
        f.insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        f.insert("sec-websocket-accept", HeaderValue::from_static("bogus"));
        f.insert("content-length", HeaderValue::from_static("0"));
        let head = String::from_utf8(h1_switch_head(&f, "dGhlIHNhbXBsZSBub25jZQ==")).expect("text");
        assert_eq!(
            head,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nsec-websocket-protocol: chat\r\n\r\n"
        );
    }

    #[test]
    fn trailers_end_the_chunked_body() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("ok"));
        t.insert("content-length", HeaderValue::from_static("9"));
        let end = String::from_utf8(last_chunk(&t)).expect("text");
        assert_eq!(end, "0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n");
        assert_eq!(last_chunk(&HeaderMap::new()), b"0\r\n\r\n");
    }
}
