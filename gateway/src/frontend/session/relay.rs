//! After the handshake: bytes copied both ways through fixed buffers (so memory per session is
//! bounded and a slow reader slows its writer), counted per direction as they pass. A buffer is
//! taken from a per-thread free list for each read and given back once its bytes are written,
//! so an idle session holds no relay buffer.
//!
//! The copy watches message boundaries without parsing messages, which costs a few
//! comparisons per message and buys three things: a client message larger than the limit is
//! refused before it is passed on, the gateway knows when it may append a FATAL of its own
//! (idle timeout, shutdown) without cutting a backend message in half, and the client's
//! queries are counted for metering (each simple Query and each Execute message, from its
//! header alone; a Query holding several statements is one).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::obs::usage::Direction;
use crate::pgwire::frame::{Boundary, FrameError};

/// Bytes per read in each direction.
const CHUNK: usize = 16 * 1024;

/// The client messages counted as queries: simple Query and Execute.
const QUERY_TAGS: &[u8] = b"QE";

pub struct RelayLimits {
    /// Close a session with no traffic either way for this long.
    pub idle_timeout: Option<Duration>,
    /// The largest message a client may send.
    pub max_client_message: usize,
}

/// One side of a relay: its stream, and the bytes already read from it that go first.
pub struct Peer<S> {
    pub io: S,
    pub ahead: BytesMut,
}

impl<S> From<(S, BytesMut)> for Peer<S> {
    fn from((io, ahead): (S, BytesMut)) -> Self {
        Peer { io, ahead }
    }
}

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client closed (or sent Terminate and closed), then the backend finished.
    ClientClosed,
    /// The backend closed its side; whatever it said last has reached the client.
    BackendClosed,
    Idle,
    Shutdown,
    /// The client sent a message larger than the limit.
    MessageTooLarge {
        len: usize,
        max: usize,
    },
    /// The client broke the framing (a length below 4).
    BadMessage,
    /// Reading from the client failed (a reset, or a WebSocket protocol error).
    ClientError(io::Error),
    /// The backend connection failed.
    BackendError(io::Error),
}

/// What a relay hands back: the client stream, why it ended, and whether the stream is at a
/// message boundary, so that a FATAL may be appended.
pub struct Relayed<C> {
    pub client: C,
    pub end: RelayEnd,
    pub at_boundary: bool,
}

/// What a relay reports as it goes, from either direction, once the bytes concerned were
/// written on.
pub struct Counters<'a> {
    /// Bytes relayed in one direction.
    pub bytes: &'a (dyn Fn(Direction, usize) + Sync),
    /// Queries the client sent (see [`QUERY_TAGS`]); called only when there were some.
    pub queries: &'a (dyn Fn(u64) + Sync),
}

/// Copies between `client` and `backend` until either side ends, the session idles out, or
/// `stop` is cancelled. `client_ahead`/`backend_ahead` are bytes read during the handshake
/// that belong to the stream (a pipelined first query) and go first.
pub async fn relay<C>(
    client: Peer<C>,
    backend: Peer<TcpStream>,
    limits: &RelayLimits,
    stop: &CancellationToken,
    counters: &Counters<'_>,
) -> Relayed<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client.io);
    let (mut backend_read, mut backend_write) = backend.io.into_split();
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let egress_clean = AtomicBool::new(true);

    let end = {
        let meter = Meter {
            start,
            activity: &activity,
            counters,
        };
        let ingress = pump(
            &mut client_read,
            &mut backend_write,
            client.ahead,
            Lane {
                direction: Direction::Ingress,
                max_message: limits.max_client_message,
                counted: QUERY_TAGS,
                clean: None,
            },
            &meter,
        );
        let egress = pump(
            &mut backend_read,
            &mut client_write,
            backend.ahead,
            Lane {
                direction: Direction::Egress,
                max_message: usize::MAX,
                counted: &[],
                clean: Some(&egress_clean),
            },
            &meter,
        );
        tokio::pin!(ingress, egress);
        let mut client_done = false;
        loop {
            tokio::select! {
                result = &mut ingress, if !client_done => match result {
                    // The client is done sending; let the backend finish replying.
                    Ok(()) => client_done = true,
                    Err(e) => break ingress_end(e, limits.max_client_message),
                },
                result = &mut egress => match result {
                    Ok(()) if client_done => break RelayEnd::ClientClosed,
                    Ok(()) => break RelayEnd::BackendClosed,
                    Err(e) => break egress_end(e),
                },
                () = idle(limits.idle_timeout, start, &activity) => break RelayEnd::Idle,
                () = stop.cancelled() => break RelayEnd::Shutdown,
            }
        }
    };
    Relayed {
        client: client_read.unsplit(client_write),
        end,
        at_boundary: egress_clean.load(Ordering::Acquire),
    }
}

