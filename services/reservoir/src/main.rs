//! `reservoir`: runs the services and the operator commands.

mod accounts;
mod admin;
mod billing;
mod cli;
mod client;
mod fraud;
mod ingest;
mod ledger;
mod meters;
mod output;
mod report;
mod settings;
mod topup;
mod webhooks;

/// mimalloc rather than glibc's malloc: every call allocates on one worker
/// thread and frees on another, which glibc handles slowly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
