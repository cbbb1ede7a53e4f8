//! Cancel keys. A client never sees a backend's own BackendKeyData: each session gets a key the
//! gateway made up, and a CancelRequest (on a new TCP connection or WebSocket) is forwarded only
//! when both halves of such a key match a live session. The secret is compared in constant
//! time, so a CancelRequest can reach no query but the one whose key it carries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;
use subtle::ConstantTimeEq;

use crate::compute::CancelKey;

#[derive(Default)]
pub struct CancelMap {
    sessions: Mutex<HashMap<i32, Entry>>,
}

struct Entry {
    secret_key: i32,
    target: CancelKey,
}

/// A live session's key; dropping it retires the key.
pub struct Registration {
    map: Arc<CancelMap>,
    pub process_id: i32,
    pub secret_key: i32,
}

impl CancelMap {
    fn sessions(&self) -> MutexGuard<'_, HashMap<i32, Entry>> {
        // The map holds plain data; a panic elsewhere cannot leave an entry half-written.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Issues a fresh key for a session whose backend cancels through `target`.
    pub fn register(self: &Arc<Self>, target: CancelKey) -> Registration {
        let mut rng = rand::thread_rng();
        let secret_key: i32 = rng.gen();
        let mut sessions = self.sessions();
        let process_id = loop {
            let candidate = rng.gen_range(1..=i32::MAX);
            if !sessions.contains_key(&candidate) {
                break candidate;
            }
        };
        sessions.insert(process_id, Entry { secret_key, target });
        Registration {
            map: self.clone(),
            process_id,
            secret_key,
        }
    }

    /// The backend to cancel for a client's key, if the key belongs to a live session.
    pub fn lookup(&self, process_id: i32, secret_key: i32) -> Option<CancelKey> {
        let sessions = self.sessions();
        let entry = sessions.get(&process_id)?;
        let matches: bool = entry
            .secret_key
            .to_be_bytes()
            .ct_eq(&secret_key.to_be_bytes())
            .into();
        matches.then_some(entry.target)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sessions().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.map.sessions().remove(&self.process_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: i32) -> CancelKey {
        CancelKey {
            addr: "127.0.0.1:5432".parse().expect("addr"),
            process_id: pid,
            secret_key: 42,
        }
    }

    #[test]
    fn keys_map_to_their_own_backend_only() {
        let map = Arc::new(CancelMap::default());
        let a = map.register(target(100));
        let b = map.register(target(200));
        assert_ne!(a.process_id, b.process_id);
        assert!(a.process_id > 0);
        let found = map.lookup(a.process_id, a.secret_key).expect("a's key");
        assert_eq!(found.process_id, 100);
        let found = map.lookup(b.process_id, b.secret_key).expect("b's key");
        assert_eq!(found.process_id, 200);
        // Another session's pid with the wrong secret, and a made-up pid, reach nothing.
        assert!(map
            .lookup(a.process_id, a.secret_key.wrapping_add(1))
            .is_none());
        assert!(map.lookup(a.process_id, b.secret_key).is_none() || a.secret_key == b.secret_key);
        let (pid, secret) = (a.process_id, a.secret_key);
        drop(a);
        assert!(
            map.lookup(pid, secret).is_none(),
            "retired with its session"
        );
        assert_eq!(map.len(), 1);
        drop(b);
        assert!(map.is_empty());
    }
}
