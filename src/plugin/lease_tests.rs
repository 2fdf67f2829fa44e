//! Filter-side sync when the lease moves while a poll is out: the answer that
//! comes back to the root that lost it is dropped, and a stored table is only
//! ever replaced by a newer one.

use super::host::mock::MockHost;
use super::host::MapKind;
use super::tests::{header_of, routes, tick_all, FILTER_SYNC_CONFIG};
use super::*;
use crate::sync::ROUTES_KEY;

fn stored_revision(host: &MockHost) -> u64 {
    let shared = host.shared.borrow();
    let (document, _) = shared.get(ROUTES_KEY).expect("a stored table");
    crate::route::read_routes(document, |_, _| {})
        .expect("a document")
        .revision
}

fn answer(root: &mut Role, host: &MockHost, token: u32, body: &[u8]) {
    *host.call_body.borrow_mut() = body.to_vec();
    host.maps.borrow_mut().insert(
        MapKind::HttpCallResponseHeaders,
        vec![(":status".into(), b"200".to_vec())],
    );
    root.on_http_call_response(host, token, body.len());
}

#[test]
fn a_stale_answer_after_the_lease_moved_is_dropped() {
    let host = MockHost::default();
    host.env
        .borrow_mut()
        .insert("HOSTNAME".into(), "edge-1".into());
    host.now.set(10_000_000);
    let mut roots: Vec<Role> = (0..3)
        .map(|_| Role::configure(&host, Some(b"filter"), FILTER_SYNC_CONFIG.as_bytes()).unwrap())
        .collect();
    for _ in 0..10 {
        tick_all(&mut roots, &host);
    }
    let leader = (0..roots.len())
        .find(|&i| matches!(&roots[i], Role::Filter(w) if w.sync_leading()))
        .expect("a leader");
    answer(&mut roots[leader], &host, 1, &routes(5, 1_000));
    assert_eq!(stored_revision(&host), 5);
    // Its next poll (call 2) is out when it stalls (no ticks) past the lease.
    let mut stalled = roots.remove(leader);
    let lapse = crate::lease::LEASE_MS / FOLLOW_PERIOD.as_millis() as u64 + 3;
    for _ in 0..lapse {
        tick_all(&mut roots, &host);
    }
    let successor = (0..roots.len())
        .find(|&i| matches!(&roots[i], Role::Filter(w) if w.sync_leading()))
        .expect("a successor");
    let path = header_of(&host.calls.borrow()[2], ":path").unwrap();
    assert!(path.contains("revision=5"), "{path}");
    answer(&mut roots[successor], &host, 3, &routes(7, 2_500));
    assert_eq!(stored_revision(&host), 7);
    // The stalled root's answer comes back, older than what is stored: dropped.
    answer(&mut stalled, &host, 2, &routes(6, 500));
    assert_eq!(stored_revision(&host), 7, "the newer table stays");
    assert_eq!(
        host.calls.borrow().len(),
        4,
        "the successor's next poll only"
    );
}

#[test]
fn the_leader_never_stores_over_a_newer_table() {
    let host = MockHost::default();
    host.now.set(10_000_000);
    let mut roots: Vec<Role> =
        vec![Role::configure(&host, Some(b"filter"), FILTER_SYNC_CONFIG.as_bytes()).unwrap()];
    for _ in 0..10 {
        tick_all(&mut roots, &host);
    }
    // Shared data got revision 9 (another Envoy process of the same VM group, a
    // restore): an answer at 8 leaves it, and the next poll asks from 9.
    host.shared
        .borrow_mut()
        .insert(ROUTES_KEY.into(), (routes(9, 1_000), 41));
    answer(&mut roots[0], &host, 1, &routes(8, 500));
    assert_eq!(stored_revision(&host), 9);
    let path = header_of(&host.calls.borrow()[1], ":path").unwrap();
    assert!(path.contains("revision=9"), "{path}");
    answer(&mut roots[0], &host, 2, &routes(10, 500));
    assert_eq!(stored_revision(&host), 10);
}
