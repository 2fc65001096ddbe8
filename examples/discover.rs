//! A load-balanced group through the registry and tower (feature `tower`).
//!
//! `serve` runs a tiny HTTP server on 127.0.0.1 that registers in the group and answers every
//! request with its id. `client` discovers the group's servers (`Discovery`: joins become
//! `Change::Insert` of an HTTP client service, leaves `Change::Remove`), balances a request
//! every 500 ms over them with tower's p2c balancer, and prints who answered. Start or stop
//! (Ctrl-C deregisters) servers while the client runs and watch it follow.
//!
//! ```text
//! cargo run --features tower --example discover -- serve --port 8081   # and 8082, 8083
//! cargo run --features tower --example discover -- client
//! ```

use std::convert::Infallible;
use std::error::Error;
use std::time::Duration;

use clap::{Parser, Subcommand};
use darkrift_etcd::discover::{Discovery, Filter};
use darkrift_etcd::{Connector, ConnectorConfig, ServerInfo};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::balance::p2c::Balance;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{Service, ServiceExt};

type BoxError = Box<dyn Error + Send + Sync>;

#[derive(Parser)]
struct Args {
    /// etcd endpoints, comma separated.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The group served and discovered.
    #[arg(long, default_value = "web")]
    group: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// An HTTP server that registers in the group.
    Serve {
        #[arg(long)]
        port: u16,
    },
    /// Balances requests over the group's servers.
    Client,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let connector = Connector::connect(ConnectorConfig::new(args.etcd)).await?;
    match args.mode {
        Mode::Serve { port } => serve(connector, &args.group, port).await,
        Mode::Client => client(connector, &args.group).await,
    }
}

async fn serve(connector: Connector, group: &str, port: u16) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let id = connector
        .register_server(group, "127.0.0.1", port, std::collections::BTreeMap::new())
        .await?;
    println!("server {id} serves http://127.0.0.1:{port}/ in group {group}");
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let reply = hyper::service::service_fn(move |_request| async move {
                    let body = Full::new(Bytes::from(format!("server {id}")));
                    Ok::<_, Infallible>(hyper::Response::new(body))
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), reply);
                let _ = conn.await; // a client that hangs up is not this server's problem
            });
        }
    };
    tokio::select! {
        () = accept => {}
        _ = darkrift_etcd::signal::shutdown_signal() => {}
    }
    // Peers (and the client's balancer) drop this server at once, not one TTL later.
    connector.deregister_server().await?;
    Ok(())
}

async fn client(connector: Connector, group: &str) -> Result<(), BoxError> {
    let http: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    // One service per server: a GET of its URL, weighed by its requests in flight. A host
    // that is not a valid URI authority skips that server (logged, counted), nothing else.
    let make = move |server: &ServerInfo| {
        let uri: hyper::Uri = format!("http://{}:{}/", server.host, server.port).parse()?;
        let http = http.clone();
        let get = tower::service_fn(move |()| {
            let request = http.get(uri.clone());
            async move {
                let body = request.await?.into_body().collect().await?.to_bytes();
                Ok::<_, BoxError>(String::from_utf8_lossy(&body).into_owned())
            }
        });
        Ok::<_, hyper::http::uri::InvalidUri>(PendingRequests::new(
            get,
            CompleteOnResponse::default(),
        ))
    };
    let discovery = Discovery::try_new(connector.events()?, Filter::group(group), make);
    let stats = discovery.stats();
    // The changes as the balancer takes them: a Discovery is a Stream, so it composes.
    let discovery = discovery.inspect(|change| match change {
        Ok(Change::Insert(id, _)) => println!("+ server {id}"),
        Ok(Change::Remove(id)) => println!("- server {id}"),
        Err(never) => match *never {},
    });
    let mut balance = Balance::new(discovery);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        // With no server yet the balancer is not ready: bound the wait, say so, go on.
        match tokio::time::timeout(Duration::from_secs(2), balance.ready()).await {
            Ok(ready) => match ready?.call(()).await {
                Ok(reply) => println!("{reply} answered ({} servers)", stats.services()),
                Err(e) => println!("request failed: {e}"),
            },
            Err(_) => println!("no server of group {group} yet"),
        }
    }
}
