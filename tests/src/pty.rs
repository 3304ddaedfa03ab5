//! Virtual serial ports: pseudo-terminal pairs with the instrument's end in
//! the test.
//!
//! [`VirtualPort`] is one pty pair: the agent opens the slave through a
//! symlink (as it would open `/dev/serial/by-id/...`), the test reads and
//! writes the master as the instrument. [`VirtualPort::unplug`] closes the
//! pair and removes the link, as pulling a USB adapter does; a new
//! `VirtualPort` at the same link is the adapter plugged back in.
//!
//! [`Bridge`] joins two pty pairs for a peer that wants a port path of its
//! own (pymodbus, a Python analyzer): the agent opens one link, the peer the
//! other, and a relay thread copies bytes between the masters, where a test
//! can inject garbage or split frames.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd as _;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use serialport::{SerialPort as _, TTYPort};

/// One pty pair, its slave reachable through a symlink.
#[derive(Debug)]
pub struct VirtualPort {
    link: PathBuf,
    master: TTYPort,
    // Held open so that the master never sees the slave closed (reads would
    // fail with EIO) while the agent is between two opens.
    slave: TTYPort,
}

impl VirtualPort {
    /// A new pty pair whose slave is reachable as `link`.
    pub fn create(link: &Path) -> VirtualPort {
        let (mut master, slave) = TTYPort::pair()
            .expect("a pseudo-terminal pair (needs /dev/ptmx and devpts mounted at /dev/pts)");
        master
            .set_timeout(Duration::from_millis(50))
            .expect("master timeout set");
        // serialport opens both ends without O_CLOEXEC: every process the
        // test starts (the agent) would inherit them, and a master held
        // open by the agent never hangs up its own slave.
        for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("FD_CLOEXEC on the pty");
        }
        let target = slave.name().expect("the slave has a path");
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&target, link).expect("symlink to the pty slave");
        VirtualPort {
            link: link.to_owned(),
            master,
            slave,
        }
    }

    /// The path the agent opens.
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// Writes bytes as the instrument.
    pub fn send(&mut self, bytes: &[u8]) {
        // The pty buffer is a few KiB: write in pieces and wait while full.
        for chunk in bytes.chunks(1024) {
            let mut rest = chunk;
            while !rest.is_empty() {
                match self.master.write(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("writing to the pty master: {e}"),
                }
            }
        }
        self.master.flush().expect("pty flush");
    }

    /// Reads what the agent wrote within `wait`.
    pub fn receive(&mut self, wait: Duration) -> Vec<u8> {
        let start = Instant::now();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while start.elapsed() < wait {
            match self.master.read(&mut buf) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading the pty master: {e}"),
            }
        }
        out
    }

    /// Reads until `want` bytes arrived or `wait` passed.
    pub fn receive_until(&mut self, wait: Duration, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let start = Instant::now();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while start.elapsed() < wait && !done(&out) {
            match self.master.read(&mut buf) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading the pty master: {e}"),
            }
        }
        out
    }

    /// Waits until the slave's input queue is empty; fails after `wait`.
    ///
    /// Not proof that the agent read everything sent: the kernel moves
    /// bytes written to the master into that queue asynchronously, so it
    /// can be empty for a moment before they arrive. Enough to pace a
    /// peer whose next bytes come after these on the same line; where the
    /// test must know the agent read them (before an unplug), wait for the
    /// instrument's `bytes` in `kouan status` instead.
    pub fn wait_drained(&self, wait: Duration) {
        let start = Instant::now();
        while self
            .slave
            .bytes_to_read()
            .expect("FIONREAD on the pty slave")
            > 0
        {
            assert!(
                start.elapsed() < wait,
                "the agent did not read the port within {wait:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Pulls the cable: closes the pair and removes the link.
    pub fn unplug(self) {
        let _ = std::fs::remove_file(&self.link);
        drop(self);
    }
}

/// Bytes the relay adds or changes, toward the agent.
#[derive(Debug, Default)]
pub struct Faults {
    /// Injected before the next bytes from the peer reach the agent.
    pub inject: Vec<u8>,
    /// Deliver the peer's bytes to the agent in pieces of this size, with a
    /// pause between them (0: as they come).
    pub split: usize,
}

/// Two pty pairs with a relay between their masters.
#[derive(Debug)]
pub struct Bridge {
    agent_link: PathBuf,
    peer_link: PathBuf,
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    relay: Option<std::thread::JoinHandle<()>>,
}

impl Bridge {
    /// Creates the pairs: the agent opens `agent_link`, the peer `peer_link`.
    pub fn create(agent_link: &Path, peer_link: &Path) -> Bridge {
        let agent = VirtualPort::create(agent_link);
        let peer = VirtualPort::create(peer_link);
        let faults = Arc::new(Mutex::new(Faults::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let relay = {
            let (faults, stop) = (faults.clone(), stop.clone());
            std::thread::spawn(move || relay(agent, peer, &faults, &stop))
        };
        Bridge {
            agent_link: agent_link.to_owned(),
            peer_link: peer_link.to_owned(),
            faults,
            stop,
            relay: Some(relay),
        }
    }

    /// The path the agent opens.
    pub fn agent_path(&self) -> &Path {
        &self.agent_link
    }

    /// The path the peer opens.
    pub fn peer_path(&self) -> &Path {
        &self.peer_link
    }

    /// Changes the faults the relay applies toward the agent.
    pub fn faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.faults.lock().expect("faults lock"));
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(relay) = self.relay.take() {
            let _ = relay.join();
        }
        let _ = std::fs::remove_file(&self.agent_link);
        let _ = std::fs::remove_file(&self.peer_link);
    }
}

fn relay(mut agent: VirtualPort, mut peer: VirtualPort, faults: &Mutex<Faults>, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    let timeout = Duration::from_millis(5);
    let _ = agent.master.set_timeout(timeout);
    let _ = peer.master.set_timeout(timeout);
    while !stop.load(Ordering::Relaxed) {
        if let Ok(n) = agent.master.read(&mut buf)
            && n > 0
        {
            peer.send(&buf[..n]);
        }
        if let Ok(n) = peer.master.read(&mut buf)
            && n > 0
        {
            let (inject, split) = {
                let mut faults = faults.lock().expect("faults lock");
                (std::mem::take(&mut faults.inject), faults.split)
            };
            agent.send(&inject);
            if split == 0 {
                agent.send(&buf[..n]);
            } else {
                for piece in buf[..n].chunks(split) {
                    agent.send(piece);
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}
