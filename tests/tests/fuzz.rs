//! Property-based fuzzing of the parsers that read untrusted input: the Dockerfile
//! frontend, the tar applier, the image archive loader and the registry client's JSON
//! handling. Every property is that the code answers `Ok` or `Err` within [`DEADLINE`] and
//! never panics; the tar and archive properties also check that nothing is written outside
//! the destination directory.
//!
//! Each property runs proptest's default number of cases (256); the `PROPTEST_CASES`
//! environment variable sets another, e.g. for a long run:
//! `PROPTEST_CASES=200000 cargo test --release -p kiln-tests --test fuzz`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::thread;
use std::time::Duration;

use kiln_cache::{ContentStore, Digest, ImageStore};
use kiln_frontend::instructions::Dockerfile;
use kiln_frontend::lower::{BuildOptions, EmptyConfigs, lower};
use kiln_image::{Image, PlatformWanted, Reference};
use kiln_registry::credentials::CredentialSource;
use kiln_registry::{RegistryClient, RegistryOptions};
use kiln_worker::layer::{LayerBlob, TAR_LAYER_MEDIA_TYPE, apply_layer, extract_archive};
use oci_spec::image::{ImageIndex, ImageManifest};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

/// The largest raw input a property generates: keeps every case fast.
const MAX_INPUT: usize = 64 << 10;

/// How long one case may run before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(20);

/// proptest's defaults (so `PROPTEST_CASES` and the other `PROPTEST_*` variables apply),
/// without regression files written into the source tree.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs `f` on a thread with a main thread's stack and returns its result; `f`'s panic is
/// re-raised, and `f` running past [`DEADLINE`] is a panic too, so that proptest records the
/// case as failing either way.
fn within_deadline<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new()
        .name(what.into())
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = sender.send(panic::catch_unwind(AssertUnwindSafe(f)));
        })
        .expect("spawn a fuzz thread");
    match receiver.recv_timeout(DEADLINE) {
        Ok(Ok(value)) => value,
        Ok(Err(payload)) => panic::resume_unwind(payload),
        Err(_) => panic!("{what} did not return within {DEADLINE:?}"),
    }
}

/// Arbitrary bytes, at most [`MAX_INPUT`] of them.
fn raw_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        prop::collection::vec(any::<u8>(), 0..MAX_INPUT),
    ]
}

/// `bytes` with a few bytes overwritten (positions wrap around) and perhaps cut short.
fn mutate(mut bytes: Vec<u8>, flips: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if !bytes.is_empty() {
        for &(at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

/// Byte flips (position, value) and a possible truncation, as [`mutate`] applies them.
type Mutation = (Vec<(usize, u8)>, Option<usize>);

/// Byte flips and a possible truncation for [`mutate`].
fn mutations() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        prop::option::weighted(0.2, any::<usize>()),
    )
}

/// Strings that break naive parsers: empty, huge, path tricks, separators, non-ASCII.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "",
            " ",
            "..",
            "../../kzf",
            "/",
            ":",
            "@",
            "a:b:c",
            "kzf/app:1",
            "app",
            "127.0.0.1:5000/kzf/app:tag",
            "UPPER/Case",
            "a//b",
            "docker.io/library/",
            "sha256:",
            "sha256:zz",
            "sha512:00",
            "linux",
            "amd64",
            "\u{e9}t\u{e9}",
            "\u{0}",
            "a\nb",
            "{\"",
        ])
        .prop_map(String::from),
        "\\PC{0,40}",
        "[a-f0-9]{64}".prop_map(|hex| format!("sha256:{hex}")),
        (1usize..2000).prop_map(|n| "k".repeat(n)),
    ]
}

/// Keys that kiln and oci-spec look for, and others.
fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "mediaType",
            "schemaVersion",
            "manifests",
            "layers",
            "config",
            "digest",
            "size",
            "platform",
            "os",
            "architecture",
            "variant",
            "annotations",
            "urls",
            "rootfs",
            "diff_ids",
            "type",
            "history",
            "errors",
            "message",
            "token",
            "access_token",
            "Config",
            "RepoTags",
            "Layers",
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
        ])
        .prop_map(String::from),
        "[a-zA-Z_.]{0,12}",
    ]
}

/// An arbitrary JSON document, biased towards the keys of OCI documents.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        hostile_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// JSON nested `depth` levels deep, as arrays or objects.
fn deep_json(depth: usize, objects: bool) -> Vec<u8> {
    let (open, close): (&[u8], &[u8]) = if objects {
        (b"{\"a\":", b"}")
    } else {
        (b"[", b"]")
    };
    let mut out = open.repeat(depth);
    out.extend_from_slice(b"1");
    out.extend(close.repeat(depth));
    out
}

/// Media types of OCI and Docker documents, and wrong ones.
fn media_type() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/json",
        ])
        .prop_map(String::from),
        hostile_string(),
    ]
}

/// Bytes of a JSON-ish document: arbitrary JSON, deeply nested JSON, or raw bytes.
fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => (1usize..20_000, any::<bool>()).prop_map(|(depth, objects)| deep_json(depth, objects)),
        1 => raw_bytes(),
    ]
}

// ---------------------------------------------------------------------------------------
// 1. The Dockerfile frontend.

/// Parses `source`, types its instructions and lowers them with no base image configs:
/// the whole frontend pipeline, with every failure as a message.
fn parse_and_lower(source: Vec<u8>, options: BuildOptions) -> Result<(), String> {
    let document = kiln_frontend::parser::parse(&source).map_err(|e| e.to_string())?;
    let dockerfile = Dockerfile::from_document(&document).map_err(|e| e.to_string())?;
    lower(&dockerfile, &options, &EmptyConfigs)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// An instruction keyword, well-formed or not.
fn keyword() -> impl Strategy<Value = &'static str> {
    select(vec![
        "FROM",
        "FROM",
        "RUN",
        "RUN",
        "CMD",
        "LABEL",
        "MAINTAINER",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "from",
        "run",
        "FOO",
        "",
    ])
}

