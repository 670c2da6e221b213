//! `reservoir`: runs the services and the operator commands.

mod cli;
mod client;
mod ingest;
mod settings;

fn main() -> std::process::ExitCode {
    cli::main()
}
