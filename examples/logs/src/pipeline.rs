//! The log-analytics pipeline: its stages, the aggregates they build, and the
//! same computation as a plain loop to check them against.
//!
//! ```text
//!  lines ──▶ parse ×2 ──▶ enrich ×N ──▶ aggregate ×M, partitioned by route
//!  Line      Request       Hit          (keeps a Summary; emits nothing)
//! ```
//!
//! - Lines are numbered as they are fed ([`Logs::feed_lines`]), so `parse`
//!   can run on several replicas and still name the malformed lines it
//!   fails.
//! - `parse` turns a [`Line`] into a [`Request`], copying nothing: the
//!   request keeps the line and where its fields are in it. A malformed line
//!   is failed, as the guide's "Failing items" teaches:
//!   `out.fail(MalformedLine { number, text })`. The pipeline counts it in
//!   `parse`'s `failed` metric and sends it to its `failures()` stream, which
//!   a task reads while lines are fed ([`MalformedLines`]), downcasting each
//!   failure back to its [`MalformedLine`]: that gives the report's count of
//!   malformed lines and its first few examples ([`Malformed`]). So the
//!   metrics table shows `failed` = malformed for `parse`. A replica counts
//!   only the lines it took and passed on ([`ParseCounts`]).
//! - `enrich` derives what the aggregates need ([`Enricher`]): the route
//!   (`GET /users/123` → `GET /users/:id`), the user-agent class and the hour.
//!   It holds no state that matters, so it runs on N replicas and each line
//!   goes to whichever replica is idle.
//! - `aggregate` keeps a [`Summary`]: per-route counts, status classes, and
//!   latency and size [`Histogram`]s. It is declared with
//!   `partition_by = Hit::route_key`: on M replicas (one by default, the
//!   fastest on two cores; more with `--replicas aggregate=M`), every hit of
//!   a route lands on the same replica, so each replica's numbers for its
//!   routes are complete and the replicas' route tables merge by simple
//!   union. It emits nothing: its state
//!   is read with `call_aggregate_all(Query::Snapshot)`, live while lines
//!   flow and once at the end ([`collect_report`]).
//!
//! On the way, a line's buffer is allocated once, by whoever reads the log:
//! `parse` keeps it in the request, `enrich` reuses it for the route of a
//! later hit, and it is freed where a hit is recorded. Items crossing
//! threads carry no other allocation. Only a malformed line costs more
//! (about 0.5% of generated lines): its error is boxed by `fail` and
//! crosses to the task reading the failures.
//!
//! [`sequential`] computes the same [`Report`] in a plain loop with the same
//! functions; `tests/logs.rs` checks that both agree exactly.
//!
//! The pipeline is declared once ([`Logs`]) with default sizes; `main` and
//! the tests choose replica counts and queue sizes when they start it, with
//! `Logs::builder(..).replicas("enrich", n).queue_size("parse", n)`.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    fmt, io,
    net::IpAddr,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{Stream, StreamExt};
use genflow::{ConfigError, Emitter, Failure, GenServer, Metrics, Stage, StageMetrics};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt},
    sync::watch,
};

/// Any error, as returned by the pipeline's calls and feeds.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

// --- Parsing ---------------------------------------------------------------------

/// A line of the log with its number (1-based, in the order the lines were
/// fed): what `parse` takes. Lines are numbered before they enter the
/// pipeline, so `parse` can run on several replicas and still name the
/// malformed lines it fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) number: u64,
    pub(crate) text: String,
}

/// One request of the access log, as `parse` reads it.
///
/// It keeps the line it was read from and refers to the target and user
/// agent by their place in it, so reading a line copies nothing; `enrich`
/// then reuses the line's buffer for the route (see [`Enricher`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// The whole line.
    line: String,
    /// Unix time, in seconds.
    pub(crate) time: i64,
    pub(crate) method: Method,
    /// Where the request target is in `line`.
    target: Range<usize>,
    pub(crate) status: u16,
    /// Response body size (`-` counts as 0).
    pub(crate) bytes: u64,
    /// Where the user agent is in `line` (empty when the line has none).
    user_agent: Range<usize>,
    /// `$request_time`, when the line ends with it.
    pub(crate) latency_us: Option<u64>,
}

impl Request {
    /// The request target as sent: path and query string.
    pub(crate) fn target(&self) -> &str {
        &self.line[self.target.clone()]
    }

    /// The user agent; empty when the line has none (common log format).
    pub(crate) fn user_agent(&self) -> &str {
        &self.line[self.user_agent.clone()]
    }

    /// A request made from its fields, as a process that did not read the
    /// line receives them: its line holds only the target and the user
    /// agent, which is all [`Enricher`] reads of it.
    #[cfg(feature = "nats")]
    #[allow(clippy::too_many_arguments, reason = "one argument per field of a request")]
    pub(crate) fn from_parts(
        time: i64,
        method: Method,
        target: &str,
        status: u16,
        bytes: u64,
        user_agent: &str,
        latency_us: Option<u64>,
    ) -> Request {
        let mut line = String::with_capacity(target.len() + user_agent.len());
        line.push_str(target);
        line.push_str(user_agent);
        let (target, user_agent) = (0..target.len(), target.len()..line.len());
        Request { line, time, method, target, status, bytes, user_agent, latency_us }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "nats", derive(serde::Serialize, serde::Deserialize))]