enum PumpError {
    Read(io::Error),
    Write(io::Error),
    Frame(FrameError),
}

/// How a relay ends when copying from the client failed.
fn ingress_end(error: PumpError, max: usize) -> RelayEnd {
    match error {
        PumpError::Read(e) => RelayEnd::ClientError(e),
        PumpError::Write(e) => RelayEnd::BackendError(e),
        PumpError::Frame(FrameError::TooLarge { len, .. }) => {
            RelayEnd::MessageTooLarge { len, max }
        }
        PumpError::Frame(FrameError::InvalidLength) => RelayEnd::BadMessage,
    }
}

/// How a relay ends when copying from the backend failed.
fn egress_end(error: PumpError) -> RelayEnd {
    match error {
        PumpError::Read(e) => RelayEnd::BackendError(e),
        PumpError::Write(e) => RelayEnd::ClientError(e),
        PumpError::Frame(_) => RelayEnd::BackendError(io::Error::new(
            io::ErrorKind::InvalidData,
            "the backend broke the message framing",
        )),
    }
}

impl From<FrameError> for PumpError {
    fn from(error: FrameError) -> Self {
        PumpError::Frame(error)
    }
}

/// One direction of the copy.
struct Lane<'a> {
    direction: Direction,
    /// Messages larger than this are refused.
    max_message: usize,
    /// Messages with these tags are counted as queries.
    counted: &'static [u8],
    /// Kept true whenever everything written so far ends on a message boundary.
    clean: Option<&'a AtomicBool>,
}

/// What both directions report to: traffic counts and the time of the last activity.
struct Meter<'a> {
    start: Instant,
    /// Milliseconds after `start` of the last chunk in either direction.
    activity: &'a AtomicU64,
    counters: &'a Counters<'a>,
}

async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    ahead: BytesMut,
    lane: Lane<'_>,
    meter: &Meter<'_>,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut boundary = Boundary::default();
    if !ahead.is_empty() {
        forward(to, &ahead, &mut boundary, &lane, meter).await?;
    }
    // The handshake's buffer is not kept for the life of the session.
    drop(ahead);
    loop {
        // A buffer is held only while bytes are moving: an idle session holds none.
        let Some(buf) = std::future::poll_fn(|cx| buffers::poll_read(from, cx))
            .await
            .map_err(PumpError::Read)?
        else {
            // EOF: pass it on, so the other side sees the end of the stream.
            let _ = to.shutdown().await;
            return Ok(());
        };
        let result = forward(to, &buf, &mut boundary, &lane, meter).await;
        buffers::give_back(buf);
        result?;
    }
}

