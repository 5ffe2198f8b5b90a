//! The `nudge` binary: parse the command line, start tracing, run, map the outcome to an exit code.

use clap::Parser;
use nudge::cli::{self, Cli};

fn main() {
    let cli = Cli::parse();
    let format = cli
        .settings()
        .map(|s| s.log_format)
        .unwrap_or(nudge::config::LogFormat::Human);
    // The bench prints a table; the daemon's info lines (every message sent) would bury it.
    let default_filter = match cli.command {
        cli::Command::Bench(_) => "warn",
        _ => "warn,nudge=info",
    };
    nudge::app::init_tracing(format, default_filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(cli::run(cli)) {
        // Diagnostics of invalid rules were already printed (validate) or logged (serve).
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
