//! The `tidegate` binary: loads `.env`, parses the command line and hands over to the library.
//! A bad setting prints one line naming it and exits with code 2 before anything connects.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tidegate::{
    cli::{Cli, Command, ConfigCommand, MappingCommand},
    config::{Mode, Settings},
};

fn main() -> ExitCode {
    // The seed script's .env (BROKER_ADDR, HIVE_USER, HIVE_PSWD) works as it is.
    tidegate::config::dotenv::load();
    let cli = Cli::parse();
    tidegate::logging::init(&cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let (mode, args) = match cli.command {
        Command::Config(c) => return config_command(c),
        Command::Bench(args) => {
            return match runtime()
                .map_err(anyhow::Error::from)
                .and_then(|r| r.block_on(tidegate::bench::run(*args)))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(e),
            };
        }
        Command::Backfill(args) => {
            return match runtime()
                .map_err(anyhow::Error::from)
                .and_then(|r| r.block_on(tidegate::backfill::run(args)))
            {
                Ok(summary) => {
                    print!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => failed(e),
            };
        }
        Command::Mapping(MappingCommand::Test {
            config,
            topic,
            payload,
        }) => {
            let payload = if payload == "-" {
                use std::io::Read;
                // MQTT's largest payload, and one byte to tell a larger one.
                let max = tidegate::config::MAX_PAYLOAD as u64;
                let mut read = Vec::new();
                if let Err(e) = std::io::stdin().take(max + 1).read_to_end(&mut read) {
                    eprintln!("error: cannot read the payload from standard input: {e}");
                    return ExitCode::from(2);
                }
                if read.len() as u64 > max {
                    eprintln!("error: the payload on standard input is larger than MQTT allows (256 MiB)");
                    return ExitCode::from(2);
                }
                read
            } else {
                payload.into_bytes()
            };
            return match tidegate::readings::preview::from_config_file(config.as_deref(), &topic, &payload) {
                Ok(preview) => {
                    println!("{}", serde_json::to_string_pretty(&preview).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tidegate", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Demo(args) => {
            return match runtime()
                .map_err(anyhow::Error::from)
                .and_then(|r| r.block_on(tidegate::demo::run(args)))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
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
    let runtime = match runtime() {
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

/// Prints a command's error and answers its exit code: 2 for a bad setting, as for `run`; 1 for
/// anything that went wrong once it ran.
fn failed(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    match e.downcast_ref::<tidegate::config::ConfigError>() {
        Some(_) => ExitCode::from(2),
        None => ExitCode::FAILURE,
    }
}

/// One async thread by default: MQTT, the writer and the API hand messages to each other all the
/// time, and on the small machines tidegate runs on, cross-thread wake-ups cost more than a
/// second thread gains (SQLite has its own writer thread). `TIDEGATE_THREADS=N` for more.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    match std::env::var("TIDEGATE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) if n > 1 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
}

fn config_command(c: ConfigCommand) -> ExitCode {
    use tidegate::config::{reference, RunArgs};
    match c {
        ConfigCommand::Default => print!("{}", reference::default_toml()),
        ConfigCommand::Reference => print!("{}", reference::markdown()),
        ConfigCommand::Check { file, mode } => {
            let mode = match mode.as_str() {
                "serve" => Mode::Serve,
                "subscribe" => Mode::Subscribe,
                _ => Mode::Run,
            };
            let args = RunArgs {
                config: Some(file.clone()),
                ..Default::default()
            };
            match Settings::resolve(mode, args) {
                Ok(_) => println!("{}: ok", file.display()),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    ExitCode::SUCCESS
}
