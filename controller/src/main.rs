//! `canaryctl`: see `canaryctl --help`.

use clap::Parser;

fn main() {
    let cli = canaryctl::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CANARYCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: logs in files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("canaryctl: cannot start: {e}");
            std::process::exit(1);
        }
    };
    if let Err(failure) = runtime.block_on(canaryctl::cli::run(cli)) {
        eprintln!("canaryctl: {}", failure.message);
        std::process::exit(failure.code);
    }
}
