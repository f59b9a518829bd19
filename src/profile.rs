//! Learned usage per image: what the containers of an image ask for against what they use.
//!
//! The leader samples the running containers of its engines (`docker::usage`) and feeds every
//! sample of a container citadel launched to [`Profiles::record`], together with what its request
//! asked for. [`Profiles::summaries`] turns the recent window of each image into an
//! [`ImageProfile`]: requested figures, observed p50 and p95, and a verdict. The leader writes
//! [`Profiles::ops`] under `Keys::profiles()` in its own fenced transactions, and
//! `citadel profile [IMAGE]` reads them back with [`show`].
//!
//! The accumulator lives in the leader's memory only. A new leader starts empty and overwrites
//! each image's key as soon as it has observed that image: nothing is merged with what a previous
//! leader stored, so a profile always describes the current leader's window, never a blend of
//! two windows whose samples it cannot tell apart.
//!
//! Everything here is pure except [`show`], which reads etcd.
//!
//! It may not write outside the leader's fenced transactions.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::SystemTime;

use etcd_client::Client;
use serde::{Deserialize, Serialize};

use crate::keys::Keys;
use crate::model::{MAX_CPUS, MAX_MEMORY_MB};
use crate::store::{self, CALL_TIMEOUT, StoreError};

/// Observations kept per image: the most recent ones, older ones fall out.
pub const WINDOW: usize = 512;
/// Images tracked at once; a new image beyond this evicts the least recently updated one.
pub const MAX_IMAGES: usize = 4096;
/// Longer image names are not recorded: no real reference is this long, and the name becomes
/// an etcd key.
pub const MAX_IMAGE_BYTES: usize = 512;
/// Below this many observations the verdict says so instead of judging: with few samples the
/// p95 is just the maximum of a handful of readings.
pub const MIN_SAMPLES_FOR_VERDICT: usize = 10;
/// An image asks for too much when its p95 is below this fraction of what it requests.
pub const TOO_MUCH_BELOW: f64 = 0.5;
/// An image asks for too little when its p95 is above this fraction of what it requests.
pub const TOO_LITTLE_ABOVE: f64 = 1.0;

/// Page size of the prefix read in [`show`].
const PAGE: i64 = 500;

/// One sample of one container, with what its request asked for.
#[derive(Debug, Clone, Copy)]
struct Observation {
    requested_cpus: f64,
    requested_memory_mb: f64,
    cpus: f64,
    memory_mb: f64,
}

#[derive(Debug)]
struct Window {
    observations: VecDeque<Observation>,
    /// [`Profiles::tick`] at the last record: orders images for eviction without a clock.
    last_tick: u64,
    /// When the last observation was recorded, for `updated_at`.
    updated: SystemTime,
}

/// The leader's accumulator: a bounded window of recent observations per image.
///
/// Requested figures are kept *per observation* and reported as their mean over the same window
/// as the percentiles. Two requests for the same image may ask for different amounts, and an
/// operator who fixes a request should see the new figure come in at the pace the usage it
/// produces does: the latest request alone would flip between requests, and a mean over all time
/// would never forget the old one.
#[derive(Debug)]
pub struct Profiles {
    images: BTreeMap<String, Window>,
    tick: u64,
    window: usize,
    max_images: usize,
}

impl Default for Profiles {
    fn default() -> Self {
        Self::new()
    }
}

impl Profiles {
    /// An empty accumulator bounded by [`WINDOW`] and [`MAX_IMAGES`].
    pub fn new() -> Self {
        Self::with_bounds(WINDOW, MAX_IMAGES)
    }

    /// An empty accumulator with other bounds (each at least 1).
    pub fn with_bounds(window: usize, max_images: usize) -> Self {
        Self {
            images: BTreeMap::new(),
            tick: 0,
            window: window.max(1),
            max_images: max_images.max(1),
        }
    }

