//! Everything the user says, checked: the command-line flags, the config file, and the
//! typed settings resolved from both. Pure but for reading the files the config names.

pub mod flags;
pub mod settings;
