//! RUN steps for a platform this machine cannot run natively, under QEMU's user-mode
//! emulation registered in the kernel's `binfmt_misc`, as BuildKit runs them.
//!
//! The kernel starts a foreign binary through the interpreter its `binfmt_misc` handler
//! names. A handler registered with the `F` (fix binary) flag had its interpreter opened
//! at registration and works in any mount namespace; without it the kernel looks the
//! interpreter path up when the binary is executed, inside the sandbox's root, so the
//! host's interpreter is bound there for the step (see [`Emulator::mount`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kiln_solver::Platform;

use crate::exec::SandboxMount;

/// Where the kernel's `binfmt_misc` file system is mounted.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// What to do to get QEMU's handlers, appended to the errors that lack one.
const INSTALL_HINT: &str = "install QEMU's user-mode emulators and register them (Debian: \
     apt-get install qemu-user-static binfmt-support; \
     mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable)";

/// Whether steps for `platform` run on this machine without emulation: the host's own
/// OS and architecture, plus the pairs BuildKit runs natively (`386` on an `amd64` host,
/// `arm` v6/v7 on an `arm64` host).
pub fn runs_natively(platform: &Platform) -> bool {
    runs_natively_on(platform, &Platform::host())
}

fn runs_natively_on(platform: &Platform, host: &Platform) -> bool {
    if platform.os != host.os {
        return false;
    }
    if platform.architecture == host.architecture {
        return true;
    }
    match (host.architecture.as_str(), platform.architecture.as_str()) {
        ("amd64", "386") => true,
        ("arm64", "arm") => matches!(platform.variant.as_str(), "v6" | "v7" | ""),
        _ => false,
    }
}

/// QEMU's name for a GOARCH architecture (`arm64` → `aarch64`), as its user-mode
/// emulators and their `binfmt_misc` handlers (`qemu-<name>`) are named.
fn qemu_arch(architecture: &str) -> Option<&'static str> {
    Some(match architecture {
        "arm64" => "aarch64",
        "arm" => "arm",
        "386" => "i386",
        "amd64" => "x86_64",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64le" => "mips64el",
        "mips64" => "mips64",
        "loong64" => "loongarch64",
        _ => return None,
    })
}

/// A `binfmt_misc` handler entry, as `/proc/sys/fs/binfmt_misc/<name>` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Handler {
    /// The entry's first line is `enabled`.
    enabled: bool,
    /// The `interpreter` path; empty when the entry names none.
    interpreter: PathBuf,
    /// The letters of the `flags:` line, e.g. `PF`.
    flags: String,
}

impl Handler {
    /// Registered with `F`: the kernel opened the interpreter at registration.
    fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }
}

/// Parses a `binfmt_misc` handler entry:
///
/// ```text
/// enabled
/// interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
/// flags: PF
/// offset 0
/// magic 7f454c46...
/// ```
fn parse_handler(text: &str) -> Handler {
    let mut handler = Handler {
        enabled: false,
        interpreter: PathBuf::new(),
        flags: String::new(),
    };
    for line in text.lines().map(str::trim) {
        if line == "enabled" {
            handler.enabled = true;
        } else if let Some(path) = line.strip_prefix("interpreter ") {
            handler.interpreter = PathBuf::from(path.trim());
        } else if let Some(flags) = line.strip_prefix("flags:") {
            handler.flags = flags.trim().to_string();
        }
    }
    handler
}

/// Why steps for a platform cannot run on this machine. Its message is one sentence
/// naming the platform, this machine's platform, what is wrong and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot run {} steps on this {} machine: {}", .0.platform, .0.host, .0.problem)]
pub struct EmulationError(Box<ErrorParts>);

#[derive(Debug, PartialEq, Eq)]
struct ErrorParts {
    platform: Platform,
    host: Platform,
    problem: EmulationProblem,
}

impl EmulationError {
    fn new(platform: &Platform, host: &Platform, problem: EmulationProblem) -> Self {
        EmulationError(Box::new(ErrorParts {
            platform: platform.clone(),
            host: host.clone(),
            problem,
        }))
    }

