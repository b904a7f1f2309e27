//! The `distill` binary: a thin command line over the library (`src/cli/`).
//! Exit code 0 on success, 2 on any error (printed with its chain to stderr).

use std::process::ExitCode;

mod cli;

/// Training allocates and frees the same large buffers (image patches, their
/// gradients) every step. glibc serves those with fresh `mmap`s and returns
/// them at once, so every step pays page faults on tens of megabytes; keeping
/// them on the heap made a CNN epoch 22% faster here.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called once at start,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// A reader that stops early (`distill model info DIR | head`) closes the
/// pipe. Rust ignores SIGPIPE, so the next `println!` would panic; with the
/// signal's default action the process ends quietly, as other command-line
/// tools do. A run ended this way is one killed at any other point
/// (RELIABILITY.md): what it wrote stays whole, and `--resume` goes on.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores one signal's default action, once, at start, before
    // any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A file-size limit (`ulimit -f`) kills a process that writes past it with
/// SIGXFSZ, silently, leaving its temporary copies. Ignored, the write fails
/// with EFBIG instead, which every writer reports like a full disk: exit 2
/// naming the file, the earlier output whole, the temporaries removed.
fn errors_past_file_size_limit() {
    #[cfg(unix)]
    // SAFETY: sets one signal's action, once, at start, before any other
    // thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    errors_past_file_size_limit();
    tune_allocator();
    cli::main()
}
