//! Free loopback ports, never handed out twice within one process.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

/// How many ephemeral ports [`free_port`] tries before giving up.
const MAX_PORT_ATTEMPTS: usize = 256;

/// Ports handed out by [`free_port`] in this process; never handed out again.
static HANDED_OUT_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Returns a loopback TCP port that is currently free.
///
/// The port is found by binding `127.0.0.1:0` and closing the listener again. A process-wide
/// set remembers every port handed out, so parallel tests in one process never get the same
/// port, even if the first user has not bound it yet. (Another process can still take the
/// port in between; [`EtcdClusterBuilder::build`](crate::EtcdClusterBuilder::build) retries
/// with fresh ports when etcd reports `address already in use`.)
///
/// # Errors
///
/// Binding fails, or no not-yet-handed-out port was found after many attempts.
pub fn free_port() -> io::Result<u16> {
    // Held across the bind so two concurrent callers cannot race on the same port.
    let mut handed_out = HANDED_OUT_PORTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for _ in 0..MAX_PORT_ATTEMPTS {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        drop(listener);
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!(
            "no fresh loopback port after {MAX_PORT_ATTEMPTS} attempts ({} already handed out)",
            handed_out.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn free_port_never_repeats() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let port = free_port().expect("free port");
            assert_ne!(port, 0);
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }

    #[test]
    fn free_port_never_repeats_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..50)
                        .map(|_| free_port().expect("free port"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for handle in handles {
            for port in handle.join().expect("thread") {
                assert!(seen.insert(port), "port {port} handed out twice");
            }
        }
    }
}
