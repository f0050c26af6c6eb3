//! Running a [`Definition`]: every vertex once, independent vertices in
//! parallel, with results reused through a persistent cache index.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kiln_cache::Digest;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Definition, Vertex, VertexMeta};

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What happened to a vertex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressKind {
    /// Work on it started.
    Started,
    /// Its result came from the cache.
    Cached,
    /// Output of its process.
    Log(LogStream, Vec<u8>),
    /// It finished.
    Completed(Duration),
    /// It failed with this message.
    Failed(String, Duration),
    /// It was stopped because the build was cancelled or another step failed.
    Cancelled,
}

/// A progress event for one vertex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressEvent {
    /// The vertex.
    pub vertex: Digest,
    /// What happened.
    pub kind: ProgressKind,
}

/// What a step gets besides its vertex and inputs.
pub struct StepContext<'a> {
    /// Set when the build is being cancelled; long steps should stop.
    pub cancel: &'a AtomicBool,
    /// The vertex's display metadata (including proxy variables for RUN).
    pub meta: Option<&'a VertexMeta>,
    /// Where the step's process output goes.
    pub log: &'a (dyn Fn(LogStream, &[u8]) + Sync),
}

/// Executes single vertices; the worker implements it.
pub trait Executor: Sync {
    /// A vertex's result (a filesystem, a local directory, …).
    type Output: Clone + Send + Sync + Serialize + DeserializeOwned;

    /// Material for the cache key beyond the op and its inputs' keys: the
    /// checksum of the files a COPY selects, an image's manifest digest.
    fn cache_extra(
        &self,
        vertex: &Vertex,
        inputs: &[Self::Output],
    ) -> anyhow::Result<Option<String>>;

    /// Whether a result of this vertex may be stored in the cache index.
    fn cacheable(&self, vertex: &Vertex) -> bool;

    /// Whether a cached result can still be used (its data still exists).
    fn usable(&self, output: &Self::Output) -> bool;

    /// Runs the vertex.
    fn execute(
        &self,
        vertex: &Vertex,
        inputs: &[Self::Output],
        step: &StepContext<'_>,
    ) -> anyhow::Result<Self::Output>;
}

/// A persistent map from cache keys to serialised results.
pub trait CacheIndex: Sync {
    /// The result stored under `key`.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores a result; failures only cost a future cache miss.
    fn put(&self, key: &str, value: &[u8]);
}

/// Knobs of one solve.
#[derive(Debug, Clone, Copy)]
pub struct SolveOptions {
    /// How many vertices may run at once.
    pub max_parallelism: usize,
}

/// Stack of the threads that run steps: copying or unpacking a tree a thousand
/// directories deep recurses that deep (the pages are only used as deep as it goes).
const STEP_STACK: usize = 256 << 20;

/// A failed solve: the vertex that failed first, and why.
#[derive(Debug)]
pub struct SolveError {
    /// The failing vertex (`None` when the build was cancelled from outside).
    pub vertex: Option<Digest>,
    /// The cause.
    pub error: anyhow::Error,
}

struct Shared<O> {
    ready: VecDeque<Digest>,
    waiting_on: HashMap<Digest, usize>,
    results: HashMap<Digest, (O, String)>,
    running: usize,
    failure: Option<SolveError>,
}

/// Solves `definition`: returns the root vertex's result (`None` when the
/// definition has no root, i.e. an empty `FROM scratch` target).
pub fn solve<E: Executor>(
    definition: &Definition,
    executor: &E,
    cache: &dyn CacheIndex,
    options: SolveOptions,
    progress: &(dyn Fn(ProgressEvent) + Sync),
    cancel: &AtomicBool,
) -> Result<Option<E::Output>, SolveError> {
    let solved = solve_all(definition, executor, cache, options, progress, cancel)?;
    Ok(solved.roots.into_iter().next().flatten())
}

/// What [`solve_all`] produced.
#[derive(Debug)]
pub struct Solved<O> {
    /// The roots' results, in the order of [`Definition::roots`].
    pub roots: Vec<Option<O>>,
    /// Every vertex solved (run or found in the cache), with its result and cache key:
    /// what a cache export records.
    pub steps: HashMap<Digest, (O, String)>,
}

