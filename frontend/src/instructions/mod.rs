//! Typed instructions: the parse tree's nodes checked and turned into what each instruction
//! means (BuildKit's `instructions` package), grouped into build stages.
//!
//! Values are kept as written; variable expansion happens when a stage is lowered, because it
//! depends on the ARG and ENV state at that point.

mod duration;
mod flags;

use kiln_image::HealthConfig;

pub use duration::{format_go_duration, parse_go_duration};
pub use flags::{FlagKind, Flags};

use crate::error::{Error, Location, Result};
use crate::parser::{Document, Node, parse_heredoc};

/// A Dockerfile as stages: the global ARGs before the first FROM, then each stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// ARG instructions before the first FROM.
    pub meta_args: Vec<Instruction>,
    /// The stages, in file order.
    pub stages: Vec<Stage>,
    /// The escape character from the `# escape=` directive.
    pub escape: char,
}

/// One `FROM` and the instructions up to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// The `AS` name, lower-cased.
    pub name: Option<String>,
    /// The base as written: an image reference, a stage name or `scratch`.
    pub base: String,
    /// `FROM --platform=` as written.
    pub platform: Option<String>,
    /// The instructions of the stage.
    pub instructions: Vec<Instruction>,
    /// Where the FROM line is.
    pub location: Location,
}

/// One instruction with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// What the instruction does.
    pub kind: InstructionKind,
    /// Its lines in the Dockerfile.
    pub location: Location,
    /// The instruction text, continuations joined (used in step names and history).
    pub original: String,
}

/// The instructions a stage can hold (FROM starts a [`Stage`] instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstructionKind {
    /// `ENV k=v …`.
    Env(Vec<KeyValue>),
    /// `MAINTAINER name`.
    Maintainer(String),
    /// `LABEL k=v …`.
    Label(Vec<KeyValue>),
    /// `ADD`.
    Add(AddInstruction),
    /// `COPY`.
    Copy(CopyInstruction),
    /// `ONBUILD <instruction>`: the trigger's text.
    Onbuild(String),
    /// `WORKDIR path`.
    Workdir(String),
    /// `RUN`.
    Run(RunInstruction),
    /// `CMD`.
    Cmd(CommandLine),
    /// `ENTRYPOINT`.
    Entrypoint(CommandLine),
    /// `HEALTHCHECK`: the Docker health config (`Test == ["NONE"]` disables it).
    Healthcheck(HealthConfig),
    /// `EXPOSE port[/proto] …`, sorted as BuildKit sorts them.
    Expose(Vec<String>),
    /// `USER user[:group]`.
    User(String),
    /// `VOLUME path …`.
    Volume(Vec<String>),
    /// `STOPSIGNAL signal`.
    StopSignal(String),
    /// `ARG name[=default] …`.
    Arg(Vec<ArgDecl>),
    /// `SHELL ["exe", "arg"]`.
    Shell(Vec<String>),
}

impl InstructionKind {
    /// Whether BuildKit counts the instruction in a stage's `[n/total]` step labels.
    pub fn counts_as_step(&self) -> bool {
        matches!(
            self,
            InstructionKind::Run(_)
                | InstructionKind::Copy(_)
                | InstructionKind::Add(_)
                | InstructionKind::Workdir(_)
        )
    }
}

/// A key and value of ENV or LABEL, unexpanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// One name declared by ARG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgDecl {
    /// The name.
    pub name: String,
    /// The default after `=`, unexpanded.
    pub default: Option<String>,
}

/// A command line of RUN, CMD or ENTRYPOINT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// Exec-form argv, or the one shell-form string.
    pub args: Vec<String>,
    /// Shell form: run through the stage's SHELL.
    pub prepend_shell: bool,
    /// Heredoc files, in order.
    pub files: Vec<InlineFile>,
}

/// A heredoc of RUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineFile {
    /// The delimiter word.
    pub name: String,
    /// The body, unchomped.
    pub data: String,
    /// `<<-`: strip leading tabs.
    pub chomp: bool,
}

