//! Web access-log analytics on a genflow pipeline.
//!
//! ```text
//! cargo run --release -p logs                      # 1,000,000 generated lines
//! cargo run --release -p logs -- --lines 50000 --replicas aggregate=2
//! cargo run --release -p logs -- --replicas enrich=8 --queue parse=10000
//! cargo run --release -p logs -- --input /var/log/nginx/access.log
//! zcat access.log.gz | cargo run --release -p logs -- --input -
//! ```
//!
//! Lines go through three stages (see `pipeline.rs`):
//!
//! ```text
//! parse ×2 ──▶ enrich ×N ──▶ aggregate ×M, partitioned by route
//! ```
//!
//! At the end it prints the busiest routes with their error rates and
//! latency percentiles, the status and user-agent mix, traffic by hour, the
//! malformed lines, the pipeline's metrics (which name the bottleneck; the
//! malformed lines are `parse`'s `failed`) and the throughput.
//!
//! What it shows of genflow:
//!
//! - **Backpressure.** The input is a lazy stream (generated, or read from a
//!   file line by line) fed with `feed`; each stage's queue is bounded, so
//!   memory stays flat whatever the size of the log. The progress bar shows
//!   how full each queue is: the stage before a full queue waits for the
//!   stage after it.
//! - **Replicas.** `parse` and `enrich` run on several copies (2 each
//!   unless `--replicas parse=N` or `enrich=N`) taking lines as they are
//!   free (lines are numbered as they are fed, so the malformed ones keep
//!   their line numbers); `aggregate` runs on one (the fastest on two
//!   cores) or, with `--replicas aggregate=N`, on N, each owning a share of
//!   the routes (`partition_by`), so their partial results never overlap.
//! - **Failing items.** `parse` fails a malformed line with
//!   `out.fail(MalformedLine { .. })` instead of dropping it; a task reads
//!   the pipeline's `failures()` while lines are fed and downcasts each
//!   failure back to its line, for the count and the examples in the report
//!   (`MalformedLines` in `pipeline.rs`).
//! - **Live state.** Once a second, `call_aggregate_all` asks each
//!   `aggregate` replica for its partial results while lines flow; the bar
//!   shows the top routes so far.
//! - **Knowing when all went through**, without shutting down: `flush`,
//!   then a call to each stage (`collect_report` in `pipeline.rs`).
//! - **Graceful stop.** Ctrl-C stops reading; every line already fed is
//!   processed and reported, and the exit code is 130. A second Ctrl-C quits
//!   at once.
//!
//! - **Sizes chosen at start.** `--replicas stage=N` and `--queue stage=N`
//!   (each repeatable) go to `Logs::builder()`; a stage name it does not
//!   know, or a 0, is reported before anything starts.
//! - **Monitoring.** Built with `--features prometheus`, `--metrics-addr
//!   127.0.0.1:9000` serves the pipeline's metrics as Prometheus text while
//!   it runs (`prometheus.rs`: `genflow::export` records them every second
//!   through the `metrics` facade).
//! - **Beyond one machine.** Built with `--features nats`, `logs ingest`,
//!   `logs worker` and `logs combine` split the same analysis across
//!   processes joined by NATS JetStream, with a `genflow::nats::Sink` and
//!   `Source`s, acknowledgements held by the aggregate until its state is
//!   stored, and a combined report equal to the single-process one
//!   (`split/mod.rs`); `--json FILE` writes this run's report for
//!   comparison.

#[path = "gen.rs"]
mod generator;
mod pipeline;
#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg(feature = "nats")]
mod split;

