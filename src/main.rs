//! The `tidegate` binary: loads `.env`, parses the command line and hands over to the library.
//! A bad setting prints one line naming it and exits with code 2 before anything connects.

use std::process::ExitCode;

use clap::Parser;
use tidegate::{
    cli::{Cli, Command},
    config::{Mode, Settings},
};

fn main() -> ExitCode {
    // The seed script's .env (BROKER_ADDR, HIVE_USER, HIVE_PSWD) works as it is.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    tidegate::logging::init(&cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let (mode, args) = match cli.command {
        Command::Run(a) => (Mode::Run, a),
        Command::Serve(a) => (Mode::Serve, a),
        Command::Subscribe(a) => (Mode::Subscribe, a),
    };
    let settings = match Settings::resolve(mode, *args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tidegate::app::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