/// `RUN` with its flags (values unexpanded; mounts are parsed after expansion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInstruction {
    /// The command.
    pub command: CommandLine,
    /// `--mount=` values.
    pub mounts: Vec<String>,
    /// `--network=` value.
    pub network: Option<String>,
    /// `--security=` value.
    pub security: Option<String>,
}

/// The sources and destination of COPY or ADD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcesAndDest {
    /// The destination as written.
    pub dest: String,
    /// Source paths, URLs or patterns.
    pub paths: Vec<String>,
    /// Heredoc sources.
    pub contents: Vec<SourceContent>,
}

/// A heredoc used as a COPY/ADD source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceContent {
    /// The file name (the delimiter word).
    pub path: String,
    /// The body, chomped if `<<-`.
    pub data: String,
    /// Expand variables in the body (the delimiter was unquoted).
    pub expand: bool,
}

/// `COPY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyInstruction {
    /// What to copy where.
    pub files: SourcesAndDest,
    /// `--from=` stage name, index or image.
    pub from: Option<String>,
    /// `--chown=`.
    pub chown: Option<String>,
    /// `--chmod=`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude=` patterns.
    pub excludes: Vec<String>,
}

/// `ADD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddInstruction {
    /// What to add where.
    pub files: SourcesAndDest,
    /// `--chown=`.
    pub chown: Option<String>,
    /// `--chmod=`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// `--checksum=`.
    pub checksum: Option<String>,
    /// `--exclude=` patterns.
    pub excludes: Vec<String>,
    /// `--unpack=`: `None` extracts local archives only (the default).
    pub unpack: Option<bool>,
}

/// Every instruction keyword, for "did you mean" hints.
const KEYWORDS: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

impl Dockerfile {
    /// Types every instruction of `doc` and groups them into stages.
    pub fn from_document(doc: &Document) -> Result<Dockerfile> {
        let mut meta_args = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        for node in &doc.nodes {
            let location = Location::lines(node.start_line, node.end_line);
            if node.keyword == "from" {
                stages.push(parse_from(node).map_err(|m| Error::at(m, location))?);
                continue;
            }
            let instruction = Instruction::from_node(node)?;
            match stages.last_mut() {
                Some(stage) => stage.instructions.push(instruction),
                None if matches!(instruction.kind, InstructionKind::Arg(_)) => {
                    meta_args.push(instruction)
                }
                None => {
                    return Err(Error::at(
                        "no build stage in current context",
                        instruction.location,
                    ));
                }
            }
        }
        if stages.is_empty() {
            let location = doc
                .nodes
                .last()
                .map(|n| Location::lines(n.start_line, n.end_line));
            return Err(Error {
                message: "the Dockerfile has no FROM instruction: no build stage".into(),
                location,
                kind: crate::ErrorKind::Dockerfile,
            });
        }
        Ok(Dockerfile {
            meta_args,
            stages,
            escape: doc.directives.escape,
        })
    }
}

impl Instruction {
    /// Types one parse-tree node (not FROM), or says what is wrong with it.
    pub fn from_node(node: &Node) -> Result<Instruction> {
        let location = Location::lines(node.start_line, node.end_line);
        let kind = parse_kind(node).map_err(|m| Error::at(m, location))?;
        Ok(Instruction {
            kind,
            location,
            original: node.original.trim().to_string(),
        })
    }
}

