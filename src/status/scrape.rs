//! The status page's figures, read from the Prometheus text `/metrics`
//! serves (the recorder exposes no other way to read a counter back).

/// One series: its name, labels and value.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

pub struct Samples(Vec<Sample>);

impl Samples {
    /// Parses the text exposition format; comments and lines it cannot read
    /// are skipped.
    pub fn parse(text: &str) -> Samples {
        Samples(text.lines().filter_map(parse_line).collect())
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }

    /// The sum over every series of `name` with `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        // Not `Iterator::sum`: its sum of nothing is -0.0, shown as "-0".
        self.matching(name, labels)
            .fold(0.0, |sum, s| sum + s.value)
    }

    /// The value of the one series of `name` with `labels`, if it exists.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels).map(|s| s.value).next()
    }

    /// Sums by the value of `by`, for series with `labels`; zeros left out.
    pub fn by_label(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        by: &str,
    ) -> std::collections::BTreeMap<String, f64> {
        let mut out = std::collections::BTreeMap::new();
        for s in self.matching(name, labels) {
            if let Some((_, v)) = s.labels.iter().find(|(k, _)| k == by) {
                *out.entry(v.clone()).or_insert(0.0) += s.value;
            }
        }
        out.retain(|_, v| *v != 0.0);
        out
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y \"q\""` into pairs, undoing the format's escapes.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE syncflow_pipeline_sent_total counter
syncflow_pipeline_sent_total{pipeline="a",action="create",status="201"} 5
syncflow_pipeline_sent_total{pipeline="a",action="update",status="200"} 2
syncflow_pipeline_sent_total{pipeline="b",action="create",status="201"} 7
syncflow_pipeline_dead_letters_total{pipeline="a",kind="decode"} 1
syncflow_pipeline_dead_letters_total{pipeline="a",kind="mapping"} 0
syncflow_config_generation 3
odd{pipeline="q\"uo,te=\"x"} 4
"#;

    #[test]
    fn sums_gets_and_groups_by_label() {
        let s = Samples::parse(TEXT);
        assert_eq!(
            s.sum("syncflow_pipeline_sent_total", &[("pipeline", "a")]),
            7.0
        );
        assert_eq!(
            s.sum(
                "syncflow_pipeline_sent_total",
                &[("pipeline", "a"), ("action", "create")]
            ),
            5.0
        );
        assert_eq!(s.get("syncflow_config_generation", &[]), Some(3.0));
        assert_eq!(s.get("missing", &[]), None);
        assert!(s.sum("missing", &[]).is_sign_positive());
        let kinds = s.by_label(
            "syncflow_pipeline_dead_letters_total",
            &[("pipeline", "a")],
            "kind",
        );
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            vec![("decode".to_string(), 1.0)]
        );
        assert_eq!(s.get("odd", &[("pipeline", "q\"uo,te=\"x")]), Some(4.0));
    }
}
