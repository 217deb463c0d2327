//! `keycard`: the server (`keycard serve`) and a command-line client for it.

mod admin;
mod cli;
mod logging;
mod login;
mod render;
mod serve;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
