use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use citadel::cli::{self, Cli};

fn main() {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if cli.global.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("citadel: error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(cli::run(cli)) {
        eprintln!("citadel: error: {e}");
        std::process::exit(e.exit_code());
    }
}
