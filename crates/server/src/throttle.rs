//! Login throttling: the policy, as pure functions of the counters and the
//! time (so it is tested with time passed in), and the counters' storage
//! under the reserved root (so they survive restarts).
//!
//! Three counters of recent failures:
//! - per (user, source address): after `free` failures further attempts
//!   wait exponentially longer (1 s, 2 s, 4 s, … up to `max_delay`), and
//!   after `escalate` more they are refused until `cooldown` has passed;
//! - per source address, across users: past `source_limit` failures its
//!   logins are refused until `cooldown` has passed;
//! - per user, across sources: past `user_slow` failures every attempt on
//!   that user is slowed by `user_delay` — slowed, never refused, so a
//!   guessing storm from elsewhere cannot lock the real user out
//!   (GHSA-cq42-vhv7-xr7p is that denial of service in Keycloak).
//!
//! A counter forgets failures older than `window`. A success clears the
//! (user, source) and source counters and the user's.

use std::net::IpAddr;
use std::time::Duration;

use keycard_proto::{Elem, Msg, Path, Value};
use keycard_store::{Op, Store, StoreError};
use serde::Deserialize;

/// Throttling settings (config `[throttle]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failures per (user, source) before attempts are delayed. Default 5.
    pub free: u32,
    /// Further failures per (user, source), each delayed longer, before
    /// attempts are refused for `cooldown`. Default 5.
    pub escalate: u32,
    /// The first delay, seconds; it doubles. Default 1.
    pub base_delay_secs: u64,
    /// The longest delay, seconds. Default 30.
    pub max_delay_secs: u64,
    /// Failures per source address (all users) before its logins are
    /// refused for `cooldown`. Default 100.
    pub source_limit: u32,
    /// Failures per user (all sources) before each attempt on it is slowed
    /// by `user_delay_secs`. Default 20.
    pub user_slow: u32,
    /// That slow-down, seconds. Default 1.
    pub user_delay_secs: u64,
    /// How long refusals last, seconds. Default 900.
    pub cooldown_secs: u64,
    /// Failures older than this are forgotten, seconds. Default 900.
    pub window_secs: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free: 5,
            escalate: 5,
            base_delay_secs: 1,
            max_delay_secs: 30,
            source_limit: 100,
            user_slow: 20,
            user_delay_secs: 1,
            cooldown_secs: 900,
            window_secs: 900,
        }
    }
}

/// Recent failures under one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// How many.
    pub failures: u32,
    /// When the last one was, unix milliseconds.
    pub last: u64,
}

impl Counter {
    /// The count as of `now`: forgotten once `window` has passed.
    fn live(&self, now: u64, window: u64) -> u32 {
        if now.saturating_sub(self.last) >= window {
            0
        } else {
            self.failures
        }
    }

    fn to_value(self) -> Value {
        Msg::new()
            .with("failures", self.failures)
            .with("last", self.last)
            .into_value()
    }

    fn from_value(v: &Value) -> Counter {
        Counter {
            failures: v
                .get("failures")
                .and_then(Value::as_u64)
                .and_then(|f| u32::try_from(f).ok())
                .unwrap_or(0),
            last: v.get("last").and_then(Value::as_u64).unwrap_or(0),
        }
    }
}

/// The three counters that bear on one attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// This user from this source.
    pub pair: Counter,
    /// This source, all users.
    pub source: Counter,
    /// This user, all sources.
    pub user: Counter,
}

/// What to do with an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead, after waiting this long (zero: at once).
    Proceed(Duration),
    /// Refuse; the client may retry after this long.
    Refuse(Duration),
}

/// The policy: what the counters say about an attempt at `now` (unix
/// milliseconds).
pub fn decide(cfg: &ThrottleConfig, c: &Counters, now: u64) -> Decision {
    let ms = |secs: u64| secs.saturating_mul(1000);
    let cooldown = ms(cfg.cooldown_secs);
    let keep = ms(cfg.window_secs).max(cooldown);
    let cooldown_left =
        |last: u64| Duration::from_millis((last + cooldown).saturating_sub(now).max(1));
    let pair = c.pair.live(now, keep);
    if pair >= cfg.free + cfg.escalate && now < c.pair.last + cooldown {
        return Decision::Refuse(cooldown_left(c.pair.last));
    }
    let source = c.source.live(now, keep);
    if source >= cfg.source_limit && now < c.source.last + cooldown {
        return Decision::Refuse(cooldown_left(c.source.last));
    }
    let mut wait = Duration::ZERO;
    if pair >= cfg.free {
        let exp = (pair - cfg.free).min(30);
        let delay = cfg
            .base_delay_secs
            .saturating_mul(1u64 << exp)
            .min(cfg.max_delay_secs);
        // The wait counts from the last failure, not from this attempt.
        let ready = c.pair.last + ms(delay);
        if now < ready {
            wait = Duration::from_millis(ready - now);
        }
    }
    if c.user.live(now, ms(cfg.window_secs)) >= cfg.user_slow {
        wait = wait.max(Duration::from_secs(cfg.user_delay_secs));
    }
    Decision::Proceed(wait)
}

