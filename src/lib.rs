//! GenServer-style actors and backpressured multi-stage pipelines on Tokio.
//!
//! genflow has two layers:
//!
//! 1. **Servers.** A [`GenServer`] is state that handles one message at a time
//!    from its own bounded queue: *calls* wait for a response, *casts* do
//!    not. [`make_registry`] declares a fixed set of servers as one struct,
//!    generating `start`, typed `call_<name>` / `cast_<name>` methods,
//!    timeouts, graceful `shutdown` and `abort`. A panicking handler is
//!    restarted with fresh state, within an OTP-style [`RestartLimit`]. A
//!    server can send itself a message later or periodically (a [`Timer`]).
//! 2. **Pipelines.** A [`Stage`] is a server that also processes items.
//!    [`pipeline`](macro@pipeline) wires stages in order, each emitting into
//!    the next one's bounded queue, so the whole chain is backpressured end
//!    to end. It adds [`Stream`](futures::Stream)/[`Sink`](futures::Sink)
//!    adapters, replicas of a stage (demand-driven, partitioned by key, or
//!    order-restoring), graceful drain and per-stage [`Metrics`], and keeps
//!    `call_<stage>` / `cast_<stage>` access to every running stage.
//!    [`stage`](macro@stage) turns a function into a stage, or fills in the
//!    `GenServer` items a short `impl Stage` block leaves out.
//!
//! Beside the engine: [`ack`], end-to-end acknowledgement (an input sent
//! with an [`Ack`](ack::Ack) is acknowledged once every item made from
//! it has left the pipeline, as delivered, failed or dropped: what a
//! source that can deliver again needs for at-least-once), and `nats`
//! (feature `nats`), pipeline segments joined by NATS JetStream.
//!
//! The [`harness`] measures a pipeline's throughput under backpressure and
//! reports it stage by stage, naming the bottleneck.
//!
//! # A registry
//!
//! ```
//! use genflow::GenServer;
//!
//! struct Greeter {
//!     registry: App,
//! }
//!
//! impl GenServer for Greeter {
//!     type Message = String;
//!     type Response = String;
//!     type Registry = App;
//!
//!     fn new(registry: App) -> Self {
//!         Greeter { registry }
//!     }
//!
//!     async fn handle_call(&mut self, name: String) -> String {
//!         format!("{}, {name}!", self.registry.greeting)
//!     }
//!
//!     async fn handle_cast(&mut self, _: String) {}
//! }
//!
//! #[genflow::make_registry{ greeter: Greeter }]
//! struct App {
//!     greeting: &'static str,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = App::start("Hello").await;
//! assert_eq!(app.call_greeter("genflow".into()).await?, "Hello, genflow!");
//! app.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # A pipeline
//!
//! ```
//! use futures::StreamExt;
//! use genflow::{Emitter, GenServer, Stage};
//!
//! struct Words;
//!
//! impl GenServer for Words {
//!     type Message = ();
//!     type Response = ();
//!     type Registry = Count;
//!     fn new(_: Count) -> Self {
//!         Words
//!     }
//!     async fn handle_call(&mut self, _: ()) {}
//!     async fn handle_cast(&mut self, _: ()) {}
//! }
//!
//! impl Stage for Words {
//!     type In = String;
//!     type Out = String;
//!     async fn process(&mut self, line: String, out: &mut Emitter<String>) {
//!         for word in line.split_whitespace() {
//!             out.emit(word.to_lowercase()).await;
//!         }
//!     }
//! }
//!
//! struct Tally {
//!     words: u64,
//! }
//!
//! impl GenServer for Tally {
//!     type Message = ();
//!     type Response = u64;
//!     type Registry = Count;
//!     fn new(_: Count) -> Self {
//!         Tally { words: 0 }
//!     }
//!     async fn handle_call(&mut self, _: ()) -> u64 {
//!         self.words
//!     }
//!     async fn handle_cast(&mut self, _: ()) {}
//! }
//!
//! impl Stage for Tally {
//!     type In = String;
//!     type Out = (String, u64);
//!     async fn process(&mut self, word: String, out: &mut Emitter<(String, u64)>) {
//!         self.words += 1;
//!         out.emit((word, self.words)).await;
//!     }
//! }
//!
//! #[genflow::pipeline{ words: Words, tally: Tally }]
//! struct Count;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let count = Count::start().await;
//! let mut output = count.output().expect("taken once");
//! let lines = futures::stream::iter(["the quick fox", "The lazy dog"].map(String::from));
//! assert_eq!(count.feed(lines).await?, 2);
//! let words: Vec<(String, u64)> = output.by_ref().take(6).collect().await;
//! assert_eq!(words[3], ("the".to_string(), 4));
//! assert_eq!(count.call_tally(()).await?, 6); // calls reach the running stage
//! count.shutdown().await; // drain every stage, end the output
//! assert_eq!(output.next().await, None);
//! println!("{}", count.metrics());
//! # Ok(())
//! # }
//! ```
//!
//! # Runtime
//!
//! Everything runs on the Tokio runtime that calls `start`, multi-thread or
//! `current_thread`; timeouts and a server's own timers
//! ([`GenServer::send_after`], [`GenServer::send_interval`]) need its
//! timers. The code the macros generate
//! names only `::genflow` paths, so your crate needs no Tokio features of its
//! own for it.
#![warn(unreachable_pub, missing_docs, rust_2018_idioms)]
#![doc(test(no_crate_inject, attr(deny(warnings, rust_2018_idioms))))]
// On docs.rs (nightly rustdoc), feature-gated items say which feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod export;
pub mod harness;
mod loom;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
pub mod pipeline;
mod registry;
mod server;

