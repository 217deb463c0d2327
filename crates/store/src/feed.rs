//! The live change feed: the latest committed changes, kept in memory up
//! to a byte budget, for watches to follow as they commit.
//!
//! Why not a broadcast channel of N slots: it keeps its last N changes
//! whatever their size, so 1024 values of 256 KiB pin 256 MiB as long as
//! one receiver lags. Here the ring holds at most `max_bytes` (and
//! `max_len` changes); a receiver that falls out of it is told it lagged
//! and catches up from the persisted change log (`Store::changes_since`),
//! which is on disk, not in memory. Receivers are positions (the next tock
//! they want), so a catch-up resumes the feed exactly where it ended.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use keycard_proto::{Elem, Value};
use tokio::sync::watch;

use crate::types::{Change, Tock};

/// Why [`Subscription::recv`] returned no change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedError {
    /// The next change this subscription wants has left the in-memory
    /// feed: read it from the change log
    /// ([`crate::Store::changes_since`] after [`Subscription::after`]),
    /// then [`Subscription::resume_after`] the last change read.
    Lagged,
    /// The store is closed.
    Closed,
}

/// Roughly what a decoded value costs in memory: ~32 bytes per value
/// besides its strings' and byte strings' bytes.
pub fn value_weight(v: &Value) -> usize {
    32 + match v {
        Value::Str(s) => s.len(),
        Value::Bin(b) | Value::Ext(_, b) => b.len(),
        Value::Array(items) => items.iter().map(value_weight).sum(),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| value_weight(k) + value_weight(v))
            .sum(),
        _ => 0,
    }
}

/// Roughly what a change costs in memory: its path and value.
pub fn weight(change: &Change) -> usize {
    let path: usize = change
        .path
        .elems()
        .iter()
        .map(|e| match e {
            Elem::Str(s) => 32 + s.len(),
            Elem::Bin(b) => 32 + b.len(),
            _ => 32,
        })
        .sum();
    64 + path + change.value.as_ref().map_or(0, value_weight)
}

/// Changes as they commit (see the module docs).
pub struct Feed {
    ring: Mutex<Ring>,
    /// The tock of the last change published; receivers wait on it.
    published: watch::Sender<u64>,
    /// The highest tock no longer in the persisted change log.
    pruned: watch::Sender<u64>,
    closed: AtomicBool,
}

struct Ring {
    /// Changes with consecutive tocks, oldest first, with their weights.
    entries: VecDeque<(Arc<Change>, usize)>,
    /// The tock of `entries[0]`; when empty, of the next change.
    first: u64,
    bytes: usize,
    max_bytes: usize,
    max_len: usize,
}

fn lock(m: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    // The ring's invariants hold between statements: a panic elsewhere
    // while it was locked leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Feed {
    /// A feed whose next change will have tock `tock + 1`, keeping at most
    /// `max_bytes` (by [`weight`]) and `max_len` changes; at least the
    /// newest one is always kept.
    pub fn new(tock: u64, pruned: u64, max_bytes: usize, max_len: usize) -> Feed {
        Feed {
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                first: tock + 1,
                bytes: 0,
                max_bytes,
                max_len: max_len.max(1),
            }),
            published: watch::channel(tock).0,
            pruned: watch::channel(pruned).0,
            closed: AtomicBool::new(false),
        }
    }

    /// Publishes committed changes, in tock order, each the tock after the
    /// last published one.
    pub fn publish(&self, changes: Vec<Change>) {
        let Some(last) = changes.last().map(|c| c.tock.0) else {
            return;
        };
        {
            let mut ring = lock(&self.ring);
            for c in changes {
                let w = weight(&c);
                if ring.entries.is_empty() {
                    ring.first = c.tock.0;
                }
                ring.entries.push_back((Arc::new(c), w));
                ring.bytes += w;
                while ring.entries.len() > 1
                    && (ring.bytes > ring.max_bytes || ring.entries.len() > ring.max_len)
                {
                    if let Some((_, w)) = ring.entries.pop_front() {
                        ring.bytes -= w;
                        ring.first += 1;
                    }
                }
            }
        }
        self.published.send_replace(last);
    }

    /// The change log no longer holds changes up to `pruned`.
    pub fn set_pruned(&self, pruned: u64) {
        self.pruned.send_if_modified(|p| {
            let grew = pruned > *p;
            *p = (*p).max(pruned);
            grew
        });
    }

    /// Forgets the ring and continues at `tock`: after a reopen found
    /// changes that were never published, every subscription behind it
    /// lags and reads them from the change log.
    pub fn reset(&self, tock: u64) {
        {
            let mut ring = lock(&self.ring);
            if ring.first + ring.entries.len() as u64 == tock + 1 {
                return;
            }
            ring.entries.clear();
            ring.bytes = 0;
            ring.first = tock + 1;
        }
        self.published.send_replace(tock);
    }

    /// Ends every subscription (the store is going away).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.published.send_modify(|_| {});
    }

    /// A subscription to the changes after the last published one.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let mut published = self.published.subscribe();
        let next = *published.borrow_and_update() + 1;
        Subscription {
            feed: self.clone(),
            next,
            published,
            pruned: self.pruned.subscribe(),
        }
    }

    /// What the ring holds now: changes and their weight in bytes.
    pub fn held(&self) -> (usize, usize) {
        let ring = lock(&self.ring);
        (ring.entries.len(), ring.bytes)
    }
}

