//! `weftctl`: the command-line client of `weftd`'s control socket, in the manner of
//! `ovs-ofctl` / `ovs-appctl`.
//!
//! Every command parses its arguments locally with the flow language's parser (so a
//! typo is reported with its line and column before anything is sent), sends one
//! request (see `weft_proto`) and prints the reply like the OVS tool would; `-o
//! json` prints the raw JSON result instead. Files (`add-flows`, `replace-flows`,
//! `del-flows --file`) are the exception: they are streamed to weftd as one bundle in
//! parts of about 1 MiB of flow text, which weftd parses (its errors name the file's
//! line), so a file of any length works; `dump-flows` prints its answer as it arrives. Any error is one line on stderr
//! (`weftctl: ...`) and exit status 1 (2 for a command line that does not parse).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use weft_flow::port::PortSpec;
use weft_flow::{Bundle, FlowModCommand, parse_filter, parse_flow_mod};
use weft_proto::client::{Client, ClientError, DEFAULT_SOCKET};
use weft_proto::{self as proto, CaptureArgs, NoArgs, Op, PartCommand};
use weftctl::proto_text;

#[derive(Parser, Debug)]
#[command(
    name = "weftctl",
    version,
    about = "Control a running weftd: ports, flows, counters, MAC table, traces",
    after_help = "Examples:\n  weftctl show\n  weftctl add-flow 'priority=100,ip,nw_dst=198.19.2.0/24 actions=output:tun0'\n  weftctl -o json dump-flows table=0"
)]
struct Cli {
    /// The control socket.
    #[arg(short = 's', long = "socket", value_name = "SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Output format: text (like ovs-ofctl) or json (the raw result, for scripts).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text, global = true)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the switch: ports with numbers, types and options; flow count; pipeline
    /// version.
    #[command(after_help = "Example:\n  weftctl show")]
    Show,
    /// Add a port: NAME type=tap|vxlan|geneve|ipip [OPTION=VALUE ...].
    #[command(
        name = "add-port",
        after_help = "Examples:\n  weftctl add-port pod1 type=tap netns=pod1 mtu=1450\n  weftctl add-port tun0 type=vxlan local=198.18.0.1 remote=flow key=flow"
    )]
    AddPort {
        /// The port's name.
        name: String,
        /// type=... and the type's options.
        #[arg(required = true, value_name = "OPTION=VALUE")]
        options: Vec<String>,
    },
    /// Delete a port.
    #[command(name = "del-port", after_help = "Example:\n  weftctl del-port pod1")]
    DelPort {
        /// The port's name.
        name: String,
    },
    /// Add one flow (a flow with the same table, priority and match is replaced).
    #[command(
        name = "add-flow",
        after_help = "Example:\n  weftctl add-flow 'table=0,priority=100,ip,nw_dst=198.19.2.0/24 actions=set_field:198.18.0.2->tun_dst,output:tun0'"
    )]
    AddFlow {
        /// The flow, in ovs-ofctl syntax (may be split over several arguments).
        #[arg(required = true, num_args = 1.., value_name = "FLOW")]
        flow: Vec<String>,
    },
    /// Add every flow of a file (or stdin) as one atomic bundle.
    #[command(
        name = "add-flows",
        after_help = "Examples:\n  weftctl add-flows flows.txt\n  printf 'priority=0 actions=normal\\n' | weftctl add-flows -"
    )]
    AddFlows {
        /// A flows file (one flow per line, # comments), or - for stdin.
        file: String,
    },
    /// Replace the actions of the flows a match selects.
    #[command(
        name = "mod-flows",
        after_help = "Examples:\n  weftctl mod-flows 'table=0,ip actions=drop'\n  weftctl mod-flows --strict 'priority=100,ip,nw_dst=198.19.2.0/24 actions=output:2'"
    )]
    ModFlows {
        /// Only the flow with exactly this match and priority.
        #[arg(long)]
        strict: bool,
        /// A match (with table=, cookie=, priority= for --strict) and actions=.
        #[arg(required = true, num_args = 1.., value_name = "FLOW")]
        flow: Vec<String>,
    },
    /// Delete the flows a match selects (all flows without a match), or those each
    /// line of a file selects (one atomic bundle).
    #[command(
        name = "del-flows",
        after_help = "Examples:\n  weftctl del-flows\n  weftctl del-flows table=1\n  weftctl del-flows --strict 'priority=100,ip,nw_dst=198.19.2.0/24'\n  weftctl del-flows --strict --file stale.txt"
    )]
    DelFlows {
        /// Only the flow with exactly this match and priority.
        #[arg(long)]
        strict: bool,
        /// A file (or - for stdin) of matches, one per line, deleted as one bundle.
        #[arg(long, value_name = "FILE", conflicts_with = "matches")]
        file: Option<String>,
        /// A match (with table=, cookie=, priority= for --strict).
        #[arg(num_args = 0.., value_name = "MATCH")]
        matches: Vec<String>,
    },
    /// Make the flows equal to a file's, changing only what differs (one atomic
    /// bundle; unchanged flows keep their counters).
    #[command(
        name = "replace-flows",
        after_help = "Examples:\n  weftctl replace-flows flows.txt\n  weftctl replace-flows --cookie 0x5745000000000000/0xffff000000000000 agent-flows.txt"
    )]
    ReplaceFlows {
        /// Replace only the flows whose cookie matches VALUE/MASK (VALUE alone: exactly);
        /// flows with other cookies are left alone, and the file's flows must match.
        #[arg(long, value_name = "VALUE/MASK")]
        cookie: Option<String>,
        /// A flows file, or - for stdin.
        file: String,
    },
    /// List flows with their counters, optionally those a match selects.
    #[command(
        name = "dump-flows",
        after_help = "Examples:\n  weftctl dump-flows\n  weftctl dump-flows table=0,ip\n  weftctl dump-flows cookie=0x10/0xf0"
    )]
    DumpFlows {
        /// A match (with table= and cookie=C/MASK).
        #[arg(num_args = 0.., value_name = "MATCH")]
        matches: Vec<String>,
    },
    /// Port counters: received, sent, dropped (and why); datapath drops and cache.
    #[command(name = "dump-ports", after_help = "Example:\n  weftctl dump-ports")]
    DumpPorts,
    /// Table counters: flows, lookups, matches.
    #[command(name = "dump-tables", after_help = "Example:\n  weftctl dump-tables")]
    DumpTables,
    /// The MAC table of the normal action (port, VNI, MAC, age).
    #[command(name = "fdb-show", after_help = "Example:\n  weftctl fdb-show")]
    FdbShow,
    /// Trace a packet through the pipeline, like ovs-appctl ofproto/trace.
    #[command(
        after_help = "Example:\n  weftctl trace in_port=pod1,tcp,nw_src=198.19.1.2,nw_dst=198.19.2.2,tp_dst=80"
    )]
    Trace {
        /// The packet's header fields, in flow syntax (fields not given are zero).
        #[arg(required = true, num_args = 1.., value_name = "PACKET")]
        packet: Vec<String>,
    },
    /// Compile a cluster description into one node's ports and flows (offline: no
    /// weftd needed). See docs/cluster.md.
    #[command(
        after_help = "Examples:\n  weftctl compile cluster.toml --node n1\n  weftctl compile cluster.toml --node n1 --flows | weftctl add-flows -\n  weftctl -o json compile cluster.toml --node n1"
    )]
    Compile {
        /// The cluster description (TOML).
        file: PathBuf,
        /// The node to compile for.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// Print only the flows (a flows file for add-flows).
        #[arg(long, conflicts_with = "ports")]
        flows: bool,
        /// Print only the add-port lines.
        #[arg(long)]
        ports: bool,
    },
    /// Capture the frames a port receives and sends into a pcap file.
    #[command(
        after_help = "Examples:\n  weftctl capture pod1 -w pod1.pcap -c 100\n  weftctl capture vx0 -w - | tcpdump -n -r -\n\nFrames of a tunnel port are captured without their tunnel header (as the\npipeline sees them). Capturing never slows the datapath: if the reader falls\nbehind, captured copies are skipped (and counted), not traffic."
    )]
    Capture {
        /// The port.
        port: String,
        /// The pcap file to write (`-`: stdout, the default).
        #[arg(short = 'w', value_name = "FILE")]
        file: Option<PathBuf>,
        /// Stop after N packets.
        #[arg(short = 'c', value_name = "N")]
        count: Option<u64>,
        /// Stop after S seconds.
        #[arg(short = 't', long = "seconds", value_name = "S")]
        seconds: Option<u64>,
        /// Bytes kept of each frame.
        #[arg(long = "snaplen", value_name = "BYTES", default_value_t = 65535)]
        snaplen: u32,
    },
}