/// A word of an instruction: flags, variables, quoting, heredocs, JSON, paths.
fn dockerfile_word() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(vec![
            "scratch", "busybox", "alpine:3.19", "base", "AS", "as", "b", "0", "1",
            "--from=b", "--from=0", "--from=busybox", "--from=",
            "--mount=type=cache,target=/c,id=x,sharing=locked",
            "--mount=type=secret,id=s,required", "--mount=type=ssh",
            "--mount=type=bind,from=b,source=/,target=/m,rw",
            "--mount=type=tmpfs,target=/t,size=1k", "--mount=type=", "--mount=",
            "--network=none", "--network=host", "--security=insecure",
            "--platform=$BUILDPLATFORM", "--platform=linux/arm/v7", "--platform=",
            "--chown=1:1", "--chown=$A", "--chmod=0755", "--chmod=u+x", "--chmod=99999999999",
            "--link", "--link=false", "--parents", "--exclude=*.md", "--checksum=sha256:00",
            "--keep-git-dir", "--interval=1s", "--timeout=0s", "--retries=-1", "--start-period=",
            "--", "-", "NONE", "CMD", "$A", "${A}", "${A:-def}", "${A:+alt}", "${A-}",
            "${A#*}", "${A##*/}", "${A%%x}", "${A%.*}", "${A/a/b}", "${A//a/}", "${A:?err}",
            "${", "${A", "${A:", "${:-}", "$", "\\", "\\$A", "`", "'", "\"", "'$A'", "\"$A\"",
            "[\"sh\", \"-c\", \"echo\"]", "[\"a\"", "[", "]", "[]", "{", "A=1", "A=\"x y\"",
            "B=$A", "A", "=", "==", "<<EOF", "<<-EOF", "<<'EOF'", "<<\"EOF\"", "<<EOF2",
            "EOF", "cat", "/", ".", "..", "../..", "/a/b", "a/", "*", "**", "?", "[a-z]",
            "http://127.0.0.1:1/x", "https://x/y.tar.gz", "git@x:y", "80/tcp", "65536/udp",
            "-1", "SIGKILL", "9", "root:root", "\u{e9}", "\u{0}", "\t", "#", "# c", "\r",
            "\\\n", "\\\r\n",
        ]).prop_map(String::from),
        1 => "\\PC{0,12}",
        1 => (1usize..400).prop_map(|n| "a".repeat(n)),
        1 => (1usize..200).prop_map(|n| "${A:-".repeat(n)),
    ]
}

/// One line of a Dockerfile with its terminator: an instruction, a parser directive, a
/// comment, or noise.
fn dockerfile_line() -> impl Strategy<Value = String> {
    let body = prop_oneof![
        8 => (keyword(), prop::collection::vec(dockerfile_word(), 0..7))
            .prop_map(|(keyword, words)| format!("{keyword} {}", words.join(" "))),
        1 => select(vec![
            "# syntax=docker/dockerfile:1",
            "# escape=`",
            "# escape=\\",
            "# escape=x",
            "#escape = `",
            "# check=skip=all;error=true",
            "# comment",
            "",
            "   ",
        ]).prop_map(String::from),
        1 => prop::collection::vec(dockerfile_word(), 0..5).prop_map(|w| w.join("")),
    ];
    let end = select(vec![
        "\n", "\n", "\n", "\n", "\r\n", "\\\n", " \\\n", "`\n", "\n\n",
    ]);
    (body, end).prop_map(|(body, end)| body + end)
}

/// Options with a stage target and build args the Dockerfile may use.
fn build_options() -> impl Strategy<Value = BuildOptions> {
    (
        prop::option::of(select(vec!["b", "0", "base", "nope", ""])),
        prop::collection::btree_map(
            select(vec![
                "A",
                "B",
                "TARGETPLATFORM",
                "HTTP_PROXY",
                "BUILDKIT_SYNTAX",
            ]),
            hostile_string(),
            0..3,
        ),
    )
        .prop_map(|(target, args)| BuildOptions {
            target: target.map(String::from),
            build_args: args
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
            ..BuildOptions::default()
        })
}

/// A well-formed instruction line, so that whole files get through to lowering.
fn valid_line() -> impl Strategy<Value = String> {
    select(vec![
        "FROM busybox AS b\n",
        "FROM scratch\n",
        "FROM b AS c\n",
        "FROM --platform=$BUILDPLATFORM busybox\n",
        "ARG A=x\n",
        "ARG B\n",
        "ENV A=1 B=\"$A y\"\n",
        "RUN echo $A ${B:-z}\n",
        "RUN --mount=type=cache,target=/c --network=none true\n",
        "RUN --mount=type=bind,from=b,target=/m ls /m\n",
        "RUN <<EOF\necho hi\nEOF\n",
        "COPY --from=b /a /b\n",
        "COPY --chown=1:1 --chmod=755 a* /d/\n",
        "COPY <<EOF /f\nhi $A\nEOF\n",
        "ADD --link x.tar /x\n",
        "WORKDIR /w/$A\n",
        "USER 1:1\n",
        "LABEL a=b \"c d\"=e\n",
        "EXPOSE 80/tcp 53/udp\n",
        "CMD [\"sh\", \"-c\", \"echo\"]\n",
        "ENTRYPOINT sh\n",
        "HEALTHCHECK --interval=5s CMD true\n",
        "SHELL [\"/bin/sh\", \"-c\"]\n",
        "VOLUME /v\n",
        "STOPSIGNAL SIGTERM\n",
        "ONBUILD RUN true\n",
        "# escape=`\n",
    ])
    .prop_map(String::from)
}

/// A Dockerfile of generated lines, mostly well-formed and mostly starting with `FROM`,
/// possibly with bytes flipped.
fn dockerfile() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::option::weighted(0.8, Just("FROM busybox AS base\n".to_string())),
        prop::collection::vec(
            prop_oneof![12 => valid_line(), 1 => dockerfile_line()],
            0..32,
        ),
        prop::option::weighted(0.2, mutations()),
    )
        .prop_map(|(from, lines, mutation)| {
            let text = (from.unwrap_or_default() + &lines.concat()).into_bytes();
            match mutation {
                Some((flips, cut)) => mutate(text, &flips, cut),
                None => text,
            }
        })
}

