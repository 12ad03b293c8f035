//! Thin entry point: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    limit_malloc_arenas();
    kafka_pg_sink::cli::main(kafka_pg_sink::cli::Cli::parse())
}

/// glibc gives each thread that allocates its own arena (up to 8 per core);
/// batches are built on one thread and freed on another, so freed memory
/// scatters over arenas and RSS grows (measured: 159 MB → 130 MB peak with
/// two arenas, at 10,000-message batches, throughput unchanged). Done before
/// any thread starts. `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
