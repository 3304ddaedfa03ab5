//! Small state files beside the store, replaced atomically and durably.
//!
//! Drivers keep a little state of their own next to the record store (the
//! node driver's watermarks, the last scans readings are traced to). Each
//! such file is replaced whole: the new text goes to `<file>.tmp`, which is
//! fsynced and renamed over the old file, and the directory is fsynced, so
//! after a crash or a power cut the file holds either the old text or the
//! new one, never a mix.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// What failed while replacing a state file.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct ReplaceError {
    /// What was being done.
    pub action: &'static str,
    /// The state file.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// Replaces `path` with `text`, durably and atomically.
pub fn replace(path: &Path, text: &[u8]) -> Result<(), ReplaceError> {
    let io = |action: &'static str| {
        move |source| ReplaceError {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut temporary = path.as_os_str().to_os_string();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut out = std::fs::File::create(&temporary).map_err(io("creating a temporary file for"))?;
    out.write_all(text).map_err(io("writing"))?;
    out.sync_all().map_err(io("syncing"))?;
    drop(out);
    std::fs::rename(&temporary, path).map_err(io("replacing"))?;
    crate::keys::sync_parent_dir(path).map_err(io("syncing the directory of"))?;
    Ok(())
}

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading it failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The state file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not a file of this kind and version.
    #[error("{path} is not {what}: {message}")]
    Parse {
        /// The state file.
        path: PathBuf,
        /// What it should have been ("a node watermark file").
        what: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// The TOML state file at `path`, `None` when there is none yet; `what`
/// names the kind of file in errors. See [`parse`] for `expected` and
/// `version`.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    what: &'static str,
    expected: u32,
    version: impl Fn(&T) -> u32,
) -> Result<Option<T>, LoadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LoadError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse(&text, expected, version)
        .map(Some)
        .map_err(|message| LoadError::Parse {
            path: path.to_owned(),
            what,
            message,
        })
}

/// The TOML text of a state file whose `version` (read from the parsed
/// file) must be `expected`.
pub fn parse<T: DeserializeOwned>(
    text: &str,
    expected: u32,
    version: impl Fn(&T) -> u32,
) -> Result<T, String> {
    let file: T = toml::from_str(text).map_err(|e| e.to_string())?;
    match version(&file) {
        v if v == expected => Ok(file),
        v => Err(format!("version {v} is not {expected}")),
    }
}

/// Removes the state file at `path`; `false` when there was none.
pub fn remove(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// `<store>.<suffix>`: the name of a state file beside the store.
pub fn beside(store: &Path, suffix: &str) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    store.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_leaves_the_new_text_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = beside(&dir.path().join("kouan.db"), "state.toml");
        assert_eq!(path, dir.path().join("kouan.db.state.toml"));
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[derive(Debug, serde::Deserialize)]
    struct Versioned {
        version: u32,
    }

    #[test]
    fn loading_names_the_file_and_its_kind_and_removing_says_whether_there_was_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kouan.db.state.toml");
        let load = || load(&path, "a state file", 1, |f: &Versioned| f.version);
        assert!(load().unwrap().is_none(), "no file yet");
        replace(&path, b"version = 2\n").unwrap();
        let error = load().unwrap_err().to_string();
        assert!(
            error.contains("kouan.db.state.toml is not a state file: version 2 is not 1"),
            "{error}"
        );
        replace(&path, b"version = 1\n").unwrap();
        assert_eq!(load().unwrap().map(|f| f.version), Some(1));
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
    }

    #[test]
    fn a_directory_that_is_not_there_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("state.toml");
        let error = replace(&path, b"x").unwrap_err();
        assert_eq!(error.action, "creating a temporary file for");
        assert!(error.to_string().contains("state.toml"), "{error}");
    }
}
