//! Helpers the unit tests of several modules share.

use std::collections::HashMap;

/// An environment lookup that knows only `pairs`, for the code that reads the process
/// environment through a `Fn(&str) -> Option<String>` (credential discovery, gcloud config).
pub(crate) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    move |k| map.get(k).cloned()
}
