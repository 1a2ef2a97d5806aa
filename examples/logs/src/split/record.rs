//! What `logs ingest` publishes to a partition's subject, and how a worker
//! counts each record once: [`Envelope`], [`Record`], [`Seen`].

use std::collections::BTreeSet;

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

/// The `seq` numbers of the records a partition's aggregate has counted:
/// every number up to `through`, and those above it in `above`.
///
/// Records arrive nearly in order (a redelivery is the exception), so
/// `above` stays small and the set costs a few words, not one per record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Seen {
    through: u64,
    above: BTreeSet<u64>,
}

impl Seen {
    /// Adds `seq`; `false` if it was there already (a redelivery).
    pub(crate) fn insert(&mut self, seq: u64) -> bool {
        if seq <= self.through || !self.above.insert(seq) {
            return false;
        }
        while self.above.first() == Some(&(self.through + 1)) {
            self.above.pop_first();
            self.through += 1;
        }
        true
    }

    /// How many numbers it holds.
    pub(crate) fn len(&self) -> u64 {
        self.through + self.above.len() as u64
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
        assert_eq!((seen.through, seen.above.iter().copied().collect::<Vec<_>>()), (5, vec![7]));
        assert!(!seen.insert(4));
        assert!(seen.insert(6));
        assert_eq!((seen.through, seen.above.len()), (7, 0));
    }
}
