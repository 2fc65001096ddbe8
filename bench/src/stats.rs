//! Numbers: milliseconds, percentiles, medians, rates.

use std::time::{Duration, Instant};

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `later - earlier` in milliseconds, negative when `later` is in fact earlier.
pub(crate) fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        ms(later - earlier)
    } else {
        -ms(earlier - later)
    }
}

pub(crate) fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank among at most millions of samples: exact in f64, and non-negative"
    )]
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub(crate) fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn per(total: u64, n: usize) -> f64 {
    total as f64 / n as f64
}

pub(crate) fn elapsed_tag(start: Instant) -> String {
    format!("[{:>6.1}s]", start.elapsed().as_secs_f64())
}
