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

/// A uid and a primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// A resolved `USER`: the ids a RUN step's process gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecUser {
    /// Uid and primary gid.
    pub ids: Ids,
    /// The process's groups: the primary group first, then those of `/etc/group` that list
    /// the user (as containerd's `ensureAdditionalGids` makes them).
    pub additional_gids: Vec<u32>,
    /// The home directory of the uid's `/etc/passwd` entry, or `/` without one: runc's
    /// `HOME` for a process that has none.
    pub home: String,
}

/// Resolves a RUN step's `USER` value as BuildKit's executor does (`oci.GetUser`, then
/// runc's `GetExecUser`): `uid:gid` in numbers (or `root`) needs no lookup; otherwise the
/// user is looked up in the root filesystem's `/etc/passwd` (a number needs no entry, a
/// name does), the group in `/etc/group`, and a user without an explicit group gets every
/// group that lists it. An empty value is root, whatever the files say.
pub fn exec_user(root: &Path, spec: &str) -> Result<ExecUser> {
    let (ids, supplementary) = if spec.is_empty() {
        lookup_exec_user(root, "0").unwrap_or_default()
    } else if let Some((uid, gid)) = spec
        .split_once(':')
        .and_then(|(u, g)| Some((numeric_id(u)?, numeric_id(g)?)))
    {
        (Ids { uid, gid }, Vec::new())
    } else {
        lookup_exec_user(root, spec)?
    };
    let mut additional_gids = supplementary;
    if !additional_gids.contains(&ids.gid) {
        additional_gids.insert(0, ids.gid);
    }
    let home = read_table(root, "/etc/passwd")
        .into_iter()
        .find(|fields| id_field(fields, 2) == Some(ids.uid))
        .and_then(|mut fields| fields.get_mut(5).map(std::mem::take))
        .unwrap_or_else(|| "/".to_string());
    Ok(ExecUser {
        ids,
        additional_gids,
        home,
    })
}

/// runc's `GetExecUser` with root as the default: the ids and supplementary groups.
fn lookup_exec_user(root: &Path, spec: &str) -> Result<(Ids, Vec<u32>)> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group).filter(|g| !g.is_empty())),
        None => (spec, None),
    };
    let passwd = read_table(root, "/etc/passwd");
    let mut ids = Ids::default();
    let wanted = (!user.is_empty()).then_some(user);
    let entry = passwd.iter().find(|fields| match wanted {
        None => id_field(fields, 2) == Some(0),
        Some(name) => match name.parse::<u32>() {
            Ok(uid) => id_field(fields, 2) == Some(uid),
            Err(_) => fields[0] == name,
        },
    });
    let mut user_name = None;
    match (entry, wanted.map(|u| u.parse::<u32>())) {
        (Some(fields), _) => {
            ids.uid = field_id(fields, 2, "passwd")?;
            ids.gid = field_id(fields, 3, "passwd")?;
            user_name = Some(fields[0].clone());
        }
        (None, Some(Ok(uid))) => ids.uid = uid,
        (None, Some(Err(_))) => {
            bail!("unable to find user {user}: no matching entries in passwd file")
        }
        (None, None) => {}
    }
    let groups = read_table(root, "/etc/group");
    let mut supplementary = Vec::new();
    if let Some(group) = group {
        let entry = groups.iter().find(|fields| match group.parse::<u32>() {
            Ok(gid) => id_field(fields, 2) == Some(gid),
            Err(_) => fields[0] == group,
        });
        ids.gid = match (entry, group.parse::<u32>()) {
            (Some(fields), _) => field_id(fields, 2, "group")?,
            (None, Ok(gid)) => gid,
            (None, Err(_)) => {
                bail!("unable to find group {group}: no matching entries in group file")
            }
        };
    } else if let Some(name) = user_name {
        for fields in &groups {
            let members = fields.get(3).map(String::as_str).unwrap_or("");
            if members.split(',').any(|m| m == name) {
                supplementary.push(field_id(fields, 2, "group")?);
            }
        }
    }
    Ok((ids, supplementary))
}

/// The owner a file op's `--chown=user[:group]` (or WORKDIR's `USER`) gives, as BuildKit's
/// file ops read it: a number (or `root`) is used as is, and a user number alone is also
/// the group; a name is looked up in the root filesystem and, when absent, is root (0:0)
/// for a user and leaves the gid alone for a group.
pub fn chown_ids(root: &Path, user: &str, group: Option<&str>) -> Ids {
    let mut ids = match numeric_id(user) {
        Some(id) => Ids { uid: id, gid: id },
        None => read_table(root, "/etc/passwd")
            .iter()
            .find(|fields| fields[0] == user)
            .and_then(|fields| {
                Some(Ids {
                    uid: id_field(fields, 2)?,
                    gid: id_field(fields, 3)?,
                })
            })
            .unwrap_or_default(),
    };
    if let Some(group) = group {
        match numeric_id(group) {
            Some(gid) => ids.gid = gid,
            None => {
                if let Some(gid) = read_table(root, "/etc/group")
                    .iter()
                    .find(|fields| fields[0] == group)
                    .and_then(|fields| id_field(fields, 2))
                {
                    ids.gid = gid;
                }
            }
        }
    }
    ids
}

/// A user or group given as a number, or `root` (BuildKit's `parseUID`).
fn numeric_id(value: &str) -> Option<u32> {
    if value == "root" {
        Some(0)
    } else {
        value.parse().ok()
    }
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

fn id_field(fields: &[String], index: usize) -> Option<u32> {
    fields.get(index).and_then(|f| f.parse().ok())
}

fn field_id(fields: &[String], index: usize, file: &str) -> Result<u32> {
    id_field(fields, index)
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
    fn users_and_groups_resolve_like_buildkit() {
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
        let run = |spec| {
            let user = exec_user(r, spec).unwrap();
            (user.ids.uid, user.ids.gid, user.additional_gids)
        };
        assert_eq!(run(""), (0, 0, vec![0]));
        assert_eq!(run("app"), (1000, 1000, vec![1000, 10]));
        assert_eq!(run("1000"), (1000, 1000, vec![1000, 10]));
        assert_eq!(run("4242"), (4242, 0, vec![0]));
        assert_eq!(run("app:staff"), (1000, 50, vec![50]));
        assert_eq!(run("4242:77"), (4242, 77, vec![77]));
        assert_eq!(run("root:0"), (0, 0, vec![0]));
        let err = exec_user(r, "nobody").unwrap_err().to_string();
        assert_eq!(
            err,
            "unable to find user nobody: no matching entries in passwd file"
        );
        let err = exec_user(r, "app:nogroup").unwrap_err().to_string();
        assert_eq!(
            err,
            "unable to find group nogroup: no matching entries in group file"
        );

        let chown = |user, group| {
            let ids = chown_ids(r, user, group);
            (ids.uid, ids.gid)
        };
        assert_eq!(chown("4242", None), (4242, 4242));
        assert_eq!(chown("app", None), (1000, 1000));
        assert_eq!(chown("app", Some("staff")), (1000, 50));
        assert_eq!(chown("app", Some("nogroup")), (1000, 1000));
        assert_eq!(chown("nobody", None), (0, 0));
        assert_eq!(chown("nobody", Some("77")), (0, 77));
        assert_eq!(chown("", Some("staff")), (0, 50));
    }
}
