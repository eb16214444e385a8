//! The typed identities of `bootstrap-ids`, re-exported so plan-file users keep one path, plus
//! the one check that needs a list: the plan file accepts only regions this tool knows (an
//! offline check with a "did you mean"). The clients and the worker accept any well-formed
//! region id ([`Region::parse`]), because Google opens new regions every year.

pub use bootstrap_ids::*;

/// Regions where Cloud Run is offered (Cloud Run locations list, 2026).
pub const KNOWN_REGIONS: &[&str] = &[
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "europe-central2",
    "europe-north1",
    "europe-north2",
    "europe-southwest1",
    "europe-west1",
    "europe-west10",
    "europe-west12",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "me-central1",
    "me-central2",
    "me-west1",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "northamerica-south1",
    "southamerica-east1",
    "southamerica-west1",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
];

/// A region the plan file accepts: one of [`KNOWN_REGIONS`] (all of them well formed).
pub fn check_known_region(value: &str) -> Result<(), String> {
    if KNOWN_REGIONS.contains(&value) {
        Ok(())
    } else {
        Err("not a Cloud Run region (for example us-central1, europe-west1)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_file_knows_its_regions_and_the_ids_accept_new_ones() {
        assert!(check_known_region("us-central1").is_ok());
        assert!(check_known_region("mars-north7").is_err());
        assert!(Region::parse("mars-north7").is_ok());
        assert!(KNOWN_REGIONS.iter().all(|r| Region::parse(*r).is_ok()));
    }
}
