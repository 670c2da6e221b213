//! The billing console: pages a tenant's people read and act on, served over
//! HTTP and built from the services' gRPC APIs. It calls the services like
//! any other client, with the key its user signed in with, and owns no money
//! state: a session (in memory) is all it keeps.
//!
//! - `api/`: the HTTP edge — routes, sign-in, sessions' cookies and CSRF
//!   checks, forms read into calls.
//! - `usecases/`: what a page needs gathered from several calls.
//! - `domain/`: roles and what they may do; usage by day and the cap's marks.
//! - `store/`: the sessions.
//! - `clients/`: the services' gRPC clients, each call under the user's key.
//! - `views/`: the HTML (maud) and the charts (SVG drawn by plotters).

pub mod api;
pub mod app;
pub mod clients;
pub mod domain;
pub mod error;
pub mod store;
pub mod usecases;
pub mod views;
