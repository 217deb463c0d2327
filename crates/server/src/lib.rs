//! keycard's msgpack front end.
//!
//! A TCP server speaking DistKV's client protocol: the greeting, seq-tagged
//! requests, single replies and flow-controlled streams. It drives the
//! [`keycard_store::Store`] for data and the [`keycard_auth`] methods for
//! logins; all protocol state lives per connection in [`conn`].

mod acl;
mod actions;
mod audit;
mod bouncer;
mod caller;
pub mod clock;
mod config;
mod conn;
mod core;
mod error;
mod forwarded;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod listener;
pub mod logins;
pub mod metrics;
mod names;
mod outbox;
pub mod seal;
mod server;
mod state;
mod throttle;
mod tls;

pub use bouncer::{Bouncer, Ended};
pub use clock::{Clock, ClockHandle, ManualClock, SystemClock};
pub use config::{Config, KeycardConfig};
pub use error::ApiError;
pub use forwarded::Network;
pub use server::{Server, ServerHandle, StartError, STORE_FILE};
pub use state::{AuthConfig, ServerState};
pub use throttle::{Counter, Counters, Throttle, ThrottleConfig};
pub use tls::{ClientName, Tls, TlsConfig, TlsVersion};