    /// The platform whose steps cannot run.
    pub fn platform(&self) -> &Platform {
        &self.0.platform
    }

    /// This machine's platform.
    pub fn host(&self) -> &Platform {
        &self.0.host
    }

    /// What is wrong.
    pub fn problem(&self) -> &EmulationProblem {
        &self.0.problem
    }
}

/// What keeps a platform's steps from running under emulation; its message is the part
/// of an [`EmulationError`]'s after the platforms, with what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmulationProblem {
    /// The platform is not Linux, or QEMU has no user-mode emulator kiln knows of for it.
    #[error(
        "kiln can emulate only Linux on amd64, arm64, arm, 386, ppc64le, s390x, riscv64, \
         mips64le, mips64 and loong64; build for one of those platforms instead"
    )]
    Unsupported,
    /// `binfmt_misc` is not mounted (its `status` file is missing).
    #[error(
        "binfmt_misc is not mounted at {root}, so no QEMU emulator can be registered; \
         {INSTALL_HINT}"
    )]
    NotMounted {
        /// Where `binfmt_misc` was looked for.
        root: PathBuf,
    },
    /// No `qemu-<arch>` handler is registered.
    #[error("no QEMU handler for {qemu} is registered in binfmt_misc; {INSTALL_HINT}")]
    HandlerMissing {
        /// QEMU's name for the architecture, e.g. `aarch64`.
        qemu: &'static str,
    },
    /// The handler is registered but disabled.
    #[error(
        "the QEMU handler for {qemu} is registered in binfmt_misc but disabled; enable it \
         (echo 1 > {entry}, or Debian: update-binfmts --enable qemu-{qemu})"
    )]
    HandlerDisabled {
        /// QEMU's name for the architecture, e.g. `aarch64`.
        qemu: &'static str,
        /// The handler's entry in `binfmt_misc`.
        entry: PathBuf,
    },
    /// The handler names an interpreter that is not on this machine.
    #[error(
        "the QEMU handler for {qemu} names the interpreter \"{interpreter}\", which does not \
         exist on this machine; reinstall QEMU's user-mode emulators (Debian: apt-get \
         install --reinstall qemu-user-static) or register the handler again \
         (update-binfmts --enable qemu-{qemu})"
    )]
    InterpreterMissing {
        /// QEMU's name for the architecture, e.g. `aarch64`.
        qemu: &'static str,
        /// The interpreter path the handler names.
        interpreter: PathBuf,
    },
    /// The handler's entry could not be read.
    #[error(
        "cannot read the binfmt_misc handler {entry} ({message}); check that kiln may read \
         it, or {INSTALL_HINT}"
    )]
    Unreadable {
        /// The handler's entry in `binfmt_misc`.
        entry: PathBuf,
        /// The I/O error.
        message: String,
    },
}

/// A QEMU user-mode emulator registered in `binfmt_misc` that runs a foreign platform's
/// binaries, found by [`emulator_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emulator {
    /// QEMU's name for the architecture, e.g. `aarch64`.
    pub(crate) qemu: &'static str,
    /// The interpreter path the handler names, where the kernel looks for it when the
    /// handler lacks the `F` flag.
    pub(crate) interpreter: PathBuf,
    /// The interpreter file on the host, symlinks resolved.
    pub(crate) host_interpreter: PathBuf,
    /// The handler has the `F` flag: its interpreter is open in the kernel.
    pub(crate) fix_binary: bool,
}

impl Emulator {
    /// QEMU's name for the emulated architecture, e.g. `aarch64`.
    pub fn qemu_arch(&self) -> &str {
        self.qemu
    }

    /// The interpreter path the `binfmt_misc` handler names.
    pub fn interpreter(&self) -> &Path {
        &self.interpreter
    }

    /// Whether the handler was registered with the `F` flag, so that it works in any
    /// mount namespace without a mount.
    pub fn fix_binary(&self) -> bool {
        self.fix_binary
    }

