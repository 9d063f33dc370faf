//! Everything the user says, checked: the command-line flags, the config file, and the typed
//! settings resolved from both (each part by its own resolver). Pure but for reading the files
//! the config names.

pub mod cluster;
pub mod dns;
pub mod error;
pub mod family;
pub mod file;
pub mod flags;
pub mod hooks;
pub mod load;
pub mod mail;
pub mod settings;
pub mod timing;
pub mod vips;
