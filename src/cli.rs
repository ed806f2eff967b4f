//! The command line: subcommands and their flags. It owns parsing only; what the values mean and
//! whether they are valid is decided in `config`.

use clap::{Parser, Subcommand};

use crate::config::RunArgs;

#[derive(Debug, Parser)]
#[command(
    name = "tidegate",
    version = crate::VERSION,
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
    /// Configuration helpers: a complete default file, a check, the reference table.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Load tool: publish numbered messages and measure throughput, latency and loss through
    /// tidegate (its live stream) or a null subscriber.
    Bench(Box<crate::bench::BenchArgs>),
    /// Derive readings and mapping rows for messages stored before they were configured (stored
    /// while readings were off, or before a `[[mapping]]` was added): with the same config file
    /// as `run`, beside it or not. A second run adds nothing.
    Backfill(crate::backfill::BackfillArgs),
    /// Mapping helpers.
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// Shell completions (bash, zsh, fish, elvish, powershell) on stdout.
    Completions { shell: clap_complete::Shell },
    /// The man page (roff) on stdout.
    Man,
    /// Subscribe to a broker and store every message, with the HTTP API (the usual way).
    Run(Box<RunArgs>),
    /// Only the HTTP API and the store: `subscribe` processes (or any program) post to it.
    Serve(Box<RunArgs>),
    /// Only the MQTT side: forward every message to a tidegate API (`--api URL`), acknowledging
    /// to the broker after the API committed it. `--listen ADDR` serves its health and metrics.
    Subscribe(Box<RunArgs>),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a complete, commented TOML file with every setting and its default.
    Default,
    /// Validate a TOML file (and the environment) without connecting to anything.
    Check {
        file: std::path::PathBuf,
        /// The command the file is for: run, serve or subscribe.
        #[arg(long, default_value = "run", value_parser = ["run", "serve", "subscribe"])]
        mode: String,
    },
    /// Print the Markdown reference table (docs/configuration.md).
    Reference,
}

#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// Print the readings and mapping rows a message would produce, without touching a database.
    Test {
        /// The TOML config file with the `[[mapping]]` tables and readings rules (default: none,
        /// the default rules).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long)]
        topic: String,
        /// The payload, or `-` to read it from standard input (a long one, say a LoRaWAN uplink
        /// saved to a file).
        #[arg(long)]
        payload: String,
    },
}