/// Where the counters live: `(nil, "throttle", …)`.
fn keys(user: &str, source: IpAddr) -> [Path; 3] {
    let base = Path::new(vec![Elem::Nil, "throttle".into()]);
    let src = source.to_string();
    [
        base.child("pair").child(user).child(src.as_str()),
        base.child("source").child(src.as_str()),
        base.child("user").child(user),
    ]
}

/// Reads the counters for an attempt.
pub async fn load(store: &dyn Store, user: &str, source: IpAddr) -> Result<Counters, StoreError> {
    let [p, s, u] = keys(user, source);
    let get = |e: Option<keycard_store::Entry>| {
        e.map(|e| Counter::from_value(&e.value)).unwrap_or_default()
    };
    Ok(Counters {
        pair: get(store.get(&p).await?),
        source: get(store.get(&s).await?),
        user: get(store.get(&u).await?),
    })
}

/// Records a failed attempt (one atomic write of the three counters).
pub async fn record_failure(
    store: &dyn Store,
    cfg: &ThrottleConfig,
    user: &str,
    source: IpAddr,
    c: &Counters,
    now: u64,
) -> Result<(), StoreError> {
    let [p, s, u] = keys(user, source);
    let window = cfg.window_secs.max(cfg.cooldown_secs).saturating_mul(1000);
    let bump = |c: Counter| Counter {
        failures: c.live(now, window).saturating_add(1),
        last: now,
    };
    store
        .write(vec![
            Op::put(p, bump(c.pair).to_value()),
            Op::put(s, bump(c.source).to_value()),
            Op::put(u, bump(c.user).to_value()),
        ])
        .await
        .map(|_| ())
}

/// Records a success: the counters for this user and source are cleared
/// (`counted`: a failure was recorded for this very attempt up front).
pub async fn record_success(
    store: &dyn Store,
    user: &str,
    source: IpAddr,
    c: &Counters,
    counted: bool,
) -> Result<(), StoreError> {
    if !counted && *c == Counters::default() {
        return Ok(());
    }
    let [p, s, u] = keys(user, source);
    store
        .write(vec![Op::delete(p), Op::delete(s), Op::delete(u)])
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig::default()
    }

    /// Simulates the counters of one (user, source) pair by hand.
    fn fail(c: &mut Counters, now: u64) {
        let w = 900_000;
        for k in [&mut c.pair, &mut c.source, &mut c.user] {
            *k = Counter {
                failures: k.live(now, w) + 1,
                last: now,
            };
        }
    }

    #[test]
    fn free_failures_then_exponential_delays_then_refusal() {
        let cfg = cfg();
        let mut c = Counters::default();
        let mut now = 1_000_000_000;
        for _ in 0..5 {
            assert_eq!(decide(&cfg, &c, now), Decision::Proceed(Duration::ZERO));
            fail(&mut c, now);
        }
        // 6th attempt right away: wait 1 s; then 2, 4, 8, 16 s.
        for expect in [1u64, 2, 4, 8, 16] {
            assert_eq!(
                decide(&cfg, &c, now),
                Decision::Proceed(Duration::from_secs(expect))
            );
            now += expect * 1000;
            assert_eq!(decide(&cfg, &c, now), Decision::Proceed(Duration::ZERO));
            fail(&mut c, now);
        }
        // Past free + escalate: refused for the cool-down.
        assert_eq!(
            decide(&cfg, &c, now + 1000),
            Decision::Refuse(Duration::from_secs(899))
        );
        assert!(matches!(
            decide(&cfg, &c, now + 899_000),
            Decision::Refuse(_)
        ));
        // After the cool-down the pair starts over.
        assert_eq!(
            decide(&cfg, &c, now + 900_000),
            Decision::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn a_storm_on_a_user_from_elsewhere_slows_but_never_refuses_the_user() {
        let cfg = cfg();
        // 1000 failures on "alice" from other addresses: her own address's
        // pair and source counters are clean.
        let c = Counters {
            pair: Counter::default(),
            source: Counter::default(),
            user: Counter {
                failures: 1000,
                last: 5_000_000,
            },
        };
        assert_eq!(
            decide(&cfg, &c, 5_000_000),
            Decision::Proceed(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_source_guessing_many_users_is_refused() {
        let cfg = cfg();
        let c = Counters {
            pair: Counter {
                failures: 1,
                last: 100_000,
            },
            source: Counter {
                failures: 100,
                last: 100_000,
            },
            user: Counter {
                failures: 1,
                last: 100_000,
            },
        };
        assert!(matches!(decide(&cfg, &c, 150_000), Decision::Refuse(_)));
        assert_eq!(
            decide(&cfg, &c, 100_000 + 900_000),
            Decision::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn old_failures_are_forgotten() {
        let cfg = cfg();
        let c = Counters {
            pair: Counter {
                failures: 7,
                last: 100_000,
            },
            ..Counters::default()
        };
        assert!(matches!(decide(&cfg, &c, 101_000), Decision::Proceed(d) if d > Duration::ZERO));
        assert_eq!(
            decide(&cfg, &c, 100_000 + 900_000),
            Decision::Proceed(Duration::ZERO)
        );
    }
}
