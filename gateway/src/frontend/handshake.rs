//! What WebSocket clients still in their handshake may make the gateway hold: each has a
//! small allowance of its own, beyond which bytes come out of one shared pool.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes a WebSocket client may send before its session is ready without drawing on the
/// shared handshake pool: a startup packet is at most 10 000 bytes and an authentication
/// message 8 KiB, so a handshake alone never needs more.
pub const HANDSHAKE_BYTES: usize = 64 * 1024;

/// What WebSocket clients still in their handshake may make the gateway hold. The driver
/// pipelines its first query with the startup packet and password (`coalesceWrites` puts all
/// three in one WebSocket message, which tungstenite must read whole before the session sees
/// the startup), so a client may legitimately send a large message before it is
/// authenticated. Each connection's first [`HANDSHAKE_BYTES`] are free; beyond them, bytes come
/// out of one pool shared by all handshaking clients (`--max-handshake-bytes`), given back
/// when the session is ready or ends. A client that finds the pool empty is refused: nobody
/// authenticated can make the gateway hold more than the pool and the free allowances.
pub struct HandshakePool(Arc<Semaphore>);

impl HandshakePool {
    pub fn new(bytes: usize) -> Self {
        HandshakePool(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// A new connection's budget.
    pub fn budget(&self) -> HandshakeBudget {
        HandshakeBudget(Arc::new(Mutex::new(Budget {
            free: HANDSHAKE_BYTES,
            pool: self.0.clone(),
            held: None,
            lifted: false,
        })))
    }
}

/// What one WebSocket client may still send before its session is ready; lifted by the
/// session once it is. Shared between the session and the reader under tungstenite.
#[derive(Clone)]
pub struct HandshakeBudget(Arc<Mutex<Budget>>);

impl std::fmt::Debug for HandshakeBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandshakeBudget")
    }
}

struct Budget {
    /// What is left of the connection's own allowance.
    free: usize,
    pool: Arc<Semaphore>,
    /// What this connection drew from the pool.
    held: Option<OwnedSemaphorePermit>,
    lifted: bool,
}

impl HandshakeBudget {
    /// The handshake is over: no more budget, and what was drawn from the pool goes back.
    pub fn lift(&self) {
        let mut budget = lock(&self.0);
        budget.lifted = true;
        budget.held = None;
    }

    /// Spends `n` bytes; false when neither the allowance nor the pool has them.
    fn spend(&self, n: usize) -> bool {
        let mut budget = lock(&self.0);
        if budget.lifted {
            return true;
        }
        let from_free = n.min(budget.free);
        budget.free -= from_free;
        let rest = n - from_free;
        if rest == 0 {
            return true;
        }
        let Ok(drawn) = u32::try_from(rest).ok().map_or(Err(()), |rest| {
            budget
                .pool
                .clone()
                .try_acquire_many_owned(rest)
                .map_err(|_| ())
        }) else {
            return false;
        };
        match &mut budget.held {
            Some(held) => held.merge(drawn),
            None => budget.held = Some(drawn),
        }
        true
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The raw upgraded connection under tungstenite, failing a read once the client sent more
/// than its [`HandshakeBudget`] allows before the session was ready (the read that overruns
/// it, at most 4 KiB, is dropped).
pub struct Budgeted<S> {
    inner: S,
    budget: HandshakeBudget,
}

impl<S> Budgeted<S> {
    pub fn new(inner: S, budget: HandshakeBudget) -> Self {
        Budgeted { inner, budget }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.budget.spend(buf.filled().len() - before) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                HandshakeTooLarge,
            )))
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The error a client's bytes beyond its [`HandshakeBudget`] turn into.
#[derive(Debug, thiserror::Error)]
#[error("too much data is waiting for authentication on this gateway")]
struct HandshakeTooLarge;

/// Whether an I/O error from a [`WsStream`] means the client overran its handshake budget.
pub fn is_handshake_overrun(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<HandshakeTooLarge>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_budgets_draw_on_one_pool_and_give_it_back() {
        let pool = HandshakePool::new(100_000);
        let a = pool.budget();
        let b = pool.budget();
        // The first 64 KiB are each connection's own.
        assert!(a.spend(HANDSHAKE_BYTES));
        assert!(b.spend(HANDSHAKE_BYTES));
        assert_eq!(pool.0.available_permits(), 100_000);
        // Beyond them, the pool.
        assert!(a.spend(60_000));
        assert!(!b.spend(50_000), "the pool has 40 000 left");
        assert!(b.spend(40_000));
        assert!(!a.spend(1));
        // A ready session gives its share back and spends nothing more.
        a.lift();
        assert_eq!(pool.0.available_permits(), 60_000);
        assert!(a.spend(10_000_000));
        // So does one that ends.
        drop(b);
        assert_eq!(pool.0.available_permits(), 100_000);
    }
}
