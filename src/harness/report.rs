use std::{fmt, time::Duration};

use crate::Metrics;

/// What a [`Harness`](super::Harness) run measured.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Report {
    /// Items fed into the first stage.
    pub items_in: u64,
    /// Items read from the output; `None` if the output was taken before
    /// the run.
    pub items_out: Option<u64>,
    /// From the first item sent to the end of the shutdown.
    pub elapsed: Duration,
    /// The pipeline's metrics at the end of the run.
    pub metrics: Metrics,
    /// How full each stage's input queue was during the run, in stage order.
    pub queues: Vec<QueueFill>,
}

/// How full one stage's input queue was, over the samples of a run.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct QueueFill {
    /// The stage's name.
    pub stage: &'static str,
    /// The queue's capacity (summed over replicas with `partition_by`).
    pub capacity: u64,
    /// The items queued at each sample, in time order.
    pub samples: Vec<u64>,
}

impl QueueFill {
    /// The mean fill over the samples, between 0 and 1; 0 without samples.
    pub fn mean(&self) -> f64 {
        if self.samples.is_empty() || self.capacity == 0 {
            return 0.0;
        }
        let sum: u64 = self.samples.iter().sum();
        sum as f64 / (self.samples.len() as f64 * self.capacity as f64)
    }

    /// The highest fill seen, between 0 and 1.
    pub fn max(&self) -> f64 {
        let max = self.samples.iter().copied().max().unwrap_or(0);
        if self.capacity == 0 { 0.0 } else { max as f64 / self.capacity as f64 }
    }
}

impl Report {
    pub(super) fn new(
        items_in: u64,
        items_out: Option<u64>,
        elapsed: Duration,
        metrics: Metrics,
        samples: &[Vec<(u64, u64)>],
    ) -> Self {
        let queues = metrics
            .stages()
            .iter()
            .enumerate()
            .map(|(i, stage)| QueueFill {
                stage: stage.name,
                capacity: stage.capacity,
                samples: samples.iter().filter_map(|sample| sample.get(i).map(|&(queued, _)| queued)).collect(),
            })
            .collect();
        Report { items_in, items_out, elapsed, metrics, queues }
    }

    /// Items fed per second, end to end.
    pub fn items_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs == 0.0 { 0.0 } else { self.items_in as f64 / secs }
    }

    /// The stage that limited throughput: see [`Metrics::bottleneck`].
    pub fn bottleneck(&self) -> Option<&str> {
        self.metrics.bottleneck()
    }
}

/// A table: one line per stage, the bottleneck marked.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} items in {:.3?}: {:.0} items/s", self.items_in, self.elapsed, self.items_per_sec())?;
        match self.items_out {
            Some(out) => writeln!(f, ", {out} out")?,
            None => writeln!(f)?,
        }
        let width = self.metrics.stages().iter().map(|s| s.name.len()).max().unwrap_or(0).max(5);
        writeln!(
            f,
            "  {:<width$} {:>8} {:>11} {:>11} {:>7} {:>6} {:>8} {:>6} {:>10} {:>10}",
            "stage", "replicas", "received", "emitted", "failed", "busy", "blocked", "idle", "queue avg", "queue max"
        )?;
        let bottleneck = self.bottleneck();
        let run = self.elapsed.as_secs_f64();
        for (stage, queue) in self.metrics.stages().iter().zip(&self.queues) {
            let share = |d: Duration| {
                let available = run * stage.replicas.len().max(1) as f64;
                if available == 0.0 { 0.0 } else { (d.as_secs_f64() / available * 100.0).min(100.0) }
            };
            writeln!(
                f,
                "{} {:<width$} {:>8} {:>11} {:>11} {:>7} {:>5.0}% {:>7.0}% {:>5.0}% {:>9.0}% {:>9.0}%",
                if bottleneck == Some(stage.name) { '>' } else { ' ' },
                stage.name,
                stage.replicas.len(),
                stage.received,
                stage.emitted,
                stage.failed,
                share(stage.busy),
                share(stage.blocked),
                (100.0 - share(stage.busy) - share(stage.blocked)).max(0.0),
                queue.mean() * 100.0,
                queue.max() * 100.0,
            )?;
        }
        match bottleneck {
            Some(name) => write!(f, "bottleneck: {name}"),
            None => self.metrics.write_no_bottleneck(f),
        }
    }
}
