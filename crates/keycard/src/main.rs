//! `keycard`: the server (`keycard serve`) and a command-line client for it.

mod cli;
mod logging;
mod render;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
