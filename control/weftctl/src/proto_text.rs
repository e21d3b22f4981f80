//! The human output of `weftctl`: protocol replies printed the way `ovs-ofctl` and
//! `ovs-appctl` print the same things, so that people (and their grep habits) find
//! what they expect. Pure functions of a reply; `-o json` bypasses them.

use std::fmt::Write as _;

use weft_proto::{
    DumpFlowsReply, FdbReply, FlowStats, PortState, PortsReply, ShowReply, StatsReply,
};

/// One `dump-flows` line, as `ovs-ofctl dump-flows` prints it:
/// ` cookie=0x0, duration=12.345s, table=0, n_packets=10, n_bytes=980, idle_age=3,
/// priority=100,ip,nw_dst=198.19.2.0/24 actions=output:2`.
pub fn flow_line(s: &FlowStats) -> String {
    let mut out = String::new();
    write_flow_line(&mut out, s);
    out
}

/// [`flow_line`] appended to `out` (without a newline): weftd's text dumps are the
/// same lines ([`weft_proto::write_flow_line`]).
pub fn write_flow_line(out: &mut String, s: &FlowStats) {
    s.write_line(out);
}

/// `dump-flows`: one [`flow_line`] per flow.
pub fn dump_flows(r: &DumpFlowsReply) -> String {
    let mut out = String::new();
    for s in &r.flows {
        out.push_str(&flow_line(s));
        out.push('\n');
    }
    out
}

/// `dump-ports`, like `ovs-ofctl dump-ports`: per port the receive and transmit
/// counters and drops, then the drops by reason; then the datapath's drops and cache.
pub fn dump_ports(s: &StatsReply) -> String {
    let mut out = format!("OFPST_PORT reply: {} ports\n", s.ports.len());
    for p in &s.ports {
        if p.state == PortState::Down {
            let _ = writeln!(
                out,
                "  port {:>2}({}): DOWN: {}",
                p.ofport,
                p.name,
                p.error.as_deref().unwrap_or("not open")
            );
            continue;
        }
        let _ = writeln!(
            out,
            "  port {:>2}({}): rx pkts={}, bytes={}, drop={}",
            p.ofport, p.name, p.rx_packets, p.rx_bytes, p.rx_dropped
        );
        let pad = " ".repeat(11 + p.ofport.to_string().len().max(2) + p.name.len());
        let _ = writeln!(
            out,
            "{pad}tx pkts={}, bytes={}, drop={}",
            p.tx_packets, p.tx_bytes, p.tx_dropped
        );
        if !p.drops.is_empty() {
            let list: Vec<String> = p.drops.iter().map(|(r, n)| format!("{r}={n}")).collect();
            let _ = writeln!(out, "{pad}drops: {}", list.join(", "));
        }
    }
    let drops: Vec<String> = s.drops.iter().map(|(r, n)| format!("{r}={n}")).collect();
    let _ = writeln!(
        out,
        "datapath: drops: {}",
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "datapath: cache hits={}, misses={}",
        s.cache_hits, s.cache_misses
    );
    out
}

/// `dump-tables`, like `ovs-ofctl dump-tables`: the tables in use with their flows,
/// lookups and matches.
pub fn dump_tables(s: &StatsReply) -> String {
    let mut out = format!("OFPST_TABLE reply: {} tables\n", s.tables.len());
    for t in &s.tables {
        let _ = writeln!(
            out,
            "  table {}: active={}, lookup={}, matched={}, missed={}",
            t.table, t.flows, t.lookups, t.matches, t.misses
        );
    }
    out
}

fn port_lines(out: &mut String, ports: &PortsReply) {
    for p in &ports.ports {
        let _ = write!(out, " {}({}): type={}", p.ofport, p.name, p.port_type);
        if !p.options.is_empty() {
            let _ = write!(out, " {}", p.options);
        }
        if let Some(m) = p.mtu {
            let _ = write!(out, " (inner mtu {m})");
        }
        if let Some(u) = &p.underlay {
            let _ = write!(out, " (underlay: {u})");
        }
        if p.state == PortState::Down {
            let _ = write!(out, " DOWN: {}", p.error.as_deref().unwrap_or("not open"));
        }
        out.push('\n');
    }
}