/// Parses the flags of `node` against `spec`.
fn flags(node: &Node, spec: &[(&'static str, FlagKind)]) -> Result<Flags, String> {
    Flags::parse(&node.flags, spec)
}

fn parse_kind(node: &Node) -> Result<InstructionKind, String> {
    use FlagKind::{Bool, String as Str, Strings};
    let args = &node.args;
    let upper = node.keyword.to_uppercase();
    Ok(match node.keyword.as_str() {
        "env" | "label" => {
            flags(node, &[])?;
            let pairs = key_values(args, &upper)?;
            if upper == "ENV" {
                InstructionKind::Env(pairs)
            } else {
                InstructionKind::Label(pairs)
            }
        }
        "maintainer" => {
            flags(node, &[])?;
            InstructionKind::Maintainer(exactly_one(args, &upper)?)
        }
        "add" => {
            if args.len() < 2 {
                return Err(no_destination(&upper));
            }
            let f = flags(
                node,
                &[
                    ("chown", Str),
                    ("chmod", Str),
                    ("link", Bool),
                    ("keep-git-dir", Bool),
                    ("checksum", Str),
                    ("exclude", Strings),
                    ("unpack", Bool),
                ],
            )?;
            InstructionKind::Add(AddInstruction {
                files: sources_and_dest(node, &upper)?,
                chown: f.string("chown").map(str::to_string),
                chmod: f.string("chmod").map(str::to_string),
                link: f.bool("link"),
                keep_git_dir: f.bool("keep-git-dir"),
                checksum: f.string("checksum").map(str::to_string),
                excludes: f.strings("exclude"),
                unpack: f.optional_bool("unpack"),
            })
        }
        "copy" => {
            if args.len() < 2 {
                return Err(no_destination(&upper));
            }
            let f = flags(
                node,
                &[
                    ("chown", Str),
                    ("from", Str),
                    ("chmod", Str),
                    ("link", Bool),
                    ("parents", Bool),
                    ("exclude", Strings),
                ],
            )?;
            InstructionKind::Copy(CopyInstruction {
                files: sources_and_dest(node, &upper)?,
                from: f.string("from").map(str::to_string),
                chown: f.string("chown").map(str::to_string),
                chmod: f.string("chmod").map(str::to_string),
                link: f.bool("link"),
                parents: f.bool("parents"),
                excludes: f.strings("exclude"),
            })
        }
        "onbuild" => parse_onbuild(node)?,
        "workdir" => {
            flags(node, &[])?;
            InstructionKind::Workdir(exactly_one(args, &upper)?)
        }
        "run" => {
            let f = flags(
                node,
                &[("mount", Strings), ("network", Str), ("security", Str)],
            )?;
            InstructionKind::Run(RunInstruction {
                command: command_line(node),
                mounts: f.strings("mount"),
                network: f.string("network").map(str::to_string),
                security: f.string("security").map(str::to_string),
            })
        }
        "cmd" => {
            flags(node, &[])?;
            InstructionKind::Cmd(command_line(node))
        }
        "entrypoint" => {
            flags(node, &[])?;
            InstructionKind::Entrypoint(command_line(node))
        }
        "healthcheck" => parse_healthcheck(node)?,
        "expose" => {
            flags(node, &[])?;
            if args.is_empty() {
                return Err(at_least_one(&upper));
            }
            let mut ports = args.clone();
            ports.sort();
            InstructionKind::Expose(ports)
        }
        "user" => {
            flags(node, &[])?;
            InstructionKind::User(exactly_one(args, &upper)?)
        }
        "volume" => {
            flags(node, &[])?;
            if args.is_empty() {
                return Err(at_least_one(&upper));
            }
            let mut volumes = Vec::new();
            for v in args {
                let v = v.trim();
                if v.is_empty() {
                    return Err("VOLUME specified can not be an empty string".into());
                }
                volumes.push(v.to_string());
            }
            InstructionKind::Volume(volumes)
        }
        "stopsignal" => {
            flags(node, &[])?;
            InstructionKind::StopSignal(exactly_one(args, &upper)?)
        }
        "arg" => {
            flags(node, &[])?;
            if args.is_empty() {
                return Err(at_least_one(&upper));
            }
            let mut decls = Vec::new();
            for arg in args {
                let decl = match arg.split_once('=') {
                    Some(("", _)) => return Err("ARG names can not be blank".into()),
                    Some((name, value)) => ArgDecl {
                        name: name.to_string(),
                        default: Some(value.to_string()),
                    },
                    None => ArgDecl {
                        name: arg.clone(),
                        default: None,
                    },
                };
                decls.push(decl);
            }
            InstructionKind::Arg(decls)
        }
        "shell" => {
            flags(node, &[])?;
            if node.json && args.is_empty() || !node.json && args.iter().all(|a| a.is_empty()) {
                return Err(at_least_one(&upper));
            }
            if !node.json {
                return Err(format!(
                    "SHELL requires the arguments to be in JSON form: {}",
                    node.original.trim()
                ));
            }
            InstructionKind::Shell(args.clone())
        }
        "from" => return Err("FROM cannot be used here".into()),
        other => return Err(unknown_instruction(other)),
    })
}

fn unknown_instruction(keyword: &str) -> String {
    let best = KEYWORDS
        .iter()
        .map(|k| (flags::edit_distance(keyword, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min();
    match best {
        Some((_, k)) => format!(
            "unknown instruction: {} (did you mean {}?)",
            keyword.to_uppercase(),
            k.to_uppercase()
        ),
        None => format!("unknown instruction: {}", keyword.to_uppercase()),
    }
}

fn at_least_one(cmd: &str) -> String {
    format!("{cmd} requires at least one argument")
}

fn exactly_one(args: &[String], cmd: &str) -> Result<String, String> {
    match args {
        [one] => Ok(one.clone()),
        _ => Err(format!("{cmd} requires exactly one argument")),
    }
}

fn no_destination(cmd: &str) -> String {
    format!(
        "{cmd} requires at least two arguments, but only one was provided. Destination could not be determined"
    )
}

/// ENV and LABEL arguments come as (key, value, separator) triples from the parser.
fn key_values(args: &[String], cmd: &str) -> Result<Vec<KeyValue>, String> {
    if args.is_empty() {
        return Err(at_least_one(cmd));
    }
    args.chunks(3)
        .map(|chunk| match chunk {
            [key, ..] if key.is_empty() => Err(format!("{cmd} names can not be blank")),
            [key, value, ..] => Ok(KeyValue {
                key: key.clone(),
                value: value.clone(),
            }),
            _ => Err(format!("Bad input to {cmd}, too many arguments")),
        })
        .collect()
}

fn command_line(node: &Node) -> CommandLine {
    let args = if node.json {
        node.args.clone()
    } else {
        vec![node.args.join(" ")]
    };
    CommandLine {
        args,
        prepend_shell: !node.json,
        files: node
            .heredocs
            .iter()
            .map(|h| InlineFile {
                name: h.name.clone(),
                data: h.content.clone(),
                chomp: h.chomp,
            })
            .collect(),
    }
}

fn sources_and_dest(node: &Node, cmd: &str) -> Result<SourcesAndDest, String> {
    let (dest, srcs) = node
        .args
        .split_last()
        .expect("checked: at least two arguments");
    if is_heredoc_word(dest) {
        return Err(format!("{cmd} cannot accept a heredoc as a destination"));
    }
    let mut paths = Vec::new();
    let mut contents = Vec::new();
    for src in srcs {
        match parse_heredoc(src).ok().flatten() {
            Some(word) => {
                let body = node.heredocs.iter().find(|h| h.name == word.name);
                let data = match body {
                    Some(h) if word.chomp => crate::parser::Heredoc {
                        chomp: true,
                        ..h.clone()
                    }
                    .chomped_content(),
                    Some(h) => h.content.clone(),
                    None => String::new(),
                };
                contents.push(SourceContent {
                    path: word.name,
                    data,
                    expand: word.expand,
                });
            }
            None => paths.push(src.clone()),
        }
    }
    Ok(SourcesAndDest {
        dest: dest.clone(),
        paths,
        contents,
    })
}

fn is_heredoc_word(word: &str) -> bool {
    matches!(parse_heredoc(word), Ok(Some(_)))
}

fn parse_from(node: &Node) -> Result<Stage, String> {
    let args = &node.args;
    let name = match args.as_slice() {
        [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
            let lower = name.to_lowercase();
            if !valid_stage_name(&lower) {
                return Err(format!(
                    "invalid name for build stage: {}, name can't start with a number or contain symbols",
                    crate::parser::go_quote(name)
                ));
            }
            Some(lower)
        }
        [_] => None,
        _ => return Err("FROM requires either one or three arguments".into()),
    };
    let f = flags(node, &[("platform", FlagKind::String)])?;
    Ok(Stage {
        name,
        base: args[0].clone(),
        platform: f.string("platform").map(str::to_string),
        instructions: Vec::new(),
        location: Location::lines(node.start_line, node.end_line),
    })
}

/// `^[a-z][a-z0-9-_.]*$`.
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn parse_onbuild(node: &Node) -> Result<InstructionKind, String> {
    flags(node, &[])?;
    let Some(nested) = &node.nested else {
        return Err(at_least_one("ONBUILD"));
    };
    match nested.keyword.to_uppercase().as_str() {
        "ONBUILD" => return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into()),
        k @ ("MAINTAINER" | "FROM") => {
            return Err(format!("{k} isn't allowed as an ONBUILD trigger"));
        }
        _ => {}
    }
    let original = node.original.trim_start();
    let mut expression = original
        .get(7..)
        .filter(|_| original[..7].eq_ignore_ascii_case("onbuild"))
        .unwrap_or(original)
        .trim_start()
        .to_string();
    for h in &node.heredocs {
        expression.push('\n');
        expression.push_str(&h.content);
        expression.push_str(&h.name);
    }
    Ok(InstructionKind::Onbuild(expression))
}

fn parse_healthcheck(node: &Node) -> Result<InstructionKind, String> {
    let Some((kind, args)) = node.args.split_first() else {
        return Err(at_least_one("HEALTHCHECK"));
    };
    let kind = kind.to_uppercase();
    if kind == "NONE" {
        if !args.is_empty() {
            return Err("HEALTHCHECK NONE takes no arguments".into());
        }
        flags(node, &[])?;
        return Ok(InstructionKind::Healthcheck(HealthConfig {
            test: vec![kind],
            ..HealthConfig::default()
        }));
    }
    let spec = [
        ("interval", FlagKind::String),
        ("timeout", FlagKind::String),
        ("start-period", FlagKind::String),
        ("start-interval", FlagKind::String),
        ("retries", FlagKind::String),
    ];
    let f = flags(node, &spec)?;
    if kind != "CMD" {
        return Err(format!(
            "Unknown type {} in HEALTHCHECK (try CMD)",
            crate::parser::go_quote(&kind)
        ));
    }
    let command: Vec<String> = if node.json {
        args.to_vec()
    } else {
        vec![args.join(" ")]
    };
    if command.is_empty() || command.iter().all(|c| c.is_empty()) && !node.json {
        return Err("Missing command after HEALTHCHECK CMD".into());
    }
    let test_kind = if node.json { "CMD" } else { "CMD-SHELL" };
    let interval = |name: &str| -> Result<i64, String> {
        let Some(v) = f.string(name) else {
            return Ok(0);
        };
        let d = parse_go_duration(v)?;
        if d != 0 && d < 1_000_000 {
            return Err(format!("Interval \"{name}\" cannot be less than 1ms"));
        }
        Ok(d)
    };
    let retries = match f.string("retries") {
        None => 0,
        Some(v) => {
            let n: i64 = v
                .parse()
                .ok()
                .filter(|n: &i64| i32::try_from(*n).is_ok())
                .ok_or_else(|| {
                    format!(
                        "strconv.ParseInt: parsing {}: invalid syntax",
                        crate::parser::go_quote(v)
                    )
                })?;
            if n < 0 {
                return Err(format!("--retries cannot be negative ({n})"));
            }
            n
        }
    };
    Ok(InstructionKind::Healthcheck(HealthConfig {
        test: std::iter::once(test_kind.to_string())
            .chain(command)
            .collect(),
        interval: interval("interval")?,
        timeout: interval("timeout")?,
        start_period: interval("start-period")?,
        start_interval: interval("start-interval")?,
        retries,
    }))
}

#[cfg(test)]
mod tests;
