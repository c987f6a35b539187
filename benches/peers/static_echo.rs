//! loopd's echo handler linked into the program through the embedding API
//! (`Builder::static_handler`) instead of loaded from `libloopd_echo.so`:
//! the benchmark checks that the two run at the same speed.
//!
//! Usage: `static-echo CONFIG.toml`, a config whose handlers say
//! `plugin = "echo"`. Logs like the `loopd` binary (`RUST_LOG`), including
//! the `NAME listening on URL` lines; SIGINT/SIGTERM shut it down.
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: static-echo CONFIG.toml");
        return ExitCode::from(2);
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let mut rt = loopd::Runtime::builder()
            .config_file(&path)
            .static_handler::<loopd_echo::Echo>("echo")
            .handle_signals(true)
            .build()?;
        rt.run()?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("static-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