/// Solves every root of `definition` in one schedule (a vertex several roots need runs
/// once); returns their results in the order of [`Definition::roots`], and every step's.
pub fn solve_all<E: Executor>(
    definition: &Definition,
    executor: &E,
    cache: &dyn CacheIndex,
    options: SolveOptions,
    progress: &(dyn Fn(ProgressEvent) + Sync),
    cancel: &AtomicBool,
) -> Result<Solved<E::Output>, SolveError> {
    let order = definition.topological_order();
    let mut dependents: HashMap<Digest, Vec<Digest>> = HashMap::new();
    let mut shared = Shared {
        ready: VecDeque::new(),
        waiting_on: HashMap::new(),
        results: HashMap::new(),
        running: 0,
        failure: None,
    };
    for digest in order {
        let vertex = definition.vertex(digest).expect("ordered vertices exist");
        let mut unique = vertex.inputs.clone();
        unique.sort();
        unique.dedup();
        for input in &unique {
            dependents.entry(*input).or_default().push(*digest);
        }
        if unique.is_empty() {
            shared.ready.push_back(*digest);
        } else {
            shared.waiting_on.insert(*digest, unique.len());
        }
    }
    let total = order.len();
    let state = Mutex::new(shared);
    let wake = Condvar::new();
    let workers = options.max_parallelism.clamp(1, total.max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let thread = std::thread::Builder::new()
                .name("step".into())
                .stack_size(STEP_STACK);
            let spawned = thread.spawn_scoped(scope, || {
                loop {
                    let (digest, inputs) = {
                        let mut shared = state.lock().expect("scheduler lock");
                        loop {
                            if shared.failure.is_some() || shared.results.len() == total {
                                return;
                            }
                            if cancel.load(Ordering::Relaxed) && shared.failure.is_none() {
                                shared.failure = Some(SolveError {
                                    vertex: None,
                                    error: anyhow::anyhow!("build cancelled"),
                                });
                                wake.notify_all();
                                return;
                            }
                            if let Some(digest) = shared.ready.pop_front() {
                                let vertex = definition.vertex(&digest).expect("vertex exists");
                                let inputs: Vec<(E::Output, String)> = vertex
                                    .inputs
                                    .iter()
                                    .map(|i| shared.results[i].clone())
                                    .collect();
                                shared.running += 1;
                                break (digest, inputs);
                            }
                            // Wake periodically to notice an outside cancellation.
                            shared = wake
                                .wait_timeout(shared, Duration::from_millis(100))
                                .expect("scheduler lock")
                                .0;
                        }
                    };
                    let outcome = run_vertex(
                        definition, executor, cache, &digest, inputs, progress, cancel,
                    );
                    let mut shared = state.lock().expect("scheduler lock");
                    shared.running -= 1;
                    match outcome {
                        Ok(result) => {
                            shared.results.insert(digest, result);
                            for next in dependents.get(&digest).into_iter().flatten() {
                                let count =
                                    shared.waiting_on.get_mut(next).expect("dependent counted");
                                *count -= 1;
                                if *count == 0 {
                                    shared.ready.push_back(*next);
                                }
                            }
                        }
                        Err(error) => {
                            if shared.failure.is_none() {
                                // A step that fails after an outside cancellation failed
                                // because of it: report the cancellation.
                                shared.failure = Some(if cancel.load(Ordering::Relaxed) {
                                    SolveError {
                                        vertex: None,
                                        error: anyhow::anyhow!("build cancelled"),
                                    }
                                } else {
                                    SolveError {
                                        vertex: Some(digest),
                                        error,
                                    }
                                });
                                // Stop the steps still running.
                                cancel.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    wake.notify_all();
                }
            });
            if let Err(e) = spawned {
                let mut shared = state.lock().expect("scheduler lock");
                shared.failure.get_or_insert(SolveError {
                    vertex: None,
                    error: anyhow::anyhow!("cannot start a thread for steps: {e}"),
                });
                wake.notify_all();
            }
        }
    });
    let mut shared = state.into_inner().expect("scheduler lock");
    if let Some(failure) = shared.failure.take() {
        return Err(failure);
    }
    let roots = definition
        .roots()
        .iter()
        .map(|root| root.and_then(|r| shared.results.get(&r).map(|(output, _)| output.clone())))
        .collect();
    Ok(Solved {
        roots,
        steps: shared.results,
    })
}

/// Whether a cache key's result is being computed, and the signal that it no longer is.
#[derive(Default)]
struct KeyState {
    busy: Mutex<bool>,
    done: Condvar,
}

/// Cache keys that builds in this process compute or wait for.
static COMPUTING: std::sync::LazyLock<Mutex<HashMap<String, Arc<KeyState>>>> =
    std::sync::LazyLock::new(Mutex::default);

/// The claim on computing a cache key's result. A build that needs a key another build is
/// computing waits for it and then finds the result in the cache: concurrent builds (a
/// daemon's clients) run an identical step once.
struct Computing {
    key: String,
    state: Arc<KeyState>,
}

impl Computing {
    /// Waits until no other build computes `key`, and claims it; `None` if `cancel` is
    /// set while waiting.
    fn claim(key: &str, cancel: &AtomicBool) -> Option<Self> {
        let state = Arc::clone(
            COMPUTING
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.to_string())
                .or_default(),
        );
        let mut busy = state.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            busy = state
                .done
                .wait_timeout(busy, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *busy = true;
        drop(busy);
        Some(Computing {
            key: key.to_string(),
            state,
        })
    }
}

impl Drop for Computing {
    fn drop(&mut self) {
        *self
            .state
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        self.state.done.notify_all();
        let mut computing = COMPUTING.lock().unwrap_or_else(PoisonError::into_inner);
        // Ours and the map's: nobody else waits.
        if Arc::strong_count(&self.state) <= 2 {
            computing.remove(&self.key);
        }
    }
}

/// Runs one vertex or takes its result from the cache; returns the result
/// and its cache key.
fn run_vertex<E: Executor>(
    definition: &Definition,
    executor: &E,
    cache: &dyn CacheIndex,
    digest: &Digest,
    inputs: Vec<(E::Output, String)>,
    progress: &(dyn Fn(ProgressEvent) + Sync),
    cancel: &AtomicBool,
) -> anyhow::Result<(E::Output, String)> {
    let vertex = definition.vertex(digest).expect("vertex exists");
    let meta = definition.meta(digest);
    let emit = |kind| {
        progress(ProgressEvent {
            vertex: *digest,
            kind,
        })
    };
    let started = Instant::now();
    emit(ProgressKind::Started);
    let (outputs, keys): (Vec<E::Output>, Vec<String>) = inputs.into_iter().unzip();
    // A step that panics fails like one that errs: the other threads would otherwise wait
    // for its result forever.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let extra = executor.cache_extra(vertex, &outputs)?;
        let key = cache_key(vertex, &keys, extra.as_deref());
        let cacheable = executor.cacheable(vertex);
        let ignore_cache = meta.is_some_and(|m| m.ignore_cache);
        let _computing = if cacheable && !ignore_cache {
            let claim = Computing::claim(&key, cancel);
            anyhow::ensure!(claim.is_some(), "build cancelled");
            claim
        } else {
            None
        };
        if cacheable
            && !ignore_cache
            && let Some(output) = cache
                .get(&key)
                .and_then(|bytes| serde_json::from_slice::<E::Output>(&bytes).ok())
                .filter(|output| executor.usable(output))
        {
            emit(ProgressKind::Cached);
            return Ok((output, key));
        }
        let log = |stream, data: &[u8]| emit(ProgressKind::Log(stream, data.to_vec()));
        let step = StepContext {
            cancel,
            meta,
            log: &log,
        };
        let output = executor.execute(vertex, &outputs, &step)?;
        if cacheable && let Ok(bytes) = serde_json::to_vec(&output) {
            cache.put(&key, &bytes);
        }
        Ok((output, key))
    }))
    .unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(anyhow::anyhow!("internal error: the step panicked: {why}"))
    });
    match &result {
        Ok(_) => emit(ProgressKind::Completed(started.elapsed())),
        Err(_) if cancel.load(Ordering::Relaxed) => emit(ProgressKind::Cancelled),
        Err(e) => emit(ProgressKind::Failed(format!("{e:#}"), started.elapsed())),
    }
    result
}

/// The cache key of a vertex: its op (command, env, mounts, platform, …),
/// its inputs' cache keys and the executor's extra material (which is how
/// content enters the key: a context source's key names only the context,
/// the COPY reading it adds the checksum of what it selects).
fn cache_key(vertex: &Vertex, input_keys: &[String], extra: Option<&str>) -> String {
    #[derive(Serialize)]
    struct KeyMaterial<'a> {
        version: u32,
        op: &'a crate::Op,
        inputs: &'a [String],
        extra: Option<&'a str>,
    }
    let material = KeyMaterial {
        version: 1,
        op: &vertex.op,
        inputs: input_keys,
        extra,
    };
    Digest::of(&serde_json::to_vec(&material).expect("keys serialise")).to_string()
}

#[cfg(test)]
mod tests;
