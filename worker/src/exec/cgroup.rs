//! Where the embedded runtime puts a step's cgroups: under kiln's own, so that a limit
//! put on kiln (a systemd unit's `MemoryMax`, a CI job's memory cgroup) binds its steps.
//!
//! runc reads a missing or relative `cgroupsPath` relative to its own cgroup in each
//! cgroup v1 hierarchy. youki's libcgroups joins any path to the hierarchy's root, and
//! its default (`:youki:ID`) lands at the root, outside kiln's cgroups. The embedded
//! runtime therefore fills in an absolute path below kiln's own before it creates the
//! container. libcgroups takes one path for every hierarchy, so the path is the deepest
//! of kiln's own cgroups when they nest (as they do when only some controllers are
//! confined, e.g. a memory cgroup set up for kiln and `/` elsewhere).
//!
//! On a cgroup v2 host the path is left to libcgroups: nesting under kiln's own cgroup
//! would mean enabling controllers for a cgroup that holds kiln's own process, which v2's
//! no-internal-processes rule refuses.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_spec::runtime::Spec;

/// Sets the cgroups path of the bundle's spec below this process's own cgroups, unless
/// the spec names one or this is not a cgroup v1 host.
pub fn nest_under_own(bundle: &Path, id: &str) -> Result<()> {
    let config = bundle.join("config.json");
    let mut spec =
        Spec::load(&config).with_context(|| format!("cannot read {}", config.display()))?;
    let Some(linux) = spec.linux_mut() else {
        return Ok(());
    };
    if linux.cgroups_path().is_some() {
        return Ok(());
    }
    let own =
        std::fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    let Some(path) = step_cgroup_path(&own, id) else {
        return Ok(());
    };
    linux.set_cgroups_path(Some(path));
    spec.save(&config)
        .with_context(|| format!("cannot write {}", config.display()))
}

/// The cgroup v1 path for step `id` given this process's `/proc/self/cgroup`: below the
/// deepest of its own v1 cgroups when every other one is an ancestor of it, else below
/// its memory cgroup. `None` when no v1 controller is mounted (a cgroup v2 host).
fn step_cgroup_path(proc_self_cgroup: &str, id: &str) -> Option<PathBuf> {
    // Lines are `ID:CONTROLLERS:PATH`; v2's has no controllers, named hierarchies
    // (`name=systemd`) hold none.
    let own: Vec<(&str, &Path)> = proc_self_cgroup
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let v1 = !controllers.is_empty() && !controllers.starts_with("name=");
            v1.then_some((controllers, Path::new(path)))
        })
        .collect();
    let deepest = own
        .iter()
        .map(|(_, path)| *path)
        .max_by_key(|path| path.components().count())?;
    let nested = own.iter().all(|(_, path)| deepest.starts_with(path));
    let parent = if nested {
        deepest
    } else {
        own.iter()
            .find(|(controllers, _)| controllers.split(',').any(|c| c == "memory"))
            .map_or(deepest, |(_, path)| *path)
    };
    Some(Path::new("/").join(parent).join(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_nest_under_the_deepest_of_kilns_own_cgroups() {
        let own = "9:name=systemd:/\n8:pids:/\n4:memory:/job/a1\n3:cpuset:/\n\
                   2:cpu,cpuacct:/job\n0::/\n";
        assert_eq!(
            step_cgroup_path(own, "kiln-x"),
            Some(PathBuf::from("/job/a1/kiln-x"))
        );
        let root = "4:memory:/\n3:devices:/\n0::/\n";
        assert_eq!(
            step_cgroup_path(root, "kiln-x"),
            Some(PathBuf::from("/kiln-x"))
        );
    }

    #[test]
    fn own_cgroups_that_do_not_nest_give_memorys() {
        let own = "5:pids:/system.slice/a.service\n4:memory:/user.slice/b\n";
        assert_eq!(
            step_cgroup_path(own, "kiln-x"),
            Some(PathBuf::from("/user.slice/b/kiln-x"))
        );
    }

    #[test]
    fn a_cgroup_v2_host_is_left_to_libcgroups() {
        assert_eq!(
            step_cgroup_path("0::/user.slice/session-1.scope\n", "kiln-x"),
            None
        );
        assert_eq!(step_cgroup_path("1:name=systemd:/\n0::/\n", "kiln-x"), None);
    }
}
