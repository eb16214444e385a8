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

/// Percent-encodes one path segment (names may contain spaces, slashes, ...).
pub(crate) fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        // form encoding turns spaces into '+', which a path does not decode.
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_are_encoded() {
        assert_eq!(super::seg("a b/c"), "a%20b%2Fc");
        assert_eq!(super::seg("gcp-creds_1"), "gcp-creds_1");
    }
}
