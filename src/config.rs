//! Sizes chosen at start: the [`Builder`] every generated registry and
//! pipeline offers through `builder(..)`, and the [`ConfigError`] it returns.
//!
//! A registry's declaration gives the defaults (`#[replicas(N)]`, each
//! server's `channel_queue_size()`); a builder overrides them by name before
//! anything starts, so a program can take its sizes from its command line or
//! its configuration file. Every override is checked before the first queue
//! is made or the first server spawned: when `start` returns an error,
//! nothing ran. (Akka's `withDispatcher`/`withMailbox` props and Broadway's
//! `processors: [default: [concurrency: n]]` options play the same part.)

use std::{fmt, future::Future, marker::PhantomData, time::Duration};

use crate::pipeline::batch::BatchSpec;

/// Why a [`Builder`] did not start its registry or pipeline.
///
/// Returned by [`Builder::start`] before anything was started. Its
/// `Display` names the stage or server and the value at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No stage (or server) has this name; `valid` lists the names there
    /// are, in declaration order.
    UnknownName {
        /// `"stage"` for a pipeline, `"server"` for a registry.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The declared names.
        valid: Vec<&'static str>,
    },
    /// A stage was given 0 replicas; it needs at least one.
    ZeroReplicas {
        /// The stage.
        stage: &'static str,
    },
    /// A stage was given more replicas than [`MAX_REPLICAS`].
    TooManyReplicas {
        /// The stage.
        stage: &'static str,
        /// The count given.
        replicas: usize,
        /// The largest count allowed: [`MAX_REPLICAS`].
        max: usize,
    },
    /// A stage or server was given a queue size of 0; it needs at least one.
    ZeroQueueSize {
        /// `"stage"` or `"server"`.
        kind: &'static str,
        /// The stage or server.
        name: &'static str,
    },
    /// A stage was given a `max_demand` of 0; a replica takes at least
    /// one item at a time.
    ZeroMaxDemand {
        /// The stage.
        stage: &'static str,
    },
    /// A stage was given a rate limit of 0 items, or per a zero interval.
    ZeroRateLimit {
        /// The stage.
        stage: &'static str,
        /// The items per interval given.
        items: u32,
        /// The interval given.
        per: Duration,
    },
    /// A stage was given a concurrency of 0; a replica has at least one
    /// item in flight.
    ZeroConcurrency {
        /// The stage.
        stage: &'static str,
    },
    /// A stage that is `#[fused]`, or that a `#[fused]` stage follows, was
    /// given more than one replica: fused stages run in one task.
    FusedReplicas {
        /// The stage given `replicas`.
        stage: &'static str,
        /// The replica count given.
        replicas: usize,
        /// The `#[fused]` stage: `stage` itself or the one after it.
        fused: &'static str,
    },
    /// A stage was given a batch size of 0 (`Builder::batch`).
    ZeroBatchSize {
        /// The stage.
        stage: &'static str,
    },
    /// `Builder::batch` named a stage declared without `#[batch(..)]`:
    /// whether a stage takes batches is part of its type (`In = Vec<T>`),
    /// so only its sizes can be chosen at run time.
    NotBatched {
        /// The stage.
        stage: &'static str,
    },
    /// A concurrency above 1 was given to a `#[batch(..)]` stage: its
    /// batches are processed one at a time per replica (use more replicas
    /// for batches in parallel).
    ConcurrentBatch {
        /// The stage.
        stage: &'static str,
        /// The concurrency given.
        concurrency: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownName { kind, name, valid } if valid.is_empty() => {
                write!(f, "unknown {kind} `{name}`: there are no {kind}s")
            }
            ConfigError::UnknownName { kind, name, valid } => {
                let valid: Vec<String> = valid.iter().map(|v| format!("`{v}`")).collect();
                write!(f, "unknown {kind} `{name}`: the {kind}s are {}", valid.join(", "))
            }
            ConfigError::ZeroReplicas { stage } => {
                write!(f, "stage `{stage}` was given 0 replicas: a stage needs at least 1")
            }
            ConfigError::TooManyReplicas { stage, replicas, max } => {
                write!(f, "stage `{stage}` was given {replicas} replicas: a stage has at most {max}")
            }
            ConfigError::ZeroQueueSize { kind, name } => {
                write!(f, "{kind} `{name}` was given a queue size of 0: a queue needs room for at least 1 item")
            }
            ConfigError::ZeroMaxDemand { stage } => {
                write!(f, "stage `{stage}` was given a max_demand of 0: a replica takes at least 1 item at a time")
            }
            ConfigError::ZeroRateLimit { stage, items, per } => write!(
                f,
                "stage `{stage}` was given a rate limit of {items} items per {per:?}: a rate limit lets at least \
                 1 item through per interval longer than 0"
            ),
            ConfigError::ZeroConcurrency { stage } => write!(
                f,
                "stage `{stage}` was given a concurrency of 0: a replica has at least 1 item in flight (1 is one \
                 at a time)"
            ),
            ConfigError::FusedReplicas { stage, replicas, fused } if stage == fused => write!(
                f,
                "stage `{stage}` was given {replicas} replicas, but it is `#[fused]`: it runs in the task of the \
                 stage before it, with one replica"
            ),
            ConfigError::FusedReplicas { stage, replicas, fused } => write!(
                f,
                "stage `{stage}` was given {replicas} replicas, but `#[fused]` stage `{fused}` runs in its task: \
                 it needs one replica"
            ),
            ConfigError::ZeroBatchSize { stage } => {
                write!(f, "stage `{stage}` was given a batch size of 0: a batch holds at least 1 item")
            }
            ConfigError::ConcurrentBatch { stage, concurrency } => write!(
                f,
                "stage `{stage}` is a `#[batch(..)]` stage and cannot have a concurrency of {concurrency}: its \
                 batches are processed one at a time per replica; give it more replicas instead"
            ),
            ConfigError::NotBatched { stage } => write!(
                f,
                "stage `{stage}` was given a batch size and timeout, but it is not declared `#[batch(..)]`: only \
                 a batch stage (`type In = Vec<T>`) takes batches"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The most replicas a pipeline stage can have: 65,536.
///
/// Each replica is a task with its own state, control mailbox and counters
/// (and, under `partition_by`, its own input queue), so unlike a queue size,
/// a replica count is an allocation made at start. A larger count given to
/// [`Builder::replicas`] makes [`Builder::start`] return
/// [`ConfigError::TooManyReplicas`]; a larger `#[replicas(N)]` (a literal,
/// or a path to a `const`) does not compile.
pub const MAX_REPLICAS: usize = 65_536;

/// Sizes resolved by a [`Builder`], by declaration index: `None` keeps the
/// declared default. Read by the generated `start`.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct Sizes {
    replicas: Vec<Option<usize>>,
    queue: Vec<Option<usize>>,
    demand: Vec<Option<usize>>,
    rate: Vec<Option<(u32, Duration)>>,
    batch: Vec<Option<BatchSpec>>,
    concurrency: Vec<Option<usize>>,
}

impl Sizes {
    /// The replica count of stage `index`: the override, else `declared`.
    #[inline]
    pub fn replicas(&self, index: usize, declared: usize) -> usize {
        self.replicas.get(index).copied().flatten().unwrap_or(declared)
    }

    /// The `max_demand` of stage `index`: the override, else `declared`.
    #[inline]
    pub fn max_demand(&self, index: usize, declared: usize) -> usize {
        self.demand.get(index).copied().flatten().unwrap_or(declared)
    }

    /// The concurrency of stage `index`: the override, else `declared`.
    #[inline]
    pub fn concurrency(&self, index: usize, declared: usize) -> usize {
        self.concurrency.get(index).copied().flatten().unwrap_or(declared)
    }

    /// The rate limit of stage `index` (items, per interval): the
    /// override, else `declared`.
    ///
    /// # Panics
    ///
    /// If the limit in use lets no item through: 0 items, or per 0 s (a
    /// declared one; an override was checked by `start`).
    #[track_caller]
    pub fn rate_limit(&self, index: usize, stage: &str, declared: Option<(u32, Duration)>) -> Option<(u32, Duration)> {
        let limit = self.rate.get(index).copied().flatten().or(declared);
        if let Some((n, per)) = limit {
            assert!(
                n > 0 && !per.is_zero(),
                "stage `{stage}` declares a rate limit of {n} items per {per:?}: a rate limit lets at least 1 item \
                 through per interval longer than 0"
            );
        }
        limit
    }

    /// How stage `index` cuts its batches: the builder's setting, else
    /// `declared` (`None` for a stage without `#[batch(..)]`, which the
    /// builder refuses to set).
    #[inline]
    pub fn batch(&self, index: usize, declared: Option<BatchSpec>) -> Option<BatchSpec> {
        declared.map(|declared| self.batch.get(index).copied().flatten().unwrap_or(declared))
    }

    /// The queue size override of stage or server `index`, if any.
    #[inline]
    pub fn queue_size(&self, index: usize) -> Option<usize> {
        self.queue.get(index).copied().flatten()
    }
}

/// What every generated registry and pipeline implements so that a
/// [`Builder`] can start it. Not public API.
#[doc(hidden)]
pub trait Configurable: Sized {
    /// The user's fields, as a tuple in declaration order.
    type Fields: Send;
    /// `"stage"` or `"server"`.
    const KIND: &'static str;
    /// The stage or server names, in declaration order.
    const NAMES: &'static [&'static str];
    /// The names of the `#[fused]` stages, in declaration order.
    const FUSED: &'static [&'static str] = &[];
    /// The names of the `#[batch(..)]` stages, in declaration order.
    const BATCHED: &'static [&'static str] = &[];
    /// Starts with these sizes; the generated `start` uses the defaults.
    fn start_sized(fields: Self::Fields, sizes: Sizes) -> impl Future<Output = Self>;
}

