//! Logging: tracing-subscriber with the level from `RUST_LOG`, else the configured level.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber, writing to stderr. `RUST_LOG` wins over `level`.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if json { builder.json().try_init() } else { builder.try_init() };
    if let Err(e) = result {
        eprintln!("logging was already set up: {e}");
    }
}
