//! Profiles: named sets of limits, built in and from TOML files.
//!
//! Files are layered: the built-ins, then `/etc/corral/profiles.toml`, then
//! `$XDG_CONFIG_HOME/corral/profiles.toml` (or `~/.config/...`). A later file may change
//! single keys of an existing profile or define a new one; a new profile starts from no
//! limits, or from the profile named by its `inherits` key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::limits::{Limits, LimitsPatch};
use crate::{SpecError, TomlSyntax};

const BUILTIN: &str = include_str!("builtin-profiles.toml");

/// Where a profile's settings came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// Compiled into corral.
    Builtin,
    /// A profiles file.
    File(PathBuf),
}

impl std::fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProfileSource::Builtin => f.write_str("built-in"),
            ProfileSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One resolved profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The profile's name (`default`, `notebook`, ...).
    pub name: String,
    /// A one-line description.
    pub description: String,
    /// The effective limits.
    pub limits: Limits,
    /// Every layer that contributed, lowest first.
    pub sources: Vec<ProfileSource>,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    description: Option<String>,
    inherits: Option<String>,
    layers: Vec<(ProfileSource, LimitsPatch)>,
}

/// All known profiles, with their layers.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    entries: BTreeMap<String, Entry>,
    files: Vec<PathBuf>,
}

/// The built-in profiles alone.
pub fn builtin_profiles() -> ProfileSet {
    let mut set = ProfileSet::default();
    set.add_toml(BUILTIN, ProfileSource::Builtin)
        .expect("built-in profiles are valid");
    set
}

impl ProfileSet {
    /// The built-ins plus the system and user profile files that exist.
    pub fn load_default() -> Result<Self, SpecError> {
        let mut set = builtin_profiles();
        for path in Self::default_files() {
            if path.exists() {
                set.add_file(&path)?;
            }
        }
        Ok(set)
    }

    /// The profile files corral reads, in order (whether or not they exist).
    pub fn default_files() -> Vec<PathBuf> {
        let mut v = vec![PathBuf::from("/etc/corral/profiles.toml")];
        let user = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        if let Some(dir) = user {
            v.push(dir.join("corral").join("profiles.toml"));
        }
        v
    }

    /// The files that were loaded on top of the built-ins.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Adds a profiles file on top of what is loaded.
    pub fn add_file(&mut self, path: &Path) -> Result<(), SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        self.add_toml(&text, ProfileSource::File(path.to_path_buf()))?;
        self.files.push(path.to_path_buf());
        Ok(())
    }

    /// Adds profiles from TOML text (`[profiles.NAME]` tables).
    pub fn add_toml(&mut self, text: &str, source: ProfileSource) -> Result<(), SpecError> {
        let src = source.to_string();
        let file_err = |why: String| SpecError::File {
            path: src.clone(),
            why,
        };
        let value: toml::Value = toml::from_str(text)
            .map_err(|e| file_err(format!("not valid TOML: {}", TomlSyntax::new(text, &e))))?;
        let json = serde_json::to_value(value).map_err(|e| file_err(e.to_string()))?;
        let top = json.as_object().cloned().unwrap_or_default();
        for key in top.keys() {
            if key != "profiles" {
                return Err(file_err(format!(
                    "unexpected top-level key {key:?}; profiles go in [profiles.NAME] tables"
                )));
            }
        }
        let Some(profiles) = top.get("profiles") else {
            return Ok(());
        };
        let profiles = profiles
            .as_object()
            .ok_or_else(|| file_err("`profiles` must be a table".into()))?;
        // Validate everything before changing anything: a bad file changes nothing.
        let mut staged = Vec::new();
        for (name, body) in profiles {
            check_name(name).map_err(|e| file_err(e.to_string()))?;
            let mut table: Map<String, Value> = body
                .as_object()
                .cloned()
                .ok_or_else(|| file_err(format!("profile {name:?} must be a table")))?;
            let description = match table.remove("description") {
                Some(Value::String(s)) => Some(s),
                Some(_) => {
                    return Err(file_err(format!(
                        "profile {name:?}: description must be a string"
                    )))
                }
                None => None,
            };
            let inherits = match table.remove("inherits") {
                Some(Value::String(s)) => Some(s),
                Some(_) => {
                    return Err(file_err(format!(
                        "profile {name:?}: inherits must be a string"
                    )))
                }
                None => None,
            };
            let patch = LimitsPatch::from_table(&table, &format!("{src}: profile {name:?}"))?;
            staged.push((name.clone(), description, inherits, patch));
        }
        let backup = self.entries.clone();
        for (name, description, inherits, patch) in staged {
            let e = self.entries.entry(name).or_default();
            if description.is_some() {
                e.description = description;
            }
            if inherits.is_some() {
                e.inherits = inherits;
            }
            e.layers.push((source.clone(), patch));
        }
        // Catch unknown parents and cycles now rather than at run time.
        for name in self.entries.keys() {
            if let Err(e) = self.resolve(name) {
                let err = file_err(format!("profile {name:?}: {e}"));
                self.entries = backup;
                return Err(err);
            }
        }
        Ok(())
    }

    /// The profile names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Resolves one profile to its effective limits.
    pub fn get(&self, name: &str) -> Result<Profile, SpecError> {
        self.resolve(name)
    }

    /// All profiles, resolved.
    pub fn all(&self) -> Vec<Profile> {
        self.entries
            .keys()
            .filter_map(|n| self.resolve(n).ok())
            .collect()
    }

    fn resolve(&self, name: &str) -> Result<Profile, SpecError> {
        let mut chain = Vec::new();
        let mut cur = name.to_string();
        loop {
            if chain.contains(&cur) {
                return Err(SpecError::Invalid {
                    what: "profile inheritance",
                    value: name.to_string(),
                    why: format!("cycle through {cur:?}"),
                });
            }
            let entry = self
                .entries
                .get(&cur)
                .ok_or_else(|| SpecError::UnknownProfile {
                    name: cur.clone(),
                    known: self.names().join(", "),
                })?;
            chain.push(cur.clone());
            match &entry.inherits {
                Some(parent) => cur = parent.clone(),
                None => break,
            }
        }
        let mut limits = Limits::default();
        let mut sources = Vec::new();
        for n in chain.iter().rev() {
            for (src, patch) in &self.entries[n].layers {
                patch.apply(&mut limits);
                if !sources.contains(src) {
                    sources.push(src.clone());
                }
            }
        }
        let entry = &self.entries[name];
        Ok(Profile {
            name: name.to_string(),
            description: entry.description.clone().unwrap_or_default(),
            limits,
            sources,
        })
    }
}

