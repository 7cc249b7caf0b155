//! Reading `/metrics` (Prometheus text) in tests.

/// The value of the sample whose name and labels are exactly `series`, as
/// written in the exposition (`syncflow_limiter_local{provider="hubspot"}`).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The sum of every sample of metric `name` whose labels contain all of `labels`
/// (each written `key="value"`).
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = (rest.is_empty() || rest.starts_with('{'))
                && labels.iter().all(|label| rest.contains(label));
            matches.then(|| v.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Names of the metric families exposed (from their `# TYPE` lines).
pub fn families(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect()
}
