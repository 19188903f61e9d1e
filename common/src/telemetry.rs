//! Tracing setup shared by the binaries, so every process logs the same way: to stderr,
//! filtered by `RUST_LOG`, as text or JSON. `log` records (raft logs through slog -> log) are
//! routed into tracing by `try_init`, which installs `tracing_log::LogTracer`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs a `tracing` subscriber filtered by `RUST_LOG` (default `info`), JSON when asked.
/// Safe to call twice (the second call does nothing).
pub fn init_tracing(json: bool) {
    init_tracing_with_default(json, "info");
}

/// As `init_tracing`, with another filter when `RUST_LOG` is unset (dev mode keeps its
/// terminal for progress and logs only warnings).
pub fn init_tracing_with_default(json: bool, default_filter: &str) {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(err) => {
            if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
                eprintln!("ignoring RUST_LOG ({err}); logging at {default_filter}");
            }
            EnvFilter::new(default_filter)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second call finds a subscriber (and logger) already set and changes nothing.
    let _ = if json {
        builder.json().finish().try_init()
    } else {
        builder.finish().try_init()
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn init_twice_does_not_panic() {
        super::init_tracing(false);
        super::init_tracing(true);
        tracing::info!("tracing works");
        log::info!("log works");
    }
}