// ---------------------------------------------------------------------------------------
// 2. The tar applier.

/// A piece of a generated entry name or link target.
#[derive(Clone, Copy, Debug)]
enum Part {
    /// A component taken as it is.
    Text(&'static str),
    /// The absolute path of the sentinel directory outside the destination.
    Outside,
    /// A component longer than a tar header's name field.
    Long,
    /// A component that is not UTF-8.
    NotUtf8,
}

/// A generated entry name or link target.
#[derive(Clone, Debug)]
struct HostileName {
    /// Whether it starts with `/`.
    absolute: bool,
    /// Its pieces, joined with `/`.
    parts: Vec<Part>,
}

impl HostileName {
    /// The name's bytes, with [`Part::Outside`] as `outside`.
    fn render(&self, outside: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        if self.absolute {
            out.push(b'/');
        }
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            match part {
                Part::Text(text) => out.extend_from_slice(text.as_bytes()),
                Part::Outside => out.extend_from_slice(outside.as_os_str().as_encoded_bytes()),
                Part::Long => out.extend(std::iter::repeat_n(b'k', 150)),
                Part::NotUtf8 => out.extend_from_slice(b"kzf_\xff\xfe"),
            }
        }
        out
    }
}

/// Names from a small alphabet, so that entries collide, and with the tricks tars use to
/// escape: `..`, absolute paths, the sentinel's path, whiteouts.
fn hostile_name() -> impl Strategy<Value = HostileName> {
    let part = prop_oneof![
        12 => select(vec![
            "kzf_a", "kzf_a", "kzf_l", "kzf_l", "up", "x", "x", ".", "..", "", "victim",
            ".wh.kzf_a", ".wh.x", ".wh..wh..opq", ".wh..", ".wh...", "\u{e9}",
        ]).prop_map(Part::Text),
        1 => Just(Part::Outside),
        1 => Just(Part::Long),
        1 => Just(Part::NotUtf8),
    ];
    (prop::bool::weighted(0.1), prop::collection::vec(part, 0..5))
        .prop_map(|(absolute, parts)| HostileName { absolute, parts })
}

/// One generated tar entry.
#[derive(Clone, Debug)]
struct TarItem {
    /// The header's entry type byte.
    kind: u8,
    /// Its name.
    name: HostileName,
    /// Its link target (written for every type; read for links).
    link: HostileName,
    /// Its content.
    data: Vec<u8>,
    /// Mode, uid, gid and mtime fields.
    numbers: (u32, u64, u64, u64),
    /// Device numbers.
    device: (u32, u32),
    /// PAX records before it.
    pax: Vec<(&'static str, Vec<u8>)>,
    /// Whether its header is GNU (else ustar).
    gnu: bool,
}

/// Entries of every type, mostly files, directories and links.
fn tar_item() -> impl Strategy<Value = TarItem> {
    let kind = prop_oneof![
        4 => Just(b'0'),
        4 => Just(b'5'),
        4 => Just(b'2'),
        2 => Just(b'1'),
        2 => select(vec![b'3', b'4', b'6', b'7', b'S', b'g', b'L', b'K', b'V', b'x', b'Z', 0]),
    ];
    let pax_value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..16),
        select(vec![
            &b"../../kzf"[..],
            b"/kzf",
            b"kzf_a/x",
            b"99999999999999999999",
            b"-1",
            b"1.5",
            b"",
        ])
        .prop_map(<[u8]>::to_vec),
    ];
    let pax = prop::collection::vec(
        (
            select(vec![
                "path",
                "linkpath",
                "size",
                "uid",
                "gid",
                "mtime",
                "GNU.sparse.size",
                "GNU.sparse.map",
                "SCHILY.xattr.user.kzf",
                "SCHILY.xattr.trusted.overlay.opaque",
                "SCHILY.xattr.trusted.overlay.redirect",
                "SCHILY.xattr.",
                "SCHILY.xattr.kzf",
            ]),
            pax_value,
        ),
        0..3,
    );
    (
        kind,
        hostile_name(),
        hostile_name(),
        prop::collection::vec(any::<u8>(), 0..64),
        (
            prop_oneof![
                Just(0o755u32),
                Just(0o644),
                Just(0o4755),
                Just(0),
                any::<u32>()
            ],
            prop_oneof![Just(0u64), Just(1000), any::<u64>()],
            prop_oneof![Just(0u64), Just(1000), any::<u64>()],
            prop_oneof![Just(0u64), Just(1_700_000_000), any::<u64>()],
        ),
        (0u32..300, 0u32..300),
        prop::option::weighted(0.15, pax),
        any::<bool>(),
    )
        .prop_map(
            |(kind, name, link, data, numbers, device, pax, gnu)| TarItem {
                kind,
                name,
                link,
                data,
                numbers,
                device,
                pax: pax.unwrap_or_default(),
                gnu,
            },
        )
}

/// Appends a GNU long name (`L`) or long link name (`K`) entry holding `name`.
fn append_long(builder: &mut tar::Builder<Vec<u8>>, kind: u8, name: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_mode(0o644);
    let mut data = name.to_vec();
    data.push(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data.as_slice()).unwrap();
}