/// `show`, like `ovs-ofctl show`: the switch, then one line per port with its number,
/// name, type and options.
pub fn show(s: &ShowReply) -> String {
    let tables: Vec<String> = s
        .tables
        .iter()
        .map(|(t, n)| format!("table {t}: {n}"))
        .collect();
    let mut out = format!(
        "weftd {}: pipeline version {}, {} flows{}\n",
        s.software,
        s.pipeline_version,
        s.flows,
        if tables.is_empty() {
            String::new()
        } else {
            format!(" ({})", tables.join(", "))
        }
    );
    let _ = writeln!(out, " n_tables:254, n_ports:{}", s.ports.len());
    port_lines(
        &mut out,
        &PortsReply {
            ports: s.ports.clone(),
        },
    );
    out
}

/// `fdb-show`, like `ovs-appctl fdb/show`: port, VNI (where OVS has the VLAN), MAC,
/// age in seconds; entries learned on a tunnel also show the peer.
pub fn fdb_show(r: &FdbReply) -> String {
    let mut out = String::from(" port       VNI  MAC                Age\n");
    let mut entries: Vec<_> = r.entries.iter().collect();
    entries.sort_by_key(|e| (e.port, e.vni, e.mac.to_u64()));
    for e in entries {
        let _ = write!(
            out,
            "{:>5}  {:>8}  {}  {:>3}",
            e.port,
            e.vni,
            e.mac,
            e.age_ms / 1000
        );
        if let Some(ip) = e.remote {
            let _ = write!(out, "  remote={ip}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{} entries (capacity {}, {} evicted)",
        r.entries.len(),
        r.capacity,
        r.evictions
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use weft_flow::port::PortSpec;
    use weft_flow::{MacAddr, parse_flow};
    use weft_proto::{FdbEntry, PortCounters, PortInfo, TableCounters};

    #[test]
    fn dump_flows_like_ovs_ofctl() {
        let r = DumpFlowsReply {
            flows: vec![
                FlowStats {
                    flow: parse_flow("priority=100,ip,nw_dst=198.19.2.0/24 actions=output:2")
                        .unwrap(),
                    packets: 10,
                    bytes: 980,
                    duration_ms: 12345,
                    idle_age_ms: 3999,
                },
                FlowStats {
                    flow: parse_flow(
                        "cookie=0x2a,table=1,idle_timeout=10,hard_timeout=20,arp actions=normal",
                    )
                    .unwrap(),
                    packets: 0,
                    bytes: 0,
                    duration_ms: 5,
                    idle_age_ms: 5,
                },
            ],
        };
        assert_eq!(
            dump_flows(&r),
            " cookie=0x0, duration=12.345s, table=0, n_packets=10, n_bytes=980, idle_age=3, \
             priority=100,ip,nw_dst=198.19.2.0/24 actions=output:2\n \
             cookie=0x2a, duration=0.005s, table=1, n_packets=0, n_bytes=0, idle_timeout=10, \
             hard_timeout=20, idle_age=0, arp actions=normal\n"
        );
    }

    fn stats() -> StatsReply {
        StatsReply {
            ports: vec![
                PortCounters::new(1, "pod1", (10, 980), (9, 882), []),
                PortCounters::new(
                    2,
                    "tun0",
                    (5, 700),
                    (4, 600),
                    [("too_big".to_string(), 2), ("table_miss".to_string(), 1)],
                ),
            ],
            tables: vec![TableCounters {
                table: 0,
                flows: 3,
                lookups: 20,
                matches: 18,
                misses: 2,
            }],
            drops: BTreeMap::from([("table_miss".to_string(), 1)]),
            cache_hits: 15,
            cache_misses: 5,
            pipeline_version: 7,
        }
    }

    #[test]
    fn dump_ports_like_ovs_ofctl() {
        assert_eq!(
            dump_ports(&stats()),
            "OFPST_PORT reply: 2 ports\n\
             \x20 port  1(pod1): rx pkts=10, bytes=980, drop=0\n\
             \x20                tx pkts=9, bytes=882, drop=0\n\
             \x20 port  2(tun0): rx pkts=5, bytes=700, drop=1\n\
             \x20                tx pkts=4, bytes=600, drop=2\n\
             \x20                drops: table_miss=1, too_big=2\n\
             datapath: drops: table_miss=1\n\
             datapath: cache hits=15, misses=5\n"
        );
        assert_eq!(
            dump_tables(&stats()),
            "OFPST_TABLE reply: 1 tables\n  table 0: active=3, lookup=20, matched=18, missed=2\n"
        );
    }

    #[test]
    fn show_like_ovs_ofctl() {
        let pod = PortSpec::parse("pod1", &["type=tap", "ofport=1", "netns=pod1"]).unwrap();
        let tun = PortSpec::parse("tun0", &["type=vxlan", "ofport=2", "local=198.18.0.1"]).unwrap();
        let s = ShowReply {
            software: "0.1.0".into(),
            ports: vec![
                PortInfo::from_spec(&pod, None),
                PortInfo::from_spec(&tun, Some(1450)),
            ],
            flows: 5,
            tables: vec![(0, 3), (1, 2)],
            pipeline_version: 12,
        };
        assert_eq!(
            show(&s),
            "weftd 0.1.0: pipeline version 12, 5 flows (table 0: 3, table 1: 2)\n \
             n_tables:254, n_ports:2\n \
             1(pod1): type=tap netns=pod1\n \
             2(tun0): type=vxlan local=198.18.0.1 remote=flow key=flow (inner mtu 1450)\n"
        );
    }

    #[test]
    fn show_says_which_underlay_a_tunnel_port_uses() {
        let tun = PortSpec::parse("tun0", &["type=vxlan", "ofport=2", "local=198.18.0.1"]).unwrap();
        let mut p = PortInfo::from_spec(&tun, Some(1450));
        p.underlay = Some("sockets (tunnel_gso off)".into());
        let s = ShowReply {
            software: "0.1.0".into(),
            ports: vec![p],
            flows: 0,
            tables: vec![],
            pipeline_version: 1,
        };
        assert!(
            show(&s).ends_with(
                " 2(tun0): type=vxlan local=198.18.0.1 remote=flow key=flow (inner mtu 1450) \
                 (underlay: sockets (tunnel_gso off))\n"
            ),
            "{}",
            show(&s)
        );
    }

    #[test]
    fn a_port_that_is_down_says_so_and_why() {
        let pod = PortSpec::parse("c1", &["type=tap", "ofport=3", "netns=gone"]).unwrap();
        let why = "network namespace 'gone' (/var/run/netns/gone): No such file or directory";
        let s = ShowReply {
            software: "0.1.0".into(),
            ports: vec![PortInfo::from_spec(&pod, None).down(why)],
            flows: 0,
            tables: vec![],
            pipeline_version: 1,
        };
        assert_eq!(
            show(&s),
            format!(
                "weftd 0.1.0: pipeline version 1, 0 flows\n n_tables:254, n_ports:1\n \
                 3(c1): type=tap netns=gone DOWN: {why}\n"
            )
        );
        let json = serde_json::to_value(&s.ports[0]).unwrap();
        assert_eq!(json["state"], "down");
        assert_eq!(json["error"], why);
        let up = serde_json::to_value(PortInfo::from_spec(&pod, None)).unwrap();
        assert_eq!(up["state"], "up");
        assert!(up.get("error").is_none(), "{up}");

        let mut st = stats();
        let mut c = PortCounters::new(3, "c1", (0, 0), (0, 0), []);
        c.state = PortState::Down;
        c.error = Some(why.into());
        st.ports.push(c);
        let text = dump_ports(&st);
        assert!(
            text.contains(&format!("\n  port  3(c1): DOWN: {why}\n")),
            "{text}"
        );
    }

    #[test]
    fn fdb_show_like_ovs_appctl() {
        let r = FdbReply {
            entries: vec![
                FdbEntry {
                    port: 2,
                    port_name: Some("tun0".into()),
                    vni: 5001,
                    mac: MacAddr([2, 0, 0, 0, 2, 2]),
                    age_ms: 12_500,
                    remote: Some("198.18.0.2".parse().unwrap()),
                },
                FdbEntry {
                    port: 1,
                    port_name: None,
                    vni: 0,
                    mac: MacAddr([2, 0, 0, 0, 1, 2]),
                    age_ms: 300,
                    remote: None,
                },
            ],
            capacity: 8192,
            evictions: 4,
        };
        assert_eq!(
            fdb_show(&r),
            " port       VNI  MAC                Age\n    \
             1         0  02:00:00:00:01:02    0\n    \
             2      5001  02:00:00:00:02:02   12  remote=198.18.0.2\n\
             2 entries (capacity 8192, 4 evicted)\n"
        );
    }
}
