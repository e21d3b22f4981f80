//! Antrea's ARP responder written as flows alone.

use super::*;

#[test]
fn antrea_arp_responder_with_flows_alone() {
    let text = "table=0,priority=200,arp,arp_op=1,arp_tpa=198.19.1.1 \
        actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:aa:bb:cc:dd:ee:01->eth_src,\
        load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],\
        set_field:aa:bb:cc:dd:ee:01->arp_sha,move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],\
        set_field:198.19.1.1->arp_spa,in_port";
    let flow = parse_flow(text).unwrap();
    let p = Pipeline::new(ports())
        .apply(&Bundle::new(vec![FlowMod::Add { flow }]), 0)
        .unwrap()
        .0;
    let asker = [0x02, 0x42, 0xc6, 0x13, 0x01, 0x05];
    let request = arp_request(asker, [198, 19, 1, 5], [198, 19, 1, 1]);
    let key = FlowKey::extract(&request, 2, &TunnelMeta::NONE).unwrap();
    let mut cache = FlowCache::new(16);
    let r = p.process(&key, request.len() as u64, 0, &mut cache);
    assert_eq!(r.actions().len(), 1);
    let DpAction::Output { port, .. } = r.actions()[0] else {
        panic!("{:?}", r.actions())
    };
    assert_eq!(port, 2, "the reply goes back out of in_port");
    let mut frame = request.clone();
    commit(&mut frame, &key, r.state_of(&r.actions()[0])).unwrap();

    let ours = [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01];
    let mut expect = eth(asker, ours, 0x0806);
    expect.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    expect.extend_from_slice(&ours);
    expect.extend_from_slice(&[198, 19, 1, 1]);
    expect.extend_from_slice(&asker);
    expect.extend_from_slice(&[198, 19, 1, 5]);
    expect.extend_from_slice(&[0; 18]);
    assert_eq!(frame, expect);
    // Another address is not answered.
    let other = arp_request(asker, [198, 19, 1, 5], [198, 19, 1, 2]);
    let key = FlowKey::extract(&other, 2, &TunnelMeta::NONE).unwrap();
    assert_eq!(
        p.process(&key, 60, 0, &mut cache).drop_reason(),
        Some(DropReason::TableMiss)
    );
}
