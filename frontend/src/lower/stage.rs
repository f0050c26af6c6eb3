//! Lowering one stage: its base, then each instruction in order, keeping the stage's
//! filesystem vertex, image config and ARG/ENV state.

use kiln_cache::Digest;
use kiln_image::{Empty, Image};
use kiln_solver::{FileAction, FileOp, MkdirAction, Op, Platform, VertexMeta};

use super::args::{set, valued};
use super::history::{commit, healthcheck, plain_list, quoted_list};
use super::{Lowerer, StageResult, looks_like_image_reference, stage_display_name};
use crate::error::{Error, Location, Result};
use crate::instructions::{CommandLine, Dockerfile, Instruction, InstructionKind, Stage};
use crate::parser::parse;
use crate::shell::Lexer;

/// The default `PATH` of a Linux container, as Docker sets it when an image has none.
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The state of a stage while its instructions are lowered.
pub(super) struct StageState {
    /// Stage index in the Dockerfile.
    pub index: usize,
    /// What step names start with inside their brackets: the `AS` name or `stage-N` and a
    /// space when the Dockerfile has several stages, else nothing (as BuildKit names them).
    pub label: String,
    /// The filesystem so far; `None` is empty (scratch).
    pub state: Option<Digest>,
    /// The image config so far.
    pub image: Image,
    /// The stage's platform.
    pub platform: Platform,
    /// The environment RUN sees and expansion uses: the config's Env plus ARG values.
    pub env: Vec<(String, String)>,
    /// ARGs declared in the stage, with their values.
    pub build_args: Vec<(String, Option<String>)>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    pub cmd_set: bool,
    /// Number of the step being lowered, counted as BuildKit counts: a FROM image, then each
    /// RUN, COPY, ADD and WORKDIR that makes a vertex.
    pub step: usize,
    /// Steps in the stage: a FROM image, the base's ONBUILD triggers, and every RUN, COPY,
    /// ADD and WORKDIR.
    pub total: usize,
    /// The instruction being lowered is a base image's ONBUILD trigger.
    pub in_trigger: bool,
    /// Several platforms are built: step names start with the stage's platform.
    pub names_platform: bool,
    /// Vertices of this stage bypass the cache.
    pub ignore_cache: bool,
    /// The Dockerfile's escape character.
    pub escape: char,
}

impl StageState {
    /// Expands variables in one word with the stage's environment.
    pub fn expand(&self, word: &str, location: Location) -> Result<String> {
        Lexer::new(self.escape)
            .process_word(word, &self.env)
            .map_err(|e| Error::at(e.message, location))
    }

    /// Expands an optional flag value.
    pub fn expand_opt(&self, word: Option<&str>, location: Location) -> Result<Option<String>> {
        word.map(|w| self.expand(w, location)).transpose()
    }

    /// The platform part of a multi-platform build's step names (`linux/amd64 `), with
    /// `->arm64` when the stage's `TARGET*` args name another platform (a stage that
    /// cross-compiles), as BuildKit writes it; empty for one platform.
    fn platform_label(&self) -> String {
        if !self.names_platform {
            return String::new();
        }
        let target = target_from_env(&self.env, &self.platform)
            .map(|target| cross_suffix(&self.platform, &target))
            .unwrap_or_default();
        format!("{}{target} ", self.platform)
    }

    /// Metadata for a vertex made by the current instruction.
    pub fn meta(&self, instruction: &Instruction) -> VertexMeta {
        VertexMeta {
            description: format!(
                "{}{}",
                step_prefix(
                    &self.platform_label(),
                    &self.label,
                    self.step,
                    self.total,
                    self.in_trigger
                ),
                uppercase_keyword(&instruction.original)
            ),
            location: Some((
                instruction.location.start_line,
                instruction.location.end_line,
            )),
            ignore_cache: self.ignore_cache,
            proxy_env: Vec::new(),
        }
    }

    /// The working directory, `/` when unset.
    pub fn workdir(&self) -> String {
        match self.image.config.working_dir.as_str() {
            "" => "/".to_string(),
            wd => wd.to_string(),
        }
    }

    /// The shell for shell-form commands.
    pub fn shell(&self) -> Vec<String> {
        self.image
            .config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// A command line as argv: shell form is wrapped in the stage's SHELL.
    pub fn argv(&self, command: &CommandLine) -> Vec<String> {
        if command.prepend_shell {
            let mut args = self.shell();
            args.extend(command.args.iter().cloned());
            args
        } else {
            command.args.clone()
        }
    }

    /// Sets an environment variable in the config and in the state.
    fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        let env = &mut self.image.config.env;
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
        set(&mut self.env, key, value.to_string());
    }
}

