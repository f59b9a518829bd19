use super::*;

const SEED_SAMPLE: &str = r#"{
    "image": "crosbymichael/redis",
    "cpus": "0.2",
    "memory": 512,
    "type": "service"
}"#;

#[test]
fn seed_sample_request_parses_byte_for_byte() {
    let req = Request::parse(SEED_SAMPLE.as_bytes()).expect("seed sample is valid");
    let value = Echo::of(SEED_SAMPLE.as_bytes()).value();
    assert_eq!(req.image.name, "crosbymichael/redis");
    assert_eq!(req.cpus, Millicpus(200));
    assert_eq!(req.memory, MemoryMb(512));
    assert_eq!(req.kind, "service");
    assert_eq!(value["cpus"], "0.2", "the echo keeps the user's string");
}

#[test]
fn cpus_accept_numbers_and_strings() {
    for raw in [r#"0.2"#, r#""0.2""#, r#"" 0.2 ""#] {
        let json = format!(r#"{{"image":"x","cpus":{raw},"memory":1,"type":"batch"}}"#);
        let req = Request::parse(json.as_bytes()).expect(&json);
        assert_eq!(req.cpus, Millicpus(200), "{json}");
    }
}

fn invalid(json: &str) -> String {
    match Request::parse(json.as_bytes()) {
        Ok(_) => panic!("{json} was accepted"),
        Err(Invalid(msg)) => msg,
    }
}

#[test]
fn bad_requests_name_the_field() {
    let cases = [
        (r#"{"image":"x","cpus":-1,"memory":1,"type":"s"}"#, "cpus"),
        (r#"{"image":"x","cpus":0,"memory":1,"type":"s"}"#, "cpus"),
        (
            r#"{"image":"x","cpus":"NaN","memory":1,"type":"s"}"#,
            "cpus",
        ),
        (
            r#"{"image":"x","cpus":"lots","memory":1,"type":"s"}"#,
            "cpus",
        ),
        (
            r#"{"image":"x","cpus":1e300,"memory":1,"type":"s"}"#,
            "cpus",
        ),
        (
            r#"{"image":"x","cpus":"inf","memory":1,"type":"s"}"#,
            "cpus",
        ),
        (r#"{"image":"x","cpus":1,"memory":-5,"type":"s"}"#, "memory"),
        (
            r#"{"image":"x","cpus":1,"memory":1e30,"type":"s"}"#,
            "memory",
        ),
        (r#"{"image":"x","cpus":1,"type":"s"}"#, "memory"),
        (r#"{"image":"","cpus":1,"memory":1,"type":"s"}"#, "image"),
        (r#"{"cpus":1,"memory":1,"type":"s"}"#, "image"),
        (r#"{"image":"x","cpus":1,"memory":1}"#, "type"),
        (r#"{"image":"x","cpus":1,"memory":1,"type":5}"#, "type"),
        (r#"{"image":["x"],"cpus":1,"memory":1,"type":"s"}"#, "image"),
        (
            r#"{"image":"x","cpus":1,"memory":1,"type":"s","bind_ports":[{"port":70000}]}"#,
            "bind_ports[0].port",
        ),
        (
            r#"{"image":"x","cpus":1,"memory":1,"type":"s","bind_ports":[{"port":80},{"port":80}]}"#,
            "bind_ports[1]",
        ),
        (
            r#"{"image":"x","cpus":1,"memory":1,"type":"s","bind_ports":[{"proto":"icmp","port":1}]}"#,
            "bind_ports[0].proto",
        ),
    ];
    for (json, field) in cases {
        let msg = invalid(json);
        assert!(
            msg.starts_with(field),
            "{json}: reason {msg:?} should name {field}"
        );
    }
}

#[test]
fn malformed_json_and_non_objects_are_invalid() {
    assert!(invalid("{not json").starts_with("malformed JSON"));
    assert!(invalid("").starts_with("malformed JSON"));
    assert!(invalid("[1,2]").contains("JSON object"));
    assert!(invalid("\"hello\"").contains("JSON object"));
}

#[test]
fn the_echo_is_the_request_as_written_without_whitespace() {
    let raw = "{ \"type\": \"service\",\n \"cpus\" : 1.50, \"memory\":1e2,\n \"image\": \"a b\\\" \\u00e9 é\", \"env\": [ true, null ] }\n";
    assert_eq!(
        Echo::of(raw.as_bytes()).get(),
        "{\"type\":\"service\",\"cpus\":1.50,\"memory\":1e2,\"image\":\"a b\\\" \\u00e9 é\",\"env\":[true,null]}"
    );
    // Not one JSON text: the start of the text, as a string.
    for bad in ["[1 2]", "{\"a\":1} x", "not json", "{\"a\":"] {
        assert_eq!(
            Echo::of(bad.as_bytes()).value(),
            serde_json::json!(bad),
            "{bad}"
        );
    }
    // A number no reader can hold: the text, as a string every reader can parse.
    let huge = r#"{"image":"x","other":1e999}"#;
    assert_eq!(Echo::of(huge.as_bytes()).value(), serde_json::json!(huge));
}

mod echo_props {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e300f64..1e300).prop_map(serde_json::Value::from),
            "[ a-z\"\\\\\u{e9}\u{1F600}\n\t]{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z ]{0,5}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever JSON a user writes, however it is spaced, its echo reads back as the
        /// same JSON, with no whitespace left between tokens.
        #[test]
        fn the_echo_reads_back_as_what_was_written(v in json(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            let echo = Echo::of(text.as_bytes());
            let read: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(echo.value(), read);
            prop_assert_eq!(echo.get(), serde_json::to_string(&v).unwrap());
        }
    }
}

/// The election key's value across a rolling upgrade: a replica that writes the status page's
/// address is read by one that does not know the field, and the other way round; without an
/// address the bytes are those an older replica writes.
#[test]
fn leader_info_reads_both_ways_across_versions() {
    /// `LeaderInfo` as replicas before the `status` field read it.
    #[derive(Debug, serde::Deserialize)]
    struct Older {
        id: String,
        #[serde(default)]
        addr: String,
        since: String,
    }
    let newer = LeaderInfo {
        id: "r2".into(),
        addr: String::new(),
        since: "2026-11-28T00:00:00Z".into(),
        leads_since: Some("2026-11-28T00:00:09Z".into()),
        status: Some("127.0.0.1:9091".into()),
        version: Some("0.2.0".into()),
        request_fields: vec!["image".into(), "priority".into()],
    };
    let bytes = serde_json::to_vec(&newer).expect("json");
    let old: Older = serde_json::from_slice(&bytes).expect("an older replica reads it");
    assert_eq!((old.id.as_str(), old.addr.as_str()), ("r2", ""));
    assert_eq!(old.since, newer.since);

    let written_by_older = r#"{"id":"r1","addr":"10.0.0.1","since":"2026-11-28T00:00:00Z"}"#;
    let read: LeaderInfo = serde_json::from_str(written_by_older).expect("reads an older value");
    assert_eq!(
        (read.status.as_deref(), read.leads_since.as_deref()),
        (None, None)
    );
    assert_eq!(
        (read.version.as_deref(), read.request_fields.len()),
        (None, 0)
    );
    assert_eq!(read.addr, "10.0.0.1");
    assert_eq!(
        serde_json::to_string(&read).expect("json"),
        written_by_older
    );
}

#[test]
fn huge_requests_are_invalid_and_not_echoed() {
    let big = format!(
        r#"{{"image":"x","cpus":1,"memory":1,"type":"s","args":["{}"]}}"#,
        "a".repeat(MAX_REQUEST_BYTES)
    );
    let Invalid(msg) = Request::parse(big.as_bytes()).unwrap_err();
    assert!(msg.starts_with("request: "), "{msg}");
    let echo = Echo::of(big.as_bytes()).value();
    assert!(echo.as_str().is_some_and(|s| s.len() < 100));
}

#[test]
fn ids_are_checked() {
    assert!(RequestId::new("web-1").is_ok());
    assert_eq!(RequestId::new(""), Err(IdError::Empty));
    assert!(matches!(RequestId::new("a/b"), Err(IdError::Slash)));
    assert!(matches!(
        RequestId::new("x".repeat(254)),
        Err(IdError::TooLong(254))
    ));
    assert!(RequestId::new("x".repeat(253)).is_ok());
    assert!(matches!(RequestId::new("a b"), Err(IdError::Unprintable)));
    assert!(matches!(RequestId::new("a\nb"), Err(IdError::Unprintable)));
}

#[test]
fn engine_capacity_rounds_down_and_requests_round_up() {
    let id = EngineId::new("e1").unwrap();
    let e = EngineSpec::parse(
        &id,
        br#"{"addr":"tcp://h:2375","cpus":1.9999,"memory":100.7}"#,
    )
    .unwrap();
    assert_eq!(e.cpus, Millicpus(1999));
    assert_eq!(e.memory, MemoryMb(100));
    assert_eq!(Millicpus::from_cpus_ceil(0.0001), Millicpus(1));
}

#[test]
fn engine_id_must_match_its_key() {
    let id = EngineId::new("e1").unwrap();
    assert!(EngineSpec::parse(&id, br#"{"id":"e2","cpus":1,"memory":1}"#).is_err());
    assert!(EngineSpec::parse(&id, br#"{"id":"e1","cpus":1,"memory":1}"#).is_ok());
}

#[test]
fn reservation_round_trips_its_units() {
    let r = Reservation {
        cpus: Millicpus(200).as_cpus(),
        memory: 512.0,
        disk: 0.0,
        image: String::new(),
        priority: 0,
        preemptible: true,
        group: String::new(),
        disruption_budget: None,
        ports: vec![
            HostPort {
                proto: Proto::Udp,
                port: 53,
            }
            .to_port(),
        ],
    };
    let back: Reservation = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    let held = back.held();
    assert_eq!(held.cpus, Millicpus(200));
    assert_eq!(held.memory, MemoryMb(512));
    assert_eq!(
        held.ports,
        vec![HostPort {
            proto: Proto::Udp,
            port: 53
        }]
    );
}

#[test]
fn an_invalid_reason_names_the_field_never_the_value() {
    // A hostile value in each field that checks a string: the reason names the field and
    // the rule, and quotes nothing of the value back.
    let evil = "EVIL<img src=x>";
    let base = r#""image":"x","cpus":1,"memory":1,"type":"s""#;
    // (the request's other fields, the start of the reason)
    let cases = [
        (
            format!(r#""disk":"{evil}""#),
            "disk: invalid value, expected a number",
        ),
        (
            r#""disk":true"#.to_string(),
            "disk: wrong type, expected a number or a numeric string",
        ),
        (
            format!(r#""alternatives":"{evil}""#),
            "alternatives: wrong type, expected u64",
        ),
        (
            format!(r#""bind_ports":[{{"port":80,"proto":"{evil}"}}]"#),
            "bind_ports[0]",
        ),
        (
            format!(r#""bind_ports":[{{"port":80,"{evil}":1}}]"#),
            "bind_ports[0].?: unknown field, expected one of",
        ),
        (
            format!(r#""restart_policy":{{"name":"{evil}"}}"#),
            "restart_policy: the name is not",
        ),
        (
            format!(r#""container_name":"{evil}""#),
            "container_name: not a Docker name",
        ),
        (
            format!(r#""hostname":"{evil}""#),
            "hostname: not a hostname",
        ),
        (
            format!(r#""cpuset":"{evil}""#),
            "cpuset: not a list of cpus",
        ),
        (
            format!(r#""volumes":["a:b:c:{evil}"]"#),
            "volumes[0]: not /path",
        ),
        (
            format!(r#""volumes":["/a:/b:{evil}"]"#),
            "volumes[0]: unknown mode",
        ),
        (
            format!(r#""volumes":["/a:{evil}"]"#),
            "volumes[0]: the container path is not absolute",
        ),
        (
            format!(r#""environment":{{"{evil}=":"v"}}"#),
            "environment: a variable name",
        ),
        (
            format!(r#""environment":{{"{evil}":1}}"#),
            "environment.?: wrong type, expected a string",
        ),
        (format!(r#""links":{{"{evil}":""}}"#), "links: a link names"),
        (
            format!(r#""group":"{evil}/x""#),
            "group: cannot name a group",
        ),
        (
            format!(r#""group":"g","spread":{{"over":"{evil}"}}"#),
            "spread.over: not a label key",
        ),
        (
            format!(r#""group":"g","group_timeout":"{evil}""#),
            "group_timeout: not a duration",
        ),
        (format!(r#""{evil}":1"#), "unknown field (a name not shown"),
    ];
    for (fields, want) in cases {
        let json = format!("{{{base},{fields}}}");
        let reason = invalid(&json);
        assert!(reason.starts_with(want), "{json}: {reason}");
        assert!(!reason.contains("EVIL"), "{json}: {reason}");
    }
    // Names made of plain characters are shown, with a guess at what was meant.
    let reason = invalid(&format!("{{{base},\"lables\":[]}}"));
    assert!(
        reason.contains(r#""lables" (did you mean "labels"?)"#),
        "{reason}"
    );
}
