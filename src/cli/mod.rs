//! The command line: definitions ([`args`]), command functions ([`commands`])
//! and rendering ([`output`]).

pub mod args;
pub mod commands;
pub mod output;

pub use args::Cli;