pub(crate) enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    /// Any other method token (`PROPFIND`, `CONNECT`, ...).
    Other,
}

impl Method {
    fn parse(token: &str) -> Option<Method> {
        Some(match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ if !token.is_empty() && token.bytes().all(|b| b.is_ascii_uppercase()) => Method::Other,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// Reads one line of the combined log format, optionally followed by the
/// request time in seconds (`$request_time`); the referer and user agent may
/// be missing too (common log format). `None` if the line is malformed.
///
/// ```text
/// 203.0.113.7 - - [10/Mar/2024:13:55:36 +0000] "GET /users/1 HTTP/1.1" 200 1534 "-" "curl/8.4.0" 0.042
/// ```
#[allow(dead_code, reason = "for tests/logs.rs; the stages use `ParseCounts::parse`")]
pub(crate) fn parse_line(line: impl Into<String>) -> Option<Request> {
    let line = line.into();
    scan(&line).map(|scanned| scanned.into_request(line))
}

/// [`parse_line`] for a numbered line; a malformed one comes back as the
/// error `parse` fails it with.
fn read_line(line: Line) -> Result<Request, MalformedLine> {
    match scan(&line.text) {
        Some(scanned) => Ok(scanned.into_request(line.text)),
        None => Err(MalformedLine::new(line)),
    }
}

/// What [`scan`] found in a line: the fields of a [`Request`] but the line.
struct Scanned {
    time: i64,
    method: Method,
    target: Range<usize>,
    status: u16,
    bytes: u64,
    user_agent: Range<usize>,
    latency_us: Option<u64>,
}

impl Scanned {
    fn into_request(self, line: String) -> Request {
        let Scanned { time, method, target, status, bytes, user_agent, latency_us } = self;
        Request { line, time, method, target, status, bytes, user_agent, latency_us }
    }
}

/// Reads the fields of `line`; `None` if it is malformed.
fn scan(line: &str) -> Option<Scanned> {
    // Where a field borrowed from `line` sits in it.
    let span = |field: &str| {
        let start = field.as_ptr() as usize - line.as_ptr() as usize;
        start..start + field.len()
    };
    let mut fields = Fields(line);
    fields.word()?.parse::<IpAddr>().ok()?;
    let _ident = fields.word()?;
    let _user = fields.word()?;
    let time = parse_time(fields.enclosed('[', ']')?)?;

    let mut request = fields.enclosed('"', '"')?.split(' ');
    let (Some(method), Some(target), Some(protocol), None) =
        (request.next(), request.next(), request.next(), request.next())
    else {
        return None;
    };
    let method = Method::parse(method)?;
    if target.is_empty() || !protocol.starts_with("HTTP/") {
        return None;
    }

    let status = fields.word()?.parse().ok().filter(|s| (100..600).contains(s))?;
    let bytes = match fields.word()? {
        "-" => 0,
        bytes => bytes.parse().ok()?,
    };
    let user_agent = if fields.is_empty() {
        0..0
    } else {
        let _referer = fields.enclosed('"', '"')?;
        span(fields.enclosed('"', '"')?)
    };
    let latency_us = fields.word().and_then(parse_seconds);
    Some(Scanned { time, method, target: span(target), status, bytes, user_agent, latency_us })
}

/// The unread rest of a line, taken field by field.
struct Fields<'a>(&'a str);

impl<'a> Fields<'a> {
    fn is_empty(&self) -> bool {
        self.0.trim_start_matches(' ').is_empty()
    }

    /// The next field up to a space.
    fn word(&mut self) -> Option<&'a str> {
        let rest = self.0.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        self.0 = &rest[end..];
        (end > 0).then(|| &rest[..end])
    }

    /// The next field, which must be enclosed in `open` … `close`; a
    /// backslash escapes the next character (Apache writes `\"`).
    fn enclosed(&mut self, open: char, close: char) -> Option<&'a str> {
        let inner = self.0.trim_start_matches(' ').strip_prefix(open)?;
        let mut from = 0;
        loop {
            let end = from + inner[from..].find(close)?;
            let backslashes = inner[..end].bytes().rev().take_while(|&b| b == b'\\').count();
            if backslashes % 2 == 0 {
                self.0 = &inner[end + close.len_utf8()..];
                return Some(&inner[..end]);
            }
            from = end + close.len_utf8();
        }
    }
}

