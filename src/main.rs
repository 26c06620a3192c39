//! The `telesink` binary: parse arguments, set up logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use telesink::config::Config;

/// A DNS sinkhole for home networks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (default: the embedded config/telesink.toml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DNS (the default).
    Run,
    /// Validate the configuration and every list it names, then exit.
    CheckConfig,
    /// Tell whether NAME is blocked, by which list, file and line.
    Explain {
        /// The domain name to explain.
        name: String,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::embedded_default()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TELESINK_LOG")
                // hickory-server logs every request at info; keep that off
                // unless asked for.
                .unwrap_or_else(|_| "info,hickory_server=warn,hickory_net=warn".into()),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written is lost, nothing more. By
        // default the failure is reported with `eprintln!`, which panics
        // when stderr itself is what failed (a closed pipe): the task that
        // logged died, and with it SIGTERM and SIGHUP handling.
        .log_internal_errors(false)
        // Colours only for a person at a terminal, not in journald or files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match load(cli.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => match telesink::check::check(&config) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Explain { name } => {
            if let Err(e) = telesink::lists::normalize(name.trim_end_matches('.')) {
                eprintln!("Error: {name:?} is not a domain name: {}", e.reason());
                return ExitCode::FAILURE;
            }
            let snapshot = telesink::lists::build(&config, None);
            for list in snapshot.lists.iter().filter(|l| l.error.is_some()) {
                eprintln!(
                    "warning: list {:?} could not be read: {}",
                    &*list.name,
                    list.error.as_deref().unwrap_or_default()
                );
            }
            // A url list is read from its downloaded copy, under the cache
            // directory of whoever runs this (a shell has no
            // STATE_DIRECTORY): without one here its names are not listed.
            for list in snapshot
                .lists
                .iter()
                .filter(|l| l.error.is_none() && l.loaded_at.is_none())
            {
                eprintln!(
                    "warning: list {:?} has no downloaded copy at {}: its names show as not listed \
                     (set [blocking] cache_dir, or run as the service's user)",
                    &*list.name, list.origin
                );
            }
            print!(
                "{}",
                telesink::explain::explain(&snapshot, &config, &name).text()
            );
            ExitCode::SUCCESS
        }
        Command::Run => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("Error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(telesink::app::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Printed once, plainly: the default `Termination` output is a Debug dump.
                    eprintln!("Error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
