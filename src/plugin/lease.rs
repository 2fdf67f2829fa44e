//! Filter-side sync's lease: among the filter's root contexts of one Envoy (one
//! per worker, plus the main thread's), the one holding the lease in shared data
//! polls the controller; the others only follow the table it stores.

use super::host::Host;
use crate::clock::SteadyClock;
use crate::lease::{LeaseRecord, LeaseStep, LeaseWatch, LEASE_KEY};

pub struct Lease {
    /// This root's holder id (from the clock in nanoseconds: unique among the roots).
    me: u64,
    watch: LeaseWatch,
    clock: SteadyClock,
    /// It held the lease at its last tick.
    holding: bool,
}

impl Lease {
    pub fn new(host: &impl Host) -> Lease {
        Lease {
            me: host.now_ns().wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            watch: LeaseWatch::default(),
            clock: SteadyClock::default(),
            holding: false,
        }
    }

    /// Takes, renews or waits for the lease (timed on this root's steady clock).
    /// Returns whether this root may poll: it held the lease at its
    /// previous tick and still does, so two roots that took an absent lease at the
    /// same moment settle before either polls.
    pub fn tick(&mut self, host: &impl Host) -> bool {
        let now_ms = self.clock.read(host.now_ms());
        let held_before = self.holding;
        self.holding = match host.shared_data(LEASE_KEY) {
            Err(_) => false,
            Ok((value, cas)) => {
                let current = value.as_deref().and_then(LeaseRecord::parse);
                match self.watch.step(current, self.me, now_ms) {
                    LeaseStep::Hold => true,
                    LeaseStep::Wait => false,
                    LeaseStep::Renew | LeaseStep::Take => {
                        let next = self.watch.next(self.me);
                        let written = host
                            .set_shared_data(LEASE_KEY, next.encode().as_bytes(), cas)
                            .is_ok();
                        if written {
                            self.watch.wrote(next, now_ms);
                        }
                        written
                    }
                }
            }
        };
        held_before && self.holding
    }

    /// Whether the record in shared data still names this root: a root that
    /// stalled past the lease while a poll was out (a long pause, a clock step)
    /// finds another holder there and must not store its answer.
    pub fn still_held(&self, host: &impl Host) -> bool {
        self.holding
            && host
                .shared_data(LEASE_KEY)
                .ok()
                .and_then(|(value, _)| LeaseRecord::parse(&value?))
                .is_some_and(|record| record.holder == self.me)
    }
}