/// `10/Mar/2024:13:55:36 +0100` → Unix time.
fn parse_time(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (date_time, zone) = text.split_once(' ')?;
    let mut date = date_time.splitn(3, '/');
    let (day, month, rest) = (date.next()?, date.next()?, date.next()?);
    let mut clock = rest.split(':');
    let (year, hour, minute, second) = (clock.next()?, clock.next()?, clock.next()?, clock.next()?);
    if clock.next().is_some() {
        return None;
    }
    let number = |text: &str, max: i64| text.parse::<i64>().ok().filter(|n| (0..=max).contains(n));
    let month = MONTHS.iter().position(|&m| m == month)? as i64 + 1;
    let (day, year) = (number(day, 31).filter(|&d| d >= 1)?, number(year, 9999)?);
    let seconds = number(hour, 23)? * 3600 + number(minute, 59)? * 60 + number(second, 60)?;

    let (sign, zone) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    if zone.len() != 4 {
        return None;
    }
    let offset = sign * (number(&zone[..2], 23)? * 3600 + number(&zone[2..], 59)? * 60);
    Some(days_from_civil(year, month, day) * 86_400 + seconds - offset)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `0.042` (seconds) → 42 000 µs, without going through floating point;
/// `None` for `-` or anything else that is not a decimal number.
fn parse_seconds(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros = fraction.bytes().chain(std::iter::repeat(b'0')).take(6).fold(0, |n, d| n * 10 + u64::from(d - b'0'));
    whole.parse::<u64>().ok()?.checked_mul(1_000_000)?.checked_add(micros)
}

/// What one `parse` replica read: every line it took, and those it passed
/// on. The others it failed, each with a [`MalformedLine`]: they are counted
/// by the pipeline (the stage's `failed` metric) and read back from its
/// `failures()` stream ([`MalformedLines`]), not here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "nats", derive(serde::Serialize, serde::Deserialize))]
pub(crate) struct ParseCounts {
    /// Lines taken, counted before reading them.
    pub(crate) lines: u64,
    /// Lines read into a [`Request`] and passed on.
    pub(crate) parsed: u64,
}

impl ParseCounts {
    /// Reads the next line, counting it; a malformed line comes back as the
    /// error to fail it with.
    pub(crate) fn parse(&mut self, line: Line) -> Result<Request, MalformedLine> {
        self.lines += 1;
        let request = read_line(line)?;
        self.parsed += 1;
        Ok(request)
    }

    pub(crate) fn sum(replicas: &[ParseCounts]) -> ParseCounts {
        replicas.iter().fold(ParseCounts::default(), |sum, r| ParseCounts {
            lines: sum.lines + r.lines,
            parsed: sum.parsed + r.parsed,
        })
    }
}

/// A line `parse` could not read: the error it fails the line with
/// (`out.fail(MalformedLine { .. })`), which reaches the pipeline's
/// `failures()` stream inside a `genflow::Failure`, where
/// `failure.error().downcast_ref::<MalformedLine>()` gets it back.
///
/// The line itself is moved into `process`, so the error carries what the
/// report needs of it: its number and its first [`MalformedLine::MAX_CHARS`]
/// characters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "nats", derive(serde::Serialize, serde::Deserialize))]
pub(crate) struct MalformedLine {
    /// 1-based, in the order the lines were fed.
    pub(crate) number: u64,
    /// The line, cut to [`MalformedLine::MAX_CHARS`] characters.
    pub(crate) text: String,
}

impl MalformedLine {
    pub(crate) const MAX_CHARS: usize = 100;

    /// The error for `line`, cut in place (its buffer is reused, not
    /// copied).
    pub(crate) fn new(line: Line) -> MalformedLine {
        let Line { number, mut text } = line;
        if let Some((cut, _)) = text.char_indices().nth(Self::MAX_CHARS) {
            text.truncate(cut);
        }
        MalformedLine { number, text }
    }
}

/// `line 12: not an access-log line: "…"`, the text escaped as in Rust.
impl fmt::Display for MalformedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: not an access-log line: {:?}", self.number, self.text)
    }
}

impl std::error::Error for MalformedLine {}

/// The malformed lines of a log: how many, and the first few by line
/// number, as the report shows them.
///
/// Built from the pipeline's failures, which arrive in no particular order
/// when `parse` runs on several replicas, or in a plain loop
/// ([`sequential`]); both give the same value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "nats", derive(serde::Serialize, serde::Deserialize))]
pub(crate) struct Malformed {
    pub(crate) count: u64,
    /// The [`Malformed::EXAMPLES`] lowest-numbered malformed lines, in
    /// increasing numbers.
    pub(crate) examples: Vec<MalformedLine>,
}

impl Malformed {
    /// How many malformed lines are kept as examples.
    pub(crate) const EXAMPLES: usize = 3;

    /// Counts `line`, and keeps it if it is one of the lowest-numbered so
    /// far. Lines may come in any order; the line is cloned only when kept.
    pub(crate) fn record(&mut self, line: &MalformedLine) {
        self.count += 1;
        let at = self.examples.partition_point(|kept| kept.number < line.number);
        if at < Self::EXAMPLES {
            self.examples.insert(at, line.clone());
            self.examples.truncate(Self::EXAMPLES);
        }
    }
}

/// What [`MalformedLines`] has read from the failures stream so far.
#[derive(Debug, Default)]
struct FailureTally {
    malformed: Malformed,
    /// Failures that are not a [`MalformedLine`] (a panic in a stage), with
    /// the first one's text: the report would be wrong, so
    /// [`collect_report`] returns it as an error.
    others: u64,
    first_other: Option<String>,
}

