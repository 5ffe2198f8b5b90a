//! Send-rate limits per transport (`smtp_rate: 50/s`, `push_rate: 1000/m`), shared by every
//! worker of the process.
//!
//! A token bucket kept as a "theoretical arrival time" (GCRA): each send reserves the next slot
//! under a mutex and then sleeps outside it until that slot, so waiters are served in order and
//! never hold the lock while waiting. Limits are per process: with several daemons on PostgreSQL
//! each one sends at most this rate.

use std::{fmt, str::FromStr, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// A number of sends per period, written `"50/s"`, `"1000/m"` or `"3600/h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate `{text}`: {reason} (write e.g. \"50/s\", \"1000/m\" or \"3600/h\")")]
pub struct RateParseError {
    pub text: String,
    pub reason: &'static str,
}

impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(s: &str) -> Result<Rate, RateParseError> {
        let err = |reason| RateParseError {
            text: s.to_string(),
            reason,
        };
        let (count, unit) = s.split_once('/').ok_or_else(|| err("missing `/`"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| err("the count is not a whole number"))?;
        if count == 0 {
            return Err(err("the count must be at least 1"));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(err("the unit must be s, m or h")),
        };
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => return write!(f, "{}/{:?}", self.count, self.per),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Rate {
    /// Time between two sends at the steady rate.
    fn interval(self) -> Duration {
        self.per / self.count
    }

    /// Sends allowed back to back after an idle spell: one second's worth (at least one), so
    /// `1000/m` never bursts 1000 messages at once.
    fn burst(self) -> u32 {
        let per_second = f64::from(self.count) / self.per.as_secs_f64();
        (per_second.ceil() as u32).clamp(1, self.count)
    }
}

/// A token bucket shared behind an `Arc` by all workers sending through one transport.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    interval: Duration,
    /// How far ahead of now the next slot may be while still sending at once (burst − 1 slots).
    tolerance: Duration,
    /// The time the next send would be due at the steady rate.
    next_slot: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> RateLimiter {
        let interval = rate.interval();
        RateLimiter {
            rate,
            interval,
            tolerance: interval * (rate.burst() - 1),
            next_slot: Mutex::new(None),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Waits until one more send is allowed, and takes it.
    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Reserves the next slot and returns how long to wait for it.
    fn reserve(&self, now: Instant) -> Duration {
        // A poisoned lock only means another worker panicked mid-update of an Instant: still valid.
        let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
        let slot = next.map_or(now, |t| t.max(now));
        *next = Some(slot + self.interval);
        slot.saturating_duration_since(now + self.tolerance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_rates() {
        assert_eq!(
            "50/s".parse::<Rate>().unwrap(),
            Rate {
                count: 50,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!("1000/m".parse::<Rate>().unwrap().per, Duration::from_secs(60));
        assert_eq!(" 10 / h ".parse::<Rate>().unwrap().count, 10);
        assert_eq!("1000/m".parse::<Rate>().unwrap().to_string(), "1000/m");
        for bad in ["", "50", "0/s", "-1/s", "x/s", "50/d", "50/", "1.5/s"] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.to_string().contains("invalid rate"), "{bad}: {e}");
        }
    }

    #[test]
    fn burst_is_one_seconds_worth() {
        assert_eq!("50/s".parse::<Rate>().unwrap().burst(), 50);
        assert_eq!("1000/m".parse::<Rate>().unwrap().burst(), 17);
        assert_eq!("1/h".parse::<Rate>().unwrap().burst(), 1);
    }

    #[test]
    fn reservations_follow_the_rate() {
        let limiter = RateLimiter::new("2/s".parse().unwrap());
        let t0 = Instant::now();
        // Burst of 2, then one every 500 ms.
        assert_eq!(limiter.reserve(t0), Duration::ZERO);
        assert_eq!(limiter.reserve(t0), Duration::ZERO);
        assert_eq!(limiter.reserve(t0), Duration::from_millis(500));
        assert_eq!(limiter.reserve(t0), Duration::from_millis(1000));
        // After a long idle spell the burst is available again, but not more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(limiter.reserve(later), Duration::ZERO);
        assert_eq!(limiter.reserve(later), Duration::ZERO);
        assert_eq!(limiter.reserve(later), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn shared_limiter_holds_the_rate_across_tasks() {
        let limiter = std::sync::Arc::new(RateLimiter::new("10/s".parse().unwrap()));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let l = limiter.clone();
            tasks.spawn(async move {
                for _ in 0..5 {
                    l.acquire().await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        // 20 sends at 10/s with a burst of 10: the last one is 1 s after the start.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(950) && took <= Duration::from_millis(1500),
            "{took:?}"
        );
    }
}
