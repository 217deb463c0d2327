//! What one connection may hold in memory, and the queue of its replies.
//!
//! One budget, `max_inflight_bytes`, covers everything a connection's
//! requests hold: their messages (counted when a request is admitted,
//! freed when it ends), the data they read a page at a time
//! ([`Outbox::reserve`]) and their encoded replies, waiting or queued, until
//! written to the socket. A request is admitted only while the connection
//! is under the budget (else `too_many_requests`), and a reply enters the
//! queue only while it is (else it waits for the client to read), so a
//! client that stops reading stops its requests rather than growing the
//! server's memory. Replies are encoded by the request that makes them, so
//! the queue holds bytes and its size is known.
//!
//! A reply always enters an empty queue, so the connection makes progress
//! whatever the running requests hold. What a request reads before it
//! knows the size (a page of a walk, a node's value) is reserved first, at
//! its largest (a page's bytes, one message), so requests admitted
//! together cannot read past the budget either; it is overshot only by the
//! one reply that enters an empty queue and by small replies (a write's
//! answer, an error) of the requests admitted together.

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
    /// Everything counted: requests, held pages, replies waiting, queued
    /// or being written.
    held: usize,
    /// The replies queued or being written (part of `held`).
    queued: usize,
    /// The pages reserved (part of `held`).
    pages: usize,
}

/// Replies no larger than this are copied together into one buffer, so a
/// pipeline of small replies is written in few system calls; a larger one
/// is written from its own buffer, never copied.
const COALESCE: usize = 64 * 1024;

/// Bytes on their way to the socket, in order: the greeting, what the
/// connection's task writes itself (errors, a stream's end) and replies
/// taken from the outbox, which stay counted against the budget until
/// written. Replies are moved here, not copied into one buffer: such a
/// buffer, grown by doubling to hold a full budget's replies, once held
/// three times what was counted (the old and the new allocation while it
/// grew) and kept its size for the connection's life.
#[derive(Default)]
pub(crate) struct Pending {
    chunks: VecDeque<Vec<u8>>,
    /// How much of the first chunk is written.
    pos: usize,
    /// What the outbox's replies among `chunks` count for.
    counted: usize,
}

impl Pending {
    /// Whether everything is written.
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The buffer a small message the task writes itself is encoded at
    /// the end of.
    pub(crate) fn tail(&mut self) -> &mut Vec<u8> {
        if self.chunks.back().is_none_or(|b| b.len() >= COALESCE) {
            self.chunks.push_back(Vec::with_capacity(256));
        }
        let last = self.chunks.len() - 1;
        &mut self.chunks[last]
    }

    fn push(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        match self.chunks.back_mut() {
            Some(b) if b.len() + bytes.len() <= COALESCE => b.extend_from_slice(&bytes),
            _ => self.chunks.push_back(bytes),
        }
    }

    /// The next bytes to write.
    pub(crate) fn unwritten(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[self.pos..])
    }

    /// `n` more bytes of [`Pending::unwritten`] are written.
    pub(crate) fn advance(&mut self, n: usize) {
        self.pos += n;
        while let Some(first) = self.chunks.front() {
            if self.pos < first.len() {
                break;
            }
            self.pos -= first.len();
            self.chunks.pop_front();
        }
    }

    /// What the replies written since the last call count for.
    pub(crate) fn take_counted(&mut self) -> usize {
        std::mem::take(&mut self.counted)
    }
}

/// Bytes a request holds (a page it read) until dropped.
pub(crate) struct Held<'a> {
    out: &'a Outbox,
    bytes: usize,
}

impl Held<'_> {
    /// What is held is `bytes` now (the page read turned out this size).
    pub(crate) fn set(&mut self, bytes: usize) {
        {
            let mut inner = self.out.lock();
            inner.held = inner.held - self.bytes + bytes;
            inner.pages = inner.pages - self.bytes + bytes;
        }
        if bytes < self.bytes {
            self.out.freed.notify_waiters();
        }
        self.bytes = bytes;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        {
            let mut inner = self.out.lock();
            inner.pages = inner.pages.saturating_sub(self.bytes);
        }
        self.out.release(self.bytes);
    }
}

impl Outbox {
    /// A budget of `max_bytes`, and at most `max_messages` replies queued.
    pub(crate) fn new(max_bytes: usize, max_messages: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                held: 0,
                queued: 0,
                pages: 0,
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

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        {
            let mut inner = self.lock();
            inner.held = inner.held.saturating_sub(bytes);
        }
        self.freed.notify_waiters();
    }

    /// Admits a request whose message costs `cost`, if it fits.
    pub(crate) fn admit(&self, cost: usize) -> bool {
        let mut inner = self.lock();
        if inner.held + cost > self.max_bytes {
            return false;
        }
        inner.held += cost;
        true
    }

    /// A request admitted with `cost` ended.
    pub(crate) fn finished(&self, cost: usize) {
        self.release(cost);
    }