impl FailureTally {
    fn record(&mut self, failure: &Failure) {
        match failure.error().downcast_ref::<MalformedLine>() {
            Some(line) if failure.stage() == "parse" => self.malformed.record(line),
            _ => {
                self.others += 1;
                self.first_other.get_or_insert_with(|| failure.to_string());
            }
        }
    }

    /// Failures read.
    fn read(&self) -> u64 {
        self.malformed.count + self.others
    }
}

/// The malformed lines of a [`Logs`] pipeline, read from its `failures()`
/// stream by a task while lines are fed.
///
/// Start it before feeding ([`MalformedLines::read`]): until `failures()`
/// is taken, failures are dropped (and counted as dropped in the metrics).
/// The task reads each failure as it comes, so `parse` never waits for room
/// in the failures buffer; it ends with the stream, once the pipeline has
/// shut down. [`collect_report`] waits until it has read every failure of
/// the lines flushed.
pub(crate) struct MalformedLines {
    tally: watch::Receiver<FailureTally>,
}

impl MalformedLines {
    /// Takes `pipeline.failures()` and spawns the task that reads it (on
    /// the current Tokio runtime). An error if the stream was taken before.
    pub(crate) fn read(pipeline: &Logs) -> Result<MalformedLines, BoxError> {
        let mut failures = pipeline.failures().ok_or("the pipeline's failures() stream was taken already")?;
        let (sender, tally) = watch::channel(FailureTally::default());
        tokio::spawn(async move {
            while let Some(failure) = failures.next().await {
                sender.send_modify(|tally| tally.record(&failure));
            }
        });
        Ok(MalformedLines { tally })
    }

    /// Malformed lines read so far.
    pub(crate) fn so_far(&self) -> u64 {
        self.tally.borrow().malformed.count
    }

    /// Waits until `failures` failures were read, then returns the
    /// malformed lines among them; an error if one of them is something
    /// else, or if the stream ended first.
    async fn after(&mut self, failures: u64) -> Result<Malformed, BoxError> {
        let tally = self
            .tally
            .wait_for(|tally| tally.read() >= failures)
            .await
            .map_err(|_| format!("the failures stream ended before its {failures} failures were read"))?;
        if let Some(other) = &tally.first_other {
            return Err(format!("{} failures that are not malformed lines, the first: {other}", tally.others).into());
        }
        Ok(tally.malformed.clone())
    }
}

// --- Enrichment ------------------------------------------------------------------

/// A request reduced to what the aggregates need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    /// Method and normalised path: `GET /api/v1/users/:id/orders`.
    pub(crate) route: String,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) latency_us: Option<u64>,
    pub(crate) agent: AgentClass,
    /// Hours since the Unix epoch.
    pub(crate) hour: i64,
}

impl Hit {
    /// What `aggregate` is partitioned by: all hits of a route go to the
    /// same replica.
    pub(crate) fn route_key(&self) -> &str {
        &self.route
    }
}

/// The `aggregate` replica, out of `partitions`, that the hits of `route`
/// go to: the hash `partition_by = Hit::route_key` uses (std's
/// `DefaultHasher`, SipHash with fixed keys, so every process of one
/// build agrees), modulo the replica count.
///
/// `logs ingest` publishes each record to the subject of its route's
/// partition, so the worker of a partition holds exactly what the
/// `aggregate` replica of that number holds in a single process with that
/// many replicas (`tests/split.rs` checks it against the pipeline).
#[cfg(feature = "nats")]
pub(crate) fn route_partition(route: &str, partitions: u32) -> u32 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    route.hash(&mut hasher);
    (hasher.finish() % u64::from(partitions.max(1))) as u32
}

/// Derives the route, user-agent class and hour of requests.
///
/// It keeps the buffer of the last request's line and writes the next route
/// into it, so a [`Hit`] costs no allocation once the first one is made: the
/// route travels in a buffer the log's reader allocated, and is freed where
/// the hit is recorded.
#[derive(Debug, Default)]
pub(crate) struct Enricher {
    spare: String,
}

impl Enricher {
    /// The [`Hit`] of `request`.
    pub(crate) fn enrich(&mut self, request: Request) -> Hit {
        let mut route = std::mem::take(&mut self.spare);
        route.clear();
        write_route(&mut route, request.method, request.target());
        let hit = Hit {
            route,
            status: request.status,
            bytes: request.bytes,
            latency_us: request.latency_us,
            agent: AgentClass::of(request.user_agent()),
            hour: request.time.div_euclid(3600),
        };
        self.spare = request.line;
        hit
    }
}

/// The method and the path with its variable parts replaced, so that
/// requests for different ids count as one route; the query string is left
/// out:
///
/// ```text
/// GET /users/123/orders/456?full=1        → GET /users/:id/orders/:id
/// GET /sessions/0b5e…-…-9f1c              → GET /sessions/:uuid
/// GET /static/app.3f9a2c1b9e4d.js         → GET /static/app.:hex.js
/// ```
///
/// A target that is not a path (`*`, `host:443`) becomes `(other)`.
#[allow(dead_code, reason = "for tests/logs.rs; the stages use `Enricher`")]
pub(crate) fn route(method: Method, target: &str) -> String {
    let mut route = String::new();
    write_route(&mut route, method, target);
    route
}