#[doc(hidden)]
pub mod __private;

pub use config::{Builder, ConfigError, MAX_REPLICAS};
pub use error::FlushError;
pub use error::{CallError, SendError};
pub use pipeline::Limit;
pub use pipeline::ack;
pub use pipeline::{
    AckedInput, AckedOutput, AckedSink, Emitter, Failure, Failures, InputSink, Metrics, Output, Pipeline,
    ReplicaMetrics, Stage, StageMetrics,
};
pub use server::{GenServer, RestartLimit, Timer, TimerError};

/// Declares a registry: a fixed set of [`GenServer`]s started, called and
/// stopped together.
///
/// ```text
/// #[genflow::make_registry{ name: ServerType, other: OtherType, ... }]
/// struct App { user fields }      // or a unit struct: struct App;
/// ```
///
/// Every server type must have `type Registry = App`. The struct may be a
/// unit struct or have named fields; server types may be generic
/// (`worker: Worker<u8>`). The struct must not derive `Clone` (the macro
/// implements it) and cannot be a tuple struct or generic.
///
/// The list may be empty (`#[make_registry{}]`, as in genserver): the
/// registry then only holds its fields, and `start`, `shutdown` and `abort`
/// return at once. Both macros can be written inside `macro_rules!`, with
/// entries, fields and types coming from the macro's caller.
///
/// # Generated items
///
/// | item | meaning |
/// |---|---|
/// | `App::start(fields..).await -> App` | spawn every server; returns once each ran `new` + `init` |
/// | `App::builder(fields..)` | a [`Builder`]: `.queue_size("server", n).start().await -> Result<App, ConfigError>` |
/// | `call_<name>(msg).await` | `Result<Response, CallError<Message>>` |
/// | `call_<name>_with_timeout(msg, d).await` | the same, with a deadline covering queueing |
/// | `cast_<name>(msg).await` | `Result<(), SendError<Message>>`, waits for queue room |
/// | `try_cast_<name>(msg)` | never waits: `Full` or `Closed` |
/// | `shutdown().await` | handle what is queued, close the queues, run `terminate`, join |
/// | `abort()` | stop every server at its next `.await` |
///
/// `App` implements `Clone`; every server gets a clone in
/// [`GenServer::new`], so servers can call each other. Those copies do not
/// keep the registry alive: dropping the last copy held outside the servers
/// shuts the registry down in the background. The user fields stay readable
/// as fields from every server (`self.registry.field`).
///
/// That background drain is a task on the registry's runtime, so it needs
/// the runtime alive until it ends: a runtime dropped right after the last
/// handle (say, at the end of `main`) abandons what was queued, and
/// `terminate` does not run. A `tracing` warning reports it. Call
/// `shutdown().await` before the runtime ends to be sure everything queued
/// was handled.
///
/// # Examples
///
/// A server calling another one through the registry:
///
/// ```
/// use genflow::GenServer;
///
/// struct Counter(u64);
///
/// impl GenServer for Counter {
///     type Message = ();
///     type Response = u64;
///     type Registry = App;
///     fn new(_: App) -> Self {
///         Counter(0)
///     }
///     async fn handle_call(&mut self, _: ()) -> u64 {
///         self.0 += 1;
///         self.0
///     }
///     async fn handle_cast(&mut self, _: ()) {}
/// }
///
/// struct Greeter {
///     registry: App,
/// }
///
/// impl GenServer for Greeter {
///     type Message = String;
///     type Response = String;
///     type Registry = App;
///     fn new(registry: App) -> Self {
///         Greeter { registry }
///     }
///     async fn handle_call(&mut self, name: String) -> String {
///         let n = self.registry.call_counter(()).await.unwrap_or(0);
///         format!("{}{name} #{n}", self.registry.prefix)
///     }
///     async fn handle_cast(&mut self, _: String) {}
/// }
///
/// #[genflow::make_registry{ counter: Counter, greeter: Greeter }]
/// struct App {
///     prefix: String,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let app = App::start("hi ".to_string()).await;
/// assert_eq!(app.call_greeter("ada".into()).await?, "hi ada #1");
/// assert_eq!(app.call_greeter("bob".into()).await?, "hi bob #2");
/// app.shutdown().await;
/// assert!(app.call_counter(()).await.is_err());
/// # Ok(())
/// # }
/// ```
#[doc(inline)]
pub use genflow_macros::make_registry;

