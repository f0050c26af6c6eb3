//! OCI platforms (`os/arch[/variant]`), parsed and normalised as containerd does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A target platform such as `linux/amd64` or `linux/arm/v7`. Serialised, it is the OCI
/// platform object of descriptors and configs (`os`, `architecture`, `variant` when set).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture in GOARCH spelling, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// Architecture variant, e.g. `v7`; empty when there is none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

/// Why a platform string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid platform {input:?}: {reason}")]
pub struct PlatformError {
    input: String,
    reason: &'static str,
}

impl Platform {
    /// The platform this kiln binary runs on (its build platform).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Platform::new("linux", arch, "").normalized()
    }

    /// Builds a platform from its parts, without normalising.
    pub fn new(os: &str, architecture: &str, variant: &str) -> Self {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.into(),
        }
    }

    /// Canonical spelling: `x86_64` → `amd64`, `aarch64` → `arm64`, `arm` gets `v7` when no
    /// variant is given, `arm64/v8` loses its default variant.
    pub fn normalized(mut self) -> Self {
        self.os = self.os.to_ascii_lowercase();
        let arch = self.architecture.to_ascii_lowercase();
        let variant = self.variant.to_ascii_lowercase();
        let (arch, variant) = match (arch.as_str(), variant.as_str()) {
            ("i386", _) => ("386".to_string(), String::new()),
            ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64".to_string(), String::new()),
            ("x86_64" | "x86-64", _) => ("amd64".to_string(), variant),
            ("aarch64" | "arm64", "8" | "v8") => ("arm64".to_string(), String::new()),
            ("aarch64", _) => ("arm64".to_string(), variant),
            ("armhf", _) => ("arm".to_string(), "v7".to_string()),
            ("armel", _) => ("arm".to_string(), "v6".to_string()),
            ("arm", "") | ("arm", "7") => ("arm".to_string(), "v7".to_string()),
            ("arm", "5" | "6" | "8") => ("arm".to_string(), format!("v{variant}")),
            _ => (arch, variant),
        };
        self.architecture = arch;
        self.variant = variant;
        self
    }

    /// Parses buildx's `--platform` list, `linux/amd64,linux/arm64`: each platform once,
    /// in the order first given.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, PlatformError> {
        let mut platforms: Vec<Self> = Vec::new();
        for item in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let platform = item.parse()?;
            if !platforms.contains(&platform) {
                platforms.push(platform);
            }
        }
        Ok(platforms)
    }

    /// The `TARGETVARIANT`-style variant, empty when there is none.
    pub fn variant(&self) -> &str {
        &self.variant
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// Parses `os/arch[/variant]`; a lone architecture (`arm64`) means `linux/arm64`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PlatformError {
            input: s.to_string(),
            reason,
        };
        let is_part = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        let parts: Vec<&str> = s.trim().split('/').collect();
        if !parts.iter().all(|p| is_part(p)) {
            return Err(err("each part must be a non-empty [A-Za-z0-9_-] word"));
        }
        let platform = match parts.as_slice() {
            [arch] => Platform::new("linux", arch, ""),
            [os, arch] => Platform::new(os, arch, ""),
            [os, arch, variant] => Platform::new(os, arch, variant),
            _ => return Err(err("expected os/arch[/variant]")),
        };
        Ok(platform.normalized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        s.parse::<Platform>().unwrap().to_string()
    }

    #[test]
    fn normalises_like_containerd() {
        assert_eq!(p("linux/amd64"), "linux/amd64");
        assert_eq!(p("linux/x86_64"), "linux/amd64");
        assert_eq!(p("linux/aarch64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64");
        assert_eq!(p("linux/arm"), "linux/arm/v7");
        assert_eq!(p("linux/arm/v6"), "linux/arm/v6");
        assert_eq!(p("arm64"), "linux/arm64");
        assert_eq!(p("Linux/AMD64"), "linux/amd64");
    }

    #[test]
    fn lists_parse_in_order_once_each() {
        let list = Platform::parse_list("linux/amd64, linux/arm64,linux/x86_64,,arm").unwrap();
        let names: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["linux/amd64", "linux/arm64", "linux/arm/v7"]);
        assert!(Platform::parse_list("linux/amd64,linux/").is_err());
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "linux/", "/amd64", "linux/amd64/v1/x", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?} should not parse");
        }
    }
}
