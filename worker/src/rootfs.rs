//! Reading a container root filesystem from the host without escaping it:
//! symlinks are resolved as the container would see them, and user names
//! are looked up in the image's own `/etc/passwd` and `/etc/group`.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Most symlinks followed while resolving one path (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// The host path of `path` inside the root filesystem at `root`. Symlinks
/// (absolute ones too) are resolved relative to `root` and `..` stops at
/// it, so the result never lies outside `root`. The final component is
/// followed only when `follow_last` is set. Missing components are kept as
/// they are.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf> {
    let mut pending: VecDeque<String> = path.split('/').map(str::to_string).collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = join(root, &resolved).join(&part);
        let is_last = pending.iter().all(|p| p.is_empty() || p == ".");
        let target = match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() && (follow_last || !is_last) => {
                fs::read_link(&candidate)?
            }
            _ => {
                resolved.push(part);
                continue;
            }
        };
        links += 1;
        if links > MAX_SYMLINKS {
            bail!("too many levels of symbolic links resolving {path}");
        }
        let target = target.to_string_lossy().into_owned();
        if target.starts_with('/') {
            resolved.clear();
        }
        for (i, component) in target.split('/').enumerate() {
            pending.insert(i, component.to_string());
        }
    }
    Ok(join(root, &resolved))
}

fn join(root: &Path, parts: &[String]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(parts);
    path
}

/// A user as a process runs: ids and supplementary groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// A resolved `USER` / `--chown` value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecUser {
    /// Uid and primary gid.
    pub ids: Ids,
    /// Supplementary groups (those of `/etc/group` that list the user).
    pub additional_gids: Vec<u32>,
}

/// Resolves `user[:group]` (names or numbers) against the root filesystem's
/// `/etc/passwd` and `/etc/group`, as Docker does: a numeric user needs no
/// passwd entry, a name does; the group defaults to the user's primary
/// group (0 when unknown). An empty spec is root.
pub fn resolve_user(root: &Path, spec: &str) -> Result<ExecUser> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let passwd = read_table(root, "/etc/passwd");
    let mut result = ExecUser::default();
    let mut user_name = None;
    if !user.is_empty() {
        let entry = passwd.iter().find(|fields| match user.parse::<u32>() {
            Ok(uid) => fields.get(2).and_then(|f| f.parse::<u32>().ok()) == Some(uid),
            Err(_) => fields[0] == user,
        });
        match (entry, user.parse::<u32>()) {
            (Some(fields), _) => {
                result.ids.uid = field_id(fields, 2, "passwd")?;
                result.ids.gid = field_id(fields, 3, "passwd")?;
                user_name = Some(fields[0].clone());
            }
            (None, Ok(uid)) => result.ids.uid = uid,
            (None, Err(_)) => {
                bail!("unable to find user {user}: no matching entries in passwd file")
            }
        }
    }
    let groups = read_table(root, "/etc/group");
    if let Some(group) = group.filter(|g| !g.is_empty()) {
        result.ids.gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let fields = groups
                    .iter()
                    .find(|fields| fields[0] == group)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "unable to find group {group}: no matching entries in group file"
                        )
                    })?;
                field_id(fields, 2, "group")?
            }
        };
    }
    if let Some(name) = user_name {
        for fields in &groups {
            let members = fields.get(3).map(String::as_str).unwrap_or("");
            if members.split(',').any(|m| m == name)
                && let Ok(gid) = field_id(fields, 2, "group")
                && gid != result.ids.gid
                && !result.additional_gids.contains(&gid)
            {
                result.additional_gids.push(gid);
            }
        }
    }
    Ok(result)
}

/// The colon-separated lines of a file in the root filesystem (none when
/// it does not exist); comments and blank lines are skipped.
fn read_table(root: &Path, path: &str) -> Vec<Vec<String>> {
    let Ok(text) = resolve_in_root(root, path, true).and_then(|p| Ok(fs::read_to_string(p)?))
    else {
        return Vec::new();
    };
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| line.split(':').map(str::to_string).collect())
        .collect()
}

fn field_id(fields: &[String], index: usize, file: &str) -> Result<u32> {
    fields
        .get(index)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("malformed {file} entry for {}", fields[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("real/dir")).unwrap();
        symlink("/real", r.join("abs")).unwrap();
        symlink("../../../../real", r.join("real/dir/up")).unwrap();
        symlink("/etc/passwd", r.join("hostfile")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/abs/dir", true).unwrap(),
            r.join("real/dir")
        );
        assert_eq!(
            resolve_in_root(r, "real/dir/up/dir", true).unwrap(),
            r.join("real/dir")
        );
        assert_eq!(
            resolve_in_root(r, "/hostfile", true).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(r, "/hostfile", false).unwrap(),
            r.join("hostfile")
        );
        assert_eq!(resolve_in_root(r, "/../../x", true).unwrap(), r.join("x"));
        assert!(resolve_in_root(r, "/loop/x", true).is_err());
    }

    #[test]
    fn users_and_groups_resolve_like_docker() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir(r.join("etc")).unwrap();
        fs::write(
            r.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            r.join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\nstaff:x:50:\n",
        )
        .unwrap();
        let ids = |spec| resolve_user(r, spec).unwrap();
        assert_eq!(ids(""), ExecUser::default());
        assert_eq!(
            ids("app"),
            ExecUser {
                ids: Ids {
                    uid: 1000,
                    gid: 1000
                },
                additional_gids: vec![10]
            }
        );
        assert_eq!(
            ids("1000").ids,
            Ids {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(ids("4242").ids, Ids { uid: 4242, gid: 0 });
        assert_eq!(ids("app:staff").ids, Ids { uid: 1000, gid: 50 });
        assert_eq!(ids("4242:77").ids, Ids { uid: 4242, gid: 77 });
        let err = resolve_user(r, "nobody").unwrap_err().to_string();
        assert_eq!(
            err,
            "unable to find user nobody: no matching entries in passwd file"
        );
        let err = resolve_user(r, "app:nogroup").unwrap_err().to_string();
        assert_eq!(
            err,
            "unable to find group nogroup: no matching entries in group file"
        );
    }
}
