//! The CLI as users type it: `--help`, `validate`, `run`, and `init` in a terminal.

mod help;
mod init;
mod run;
mod validate;
