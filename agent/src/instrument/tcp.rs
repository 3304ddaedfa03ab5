//! TCP endpoints of instruments: analyzers on the lab network.
//!
//! An analyzer either connects to the agent (`listen = "0.0.0.0:5100"`,
//! the agent is the server, the usual LIS setup) or waits for the agent
//! to connect (`connect = "10.1.2.3:5100"`). [`supervise`] keeps one
//! connection and runs a driver session on it, as [`super::supervise`]
//! does for a serial port, with the same log lines: `instrument attached`
//! at info, `instrument detached` at warn.
//!
//! A server serves one analyzer connection at a time. A new connection
//! replaces the one being served: an analyzer that reconnects has given
//! up on its old connection, which may linger half-open for hours after
//! a cable was pulled (no FIN ever arrives), and must not keep the new
//! one waiting. A client reconnects with backoff, 1 s doubling to 30 s.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::port::Ended;
use super::{Counters, Instrument, InstrumentConfig, stopping};

/// Where an instrument is reached over TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The agent listens on this address; the analyzer connects.
    Listen(String),
    /// The agent connects to the analyzer at this address.
    Connect(String),
}

impl Endpoint {
    /// The endpoint an instrument section names, if any (`listen` wins;
    /// the config check refuses both).
    pub fn of(config: &InstrumentConfig) -> Option<Endpoint> {
        match (&config.listen, &config.connect) {
            (Some(listen), _) => Some(Endpoint::Listen(listen.clone())),
            (None, Some(connect)) => Some(Endpoint::Connect(connect.clone())),
            (None, None) => None,
        }
    }
}

/// Checks the transport keys of a driver that reads serial ports and
/// TCP: exactly one of `port`, `listen` and `connect`, and addresses of
/// the form `host:port`.
pub fn validate(config: &InstrumentConfig, serial: bool) -> Result<(), String> {
    let given = [
        config.port.is_some(),
        config.listen.is_some(),
        config.connect.is_some(),
    ];
    let count = given.iter().filter(|g| **g).count();
    let keys = if serial {
        "port (serial), listen (TCP server) or connect (TCP client)"
    } else {
        "listen (TCP server) or connect (TCP client)"
    };
    if count != 1 || (!serial && config.port.is_some()) {
        return Err(format!("give exactly one of {keys}"));
    }
    if config.input.is_some() {
        return Err("input belongs to driver = \"scanner\"".into());
    }
    for address in [&config.listen, &config.connect].into_iter().flatten() {
        let port = address
            .rsplit_once(':')
            .map(|(_, port)| port.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(format!(
                "{address:?} is not an address: write host:port, e.g. 0.0.0.0:5100"
            ));
        }
    }
    Ok(())
}

/// Runs sessions on connections to `endpoint` until the agent stops.
///
/// Dropping the future closes the listener and the connection; a session
/// dropped while it stores a reading may or may not have stored it.
pub async fn supervise<'a, S>(
    instrument: &'a Instrument,
    endpoint: &Endpoint,
    session: impl FnMut(TcpStream) -> S,
) where
    S: Future<Output = Ended> + Send + 'a,
{
    match endpoint {
        Endpoint::Listen(address) => serve(instrument, address, session).await,
        Endpoint::Connect(address) => connect(instrument, address, session).await,
    }
}

type Session<'a> = Pin<Box<dyn Future<Output = Ended> + Send + 'a>>;

async fn serve<'a, S>(
    instrument: &'a Instrument,
    address: &str,
    mut session: impl FnMut(TcpStream) -> S,
) where
    S: Future<Output = Ended> + Send + 'a,
{
    let id = instrument.id();
    let mut shutdown = instrument.shutdown.clone();
    let Some(listener) = bind(instrument, address).await else {
        return;
    };
    tracing::info!(instrument = %id, address, "listening for the instrument");

    let mut current: Option<(SocketAddr, Session<'a>)> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: pause, so
                        // that a failing accept does not spin.
                        tracing::warn!(instrument = %id, %error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Some((old, _)) = current.take() {
                    Counters::add(&instrument.counters.detached, 1);
                    tracing::warn!(
                        instrument = %id,
                        peer = %old,
                        new_peer = %peer,
                        "instrument detached: a new connection replaces this one"
                    );
                }
                let _ = stream.set_nodelay(true);
                Counters::add(&instrument.counters.attached, 1);
                tracing::info!(instrument = %id, port = %address, %peer, "instrument attached");
                current = Some((peer, Box::pin(session(stream))));
            }
            ended = served(&mut current) => {
                let peer = current.take().map(|(peer, _)| peer);
                match ended {
                    Ended::Shutdown => return,
                    Ended::Lost(error) => {
                        Counters::add(&instrument.counters.detached, 1);
                        tracing::warn!(instrument = %id, ?peer, %error, "instrument detached");
                    }
                }
            }
            _ = stopping(&mut shutdown) => return,
        }
    }
}

/// The current session's end; never, without one.
async fn served(current: &mut Option<(SocketAddr, Session<'_>)>) -> Ended {
    match current {
        Some((_, session)) => session.await,
        None => std::future::pending().await,
    }
}

/// Binds `address`, retrying while it fails (address in use by a process
/// that is stopping, an interface not up yet); `None` once the agent stops.
async fn bind(instrument: &Instrument, address: &str) -> Option<TcpListener> {
    let mut shutdown = instrument.shutdown.clone();
    let mut delay = Duration::from_secs(1);
    let mut logged = false;
    loop {
        match TcpListener::bind(address).await {
            Ok(listener) => return Some(listener),
            Err(error) if !logged => {
                logged = true;
                tracing::warn!(
                    instrument = %instrument.id(),
                    address,
                    %error,
                    "cannot listen for the instrument; retrying"
                );
            }
            Err(error) => {
                tracing::debug!(instrument = %instrument.id(), %error, "still cannot listen")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => delay = (delay * 2).min(Duration::from_secs(30)),
            _ = stopping(&mut shutdown) => return None,
        }
    }
}

async fn connect<'a, S>(
    instrument: &'a Instrument,
    address: &str,
    mut session: impl FnMut(TcpStream) -> S,
) where
    S: Future<Output = Ended> + Send + 'a,
{
    let id = instrument.id();
    let mut shutdown = instrument.shutdown.clone();
    let mut delay = Duration::from_secs(1);
    let mut missing_logged = false;
    loop {
        // A connect to a host that does not answer takes minutes to fail
        // by itself.
        let attempt = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(address));
        let connected = tokio::select! {
            attempt = attempt => attempt.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            _ = stopping(&mut shutdown) => return,
        };
        match connected {
            Ok(stream) => {
                delay = Duration::from_secs(1);
                let _ = stream.set_nodelay(true);
                Counters::add(&instrument.counters.attached, 1);
                tracing::info!(instrument = %id, port = %address, "instrument attached");
                match session(stream).await {
                    Ended::Shutdown => return,
                    Ended::Lost(error) => {
                        Counters::add(&instrument.counters.detached, 1);
                        tracing::warn!(instrument = %id, port = %address, %error, "instrument detached");
                        missing_logged = true;
                    }
                }
            }
            Err(error) if !missing_logged => {
                missing_logged = true;
                tracing::warn!(
                    instrument = %id,
                    port = %address,
                    %error,
                    "instrument not available: check its network settings; retrying"
                );
            }
            Err(error) => tracing::debug!(instrument = %id, %error, "still not available"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => delay = (delay * 2).min(Duration::from_secs(30)),
            _ = stopping(&mut shutdown) => return,
        }
    }
}
