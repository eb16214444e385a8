//! Small statistics over samples: medians and percentiles (nearest rank), robust to noise on a
//! shared machine in a way means are not.

use serde::Serialize;

/// A summary of timing samples, in the samples' unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// The smallest sample.
    pub min: f64,
    /// The median (p50).
    pub p50: f64,
    /// The 95th percentile (nearest rank).
    pub p95: f64,
    /// The largest sample.
    pub max: f64,
}

/// The nearest-rank percentile `p` (0..=100) of `sorted` (ascending, non-empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises samples; `None` when there are none (or only NaNs).
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some(Summary {
        n: sorted.len(),
        min: sorted[0],
        p50: percentile(&sorted, 50.0),
        p95: percentile(&sorted, 95.0),
        max: sorted[sorted.len() - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let sum = summarize(&s).expect("samples");
        assert_eq!(sum.p50, 50.0);
        assert_eq!(sum.p95, 95.0);
        assert_eq!((sum.min, sum.max, sum.n), (1.0, 100.0, 100));
    }

    #[test]
    fn unsorted_and_small() {
        let sum = summarize(&[3.0, 1.0, 2.0]).expect("samples");
        assert_eq!(sum.p50, 2.0);
        assert_eq!(sum.p95, 3.0);
        let one = summarize(&[7.0]).expect("one");
        assert_eq!((one.p50, one.p95), (7.0, 7.0));
    }

    #[test]
    fn empty_and_nan() {
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[f64::NAN]).is_none());
    }
}
