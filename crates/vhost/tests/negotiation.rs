//! `last_negotiation` of `GET /balloon`: a guest's negotiation stays readable after it leaves
//! (a short-lived guest can negotiate and go between two polls), and is no longer "the last"
//! once the next guest is accepted.

use prezero_balloon::features::{REPORTING, STATS_VQ, VERSION_1};
use prezero_guest::VhostUserTransport;
use prezero_testkit::bits;
use prezero_testkit::rig::*;
use prezero_testkit::wait::*;
use prezero_vhost::FeatureOffer;

const MIB: u64 = 1 << 20;

#[test]
fn the_last_guests_negotiation_outlives_its_connection() {
    let d = Daemon::start("lastneg", FeatureOffer::default());
    assert_eq!(d.handle.status().last_negotiation, None);

    let features = bits(&[VERSION_1, STATS_VQ, REPORTING]);
    let mut t = VhostUserTransport::connect(d.socket(), 4).unwrap();
    assert_eq!(t.negotiate(features).unwrap(), features);
    t.set_memory(&ram(16 * MIB)).unwrap();
    let live = d.handle.status().last_negotiation.expect("negotiated");
    assert_eq!(
        (live.guest, live.connected, live.features),
        (1, true, features)
    );
    drop(t);
    d.wait_disconnections(1);

    let s = d.handle.status();
    assert!(!s.connected);
    assert_eq!(
        s.negotiated_features, 0,
        "the live fields are the connected guest's"
    );
    let last = s.last_negotiation.expect("kept after the guest left");
    assert_eq!(
        (last.guest, last.connected, last.features),
        (1, false, features)
    );
    assert_eq!(last.queues, ["inflate", "deflate", "stats", "reporting"]);
    assert!(last.negotiated.iter().any(|n| n == "reporting"));

    // The next guest: accepted but not negotiated yet, so nothing is "its" negotiation.
    let t2 = VhostUserTransport::connect(d.socket(), 4).unwrap();
    wait_until("the second guest to be accepted", || {
        d.handle.status().connected
    });
    assert_eq!(d.handle.status().last_negotiation, None);
    drop(t2);
}
