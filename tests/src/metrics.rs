//! The one reader of Prometheus / OpenMetrics text in the tests: every test that looks at a `/metrics`
//! page parses it here.

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample name (for histograms this includes `_count`, `_sum`, `_bucket`).
    pub name: String,
    /// Its labels in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, when the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text`; comment lines, blank lines and lines that are not samples are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(parse_line).collect()
}

/// Sum of the samples named `name` that carry every `(label, value)` in `labels` (other labels may be
/// present); 0 when there are none.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse(text)
        .into_iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))?;
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name: name.to_string(), labels, value })
}

/// Read `k="v",...}` into `out`; what follows the closing brace.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(String, String)>) -> Option<&'a str> {
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some(after);
        }
        let (key, after) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.push((key.trim().to_string(), value));
        s = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total Things.\n# TYPE x_total counter\n\
        x_total{kind=\"a\",role=\"raw\"} 2\n\
        x_total{kind=\"b\"} 3 1700000000000\n\
        x_total_created{kind=\"a\"} 1.7e9\n\
        y{msg=\"a \\\"quoted\\\", } value\"} 1.5\n\
        z 7\n";

    #[test]
    fn sums_only_the_named_family_with_every_label() {
        assert_eq!(sum(TEXT, "x_total", &[]), 5.0);
        assert_eq!(sum(TEXT, "x_total", &[("kind", "a")]), 2.0);
        assert_eq!(sum(TEXT, "x_total", &[("kind", "a"), ("role", "other")]), 0.0);
        assert_eq!(sum(TEXT, "z", &[]), 7.0);
        assert_eq!(sum(TEXT, "absent", &[]), 0.0);
    }

    #[test]
    fn label_values_may_hold_quotes_commas_and_braces() {
        let y = parse(TEXT).into_iter().find(|s| s.name == "y").unwrap();
        assert_eq!(y.label("msg"), Some("a \"quoted\", } value"));
        assert_eq!(y.value, 1.5);
    }
}
