//! fsnap
