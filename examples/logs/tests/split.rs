//! The flagship split across processes (feature `nats`), on a real
//! `nats-server -js`: `logs ingest` publishes the records of a generated
//! log by route partition, two `logs worker` processes each aggregate half
//! of the partitions, and `logs combine` merges their partial reports into
//! exactly the report of the single-process run on the same log, also
//! when a worker crashed between writing a checkpoint and acking its
//! messages and was started again. The partition of a record is the
//! `aggregate` replica the single-process pipeline gives its route.

#[allow(dead_code, reason = "the example's modules; the tests use part of them")]
#[path = "../src/gen.rs"]
mod generator;
#[allow(dead_code, reason = "shared with genflow's tests; these use part of it")]
#[path = "../../../tests/support/nats_server.rs"]
mod nats_server;
#[allow(dead_code, reason = "the example's modules; the tests use part of them")]
#[path = "../src/pipeline.rs"]
mod pipeline;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use futures::stream;
use nats_server::NatsServer;
use pipeline::{Logs, MalformedLines, Report, collect_report, route_partition, sequential};

/// The `logs` program, built with the `nats` feature.
const LOGS: &str = env!("CARGO_BIN_EXE_logs");

/// How long one run of the program may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(180);

/// The exit code of `logs worker --exit-after-checkpoints`.
const CRASHED: i32 = 86;

/// A run of `logs`, its output in files of `dir`.
struct Run {
    child: Child,
    what: String,
    out: PathBuf,
    err: PathBuf,
}

impl Run {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Run {
        let (out, err) = (dir.join(format!("{name}.out")), dir.join(format!("{name}.err")));
        let child = Command::new(LOGS)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("a file for stdout"))
            .stderr(fs::File::create(&err).expect("a file for stderr"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {LOGS}: {e}"));
        Run { child, what: format!("logs {}", args.join(" ")), out, err }
    }

    /// Waits (polling, up to [`DEADLINE`]) for the program to exit; its
    /// status and stdout.
    fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("`{}` still running after {DEADLINE:?}; stderr:\n{}", self.what, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, fs::read_to_string(&self.out).unwrap_or_default())
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the program, which must succeed; its stdout.
    fn succeeds(self) -> String {
        let (what, err) = (self.what.clone(), self.err.clone());
        let (status, out) = self.wait();
        assert!(
            status.success(),
            "`{what}` failed ({status}); stdout:\n{out}\nstderr:\n{}",
            fs::read_to_string(err).unwrap_or_default()
        );
        out
    }
}

/// Runs `logs args..` in `dir` to its end; it must succeed.
fn logs(dir: &Path, name: &str, args: &[&str]) -> String {
    Run::start(dir, name, args).succeeds()
}

/// A report written as JSON (`--json`, `--report`), as a `T`.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

/// The `covers` and `duplicates` of a partial report.
fn coverage(path: &Path) -> (Vec<u32>, u64) {
    let part: serde_json::Value = read_json(path);
    let covers = part["covers"].as_array().expect("covers").iter().map(|p| p.as_u64().unwrap() as u32).collect();
    (covers, part["duplicates"].as_u64().expect("duplicates"))
}

/// `19886` → `19,886`, as the program writes counts.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// What the single-process pipeline reports for `lines` generated lines
/// (`tests/logs.rs` checks that the pipeline's report is this one).
fn expected(lines: u64) -> Report {
    sequential(generator::access_log(lines, generator::DEFAULT_SEED))
}

#[test]
fn two_workers_report_together_what_one_process_reports() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir = dir.path();

    let ingested = logs(dir, "ingest", &["ingest", "--nats", &url, "--lines", "20000", "--partitions", "4"]);
    let expected = expected(20_000);
    assert!(ingested.contains(&format!("{} malformed", expected.malformed.count)), "{ingested}");
    // Run again, within the stream's duplicate window: the message ids
    // (line numbers) keep every record from being stored twice.
    let again = logs(dir, "ingest-again", &["ingest", "--nats", &url, "--lines", "20000", "--partitions", "4"]);
    let stored = format!("stored      0 records ({} stored before, not again)", thousands(expected.parse.parsed));
    assert!(again.contains(&stored), "{again}");

    // The two workers run at once, each on two partitions.
    let a =
        Run::start(dir, "a", &["worker", "--nats", &url, "--partitions", "0,2", "--name", "a", "--report", "a.json"]);
    let b =
        Run::start(dir, "b", &["worker", "--nats", &url, "--partitions", "1,3", "--name", "b", "--report", "b.json"]);
    let (a, b) = (a.succeeds(), b.succeeds());
    assert!(a.starts_with("worker a: partitions 0, 2 of 4"), "{a}");
    assert!(b.starts_with("worker b: partitions 1, 3 of 4"), "{b}");
    // Nothing was delivered twice in a run without faults.
    assert_eq!(coverage(&dir.join("a.json")), (vec![0, 2], 0));
    assert_eq!(coverage(&dir.join("b.json")), (vec![1, 3], 0));

    logs(dir, "combine", &["combine", "a.json", "b.json", "--json", "combined.json"]);
    logs(dir, "single", &["--lines", "20000", "--json", "single.json"]);
    let combined: Report = read_json(&dir.join("combined.json"));
    let single: Report = read_json(&dir.join("single.json"));
    assert_eq!(combined.summary.routes.len(), expected.summary.routes.len());
    assert_eq!(combined.summary.requests(), expected.parse.parsed);
    assert_eq!(combined, expected);
    assert_eq!(combined, single);
    // The two text reports agree too, line for line.
    let text = |name: &str| fs::read_to_string(dir.join(name)).expect("the program's output");
    let (combined_text, single_text) = (text("combine.out"), text("single.out"));
    let routes_table =
        |out: &str| out.lines().skip_while(|l| !l.starts_with("Top ")).take(20).collect::<Vec<_>>().join("\n");
    assert_eq!(routes_table(&combined_text), routes_table(&single_text));

