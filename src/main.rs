//! Thin entry point: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc for Rust allocations: the sink allocates and frees millions of
/// small values per second (parsed events, keys, COPY fields) across the
/// poll, prepare and commit threads. Measured with the bench against glibc
/// malloc: sink CPU per run 3.4 -> 2.1 s (typed route), 3.5 -> 2.2 s
/// (document route), throughput typed +24%, document +13%
/// (docs/performance-history.md, fourth round).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    tune_allocator();
    kafka_pg_sink::cli::main(kafka_pg_sink::cli::Cli::parse())
}

/// glibc allocator settings for a bounded RSS. Since jemalloc serves Rust's
/// allocations they apply to librdkafka's C allocations only; the numbers
/// below were measured before that switch, when glibc served everything
/// (bench, 10,000-message batches): each thread that allocates gets its own arena
/// (up to 8 per core), and batches are built on one thread and freed on
/// another, so freed memory scatters over arenas (two arenas: peak 159 →
/// 130 MB). And glibc raises its mmap threshold after a large block is
/// freed, so the next multi-MB COPY buffers come from the heap and fragment
/// it: peak RSS grew with the topic (132 MB at 550k events, 157 MB at 3M);
/// a fixed 1 MiB threshold keeps such buffers in mmap, returned on free
/// (139 MB at 3M). Done before any thread starts; `MALLOC_ARENA_MAX` and
/// `MALLOC_MMAP_THRESHOLD_` in the environment still win.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; called before any
        // other thread exists.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        }
    }
}
