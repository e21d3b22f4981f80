//! The flow text syntax: every match field and action parsed and printed, masks,
//! prerequisites, typo suggestions, flows files, and JSON round trips.

use std::net::{Ipv4Addr, Ipv6Addr};

use weft_flow::parse::{SUGGEST_MAX_CANDIDATES, SUGGEST_MAX_LEN, did_you_mean};
use weft_flow::{
    Action, Bundle, EXCERPT_CHARS, Field, FieldRange, Flow, FlowError, FlowFilter, FlowMod,
    FlowModCommand, MacAddr, Masked, Match, ParseErrorKind, PortRef, excerpt, parse_actions,
    parse_bundle_file, parse_filter, parse_flow, parse_flow_mod, parse_flows_file,
};

fn flow(s: &str) -> Flow {
    parse_flow(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Parses, checks the canonical text, and checks that the canonical text parses back
/// to the same flow.
fn canon(s: &str, want: &str) -> Flow {
    let f = flow(s);
    let printed = f.to_string();
    assert_eq!(printed, want, "printing {s}");
    assert_eq!(flow(&printed), f, "re-parsing {printed}");
    f
}

fn err(s: &str) -> String {
    match parse_flow(s) {
        Ok(f) => panic!("{s} parsed as {f:?}"),
        Err(e) => e.to_string(),
    }
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn defaults_and_settings() {
    let f = canon("actions=drop", "actions=drop");
    assert_eq!(f, Flow::default());
    assert_eq!(f.priority, 32768);
    let f = canon(
        "hard_timeout=20 idle_timeout=10, priority=100,table=3,cookie=0x10 actions=normal",
        "cookie=0x10,table=3,priority=100,idle_timeout=10,hard_timeout=20 actions=normal",
    );
    assert_eq!(
        (
            f.cookie,
            f.table,
            f.priority,
            f.idle_timeout,
            f.hard_timeout
        ),
        (16, 3, 100, 10, 20)
    );
    // Empty action list is drop.
    assert!(flow("ip actions=").actions.is_empty());
    assert_eq!(flow("ip actions=").to_string(), "ip actions=drop");
    assert!(err("table=254 actions=drop").contains("table 254 is out of range"));
    assert!(err("priority=65536 actions=drop").contains("invalid value '65536' for priority"));
}

#[test]
fn in_port_number_and_name() {
    let f = canon("in_port=3 actions=output:4", "in_port=3 actions=output:4");
    assert_eq!(f.matches.in_port, Some(PortRef::Number(3)));
    let f = canon("in_port=0x10 actions=drop", "in_port=16 actions=drop");
    assert_eq!(f.matches.in_port, Some(PortRef::Number(16)));
    let f = canon(
        "in_port=vxlan0,actions=output:pod-a.1",
        "in_port=vxlan0 actions=output:pod-a.1",
    );
    assert_eq!(f.matches.in_port, Some(PortRef::Name("vxlan0".into())));
    assert_eq!(
        f.actions,
        vec![Action::Output(PortRef::Name("pod-a.1".into()))]
    );
    assert!(err("in_port=a/b actions=drop").contains("expected a port number or name"));
}

#[test]
fn ethernet_fields() {
    let f = canon(
        "dl_src=AA:BB:CC:DD:EE:01,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=drop",
        "dl_src=aa:bb:cc:dd:ee:01,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=drop",
    );
    assert_eq!(
        f.matches.dl_src,
        Some(Masked::exact(mac("aa:bb:cc:dd:ee:01")))
    );
    assert_eq!(
        f.matches.dl_dst,
        Some(Masked::new(
            mac("01:00:00:00:00:00"),
            mac("01:00:00:00:00:00")
        ))
    );
    // eth_* aliases.
    assert_eq!(flow("eth_src=aa:bb:cc:dd:ee:01 actions=drop").matches, {
        Match {
            dl_src: Some(Masked::exact(mac("aa:bb:cc:dd:ee:01"))),
            ..Match::default()
        }
    });
    // Mask normalises the value.
    let f = flow("dl_dst=ff:ff:ff:ff:ff:ff/ff:ff:ff:00:00:00 actions=drop");
    assert_eq!(f.matches.dl_dst.unwrap().value, mac("ff:ff:ff:00:00:00"));
    // dl_type in hex and decimal; known types print as shorthands.
    canon("dl_type=0x88cc actions=drop", "dl_type=0x88cc actions=drop");
    assert_eq!(flow("dl_type=2048 actions=drop"), flow("ip actions=drop"));
    canon("dl_type=0x0806 actions=drop", "arp actions=drop");
    assert!(err("dl_type=0x800/0xff00 actions=drop").contains("dl_type does not take a mask"));
    assert!(err("dl_src=aa:bb:cc actions=drop").contains("invalid value 'aa:bb:cc' for dl_src"));
}

#[test]
fn shorthands() {
    for (s, dl, proto) in [
        ("ip", 0x0800, None),
        ("ipv6", 0x86dd, None),
        ("arp", 0x0806, None),
        ("icmp", 0x0800, Some(1)),
        ("icmp6", 0x86dd, Some(58)),
        ("tcp", 0x0800, Some(6)),
        ("udp", 0x0800, Some(17)),
        ("tcp6", 0x86dd, Some(6)),
        ("udp6", 0x86dd, Some(17)),
    ] {
        let f = canon(&format!("{s} actions=drop"), &format!("{s} actions=drop"));
        assert_eq!(f.matches.dl_type, Some(Masked::exact(dl)), "{s}");
        assert_eq!(f.matches.nw_proto, proto.map(Masked::exact), "{s}");
    }
    // Explicit fields print as the shorthand.
    canon("dl_type=0x0800,nw_proto=6 actions=drop", "tcp actions=drop");
    canon("ip,nw_proto=47 actions=drop", "ip,nw_proto=47 actions=drop");
    canon("ipv6,nw_proto=58 actions=drop", "icmp6 actions=drop");
    // Repeating a shorthand is fine; contradicting one is not.
    canon("tcp,ip actions=drop", "tcp actions=drop");
    assert!(err("tcp,udp actions=drop").contains("nw_proto is given twice with different values"));
    assert!(err("ip,arp actions=drop").contains("dl_type is given twice"));
    assert!(err("tcp=1 actions=drop").contains("tcp is a shorthand and takes no value"));
}

#[test]
fn arp_fields() {
    let f = canon(
        "arp,arp_op=2,arp_spa=198.19.1.0/24,arp_tpa=198.19.1.1,arp_sha=aa:bb:cc:dd:ee:01,arp_tha=00:00:00:00:00:00/ff:ff:ff:00:00:00 actions=drop",
        "arp,arp_op=2,arp_spa=198.19.1.0/24,arp_tpa=198.19.1.1,arp_sha=aa:bb:cc:dd:ee:01,arp_tha=00:00:00:00:00:00/ff:ff:ff:00:00:00 actions=drop",
    );
    let m = &f.matches;
    assert_eq!(m.arp_op, Some(Masked::exact(2)));
    assert_eq!(
        m.arp_spa,
        Some(Masked::new(ip("198.19.1.0"), ip("255.255.255.0")))
    );
    assert_eq!(m.arp_tpa, Some(Masked::exact(ip("198.19.1.1"))));
    assert_eq!(m.arp_sha, Some(Masked::exact(mac("aa:bb:cc:dd:ee:01"))));
    assert!(m.arp_tha.is_some());
    assert!(err("arp,arp_op=1/1 actions=drop").contains("arp_op does not take a mask"));
}

#[test]
fn ipv4_fields_cidr_and_masks() {
    let a = flow("ip,nw_src=198.19.0.0/16 actions=drop");
    let b = flow("ip,nw_src=198.19.0.0/255.255.0.0 actions=drop");
    assert_eq!(a, b);
    assert_eq!(a.to_string(), "ip,nw_src=198.19.0.0/16 actions=drop");
    // Host bits outside the prefix are cleared.
    assert_eq!(flow("ip,nw_src=198.19.7.9/16 actions=drop"), a);
    // /32 is exact; /0 is a wildcard and disappears.
    canon(
        "ip,nw_dst=10.0.0.1/32 actions=drop",
        "ip,nw_dst=10.0.0.1 actions=drop",
    );
    canon("ip,nw_dst=10.0.0.1/0 actions=drop", "ip actions=drop");
    // Non-contiguous masks are allowed, as in OVS.
    let f = canon(
        "ip,nw_dst=10.0.0.1/255.0.255.0 actions=drop",
        "ip,nw_dst=10.0.0.0/255.0.255.0 actions=drop",
    );
    assert_eq!(
        f.matches.nw_dst,
        Some(Masked::new(ip("10.0.0.0"), ip("255.0.255.0")))
    );
    let f = canon(
        "ip,nw_proto=17,nw_tos=184,nw_ttl=64 actions=drop",
        "udp,nw_tos=184,nw_ttl=64 actions=drop",
    );
    assert_eq!(f.matches.nw_tos, Some(Masked::exact(184)));
    assert_eq!(f.matches.nw_ttl, Some(Masked::exact(64)));
    assert!(err("ip,nw_tos=1 actions=drop").contains("ECN"));
    assert!(err("ip,nw_src=1.2.3.4/33 actions=drop").contains("invalid value '1.2.3.4/33'"));
    assert!(err("ip,nw_src=1.2.3 actions=drop").contains("expected an IPv4 address"));
    assert!(err("ip,nw_ttl=256 actions=drop").contains("invalid value '256' for nw_ttl"));
    assert!(err("ip,nw_ttl=3/1 actions=drop").contains("nw_ttl does not take a mask"));
}

#[test]
fn ipv6_fields() {
    let f = canon(
        "ipv6,ipv6_src=fd00::/64,ipv6_dst=fd00::1,nw_ttl=3 actions=drop",
        "ipv6,ipv6_src=fd00::/64,ipv6_dst=fd00::1,nw_ttl=3 actions=drop",
    );
    let net: Ipv6Addr = "fd00::".parse().unwrap();
    let mask: Ipv6Addr = "ffff:ffff:ffff:ffff::".parse().unwrap();
    assert_eq!(f.matches.ipv6_src, Some(Masked::new(net, mask)));
    assert_eq!(
        flow("ipv6,ipv6_src=fd00::1/ffff:ffff:ffff:ffff:: actions=drop"),
        flow("ipv6,ipv6_src=fd00::/64 actions=drop")
    );
    canon(
        "ipv6,ipv6_dst=fd00::/ffff::ffff actions=drop",
        "ipv6,ipv6_dst=fd00::/ffff::ffff actions=drop",
    );
}

#[test]
fn transport_fields() {
    let f = canon(
        "tcp,tp_dst=80,tp_src=0x400 actions=drop",
        "tcp,tp_src=1024,tp_dst=80 actions=drop",
    );
    assert_eq!(f.matches.tp_dst, Some(Masked::exact(80)));
    assert_eq!(f.matches.tp_src, Some(Masked::exact(1024)));
    let f = canon(
        "udp6,tp_dst=0x1000/0xf000 actions=drop",
        "udp6,tp_dst=0x1000/0xf000 actions=drop",
    );
    assert_eq!(f.matches.tp_dst, Some(Masked::new(0x1000, 0xf000)));
    // tcp_dst / udp_dst aliases.
    assert_eq!(
        flow("udp,udp_dst=53 actions=drop"),
        flow("udp,tp_dst=53 actions=drop")
    );
    assert!(err("tcp,tp_dst=65536 actions=drop").contains("expected a 16-bit number"));
    let f = canon(
        "icmp,icmp_type=8,icmp_code=0 actions=drop",
        "icmp,icmp_type=8,icmp_code=0 actions=drop",
    );
    assert_eq!(f.matches.icmp_type, Some(Masked::exact(8)));
    assert_eq!(f.matches.icmp_code, Some(Masked::exact(0)));
    // On icmp6 the same fields are the ICMPv6 type and code.
    let f = canon(
        "icmp6,icmpv6_type=135 actions=drop",
        "icmp6,icmp_type=135 actions=drop",
    );
    assert_eq!(f.matches.icmp_type, Some(Masked::exact(135)));
}

#[test]
fn tunnel_register_metadata_fields() {
    let f = canon(
        "tun_id=0x64,tun_src=198.18.0.2,tun_dst=198.18.0.0/24,metadata=0x1/0xff,reg0=5,reg7=0x10/0xf0 actions=drop",
        "tun_id=0x64,tun_src=198.18.0.2,tun_dst=198.18.0.0/24,metadata=0x1/0xff,reg0=0x5,reg7=0x10/0xf0 actions=drop",
    );
    let m = &f.matches;
    assert_eq!(m.tun_id, Some(Masked::exact(100)));
    assert_eq!(m.tun_src, Some(Masked::exact(ip("198.18.0.2"))));
    assert_eq!(
        m.tun_dst,
        Some(Masked::new(ip("198.18.0.0"), ip("255.255.255.0")))
    );
    assert_eq!(m.metadata, Some(Masked::new(1, 0xff)));
    assert_eq!(m.reg0, Some(Masked::exact(5)));
    assert_eq!(m.reg7, Some(Masked::new(0x10, 0xf0)));
    let f = canon(
        "tun_id=0xffffffffffffffff/0xffff actions=drop",
        "tun_id=0xffff/0xffff actions=drop",
    );
    assert_eq!(f.matches.tun_id, Some(Masked::new(0xffff, 0xffff)));
    for r in 0..8 {
        let f = flow(&format!("reg{r}=0x{r}1 actions=drop"));
        assert_eq!(
            f.matches.get(Field::reg(r).unwrap()),
            Some(Masked::exact(u32::from(r) * 16 + 1).to_value())
        );
    }
    assert!(err("reg0=0x100000000 actions=drop").contains("expected a 32-bit number"));
    canon(
        "tun_ipv6_src=fd00::1 actions=drop",
        "tun_ipv6_src=fd00::1 actions=drop",
    );
    // Numbers in hex with upper-case prefix and digits.
    assert_eq!(
        flow("reg1=0XAB actions=drop").matches.reg1,
        Some(Masked::exact(0xab))
    );
}

#[test]
fn prerequisite_errors() {
    for (s, want) in [
        (
            "tp_dst=80 actions=drop",
            "flow: tp_dst requires tcp or udp (add 'tcp,' or 'udp,' before it)",
        ),
        ("ip,tp_src=80 actions=drop", "tp_src requires tcp or udp"),
        (
            "ip,nw_proto=1,tp_src=80 actions=drop",
            "tp_src requires tcp or udp",
        ),
        (
            "icmp_type=8 actions=drop",
            "icmp_type requires icmp or icmp6 (add 'icmp,' or 'icmp6,' before it)",
        ),
        (
            "tcp,icmp_code=0 actions=drop",
            "icmp_code requires icmp or icmp6",
        ),
        (
            "nw_src=1.2.3.4 actions=drop",
            "nw_src requires ip (add 'ip,' before it)",
        ),
        (
            "ipv6,nw_dst=1.2.3.4 actions=drop",
            "nw_dst requires ip (add 'ip,' before it)",
        ),
        ("arp,nw_src=1.2.3.4 actions=drop", "nw_src requires ip"),
        (
            "nw_proto=6 actions=drop",
            "nw_proto requires ip or ipv6 (add 'ip,' or 'ipv6,' before it)",
        ),
        ("nw_tos=8 actions=drop", "nw_tos requires ip or ipv6"),
        ("arp,nw_ttl=8 actions=drop", "nw_ttl requires ip or ipv6"),
        (
            "ip,ipv6_src=::1 actions=drop",
            "ipv6_src requires ipv6 (add 'ipv6,' before it)",
        ),
        ("ipv6_dst=::1 actions=drop", "ipv6_dst requires ipv6"),
        (
            "arp_op=1 actions=drop",
            "arp_op requires arp (add 'arp,' before it)",
        ),
        ("ip,arp_spa=1.2.3.4 actions=drop", "arp_spa requires arp"),
        ("arp_tpa=1.2.3.4 actions=drop", "arp_tpa requires arp"),
        (
            "arp_sha=aa:bb:cc:dd:ee:ff actions=drop",
            "arp_sha requires arp",
        ),
        (
            "arp_tha=aa:bb:cc:dd:ee:ff actions=drop",
            "arp_tha requires arp",
        ),
    ] {
        let e = err(s);
        assert!(e.contains(want), "{s}: got '{e}', want '{want}'");
    }
    // nw_ttl and nw_tos are fine on IPv6; order of tokens does not matter.
    flow("ipv6,nw_ttl=1,nw_tos=4 actions=drop");
    flow("tp_dst=80,tcp actions=drop");
    // The error points at the token.
    let e = parse_flow("priority=5,tp_dst=80 actions=drop").unwrap_err();
    assert_eq!((e.column, e.token.as_str()), (12, "tp_dst=80"));
    // In a file it carries the line: the example from the issue.
    let e = parse_flows_file("# header\n\nip actions=drop\ntp_dst=80 actions=drop\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "flow line 4: tp_dst requires tcp or udp (add 'tcp,' or 'udp,' before it)"
    );
}

#[test]
fn typo_suggestions() {
    let e = parse_flows_file(&format!(
        "{}ip,nw_sorc=1.2.3.4 actions=drop\n",
        "\n".repeat(11)
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "flow line 12: unknown field 'nw_sorc' (did you mean nw_src?)"
    );
    assert_eq!(
        (e.line, e.column, e.token.as_str()),
        (Some(12), 4, "nw_sorc")
    );
    assert!(
        err("prority=5 actions=drop").contains("unknown field 'prority' (did you mean priority?)")
    );
    assert!(err("tpc actions=drop").contains("(did you mean tcp?)"));
    assert!(err("ip actoins=drop").contains("did you mean actions?"));
    assert!(err("xyzzy=1 actions=drop").ends_with("unknown field 'xyzzy'"));
    assert!(err("actions=outptu:1").contains("unknown action 'outptu' (did you mean output?)"));
    assert!(err("actions=nromal").contains("did you mean normal?"));
    assert!(err("actions=resubmt(,1)").contains("did you mean resubmit?"));
    assert!(err("actions=frobnicate").ends_with("unknown action 'frobnicate'"));
    assert!(
        err("arp actions=move:NXM_OF_ETH_SRX[]->NXM_OF_ETH_DST[]")
            .contains("did you mean NXM_OF_ETH_SRC?")
    );
    assert!(err("actions=set_field:1->reg9").contains("unknown field 'reg9' (did you mean reg0?)"));
}

#[test]
fn long_tokens_cost_little_and_are_quoted_as_an_excerpt() {
    // A suggestion looks at a bounded number of candidates and none for a long word.
    let pulled = std::cell::Cell::new(0usize);
    let many = (0..5000).map(|_| {
        pulled.set(pulled.get() + 1);
        "nw_src"
    });
    assert_eq!(did_you_mean("nw_sorc", many), Some("nw_src"));
    assert!(pulled.get() <= SUGGEST_MAX_CANDIDATES, "{}", pulled.get());
    pulled.set(0);
    let long = "x".repeat(SUGGEST_MAX_LEN + 1);
    let many = (0..10).map(|_| {
        pulled.set(pulled.get() + 1);
        "nw_src"
    });
    assert_eq!(did_you_mean(&long, many), None);
    assert_eq!(pulled.get(), 0);
    assert_eq!(did_you_mean("NW_SORC", ["nw_src"]), Some("nw_src"));

    // An unknown field, action and value as long as a whole request: a message with an
    // excerpt of 80 characters and an ellipsis, and the token kept as that excerpt.
    let big = format!("nw_s{}", "é".repeat(1 << 20));
    let quoted = format!("'nw_s{}…'", "é".repeat(EXCERPT_CHARS - 4));
    for text in [
        format!("{big}=1 actions=drop"),
        format!("actions={big}"),
        format!("actions=move:{big}[]->NXM_OF_ETH_DST[]"),
        format!("ip,nw_src={big} actions=drop"),
        format!("priority={big} actions=drop"),
    ] {
        let e = parse_flow(&text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&quoted), "{}", &msg[..msg.len().min(300)]);
        assert!(msg.chars().count() < 250, "{}", &msg[..msg.len().min(300)]);
        assert!(
            e.token.chars().count() <= EXCERPT_CHARS + 1,
            "{}",
            e.token.len()
        );
    }
    // Short input is quoted whole, as before.
    assert_eq!(excerpt("nw_sorc"), "nw_sorc");
    let exact = "a".repeat(EXCERPT_CHARS);
    assert_eq!(excerpt(&exact), exact.as_str());
    assert_eq!(excerpt(&format!("{exact}b")), format!("{exact}…"));
}

#[test]
fn output_and_forwarding_actions() {
    let f = canon(
        "actions=output:1,output:0x2,3,in_port,NORMAL,flood",
        "actions=output:1,output:2,output:3,in_port,normal,flood",
    );
    assert_eq!(
        f.actions,
        vec![
            Action::Output(PortRef::Number(1)),
            Action::Output(PortRef::Number(2)),
            Action::Output(PortRef::Number(3)),
            Action::InPort,
            Action::Normal,
            Action::Flood,
        ]
    );
    assert_eq!(flow("actions=drop").actions, vec![]);
    assert!(err("actions=drop,output:1").contains("drop must be the only action"));
    assert!(err("actions=output").contains("output needs an argument (output:PORT)"));
    assert!(err("actions=normal:1").contains("normal takes no argument"));
}

#[test]
fn table_actions() {
    let f = canon(
        "table=1 actions=goto_table:5",
        "table=1 actions=goto_table:5",
    );
    assert_eq!(f.actions, vec![Action::GotoTable(5)]);
    assert!(
        err("table=5 actions=goto_table:5")
            .contains("goto_table:5 in table 5 must go to a later table")
    );
    assert!(err("actions=goto_table:2,output:1").contains("goto_table must be the last action"));
    assert!(err("actions=goto_table:254").contains("table 254 is out of range"));
    let f = canon(
        "actions=resubmit(,3),resubmit(vxlan0,2),resubmit:4,resubmit(5,)",
        "actions=resubmit(,3),resubmit(vxlan0,2),resubmit:4,resubmit:5",
    );
    assert_eq!(
        f.actions,
        vec![
            Action::Resubmit {
                port: None,
                table: Some(3)
            },
            Action::Resubmit {
                port: Some("vxlan0".into()),
                table: Some(2)
            },
            Action::Resubmit {
                port: Some(4.into()),
                table: None
            },
            Action::Resubmit {
                port: Some(5.into()),
                table: None
            },
        ]
    );
    assert!(err("actions=resubmit(,)").contains("resubmit needs a port or a table"));
    assert!(err("actions=resubmit(,1").contains("unbalanced"));
    assert!(err("actions=resubmit(1)").contains("resubmit(PORT,TABLE)"));
}

#[test]
fn set_field_actions() {
    let f = canon(
        "ip actions=set_field:aa:bb:cc:dd:ee:01->eth_src,set_field:10.0.0.1->nw_dst,set_field:5->reg3,set_field:0x64->tun_id,set_field:198.18.0.2->tun_dst,set_field:0x1/0x1->metadata",
        "ip actions=set_field:aa:bb:cc:dd:ee:01->dl_src,set_field:10.0.0.1->nw_dst,set_field:0x5->reg3,set_field:0x64->tun_id,set_field:198.18.0.2->tun_dst,set_field:0x1/0x1->metadata",
    );
    assert_eq!(
        f.actions[0],
        Action::SetField {
            field: Field::DlSrc,
            value: Masked::exact(mac("aa:bb:cc:dd:ee:01")).to_value()
        }
    );
    assert_eq!(
        f.actions[5],
        Action::SetField {
            field: Field::Metadata,
            value: Masked::new(1u64, 1).to_value()
        }
    );
    for (m, a) in [
        ("arp", "set_field:2->arp_op"),
        ("arp", "set_field:1.2.3.4->arp_spa"),
        ("arp", "set_field:1.2.3.4->arp_tpa"),
        ("arp", "set_field:aa:bb:cc:dd:ee:ff->arp_sha"),
        ("arp", "set_field:aa:bb:cc:dd:ee:ff->arp_tha"),
        ("ip", "set_field:1.2.3.4->nw_src"),
        ("ip", "set_field:8->nw_tos"),
        ("ipv6", "set_field:9->nw_ttl"),
        ("ipv6", "set_field:fd00::1->ipv6_src"),
        ("ipv6", "set_field:fd00::2->ipv6_dst"),
        ("tcp", "set_field:80->tp_src"),
        ("udp", "set_field:53->tp_dst"),
        ("", "set_field:198.18.0.1->tun_src"),
        ("", "set_field:aa:bb:cc:dd:ee:ff->dl_dst"),
    ] {
        let text = if m.is_empty() {
            format!("actions={a}")
        } else {
            format!("{m} actions={a}")
        };
        let f = canon(&text, &text);
        assert!(matches!(f.actions[0], Action::SetField { .. }), "{text}");
    }
    assert!(err("actions=set_field:1.2.3.4->nw_src").contains("nw_src requires ip"));
    assert!(err("tcp actions=set_field:1->arp_op").contains("arp_op requires arp"));
    assert!(err("actions=set_field:0x0800->dl_type").contains("dl_type cannot be written"));
    assert!(err("actions=set_field:1->in_port").contains("in_port cannot be written"));
    assert!(err("ip actions=set_field:1.2.3->nw_src").contains("invalid value '1.2.3' for nw_src"));
    assert!(err("actions=set_field:1").contains("needs '->'"));
}

#[test]
fn load_becomes_set_field() {
    let a = flow("arp actions=load:0x2->NXM_OF_ARP_OP[]").actions;
    assert_eq!(a, flow("arp actions=set_field:2->arp_op").actions);
    let a = flow("actions=load:1->NXM_NX_REG0[3]").actions;
    assert_eq!(
        a,
        vec![Action::SetField {
            field: Field::Reg0,
            value: Masked::new(8u32, 8).to_value()
        }]
    );
    canon(
        "actions=load:0xab->NXM_NX_REG1[8..15]",
        "actions=set_field:0xab00/0xff00->reg1",
    );
    canon(
        "actions=load:0xaabbccddeeff->NXM_OF_ETH_DST[]",
        "actions=set_field:aa:bb:cc:dd:ee:ff->dl_dst",
    );
    assert!(err("actions=load:0x100->NXM_NX_REG1[0..7]").contains("fits in 8 bits"));
    assert!(err("actions=load:1->NXM_NX_REG1[0..32]").contains("outside reg1"));
}

#[test]
fn move_actions() {
    let f = canon(
        "arp actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],move:arp_sha->arp_tha,move:NXM_NX_REG0[0..15]->NXM_NX_REG1[16..31],move:NXM_NX_REG2[5]->NXM_NX_REG3[0]",
        "arp actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],move:NXM_NX_REG0[0..15]->NXM_NX_REG1[16..31],move:NXM_NX_REG2[5]->NXM_NX_REG3[0]",
    );
    assert_eq!(
        f.actions[1],
        Action::Move {
            src: FieldRange::whole(Field::ArpSha),
            dst: FieldRange::whole(Field::ArpTha)
        }
    );
    assert_eq!(
        f.actions[2],
        Action::Move {
            src: FieldRange {
                field: Field::Reg0,
                start: 0,
                end: 15
            },
            dst: FieldRange {
                field: Field::Reg1,
                start: 16,
                end: 31
            },
        }
    );
    assert_eq!(
        flow("actions=move:eth_src->eth_dst"),
        flow("actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]")
    );
    // tp_* has no single NXM name; it prints by its plain name.
    canon(
        "tcp actions=move:NXM_OF_TCP_SRC[]->tp_dst[]",
        "tcp actions=move:tp_src[]->tp_dst[]",
    );
    assert!(
        err("ip actions=move:nw_src->dl_dst")
            .contains("move: source nw_src is 32 bits but destination dl_dst is 48 bits")
    );
    assert!(
        err("actions=move:NXM_NX_REG0[0..7]->NXM_NX_REG1[0..8]")
            .contains("8 bits but destination reg1 is 9 bits")
    );
    assert!(err("actions=move:arp_sha->arp_tha").contains("arp_sha requires arp"));
    assert!(err("actions=move:reg0->NXM_OF_ETH_TYPE[0..15]").contains("dl_type cannot be written"));
    assert!(err("actions=move:reg0[7..3]->reg1[0..4]").contains("bit range [7..3]"));
}

#[test]
fn other_rewrite_actions() {
    let f = canon(
        "ip actions=mod_dl_src:aa:bb:cc:dd:ee:01,mod_dl_dst:aa:bb:cc:dd:ee:02,mod_nw_src:10.0.0.1,mod_nw_dst:10.0.0.2,mod_nw_ttl:9,set_tunnel:100,set_tunnel64:0xffffff,dec_ttl",
        "ip actions=mod_dl_src:aa:bb:cc:dd:ee:01,mod_dl_dst:aa:bb:cc:dd:ee:02,mod_nw_src:10.0.0.1,mod_nw_dst:10.0.0.2,mod_nw_ttl:9,set_tunnel:0x64,set_tunnel:0xffffff,dec_ttl",
    );
    assert_eq!(f.actions[0], Action::ModDlSrc(mac("aa:bb:cc:dd:ee:01")));
    assert_eq!(f.actions[3], Action::ModNwDst(ip("10.0.0.2")));
    assert_eq!(f.actions[5], Action::SetTunnel(100));
    assert_eq!(f.actions[6], Action::SetTunnel(0xff_ffff));
    assert_eq!(f.actions[7], Action::DecTtl);
    assert_eq!(
        f.actions[5].as_set_field(),
        Some((Field::TunId, Masked::exact(100u64).to_value()))
    );
    assert!(err("actions=mod_nw_src:10.0.0.1").contains("nw_src requires ip"));
    assert!(err("actions=set_tunnel:0x100000000").contains("invalid value"));
}

/// VXLAN and Geneve carry a 24-bit VNI: a wider tunnel ID used to be cut to its low 24
/// bits at the tunnel (0x1000000 went out as VNI 0), whichever way it was set.
#[test]
fn tunnel_ids_wider_than_24_bits_are_refused() {
    for a in [
        "set_tunnel:0x1000000",
        "set_tunnel64:0x100000000",
        "set_tunnel:16777216",
    ] {
        let e = err(&format!("actions={a}"));
        assert!(
            e.contains("invalid value")
                && e.contains("0 to 0xffffff (VXLAN and Geneve carry 24 bits)"),
            "{a}: {e}"
        );
    }
    for a in [
        "set_field:0x1000000->tun_id",
        "load:0x1000000->NXM_NX_TUN_ID[]",
        "load:0x1->NXM_NX_TUN_ID[24..31]",
        "set_field:0x100000000/0x100000000->tun_id",
    ] {
        let e = err(&format!("actions={a}"));
        assert!(
            e.contains("out of range") && e.contains("24-bit VNI"),
            "{a}: {e}"
        );
    }
    // The largest VNI, and writes of zero to the bits above it, are fine.
    for a in [
        "set_tunnel:0xffffff",
        "set_field:0xffffff->tun_id",
        "load:0->NXM_NX_TUN_ID[24..63]",
        "load:0xffffff->NXM_NX_TUN_ID[0..23]",
    ] {
        flow(&format!("actions={a}"));
    }
    // The same check for a flow that arrives as JSON.
    let mut f = flow("actions=set_tunnel:1");
    f.actions[0] = Action::SetTunnel(1 << 24);
    assert_eq!(
        f.validate().unwrap_err().to_string(),
        "tun_id 0x1000000 is out of range: VXLAN and Geneve carry a 24-bit VNI (0 to 0xffffff)"
    );
    // Matching on a wider tun_id is not refused (it never matches a received packet).
    flow("tun_id=0x1000000 actions=drop");
}

const ARP_RESPONDER: &str = "table=0,priority=200,arp,arp_op=1,arp_tpa=198.19.1.1 actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:aa:bb:cc:dd:ee:01->eth_src,load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],set_field:aa:bb:cc:dd:ee:01->arp_sha,move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],set_field:198.19.1.1->arp_spa,in_port";

#[test]
fn antrea_arp_responder() {
    let f = canon(
        ARP_RESPONDER,
        "priority=200,arp,arp_op=1,arp_tpa=198.19.1.1 actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:aa:bb:cc:dd:ee:01->dl_src,set_field:2->arp_op,move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],set_field:aa:bb:cc:dd:ee:01->arp_sha,move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],set_field:198.19.1.1->arp_spa,in_port",
    );
    let gw = mac("aa:bb:cc:dd:ee:01");
    assert_eq!(f.priority, 200);
    assert_eq!(f.matches.arp_op, Some(Masked::exact(1)));
    assert_eq!(
        f.actions,
        vec![
            Action::Move {
                src: FieldRange::whole(Field::DlSrc),
                dst: FieldRange::whole(Field::DlDst)
            },
            Action::SetField {
                field: Field::DlSrc,
                value: Masked::exact(gw).to_value()
            },
            Action::SetField {
                field: Field::ArpOp,
                value: Masked::exact(2u16).to_value()
            },
            Action::Move {
                src: FieldRange::whole(Field::ArpSha),
                dst: FieldRange::whole(Field::ArpTha)
            },
            Action::SetField {
                field: Field::ArpSha,
                value: Masked::exact(gw).to_value()
            },
            Action::Move {
                src: FieldRange::whole(Field::ArpSpa),
                dst: FieldRange::whole(Field::ArpTpa)
            },
            Action::SetField {
                field: Field::ArpSpa,
                value: Masked::exact(ip("198.19.1.1")).to_value()
            },
            Action::InPort,
        ]
    );
    f.validate().unwrap();
}

#[test]
fn separators_and_whitespace() {
    let a = flow("table=1 , priority=5,,ip   nw_src=10.0.0.0/8\tactions=output:1, output:2");
    assert_eq!(
        a.to_string(),
        "table=1,priority=5,ip,nw_src=10.0.0.0/8 actions=output:1,output:2"
    );
    assert!(err("ip").contains("missing 'actions='"));
    assert!(err("ip,nw_src actions=drop").contains("nw_src needs a value"));
    // `actions=` inside a port name is not the start of the action list.
    assert!(err("in_port=xactions=1").contains("invalid value 'xactions=1' for in_port"));
}

#[test]
fn flows_file_with_line_numbers() {
    let text = "# Antrea-ish pipeline\n\
                \n\
                table=0,priority=200,arp,arp_op=1 actions=normal   # inline comment\n\
                   \t\n\
                table=0,priority=0 actions=goto_table:1\n\
                # done\n\
                table=1 actions=drop\r\n";
    let flows = parse_flows_file(text).unwrap();
    assert_eq!(
        flows.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        vec![3, 5, 7]
    );
    assert_eq!(flows[1].1.actions, vec![Action::GotoTable(1)]);
    let b = parse_bundle_file(text).unwrap();
    assert_eq!(b.lines, vec![3, 5, 7]);
    assert_eq!(b.changes.len(), 3);
    b.validate().unwrap();
    let e = parse_flows_file("ip actions=drop\nip actions=drop\ntcp,tp_dst=99999 actions=drop\n")
        .unwrap_err();
    assert_eq!(e.line, Some(3));
    assert!(
        e.to_string()
            .starts_with("flow line 3: invalid value '99999' for tp_dst"),
        "{e}"
    );
    assert!(parse_flows_file("").unwrap().is_empty());
}

#[test]
fn filters_and_flow_mods() {
    let f = parse_filter("cookie=0x10/0xf0,table=2,tcp,tp_dst=80").unwrap();
    assert_eq!(f.cookie, Some(Masked::new(0x10, 0xf0)));
    assert_eq!(f.table, Some(2));
    assert_eq!(f.to_string(), "cookie=0x10/0xf0,table=2,tcp,tp_dst=80");
    assert_eq!(parse_filter(&f.to_string()).unwrap(), f);
    assert_eq!(parse_filter("").unwrap(), FlowFilter::all());
    assert!(
        parse_filter("ip actions=drop")
            .unwrap_err()
            .to_string()
            .contains("actions are not allowed")
    );
    assert!(
        parse_filter("idle_timeout=5")
            .unwrap_err()
            .to_string()
            .contains("idle_timeout is not allowed here")
    );
    assert!(
        parse_flow("cookie=1/1 actions=drop")
            .unwrap_err()
            .to_string()
            .contains("cookie mask")
    );

    let installed =
        flow("cookie=0x15,table=2,priority=10,tcp,nw_src=10.0.0.0/8,tp_dst=80 actions=drop");
    assert!(f.selects(&installed, false));
    assert!(parse_filter("ip").unwrap().selects(&installed, false));
    assert!(
        parse_filter("ip,nw_src=10.0.0.0/7")
            .unwrap()
            .selects(&installed, false)
    );
    assert!(
        !parse_filter("ip,nw_src=10.0.0.0/9")
            .unwrap()
            .selects(&installed, false)
    );
    assert!(!parse_filter("udp").unwrap().selects(&installed, false));
    assert!(
        !parse_filter("cookie=0x20/0xf0")
            .unwrap()
            .selects(&installed, false)
    );
    assert!(!parse_filter("table=3").unwrap().selects(&installed, false));
    let strict = parse_filter("table=2,priority=10,tcp,nw_src=10.0.0.0/8,tp_dst=80").unwrap();
    assert!(strict.selects(&installed, true));
    assert!(
        !parse_filter("table=2,tcp,nw_src=10.0.0.0/8,tp_dst=80")
            .unwrap()
            .selects(&installed, true)
    );
    assert!(
        !parse_filter("table=2,priority=10,tcp")
            .unwrap()
            .selects(&installed, true)
    );

    let m = parse_flow_mod(
        FlowModCommand::Modify,
        "cookie=0x1/0xff,ip actions=output:3",
    )
    .unwrap();
    assert_eq!(
        m,
        FlowMod::Modify {
            filter: parse_filter("cookie=0x1/0xff,ip").unwrap(),
            actions: vec![Action::Output(3.into())],
        }
    );
    assert_eq!(m.to_string(), "cookie=0x1/0xff,ip actions=output:3");
    assert!(parse_flow_mod(FlowModCommand::ModifyStrict, "ip").is_err());
    let d = parse_flow_mod(
        FlowModCommand::DeleteStrict,
        "priority=10,table=2,tcp,nw_src=10.0.0.0/8,tp_dst=80",
    )
    .unwrap();
    assert!(d.is_strict());
    assert!(d.selects(&installed));
    let a = parse_flow_mod(FlowModCommand::Add, "ip actions=drop").unwrap();
    assert!(!a.selects(&installed));
}

#[test]
fn identity() {
    let a = flow("table=1,priority=5,ip,nw_src=10.0.0.0/8 actions=drop");
    let b = flow("cookie=0x7,table=1,priority=5,ip,nw_src=10.1.0.0/255.0.0.0 actions=output:1");
    assert!(a.same_identity(&b));
    assert!(!a.same_identity(&flow(
        "table=1,priority=6,ip,nw_src=10.0.0.0/8 actions=drop"
    )));
    assert!(!a.same_identity(&flow(
        "table=2,priority=5,ip,nw_src=10.0.0.0/8 actions=drop"
    )));
    assert!(!a.same_identity(&flow(
        "table=1,priority=5,ip,nw_src=10.0.0.0/16 actions=drop"
    )));
}

#[test]
fn standalone_actions() {
    let a = parse_actions("set_field:1.2.3.4->nw_src,output:1").unwrap();
    assert_eq!(a.len(), 2);
    let e = parse_actions("output:1,bogus").unwrap_err();
    assert_eq!(e.column, 10);
    let a: Action = "resubmit(,4)".parse().unwrap();
    assert_eq!(
        a,
        Action::Resubmit {
            port: None,
            table: Some(4)
        }
    );
}

#[test]
fn json_round_trip() {
    let f = flow(ARP_RESPONDER);
    let j = serde_json::to_string(&f).unwrap();
    assert_eq!(serde_json::from_str::<Flow>(&j).unwrap(), f);
    let f2 = flow(
        "cookie=0x5,table=3,priority=9,idle_timeout=4,hard_timeout=5,in_port=vxlan0,tcp6,ipv6_src=fd00::/64,tp_dst=0x50/0xfff0,tun_id=0x64,reg2=0x1/0x3 actions=resubmit(,7),output:2,set_tunnel:0xabcdef,goto_table:4",
    );
    let j = serde_json::to_string(&f2).unwrap();
    assert_eq!(serde_json::from_str::<Flow>(&j).unwrap(), f2);
    // The JSON is readable: addresses and ports as strings, absent fields omitted.
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["match"]["in_port"], "vxlan0");
    assert_eq!(v["match"]["ipv6_src"]["value"], "fd00::");
    assert!(v["match"].get("nw_src").is_none());

    let b = Bundle {
        changes: vec![
            FlowMod::Add { flow: f.clone() },
            parse_flow_mod(FlowModCommand::Modify, "cookie=0x1/0x1,ip actions=normal").unwrap(),
            parse_flow_mod(FlowModCommand::ModifyStrict, "priority=3,arp actions=flood").unwrap(),
            parse_flow_mod(FlowModCommand::Delete, "table=2,cookie=0x1/0xf").unwrap(),
            parse_flow_mod(FlowModCommand::DeleteStrict, "priority=1,ip,nw_dst=1.2.3.4").unwrap(),
        ],
        lines: vec![1, 2, 3, 4, 5],
    };
    let j = serde_json::to_string(&b).unwrap();
    assert_eq!(serde_json::from_str::<Bundle>(&j).unwrap(), b);
    for c in &b.changes {
        let j = serde_json::to_string(c).unwrap();
        assert_eq!(&serde_json::from_str::<FlowMod>(&j).unwrap(), c);
    }
    let v: serde_json::Value = serde_json::to_value(&b.changes[3]).unwrap();
    assert_eq!(v["command"], "delete");
    // A minimal JSON flow takes the defaults.
    let f: Flow = serde_json::from_str(r#"{"actions":["normal"]}"#).unwrap();
    assert_eq!(f, flow("actions=normal"));
}

#[test]
fn json_input_is_validated() {
    // JSON can express things the parser would reject; validate() catches them and the
    // bundle error names the change.
    let bad: Flow =
        serde_json::from_str(r#"{"match":{"tp_dst":{"value":80,"mask":65535}},"actions":[]}"#)
            .unwrap();
    assert_eq!(bad.validate(), Err(FlowError::MissingPrereq(Field::TpDst)));
    let b = Bundle::new(vec![
        FlowMod::Add {
            flow: flow("ip actions=drop"),
        },
        FlowMod::Add { flow: bad.clone() },
    ]);
    assert_eq!(
        b.validate().unwrap_err().to_string(),
        "change 2: tp_dst requires tcp or udp (add 'tcp,' or 'udp,' before it)"
    );
    let b = Bundle {
        lines: vec![4, 9],
        ..b
    };
    assert_eq!(
        b.validate().unwrap_err().to_string(),
        "flow line 9: tp_dst requires tcp or udp (add 'tcp,' or 'udp,' before it)"
    );
    let unnorm: Flow = serde_json::from_str(
        r#"{"match":{"dl_type":{"value":2048,"mask":65535},"nw_src":{"value":"10.0.0.1","mask":"255.0.0.0"}}}"#,
    )
    .unwrap();
    assert_eq!(
        unnorm.validate(),
        Err(FlowError::ValueOutsideMask(Field::NwSrc))
    );
    let masked: Flow =
        serde_json::from_str(r#"{"match":{"dl_type":{"value":2048,"mask":255}}}"#).unwrap();
    assert_eq!(
        masked.validate(),
        Err(FlowError::NotMaskable(Field::DlType))
    );
    let table: Flow = serde_json::from_str(r#"{"table":254}"#).unwrap();
    assert_eq!(table.validate(), Err(FlowError::TableOutOfRange(254)));
    let port: Flow = serde_json::from_str(r#"{"match":{"in_port":"12"}}"#).unwrap();
    assert!(matches!(port.validate(), Err(FlowError::BadPortName(_))));
    let mv: Flow = serde_json::from_str(
        r#"{"actions":[{"move":{"src":{"field":"reg0","start":0,"end":31},"dst":{"field":"dl_src","start":0,"end":47}}}]}"#,
    )
    .unwrap();
    assert!(matches!(
        mv.validate(),
        Err(FlowError::WidthMismatch { .. })
    ));
    assert!(serde_json::from_str::<Flow>(r#"{"bogus":1}"#).is_err());
}

#[test]
fn error_kinds_are_structured() {
    let e = parse_flow("ip,nw_sorc=1 actions=drop").unwrap_err();
    assert_eq!(
        e.kind,
        ParseErrorKind::UnknownField {
            name: "nw_sorc".into(),
            suggestion: Some("nw_src")
        }
    );
}
