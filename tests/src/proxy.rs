//! A TCP proxy that injects network faults between a client and a broker.
//!
//! [`Proxy::start`] listens on a free loopback port and forwards every
//! connection to the upstream address byte for byte, so TLS passes through
//! untouched (the broker's certificate names 127.0.0.1, which is also the
//! proxy's address). A test points the agent at [`Proxy::port`] and then:
//!
//! - [`Proxy::cut`] closes every current connection at once, both ways, as
//!   when a link drops; new connections are forwarded again right away;
//! - [`Proxy::pause`] stops forwarding bytes while keeping the connections
//!   open, as when a link stalls without a reset; [`Proxy::resume`] lets
//!   the held bytes through;
//! - [`Proxy::unplug`] cuts every connection and closes new ones at once,
//!   as when the broker is unreachable from the client's side while it
//!   still serves others; [`Proxy::plug`] forwards again.
//!
//! Plain threads keep it independent of the runtime a test uses: one
//! accepting, two per connection. Dropping the proxy closes everything.
//!
//! ```no_run
//! use kouan_tests::proxy::Proxy;
//!
//! # let broker_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 8883));
//! let proxy = Proxy::start(broker_addr);
//! // ... connect a client to 127.0.0.1:{proxy.port()} ...
//! proxy.cut();
//! assert!(proxy.connections() >= 1);
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

/// A fault-injecting TCP proxy. See the module docs.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// State shared by the proxy handle and its threads.
#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    stopped: AtomicBool,
    /// New connections are closed at once (see [`Proxy::unplug`]).
    unplugged: AtomicBool,
    accepted: AtomicUsize,
    next_id: AtomicU64,
    /// Both sockets of each live connection, so `cut` can close them
    /// while the forwarding threads block in `read`. A mutex, not a
    /// channel: `cut` must see every connection open at that moment.
    open: Mutex<Vec<Link>>,
    /// Whether forwarding is paused; the condvar wakes the forwarding
    /// threads on resume.
    paused: Mutex<bool>,
    resumed: Condvar,
}

/// One proxied connection: the client's socket and the upstream one.
#[derive(Debug)]
struct Link {
    id: u64,
    client: TcpStream,
    upstream: TcpStream,
}