/// [`route`], written at the end of `route`.
fn write_route(route: &mut String, method: Method, target: &str) {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    route.reserve(method.as_str().len() + 1 + path.len());
    route.push_str(method.as_str());
    route.push(' ');
    if !path.starts_with('/') {
        route.push_str("(other)");
        return;
    }
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            route.push('/');
        }
        // File names are looked at part by part: `app.3f9a2c1b9e4d.js`.
        for (j, part) in segment.split('.').enumerate() {
            if j > 0 {
                route.push('.');
            }
            route.push_str(placeholder(part).unwrap_or(part));
        }
    }
}

/// The placeholder for a variable path part: a number, a UUID, or a hex
/// string of 8+ digits that has at least one digit (fingerprints, hashes;
/// not words such as `facade`).
fn placeholder(part: &str) -> Option<&'static str> {
    let bytes = part.as_bytes();
    if !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
        return Some(":id");
    }
    let is_uuid = bytes.len() == 36
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { *b == b'-' } else { b.is_ascii_hexdigit() });
    if is_uuid {
        return Some(":uuid");
    }
    if bytes.len() >= 8 && bytes.iter().all(u8::is_ascii_hexdigit) && bytes.iter().any(u8::is_ascii_digit) {
        return Some(":hex");
    }
    None
}

/// Who sent a request, judged by its user agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AgentClass {
    Browser,
    Mobile,
    Bot,
    /// Command-line tools and HTTP libraries: curl, wget, scripts.
    Cli,
    /// Empty, `-`, or not recognised.
    Other,
}

impl AgentClass {
    pub(crate) const ALL: [AgentClass; 5] =
        [AgentClass::Browser, AgentClass::Mobile, AgentClass::Bot, AgentClass::Cli, AgentClass::Other];

    pub(crate) fn name(self) -> &'static str {
        match self {
            AgentClass::Browser => "browser",
            AgentClass::Mobile => "mobile",
            AgentClass::Bot => "bot",
            AgentClass::Cli => "cli",
            AgentClass::Other => "other",
        }
    }

    /// Crawlers first (many claim to be `Mozilla/5.0`, some to be phones),
    /// then tools, then phones and tablets, then desktop browsers; case is
    /// ignored.
    pub(crate) fn of(user_agent: &str) -> AgentClass {
        const BOTS: [&str; 5] = ["bot", "crawler", "spider", "slurp", "facebookexternalhit"];
        const TOOLS: [&str; 8] =
            ["curl/", "wget/", "python-requests/", "python-urllib/", "go-http-client/", "httpie/", "okhttp/", "java/"];
        const MOBILE: [&str; 4] = ["mobile", "android", "iphone", "ipad"];
        let agent = user_agent.to_ascii_lowercase();
        if BOTS.iter().any(|bot| agent.contains(bot)) {
            AgentClass::Bot
        } else if TOOLS.iter().any(|tool| agent.starts_with(tool)) {
            AgentClass::Cli
        } else if MOBILE.iter().any(|word| agent.contains(word)) {
            AgentClass::Mobile
        } else if agent.starts_with("mozilla/") || agent.starts_with("opera/") {
            AgentClass::Browser
        } else {
            AgentClass::Other
        }
    }
}

// --- Aggregates ------------------------------------------------------------------

/// A histogram of `u64` values (latencies in µs, sizes in bytes) with a
/// fixed log-linear layout, as in HdrHistogram: values below 32 each have a
/// bucket of their own; above that, every power of two is split into 32
/// equal buckets, so a bucket is never wider than 1/32 of the values in it.
///
/// Percentiles are read as the middle of the bucket the exact percentile
/// falls in, so they are off by at most 1/64 (1.6%). Memory depends on the
/// range of the values, never on how many there are: at most 1 920 buckets
/// for the whole `u64` range, about 700 for latencies up to a minute. Keeping
/// every sample to sort them would grow with the log instead. Histograms
/// merge exactly, by adding their buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "nats", derive(serde::Serialize, serde::Deserialize))]
pub(crate) struct Histogram {
    /// Counts per bucket, up to the highest bucket used so far.
    buckets: Vec<u64>,
    samples: u64,
}

impl Histogram {
    const SUB_BITS: u32 = 5;
    const SUB_BUCKETS: u64 = 1 << Self::SUB_BITS;

    pub(crate) fn record(&mut self, value: u64) {
        let bucket = Self::bucket_of(value);
        if bucket >= self.buckets.len() {
            self.buckets.resize(bucket + 1, 0);
        }
        self.buckets[bucket] += 1;
        self.samples += 1;
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        if other.buckets.len() > self.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.samples += other.samples;
    }