/// One follower of the feed: a position (the next tock it wants).
pub struct Subscription {
    feed: Arc<Feed>,
    next: u64,
    published: watch::Receiver<u64>,
    pruned: watch::Receiver<u64>,
}

impl Subscription {
    /// The next change (tock [`Subscription::after`] + 1), waiting for it
    /// to commit; [`FeedError::Lagged`] if it already left the feed.
    pub async fn recv(&mut self) -> Result<Arc<Change>, FeedError> {
        loop {
            if self.feed.closed.load(Ordering::Acquire) {
                return Err(FeedError::Closed);
            }
            {
                let ring = lock(&self.feed.ring);
                if self.next < ring.first {
                    return Err(FeedError::Lagged);
                }
                let at = usize::try_from(self.next - ring.first).unwrap_or(usize::MAX);
                if let Some((c, _)) = ring.entries.get(at) {
                    self.next += 1;
                    return Ok(c.clone());
                }
            }
            let next = self.next;
            let closed = &self.feed.closed;
            let woke = self
                .published
                .wait_for(|t| *t >= next || closed.load(Ordering::Acquire))
                .await;
            if woke.is_err() {
                return Err(FeedError::Closed);
            }
        }
    }

    /// The tock of the last change this subscription has had.
    pub fn after(&self) -> Tock {
        Tock(self.next - 1)
    }

    /// Continues after `tock` (after reading up to it from the change
    /// log, or to skip what a fetch already covered).
    pub fn resume_after(&mut self, tock: Tock) {
        self.next = tock.0 + 1;
    }

    /// Resolves once the persisted change log no longer holds the changes
    /// after `tock`: a follower that has only had changes up to `tock` can
    /// no longer catch up (`history_gone`). Never resolves while they are
    /// kept.
    pub async fn gone(&mut self, tock: Tock) {
        if self.pruned.wait_for(|p| *p > tock.0).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycard_proto::Path;

    fn change(tock: u64, bytes: usize) -> Change {
        Change {
            path: Path::parse("a.b").expect("path"),
            value: Some(Value::Bin(vec![7; bytes])),
            tock: Tock(tock),
        }
    }

    fn now<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    /// The ring keeps changes up to its byte budget, whatever their count:
    /// 100 changes of 64 KiB in a 1 MiB feed leave ~16 of them.
    #[test]
    fn the_feed_is_bounded_in_bytes() {
        let feed = Feed::new(0, 0, 1 << 20, 1024);
        feed.publish((1..=100).map(|t| change(t, 64 << 10)).collect());
        let (len, bytes) = feed.held();
        assert!(bytes <= 1 << 20, "{bytes} bytes held");
        assert!((10..=16).contains(&len), "{len} changes held");
        // One change larger than the budget is still kept (the newest).
        feed.publish(vec![change(101, 2 << 20)]);
        assert_eq!(feed.held().0, 1);
    }

    /// A subscriber gets every change in order; one that falls out of the
    /// ring is told so and resumes exactly where it says.
    #[test]
    fn a_lagging_subscriber_is_told_and_resumes_where_it_says() {
        let feed = Arc::new(Feed::new(10, 0, 1 << 20, 4));
        let mut sub = feed.subscribe();
        assert_eq!(sub.after(), Tock(10));
        assert!(now(sub.recv()).is_none(), "nothing yet");
        feed.publish(vec![change(11, 1), change(12, 1)]);
        let got = now(sub.recv()).expect("ready").expect("a change");
        assert_eq!(got.tock, Tock(11));
        feed.publish((13..=20).map(|t| change(t, 1)).collect());
        assert_eq!(now(sub.recv()), Some(Err(FeedError::Lagged)));
        assert_eq!(sub.after(), Tock(11));
        // Read 12..=16 elsewhere (the change log), then follow the feed.
        sub.resume_after(Tock(16));
        assert_eq!(
            now(sub.recv()).expect("ready").map(|c| c.tock),
            Ok(Tock(17))
        );
        feed.close();
        sub.resume_after(Tock(20));
        assert_eq!(now(sub.recv()), Some(Err(FeedError::Closed)));
    }

    /// `gone` resolves only once the change log dropped what follows.
    #[test]
    fn gone_waits_for_the_change_log_to_pass() {
        let feed = Arc::new(Feed::new(0, 0, 1 << 20, 16));
        let mut sub = feed.subscribe();
        feed.set_pruned(5);
        assert!(now(sub.gone(Tock(5))).is_none());
        feed.set_pruned(6);
        assert!(now(sub.gone(Tock(5))).is_some());
    }
}
