//! Standard output for the commands.
//!
//! `println!` panics when the reader has gone away (`rexray volume ls | head -1`). Here a closed
//! pipe ends the command quietly with success — the work it printed about is already done — and
//! any other write error is reported on stderr with a failing exit code.

use std::fmt;
use std::io::{self, Write};

/// Prints one line on stdout, like `println!`, without panicking on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}

/// Writes `args` and a newline to stdout (see the module docs for write errors).
pub fn line(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    finish(written);
}

/// Writes raw bytes to stdout (see the module docs for write errors).
pub fn bytes(data: &[u8]) {
    let mut out = io::stdout().lock();
    finish(out.write_all(data).and_then(|()| out.flush()));
}

fn finish(written: io::Result<()>) {
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("rexray: write to standard output: {e}");
            std::process::exit(1);
        }
    }
}