/// `run echo hi` → `RUN echo hi`, as BuildKit names steps.
fn uppercase_keyword(original: &str) -> String {
    match original.split_once(char::is_whitespace) {
        Some((k, rest)) => format!("{} {rest}", k.to_uppercase()),
        None => original.to_uppercase(),
    }
}

/// Whether step names carry their stage's name. dockerfile2llb drops it when it tracks a
/// single build state, and it tracks one per stage plus one per source that names no
/// stage: each RUN mount without `from=` (or with one that is not a stage's name) and
/// each `COPY --from` of an image.
pub(super) fn labels_stages(dockerfile: &Dockerfile) -> bool {
    let is_stage = |name: &str| {
        dockerfile
            .stages
            .iter()
            .any(|s| s.name.as_deref() == Some(name.to_lowercase().as_str()))
    };
    dockerfile.stages.len() > 1
        || dockerfile
            .stages
            .iter()
            .flat_map(|stage| &stage.instructions)
            .any(|instruction| match &instruction.kind {
                InstructionKind::Run(run) => run.mounts.iter().any(|mount| {
                    let from = mount.split(',').find_map(|field| {
                        let (key, value) = field.split_once('=')?;
                        key.trim().eq_ignore_ascii_case("from").then_some(value)
                    });
                    !from.is_some_and(is_stage)
                }),
                InstructionKind::Copy(copy) => copy
                    .from
                    .as_deref()
                    .is_some_and(|from| from.parse::<usize>().is_err() && !is_stage(from)),
                _ => false,
            })
}

