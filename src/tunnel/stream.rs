//! One HTTP/2 stream as a byte stream (`AsyncRead + AsyncWrite`), so the ordinary relay
//! (`crate::relay`) joins it to a TCP socket.
//!
//! Flow control is h2's, per stream: received bytes are released to the peer's window only
//! when the reader takes them, so a stream whose far end stalls stops its sender without
//! holding up the connection's other streams (the connection window is sized for that, see
//! [`super::CONNECTION_WINDOW`]). Writing waits for send capacity. A shutdown sends END_STREAM (the
//! half-close); dropping the stream before that resets it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::relay::{RelayEnd, RelayStats};

/// Most bytes offered to h2 in one write (it frames them by the peer's frame size): one
/// frame's worth.
const MAX_WRITE: usize = super::MAX_FRAME as usize;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    eof: bool,
    shut: bool,
    /// An error that came after bytes a read returned: the next read's answer.
    failed: Option<io::Error>,
}

impl H2Stream {
    /// True when the stream can carry another exchange: nothing received and not ended by
    /// either side (no END_STREAM, no reset, the link still up). A keep-alive pool asks this
    /// of an idle stream before reusing it; bytes arriving on an idle stream (a server that
    /// spoke out of turn) make it unusable, as on an idle socket. Polls with a no-op waker:
    /// nothing waits on an idle stream.
    pub fn is_quiet(&mut self) -> bool {
        if !self.pending.is_empty() || self.eof || self.shut || self.failed.is_some() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(self.recv.poll_data(&mut cx), Poll::Pending)
    }
}

fn io_err(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    let kind = match e.reason() {
        Some(h2::Reason::CANCEL) | Some(h2::Reason::NO_ERROR) => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::BrokenPipe,
    };
    io::Error::new(kind, e)
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> H2Stream {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            eof: false,
            shut: false,
            failed: None,
        }
    }
}

impl AsyncRead for H2Stream {
    /// Fills `buf` with every DATA frame already received (not just the first), so frames
    /// that arrived together leave in one write on the other side of the relay.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Err(e));
        }
        let mut taken = 0;
        let res = loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                taken += n;
                if buf.remaining() == 0 {
                    break Poll::Ready(Ok(()));
                }
            }
            if this.eof {
                break Poll::Ready(Ok(()));
            }
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(b))) => this.pending = b,
                Poll::Ready(Some(Err(e))) if taken > 0 => {
                    // The bytes first; the error at the next read.
                    this.failed = Some(io_err(e));
                    break Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => break Poll::Ready(Err(io_err(e))),
                Poll::Ready(None) => this.eof = true,
                // The waker stays registered: at worst one wake-up for nothing.
                Poll::Pending if taken > 0 => break Poll::Ready(Ok(())),
                Poll::Pending => break Poll::Pending,
            }
        };
        if taken > 0 {
            // The bytes are taken: the peer may send as many more.
            let _ = this.recv.flow_control().release_capacity(taken);
        }
        res
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(poll_send_capacity(
            &mut self.send,
            cx,
            buf.len().min(MAX_WRITE)
        ))?;
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(io_err)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send.reserve_capacity(0);
            self.send.send_data(Bytes::new(), true).map_err(io_err)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Joins a byte stream (the client's socket, or the inside connection at the agent) to an
/// HTTP/2 stream without copying the bytes in between: what is read from `a` becomes the DATA
/// frames' own buffers, and received DATA frames are written to `a` as they are (several in
/// one vectored write), their window released once `a` has taken them. Otherwise as
/// [`crate::relay::relay`]: half-closes pass on, an idle direction holds no buffer of its own
/// (its next read lands in the thread's scratch buffer), and the tunnel ends after `idle` with
/// nothing moving. `a_to_b` counts `a`'s bytes into the stream.
pub async fn relay<A>(a: A, h2: &mut H2Stream, idle: Duration) -> (RelayEnd, RelayStats)
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    relay_halves(ar, aw, h2, idle).await
}

/// [`relay`] for a TCP socket: its two halves borrowed (`TcpStream::split`), with no lock
/// between them as `tokio::io::split` has for any stream.
pub async fn relay_tcp(
    tcp: &mut tokio::net::TcpStream,
    h2: &mut H2Stream,
    idle: Duration,
) -> (RelayEnd, RelayStats) {
    let (ar, aw) = tcp.split();
    relay_halves(ar, aw, h2, idle).await
}

