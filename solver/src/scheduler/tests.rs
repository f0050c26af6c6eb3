//! The scheduler against an executor that records what it was asked to do.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::{DefinitionBuilder, FileAction, FileOp, Op, Platform, SourceOp, SymlinkAction};

#[derive(Default)]
struct Recorder {
    runs: Mutex<HashMap<String, usize>>,
    concurrent: AtomicUsize,
    max_concurrent: AtomicUsize,
}

impl Executor for Recorder {
    type Output = Vec<String>;

    fn cache_extra(&self, _: &Vertex, _: &[Self::Output]) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    fn cacheable(&self, _: &Vertex) -> bool {
        true
    }

    fn usable(&self, _: &Self::Output) -> bool {
        true
    }

    fn execute(
        &self,
        vertex: &Vertex,
        inputs: &[Self::Output],
        step: &StepContext<'_>,
    ) -> anyhow::Result<Self::Output> {
        let label = vertex.op.label();
        *self.runs.lock().unwrap().entry(label.clone()).or_default() += 1;
        let now = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_concurrent.fetch_max(now, Ordering::SeqCst);
        (step.log)(LogStream::Stdout, label.as_bytes());
        std::thread::sleep(Duration::from_millis(if label.contains("slow") {
            300
        } else {
            50
        }));
        self.concurrent.fetch_sub(1, Ordering::SeqCst);
        if label.contains("fail") {
            anyhow::bail!("step failed");
        }
        if label.contains("panic") {
            panic!("a bug in the step");
        }
        let mut out: Vec<String> = inputs.iter().flatten().cloned().collect();
        out.push(label);
        Ok(out)
    }
}

#[derive(Default)]
struct MemoryCache(Mutex<HashMap<String, Vec<u8>>>);

impl CacheIndex for MemoryCache {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.lock().unwrap().get(key).cloned()
    }
    fn put(&self, key: &str, value: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .insert(key.to_string(), value.to_vec());
    }
}

fn image(name: &str) -> Op {
    Op::Source(SourceOp::Image {
        reference: name.into(),
        platform: Platform::host(),
    })
}

fn link(path: &str) -> Op {
    Op::File(FileOp {
        base: Some(0),
        actions: vec![FileAction::Symlink(SymlinkAction {
            target: "x".into(),
            path: path.into(),
        })],
    })
}

/// base → (left, right) → join: a diamond whose two sides can run together.
fn diamond(left: &str) -> Definition {
    let mut b = DefinitionBuilder::new();
    let base = b.add(image("base"), vec![], VertexMeta::default());
    let l = b.add(link(left), vec![base], VertexMeta::default());
    let r = b.add(link("/right-slow"), vec![base], VertexMeta::default());
    let join = Op::Merge(crate::MergeOp { inputs: vec![0, 1] });
    let root = b.add(join, vec![l, r], VertexMeta::default());
    b.finish(Some(root)).unwrap()
}

fn run(
    def: &Definition,
    exec: &Recorder,
    cache: &MemoryCache,
) -> (Result<Option<Vec<String>>, SolveError>, Vec<ProgressEvent>) {
    let events = Mutex::new(Vec::new());
    let result = solve(
        def,
        exec,
        cache,
        SolveOptions { max_parallelism: 4 },
        &|e| events.lock().unwrap().push(e),
        &AtomicBool::new(false),
    );
    (result, events.into_inner().unwrap())
}

#[test]
fn each_vertex_runs_once_and_independent_ones_overlap() {
    let exec = Recorder::default();
    let (result, events) = run(&diamond("/left-slow"), &exec, &MemoryCache::default());
    let output = result.unwrap().unwrap();
    assert_eq!(output.first().map(String::as_str), Some("image base"));
    assert_eq!(
        output.iter().filter(|l| l.as_str() == "image base").count(),
        2,
        "both sides read base"
    );
    assert!(
        exec.runs.lock().unwrap().values().all(|&n| n == 1),
        "{:?}",
        exec.runs
    );
    assert_eq!(
        exec.max_concurrent.load(Ordering::SeqCst),
        2,
        "the two slow sides ran together"
    );
    let completed = events
        .iter()
        .filter(|e| matches!(e.kind, ProgressKind::Completed(_)))
        .count();
    assert_eq!(completed, 4);
    assert!(
        events.iter().any(
            |e| matches!(&e.kind, ProgressKind::Log(LogStream::Stdout, d) if d == b"image base")
        )
    );
}

#[test]
fn a_second_solve_comes_from_the_cache() {
    let exec = Recorder::default();
    let cache = MemoryCache::default();
    run(&diamond("/left"), &exec, &cache).0.unwrap();
    let (result, events) = run(&diamond("/left"), &exec, &cache);
    result.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == ProgressKind::Cached)
            .count(),
        4
    );
    assert!(exec.runs.lock().unwrap().values().all(|&n| n == 1));
}

#[test]
fn a_failure_stops_the_build_and_names_its_vertex() {
    let exec = Recorder::default();
    let def = diamond("/fail");
    let (result, events) = run(&def, &exec, &MemoryCache::default());
    let error = result.unwrap_err();
    let failed = error.vertex.unwrap();
    assert_eq!(
        def.vertex(&failed).unwrap().op.label(),
        link("/fail").label()
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, ProgressKind::Failed(m, _) if m == "step failed"))
    );
    assert!(
        !exec
            .runs
            .lock()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("merge")),
        "the join never ran"
    );
}

#[test]
fn a_step_that_panics_fails_the_build_instead_of_hanging_it() {
    let exec = Recorder::default();
    let (result, events) = run(&diamond("/left-panic"), &exec, &MemoryCache::default());
    let failure = result.unwrap_err();
    assert!(
        format!("{:#}", failure.error).contains("the step panicked: a bug in the step"),
        "{:#}",
        failure.error
    );
    assert!(events.iter().any(
        |e| matches!(&e.kind, ProgressKind::Failed(message, _) if message.contains("panicked"))
    ));
}

#[test]
fn roots_of_a_merged_definition_share_their_common_vertices() {
    // Two platforms' graphs: the same cross stage (`/cross`), each its own final step.
    let part = |last: &str| {
        let mut b = DefinitionBuilder::new();
        let base = b.add(image("base"), vec![], VertexMeta::default());
        let cross = b.add(link("/cross"), vec![base], VertexMeta::default());
        let root = b.add(link(last), vec![cross], VertexMeta::default());
        b.finish(Some(root)).unwrap()
    };
    let merged = Definition::merge(&[part("/amd64"), part("/arm64")]).unwrap();
    assert_eq!(merged.len(), 4, "base and /cross are one vertex each");
    assert_eq!(merged.roots().len(), 2);
    let exec = Recorder::default();
    let results = solve_all(
        &merged,
        &exec,
        &MemoryCache::default(),
        SolveOptions { max_parallelism: 4 },
        &|_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    let last = |r: &Option<Vec<String>>| r.as_ref().unwrap().last().cloned().unwrap();
    assert_eq!(last(&results.roots[0]), link("/amd64").label());
    assert_eq!(last(&results.roots[1]), link("/arm64").label());
    assert_eq!(results.steps.len(), 4, "every step with its key");
    let runs = exec.runs.lock().unwrap();
    assert_eq!(runs[&link("/cross").label()], 1, "{runs:?}");
    assert_eq!(runs[&image("base").label()], 1, "{runs:?}");
}
