//! `kouan check` end to end: broken configurations, each a mistake a
//! technician makes, must be reported with the file, the line, the field
//! and the fix; and every example in config/ must parse.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use kouan_agent::config::Config;
use kouan_tests::pty::VirtualPort;
use kouan_tests::{keygen, kouan, path_str, text};

/// A directory with a key, two virtual serial ports and a config that
/// `kouan check` accepts.
struct Site {
    dir: tempfile::TempDir,
    _ports: [VirtualPort; 2],
    base: String,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        keygen(dir.path(), "ed25519");
        let balance = VirtualPort::create(&dir.path().join("balance-port"));
        let scanner = VirtualPort::create(&dir.path().join("scanner-port"));
        let base = format!(
            r#"[agent]
node = "gy-air-01"
site = "guiyang-airport"

[keys]
signing = "agent.key"

[store]
path = "kouan.db"

[uplink]
host = "localhost"
plain_tcp = true
delivery = "broker"

[[instrument]]
id = "balance-1"
driver = "line"
port = "{}"

[instrument.serial]
baud = 9600
data_bits = 8

[instrument.line]
profile = "mt-sics"

[[instrument]]
id = "scanner-1"
driver = "scanner"
port = "{}"

[instrument.scanner]
instruments = ["balance-1"]
"#,
            path_str(balance.path()),
            path_str(scanner.path()),
        );
        Site {
            dir,
            _ports: [balance, scanner],
            base,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `config` and runs `kouan check` on it: (success, stdout).
    fn check(&self, config: &str) -> (bool, String, PathBuf) {
        let file = self.path().join("kouan.toml");
        std::fs::write(&file, config).expect("config written");
        let out = kouan()
            .args(["check", path_str(&file)])
            .output()
            .expect("kouan check runs");
        let stdout = text(&out.stdout);
        assert!(
            text(&out.stderr).is_empty(),
            "problems go to stdout, not the log: {}",
            text(&out.stderr)
        );
        (out.status.success(), stdout, file)
    }

    /// Checks a broken config: it must fail, and one `error:` line must
    /// name the file, `line N` (the line of `marker` in the text, or
    /// `line`), the field and every word of the fix.
    fn broken(&self, config: &str, marker: &str, line: Option<usize>, field: &str, fix: &[&str]) {
        let (ok, stdout, file) = self.check(config);
        assert!(
            !ok,
            "kouan check passed a broken config:\n{config}\n{stdout}"
        );
        let line = line.unwrap_or_else(|| {
            config
                .lines()
                .position(|l| l.contains(marker))
                .unwrap_or_else(|| panic!("{marker:?} is in the config"))
                + 1
        });
        let expected = format!("config {}, line {line}: {field}: ", file.display());
        let error = stdout
            .lines()
            .find(|l| l.starts_with("error: ") && l.contains(&expected))
            .unwrap_or_else(|| panic!("no error line with {expected:?} in:\n{stdout}"));
        for word in fix {
            assert!(error.contains(word), "{word:?} missing from:\n{error}");
        }
    }
}

#[test]
fn the_base_config_passes() {
    let site = Site::new();
    let (ok, stdout, _) = site.check(&site.base);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("ok: "), "{stdout}");
    assert!(stdout.contains("2 instruments"), "{stdout}");
}

#[test]
fn typo_in_a_key_gets_a_suggestion() {
    let site = Site::new();
    let config = site
        .base
        .replace("path = \"kouan.db\"", "pth = \"kouan.db\"");
    site.broken(
        &config,
        "pth =",
        None,
        "store.pth",
        &["unknown field `pth`", "did you mean `path`?"],
    );
}

#[test]
fn wrong_type_says_what_to_write() {
    let site = Site::new();
    let config = site.base.replace("baud = 9600", "baud = \"fast\"");
    site.broken(
        &config,
        "baud =",
        None,
        "instrument \"balance-1\": serial.baud",
        &["expected u32", "write a whole number, without quotes"],
    );
}

#[test]
fn missing_port_points_to_kouan_ports() {
    let site = Site::new();
    let gone = path_str(&site.path().join("scanner-port")).to_owned();
    let config = site
        .base
        .replace(&gone, "/dev/serial/by-id/usb-no-such-scanner");
    site.broken(
        &config,
        "usb-no-such-scanner",
        None,
        "instrument \"scanner-1\": port",
        &["does not exist", "plug the device in", "`kouan ports`"],
    );
}