    /// The mount a sandbox needs for this emulator: `None` when the handler has the `F`
    /// flag; otherwise a read-only bind of the host's interpreter file (symlinks
    /// resolved) at the handler's interpreter path, where the kernel looks for it when a
    /// step executes a foreign binary. The interpreter must then be statically linked,
    /// as `qemu-user-static`'s are.
    pub fn mount(&self) -> Option<SandboxMount> {
        if self.fix_binary {
            return None;
        }
        Some(SandboxMount::Bind {
            target: self.interpreter.to_string_lossy().into_owned(),
            source: self.host_interpreter.clone(),
            readonly: true,
        })
    }
}

/// The emulator that runs `platform`'s binaries on this machine: the QEMU handler for its
/// architecture registered in `/proc/sys/fs/binfmt_misc`, enabled, with its interpreter
/// present (needed on the host when the handler lacks the `F` flag).
pub fn emulator_for(platform: &Platform) -> Result<Emulator, EmulationError> {
    emulator_in(Path::new(BINFMT_MISC), platform, &Platform::host())
}

/// [`emulator_for`] with `binfmt_misc` at `root` and `host` as this machine's platform.
fn emulator_in(
    root: &Path,
    platform: &Platform,
    host: &Platform,
) -> Result<Emulator, EmulationError> {
    let fail = |problem| EmulationError::new(platform, host, problem);
    let qemu = match qemu_arch(&platform.architecture) {
        Some(qemu) if platform.os == "linux" => qemu,
        _ => return Err(fail(EmulationProblem::Unsupported)),
    };
    if !root.join("status").exists() {
        return Err(fail(EmulationProblem::NotMounted {
            root: root.to_path_buf(),
        }));
    }
    let entry = root.join(format!("qemu-{qemu}"));
    let text = match fs::read_to_string(&entry) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(fail(EmulationProblem::HandlerMissing { qemu }));
        }
        Err(e) => {
            return Err(fail(EmulationProblem::Unreadable {
                entry,
                message: e.to_string(),
            }));
        }
    };
    let handler = parse_handler(&text);
    if !handler.enabled {
        return Err(fail(EmulationProblem::HandlerDisabled { qemu, entry }));
    }
    let fix_binary = handler.fix_binary();
    let resolved = if handler.interpreter.is_absolute() {
        fs::canonicalize(&handler.interpreter)
            .ok()
            .filter(|path| path.is_file())
    } else {
        None
    };
    let host_interpreter = match resolved {
        Some(path) => path,
        // With `F` the kernel holds the interpreter open: its path no longer matters.
        None if fix_binary => handler.interpreter.clone(),
        None => {
            return Err(fail(EmulationProblem::InterpreterMissing {
                qemu,
                interpreter: handler.interpreter,
            }));
        }
    };
    Ok(Emulator {
        qemu,
        interpreter: handler.interpreter,
        host_interpreter,
        fix_binary,
    })
}

/// Checks that every platform in `platforms` either runs natively or has a usable
/// emulator, so that a build fails before it starts rather than at its first foreign
/// RUN step; the error is the first platform's that has none.
pub fn check_platforms(platforms: &[Platform]) -> Result<(), EmulationError> {
    for platform in platforms {
        if !runs_natively(platform) {
            emulator_for(platform)?;
        }
    }
    Ok(())
}

/// The platforms BuildKit's workers commonly list, in its order.
const KNOWN_PLATFORMS: &[&str] = &[
    "linux/amd64",
    "linux/arm64",
    "linux/riscv64",
    "linux/ppc64le",
    "linux/s390x",
    "linux/386",
    "linux/mips64le",
    "linux/mips64",
    "linux/loong64",
    "linux/arm/v7",
    "linux/arm/v6",
];