use std::{
    fmt::Write as _,
    io,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Parser;
use futures::{StreamExt, future, stream::BoxStream};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::{io::BufReader, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use pipeline::{AgentClass, BoxError, Logs, MalformedLines, Report, RouteStats, Summary, stage};

/// Lines generated when no `--input` is given.
const DEFAULT_LINES: u64 = 1_000_000;

/// How many routes the results table shows.
const TOP_ROUTES: usize = 15;

/// The exit code of a run stopped with Ctrl-C.
const INTERRUPTED: u8 = 130;

/// Web access-log analytics on a genflow pipeline: parse ×2 → enrich ×N → aggregate ×M.
#[derive(Debug, Parser)]
#[command(after_help = "Without --input, it generates a realistic access log (nginx combined format \
                        + request time) from a fixed seed.")]
#[cfg_attr(feature = "nats", command(args_conflicts_with_subcommands = true))]
struct Args {
    /// Built with `--features nats`: the same analysis split across
    /// processes joined by NATS JetStream.
    #[cfg(feature = "nats")]
    #[command(subcommand)]
    command: Option<split::Command>,

    /// Read this access log instead of generating one; `-` reads stdin.
    #[arg(long, value_name = "PATH")]
    input: Option<PathBuf>,

    /// Lines to generate [default: 1000000]; with --input, the most lines to read.
    #[arg(long, value_name = "N")]
    lines: Option<u64>,

    /// Replicas of a stage, as STAGE=N (repeatable), e.g. `enrich=8`
    /// [defaults: parse=2, enrich=2, aggregate=1].
    #[arg(long, value_name = "STAGE=N", value_parser = setting)]
    replicas: Vec<(String, usize)>,

    /// Input queue size of a stage in lines, as STAGE=N (repeatable), e.g.
    /// `parse=10000` [default: 1000 each; per replica for aggregate].
    #[arg(long, value_name = "STAGE=N", value_parser = setting)]
    queue: Vec<(String, usize)>,

    /// Serve the pipeline's metrics as Prometheus text on this address
    /// while the analysis runs, e.g. `127.0.0.1:9000`.
    #[cfg(feature = "prometheus")]
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// Also write the report as JSON to this file (as `logs combine --json` does).
    #[cfg(feature = "nats")]
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// `name=n`; whether the name is a stage and n is not 0 is checked when
/// the pipeline starts.
fn setting(text: &str) -> Result<(String, usize), String> {
    let (name, n) = text.split_once('=').ok_or_else(|| format!("expected STAGE=N, such as enrich=8, not `{text}`"))?;
    let n = n.trim().parse().map_err(|_| format!("expected a count after `{name}=`, not `{n}`"))?;
    Ok((name.trim().to_owned(), n))
}

/// Logs what genflow reports (restarts, panicking items, shutdown) to
/// stderr: `WARN` and above by default, or as `RUST_LOG` says, in the
/// `Targets` syntax (`RUST_LOG=genflow=debug` shows failed items and
/// each replica's drain, in the span of its stage and replica).
fn init_logging() {
    use tracing_subscriber::{filter::Targets, prelude::*};
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing_subscriber::filter::LevelFilter::WARN));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr))
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        run(args).await.unwrap_or_else(|error| {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        })
    });
    // Do not wait for a read of stdin that may still be blocked (after
    // Ctrl-C or `--lines`): nothing needs it any more.
    runtime.shutdown_background();
    code
}

async fn run(args: Args) -> Result<ExitCode, BoxError> {
    #[cfg(feature = "nats")]
    let args = match args.command {
        Some(command) => return split::run(command).await,
        None => args,
    };
    let input = Input::open(&args).await?;
    analyse(&args, input).await
}

/// The lines to analyse.
struct Input {
    lines: BoxStream<'static, String>,
    /// How many lines there will be, when known.
    expected: Option<u64>,
    description: String,
    /// The error that ended reading early, if any.
    read_error: Arc<Mutex<Option<io::Error>>>,
}

impl Input {
    async fn open(args: &Args) -> Result<Input, String> {
        Input::read(args.input.as_deref(), args.lines, generator::DEFAULT_SEED).await
    }

    /// The lines of `input` (`-` for stdin), at most `limit` of them, or
    /// `limit` lines (1,000,000 by default) generated from `seed`.
    async fn read(input: Option<&std::path::Path>, limit: Option<u64>, seed: u64) -> Result<Input, String> {
        let read_error = Arc::new(Mutex::new(None));
        let Some(path) = input else {
            let count = limit.unwrap_or(DEFAULT_LINES);
            return Ok(Input {
                lines: generator::access_log_stream(count, seed).boxed(),
                expected: Some(count),
                description: format!("{} generated lines", thousands(count)),
                read_error,
            });
        };
        let (lines, description) = if path.as_os_str() == "-" {
            (pipeline::read_lines(BufReader::new(tokio::io::stdin())).boxed(), "stdin".to_string())
        } else {
            let cannot_open = |error: io::Error| format!("cannot open {}: {error}", path.display());
            let file = tokio::fs::File::open(path).await.map_err(cannot_open)?;
            if file.metadata().await.map_err(cannot_open)?.is_dir() {
                return Err(cannot_open(io::Error::from(io::ErrorKind::IsADirectory)));
            }
            (pipeline::read_lines(BufReader::with_capacity(1 << 16, file)).boxed(), path.display().to_string())
        };
        // Lines until the first read error, which is kept for the end.
        let error_slot = read_error.clone();
        let lines = lines.scan((), move |(), line| {
            future::ready(match line {
                Ok(line) => Some(line),
                Err(error) => {
                    *error_slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error);
                    None
                }
            })
        });
        let lines = match limit {
            Some(limit) => lines.take(usize::try_from(limit).unwrap_or(usize::MAX)).boxed(),
            None => lines.boxed(),
        };
        Ok(Input { lines, expected: limit, description, read_error })
    }
}

