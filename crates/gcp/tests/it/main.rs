//! The integration test of `bootstrap-gcp` (one binary): the clients against a scripted HTTP
//! fake, the HTTP layer's retries and failures, key authentication, and the Cloud Build and
//! Artifact Registry clients. Add a module per area below.

mod support;

mod builds_clients;
mod clients;
mod http_behaviour;
mod key_auth;
