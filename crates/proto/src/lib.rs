//! keycard's wire types.
//!
//! Everything here is plain data and pure functions: msgpack [`Value`]s, the
//! incremental frame [`codec`], [`Path`]s with their order-preserving
//! [`key`](Path::to_key) encoding and their command-line text form, and the
//! stable [`ErrorCode`]s every front end maps its errors onto. No I/O, no
//! clocks: the server, the client and the store all build on it.

mod codec;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod hex;
mod msg;
mod path;
mod value;

pub use codec::{decode_one, encode, encode_into, DecodeError, Decoder, Limits};
pub use error::ErrorCode;
pub use msg::{Msg, MsgExt};
pub use path::{Elem, Path, PathError, KEY_END, MAX_PATH_LEN, PATH_EXT};
pub use value::{Value, BIGNUM_EXT};
