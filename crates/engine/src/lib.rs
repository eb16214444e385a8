//! The engine: validated spec -> observe (async) -> plan (pure) -> render -> apply.

pub mod apply;
pub mod builds;
pub mod context;
pub mod cost;
pub mod diff;
pub mod doctor;
mod exec;
mod exec_pool;
pub mod observe;
pub mod observed;
pub mod plan;
pub mod planner;
pub mod render;
pub mod wake;
pub mod worker_image;

pub use context::{Connections, Context};
pub use observed::Observed;
pub use plan::{Action, Address, Mode, Plan, Step};