/// Implemented by generated pipelines only: they have stages to replicate.
/// Not public API.
///
/// Bound on [`Builder::replicas`] and [`Builder::max_demand`] themselves
/// rather than on an impl block, so that calling either on a registry's builder reports this message (E0277)
/// instead of naming this trait in a method-not-found error (E0599).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`replicas`, `max_demand`, `rate_limit` and `batch` are for pipelines, and `{Self}` is a registry",
    label = "a registry's builder sets only `queue_size`",
    note = "each server of a registry runs as one instance and takes one message at a time; a pipeline's stage \
            can run as several replicas (`#[replicas(N)]` or `builder(..).replicas(\"stage\", n)`), each taking \
            up to `max_demand` items at a time; a registry's builder sets `queue_size`"
)]
pub trait Replicated: Configurable {}

/// Starts a registry or pipeline `R` with sizes chosen at run time.
///
/// Made by the generated `R::builder(fields..)` (the same arguments as
/// `R::start`). Each setting names a stage (or server) of `R`; what is not
/// set keeps its declared default (`#[replicas(N)]`, `channel_queue_size()`).
/// Setting one twice keeps the last value. Nothing is checked or started
/// until [`start`](Self::start).
///
/// ```
/// # use genflow::{Emitter, GenServer, Stage};
/// # struct Double;
/// # impl GenServer for Double {
/// #     type Message = (); type Response = (); type Registry = Flow;
/// #     fn new(_: Flow) -> Self { Double }
/// #     async fn handle_call(&mut self, _: ()) {}
/// #     async fn handle_cast(&mut self, _: ()) {}
/// # }
/// # impl Stage for Double {
/// #     type In = u64; type Out = u64;
/// #     async fn process(&mut self, n: u64, out: &mut Emitter<u64>) { out.emit(2 * n).await }
/// # }
/// #[genflow::pipeline{ double: Double }]
/// struct Flow;
///
/// # #[tokio::main] async fn main() -> Result<(), genflow::ConfigError> {
/// let flow = Flow::builder().replicas("double", 8).queue_size("double", 10_000).start().await?;
/// assert_eq!(flow.metrics().stage("double").unwrap().replicas.len(), 8);
/// let error = Flow::builder().replicas("tripple", 2).start().await.err().expect("a config error");
/// assert_eq!(error.to_string(), "unknown stage `tripple`: the stages are `double`");
/// # flow.shutdown().await; Ok(()) }
/// ```
#[must_use = "a builder does nothing until `start().await`"]
pub struct Builder<R: Configurable> {
    fields: R::Fields,
    /// Every setting, in the order made.
    settings: Vec<Setting>,
    _registry: PhantomData<fn() -> R>,
}