/// A tar of `items`, their names written byte for byte (no sanitising), with `outside`
/// standing for [`Part::Outside`].
fn render_tar(items: &[TarItem], outside: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        if !item.pax.is_empty() {
            let records: Vec<(&str, &[u8])> = item
                .pax
                .iter()
                .map(|(key, value)| (*key, value.as_slice()))
                .collect();
            builder.append_pax_extensions(records).unwrap();
        }
        let name = item.name.render(outside);
        let link = item.link.render(outside);
        let mut header = if item.gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        for (value, field, kind) in [(&name, 0, b'L'), (&link, 1, b'K')] {
            if value.len() > 100 {
                append_long(&mut builder, kind, value);
            }
            let old = header.as_old_mut();
            let slot = if field == 0 {
                &mut old.name
            } else {
                &mut old.linkname
            };
            let n = value.len().min(100);
            slot[..n].copy_from_slice(&value[..n]);
        }
        header.set_entry_type(tar::EntryType::new(item.kind));
        let (mode, uid, gid, mtime) = item.numbers;
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        let _ = header.set_device_major(item.device.0);
        let _ = header.set_device_minor(item.device.1);
        header.set_size(item.data.len() as u64);
        header.set_cksum();
        builder.append(&header, item.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

/// gzip of `data`.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A hostile tar: generated entries, perhaps gzipped, perhaps with bytes flipped.
#[derive(Clone, Debug)]
struct HostileTar {
    /// The entries.
    items: Vec<TarItem>,
    /// Whether to gzip the tar.
    gzip: bool,
    /// Byte flips and truncation applied last.
    mutation: Option<Mutation>,
}

impl HostileTar {
    /// The archive's bytes.
    fn render(&self, outside: &Path) -> Vec<u8> {
        let tar = render_tar(&self.items, outside);
        let bytes = if self.gzip { gzip(&tar) } else { tar };
        match &self.mutation {
            Some((flips, cut)) => mutate(bytes, flips, *cut),
            None => bytes,
        }
    }
}

/// Hostile tars of up to 16 entries.
fn hostile_tar() -> impl Strategy<Value = HostileTar> {
    (
        prop::collection::vec(tar_item(), 0..16),
        prop::bool::weighted(0.15),
        prop::option::weighted(0.15, mutations()),
    )
        .prop_map(|(items, gzip, mutation)| HostileTar {
            items,
            gzip,
            mutation,
        })
}

/// Raw bytes behind the magic of each compression ADD and layers accept, or gzipped.
fn compressed_noise() -> impl Strategy<Value = Vec<u8>> {
    let magic = select(vec![
        &b""[..],
        &[0x1f, 0x8b],
        &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
        &[0x28, 0xb5, 0x2f, 0xfd],
        b"BZh9",
        &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
    ]);
    prop_oneof![
        (magic, raw_bytes()).prop_map(|(magic, rest)| [magic, &rest].concat()),
        raw_bytes().prop_map(|bytes| gzip(&bytes)),
    ]
}

/// A sandbox for one extraction: the destination nested 8 levels deep (so that `..`
/// chains land inside the sandbox) and a sentinel directory beside it.
struct Sandbox {
    /// Owns the whole tree.
    root: tempfile::TempDir,
    /// Where the archive is extracted.
    dest: PathBuf,
    /// The sentinel directory, with a file `victim` and a directory `x`.
    outside: PathBuf,
}

impl Sandbox {
    /// Creates the tree.
    fn new() -> Sandbox {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("n1/n2/n3/n4/n5/n6/n7/n8/dest");
        fs::create_dir_all(&dest).unwrap();
        let outside = root.path().join("outside");
        fs::create_dir_all(outside.join("x")).unwrap();
        fs::write(outside.join("victim"), "kzf victim\n").unwrap();
        Sandbox {
            root,
            dest,
            outside,
        }
    }

    /// Everything in the sandbox outside `dest`, with its type, content, owner, mode and
    /// link count, not following symlinks.
    fn outside_dest(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut pending = vec![self.root.path().to_path_buf()];
        while let Some(path) = pending.pop() {
            if path == self.dest {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() {
                fs::read(&path).unwrap()
            } else if meta.is_symlink() {
                fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            out.push(format!(
                "{} {:o} {}:{} links={} {:?}",
                path.display(),
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.nlink(),
                String::from_utf8_lossy(&content)
            ));
            if meta.is_dir() {
                for entry in fs::read_dir(&path).unwrap() {
                    pending.push(entry.unwrap().path());
                }
            }
        }
        out.sort();
        out
    }
}

/// Names starting `kzf` in `dir`: what an escape past the sandbox would leave.
fn kzf_names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("kzf"))
                .collect()
        })
        .unwrap_or_default()
}

/// How an archive is unpacked.
#[derive(Clone, Copy, Debug)]
enum Unpack {
    /// `extract_archive` (ADD).
    Extract,
    /// `apply_layer` with the right digests (image layers).
    Layer,
}

