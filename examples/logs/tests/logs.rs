//! Tests of the `logs` example: its pipeline must compute exactly what a
//! plain sequential loop computes, on generated input and on a file read
//! line by line; its parser, route normalisation, user-agent classes and
//! histograms must do what they say.

#[allow(dead_code, reason = "the example's modules; the tests use part of them")]
#[path = "../src/gen.rs"]
mod generator;
#[allow(dead_code, reason = "the example's modules; the tests use part of them")]
#[path = "../src/pipeline.rs"]
mod pipeline;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use pipeline::{
    AgentClass, Enricher, Line, Logs, Malformed, MalformedLine, MalformedLines, Method, ParseCounts, Report,
    collect_report, parse_line, read_lines, route, sequential, stage,
};

const SEED: u64 = generator::DEFAULT_SEED;

/// Feeds `lines` through the pipeline with these replica counts (`(stage,
/// n)`, the declared ones for the others), collects the report (with a
/// deadline), checks that every line is accounted for, and shuts down.
/// The malformed lines are read from the pipeline's `failures()`, taken
/// before the first line goes in.
async fn run_pipeline(replicas: &[(&str, usize)], lines: Vec<String>) -> Report {
    let count = lines.len() as u64;
    let sizes: Vec<(String, usize)> = replicas.iter().map(|&(stage, n)| (stage.to_string(), n)).collect();
    let pipeline = Logs::sized(&sizes, &[]).await.expect("valid counts");
    for (name, declared) in [("parse", 2), ("enrich", 2), ("aggregate", 1)] {
        let n = replicas.iter().find(|(stage, _)| *stage == name).map_or(declared, |&(_, n)| n);
        assert_eq!(stage(&pipeline.metrics(), name).replicas.len(), n, "{name}");
    }
    let mut malformed = MalformedLines::read(&pipeline).expect("failures() not taken yet");
    assert!(MalformedLines::read(&pipeline).is_err(), "failures() is handed out once");
    // Fed in two parts: line numbers go on from one feed to the next.
    let mut lines = lines;
    let second = lines.split_off(lines.len() / 2);
    let mut fed = 0;
    for part in [lines, second] {
        fed += pipeline.feed_lines(stream::iter(part)).await.expect("the pipeline is running");
    }
    assert_eq!(fed, count);
    let report = tokio::time::timeout(Duration::from_secs(60), collect_report(&pipeline, &mut malformed, fed))
        .await
        .expect("every line went through in time")
        .expect("the stages answer");
    pipeline.shutdown().await;

    let metrics = pipeline.metrics();
    let (parse, enrich, aggregate) =
        (stage(&metrics, "parse"), stage(&metrics, "enrich"), stage(&metrics, "aggregate"));
    assert_eq!(parse.received, fed, "{metrics}");
    assert_eq!(parse.emitted + parse.failed, parse.received, "{metrics}");
    // Every malformed line was failed, and read back from `failures()`.
    assert_eq!(parse.failed, report.malformed.count, "{metrics}");
    assert_eq!(metrics.failures_dropped(), 0, "{metrics}");
    assert_eq!(report.parse.parsed, parse.emitted, "{metrics}");
    assert_eq!(report.parse.lines, parse.received, "{metrics}");
    assert_eq!(enrich.received, parse.emitted, "{metrics}");
    assert_eq!(aggregate.received, enrich.emitted, "{metrics}");
    assert_eq!(report.summary.requests(), aggregate.received, "{metrics}");
    assert_eq!(enrich.failed + aggregate.failed, 0, "{metrics}");
    report
}

