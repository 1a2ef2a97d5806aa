//! The pieces of a split run's report and how they fit back together:
//! [`IngestSummary`], [`PartialReport`], [`combine`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::pipeline::{BoxError, Malformed, ParseCounts, Report, Summary};

/// What `logs ingest` read of the log: the part of the report that does
/// not depend on the routes, and how many records each partition got.
/// Published to `logs.ingest` before the partitions' end markers, so a
/// worker that saw its end markers finds it there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IngestSummary {
    /// How many partitions the records were published to.
    pub(crate) partitions: u32,
    /// Lines read and parsed, as the single-process `parse` counts them.
    pub(crate) parse: ParseCounts,
    /// The malformed lines, as the single-process report shows them.
    pub(crate) malformed: Malformed,
    /// Records published to each partition, indexed by partition.
    pub(crate) records: Vec<u64>,
}

/// What one worker reports: the ingest's part and the aggregates of the
/// partitions it covered. `logs combine` merges the reports of workers
/// that covered every partition once into the single-process report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartialReport {
    pub(crate) ingest: IngestSummary,
    /// The partitions of `summary`, in increasing order.
    pub(crate) covers: Vec<u32>,
    /// The aggregates of those partitions' records.
    pub(crate) summary: Summary,
    /// Redelivered records the worker recognised and did not count again
    /// (over the partitions' whole history, restarts included).
    pub(crate) duplicates: u64,
}

impl PartialReport {
    /// As a [`Report`]: the ingest's counts with this part's aggregates.
    pub(crate) fn as_report(&self) -> Report {
        Report { parse: self.ingest.parse, malformed: self.ingest.malformed.clone(), summary: self.summary.clone() }
    }
}

/// Merges the partial reports of one ingest into its whole report, the
/// one a single process computes from the same log.
///
/// A partition's routes are its own (records are published by route), so
/// the summaries merge by union of routes and sums of the rest.
///
/// # Errors
///
/// If the parts come from different ingests, a partition is covered
/// twice or not at all, or the merged aggregates do not count every
/// parsed line once.
pub(crate) fn combine(parts: &[PartialReport]) -> Result<Report, BoxError> {
    let first = parts.first().ok_or("no partial report to combine")?;
    let ingest = &first.ingest;
    let mut covered = BTreeSet::new();
    for part in parts {
        if part.ingest != *ingest {
            return Err("the partial reports come from different ingests (their ingest summaries differ)".into());
        }
        for &partition in &part.covers {
            if !covered.insert(partition) {
                return Err(format!("partition {partition} is covered by two partial reports").into());
            }
        }
    }
    let missing: Vec<String> = (0..ingest.partitions).filter(|p| !covered.contains(p)).map(|p| p.to_string()).collect();
    if !missing.is_empty() {
        return Err(format!(
            "partitions {} of {} are covered by no partial report",
            missing.join(", "),
            ingest.partitions
        )
        .into());
    }
    let summary = Summary::merged(parts.iter().map(|part| &part.summary));
    if summary.requests() != ingest.parse.parsed {
        return Err(format!(
            "the partial reports count {} requests, the ingest parsed {} lines",
            summary.requests(),
            ingest.parse.parsed
        )
        .into());
    }
    Ok(Report { parse: ingest.parse, malformed: ingest.malformed.clone(), summary })
}