#[derive(Debug, PartialEq, Eq)]
enum What {
    Replicas,
    QueueSize,
    MaxDemand,
    RateLimit(Duration),
    Batch(Duration),
    Concurrency,
}

#[derive(Debug)]
struct Setting {
    what: What,
    name: String,
    value: usize,
}

impl<R: Configurable> Builder<R> {
    /// A builder for `R` with these fields; used by the generated `builder`.
    #[doc(hidden)]
    pub fn new(fields: R::Fields) -> Self {
        Builder { fields, settings: Vec::new(), _registry: PhantomData }
    }

    /// Sets the queue size of the stage or server `name`, overriding its
    /// `channel_queue_size()`: for a pipeline stage, each of its input
    /// queues (one per replica under `partition_by`, else one) holds at most
    /// `size` items; the mailbox of its calls and casts keeps its declared
    /// size, or takes `size` too where the declared size is 0. The last
    /// stage's size also bounds the pipeline's output buffer. For a registry
    /// server, its mailbox holds at most `size` messages. So a declared
    /// `channel_queue_size()` of 0 is fine once a size is set here: only a
    /// 0 with no size set panics, in `start` (see [`start`](Self::start)).
    ///
    /// Any `size` but 0 is valid: a queue size is a limit, not an
    /// allocation, and sizes above tokio's `Semaphore::MAX_PERMITS` are
    /// clamped to it. A 0, or an unknown name, makes
    /// [`start`](Self::start) return a [`ConfigError`].
    pub fn queue_size(mut self, name: impl Into<String>, size: usize) -> Self {
        self.settings.push(Setting { what: What::QueueSize, name: name.into(), value: size });
        self
    }

