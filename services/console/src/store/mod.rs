//! What the console keeps: its sessions, in memory.

pub mod sessions;

pub use sessions::{Session, Sessions};
