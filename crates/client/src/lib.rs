//! An async client for keycard (and DistKV) servers: the msgpack protocol
//! here, the REST API in [`rest`].
//!
//! One TCP connection carries many requests at once: each gets a fresh
//! `seq`, replies are routed back by it, and streams (`get_tree`, `watch`)
//! are async iterators that acknowledge what they consumed, so a slow
//! consumer stalls only its own stream.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keycard_client::ClientError> {
//! use keycard_client::Client;
//! use keycard_proto::Path;
//! let client = Client::connect("127.0.0.1:27586").await?;
//! let path = Path::parse("hello.world").expect("valid path");
//! client.set(&path, "hi".into()).await?;
//! assert_eq!(client.get(&path).await?.map(|n| n.value), Some("hi".into()));
//! # Ok(()) }
//! ```
//!
//! [`rest`] speaks the REST API: its login, signed requests, `/kv` and
//! `/user`.

mod conn;
pub mod rest;
mod steps;
mod tls;

pub use conn::{
    Client, ClientError, Event, FactorSource, Greeting, Node, SetResult, Stream, TreeItem,
    CONNECT_TIMEOUT, GREETING_TIMEOUT, WRONG_CREDENTIALS,
};
pub use tls::ClientTls;