/// Unpacks the archive `render` makes into a fresh sandbox, and checks that it answers
/// within the deadline without panicking and leaves everything outside the destination
/// as it was.
fn unpack_and_check(how: Unpack, render: impl FnOnce(&Path) -> Vec<u8>) {
    let sandbox = Sandbox::new();
    let bytes = render(&sandbox.outside);
    let before = sandbox.outside_dest();
    let dest = sandbox.dest.clone();
    let result = within_deadline("unpacking", move || match how {
        Unpack::Extract => extract_archive(bytes.as_slice(), &dest).map(drop),
        Unpack::Layer => {
            let digest = Digest::of(&bytes);
            let layer = LayerBlob {
                diff_id: digest,
                digest,
                size: bytes.len() as u64,
                media_type: TAR_LAYER_MEDIA_TYPE.to_string(),
                created: None,
            };
            apply_layer(bytes.as_slice(), &dest, &layer).map(drop)
        }
    });
    let after = sandbox.outside_dest();
    assert_eq!(
        before, after,
        "the archive changed the sandbox outside the destination (result {result:?})"
    );
    let tmp = sandbox.root.path().parent().unwrap();
    for dir in [Path::new("/"), tmp] {
        assert_eq!(
            kzf_names_in(dir),
            Vec::<String>::new(),
            "escaped into {dir:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. The archive loader.

/// A generated document of an image archive; blob references are indexes into the
/// blobs before it (see [`descriptor_json`]).
#[derive(Clone, Debug)]
enum ArchiveDoc {
    /// An OCI image manifest.
    Manifest {
        /// Its `mediaType`.
        media_type: String,
        /// Its config blob.
        config: usize,
        /// Its layer blobs.
        layers: Vec<usize>,
    },
    /// An OCI index whose entries carry name annotations.
    Index(Vec<(usize, Option<String>, Option<String>)>),
    /// An image config with this many diff_ids.
    Config(usize),
    /// Anything else.
    Other(Vec<u8>),
}

/// How a blob is named in the archive.
#[derive(Clone, Copy, Debug)]
enum BlobName {
    /// `blobs/sha256/<its digest>`.
    Right,
    /// `blobs/sha256/<another digest>`.
    Wrong,
    /// A malformed name under `blobs/sha256/`.
    Malformed(&'static str),
}

/// A `docker save` `manifest.json` entry: config file, tags, layer files.
type DockerSaveEntry = (String, Option<Vec<String>>, Vec<String>);

/// A generated image archive.
#[derive(Clone, Debug)]
struct ArchivePlan {
    /// Blobs, each with how it is named.
    blobs: Vec<(ArchiveDoc, BlobName)>,
    /// `index.json`, if any: an index, or other bytes.
    index: Option<ArchiveDoc>,
    /// `manifest.json`, if any: `docker save` entries (config, tags, layers) or bytes.
    docker: Option<Result<Vec<DockerSaveEntry>, Vec<u8>>>,
    /// Other files: `config.json`, layer tars and noise.
    extra: Vec<(String, ArchiveDoc)>,
}

/// A descriptor of blob `index` (modulo the blobs in `digests`; 5 and up name a blob the
/// archive lacks) as JSON.
fn descriptor_json(digests: &[Digest], index: usize, media_type: &str) -> Value {
    let digest = match digests.len() {
        0 => Digest::of(b"kzf missing"),
        _ if index >= 5 => Digest::of(b"kzf missing"),
        n => digests[index % n],
    };
    json!({"mediaType": media_type, "digest": digest.to_string(), "size": 2})
}

/// The bytes of `doc`, whose references point into `digests`.
fn render_doc(doc: &ArchiveDoc, digests: &[Digest]) -> Vec<u8> {
    let value = match doc {
        ArchiveDoc::Manifest {
            media_type,
            config,
            layers,
        } => json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor_json(digests, *config, "application/vnd.oci.image.config.v1+json"),
            "layers": layers
                .iter()
                .map(|l| descriptor_json(digests, *l, "application/vnd.oci.image.layer.v1.tar"))
                .collect::<Vec<_>>(),
        }),
        ArchiveDoc::Index(entries) => json!({
            "schemaVersion": 2,
            "manifests": entries.iter().map(|(index, name, ref_name)| {
                let mut descriptor = descriptor_json(
                    digests, *index, "application/vnd.oci.image.manifest.v1+json");
                let mut annotations = serde_json::Map::new();
                if let Some(name) = name {
                    annotations.insert("io.containerd.image.name".into(), name.clone().into());
                }
                if let Some(ref_name) = ref_name {
                    annotations.insert(
                        "org.opencontainers.image.ref.name".into(), ref_name.clone().into());
                }
                descriptor["annotations"] = Value::Object(annotations);
                descriptor
            }).collect::<Vec<_>>(),
        }),
        ArchiveDoc::Config(layers) => json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {
                "type": "layers",
                "diff_ids": (0..*layers).map(|i| Digest::of(&[i as u8]).to_string())
                    .collect::<Vec<_>>(),
            },
        }),
        ArchiveDoc::Other(bytes) => return bytes.clone(),
    };
    serde_json::to_vec(&value).unwrap()
}

/// Archive documents, references being small indexes.
fn archive_doc() -> impl Strategy<Value = ArchiveDoc> {
    prop_oneof![
        3 => (media_type(), 0usize..6, prop::collection::vec(0usize..6, 0..4)).prop_map(
            |(media_type, config, layers)| ArchiveDoc::Manifest { media_type, config, layers }
        ),
        2 => prop::collection::vec(
            (0usize..6, prop::option::of(hostile_string()), prop::option::of(hostile_string())),
            0..4,
        ).prop_map(ArchiveDoc::Index),
        2 => (0usize..4).prop_map(ArchiveDoc::Config),
        2 => json_bytes().prop_map(ArchiveDoc::Other),
    ]
}

/// File names an archive's `manifest.json` may name.
fn archive_file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "config.json",
            "l0.tar",
            "l1.tar.gz",
            "missing.tar",
            "../kzf.tar",
            "",
            "index.json",
        ])
        .prop_map(String::from),
        (0usize..6).prop_map(|i| format!("@blob{i}")),
    ]
}

/// Generated image archives: OCI layouts, `docker save` archives, and mixtures.
fn archive_plan() -> impl Strategy<Value = ArchivePlan> {
    let blob_name = prop_oneof![
        30 => Just(BlobName::Right),
        1 => Just(BlobName::Wrong),
        1 => select(vec!["", "zz", "../../kzf", "ABCDEF", "0/../x", "kzf_\u{e9}"])
            .prop_map(BlobName::Malformed),
    ];
    let docker_entry = (
        archive_file_name(),
        prop::option::of(prop::collection::vec(hostile_string(), 0..3)),
        prop::collection::vec(archive_file_name(), 0..3),
    );
    (
        prop::collection::vec((archive_doc(), blob_name), 0..6),
        prop::option::weighted(
            0.8,
            prop_oneof![
                3 => prop::collection::vec(
                    (
                        0usize..6,
                        prop::option::weighted(0.2, hostile_string()),
                        prop::option::weighted(0.3, hostile_string()),
                    ),
                    1..4,
                )
                .prop_map(ArchiveDoc::Index),
                1 => archive_doc(),
            ],
        ),
        prop::option::of(prop_oneof![
            3 => prop::collection::vec(docker_entry, 0..3).prop_map(Ok),
            1 => json_bytes().prop_map(Err),
        ]),
        prop::collection::vec(
            (
                prop_oneof![
                    6 => select(vec!["config.json", "l0.tar", "l1.tar.gz", "../kzf.tar"])
                        .prop_map(String::from),
                    1 => archive_file_name(),
                ],
                archive_doc(),
            ),
            0..4,
        ),
    )
        .prop_map(|(blobs, index, docker, extra)| ArchivePlan {
            blobs,
            index,
            docker,
            extra,
        })
}

