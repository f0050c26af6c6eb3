//! RUN: an exec op over the stage's filesystem, with heredocs and `--mount`s.

use std::collections::HashMap;

use kiln_cache::Digest;
use kiln_solver::{
    ExecOp, ExtraHost, FileAction, FileOp, MkfileAction, Mount, MountKind, NetworkMode, Op,
    SecurityMode, Ulimit,
};

use super::mount::{MountType, parse_mount};
use super::stage::{StageState, join_path};
use super::{Lowerer, Source};
use crate::error::{Error, Result};
use crate::instructions::{Instruction, RunInstruction};
use crate::parser::{Heredoc, parse_heredoc};

/// Where heredoc scripts with a shebang are mounted.
const PIPES_DIR: &str = "/dev/pipes";

/// What `--shm-size`, `--ulimit` and `--add-host` give every RUN step; part of each
/// exec op, so of its cache key, as in BuildKit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Size of `/dev/shm` in bytes; 0 keeps the runtime's default (64 MiB).
    pub shm_size: u64,
    /// Resource limits of the processes, one per name.
    pub ulimits: Vec<Ulimit>,
    /// Entries added to `/etc/hosts`, in order.
    pub extra_hosts: Vec<ExtraHost>,
    /// The network of RUN steps that do not name one (`--network`; BuildKit's
    /// `force-network-mode` attribute).
    pub network: NetworkMode,
}

impl RunOptions {
    /// Adds `ulimit`, replacing an earlier one of the same name (the last one given wins,
    /// as in docker).
    pub fn set_ulimit(&mut self, ulimit: Ulimit) {
        match self.ulimits.iter_mut().find(|u| u.name == ulimit.name) {
            Some(earlier) => *earlier = ulimit,
            None => self.ulimits.push(ulimit),
        }
    }

