//! A steady clock over the host's wall clock. proxy-wasm gives a VM only the wall
//! clock; a step of it (NTP, a VM resumed) must neither suspend polling nor hand the
//! sync lease over early. Each reading advances by the wall clock's difference since
//! the previous one, clamped to `0..=MAX_STEP_MS`: backwards steps stand still,
//! forward leaps count as one bounded step. Readers call it at least every tick
//! (50 ms to 1 s), so a real interval is never clamped.

/// The most one reading may advance the clock.
pub const MAX_STEP_MS: u64 = 5_000;

#[derive(Debug, Clone, Default)]
pub struct SteadyClock {
    last_wall_ms: Option<u64>,
    now_ms: u64,
}

impl SteadyClock {
    /// Milliseconds on this clock at wall time `wall_ms` (starts at 0).
    pub fn read(&mut self, wall_ms: u64) -> u64 {
        if let Some(last) = self.last_wall_ms {
            let step = wall_ms.saturating_sub(last).min(MAX_STEP_MS);
            self.now_ms = self.now_ms.saturating_add(step);
        }
        self.last_wall_ms = Some(wall_ms);
        self.now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_of_the_wall_clock_are_not_time() {
        let mut clock = SteadyClock::default();
        assert_eq!(clock.read(10_000_000), 0);
        assert_eq!(clock.read(10_000_100), 100);
        // An hour back: stands still, then runs on from there.
        assert_eq!(clock.read(10_000_100 - 3_600_000), 100);
        assert_eq!(clock.read(10_000_200 - 3_600_000), 200);
        // A day ahead: one bounded step.
        assert_eq!(clock.read(86_400_000 * 2), 200 + MAX_STEP_MS);
        assert_eq!(clock.read(86_400_000 * 2 + 50), 250 + MAX_STEP_MS);
    }
}