/// Appends a regular file `path` holding `data`.
fn append_file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    let name = path.as_bytes();
    if name.len() > 100 {
        append_long(builder, b'L', name);
    }
    let n = name.len().min(100);
    header.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

impl ArchivePlan {
    /// The archive's bytes.
    fn render(&self) -> Vec<u8> {
        let mut digests = Vec::new();
        let mut builder = tar::Builder::new(Vec::new());
        append_file(
            &mut builder,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        let mut blob_paths = Vec::new();
        for (doc, name) in &self.blobs {
            let bytes = render_doc(doc, &digests);
            let digest = Digest::of(&bytes);
            let path = match name {
                BlobName::Right => format!("blobs/sha256/{}", digest.hex()),
                BlobName::Wrong => format!("blobs/sha256/{}", Digest::of(b"kzf").hex()),
                BlobName::Malformed(name) => format!("blobs/sha256/{name}"),
            };
            append_file(&mut builder, &path, &bytes);
            digests.push(digest);
            blob_paths.push(path);
        }
        let file_name = |name: &String| match name.strip_prefix("@blob") {
            Some(i) => blob_paths
                .get(i.parse::<usize>().unwrap())
                .cloned()
                .unwrap_or_default(),
            None => name.clone(),
        };
        for (name, doc) in &self.extra {
            append_file(&mut builder, &file_name(name), &render_doc(doc, &digests));
        }
        if let Some(index) = &self.index {
            append_file(&mut builder, "index.json", &render_doc(index, &digests));
        }
        match &self.docker {
            Some(Ok(entries)) => {
                let value: Vec<Value> = entries
                    .iter()
                    .map(|(config, tags, layers)| {
                        json!({
                            "Config": file_name(config),
                            "RepoTags": tags,
                            "Layers": layers.iter().map(file_name).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                append_file(
                    &mut builder,
                    "manifest.json",
                    &serde_json::to_vec(&value).unwrap(),
                );
            }
            Some(Err(bytes)) => append_file(&mut builder, "manifest.json", bytes),
            None => {}
        }
        builder.into_inner().unwrap()
    }
}

/// Loads `archive` into a fresh content store and checks that the loader answers within the
/// deadline without panicking, writes nothing outside the store, keeps every blob under its
/// own digest and, on success, holds what it names.
fn import_and_check(archive: Vec<u8>) {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    let store = ContentStore::open(&store_dir).unwrap();
    let result = within_deadline("importing", move || {
        kiln_image::import_archive(archive.as_slice(), &store)
            .map(|images| {
                images
                    .iter()
                    .map(|image| image.target.digest().to_string())
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.to_string())
    });
    let mut top: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["store"], "the loader wrote beside its store");
    let store = ContentStore::open(&store_dir).unwrap();
    for entry in fs::read_dir(store_dir.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            name,
            Digest::of(&fs::read(&path).unwrap()).hex(),
            "a blob is stored under another digest"
        );
    }
    if let Ok(targets) = result {
        for target in targets {
            let digest: Digest = target.parse().expect("an imported target's digest parses");
            assert!(
                store.contains(&digest),
                "imported {target}, not in the store"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. The registry client.

/// A hostile registry's answer to one request.
#[derive(Clone, Debug)]
struct Reply {
    /// Its status line.
    status: &'static str,
    /// Its `Content-Type`, if any.
    content_type: Option<String>,
    /// Its body.
    body: Vec<u8>,
}

/// Status lines a registry might answer with.
fn status() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => Just("200 OK"),
        1 => select(vec![
            "201 Created",
            "204 No Content",
            "401 Unauthorized",
            "404 Not Found",
            "429 Too Many Requests",
            "500 Internal Server Error",
        ]),
    ]
}

/// A distribution API error body, with hostile values.
fn error_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (hostile_string(), hostile_string()).prop_map(|(code, message)| {
            serde_json::to_vec(&json!({"errors": [{"code": code, "message": message}]})).unwrap()
        }),
        json_value().prop_map(|v| serde_json::to_vec(&json!({ "errors": v })).unwrap()),
    ]
}

/// A registry's answer with a body made by `body`.
fn reply(body: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Reply> {
    (
        status(),
        prop::option::of(media_type()),
        prop_oneof![4 => body, 1 => error_body()],
    )
        .prop_map(|(status, content_type, body)| Reply {
            status,
            content_type,
            body,
        })
}

/// A blob the manifest names: its bytes, the size the manifest declares (`None`: none, or
/// not a number) and whether its digest is the right one.
type BlobPlan = (Vec<u8>, Option<i64>, bool);

/// A generated pull: what the registry answers to each request.
#[derive(Clone, Debug)]
struct PullPlan {
    /// `WWW-Authenticate` of the 401 answered to requests without `Authorization`
    /// (`@TOKEN` stands for the fake token service's URL).
    challenge: Option<String>,
    /// The token service's answer.
    token: Reply,
    /// The credentials the client has.
    credential: Option<(String, String)>,
    /// The manifest's config and layers.
    blobs: Vec<BlobPlan>,
    /// The platform manifest, perhaps replaced by other bytes.
    manifest: Reply,
    /// Whether the tag names an index of the manifest (else the manifest itself).
    indexed: Option<(Reply, String, String)>,
    /// Whether each blob is served with its bytes (else with another answer).
    served: Option<Reply>,
}

/// Token service answers: tokens with hostile values, or anything.
fn token_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        hostile_string().prop_map(|t| serde_json::to_vec(&json!({ "token": t })).unwrap()),
        hostile_string().prop_map(|t| serde_json::to_vec(&json!({ "access_token": t })).unwrap()),
        json_bytes(),
    ]
}

/// `WWW-Authenticate` challenges: well-formed with hostile realms, or printable noise.
fn challenge() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            select(vec![
                "@TOKEN",
                "@TOKEN?x=\"",
                "",
                "not a url",
                "file:///etc/passwd",
                "http://127.0.0.1:1/token",
                "ftp://127.0.0.1:1/",
            ]),
            select(vec!["Bearer", "bearer", "BEARER", "Basic", "Digest", ""]),
            "[ -~]{0,20}",
        )
            .prop_map(|(realm, scheme, service)| format!(
                "{scheme} realm=\"{realm}\",service=\"{}\",scope=\"x\"",
                service.replace('"', "")
            )),
        "[ -~]{0,80}",
    ]
}

