//! The log setup both binaries share (`vantage-probe`, and `vantaged` through this crate).

/// Log to stderr (colours only on a terminal), filtered by `VANTAGE_LOG` (default `info`).
pub fn init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VANTAGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}
