//! `kouan check CONFIG`: every problem `kouan run` would stop at, found
//! without starting anything, so a technician fixes them all in one go.
//!
//! First the file itself ([`Config::parse_all`]: syntax, unknown keys with
//! a suggestion, types, values, ids, links between sections); then what the
//! file points at on this machine: the serial ports and input devices
//! exist and are character devices, the signing key and the TLS key exist
//! and only their owner can read them, the TLS certificates and the
//! platform key can be read and parsed, and the store's directory is
//! writable. Each problem names the file, the line, the field and the fix.
//!
//! Nothing is opened that would change a device: serial ports are looked at
//! (`stat`), not opened, since opening one raises DTR, which some
//! instruments take as the start of a session.

use std::fs;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use crate::config::spans::{Seg, Spans};
use crate::config::{Config, ConfigError};
use crate::keys::{self, KeyError, PublicKey, SigningKey};

/// `kouan check`: validate a configuration without starting anything.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(value_name = "CONFIG", default_value = "/etc/kouan/kouan.toml")]
    pub config: PathBuf,
}

/// Runs `kouan check`: prints every problem, each with the line it is
/// about, and returns whether there were none.
pub fn run(args: &CheckArgs) -> anyhow::Result<bool> {
    let report = check(&args.config);
    let text = fs::read_to_string(&args.config).unwrap_or_default();
    for problem in &report.problems {
        println!("error: {problem}");
        if let ConfigError::Field { line, .. } = problem
            && let Some(source) = text.lines().nth(line.saturating_sub(1))
            && !source.trim().is_empty()
        {
            println!("  {line:>4} | {source}");
        }
    }
    match (&report.config, report.problems.len()) {
        (Some(config), 0) => {
            println!(
                "ok: {}: node {}, site {}, {} instruments; keys, devices and the store \
                 directory checked",
                args.config.display(),
                config.agent.node,
                config.agent.site,
                config.instruments.len()
            );
            Ok(true)
        }
        (_, count) => {
            let s = if count == 1 { "" } else { "s" };
            println!("{count} problem{s} in {}", args.config.display());
            Ok(false)
        }
    }
}

/// The outcome of a check: the config when it parsed, and every problem.
#[derive(Debug)]
pub struct Report {
    /// The configuration, when it parsed (possibly with problems).
    pub config: Option<Config>,
    /// Every problem found, in the order of the file as far as possible.
    pub problems: Vec<ConfigError>,
}

/// Checks the configuration file at `path` and what it points at.
pub fn check(path: &Path) -> Report {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(source) => {
            return Report {
                config: None,
                problems: vec![ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }],
            };
        }
    };
    let (config, mut problems) = Config::parse_all(&text, path);
    if let Some(config) = &config {
        let spans = Spans::new(&text);
        let mut on_machine = Machine {
            path,
            spans: &spans,
            problems: Vec::new(),
        };
        on_machine.check(config);
        problems.extend(on_machine.problems);
        problems.sort_by_key(|p| match p {
            ConfigError::Field { line, .. } => *line,
            ConfigError::Read { .. } => 0,
        });
    }
    Report { config, problems }
}

/// The checks of what the file points at on this machine.
struct Machine<'a> {
    path: &'a Path,
    spans: &'a Spans,
    problems: Vec<ConfigError>,
}

impl Machine<'_> {
    fn problem(&mut self, segs: &[Seg], message: String) {
        self.problems.push(ConfigError::Field {
            path: self.path.to_owned(),
            line: self.spans.line(segs),
            field: self.spans.name(segs),
            message,
        });
    }

    fn check(&mut self, config: &Config) {
        let signing = [Seg::from("keys"), Seg::from("signing")];
        if let Err(error) = SigningKey::load(&config.keys.signing) {
            let message = key_message(&error, &config.keys.signing, true);
            self.problem(&signing, message);
        }

        self.store(&config.store.path);

        if let Some(uplink) = &config.uplink {
            if let Some(key) = &uplink.platform_key
                && let Err(error) = PublicKey::load(key)
            {
                let segs = [Seg::from("uplink"), Seg::from("platform_key")];
                let message = key_message(&error, key, false);
                self.problem(&segs, message);
            }
            if let Some(tls) = &uplink.tls {
                let field = |key: &str| [Seg::from("uplink"), Seg::from("tls"), Seg::from(key)];
                for (key, file) in [("ca", &tls.ca), ("cert", &tls.cert)] {
                    if let Err(message) = certificates(file) {
                        self.problem(&field(key), message);
                    }
                }
                let private = keys::check_private_permissions(&tls.key)
                    .and_then(|()| fs::read(&tls.key).map_err(|e| io_key(&tls.key, e)));
                if let Err(error) = private {
                    self.problem(&field("key"), key_message(&error, &tls.key, true));
                }
            }
        }

        for (index, instrument) in config.instruments.iter().enumerate() {
            let devices = [("port", &instrument.port), ("input", &instrument.input)];
            for (key, device) in devices {
                let Some(device) = device else { continue };
                let segs = [Seg::from("instrument"), Seg::Index(index), Seg::from(key)];
                if let Err(message) = character_device(device, key) {
                    self.problem(&segs, message);
                }
            }
        }
    }

    /// The store's directory must exist and be writable by this user; an
    /// existing store must be a writable file.
    fn store(&mut self, store: &Path) {
        let segs = [Seg::from("store"), Seg::from("path")];
        let dir = match store.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            let message = format!(
                "directory {} does not exist: create it, owned by the user the agent runs \
                 as (`install -d -o kouan -g kouan -m 0750 {}`)",
                dir.display(),
                dir.display()
            );
            self.problem(&segs, message);
            return;
        }
        // A real write, not a guess from mode bits: ACLs, read-only mounts
        // and systemd's ReadWritePaths all show up here.
        let probe = dir.join(format!(".kouan-check-{}", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe);
        match written {
            Ok(_) => {
                let _ = fs::remove_file(&probe);
            }
            Err(error) => {
                let message = format!(
                    "cannot create files in {} ({error}): the store needs its directory \
                     writable by the user the agent runs as (run the check as that user: \
                     `sudo -u kouan kouan check ...`)",
                    dir.display()
                );
                self.problem(&segs, message);
                return;
            }
        }
        if store.exists() {
            let opened = fs::OpenOptions::new().read(true).write(true).open(store);
            if let Err(error) = opened {
                let message = format!(
                    "the store {} cannot be opened for writing ({error}): chown it to the \
                     user the agent runs as",
                    store.display()
                );
                self.problem(&segs, message);
            }
        }
    }
}

