//! The embedded worker: end to end against the sandbox and the Prefect server, its protocol,
//! job hygiene, the worker pool, and prefect-gcp's own workers on the same sandbox.

mod e2e;
mod hygiene;
mod pool;
mod prefect_gcp;
mod protocol;
