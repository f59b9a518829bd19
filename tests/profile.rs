//! Learned usage round-trips through a real etcd: the leader's `ops()` written as-is are what
//! `citadel profile` shows, one image or all, with corrupt values skipped rather than fatal.

use std::time::{Duration, SystemTime};

use citadel::keys::Keys;
use citadel::profile::{self, Profiles};

mod common;

/// 20 samples per image: memory 10..=200 MB against 256 for busybox (fits), cpus
/// 0.001..=0.02 against 0.5 (asks for too much); redis uses 30..=600 MB against 512.
fn fed() -> Profiles {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut p = Profiles::new();
    for i in 1..=20 {
        let i = f64::from(i);
        p.record_at("busybox:1.36", 0.5, 256.0, i * 0.001, i * 10.0, at);
        p.record_at("library/redis:7", 0.1, 512.0, i * 0.005, i * 30.0, at);
        // Unreadable samples never reach the profile.
        p.record_at("library/redis:7", 0.1, 512.0, f64::NAN, 1.0, at);
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_renders_what_the_leader_wrote_and_skips_corrupt_values() {
    let etcd = common::start_etcd().await;
    let client = common::connect(&etcd).await;
    let keys = Keys::default();
    let mut kv = client.kv_client();
    let ops = fed().ops(&keys);
    assert_eq!(ops.len(), 2);
    for (key, value) in ops {
        kv.put(key, value, None).await.expect("put a profile");
    }

    let all = profile::show(&client, &keys, None).await.expect("show all");
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 3, "{all}");
    assert!(lines[0].starts_with("IMAGE "), "{all}");
    let busybox: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        busybox[..4],
        ["busybox:1.36", "20", "0.5/0.01/0.019", "256/100/190"],
        "{all}"
    );
    assert!(
        lines[1].ends_with("  asks for too much cpu (p95 0.019 of 0.5 requested)"),
        "{all}"
    );
    let redis: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        redis[..4],
        ["library/redis:7", "20", "0.1/0.05/0.095", "512/300/570"],
        "{all}"
    );
    assert!(
        lines[2].ends_with("  uses more memory than requested (p95 570 of 512 MB requested)"),
        "{all}"
    );

    // One image: its row alone, under the same header.
    let one = profile::show(&client, &keys, Some("library/redis:7"))
        .await
        .expect("show one");
    assert_eq!(one.lines().collect::<Vec<_>>(), [lines[0], lines[2]]);

    // An image never observed.
    let unknown = profile::show(&client, &keys, Some("nginx:1"))
        .await
        .expect("show unknown");
    assert_eq!(
        unknown,
        "no observations of nginx:1 yet (the leader records them when it runs with --docker)"
    );

    // Corrupt values are skipped with a note; the good rows still show.
    kv.put(keys.profile("broken"), "not json", None)
        .await
        .unwrap();
    let busybox_value = kv
        .get(keys.profile("busybox:1.36"), None)
        .await
        .unwrap()
        .kvs()[0]
        .value()
        .to_vec();
    kv.put(keys.profile("impostor"), busybox_value, None)
        .await
        .unwrap();
    let all = profile::show(&client, &keys, None)
        .await
        .expect("show with corrupt values");
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 5, "{all}");
    assert!(lines[1].starts_with("busybox:1.36 "), "{all}");
    assert!(lines[2].starts_with("library/redis:7 "), "{all}");
    assert!(
        lines[3].starts_with("skipped /citadel/profiles/broken: not a profile ("),
        "{all}"
    );
    assert_eq!(
        lines[4],
        r#"skipped /citadel/profiles/impostor: it holds the profile of "busybox:1.36""#
    );
    let broken = profile::show(&client, &keys, Some("broken"))
        .await
        .expect("show a corrupt one");
    let lines: Vec<&str> = broken.lines().collect();
    assert_eq!(
        lines[0],
        "no observations of broken yet (the leader records them when it runs with --docker)"
    );
    assert!(lines[1].starts_with("skipped /citadel/profiles/broken: not a profile"));

    // Another prefix sees none of it.
    let elsewhere = Keys::new("/elsewhere").unwrap();
    assert_eq!(
        profile::show(&client, &elsewhere, None).await.unwrap(),
        "no observations yet (the leader records them when it runs with --docker)"
    );
}