/// A device path must exist and be a character device (a tty or an
/// evdev node); a symlink is followed, as `/dev/serial/by-id` links are.
fn character_device(device: &Path, key: &str) -> Result<(), String> {
    let meta = match fs::metadata(device) {
        Ok(meta) => meta,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{} does not exist: plug the device in, or correct the path \
                 (`kouan ports` lists the attached devices and their stable paths)",
                device.display()
            ));
        }
        Err(error) => {
            return Err(format!(
                "{} cannot be looked at ({error}): check the permissions of its directory",
                device.display()
            ));
        }
    };
    if !meta.file_type().is_char_device() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "a file"
        };
        let want = if key == "input" {
            "an input device (/dev/input/by-id/...-event-kbd)"
        } else {
            "a serial port (/dev/serial/by-id/... or /dev/ttyUSB0)"
        };
        return Err(format!(
            "{} is {what}, not {want}: `kouan ports` lists the devices",
            device.display()
        ));
    }
    Ok(())
}

/// A PEM file with at least one certificate.
fn certificates(file: &Path) -> Result<(), String> {
    let bytes = fs::read(file).map_err(|error| {
        format!(
            "cannot read {} ({error}): copy the PEM certificate there, readable by the \
             agent's user",
            file.display()
        )
    })?;
    let mut reader = &bytes[..];
    let count = rustls_pemfile::certs(&mut reader)
        .filter(Result::is_ok)
        .count();
    if count == 0 {
        return Err(format!(
            "{} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`): check that it \
             is the certificate and not its key",
            file.display()
        ));
    }
    Ok(())
}

fn io_key(path: &Path, source: std::io::Error) -> KeyError {
    KeyError::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    }
}

/// A key problem with its fix: a missing key is made with `kouan keygen`
/// (private) or asked of the platform team (public).
fn key_message(error: &KeyError, path: &Path, private: bool) -> String {
    match error {
        KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            if private {
                format!(
                    "{} does not exist: make it with `kouan keygen --out {}` (or copy the \
                     key there, mode 0600)",
                    path.display(),
                    path.display()
                )
            } else {
                format!(
                    "{} does not exist: ask the platform team for its public key (SPKI PEM)",
                    path.display()
                )
            }
        }
        KeyError::Io { source, .. } => format!(
            "cannot read {} ({source}): the key must be owned by the user the agent runs as",
            path.display()
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn config(dir: &Path, extra: &str) -> PathBuf {
        let text = format!(
            "[agent]\nnode = \"gy-air-01\"\nsite = \"guiyang-airport\"\n\n\
             [keys]\nsigning = \"agent.key\"\n\n[store]\npath = \"kouan.db\"\n{extra}"
        );
        let path = dir.join("kouan.toml");
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_good_config_on_this_machine_has_no_problems() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate(keys::Algorithm::Ed25519).unwrap();
        keys::write_private_key(&dir.path().join("agent.key"), &key).unwrap();
        let report = check(&config(dir.path(), ""));
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn every_problem_is_listed_not_only_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("agent.key");
        keys::write_private_key(&key, &keys::generate(keys::Algorithm::Ed25519).unwrap()).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let extra = "\n[[instrument]]\nid = \"balance-1\"\ndriver = \"line\"\n\
                     port = \"no-such-port\"\n[instrument.line]\nprofile = \"mt-sics\"\n";
        let report = check(&config(dir.path(), extra));
        let text: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(text[0].contains("line 6: keys.signing"), "{}", text[0]);
        assert!(text[0].contains("chmod 600"), "{}", text[0]);
        assert!(
            text[1].contains("line 14: instrument \"balance-1\": port"),
            "{}",
            text[1]
        );
        assert!(text[1].contains("kouan ports"), "{}", text[1]);
    }

    #[test]
    fn a_regular_file_is_not_a_serial_port() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ttyUSB0");
        fs::write(&file, "").unwrap();
        let message = character_device(&file, "port").unwrap_err();
        assert!(message.contains("not a serial port"), "{message}");
        assert!(character_device(Path::new("/dev/null"), "port").is_ok());
    }
}
