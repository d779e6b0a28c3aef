//! Per-identity limits: how many requests one caller may have in flight, and (optionally)
//! how fast it may send them, so a runaway job cannot starve everyone else's.
//!
//! The state outlives config reloads (it is keyed by issuer and subject, not by config),
//! and is sharded so callers do not queue on one lock. An identity is keyed by a keyed
//! 64-bit hash of its issuer and subject (no allocation per request; two identities would
//! share counts only on a collision of a randomly keyed SipHash). The rate is a GCRA token
//! bucket: one timestamp per identity, no timer.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Limits;
use crate::model::Identity;
use crate::rejection::Throttled;

const SHARDS: usize = 16;

#[derive(Default)]
struct Entry {
    in_flight: usize,
    /// GCRA's theoretical arrival time, in seconds since [`Throttle::epoch`].
    tat: f64,
}

/// Who has how much in flight, and their rate state.
pub struct Throttle {
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: Default::default(),
            epoch: Instant::now(),
        }
    }
}

/// One admitted request; the identity's in-flight count drops when this does.
pub struct InFlight {
    throttle: Arc<Throttle>,
    key: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.throttle.now();
        let mut shard = self.throttle.shard(self.key);
        if let Some(e) = shard.get_mut(&self.key) {
            e.in_flight = e.in_flight.saturating_sub(1);
            if e.in_flight == 0 && e.tat <= now {
                shard.remove(&self.key);
            }
        }
    }
}

impl Throttle {
    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.shards[(key >> 59) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one request of `identity` under `limits`, or says which limit it is over.
    pub fn admit(self: &Arc<Self>, identity: &Identity, limits: &Limits) -> Result<InFlight, Throttled> {
        let key = self.hasher.hash_one((&identity.issuer, &identity.subject));
        let now = self.now();
        let mut shard = self.shard(key);
        let entry = shard.entry(key).or_default();
        if entry.in_flight >= limits.max_requests_per_identity {
            return Err(Throttled::Concurrency {
                max: limits.max_requests_per_identity,
            });
        }
        if let Some(rate) = limits.rate_per_identity {
            let interval = 1.0 / rate.per_second;
            let tolerance = (rate.burst - 1.0).max(0.0) * interval;
            let tat = entry.tat.max(now);
            if tat - now > tolerance {
                let wait = tat - tolerance - now;
                return Err(Throttled::Rate {
                    retry_after: wait.ceil().max(1.0) as u64,
                });
            }
            entry.tat = tat + interval;
        }
        entry.in_flight += 1;
        // Forget callers that went quiet, now and then, so the map holds only the active.
        if shard.len() > 4096 {
            shard.retain(|_, e| e.in_flight > 0 || e.tat > now);
        }
        drop(shard);
        Ok(InFlight {
            throttle: self.clone(),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;
    use crate::model::AuthMethod;

    fn id(sub: &str) -> Identity {
        Identity {
            issuer: "https://i".into(),
            subject: sub.into(),
            method: AuthMethod::Bearer,
            token_id: "t".into(),
            claims: Default::default(),
        }
    }

    #[test]
    fn concurrency_is_per_identity_and_released_on_drop() {
        let t = Arc::new(Throttle::default());
        let limits = Limits {
            max_requests_per_identity: 2,
            ..Limits::default()
        };
        let a1 = t.admit(&id("a"), &limits).unwrap();
        let _a2 = t.admit(&id("a"), &limits).unwrap();
        assert_eq!(
            t.admit(&id("a"), &limits).err(),
            Some(Throttled::Concurrency { max: 2 })
        );
        // another identity is not affected
        let _b = t.admit(&id("b"), &limits).unwrap();
        drop(a1);
        assert!(t.admit(&id("a"), &limits).is_ok());
    }

    #[test]
    fn rate_allows_the_burst_then_refuses_with_a_retry_time() {
        let t = Arc::new(Throttle::default());
        let limits = Limits {
            rate_per_identity: Some(Rate {
                per_second: 0.5,
                burst: 3.0,
            }),
            ..Limits::default()
        };
        for _ in 0..3 {
            drop(t.admit(&id("a"), &limits).unwrap());
        }
        match t.admit(&id("a"), &limits) {
            Err(Throttled::Rate { retry_after }) => assert!((1..=2).contains(&retry_after)),
            other => panic!("expected a rate refusal, got {:?}", other.is_ok()),
        }
        assert!(t.admit(&id("b"), &limits).is_ok());
    }
}
