//! Suite tests: the real `reservoir` binary, started, stopped, killed and
//! restarted, called over gRPC like any client would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod billing;
mod commands;
mod console;
mod console_billing;
mod crash;
mod faults;
mod grpc_web;
mod layers;
mod metering;
mod process;
mod release;
mod replicas;
mod topups;
mod up;
mod webhooks;
