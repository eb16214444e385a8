//! The API calls, one file per kind of object.

mod automations;
mod batch;
mod blocks;
mod events;
mod flow_runs;
mod flows;
mod logs;
mod work_pools;

pub use automations::{Automation, AutomationSpec};
pub use batch::DeploymentKey;
pub use blocks::pick_block_schema;
pub use events::{EventFilter, EventStream};

/// Percent-encodes one path segment (names may contain spaces, slashes, ...): the HTTP layer's
/// escaper, shared with the Google clients.
pub(crate) use bootstrap_http::seg;

#[cfg(test)]
mod tests {
    #[test]
    fn segments_are_encoded() {
        assert_eq!(super::seg("a b/c"), "a%20b%2Fc");
        assert_eq!(super::seg("gcp-creds_1"), "gcp-creds_1");
        // Unreserved characters stay (RFC 3986 §2.3); form encoding used to send `~` as %7E.
        assert_eq!(super::seg("my~flow"), "my~flow");
        assert_eq!(super::seg("a+b"), "a%2Bb");
    }
}