    /// The `p`th percentile (nearest rank, `p` in 1..=100), read from the
    /// buckets; `None` if the histogram is empty.
    pub(crate) fn percentile(&self, p: u64) -> Option<u64> {
        let rank = (p * self.samples).div_ceil(100).max(1);
        let mut seen = 0;
        for (bucket, &count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = Self::bucket_range(bucket);
                return Some(low + (width - 1) / 2);
            }
        }
        None
    }

    fn bucket_of(value: u64) -> usize {
        if value < Self::SUB_BUCKETS {
            return value as usize;
        }
        // The position of the highest bit picks the power of two, the next
        // SUB_BITS bits the bucket inside it.
        let shift = (63 - value.leading_zeros()) - Self::SUB_BITS;
        let sub = (value >> shift) - Self::SUB_BUCKETS;
        ((u64::from(shift) + 1) * Self::SUB_BUCKETS + sub) as usize
    }

    /// The lowest value of `bucket` and how many values it holds.
    fn bucket_range(bucket: usize) -> (u64, u64) {
        let (major, sub) = (bucket as u64 / Self::SUB_BUCKETS, bucket as u64 % Self::SUB_BUCKETS);
        if major == 0 {
            return (sub, 1);
        }
        let shift = major - 1;
        ((Self::SUB_BUCKETS + sub) << shift, 1 << shift)
    }
}

/// Responses counted by status class, 1xx to 5xx.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "nats", derive(serde::Serialize, serde::Deserialize))]
pub(crate) struct StatusMix([u64; 5]);

impl StatusMix {
    /// `status` is in 100..600, as `parse` checks.
    fn record(&mut self, status: u16) {
        self.0[usize::from(status / 100 - 1)] += 1;
    }

    fn merge(&mut self, other: &StatusMix) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    /// How many responses had a status in `class`xx (`class` in 1..=5).
    pub(crate) fn class(&self, class: usize) -> u64 {
        self.0[class - 1]
    }
}

/// Everything known about one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "nats", derive(serde::Serialize, serde::Deserialize))]
pub(crate) struct RouteStats {
    pub(crate) requests: u64,
    pub(crate) statuses: StatusMix,
    /// Request times, µs (of the requests whose line had one).
    pub(crate) latency_us: Histogram,
    /// Response sizes, bytes.
    pub(crate) bytes: Histogram,
}

impl RouteStats {
    fn record(&mut self, hit: &Hit) {
        self.requests += 1;
        self.statuses.record(hit.status);
        if let Some(latency) = hit.latency_us {
            self.latency_us.record(latency);
        }
        self.bytes.record(hit.bytes);
    }

    fn merge(&mut self, other: &RouteStats) {
        self.requests += other.requests;
        self.statuses.merge(&other.statuses);
        self.latency_us.merge(&other.latency_us);
        self.bytes.merge(&other.bytes);
    }
}

/// The aggregates of a set of hits: what one `aggregate` replica holds, and,
/// merged, the whole log's.
///
/// Its size grows with the number of distinct routes (after normalisation)
/// and hours, not with the number of lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "nats", derive(serde::Serialize, serde::Deserialize))]
pub(crate) struct Summary {
    pub(crate) routes: HashMap<String, RouteStats>,
    /// Indexed like [`AgentClass::ALL`].
    pub(crate) agents: [u64; AgentClass::ALL.len()],
    /// Requests per hour since the Unix epoch.
    pub(crate) hours: BTreeMap<i64, u64>,
}

impl Summary {
    pub(crate) fn record(&mut self, hit: Hit) {
        // First: `requests()` counts hits taken, even one whose recording
        // were to fail halfway.
        self.agents[hit.agent as usize] += 1;
        *self.hours.entry(hit.hour).or_default() += 1;
        match self.routes.get_mut(&hit.route) {
            Some(stats) => stats.record(&hit),
            None => {
                let mut stats = RouteStats::default();
                stats.record(&hit);
                self.routes.insert(hit.route, stats);
            }
        }
    }

    pub(crate) fn merge(&mut self, other: &Summary) {
        for (route, stats) in &other.routes {
            self.routes.entry(route.clone()).or_default().merge(stats);
        }
        for (mine, theirs) in self.agents.iter_mut().zip(other.agents) {
            *mine += theirs;
        }
        for (hour, count) in &other.hours {
            *self.hours.entry(*hour).or_default() += count;
        }
    }

    /// Merges the snapshots of several replicas.
    pub(crate) fn merged<'a>(parts: impl IntoIterator<Item = &'a Summary>) -> Summary {
        let mut summary = Summary::default();
        for part in parts {
            summary.merge(part);
        }
        summary
    }

    /// Hits recorded.
    pub(crate) fn requests(&self) -> u64 {
        self.agents.iter().sum()
    }

    pub(crate) fn statuses(&self) -> StatusMix {
        let mut mix = StatusMix::default();
        for stats in self.routes.values() {
            mix.merge(&stats.statuses);
        }
        mix
    }

    /// The `n` routes with the most requests, most first (ties by name).
    pub(crate) fn top_routes(&self, n: usize) -> Vec<(&str, &RouteStats)> {
        let mut routes: Vec<_> = self.routes.iter().map(|(route, stats)| (route.as_str(), stats)).collect();
        routes.sort_unstable_by_key(|&(route, stats)| (Reverse(stats.requests), route));
        routes.truncate(n);
        routes
    }
}

