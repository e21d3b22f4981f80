//! The switch's state guarantees, without privileges (loopback tunnels only):
//! a change that cannot be saved is refused and not applied, and a saved port that
//! cannot be opened at start is kept down while the rest of the node starts.

use std::net::UdpSocket;
use std::path::Path;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use weft_datapath::{
    PortState, Record, SavedState, StateStore, Switch, SwitchError, SwitchOptions,
};
use weft_flow::port::PortSpec;
use weft_flow::{Bundle, FlowFilter, parse_flow};
use weftd::state;

fn spec(line: &str) -> PortSpec {
    let mut it = line.split_whitespace();
    let name = it.next().unwrap();
    PortSpec::parse(name, &it.collect::<Vec<_>>()).unwrap()
}

fn free_udp_port() -> u16 {
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// The state directory's store, whose appends can be made to fail (as on a full
/// disk: tests/weftd.rs in netns-tests does it with a real full file system).
#[derive(Debug)]
struct Store {
    dir: state::StateDir,
    fail: AtomicBool,
}

impl StateStore for Store {
    fn append(&self, records: &[Record]) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(format!(
                "cannot save state to {}: No space left on device",
                self.dir.dir().display()
            )));
        }
        self.dir.append(records)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.dir.sync()
    }
    fn snapshot_due(&self) -> bool {
        self.dir.snapshot_due()
    }
    fn begin_snapshot(&self) -> std::io::Result<u64> {
        self.dir.begin_snapshot()
    }
    fn write_snapshot(
        &self,
        seq: u64,
        ports: &[PortSpec],
        flows: weft_datapath::FlowWalk<'_>,
    ) -> std::io::Result<()> {
        self.dir.write_snapshot(seq, ports, flows)
    }
}

thread_local! {
    static STORE: std::cell::RefCell<Option<Arc<Store>>> = const { std::cell::RefCell::new(None) };
}

fn options(dir: &Path) -> SwitchOptions {
    let store = Arc::new(Store {
        dir: state::StateDir::new(dir),
        fail: AtomicBool::new(false),
    });
    STORE.with(|s| *s.borrow_mut() = Some(Arc::clone(&store)));
    SwitchOptions {
        state_store: Some(store),
        ..SwitchOptions::default()
    }
}

/// The state with its flows in a fixed order (a replayed journal's order is not the
/// table's).
fn sorted(mut s: SavedState) -> SavedState {
    s.flows.sort_by_key(|f| f.to_string());
    s
}

fn add_flow(text: &str) -> Bundle {
    Bundle::add_flows(vec![(1, parse_flow(text).unwrap())])
}

/// Makes every append of the last store `options` made fail (as a full disk does).
/// Returns a closure that undoes it.
fn block_saves(_dir: &Path) -> impl FnOnce() + use<> {
    let store = STORE.with(|s| s.borrow().clone()).unwrap();
    store.fail.store(true, Ordering::SeqCst);
    move || store.fail.store(false, Ordering::SeqCst)
}

#[test]
fn a_change_that_cannot_be_saved_is_refused_and_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let sw = Switch::start(options(dir.path()), None).unwrap();
    let udp = free_udp_port();
    sw.add_port(spec(&format!(
        "tun0 type=vxlan local=127.0.0.1 dst_port={udp}"
    )))
    .unwrap();
    sw.apply(&add_flow("priority=1,in_port=tun0 actions=drop"))
        .unwrap();
    let on_disk = sorted(state::load(dir.path()).unwrap().unwrap());
    assert_eq!(on_disk, sorted(sw.state()), "saved after each change");

    let unblock = block_saves(dir.path());
    // A flow change.
    let e = sw
        .apply(&add_flow("priority=2,in_port=tun0 actions=drop"))
        .unwrap_err();
    assert!(matches!(e, SwitchError::Save(_)), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("cannot save state to "), "{text}");
    assert!(text.ends_with("the change was not applied"), "{text}");
    assert_eq!(
        sw.dump_flows(&FlowFilter::all()).unwrap().len(),
        1,
        "the refused flow is not in the table"
    );
    // A port added.
    let udp2 = free_udp_port();
    let e = sw
        .add_port(spec(&format!(
            "tun1 type=vxlan local=127.0.0.1 dst_port={udp2}"
        )))
        .unwrap_err();
    assert!(matches!(e, SwitchError::Save(_)), "{e:?}");
    assert!(
        !sw.ports().iter().any(|p| p.spec.name == "tun1"),
        "the refused port is not there"
    );
    // Its socket was closed again: the UDP port is free.
    UdpSocket::bind(("127.0.0.1", udp2)).expect("the refused port's socket is closed");
    // A port deleted.
    let e = sw.del_port("tun0").unwrap_err();
    assert!(matches!(e, SwitchError::Save(_)), "{e:?}");
    assert!(sw.ports().iter().any(|p| p.spec.name == "tun0"), "kept");
    // Nothing on disk changed either.
    assert_eq!(sorted(state::load(dir.path()).unwrap().unwrap()), on_disk);

    // Once saves work again, so do changes.
    unblock();
    sw.apply(&add_flow("priority=2,in_port=tun0 actions=drop"))
        .unwrap();
    assert_eq!(sw.dump_flows(&FlowFilter::all()).unwrap().len(), 2);
    assert_eq!(
        sorted(state::load(dir.path()).unwrap().unwrap()),
        sorted(sw.state())
    );
}

