//! Medians, extremes and ratios of measured samples.

use serde::Serialize;

/// The median and the extremes of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// The middle sample; with an even count, the mean of the two middle samples.
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
}

/// Summarizes `samples`; `None` when there are none or one is not a finite number.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: sorted[0],
        max: sorted[n - 1],
    })
}

/// `numerator / denominator`, or `None` when the quotient would be meaningless
/// (a denominator that is not positive, or an input that is not finite).
pub fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    if !numerator.is_finite() || !denominator.is_finite() || denominator <= 0.0 {
        return None;
    }
    Some(numerator / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_median_is_the_middle_sample_whatever_the_order() {
        let s = summarize(&[9.0, 1.0, 5.0, 3.0, 7.0]).expect("samples");
        assert_eq!(
            s,
            Summary {
                median: 5.0,
                min: 1.0,
                max: 9.0
            }
        );
    }

    #[test]
    fn even_count_median_is_the_mean_of_the_middle_two() {
        let s = summarize(&[4.0, 1.0, 10.0, 2.0]).expect("samples");
        assert_eq!(s.median, 3.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 10.0);
    }

    #[test]
    fn median_resists_one_outlier() {
        let s = summarize(&[5.0, 5.1, 4.9, 500.0, 5.0]).expect("samples");
        assert_eq!(s.median, 5.0);
        assert_eq!(s.max, 500.0);
    }

    #[test]
    fn single_sample_is_its_own_summary() {
        let s = summarize(&[42.5]).expect("one sample");
        assert_eq!((s.median, s.min, s.max), (42.5, 42.5, 42.5));
    }

    #[test]
    fn no_summary_without_finite_samples() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[1.0, f64::NAN]), None);
        assert_eq!(summarize(&[f64::INFINITY]), None);
    }

    #[test]
    fn ratio_divides_and_refuses_meaningless_denominators() {
        assert_eq!(ratio(5.0, 40.0), Some(0.125));
        assert_eq!(ratio(80.0, 40.0), Some(2.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, -2.0), None);
        assert_eq!(ratio(f64::NAN, 2.0), None);
    }
}
