//! What `logs ingest` publishes to a partition's subject, and how a worker
//! counts each record once: [`Envelope`], [`Record`], [`Seen`].

use serde::{Deserialize, Serialize};

use crate::pipeline::{Method, Request};

/// One message of a partition's subject `logs.records.<p>`: a parsed
/// record, or the marker that ends the partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Envelope {
    /// A parsed line.
    Record(Record),
    /// Published once every record of the partition is stored: how many
    /// there are (their `seq` runs from 1 to `records`).
    End { partition: u32, records: u64 },
}

impl Envelope {
    /// The partition whose subject it goes to.
    pub(crate) fn partition(&self) -> u32 {
        match self {
            Envelope::Record(record) => record.partition,
            Envelope::End { partition, .. } => *partition,
        }
    }

    /// Its `Nats-Msg-Id`: the line number of a record, `end-<p>-<records>`
    /// for an end marker. The same input gives the same ids, so the stream
    /// stores an ingest run again within its duplicate window only once.
    pub(crate) fn msg_id(&self) -> String {
        match self {
            Envelope::Record(record) => record.line.to_string(),
            Envelope::End { partition, records } => format!("end-{partition}-{records}"),
        }
    }
}

/// A line `parse` read, as the worker of its partition receives it: the
/// fields of a [`Request`] and two numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The line's number in the log (1-based): its message id, so an
    /// ingest run again within the stream's duplicate window stores
    /// nothing twice.
    pub(crate) line: u64,
    /// The partition of its route ([`route_partition`](crate::pipeline::route_partition)).
    pub(crate) partition: u32,
    /// Its place among the records of its partition (1-based, in line
    /// order): what a worker de-duplicates redeliveries by.
    pub(crate) seq: u64,
    /// Unix time, in seconds.
    pub(crate) time: i64,
    pub(crate) method: Method,
    pub(crate) target: String,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) user_agent: String,
    pub(crate) latency_us: Option<u64>,
}

impl Record {
    /// The record of `request`, line `line`, `seq`th of partition
    /// `partition`.
    pub(crate) fn new(line: u64, partition: u32, seq: u64, request: &Request) -> Record {
        Record {
            line,
            partition,
            seq,
            time: request.time,
            method: request.method,
            target: request.target().to_owned(),
            status: request.status,
            bytes: request.bytes,
            user_agent: request.user_agent().to_owned(),
            latency_us: request.latency_us,
        }
    }

    /// The request again, for [`Enricher`](crate::pipeline::Enricher).
    pub(crate) fn to_request(&self) -> Request {
        Request::from_parts(
            self.time,
            self.method,
            &self.target,
            self.status,
            self.bytes,
            &self.user_agent,
            self.latency_us,
        )
    }
}

/// The `seq` numbers of the records a partition's aggregate has counted,
/// as runs of consecutive numbers: `(first, last)` pairs, in order, with
/// a gap between any two.
///
/// Records arrive nearly in order, so there are few runs: a redelivery,
/// or records an interrupted ingest stored again at the end of the
/// stream, open a gap until they come. The set costs a few words per gap,
/// not one per record, so the checkpoint that holds it stays small
/// however many records a partition has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Seen {
    runs: Vec<(u64, u64)>,
    len: u64,
}

impl Seen {
    /// Adds `seq`; `false` if it was there already (a redelivery).
    pub(crate) fn insert(&mut self, seq: u64) -> bool {
        // The first run starting after `seq`; the one before it may hold it.
        let at = self.runs.partition_point(|&(first, _)| first <= seq);
        if at > 0 && seq <= self.runs[at - 1].1 {
            return false;
        }
        let joins_before = at > 0 && self.runs[at - 1].1 + 1 == seq;
        let joins_after = at < self.runs.len() && seq + 1 == self.runs[at].0;
        match (joins_before, joins_after) {
            (true, true) => {
                self.runs[at - 1].1 = self.runs[at].1;
                self.runs.remove(at);
            }
            (true, false) => self.runs[at - 1].1 = seq,
            (false, true) => self.runs[at].0 = seq,
            (false, false) => self.runs.insert(at, (seq, seq)),
        }
        self.len += 1;
        true
    }

    /// How many numbers it holds.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn seen_counts_each_number_once_in_any_order() {
        let mut seen = Seen::default();
        for seq in [1, 2, 5, 3, 5, 2, 4, 7] {
            seen.insert(seq);
        }
        assert_eq!(seen.len(), 6);
        assert_eq!(seen.runs, [(1, 5), (7, 7)]);
        assert!(!seen.insert(4));
        assert!(seen.insert(6));
        assert_eq!(seen.runs, [(1, 7)]);
        assert!(seen.insert(10) && seen.insert(9));
        assert_eq!((seen.runs.clone(), seen.len()), (vec![(1, 7), (9, 10)], 9));
    }

    #[test]
    fn a_gap_left_by_an_interrupted_ingest_keeps_the_set_small() {
        // 300 000 records with 256 missing in the middle, stored again at
        // the end: the set holds two runs, then one, never a number each.
        let missing = 100_001..=100_256;
        let mut seen = Seen::default();
        for seq in (1..=300_000).filter(|seq| !missing.contains(seq)) {
            assert!(seen.insert(seq));
        }
        assert_eq!(seen.runs.len(), 2);
        assert!(serde_json::to_vec(&seen).unwrap().len() < 100);
        for seq in missing {
            assert!(seen.insert(seq));
        }
        assert_eq!((seen.runs.clone(), seen.len()), (vec![(1, 300_000)], 300_000));
    }
}
