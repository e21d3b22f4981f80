//! The kernel set-up of the tunnel-GSO underlay port over rtnetlink, with
//! `netlink-packet-route`'s message types and no `tc` or `ip` binaries: the TAP set up
//! (`ip link set dev TAP arp off mtu N up`), a `clsact` qdisc on a device
//! (`tc qdisc add dev DEV clsact`), u32 filters whose action is a mirred redirect
//! (`tc filter add dev DEV ingress pref P protocol PROTO u32 match ... action mirred
//! egress redirect dev TO`), and finding and removing such a filter.
//!
//! Off the packet path: called when a port opens or closes.

use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{Emitable, Parseable};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkHeader, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcHeader,
    TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};

use super::neigh::Netlink;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWQDISC: u16 = 36;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;

/// `ETH_P_ALL` and `ETH_P_IP`, the protocols of a filter.
pub const ETH_P_ALL: u16 = 0x0003;
pub const ETH_P_IP: u16 = 0x0800;

/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`: the ingress hook of a `clsact` qdisc.
const INGRESS: TcHandle = TcHandle {
    major: 0xFFFF,
    minor: TcHandle::MIN_INGRESS,
};

fn emit(msg: &impl Emitable) -> Vec<u8> {
    let mut body = vec![0u8; msg.buffer_len()];
    msg.emit(&mut body);
    body
}

/// Sets a link up with ARP off, the given MTU and queue length, as `ip link set dev IF
/// arp off mtu MTU txqueuelen QLEN up` does.
pub fn link_up_noarp(ifindex: u32, mtu: u32, txqlen: u32) -> io::Result<()> {
    let header = LinkHeader {
        index: ifindex,
        flags: LinkFlags::Up | LinkFlags::Noarp,
        change_mask: LinkFlags::Up | LinkFlags::Noarp,
        ..LinkHeader::default()
    };
    let mut msg = LinkMessage::default();
    msg.header = header;
    msg.attributes = vec![LinkAttribute::Mtu(mtu), LinkAttribute::TxQueueLen(txqlen)];
    Netlink::open(0)?
        .request(RTM_NEWLINK, NLM_F_ACK, &emit(&msg), 0)
        .map(drop)
}

/// Adds a `clsact` qdisc to a device; `Ok(false)` when it has one already.
pub fn add_clsact(ifindex: u32) -> io::Result<bool> {
    let msg = TcMessage::from_parts(
        TcHeader {
            index: ifindex as i32,
            handle: TcHandle {
                major: 0xFFFF,
                minor: 0,
            },
            parent: TcHandle::CLSACT,
            ..TcHeader::default()
        },
        vec![TcAttribute::Kind("clsact".into())],
    );
    match Netlink::open(0)?.request(
        RTM_NEWQDISC,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &emit(&msg),
        0,
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// One 32-bit match of a u32 filter: `(value & mask)` at byte `off` of the network
/// header (both in host order here, big-endian on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct U32Match {
    pub value: u32,
    pub mask: u32,
    pub off: i32,
}

impl U32Match {
    /// `match ip dst ADDR/32`.
    pub fn ip_dst(addr: Ipv4Addr) -> U32Match {
        U32Match {
            value: u32::from(addr),
            mask: u32::MAX,
            off: 16,
        }
    }

    /// `match ip protocol PROTO 0xff`.
    pub fn ip_protocol(proto: u8) -> U32Match {
        U32Match {
            value: u32::from(proto) << 16,
            mask: 0x00FF_0000,
            off: 8,
        }
    }

    /// `match ip dport PORT 0xffff` (an IPv4 header without options, as tc's own).
    pub fn udp_dport(port: u16) -> U32Match {
        U32Match {
            value: u32::from(port),
            mask: 0xFFFF,
            off: 20,
        }
    }
}

/// The `RTM_NEWTFILTER` body of a u32 filter on `ifindex`'s ingress hook, preference
/// `pref`, for `protocol` (`ETH_P_*`), matching all of `matches` (none: every packet),
/// redirecting what it matches to the egress of `to`.
pub fn u32_redirect(
    ifindex: u32,
    pref: u16,
    protocol: u16,
    matches: &[U32Match],
    to: u32,
) -> TcMessage {
    let mut keys: Vec<TcU32Key> = matches
        .iter()
        .map(|m| {
            let mut k = TcU32Key::default();
            k.mask = m.mask;
            k.val = m.value & m.mask;
            k.off = m.off;
            k
        })
        .collect();
    if keys.is_empty() {
        // `match u32 0 0`: one key that every packet matches.
        keys.push(TcU32Key::default());
    }
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = keys.len() as u8;
    selector.keys = keys;
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    TcMessage::from_parts(
        TcHeader {
            index: ifindex as i32,
            parent: INGRESS,
            // TC_H_MAKE(pref << 16, htons(protocol)).
            info: (u32::from(pref) << 16) | u32::from(protocol.to_be()),
            ..TcHeader::default()
        },
        vec![
            TcAttribute::Kind(TcFilterU32::KIND.to_string()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(selector)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ],
    )
}

/// Adds a filter built by [`u32_redirect`].
pub fn add_filter(msg: &TcMessage) -> io::Result<()> {
    Netlink::open(0)?
        .request(
            RTM_NEWTFILTER,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &emit(msg),
            0,
        )
        .map(drop)
}

/// Whether `ifindex`'s ingress hook has a filter of preference `pref` whose action is
/// a mirred redirect (one an underlay port adds), as `tc filter show dev DEV ingress
/// pref PREF | grep mirred` would tell.
pub fn has_redirect(ifindex: u32, pref: u16) -> io::Result<bool> {
    let query = TcMessage::from_parts(
        TcHeader {
            index: ifindex as i32,
            parent: INGRESS,
            ..TcHeader::default()
        },
        Vec::new(),
    );
    let answers = match Netlink::open(0)?.request(
        RTM_GETTFILTER,
        NLM_F_DUMP,
        &emit(&query),
        RTM_NEWTFILTER,
    ) {
        Ok(a) => a,
        // No clsact qdisc: no filters.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(answers.iter().any(|body| {
        TcMessage::parse(body.as_slice())
            .is_ok_and(|m| (m.header.info >> 16) as u16 == pref && is_redirect(&m))
    }))
}

