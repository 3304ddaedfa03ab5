//! `kouan status` and `kouan tail`: the client side of the status socket,
//! for people (tables, a progress line) and for scripts (`--json`).

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::{InstrumentStatus, Status, TailLine, TailRecord, fetch, socket_path};
use crate::config::Config;

/// Where to find the agent's status socket.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArgs {
    /// The agent's configuration, to find its status socket.
    #[arg(long, value_name = "PATH", default_value = "/etc/kouan/kouan.toml")]
    pub config: PathBuf,
    /// The status socket itself (overrides --config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl SocketArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.socket {
            Some(socket) => Ok(socket.clone()),
            None => {
                let config = Config::load(&self.config).with_context(
                    || "finding the status socket (give --socket PATH to skip the config)",
                )?;
                Ok(socket_path(&config))
            }
        }
    }
}

/// `kouan status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Keep watching: a progress line each second while the backlog drains.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
}

/// `kouan tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print each record as one JSON line.
    #[arg(long)]
    pub json: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs `kouan status`.
pub fn status(args: &StatusArgs) -> anyhow::Result<bool> {
    let path = args.socket.path()?;
    runtime()?.block_on(async {
        let status = fetch(&path).await.map_err(|e| not_running(&path, e))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
            return Ok(true);
        }
        print!("{}", render(&status));
        if args.watch {
            watch(&path).await?;
        }
        Ok(true)
    })
}

fn not_running(path: &Path, error: super::StatusError) -> anyhow::Error {
    anyhow::anyhow!("{error} (is the agent running? `systemctl status kouan` tells)")
        .context(format!("asking the agent at {}", path.display()))
}

/// One progress line a second until Ctrl-C or the agent stops.
async fn watch(path: &Path) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let status = fetch(path).await.map_err(|e| not_running(path, e))?;
        let line = progress_line(&status);
        let mut out = std::io::stdout().lock();
        if tty {
            write!(out, "\r\x1b[2K{line}")?;
        } else {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    if tty {
        println!();
    }
    Ok(())
}

/// The backlog in one line: what is held, and how fast it drains.
pub fn progress_line(status: &Status) -> String {
    let b = &status.backlog;
    let link = match &status.uplink {
        Some(u) if u.connected => "uplink connected",
        Some(_) => "uplink DOWN",
        None => "no uplink",
    };
    if b.records == 0 {
        return format!("{link}; backlog empty: everything is confirmed");
    }
    let mut line = format!(
        "{link}; backlog {} records, {}",
        b.records,
        human_bytes(b.bytes)
    );
    if let Some(oldest) = b.oldest_captured_ms {
        line += &format!(
            ", oldest {} old",
            human_duration((status.now_ms - oldest).max(0) / 1000)
        );
    }
    match b.drain_per_sec {
        _ if status.uplink.as_ref().is_some_and(|u| !u.connected) => {
            line += "; held until the uplink is back";
        }
        Some(rate) if rate >= 0.5 => {
            let left = (b.records as f64 / rate).ceil() as i64;
            line += &format!(
                "; draining {rate:.0} records/s, about {} to go",
                human_duration(left)
            );
        }
        _ => line += "; not draining",
    }
    line
}

/// The status as a person reads it.
pub fn render(status: &Status) -> String {
    let now = status.now_ms;
    let ago = |ms: i64| format!("{} ago", human_duration((now - ms).max(0) / 1000));
    let mut out = String::new();
    let up = human_duration((now - status.started_ms).max(0) / 1000);
    out += &format!(
        "agent       {} at {}, up {up} (kouan {}, pid {})\n",
        status.node, status.site, status.version, status.pid
    );
    out += &match &status.uplink {
        None => "uplink      none configured: records are stored, not sent\n".to_owned(),
        Some(u) if u.connected => format!(
            "uplink      connected to {}{}\n",
            u.broker,
            u.since_ms
                .map(|s| format!(" since {}", ago(s)))
                .unwrap_or_default()
        ),
        Some(u) => format!(
            "uplink      NOT CONNECTED{}{}\n",
            u.since_ms
                .map(|s| format!(" for {}", human_duration((now - s).max(0) / 1000)))
                .unwrap_or_default(),
            u.last_error
                .as_ref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ),
    };
    out += &format!("backlog     {}\n", progress_line(status));
    if status.instruments.is_empty() {
        out += "instruments none configured\n";
    } else {
        let width = status
            .instruments
            .iter()
            .map(|i| i.id.len())
            .max()
            .unwrap_or(0)
            .max(10);
        out += &format!(
            "{:<width$}  {:<8} {:<9} {:<20} {:>9} {:>7} {:>10}\n",
            "instrument", "driver", "state", "last reading", "readings", "errors", "bytes"
        );
        for i in &status.instruments {
            let last = match (i.last_reading_ms, i.last_seq) {
                (Some(ms), Some(seq)) => format!("{} (seq {seq})", ago(ms)),
                _ => "none yet".to_owned(),
            };
            out += &format!(
                "{:<width$}  {:<8} {:<9} {:<20} {:>9} {:>7} {:>10}\n",
                i.id,
                i.driver,
                if i.attached { "attached" } else { "DETACHED" },
                last,
                i.readings,
                i.errors,
                i.bytes
            );
            out += &instrument_details(i, &ago);
        }
    }
    out += &format!("orders      {} in force\n", status.active_orders);
    if let Some(error) = &status.alerts_error {
        out += &format!("alerts      UNKNOWN: {error} (kouan alerts reads them directly)\n");
    } else if status.alerts.is_empty() {
        out += "alerts      none\n";
    } else {
        for a in &status.alerts {
            out += &format!(
                "ALERT {:<5} risk {} {} {} at {}, {} ({}; {}; kouan alerts ack {} --by NAME)\n",
                a.id,
                a.risk,
                a.action.to_uppercase(),
                a.subject,
                a.instrument,
                ago(a.time),
                a.source,
                format_args!("record seq {}", a.seq),
                a.id
            );
        }
    }
    out
}