/// Passes one chunk on: checks framing, writes and flushes it, counts it and the queries that
/// began in it.
async fn forward<W>(
    to: &mut W,
    chunk: &[u8],
    boundary: &mut Boundary,
    lane: &Lane<'_>,
    meter: &Meter<'_>,
) -> Result<(), PumpError>
where
    W: AsyncWrite + Unpin,
{
    let queries = boundary.feed(chunk, lane.max_message, lane.counted)?;
    if let Some(clean) = lane.clean {
        clean.store(false, Ordering::Release);
    }
    to.write_all(chunk).await.map_err(PumpError::Write)?;
    to.flush().await.map_err(PumpError::Write)?;
    if let Some(clean) = lane.clean {
        clean.store(boundary.at_boundary(), Ordering::Release);
    }
    (meter.counters.bytes)(lane.direction, chunk.len());
    if queries > 0 {
        (meter.counters.queries)(queries);
    }
    let elapsed = u64::try_from(meter.start.elapsed().as_millis()).unwrap_or(u64::MAX);
    meter.activity.store(elapsed, Ordering::Relaxed);
    Ok(())
}

/// Relay buffers, reused through a small per-thread free list. A read is attempted with a
/// buffer in hand and the buffer goes back at once if nothing was ready, so sessions waiting
/// for traffic (nearly all of them, most of the time) hold no buffer at all.
mod buffers {
    use std::cell::RefCell;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, ReadBuf};

    use super::CHUNK;

    /// Free buffers kept per worker thread (at most this many × [`CHUNK`] bytes).
    const KEEP: usize = 64;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer of [`CHUNK`] bytes and how many of them a read filled.
    pub(super) struct Filled {
        buf: Vec<u8>,
        len: usize,
    }

    impl std::ops::Deref for Filled {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.buf[..self.len]
        }
    }

    fn take() -> Vec<u8> {
        FREE.with(|free| free.borrow_mut().pop())
            .unwrap_or_else(|| vec![0; CHUNK])
    }

    fn put(buf: Vec<u8>) {
        FREE.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEEP {
                free.push(buf);
            }
        });
    }

    /// Returns a buffer to this thread's free list (or frees it if the list is full).
    pub(super) fn give_back(filled: Filled) {
        put(filled.buf);
    }

    /// Reads up to [`CHUNK`] bytes into a buffer from the free list: `Some` with data, `None`
    /// at EOF. Pending holds no buffer.
    pub(super) fn poll_read<R>(
        from: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Filled>>>
    where
        R: AsyncRead + Unpin,
    {
        let mut buf = take();
        let mut read = ReadBuf::new(&mut buf);
        let result = Pin::new(from).poll_read(cx, &mut read);
        let len = read.filled().len();
        match result {
            Poll::Ready(Ok(())) if len > 0 => Poll::Ready(Ok(Some(Filled { buf, len }))),
            other => {
                put(buf);
                other.map_ok(|()| None)
            }
        }
    }
}