/// Lowers stage `index` (its base first).
pub(super) fn lower_stage(lowerer: &mut Lowerer<'_>, index: usize) -> Result<StageResult> {
    let stage: &Stage = &lowerer.dockerfile.stages[index];
    let location = stage.location;
    let label = if lowerer.labels_stages {
        format!("{} ", stage_display_name(stage.name.as_deref(), index))
    } else {
        String::new()
    };
    let global_env = valued(&lowerer.global_args);
    let lexer = Lexer::new(lowerer.dockerfile.escape);
    let expand_global = |word: &str| {
        lexer
            .process_word_with_matches(word, &global_env)
            .map_err(|e| Error::at(e.message, location))
    };

    let base = expand_global(&stage.base)?;
    for var in &base.unmatched {
        lowerer.warnings.push(format!(
            "line {}: FROM {} uses ARG {var}, which has no value in the global scope",
            location.start_line, stage.base
        ));
    }
    let base = base.result;
    if base.is_empty() {
        return Err(Error::at(
            format!("base name ({}) should not be blank", stage.base),
            location,
        ));
    }
    let explicit_platform = match &stage.platform {
        Some(p) => {
            let expanded = expand_global(p)?.result;
            let parsed: Platform = expanded
                .parse()
                .map_err(|e: kiln_solver::PlatformError| Error::at(e.to_string(), location))?;
            Some(parsed.normalized())
        }
        None => None,
    };

    let own_context = stage
        .name
        .as_deref()
        .and_then(|name| Some((name, lowerer.named_context(name)?)));
    let base = if let Some((name, context)) = own_context {
        // A --build-context named like the stage replaces it, instructions and all.
        let platform = explicit_platform.unwrap_or_else(|| lowerer.options.target_platform.clone());
        let (state, image, named_platform) =
            lowerer.load_named(name, context, &platform, location)?;
        let env = image_env(&image);
        return Ok(StageResult {
            state,
            image,
            platform: named_platform.unwrap_or(platform),
            env,
            build_args: Vec::new(),
        });
    } else if base.eq_ignore_ascii_case("scratch") {
        let platform = explicit_platform.unwrap_or_else(|| lowerer.options.target_platform.clone());
        Base::fresh(empty_image(), platform)
    } else if let Some(j) = lowerer.stage_named(&base).filter(|&j| j < index) {
        let parent = lowerer.stage(j)?;
        Base {
            state: parent.state,
            image: parent.image,
            platform: explicit_platform.unwrap_or(parent.platform),
            env: Some(parent.env),
            build_args: parent.build_args,
            image_reference: None,
        }
    } else if let Some(context) = lowerer.named_context(&base) {
        let platform = explicit_platform.unwrap_or_else(|| lowerer.options.target_platform.clone());
        let (state, image, named_platform) =
            lowerer.load_named(&base, context, &platform, location)?;
        let mut named = Base::fresh(image, named_platform.unwrap_or(platform));
        named.state = state;
        named
    } else {
        if !looks_like_image_reference(&base) {
            return Err(Error::at(
                format!(
                    "invalid reference format: {base:?} is neither a build stage nor a valid image reference"
                ),
                location,
            ));
        }
        let platform = explicit_platform.unwrap_or_else(|| lowerer.options.target_platform.clone());
        let image = lowerer
            .resolver
            .resolve_config(&base, &platform)
            .map_err(|e| Error::unresolved(&base, e, location))?;
        if let Some(warning) = base_platform_warning(&base, &image, &platform, location) {
            lowerer.warnings.push(warning);
        }
        let mut fresh = Base::fresh(image, platform);
        fresh.image_reference = Some(base);
        fresh
    };
    let Base {
        mut state,
        mut image,
        platform,
        env,
        build_args,
        image_reference,
    } = base;
    image.architecture = platform.architecture.clone();
    image.os = platform.os.clone();
    image.variant = (!platform.variant.is_empty()).then(|| platform.variant.clone());
    image.created = None;
    if !image.config.env.iter().any(|e| e.starts_with("PATH=")) {
        image.config.env.push(format!("PATH={DEFAULT_PATH}"));
    }
    // A stage on a stage carries the parent's ARG values in its environment, but as in
    // BuildKit (which adds the image config's Env again as a stage starts) the config's
    // values win where both name a variable.
    let env = match env {
        Some(mut carried) => {
            for (key, value) in image_env(&image) {
                match carried.iter_mut().find(|(k, _)| *k == key) {
                    Some(existing) => existing.1 = value,
                    None => carried.push((key, value)),
                }
            }
            carried
        }
        None => image_env(&image),
    };
    let options = lowerer.options;
    let ignore_cache = options.no_cache
        || stage.name.as_ref().is_some_and(|n| {
            options
                .no_cache_stages
                .iter()
                .any(|f| f.eq_ignore_ascii_case(n))
        });
    let triggers = std::mem::take(&mut image.config.on_build);
    let total = usize::from(image_reference.is_some())
        + triggers.len()
        + stage
            .instructions
            .iter()
            .filter(|i| i.kind.counts_as_step())
            .count();
    let names_platform = lowerer.options.multi_platform;
    if let Some(reference) = &image_reference {
        let platform_label = if names_platform {
            format!("{platform} ")
        } else {
            String::new()
        };
        let prefix = step_prefix(&platform_label, &label, 1, total, false);
        let description = format!("{prefix}FROM {reference}");
        state = Some(lowerer.image_source(reference, &platform, location, description));
    }
    let mut st = StageState {
        index,
        label,
        state,
        image,
        platform,
        env,
        build_args,
        cmd_set: false,
        step: usize::from(image_reference.is_some()),
        total,
        in_trigger: false,
        names_platform,
        ignore_cache,
        escape: lowerer.dockerfile.escape,
    };

    st.in_trigger = true;
    for trigger in &triggers {
        for instruction in onbuild_instructions(trigger, location)? {
            dispatch(lowerer, &mut st, &instruction)?;
        }
    }
    st.in_trigger = false;
    let instructions = &lowerer.dockerfile.stages[index].instructions;
    for instruction in instructions {
        dispatch(lowerer, &mut st, instruction)?;
    }
    Ok(StageResult {
        state: st.state,
        image: st.image,
        platform: st.platform,
        env: st.env,
        build_args: st.build_args,
    })
}

/// BuildKit's `InvalidBaseImagePlatform` warning, for a base whose config is for
/// another OS or architecture than the stage's platform (a single-platform image of the
/// local store): the build goes on, but never silently.
fn base_platform_warning(
    name: &str,
    image: &Image,
    expected: &Platform,
    location: Location,
) -> Option<String> {
    if image.os.is_empty() && image.architecture.is_empty() {
        return None;
    }
    let actual = Platform::new(
        &image.os,
        &image.architecture,
        image.variant.as_deref().unwrap_or_default(),
    )
    .normalized();
    if actual.os == expected.os && actual.architecture == expected.architecture {
        return None;
    }
    Some(format!(
        "InvalidBaseImagePlatform: Base image {name} was pulled with platform \"{actual}\", \
         expected \"{expected}\" for current build (line {})",
        location.start_line
    ))
}

