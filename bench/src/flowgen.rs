//! Antrea-shaped flows, deterministic by seed, in the syntax that both `ovs-ofctl`
//! (OpenFlow 1.3+) and `weftctl` accept: the flows the `flowbench` binary programs into
//! Weft and into Open vSwitch.
//!
//! Antrea's pipeline, cut to four tables:
//!
//! - table 0, classifier: `in_port=P,dl_src=MAC` tags the pod's packets with its
//!   tenant in `reg0` and goes to table 10;
//! - table 10, ARP and spoof guard: `arp,reg0=T,arp_tpa=IP` sends ARP for a pod to
//!   its port; `ip,in_port=P,dl_src=MAC,nw_src=IP` lets the pod's own packets on to 20;
//! - table 20, L3 forwarding: `ip,reg0=T,nw_dst=IP` rewrites the MACs
//!   (`mod_dl_src` the gateway's, `set_field` the pod's), `dec_ttl`, puts the output
//!   port in `reg1` and goes to 30;
//! - table 30, output: `reg1=P` outputs to port P.
//!
//! Pod *k* (0-based) has port `1 + mix(seed, k) % ports`, MAC
//! `02:SS:kk:kk:kk:01` and address `198.19.H.L` with `H.L` the low 16 bits of *k* and
//! tenant `k >> 16` (so more than 65,536 pods stay distinct, in the pod range). The
//! first lines are the two *real* pods, [`POD_A`] on port 1 and [`POD_B`] on port 2, in
//! tenant `0xff` (no generated pod's), whose flows forward between them: a benchmark
//! sends real packets between them. Then the `ports` output flows, then four flows per
//! generated pod (classifier, ARP, spoof guard, forwarding) until there are `n` lines.

/// A real pod: its port number, MAC and address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Its port number on the switch.
    pub port: u32,
    /// Its MAC.
    pub mac: &'static str,
    /// Its address.
    pub ip: &'static str,
}

/// The first real pod (the sender).
pub const POD_A: Pod = Pod {
    port: 1,
    mac: "02:00:00:00:aa:01",
    ip: "198.19.255.1",
};
/// The second real pod (the receiver).
pub const POD_B: Pod = Pod {
    port: 2,
    mac: "02:00:00:00:bb:01",
    ip: "198.19.255.2",
};
/// The gateway MAC that forwarding writes as the source.
pub const GW_MAC: &str = "02:00:00:00:00:fe";
/// The real pods' tenant (`reg0`); generated pods have tenants below 256.
pub const REAL_TENANT: u32 = 0xff;
/// The flows of the real pods and the output table come first: this many lines
/// besides the `ports` output flows.
pub const REAL_FLOWS: usize = 8;

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Lines in all.
    pub n: usize,
    /// The seed: ports, MACs and cookies follow from it.
    pub seed: u64,
    /// Port numbers 1..=ports are used (at least 2: the real pods').
    pub ports: u32,
}

/// splitmix64.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The cookie of the real pods' flows and of the output table, for `seed`.
pub fn real_cookie(seed: u64) -> u64 {
    mix(seed) & 0xffff_ffff
}

/// The cookie of the generated pods' flows (a `del-flows cookie=C/0xffffffffffffffff` removes them and
/// leaves the real pods forwarding).
pub fn generated_cookie(seed: u64) -> u64 {
    real_cookie(seed) + 1
}

/// Whether line `i` is one that [`write`] with `changed` gives other actions: exactly
/// one line in 100 (`i % 100 == 37`); the real pods' lines never change.
pub fn is_changed(i: usize) -> bool {
    i % 100 == 37
}

/// Appends the flows of `spec` to `out`, one a line. With `changed`, the lines that
/// [`is_changed`] selects (1%) get different actions (a `set_field` into `reg3`
/// first), the match, table and priority the same: what `replace-flows` must modify.
pub fn write(spec: &Spec, changed: bool, out: &mut String) {
    let ports = spec.ports.max(2);
    let cookie = real_cookie(spec.seed);
    let s = (mix(spec.seed ^ 0x5eed) & 0xff) as u8;
    let i = std::cell::Cell::new(0usize);
    let line = |out: &mut String, body: std::fmt::Arguments<'_>| {
        let n = i.get();
        if n < spec.n {
            let c = changed && n >= REAL_FLOWS && is_changed(n);
            let text = body.to_string();
            match (c, text.split_once(" actions=")) {
                (true, Some((m, a))) => {
                    out.push_str(&format!("{m} actions=set_field:0x{:x}->reg3,{a}\n", n + 1))
                }
                _ => {
                    out.push_str(&text);
                    out.push('\n');
                }
            }
        }
        i.set(n + 1);
    };
    let t = REAL_TENANT;
    for (me, other) in [(POD_A, POD_B), (POD_B, POD_A)] {
        line(
            out,
            format_args!(
                "table=0,priority=200,cookie={cookie:#x},in_port={},dl_src={} \
                 actions=set_field:{t:#x}->reg0,goto_table:10",
                me.port, me.mac
            ),
        );
        line(
            out,
            format_args!(
                "table=10,priority=200,cookie={cookie:#x},arp,reg0={t:#x},arp_tpa={} \
                 actions=output:{}",
                other.ip, other.port
            ),
        );
        line(
            out,
            format_args!(
                "table=10,priority=200,cookie={cookie:#x},ip,in_port={},dl_src={},nw_src={} \
                 actions=goto_table:20",
                me.port, me.mac, me.ip
            ),
        );
        line(
            out,
            format_args!(
                "table=20,priority=200,cookie={cookie:#x},ip,reg0={t:#x},nw_dst={} \
                 actions=mod_dl_src:{GW_MAC},set_field:{}->eth_dst,dec_ttl,\
                 set_field:{}->reg1,goto_table:30",
                other.ip, other.mac, other.port
            ),
        );
    }
    for p in 1..=ports {
        line(
            out,
            format_args!("table=30,priority=200,cookie={cookie:#x},reg1={p} actions=output:{p}"),
        );
    }
    let mut k = 0u64;
    while i.get() < spec.n {
        let port = 1 + (mix(spec.seed ^ k) % u64::from(ports)) as u32;
        let mac = format!(
            "02:{s:02x}:{:02x}:{:02x}:{:02x}:01",
            (k >> 16) & 0xff,
            (k >> 8) & 0xff,
            k & 0xff
        );
        let ip = format!("198.19.{}.{}", (k >> 8) & 0xff, k & 0xff);
        let tenant = k >> 16;
        let c = generated_cookie(spec.seed);
        line(
            out,
            format_args!(
                "table=0,priority=190,cookie={c:#x},in_port={port},dl_src={mac} \
                 actions=set_field:{tenant:#x}->reg0,goto_table:10"
            ),
        );
        line(
            out,
            format_args!(
                "table=10,priority=190,cookie={c:#x},arp,reg0={tenant:#x},arp_tpa={ip} \
                 actions=output:{port}"
            ),
        );
        line(
            out,
            format_args!(
                "table=10,priority=190,cookie={c:#x},ip,in_port={port},dl_src={mac},\
                 nw_src={ip} actions=goto_table:20"
            ),
        );
        line(
            out,
            format_args!(
                "table=20,priority=190,cookie={c:#x},ip,reg0={tenant:#x},nw_dst={ip} \
                 actions=mod_dl_src:{GW_MAC},set_field:{mac}->eth_dst,dec_ttl,\
                 set_field:{port}->reg1,goto_table:30"
            ),
        );
        k += 1;
    }
}

