//! Request path, step 0: admission. Counts open client connections and requests in flight
//! against `defaults.limits`, and sheds what is over them, so overload costs a refused
//! connection or a short `503` instead of memory without bound.
//!
//! The limits are read from the routing table in force at each decision, so a reload changes
//! them at once; the counts are process-wide (every data-plane listener together).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The process-wide counts, and how much was shed.
#[derive(Debug, Default)]
pub struct Admission {
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    refused: AtomicU64,
    shed: AtomicU64,
}

impl Admission {
    /// Takes a connection slot if fewer than `max` are open; else counts a refusal.
    pub fn try_connection(self: &Arc<Self>, max: usize) -> Option<ConnectionPermit> {
        take(&self.connections, max)
            .map(|()| ConnectionPermit(Arc::clone(self)))
            .or_else(|| {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            })
    }

    /// Counts a connection that is already open whatever the limit (an upgraded tunnel that
    /// outlives its HTTP connection), so later connections see it.
    pub fn track_connection(self: &Arc<Self>) -> ConnectionPermit {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionPermit(Arc::clone(self))
    }

    /// Takes a request slot if fewer than `max` requests are in flight; else counts a shed
    /// request.
    pub fn try_request(self: &Arc<Self>, max: usize) -> Option<RequestPermit> {
        take(&self.in_flight, max)
            .map(|()| RequestPermit(Arc::clone(self)))
            .or_else(|| {
                self.shed.fetch_add(1, Ordering::Relaxed);
                None
            })
    }

    /// Open client connections (`sluice_connections_open`).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests in flight (`sluice_requests_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Connections closed at once because `max_connections` were open
    /// (`sluice_connections_refused_total`).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Requests answered `503` because `max_in_flight` were in flight
    /// (`sluice_requests_shed_total`).
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

/// One atomic add decides, so concurrent callers never overshoot `max` together.
fn take(count: &AtomicUsize, max: usize) -> Option<()> {
    let before = count.fetch_add(1, Ordering::Relaxed);
    if before < max {
        Some(())
    } else {
        count.fetch_sub(1, Ordering::Relaxed);
        None
    }
}

/// An open client connection; its slot is freed when this drops.
#[derive(Debug)]
pub struct ConnectionPermit(Arc<Admission>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight, until its response body has been sent; its slot is freed when this
/// drops.
#[derive(Debug)]
pub struct RequestPermit(Arc<Admission>);

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_up_to_the_limit_and_freed_on_drop() {
        let admission = Arc::new(Admission::default());
        let first = admission.try_connection(2).expect("first of 2");
        let second = admission.try_connection(2).expect("second of 2");
        assert!(admission.try_connection(2).is_none(), "a third is refused");
        assert_eq!((admission.connections(), admission.refused()), (2, 1));
        drop(first);
        let third = admission.try_connection(2).expect("a freed slot is taken again");
        let tunnel = admission.track_connection();
        assert_eq!(admission.connections(), 3, "a tracked connection counts past the limit");
        assert!(admission.try_connection(3).is_none(), "and keeps new ones out");
        drop((second, third, tunnel));
        assert_eq!(admission.connections(), 0);

        let request = admission.try_request(1).expect("first request");
        assert!(admission.try_request(1).is_none(), "a second is shed");
        assert_eq!((admission.in_flight(), admission.shed()), (1, 1));
        drop(request);
        assert!(admission.try_request(1).is_some(), "the slot is free again");
        assert_eq!(admission.in_flight(), 0, "the permit was dropped at once");
    }
}