fn is_redirect(m: &TcMessage) -> bool {
    m.attributes.iter().any(|a| match a {
        TcAttribute::Options(opts) => opts.iter().any(|o| match o {
            TcOption::U32(TcFilterU32Option::Action(actions)) => actions.iter().any(|act| {
                act.attributes
                    .iter()
                    .any(|aa| matches!(aa, TcActionAttribute::Kind(k) if k == TcActionMirror::KIND))
            }),
            _ => false,
        }),
        _ => false,
    })
}

/// Removes the ingress filters of preference `pref` (any protocol) of `ifindex`, as
/// `tc filter del dev DEV ingress pref PREF` does.
pub fn del_ingress_filter(ifindex: u32, pref: u16) -> io::Result<()> {
    let msg = TcMessage::from_parts(
        TcHeader {
            index: ifindex as i32,
            parent: INGRESS,
            info: u32::from(pref) << 16,
            ..TcHeader::default()
        },
        Vec::new(),
    );
    Netlink::open(0)?
        .request(RTM_DELTFILTER, NLM_F_ACK, &emit(&msg), 0)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The u32 selectors of a filter message.
    fn selectors(m: &TcMessage) -> Vec<TcU32Selector> {
        m.attributes
            .iter()
            .filter_map(|a| match a {
                TcAttribute::Options(o) => Some(o),
                _ => None,
            })
            .flatten()
            .filter_map(|o| match o {
                TcOption::U32(TcFilterU32Option::Selector(s)) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_tunnel_filter_is_emitted_as_tc_would_send_it() {
        let matches = [
            U32Match::ip_dst(Ipv4Addr::new(198, 18, 0, 1)),
            U32Match::ip_protocol(17),
            U32Match::udp_dport(4789),
        ];
        let body = emit(&u32_redirect(7, 4789, ETH_P_IP, &matches, 9));
        // struct tcmsg: ifindex 7, parent ffff:fff2 (clsact ingress), info = pref << 16
        // | htons(ETH_P_IP).
        assert_eq!(&body[4..8], &7i32.to_ne_bytes());
        assert_eq!(&body[12..16], &0xFFFF_FFF2u32.to_ne_bytes());
        assert_eq!(
            &body[16..20],
            &((4789u32 << 16) | u32::from(0x0800u16.to_be())).to_ne_bytes()
        );
        // The keys' mask and value are big-endian on the wire, whatever the host.
        let has = |bytes: &[u8]| body.windows(bytes.len()).any(|w| w == bytes);
        assert!(
            has(&[0xff, 0xff, 0xff, 0xff, 0xc6, 0x12, 0x00, 0x01]),
            "ip dst"
        );
        assert!(
            has(&[0x00, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00]),
            "protocol"
        );
        assert!(
            has(&[0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x12, 0xb5]),
            "dport"
        );
        assert!(has(b"u32\0") && has(b"mirred\0"));
        // What the kernel would dump back parses to the same filter.
        let back = TcMessage::parse(body.as_slice()).unwrap();
        assert_eq!(back.header.info >> 16, 4789);
        assert!(is_redirect(&back));
        let keys: Vec<(u32, u32, i32)> = selectors(&back)
            .into_iter()
            .flat_map(|s| s.keys)
            .map(|k| (k.val, k.mask, k.off))
            .collect();
        assert_eq!(
            keys,
            vec![
                (0xc612_0001, 0xffff_ffff, 16),
                (0x0011_0000, 0x00ff_0000, 8),
                (0x0000_12b5, 0x0000_ffff, 20)
            ]
        );
    }

    #[test]
    fn a_catch_all_filter_has_one_key_that_matches_everything() {
        let m = u32_redirect(3, 1, ETH_P_ALL, &[], 4);
        assert!(is_redirect(&m));
        let body = emit(&m);
        assert_eq!(
            &body[16..20],
            &((1u32 << 16) | u32::from(0x0003u16.to_be())).to_ne_bytes()
        );
        let back = TcMessage::parse(body.as_slice()).unwrap();
        let nkeys: Vec<u8> = selectors(&back).iter().map(|s| s.nkeys).collect();
        assert_eq!(nkeys, vec![1]);
    }
}