/// Runs the whole analysis.
async fn analyse(args: &Args, input: Input) -> Result<ExitCode, BoxError> {
    let Input { lines, expected, description, read_error } = input;
    let started = Instant::now();
    #[cfg(feature = "prometheus")]
    if let Some(addr) = args.metrics_addr {
        prometheus::serve(addr)?;
    }
    let pipeline = Logs::sized(&args.replicas, &args.queue).await?;
    let shape: Vec<String> = pipeline
        .metrics()
        .stages()
        .iter()
        .map(|s| format!("{} ×{} (queue {})", s.name, s.replicas.len(), thousands(s.capacity)))
        .collect();
    println!("{description}: {}\n", shape.join(" → "));
    // Records until the pipeline has ended, then holds its final counts.
    #[cfg(feature = "prometheus")]
    let _recording = args.metrics_addr.map(|addr| {
        println!("metrics: Prometheus text at http://{addr}/metrics while it runs\n");
        prometheus::record(&pipeline)
    });
    // Taken before any line goes in: until then, failures are dropped.
    let mut malformed = MalformedLines::read(&pipeline)?;

    let stop = CancellationToken::new();
    let ctrl_c = tokio::spawn(stop_on_ctrl_c(stop.clone()));
    let lines = lines.take_until(stop.clone().cancelled_owned());
    let feeding = tokio::spawn({
        let pipeline = pipeline.clone();
        async move { pipeline.feed_lines(lines).await }
    });

    let progress = Progress::new(expected);
    let fed = progress.follow(&pipeline, &malformed, feeding).await??;
    progress.draining(stop.is_cancelled());
    let report = pipeline::collect_report(&pipeline, &mut malformed, fed).await?;
    pipeline.shutdown().await;
    let elapsed = started.elapsed();
    progress.finish();
    ctrl_c.abort();

    let metrics = pipeline.metrics();
    print_report(&report);
    #[cfg(feature = "nats")]
    if let Some(path) = &args.json {
        split::write_json(path, &report)?;
    }
    println!("\n{metrics}\n");
    let accounted = print_accounting(&report, &metrics, fed);
    let rate = fed as f64 / elapsed.as_secs_f64();
    println!("done        {} lines in {elapsed:.2?}: {} lines/s", thousands(fed), thousands(rate as u64));

    if let Some(error) = read_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
        eprintln!("error: reading {description} stopped early: {error}");
        return Ok(ExitCode::FAILURE);
    }
    if !accounted {
        return Ok(ExitCode::FAILURE);
    }
    if stop.is_cancelled() {
        eprintln!("interrupted: stopped after {} lines", thousands(fed));
        return Ok(ExitCode::from(INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Cancels `stop` on the first Ctrl-C; quits on the second.
async fn stop_on_ctrl_c(stop: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_ok() {
        stop.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted twice: quitting without a report");
            std::process::exit(INTERRUPTED.into());
        }
    }
}

// --- Progress ------------------------------------------------------------------------

/// The live progress bar: lines taken by `parse`, throughput, how full each
/// stage's queue is, the malformed lines read from `failures()` so far, and
/// the top routes so far.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(expected: Option<u64>) -> Progress {
        let (bar, head) = match expected {
            Some(lines) => (
                ProgressBar::new(lines),
                "{spinner:.green} {elapsed_precise} [{bar:40.cyan/blue}] {human_pos}/{human_len}",
            ),
            None => (ProgressBar::no_length(), "{spinner:.green} {elapsed_precise} {human_pos}"),
        };
        let template = format!("{head} lines · {{per_sec:0}}\n  queues  {{prefix}}\n  top     {{wide_msg}}");
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("█▉▊▋▌▍▎▏ ");
        bar.set_style(style);
        bar.set_message("…");
        Progress { bar }
    }

    /// Updates the bar until `feeding` ends, and returns its result.
    async fn follow<T>(
        &self,
        pipeline: &Logs,
        malformed: &MalformedLines,
        mut feeding: JoinHandle<T>,
    ) -> Result<T, BoxError> {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_peek = Instant::now();
        loop {
            tokio::select! {
                fed = &mut feeding => return Ok(fed?),
                _ = tick.tick() => {
                    self.update(pipeline, malformed.so_far());
                    if last_peek.elapsed() >= Duration::from_secs(1) {
                        last_peek = Instant::now();
                        // Each replica answers between two lines, with what it has so far.
                        if let Ok(parts) = pipeline.summaries().await {
                            self.bar.set_message(top_so_far(&Summary::merged(&parts)));
                        }
                    }
                }
            }
        }
    }

    fn update(&self, pipeline: &Logs, malformed: u64) {
        let metrics = pipeline.metrics();
        self.bar.set_position(stage(&metrics, "parse").received);
        let queues: Vec<String> = metrics
            .stages()
            .iter()
            .map(|s| format!("{} {:>3.0}%", s.name, 100.0 * s.queued as f64 / s.capacity.max(1) as f64))
            .collect();
        self.bar.set_prefix(format!("{}   (malformed so far: {})", queues.join(" · "), thousands(malformed)));
    }

    fn draining(&self, interrupted: bool) {
        let why = if interrupted { "interrupted: " } else { "" };
        self.bar.set_message(format!("{why}finishing the lines in flight…"));
        self.bar.tick();
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn top_so_far(summary: &Summary) -> String {
    let top: Vec<String> = summary
        .top_routes(3)
        .into_iter()
        .map(|(route, stats)| format!("{route} {}", compact(stats.requests)))
        .collect();
    top.join(" · ")
}

// --- Results -----------------------------------------------------------------------

fn print_report(report: &Report) {
    let summary = &report.summary;
    let requests = summary.requests();
    print_routes(summary);

    let statuses = summary.statuses();
    let status_mix: Vec<String> = (1..=5)
        .filter(|&class| statuses.class(class) > 0)
        .map(|class| format!("{class}xx {}", percent(statuses.class(class), requests)))
        .collect();
    println!("\nstatus      {}", status_mix.join("   "));
    let agents: Vec<String> = AgentClass::ALL
        .iter()
        .map(|&class| format!("{} {}", class.name(), percent(summary.agents[class as usize], requests)))
        .collect();
    println!("agents      {}", agents.join("   "));
    if let Some(line) = traffic_line(summary) {
        println!("traffic     {line}");
    }

    let (malformed, lines) = (&report.malformed, report.parse.lines);
    print!(
        "malformed   {} of {} lines ({}), failed by parse",
        thousands(malformed.count),
        thousands(lines),
        percent(malformed.count, lines)
    );
    println!("{}", if malformed.examples.is_empty() { "" } else { ", such as:" });
    for example in &malformed.examples {
        let text = if example.text.is_empty() { "(empty line)".to_string() } else { printable(&example.text) };
        println!("            line {}: {text}", thousands(example.number));
    }
}

fn print_routes(summary: &Summary) {
    let top = summary.top_routes(TOP_ROUTES);
    let width = top.iter().map(|(route, _)| route.chars().count()).max().unwrap_or(0).max(5);
    println!("Top {} of {} routes, by requests", top.len(), summary.routes.len());
    println!(
        "{:<width$} {:>10} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "route", "requests", "share", "4xx", "5xx", "p50", "p95", "p99", "p50 size"
    );
    let requests = summary.requests();
    for (route, stats) in &top {
        println!(
            "{route:<width$} {:>10} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
            thousands(stats.requests),
            percent(stats.requests, requests),
            percent(stats.statuses.class(4), stats.requests),
            percent(stats.statuses.class(5), stats.requests),
            latency(stats, 50),
            latency(stats, 95),
            latency(stats, 99),
            stats.bytes.percentile(50).map_or("-".to_string(), size),
        );
    }
    let shown: u64 = top.iter().map(|(_, stats)| stats.requests).sum();
    if top.len() < summary.routes.len() {
        println!("({} more routes: {} requests)", summary.routes.len() - top.len(), thousands(requests - shown));
    }
}

/// Requests per hour as a sparkline, with the time span and the busiest
/// hour; one character stands for several hours if the log spans days.
fn traffic_line(summary: &Summary) -> Option<String> {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    const MAX_WIDTH: i64 = 72;
    let (&first, _) = summary.hours.first_key_value()?;
    let (&last, _) = summary.hours.last_key_value()?;
    let hours_per_char = (last - first + MAX_WIDTH) / MAX_WIDTH;
    let mut columns = vec![0u64; ((last - first) / hours_per_char + 1) as usize];
    for (&hour, &count) in &summary.hours {
        columns[((hour - first) / hours_per_char) as usize] += count;
    }
    let max = columns.iter().copied().max().unwrap_or(0).max(1);
    let mut line: String = columns
        .iter()
        .map(|&count| if count == 0 { ' ' } else { BARS[((count * 7 + max / 2) / max) as usize] })
        .collect();
    let (&busiest, &count) = summary.hours.iter().max_by_key(|&(&hour, &count)| (count, -hour))?;
    let per = if hours_per_char == 1 { String::new() } else { format!(", {hours_per_char} h per mark") };
    let _ = write!(
        line,
        "  {} – {} UTC{per}; busiest hour {} ({} requests)",
        hour_text(first),
        hour_text(last + 1),
        hour_text(busiest),
        thousands(count)
    );
    Some(line)
}

/// `2024-03-10 13:00` for an hour since the Unix epoch.
fn hour_text(hour: i64) -> String {
    let (year, month, day) = generator::civil_from_days(hour.div_euclid(24));
    format!("{year}-{month:02}-{day:02} {:02}:00", hour.rem_euclid(24))
}

/// Checks that every line fed is accounted for, stage by stage, and says
/// so. `false` if anything is missing.
fn print_accounting(report: &Report, metrics: &genflow::Metrics, fed: u64) -> bool {
    let (parse, enrich, aggregate) = (stage(metrics, "parse"), stage(metrics, "enrich"), stage(metrics, "aggregate"));
    let malformed = report.malformed.count;
    let aggregated = report.summary.requests();
    let checks = [
        ("parse received every line fed", parse.received == fed),
        ("every line parsed or failed", parse.emitted + parse.failed == parse.received),
        ("parse failed exactly the malformed lines", parse.failed == malformed),
        ("every failure was read from failures()", metrics.failures_dropped() == 0),
        ("parse passed on what it parsed", report.parse.parsed == parse.emitted),
        ("enrich received every parsed line", enrich.received == parse.emitted),
        ("aggregate received every enriched line", aggregate.received == enrich.emitted),
        ("aggregate recorded every hit it received", aggregated == aggregate.received),
    ];
    let failed: Vec<&str> = checks.iter().filter(|(_, ok)| !ok).map(|(what, _)| *what).collect();
    println!(
        "accounting  {} lines fed = {} parsed + {} failed ({} malformed); {} aggregated  {}",
        thousands(fed),
        thousands(parse.emitted),
        thousands(parse.failed),
        thousands(malformed),
        thousands(aggregated),
        if failed.is_empty() { "✓" } else { "✗" }
    );
    for what in &failed {
        eprintln!("error: accounting: not true that {what}");
    }
    failed.is_empty()
}

// --- Formatting ----------------------------------------------------------------------

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `123456` → `123.5k`.
fn compact(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

/// `part` as a share of `whole`: `12.3%`, or `0.05%` for small shares.
fn percent(part: u64, whole: u64) -> String {
    let share = 100.0 * part as f64 / whole.max(1) as f64;
    if share > 0.0 && share < 1.0 { format!("{share:.2}%") } else { format!("{share:.1}%") }
}

fn latency(stats: &RouteStats, p: u64) -> String {
    match stats.latency_us.percentile(p) {
        None => "-".to_string(),
        Some(us @ 0..1_000_000) => format!("{:.1} ms", us as f64 / 1e3),
        Some(us) => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// `text` with control characters escaped, safe to print on a terminal.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}
