//! Logging: one line per event on stderr, with its time (journald collects it under systemd),
//! filtered by `RUST_LOG` if it is set, else by the config's `log_level`, which a reload may
//! change while running.

use anyhow::Context as _;
use tracing_subscriber::{layer::SubscriberExt as _, reload, util::SubscriberInitExt as _};
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::settings::DEFAULT_LOG_LEVEL;

/// Changes the running log filter (unless `RUST_LOG` fixed it).
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

/// Installs the process's logger: `RUST_LOG` if set, else the default level until the config
/// says otherwise.
pub fn init() -> LogLevel {
    let env = EnvFilter::try_from_default_env().ok();
    let from_env = env.is_some();
    let filter = env.unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG_LEVEL));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    LogLevel { handle, from_env }
}

impl LogLevel {
    /// Filters by `directives` (already checked by the settings) from now on; a no-op when
    /// `RUST_LOG` is set, which wins over the config.
    pub fn apply(&self, directives: &str) -> anyhow::Result<()> {
        if self.from_env {
            return Ok(());
        }
        let filter = EnvFilter::builder()
            .parse(directives)
            .with_context(|| format!("invalid log_level {directives:?}"))?;
        self.handle.reload(filter).context("changing the log level")
    }
}