/// One line, the `weftctl: ` prefix added by main.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

/// `capture`: writes a pcap (header first, then each frame as it arrives, flushed, so
/// that `tcpdump -r -` can follow along) and a one-line summary on stderr.
fn capture(
    socket: &std::path::Path,
    args: CaptureArgs,
    file: Option<&std::path::Path>,
) -> Result<(), Failure> {
    use std::io::{IsTerminal, Write};
    let to_stdout = file.is_none_or(|p| p.as_os_str() == "-");
    if to_stdout && std::io::stdout().is_terminal() {
        return Err(Failure(
            "not writing a pcap to a terminal: use -w FILE, or pipe it (-w - | tcpdump -r -)"
                .into(),
        ));
    }
    let mut client = Client::connect(socket)?;
    // A quiet port sends nothing for a while: wait as long as the capture may last.
    client.set_timeout(args.seconds.map(|s| std::time::Duration::from_secs(s + 10)))?;
    let mut out: Box<dyn Write> = match file {
        None => Box::new(std::io::stdout().lock()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdout().lock()),
        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| {
            Failure(format!(
                "{}: {}",
                p.display(),
                weft_proto::client::io_text(&e)
            ))
        })?),
    };
    let snaplen = args.snaplen.unwrap_or(65535);
    weft_proto::pcap::write_header(&mut out, snaplen)?;
    out.flush()?;
    let mut written = 0u64;
    let mut failure: Option<Failure> = None;
    let done = client.capture(args, |f| {
        let Some(data) = proto::from_hex(&f.data) else {
            failure = Some(Failure("weftd sent a frame that is not hex".into()));
            return false;
        };
        let r = weft_proto::pcap::write_record(&mut out, f.ts_ns, f.len, &data)
            .and_then(|()| out.flush());
        match r {
            Ok(()) => {
                written += 1;
                true
            }
            Err(e) => {
                // A closed pipe (`| head`) ends the capture quietly.
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    failure = Some(Failure(format!("writing the capture: {e}")));
                }
                false
            }
        }
    })?;
    if let Some(f) = failure {
        return Err(f);
    }
    match done {
        Some(d) => eprintln!(
            "weftctl: captured {} frames ({} copies skipped because the capture fell behind)",
            d.captured, d.skipped
        ),
        None => eprintln!("weftctl: captured {written} frames"),
    }
    Ok(())
}

