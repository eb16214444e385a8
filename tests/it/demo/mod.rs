//! The demo scripts under `demo/`.

mod python_worker;
mod script;
