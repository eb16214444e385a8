//! How this worker marks the flow runs it claims. The claim is a PENDING state whose message
//! names the worker; after a restart, a worker of the same name recognises its own claims by
//! that message and adopts those runs (Prefect's state API has no other owner field).

/// The claim message of one worker name, built and recognised in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMarker(String);

impl ClaimMarker {
    /// The marker of the worker called `name`.
    pub fn for_worker(name: &str) -> Self {
        Self(format!("Claimed by worker {name}"))
    }

    /// The message to put on the PENDING state that claims a run.
    pub fn message(&self) -> &str {
        &self.0
    }

    /// Whether a state with this `message` is a claim of this worker.
    pub fn marks(&self, message: Option<&str>) -> bool {
        message == Some(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_recognises_only_its_own_claims() {
        let mine = ClaimMarker::for_worker("w-one");
        assert_eq!(mine.message(), "Claimed by worker w-one");
        assert!(mine.marks(Some(ClaimMarker::for_worker("w-one").message())));
        assert!(!mine.marks(Some(ClaimMarker::for_worker("w-one-b").message())));
        assert!(!mine.marks(Some("Claimed by worker w-on")));
        assert!(!mine.marks(None));
    }
}