    // Half the partitions are not a report.
    let (status, _) = Run::start(dir, "half", &["combine", "a.json"]).wait();
    assert!(!status.success());
    let error = fs::read_to_string(dir.join("half.err")).expect("stderr");
    assert!(error.contains("partitions 1, 3 of 4 are covered by no partial report"), "{error}");
}

#[test]
fn a_worker_that_crashed_resumes_and_counts_every_line_once() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir = dir.path();
    logs(dir, "ingest", &["ingest", "--nats", &url, "--lines", "10000", "--partitions", "4", "--codec", "json"]);

    // Exits as if it crashed right after its 6th checkpoint was written,
    // before the messages it counted were acked.
    let worker = ["worker", "--nats", &url, "--partitions", "0,2", "--codec", "json", "--ack-wait", "1s"];
    let crash = [&worker[..], &["--exit-after-checkpoints", "6"]].concat();
    let (status, _) = Run::start(dir, "crash", &crash).wait();
    assert_eq!(status.code(), Some(CRASHED), "the worker stopped at its 6th checkpoint");

    // Started again, it resumes from the checkpoints; the messages that
    // were not acked come again and are recognised.
    logs(dir, "resumed", &[&worker[..], &["--report", "a.json"]].concat());
    let (covers, duplicates) = coverage(&dir.join("a.json"));
    assert_eq!(covers, [0, 2]);
    assert!(duplicates > 0, "the messages of the last checkpoint before the crash were delivered again");
    logs(dir, "b", &["worker", "--nats", &url, "--partitions", "1,3", "--codec", "json", "--report", "b.json"]);
    logs(dir, "combine", &["combine", "a.json", "b.json", "--json", "combined.json"]);
    let combined: Report = read_json(&dir.join("combined.json"));
    assert_eq!(combined, expected(10_000));

    // Its partitions are done: a third start reports them again at once.
    logs(dir, "again", &[&worker[..], &["--report", "again.json"]].concat());
    let again: serde_json::Value = read_json(&dir.join("again.json"));
    assert_eq!(again, read_json::<serde_json::Value>(&dir.join("a.json")));
}

#[test]
fn a_worker_rides_out_the_broker_being_away() {
    let mut server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir = dir.path();
    const LINES: u64 = 100_000;
    logs(dir, "ingest", &["ingest", "--nats", &url, "--lines", &LINES.to_string(), "--partitions", "2"]);

    let worker = Run::start(dir, "worker", &["worker", "--nats", &url, "--partitions", "0,1", "--report", "w.json"]);
    // Mid-run: once the first checkpoint of partition 0 is stored.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let client = async_nats::connect(url.as_str()).await.expect("a connection");
        let jetstream = async_nats::jetstream::new(client);
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "no checkpoint written; stderr:\n{}", worker.stderr());
            if let Ok(bucket) = jetstream.get_key_value("LOGS_STATE").await {
                if let Ok(Some(_)) = bucket.entry("p0").await {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // The broker goes away until the worker has found it gone, then comes
    // back on the same port and store. If the aggregate held messages when
    // the broker left, the worker finds it gone in a checkpoint it cannot
    // write (the timer emits one within 250 ms; the write's answer times
    // out within 5 s). If every message it had pulled was checkpointed and
    // acked just before, it finds it gone only in its pulls: it is found
    // gone once their pause between tries has grown to its cap (5 s, after
    // more than 6 s of tries).
    server.stop();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stderr = worker.stderr();
        if stderr.contains("cannot write the checkpoint yet") || stderr.contains("pulling again in 5s") {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never found the broker gone; stderr:\n{stderr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.restart();

    worker.succeeds();
    logs(dir, "combine", &["combine", "w.json", "--json", "combined.json"]);
    let combined: Report = read_json(&dir.join("combined.json"));
    assert_eq!(combined, expected(LINES));
}

/// The partition `logs ingest` gives a record is the `aggregate` replica
/// the single-process pipeline gives its route, for several counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_partition_is_its_routes_aggregate_replica() {
    let lines: Vec<String> = generator::access_log(5_000, generator::DEFAULT_SEED).collect();
    for replicas in [2, 3, 4] {
        let pipeline = Logs::sized(&[("aggregate".to_string(), replicas)], &[]).await.expect("valid sizes");
        let mut malformed = MalformedLines::read(&pipeline).expect("failures() not taken yet");
        let fed = pipeline.feed_lines(stream::iter(lines.clone())).await.expect("the pipeline is running");
        let report = tokio::time::timeout(Duration::from_secs(60), collect_report(&pipeline, &mut malformed, fed))
            .await
            .expect("every line went through in time")
            .expect("the stages answer");
        let parts = pipeline.summaries().await.expect("each replica answers");
        pipeline.shutdown().await;
        assert_eq!(parts.len(), replicas);
        let mut routes = 0;
        for (replica, part) in parts.iter().enumerate() {
            for route in part.routes.keys() {
                assert_eq!(route_partition(route, replicas as u32), replica as u32, "{route} of {replicas}");
            }
            routes += part.routes.len();
        }
        assert_eq!(routes, report.summary.routes.len());
        assert!(parts.iter().filter(|part| !part.routes.is_empty()).count() > 1, "routes spread over replicas");
    }
}