    /// Records one sample of a container of `image`, stamped now. See [`Self::record_at`].
    pub fn record(
        &mut self,
        image: &str,
        requested_cpus: f64,
        requested_memory_mb: f64,
        observed_cpus: f64,
        observed_memory_mb: f64,
    ) {
        self.record_at(
            image,
            requested_cpus,
            requested_memory_mb,
            observed_cpus,
            observed_memory_mb,
            SystemTime::now(),
        );
    }

    /// Records one sample of a container of `image` taken at `at`.
    ///
    /// The whole sample is ignored when any figure is NaN, negative or beyond the model's bounds
    /// ([`MAX_CPUS`], [`MAX_MEMORY_MB`]; infinity included): a reading that failed, not a usage.
    /// So is a sample whose image name is empty or longer than [`MAX_IMAGE_BYTES`].
    pub fn record_at(
        &mut self,
        image: &str,
        requested_cpus: f64,
        requested_memory_mb: f64,
        observed_cpus: f64,
        observed_memory_mb: f64,
        at: SystemTime,
    ) {
        let cpus_ok = |v: f64| (0.0..=MAX_CPUS).contains(&v);
        let memory_ok = |v: f64| (0.0..=MAX_MEMORY_MB).contains(&v);
        if image.is_empty()
            || image.len() > MAX_IMAGE_BYTES
            || !(cpus_ok(requested_cpus)
                && cpus_ok(observed_cpus)
                && memory_ok(requested_memory_mb)
                && memory_ok(observed_memory_mb))
        {
            return;
        }
        self.tick += 1;
        if !self.images.contains_key(image) && self.images.len() >= self.max_images {
            // A scan, but only when a new image arrives at the bound.
            if let Some(oldest) = self
                .images
                .iter()
                .min_by_key(|(_, w)| w.last_tick)
                .map(|(name, _)| name.clone())
            {
                self.images.remove(&oldest);
            }
        }
        let window = self
            .images
            .entry(image.to_string())
            .or_insert_with(|| Window {
                observations: VecDeque::new(),
                last_tick: 0,
                updated: at,
            });
        if window.observations.len() >= self.window {
            window.observations.pop_front();
        }
        window.observations.push_back(Observation {
            requested_cpus,
            requested_memory_mb,
            cpus: observed_cpus,
            memory_mb: observed_memory_mb,
        });
        window.last_tick = self.tick;
        window.updated = at;
    }

    /// One profile per image observed, sorted by image.
    pub fn summaries(&self) -> Vec<ImageProfile> {
        // A BTreeMap iterates in key order: sorted by image already.
        self.images
            .iter()
            .filter_map(|(image, w)| summarise(image, w))
            .collect()
    }

    /// The key/value pairs to write: one compact JSON [`ImageProfile`] at `keys.profile(image)`
    /// per image. Each value is a few hundred bytes; the caller batches them into transactions
    /// (etcd allows 128 operations in one by default).
    pub fn ops(&self, keys: &Keys) -> Vec<(String, Vec<u8>)> {
        self.summaries()
            .into_iter()
            .filter_map(|p| Some((keys.profile(&p.image), serde_json::to_vec(&p).ok()?)))
            .collect()
    }
}

/// What one image asks for against what its containers use: the JSON value at
/// `Keys::profile(image)`. Cpus are rounded to thousandths, memory to tenths of a MB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageProfile {
    pub image: String,
    /// Observations in the window the figures below come from.
    pub samples: usize,
    /// Mean over the window of what the sampled containers' requests asked for.
    pub requested_cpus: f64,
    pub requested_memory_mb: f64,
    pub cpus_p50: f64,
    pub cpus_p95: f64,
    pub memory_mb_p50: f64,
    pub memory_mb_p95: f64,
    /// When the newest observation was recorded, RFC 3339.
    pub updated_at: String,
    /// `fits`, `too few samples (3 of 10)`, or what is wrong with cpu and memory, e.g.
    /// `asks for too much cpu (p95 0.02 of 0.5 requested)`; see [`TOO_MUCH_BELOW`] and
    /// [`TOO_LITTLE_ABOVE`].
    pub verdict: String,
}