    /// Checks every setting, then starts `R` as its `start` does, with the
    /// chosen sizes; returns once every server has run `new` and `init`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`]: the first unknown name, in the order the settings
    /// were made; else the first invalid setting that no later setting of
    /// the same name replaced: a 0 (replicas, queue size, `max_demand`,
    /// concurrency, batch size, a rate limit's count or interval), a replica
    /// count above [`MAX_REPLICAS`], a batch setting for a stage that is not
    /// `#[batch(..)]` or a concurrency above 1 for one that is; then more
    /// than one replica for a `#[fused]` stage or the stage before it. When
    /// it errs, nothing was started (no queue made, no `new` run).
    ///
    /// # Panics
    ///
    /// As `R::start`: outside a Tokio runtime, if a server's
    /// `channel_queue_size()` is 0 and no size is set for it here, or if a
    /// stage's declared `#[rate_limit(n, per = ..)]` gives 0 items or an
    /// interval of 0 and no limit is set for it here.
    ///
    /// # Cancel safety
    ///
    /// As `R::start`: not cancel safe once the settings were checked.
    /// Dropped while it waits for the servers' `init`, the servers already
    /// spawned are left running (no copy of the registry is outside to shut
    /// them down) until the runtime ends. Dropped before its first poll, it
    /// started nothing.
    pub async fn start(self) -> Result<R, ConfigError> {
        let sizes = self.sizes()?;
        Ok(R::start_sized(self.fields, sizes).await)
    }