/// The flows of `spec` as one string.
pub fn generate(spec: &Spec, changed: bool) -> String {
    let mut s = String::with_capacity(spec.n * 150);
    write(spec, changed, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use weft_flow::parse_flow;

    const SPEC: Spec = Spec {
        n: 3000,
        seed: 7,
        ports: 8,
    };

    #[test]
    fn exactly_n_lines_deterministic_by_seed() {
        let a = generate(&SPEC, false);
        assert_eq!(a.lines().count(), 3000);
        assert_eq!(a, generate(&SPEC, false));
        let other = generate(&Spec { seed: 8, ..SPEC }, false);
        assert_ne!(a, other);
        assert_eq!(other.lines().count(), 3000);
        // Fewer lines than the real pods' flows: just those.
        assert_eq!(generate(&Spec { n: 3, ..SPEC }, false).lines().count(), 3);
    }

    #[test]
    fn every_line_parses_and_every_match_is_distinct() {
        let text = generate(&SPEC, false);
        let mut keys = HashSet::new();
        for (i, l) in text.lines().enumerate() {
            let f = parse_flow(l).unwrap_or_else(|e| panic!("line {}: {l}: {e}", i + 1));
            // Table, priority and match: a duplicate would replace an earlier flow and
            // the table would hold fewer than n.
            let (m, _) = l.split_once(" actions=").unwrap();
            let m: String = m
                .split(',')
                .filter(|p| !p.starts_with("cookie="))
                .collect::<Vec<_>>()
                .join(",");
            assert!(keys.insert(m), "line {}: duplicate match {l}", i + 1);
            assert!(f.table <= 30);
        }
        for port in text
            .lines()
            .filter_map(|l| l.split("in_port=").nth(1))
            .map(|r| r.split(',').next().unwrap().parse::<u32>().unwrap())
        {
            assert!((1..=8).contains(&port), "port {port}");
        }
    }

    #[test]
    fn only_the_generated_pods_have_the_generated_cookie() {
        let text = generate(&SPEC, false);
        let g = format!("cookie={:#x},", generated_cookie(SPEC.seed));
        let r = format!("cookie={:#x},", real_cookie(SPEC.seed));
        let (generated, real): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.contains(&g));
        assert_eq!(real.len(), REAL_FLOWS + 8);
        assert!(real.iter().all(|l| l.contains(&r)));
        assert!(
            real.iter()
                .any(|l| l.contains(&format!("in_port={},dl_src={}", POD_A.port, POD_A.mac)))
        );
        assert_eq!(generated.len(), 3000 - REAL_FLOWS - 8);
    }

    #[test]
    fn changed_differs_in_one_percent_of_actions_only() {
        let a = generate(&SPEC, false);
        let b = generate(&SPEC, true);
        let mut diff = 0;
        for (x, y) in a.lines().zip(b.lines()) {
            if x != y {
                diff += 1;
                assert_eq!(
                    x.split_once(" actions=").unwrap().0,
                    y.split_once(" actions=").unwrap().0
                );
                parse_flow(y).unwrap();
            }
        }
        assert_eq!(diff, 30);
        assert_eq!(b.lines().count(), 3000);
    }

    /// ovs-ofctl parses the same text (where Open vSwitch is installed).
    #[test]
    fn ovs_ofctl_parses_it() {
        if !std::path::Path::new("/usr/bin/ovs-ofctl").exists() {
            eprintln!("skipping: ovs-ofctl is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("flows.txt");
        let spec = Spec { n: 400, ..SPEC };
        std::fs::write(&f, generate(&spec, true)).unwrap();
        let out = std::process::Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow14", "parse-flows"])
            .arg(&f)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ovs-ofctl parse-flows: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.lines().filter(|l| l.contains("actions=")).count(),
            400,
            "{stdout}"
        );
    }
}