fn summarise(image: &str, w: &Window) -> Option<ImageProfile> {
    let n = w.observations.len();
    if n == 0 {
        return None;
    }
    let sorted = |f: fn(&Observation) -> f64| {
        let mut v: Vec<f64> = w.observations.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let mean = |f: fn(&Observation) -> f64| w.observations.iter().map(f).sum::<f64>() / n as f64;
    let cpus = sorted(|o| o.cpus);
    let memory = sorted(|o| o.memory_mb);
    let requested_cpus = round_cpus(mean(|o| o.requested_cpus));
    let requested_memory_mb = round_mb(mean(|o| o.requested_memory_mb));
    let cpus_p95 = round_cpus(nearest_rank(&cpus, 95)?);
    let memory_mb_p95 = round_mb(nearest_rank(&memory, 95)?);
    Some(ImageProfile {
        image: image.to_string(),
        samples: n,
        requested_cpus,
        requested_memory_mb,
        cpus_p50: round_cpus(nearest_rank(&cpus, 50)?),
        cpus_p95,
        memory_mb_p50: round_mb(nearest_rank(&memory, 50)?),
        memory_mb_p95,
        updated_at: humantime::format_rfc3339_millis(w.updated).to_string(),
        verdict: verdict(
            n,
            (requested_cpus, cpus_p95),
            (requested_memory_mb, memory_mb_p95),
        ),
    })
}

/// The nearest-rank percentile of an ascending slice: the smallest value such that at least
/// `percent`% of the values are at or below it. `None` when empty.
fn nearest_rank(sorted: &[f64], percent: u32) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    // ceil(percent * n / 100) in integers, kept within 1..=n.
    let rank = (percent.min(100) as usize * n).div_ceil(100).clamp(1, n);
    Some(sorted[rank - 1])
}

/// The verdict on `(requested, p95)` pairs for cpu and memory, from the rounded figures so that
/// it agrees with the numbers shown beside it.
fn verdict(samples: usize, cpus: (f64, f64), memory_mb: (f64, f64)) -> String {
    if samples < MIN_SAMPLES_FOR_VERDICT {
        return format!("too few samples ({samples} of {MIN_SAMPLES_FOR_VERDICT})");
    }
    let judge = |what: &str, unit: &str, (requested, p95): (f64, f64), digits: usize| {
        let figures = format!(
            "p95 {} of {}{unit} requested",
            num(p95, digits),
            num(requested, digits)
        );
        if p95 > requested * TOO_LITTLE_ABOVE {
            Some(format!("uses more {what} than requested ({figures})"))
        } else if p95 < requested * TOO_MUCH_BELOW {
            Some(format!("asks for too much {what} ({figures})"))
        } else {
            None
        }
    };
    let findings: Vec<String> = [
        judge("cpu", "", cpus, 3),
        judge("memory", " MB", memory_mb, 1),
    ]
    .into_iter()
    .flatten()
    .collect();
    if findings.is_empty() {
        "fits".to_string()
    } else {
        findings.join("; ")
    }
}