/// BuildKit's empty image (`FROM scratch`, a local build context): WorkingDir `/` and the
/// default `PATH`.
pub(super) fn empty_image() -> Image {
    let mut image = Image::default();
    image.config.working_dir = "/".into();
    image.config.env.push(format!("PATH={DEFAULT_PATH}"));
    image
}

/// A config's Env as the pairs expansion uses.
fn image_env(image: &Image) -> Vec<(String, String)> {
    image
        .config
        .env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect()
}

/// What a stage starts from.
struct Base {
    state: Option<Digest>,
    image: Image,
    platform: Platform,
    /// The environment, when it is not the config's Env (a stage built on a stage).
    env: Option<Vec<(String, String)>>,
    build_args: Vec<(String, Option<String>)>,
    /// The image to pull, for a base that is an image.
    image_reference: Option<String>,
}

impl Base {
    fn fresh(image: Image, platform: Platform) -> Self {
        Base {
            state: None,
            image,
            platform,
            env: None,
            build_args: Vec::new(),
            image_reference: None,
        }
    }
}

/// BuildKit's step prefix, `[linux/arm64 stage-1  3/12] `: the platform of a
/// multi-platform build, then the stage's label; the index is padded to the width of the
/// total; triggers say `ONBUILD`; a stage with no steps has no prefix.
fn step_prefix(platform: &str, label: &str, step: usize, total: usize, in_trigger: bool) -> String {
    if total == 0 {
        return String::new();
    }
    let width = total.to_string().len();
    let onbuild = if in_trigger { "ONBUILD " } else { "" };
    format!("[{platform}{label}{step:>width$}/{total}] {onbuild}")
}

/// The platform a stage's `TARGETPLATFORM` (or `TARGETOS`/`TARGETARCH`/`TARGETVARIANT`)
/// args name, its missing parts taken from `stage`; `None` when it declares none.
fn target_from_env(env: &[(String, String)], stage: &Platform) -> Option<Platform> {
    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if let Some(parsed) = get("TARGETPLATFORM").and_then(|v| v.parse::<Platform>().ok()) {
        return Some(parsed);
    }
    let (os, arch, variant) = (get("TARGETOS"), get("TARGETARCH"), get("TARGETVARIANT"));
    if os.is_none() && arch.is_none() && variant.is_none() {
        return None;
    }
    let or_stage = |value: Option<&str>, default: &str| match value {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => default.to_string(),
    };
    Some(
        Platform::new(
            &or_stage(os, &stage.os),
            &or_stage(arch, &stage.architecture),
            variant.unwrap_or_default(),
        )
        .normalized(),
    )
}

/// BuildKit's `->arm64` (another architecture) or `->windows/amd64` (another OS) after a
/// stage's platform in step names; empty when the target is the stage's platform.
fn cross_suffix(stage: &Platform, target: &Platform) -> String {
    if target.os != stage.os {
        format!("->{target}")
    } else if target.architecture != stage.architecture {
        match target.variant() {
            "" => format!("->{}", target.architecture),
            variant => format!("->{}/{variant}", target.architecture),
        }
    } else {
        String::new()
    }
}

/// Parses a base image's ONBUILD trigger into instructions placed at the FROM line.
fn onbuild_instructions(trigger: &str, from: Location) -> Result<Vec<Instruction>> {
    let at = |e: Error| Error::at(format!("ONBUILD trigger {trigger:?}: {}", e.message), from);
    let doc = parse(trigger.as_bytes()).map_err(at)?;
    doc.nodes
        .iter()
        .map(|node| {
            if matches!(node.keyword.as_str(), "from" | "maintainer" | "onbuild") {
                return Err(Error::at(
                    format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        node.keyword.to_uppercase()
                    ),
                    from,
                ));
            }
            let mut instruction = Instruction::from_node(node).map_err(at)?;
            instruction.location = from;
            Ok(instruction)
        })
        .collect()
}