/// The result of a run: what `parse` read, the lines it failed, and what
/// `aggregate` built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "nats", derive(serde::Serialize, serde::Deserialize))]
pub(crate) struct Report {
    /// From the `parse` replicas' state.
    pub(crate) parse: ParseCounts,
    /// From the pipeline's `failures()` stream.
    pub(crate) malformed: Malformed,
    /// From the `aggregate` replicas' state.
    pub(crate) summary: Summary,
}

/// The report of `lines`, computed in a plain loop with the functions the
/// stages use: the reference the pipeline is checked against.
#[allow(dead_code, reason = "the reference for tests/logs.rs")]
pub(crate) fn sequential<L: Into<String>>(lines: impl IntoIterator<Item = L>) -> Report {
    let mut report = Report::default();
    let mut enricher = Enricher::default();
    for (text, number) in lines.into_iter().zip(1..) {
        match report.parse.parse(Line { number, text: text.into() }) {
            Ok(request) => report.summary.record(enricher.enrich(request)),
            Err(malformed) => report.malformed.record(&malformed),
        }
    }
    report
}

// --- Stages ------------------------------------------------------------------------

/// What the stages answer to (`call_parse`, `call_enrich_all`,
/// `call_aggregate_all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Query {
    /// The stage's state so far: [`ParseCounts`] from each `parse` replica,
    /// [`EnrichCounts`] from each `enrich` replica, a [`Summary`] from each
    /// `aggregate` replica.
    Snapshot,
}

/// [`Line`] → [`Request`]; a malformed line fails with a [`MalformedLine`].
pub(crate) struct Parse {
    counts: ParseCounts,
}

impl GenServer for Parse {
    type Message = Query;
    type Response = ParseCounts;
    type Registry = Logs;

    fn new(_: Logs) -> Self {
        Parse { counts: ParseCounts::default() }
    }

    async fn handle_call(&mut self, query: Query) -> ParseCounts {
        match query {
            Query::Snapshot => self.counts,
        }
    }

    async fn handle_cast(&mut self, _: Query) {}
}

impl Stage for Parse {
    type In = Line;
    type Out = Request;

    async fn process(&mut self, line: Line, out: &mut Emitter<Request>) {
        match self.counts.parse(line) {
            Ok(request) => out.emit(request).await,
            // Counted in `failed`, sent to `failures()`; nothing is printed.
            Err(malformed) => out.fail(malformed),
        }
    }
}

/// What one `enrich` replica did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EnrichCounts {
    /// Requests taken, counted before enriching them.
    pub(crate) requests: u64,
    /// Hits passed on.
    pub(crate) hits: u64,
}

impl EnrichCounts {
    pub(crate) fn sum(replicas: &[EnrichCounts]) -> EnrichCounts {
        replicas.iter().fold(EnrichCounts::default(), |sum, r| EnrichCounts {
            requests: sum.requests + r.requests,
            hits: sum.hits + r.hits,
        })
    }
}

/// [`Request`] → [`Hit`]; counts what it does.
pub(crate) struct Enrich {
    counts: EnrichCounts,
    enricher: Enricher,
}

impl GenServer for Enrich {
    type Message = Query;
    type Response = EnrichCounts;
    type Registry = Logs;

    fn new(_: Logs) -> Self {
        Enrich { counts: EnrichCounts::default(), enricher: Enricher::default() }
    }

    async fn handle_call(&mut self, query: Query) -> EnrichCounts {
        match query {
            Query::Snapshot => self.counts,
        }
    }

    async fn handle_cast(&mut self, _: Query) {}
}

impl Stage for Enrich {
    type In = Request;
    type Out = Hit;

    async fn process(&mut self, request: Request, out: &mut Emitter<Hit>) {
        self.counts.requests += 1;
        let hit = self.enricher.enrich(request);
        self.counts.hits += 1;
        out.emit(hit).await;
    }
}

/// Records [`Hit`]s into a [`Summary`]; emits nothing (hence `Out =
/// Infallible`): the summary is read with calls.
pub(crate) struct Aggregate {
    summary: Summary,
}

impl GenServer for Aggregate {
    type Message = Query;
    type Response = Summary;
    type Registry = Logs;

    fn new(_: Logs) -> Self {
        Aggregate { summary: Summary::default() }
    }

    async fn handle_call(&mut self, query: Query) -> Summary {
        match query {
            Query::Snapshot => self.summary.clone(),
        }
    }

    async fn handle_cast(&mut self, _: Query) {}
}

impl Stage for Aggregate {
    type In = Hit;
    type Out = Infallible;

    async fn process(&mut self, hit: Hit, _: &mut Emitter<Infallible>) {
        self.summary.record(hit);
    }
}

// --- Pipelines -----------------------------------------------------------------------

