//! BuildKit's gateway API (`LLBBridge`) for clients that build through a build function,
//! as `buildctl build` and buildx do: their `Solve` on the Control service names no
//! frontend and no definition; the build function then asks for the Dockerfile frontend
//! with LLBBridge calls that carry the build's ID, and hands the result back with
//! `Return`, after which the Control `Solve` answers.
//!
//! kiln runs the Dockerfile build, exports included, when the build function asks for it
//! and answers with a reference to that result; `Return` of that reference completes the
//! Control `Solve` with the exporters' response. A build function that returns an error
//! fails the build; one that asks for an LLB definition, another frontend or a frontend
//! subrequest (`requestid`) is told that kiln does not run those.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::solve::{self, SolveError};
use super::{Daemon, worker_record};
use crate::control::{CacheOptions, CacheOptionsEntry as ControlCacheEntry, SolveRequest};
use crate::gateway::llb_bridge_server::LlbBridge;
use crate::gateway::{
    ApiCap, PingRequest, PongResponse, Ref, ReturnRequest, ReturnResponse,
    SolveRequest as GatewaySolveRequest, SolveResponse, result,
};
use crate::{BUILD_ID_METADATA, DOCKERFILE_FRONTEND};

/// How long a call may wait for its build's Control `Solve` to arrive (clients start
/// both at once; BuildKit waits 3 s too).
const REGISTRATION_WAIT: Duration = Duration::from_secs(3);

/// The gateway capabilities kiln serves (BuildKit's `pb.Caps` IDs).
const FRONTEND_CAPS: [&str; 5] = [
    "solve.base",
    "return",
    "returnmap",
    "importcaches",
    "proto.refarray",
];

/// What the exporters answered, or why the build failed.
type Outcome = Result<HashMap<String, String>, SolveError>;

/// Builds whose Control `Solve` waits for a build function, by build ID.
#[derive(Default)]
pub struct GatewayBuilds(Mutex<HashMap<String, Arc<GatewayBuild>>>);

/// One build run through a build function.
pub struct GatewayBuild {
    /// The Control request: session, exporters, caches, entitlements.
    request: SolveRequest,
    cancel: Arc<AtomicBool>,
    progress: Mutex<Progress>,
    finish: Mutex<Option<oneshot::Sender<Outcome>>>,
}

/// How far the build function got.
enum Progress {
    /// It has not asked for the Dockerfile frontend yet.
    Waiting,
    /// The build runs.
    Solving,
    /// The build ran and was exported; `Return` of `id` completes it.
    Solved {
        id: String,
        response: HashMap<String, String>,
    },
    /// The build failed with this message.
    Failed(String),
}