fn round_cpus(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn round_mb(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// `v` with at most `digits` decimals and no trailing zeros: `0.5`, `512`, `0.021`.
fn num(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A table of profiles, sorted by image: a header line, then one row per profile. No trailing
/// newline; an empty slice gives the header alone ([`show`] says "no observations" instead).
pub fn render(profiles: &[ImageProfile]) -> String {
    let mut sorted: Vec<&ImageProfile> = profiles.iter().collect();
    sorted.sort_by(|a, b| a.image.cmp(&b.image));
    let width = sorted
        .iter()
        .map(|p| p.image.chars().count())
        .max()
        .unwrap_or(0)
        .max("IMAGE".len());
    let mut out = format!(
        "{:<width$} {:>7} {:>22} {:>26}  VERDICT",
        "IMAGE", "SAMPLES", "CPUS (req/p50/p95)", "MEMORY MB (req/p50/p95)"
    );
    for p in sorted {
        let cpus = format!(
            "{}/{}/{}",
            num(p.requested_cpus, 3),
            num(p.cpus_p50, 3),
            num(p.cpus_p95, 3)
        );
        let memory = format!(
            "{}/{}/{}",
            num(p.requested_memory_mb, 1),
            num(p.memory_mb_p50, 1),
            num(p.memory_mb_p95, 1)
        );
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "\n{:<width$} {:>7} {:>22} {:>26}  {}",
            p.image, p.samples, cpus, memory, p.verdict
        );
    }
    out
}

/// The message for an image (or, with `None`, a registry) without profiles.
fn no_observations(image: Option<&str>) -> String {
    let what = match image {
        Some(image) => format!("no observations of {image} yet"),
        None => "no observations yet".to_string(),
    };
    format!("{what} (the leader records them when it runs with --docker)")
}

/// Reads every profile (`image: None`) or one image's, and renders them with [`render`].
///
/// A value that is not a profile, or holds another image's profile than its key names, is
/// skipped with a note line after the table. No trailing newline.
pub async fn show(client: &Client, keys: &Keys, image: Option<&str>) -> Result<String, StoreError> {
    let kvs = match image {
        None => store::range_all(client, &keys.profiles(), PAGE).await?.0,
        Some(image) => {
            let mut kv = client.kv_client();
            let resp = tokio::time::timeout(CALL_TIMEOUT, kv.get(keys.profile(image), None))
                .await
                .map_err(|_| StoreError::Timeout(CALL_TIMEOUT))??;
            resp.kvs().to_vec()
        }
    };
    let mut profiles = Vec::new();
    let mut notes = Vec::new();
    for kv in &kvs {
        let key = String::from_utf8_lossy(kv.key());
        match serde_json::from_slice::<ImageProfile>(kv.value()) {
            Ok(p) if keys.profile(&p.image) == key => profiles.push(p),
            Ok(p) => notes.push(format!(
                "skipped {key}: it holds the profile of {:?}",
                p.image
            )),
            Err(e) => notes.push(format!("skipped {key}: not a profile ({e})")),
        }
    }
    let mut out = if profiles.is_empty() {
        no_observations(image)
    } else {
        render(&profiles)
    };
    for note in notes {
        out.push('\n');
        out.push_str(&note);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// `n` samples of `image` asking for `req`, observing 1..=n scaled by `step`.
    fn ramp(p: &mut Profiles, image: &str, req: (f64, f64), n: usize, step: (f64, f64)) {
        for i in 1..=n {
            let i = i as f64;
            p.record_at(image, req.0, req.1, i * step.0, i * step.1, at(1));
        }
    }

    fn only(p: &Profiles) -> ImageProfile {
        let mut s = p.summaries();
        assert_eq!(s.len(), 1, "{s:?}");
        s.remove(0)
    }

    #[test]
    fn nearest_rank_of_nothing_is_none() {
        assert_eq!(nearest_rank(&[], 50), None);
        assert_eq!(nearest_rank(&[], 95), None);
    }

    #[test]
    fn nearest_rank_of_one_sample_is_that_sample() {
        for percent in [0, 1, 50, 95, 100] {
            assert_eq!(nearest_rank(&[7.0], percent), Some(7.0));
        }
    }

    #[test]
    fn nearest_rank_matches_known_distributions() {
        // 1..=100: the p-th percentile is p itself.
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&hundred, 50), Some(50.0));
        assert_eq!(nearest_rank(&hundred, 95), Some(95.0));
        assert_eq!(nearest_rank(&hundred, 100), Some(100.0));
        // 1..=20: rank ceil(0.95 * 20) = 19, ceil(0.5 * 20) = 10.
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(nearest_rank(&twenty, 95), Some(19.0));
        assert_eq!(nearest_rank(&twenty, 50), Some(10.0));
        // The textbook example: 15, 20, 35, 40, 50.
        let five = [15.0, 20.0, 35.0, 40.0, 50.0];
        assert_eq!(nearest_rank(&five, 5), Some(15.0));
        assert_eq!(nearest_rank(&five, 30), Some(20.0));
        assert_eq!(nearest_rank(&five, 40), Some(20.0));
        assert_eq!(nearest_rank(&five, 50), Some(35.0));
        assert_eq!(nearest_rank(&five, 100), Some(50.0));
        // Below 20 samples the p95 is the maximum.
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 95), Some(3.0));
    }

    #[test]
    fn percentiles_do_not_depend_on_arrival_order() {
        let mut p = Profiles::new();
        for i in [5, 3, 9, 1, 7, 2, 8, 4, 10, 6] {
            p.record_at("x", 1.0, 100.0, f64::from(i) / 10.0, f64::from(i), at(1));
        }
        let s = only(&p);
        assert_eq!((s.cpus_p50, s.cpus_p95), (0.5, 1.0));
        assert_eq!((s.memory_mb_p50, s.memory_mb_p95), (5.0, 10.0));
    }

    #[test]
    fn unreadable_observations_are_ignored() {
        let mut p = Profiles::new();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.1] {
            p.record("x", bad, 1.0, 1.0, 1.0);
            p.record("x", 1.0, bad, 1.0, 1.0);
            p.record("x", 1.0, 1.0, bad, 1.0);
            p.record("x", 1.0, 1.0, 1.0, bad);
        }
        p.record("x", MAX_CPUS * 2.0, 1.0, 1.0, 1.0);
        p.record("x", 1.0, 1.0, 1.0, MAX_MEMORY_MB * 2.0);
        p.record("", 1.0, 1.0, 1.0, 1.0);
        p.record(&"x".repeat(MAX_IMAGE_BYTES + 1), 1.0, 1.0, 1.0, 1.0);
        assert!(p.summaries().is_empty());
        assert!(p.ops(&Keys::default()).is_empty());

        p.record("x", 1.0, 10.0, 0.25, 5.0);
        p.record("x", 1.0, 10.0, f64::NAN, 5.0);
        let s = only(&p);
        assert_eq!(s.samples, 1);
        assert_eq!((s.cpus_p50, s.cpus_p95), (0.25, 0.25));
    }

    #[test]
    fn window_keeps_only_the_most_recent_observations() {
        let mut p = Profiles::with_bounds(10, 10);
        // 1..=10 then 101..=110: only the second run remains.
        ramp(&mut p, "x", (1.0, 1.0), 10, (1.0, 1.0));
        for i in 101..=110 {
            p.record_at("x", 200.0, 200.0, f64::from(i), f64::from(i), at(2));
        }
        let s = only(&p);
        assert_eq!(s.samples, 10);
        assert_eq!((s.cpus_p50, s.cpus_p95), (105.0, 110.0));
        assert_eq!(
            s.requested_cpus, 200.0,
            "old requests age out with old usage"
        );
    }

    #[test]
    fn requested_is_the_mean_over_the_window() {
        let mut p = Profiles::new();
        p.record_at("x", 0.5, 100.0, 0.1, 10.0, at(1));
        p.record_at("x", 1.5, 300.0, 0.1, 10.0, at(1));
        let s = only(&p);
        assert_eq!((s.requested_cpus, s.requested_memory_mb), (1.0, 200.0));
    }

    #[test]
    fn the_least_recently_updated_image_is_evicted() {
        let mut p = Profiles::with_bounds(8, 2);
        p.record_at("a", 1.0, 1.0, 1.0, 1.0, at(1));
        p.record_at("b", 1.0, 1.0, 1.0, 1.0, at(2));
        p.record_at("a", 1.0, 1.0, 1.0, 1.0, at(3));
        p.record_at("c", 1.0, 1.0, 1.0, 1.0, at(4));
        let images: Vec<String> = p.summaries().into_iter().map(|s| s.image).collect();
        assert_eq!(images, ["a", "c"]);
    }

    #[test]
    fn summaries_are_sorted_by_image_and_stamped_with_the_last_record() {
        let mut p = Profiles::new();
        p.record_at("redis", 1.0, 1.0, 1.0, 1.0, at(1));
        p.record_at("busybox", 1.0, 1.0, 1.0, 1.0, at(1));
        p.record_at("busybox", 1.0, 1.0, 1.0, 1.0, at(60));
        let s = p.summaries();
        assert_eq!(s[0].image, "busybox");
        assert_eq!(s[1].image, "redis");
        assert_eq!(s[0].updated_at, "1970-01-01T00:01:00.000Z");
        assert_eq!(s[1].updated_at, "1970-01-01T00:00:01.000Z");
    }

    #[test]
    fn verdict_waits_for_enough_samples() {
        let mut p = Profiles::new();
        ramp(&mut p, "x", (1.0, 100.0), 3, (0.001, 1.0));
        assert_eq!(only(&p).verdict, "too few samples (3 of 10)");
    }

    #[test]
    fn verdict_flags_requests_far_above_the_p95() {
        let mut p = Profiles::new();
        // cpus 0.001..=0.02, memory 10..=200 MB against 0.5 cpus and 256 MB.
        ramp(&mut p, "x", (0.5, 256.0), 20, (0.001, 10.0));
        let s = only(&p);
        assert_eq!((s.cpus_p95, s.memory_mb_p95), (0.019, 190.0));
        assert_eq!(
            s.verdict,
            "asks for too much cpu (p95 0.019 of 0.5 requested)"
        );
    }

    #[test]
    fn verdict_flags_a_p95_above_the_request() {
        let mut p = Profiles::new();
        // memory 30..=600 MB against 512: p95 570.
        ramp(&mut p, "x", (0.1, 512.0), 20, (0.005, 30.0));
        let s = only(&p);
        assert_eq!(
            s.verdict,
            "uses more memory than requested (p95 570 of 512 MB requested)"
        );
    }

    #[test]
    fn verdict_names_both_resources_when_both_are_off() {
        let mut p = Profiles::new();
        ramp(&mut p, "x", (0.01, 1000.0), 20, (0.001, 1.0));
        assert_eq!(
            only(&p).verdict,
            "uses more cpu than requested (p95 0.019 of 0.01 requested); \
             asks for too much memory (p95 19 of 1000 MB requested)"
        );
    }

    #[test]
    fn verdict_thresholds_are_inclusive_of_fitting() {
        // p95 at exactly half, and exactly all, of the request: both fit.
        assert_eq!(verdict(10, (1.0, 0.5), (100.0, 100.0)), "fits");
        assert_eq!(
            verdict(10, (1.0, 0.499), (100.0, 100.0)),
            "asks for too much cpu (p95 0.499 of 1 requested)"
        );
        assert_eq!(verdict(10, (0.0, 0.0), (0.0, 0.0)), "fits");
        assert_eq!(
            verdict(10, (0.0, 0.1), (1.0, 1.0)),
            "uses more cpu than requested (p95 0.1 of 0 requested)"
        );
    }

    #[test]
    fn ops_are_one_readable_json_value_per_image_at_its_key() {
        let mut p = Profiles::new();
        p.record_at("library/nginx:1", 0.5, 128.0, 0.0123456, 33.333, at(1));
        let keys = Keys::default();
        let ops = p.ops(&keys);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].0, "/citadel/profiles/library%2Fnginx:1");
        let back: ImageProfile = serde_json::from_slice(&ops[0].1).unwrap();
        assert_eq!(back, only(&p));
        assert_eq!((back.cpus_p95, back.memory_mb_p95), (0.012, 33.3));
        let text = String::from_utf8(ops[0].1.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"image":"library/nginx:1","samples":1,"requested_cpus":0.5,"#),
            "{text}"
        );
    }

    fn profile(image: &str, verdict: &str) -> ImageProfile {
        ImageProfile {
            image: image.into(),
            samples: 20,
            requested_cpus: 0.5,
            requested_memory_mb: 256.0,
            cpus_p50: 0.01,
            cpus_p95: 0.019,
            memory_mb_p50: 100.5,
            memory_mb_p95: 190.0,
            updated_at: "1970-01-01T00:00:01.000Z".into(),
            verdict: verdict.into(),
        }
    }

    #[test]
    fn render_prints_a_sorted_aligned_row_per_image() {
        let out = render(&[
            profile("redis:7", "fits"),
            profile("a-much-longer-image-name:latest", "asks for too much cpu"),
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("IMAGE "));
        assert!(lines[0].ends_with("CPUS (req/p50/p95)    MEMORY MB (req/p50/p95)  VERDICT"));
        assert!(lines[1].starts_with("a-much-longer-image-name:latest      20"));
        assert!(lines[2].starts_with("redis:7                              20"));
        for line in &lines[1..] {
            let cols: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(&cols[1..4], ["20", "0.5/0.01/0.019", "256/100.5/190"]);
        }
        assert!(lines[1].ends_with("  asks for too much cpu"));
        assert!(lines[2].ends_with("  fits"));
        // Columns line up: the verdict starts at the same place on every row.
        let at = lines[0].find("VERDICT").unwrap();
        assert_eq!(&lines[2][at..], "fits");
    }

    #[test]
    fn render_of_nothing_is_the_header_alone() {
        let out = render(&[]);
        assert_eq!(out.lines().count(), 1);
        assert!(out.starts_with("IMAGE"));
    }

    #[test]
    fn no_observations_names_the_image() {
        assert_eq!(
            no_observations(Some("redis")),
            "no observations of redis yet (the leader records them when it runs with --docker)"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any f64 at all, the odd ones often.
        fn figure() -> impl Strategy<Value = f64> {
            prop_oneof![
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(-1.0),
                Just(0.0),
                0.0f64..1e6,
                any::<f64>(),
            ]
        }

        proptest! {
            /// Whatever is recorded, nothing panics, the bounds hold, every figure stored is
            /// finite and non-negative, p50 never exceeds p95 and the stored JSON reads back.
            #[test]
            fn summaries_stay_bounded_finite_and_ordered(
                records in proptest::collection::vec(
                    (0u8..6, figure(), figure(), figure(), figure()),
                    0..200,
                ),
            ) {
                let mut p = Profiles::with_bounds(16, 4);
                for (image, rc, rm, oc, om) in records {
                    p.record_at(&format!("img{image}"), rc, rm, oc, om, at(1));
                }
                let summaries = p.summaries();
                prop_assert!(summaries.len() <= 4);
                for s in &summaries {
                    prop_assert!((1..=16).contains(&s.samples));
                    for v in [
                        s.requested_cpus, s.requested_memory_mb, s.cpus_p50, s.cpus_p95,
                        s.memory_mb_p50, s.memory_mb_p95,
                    ] {
                        prop_assert!(v.is_finite() && v >= 0.0, "{s:?}");
                    }
                    prop_assert!(s.cpus_p50 <= s.cpus_p95);
                    prop_assert!(s.memory_mb_p50 <= s.memory_mb_p95);
                }
                let ops = p.ops(&Keys::default());
                prop_assert_eq!(ops.len(), summaries.len());
                for ((_, value), s) in ops.iter().zip(&summaries) {
                    // serde_json parses floats to within an ulp, not always exactly.
                    let back: ImageProfile = serde_json::from_slice(value).unwrap();
                    prop_assert_eq!(&back.image, &s.image);
                    prop_assert_eq!(&back.verdict, &s.verdict);
                    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
                    prop_assert!(close(back.cpus_p95, s.cpus_p95), "{back:?} {s:?}");
                    prop_assert!(close(back.memory_mb_p95, s.memory_mb_p95), "{back:?} {s:?}");
                }
            }
        }
    }
}
