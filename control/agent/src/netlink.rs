//! Addresses, links and routes by rtnetlink, in the agent's namespace or in a pod's.
//!
//! A netlink socket works in the namespace of the thread that opened it, so every call
//! here runs on a thread of its own that first enters the namespace (`setns`), then
//! opens the socket on a small current-thread runtime and does its work. The agent's
//! own threads never change namespace.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// Runs `f` with a netlink handle opened inside `netns` (a path to a namespace file;
/// `None`: the agent's own namespace). Errors are one line.
pub async fn run_in<F, Fut, T>(netns: Option<PathBuf>, f: F) -> Result<T, String>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weft-netlink".into())
        .spawn(move || {
            let r = (|| {
                if let Some(p) = &netns {
                    let file = std::fs::File::open(p)
                        .map_err(|e| format!("network namespace {}: {e}", p.display()))?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| format!("cannot enter network namespace {}: {e}", p.display()),
                    )?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("netlink runtime: {e}"))?;
                rt.block_on(async move {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
                    tokio::spawn(conn);
                    f(handle).await
                })
            })();
            let _ = tx.send(r);
        })
        .map_err(|e| format!("netlink thread: {e}"))?;
    rx.await
        .map_err(|_| "netlink thread ended without an answer".to_string())?
}

/// The index of link `name`, if it exists.
pub async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, String> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(format!("link {name}: {e}")),
    }
}

/// Gives link `name` its addresses, brings it up and adds the routes (each replaced if
/// there, so this is idempotent). A route without a gateway is on-link.
pub async fn configure(
    h: &Handle,
    name: &str,
    addresses: &[IpNet],
    routes: &[(IpNet, Option<IpAddr>)],
) -> Result<(), String> {
    let idx = link_index(h, name)
        .await?
        .ok_or_else(|| format!("no interface {name}"))?;
    for a in addresses {
        h.address()
            .add(idx, a.addr(), a.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|e| format!("address {a} on {name}: {e}"))?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(|e| format!("bring {name} up: {e}"))?;
    for (dst, via) in routes {
        let (IpNet::V4(d), gw) = (dst, via) else {
            return Err(format!("route {dst}: only IPv4 routes are supported"));
        };
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix_len())
            .output_interface(idx);
        match gw {
            Some(IpAddr::V4(g)) => b = b.gateway(*g),
            Some(IpAddr::V6(g)) => return Err(format!("route {dst} via {g}: not IPv4")),
            None => b = b.scope(netlink_packet_route::route::RouteScope::Link),
        }
        h.route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(|e| format!("route {dst} on {name}: {e}"))?;
    }
    Ok(())
}

/// Whether link `name` has every address of `addresses` (for CHECK).
pub async fn has_addresses(h: &Handle, name: &str, addresses: &[IpNet]) -> Result<bool, String> {
    let Some(idx) = link_index(h, name).await? else {
        return Ok(false);
    };
    let mut have = Vec::new();
    let mut s = h.address().get().set_link_index_filter(idx).execute();
    while let Some(m) = s.try_next().await.map_err(|e| format!("addresses: {e}"))? {
        for a in &m.attributes {
            if let AddressAttribute::Address(ip) = a {
                have.push((*ip, m.header.prefix_len));
            }
        }
    }
    Ok(addresses
        .iter()
        .all(|a| have.contains(&(a.addr(), a.prefix_len()))))
}

/// The MTU of the link that holds `ip`.
pub async fn mtu_of_address(h: &Handle, ip: Ipv4Addr) -> Result<Option<u32>, String> {
    let mut idx = None;
    let mut s = h.address().get().execute();
    while let Some(m) = s.try_next().await.map_err(|e| format!("addresses: {e}"))? {
        if m.attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(a) if *a == IpAddr::V4(ip)))
        {
            idx = Some(m.header.index);
        }
    }
    let Some(idx) = idx else { return Ok(None) };
    mtu_of_index(h, idx).await
}

/// The MTU of link `name`.
pub async fn mtu_of(h: &Handle, name: &str) -> Result<Option<u32>, String> {
    match link_index(h, name).await? {
        Some(i) => mtu_of_index(h, i).await,
        None => Err(format!("no interface {name}")),
    }
}

async fn mtu_of_index(h: &Handle, idx: u32) -> Result<Option<u32>, String> {
    let mut links = h.link().get().match_index(idx).execute();
    let m = links
        .try_next()
        .await
        .map_err(|e| format!("link {idx}: {e}"))?;
    Ok(m.and_then(|m| {
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(v) => Some(*v),
            _ => None,
        })
    }))
}

/// Whether link `name` carries a route to `dst` via `gw` (for CHECK). `Ok(None)`: there
/// is no link `name`.
pub async fn has_route(
    h: &Handle,
    name: &str,
    dst: ipnet::Ipv4Net,
    gw: Ipv4Addr,
) -> Result<Option<bool>, String> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute};
    let Some(idx) = link_index(h, name).await? else {
        return Ok(None);
    };
    let mut s = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(m) = s.try_next().await.map_err(|e| format!("routes: {e}"))? {
        if m.header.destination_prefix_length != dst.prefix_len() {
            continue;
        }
        let mut oif = None;
        let mut via = None;
        let mut to = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                RouteAttribute::Destination(RouteAddress::Inet(d)) => to = Some(*d),
                _ => {}
            }
        }
        let to = to.unwrap_or(Ipv4Addr::UNSPECIFIED);
        if oif == Some(idx) && via == Some(gw) && to == dst.network() {
            return Ok(Some(true));
        }
    }
    Ok(Some(false))
}
