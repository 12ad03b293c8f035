//! Thin entry point: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    kafka_pg_sink::cli::main(kafka_pg_sink::cli::Cli::parse())
}
