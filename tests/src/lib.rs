//! The integration harness: a private containerd in a temp dir with a unique namespace
//! ([`containerd`]), images built offline ([`image`]), commands with time limits ([`cmd`]),
//! and the check that a run left nothing behind ([`leftovers`]).

pub mod cmd;
pub mod containerd;
pub mod cri;
pub mod image;
pub mod leftovers;

pub use cmd::Output;
pub use containerd::{built_shim, Containerd, Runtime};