/// Generated pulls.
fn pull_plan() -> impl Strategy<Value = PullPlan> {
    let blob = (
        prop::collection::vec(any::<u8>(), 0..64),
        prop_oneof![
            4 => Just(Some(0)),
            1 => Just(None),
            1 => any::<i64>().prop_map(Some)
        ],
        prop::bool::weighted(0.9),
    );
    let manifest_body = prop_oneof![
        4 => Just(Vec::new()),
        1 => json_bytes(),
    ];
    (
        prop::option::weighted(0.4, challenge()),
        reply(token_body()),
        prop::option::of(("[ -~]{0,12}", "[ -~]{0,12}")),
        prop::collection::vec(blob, 0..4),
        reply(manifest_body),
        prop::option::weighted(
            0.5,
            (
                reply(prop_oneof![4 => Just(Vec::new()), 1 => json_bytes()]),
                select(vec!["linux", "windows", ""]).prop_map(String::from),
                select(vec!["amd64", "arm64", ""]).prop_map(String::from),
            ),
        ),
        prop::option::weighted(0.2, reply(raw_bytes())),
    )
        .prop_map(
            |(challenge, token, credential, blobs, manifest, indexed, served)| PullPlan {
                challenge,
                token,
                credential,
                blobs,
                manifest,
                indexed,
                served,
            },
        )
}

/// What the fake registry answers now, by the path after the repository.
#[derive(Default)]
struct Served {
    /// The 401 challenge, if any.
    challenge: Option<String>,
    /// The token service's answer.
    token: Option<Reply>,
    /// Answers by `manifests/…` and `blobs/…` path.
    replies: HashMap<String, Reply>,
    /// The credentials the client has.
    credential: Option<(String, String)>,
}

/// Credentials from the fake registry's current plan.
#[derive(Debug)]
struct PlannedCredentials(Arc<Mutex<Served>>);

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Served")
    }
}

impl CredentialSource for PlannedCredentials {
    fn credential_for(&self, _domain: &str) -> Option<(String, String)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .credential
            .clone()
    }
}

/// The fake registry: its `host:port`, what it serves, and one client for all cases (each
/// case pulls another repository, so cached authorizations do not carry over).
struct FakeRegistry {
    /// `127.0.0.1:PORT`.
    host: String,
    /// What it answers.
    served: Arc<Mutex<Served>>,
    /// The client under test.
    client: RegistryClient,
}

/// The fake registry, started on first use.
fn fake_registry() -> &'static FakeRegistry {
    static REGISTRY: OnceLock<FakeRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let served = Arc::new(Mutex::new(Served::default()));
        let state = served.clone();
        let base = kiln_tests::serve(move |request| {
            let served = state.lock().unwrap_or_else(PoisonError::into_inner);
            let path = request.target.split('?').next().unwrap_or_default();
            let answer = |reply: &Reply| {
                let headers = reply
                    .content_type
                    .iter()
                    .map(|t| ("Content-Type".to_string(), t.clone()))
                    .collect();
                (reply.status, headers, reply.body.clone())
            };
            if path == "/token" {
                if let Some(token) = &served.token {
                    return answer(token);
                }
            } else if let Some(challenge) = &served.challenge
                && request.header("authorization").is_none()
            {
                let header = ("WWW-Authenticate".to_string(), challenge.clone());
                return ("401 Unauthorized", vec![header], Vec::new());
            }
            let key = ["/manifests/", "/blobs/"]
                .iter()
                .find_map(|marker| path.find(marker).map(|at| &path[at + 1..]));
            match key.and_then(|key| served.replies.get(key)) {
                Some(reply) => answer(reply),
                None => ("404 Not Found", Vec::new(), b"{}".to_vec()),
            }
        });
        let host = base.trim_start_matches("http://").to_string();
        let client = RegistryClient::new(RegistryOptions {
            insecure_registries: Vec::new(),
            credentials: Some(Arc::new(PlannedCredentials(served.clone()))),
        })
        .unwrap();
        FakeRegistry {
            host,
            served,
            client,
        }
    })
}

/// Sets up the fake registry for `plan` and pulls from it into fresh stores; checks that
/// the pull answers within the deadline without panicking, that the store keeps every
/// blob under its own digest and, on success, holds what the name points at.
fn pull_and_check(plan: PullPlan) {
    static REPOSITORY: AtomicU64 = AtomicU64::new(0);
    let registry = fake_registry();
    let token_url = format!("http://{}/token", registry.host);
    let mut replies = HashMap::new();
    let mut layers = Vec::new();
    for (bytes, size, right) in &plan.blobs {
        let digest = if *right {
            Digest::of(bytes)
        } else {
            Digest::of(b"kzf")
        };
        let reply = plan.served.clone().unwrap_or_else(|| Reply {
            status: "200 OK",
            content_type: None,
            body: bytes.clone(),
        });
        replies.insert(format!("blobs/{digest}"), reply);
        let mut descriptor = json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest.to_string(),
        });
        if let Some(size) = size {
            descriptor["size"] = if *size == 0 {
                json!(bytes.len())
            } else {
                json!(size)
            };
        }
        layers.push(descriptor);
    }
    let mut manifest = plan.manifest.clone();
    if manifest.body.is_empty() {
        let config = layers.first().cloned().unwrap_or(Value::Null);
        let rest = layers.get(1..).unwrap_or_default();
        manifest.body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": rest,
        }))
        .unwrap();
    }
    let manifest_digest = Digest::of(&manifest.body);
    match &plan.indexed {
        Some((index, os, architecture)) => {
            let mut index = index.clone();
            if index.body.is_empty() {
                index.body = serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": [{
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": manifest_digest.to_string(),
                        "size": manifest.body.len(),
                        "platform": {"os": os, "architecture": architecture},
                    }],
                }))
                .unwrap();
            }
            replies.insert("manifests/latest".into(), index);
            replies.insert(format!("manifests/{manifest_digest}"), manifest);
        }
        None => {
            replies.insert("manifests/latest".into(), manifest);
        }
    }
    *registry
        .served
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Served {
        challenge: plan.challenge.map(|c| c.replace("@TOKEN", &token_url)),
        token: Some(plan.token),
        replies,
        credential: plan.credential,
    };
    let root = tempfile::tempdir().unwrap();
    let content_dir = root.path().join("content");
    let content = ContentStore::open(&content_dir).unwrap();
    let images = ImageStore::new(root.path().join("images.db"));
    let n = REPOSITORY.fetch_add(1, Ordering::Relaxed);
    let reference = Reference::parse_normalized(&format!("{}/kzf/app{n}:latest", registry.host))
        .expect("a valid reference");
    let result = within_deadline("pulling", move || {
        let platform = PlatformWanted {
            os: "linux",
            architecture: "amd64",
            variant: None,
        };
        kiln_registry::pull::pull(
            &registry.client,
            &content,
            &images,
            &reference,
            &platform,
            &|_| {},
        )
        .map_err(|e| format!("{e:#}"))
    });
    let content = ContentStore::open(&content_dir).unwrap();
    for entry in fs::read_dir(content_dir.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, Digest::of(&fs::read(&path).unwrap()).hex());
    }
    if let Ok(digest) = result {
        assert!(
            content.contains(&digest),
            "pulled {digest}, not in the store"
        );
    }
}

