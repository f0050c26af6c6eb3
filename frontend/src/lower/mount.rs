//! `RUN --mount=type=…,key=value` parsing, with BuildKit's keys, aliases and defaults.

use kiln_solver::Sharing;

/// One `--mount` flag, parsed but not yet bound to DAG inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MountSpec {
    /// bind, cache, tmpfs, secret or ssh.
    pub kind: MountType,
    /// `from=`: a stage or image to read (bind, cache).
    pub from: Option<String>,
    /// `source=`: the path inside `from` (or the secret/ssh id's alias).
    pub source: Option<String>,
    /// `target=`, possibly relative to the working directory.
    pub target: Option<String>,
    /// Read-only (bind default).
    pub readonly: bool,
    /// `id=`.
    pub id: Option<String>,
    /// `sharing=` of cache mounts.
    pub sharing: Sharing,
    /// `mode=`, octal.
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: Option<u32>,
    /// `gid=`.
    pub gid: Option<u32>,
    /// `required=` of secret and ssh mounts.
    pub required: bool,
    /// `size=` of tmpfs mounts, bytes.
    pub size: u64,
    /// `env=` of secret mounts.
    pub env: Option<String>,
}

/// The mount types of `RUN --mount`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MountType {
    /// A read-only view of another filesystem.
    Bind,
    /// A persistent cache directory.
    Cache,
    /// An in-memory filesystem.
    Tmpfs,
    /// A secret file.
    Secret,
    /// An SSH agent socket.
    Ssh,
}

/// Splits one CSV record as Go's `encoding/csv` does for a single line (quotes group commas).
fn csv_fields(value: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = value.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if at_start => quoted = true,
            ',' if !quoted => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
                continue;
            }
            c => field.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err(format!("extraneous or missing \" in quoted-field: {value}"));
    }
    fields.push(field);
    Ok(fields)
}

fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(format!("invalid value for {key}: {other}")),
    }
}

fn parse_u32(key: &str, value: &str, radix: u32) -> Result<u32, String> {
    u32::from_str_radix(value, radix).map_err(|_| format!("invalid value for {key}: {value}"))
}

/// docker/go-units `RAMInBytes`: `64m`, `1g`, `512kb`, `100` (1024-based).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let lower = value.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let number: f64 = lower[..digits_end]
        .parse()
        .map_err(|_| format!("invalid size: '{value}'"))?;
    let unit = lower[digits_end..].trim_end_matches(['b', 'i']);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(format!("invalid size: '{value}'")),
    };
    Ok((number * scale as f64) as u64)
}