/// A profile name that is not 1-64 letters, digits, `_`, `-` or `.`.
#[derive(Debug, thiserror::Error)]
#[error("profile name {0:?} must be 1-64 letters, digits, '_', '-' or '.'")]
struct BadName(String);

fn check_name(name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(BadName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn builtins_match_the_brief() {
        let set = builtin_profiles();
        let d = set.get("default").unwrap();
        assert_eq!(d.limits.memory, Some(2 << 30));
        assert_eq!(d.limits.timeout, Some(Duration::from_secs(1800)));
        let n = set.get("notebook").unwrap();
        assert_eq!(n.limits.memory, Some(2 << 30));
        assert_eq!(n.limits.timeout, Some(Duration::from_secs(600)));
        assert!(set.get("post_process").is_ok());
        assert!(set.get("tool").is_ok());
        let e = set.get("nope").unwrap_err().to_string();
        assert!(e.contains("unknown profile \"nope\""), "{e}");
    }

    #[test]
    fn files_layer_on_top() {
        let mut set = builtin_profiles();
        set.add_toml(
            "[profiles.default]\nmemory = \"4G\"\n[profiles.big]\ninherits = \"default\"\ncpus = 2\n",
            ProfileSource::File("/etc/corral/profiles.toml".into()),
        )
        .unwrap();
        let d = set.get("default").unwrap();
        assert_eq!(d.limits.memory, Some(4 << 30));
        assert_eq!(d.limits.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(d.sources.len(), 2);
        let b = set.get("big").unwrap();
        assert_eq!(b.limits.cpus, Some(2.0));
        assert_eq!(b.limits.memory, Some(4 << 30));
    }

    #[test]
    fn bad_files_change_nothing() {
        let mut set = builtin_profiles();
        let src = ProfileSource::File("p.toml".into());
        assert!(set
            .add_toml("[profiles.x]\nmemory = \"12X\"", src.clone())
            .is_err());
        assert!(set.add_toml("not toml [", src.clone()).is_err());
        assert!(set
            .add_toml("[profiles.y]\ninherits = \"zzz\"", src.clone())
            .is_err());
        assert!(set.add_toml("memory = 3", src).is_err());
        assert!(set.get("x").is_err());
    }
}
