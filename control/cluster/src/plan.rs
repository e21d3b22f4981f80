//! One node's plan: the ports, the flows (the tables described in the module above)
//! and what each local pod is configured with.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use weft_flow::parse_flow;
use weft_flow::port::PortSpec;

use super::*;

impl Cluster {
    /// The ports, flows and pod configuration of node `node`. See the module docs and
    /// `docs/cluster.md` for the pipeline.
    pub fn plan(&self, node: &str) -> Result<NodePlan, ClusterError> {
        let me = self.node(node).ok_or_else(|| ClusterError::UnknownNode {
            name: node.to_string(),
            known: self
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let local: Vec<&Pod> = self.pods.iter().filter(|p| p.node == me.name).collect();
        let peers: Vec<&Node> = self.nodes.iter().filter(|n| n.name != me.name).collect();
        let mut ports = Vec::new();
        let gateway = match self.mode {
            Mode::L3 => self.gateway_port.as_ref(),
            Mode::L2 => None,
        };
        if let Some((name, ifname)) = gateway {
            ports.push(port(
                name,
                &[
                    "type=tap",
                    &format!("ifname={ifname}"),
                    &format!("mtu={}", self.mtu),
                    &format!("mac={}", me.gateway_mac()),
                ],
            )?);
        }
        for p in &local {
            let mtu = self.mtu.to_string();
            let mac = p.mac().to_string();
            // The tag scopes `normal`'s flooding to the tenant's own pods (l2), like an
            // OVS access port's VLAN tag; l3 never floods, the tag costs nothing there.
            ports.push(port(
                &p.name,
                &[
                    "type=tap",
                    &format!("netns={}", p.namespace),
                    &format!("ifname={POD_IFNAME}"),
                    &format!("mtu={mtu}"),
                    &format!("mac={mac}"),
                    &format!("tag={}", self.vni),
                ],
            )?);
        }
        let mut tunnel = |name: &str, remote: String| -> Result<(), ClusterError> {
            let mut args = vec![
                format!("type={}", self.encap),
                format!("local={}", me.address),
                format!("remote={remote}"),
            ];
            if self.encap != Encap::Ipip {
                args.push("key=flow".into());
            }
            if let Some(p) = self.dst_port {
                args.push(format!("dst_port={p}"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ports.push(port(name, &args)?);
            Ok(())
        };
        match self.mode {
            Mode::L3 if !peers.is_empty() || gateway.is_some() => tunnel(L3_TUNNEL, "flow".into())?,
            Mode::L3 => {}
            Mode::L2 => {
                for n in &peers {
                    tunnel(&format!("tun-{}", n.name), n.address.to_string())?;
                }
            }
        }
        let mut f = Flows {
            vni: self.vni,
            cookie: self.cookie,
            text: Vec::new(),
        };
        match self.mode {
            Mode::L3 => self.l3_flows(
                &mut f,
                me,
                &local,
                &peers,
                gateway.map(|(name, _)| name.as_str()),
            ),
            Mode::L2 => self.l2_flows(&mut f, &local, &peers),
        }
        let flows = f
            .text
            .iter()
            .map(|t| parse_flow(t).map_err(|e| ClusterError::Internal(format!("{t}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let pods = local.iter().map(|p| self.pod_plan(me, p)).collect();
        Ok(NodePlan { ports, flows, pods })
    }

    fn pod_plan(&self, node: &Node, p: &Pod) -> PodPlan {
        let (ipv4, ipv6, routes, static_neighbors) = match self.mode {
            Mode::L3 => {
                let gw = node.gateway();
                let mut routes = vec![(IpNet::V4(self.pod_cidr), Some(IpAddr::V4(gw)))];
                let mut neigh = Vec::new();
                let mut v6 = None;
                if let (Some(a), Some(gw6), Some(c6)) =
                    (p.address6, node.gateway6(), self.pod_cidr6)
                {
                    // A /128 behind an on-link gateway whose neighbour entry is static:
                    // every IPv6 packet goes to the gateway, and no ND is ever needed.
                    v6 = Some(host6(a));
                    routes.push((IpNet::V6(host6(gw6)), None));
                    routes.push((IpNet::V6(c6), Some(IpAddr::V6(gw6))));
                    neigh.push((IpAddr::V6(gw6), node.gateway_mac()));
                }
                (
                    Ipv4Net::new(p.address, node.pod_subnet.prefix_len()).expect("prefix ≤ 32"),
                    v6,
                    routes,
                    neigh,
                )
            }
            Mode::L2 => (
                Ipv4Net::new(p.address, self.pod_cidr.prefix_len()).expect("prefix ≤ 32"),
                p.address6
                    .zip(self.pod_cidr6)
                    .map(|(a, c)| Ipv6Net::new(a, c.prefix_len()).expect("prefix ≤ 128")),
                Vec::new(),
                Vec::new(),
            ),
        };
        PodPlan {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            ifname: POD_IFNAME.into(),
            mac: p.mac(),
            mtu: self.mtu,
            ipv4,
            ipv6,
            routes,
            static_neighbors,
        }
    }

    /// The spoof guard of one pod in table 0: its own MAC and addresses continue to
    /// `arp_table` (ARP) or `ip_table` (IP) with the VNI set; anything else drops.
    fn spoof_guard(&self, f: &mut Flows, p: &Pod, arp_table: u8, mark: &str) {
        let (name, mac, ip, vni) = (&p.name, p.mac(), p.address, f.vni);
        let t0 = TABLE_CLASSIFIER;
        let ip_table = TABLE_FORWARD;
        f.add(
            t0,
            200,
            &format!("in_port={name},arp,dl_src={mac},arp_spa={ip},arp_sha={mac}"),
            &format!("set_field:{vni:#x}->tun_id,goto_table:{arp_table}"),
        );
        f.add(
            t0,
            200,
            &format!("in_port={name},ip,dl_src={mac},nw_src={ip}"),
            &format!("set_field:{vni:#x}->tun_id,{mark}goto_table:{ip_table}"),
        );
        if let Some(ip6) = p.address6 {
            let mut sources = vec![ip6.to_string()];
            if self.mode == Mode::L2 {
                // Neighbour discovery over the flat segment: link-local sources, and the
                // unspecified source of duplicate address detection.
                sources.push("fe80::/10".into());
                sources.push("::".into());
            }
            for s in sources {
                f.add(
                    t0,
                    200,
                    &format!("in_port={name},ipv6,dl_src={mac},ipv6_src={s}"),
                    &format!("set_field:{vni:#x}->tun_id,{mark}goto_table:{ip_table}"),
                );
            }
        }
        f.add(t0, 100, &format!("in_port={name}"), "drop");
    }

    fn l3_flows(
        &self,
        f: &mut Flows,
        me: &Node,
        local: &[&Pod],
        peers: &[&Node],
        gateway: Option<&str>,
    ) {
        let vni = f.vni;
        let tid = format!("tun_id={vni:#x}");
        let gw = me.gateway();
        let gw_mac = me.gateway_mac();
        let from_pod = format!("set_field:{FROM_POD:#x}/0xf->reg0,");
        // Table 0: pods, then tunnel packets of this tenant from known nodes.
        for p in local {
            self.spoof_guard(f, p, TABLE_ARP, &from_pod);
        }
        if let Some(g) = gateway {
            // The node itself: its ARP and IP from any of its addresses, from the
            // gateway MAC. It answers pods from its underlay address too, and then asks
            // for the pod's MAC with that address as sender (the kernel's default
            // arp_announce=0 takes the sender from the packet it is about to send); the
            // node is trusted, so any sender address goes to the responder.
            f.add(
                TABLE_CLASSIFIER,
                200,
                &format!("in_port={g},arp,dl_src={gw_mac},arp_sha={gw_mac}"),
                &format!("set_field:{vni:#x}->tun_id,goto_table:{TABLE_ARP}"),
            );
            f.add(
                TABLE_CLASSIFIER,
                200,
                &format!("in_port={g},ip,dl_src={gw_mac}"),
                &format!(
                    "set_field:{vni:#x}->tun_id,set_field:{FROM_GATEWAY:#x}/0x1f->reg0,goto_table:{TABLE_FORWARD}"
                ),
            );
            f.add(TABLE_CLASSIFIER, 100, &format!("in_port={g}"), "drop");
        }
        for n in peers {
            let from = n.address;
            match self.encap {
                // IP-in-IP has no VNI: the tunnel port and the outer source say which
                // tenant it is, so one node pair carries one IP-in-IP tenant.
                Encap::Ipip => f.add(
                    TABLE_CLASSIFIER,
                    100,
                    &format!("in_port={L3_TUNNEL},tun_src={from}"),
                    &format!(
                        "set_field:{vni:#x}->tun_id,set_field:{FROM_TUNNEL:#x}/0xf->reg0,goto_table:{TABLE_FORWARD}"
                    ),
                ),
                // By VNI, not by port: the datapath hands a datagram to the port whose
                // fixed remote= matches its source (another tenant's l2 tun-<peer>)
                // before the remote=flow port, so the same packet may arrive on either.
                Encap::Vxlan | Encap::Geneve => f.add(
                    TABLE_CLASSIFIER,
                    100,
                    &format!("{tid},tun_src={from}"),
                    &format!(
                        "set_field:{FROM_TUNNEL:#x}/0xf->reg0,goto_table:{TABLE_FORWARD}"
                    ),
                ),
            }
        }
        f.add(TABLE_CLASSIFIER, 0, "", "drop");

        // Table 10: the ARP responder.
        let reply_head = format!(
            "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:{gw_mac}->eth_src,\
             load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],\
             set_field:{gw_mac}->arp_sha"
        );
        if let Some(g) = gateway {
            // The node asking for a pod's address (its own, local or remote) is answered
            // with the router's MAC, never its own.
            f.add(
                TABLE_ARP,
                210,
                &format!("arp,{tid},arp_op=1,arp_spa={gw},arp_tpa={gw}"),
                "drop",
            );
            f.add(
                TABLE_ARP,
                150,
                &format!("in_port={g},arp,{tid},arp_op=1,arp_tpa={}", self.pod_cidr),
                &format!(
                    "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:{ROUTER_MAC}->eth_src,\
                     load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],\
                     set_field:{ROUTER_MAC}->arp_sha,move:NXM_OF_ARP_TPA[]->NXM_NX_REG1[],\
                     move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],move:NXM_NX_REG1[]->NXM_OF_ARP_SPA[],in_port"
                ),
            );
        }
        for p in local {
            // A pod asking for its own address (gratuitous ARP) gets no answer.
            f.add(
                TABLE_ARP,
                210,
                &format!("arp,{tid},arp_op=1,arp_spa={0},arp_tpa={0}", p.address),
                "drop",
            );
        }
        f.add(
            TABLE_ARP,
            200,
            &format!("arp,{tid},arp_op=1,arp_tpa={gw}"),
            &format!(
                "{reply_head},move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],set_field:{gw}->arp_spa,in_port"
            ),
        );
        f.add(
            TABLE_ARP,
            100,
            &format!("arp,{tid},arp_op=1,arp_tpa={}", self.pod_cidr),
            &format!(
                "{reply_head},move:NXM_OF_ARP_TPA[]->NXM_NX_REG1[],\
                 move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],move:NXM_NX_REG1[]->NXM_OF_ARP_SPA[],in_port"
            ),
        );
        f.add(TABLE_ARP, 0, &tid, "drop");

        // Table 20: L3 forwarding.
        let out = TABLE_OUTPUT;
        for p in local {
            let deliver = format!(
                "set_field:{gw_mac}->eth_src,set_field:{}->eth_dst,dec_ttl,goto_table:{out}",
                p.mac()
            );
            f.add(
                TABLE_FORWARD,
                200,
                &format!("ip,{tid},nw_dst={}", p.address),
                &deliver,
            );
            if let Some(a) = p.address6 {
                f.add(
                    TABLE_FORWARD,
                    200,
                    &format!("ipv6,{tid},ipv6_dst={a}"),
                    &deliver,
                );
            }
        }
        let pod_only = format!("reg0={FROM_POD:#x}/0xf");
        for n in peers {
            let to = format!(
                "set_field:{gw_mac}->eth_src,set_field:{}->eth_dst,set_field:{}->tun_dst,dec_ttl,goto_table:{out}",
                n.gateway_mac(),
                n.address
            );
            f.add(
                TABLE_FORWARD,
                100,
                &format!("ip,{pod_only},{tid},nw_dst={}", n.pod_subnet),
                &to,
            );
            if let (Some(s6), Some(_)) = (n.pod_subnet6, me.pod_subnet6) {
                f.add(
                    TABLE_FORWARD,
                    100,
                    &format!("ipv6,{pod_only},{tid},ipv6_dst={s6}"),
                    &to,
                );
            }
        }
        if gateway.is_some() {
            // To the node: its gateway address (from pods and tunnels), and from local
            // pods anything outside the pod CIDR (the node routes it). An address of the
            // pod CIDR that no node holds is dropped, not handed to the node, whose route
            // to the pod CIDR would send it straight back.
            let to_node = format!(
                "set_field:{ROUTER_MAC}->eth_src,set_field:{gw_mac}->eth_dst,dec_ttl,goto_table:{out}"
            );
            f.add(
                TABLE_FORWARD,
                200,
                &format!("ip,{tid},nw_dst={gw}"),
                &to_node,
            );
            f.add(
                TABLE_FORWARD,
                60,
                &format!("ip,{tid},nw_dst={}", self.pod_cidr),
                "drop",
            );
            f.add(
                TABLE_FORWARD,
                50,
                &format!("ip,reg0={FROM_POD:#x}/0x1f,{tid}"),
                &to_node,
            );
        }
        f.add(TABLE_FORWARD, 0, &tid, "drop");

        // Table 30: output by destination MAC.
        for p in local {
            f.add(
                TABLE_OUTPUT,
                200,
                &format!("{tid},dl_dst={}", p.mac()),
                &format!("output:{}", p.name),
            );
        }
        for n in peers {
            f.add(
                TABLE_OUTPUT,
                200,
                &format!("{tid},dl_dst={}", n.gateway_mac()),
                &format!("output:{L3_TUNNEL}"),
            );
        }
        if let Some(g) = gateway {
            f.add(
                TABLE_OUTPUT,
                200,
                &format!("{tid},dl_dst={gw_mac}"),
                &format!("output:{g}"),
            );
        }
        f.add(TABLE_OUTPUT, 0, &tid, "drop");
    }

    fn l2_flows(&self, f: &mut Flows, local: &[&Pod], peers: &[&Node]) {
        let tid = format!("tun_id={:#x}", f.vni);
        for p in local {
            self.spoof_guard(f, p, TABLE_FORWARD, "");
        }
        for n in peers {
            f.add(
                TABLE_CLASSIFIER,
                100,
                &format!("in_port=tun-{},{tid}", n.name),
                &format!("goto_table:{TABLE_FORWARD}"),
            );
        }
        f.add(TABLE_CLASSIFIER, 0, "", "drop");
        // Every packet that reaches table 20 carries the tenant's VNI, so this is the
        // tenant's whole table: no miss flow is needed behind it.
        f.add(TABLE_FORWARD, 100, &tid, "normal");
    }
}

fn host6(a: Ipv6Addr) -> Ipv6Net {
    Ipv6Net::new(a, 128).expect("128 is a valid prefix")
}

fn port(name: &str, args: &[&str]) -> Result<PortSpec, ClusterError> {
    PortSpec::parse(name, args).map_err(|e| ClusterError::Internal(format!("port {name}: {e}")))
}

/// Flows being generated, as text (parsed at the end, so what is installed is exactly
/// what the text form says).
struct Flows {
    vni: u32,
    cookie: u64,
    text: Vec<String>,
}

impl Flows {
    fn add(&mut self, table: u8, priority: u16, matches: &str, actions: &str) {
        let sep = if matches.is_empty() { "" } else { "," };
        self.text.push(format!(
            "cookie={:#x},table={table},priority={priority}{sep}{matches} actions={actions}",
            self.cookie
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{L3, with};

    #[test]
    fn printed_flows_parse_back_to_the_same_flows() {
        for (encap, mode) in [
            ("vxlan", "l3"),
            ("geneve", "l3"),
            ("ipip", "l3"),
            ("vxlan", "l2"),
            ("geneve", "l2"),
        ] {
            let c = Cluster::from_toml(&with(encap, mode)).unwrap();
            for n in c.nodes() {
                let plan = c.plan(&n.name).unwrap();
                let file = weft_flow::parse_flows_file(&plan.flows_text()).unwrap();
                let back: Vec<Flow> = file.into_iter().map(|(_, f)| f).collect();
                assert_eq!(back, plan.flows, "{encap} {mode}");
                // The full text output is a valid flows file too (ports are comments? no:
                // add-port lines are not flows), so check the flows part only; and every
                // flow is the tenant's.
                assert!(plan.flows.iter().all(|f| f.cookie == 100));
                for p in &plan.ports {
                    assert_eq!(p.validate(), Ok(()));
                }
                let json = serde_json::to_string(&plan).unwrap();
                assert!(json.contains("\"flows\""));
            }
        }
    }

    #[test]
    fn ports_and_pod_plans() {
        let c = Cluster::from_toml(L3).unwrap();
        let p = c.plan("n1").unwrap();
        let ports: Vec<String> = p.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            ports,
            [
                "a1 type=tap netns=a1 ifname=eth0 mtu=1450 mac=0a:58:c6:13:01:02 tag=100",
                "a2 type=tap netns=ns-a2 ifname=eth0 mtu=1450 mac=0a:58:c6:13:01:03 tag=100",
                "tun0 type=vxlan local=198.18.0.1 remote=flow key=flow",
            ]
        );
        let a1 = &p.pods[0];
        assert_eq!(a1.ipv4.to_string(), "198.19.1.2/24");
        assert_eq!(a1.ipv6.unwrap().to_string(), "2001:2:0:1::2/128");
        assert_eq!(
            a1.routes,
            vec![
                (
                    "198.19.0.0/16".parse().unwrap(),
                    Some("198.19.1.1".parse().unwrap())
                ),
                ("2001:2:0:1::1/128".parse().unwrap(), None),
                (
                    "2001:2::/48".parse().unwrap(),
                    Some("2001:2:0:1::1".parse().unwrap())
                ),
            ]
        );
        assert_eq!(
            a1.static_neighbors,
            vec![(
                "2001:2:0:1::1".parse().unwrap(),
                "0a:58:c6:13:01:01".parse().unwrap()
            )]
        );
        assert!(
            a1.ip_commands().contains(
                &"-6 neigh replace 2001:2:0:1::1 lladdr 0a:58:c6:13:01:01 dev eth0 nud permanent"
                    .to_string()
            )
        );
        assert_eq!(p.pods[1].ipv6, None);
        assert_eq!(p.pods[1].routes.len(), 1);
        // l2: flat, on-link, one tunnel per peer with a fixed remote.
        let c = Cluster::from_toml(
            &with("geneve", "l2").replace("mode = \"l2\"", "mode = \"l2\"\ndst_port = 6081"),
        )
        .unwrap();
        let p = c.plan("n1").unwrap();
        assert_eq!(
            p.ports[2].to_string(),
            "tun-n2 type=geneve local=198.18.0.1 remote=198.18.0.2 key=flow"
        );
        assert_eq!(p.pods[0].ipv4.to_string(), "198.19.1.2/16");
        assert_eq!(p.pods[0].ipv6.unwrap().to_string(), "2001:2:0:1::2/48");
        assert!(p.pods[0].routes.is_empty() && p.pods[0].static_neighbors.is_empty());
        // ipip: no key, no UDP port; a non-default port is kept.
        let c = Cluster::from_toml(&with("ipip", "l3")).unwrap();
        assert_eq!(
            c.plan("n2").unwrap().ports[1].to_string(),
            "tun0 type=ipip local=198.18.0.2 remote=flow"
        );
        let c = Cluster::from_toml(&L3.replace("mode = \"l3\"", "dst_port = 4790")).unwrap();
        assert!(
            c.plan("n1").unwrap().ports[2]
                .to_string()
                .ends_with("dst_port=4790")
        );
    }

    #[test]
    fn every_flow_a_tenant_could_share_is_scoped_by_vni_or_its_own_ports() {
        let c = Cluster::from_toml(L3).unwrap();
        let plan = c.plan("n1").unwrap();
        let own: Vec<&str> = plan
            .ports
            .iter()
            .filter(|p| p.name != L3_TUNNEL)
            .map(|p| p.name.as_str())
            .collect();
        for f in &plan.flows {
            let by_port = matches!(&f.matches.in_port, Some(weft_flow::PortRef::Name(n)) if own.contains(&n.as_str()));
            let by_vni = f.matches.tun_id.is_some();
            let shared_miss = f.table == 0 && f.matches.is_catchall();
            assert!(by_port || by_vni || shared_miss, "{f}");
        }
    }
}
