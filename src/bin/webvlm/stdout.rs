//! Standard output for every subcommand. `println!` panics when stdout is a pipe whose reader
//! has gone (`webvlm info | head -n 1`); [`print`] ends the program quietly instead, with
//! status 0, as a reader that stopped early expects. Any other write error ends it with a
//! message and status 1.

use std::io::{self, Write};

/// Writes `args` to stdout and flushes it (the output streams: tokens, server-sent events,
/// JSON lines).
pub fn print(args: std::fmt::Arguments) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // `eprintln!` could panic in turn where stderr is gone as well.
        let _ = writeln!(io::stderr(), "error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `print!` through [`print`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::print(format_args!($($arg)*))
    };
}

/// `println!` through [`print`].
macro_rules! outln {
    () => {
        $crate::stdout::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};
