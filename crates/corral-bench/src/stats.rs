//! Summary statistics over repeated measurements.

use serde::Serialize;

/// Median, p99, mean and extremes of one series of samples (all in one unit).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Number of samples (warm-up runs excluded).
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// 50th percentile (nearest rank).
    pub median: f64,
    /// 99th percentile (nearest rank: with n < 100 this is the maximum).
    pub p99: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Summary {
            n: s.len(),
            mean: s.iter().sum::<f64>() / s.len() as f64,
            median: percentile(&s, 50.0),
            p99: percentile(&s, 99.0),
            min: s[0],
            max: s[s.len() - 1],
        })
    }
}

/// The nearest-rank percentile `p` (0-100] of sorted, non-empty `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!(s.median, 100.0);
        assert_eq!(s.p99, 198.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 200.0);
        assert!((s.mean - 100.5).abs() < 1e-9);
        let small = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(small.median, 2.0);
        assert_eq!(small.p99, 3.0);
        assert!(Summary::of(&[]).is_none());
    }
}