/// Declares a pipeline: [`Stage`]s wired in order, each emitting into the
/// next one's bounded queue.
///
/// ```text
/// #[genflow::pipeline{
///     first: First,                                   // In = A, Out = B
///     #[replicas(4)]
///     second: Second,                                 // In = B, Out = C
///     #[replicas(2, partition_by = C::key)]
///     third: Third,                                   // In = C, Out = D
/// }]
/// struct Flow { user fields }
/// ```
///
/// A stage's `Out` must be the next stage's `In`; a mismatch is a compile
/// error at the stage. Every stage type must have `type Registry = Flow`.
///
/// # Generated items
///
/// Everything [`make_registry`] generates, for each stage (`call_<stage>`
/// reaches the running stage's state, served between items), plus:
///
/// | item | meaning |
/// |---|---|
/// | `send(item).await`, `try_send(item)` | push one item into the first stage |
/// | `feed(stream).await` | push a whole `Stream`, backpressured; `Ok(count)` |
/// | `sink()`, `sink_<stage>()` | an [`InputSink`] into the first stage, or any stage |
/// | `output()` | `Option<`[`Output`]`<Out>>`: the last stage's items as a `Stream`; `Some` once |
/// | `failures()` | `Option<`[`Failures`]`>`: every stage's failed items ([`Failure`]) as a `Stream`; `Some` once |
/// | `call_<stage>_all(msg).await` | every replica's response, in replica order (`Message: Clone`) |
/// | `cast_<stage>_all(msg).await` | the same message cast to every replica |
/// | `metrics()` | a [`Metrics`] snapshot, readable at any time, also after shutdown |
/// | `flush().await` | wait until every item accepted before has left the pipeline, without shutting down ([`Pipeline::flush`], [`FlushError`]) |
/// | `shutdown().await` | close the input, drain every stage in order, end the output |
///
/// # Stage options
///
/// - `#[replicas(N)]` runs N instances, each with its own state. An idle
///   replica takes the next items from the stage's shared queue
///   (demand-driven), at most [`pipeline::BATCH`] at a time.
/// - `#[replicas(N, partition_by = path)]`, with `path: fn(&In) -> K` and
///   `K: Hash`, gives each replica its own queue and sends equal keys to the
///   same replica, so the order of each key is kept. A key function that
///   panics fails that one item and nothing else: an item the previous stage
///   emitted fails *at the keyed stage* (a [`Failure`] of that stage with
///   `is_panic()`, naming replica 0, which also counts the item as
///   `received`, `processed` and `failed`, so every metrics identity holds);
///   an item sent from outside (`send`, `try_send`, `feed`, sinks) is handed
///   back in [`SendError::KeyPanicked`] without entering the pipeline.
/// - `#[replicas(N, ordered)]` restores input order after the replicas: the
///   outputs of each input stay together and leave in input order. A
///   replica's outputs wait until every earlier input is done, and replicas
///   run ahead of the oldest unfinished input by at most a *window* of
///   `2 × N ×` [`pipeline::BATCH`] inputs (then they wait), so memory stays
///   bounded. One slow item therefore holds up the stage's output, not its
///   other replicas' work up to the window. `ordered` and `partition_by`
///   cannot be combined (`partition_by` already keeps each key's order).
/// - N is a literal or the path of a `const usize` (`#[replicas(WORKERS,
///   ordered)]`); a literal 0 is an error, a const that is 0 fails to compile.
///   It is the default: `Flow::builder(fields..).replicas("stage", n)
///   .queue_size("stage", n).start().await` (a [`Builder`]) chooses replica
///   counts and queue sizes at run time, and returns a [`ConfigError`],
///   starting nothing, for an unknown stage or a 0.
/// - `#[fused]` runs the stage in the task of the stage before it, with no
///   queue between them: that stage's batches of outputs (up to
///   [`pipeline::HANDOVER`], 512 items; it also takes that many from its
///   queue at a time unless its `max_demand` is set) go straight into this
///   one's `process` (Flink's operator chaining, Akka Streams' operator
///   fusion). Both stages have one replica: `#[replicas(N)]` with
///   N > 1 (or a const count) or `ordered` on either, and `#[fused]` on the
///   first stage, are compile errors; the builder returns
///   [`ConfigError::FusedReplicas`] for more than one. The fused stage
///   keeps its calls and casts (served between batches, between its items
///   and between the items of the stages before it in the group), its
///   metrics (`busy` of the stage before leaves out the time
///   spent in it), its failures, restarts and `flush`. `sink_<stage>()`
///   sends into its own input queue, which `queue_size` bounds and
///   `queued` counts. See the pipeline module's docs, "Fusion".
/// - `#[batch(size = N, timeout = d)]` makes the stage receive `Vec<T>`
///   batches of the `T` items the stage before it emits (or that are sent
///   into the pipeline, for the first stage, whose `send`/`feed`/sinks then
///   take `T`): each replica cuts a batch at `N` items, once the oldest of
///   them waited `d` (a `std::time::Duration` expression), at `flush()`
///   and at shutdown (Akka Streams' `groupedWithin`, Broadway's batchers).
///   The stage's `In` must be a `Vec`; `received`/`processed`/`failed`
///   count items, [`Emitter::fail`] fails the whole batch and
///   [`Emitter::fail_items`] some of its items. `N` is a literal or a const
///   (0 is a compile error); [`Builder::batch`] sets both at start. Not
///   with `#[fused]`, `ordered` or `#[concurrency(..)]` (compile errors).
///   See the guide, "Batching by size and time".
/// - `#[concurrency(N)]` (or `#[concurrency(N, ordered)]`) keeps up to N
///   futures handed to [`Emitter::emit_async`] /
///   [`Emitter::try_emit_async`] in flight per replica, while `process`
///   still touches the stage's state one item at a time (Akka Streams'
///   `mapAsync`); outputs leave as the futures complete, or in hand-over
///   order with `ordered`. [`Builder::concurrency`] sets N at start. See
///   the guide, "Concurrent I/O stages".
/// - `#[max_demand(N)]`: how many items a replica takes at a time;
///   `#[rate_limit(n, per = d)]`: at most `n` items per `d` through the
///   stage, over its replicas. See the guide, "Demand" and "Rate limits".
///
/// With one replica everywhere, order is kept end to end. An item failed
/// with [`Emitter::fail`] (or by a panic in `process`) fails alone; with
/// `ordered`, its (missing) outputs leave a gap in the order and nothing
/// else.
///
/// # Output
///
/// Until `output()` is taken (and after the [`Output`] is dropped), the last
/// stage's items are dropped and counted in its `dropped` metric, so a
/// pipeline kept for its side effects never blocks. Once it is taken, keep
/// reading it: an output that is not read is backpressure, and `shutdown`
/// waits for the items it holds to be read (or for the output to be
/// dropped).
///
/// # Examples
///
/// See the [crate documentation](crate#a-pipeline) and
/// `examples/pipeline_basics.rs`.
#[doc(inline)]
pub use genflow_macros::pipeline;

