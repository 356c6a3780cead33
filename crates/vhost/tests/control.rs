//! The control socket as an operator meets it: errors, raw HTTP (as curl would speak it),
//! and the client's messages when the daemon is not there.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use prezero_testkit::rig::*;
use prezero_testkit::wait::*;
use prezero_testkit::Scratch;
use prezero_vhost::{control_request, ControlRequest, Error, FeatureOffer};

fn raw(path: &std::path::Path, request: &str) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

#[test]
fn raw_http_requests_like_curl_sends_them() {
    let d = Daemon::start("curl", FeatureOffer::default());
    let body = r#"{"amount_mib": 256}"#;
    let (status, json) = raw(
        &d.control(),
        &format!(
            "PUT /balloon HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["target_pages"], 65536);
    assert_eq!(json["notification"]["result"], "no_guest");
    assert_eq!(d.handle.status().target_bytes, 256 * MIB);

    // No statistics: refused with the reason, as Firecracker refuses them when disabled.
    let (status, json) = raw(&d.control(), "GET /balloon/statistics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 400);
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("no guest is connected"),
        "{json}"
    );

    let (status, json) = raw(&d.control(), "GET /nope HTTP/1.1\r\n\r\n");
    assert_eq!(status, 404);
    assert!(json["routes"].is_array());
    let (status, _) = raw(&d.control(), "DELETE /balloon HTTP/1.1\r\n\r\n");
    assert_eq!(status, 405);
    let (status, json) = raw(&d.control(), "garbage\r\n\r\n");
    assert_eq!(status, 400, "{json}");
}

#[test]
fn bad_targets_are_refused_with_a_reason() {
    let d = Daemon::start("badtarget", FeatureOffer::default());
    let put = |body: &str| {
        raw(
            &d.control(),
            &format!(
                "PUT /balloon HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    for body in [
        "",
        "{}",
        r#"{"target_bytes": 1, "target_pages": 1}"#,
        r#"{"target_bytes": -1}"#,
        r#"{"bytes": 4096}"#,
        r#"{"target_bytes": 18446744073709551615}"#,
    ] {
        let (status, json) = put(body);
        assert_eq!(status, 400, "{body}: {json}");
        assert!(json["error"].is_string());
    }
    assert_eq!(d.handle.status().target_pages, 0, "nothing was applied");
    // The client turns a refusal into an error with the daemon's reason.
    let err = control_request(d.control(), &ControlRequest::SetTargetBytes(u64::MAX)).unwrap_err();
    assert!(
        matches!(err, Error::ControlRefused { status: 400, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("16 TiB"), "{err}");
}

#[test]
fn the_client_says_what_is_wrong_when_no_daemon_answers() {
    let s = Scratch::new("noctl");
    let err = control_request(s.path().join("none.ctl"), &ControlRequest::Status).unwrap_err();
    assert!(matches!(err, Error::ControlConnect { .. }), "{err}");
    assert!(err.to_string().contains("--control"), "{err}");

    let stale = s.path().join("stale.ctl");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let err = control_request(&stale, &ControlRequest::Metrics).unwrap_err();
    assert!(err.to_string().contains("gone"), "{err}");
}

#[test]
fn every_client_request_gets_a_json_answer() {
    let d = Daemon::start("client", FeatureOffer::default());
    for r in [
        ControlRequest::Status,
        ControlRequest::SetTargetPages(10),
        ControlRequest::SetTargetBytes(8192),
        ControlRequest::RequestStats(None),
        ControlRequest::SetStatsPollingInterval(3),
        ControlRequest::Metrics,
    ] {
        let v = control_request(d.control(), &r).unwrap();
        assert!(v.is_object(), "{r:?}: {v}");
    }
    assert_eq!(d.handle.status().target_pages, 2);
    assert_eq!(d.handle.status().stats_polling_interval_s, 3);
    let refused = control_request(d.control(), &ControlRequest::Stats).unwrap_err();
    assert!(
        matches!(refused, Error::ControlRefused { status: 400, .. }),
        "{refused}"
    );
    let m = control_request(d.control(), &ControlRequest::Metrics).unwrap();
    assert_eq!(m["daemon"]["stats_requests"], 1);
    assert!(m["device"]["errors"].is_object());
}