    /// The sizes set, or the first setting at fault: an unknown name, or a
    /// 0 that no later setting of the same size replaces.
    fn sizes(&self) -> Result<Sizes, ConfigError> {
        let count = R::NAMES.len();
        let mut sizes = Sizes {
            replicas: vec![None; count],
            queue: vec![None; count],
            demand: vec![None; count],
            rate: vec![None; count],
            batch: vec![None; count],
            concurrency: vec![None; count],
        };
        for setting in &self.settings {
            let Some(i) = R::NAMES.iter().position(|n| *n == setting.name) else {
                return Err(ConfigError::UnknownName {
                    kind: R::KIND,
                    name: setting.name.clone(),
                    valid: R::NAMES.to_vec(),
                });
            };
            let slot = match setting.what {
                What::Replicas => &mut sizes.replicas[i],
                What::QueueSize => &mut sizes.queue[i],
                What::MaxDemand => &mut sizes.demand[i],
                What::Concurrency => &mut sizes.concurrency[i],
                What::RateLimit(per) => {
                    // Items above u32::MAX per interval are as good as no limit.
                    let n = u32::try_from(setting.value).unwrap_or(u32::MAX);
                    sizes.rate[i] = Some((n, per));
                    continue;
                }
                What::Batch(timeout) => {
                    sizes.batch[i] = Some(BatchSpec { size: setting.value, timeout });
                    continue;
                }
            };
            *slot = Some(setting.value);
        }
        for (what, i) in
            self.settings.iter().filter_map(|s| R::NAMES.iter().position(|n| *n == s.name).map(|i| (&s.what, i)))
        {
            let value = match what {
                What::Replicas => sizes.replicas[i],
                What::QueueSize => sizes.queue[i],
                What::MaxDemand => sizes.demand[i],
                What::Concurrency => match sizes.concurrency[i] {
                    Some(concurrency) if concurrency > 1 && R::BATCHED.contains(&R::NAMES[i]) => {
                        return Err(ConfigError::ConcurrentBatch { stage: R::NAMES[i], concurrency });
                    }
                    value => value,
                },
                What::RateLimit(_) => match sizes.rate[i] {
                    Some((n, per)) if n == 0 || per.is_zero() => Some(0),
                    _ => None,
                },
                What::Batch(_) if !R::BATCHED.contains(&R::NAMES[i]) => {
                    return Err(ConfigError::NotBatched { stage: R::NAMES[i] });
                }
                What::Batch(_) => sizes.batch[i].map(|spec| spec.size),
            };
            if value == Some(0) {
                return Err(match what {
                    What::Replicas => ConfigError::ZeroReplicas { stage: R::NAMES[i] },
                    What::QueueSize => ConfigError::ZeroQueueSize { kind: R::KIND, name: R::NAMES[i] },
                    What::MaxDemand => ConfigError::ZeroMaxDemand { stage: R::NAMES[i] },
                    What::Concurrency => ConfigError::ZeroConcurrency { stage: R::NAMES[i] },
                    What::RateLimit(_) => {
                        let (items, per) = sizes.rate[i].unwrap_or_default();
                        ConfigError::ZeroRateLimit { stage: R::NAMES[i], items, per }
                    }
                    What::Batch(_) => ConfigError::ZeroBatchSize { stage: R::NAMES[i] },
                });
            }
            match (what, value) {
                (What::Replicas, Some(replicas)) if replicas > MAX_REPLICAS => {
                    return Err(ConfigError::TooManyReplicas { stage: R::NAMES[i], replicas, max: MAX_REPLICAS });
                }
                _ => {}
            }
        }
        Self::check_fused(&sizes)?;
        Ok(sizes)
    }

    /// A fused stage and the stage it follows keep one replica.
    fn check_fused(sizes: &Sizes) -> Result<(), ConfigError> {
        let fused = |i: usize| R::NAMES.get(i).filter(|name| R::FUSED.contains(name)).copied();
        for (i, replicas) in sizes.replicas.iter().enumerate() {
            let Some(replicas) = replicas.filter(|&n| n > 1) else { continue };
            if let Some(fused) = fused(i).or_else(|| fused(i + 1)) {
                return Err(ConfigError::FusedReplicas { stage: R::NAMES[i], replicas, fused });
            }
        }
        Ok(())
    }
}

impl<R: Configurable> Builder<R> {
    /// Sets how many replicas run the stage `name`, overriding its
    /// `#[replicas(N)]` (1 if it has none). `partition_by` then hashes keys
    /// over `n` queues, and `ordered` keeps the input order over `n`
    /// replicas. A count chosen here costs nothing per item over a declared
    /// one.
    ///
    /// Only pipelines have this method: a registry server runs once, and
    /// calling it on a registry's builder is a compile error saying so.
    /// 0, a count above [`MAX_REPLICAS`], or an unknown name, makes
    /// [`start`](Self::start) return a [`ConfigError`].
    pub fn replicas(mut self, name: impl Into<String>, n: usize) -> Self
    where
        R: Replicated,
    {
        self.settings.push(Setting { what: What::Replicas, name: name.into(), value: n });
        self
    }