/// A change that leaves the state as it is writes nothing, so it works on a full disk.
#[test]
fn a_change_that_changes_nothing_needs_no_save() {
    let dir = tempfile::tempdir().unwrap();
    let sw = Switch::start(options(dir.path()), None).unwrap();
    sw.apply(&add_flow("priority=1 actions=drop")).unwrap();
    let _blocked = block_saves(dir.path());
    let e = sw.del_port("nosuch").unwrap_err();
    assert!(matches!(e, SwitchError::NoSuchPort(_)), "{e:?}");
    // Deleting flows that match nothing.
    let o = sw
        .apply(&Bundle {
            changes: vec![weft_flow::FlowMod::Delete {
                filter: FlowFilter {
                    table: Some(7),
                    ..FlowFilter::all()
                },
            }],
            lines: vec![1],
        })
        .unwrap();
    assert_eq!(o.deleted, 0);
}

#[test]
fn a_saved_port_that_cannot_be_opened_is_down_and_the_rest_start() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (free_udp_port(), free_udp_port());
    // 192.0.2.1 (TEST-NET-1) is no address of this host: the bind fails, as it does for
    // a tunnel whose local address is gone, or a TAP whose pod namespace is gone.
    let saved = SavedState {
        ports: vec![
            spec(&format!(
                "good type=vxlan ofport=1 local=127.0.0.1 dst_port={a}"
            )),
            spec(&format!(
                "gone type=vxlan ofport=2 local=192.0.2.1 dst_port={b}"
            )),
        ],
        flows: vec![
            parse_flow("priority=1,in_port=1 actions=output:2").unwrap(),
            parse_flow("priority=1,in_port=2 actions=output:1").unwrap(),
        ],
        ..SavedState::default()
    };
    state::save(dir.path(), &saved).unwrap();
    let sw = Switch::start(options(dir.path()), Some(saved.clone())).unwrap();

    let ports = sw.ports();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(ports[0].spec.name, "good");
    assert_eq!(ports[0].state, PortState::Up);
    assert_eq!(ports[1].spec.name, "gone");
    assert_eq!(ports[1].spec.ofport, Some(2), "keeps its number");
    match &ports[1].state {
        PortState::Down(why) => assert!(why.contains("192.0.2.1"), "{why}"),
        up => panic!("expected down, got {up:?}"),
    }
    let stats = sw.stats();
    let up: Vec<(&str, bool)> = stats
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.up))
        .collect();
    assert_eq!(up, [("good", true), ("gone", false)]);
    assert_eq!(sw.dump_flows(&FlowFilter::all()).unwrap().len(), 2);
    // Still in the state, with its number: nothing is lost by a save.
    assert_eq!(sw.state(), saved);
    // Its name and number are taken; flows may name it.
    let e = sw
        .add_port(spec(&format!(
            "gone type=vxlan local=127.0.0.1 dst_port={b}"
        )))
        .unwrap_err();
    assert!(matches!(e, SwitchError::PortExists(_)), "{e:?}");
    let e = sw
        .add_port(spec(&format!(
            "x type=vxlan ofport=2 local=127.0.0.1 dst_port={b}"
        )))
        .unwrap_err();
    assert!(
        matches!(e, SwitchError::NumberTaken { number: 2, .. }),
        "{e:?}"
    );
    sw.apply(&add_flow("priority=5,in_port=gone actions=drop"))
        .unwrap();

    // del-port removes it, and the state without it is saved.
    sw.del_port("gone").unwrap();
    assert_eq!(sw.ports().len(), 1);
    assert!(sw.stats().ports.iter().all(|p| p.up));
    let on_disk = state::load(dir.path()).unwrap().unwrap();
    assert_eq!(on_disk.ports.len(), 1);
    assert_eq!(on_disk.ports[0].name, "good");
}