    /// Reserves `bytes` for a page a request is about to read, waiting
    /// while the connection is over its budget (unless no page is held:
    /// then one always goes, so some request can always progress). The
    /// guard gives the bytes back when dropped; [`Held::set`] corrects the
    /// amount once the page is read.
    pub(crate) async fn reserve(&self, bytes: usize) -> Held<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut inner = self.lock();
                if inner.pages == 0 || inner.held + bytes <= self.max_bytes {
                    inner.held += bytes;
                    inner.pages += bytes;
                    return Held { out: self, bytes };
                }
            }
            freed.await;
        }
    }

    /// Queues an encoded reply; it waits (counted) while the connection is
    /// over its budget or the queue is full, unless the queue is empty.
    pub(crate) async fn push(&self, bytes: Vec<u8>) {
        let cost = bytes.len() + PER_MESSAGE;
        self.lock().held += cost;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut inner = self.lock();
                let room = inner.queued == 0
                    || (inner.held <= self.max_bytes && inner.queue.len() < self.max_messages);
                if room {
                    inner.queued += cost;
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
            let cost = bytes.len() + PER_MESSAGE;
            let mut inner = self.lock();
            inner.held += cost;
            inner.queued += cost;
            inner.queue.push_back(bytes);
        }
        self.queued.notify_one();
    }

    /// Moves every queued reply to `out`, which counts them until
    /// [`Pending::take_counted`] hands them to [`Outbox::written`].
    pub(crate) fn take(&self, out: &mut Pending) {
        let mut inner = self.lock();
        while let Some(m) = inner.queue.pop_front() {
            out.counted += m.len() + PER_MESSAGE;
            out.push(m);
        }
    }

    /// Replies taken with [`Outbox::take`] (counting `counted`) are written.
    pub(crate) fn written(&self, counted: usize) {
        if counted == 0 {
            return;
        }
        {
            let mut inner = self.lock();
            inner.queued = inner.queued.saturating_sub(counted);
            inner.held = inner.held.saturating_sub(counted);
        }
        self.freed.notify_waiters();
    }

    /// Resolves when a reply may have been queued since the last call.
    pub(crate) async fn queued(&self) {
        self.queued.notified().await;
    }

    /// What the connection holds now, and what of it is queued.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.held, inner.queued)
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
    /// written; requests beyond it are refused, and so are they while
    /// replies wait or pages are held.
    #[test]
    fn replies_wait_and_requests_are_refused_beyond_the_budget() {
        let o = Outbox::new(1000, 100);
        assert!(o.admit(400));
        assert!(now(o.push(vec![0; 300])).is_some());
        // 400 + 364 + 364 > 1000: waits, counted.
        let mut second = Box::pin(o.push(vec![1; 300]));
        assert!(now(second.as_mut()).is_none());
        assert_eq!(o.held(), (1128, 364));
        assert!(!o.admit(1), "no room for another request");
        let mut out = Pending::default();
        o.take(&mut out);
        assert_eq!(drain(&mut out).len(), 300);
        o.written(out.take_counted());
        assert!(now(second.as_mut()).is_some());
        o.take(&mut out);
        drain(&mut out);
        o.written(out.take_counted());
        assert_eq!(o.held(), (400, 0));
        {
            let mut page = now(o.reserve(100)).expect("room");
            page.set(500);
            assert!(!o.admit(200), "a held page counts");
            assert!(now(o.reserve(200)).is_none(), "no room for another page");
        }
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
        let mut out = Pending::default();
        o.take(&mut out);
        assert_eq!(drain(&mut out).len(), 5010);
    }

    /// Everything `out` holds, written in steps of at most 1000 bytes as
    /// a socket might take them.
    fn drain(out: &mut Pending) -> Vec<u8> {
        let mut written = Vec::new();
        while !out.is_empty() {
            let n = out.unwritten().len().min(1000);
            assert!(n > 0, "a pending chunk is never empty");
            written.extend_from_slice(&out.unwritten()[..n]);
            out.advance(n);
        }
        written
    }

    /// Replies leave in order; small ones are written together and a
    /// large one from its own buffer, which is moved, not copied (the
    /// write buffer once doubled to hold a whole budget of large replies,
    /// three times what was counted while it grew).
    #[test]
    fn pending_keeps_order_and_never_copies_a_large_reply() {
        let o = Outbox::new(1 << 24, 100);
        let mut out = Pending::default();
        out.tail().extend_from_slice(b"greeting");
        for b in [1u8, 2] {
            assert!(now(o.push(vec![b; 10])).is_some());
        }
        let big = vec![3u8; 1 << 20];
        let at = big.as_ptr();
        assert!(now(o.push(big)).is_some());
        assert!(now(o.push(vec![4; 10])).is_some());
        o.take(&mut out);
        out.tail().extend_from_slice(b"end");
        assert_eq!(
            out.take_counted(),
            3 * (10 + PER_MESSAGE) + (1 << 20) + PER_MESSAGE
        );
        assert_eq!(out.chunks.len(), 3, "small, large, small");
        assert_eq!(out.chunks[1].as_ptr(), at, "the large reply is not copied");
        let mut want = b"greeting".to_vec();
        for (b, n) in [(1u8, 10), (2, 10), (3, 1 << 20), (4, 10)] {
            want.extend(std::iter::repeat_n(b, n));
        }
        want.extend_from_slice(b"end");
        assert!(drain(&mut out) == want, "bytes out of order");
    }

    /// Requests whose messages fill the budget still get one page at a
    /// time: nobody waits for a page that nobody can free.
    #[test]
    fn one_page_always_goes() {
        let o = Outbox::new(1000, 100);
        assert!(o.admit(1000));
        let first = now(o.reserve(300)).expect("the first page goes");
        assert!(now(o.reserve(300)).is_none(), "the second waits");
        drop(first);
        assert!(now(o.reserve(300)).is_some());
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
