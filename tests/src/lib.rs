//! The integration harness: a private containerd in a temp dir with a unique namespace
//! ([`containerd`]), images built offline ([`image`]), commands with time limits ([`cmd`]),
//! the check that a run left nothing behind ([`leftovers`]) and that containerd's log has no
//! complaint about cryo ([`logcheck`]), a CRI client ([`cri`]) and the frame both suites run
//! in ([`suite`]). Which containerd runs (1.6 or 2.2.7) is [`release`]'s choice, its config
//! [`config`]'s.

pub mod cmd;
pub mod config;
pub mod containerd;
pub mod cri;
pub mod image;
pub mod leftovers;
pub mod logcheck;
pub mod release;
pub mod suite;

pub use cmd::Output;
pub use containerd::{built_shim, Containerd, Runtime, ShimAddress, StartOptions};
pub use release::Release;
