//! Reads the Prometheus text exposition format, as a scrape returns it,
//! into samples; enough for the label values genflow's export writes (no
//! escapes inside them).

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// Every sample of `text`, skipping `# HELP` and `# TYPE` lines and blank
/// lines. Panics on a line that is not a sample.
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).map(sample).collect()
}

fn sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
    let value = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
            let labels = inner
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
                    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    (key.to_string(), value.unwrap_or_else(|| panic!("unquoted label: {line}")).to_string())
                })
                .collect();
            (name, labels)
        }
    };
    Sample { name: name.to_string(), labels, value }
}

/// The samples of `name` whose labels include every pair of `labels`.
pub(crate) fn select<'a>(
    samples: &'a [Sample],
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples
        .iter()
        .filter(move |s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|value| value == v)))
}

/// The value of the one sample of `name` with exactly these labels, if any.
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = select(samples, name, labels).filter(|s| s.labels.len() == labels.len());
    let first = found.next()?;
    assert!(found.next().is_none(), "two samples of {name} {labels:?}");
    Some(first.value)
}

/// How the times recorded compare with those of the snapshot checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Times {
    /// The same: the pipeline had ended when it was recorded.
    Exact,
    /// No more: the pipeline still runs, its clock went on since.
    Earlier,
}

/// Asserts that `samples` hold what `metrics` says under the label
/// `pipeline`, every stage and replica series of genflow's export (counts
/// exactly, times as `times` says), and that each stage's replica counters
/// add up to the stage's.
pub(crate) fn assert_recorded(samples: &[Sample], pipeline: &str, metrics: &genflow::Metrics, times: Times) {
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(samples, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    };
    let time = |recorded: f64, expected: std::time::Duration, what: &str| match times {
        Times::Exact => assert_eq!(recorded, expected.as_secs_f64(), "{what}"),
        Times::Earlier => assert!(recorded <= expected.as_secs_f64(), "{what}: {recorded} > {expected:?}"),
    };
    let root = [("pipeline", pipeline)];
    assert_eq!(get("genflow_pipeline_failures_dropped_total", &root), metrics.failures_dropped() as f64);
    time(get("genflow_pipeline_elapsed_seconds", &root), metrics.elapsed(), "elapsed");
    for s in metrics.stages() {
        let labels = [("pipeline", pipeline), ("stage", s.name)];
        let stage = |family: &str| get(&format!("genflow_stage_{family}"), &labels);
        let counts = [
            ("received_total", s.received),
            ("processed_total", s.processed),
            ("emitted_total", s.emitted),
            ("failed_total", s.failed),
            ("dropped_total", s.dropped),
            ("aborted_total", s.aborted),
            ("queued", s.queued),
            ("queue_capacity", s.capacity),
            ("in_flight", s.in_flight),
            ("replicas", s.replicas.len() as u64),
        ];
        for (family, expected) in counts {
            assert_eq!(stage(family), expected as f64, "{pipeline} {} {family}", s.name);
        }
        let durations = [
            ("busy_seconds", s.busy),
            ("blocked_seconds", s.blocked),
            ("failures_blocked_seconds", s.failures_blocked),
            ("throttled_seconds", s.throttled),
        ];
        for (family, expected) in durations {
            time(stage(family), expected, &format!("{pipeline} {} {family}", s.name));
        }

        let (mut sums, mut queued_sum) = ([0.0; 5], 0.0);
        for (i, r) in s.replicas.iter().enumerate() {
            let index = i.to_string();
            let labels = [("pipeline", pipeline), ("stage", s.name), ("replica", index.as_str())];
            let replica = |family: &str| value(samples, &format!("genflow_replica_{family}"), &labels);
            let counts = [
                ("received_total", r.received),
                ("processed_total", r.processed),
                ("emitted_total", r.emitted),
                ("failed_total", r.failed),
                ("aborted_total", r.aborted),
                ("dropped_total", r.dropped),
                ("in_flight", r.in_flight),
            ];
            for (n, (family, expected)) in counts.into_iter().enumerate() {
                let recorded = replica(family).unwrap_or_else(|| panic!("no {family} of {} #{i}", s.name));
                assert_eq!(recorded, expected as f64, "{pipeline} {} #{i} {family}", s.name);
                if let Some(sum) = sums.get_mut(n) {
                    *sum += recorded;
                }
            }
            let durations = [
                ("busy_seconds", r.busy),
                ("blocked_seconds", r.blocked),
                ("failures_blocked_seconds", r.failures_blocked),
                ("throttled_seconds", r.throttled),
            ];
            for (family, expected) in durations {
                let what = format!("{pipeline} {} #{i} {family}", s.name);
                time(replica(family).unwrap_or_else(|| panic!("no {what}")), expected, &what);
            }
            // Only replicas with a queue of their own have a `queued` series.
            let queued = s.partitioned().then_some(r.queued as f64);
            assert_eq!(replica("queued"), queued, "{pipeline} {} #{i} queued", s.name);
            queued_sum += queued.unwrap_or(0.0);
        }
        if s.partitioned() {
            assert_eq!(queued_sum, stage("queued"), "{pipeline} {}: the partitions' queued add up", s.name);
        }
        let stage_sums = ["received_total", "processed_total", "emitted_total", "failed_total", "aborted_total"];
        for (family, sum) in stage_sums.into_iter().zip(sums) {
            assert_eq!(sum, stage(family), "{pipeline} {}: the replicas' {family} add up to the stage's", s.name);
        }
    }
}