/// The log pipeline. Its declared sizes (`parse` on two replicas, `enrich`
/// on two, `aggregate` on one, queues of 1,000 lines) are defaults, the
/// fastest of those tried on a 2-core machine (docs/benchmarks.md):
/// [`Logs::sized`] starts it with others.
#[genflow::pipeline{
    #[replicas(2)]
    parse: Parse,
    #[replicas(2)]
    enrich: Enrich,
    #[replicas(1, partition_by = Hit::route_key)]
    aggregate: Aggregate,
}]
pub(crate) struct Logs {
    /// Lines fed so far, by every [`Logs::feed_lines`]: the number of the
    /// next line, less one.
    lines_fed: Arc<AtomicU64>,
}

impl Logs {
    /// Starts the pipeline with these replica counts and queue sizes, each
    /// `(stage, n)`.
    pub(crate) async fn sized(replicas: &[(String, usize)], queues: &[(String, usize)]) -> Result<Logs, ConfigError> {
        let mut builder = Logs::builder(Arc::default());
        for (stage, n) in replicas {
            builder = builder.replicas(stage.as_str(), *n);
        }
        for (stage, n) in queues {
            builder = builder.queue_size(stage.as_str(), *n);
        }
        builder.start().await
    }

    /// Feeds every line, with backpressure, numbering them after the lines
    /// fed before; how many went in.
    pub(crate) async fn feed_lines(&self, lines: impl Stream<Item = String> + Send) -> Result<u64, BoxError> {
        let numbered = lines.map(|text| Line { number: self.lines_fed.fetch_add(1, Ordering::Relaxed) + 1, text });
        Ok(self.feed(numbered).await? as u64)
    }

    /// `call_parse_all(Query::Snapshot)`, summed: what every replica read.
    pub(crate) async fn parse_counts(&self) -> Result<ParseCounts, BoxError> {
        Ok(ParseCounts::sum(&self.call_parse_all(Query::Snapshot).await?))
    }

    /// `call_enrich_all(Query::Snapshot)`: what each replica did.
    pub(crate) async fn enriched(&self) -> Result<Vec<EnrichCounts>, BoxError> {
        Ok(self.call_enrich_all(Query::Snapshot).await?)
    }

    /// `call_aggregate_all(Query::Snapshot)`: each replica's summary.
    pub(crate) async fn summaries(&self) -> Result<Vec<Summary>, BoxError> {
        Ok(self.call_aggregate_all(Query::Snapshot).await?)
    }
}

/// The metrics of stage `name` of a log pipeline.
pub(crate) fn stage(metrics: &Metrics, name: &str) -> StageMetrics {
    metrics.stage(name).unwrap_or_else(|| panic!("a log pipeline has no stage `{name}`"))
}

/// Waits until every one of the `fed` lines went through all three stages,
/// then returns the report built from the state of every `parse` and
/// `aggregate` replica and from the failures `malformed` read. The pipeline
/// keeps running: feed it more, or shut it down, afterwards.
///
/// `flush` returns once every line fed before it has gone through, failed
/// lines included: a replica sends an item's failures before it ends the
/// batch that held it. A call is served between two items, never in the
/// middle of one, so the answers of the stages after the flush cover every
/// line, and each stage has taken all the previous one passed on (checked
/// here: a mismatch is an error). The lines `parse` took but did not pass
/// on are the failures to wait for: once `malformed` has read that many,
/// the report is complete.
pub(crate) async fn collect_report(
    pipeline: &Logs,
    malformed: &mut MalformedLines,
    fed: u64,
) -> Result<Report, BoxError> {
    pipeline.flush().await?;
    let parse = pipeline.parse_counts().await?;
    let enriched = EnrichCounts::sum(&pipeline.enriched().await?);
    let summary = Summary::merged(&pipeline.summaries().await?);
    let failed = parse.lines.saturating_sub(parse.parsed);
    let malformed = malformed.after(failed).await?;
    let checks = [
        ("lines `parse` took", parse.lines, "lines fed", fed),
        ("malformed lines in failures()", malformed.count, "lines `parse` did not pass on", failed),
        ("requests `enrich` took", enriched.requests, "lines `parse` passed on", parse.parsed),
        ("hits `aggregate` recorded", summary.requests(), "hits `enrich` passed on", enriched.hits),
    ];
    if let Some((taken, n, given, m)) = checks.iter().find(|(_, n, _, m)| n != m) {
        return Err(format!("after flush, {taken} ({n}) differ from the {given} ({m})").into());
    }
    Ok(Report { parse, malformed, summary })
}

// --- Input -------------------------------------------------------------------------

/// The lines of `reader`, read one at a time, without their `\n` or `\r\n`.
/// Bytes that are not UTF-8 are replaced with `�` (such a line then counts
/// as malformed, like any line `parse` cannot read). The stream ends after
/// the first read error, which it yields.
pub(crate) fn read_lines<R>(reader: R) -> impl Stream<Item = io::Result<String>> + Send + 'static
where
    R: AsyncBufRead + Unpin + Send + 'static,
{
    futures::stream::try_unfold(reader, |mut reader| async move {
        let mut bytes = Vec::new();
        if reader.read_until(b'\n', &mut bytes).await? == 0 {
            return Ok(None);
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        let line = String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok(Some((line, reader)))
    })
}