/// Lowers one instruction into the stage.
fn dispatch(
    lowerer: &mut Lowerer<'_>,
    st: &mut StageState,
    instruction: &Instruction,
) -> Result<()> {
    let loc = instruction.location;
    match &instruction.kind {
        InstructionKind::Env(pairs) => {
            let mut expanded = Vec::new();
            for kv in pairs {
                expanded.push((st.expand(&kv.key, loc)?, st.expand(&kv.value, loc)?));
            }
            let mut message = "ENV".to_string();
            for (k, v) in &expanded {
                st.set_env(k, v);
                message.push_str(&format!(" {k}={v}"));
            }
            commit(&mut st.image, message, false, false);
        }
        InstructionKind::Maintainer(name) => {
            st.image.author = Some(name.clone());
            commit(&mut st.image, format!("MAINTAINER {name}"), false, false);
        }
        InstructionKind::Label(pairs) => {
            let mut message = "LABEL".to_string();
            for kv in pairs {
                let (k, v) = (st.expand(&kv.key, loc)?, st.expand(&kv.value, loc)?);
                message.push_str(&format!(" {k}={v}"));
                st.image.config.labels.insert(k, v);
            }
            commit(&mut st.image, message, false, false);
        }
        InstructionKind::Add(add) => {
            st.step += 1;
            super::copy::lower_add(lowerer, st, instruction, add)?
        }
        InstructionKind::Copy(copy) => {
            st.step += 1;
            super::copy::lower_copy(lowerer, st, instruction, copy)?
        }
        InstructionKind::Onbuild(expression) => {
            // BuildKit records no history entry for ONBUILD.
            st.image.config.on_build.push(expression.clone());
        }
        InstructionKind::Workdir(path) => {
            let path = st.expand(path, loc)?;
            let wd = workdir_path(&st.workdir(), &path);
            st.image.config.working_dir = wd.clone();
            let layer = wd != "/";
            if layer {
                st.step += 1;
                let chown = parse_chown(&st.image.config.user);
                let op = Op::File(FileOp {
                    base: st.state.map(|_| 0),
                    actions: vec![FileAction::Mkdir(MkdirAction {
                        path: clean_path(&wd),
                        mode: 0o755,
                        make_parents: true,
                        chown,
                    })],
                });
                let inputs = st.state.into_iter().collect();
                st.state = Some(lowerer.builder.add(op, inputs, st.meta(instruction)));
            }
            commit(&mut st.image, format!("WORKDIR {wd}"), layer, false);
        }
        InstructionKind::Run(run) => {
            st.step += 1;
            super::run::lower_run(lowerer, st, instruction, run)?
        }
        InstructionKind::Cmd(command) => {
            let args = st.argv(command);
            commit(
                &mut st.image,
                format!("CMD {}", quoted_list(&args)),
                false,
                false,
            );
            st.image.config.cmd = Some(args);
            st.image.config.args_escaped = true;
            st.cmd_set = true;
        }
        InstructionKind::Entrypoint(command) => {
            let args = st.argv(command);
            let message = format!("ENTRYPOINT {}", quoted_list(&args));
            st.image.config.entrypoint = (!args.is_empty()).then_some(args);
            if !st.cmd_set {
                st.image.config.cmd = None;
            }
            commit(&mut st.image, message, false, false);
        }
        InstructionKind::Healthcheck(health) => {
            st.image.config.healthcheck = Some(health.clone());
            let message = format!("HEALTHCHECK {}", healthcheck(health));
            commit(&mut st.image, message, false, false);
        }
        InstructionKind::Expose(ports) => {
            let mut specs = Vec::new();
            for port in ports {
                for word in Lexer::new(st.escape)
                    .process_words(port, &st.env)
                    .map_err(|e| Error::at(e.message, loc))?
                {
                    specs.extend(expose_ports(&word).map_err(|e| Error::at(e, loc))?);
                }
            }
            for spec in &specs {
                st.image.config.exposed_ports.insert(spec.clone(), Empty {});
            }
            commit(
                &mut st.image,
                format!("EXPOSE {}", plain_list(&specs)),
                false,
                false,
            );
        }
        InstructionKind::User(user) => {
            let user = st.expand(user, loc)?;
            commit(&mut st.image, format!("USER {user}"), false, false);
            st.image.config.user = user;
        }
        InstructionKind::Volume(volumes) => {
            let mut expanded = Vec::new();
            for v in volumes {
                let v = st.expand(v, loc)?;
                if v.is_empty() {
                    return Err(Error::at(
                        "VOLUME specified can not be an empty string",
                        loc,
                    ));
                }
                st.image.config.volumes.insert(v.clone(), Empty {});
                expanded.push(v);
            }
            commit(
                &mut st.image,
                format!("VOLUME {}", plain_list(&expanded)),
                false,
                false,
            );
        }
        InstructionKind::StopSignal(signal) => {
            let signal = st.expand(signal, loc)?;
            check_signal(&signal).map_err(|e| Error::at(e, loc))?;
            commit(&mut st.image, format!("STOPSIGNAL {signal}"), false, false);
            st.image.config.stop_signal = signal;
        }
        InstructionKind::Arg(decls) => {
            let mut parts = Vec::new();
            for decl in decls {
                let default = st.expand_opt(decl.default.as_deref(), loc)?;
                let value = lowerer.stage_arg_value(&decl.name, default);
                if let Some(v) = &value {
                    set(&mut st.env, &decl.name, v.clone());
                }
                parts.push(match &value {
                    Some(v) => format!("{}={v}", decl.name),
                    None => decl.name.clone(),
                });
                set(&mut st.build_args, &decl.name, value);
            }
            commit(
                &mut st.image,
                format!("ARG {}", parts.join(" ")),
                false,
                false,
            );
        }
        InstructionKind::Shell(shell) => {
            st.image.config.shell = Some(shell.clone());
            commit(
                &mut st.image,
                format!("SHELL {}", plain_list(shell)),
                false,
                false,
            );
        }
    }
    Ok(())
}