async fn relay_halves<R, W>(
    mut ar: R,
    mut aw: W,
    h2: &mut H2Stream,
    idle: Duration,
) -> (RelayEnd, RelayStats)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let a_to_b = AtomicU64::new(0);
    let b_to_a = AtomicU64::new(0);
    let moved = |count: &AtomicU64, n: usize| {
        count.fetch_add(n as u64, Ordering::Relaxed);
    };
    let H2Stream {
        send,
        recv,
        pending,
        eof,
        shut,
        failed,
    } = h2;
    let up = async {
        if *shut {
            return Ok(());
        }
        let r = socket_to_stream(&mut ar, send, |n| moved(&a_to_b, n)).await;
        *shut = true;
        r
    };
    let down = async {
        if let Some(e) = failed.take() {
            return Err(e);
        }
        let first = std::mem::take(pending);
        stream_to_socket(recv, first, *eof, &mut aw, |n| moved(&b_to_a, n)).await
    };
    let both = crate::relay::join_directions(up, down);
    crate::relay::drive(both, idle, [&a_to_b, &b_to_a], &AtomicU64::new(0)).await
}

/// [`relay`], or with bandwidth limits the ordinary [`crate::relay::relay_limited`] (which
/// paces each read before its bytes go on).
pub async fn relay_limited<A>(
    a: A,
    h2: &mut H2Stream,
    idle: Duration,
    up: Option<crate::limits::Throttle>,
    down: Option<crate::limits::Throttle>,
) -> (RelayEnd, RelayStats)
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    if up.is_none() && down.is_none() {
        return relay(a, h2, idle).await;
    }
    crate::relay::relay_limited(a, h2, idle, up, down).await
}

/// Sends `data` on the stream as the peer's window allows.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> io::Result<()> {
    while !data.is_empty() {
        let want = data.len();
        let n = std::future::poll_fn(|cx| poll_send_capacity(send, cx, want)).await?;
        send.send_data(data.split_to(n), false).map_err(io_err)?;
    }
    Ok(())
}

/// Waits until the stream may send some of `want` bytes: how many, at most `want`. When what
/// the stream holds is short, it asks h2 for at least [`super::RESERVE_AHEAD`], so a stream of
/// short messages asks once per many of them (each ask takes the connection's lock) instead of
/// before each.
fn poll_send_capacity(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    let n = send.capacity();
    if n >= want {
        return Poll::Ready(Ok(want));
    }
    loop {
        send.reserve_capacity(want.max(super::RESERVE_AHEAD));
        let n = send.capacity();
        if n > 0 {
            return Poll::Ready(Ok(n.min(want)));
        }
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
            None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

/// `r` into the stream until `r`'s EOF, which ends the stream (END_STREAM).
async fn socket_to_stream<R>(
    r: &mut R,
    send: &mut SendStream<Bytes>,
    moved: impl Fn(usize),
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let mut size = crate::relay::START_BUF;
    loop {
        // Idle: no buffer is held while waiting. Until the stream has shown itself a bulk one,
        // the read lands in the thread's scratch buffer and only its bytes are copied out;
        // after that, a frame's buffer is taken at each poll (a pending one gives it back).
        let first = std::future::poll_fn(|cx| {
            if size < MAX_WRITE {
                return crate::relay::with_scratch(size, |buf| {
                    let mut rb = ReadBuf::new(buf);
                    ready!(Pin::new(&mut *r).poll_read(cx, &mut rb))?;
                    Poll::Ready(Ok::<_, io::Error>(Bytes::copy_from_slice(rb.filled())))
                });
            }
            let mut buf = BytesMut::with_capacity(MAX_WRITE);
            ready!(std::pin::pin!(r.read_buf(&mut buf)).poll(cx))?;
            Poll::Ready(Ok(buf.freeze()))
        })
        .await?;
        if first.is_empty() {
            send.reserve_capacity(0);
            return send.send_data(Bytes::new(), true).map_err(io_err);
        }
        let n = first.len();
        send_all(send, first).await?;
        moved(n);
        if n < size {
            continue;
        }
        if size < MAX_WRITE {
            size = (size * 4).min(MAX_WRITE);
            continue;
        }
        // A bulk burst: read straight into buffers that become the frames, while reads
        // complete at once; the buffer goes as soon as one would wait.
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(MAX_WRITE);
            let n = std::future::poll_fn(|cx| {
                let read = r.read_buf(&mut buf);
                match std::pin::pin!(read).poll(cx) {
                    // Nothing ready now (an EOF is seen by the next idle read).
                    Poll::Pending => Poll::Ready(Ok(0)),
                    Poll::Ready(res) => Poll::Ready(res),
                }
            })
            .await?;
            if n == 0 {
                break;
            }
            send_all(send, buf.split().freeze()).await?;
            moved(n);
        }
    }
}

/// Most slices in one vectored write.
const MAX_GATHER: usize = 64;

/// A DATA frame shorter than this is copied onto the run of small frames before it, not kept
/// as it came (h2's own threshold for a "small" frame).
const SMALL_FRAME: usize = 256;

/// Received DATA waiting for the socket: frames as they came, except that small ones are
/// copied together into runs, so a flood of tiny frames costs one slot per run. Its bytes are
/// bounded by the stream's window (their capacity is released only once written).
#[derive(Default)]
struct Backlog {
    /// Large frames, and the runs of small ones that came before each of them.
    chunks: std::collections::VecDeque<Bytes>,
    /// The run of small frames after the last chunk.
    run: BytesMut,
}

impl Backlog {
    fn push(&mut self, frame: Bytes) {
        if frame.len() < SMALL_FRAME {
            self.run.extend_from_slice(&frame);
            return;
        }
        if !self.run.is_empty() {
            self.chunks.push_back(self.run.split().freeze());
        }
        self.chunks.push_back(frame);
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.run.is_empty()
    }

    /// Up to [`MAX_GATHER`] slices, oldest first.
    fn slices<'a>(&'a self, iov: &mut [io::IoSlice<'a>; MAX_GATHER]) -> usize {
        let mut k = 0;
        for c in &self.chunks {
            if k == MAX_GATHER {
                return k;
            }
            iov[k] = io::IoSlice::new(c);
            k += 1;
        }
        if k < MAX_GATHER && !self.run.is_empty() {
            iov[k] = io::IoSlice::new(&self.run);
            k += 1;
        }
        k
    }

    /// Drops the first `n` bytes (written).
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(c) = self.chunks.front_mut() else {
                self.run.advance(n);
                return;
            };
            if n < c.len() {
                c.advance(n);
                return;
            }
            n -= c.len();
            self.chunks.pop_front();
        }
    }
}