    /// The options from BuildKit's frontend attributes: `shm-size` (bytes), `ulimit`
    /// (`name=soft:hard,…`) and `add-hosts` (`name=ip,…`).
    pub fn from_attrs(attrs: &HashMap<String, String>) -> std::result::Result<Self, String> {
        let list = |key: &str| {
            attrs
                .get(key)
                .map(|v| v.split(',').filter(|f| !f.is_empty()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let mut options = RunOptions {
            shm_size: match attrs.get("shm-size").filter(|v| !v.is_empty()) {
                Some(v) => v.parse().map_err(|_| format!("invalid shm-size {v:?}"))?,
                None => 0,
            },
            extra_hosts: list("add-hosts")
                .into_iter()
                .map(str::parse)
                .collect::<std::result::Result<_, _>>()?,
            ulimits: Vec::new(),
            network: match attrs.get("force-network-mode").filter(|v| !v.is_empty()) {
                Some(mode) => mode.parse()?,
                None => NetworkMode::Default,
            },
        };
        for ulimit in list("ulimit") {
            options.set_ulimit(ulimit.parse()?);
        }
        Ok(options)
    }

    /// The options as BuildKit's frontend attributes, only those that are set.
    pub fn to_attrs(&self) -> Vec<(String, String)> {
        let mut attrs = Vec::new();
        if self.shm_size > 0 {
            attrs.push(("shm-size".into(), self.shm_size.to_string()));
        }
        if !self.ulimits.is_empty() {
            let ulimits: Vec<String> = self.ulimits.iter().map(ToString::to_string).collect();
            attrs.push(("ulimit".into(), ulimits.join(",")));
        }
        if !self.extra_hosts.is_empty() {
            let hosts: Vec<String> = self.extra_hosts.iter().map(ToString::to_string).collect();
            attrs.push(("add-hosts".into(), hosts.join(",")));
        }
        if self.network != NetworkMode::Default {
            attrs.push(("force-network-mode".into(), self.network.name().into()));
        }
        attrs
    }
}

/// Collects a vertex's inputs, giving each distinct digest one index.
#[derive(Default)]
pub(super) struct Inputs {
    digests: Vec<Digest>,
}

impl Inputs {
    /// The index of `digest`, adding it if new.
    pub fn index(&mut self, digest: Digest) -> usize {
        match self.digests.iter().position(|d| *d == digest) {
            Some(i) => i,
            None => {
                self.digests.push(digest);
                self.digests.len() - 1
            }
        }
    }

    /// The digests, in index order.
    pub fn into_digests(self) -> Vec<Digest> {
        self.digests
    }
}

/// Lowers `RUN` into an exec op whose root mount becomes the stage's filesystem.
pub(super) fn lower_run(
    lowerer: &mut Lowerer<'_>,
    st: &mut StageState,
    instruction: &Instruction,
    run: &RunInstruction,
) -> Result<()> {
    let loc = instruction.location;
    let mut inputs = Inputs::default();
    let mut mounts = vec![Mount {
        target: "/".into(),
        input: st.state.map(|d| inputs.index(d)),
        source: "/".into(),
        readonly: false,
        kind: MountKind::Layer,
    }];
    let mut command = run.command.clone();
    if !command.files.is_empty() {
        let script = heredoc_script(&command.args, &command.files[0])
            .filter(|_| command.files.len() == 1 && command.prepend_shell);
        match script {
            Some(Script::Shebang { name, data }) => {
                let path = format!("/{name}");
                let file = inline_document(lowerer, st, instruction, &path, 0o755, data);
                mounts.push(Mount {
                    target: PIPES_DIR.into(),
                    input: Some(inputs.index(file)),
                    source: "/".into(),
                    readonly: true,
                    kind: MountKind::Bind,
                });
                // Run through the shell, as BuildKit does (`/bin/sh -c /dev/pipes/EOF`).
                command.args = vec![format!("{PIPES_DIR}/{name}")];
            }
            Some(Script::Inline(data)) => command.args = vec![data],
            None => {
                let mut full = command.args.join(" ");
                for file in &command.files {
                    full.push('\n');
                    full.push_str(&file.data);
                    full.push_str(&file.name);
                }
                command.args = vec![full];
            }
        }
    }
    let args = st.argv(&command);
    let workdir = st.workdir();

    for raw in &run.mounts {
        let spec = parse_mount(raw).map_err(|e| Error::at(e, loc))?;
        let expand = |v: &Option<String>| st.expand_opt(v.as_deref(), loc);
        let target = expand(&spec.target)?.map(|t| join_path(&workdir, &t));
        let source_path = expand(&spec.source)?;
        let from = expand(&spec.from)?;
        let id = expand(&spec.id)?;
        let input = match (&spec.kind, &from) {
            (MountType::Bind | MountType::Cache, Some(from)) => {
                let platform = st.platform.clone();
                match lowerer.source(from, st.index, &platform, loc)? {
                    Source::Stage(state) => state.map(|d| inputs.index(d)),
                    Source::Image(d) => Some(inputs.index(d)),
                }
            }
            (MountType::Bind, None) => Some(inputs.index(lowerer.context())),
            _ => None,
        };
        let source = join_path("/", source_path.as_deref().unwrap_or("/"));
        let (target, kind) = match spec.kind {
            MountType::Bind => (target.expect("checked by parse_mount"), MountKind::Bind),
            MountType::Cache => {
                let target = target.expect("checked by parse_mount");
                let id = id.clone().unwrap_or_else(|| target.clone());
                // `BUILDKIT_CACHE_MOUNT_NS` puts the build's cache mounts in a namespace
                // of their own, as BuildKit's frontend reads it.
                let id = match lowerer.options.build_args.get("BUILDKIT_CACHE_MOUNT_NS") {
                    Some(namespace) if !namespace.is_empty() => format!("{namespace}/{id}"),
                    _ => id,
                };
                let kind = MountKind::Cache {
                    id,
                    sharing: spec.sharing,
                    uid: spec.uid.unwrap_or(0),
                    gid: spec.gid.unwrap_or(0),
                    mode: spec.mode.unwrap_or(0o755),
                };
                (target, kind)
            }
            MountType::Tmpfs => (
                target.expect("checked by parse_mount"),
                MountKind::Tmpfs { size: spec.size },
            ),
            MountType::Secret => {
                // As dockerfile2llb's dispatchSecret: source= wins over id=, else the
                // target's last name; an env= secret is a file only when a target is given.
                let base_name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
                let id = spec
                    .source
                    .as_ref()
                    .and(source_path.clone())
                    .or(id)
                    .or_else(|| target.as_deref().map(base_name));
                let Some(id) = id.filter(|i| !i.is_empty()) else {
                    return Err(Error::at(
                        "secret mount requires an id or a target (--mount=type=secret,id=NAME)",
                        loc,
                    ));
                };
                let env = st.expand_opt(spec.env.as_deref(), loc)?.unwrap_or_default();
                let target = match target {
                    Some(target) => target,
                    None if env.is_empty() => format!("/run/secrets/{}", base_name(&id)),
                    None => String::new(),
                };
                let kind = MountKind::Secret {
                    id,
                    required: spec.required,
                    env,
                    mode: spec.mode.unwrap_or(0o400),
                    uid: spec.uid.unwrap_or(0),
                    gid: spec.gid.unwrap_or(0),
                };
                (target, kind)
            }
            MountType::Ssh => {
                if spec.source.is_some() {
                    return Err(Error::at("ssh does not support source", loc));
                }
                // Numbered among the step's SSH mounts, as BuildKit's llb numbers them.
                let n = mounts
                    .iter()
                    .filter(|m: &&Mount| matches!(m.kind, MountKind::Ssh { .. }))
                    .count();
                let target = target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{n}"));
                let kind = MountKind::Ssh {
                    id: id.unwrap_or_else(|| "default".into()),
                    required: spec.required,
                    mode: spec.mode.unwrap_or(0o600),
                    uid: spec.uid.unwrap_or(0),
                    gid: spec.gid.unwrap_or(0),
                };
                (target, kind)
            }
        };
        mounts.push(Mount {
            target,
            input,
            source,
            readonly: spec.readonly,
            kind,
        });
    }
    let run_options = &lowerer.options.run;
    if run_options.shm_size > 0 {
        // BuildKit's `llb.AddMount("/dev/shm", llb.Scratch(), llb.Tmpfs(…))`.
        mounts.push(Mount {
            target: "/dev/shm".into(),
            input: None,
            source: "/".into(),
            readonly: false,
            kind: MountKind::Tmpfs {
                size: run_options.shm_size,
            },
        });
    }

    // A step without --network (or with `default`) gets the build's (`--network`).
    let network = match run.network.as_deref().map(str::parse::<NetworkMode>) {
        None | Some(Ok(NetworkMode::Default)) => lowerer.options.run.network,
        Some(Ok(mode)) => mode,
        Some(Err(message)) => return Err(Error::at(message, loc)),
    };
    let security = match run
        .security
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("sandbox") => SecurityMode::Sandbox,
        Some("insecure") => SecurityMode::Insecure,
        Some(other) => {
            return Err(Error::at(
                format!("unsupported security mode {other:?}"),
                loc,
            ));
        }
    };
    let mut env: Vec<String> = st.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    // A step with an SSH agent finds the first one through SSH_AUTH_SOCK, unless it sets
    // the variable itself (BuildKit's llb adds it so).
    let first_agent = mounts
        .iter()
        .find(|m| matches!(m.kind, MountKind::Ssh { .. }));
    if let Some(agent) = first_agent
        && !st.env.iter().any(|(name, _)| name == "SSH_AUTH_SOCK")
    {
        env.push(format!("SSH_AUTH_SOCK={}", agent.target));
    }
    let op = Op::Exec(ExecOp {
        args: args.clone(),
        env,
        cwd: workdir,
        user: st.image.config.user.clone(),
        network,
        security,
        mounts,
        platform: st.platform.clone(),
        ulimits: run_options.ulimits.clone(),
        extra_hosts: run_options.extra_hosts.clone(),
        // As BuildKit's frontend reads it: every RUN of the build gets this hostname.
        hostname: lowerer
            .options
            .build_args
            .get("BUILDKIT_SANDBOX_HOSTNAME")
            .filter(|name| !name.is_empty())
            .cloned(),
    });
    let mut meta = st.meta(instruction);
    meta.proxy_env = lowerer.proxy_env();
    st.state = Some(lowerer.builder.add(op, inputs.into_digests(), meta));
    let message = format!("RUN {}", run_command_string(&args, st));
    super::history::commit(&mut st.image, message, true, true);
    Ok(())
}

/// A vertex holding one file made from a heredoc, on an empty filesystem.
pub(super) fn inline_document(
    lowerer: &mut Lowerer<'_>,
    st: &StageState,
    instruction: &Instruction,
    path: &str,
    mode: u32,
    data: String,
) -> Digest {
    let op = Op::File(FileOp {
        base: None,
        actions: vec![FileAction::Mkfile(MkfileAction {
            path: path.to_string(),
            mode,
            data,
            chown: None,
        })],
    });
    let mut meta = st.meta(instruction);
    meta.description = "[internal] preparing inline document".into();
    lowerer.builder.add(op, Vec::new(), meta)
}

/// How a RUN whose command is only a heredoc runs.
enum Script {
    /// A script with `#!`: written to a file and executed.
    Shebang { name: String, data: String },
    /// Passed to the shell as the command.
    Inline(String),
}

/// For `RUN <<EOF` (the command is the heredoc word alone), how the body runs.
fn heredoc_script(args: &[String], file: &crate::instructions::InlineFile) -> Option<Script> {
    let [only] = args else { return None };
    parse_heredoc(only).ok().flatten()?;
    let data = Heredoc {
        name: file.name.clone(),
        file_descriptor: 0,
        expand: true,
        chomp: file.chomp,
        content: file.data.clone(),
    }
    .chomped_content();
    Some(if file.data.starts_with("#!") {
        Script::Shebang {
            name: file.name.clone(),
            data,
        }
    } else {
        Script::Inline(data)
    })
}

/// BuildKit's history text for RUN: `|N K=V … argv` when the stage (or one it is built on)
/// declared ARGs; an ARG without a value reads as `K=` unless the environment has `K`.
fn run_command_string(args: &[String], st: &StageState) -> String {
    let declared: Vec<String> = st
        .build_args
        .iter()
        .map(|(k, value)| {
            let v = st
                .env
                .iter()
                .find(|(ek, _)| ek == k)
                .map(|(_, v)| v.as_str())
                .or(value.as_deref())
                .unwrap_or("");
            format!("{k}={v}")
        })
        .collect();
    if declared.is_empty() {
        args.join(" ")
    } else {
        format!(
            "|{} {} {}",
            declared.len(),
            declared.join(" "),
            args.join(" ")
        )
    }
}

#[cfg(test)]
mod run_options_tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn attributes_are_buildkits() {
        let options = RunOptions::from_attrs(&attrs(&[
            ("shm-size", "134217728"),
            ("ulimit", "nofile=100:200,core=0:0,nofile=300:400"),
            ("add-hosts", "db=10.0.0.5,V6=::1"),
        ]))
        .unwrap();
        assert_eq!(options.shm_size, 128 << 20);
        // The last limit of a name wins, at the first one's place.
        let ulimits: Vec<String> = options.ulimits.iter().map(ToString::to_string).collect();
        assert_eq!(ulimits, ["nofile=300:400", "core=0:0"]);
        let mut sent = options.to_attrs();
        sent.sort();
        assert_eq!(
            sent,
            [
                ("add-hosts".to_string(), "db=10.0.0.5,v6=::1".to_string()),
                ("shm-size".to_string(), "134217728".to_string()),
                ("ulimit".to_string(), "nofile=300:400,core=0:0".to_string()),
            ]
        );
        let round: HashMap<String, String> = sent.into_iter().collect();
        assert_eq!(RunOptions::from_attrs(&round).unwrap(), options);
    }

    #[test]
    fn nothing_set_is_no_attribute() {
        assert_eq!(
            RunOptions::from_attrs(&attrs(&[])).unwrap(),
            RunOptions::default()
        );
        assert!(RunOptions::default().to_attrs().is_empty());
    }

    #[test]
    fn bad_attributes_are_errors() {
        for (key, value) in [
            ("shm-size", "64m"),
            ("ulimit", "bogus=1"),
            ("ulimit", "nofile=2:1"),
            ("add-hosts", "db=nowhere"),
        ] {
            assert!(
                RunOptions::from_attrs(&attrs(&[(key, value)])).is_err(),
                "{key}={value}"
            );
        }
    }
}
