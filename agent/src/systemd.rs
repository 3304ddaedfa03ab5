//! Telling systemd how the agent is: `READY=1` once it runs, `WATCHDOG=1`
//! while its main loop turns, `STOPPING=1` on the way down.
//!
//! The protocol is one datagram per message to the Unix socket named in
//! `$NOTIFY_SOCKET` (sd_notify(3)); a name starting with `@` is in the
//! abstract namespace. It is a dozen lines, so it is written here rather
//! than taken as a dependency. Without `$NOTIFY_SOCKET` (not under systemd,
//! or `Type=simple`) every call does nothing.
//!
//! With `WatchdogSec=` in the unit, systemd sets `$WATCHDOG_USEC` and
//! restarts the service when no `WATCHDOG=1` arrives within it; the agent
//! sends one every half of it, and only while its record writer is alive,
//! so a writer that died takes the service down for a restart instead of
//! leaving an agent that accepts nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one sd_notify message; `false` when there is no systemd to tell
/// or the message could not be sent (logged at debug: nothing a technician
/// can act on).
pub fn notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let sent = send(&socket, state.as_bytes());
    if let Err(error) = &sent {
        tracing::debug!(%error, state, "sd_notify failed");
    }
    sent.is_ok()
}

fn send(socket: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let datagram = UnixDatagram::unbound()?;
    let name = socket.as_bytes();
    if let Some(abstract_name) = name.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
        datagram.send_to_addr(message, &address)?;
    } else {
        datagram.send_to(message, std::path::Path::new(socket))?;
    }
    Ok(())
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, if systemd
/// watches this process (`$WATCHDOG_PID`, when set, must be ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("kouan-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), b"WATCHDOG=1").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