/// The stream's DATA into `w` until END_STREAM, which half-closes `w`. `first` holds bytes
/// an earlier read left over; `eof`: END_STREAM was already seen.
///
/// Frames are taken from h2 as soon as they arrive, also while `w` pushes back: h2 counts
/// small DATA frames left in its own buffers against the whole connection and ends it
/// (GOAWAY `ENHANCE_YOUR_CALM`) when too many pile up, so one client that trickles bytes to
/// a service that does not read must not take every other stream on the link down with it.
/// The window is still released only for bytes `w` took, so the peer can send no more than
/// the stream's window ahead.
async fn stream_to_socket<W>(
    recv: &mut RecvStream,
    first: Bytes,
    mut eof: bool,
    w: &mut W,
    moved: impl Fn(usize),
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut backlog = Backlog::default();
    if !first.is_empty() {
        backlog.push(first);
    }
    let mut failed: Option<io::Error> = None;
    let mut unreleased = 0;
    let done = std::future::poll_fn(|cx| {
        // h2 said "nothing more" in this poll, so it holds the waker: once the backlog is
        // written there is no need to ask again (each ask takes the connection's lock).
        let mut asked = false;
        loop {
            while !eof && failed.is_none() && !asked {
                match recv.poll_data(cx) {
                    Poll::Ready(Some(Ok(b))) => backlog.push(b),
                    // The bytes before it first.
                    Poll::Ready(Some(Err(e))) => failed = Some(io_err(e)),
                    Poll::Ready(None) => eof = true,
                    Poll::Pending => asked = true,
                }
            }
            if backlog.is_empty() {
                if let Some(e) = failed.take() {
                    return Poll::Ready(Err(e));
                }
                // Pending: h2 has the waker.
                return if eof {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let mut iov = [io::IoSlice::new(&[]); MAX_GATHER];
            let k = backlog.slices(&mut iov);
            // Pending: `w` has the waker, and h2 too unless the stream has ended.
            let n = ready!(Pin::new(&mut *w).poll_write_vectored(cx, &iov[..k]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            backlog.advance(n);
            // Taken by `w`: the peer may send as many more, told in batches (each release takes
            // the connection's lock).
            unreleased += n;
            if unreleased >= super::RELEASE_BATCH {
                let _ = recv.flow_control().release_capacity(unreleased);
                unreleased = 0;
            }
            moved(n);
        }
    })
    .await;
    if unreleased > 0 {
        let _ = recv.flow_control().release_capacity(unreleased);
    }
    done?;
    let _ = w.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    type OnA = Box<dyn FnOnce(&mut SendStream<Bytes>) + Send>;

    /// A client and server h2 connection over an in-memory pipe. The client opens A and B;
    /// the server does `first` on its side of A, then answers B. Frames on one connection are
    /// handled in order, so once B's answer is in, everything sent on A before it has been
    /// received. Then, when the client opens C, the server does `then` on A and answers C.
    /// The client's two halves of A and the client itself (for C).
    async fn pair(
        first: OnA,
        then: OnA,
    ) -> (
        RecvStream,
        SendStream<Bytes>,
        h2::client::SendRequest<Bytes>,
    ) {
        let (c, s) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(s).await.expect("server handshake");
            let (_, mut a) = conn.accept().await.expect("A").expect("A");
            let (_, mut b) = conn.accept().await.expect("B").expect("B");
            let mut send_a = a
                .send_response(http::Response::new(()), false)
                .expect("answer A");
            first(&mut send_a);
            b.send_response(http::Response::new(()), true)
                .expect("answer B");
            let Some(Ok((_, mut c))) = conn.accept().await else {
                return;
            };
            then(&mut send_a);
            c.send_response(http::Response::new(()), true)
                .expect("answer C");
            // Driven until the client goes.
            while conn.accept().await.is_some() {}
        });
        let (client, conn) = h2::client::handshake(c).await.expect("client handshake");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let (a, send_a) = ask(&mut client);
        let (b, _send_b) = ask(&mut client);
        b.await.expect("B answered");
        (a.await.expect("A answered").into_body(), send_a, client)
    }

    fn ask(
        client: &mut h2::client::SendRequest<Bytes>,
    ) -> (h2::client::ResponseFuture, SendStream<Bytes>) {
        let req = http::Request::post("http://t/").body(()).expect("request");
        client.send_request(req, false).expect("send")
    }

    #[tokio::test]
    async fn one_read_takes_every_frame_already_received() {
        let (recv, send, _client) = pair(
            Box::new(|s| {
                for part in ["one ", "two ", "three"] {
                    s.send_data(Bytes::from(part), false).expect("data");
                }
                s.send_data(Bytes::new(), true).expect("end");
            }),
            Box::new(|_| {}),
        )
        .await;
        let mut stream = H2Stream::new(send, recv);
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"one two three");
        assert_eq!(stream.read(&mut buf).await.expect("EOF"), 0);
    }

    #[tokio::test]
    async fn a_reset_after_bytes_is_the_next_read_s_answer() {
        let (recv, send, mut client) = pair(
            Box::new(|s| s.send_data(Bytes::from("last words"), false).expect("data")),
            Box::new(|s| s.send_reset(h2::Reason::INTERNAL_ERROR)),
        )
        .await;
        // The reset is in too (before C's answer).
        let (c, _send_c) = ask(&mut client);
        c.await.expect("C answered");
        let mut stream = H2Stream::new(send, recv);
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.expect("the bytes first");
        assert_eq!(&buf[..n], b"last words");
        let e = stream.read(&mut buf).await.expect_err("then the reset");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    /// An h2 stream from a client (its `H2Stream`, the byte-stream view) to a server that
    /// joins it with [`relay`] to `inside`, whose far end echoes: what the client sends, in
    /// small writes and in bursts bigger than a frame, comes back intact and in order, the
    /// client's half-close reaches `inside` and the echo's reaches the client.
    #[tokio::test]
    async fn relay_without_copies_carries_bulk_both_ways_with_half_closes() {
        let (c, s) = tokio::io::duplex(1 << 20);
        let (inside, mut echo) = tokio::io::duplex(100_000);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(1 << 20)
                .max_frame_size(super::super::MAX_FRAME)
                .handshake::<_, Bytes>(s)
                .await
                .expect("server handshake");
            let (req, mut respond) = conn.accept().await.expect("one").expect("stream");
            // Driven until the client goes (what the relay queued last still has to leave).
            tokio::spawn(async move { while let Some(Ok(_)) = conn.accept().await {} });
            let send = respond
                .send_response(http::Response::new(()), false)
                .expect("answer");
            let mut h2 = H2Stream::new(send, req.into_body());
            relay(inside, &mut h2, Duration::from_secs(10)).await
        });
        let echoer = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut echo);
            tokio::io::copy(&mut r, &mut w).await.expect("echo");
            w.shutdown().await.expect("echo EOF");
        });
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .max_frame_size(super::super::MAX_FRAME)
            .handshake::<_, Bytes>(c)
            .await
            .expect("client handshake");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let (resp, send) = ask(&mut client);
        let recv = resp.await.expect("answered").into_body();
        let stream = H2Stream::new(send, recv);
        let (mut cr, mut cw) = tokio::io::split(stream);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            // Small writes (not so many tiny frames that h2's guard against them trips).
            for small in sent[..30_000].chunks(300) {
                cw.write_all(small).await.expect("small write");
            }
            cw.write_all(&sent[30_000..]).await.expect("bulk write");
            cw.shutdown().await.expect("half-close");
        });
        let mut got = Vec::new();
        cr.read_to_end(&mut got).await.expect("echo to EOF");
        assert!(got == data, "{} bytes back, intact and in order", got.len());
        writer.await.expect("writer");
        echoer.await.expect("echoer");
        let (end, stats) = server.await.expect("server");
        assert!(matches!(end, RelayEnd::Done), "{end:?}");
        assert_eq!(stats.a_to_b, 3_000_000);
        assert_eq!(stats.b_to_a, 3_000_000);
    }

    #[test]
    fn a_backlog_keeps_big_frames_and_copies_small_ones_into_runs() {
        let mut b = Backlog::default();
        for _ in 0..1000 {
            b.push(Bytes::from_static(b"x"));
        }
        assert!(b.chunks.is_empty(), "small frames make one run");
        b.push(Bytes::from(vec![b'B'; 300]));
        b.push(Bytes::from_static(b"yz"));
        let lens = |b: &Backlog| {
            let mut iov = [io::IoSlice::new(&[]); MAX_GATHER];
            let k = b.slices(&mut iov);
            iov[..k].iter().map(|s| s.to_vec()).collect::<Vec<_>>()
        };
        let parts: Vec<usize> = lens(&b).iter().map(Vec::len).collect();
        assert_eq!(parts, [1000, 300, 2]);
        b.advance(1100);
        let got: Vec<u8> = lens(&b).concat();
        assert_eq!(got, [vec![b'B'; 200], b"yz".to_vec()].concat());
        b.advance(202);
        assert!(b.is_empty());
    }

    /// h2 ends a whole connection (GOAWAY `ENHANCE_YOUR_CALM`) when too many small DATA
    /// frames sit unread in its buffers. A stream whose inside end does not read, fed one
    /// byte per frame, must not do that to the other streams of its connection: the relay
    /// takes frames as they come even while the socket pushes back.
    #[tokio::test]
    async fn a_trickle_into_a_service_that_does_not_read_leaves_the_connection_up() {
        let (c, s) = tokio::io::duplex(1 << 20);
        // The service's end is kept but never read: 64 bytes fill it.
        let (inside, _service) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(s).await.expect("server handshake");
            let (req, mut respond) = conn.accept().await.expect("A").expect("A");
            let send = respond
                .send_response(http::Response::new(()), false)
                .expect("answer A");
            tokio::spawn(async move {
                let mut h2 = H2Stream::new(send, req.into_body());
                relay(inside, &mut h2, Duration::from_secs(30)).await
            });
            while let Some(Ok((_, mut respond))) = conn.accept().await {
                let _ = respond.send_response(http::Response::new(()), true);
            }
        });
        let (client, mut conn) = h2::client::handshake(c).await.expect("client handshake");
        let mut pings = conn.ping_pong().expect("ping_pong");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let (a, mut send_a) = ask(&mut client);
        a.await.expect("A answered");
        // Well over h2's allowance for this connection's window (about 128 such frames),
        // each one received before the next is sent.
        for _ in 0..600 {
            send_a.reserve_capacity(1);
            send_a
                .send_data(Bytes::from_static(b"."), false)
                .expect("one byte");
            pings.ping(h2::Ping::opaque()).await.expect("pong");
        }
        let (b, _send_b) = ask(&mut client);
        let b = b
            .await
            .expect("the connection is still up for another stream");
        assert_eq!(b.status(), http::StatusCode::OK);
    }
}
