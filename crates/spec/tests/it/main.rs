//! The integration test of `bootstrap-spec` (one binary): loading plans, the bad-plan corpus
//! (insta snapshots of every diagnostic), build contexts, and the never-panics property. Add a
//! module per area below.

mod build;
mod corpus;
mod load;
mod never_panics;