/// A flows file (or stdin for `-`), read as it is sent.
fn open_input(file: &str) -> Result<Box<dyn BufRead>, Failure> {
    if file == "-" {
        Ok(Box::new(std::io::stdin().lock()))
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| Failure(format!("{file}: {}", weft_proto::client::io_text(&e))))?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
    }
}

/// `add-flows`, `replace-flows`, `del-flows --file`: the file streamed to weftd as one
/// bundle in parts (weftd parses them; an error names the file's line).
fn stream_file(
    socket: &std::path::Path,
    file: &str,
    command: PartCommand,
    replace: bool,
    cookie: Option<weft_flow::Masked<u64>>,
    output: Format,
) -> Result<(), Failure> {
    let input = open_input(file)?;
    let mut client = Client::connect(socket)?;
    let reply = client
        .stream_bundle_with(input, command, replace, cookie)
        .map_err(|e| match e {
            ClientError::Input(io) => Failure(format!(
                "{}: {}",
                if file == "-" { "reading stdin" } else { file },
                weft_proto::client::io_text(&io)
            )),
            other => Failure::from(other),
        })?;
    for w in &reply.warnings {
        eprintln!("weftctl: warning: {w}");
    }
    if output == Format::Json {
        print_json(&serde_json::to_value(&reply)?);
    }
    Ok(())
}