/// The platforms RUN steps can run for on this machine: its own first, then those it
/// runs natively or through a registered emulator (what a worker advertises).
pub fn runnable_platforms() -> Vec<Platform> {
    let host = Platform::host();
    let mut platforms = vec![host.clone()];
    for known in KNOWN_PLATFORMS {
        let Ok(platform) = known.parse::<Platform>() else {
            continue;
        };
        if !platforms.contains(&platform)
            && (runs_natively(&platform) || emulator_for(&platform).is_ok())
        {
            platforms.push(platform);
        }
    }
    platforms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runnable_platforms_start_with_the_host_and_include_what_runs_natively() {
        let platforms = runnable_platforms();
        assert_eq!(platforms[0], Platform::host());
        assert!(
            platforms
                .iter()
                .all(|p| runs_natively(p) || emulator_for(p).is_ok())
        );
        if Platform::host().architecture == "amd64" {
            assert!(platforms.contains(&"linux/386".parse().unwrap()));
        }
    }

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    const WITH_F: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
        flags: PF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n\
        mask ffffffffffffff00fffffffffffffffffeffffff\n";
    const WITHOUT_F: &str = "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: \n\
        offset 0\nmagic 7f454c460201010000000000000000000200b700\n\
        mask ffffffffffffff00fffffffffffffffffeffffff\n";
    const DISABLED: &str = "disabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OC\n\
        offset 0\nmagic 7f454c46\nmask ffffffff\n";

    #[test]
    fn parses_handlers_with_and_without_fix_binary() {
        let handler = parse_handler(WITH_F);
        assert_eq!(
            handler,
            Handler {
                enabled: true,
                interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into(),
                flags: "PF".into(),
            }
        );
        assert!(handler.fix_binary());

        let handler = parse_handler(WITHOUT_F);
        assert_eq!(
            handler,
            Handler {
                enabled: true,
                interpreter: "/usr/bin/qemu-aarch64-static".into(),
                flags: String::new(),
            }
        );
        assert!(!handler.fix_binary());

        let handler = parse_handler(DISABLED);
        assert!(!handler.enabled);
        assert_eq!(handler.flags, "OC");
        assert!(!handler.fix_binary());

        assert_eq!(
            parse_handler(""),
            Handler {
                enabled: false,
                interpreter: PathBuf::new(),
                flags: String::new(),
            }
        );
    }

    #[test]
    fn maps_goarch_to_qemu_names() {
        for (goarch, qemu) in [
            ("arm64", "aarch64"),
            ("arm", "arm"),
            ("386", "i386"),
            ("amd64", "x86_64"),
            ("ppc64le", "ppc64le"),
            ("s390x", "s390x"),
            ("riscv64", "riscv64"),
            ("mips64le", "mips64el"),
            ("mips64", "mips64"),
            ("loong64", "loongarch64"),
        ] {
            assert_eq!(qemu_arch(goarch), Some(qemu), "{goarch}");
        }
        assert_eq!(qemu_arch("sparc64"), None);
    }

    #[test]
    fn native_platforms_as_buildkit() {
        let amd64 = p("linux/amd64");
        let arm64 = p("linux/arm64");
        assert!(runs_natively_on(&p("linux/amd64"), &amd64));
        assert!(runs_natively_on(&p("linux/amd64/v3"), &amd64));
        assert!(runs_natively_on(&p("linux/386"), &amd64));
        assert!(!runs_natively_on(&p("linux/arm64"), &amd64));
        assert!(!runs_natively_on(&p("linux/arm/v7"), &amd64));
        assert!(!runs_natively_on(&p("windows/amd64"), &amd64));

        assert!(runs_natively_on(&p("linux/arm64"), &arm64));
        assert!(runs_natively_on(&p("linux/arm/v7"), &arm64));
        assert!(runs_natively_on(&p("linux/arm/v6"), &arm64));
        assert!(!runs_natively_on(&p("linux/arm/v5"), &arm64));
        assert!(!runs_natively_on(&p("linux/amd64"), &arm64));
        assert!(!runs_natively_on(&p("linux/386"), &arm64));

        assert!(runs_natively(&Platform::host()));
    }

    /// A fake `binfmt_misc` with a `status` file and the given handler entries.
    fn fake_root(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("status"), "enabled\n").unwrap();
        for (name, text) in entries {
            fs::write(root.path().join(name), text).unwrap();
        }
        root
    }

    #[test]
    fn missing_handler_is_named_with_what_to_do() {
        let root = fake_root(&[]);
        let err = emulator_in(root.path(), &p("linux/arm64"), &p("linux/amd64")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot run linux/arm64 steps on this linux/amd64 machine: no QEMU handler for \
             aarch64 is registered in binfmt_misc; install QEMU's user-mode emulators and \
             register them (Debian: apt-get install qemu-user-static binfmt-support; mount -t \
             binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable)"
        );
    }

    #[test]
    fn unmounted_binfmt_misc_is_named() {
        let root = tempfile::tempdir().unwrap();
        let err = emulator_in(root.path(), &p("linux/arm/v7"), &p("linux/amd64")).unwrap_err();
        assert!(
            matches!(err.problem(), EmulationProblem::NotMounted { .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot run linux/arm/v7 steps on this linux/amd64 machine: binfmt_misc is not \
                 mounted at {}",
                root.path().display()
            )),
            "{message}"
        );
        assert!(
            message.contains("mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"),
            "{message}"
        );
    }

    #[test]
    fn disabled_handler_and_missing_interpreter_are_told_apart() {
        let root = fake_root(&[("qemu-aarch64", DISABLED)]);
        let err = emulator_in(root.path(), &p("linux/arm64"), &p("linux/amd64")).unwrap_err();
        assert!(
            matches!(err.problem(), EmulationProblem::HandlerDisabled { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("the QEMU handler for aarch64 is registered in binfmt_misc but disabled"),
            "{err}"
        );

        let missing = "enabled\ninterpreter /nonexistent/qemu-riscv64-static\nflags: \n";
        let root = fake_root(&[("qemu-riscv64", missing)]);
        let err = emulator_in(root.path(), &p("linux/riscv64"), &p("linux/amd64")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot run linux/riscv64 steps on this linux/amd64 machine: the QEMU handler for \
             riscv64 names the interpreter \"/nonexistent/qemu-riscv64-static\", which does not \
             exist on this machine; reinstall QEMU's user-mode emulators (Debian: apt-get \
             install --reinstall qemu-user-static) or register the handler again \
             (update-binfmts --enable qemu-riscv64)"
        );

        // With F the kernel holds the interpreter open: a missing file does not matter.
        let fixed = "enabled\ninterpreter /nonexistent/qemu-riscv64-static\nflags: F\n";
        let root = fake_root(&[("qemu-riscv64", fixed)]);
        let emulator = emulator_in(root.path(), &p("linux/riscv64"), &p("linux/amd64")).unwrap();
        assert!(emulator.fix_binary());
        assert_eq!(emulator.mount(), None);
    }

    #[test]
    fn unsupported_platforms_are_named() {
        let root = fake_root(&[]);
        for platform in ["windows/amd64", "linux/sparc64"] {
            let err = emulator_in(root.path(), &p(platform), &p("linux/amd64")).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!(
                    "cannot run {platform} steps on this linux/amd64 machine: "
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn without_fix_binary_the_resolved_interpreter_is_bound() {
        let host = tempfile::tempdir().unwrap();
        let real = host.path().join("qemu-aarch64-static");
        fs::write(&real, b"\x7fELF").unwrap();
        let link = host.path().join("aarch64-binfmt-P");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let entry = format!("enabled\ninterpreter {}\nflags: P\n", link.display());
        let root = fake_root(&[("qemu-aarch64", &entry)]);
        let emulator = emulator_in(root.path(), &p("linux/arm64"), &p("linux/amd64")).unwrap();
        assert_eq!(emulator.qemu_arch(), "aarch64");
        assert!(!emulator.fix_binary());
        assert_eq!(
            emulator.mount(),
            Some(SandboxMount::Bind {
                target: link.to_string_lossy().into_owned(),
                source: fs::canonicalize(&real).unwrap(),
                readonly: true,
            })
        );
    }

    #[test]
    fn native_platforms_need_no_emulator() {
        check_platforms(&[Platform::host()]).unwrap();
    }
}
