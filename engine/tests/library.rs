//! The engine as a library, driven the way a remote builder drives it: local sources by
//! name, outputs that go to a client instead of a path, and progress as typed events.
//! (Needs root for the overlay mounts, as every build does.)

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use kiln_cache::StateDir;
use kiln_engine::{
    BuildEvent, BuildRequest, ClientTarget, Destination, LocalSources, Output, OutputKind, build,
};
use kiln_solver::ProgressKind;

/// Serves one directory as `context` and records what was asked for.
struct RecordingSources {
    dir: std::path::PathBuf,
    asked: Mutex<Vec<(String, Vec<String>)>>,
}

impl LocalSources for RecordingSources {
    fn directory(&self, name: &str, excludes: &[String]) -> Result<std::path::PathBuf> {
        self.asked
            .lock()
            .unwrap()
            .push((name.to_string(), excludes.to_vec()));
        anyhow::ensure!(name == "context", "unknown source {name}");
        Ok(self.dir.clone())
    }
}

/// Keeps what the engine sends to the "client".
#[derive(Default)]
struct RecordingClient {
    archive: Mutex<Vec<u8>>,
    files: Mutex<HashMap<String, Vec<u8>>>,
}

impl ClientTarget for RecordingClient {
    fn send_archive(&self, write: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<()> {
        let mut bytes = Vec::new();
        write(&mut bytes)?;
        *self.archive.lock().unwrap() = bytes;
        Ok(())
    }

    fn send_directory(&self, dir: &Path) -> Result<()> {
        let mut files = self.files.lock().unwrap();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                files.insert(name, std::fs::read(entry.path())?);
            }
        }
        Ok(())
    }
}

fn to_client(kind: OutputKind, client: &Arc<RecordingClient>) -> Output {
    let spec = match kind {
        OutputKind::Tar => "type=tar,dest=unused",
        _ => "type=local,dest=unused",
    };
    let mut output: Output = spec.parse().unwrap();
    output.dest = Some(Destination::Client(client.clone()));
    output
}

#[test]
fn builds_from_named_sources_into_client_outputs_with_typed_events() {
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("a.txt"), "alpha\n").unwrap();
    std::fs::write(context.path().join("secret.txt"), "ignored\n").unwrap();
    let state = tempfile::tempdir().unwrap();
    let sources = Arc::new(RecordingSources {
        dir: context.path().to_path_buf(),
        asked: Mutex::default(),
    });
    let tar_client = Arc::new(RecordingClient::default());
    let dir_client = Arc::new(RecordingClient::default());
    let request = BuildRequest {
        dockerfile: b"FROM scratch\nCOPY . /\n".to_vec(),
        sources: Box::new(sources.clone()),
        secrets: Box::new(kiln_engine::LocalSecrets::default()),
        ssh: Box::new(kiln_engine::LocalSshAgents::default()),
        dockerignore: Some(b"secret.txt\n".to_vec()),
        options: Default::default(),
        tags: Vec::new(),
        outputs: vec![
            to_client(OutputKind::Tar, &tar_client),
            to_client(OutputKind::Local, &dir_client),
        ],
        max_parallelism: 2,
        oci_runtime: None,
        source_date_epoch: None,
        pull: false,
        push: false,
        registry: Default::default(),
        entitlements: Default::default(),
        platforms: Vec::new(),
        cache_to: Vec::new(),
        cache_from: Vec::new(),
    };
    let events = Mutex::new(Vec::new());
    let result = build(
        &StateDir::new(state.path()),
        request,
        &|event| events.lock().unwrap().push(event),
        &AtomicBool::new(false),
    );
    let result = result.unwrap_or_else(|e| panic!("build failed: {e:?}"));
    assert!(result.warnings.is_empty(), "{:?}", result.warnings);

    // The context was asked for by name, with the .dockerignore excludes.
    let asked = sources.asked.lock().unwrap().clone();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|(name, excludes)| name == "context" && excludes == &["secret.txt"]),
        "{asked:?}"
    );

    // The client got the root filesystem both ways, without the ignored file.
    let files = dir_client.files.lock().unwrap();
    assert_eq!(files.get("a.txt").map(Vec::as_slice), Some(&b"alpha\n"[..]));
    assert!(!files.contains_key("secret.txt"), "{:?}", files.keys());
    let archive = tar_client.archive.lock().unwrap();
    let names: Vec<String> = tar::Archive::new(archive.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "a.txt"), "{names:?}");

    // Progress: the step count first, then named step events.
    let events = events.lock().unwrap();
    assert!(
        matches!(events.first(), Some(BuildEvent::Solving { vertices }) if *vertices > 0),
        "{events:?}"
    );
    let copy_completed = events.iter().any(|e| {
        matches!(e, BuildEvent::Step { name, kind: ProgressKind::Completed(_), .. }
            if name.contains("COPY . /"))
    });
    assert!(copy_completed, "{events:?}");
}