/// `dump-flows`: prints each part as it arrives (text like ovs-ofctl, or with `-o
/// json` one JSON object per flow per line). weftd formats both: the text parts are
/// its `dump-flows` lines and each flow's JSON is copied as weftd wrote it, so
/// printing is copying bytes.
fn dump_flows(
    socket: &std::path::Path,
    filter: weft_flow::FlowFilter,
    output: Format,
) -> Result<(), Failure> {
    use std::io::Write;
    let mut client = Client::connect(socket)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut closed = false;
    // A closed pipe (`| head`) ends the output quietly.
    if output == Format::Json {
        client.dump_flows_json_each(filter, |flow| {
            closed = out
                .write_all(flow.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .is_err();
            !closed
        })?;
    } else {
        client.dump_flows_text_each(filter, |text| {
            closed = out.write_all(text.as_bytes()).is_err();
            !closed
        })?;
    }
    if !closed {
        let _ = out.flush();
    }
    Ok(())
}

/// Prints to stdout; a closed pipe (`| head`) ends the output quietly.
fn print_text(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn print_json(v: &serde_json::Value) {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| Failure(format!("unexpected reply from weftd: {e}")))
}

fn bundle_op(b: Bundle) -> Op {
    Op::Bundle(proto::BundleArgs {
        changes: b.changes,
        lines: b.lines,
        text: None,
    })
}

/// `compile`: a cluster description to one node's ports, pod settings and flows.
fn compile(
    file: &std::path::Path,
    node: &str,
    flows: bool,
    ports: bool,
    output: Format,
) -> Result<(), Failure> {
    let plan = weftctl::cluster::Cluster::from_file(file)?.plan(node)?;
    if output == Format::Json {
        print_json(&serde_json::to_value(&plan)?);
    } else if flows {
        print_text(&plan.flows_text());
    } else if ports {
        print_text(&plan.ports_text());
    } else {
        print_text(&plan.to_text());
    }
    Ok(())
}

/// Builds the request (parsing everything locally first), sends it, prints the reply.
fn run(cli: Cli) -> Result<(), Failure> {
    let op = match &cli.command {
        Command::Show => Op::Show(NoArgs {}),
        Command::Compile {
            file,
            node,
            flows,
            ports,
        } => return compile(file, node, *flows, *ports, cli.output),
        Command::AddPort { name, options } => {
            let args: Vec<&str> = options.iter().map(String::as_str).collect();
            Op::AddPort(proto::AddPort {
                port: Some(PortSpec::parse(name, &args)?),
                text: None,
            })
        }
        Command::DelPort { name } => Op::DelPort(proto::DelPort { name: name.clone() }),
        Command::AddFlow { flow } => bundle_op(Bundle::new(vec![parse_flow_mod(
            FlowModCommand::Add,
            &flow.join(" "),
        )?])),
        Command::AddFlows { file } => {
            return stream_file(&cli.socket, file, PartCommand::Add, false, None, cli.output);
        }
        Command::ModFlows { strict, flow } => {
            let cmd = if *strict {
                FlowModCommand::ModifyStrict
            } else {
                FlowModCommand::Modify
            };
            bundle_op(Bundle::new(vec![parse_flow_mod(cmd, &flow.join(" "))?]))
        }
        Command::DelFlows {
            strict,
            file: Some(file),
            ..
        } => {
            let cmd = if *strict {
                PartCommand::DeleteStrict
            } else {
                PartCommand::Delete
            };
            return stream_file(&cli.socket, file, cmd, false, None, cli.output);
        }
        Command::DelFlows {
            strict, matches, ..
        } => {
            let cmd = if *strict {
                FlowModCommand::DeleteStrict
            } else {
                FlowModCommand::Delete
            };
            bundle_op(Bundle::new(vec![parse_flow_mod(cmd, &matches.join(" "))?]))
        }
        Command::ReplaceFlows { cookie, file } => {
            let cookie = cookie
                .as_deref()
                .map(weft_proto::parse_cookie_mask)
                .transpose()
                .map_err(|e| Failure(format!("--cookie: {e}")))?;
            return stream_file(
                &cli.socket,
                file,
                PartCommand::Add,
                true,
                cookie,
                cli.output,
            );
        }
        Command::DumpFlows { matches } => {
            return dump_flows(&cli.socket, parse_filter(&matches.join(" "))?, cli.output);
        }
        Command::DumpPorts | Command::DumpTables => Op::Stats(NoArgs {}),
        Command::FdbShow => Op::Fdb(NoArgs {}),
        Command::Trace { packet } => {
            let packet = packet.join(",");
            proto::trace_packet(&packet)?;
            Op::Trace(proto::TraceArgs { packet })
        }
        Command::Capture {
            port,
            file,
            count,
            seconds,
            snaplen,
        } => {
            return capture(
                &cli.socket,
                CaptureArgs {
                    port: port.clone(),
                    count: *count,
                    snaplen: Some(*snaplen),
                    seconds: *seconds,
                },
                file.as_deref(),
            );
        }
    };
    let mut client = Client::connect(&cli.socket)?;
    let result = client.call(op)?;
    if let Some(w) = result.get("warnings").and_then(|w| w.as_array()) {
        // Flow changes were applied; what looks wrong in them goes to stderr (also
        // with -o json, whose stdout stays one JSON value).
        for w in w.iter().filter_map(|w| w.as_str()) {
            eprintln!("weftctl: warning: {w}");
        }
    }
    if cli.output == Format::Json {
        print_json(&result);
        return Ok(());
    }
    let text = match &cli.command {
        Command::Show => proto_text::show(&typed(result)?),
        Command::DumpPorts => proto_text::dump_ports(&typed(result)?),
        Command::DumpTables => proto_text::dump_tables(&typed(result)?),
        Command::FdbShow => proto_text::fdb_show(&typed(result)?),
        Command::Trace { .. } => typed::<proto::TraceReply>(result)?.text,
        Command::AddPort { name, .. } => {
            let r: proto::AddPortReply = typed(result)?;
            format!("{name}: port {}\n", r.ofport)
        }
        // Like ovs-ofctl: flow changes print nothing on success.
        _ => String::new(),
    };
    print_text(&text);
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                eprintln!("weftctl: a command is required (see weftctl --help)");
                return ExitCode::from(2);
            }
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad command line")
                .trim_start_matches("error: ");
            eprintln!("weftctl: {first} (see weftctl --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("weftctl: {}", msg.lines().next().unwrap_or_default());
            ExitCode::FAILURE
        }
    }
}
