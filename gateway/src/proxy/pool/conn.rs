//! A checked-out backend connection: handed back to the pool after a reset, or discarded.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use super::idle::{spawn_detached, Counted};
use super::slots::Slot;
use super::Pool;
use crate::auth::Account;
use crate::compute::{Backend, BackendError, Progress};

/// A checked-out backend connection. [`Conn::release`] returns it to the pool after a reset;
/// dropping it instead discards it, cancelling a query still in flight.
pub struct Conn {
    pool: Arc<Pool>,
    /// The endpoint's count of connections being reset (see [`super::idle::IdleSet::acquire`]).
    resetting: Arc<AtomicUsize>,
    key: Account,
    backend: Option<Backend>,
    slot: Option<Slot>,
    /// Taken from the idle list (rather than opened for this request).
    reused: bool,
    /// Where the conversation stood at checkout.
    checked_out: Progress,
}

impl Conn {
    pub(super) fn new(
        pool: Arc<Pool>,
        key: Account,
        backend: Backend,
        slot: Slot,
        reused: bool,
        resetting: Arc<AtomicUsize>,
    ) -> Self {
        pool.metrics.pool_active.inc();
        Conn {
            pool,
            resetting,
            key,
            checked_out: backend.progress(),
            backend: Some(backend),
            slot: Some(slot),
            reused,
        }
    }

    /// Whether the request that just failed with `error` on this reused connection provably
    /// never ran, because the server had closed the connection before the request reached it
    /// (a compute suspended while the connection sat idle). Then, and only then, the request
    /// may be retried on a new connection. Provably means one of:
    ///
    /// - not one byte of the request was written (writing failed at once: the socket was
    ///   already reset);
    /// - the first thing the server said after the request was a FATAL "operator
    ///   intervention" (`57P01` admin shutdown, `57P02`, `57P05`, …) and nothing came before
    ///   it. Postgres handles a connection's messages in order and queues each reply in order
    ///   (ParseComplete for a Parse, CommandComplete before the ReadyForQuery that follows a
    ///   commit), and a FATAL is queued after whatever is pending, so a FATAL that arrives
    ///   first was raised before the server finished parsing the request's first message:
    ///   nothing of it executed. (Through PgBouncer the same holds: it relays in order.)
    ///
    /// Everything else may have run and is never retried: the connection closing without a
    /// word (a server killed after committing dies without flushing its replies), a FATAL
    /// after any other reply, any error on a connection opened for this request, and any
    /// error after the first round trip of a request.
    /// Whether the connection came from the idle list (not opened for this checkout).
    pub fn reused(&self) -> bool {
        self.reused
    }

    pub fn never_ran(&self, error: &BackendError) -> bool {
        let Some(backend) = self.backend.as_ref() else {
            return false;
        };
        if !self.reused {
            return false;
        }
        let now = backend.progress();
        let before = self.checked_out;
        match error {
            BackendError::Io(_) => now.bytes_written == before.bytes_written,
            BackendError::Db(db) => {
                db.is_server_going_away() && now.messages_read == before.messages_read + 1
            }
            _ => false,
        }
    }

    pub fn backend(&mut self) -> &mut Backend {
        self.backend
            .as_mut()
            .expect("the backend is only taken by release or drop")
    }

    /// Hands the connection back: reset in the background, then idle in the pool.
    pub fn release(mut self) {
        let (Some(mut backend), Some(slot)) = (self.backend.take(), self.slot.take()) else {
            return;
        };
        self.pool.metrics.pool_active.dec();
        let pool = self.pool.clone();
        let key = self.key.clone();
        let resetting = Counted::start(self.resetting.clone());
        spawn_detached(async move {
            match tokio::time::timeout(Duration::from_secs(10), backend.reset()).await {
                Ok(Ok(())) => {
                    pool.put(key, backend, slot);
                    drop(resetting);
                }
                _ => {
                    drop(resetting);
                    pool.metrics.pool_discards.inc();
                    discard(backend, slot).await;
                }
            }
        });
    }
}

async fn discard(backend: Backend, slot: Slot) {
    if backend.in_flight() {
        if let Err(e) = backend.cancel_key().cancel().await {
            tracing::debug!(error = %e, "could not send cancel request");
        }
    }
    backend.terminate().await;
    drop(slot);
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let (Some(backend), Some(slot)) = (self.backend.take(), self.slot.take()) {
            self.pool.metrics.pool_active.dec();
            self.pool.metrics.pool_discards.inc();
            spawn_detached(discard(backend, slot));
        }
    }
}
