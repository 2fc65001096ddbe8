//! The registry as a tower `Discover` on a real etcd: three TCP servers registered with the
//! port they listen on are discovered and balanced over by tower's p2c balancer; one of them
//! deregisters and stops, and every later request succeeds on the other two.
#![cfg(feature = "tower")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use darkrift_etcd::discover::{Discovery, DiscoveryStats, Filter};
use darkrift_etcd::{Connector, ServerInfo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{BoxError, Service, ServiceExt};

use common::{config, etcd, prefix, registered, PROMPT};

/// A tiny TCP server: for each line it reads, it answers with the port it listens on.
async fn port_server() -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                if stream.read_line(&mut line).await.is_ok() {
                    let _ = stream
                        .get_mut()
                        .write_all(format!("{port}\n").as_bytes())
                        .await;
                }
            });
        }
    });
    (port, task)
}

/// The client of one discovered server: a request is a connection, a line out, a line back
/// (the port that answered). Weighed by its requests in flight, as p2c needs a load.
type Client<S> = PendingRequests<S, CompleteOnResponse>;

fn client(
    server: &ServerInfo,
) -> Result<Client<impl Service<(), Response = u16, Error = BoxError>>, std::net::AddrParseError> {
    let addr: SocketAddr = format!("{}:{}", server.host, server.port).parse()?;
    let call = tower::service_fn(move |()| async move {
        let mut stream = BufReader::new(TcpStream::connect(addr).await?);
        stream.get_mut().write_all(b"which\n").await?;
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        Ok::<_, BoxError>(line.trim().parse::<u16>()?)
    });
    Ok(PendingRequests::new(call, CompleteOnResponse::default()))
}

/// One balanced request, bounded; it must succeed.
async fn request(balance: &mut impl Service<(), Response = u16, Error = BoxError>) -> u16 {
    let answer = tokio::time::timeout(PROMPT, async { balance.ready().await?.call(()).await });
    answer
        .await
        .expect("a ready server within the bound")
        .expect("the request succeeds")
}

/// Sends requests until `done` (bounded: the balancer takes discovery's changes when asked
/// for readiness, so requests are what moves them along), then `n` more; counts who answered
/// the `n`.
async fn hits(
    balance: &mut impl Service<(), Response = u16, Error = BoxError>,
    done: impl Fn() -> bool,
    n: usize,
) -> BTreeMap<u16, usize> {
    let deadline = Instant::now() + PROMPT;
    while !done() {
        assert!(Instant::now() < deadline, "discovery did not catch up");
        request(balance).await;
    }
    let mut hits = BTreeMap::new();
    for _ in 0..n {
        *hits.entry(request(balance).await).or_default() += 1;
    }
    hits
}

#[tokio::test]
async fn a_balancer_over_discovery_follows_joins_and_leaves() {
    let etcd = etcd().await;
    let prefix = prefix();
    let mut echo = Vec::new();
    for _ in 0..3 {
        let (port, task) = port_server().await;
        let (connector, _id) = registered(config(&etcd, &prefix), "echo", port).await;
        echo.push((port, task, connector));
    }
    // Another group, live and listening: the filter must keep it out.
    let (lobby_port, _lobby_task) = port_server().await;
    let _lobby = registered(config(&etcd, &prefix), "lobby", lobby_port).await;

    let connector = Connector::connect(config(&etcd, &prefix))
        .await
        .expect("connects");
    let events = connector.events().expect("events");
    let discovery = Discovery::try_new(events, Filter::group("echo"), client);
    let stats: DiscoveryStats = discovery.stats();
    let mut balance = Balance::new(discovery);

    // Every server of the group gets requests (90 at random: one gets none with p ≈ 1e-16).
    let synced = || stats.is_synced();
    let got = hits(&mut balance, synced, 90).await;
    let ports: BTreeSet<u16> = echo.iter().map(|(port, ..)| *port).collect();
    assert_eq!(
        got.keys().copied().collect::<BTreeSet<_>>(),
        ports,
        "{got:?}"
    );
    assert_eq!((stats.services(), stats.constructor_failures()), (3, 0));

    // One deregisters; once its Remove has reached the balancer it is stopped for good.
    let (gone_port, gone_task, gone) = echo.remove(1);
    gone.deregister_server().await.expect("deregisters");
    let two_left = || stats.services() == 2;
    hits(&mut balance, two_left, 0).await;
    gone_task.abort();
    let _ = gone_task.await;
    assert!(
        TcpStream::connect(("127.0.0.1", gone_port)).await.is_err(),
        "a request routed to the stopped server would fail"
    );

    // Every later request succeeds, on the other two only, and both still get some.
    let got = hits(&mut balance, || true, 90).await;
    let left: BTreeSet<u16> = echo.iter().map(|(port, ..)| *port).collect();
    assert_eq!(
        got.keys().copied().collect::<BTreeSet<_>>(),
        left,
        "{got:?}"
    );
    assert_eq!(stats.services(), 2);
}