    /// Sets the stage `name`'s `max_demand`, overriding its
    /// `#[max_demand(N)]` (else [`BATCH`](crate::pipeline::BATCH), 32): the
    /// most items one replica takes from its queue at a time, and so holds
    /// before it has processed them. A replica whose items await something
    /// in `process` (and one that has processed none yet) takes fewer when
    /// there is less to share: at most its even share of the items waiting,
    /// over the stage's replicas (rounded up), so a burst of slow items
    /// spreads over idle replicas whatever this is set to. Set it to 1 when each item is
    /// slow and should go to the first replica free; larger values cut the
    /// per-batch cost of cheap items. A `#[concurrency(N)]` stage takes at
    /// least N at a time whatever this says, so that N can be in flight.
    /// The idea is GenStage's `max_demand`.
    ///
    /// Only pipelines have this method. 0, or an unknown name, makes
    /// [`start`](Self::start) return a [`ConfigError`].
    pub fn max_demand(mut self, name: impl Into<String>, n: usize) -> Self
    where
        R: Replicated,
    {
        self.settings.push(Setting { what: What::MaxDemand, name: name.into(), value: n });
        self
    }

    /// Sets how many items of one replica of the stage `name` may be in
    /// flight at once, overriding its `#[concurrency(N)]` (1 if it has
    /// none): the futures its `process` hands to
    /// [`Emitter::emit_async`](crate::Emitter::emit_async) run together, up
    /// to `n` per replica, while `process` goes on with the next items.
    /// With 1, each future is awaited in place. With more, a replica
    /// takes up to `n` items at a time (its `max_demand` does not apply),
    /// so that `n` can be in flight and no more wait in it. Whether outputs keep their input order stays as declared
    /// (`#[concurrency(N, ordered)]`, or an `ordered` stage). The idea is
    /// Broadway's processor `concurrency` and Akka Streams' `mapAsync`
    /// parallelism.
    ///
    /// Only pipelines have this method. 0, or an unknown name, makes
    /// [`start`](Self::start) return a [`ConfigError`].
    pub fn concurrency(mut self, name: impl Into<String>, n: usize) -> Self
    where
        R: Replicated,
    {
        self.settings.push(Setting { what: What::Concurrency, name: name.into(), value: n });
        self
    }

    /// Sets the stage `name`'s rate limit, overriding its
    /// `#[rate_limit(..)]`: at most `n` items per `per` go through the
    /// stage, over all its replicas, for calling a service that allows no
    /// more. Each item waits for a token before `process`, from a bucket of
    /// `n` tokens refilled one every `per / n` (a token bucket: after a
    /// pause, `n` go at once). The time a replica waits shows as
    /// `throttled` in the metrics, not as busy. The idea is Broadway's
    /// `rate_limiting`; the algorithm is the `governor` crate's GCRA.
    ///
    /// Only pipelines have this method. 0 items, a `per` of 0, or an
    /// unknown name, makes [`start`](Self::start) return a [`ConfigError`].
    pub fn rate_limit(mut self, name: impl Into<String>, n: u32, per: Duration) -> Self
    where
        R: Replicated,
    {
        self.settings.push(Setting { what: What::RateLimit(per), name: name.into(), value: n as usize });
        self
    }

    /// Sets how the `#[batch(..)]` stage `name` cuts its batches,
    /// overriding its declared `size` and `timeout`: each replica hands
    /// `process` a batch once it holds `size` items, or once the oldest of
    /// them has waited `timeout` since the replica took it, whichever comes
    /// first (and at `flush` and shutdown). A `timeout` of zero cuts a
    /// batch as soon as the replica's queue has no more items at hand, so
    /// batches are as large as what has arrived, up to `size`. See the
    /// guide's "Batching by size and time".
    ///
    /// Only pipelines have this method. A `size` of 0, a stage declared
    /// without `#[batch(..)]` (taking batches is part of its type), or an
    /// unknown name, makes [`start`](Self::start) return a [`ConfigError`].
    pub fn batch(mut self, name: impl Into<String>, size: usize, timeout: Duration) -> Self
    where
        R: Replicated,
    {
        self.settings.push(Setting { what: What::Batch(timeout), name: name.into(), value: size });
        self
    }
}

impl<R: Configurable> fmt::Debug for Builder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("registry", &std::any::type_name::<R>())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
