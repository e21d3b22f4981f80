//! `weft-agent`: run the node's controller, or print its status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};

use weft_agent::agent::Controller;
use weft_agent::config::{Config, DEFAULT_CONFIG, Settings};
use weft_agent::metrics::Metrics;
use weft_agent_proto as ap;

#[derive(Parser)]
#[command(
    name = "weft-agent",
    version,
    about = "Weft's per-node controller: the cluster's state in etcd made into weftd's flows",
    after_help = "Examples:\n  weft-agent --config /etc/weft/agent.toml\n  weft-agent --node-name n1 --public-ip 198.18.0.1 --etcd-endpoints http://198.18.0.1:2379\n  weft-agent status\n  weft-agent status -o json"
)]
struct Cli {
    /// The settings file (TOML); every key is also a flag, which wins.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the node, its subnet, peers, endpoints, last sync and etcd's health.
    Status {
        /// `text` (default) or `json`.
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
        /// The agent's socket (default: the settings' `socket`, else
        /// /run/weft/agent.sock).
        #[arg(long = "socket", value_name = "PATH")]
        status_socket: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(p) => Settings::from_file(p, true),
        None => Settings::from_file(std::path::Path::new(DEFAULT_CONFIG), false),
    };
    let settings = match file {
        Ok(f) => f.overlay(cli.settings),
        Err(e) => return fail(&e),
    };
    match cli.command {
        Some(Command::Status {
            output,
            status_socket,
        }) => {
            let mut settings = settings;
            if status_socket.is_some() {
                settings.socket = status_socket;
            }
            status(settings, &output)
        }
        None => run(settings),
    }
}

fn fail(e: &str) -> ExitCode {
    eprintln!("weft-agent: {e}");
    ExitCode::FAILURE
}

fn status(s: Settings, output: &str) -> ExitCode {
    if output != "text" && output != "json" {
        return fail(&format!("unknown output '{output}' (text or json)"));
    }
    let path = s.socket.unwrap_or_else(|| ap::DEFAULT_SOCKET.into());
    let r: Result<ap::StatusReply, _> = ap::Client::connect(&path, Duration::from_secs(5))
        .and_then(|mut c| c.call(&ap::Request::Status));
    let st = match r {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
    } else {
        print!("{}", status_text(&st));
    }
    if st.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn status_text(s: &ap::StatusReply) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let _ = writeln!(o, "node:      {}", s.node);
    let _ = writeln!(
        o,
        "ready:     {}{}",
        if s.ready { "yes" } else { "no" },
        s.reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    let _ = writeln!(o, "subnet:    {}", dash(s.subnet.map(|v| v.to_string())));
    let _ = writeln!(o, "gateway:   {}", dash(s.gateway.map(|v| v.to_string())));
    let _ = writeln!(o, "pod cidr:  {}", dash(s.pod_cidr.map(|v| v.to_string())));
    let _ = writeln!(o, "mtu:       {}", dash(s.mtu.map(|v| v.to_string())));
    let _ = writeln!(
        o,
        "etcd:      {}",
        if s.etcd.reachable {
            "reachable".to_string()
        } else {
            format!(
                "unreachable: {}",
                s.etcd.error.as_deref().unwrap_or("not connected")
            )
        }
    );
    let age = s.last_sync.map(|t| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("{}s ago", now.saturating_sub(t))
    });
    let _ = writeln!(o, "last sync: {}", dash(age));
    let _ = writeln!(o, "peers ({}):", s.peers.len());
    for p in &s.peers {
        let _ = writeln!(o, "  {:<20} {:<16} {}", p.node, p.public_ip, p.subnet);
    }
    let _ = writeln!(o, "endpoints ({}):", s.endpoints.len());
    for e in &s.endpoints {
        let addrs: Vec<String> = e.addresses.iter().map(|a| a.to_string()).collect();
        let pod = match (&e.pod_namespace, &e.pod_name) {
            (Some(ns), Some(n)) => format!(" {ns}/{n}"),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "  {}:{} port {} {} {}{pod}",
            e.attachment.container_id,
            e.attachment.ifname,
            e.port,
            addrs.join(","),
            e.mac
        );
    }
    o
}

fn run(s: Settings) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match Config::resolve(s) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("runtime: {e}")),
    };
    rt.block_on(async move {
        let metrics = Arc::new(Metrics::default());
        let status = Arc::new(Mutex::new(ap::StatusReply {
            ready: false,
            reason: Some("starting".into()),
            node: cfg.node_name.clone(),
            subnet: None,
            gateway: None,
            pod_cidr: None,
            mtu: None,
            peers: Vec::new(),
            endpoints: Vec::new(),
            last_sync: None,
            etcd: ap::EtcdHealth {
                reachable: false,
                error: None,
            },
        }));
        let listener = match weft_agent::server::bind(&cfg.socket) {
            Ok(l) => l,
            Err(e) => return fail(&e),
        };
        if let Some(addr) = cfg.metrics
            && let Err(e) = weft_agent::metrics::serve(addr, metrics.registry()).await
        {
            return fail(&e);
        }
        let (etx, erx) = tokio::sync::mpsc::channel(1024);
        let (ctx, crx) = tokio::sync::mpsc::channel(64);
        tracing::info!(node = %cfg.node_name, public_ip = %cfg.public_ip, etcd = %cfg.etcd_endpoints.join(","), "weft-agent starting");
        let held = weft_agent::etcd::Held::default();
        let session = tokio::spawn(weft_agent::etcd::run(cfg.clone(), etx, held.clone()));
        tokio::spawn(weft_agent::server::serve(listener, status.clone(), ctx));
        let socket = cfg.socket.clone();
        let controller = Controller::new(cfg, status, metrics);
        tokio::select! {
            () = controller.run(erx, crx) => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping (flows and ports stay)"),
            _ = term() => tracing::info!("terminated; stopping (flows and ports stay)"),
        }
        // A clean stop leaves the cluster now: the lease's keys (node, subnet,
        // endpoints) go at once. Flows and ports stay in weftd. The session goes first,
        // so it does not register again on a new lease.
        session.abort();
        match weft_agent::etcd::revoke(&held, Duration::from_secs(2)).await {
            Ok(Some(l)) => tracing::info!(lease = format!("{l:x}"), "revoked the node's lease"),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}; the node's keys go when the lease expires"),
        }
        let _ = std::fs::remove_file(socket);
        ExitCode::SUCCESS
    })
}

async fn term() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