#[test]
fn world_readable_key_is_refused_with_chmod() {
    let site = Site::new();
    let key = site.path().join("agent.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    site.broken(
        &site.base,
        "signing =",
        None,
        "keys.signing",
        &["mode 0644", "chmod 600"],
    );
}

#[test]
fn duplicate_instrument_id_names_both() {
    let site = Site::new();
    let config = site
        .base
        .replace("id = \"scanner-1\"", "id = \"balance-1\"");
    let second = config.rfind("id = \"balance-1\"").unwrap();
    let line = config[..second].lines().count() + 1;
    site.broken(
        &config,
        "",
        Some(line),
        "instrument \"balance-1\": id",
        &[
            "also the id of [[instrument]] number 1",
            "give each instrument its own id",
        ],
    );
}

#[test]
fn unknown_driver_gets_a_suggestion() {
    let site = Site::new();
    let config = site
        .base
        .replace("driver = \"scanner\"", "driver = \"scaner\"");
    site.broken(
        &config,
        "\"scaner\"",
        None,
        "instrument \"scanner-1\": driver",
        &["unknown value \"scaner\"", "did you mean \"scanner\"?"],
    );
}

#[test]
fn scanner_linking_an_unknown_instrument() {
    let site = Site::new();
    let config = site.base.replace("[\"balance-1\"]", "[\"balance-2\"]");
    site.broken(
        &config,
        "instruments = ",
        None,
        "instrument \"scanner-1\": scanner.instruments",
        &[
            "no [[instrument]] has id \"balance-2\"",
            "did you mean \"balance-1\"?",
        ],
    );
}

#[test]
fn bad_data_bits() {
    let site = Site::new();
    let config = site.base.replace("data_bits = 8", "data_bits = 9");
    site.broken(
        &config,
        "[instrument.serial]",
        None,
        "instrument \"balance-1\": serial",
        &["data_bits = 9 must be 5, 6, 7 or 8"],
    );
}

#[test]
fn missing_store_section() {
    let site = Site::new();
    let config = site.base.replace("[store]\npath = \"kouan.db\"\n", "");
    site.broken(
        &config,
        "",
        Some(1),
        "store",
        &["missing: add a [store] section"],
    );
}

#[test]
fn uplink_without_tls() {
    let site = Site::new();
    let config = site.base.replace("plain_tcp = true\n", "");
    site.broken(
        &config,
        "[uplink]",
        None,
        "uplink.tls",
        &["give [uplink.tls] ca, cert and key", "plain_tcp = true"],
    );
}

#[test]
fn missing_store_directory() {
    let site = Site::new();
    let config = site
        .base
        .replace("\"kouan.db\"", "\"no-such-dir/kouan.db\"");
    site.broken(
        &config,
        "no-such-dir",
        None,
        "store.path",
        &["does not exist: create it", "install -d -o kouan"],
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let site = Site::new();
    let config = site
        .base
        .replace("path = ", "pth = ")
        .replace("profile = ", "profle = ")
        .replace("baud = 9600", "baud_rate = 9600");
    let (ok, stdout, _) = site.check(&config);
    assert!(!ok);
    for expected in [
        "did you mean `path`?",
        "did you mean `profile`?",
        "did you mean `baud`?",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    assert!(stdout.contains("3 problems in"), "{stdout}");
}

#[test]
fn every_example_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("config/ entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("example readable");
        if let Err(error) = Config::parse(&text, &path) {
            panic!("{error}");
        }
        assert!(
            text.starts_with("# "),
            "{} must open with a comment saying which site it is for",
            path.display()
        );
        checked.push(path.file_name().unwrap_or_default().to_owned());
    }
    checked.sort();
    for site in [
        "guiyang-airport.toml",
        "guiyang-rail.toml",
        "guiyang-bonded.toml",
        "guian-bonded.toml",
        "zunyi-bonded.toml",
        "trade-market.toml",
    ] {
        assert!(
            checked.iter().any(|c| c == site),
            "config/{site} is missing: {checked:?}"
        );
    }
}
