//! The demo's network: an embedded MQTT broker, and a link between the
//! agent and the broker that can be cut.
//!
//! The broker is rumqttd, run by a hidden `kouan demo --serve-broker PORT`
//! child process so that its logs go to a file in the demo's directory and
//! not across the demo's screen. It listens on plain TCP on 127.0.0.1
//! only: the demo's agent and platform are on the same machine.
//!
//! The agent reaches the broker through [`Link`], a TCP relay on another
//! loopback port. Cutting it closes every relayed connection and refuses
//! new ones at once, as a dead mobile link or a pulled cable does from
//! the agent's side, while the platform stays connected to the broker.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A free port on 127.0.0.1, for the broker to bind.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("finding a free loopback port")?;
    Ok(listener
        .local_addr()
        .context("reading a bound port")?
        .port())
}

/// Runs rumqttd on 127.0.0.1:`port` until the process is stopped.
pub fn serve_broker(port: u16) -> anyhow::Result<()> {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // Limits sized for one agent and one platform: records are at most
    // the agent's max_packet_bytes (256 KiB), 100 in flight.
    let config = format!(
        r#"
id = 0
[router]
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 10485760
max_segment_count = 10

[v4.1]
name = "demo"
listen = "{listen}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&config).context("the broker's settings")?;
    let mut broker = rumqttd::Broker::new(config);
    broker
        .start()
        .map_err(|e| anyhow::anyhow!("the embedded broker stopped: {e}"))
}

/// The agent's link to the broker, which the demo can cut and restore.
#[derive(Debug)]
pub struct Link {
    /// The port the agent connects to.
    pub port: u16,
    cut: watch::Sender<bool>,
}

impl Link {
    /// Relays 127.0.0.1:(a free port) to the broker at `broker_port`.
    pub async fn start(broker_port: u16) -> anyhow::Result<Link> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the agent's link")?;
        let port = listener
            .local_addr()
            .context("reading a bound port")?
            .port();
        let (cut, state) = watch::channel(false);
        tokio::spawn(relay(listener, broker_port, state));
        Ok(Link { port, cut })
    }

    /// Cuts (true) or restores (false) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// Whether the link is cut now.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

async fn relay(listener: TcpListener, broker_port: u16, cut: watch::Receiver<bool>) {
    loop {
        let Ok((mut agent, _)) = listener.accept().await else {
            continue;
        };
        // While cut, a connection is closed as soon as it is made.
        if *cut.borrow() {
            drop(agent);
            continue;
        }
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(mut broker) = TcpStream::connect((Ipv4Addr::LOCALHOST, broker_port)).await
            else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut agent, &mut broker) => {}
                _ = cut.wait_for(|cut| *cut) => {}
            }
        });
    }
}
