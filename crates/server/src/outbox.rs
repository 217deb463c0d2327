//! What one connection may hold in memory, and the queue of its replies.
//!
//! One budget, `max_inflight_bytes`, covers the running requests' messages
//! (counted when a request is admitted, freed when it ends) and the
//! encoded replies not yet written to the socket (counted when queued,
//! freed when written). A request over the budget is refused at once
//! (`too_many_requests`); a reply over it waits until the client reads,
//! so a client that stops reading stops its requests rather than growing
//! the server's memory. Replies are encoded by the request that makes
//! them, so the queue holds bytes and its size is known.
//!
//! A reply is always let through when none is queued, so the connection
//! makes progress whatever the running requests hold: the bound is the
//! budget plus one reply.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

/// What a queued message costs besides its bytes (its allocation and
/// place in the queue), so that many tiny messages are bounded too.
const PER_MESSAGE: usize = 64;

/// The budget and the queue (see the module docs).
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    /// Woken when bytes are freed: a reply waiting for room retries.
    freed: Notify,
    /// Woken when a reply is queued: the connection's task writes it.
    queued: Notify,
    max_bytes: usize,
    max_messages: usize,
}

struct Inner {
    queue: VecDeque<Vec<u8>>,
    /// The running requests' messages.
    requests: usize,
    /// Replies queued or being written, with [`PER_MESSAGE`] each.
    replies: usize,
}

impl Inner {
    fn fits(&self, cost: usize, max_bytes: usize) -> bool {
        self.requests + self.replies + cost <= max_bytes
    }
}

impl Outbox {
    /// A budget of `max_bytes`, and at most `max_messages` replies queued.
    pub(crate) fn new(max_bytes: usize, max_messages: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                requests: 0,
                replies: 0,
            }),
            freed: Notify::new(),
            queued: Notify::new(),
            max_bytes,
            max_messages: max_messages.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain counters and a queue: consistent between statements.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request whose message costs `cost`, if it fits.
    pub(crate) fn admit(&self, cost: usize) -> bool {
        let mut inner = self.lock();
        if !inner.fits(cost, self.max_bytes) {
            return false;
        }
        inner.requests += cost;
        true
    }

    /// A request admitted with `cost` ended.
    pub(crate) fn finished(&self, cost: usize) {
        {
            let mut inner = self.lock();
            inner.requests = inner.requests.saturating_sub(cost);
        }
        self.freed.notify_waiters();
    }

    /// Queues an encoded reply, waiting while the budget (or the queue) is
    /// full and another reply is still unwritten.
    pub(crate) async fn push(&self, bytes: Vec<u8>) {
        let cost = bytes.len() + PER_MESSAGE;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut inner = self.lock();
                let room = inner.replies == 0
                    || (inner.fits(cost, self.max_bytes) && inner.queue.len() < self.max_messages);
                if room {
                    inner.replies += cost;
                    inner.queue.push_back(bytes);
                    drop(inner);
                    self.queued.notify_one();
                    return;
                }
            }
            freed.await;
        }
    }

    /// Queues a small final message (a stream's error or end) without
    /// waiting: a stream that must end ends now, whatever the client
    /// reads. Each request sends at most two, so these stay bounded.
    pub(crate) fn push_now(&self, bytes: Vec<u8>) {
        {
            let mut inner = self.lock();
            inner.replies += bytes.len() + PER_MESSAGE;
            inner.queue.push_back(bytes);
        }
        self.queued.notify_one();
    }

    /// Moves every queued reply into `buf`; returns what they count for,
    /// to pass to [`Outbox::written`] once `buf` is on the socket.
    pub(crate) fn take(&self, buf: &mut Vec<u8>) -> usize {
        let mut inner = self.lock();
        let mut counted = 0;
        while let Some(m) = inner.queue.pop_front() {
            counted += m.len() + PER_MESSAGE;
            buf.extend_from_slice(&m);
        }
        counted
    }

    /// Replies taken with [`Outbox::take`] are written.
    pub(crate) fn written(&self, counted: usize) {
        if counted == 0 {
            return;
        }
        {
            let mut inner = self.lock();
            inner.replies = inner.replies.saturating_sub(counted);
        }
        self.freed.notify_waiters();
    }

    /// Resolves when a reply may have been queued since the last call.
    pub(crate) async fn queued(&self) {
        self.queued.notified().await;
    }

    /// What the running requests and the unwritten replies hold now.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.requests, inner.replies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    /// Replies wait once the budget is full, until what is queued is
    /// written; requests beyond it are refused.
    #[test]
    fn replies_wait_and_requests_are_refused_beyond_the_budget() {
        let o = Outbox::new(1000, 100);
        assert!(o.admit(400));
        assert!(now(o.push(vec![0; 300])).is_some());
        // 400 + 364 + 364 > 1000: waits.
        let mut second = Box::pin(o.push(vec![1; 300]));
        assert!(now(second.as_mut()).is_none());
        assert!(!o.admit(300), "no room for another request");
        let mut buf = Vec::new();
        let counted = o.take(&mut buf);
        assert_eq!(buf.len(), 300);
        o.written(counted);
        assert!(now(second.as_mut()).is_some());
        o.written(o.take(&mut buf));
        o.finished(400);
        assert_eq!(o.held(), (0, 0));
    }

    /// With nothing queued, a reply goes through even when the running
    /// requests hold the whole budget: the connection always progresses.
    #[test]
    fn one_reply_always_goes_through() {
        let o = Outbox::new(1000, 100);
        assert!(o.admit(1000));
        assert!(now(o.push(vec![0; 5000])).is_some());
        assert!(now(o.push(vec![0; 10])).is_none());
        o.push_now(vec![9; 10]);
        let mut buf = Vec::new();
        o.take(&mut buf);
        assert_eq!(buf.len(), 5010);
    }

    /// The queue is bounded in messages too.
    #[test]
    fn the_queue_is_bounded_in_messages() {
        let o = Outbox::new(1 << 20, 2);
        assert!(now(o.push(vec![0])).is_some());
        assert!(now(o.push(vec![0])).is_some());
        assert!(now(o.push(vec![0])).is_none());
    }
}