fn generated(count: u64) -> Vec<String> {
    generator::access_log(count, SEED).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_report_equals_the_sequential_one() {
    let lines = generated(20_000);
    let expected = sequential(&lines);
    let report = run_pipeline(&[], lines).await;

    // The parts that matter, one by one for readable failures, then all.
    assert_eq!(report.parse, expected.parse);
    assert_eq!(report.malformed, expected.malformed);
    assert_eq!(report.summary.statuses(), expected.summary.statuses());
    assert_eq!(report.summary.agents, expected.summary.agents);
    assert_eq!(report.summary.hours, expected.summary.hours);
    assert_eq!(report.summary.routes.len(), expected.summary.routes.len());
    for (route, stats) in &expected.summary.routes {
        let got = &report.summary.routes[route];
        assert_eq!(got.requests, stats.requests, "{route}");
        assert_eq!(got.statuses, stats.statuses, "{route}");
        for p in [50, 95, 99] {
            assert_eq!(got.latency_us.percentile(p), stats.latency_us.percentile(p), "{route} latency p{p}");
            assert_eq!(got.bytes.percentile(p), stats.bytes.percentile(p), "{route} size p{p}");
        }
    }
    assert_eq!(report, expected);

    // The input is what it claims to be.
    assert_eq!(report.parse.lines, 20_000);
    let malformed = report.malformed.count;
    assert!((50..=150).contains(&malformed), "about 0.5% malformed, got {malformed}");
    assert_eq!(report.parse.parsed + malformed, report.parse.lines);
    assert_eq!(report.malformed.examples.len(), Malformed::EXAMPLES);
    assert!(report.summary.routes.len() >= 20, "{} routes", report.summary.routes.len());
    assert!(AgentClass::ALL.iter().all(|&class| report.summary.agents[class as usize] > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_count_gives_the_same_report() {
    let lines = generated(5_000);
    let expected = sequential(&lines);
    for replicas in [
        &[("parse", 1), ("enrich", 1), ("aggregate", 1)][..],
        &[("enrich", 3)],
        &[("parse", 3), ("enrich", 8)],
        &[("parse", 4), ("aggregate", 3)],
    ] {
        assert_eq!(run_pipeline(replicas, lines.clone()).await, expected, "{replicas:?}");
    }
}

/// Lines that arrive a few at a time, as from a pipe, leave stages with
/// partial batches in flight when the feed ends: the report must still
/// cover every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_input_is_reported_in_full() {
    let lines = generated(2_000);
    let expected = sequential(&lines);
    for round in 0..20 {
        let trickle = stream::iter(lines.clone()).enumerate().then(|(i, line)| async move {
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
            line
        });
        let pipeline = Logs::builder(Arc::default())
            .replicas("enrich", 2)
            .queue_size("parse", 16)
            .start()
            .await
            .expect("valid sizes");
        let mut malformed = MalformedLines::read(&pipeline).expect("failures() not taken yet");
        let fed = pipeline.feed_lines(trickle).await.expect("the pipeline is running");
        let report = tokio::time::timeout(Duration::from_secs(60), collect_report(&pipeline, &mut malformed, fed))
            .await
            .expect("every line went through in time")
            .expect("the stages answer");
        pipeline.shutdown().await;
        assert_eq!(report, expected, "round {round}");
    }
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &[u8]) -> TempFile {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = std::env::temp_dir().join(format!("genflow-logs-test-{}-{nanos}.log", std::process::id()));
        std::fs::write(&path, contents).expect("the temporary directory is writable");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_is_read_line_by_line() {
    // Generated lines with `\n`, one with `\r\n`, one with bytes that are not
    // UTF-8, and a last line without a line ending.
    let lines = generated(3_000);
    let mut contents = Vec::new();
    for line in &lines {
        contents.extend_from_slice(line.as_bytes());
        contents.push(b'\n');
    }
    contents.extend_from_slice(lines[0].as_bytes());
    contents.extend_from_slice(b"\r\n");
    contents
        .extend_from_slice(b"10.0.0.1 - - [10/Mar/2024:13:55:36 +0000] \"GET /caf\xe9 HTTP/1.1\" 200 5 \"-\" \"-\"\n");
    contents.extend_from_slice(lines[1].as_bytes());
    let file = TempFile::new(&contents);

    let reader = tokio::io::BufReader::new(tokio::fs::File::open(&file.0).await.expect("just written"));
    let read: Vec<String> = read_lines(reader).map(|line| line.expect("the file is readable")).collect().await;
    assert_eq!(read.len(), lines.len() + 3);
    assert_eq!(read[..lines.len()], lines[..]);
    assert_eq!(read[lines.len()], lines[0], "`\\r\\n` is removed");
    assert!(read[lines.len() + 1].contains("/caf\u{FFFD} "), "{}", read[lines.len() + 1]);
    assert_eq!(read[lines.len() + 2], lines[1]);

    // Streamed from the file straight into the pipeline.
    let expected = sequential(&read);
    let pipeline = Logs::builder(Arc::default()).replicas("enrich", 2).start().await.expect("a valid count");
    let mut malformed = MalformedLines::read(&pipeline).expect("failures() not taken yet");
    let reader = tokio::io::BufReader::new(tokio::fs::File::open(&file.0).await.expect("just written"));
    let fed = pipeline.feed_lines(read_lines(reader).map(|line| line.expect("the file is readable"))).await.unwrap();
    assert_eq!(fed, read.len() as u64);
    let report = tokio::time::timeout(Duration::from_secs(60), collect_report(&pipeline, &mut malformed, fed))
        .await
        .expect("every line went through in time")
        .expect("the stages answer");
    pipeline.shutdown().await;
    assert_eq!(report, expected);
    assert_eq!(report.summary.routes["GET /caf\u{FFFD}"].requests, 1);
}

#[test]
fn histogram_percentiles_are_within_half_a_bucket_of_the_exact_ones() {
    // Every latency and size per route, kept whole to compute the exact
    // percentiles the histograms approximate.
    let mut samples: HashMap<String, (Vec<u64>, Vec<u64>)> = HashMap::new();
    let lines = generated(20_000);
    let mut enricher = Enricher::default();
    for request in lines.iter().filter_map(parse_line) {
        let hit = enricher.enrich(request);
        let (latencies, sizes) = samples.entry(hit.route).or_default();
        latencies.extend(hit.latency_us);
        sizes.push(hit.bytes);
    }
    let report = sequential(&lines);
    let exact = |values: &mut Vec<u64>, p: u64| {
        values.sort_unstable();
        let rank = (p * values.len() as u64).div_ceil(100).max(1);
        values[rank as usize - 1]
    };
    for (route, (latencies, sizes)) in &mut samples {
        let stats = &report.summary.routes[route];
        for p in [50, 95, 99] {
            for (histogram, values) in [(&stats.latency_us, &mut *latencies), (&stats.bytes, &mut *sizes)] {
                let (approx, exact) = (histogram.percentile(p).unwrap(), exact(values, p));
                assert!(approx.abs_diff(exact) <= exact / 64 + 1, "{route} p{p}: {approx} vs exact {exact}");
            }
        }
    }
}

#[test]
fn parses_the_combined_format_with_and_without_extras() {
    let line = r#"203.0.113.7 - frank [10/Mar/2024:13:55:36 +0100] "GET /users/1?x=\"y\" HTTP/1.1" 200 1534 "-" "curl/8.4.0" 0.042"#;
    let request = parse_line(line).expect("a valid line");
    assert_eq!(request.time, 1_710_078_936 - 3600, "13:55:36 at +01:00 is 12:55:36 UTC");
    assert_eq!(request.method, Method::Get);
    assert_eq!(request.target(), r#"/users/1?x=\"y\""#);
    assert_eq!((request.status, request.bytes), (200, 1534));
    assert_eq!(request.user_agent(), "curl/8.4.0");
    assert_eq!(request.latency_us, Some(42_000));

    // Common log format: no referer, agent or request time; `-` bytes.
    let request = parse_line(r#"::1 - - [29/Feb/2024:00:00:00 -0000] "PROPFIND / HTTP/1.0" 304 -"#).expect("valid");
    assert_eq!(request.time, 1_709_164_800);
    assert_eq!((request.method, request.bytes, request.latency_us), (Method::Other, 0, None));
    assert_eq!(request.user_agent(), "");

    for malformed in [
        "",
        "203.0.113.7 - - [10/Mar/2024:13:55:36 +0000] \"GET /users/1 HTT",
        r#"203.0.113.7 - - [10/Mar/2024:13:55:36 +0000] "\x16\x03\x01\x02\x00" 400 157 "-" "-" 0.001"#,
        r#"203.0.113.7 - - [10/Mar/2024:13:55:36 +0000] "GET / HTTP/1.1" 999 1 "-" "-""#,
        r#"203.0.113.7 - - [31/Foo/2024:13:55:36 +0000] "GET / HTTP/1.1" 200 1 "-" "-""#,
        r#"not-an-ip - - [10/Mar/2024:13:55:36 +0000] "GET / HTTP/1.1" 200 1 "-" "-""#,
        "2024/03/10 13:55:36 [error] 1234#1234: *5 upstream timed out",
    ] {
        assert_eq!(parse_line(malformed), None, "{malformed:?}");
    }
}

/// What `parse` replicas count adds up to what one `parse` counts, and the
/// malformed lines they fail make the same [`Malformed`] as the plain loop
/// whatever order they reach `failures()` in: the examples are the
/// lowest-numbered malformed lines.
#[test]
fn malformed_lines_in_any_order_give_the_loops_report() {
    let lines = generated(20_000);
    let whole = sequential(&lines);
    assert_eq!(whole.malformed.examples.len(), Malformed::EXAMPLES);
    // Three replicas, each taking runs of 32 lines in turn, as from a shared
    // queue.
    let mut replicas = [ParseCounts::default(); 3];
    let mut failed: Vec<Vec<MalformedLine>> = vec![Vec::new(); 3];
    for (i, (text, number)) in lines.iter().zip(1..).enumerate() {
        if let Err(malformed) = replicas[i / 32 % 3].parse(Line { number, text: text.clone() }) {
            failed[i / 32 % 3].push(malformed);
        }
    }
    assert!(replicas.iter().all(|r| r.lines > 0 && r.lines < whole.parse.lines));
    assert_eq!(ParseCounts::sum(&replicas), whole.parse);
    // The replicas' failures one replica after the other, the last replica
    // first; then all of them, highest numbers first.
    let by_replica: Vec<&MalformedLine> = failed.iter().rev().flatten().collect();
    let mut backwards: Vec<&MalformedLine> = failed.iter().flatten().collect();
    backwards.sort_unstable_by_key(|line| std::cmp::Reverse(line.number));
    for order in [by_replica, backwards] {
        let mut malformed = Malformed::default();
        for line in order {
            malformed.record(line);
        }
        assert_eq!(malformed, whole.malformed);
    }
    // The examples are the first malformed lines of the log.
    let numbers: Vec<u64> = whole.malformed.examples.iter().map(|e| e.number).collect();
    assert!(numbers.windows(2).all(|pair| pair[0] < pair[1]), "{numbers:?}");
    let first = numbers[0] as usize - 1;
    assert_eq!(parse_line(lines[first].as_str()), None);
    assert!(lines[..first].iter().all(|line| parse_line(line.as_str()).is_some()));
}

/// The error `parse` fails a line with keeps its number and its first
/// `MAX_CHARS` characters, cut on a character boundary.
#[test]
fn a_malformed_line_keeps_its_number_and_first_characters() {
    let long = "é".repeat(MalformedLine::MAX_CHARS + 20);
    let cut = MalformedLine::new(Line { number: 7, text: long });
    assert_eq!((cut.number, cut.text), (7, "é".repeat(MalformedLine::MAX_CHARS)));

    let mut counts = ParseCounts::default();
    let failed = counts.parse(Line { number: 3, text: "oops\t".to_string() });
    let expected = MalformedLine { number: 3, text: "oops\t".to_string() };
    assert_eq!(failed, Err(expected.clone()));
    assert_eq!(counts, ParseCounts { lines: 1, parsed: 0 });
    assert_eq!(expected.to_string(), r#"line 3: not an access-log line: "oops\t""#);
}

/// Far more malformed lines than the failures buffer holds: the task
/// reading `failures()` keeps up while they are fed, so `parse` never waits
/// on it for good, none is dropped, and the report is still the loop's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_mostly_malformed_lines_is_reported_in_full() {
    let good = generated(500);
    let lines: Vec<String> =
        (0..5_000).map(|i| if i % 10 == 0 { good[i / 10].clone() } else { format!("garbage {i}") }).collect();
    let expected = sequential(&lines);
    assert!(expected.malformed.count > 4 * genflow::pipeline::FAILURES_BUFFER as u64, "{}", expected.malformed.count);
    let report = run_pipeline(&[("parse", 3)], lines).await;
    assert_eq!(report, expected);
    let numbers: Vec<u64> = report.malformed.examples.iter().map(|e| e.number).collect();
    assert_eq!(numbers, [2, 3, 4]);
}

/// An `Enricher` writes each route into the buffer of the line before: the
/// hits are those of fresh routes, whatever came before.
#[test]
fn an_enricher_reusing_its_buffers_gives_the_routes_of_route() {
    let lines = generated(2_000);
    let mut enricher = Enricher::default();
    let mut checked = 0;
    for request in lines.iter().filter_map(|line| parse_line(line.as_str())) {
        let expected = route(request.method, request.target());
        let (agent, hour) = (AgentClass::of(request.user_agent()), request.time.div_euclid(3600));
        let hit = enricher.enrich(request);
        assert_eq!((hit.route.as_str(), hit.agent, hit.hour), (expected.as_str(), agent, hour));
        checked += 1;
    }
    assert!(checked > 1_900, "{checked}");
}

#[test]
fn routes_replace_ids_uuids_and_hex_fingerprints() {
    let cases = [
        (Method::Get, "/users/123/orders/456?full=1", "GET /users/:id/orders/:id"),
        (Method::Delete, "/api/v1/sessions/0b5e6f7a-1c2d-4e3f-8a9b-0c1d2e3f4a5b", "DELETE /api/v1/sessions/:uuid"),
        (Method::Get, "/static/js/app.3f9a2c1b9e4d.js", "GET /static/js/app.:hex.js"),
        (Method::Get, "/images/products/77/thumb.webp", "GET /images/products/:id/thumb.webp"),
        (Method::Get, "/about/facade", "GET /about/facade"),
        (Method::Get, "/", "GET /"),
        (Method::Options, "*", "OPTIONS (other)"),
    ];
    for (method, target, expected) in cases {
        assert_eq!(route(method, target), expected, "{target}");
    }
}

#[test]
fn user_agents_fall_into_classes() {
    let cases = [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/122.0.0.0 Safari/537.36",
            AgentClass::Browser,
        ),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) Mobile/15E148 Safari/604.1", AgentClass::Mobile),
        (
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X) Mobile Safari/537.36 (compatible; Googlebot/2.1)",
            AgentClass::Bot,
        ),
        ("curl/8.4.0", AgentClass::Cli),
        ("python-requests/2.31.0", AgentClass::Cli),
        ("-", AgentClass::Other),
        ("", AgentClass::Other),
    ];
    for (agent, class) in cases {
        assert_eq!(AgentClass::of(agent), class, "{agent}");
    }
}

#[tokio::test]
async fn the_generator_is_deterministic_and_lazy() {
    let first: Vec<String> = generator::access_log(1_000, SEED).collect();
    assert_eq!(first, generator::access_log(1_000, SEED).collect::<Vec<_>>());
    assert_ne!(first, generator::access_log(1_000, SEED + 1).collect::<Vec<_>>());
    // The stream makes lines as they are asked for: taking 10 of a billion
    // is instant.
    let some: Vec<String> = generator::access_log_stream(1_000_000_000, SEED).take(10).collect().await;
    assert_eq!(some.len(), 10);
    // One day of traffic, in order.
    let times: Vec<i64> = first.iter().filter_map(parse_line).map(|r| r.time).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]));
    let all: Vec<i64> = generated(50_000).iter().filter_map(parse_line).map(|r| r.time).collect();
    let (first, last) = (all[0], all[all.len() - 1]);
    assert!(first >= 1_710_028_800 && last < 1_710_028_800 + 86_400 && last - first > 86_000, "{first}..{last}");
}