/// The lines under an instrument: a Modbus bus's devices, a node's state.
fn instrument_details(i: &InstrumentStatus, ago: &dyn Fn(i64) -> String) -> String {
    let mut out = String::new();
    for d in &i.devices {
        let state = match d.answering {
            Some(true) => "answering",
            Some(false) => "NOT ANSWERING",
            None => "not asked yet",
        };
        let last = d.last_success_ms.map_or_else(
            || "never answered".to_owned(),
            |ms| format!("last answer {}", ago(ms)),
        );
        out += &format!(
            "  device {} (address {}): {state}, {last}; {} answers, {} errors, {} timeouts\n",
            d.name, d.address, d.answers, d.errors, d.timeouts
        );
    }
    if let Some(n) = &i.node {
        let buffer = n.buffered.map_or_else(
            || "buffer unknown".to_owned(),
            |(used, size)| format!("buffer {used}/{size}"),
        );
        let alarm = match n.alarm {
            None => "alarm unknown".to_owned(),
            Some(0) => "alarm off".to_owned(),
            Some(level) => format!("ALARM ON (level {level})"),
        };
        out += &format!(
            "  node {} firmware {}: {buffer}, {} dropped, {} resent, {alarm}\n",
            n.node, n.firmware, n.dropped, n.retransmitted
        );
    }
    out
}

/// Runs `kouan tail`: records as they are stored, until Ctrl-C.
pub fn tail(args: &TailArgs) -> anyhow::Result<bool> {
    let path = args.socket.path()?;
    runtime()?.block_on(async {
        let mut lines = super::connect(&path, "tail")
            .await
            .map_err(|e| not_running(&path, e))?;
        loop {
            let line = tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(true),
                line = lines.next_line() => line,
            };
            let Some(line) = line.with_context(|| format!("reading {}", path.display()))? else {
                eprintln!("kouan: the agent closed the status socket (it stopped)");
                return Ok(true);
            };
            if args.json {
                println!("{line}");
                continue;
            }
            if serde_json::from_str::<super::TailHeader>(&line).is_ok() {
                println!(
                    "records as {} stores them (Ctrl-C to stop):",
                    path.display()
                );
                continue;
            }
            if let Ok(tail) = serde_json::from_str::<TailLine>(&line) {
                println!("{}", tail_text(&tail));
            } else if let Ok(other) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(missed) = other.get("lagged")
            {
                println!("... {missed} records not shown (this terminal was too slow)");
            }
        }
    })
}

/// One tail line as a person reads it.
pub fn tail_text(line: &TailLine) -> String {
    match line {
        TailLine::Record(record) => record_text(record),
        TailLine::Skipped { from, to } => {
            format!("... seq {from} to {to} were confirmed before they could be shown")
        }
    }
}

