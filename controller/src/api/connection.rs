//! The connection a request came on, as the API sees it (a request extension set
//! by `serve::http`): whether it sits in the slots kept for the API, and whether
//! a request on it has authenticated (connections that have not are limited per
//! client address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// What the API knows of the connection a request came on (a request extension).
#[derive(Debug)]
pub struct Connection {
    address: IpAddr,
    /// Admitted into the slots kept for the API: a long-poll may not hold it.
    pub reserved: bool,
    authenticated: AtomicBool,
    unauthenticated: Arc<Unauthenticated>,
}

impl Connection {
    pub fn new(address: IpAddr, reserved: bool, unauthenticated: Arc<Unauthenticated>) -> Self {
        Connection {
            address,
            reserved,
            authenticated: AtomicBool::new(false),
            unauthenticated,
        }
    }

    /// A request on this connection authenticated: it no longer counts against
    /// its address.
    pub fn authenticated(&self) {
        if !self.authenticated.swap(true, Relaxed) {
            self.unauthenticated.release(self.address);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.authenticated.load(Relaxed) {
            self.unauthenticated.release(self.address);
        }
    }
}

/// Open connections per client address that have not authenticated yet.
#[derive(Debug, Default)]
pub struct Unauthenticated {
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

impl Unauthenticated {
    /// Counts one more for `address`, unless it has `max` already.
    pub fn admit(&self, address: IpAddr, max: usize) -> bool {
        let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let count = by_address.entry(address).or_default();
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    fn release(&self, address: IpAddr) {
        let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = by_address.get_mut(&address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                by_address.remove(&address);
            }
        }
    }
}