/// Parses one `--mount` value (already expanded).
pub(super) fn parse_mount(value: &str) -> Result<MountSpec, String> {
    let mut spec = MountSpec {
        kind: MountType::Bind,
        from: None,
        source: None,
        target: None,
        readonly: false,
        id: None,
        sharing: Sharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        required: false,
        size: 0,
        env: None,
    };
    let fields = csv_fields(value)?;
    // The type decides defaults, so find it first.
    for field in &fields {
        if let Some(("type", t)) = field.split_once('=').map(|(k, v)| (k.trim(), v)) {
            spec.kind = match t.to_ascii_lowercase().as_str() {
                "bind" => MountType::Bind,
                "cache" => MountType::Cache,
                "tmpfs" => MountType::Tmpfs,
                "secret" => MountType::Secret,
                "ssh" => MountType::Ssh,
                other => return Err(format!("unsupported mount type {other:?}")),
            };
        }
    }
    spec.readonly = spec.kind == MountType::Bind;
    let mut readonly_set = false;
    for field in &fields {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |v: Option<&str>| -> Result<String, String> {
            v.map(str::to_string)
                .ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))
        };
        match key.as_str() {
            "type" => {}
            "readonly" | "ro" => {
                spec.readonly = parse_bool(&key, val)?;
                readonly_set = true;
            }
            "readwrite" | "rw" => {
                spec.readonly = !parse_bool(&key, val)?;
                readonly_set = true;
            }
            "required" => spec.required = parse_bool(&key, val)?,
            "from" => spec.from = Some(need(val)?),
            "source" | "src" => spec.source = Some(need(val)?),
            "target" | "dst" | "destination" => spec.target = Some(need(val)?),
            "id" => spec.id = Some(need(val)?),
            "sharing" => {
                spec.sharing = match need(val)?.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => return Err(format!("unsupported sharing value {other:?}")),
                }
            }
            "mode" => spec.mode = Some(parse_u32("mode", &need(val)?, 8)?),
            "uid" => spec.uid = Some(parse_u32("uid", &need(val)?, 10)?),
            "gid" => spec.gid = Some(parse_u32("gid", &need(val)?, 10)?),
            "size" if spec.kind == MountType::Tmpfs => spec.size = parse_size(&need(val)?)?,
            "env" if spec.kind == MountType::Secret => spec.env = Some(need(val)?),
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    if readonly_set
        && matches!(
            spec.kind,
            MountType::Tmpfs | MountType::Secret | MountType::Ssh
        )
    {
        spec.readonly = false;
    }
    match spec.kind {
        MountType::Secret | MountType::Ssh => {
            if spec.from.is_some() {
                return Err(format!("{:?} mounts cannot use from", spec.kind).to_lowercase());
            }
        }
        MountType::Tmpfs => {
            if spec.from.is_some() || spec.source.is_some() {
                return Err("tmpfs mounts cannot use from or source".into());
            }
        }
        MountType::Bind | MountType::Cache => {}
    }
    if spec.target.as_deref().unwrap_or("").is_empty()
        && !matches!(spec.kind, MountType::Secret | MountType::Ssh)
    {
        return Err(format!("mount target is required: --mount={value}"));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_aliases() {
        let m = parse_mount("target=/src").unwrap();
        assert_eq!((m.kind, m.readonly), (MountType::Bind, true));
        let m = parse_mount("type=bind,src=a,dst=/b,rw,from=builder").unwrap();
        assert_eq!(m.source.as_deref(), Some("a"));
        assert_eq!(m.target.as_deref(), Some("/b"));
        assert_eq!(m.from.as_deref(), Some("builder"));
        assert!(!m.readonly);
        let m =
            parse_mount("type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=1").unwrap();
        assert_eq!(
            (m.sharing, m.mode, m.uid, m.readonly),
            (Sharing::Locked, Some(0o700), Some(1), false)
        );
        let m = parse_mount("type=tmpfs,target=/t,size=64m").unwrap();
        assert_eq!(m.size, 64 << 20);
        let m = parse_mount("type=secret,id=tok,env=TOKEN,required").unwrap();
        assert_eq!(
            (m.id.as_deref(), m.env.as_deref(), m.required),
            (Some("tok"), Some("TOKEN"), true)
        );
        let m = parse_mount("type=ssh").unwrap();
        assert_eq!(m.kind, MountType::Ssh);
        let m = parse_mount("type=bind,\"source=a,b\",target=/x").unwrap();
        assert_eq!(m.source.as_deref(), Some("a,b"));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_mount("type=nfs,target=/x").unwrap_err(),
            "unsupported mount type \"nfs\""
        );
        assert_eq!(
            parse_mount("type=bind,target=/x,colour=red").unwrap_err(),
            "unexpected key 'colour' in 'colour=red'"
        );
        assert!(
            parse_mount("type=cache")
                .unwrap_err()
                .contains("target is required")
        );
        assert!(
            parse_mount("type=cache,target=/x,sharing=all")
                .unwrap_err()
                .contains("sharing")
        );
        assert!(parse_mount("type=cache,target=/x,mode=9").is_err());
        assert!(parse_mount("type=tmpfs,target=/x,size=lots").is_err());
        assert!(parse_mount("type=bind,target=/x,ro=maybe").is_err());
    }
}