/// Deserialises `bytes` into every type kiln reads registry and archive JSON into.
fn parse_registry_json(bytes: &[u8]) {
    let _ = serde_json::from_slice::<Value>(bytes);
    let _ = serde_json::from_slice::<ImageIndex>(bytes);
    let _ = serde_json::from_slice::<ImageManifest>(bytes);
    let _ = ImageIndex::from_reader(bytes);
    let _ = serde_json::from_slice::<Image>(bytes);
}

/// A descriptor with hostile values.
fn oci_descriptor() -> impl Strategy<Value = Value> {
    (
        media_type(),
        hostile_string(),
        prop_oneof![json_value(), any::<u64>().prop_map(Value::from)],
        prop::option::of(json_value()),
        prop::option::of(json_value()),
    )
        .prop_map(|(media_type, digest, size, platform, annotations)| {
            let mut d = json!({"mediaType": media_type, "digest": digest, "size": size});
            if let Some(platform) = platform {
                d["platform"] = platform;
            }
            if let Some(annotations) = annotations {
                d["annotations"] = annotations;
            }
            d
        })
}

/// Structurally valid manifests and indexes with hostile values.
fn oci_document() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(json!(2)), json_value()],
        media_type(),
        oci_descriptor(),
        prop::collection::vec(oci_descriptor(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(schema, media_type, config, list, index)| {
            let document = if index {
                json!({"schemaVersion": schema, "mediaType": media_type, "manifests": list})
            } else {
                json!({"schemaVersion": schema, "mediaType": media_type, "config": config,
                    "layers": list})
            };
            serde_json::to_vec(&document).unwrap()
        })
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes through the whole frontend.
    #[test]
    fn frontend_survives_arbitrary_bytes(source in raw_bytes(), options in build_options()) {
        within_deadline("the frontend", move || drop(parse_and_lower(source, options)));
    }

    /// Generated Dockerfiles (instructions, flags, variables, heredocs, directives, line
    /// continuations; sometimes with bytes flipped) through the whole frontend.
    #[test]
    fn frontend_survives_generated_dockerfiles(
        source in dockerfile(),
        options in build_options(),
    ) {
        within_deadline("the frontend", move || drop(parse_and_lower(source, options)));
    }

    /// `extract_archive` on noise behind each compression's magic bytes.
    #[test]
    fn extract_archive_survives_noise(bytes in compressed_noise()) {
        unpack_and_check(Unpack::Extract, |_| bytes);
    }

    /// `extract_archive` on tars with hostile names, links, types and PAX records: it
    /// never writes outside the destination.
    #[test]
    fn extract_archive_stays_inside(archive in hostile_tar()) {
        unpack_and_check(Unpack::Extract, |outside| archive.render(outside));
    }

    /// `apply_layer` on the same hostile tars (whiteouts convert here).
    #[test]
    fn apply_layer_stays_inside(archive in hostile_tar()) {
        unpack_and_check(Unpack::Layer, |outside| archive.render(outside));
    }

    /// `apply_layer` on noise behind each compression's magic bytes.
    #[test]
    fn apply_layer_survives_noise(bytes in compressed_noise()) {
        unpack_and_check(Unpack::Layer, |_| bytes);
    }

    /// `import_archive` on arbitrary bytes.
    #[test]
    fn import_archive_survives_noise(bytes in raw_bytes()) {
        import_and_check(bytes);
    }

    /// `import_archive` on generated OCI layouts and `docker save` archives, with wrong and
    /// malformed blob names, missing blobs, hostile names and JSON; sometimes with bytes
    /// flipped.
    #[test]
    fn import_archive_survives_generated_archives(
        plan in archive_plan(),
        mutation in prop::option::weighted(0.1, mutations()),
    ) {
        let bytes = plan.render();
        import_and_check(match mutation {
            Some((flips, cut)) => mutate(bytes, &flips, cut),
            None => bytes,
        });
    }

    /// The types registry and archive JSON is read into, on generated and arbitrary JSON.
    #[test]
    fn registry_json_types_survive(bytes in prop_oneof![oci_document(), json_bytes()]) {
        within_deadline("parsing JSON", move || parse_registry_json(&bytes));
    }

    /// A pull from a hostile registry: challenges, token replies, error bodies, manifests,
    /// indexes and blobs, through the public `pull`.
    #[test]
    fn pull_survives_a_hostile_registry(plan in pull_plan()) {
        pull_and_check(plan);
    }
}
