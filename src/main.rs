use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use citadel::cli;

fn main() {
    let cli = cli::parse();
    // Long-running commands log their work; one-shot commands speak through their result, so
    // retries stay quiet and an error is one line.
    let default = match cli.command {
        citadel::cli::Command::Controller(_)
        | citadel::cli::Command::Agent(_)
        | citadel::cli::Command::Bench(_) => "info",
        _ => "error",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if cli.global.log_format == cli::LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
    // Before the runtime starts its threads: they inherit the priority.
    if let citadel::cli::Command::Controller(args) = &cli.command
        && let Err(e) = citadel::controller::lower_priority(args.nice)
    {
        tracing::warn!(nice = args.nice, error = %e, "cannot lower the cpu priority");
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
