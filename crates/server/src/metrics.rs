//! Prometheus metrics, in the text exposition format (prometheus-client).
//!
//! Label values come from fixed sets only — a method's registered name
//! (or `other`), an outcome — never a user name, a path or anything else
//! a client chose, so the number of series stays bounded. Counters are
//! moved where the event happens (a login's outcome, as the audit log
//! records it); gauges are read when the text is made.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A login's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// The method's registered name, or `other`.
    pub method: String,
    /// `success`, `refused` (wrong credentials, an unknown user: the
    /// client's answer is `auth_failed`), `throttled` or `error` (the
    /// server could not decide).
    pub outcome: String,
}

/// Logins by method and outcome.
pub type Logins = Family<LoginLabels, Counter>;

/// A float gauge (seconds, bytes that may exceed i64 are not expected).
type FGauge = Gauge<f64, AtomicU64>;

/// Every metric the server keeps, registered once.
pub struct Metrics {
    registry: Registry,
    /// Logins by method and outcome (`keycard_logins_total`).
    pub logins: Logins,
    keycards: Gauge,
    hash_workers: Gauge,
    hash_workers_free: Gauge,
    store_tock: Gauge,
    feed_lag: Gauge,
    resident: Gauge,
    cpu: FGauge,
    fds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What the server's state says when the text is made.
pub struct Now {
    pub keycards: usize,
    pub hash_workers: usize,
    pub hash_workers_free: usize,
    pub store_tock: u64,
    pub feed_lag: Option<u64>,
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.clone());
    g
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The metrics, all at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let logins = Logins::default();
        registry.register(
            "keycard_logins",
            "Login attempts by method and outcome",
            logins.clone(),
        );
        let keycards = gauge(
            &mut registry,
            "keycard_keycards",
            "Keycards in this node's table (pending logins included)",
        );
        let hash_workers = gauge(
            &mut registry,
            "keycard_hash_workers",
            "Workers for password hashing and key agreement",
        );
        let hash_workers_free = gauge(
            &mut registry,
            "keycard_hash_workers_free",
            "Of those, how many are free now",
        );
        let store_tock = gauge(
            &mut registry,
            "keycard_store_tock",
            "The last tock this node's store has published",
        );
        let feed_lag = gauge(
            &mut registry,
            "keycard_feed_lag",
            "Changes committed by other nodes that this node has not seen yet",
        );
        let resident = gauge(
            &mut registry,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
        );
        let cpu = FGauge::default();
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            cpu.clone(),
        );
        let fds = gauge(
            &mut registry,
            "process_open_fds",
            "Number of open file descriptors",
        );
        Metrics {
            registry,
            logins,
            keycards,
            hash_workers,
            hash_workers_free,
            store_tock,
            feed_lag,
            resident,
            cpu,
            fds,
        }
    }

    /// Counts one login's outcome, as the audit log names it.
    pub fn login(&self, method: &str, outcome: &str) {
        let method = match keycard_auth::method_info(method) {
            Some(info) => info.name.to_owned(),
            None if method == keycard_auth::TOKEN => keycard_auth::TOKEN.to_owned(),
            None => "other".to_owned(),
        };
        let outcome = match outcome {
            "success" => "success",
            "failure" => "refused",
            "throttled" => "throttled",
            _ => "error",
        };
        self.logins
            .get_or_create(&LoginLabels {
                method,
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The text exposition of every metric, the gauges set from `now`
    /// and from /proc.
    pub fn text(&self, now: &Now) -> String {
        self.keycards.set(clamp(now.keycards as u64));
        self.hash_workers.set(clamp(now.hash_workers as u64));
        self.hash_workers_free
            .set(clamp(now.hash_workers_free as u64));
        self.store_tock.set(clamp(now.store_tock));
        self.feed_lag.set(clamp(now.feed_lag.unwrap_or(0)));
        let p = process();
        self.resident.set(clamp(p.resident));
        self.cpu.set(p.cpu_seconds);
        self.fds.set(clamp(p.fds));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The OpenMetrics text's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process's own figures, from /proc (zero where it cannot be read).
struct Process {
    resident: u64,
    cpu_seconds: f64,
    fds: u64,
}

fn process() -> Process {
    let page = 4096u64;
    let ticks = 100.0f64;
    let resident = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command's closing parenthesis; utime and
            // stime are the 14th and 15th of the whole line.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let user = f.get(11)?.parse::<f64>().ok()?;
            let system = f.get(12)?.parse::<f64>().ok()?;
            Some((user + system) / ticks)
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    Process {
        resident,
        cpu_seconds,
        fds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Method names outside the registry and unknown outcomes do not make
    /// series of their own.
    #[test]
    fn labels_stay_bounded() {
        let m = Metrics::new();
        m.login(keycard_auth::SCRAM_SHA_256, "success");
        m.login("'; DROP TABLE", "failure");
        m.login("x\ny", "weird");
        let text = m.text(&Now {
            keycards: 1,
            hash_workers: 2,
            hash_workers_free: 2,
            store_tock: 7,
            feed_lag: None,
        });
        let scram = format!(
            "keycard_logins_total{{method=\"{}\",outcome=\"success\"}} 1",
            keycard_auth::SCRAM_SHA_256
        );
        assert!(text.contains(&scram), "{text}");
        assert!(
            text.contains("keycard_logins_total{method=\"other\",outcome=\"refused\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keycard_logins_total{method=\"other\",outcome=\"error\"} 1"),
            "{text}"
        );
        assert!(!text.contains("DROP") && !text.contains("x\ny"), "{text}");
        assert!(text.contains("keycard_store_tock 7"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
