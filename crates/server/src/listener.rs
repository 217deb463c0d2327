//! Accepting connections, for every protocol: one [`Listener`] binds,
//! accepts, applies the global and per-address connection limits, and
//! hands each admitted `(stream, peer)` to its [`Protocol`], or a refused
//! one to the protocol's refusal. The msgpack and HTTP front ends are two
//! protocols; TLS will wrap the stream here, after the limits and before
//! the protocol (the protocol is generic over its stream).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Which limit a connection was refused by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its address holds its maximum of connections.
    PerAddress,
    /// The listener holds its maximum of connections.
    Total,
}

/// What a listener serves: a protocol over a stream of type `S`.
pub(crate) trait Protocol<S>: Clone + Send + Sync + 'static {
    /// Serves one admitted connection until it closes.
    fn serve(self, stream: S, peer: SocketAddr) -> impl Future<Output = ()> + Send + 'static;

    /// Tells a connection over a limit why it is closed (in the
    /// protocol's own words), then closes it.
    fn refuse(
        self,
        stream: S,
        peer: SocketAddr,
        why: Refused,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// A bound socket and its connection limits.
pub(crate) struct Listener {
    tcp: TcpListener,
    /// For logs: which listener this is.
    name: &'static str,
    max_total: usize,
    per_address: Arc<PerAddress>,
}

impl Listener {
    /// Binds `addr`, admitting at most `max_total` connections at once,
    /// at most `max_per_address` of them from one address.
    pub(crate) async fn bind(
        name: &'static str,
        addr: SocketAddr,
        max_total: usize,
        max_per_address: usize,
    ) -> std::io::Result<Listener> {
        Ok(Listener {
            tcp: TcpListener::bind(addr).await?,
            name,
            max_total,
            per_address: PerAddress::new(max_per_address),
        })
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts until the task is dropped: each connection gets its
    /// address's slot, then a global one, then a task of its own running
    /// `proto` (which holds both slots until it ends); one over a limit
    /// is given to [`Protocol::refuse`] in a task of its own.
    pub(crate) async fn run<P: Protocol<TcpStream>>(self, proto: P) {
        let slots = Arc::new(Semaphore::new(self.max_total));
        loop {
            let (socket, peer) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep
                    // serving the connections we have.
                    tracing::warn!(listener = self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(address_slot) = self.per_address.take(peer.ip()) else {
                tokio::spawn(proto.clone().refuse(socket, peer, Refused::PerAddress));
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tokio::spawn(proto.clone().refuse(socket, peer, Refused::Total));
                continue;
            };
            let served = proto.clone().serve(socket, peer);
            tokio::spawn(async move {
                served.await;
                drop(permit);
                drop(address_slot);
            });
        }
    }
}

/// Connections held per client address, so that one address cannot take
/// every slot. IPv6 addresses count by their /64 (what one host is
/// usually given); IPv4-mapped ones as the IPv4 address.
struct PerAddress {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerAddress`], given back when dropped.
struct AddressSlot {
    owner: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    /// At most `max` connections per address (0: none at all).
    fn new(max: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::from(seg)
            }
            v4 => v4,
        }
    }

    /// A slot for a connection from `ip`, if its address has one left.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = Self::key(ip);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            owner: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            // Only addresses holding connections are remembered.
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}
