//! Lowering: typed stages to an op DAG plus the image config of the target stage
//! (BuildKit's `dockerfile2llb`).
//!
//! Stages are lowered on demand starting from the target, so a stage that the target does not
//! reach (through `FROM`, `COPY --from` or `RUN --mount=from=`) is never lowered. Identical ops
//! in different stages become one vertex because vertices are content-addressed.

mod args;
mod copy;
mod history;
mod mount;
mod run;
mod stage;

use std::collections::BTreeMap;

use kiln_cache::Digest;
use kiln_image::Image;
use kiln_solver::{
    CopyAction, Definition, DefinitionBuilder, FileAction, FileOp, Op, Platform, SourceOp,
    VertexMeta,
};

use crate::error::{Error, Location, Result};
use crate::instructions::Dockerfile;

pub use args::{BUILTIN_ARGS, PROXY_ARGS};
pub use mount::parse_size;
pub use run::RunOptions;

/// What a build asks of the frontend.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The stage to build; the last stage when `None`.
    pub target: Option<String>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// The platform the image is for (`TARGETPLATFORM`).
    pub target_platform: Platform,
    /// The platform the build runs on (`BUILDPLATFORM`).
    pub build_platform: Platform,
    /// `.dockerignore` patterns of the build context.
    pub context_excludes: Vec<String>,
    /// `--no-cache`: every vertex ignores the cache.
    pub no_cache: bool,
    /// `--no-cache-filter`: stages whose vertices ignore the cache.
    pub no_cache_stages: Vec<String>,
    /// `--label` values added to the image config.
    pub labels: BTreeMap<String, String>,
    /// `--shm-size`, `--ulimit` and `--add-host`: what every RUN step gets.
    pub run: RunOptions,
    /// `--build-context NAME=…`: what `FROM NAME` and `--from=NAME` read instead, by name.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// This lowering is one platform of several: step names start with their platform.
    pub multi_platform: bool,
}

/// What a `--build-context` gives the stages that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory: the local source of that name, with its own `.dockerignore`.
    Local {
        /// The local source's name.
        source: String,
        /// Its `.dockerignore` patterns.
        excludes: Vec<String>,
    },
    /// An image (`docker-image://REF`; `scratch` is the empty filesystem).
    Image(String),
    /// A stage of the Dockerfile (`target:STAGE`).
    Stage(String),
    /// An image of an OCI image layout directory (`oci-layout://PATH[:TAG][@DIGEST]`),
    /// which the client has put in the content store without a name: found by its digest.
    OciLayout {
        /// The layout directory, for messages.
        layout: String,
        /// The image pinned by its manifest or index digest (`NAME@sha256:…`).
        reference: String,
    },
}

impl Default for BuildOptions {
    fn default() -> Self {
        let host = Platform::host();
        BuildOptions {
            target: None,
            build_args: BTreeMap::new(),
            target_platform: host.clone(),
            build_platform: host,
            context_excludes: Vec::new(),
            no_cache: false,
            no_cache_stages: Vec::new(),
            labels: BTreeMap::new(),
            run: RunOptions::default(),
            named_contexts: BTreeMap::new(),
            multi_platform: false,
        }
    }
}

impl BuildOptions {
    /// Whether `--build-arg BUILDKIT_MULTI_PLATFORM=…` asks for a multi-platform result
    /// (an index, platform folders, platform-named steps) even for one platform, as
    /// BuildKit's Dockerfile frontend reads it (Go's boolean words).
    pub fn multi_platform_requested(&self) -> Result<bool> {
        match self
            .build_args
            .get("BUILDKIT_MULTI_PLATFORM")
            .map(String::as_str)
        {
            None | Some("") => Ok(false),
            Some(value) => kiln_solver::parse_go_bool(value).ok_or_else(|| {
                Error::new(format!(
                    "invalid boolean value for BUILDKIT_MULTI_PLATFORM: {value}"
                ))
            }),
        }
    }
}

