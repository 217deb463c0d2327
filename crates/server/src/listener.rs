//! Accepting connections, for every protocol: one [`Listener`] binds,
//! accepts, applies the global and per-address connection limits, and
//! hands each admitted `(stream, peer)` to its [`Protocol`], or a refused
//! one to the protocol's refusal. The msgpack and HTTP front ends are two
//! protocols. With TLS on, the handshake runs here, after the limits (a
//! handshake holds its connection's slots) and before the protocol, in
//! the connection's own task and within `[tls] handshake_timeout`, so a
//! slow or hostile handshake stalls nobody else; the protocol gets a
//! [`Stream`], plain or TLS.

use std::collections::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use keycard_auth::ChannelBinding;

use crate::tls::{ClientChain, Front, Tls};

/// Which limit a connection was refused by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its address holds its maximum of connections.
    PerAddress,
    /// The listener holds its maximum of connections.
    Total,
}

/// What a listener serves: a protocol over a [`Stream`].
pub(crate) trait Protocol: Clone + Send + Sync + 'static {
    /// Serves one admitted connection until it closes.
    fn serve(self, stream: Stream, peer: SocketAddr) -> impl Future<Output = ()> + Send + 'static;

    /// Tells a connection over a limit why it is closed (in the
    /// protocol's own words), then closes it. Only on a plaintext
    /// listener: over TLS a refused connection is closed before any
    /// handshake (telling it why would cost the server a handshake per
    /// refused connection, which is what a flood wants).
    fn refuse(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        why: Refused,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// An accepted connection, as its protocol reads and writes it.
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, its handshake done, and what it told of the peer.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, TlsPeer),
}

/// What a TLS handshake established about the connection.
#[derive(Clone, Debug)]
pub(crate) struct TlsPeer {
    /// What the connection can be bound to.
    pub(crate) binding: ChannelBinding,
    /// The certificate chain the client presented, if it presented one
    /// (verified at the handshake only if one is required: a `cert`
    /// login verifies it again).
    pub(crate) client_chain: Option<ClientChain>,
}

impl Stream {
    /// The connection's channel-binding data; `None` over plaintext.
    pub(crate) fn binding(&self) -> Option<&ChannelBinding> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(_, p) => Some(&p.binding),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A listener's TLS: the reloadable configuration, which front it is,
/// and how long a handshake may take.
#[derive(Clone)]
pub(crate) struct ListenerTls {
    pub(crate) tls: Arc<Tls>,
    pub(crate) front: Front,
    pub(crate) handshake_timeout: Duration,
}

/// A bound socket and its connection limits.
pub(crate) struct Listener {
    tcp: TcpListener,
    /// For logs: which listener this is.
    name: &'static str,
    max_total: usize,
    per_address: Arc<PerAddress>,
    tls: Option<ListenerTls>,
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
            tls: None,
        })
    }

    /// This listener speaks TLS only.
    pub(crate) fn with_tls(mut self, tls: Option<ListenerTls>) -> Listener {
        self.tls = tls;
        self
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts until the task is dropped: each connection gets its
    /// address's slot, then a global one, then a task of its own that
    /// runs the TLS handshake (if the listener has TLS) and `proto` (the
    /// task holds both slots until it ends); one over a limit is given to
    /// [`Protocol::refuse`] in a task of its own (closed, over TLS).
    pub(crate) async fn run<P: Protocol>(self, proto: P) {
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
            let why = match self.per_address.take(peer.ip()) {
                None => Err(Refused::PerAddress),
                Some(address_slot) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => Ok((address_slot, permit)),
                    Err(_) => Err(Refused::Total),
                },
            };
            let (address_slot, permit) = match why {
                Ok(slots) => slots,
                Err(why) if self.tls.is_none() => {
                    tokio::spawn(proto.clone().refuse(socket, peer, why));
                    continue;
                }
                Err(why) => {
                    tracing::warn!(listener = self.name, %peer, ?why, "TLS connection refused over a limit");
                    drop(socket);
                    continue;
                }
            };
            let proto = proto.clone();
            let tls = self.tls.clone();
            let name = self.name;
            tokio::spawn(async move {
                if let Some(stream) = handshake(name, socket, peer, tls).await {
                    proto.serve(stream, peer).await;
                }
                drop(permit);
                drop(address_slot);
            });
        }
    }
}

/// The connection as its protocol gets it: plain, or once its TLS
/// handshake is done (`None` if it failed or took too long).
async fn handshake(
    name: &'static str,
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<ListenerTls>,
) -> Option<Stream> {
    let _ = socket.set_nodelay(true);
    let Some(tls) = tls else {
        return Some(Stream::Plain(socket));
    };
    let offer = tls.tls.offer(tls.front);
    let acceptor = tokio_rustls::TlsAcceptor::from(offer.config);
    match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => {
            let exporter = keycard_auth::tls_exporter(&**stream.get_ref().1);
            let binding = ChannelBinding {
                tls_server_end_point: offer.end_point.map(|e| e.to_vec()),
                tls_exporter: exporter,
            };
            let client_chain = stream
                .get_ref()
                .1
                .peer_certificates()
                .filter(|c| !c.is_empty())
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
            let peer_info = TlsPeer {
                binding,
                client_chain,
            };
            Some(Stream::Tls(Box::new(stream), peer_info))
        }
        Ok(Err(e)) => {
            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(listener = name, %peer, "TLS handshake timed out; closing");
            None
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
