//! The command line: subcommands and their flags. It owns parsing only; what the values mean and
//! whether they are valid is decided in `config`.

use clap::{Parser, Subcommand};

use crate::config::RunArgs;

#[derive(Debug, Parser)]
#[command(
    name = "tidegate",
    version,
    about = "MQTT → SQLite/PostgreSQL with nothing lost, ready for Metabase"
)]
pub struct Cli {
    /// Log format: `text` for people, `json` (one object per line) for log shippers.
    #[arg(long, global = true, env = "TIDEGATE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Try tidegate in one command: an embedded broker, simulated sensors, the whole pipeline
    /// into tidegate-demo.db, the API and the live page.
    Demo(crate::demo::DemoArgs),
    /// Subscribe to a broker and store every message, with the HTTP API (the usual way).
    Run(Box<RunArgs>),
    /// Only the HTTP API and the store: `subscribe` processes (or any program) post to it.
    Serve(Box<RunArgs>),
    /// Only the MQTT side: forward every message to a tidegate API (`--api URL`), acknowledging
    /// to the broker after the API committed it.
    Subscribe(Box<RunArgs>),
}