/// Declares a pipeline [`Stage`] without the [`GenServer`] boilerplate: on a
/// function, or on an `impl Stage` block.
///
/// # On a function
///
/// ```text
/// #[genflow::stage]
/// [pub] [async] fn name(item: In) -> Shape { .. }
/// [pub] [async] fn name(item: In, out: &mut Emitter<Out>) [-> Result<(), E>] { .. }
/// ```
///
/// generates, beside the function (which stays as it is, callable from
/// your code and tests), a stage type named after it in `UpperCamelCase`
/// (`parse_line` → `ParseLine<R>`), generic over its registry so the same
/// function serves any pipeline: name it `ParseLine<Flow>` in
/// `#[pipeline{..}]`. It takes no calls (`Message = Response = ()`) and has
/// no state. `process` calls the function and emits what it returns, read
/// off the return type as written:
///
/// | returns | emits per item | `Out` |
/// |---|---|---|
/// | `T` | `T` | `T` |
/// | `Option<T>` | the value, if any | `T` |
/// | `Vec<T>`, `impl Iterator<Item = T>` | every item, in order | `T` |
/// | `Result<S, E>` | `Ok` as `S` says; `Err` fails the item | as `S` |
/// | `()` or nothing | nothing (a stage for side effects) | `()` |
///
/// With `out: &mut Emitter<Out>` as second parameter the function emits
/// itself (any number of items, with backpressure) and returns `()` or
/// `Result<(), E>`. Use that form when `Out` is itself an `Option`, `Vec`
/// or `Result` to be emitted whole.
///
/// `E` is anything that converts into `Box<dyn Error + Send + Sync>`. An
/// `Err` fails that one item, as [`Emitter::fail`] does: it counts in the
/// stage's `failed` metric, comes out of the pipeline's `failures()` with
/// the error (downcastable to `E`, `is_panic() == false`), nothing is
/// printed to stderr, and the stage goes on. Items already emitted for it
/// stay emitted. The future of an
/// `async fn` must be `Send`.
///
/// # On an `impl Stage` block
///
/// ```text
/// #[genflow::stage]
/// impl Stage for Type {
///     type Registry = Flow;          // required
///     type In = ..; type Out = ..;
///     async fn process(..) { .. }
///     // optional, any GenServer or Stage item: type Message, type Response, fn new,
///     // async fn handle_call, handle_cast, init, terminate, finish, ...
/// }
/// ```
///
/// moves the `GenServer` items written in the block into their own impl
/// and fills in the rest: `Message` and `Response` default to `()`, `new`
/// to [`Default::default`] (so `#[derive(Default)]` on the state), and,
/// when `Response` is left out, `handle_call` to a no-op.
/// [`handle_cast`](GenServer::handle_cast) and the hooks keep the trait's
/// defaults. A block that declares `type Response` must write
/// `handle_call`.
///
/// # Errors
///
/// A compile error, at the offending part, for: arguments to the attribute,
/// a generic or `self`-taking function, a function with no item parameter
/// or with parameters beyond the item and the emitter, an emitter-taking
/// function returning items, `impl Trait` other than `Iterator`, a block that is not `impl Stage for ..`, a block without
/// `type Registry`, and a block with `type Response` but no `handle_call`.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// use genflow::{Emitter, Stage};
///
/// #[genflow::stage]
/// fn words(line: String) -> Vec<String> {
///     line.split_whitespace().map(str::to_lowercase).collect()
/// }
///
/// #[genflow::stage]
/// fn number(word: String) -> Result<u64, std::num::ParseIntError> {
///     word.parse()
/// }
///
/// /// Emits the running total; `call_total(())` reads it.
/// #[derive(Default)]
/// struct Total(u64);
///
/// #[genflow::stage]
/// impl Stage for Total {
///     type Registry = Sums;
///     type Response = u64;
///     type In = u64;
///     type Out = u64;
///     async fn handle_call(&mut self, _: ()) -> u64 {
///         self.0
///     }
///     async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
///         self.0 += n;
///         out.emit(self.0).await;
///     }
/// }
///
/// #[genflow::pipeline{ words: Words<Sums>, number: Number<Sums>, total: Total }]
/// struct Sums;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sums = Sums::start().await;
/// let output = tokio::spawn(sums.output().unwrap().collect::<Vec<u64>>());
/// sums.send("1 2 three 4".to_string()).await?;
/// sums.shutdown().await;
/// assert_eq!(output.await?, [1, 3, 7]);
/// assert_eq!(sums.metrics().stage("number").unwrap().failed, 1); // "three"
/// # Ok(())
/// # }
/// ```
#[doc(inline)]
pub use genflow_macros::stage;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../docs/guide.md")]
struct GuideDoctests;

#[cfg(doctest)]
#[doc = include_str!("../docs/migrating-from-genserver.md")]
struct MigrationDoctests;
