//! The reliability suite (RELIABILITY.md): faults, crashes, races, bad input, secrets, least
//! privilege.

mod bad_answers;
mod bad_plans;
mod crash;
mod faults;
mod privilege;
mod races;
mod secrets;
