//! Remembers the nonces of signed device requests for long enough that a
//! captured request cannot be replayed inside the accepted clock window.
//!
//! Two generations of sets rotate every `2 × skew`: a nonce is remembered
//! for at least that long, which covers every timestamp still accepted.
//! Memory is bounded: when the current generation is full, new requests are
//! refused (`UNAVAILABLE`) rather than accepted unprotected.
//!
//! The guard is per process: with several verifier replicas behind a load
//! balancer a replay could land on another replica, where only the request's
//! own effects protect (an answer is one-time, a token update is idempotent).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct ReplayGuard {
    inner: Mutex<Generations>,
    rotate_every: Duration,
    max_per_generation: usize,
}

struct Generations {
    current: HashSet<[u8; 32]>,
    previous: HashSet<[u8; 32]>,
    rotated_at: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReplayVerdict {
    Fresh,
    Replayed,
    Full,
}

impl ReplayGuard {
    pub fn new(skew: Duration, max_per_generation: usize) -> Self {
        ReplayGuard {
            inner: Mutex::new(Generations {
                current: HashSet::new(),
                previous: HashSet::new(),
                rotated_at: Instant::now(),
            }),
            rotate_every: skew * 2,
            max_per_generation,
        }
    }

    /// Records `key` (a hash of device id and nonce) and says whether it is new.
    pub fn check(&self, key: [u8; 32]) -> ReplayVerdict {
        let Ok(mut g) = self.inner.lock() else {
            return ReplayVerdict::Full;
        };
        if g.rotated_at.elapsed() >= self.rotate_every {
            g.previous = std::mem::take(&mut g.current);
            g.rotated_at = Instant::now();
        }
        if g.current.contains(&key) || g.previous.contains(&key) {
            return ReplayVerdict::Replayed;
        }
        if g.current.len() >= self.max_per_generation {
            return ReplayVerdict::Full;
        }
        g.current.insert(key);
        ReplayVerdict::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_is_a_replay_and_memory_is_bounded() {
        let g = ReplayGuard::new(Duration::from_secs(60), 2);
        assert_eq!(g.check([1; 32]), ReplayVerdict::Fresh);
        assert_eq!(g.check([1; 32]), ReplayVerdict::Replayed);
        assert_eq!(g.check([2; 32]), ReplayVerdict::Fresh);
        assert_eq!(g.check([3; 32]), ReplayVerdict::Full);
    }

    #[test]
    fn remembered_for_a_rotation_then_forgotten() {
        let g = ReplayGuard::new(Duration::from_millis(5), 10); // rotates every 10 ms
        assert_eq!(g.check([1; 32]), ReplayVerdict::Fresh);
        std::thread::sleep(Duration::from_millis(12));
        assert_eq!(g.check([2; 32]), ReplayVerdict::Fresh); // rotation 1: [1] now "previous"
        assert_eq!(g.check([1; 32]), ReplayVerdict::Replayed);
        std::thread::sleep(Duration::from_millis(12));
        assert_eq!(g.check([3; 32]), ReplayVerdict::Fresh); // rotation 2: [1] dropped
        assert_eq!(
            g.check([1; 32]),
            ReplayVerdict::Fresh,
            "memory is bounded in time"
        );
    }
}
