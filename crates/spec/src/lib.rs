//! The `bootstrap` plan file: parse (YAML, positions kept) -> render templates -> validate,
//! giving a [`Spec`] or every error found, each with file:line:column and a hint.

pub mod ids;
pub mod model;

pub use model::*;