/// Looks up base images' configs while lowering (`FROM` needs a base's Env, WorkingDir, User,
/// Shell and ONBUILD triggers to lower what follows).
pub trait ImageResolver: Sync {
    /// The config of `reference` for `platform`, or an error that names the cause.
    fn resolve_config(&self, reference: &str, platform: &Platform) -> Result<Image, String>;
}

/// A resolver for when no image store is at hand (`kiln debug graph`): every base image has
/// an empty config, so only what the Dockerfile itself sets is known.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptyConfigs;

impl ImageResolver for EmptyConfigs {
    fn resolve_config(&self, _reference: &str, _platform: &Platform) -> Result<Image, String> {
        Ok(Image::default())
    }
}

/// The result of lowering: the DAG and the image config of the target stage.
#[derive(Clone, Debug)]
pub struct Lowered {
    /// The validated op DAG; its root is the target stage's filesystem (`None` for a target
    /// that is `FROM scratch` with no filesystem change).
    pub definition: Definition,
    /// The image config for the target stage (without `rootfs`, which the exporter fills).
    pub image: Image,
    /// Non-fatal findings, e.g. build args that nothing used.
    pub warnings: Vec<String>,
}

/// Stack for lowering: a stage is lowered after the stages it builds on, recursively, so
/// thousands of chained stages need more than a thread's default (pages are only used
/// as deep as the Dockerfile goes).
const LOWERING_STACK: usize = 512 << 20;

