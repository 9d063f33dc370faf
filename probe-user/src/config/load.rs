//! Loading the settings: the flags over the config file (`--config`, else the default file if
//! it exists), with errors that point at the file's line.

use std::path::Path;

use anyhow::Context as _;

use crate::{
    config::{
        file::{FileConfig, DEFAULT_CONFIG},
        flags::RunArgs,
        settings::Settings,
    },
    failure::Failure,
};

/// The settings from the flags over the config file (`--config`, else the default file if it
/// exists); errors point at the file's line.
pub fn load_settings(args: &RunArgs) -> Result<Settings, Failure> {
    let default = Path::new(DEFAULT_CONFIG);
    let path = match &args.config {
        Some(path) => Some(path.as_path()),
        None => default.exists().then_some(default),
    };
    let Some(path) = path else {
        return Settings::resolve(args, FileConfig::default())
            .map_err(|e| Failure::Usage(e.into()));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))
        .map_err(Failure::Usage)?;
    let file = FileConfig::parse(path, &text).map_err(|e| Failure::Usage(e.into()))?;
    Settings::resolve(args, file)
        .map_err(|e| Failure::Usage(anyhow::anyhow!(e.in_file(path, &text))))
}