/// `path.Join(base, p)` for relative `p`, `path.Clean(p)` for absolute `p`.
pub(super) fn join_path(base: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{base}/{p}")
    };
    clean_path(&joined)
}

/// BuildKit's `NormalizeWorkdir`: a relative path joins the current directory and is
/// cleaned; an absolute one is kept as written (`/app/` keeps its slash in the config);
/// an empty one (a variable without a value) keeps the current directory as it is.
fn workdir_path(current: &str, p: &str) -> String {
    if p.is_empty() {
        if current.is_empty() { "/" } else { current }.to_string()
    } else if p.starts_with('/') {
        p.to_string()
    } else {
        join_path(current, p)
    }
}

/// Go's `path.Clean` for absolute paths.
pub(super) fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `user[:group]` as a chown option; `None` for root by default.
pub(super) fn parse_chown(spec: &str) -> Option<kiln_solver::ChownOpt> {
    if spec.is_empty() {
        return None;
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (spec.to_string(), None),
    };
    Some(kiln_solver::ChownOpt { user, group })
}

/// BuildKit's EXPOSE port parsing: `[[ip:]host:]port[-end][/proto]` becomes one `port/proto`
/// per container port; the host part is checked and dropped.
fn expose_ports(spec: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c] => ("".to_string(), "", *c),
        [h, c] => ("".to_string(), *h, *c),
        [rest @ .., h, c] => (rest.join(":"), *h, *c),
        [] => unreachable!("split yields at least one part"),
    };
    let invalid_port = |e: String| format!("invalid port: {}: {e}", crate::parser::go_quote(spec));
    let (range, proto) = container.split_once('/').unwrap_or((container, ""));
    if range.is_empty() {
        return Err(invalid_port("no port specified".into()));
    }
    let proto = match proto.to_ascii_lowercase().as_str() {
        "" => "tcp".to_string(),
        "tcp" | "udp" | "sctp" => proto.to_ascii_lowercase(),
        _ => return Err(invalid_port(format!("invalid proto: {proto}"))),
    };
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(&ip);
    if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("invalid IP address: {ip}"));
    }
    let (start, end) = port_range(range).map_err(|_| format!("invalid containerPort: {range}"))?;
    if !host.is_empty() {
        let (host_start, host_end) =
            port_range(host).map_err(|_| format!("invalid hostPort: {host}"))?;
        if end - start != host_end - host_start && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {range} and {host}"
            ));
        }
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// `8000` or `8000-8002` as an inclusive range of ports.
fn port_range(range: &str) -> Result<(u32, u32), ()> {
    let port = |s: &str| s.parse::<u32>().ok().filter(|&p| p <= 65535).ok_or(());
    match range.split_once('-') {
        Some((a, b)) if a != b => {
            let (start, end) = (port(a)?, port(b)?);
            if end < start {
                Err(())
            } else {
                Ok((start, end))
            }
        }
        Some((a, _)) => Ok((port(a)?, port(a)?)),
        None => Ok((port(range)?, port(range)?)),
    }
}

/// Docker's `signal.ParseSignal`: a number or a known name, with or without `SIG`.
fn check_signal(signal: &str) -> Result<(), String> {
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if signal.parse::<u32>().is_ok_and(|n| n > 0) {
        return Ok(());
    }
    let upper = signal.to_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = name
        .strip_prefix("RTMIN")
        .or_else(|| name.strip_prefix("RTMAX"))
        .is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(['+', '-']) && rest[1..].parse::<u8>().is_ok()
        });
    if NAMES.contains(&name) || rt {
        Ok(())
    } else {
        Err(format!("Invalid signal: {signal}"))
    }
}
