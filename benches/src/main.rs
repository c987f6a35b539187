//! The benchmark runner's entry point; see the `loopd_bench` library.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match loopd_bench::run_cli() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopd-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