/// Resolves once nothing has moved for `limit`; never without a limit.
async fn idle(limit: Option<Duration>, start: Instant, activity: &AtomicU64) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let last = start + Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = last + limit;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgwire::frame::message;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn relays_both_ways_and_counts() {
        let backend_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = backend_listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = backend_listener.accept().await.expect("accept");
            let mut got = vec![0u8; 17];
            socket.read_exact(&mut got).await.expect("read");
            socket.write_all(&message(b'Z', b"I")).await.expect("write");
            got
        });
        let backend = TcpStream::connect(addr).await.expect("connect");
        let (client, mut peer) = tokio::io::duplex(1024);
        let ingress = AtomicU64::new(0);
        let egress = AtomicU64::new(0);
        let queries = AtomicU64::new(0);
        let count = |direction: Direction, n: usize| {
            match direction {
                Direction::Ingress => &ingress,
                Direction::Egress => &egress,
            }
            .fetch_add(n as u64, Ordering::Relaxed);
        };
        let counters = Counters {
            bytes: &count,
            queries: &|n| {
                queries.fetch_add(n, Ordering::Relaxed);
            },
        };
        let ahead = BytesMut::from(&message(b'Q', b"SELECT\0")[..]);
        let limits = RelayLimits {
            idle_timeout: None,
            max_client_message: 1024,
        };
        let stop = CancellationToken::new();
        let relay = relay(
            (client, ahead).into(),
            (backend, BytesMut::new()).into(),
            &limits,
            &stop,
            &counters,
        );
        let driver = async {
            peer.write_all(&message(b'X', b"")).await.expect("write");
            let mut reply = vec![0u8; 6];
            peer.read_exact(&mut reply).await.expect("read reply");
            assert_eq!(reply, message(b'Z', b"I"));
            peer.shutdown().await.expect("shutdown");
        };
        let (relayed, ()) = tokio::join!(relay, driver);
        assert!(
            matches!(
                relayed.end,
                RelayEnd::ClientClosed | RelayEnd::BackendClosed
            ),
            "{:?}",
            relayed.end
        );
        let sent = server.await.expect("server");
        assert_eq!(&sent[..12], &message(b'Q', b"SELECT\0")[..]);
        assert_eq!(ingress.load(Ordering::Relaxed), 17);
        assert_eq!(egress.load(Ordering::Relaxed), 6);
        // The pipelined Query; the backend's ReadyForQuery and the Terminate are no queries.
        assert_eq!(queries.load(Ordering::Relaxed), 1);
    }

    /// A backend that reads everything it is sent until EOF, publishing how many bytes it got.
    async fn sink() -> (TcpStream, tokio::sync::watch::Receiver<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (got, watch) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            while let Ok(n @ 1..) = socket.read(&mut buf).await {
                got.send_modify(|total| *total += n);
            }
        });
        let backend = TcpStream::connect(addr).await.expect("connect");
        (backend, watch)
    }

    #[tokio::test]
    async fn counts_query_and_execute_messages_however_they_are_chunked() {
        let (backend, mut received) = sink().await;
        let (client, mut peer) = tokio::io::duplex(64 * 1024);
        let calls = std::sync::Mutex::new(Vec::new());
        let counters = Counters {
            bytes: &|_, _| {},
            queries: &|n| calls.lock().expect("lock").push(n),
        };
        let total = || calls.lock().expect("lock").iter().sum::<u64>();
        // Several messages in one chunk: one statement over the extended protocol (one
        // Execute), two simple queries, and COPY data and a CopyDone that look like neither.
        let mut first: Vec<u8> = [
            message(b'P', b"\0SELECT 1\0\0\0"),
            message(b'B', &[0; 8]),
            message(b'E', b"\0\0\0\0\0"),
            message(b'S', b""),
            message(b'Q', b"SELECT 2\0"),
            message(b'Q', b"SELECT 3; SELECT 4\0"),
            message(b'd', b"Q\0\0\0\x04E\0\0\0\x04"),
            message(b'c', b""),
        ]
        .concat();
        // Then an Execute whose header is split across two chunks.
        let split = message(b'E', b"\0\0\0\0\0");
        first.extend_from_slice(&split[..3]);
        let limits = RelayLimits {
            idle_timeout: None,
            max_client_message: 1024,
        };
        let stop = CancellationToken::new();
        let relay = relay(
            (client, BytesMut::new()).into(),
            (backend, BytesMut::new()).into(),
            &limits,
            &stop,
            &counters,
        );
        let driver = async {
            peer.write_all(&first).await.expect("write");
            received
                .wait_for(|n| *n == first.len())
                .await
                .expect("the backend got the first chunk");
            // The bytes are counted once written, right after the backend got them.
            for _ in 0..100 {
                if total() == 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                total(),
                3,
                "the split Execute does not count before its header is whole"
            );
            peer.write_all(&split[3..]).await.expect("write");
            received
                .wait_for(|n| *n == first.len() + split.len() - 3)
                .await
                .expect("the backend got the rest");
            peer.shutdown().await.expect("shutdown");
        };
        let (relayed, ()) = tokio::join!(relay, driver);
        assert!(
            matches!(
                relayed.end,
                RelayEnd::ClientClosed | RelayEnd::BackendClosed
            ),
            "{:?}",
            relayed.end
        );
        assert_eq!(total(), 4);
        assert!(calls.lock().expect("lock").iter().all(|&n| n > 0));
    }
}
