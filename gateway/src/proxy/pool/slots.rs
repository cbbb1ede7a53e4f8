//! One endpoint's connection slots: a slot per open backend connection (active or idle), as
//! many as the endpoint's cap, which can change while connections are open. Growing adds free
//! slots at once. Shrinking takes away free slots at once and owes the rest (a debt): a slot
//! that comes back while a debt is owed is taken away instead of freed, so no connection in
//! use is ever interrupted and, once enough of them came back, no more than the new cap are
//! open.
//!
//! Invariant: the slots in existence (free + held) minus the debt is the cap. Every operation
//! keeps it on its own (each is one atomic step on the semaphore or the debt, or undoes what it
//! took too much), so they need no lock between them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of one endpoint.
pub(super) struct Slots {
    semaphore: Arc<Semaphore>,
    /// Slots to take away as they come back: the cap shrank below what was held.
    debt: AtomicUsize,
}

/// A held slot: one open connection. Dropping it frees the slot, or pays one of the debt.
pub(super) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Slots {
    pub fn new(cap: usize) -> Arc<Slots> {
        Arc::new(Slots {
            semaphore: Arc::new(Semaphore::new(cap)),
            debt: AtomicUsize::new(0),
        })
    }

    /// A free slot, if there is one.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(self.held(permit))
    }

    /// Waits for a free slot. `None` only if the semaphore was closed (it never is).
    pub async fn acquire(self: &Arc<Self>) -> Option<Slot> {
        let permit = self.semaphore.clone().acquire_owned().await.ok()?;
        Some(self.held(permit))
    }

    fn held(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        Slot {
            permit: Some(permit),
            slots: self.clone(),
        }
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Slots still owed (held beyond the cap).
    pub fn debt(&self) -> usize {
        self.debt.load(Ordering::Acquire)
    }

    /// A larger cap: `by` more slots, of which the debt takes its share first.
    pub fn grow(&self, by: usize) {
        let forgiven = self.take_debt(by);
        self.semaphore.add_permits(by - forgiven);
    }

    /// A smaller cap: `by` fewer slots, free ones first, the rest owed.
    pub fn shrink(&self, by: usize) {
        let taken = self.semaphore.forget_permits(by);
        self.debt.fetch_add(by - taken, Ordering::AcqRel);
        self.settle();
    }

    /// Pays the debt with slots that came back free meanwhile (a slot returned in the instant
    /// its shrink was owed is freed, not taken).
    pub fn settle(&self) {
        let debt = self.debt();
        if debt == 0 {
            return;
        }
        let taken = self.semaphore.forget_permits(debt);
        let paid = self.take_debt(taken);
        // Returned slots paid part of the debt meanwhile: give back what was taken too much.
        self.semaphore.add_permits(taken - paid);
    }

    /// Takes up to `n` off the debt; returns how much.
    fn take_debt(&self, n: usize) -> usize {
        match self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                (debt > 0 && n > 0).then(|| debt - debt.min(n))
            }) {
            Ok(before) => before.min(n),
            Err(_) => 0,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            if self.slots.take_debt(1) == 1 {
                permit.forget();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Free slots and the debt.
    fn check(slots: &Arc<Slots>, free: usize, debt: usize) {
        assert_eq!((slots.available(), slots.debt()), (free, debt));
    }

    fn take(slots: &Arc<Slots>, n: usize) -> Vec<Slot> {
        (0..n)
            .map(|_| slots.try_acquire().expect("a free slot"))
            .collect()
    }

    #[test]
    fn growing_adds_free_slots_and_forgives_debt_first() {
        let slots = Slots::new(2);
        let mut held = take(&slots, 2);
        slots.grow(1);
        check(&slots, 1, 0);
        held.extend(take(&slots, 1));
        // 3 held, cap 1: two owed; growing by 3 forgives both and frees one.
        slots.shrink(2);
        check(&slots, 0, 2);
        slots.grow(3);
        check(&slots, 1, 0);
    }

    #[test]
    fn shrinking_takes_free_slots_then_the_returning_ones() {
        let slots = Slots::new(4);
        let mut held = take(&slots, 3);
        // Cap 4 → 1: the free slot goes at once, two are owed.
        slots.shrink(3);
        check(&slots, 0, 2);
        assert!(slots.try_acquire().is_none());
        held.pop();
        check(&slots, 0, 1);
        held.pop();
        check(&slots, 0, 0);
        // Paid: the last one comes back free, and the cap is 1.
        held.pop();
        check(&slots, 1, 0);
        let one = take(&slots, 1);
        assert!(slots.try_acquire().is_none());
        drop(one);
    }

    #[test]
    fn settling_pays_the_debt_with_slots_freed_meanwhile() {
        let slots = Slots::new(2);
        let _held = take(&slots, 2);
        slots.shrink(1);
        check(&slots, 0, 1);
        // As if a slot came back free in the instant before its debt was recorded.
        slots.semaphore.add_permits(1);
        slots.settle();
        check(&slots, 0, 0);
        // Nothing owed: settling takes nothing.
        slots.semaphore.add_permits(1);
        slots.settle();
        check(&slots, 1, 0);
    }

    #[tokio::test]
    async fn a_waiter_gets_a_slot_when_the_cap_grows_and_not_while_a_debt_is_owed() {
        tokio::time::pause();
        let slots = Slots::new(1);
        let _first = take(&slots, 1);
        let wait = |slots: &Arc<Slots>| {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire().await })
        };
        let waiter = wait(&slots);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        slots.grow(1);
        let second = waiter.await.expect("no panic").expect("a slot");
        // Cap 2 → 1 with both held: the second's return pays the debt, the waiter waits on.
        let waiter = wait(&slots);
        slots.shrink(1);
        drop(second);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the returned slot paid the debt");
        check(&slots, 0, 0);
        slots.grow(1);
        assert!(waiter.await.expect("no panic").is_some());
    }
}