impl Link {
    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    /// Starts forwarding a free loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("the proxy binds a loopback port");
        let addr = listener
            .local_addr()
            .expect("the proxy socket has an address");
        let shared = Arc::new(Shared {
            upstream,
            stopped: AtomicBool::new(false),
            unplugged: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            paused: Mutex::new(false),
            resumed: Condvar::new(),
        });

        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("the proxy thread starts")
        };
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port clients connect to, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections the proxy has accepted since it started.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// How many connections are open now.
    pub fn open_connections(&self) -> usize {
        self.shared.links().len()
    }

    /// Closes every current connection at once, client and upstream side
    /// (both see a FIN). Later connections are forwarded as before.
    pub fn cut(&self) {
        for link in self.shared.links().drain(..) {
            link.close();
        }
    }

    /// Holds all bytes in both directions until [`Proxy::resume`]; the
    /// connections stay open and new ones are still accepted.
    pub fn pause(&self) {
        *self.shared.paused_flag() = true;
    }

    /// Forwards again, held bytes first.
    pub fn resume(&self) {
        *self.shared.paused_flag() = false;
        self.shared.resumed.notify_all();
    }

    /// Cuts every connection and closes new ones as soon as they are
    /// accepted, until [`Proxy::plug`]: the broker is gone for the client.
    pub fn unplug(&self) {
        self.shared.unplugged.store(true, Ordering::SeqCst);
        self.cut();
    }

    /// Forwards new connections again after [`Proxy::unplug`].
    pub fn plug(&self) {
        self.shared.unplugged.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.resume();
        self.cut();

        // The acceptor blocks in accept(): one last connection wakes it to
        // see the stop flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, Vec<Link>> {
        // A forwarding thread that panicked leaves a usable list behind.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn paused_flag(&self) -> MutexGuard<'_, bool> {
        self.paused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn wait_while_paused(&self) {
        let mut paused = self.paused_flag();
        while *paused && !self.stopped() {
            paused = self
                .resumed
                .wait(paused)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn forget(&self, id: u64) {
        self.links().retain(|link| link.id != id);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped() {
            return;
        }
        let Ok(client) = client else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.unplugged.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }

        // An upstream that is down refuses the client the same way, by
        // closing its connection.
        let Ok(upstream) = TcpStream::connect(shared.upstream) else {
            continue;
        };
        if let Err(e) = open_link(client, upstream, shared) {
            eprintln!(
                "proxy {}: cannot forward a connection: {e}",
                shared.upstream
            );
        }
    }
}

/// Registers a connection and starts its two forwarding threads.
fn open_link(client: TcpStream, upstream: TcpStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let link = Link {
        id,
        client: client.try_clone()?,
        upstream: upstream.try_clone()?,
    };
    shared.links().push(link);

    // The second thread to finish removes the link from the open list.
    let ends = Arc::new(AtomicUsize::new(0));
    let directions = [
        (client.try_clone()?, upstream.try_clone()?),
        (upstream, client),
    ];
    for (from, to) in directions {
        let shared = Arc::clone(shared);
        let ends = Arc::clone(&ends);
        thread::Builder::new()
            .name(format!("proxy-link-{id}"))
            .spawn(move || {
                forward(from, to, &shared);
                if ends.fetch_add(1, Ordering::SeqCst) == 1 {
                    shared.forget(id);
                }
            })?;
    }
    Ok(())
}

/// Copies bytes from `from` to `to` until either side closes, then closes
/// both: one dead direction means a dead connection, as on a real link.
fn forward(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        shared.wait_while_paused();
        if shared.stopped() || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An upstream that echoes every byte back, on its own thread.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        addr
    }

    fn connect(proxy: &Proxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).unwrap();
        // Only a bound against hanging; no assertion depends on it.
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream
    }

    fn echo(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
        stream.write_all(bytes).unwrap();
        let mut back = vec![0; bytes.len()];
        stream.read_exact(&mut back).unwrap();
        back
    }

    #[test]
    fn forwards_both_ways_and_counts_connections() {
        let proxy = Proxy::start(echo_server());
        let mut first = connect(&proxy);
        let mut second = connect(&proxy);

        assert_eq!(echo(&mut first, b"one"), b"one");
        assert_eq!(echo(&mut second, b"two"), b"two");
        assert_eq!(proxy.connections(), 2);
        assert_eq!(proxy.open_connections(), 2);
    }

    #[test]
    fn cut_closes_every_open_connection_and_keeps_accepting() {
        let proxy = Proxy::start(echo_server());
        let mut first = connect(&proxy);
        let mut second = connect(&proxy);
        echo(&mut first, b"x");
        echo(&mut second, b"y");

        proxy.cut();

        for stream in [&mut first, &mut second] {
            let mut buf = [0u8; 1];
            let read = stream.read(&mut buf);
            assert!(matches!(read, Ok(0) | Err(_)), "read {read:?} after cut");
        }
        let mut third = connect(&proxy);
        assert_eq!(echo(&mut third, b"z"), b"z");
        assert_eq!(proxy.connections(), 3);
    }

    #[test]
    fn pause_holds_bytes_until_resume() {
        let proxy = Proxy::start(echo_server());
        let mut stream = connect(&proxy);
        echo(&mut stream, b"a");

        proxy.pause();
        stream.write_all(b"held").unwrap();
        // A short look can only miss bytes, never invent them: this check
        // may pass on a slow machine, it cannot fail on one.
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 4];
        assert!(
            stream.read(&mut buf).is_err(),
            "bytes passed a paused proxy"
        );

        proxy.resume();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"held");
    }
}
