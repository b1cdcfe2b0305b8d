use std::process::ExitCode;

use clap::Parser;
use permafrost::cli::{Cli, commands};

fn main() -> ExitCode {
    keep_freed_memory();
    no_error_backtraces();
    let cli = Cli::parse();
    permafrost::http::install_crypto_provider();
    commands::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(commands::run(cli))
}

/// Keeps `RUST_BACKTRACE=1` (set in many shells and images) to panics:
/// iceberg-rust builds errors it then discards on paths that succeed
/// (`ok_or(Error::new(…))` when loading metadata, checking commit
/// requirements, reading manifests), and each captured a backtrace when it
/// was set — 1.4 % of an archive's CPU in a profile. permafrost's errors
/// carry no backtraces; `RUST_LIB_BACKTRACE` set by the user still wins.
fn no_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in `main`, before any other thread
        // exists, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Tells glibc's allocator to keep freed memory for the next batch instead
/// of handing it back to the kernel and faulting it in again: every batch
/// allocates and frees the same few megabytes (zstd contexts, Parquet page
/// buffers, record batches), and by default blocks over 128 KiB to 4 MiB
/// are mapped and unmapped each time and the heap's top is trimmed after
/// each free. Measured on a 1,000,000-row archive: 0.91x CPU seconds (a
/// third less system time) for 5 MiB more peak RSS. The process keeps at
/// most 64 MiB of freed heap above what it uses, per allocator arena.
/// Blocks of 4 MiB and more are still mapped and unmapped: those are the
/// record batches and row groups of wide rows (kilobytes each), which a
/// heap keeping them would hold on to per arena — a wide table's archive
/// peaked at 430–470 MiB with a 32 MiB threshold (and no row group bound),
/// 200–210 with 4 MiB (and 16 MiB row groups); a narrow one's CPU is the
/// same with either.
/// Leaves the defaults alone when `GLIBC_TUNABLES` sets malloc parameters.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        return;
    }
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists and its arguments are valid for every glibc.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