impl GatewayBuilds {
    /// Runs the build `request` (a Control `Solve` without frontend or definition) as
    /// its client's build function drives it; returns what the Control `Solve` answers.
    pub async fn run(&self, request: SolveRequest, cancel: Arc<AtomicBool>) -> Outcome {
        let id = request.r#ref.clone();
        let (finish, finished) = oneshot::channel();
        let build = GatewayBuild {
            request,
            cancel,
            progress: Mutex::new(Progress::Waiting),
            finish: Mutex::new(Some(finish)),
        };
        let build = Arc::new(build);
        self.0
            .lock()
            .unwrap()
            .insert(id.clone(), Arc::clone(&build));
        // A cancelled build (the daemon stops) ends here: the build function's `Return`
        // may never get through.
        let cancelled = async {
            while !build.cancel.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let outcome = tokio::select! {
            outcome = finished => outcome.unwrap_or_else(|_| {
                Err(SolveError::Build(
                    "the client's build function ended without returning a result".into(),
                ))
            }),
            () = cancelled => Err(SolveError::Build("cancelled".into())),
        };
        self.0.lock().unwrap().remove(&id);
        outcome
    }

    /// The build an LLBBridge call names, waiting a little for its Control `Solve`.
    async fn of<T>(&self, request: &Request<T>) -> Result<Arc<GatewayBuild>, Status> {
        let id = request
            .metadata()
            .get(BUILD_ID_METADATA)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::invalid_argument("no buildid found in context"))?
            .to_string();
        let deadline = tokio::time::Instant::now() + REGISTRATION_WAIT;
        loop {
            if let Some(build) = self.0.lock().unwrap().get(&id) {
                return Ok(Arc::clone(build));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::not_found(format!("no such job {id}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl GatewayBuild {
    fn finish(&self, outcome: Outcome) {
        if let Some(finish) = self.finish.lock().unwrap().take() {
            let _ = finish.send(outcome);
        }
    }

    /// The Control request with what the build function asked for: the frontend, its
    /// options and its cache imports.
    fn frontend_request(&self, asked: GatewaySolveRequest) -> SolveRequest {
        let mut request = self.request.clone();
        request.frontend = asked.frontend;
        request.frontend_attrs.extend(asked.frontend_opt);
        if !asked.cache_imports.is_empty() {
            let cache = request.cache.get_or_insert_with(CacheOptions::default);
            cache.imports = asked
                .cache_imports
                .into_iter()
                .map(|entry| ControlCacheEntry {
                    r#type: entry.r#type,
                    attrs: entry.attrs,
                })
                .collect();
        }
        request
    }
}

/// Refuses what kiln's gateway does not run, in the words of its Control service.
fn check_asked(asked: &GatewaySolveRequest) -> Result<(), Status> {
    if asked.definition.is_some() {
        return Err(Status::invalid_argument(
            "kiln builds Dockerfiles (frontend dockerfile.v0); it does not run LLB definitions",
        ));
    }
    if asked.frontend != DOCKERFILE_FRONTEND {
        return Err(Status::invalid_argument(format!(
            "kiln has no frontend {:?}; it builds Dockerfiles (dockerfile.v0)",
            asked.frontend
        )));
    }
    if let Some(request) = asked.frontend_opt.get("requestid") {
        return Err(Status::invalid_argument(format!(
            "kiln does not answer frontend subrequests ({request})"
        )));
    }
    Ok(())
}

/// The LLBBridge service as tonic calls it.
#[derive(Clone)]
pub struct GatewayService(pub Arc<Daemon>);

#[tonic::async_trait]
impl LlbBridge for GatewayService {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PongResponse>, Status> {
        self.0.gateways.of(&request).await?;
        Ok(Response::new(PongResponse {
            frontend_api_caps: FRONTEND_CAPS
                .iter()
                .map(|id| ApiCap {
                    id: (*id).to_string(),
                    enabled: true,
                })
                .collect(),
            llb_caps: Vec::new(),
            workers: vec![worker_record()],
        }))
    }

    async fn solve(
        &self,
        request: Request<GatewaySolveRequest>,
    ) -> Result<Response<SolveResponse>, Status> {
        let build = self.0.gateways.of(&request).await?;
        let asked = request.into_inner();
        check_asked(&asked)?;
        {
            let mut progress = build.progress.lock().unwrap();
            if !matches!(*progress, Progress::Waiting) {
                return Err(Status::failed_precondition(
                    "kiln runs one Dockerfile solve per build",
                ));
            }
            *progress = Progress::Solving;
        }
        let (array_ref, result_return) = (asked.allow_result_array_ref, asked.allow_result_return);
        let frontend_request = build.frontend_request(asked);
        let outcome = solve::solve(
            Arc::clone(&self.0),
            frontend_request,
            Arc::clone(&build.cancel),
        )
        .await;
        let response = match outcome {
            Ok(response) => response,
            Err(err) => {
                let (status, message) = match err {
                    SolveError::Request(m) => (Status::invalid_argument(m.clone()), m),
                    SolveError::Build(m) => (Status::unknown(m.clone()), m),
                };
                *build.progress.lock().unwrap() = Progress::Failed(message);
                return Err(status);
            }
        };
        let id = format!("{}-result", build.request.r#ref);
        *build.progress.lock().unwrap() = Progress::Solved {
            id: id.clone(),
            response,
        };
        if !result_return {
            return Ok(Response::new(SolveResponse {
                r#ref: id,
                result: None,
            }));
        }
        let result = if array_ref {
            result::Result::Ref(Ref { id, def: None })
        } else {
            result::Result::RefDeprecated(id)
        };
        Ok(Response::new(SolveResponse {
            r#ref: String::new(),
            result: Some(crate::gateway::Result {
                result: Some(result),
                metadata: HashMap::new(),
            }),
        }))
    }

    async fn r#return(
        &self,
        request: Request<ReturnRequest>,
    ) -> Result<Response<ReturnResponse>, Status> {
        let build = self.0.gateways.of(&request).await?;
        let returned = request.into_inner();
        let progress = std::mem::replace(&mut *build.progress.lock().unwrap(), Progress::Waiting);
        let outcome = match (returned.error, progress) {
            // The build's own failure says more than the build function's report of it.
            (Some(_), Progress::Failed(message)) => Err(SolveError::Build(message)),
            (Some(error), _) => Err(SolveError::Build(error.message)),
            (None, Progress::Solved { id, response }) if returns(&returned.result, &id) => {
                Ok(response)
            }
            (None, _) => Err(SolveError::Build(
                "the build function returned a result kiln did not build (kiln returns the \
                 Dockerfile frontend's result only)"
                    .into(),
            )),
        };
        build.finish(outcome);
        Ok(Response::new(ReturnResponse {}))
    }
}

/// Whether a returned result is the reference `id` (alone or in a map).
fn returns(result: &Option<crate::gateway::Result>, id: &str) -> bool {
    match result.as_ref().and_then(|r| r.result.as_ref()) {
        Some(result::Result::Ref(r)) => r.id == id,
        Some(result::Result::RefDeprecated(r)) => r == id,
        Some(result::Result::Refs(map)) => {
            !map.refs.is_empty() && map.refs.values().all(|r| r.id == id)
        }
        None => false,
    }
}
