//! A TCP fault proxy for tests: sits between one client and one etcd member on loopback and
//! can cut, stall and restore that client's connection.
//!
//! - **cut**: every open connection is closed at once and new ones are accepted and closed
//!   immediately (a crashed route: the client sees resets and refusals);
//! - **stall**: connections stay open but no byte is forwarded in either direction (a black
//!   hole: the client sees silence, the hardest case for a watch or a keep-alive);
//! - **slow**: every chunk is forwarded, each one late by a fixed delay (a member that answers,
//!   but seconds late: an overloaded disk, a congested link);
//! - **restore**: bytes flow again (data held during a stall is delivered, as TCP would after
//!   a partition heals).
//!
//! Bounded: it binds 127.0.0.1 only, refuses non-loopback targets, serves at most
//! [`MAX_CONNECTIONS`] connections at once, and stops every task when dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward.
    Pass,
    /// Close everything, refuse new connections.
    Cut,
    /// Hold every byte.
    Stall,
    /// Forward every chunk this late.
    Slow(std::time::Duration),
}

/// A running fault proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    cancel: CancellationToken,
    open: Arc<AtomicUsize>,
    /// Connections opened through the proxy so far.
    opened: watch::Sender<u64>,
}

impl FaultProxy {
    /// Starts a proxy to `target` (`http://127.0.0.1:PORT` or `127.0.0.1:PORT`).
    ///
    /// # Errors
    /// A target that is not a loopback address, or a bind failure.
    pub async fn start(target: &str) -> io::Result<Self> {
        let authority = target
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let target: SocketAddr = authority
            .trim_end_matches('/')
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{target}: {e}")))?;
        if !target.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the fault proxy only targets loopback",
            ));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let cancel = CancellationToken::new();
        let open = Arc::new(AtomicUsize::new(0));
        let (opened, _) = watch::channel(0);
        tokio::spawn(accept_loop(
            listener,
            target,
            mode_rx,
            cancel.clone(),
            (open.clone(), opened.clone()),
        ));
        Ok(FaultProxy {
            addr,
            mode,
            cancel,
            open,
            opened,
        })
    }

    /// The endpoint clients should use, `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection and refuses new ones until [`FaultProxy::restore`].
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Holds every byte until [`FaultProxy::restore`] (connections stay open).
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Forwards every chunk `delay` late until [`FaultProxy::restore`].
    pub fn slow(&self, delay: std::time::Duration) {
        self.mode.send_replace(Mode::Slow(delay));
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// The current mode.
    #[must_use]
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Connections currently open through the proxy.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Resolves once a client has opened a connection through the proxy (in any mode but
    /// `Cut`): the client is known to be dialling.
    pub async fn connection_opened(&self) {
        let mut opened = self.opened.subscribe();
        // The sender lives in `self`: the wait ends only by a connection.
        let _ = opened.wait_for(|n| *n > 0).await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    cancel: CancellationToken,
    (open, opened): (Arc<AtomicUsize>, watch::Sender<u64>),
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        if *mode.borrow() == Mode::Cut || open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            drop(client);
            continue;
        }
        let mode = mode.clone();
        let cancel = cancel.clone();
        let open = open.clone();
        let opened = opened.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            open.fetch_add(1, Ordering::Relaxed);
            opened.send_modify(|n| *n += 1);
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::select! {
                () = cancel.cancelled() => {}
                () = pump(cr, sw, mode.clone()) => {}
                () = pump(sr, cw, mode.clone()) => {}
                () = until_cut(mode) => {}
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Resolves when the mode becomes `Cut` (or the proxy is gone).
async fn until_cut(mut mode: watch::Receiver<Mode>) {
    let _ = mode.wait_for(|m| *m == Mode::Cut).await;
}

/// Copies bytes one way, holding them while the mode is `Stall`. Ends on EOF, error or cut.
///
/// `Slow(d)` is a latency, not a bandwidth limit: each chunk is forwarded `d` after it was
/// read, chunks read meanwhile travel alongside it (a reader and a writer joined by a queue),
/// as on a long link; a member that answers late does not get later with every byte.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let (queue, mut queued) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(1024);
    let mut writer_mode = mode.clone();
    let writer = async move {
        while let Some((due, bytes)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if writer_mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
                return;
            }
            if *writer_mode.borrow() == Mode::Cut || to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // Stalled: read nothing, so the sender's window fills up as on a dead link.
            if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
                return;
            }
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                changed = mode.changed() => {
                    if changed.is_err() { return; }
                    continue;
                }
            };
            let delay = match *mode.borrow() {
                Mode::Slow(delay) => delay,
                _ => std::time::Duration::ZERO,
            };
            let due = tokio::time::Instant::now() + delay;
            if queue.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    // The writer failing ends the direction at once; the reader ending (EOF, error) lets
    // the writer deliver what is queued first (it ends when the queue is drained).
    tokio::pin!(writer);
    tokio::pin!(reader);
    tokio::select! {
        () = &mut writer => {}
        () = &mut reader => writer.await,
    }
}
