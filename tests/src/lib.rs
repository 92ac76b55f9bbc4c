//! The integration harness: a private containerd in a temp dir with a unique namespace
//! ([`containerd`]), images built offline ([`image`]), commands with time limits ([`cmd`]),
//! the check that a run left nothing behind ([`leftovers`]), a CRI client ([`cri`]) and the
//! frame both suites run in ([`suite`]).

pub mod cmd;
pub mod containerd;
pub mod cri;
pub mod image;
pub mod leftovers;
pub mod suite;

pub use cmd::Output;
pub use containerd::{built_shim, Containerd, Runtime};