/// `HH:MM:SS.mmm  seq  instrument  kind  what`.
pub fn record_text(r: &TailRecord) -> String {
    // The time of day (UTC) is enough on a live view.
    let ms = r.captured_ms.rem_euclid(86_400_000);
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
    let mut what = match (&r.code, r.values.is_empty()) {
        (Some(code), _) => code.clone(),
        (None, false) => r
            .values
            .iter()
            .map(|v| {
                let mut s = format!("{} {}", v.name, v.value);
                if let Some(unit) = &v.unit {
                    s += &format!(" {unit}");
                }
                if !v.flags.is_empty() {
                    s += &format!(" [{}]", v.flags.join(","));
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", "),
        (None, true) => String::new(),
    };
    if let Some(sample) = &r.sample {
        what += &format!("  sample {sample}");
    }
    for note in &r.notes {
        what += &format!("  ({note})");
    }
    format!(
        "{time}  seq {:<6} {:<12} {:<10} {what}",
        r.seq, r.instrument, r.kind
    )
}

/// Seconds as a person reads them.
pub fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} days {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b < 10 * 1024 => format!("{b} bytes"),
        b if b < 10 * 1024 * 1024 => format!("{} KiB", b / 1024),
        b => format!("{} MiB", b / (1024 * 1024)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rapid::AlertRow;
    use crate::status::{Backlog, DeviceStatus, NodeView, STATUS_VERSION, UplinkStatus};

    fn status(records: u64, drain: Option<f64>) -> Status {
        Status {
            v: STATUS_VERSION,
            version: "0.1.0".into(),
            node: "gy-air-01".into(),
            site: "guiyang-airport".into(),
            pid: 42,
            started_ms: 1_000_000,
            now_ms: 1_060_000,
            uplink: Some(UplinkStatus {
                connected: false,
                broker: "127.0.0.1:1883".into(),
                since_ms: Some(1_050_000),
                connections: 1,
                last_error: Some("connection refused".into()),
            }),
            backlog: Backlog {
                records,
                bytes: 4096,
                oldest_captured_ms: Some(1_030_000),
                head_seq: Some(99),
                drain_per_sec: drain,
            },
            instruments: vec![InstrumentStatus {
                id: "balance-1".into(),
                driver: "line".into(),
                location: "/dev/ttyUSB0".into(),
                attached: true,
                last_reading_ms: Some(1_058_000),
                last_seq: Some(99),
                bytes: 1800,
                readings: 90,
                errors: 1,
                attach_count: 1,
                detach_count: 0,
                devices: Vec::new(),
                node: None,
            }],
            alerts: Vec::new(),
            alerts_error: None,
            active_orders: 0,
        }
    }

    #[test]
    fn progress_line_says_how_long_the_drain_takes() {
        let mut connected = status(1000, Some(250.0));
        if let Some(uplink) = &mut connected.uplink {
            uplink.connected = true;
        }
        let line = progress_line(&connected);
        assert!(line.contains("backlog 1000 records"), "{line}");
        assert!(line.contains("oldest 30 s old"), "{line}");
        assert!(
            line.contains("draining 250 records/s, about 4 s to go"),
            "{line}"
        );
        let line = progress_line(&status(0, None));
        assert!(line.contains("backlog empty"), "{line}");
    }

    #[test]
    fn render_shows_a_lost_uplink_and_each_instrument() {
        let text = render(&status(10, None));
        assert!(text.contains("held until the uplink is back"), "{text}");
        assert!(text.contains("NOT CONNECTED for 10 s"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.contains("balance-1"), "{text}");
        assert!(text.contains("2 s ago (seq 99)"), "{text}");
        assert!(text.contains("alerts      none"), "{text}");
    }

    #[test]
    fn render_shows_devices_nodes_and_alerts() {
        let mut s = status(0, None);
        let mut bus = s.instruments[0].clone();
        bus.id = "cold-chain".into();
        bus.devices = vec![
            DeviceStatus {
                name: "probe-1".into(),
                address: 1,
                answering: Some(true),
                last_success_ms: Some(1_059_000),
                answers: 12,
                errors: 0,
                timeouts: 1,
            },
            DeviceStatus {
                name: "probe-2".into(),
                address: 2,
                answering: Some(false),
                last_success_ms: None,
                answers: 0,
                errors: 0,
                timeouts: 7,
            },
        ];
        let mut node = s.instruments[0].clone();
        node.id = "node-1".into();
        node.node = Some(NodeView {
            node: "wh-3".into(),
            firmware: "0.1.0".into(),
            buffered: Some((3, 64)),
            dropped: 5,
            retransmitted: 2,
            alarm: Some(2),
        });
        s.instruments.extend([bus, node]);
        s.active_orders = 3;
        s.alerts.push(AlertRow {
            id: 7,
            seq: 120,
            time: 1_055_000,
            risk: 1,
            action: "hold".into(),
            source: "GACC-2026-0042".into(),
            instrument: "scanner-1".into(),
            subject: "GTIN 06901234567892".into(),
            acked_by: None,
        });
        let text = render(&s);
        assert!(
            text.contains("device probe-1 (address 1): answering, last answer 1 s ago; 12 answers, 0 errors, 1 timeouts"),
            "{text}"
        );
        assert!(
            text.contains("device probe-2 (address 2): NOT ANSWERING, never answered"),
            "{text}"
        );
        assert!(
            text.contains(
                "node wh-3 firmware 0.1.0: buffer 3/64, 5 dropped, 2 resent, ALARM ON (level 2)"
            ),
            "{text}"
        );
        assert!(text.contains("orders      3 in force"), "{text}");
        assert!(
            text.contains("ALERT 7     risk 1 HOLD GTIN 06901234567892 at scanner-1, 5 s ago"),
            "{text}"
        );
        assert!(text.contains("kouan alerts ack 7 --by NAME"), "{text}");
        s.alerts_error = Some("database is locked".into());
        assert!(render(&s).contains("alerts      UNKNOWN: database is locked"));
    }
}