/// Lowers `dockerfile` for one target platform.
pub fn lower(
    dockerfile: &Dockerfile,
    options: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<Lowered> {
    std::thread::scope(|scope| {
        let lowering = std::thread::Builder::new()
            .name("lowering".into())
            .stack_size(LOWERING_STACK)
            .spawn_scoped(scope, || lower_here(dockerfile, options, resolver));
        match lowering {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => lower_here(dockerfile, options, resolver),
        }
    })
}

/// What [`lower_platforms`] makes: one definition whose roots are the platforms' results.
#[derive(Debug)]
pub struct PlatformsLowered {
    /// The op DAG of every platform; its roots are in the order of `images`, and a vertex
    /// several platforms share (a `FROM --platform=$BUILDPLATFORM` stage) is one.
    pub definition: Definition,
    /// Each platform and its image config.
    pub images: Vec<(Platform, Image)>,
    /// Non-fatal findings, each once.
    pub warnings: Vec<String>,
}

/// Lowers `dockerfile` for each of `platforms` (`options.target_platform` alone when
/// empty); with several (or `options.multi_platform`, one builder's part of a
/// multi-platform build, or `BUILDKIT_MULTI_PLATFORM=1`), step names start with their
/// platform, as BuildKit's.
pub fn lower_platforms(
    dockerfile: &Dockerfile,
    options: &BuildOptions,
    platforms: &[Platform],
    resolver: &dyn ImageResolver,
) -> Result<PlatformsLowered> {
    let platforms = match platforms {
        [] => std::slice::from_ref(&options.target_platform),
        some => some,
    };
    let mut parts = Vec::with_capacity(platforms.len());
    let mut images = Vec::with_capacity(platforms.len());
    let mut warnings: Vec<String> = Vec::new();
    let multi_platform = platforms.len() > 1 || options.multi_platform_requested()?;
    for platform in platforms {
        let mut options = options.clone();
        options.target_platform = platform.clone();
        options.multi_platform |= multi_platform;
        let lowered = lower(dockerfile, &options, resolver)?;
        parts.push(lowered.definition);
        images.push((platform.clone(), lowered.image));
        for warning in lowered.warnings {
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        }
    }
    let definition = Definition::merge(&parts).map_err(|e| Error::new(e.to_string()))?;
    Ok(PlatformsLowered {
        definition,
        images,
        warnings,
    })
}

/// [`lower`] on the calling thread's stack.
fn lower_here(
    dockerfile: &Dockerfile,
    options: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<Lowered> {
    let mut lowerer = Lowerer::new(dockerfile, options, resolver)?;
    let target = lowerer.target_index()?;
    lowerer.stage(target)?;
    let done = match std::mem::take(&mut lowerer.stages[target]) {
        StageSlot::Done(done) => done,
        _ => unreachable!("stage() leaves the target lowered"),
    };
    let mut warnings = lowerer.warnings;
    let unused: Vec<&String> = options
        .build_args
        .keys()
        // Proxy variables, SOURCE_DATE_EPOCH and BuildKit's own `BUILDKIT_*` arguments
        // are read by the builder, declared or not.
        .filter(|k| {
            !lowerer.used_args.contains(*k)
                && !PROXY_ARGS.contains(&k.as_str())
                && k.as_str() != "SOURCE_DATE_EPOCH"
                && !k.starts_with("BUILDKIT_")
        })
        .collect();
    if !unused.is_empty() {
        let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
        warnings.push(format!(
            "one or more build args were not consumed: [{}]",
            names.join(" ")
        ));
    }
    let definition = lowerer
        .builder
        .finish(done.state)
        .map_err(|e| Error::new(format!("internal error: invalid build graph: {e}")))?;
    let mut image = done.image;
    for (k, v) in &options.labels {
        image.config.labels.insert(k.clone(), v.clone());
    }
    Ok(Lowered {
        definition,
        image,
        warnings,
    })
}

/// A lowered stage: its filesystem vertex and image config.
#[derive(Clone, Debug)]
struct StageResult {
    /// The stage's filesystem; `None` is an empty filesystem.
    state: Option<Digest>,
    /// The stage's image config.
    image: Image,
    /// The stage's platform.
    platform: Platform,
    /// The environment its steps saw last (config Env plus ARG values): a stage built
    /// `FROM` this one starts with it, as in BuildKit.
    env: Vec<(String, String)>,
    /// The ARGs declared in it (and in the stages it is built on), with their values.
    build_args: Vec<(String, Option<String>)>,
}

/// Lowering progress of one stage, for on-demand lowering and cycle detection.
#[derive(Clone, Debug, Default)]
enum StageSlot {
    #[default]
    Pending,
    InProgress,
    Done(Box<StageResult>),
}

/// Shared lowering state across stages.
struct Lowerer<'a> {
    dockerfile: &'a Dockerfile,
    options: &'a BuildOptions,
    resolver: &'a dyn ImageResolver,
    builder: DefinitionBuilder,
    stages: Vec<StageSlot>,
    /// Global ARG values (meta args and the built-in platform args).
    global_args: Vec<(String, Option<String>)>,
    /// Build args some ARG declared.
    used_args: std::collections::BTreeSet<String>,
    /// The build context source vertex, once something reads it.
    context: Option<Digest>,
    warnings: Vec<String>,
    /// Step names carry their stage's name (see [`stage::labels_stages`]).
    labels_stages: bool,
}

/// Where `COPY --from` or `RUN --mount=from=` reads.
enum Source {
    /// Another stage's filesystem (`None`: empty).
    Stage(Option<Digest>),
    /// An image's filesystem.
    Image(Digest),
}

impl<'a> Lowerer<'a> {
    fn new(
        dockerfile: &'a Dockerfile,
        options: &'a BuildOptions,
        resolver: &'a dyn ImageResolver,
    ) -> Result<Self> {
        let mut lowerer = Lowerer {
            dockerfile,
            options,
            resolver,
            builder: DefinitionBuilder::new(),
            stages: vec![StageSlot::Pending; dockerfile.stages.len()],
            global_args: Vec::new(),
            used_args: Default::default(),
            context: None,
            warnings: Vec::new(),
            labels_stages: stage::labels_stages(dockerfile),
        };
        lowerer.global_args = lowerer.evaluate_meta_args()?;
        Ok(lowerer)
    }

    /// The index of the stage to build.
    fn target_index(&self) -> Result<usize> {
        let stages = &self.dockerfile.stages;
        let Some(target) = &self.options.target else {
            return Ok(stages.len() - 1);
        };
        let lower = target.to_lowercase();
        stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
            .ok_or_else(|| {
                let names: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
                Error::new(format!(
                    "target stage {target:?} could not be found (stages: {})",
                    if names.is_empty() {
                        "none named".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })
    }

    /// Lowers stage `index` unless it already is, and returns its result.
    fn stage(&mut self, index: usize) -> Result<StageResult> {
        match &self.stages[index] {
            StageSlot::Done(done) => return Ok((**done).clone()),
            StageSlot::InProgress => {
                let stage = &self.dockerfile.stages[index];
                return Err(Error::at(
                    format!(
                        "circular dependency detected on stage: {}",
                        stage_display_name(stage.name.as_deref(), index)
                    ),
                    stage.location,
                ));
            }
            StageSlot::Pending => {}
        }
        self.stages[index] = StageSlot::InProgress;
        let result = stage::lower_stage(self, index)?;
        self.stages[index] = StageSlot::Done(Box::new(result.clone()));
        Ok(result)
    }

    /// The stage whose (lower-cased) name is `name`, if any.
    fn stage_named(&self, name: &str) -> Option<usize> {
        let lower = name.to_lowercase();
        self.dockerfile
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    /// Resolves a `--from=` value of the stage `current`: a stage name, a stage index, or an
    /// image reference.
    fn source(
        &mut self,
        value: &str,
        current: usize,
        platform: &Platform,
        location: Location,
    ) -> Result<Source> {
        if value.is_empty() {
            return Err(Error::at("--from requires a stage name or image", location));
        }
        let index = match value.parse::<usize>() {
            Ok(i) if i < self.dockerfile.stages.len() => Some(i),
            Ok(i) => {
                return Err(Error::at(
                    format!(
                        "invalid from flag value {value}: stage index {i} does not exist (the Dockerfile has {} stages)",
                        self.dockerfile.stages.len()
                    ),
                    location,
                ));
            }
            Err(_) => self.stage_named(value),
        };
        if let Some(i) = index {
            if i == current {
                return Err(Error::at(
                    format!("invalid from flag value {value}: a stage cannot copy from itself"),
                    location,
                ));
            }
            return Ok(Source::Stage(self.stage(i)?.state));
        }
        if let Some(context) = self.named_context(value) {
            let (state, _, _) = self.load_named(value, context, platform, location)?;
            return Ok(Source::Stage(state));
        }
        if !looks_like_image_reference(value) {
            return Err(Error::at(
                format!(
                    "invalid from flag value {value:?}: no build stage is named so, and it is not a valid image reference"
                ),
                location,
            ));
        }
        let internal = if self.options.multi_platform {
            format!("{platform} internal")
        } else {
            "internal".to_string()
        };
        let description = format!("[{internal}] load metadata for {value}");
        Ok(Source::Image(self.image_source(
            value,
            platform,
            location,
            description,
        )))
    }

    /// The `--build-context` that `name` (as the Dockerfile writes it) refers to: matched
    /// as written, else in its familiar form without `:latest`, as BuildKit matches it.
    fn named_context(&self, name: &str) -> Option<NamedContext> {
        let contexts = &self.options.named_contexts;
        if contexts.is_empty() {
            return None;
        }
        if let Some(context) = contexts.get(name) {
            return Some(context.clone());
        }
        let familiar = kiln_image::Reference::parse_normalized(name)
            .ok()?
            .familiar();
        contexts
            .get(familiar.strip_suffix(":latest").unwrap_or(&familiar))
            .cloned()
    }

    /// The filesystem, config and platform (when it names one) the named context `name`
    /// gives.
    fn load_named(
        &mut self,
        name: &str,
        context: NamedContext,
        platform: &Platform,
        location: Location,
    ) -> Result<(Option<Digest>, Image, Option<Platform>)> {
        match context {
            NamedContext::Local { source, excludes } => {
                let meta = |description: String| VertexMeta {
                    description,
                    ..VertexMeta::default()
                };
                let op = Op::Source(SourceOp::Local {
                    name: source,
                    exclude_patterns: excludes,
                });
                let local = self.builder.add(
                    op,
                    Vec::new(),
                    meta(format!("[context {name}] load from client")),
                );
                // The directory as a filesystem of its own, owned by root as the context.
                let op = Op::File(FileOp {
                    base: None,
                    actions: vec![FileAction::Copy(CopyAction::new(0, "/", "/"))],
                });
                let state =
                    self.builder
                        .add(op, vec![local], meta(format!("[context {name}] copy")));
                Ok((Some(state), stage::empty_image(), None))
            }
            NamedContext::Image(reference) if reference.eq_ignore_ascii_case("scratch") => {
                Ok((None, stage::empty_image(), None))
            }
            NamedContext::Image(reference) => {
                let description = format!("[context {name}] {reference}");
                self.named_image(&reference, None, description, platform, location)
            }
            NamedContext::OciLayout { layout, reference } => {
                // BuildKit's name for the step.
                let description = format!("[context {name}] OCI load from client");
                self.named_image(&reference, Some(&layout), description, platform, location)
            }
            NamedContext::Stage(target) => {
                let index = self.stage_named(&target).ok_or_else(|| {
                    Error::at(
                        format!("build context {name}: no stage is named {target:?}"),
                        location,
                    )
                })?;
                let result = self.stage(index)?;
                Ok((result.state, result.image, Some(result.platform)))
            }
        }
    }

    /// What a named context that is the image `reference` gives (see
    /// [`load_named`](Self::load_named)); errors name the OCI layout `layout` it comes
    /// from, if it comes from one.
    fn named_image(
        &mut self,
        reference: &str,
        layout: Option<&str>,
        description: String,
        platform: &Platform,
        location: Location,
    ) -> Result<(Option<Digest>, Image, Option<Platform>)> {
        let image = self
            .resolver
            .resolve_config(reference, platform)
            .map_err(|e| {
                let cause = match layout {
                    Some(layout) => format!("oci-layout {layout}: {e}"),
                    None => e,
                };
                Error::unresolved(reference, cause, location)
            })?;
        let state = self.image_source(reference, platform, location, description);
        Ok((Some(state), image, None))
    }

    /// The source vertex of an image.
    fn image_source(
        &mut self,
        reference: &str,
        platform: &Platform,
        location: Location,
        description: String,
    ) -> Digest {
        let op = Op::Source(SourceOp::Image {
            reference: reference.to_string(),
            platform: platform.clone(),
        });
        let meta = VertexMeta {
            description,
            location: Some((location.start_line, location.end_line)),
            ..VertexMeta::default()
        };
        self.builder.add(op, Vec::new(), meta)
    }

    /// The build context's source vertex.
    fn context(&mut self) -> Digest {
        if let Some(d) = self.context {
            return d;
        }
        let op = Op::Source(SourceOp::Local {
            name: "context".into(),
            exclude_patterns: self.options.context_excludes.clone(),
        });
        let meta = VertexMeta {
            description: "[internal] load build context".into(),
            ..VertexMeta::default()
        };
        let d = self.builder.add(op, Vec::new(), meta);
        self.context = Some(d);
        d
    }
}

/// BuildKit's name for a stage in step names: its `AS` name, else `stage-N`.
fn stage_display_name(name: Option<&str>, index: usize) -> String {
    name.map_or_else(|| format!("stage-{index}"), str::to_string)
}

/// Whether `value` parses as an image reference (Docker's grammar).
fn looks_like_image_reference(value: &str) -> bool {
    kiln_image::Reference::parse_normalized(value).is_ok()
}

#[cfg(test)]
mod tests;
